//! `mse-logits`: logit matching (Ba & Caruana 2014).

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, LossInput, LossOutput, Needs};
use kdx_framework::registry::BuildCtx;
use schemars::JsonSchema;
use serde::Deserialize;

/// Squared error between student and teacher logits (Ba & Caruana 2014):
/// L = (1/B) Σᵢ wᵢ · (1/C) Σ_c (zᵢc − tᵢc)²,
/// z: student logits, t: teacher logits. With `center = true` each row's mean is
/// subtracted from z and from t first (logits are only defined up to a constant per row,
/// so this matches the two softmax distributions without penalising a shift).
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MseLogitsParams {
    /// Subtract each row's mean from student and teacher logits before comparing them.
    #[serde(default)]
    pub center: bool,
}

fn build(p: MseLogitsParams, _: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    Ok(Box::new(p))
}

kdx_framework::register_loss!(
    "mse-logits",
    "mean squared error between student and teacher logits (Ba & Caruana 2014)",
    MseLogitsParams,
    build
);

impl Loss for MseLogitsParams {
    fn needs(&self) -> Needs {
        Needs::TEACHER
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let t_logits = x.teacher_logits.ok_or_else(|| anyhow::anyhow!("mse-logits needs teacher logits"))?;
        let (b, c) = (x.batch, x.classes);
        let mut value = 0f64;
        let mut grad = vec![0f32; b * c];
        for i in 0..b {
            let mut d: Vec<f64> =
                (0..c).map(|k| x.student_logits[i * c + k] as f64 - t_logits[i * c + k] as f64).collect();
            if self.center {
                // Centering both rows is centering their difference.
                let mean = d.iter().sum::<f64>() / c as f64;
                d.iter_mut().for_each(|v| *v -= mean);
            }
            let w = x.weights[i] as f64 / b as f64;
            value += w * d.iter().map(|v| v * v).sum::<f64>() / c as f64;
            // The centering projection is symmetric and idempotent and d is already
            // centred, so the gradient is 2·d/C either way.
            for k in 0..c {
                grad[i * c + k] = (w * 2.0 * d[k] / c as f64) as f32;
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
        for center in [false, true] {
            let s = SampleBatch::random(5, 6, 2, 3.0, 4);
            let err = gradient_check(&mut MseLogitsParams { center }, &s.input(0, 10), 1e-2).unwrap();
            assert!(err < 1e-2, "center={center}: relative error {err}");
        }
    }

    #[test]
    fn value_matches_hand_computation() {
        let mut s = SampleBatch::random(2, 2, 1, 1.0, 2);
        s.student_logits = vec![1.0, 3.0, 0.0, 0.0];
        s.teacher_logits = vec![0.0, 1.0, 2.0, 2.0];
        s.weights = vec![1.0, 0.5];
        // Row 0: (1 + 4)/2 = 2.5; row 1: (4 + 4)/2 = 4 with weight ½ → (2.5 + 2)/2.
        let v = MseLogitsParams { center: false }.compute(&s.input(0, 1)).unwrap().value;
        assert!((v - 2.25).abs() < 1e-6, "{v}");
        // Centred: row 0 differences (1, 2) → (−½, ½) → ¼; row 1 (−2, −2) → 0 → ¼ / 2.
        let v = MseLogitsParams { center: true }.compute(&s.input(0, 1)).unwrap().value;
        assert!((v - 0.125).abs() < 1e-6, "{v}");
    }
}
