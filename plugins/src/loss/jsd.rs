//! `jsd`: a skewed Jensen–Shannon divergence between teacher and student.

use kdx_framework::dylib::kdx_sdk::math::{log_softmax, log_sum_exp};
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, LossInput, LossOutput, Needs};
use kdx_framework::registry::BuildCtx;
use kdx_framework::schedule::Schedule;
use schemars::JsonSchema;
use serde::Deserialize;

/// Skewed Jensen–Shannon divergence at temperature T:
/// L = T² · (1/B) Σᵢ wᵢ · JSD_β(Pₜ,ᵢ, Pₛ,ᵢ), with Pₜ = softmax(t/T), Pₛ = softmax(z/T),
/// M = β·Pₜ + (1−β)·Pₛ and JSD_β = (1−β)·KL(Pₜ ‖ M) + β·KL(Pₛ ‖ M).
/// The limits are exact: β = 0 gives M = Pₛ and the forward KL(Pₜ ‖ Pₛ) of `soft-kl`;
/// β = 1 gives M = Pₜ and the reverse KL(Pₛ ‖ Pₜ) of `reverse-kl`; β = ½ is the usual
/// symmetric JSD. (This differs from the GKD form of Agarwal et al. 2024, whose weights are
/// swapped and which vanishes at both ends.) `scale_t2 = false` drops T². Everything is
/// computed in log space in f64, so probabilities that underflow to 0 never give NaN.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsdParams {
    /// Skew β in [0, 1]: 0 = forward KL(teacher ‖ student), 1 = reverse KL(student ‖ teacher).
    #[serde(default = "half")]
    pub beta: f32,
    /// Temperature T > 0: a number or a schedule over the stage.
    #[serde(default = "default_t")]
    pub temperature: Schedule,
    /// Multiply by T².
    #[serde(default = "yes")]
    pub scale_t2: bool,
}

fn half() -> f32 {
    0.5
}
fn default_t() -> Schedule {
    Schedule::Constant(1.0)
}
fn yes() -> bool {
    true
}

fn build(p: JsdParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    if !(0.0..=1.0).contains(&p.beta) {
        return Err(ctx.error("beta", format!("must be in [0, 1], found {}", p.beta)));
    }
    if !p.temperature.stays_positive() {
        return Err(
            ctx.error("temperature", format!("must stay positive over the stage, found {:?}", p.temperature))
        );
    }
    Ok(Box::new(p))
}

kdx_framework::register_loss!(
    "jsd",
    "skewed Jensen–Shannon divergence: β = 0 forward KL, β = 1 reverse KL, scaled by T²",
    JsdParams,
    build
);

/// log(e^a + e^b), with −∞ allowed in either (both −∞ give −∞, where log-sum-exp's
/// `−∞ − (−∞)` would give NaN).
fn log_add(a: f64, b: f64) -> f64 {
    if a.max(b) == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else {
        log_sum_exp(&[a, b], 1.0)
    }
}

