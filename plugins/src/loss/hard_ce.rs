//! `hard-ce`: cross-entropy against the gold labels.

use kdx_framework::dfdx_prelude::*;
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{autodiff_logits, row_weights, tensor2, Loss, LossInput, LossOutput};
use kdx_framework::registry::BuildCtx;
use schemars::JsonSchema;
use serde::Deserialize;

/// Cross-entropy with the gold labels:
/// L = (1/B) Σᵢ wᵢ · (−Σ_c qᵢc · log softmax(zᵢ)_c), with q = (1−ε)·onehot(yᵢ) + ε/C
/// (label smoothing ε, 0 by default). z: student logits, w: per-example weights.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HardCeParams {
    /// Label smoothing ε in [0, 1).
    #[serde(default)]
    pub label_smoothing: f32,
}

fn build(p: HardCeParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    if !(0.0..1.0).contains(&p.label_smoothing) {
        return Err(ctx.error("label_smoothing", format!("must be in [0, 1), found {}", p.label_smoothing)));
    }
    Ok(Box::new(p))
}

kdx_framework::register_loss!("hard-ce", "cross-entropy with the gold labels (optional label smoothing)", HardCeParams, build);

impl Loss for HardCeParams {
    fn needs_teacher(&self) -> bool {
        false
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let labels = x.labels.ok_or_else(|| anyhow::anyhow!("hard-ce needs gold labels, and this stage has none"))?;
        let (b, c) = (x.batch, x.classes);
        let eps = self.label_smoothing;
        let mut q = vec![eps / c as f32; b * c];
        for (i, &y) in labels.iter().enumerate() {
            q[i * c + y as usize] += 1.0 - eps;
        }
        let target = tensor2(b, c, &q) * row_weights(b, c, x.weights);
        let (value, grad) = autodiff_logits(b, c, x.student_logits, |z| (z.log_softmax::<Axis<1>>() * target).sum::<(), _>().negate());
        Ok(LossOutput { value, grad_logits: grad, grad_hidden: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::loss::{gradient_check, SampleBatch};

    #[test]
    fn gradient_matches_finite_differences() {
        for eps in [0.0, 0.1] {
            let mut l = HardCeParams { label_smoothing: eps };
            let s = SampleBatch::random(6, 5, 3, 3.0, 1);
            let err = gradient_check(&mut l, &s.input(0, 10), 1e-2).unwrap();
            assert!(err < 1e-2, "relative error {err}");
        }
    }

    #[test]
    fn value_is_mean_negative_log_likelihood() {
        let mut l = HardCeParams { label_smoothing: 0.0 };
        let mut s = SampleBatch::random(2, 3, 1, 1.0, 2);
        s.student_logits = vec![0.0, 0.0, 0.0, 2.0, 0.0, 0.0];
        s.labels = vec![1, 0];
        s.weights = vec![1.0, 1.0];
        let v = l.compute(&s.input(0, 1)).unwrap().value;
        let expect = (3f32.ln() + ((2f32.exp() + 2.0).ln() - 2.0)) / 2.0;
        assert!((v - expect).abs() < 1e-5, "{v} vs {expect}");
    }
}
