//! `reverse-kl`: the mode-seeking KL(student ‖ teacher).

use kdx_framework::dylib::kdx_sdk::math::log_softmax;
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, LossInput, LossOutput, Needs};
use kdx_framework::registry::BuildCtx;
use kdx_framework::schedule::Schedule;
use schemars::JsonSchema;
use serde::Deserialize;

/// Reverse KL at temperature T:
/// L = T² · (1/B) Σᵢ wᵢ · KL(softmax(zᵢ/T) ‖ softmax(tᵢ/T)),
/// z: student logits, t: teacher logits, w: per-example weights. Unlike `soft-kl` it is
/// mode-seeking: the student is pushed onto the teacher's most probable classes rather
/// than made to cover all of them. `scale_t2 = false` drops the T² factor. Both sides are
/// computed as log-softmax in f64, so teacher probabilities that underflow to 0 never give NaN.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseKlParams {
    /// Temperature T > 0: a number or a schedule over the stage.
    #[serde(default = "default_t")]
    pub temperature: Schedule,
    /// Multiply by T².
    #[serde(default = "yes")]
    pub scale_t2: bool,
}

fn default_t() -> Schedule {
    Schedule::Constant(1.0)
}
fn yes() -> bool {
    true
}

fn build(p: ReverseKlParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    if !p.temperature.stays_positive() {
        return Err(
            ctx.error("temperature", format!("must stay positive over the stage, found {:?}", p.temperature))
        );
    }
    Ok(Box::new(p))
}

kdx_framework::register_loss!(
    "reverse-kl",
    "KL(student ‖ teacher) at temperature T, scaled by T² (mode-seeking)",
    ReverseKlParams,
    build
);

impl Loss for ReverseKlParams {
    fn needs(&self) -> Needs {
        Needs::TEACHER
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let t_logits = x.teacher_logits.ok_or_else(|| anyhow::anyhow!("reverse-kl needs teacher logits"))?;
        let (b, c) = (x.batch, x.classes);
        let t = self.temperature.at(x.step, x.total_steps) as f64;
        anyhow::ensure!(t > 0.0 && t.is_finite(), "reverse-kl: the temperature is {t} at step {}", x.step);
        let scale = if self.scale_t2 { t * t } else { 1.0 };
        let mut value = 0f64;
        let mut grad = vec![0f32; b * c];
        for i in 0..b {
            let ls = log_softmax(&x.student_logits[i * c..(i + 1) * c], t);
            let lt = log_softmax(&t_logits[i * c..(i + 1) * c], t);
            let q: Vec<f64> = ls.iter().map(|v| v.exp()).collect();
            // KL(q ‖ p) = Σ q (log q − log p); ∂/∂(z/T)_k = q_k (a_k − KL) with a = log q − log p.
            let a: Vec<f64> = ls.iter().zip(&lt).map(|(s, t)| s - t).collect();
            let kl: f64 = q.iter().zip(&a).map(|(q, a)| q * a).sum();
            let w = x.weights[i] as f64 / b as f64 * scale;
            value += w * kl;
            for k in 0..c {
                grad[i * c + k] = (w / t * q[k] * (a[k] - kl)) as f32;
            }
        }
        Ok(LossOutput { value: value as f32, grad_logits: grad, grad_hidden: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::testing::{gradient_check, SampleBatch};

    #[test]
    fn gradient_matches_finite_differences() {
        for (t, scale) in [(1.0, true), (4.0, true), (3.0, false)] {
            let mut l = ReverseKlParams { temperature: Schedule::Constant(t), scale_t2: scale };
            let s = SampleBatch::random(5, 6, 2, 3.0, 4);
            let err = gradient_check(&mut l, &s.input(0, 10), 1e-2).unwrap();
            assert!(err < 1e-2, "T={t}: relative error {err}");
        }
    }

    #[test]
    fn value_matches_hand_computation_and_is_safe_on_one_hot_teachers() {
        let mut l = ReverseKlParams { temperature: Schedule::Constant(1.0), scale_t2: true };
        let mut s = SampleBatch::random(1, 2, 1, 1.0, 2);
        // q = (1/2, 1/2), p = (3/4, 1/4): KL(q‖p) = ½ ln(4/3).
        s.student_logits = vec![0.0, 0.0];
        s.teacher_logits = vec![3f32.ln(), 0.0];
        s.weights = vec![1.0];
        let v = l.compute(&s.input(0, 1)).unwrap().value;
        assert!((v - 0.5 * (4f32 / 3.0).ln()).abs() < 1e-6, "{v}");
        s.teacher_logits = vec![1000.0, -1000.0];
        let out = l.compute(&s.input(0, 1)).unwrap();
        assert!(out.value.is_finite() && out.grad_logits.iter().all(|g| g.is_finite()));
    }
}
