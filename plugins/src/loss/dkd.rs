//! `dkd`: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022).

use kdx_framework::dylib::kdx_sdk::math::{log_softmax, log_softmax_masked, log_sum_exp, log_sum_exp_masked};
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, LossInput, LossOutput, Needs};
use kdx_framework::registry::BuildCtx;
use kdx_framework::schedule::Schedule;
use schemars::JsonSchema;
use serde::Deserialize;

/// Decoupled KD (Zhao et al. 2022): KL split into a target-class and a non-target part,
/// L = T² · (1/B) Σᵢ wᵢ · (α·TCKDᵢ + β·NCKDᵢ), where, at temperature T with gold class g:
/// TCKD = KL([pₜ_g, 1 − pₜ_g] ‖ [pₛ_g, 1 − pₛ_g]) — the binary target / non-target split;
/// NCKD = KL(p̂ₜ ‖ p̂ₛ), p̂ = softmax(logits/T) over the classes other than g.
/// p = softmax(t/T) for the teacher, softmax(z/T) for the student. Both sides are computed
/// exactly in log space in f64 (the gold class is left out of the non-target softmax
/// rather than masked by a large constant, and log(1 − p_g) is the log-sum-exp of the other
/// classes), so high temperatures, extreme logits and one-hot teachers never give NaN.
/// Reads the gold labels. Needs at least two classes.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DkdParams {
    /// Weight α ≥ 0 of the target-class term TCKD.
    #[serde(default = "one")]
    pub alpha: f32,
    /// Weight β ≥ 0 of the non-target term NCKD.
    #[serde(default = "eight")]
    pub beta: f32,
    /// Temperature T > 0: a number or a schedule over the stage.
    #[serde(default = "default_t")]
    pub temperature: Schedule,
    /// Multiply by T².
    #[serde(default = "yes")]
    pub scale_t2: bool,
}

fn one() -> f32 {
    1.0
}
fn eight() -> f32 {
    8.0
}
fn default_t() -> Schedule {
    Schedule::Constant(4.0)
}
fn yes() -> bool {
    true
}

fn build(p: DkdParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    for (name, v) in [("alpha", p.alpha), ("beta", p.beta)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(ctx.error(name, format!("must be a non-negative number, found {v}")));
        }
    }
    if !p.temperature.stays_positive() {
        return Err(
            ctx.error("temperature", format!("must stay positive over the stage, found {:?}", p.temperature))
        );
    }
    Ok(Box::new(p))
}

kdx_framework::register_loss!(
    "dkd",
    "decoupled KD: α·target-class KL + β·non-target KL at temperature T (Zhao et al. 2022)",
    DkdParams,
    build
);

/// One row's log-probabilities at temperature `t`: (log p over all classes, log of the
/// non-target mass log(1 − p_g), log p̂ over the non-target classes with −∞ at `g`).
fn split(row: &[f32], g: usize, t: f64) -> (Vec<f64>, f64, Vec<f64>) {
    let (all, rest) = (log_sum_exp(row, t), log_sum_exp_masked(row, t, |k| k != g));
    (log_softmax(row, t), rest - all, log_softmax_masked(row, t, |k| k != g))
}