impl Loss for JsdParams {
    fn needs(&self) -> Needs {
        Needs::TEACHER
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let t_logits = x.teacher_logits.ok_or_else(|| anyhow::anyhow!("jsd needs teacher logits"))?;
        let (b, c) = (x.batch, x.classes);
        let t = self.temperature.at(x.step, x.total_steps) as f64;
        anyhow::ensure!(t > 0.0 && t.is_finite(), "jsd: the temperature is {t} at step {}", x.step);
        let scale = if self.scale_t2 { t * t } else { 1.0 };
        let beta = self.beta as f64;
        let (lb, lb1) = (beta.ln(), (1.0 - beta).ln());
        let mut value = 0f64;
        let mut grad = vec![0f32; b * c];
        let mut h = vec![0f64; c];
        for i in 0..b {
            let ls = log_softmax(&x.student_logits[i * c..(i + 1) * c], t);
            let lt = log_softmax(&t_logits[i * c..(i + 1) * c], t);
            let mut jsd = 0f64;
            for k in 0..c {
                // log M_k; finite because one of its two terms has a positive weight.
                let lm = log_add(lb + lt[k], lb1 + ls[k]);
                let (pt, ps) = (lt[k].exp(), ls[k].exp());
                jsd += (1.0 - beta) * pt * (lt[k] - lm) + beta * ps * (ls[k] - lm);
                // h_k = Pₛ_k · ∂JSD/∂Pₛ_k, each ratio taken in log space. A ratio is bounded
                // wherever its coefficient is non-zero (M ≥ β·Pₜ and M ≥ (1−β)·Pₛ), and is
                // skipped where the coefficient is zero (it may overflow there).
                let term = |coef: f64, log: f64| if coef == 0.0 { 0.0 } else { coef * log.exp() };
                h[k] = term(-(1.0 - beta).powi(2), lt[k] + ls[k] - lm)
                    + beta * ps * (ls[k] - lm)
                    + term(-beta * (1.0 - beta), 2.0 * ls[k] - lm);
            }
            let w = x.weights[i] as f64 / b as f64 * scale;
            value += w * jsd;
            // Through the softmax: ∂/∂(z/T)_k = h_k − Pₛ_k Σ h.
            let sum_h: f64 = h.iter().sum();
            for k in 0..c {
                grad[i * c + k] = (w / t * (h[k] - ls[k].exp() * sum_h)) as f32;
            }
        }
        Ok(LossOutput { value: value as f32, grad_logits: grad, grad_hidden: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::reverse_kl::ReverseKlParams;
    use crate::loss::soft_kl::SoftKlParams;
    use kdx_framework::testing::{gradient_check, SampleBatch};

    fn jsd(beta: f32, t: f32) -> JsdParams {
        JsdParams { beta, temperature: Schedule::Constant(t), scale_t2: true }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for beta in [0.0, 0.3, 1.0] {
            for t in [1.0, 3.0] {
                let s = SampleBatch::random(5, 6, 2, 3.0, 7);
                let err = gradient_check(&mut jsd(beta, t), &s.input(0, 10), 1e-2).unwrap();
                assert!(err < 1e-2, "β={beta} T={t}: relative error {err}");
            }
        }
    }

    #[test]
    fn limits_are_forward_and_reverse_kl() {
        let s = SampleBatch::random(6, 5, 2, 3.0, 8);
        let x = s.input(0, 1);
        let fwd = SoftKlParams { temperature: Schedule::Constant(2.0), scale_t2: true }.compute(&x).unwrap();
        let rev =
            ReverseKlParams { temperature: Schedule::Constant(2.0), scale_t2: true }.compute(&x).unwrap();
        let j0 = jsd(0.0, 2.0).compute(&x).unwrap();
        let j1 = jsd(1.0, 2.0).compute(&x).unwrap();
        assert!((j0.value - fwd.value).abs() < 1e-5, "{} vs {}", j0.value, fwd.value);
        assert!((j1.value - rev.value).abs() < 1e-5, "{} vs {}", j1.value, rev.value);
        for (a, b) in
            j0.grad_logits.iter().zip(&fwd.grad_logits).chain(j1.grad_logits.iter().zip(&rev.grad_logits))
        {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn symmetric_value_by_hand_and_safe_on_one_hot_teachers() {
        // Pₜ = (1, 0), Pₛ = (½, ½), β = ½: M = (¾, ¼),
        // JSD = ½·ln(4/3) + ½·(½ ln(2/3) + ½ ln 2) = ½ ln(4/3) + ¼ ln(4/3) = ¾ ln(4/3).
        let mut s = SampleBatch::random(1, 2, 1, 1.0, 2);
        s.student_logits = vec![0.0, 0.0];
        s.teacher_logits = vec![1000.0, -1000.0];
        s.weights = vec![1.0];
        let out = jsd(0.5, 1.0).compute(&s.input(0, 1)).unwrap();
        assert!((out.value - 0.75 * (4f32 / 3.0).ln()).abs() < 1e-6, "{}", out.value);
        s.student_logits = vec![-1000.0, 1000.0];
        for beta in [0.0, 0.5, 1.0] {
            let out = jsd(beta, 1.0).compute(&s.input(0, 1)).unwrap();
            assert!(
                out.value.is_finite() && out.grad_logits.iter().all(|g| g.is_finite()),
                "β={beta}: {out:?}"
            );
        }
    }
}
