//! `cosine-embedding`: align the direction of student and teacher hidden representations.

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, ProjectedHiddenLoss, ProjectionInit};
use kdx_framework::registry::BuildCtx;
use schemars::JsonSchema;
use serde::Deserialize;

/// Cosine embedding loss between hidden representations:
/// L = (1/B) Σᵢ wᵢ · (1 − cos(W hₛ,ᵢ + b, hₜ,ᵢ)), cos(u, v) = u·v / max(‖u‖·‖v‖, 10⁻⁸),
/// hₛ: student hidden (width Hₛ), hₜ: teacher hidden (width Hₜ), W (Hₛ → Hₜ, stored as
/// `proj.w` of shape [Hₛ, Hₜ]) and b (`proj.b`) a linear projection trained with the
/// student. Without a projection W h + b is hₛ itself (the widths must then match).
/// The projection is created on the first batch, when both widths are known, initialised
/// uniformly in ±1/√Hₛ from `seed`; until then the loss reports no parameters. The
/// gradient reaches the student through its hidden representation only (none through
/// the logits). Reads the teacher's hidden representation.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CosineEmbeddingParams {
    /// "auto": project only when the widths differ; "always"; "never" (widths must match).
    #[serde(default)]
    pub projection: Projection,
    /// Seed of the projection's initialisation.
    #[serde(default)]
    pub seed: u64,
    /// How the projection starts: "random", or "least-squares" (the best linear map from
    /// the student's hidden vectors to the teacher's on 4096 training examples, fitted
    /// before the first step: for a pretrained student, whose space is worth keeping).
    #[serde(default)]
    pub projection_init: ProjectionInit,
}

/// When to put a learned linear projection between student and teacher hidden states.
pub use kdx_framework::nn::ProjectionMode as Projection;

/// Floor of ‖u‖·‖v‖ in the cosine, as PyTorch's `cosine_similarity`.
const EPS: f64 = 1e-8;

fn build(p: CosineEmbeddingParams, _: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    Ok(Box::new(
        ProjectedHiddenLoss::new("cosine-embedding", p.projection, p.seed, one_minus_cosine)
            .with_init(p.projection_init),
    ))
}

kdx_framework::register_loss!(
    "cosine-embedding",
    "1 − cosine similarity between projected student and teacher hidden representations",
    CosineEmbeddingParams,
    build
);

/// w · (1 − cos(p, t)), and its gradient.
fn one_minus_cosine(p: &[f64], t: &[f32], w: f64, dp: &mut [f64]) -> f64 {
    let t: Vec<f64> = t.iter().map(|&v| v as f64).collect();
    let (np, nt) = (p.iter().map(|v| v * v).sum::<f64>().sqrt(), t.iter().map(|v| v * v).sum::<f64>().sqrt());
    let dot: f64 = p.iter().zip(&t).map(|(a, b)| a * b).sum();
    let (den, clamped) = if np * nt > EPS { (np * nt, false) } else { (EPS, true) };
    let cos = dot / den;
    // ∂cos/∂P = t/(‖P‖‖t‖) − cos·P/‖P‖² (or t/ε where the denominator is clamped).
    for j in 0..p.len() {
        let dcos = if clamped { t[j] / EPS } else { t[j] / den - cos * p[j] / (np * np) };
        dp[j] = -w * dcos;
    }
    w * (1.0 - cos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::loss::LossInput;
    use kdx_framework::testing::{gradient_check, SampleBatch};

    fn loss(projection: Projection) -> ProjectedHiddenLoss {
        ProjectedHiddenLoss::new("cosine-embedding", projection, 3, one_minus_cosine)
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Projection mechanics are tested once, with ProjectedHiddenLoss; here the criterion,
        // through a projection (unequal widths), always, and never.
        let s = SampleBatch::random(4, 3, 5, 2.0, 6);
        let th: Vec<f32> = s.teacher_hidden[..4 * 3].to_vec();
        let narrow = LossInput { teacher_hidden: Some(&th), teacher_hidden_dim: 3, ..s.input(0, 1) };
        for (p, x) in [
            (Projection::Auto, &narrow),
            (Projection::Always, &s.input(0, 1)),
            (Projection::Never, &s.input(0, 1)),
        ] {
            let err = gradient_check(&mut loss(p), x, 1e-2).unwrap();
            assert!(err < 1e-2, "{p:?}: relative error {err}");
        }
    }

    #[test]
    fn value_matches_hand_computation() {
        let mut s = SampleBatch::random(2, 2, 2, 1.0, 2);
        s.student_hidden = vec![1.0, 0.0, 0.0, 2.0];
        s.teacher_hidden = vec![1.0, 1.0, 0.0, -3.0];
        s.weights = vec![1.0, 0.5];
        // Row 0: cos = 1/√2; row 1: cos = −1, loss 2 with weight ½.
        let v = loss(Projection::Auto).compute(&s.input(0, 1)).unwrap().value;
        let expect = (1.0 - 0.5f32.sqrt() + 1.0) / 2.0;
        assert!((v - expect).abs() < 1e-6, "{v} vs {expect}");
        // Invariant to the scale of either side; zero vectors give finite results.
        s.student_hidden = vec![3.0, 3.0, 0.0, -0.5];
        assert!(loss(Projection::Auto).compute(&s.input(0, 1)).unwrap().value.abs() < 1e-6);
        s.student_hidden = vec![0.0; 4];
        let out = loss(Projection::Auto).compute(&s.input(0, 1)).unwrap();
        assert!(out.value.is_finite() && out.grad_hidden.unwrap().iter().all(|g| g.is_finite()));
    }
}
