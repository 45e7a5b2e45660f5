//! Small numeric helpers for losses written by hand (no autodiff needed): stable softmax,
//! log-softmax and log-sum-exp of one row in `f64`, optionally over a subset of its classes.
//!
//! These are the one implementation kdx uses wherever it computes them on the host (the SDK's
//! losses, the built-in plugins, the framework's teacher targets): every variant goes through
//! [`log_sum_exp_masked`], so they all take the same steps in the same order — the maximum
//! found over `x / t`, then `Σ exp(x / t − max)` summed in row order — and give the same bits
//! for the same row. Recorded results depend on those bits, so a change to the order of
//! operations here is a change to every recipe's numbers.

/// `log Σ_k exp(row_k / t)` over the classes `k` where `keep(k)` is true, in `f64`, computed
/// stably (the largest kept `row_k / t` subtracted before exponentiating). −∞ when nothing is
/// kept. `row` holds `f32` or `f64` values.
pub fn log_sum_exp_masked<T: Copy + Into<f64>>(row: &[T], t: f64, keep: impl Fn(usize) -> bool) -> f64 {
    let u = |k: usize| row[k].into() / t;
    let kept = || (0..row.len()).filter(|&k| keep(k));
    let m = kept().map(u).fold(f64::NEG_INFINITY, f64::max);
    m + kept().map(|k| (u(k) - m).exp()).sum::<f64>().ln()
}

/// `log Σ_k exp(row_k / t)` over the whole row, in `f64`, computed stably (see
/// [`log_sum_exp_masked`]).
pub fn log_sum_exp<T: Copy + Into<f64>>(row: &[T], t: f64) -> f64 {
    log_sum_exp_masked(row, t, |_| true)
}

/// `log_softmax(row / t)` restricted to the classes `k` where `keep(k)` is true, in `f64`:
/// the kept classes are normalised among themselves, the others are −∞ (probability 0).
/// `row` holds `f32` or `f64` values. With every class kept it is [`log_softmax`].
pub fn log_softmax_masked<T: Copy + Into<f64>>(row: &[T], t: f64, keep: impl Fn(usize) -> bool) -> Vec<f64> {
    let lse = log_sum_exp_masked(row, t, &keep);
    (0..row.len()).map(|k| if keep(k) { row[k].into() / t - lse } else { f64::NEG_INFINITY }).collect()
}

/// `log_softmax(row / t)` in `f64`, computed stably (max subtracted).
pub fn log_softmax(row: &[f32], t: f64) -> Vec<f64> {
    log_softmax_masked(row, t, |_| true)
}

/// `log_softmax(row / t)` of a row already in `f64` (standardised or projected values), by
/// the same steps as [`log_softmax`].
pub fn log_softmax_f64(row: &[f64], t: f64) -> Vec<f64> {
    log_softmax_masked(row, t, |_| true)
}

/// `softmax(row / t)` in `f64`.
pub fn softmax(row: &[f32], t: f64) -> Vec<f64> {
    log_softmax(row, t).into_iter().map(f64::exp).collect()
}

/// The index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// `Σ p·(log p − log q)`, with `0·log 0 = 0`.
pub fn kl(p: &[f64], log_p: &[f64], log_q: &[f64]) -> f64 {
    p.iter().zip(log_p).zip(log_q).map(|((&p, &lp), &lq)| if p > 0.0 { p * (lp - lq) } else { 0.0 }).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_normalised() {
        let p = softmax(&[1000.0, 0.0, -1000.0], 1.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p[0] > 0.999 && p[2] == 0.0);
        let lp = log_softmax(&[1.0, 2.0, 3.0], 2.0);
        let want: Vec<f64> = softmax(&[1.0, 2.0, 3.0], 2.0).iter().map(|p| p.ln()).collect();
        for (a, b) in lp.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12);
        }
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        let (p, lp) = (softmax(&[1.0, 0.0], 1.0), log_softmax(&[1.0, 0.0], 1.0));
        assert!(kl(&p, &lp, &lp).abs() < 1e-15);
    }

    #[test]
    fn masked_and_f64_variants_agree_with_the_plain_ones() {
        let row = [0.5f32, -2.0, 3.0, 1.0];
        // Over every class, each variant is the plain log-softmax, bit for bit.
        let plain = log_softmax(&row, 1.5);
        assert_eq!(log_softmax_masked(&row, 1.5, |_| true), plain);
        let wide: Vec<f64> = row.iter().map(|&x| x as f64).collect();
        assert_eq!(log_softmax_f64(&wide, 1.5), plain);
        let lse = log_sum_exp(&row, 1.5);
        assert_eq!(lse, log_sum_exp(&wide, 1.5));
        let want: f64 = row.iter().map(|&x| (x as f64 / 1.5).exp()).sum::<f64>().ln();
        assert!((lse - want).abs() < 1e-12);
        // Masked: the kept classes are normalised among themselves, the others are −∞.
        let keep = |k: usize| k != 2;
        let lp = log_softmax_masked(&row, 1.5, keep);
        assert_eq!(lp[2], f64::NEG_INFINITY);
        assert!((lp.iter().map(|l| l.exp()).sum::<f64>() - 1.0).abs() < 1e-12);
        let sub = log_softmax(&[0.5, -2.0, 1.0], 1.5);
        for (a, b) in [lp[0], lp[1], lp[3]].iter().zip(&sub) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert!((log_sum_exp_masked(&row, 1.5, keep) - log_sum_exp(&[0.5f32, -2.0, 1.0], 1.5)).abs() < 1e-12);
        // Nothing kept: no mass at all.
        assert_eq!(log_sum_exp_masked(&row, 1.0, |_| false), f64::NEG_INFINITY);
        assert!(log_softmax_masked(&row, 1.0, |_| false).iter().all(|&l| l == f64::NEG_INFINITY));
        // Large values stay finite (exp(1000) alone would overflow).
        assert!((log_sum_exp(&[1000f64, 1000.0], 1.0) - (1000.0 + 2f64.ln())).abs() < 1e-12);
    }
}
