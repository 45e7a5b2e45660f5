//! `soft-kl`: Hinton et al. (2015) distillation loss.

use kdx_framework::dfdx_prelude::*;
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{
    autodiff_logits, row_weights, softmax_rows, tensor2, Loss, LossInput, LossOutput, Needs,
};
use kdx_framework::registry::BuildCtx;
use kdx_framework::schedule::Schedule;
use schemars::JsonSchema;
use serde::Deserialize;

/// Hinton's soft-label loss:
/// L = T² · (1/B) Σᵢ wᵢ · KL(softmax(tᵢ/T) ‖ softmax(zᵢ/T)),
/// t: teacher logits, z: student logits, T: temperature. The T² factor keeps gradient
/// magnitudes comparable across temperatures; `scale_t2 = false` drops it (TextBrewer's
/// convention). The teacher side is computed in f64 with 0·log 0 = 0, so one-hot teacher
/// distributions (probabilities that underflow to 0) never give NaN.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SoftKlParams {
    /// Temperature T > 0: a number or a schedule (`{ kind = "cosine", start = 4.0, end = 1.0 }`).
    #[serde(default = "default_t")]
    pub temperature: Schedule,
    /// Multiply by T².
    #[serde(default = "yes")]
    pub scale_t2: bool,
}

fn default_t() -> Schedule {
    Schedule::Constant(2.0)
}
fn yes() -> bool {
    true
}

fn build(p: SoftKlParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    if !p.temperature.stays_positive() {
        return Err(ctx.error("temperature", format!("must be a positive number, found {:?}", p.temperature)));
    }
    Ok(Box::new(p))
}

kdx_framework::register_loss!(
    "soft-kl",
    "KL(teacher ‖ student) at temperature T, scaled by T² (Hinton 2015)",
    SoftKlParams,
    build
);

impl Loss for SoftKlParams {
    fn needs(&self) -> Needs {
        Needs::TEACHER
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let t_logits = x.teacher_logits.ok_or_else(|| anyhow::anyhow!("soft-kl needs teacher logits"))?;
        let (b, c, t) = (x.batch, x.classes, self.temperature.at(x.step, x.total_steps));
        let scale = if self.scale_t2 { t * t } else { 1.0 };
        let (p, lp) = softmax_rows(t_logits, c, t);
        // Constant part Σ p·log p (the teacher's negative entropy), weighted like the rest.
        let mut constant = 0f64;
        for i in 0..b {
            let w = x.weights[i] as f64 / b as f64;
            let ent: f64 =
                (0..c).map(|k| p[i * c + k] as f64 * lp[i * c + k] as f64).filter(|v| v.is_finite()).sum();
            constant += w * ent;
        }
        let target = tensor2(b, c, &p) * row_weights(b, c, x.weights);
        let (cross, grad) = autodiff_logits(b, c, x.student_logits, |z| {
            ((z * (1.0 / t)).log_softmax::<Axis<1>>() * target).sum::<(), _>().negate() * scale
        });
        Ok(LossOutput { value: cross + (constant as f32) * scale, grad_logits: grad, grad_hidden: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::testing::{gradient_check, SampleBatch};

    #[test]
    fn gradient_matches_finite_differences() {
        for (t, scale) in [(1.0, true), (4.0, true), (4.0, false)] {
            let mut l = SoftKlParams { temperature: Schedule::Constant(t), scale_t2: scale };
            let s = SampleBatch::random(5, 6, 2, 3.0, 4);
            let err = gradient_check(&mut l, &s.input(0, 10), 1e-2).unwrap();
            assert!(err < 1e-2, "T={t}: relative error {err}");
        }
    }

    #[test]
    fn zero_when_student_equals_teacher_and_safe_on_one_hot_teachers() {
        let mut l = SoftKlParams { temperature: Schedule::Constant(1.0), scale_t2: true };
        let mut s = SampleBatch::random(3, 4, 1, 2.0, 5);
        s.student_logits = s.teacher_logits.clone();
        let out = l.compute(&s.input(0, 1)).unwrap();
        assert!(out.value.abs() < 1e-5, "KL(p‖p) = {}", out.value);
        // Teacher logits so peaked that softmax underflows to exact zeros.
        s.teacher_logits = vec![1000.0, 0.0, 0.0, 0.0, 0.0, 900.0, 0.0, 0.0, -500.0, 0.0, 0.0, 0.0];
        let out = l.compute(&s.input(0, 1)).unwrap();
        assert!(out.value.is_finite() && out.grad_logits.iter().all(|g| g.is_finite()));
    }
}
