//! Small numeric helpers for losses written by hand (no autodiff needed): stable softmax and
//! log-softmax of one row in `f64`.

/// `log_softmax(row / t)` in `f64`, computed stably (max subtracted).
pub fn log_softmax(row: &[f32], t: f64) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64 / t));
    let lse = m + row.iter().map(|&x| (x as f64 / t - m).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 / t - lse).collect()
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
}