impl Loss for DkdParams {
    fn needs(&self) -> Needs {
        Needs { labels: true, ..Needs::TEACHER }
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let t_logits = x.teacher_logits.ok_or_else(|| anyhow::anyhow!("dkd needs teacher logits"))?;
        let labels =
            x.labels.ok_or_else(|| anyhow::anyhow!("dkd needs gold labels, and this stage has none"))?;
        let (b, c) = (x.batch, x.classes);
        anyhow::ensure!(c >= 2, "dkd needs at least two classes, the task has {c}");
        let t = self.temperature.at(x.step, x.total_steps) as f64;
        anyhow::ensure!(t > 0.0 && t.is_finite(), "dkd: the temperature is {t} at step {}", x.step);
        let scale = if self.scale_t2 { t * t } else { 1.0 };
        let (alpha, beta) = (self.alpha as f64, self.beta as f64);
        let mut value = 0f64;
        let mut grad = vec![0f32; b * c];
        for i in 0..b {
            let g = labels[i] as usize;
            anyhow::ensure!(g < c, "dkd: label {g} out of range for {c} classes");
            let (ls, ls_rest, lsh) = split(&x.student_logits[i * c..(i + 1) * c], g, t);
            let (lt, lt_rest, lth) = split(&t_logits[i * c..(i + 1) * c], g, t);
            let (bt_g, bt_n) = (lt[g].exp(), lt_rest.exp());
            let tckd = bt_g * (lt[g] - ls[g]) + bt_n * (lt_rest - ls_rest);
            // 0·log 0 = 0: skip the gold class and teacher probabilities that underflow.
            let nckd: f64 = (0..c)
                .filter(|&k| k != g)
                .map(|k| lth[k].exp() * (lth[k] - lsh[k]))
                .filter(|v| v.is_finite())
                .sum();
            let w = x.weights[i] as f64 / b as f64 * scale;
            value += w * (alpha * tckd + beta * nckd);
            // ∂TCKD/∂u_k = pₛ_k − bₜ_g·[k = g] − bₜ_n·p̂ₛ_k;  ∂NCKD/∂u_k = p̂ₛ_k − p̂ₜ_k (k ≠ g), u = z/T.
            for k in 0..c {
                let (ps, psh, pth) = (ls[k].exp(), lsh[k].exp(), lth[k].exp());
                let d_tckd = ps - if k == g { bt_g } else { bt_n * psh };
                let d_nckd = psh - pth;
                grad[i * c + k] = (w / t * (alpha * d_tckd + beta * d_nckd)) as f32;
            }
        }
        Ok(LossOutput { value: value as f32, grad_logits: grad, grad_hidden: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::testing::{gradient_check, SampleBatch};

    fn dkd(alpha: f32, beta: f32, t: f32) -> DkdParams {
        DkdParams { alpha, beta, temperature: Schedule::Constant(t), scale_t2: true }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for (a, b, t) in [(1.0, 8.0, 4.0), (1.0, 0.0, 1.0), (0.0, 1.0, 2.0), (0.5, 2.0, 1.0)] {
            let s = SampleBatch::random(6, 5, 2, 3.0, 11);
            let err = gradient_check(&mut dkd(a, b, t), &s.input(0, 10), 1e-2).unwrap();
            assert!(err < 1e-2, "α={a} β={b} T={t}: relative error {err}");
        }
    }

    #[test]
    fn value_matches_hand_computation() {
        // Gold 0; student uniform over 3 classes; teacher (4, 3, 1)/8.
        // TCKD = KL((½, ½) ‖ (⅓, ⅔)) = ½ ln(3/2) + ½ ln(3/4);
        // NCKD = KL((¾, ¼) ‖ (½, ½)) = ¾ ln(3/2) + ¼ ln(1/2).
        let mut s = SampleBatch::random(1, 3, 1, 1.0, 2);
        s.student_logits = vec![0.0, 0.0, 0.0];
        s.teacher_logits = vec![4f32.ln(), 3f32.ln(), 0.0];
        s.labels = vec![0];
        s.weights = vec![1.0];
        let v = dkd(1.0, 8.0, 1.0).compute(&s.input(0, 1)).unwrap().value as f64;
        let tckd = 0.5 * 1.5f64.ln() + 0.5 * 0.75f64.ln();
        let nckd = 0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln();
        assert!((v - (tckd + 8.0 * nckd)).abs() < 1e-6, "{v}");
    }

    #[test]
    fn no_nan_at_high_temperature_extreme_logits_and_one_hot_teachers() {
        let mut s = SampleBatch::random(6, 5, 1, 1.0, 3);
        let sign = |k: usize| if k.is_multiple_of(3) { 1000.0 } else { -1000.0 };
        s.student_logits = (0..30).map(sign).collect();
        s.teacher_logits = (0..30).map(|k| -sign(k + 1)).collect();
        for t in [20.0, 4.0, 1.0] {
            let out = dkd(1.0, 8.0, t).compute(&s.input(0, 1)).unwrap();
            assert!(out.value.is_finite() && out.grad_logits.iter().all(|g| g.is_finite()), "T={t}: {out:?}");
        }
        // Student equal to the teacher gives zero.
        s.student_logits = s.teacher_logits.clone();
        let out = dkd(1.0, 8.0, 20.0).compute(&s.input(0, 1)).unwrap();
        assert!(out.value.abs() < 1e-4 && out.grad_logits.iter().all(|g| g.abs() < 1e-4), "{out:?}");
    }
}
