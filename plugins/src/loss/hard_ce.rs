//! `hard-ce`: cross-entropy against the gold labels.

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{CrossEntropy, Loss};
use kdx_framework::registry::BuildCtx;
use schemars::JsonSchema;
use serde::Deserialize;

/// Cross-entropy with the gold labels (the framework's [`CrossEntropy`]):
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
    Ok(Box::new(CrossEntropy { label_smoothing: p.label_smoothing }))
}

kdx_framework::register_loss!(
    "hard-ce",
    "cross-entropy with the gold labels (optional label smoothing)",
    HardCeParams,
    build
);

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::testing::{gradient_check, SampleBatch};

    #[test]
    fn gradient_matches_finite_differences() {
        for eps in [0.0, 0.1] {
            let mut l = CrossEntropy { label_smoothing: eps };
            let s = SampleBatch::random(6, 5, 3, 3.0, 1);
            let err = gradient_check(&mut l, &s.input(0, 10), 1e-2).unwrap();
            assert!(err < 1e-2, "relative error {err}");
        }
    }

    #[test]
    fn value_is_mean_negative_log_likelihood() {
        let mut l = CrossEntropy { label_smoothing: 0.0 };
        let mut s = SampleBatch::random(2, 3, 1, 1.0, 2);
        s.student_logits = vec![0.0, 0.0, 0.0, 2.0, 0.0, 0.0];
        s.labels = vec![1, 0];
        s.weights = vec![1.0, 1.0];
        let v = l.compute(&s.input(0, 1)).unwrap().value;
        let expect = (3f32.ln() + ((2f32.exp() + 2.0).ln() - 2.0)) / 2.0;
        assert!((v - expect).abs() < 1e-5, "{v} vs {expect}");
    }
}
