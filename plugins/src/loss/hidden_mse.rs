//! `hidden-mse`: match the teacher's hidden representation through a learned projection.

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, ProjectedHiddenLoss, ProjectionInit};
use kdx_framework::registry::BuildCtx;
use schemars::JsonSchema;
use serde::Deserialize;

/// Squared error between hidden representations (FitNets-style hint loss):
/// L = (1/B) Σᵢ wᵢ · (1/Hₜ) Σⱼ ((W hₛ,ᵢ + b)ⱼ − hₜ,ᵢⱼ)²,
/// hₛ: student hidden (width Hₛ), hₜ: teacher hidden (width Hₜ), W (Hₛ → Hₜ, stored as
/// `proj.w` of shape [Hₛ, Hₜ]) and b (`proj.b`) a linear projection trained with the
/// student. Without a projection W h + b is hₛ itself (the widths must then match).
/// The projection is created on the first batch, when both widths are known, initialised
/// uniformly in ±1/√Hₛ from `seed`; until then the loss reports no parameters. The
/// gradient reaches the student through its hidden representation only (none through
/// the logits). Reads the teacher's hidden representation.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HiddenMseParams {
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

fn build(p: HiddenMseParams, _: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    Ok(Box::new(
        ProjectedHiddenLoss::new("hidden-mse", p.projection, p.seed, squared_error)
            .with_init(p.projection_init),
    ))
}

kdx_framework::register_loss!(
    "hidden-mse",
    "MSE between projected student and teacher hidden representations",
    HiddenMseParams,
    build
);

/// w · (1/Hₜ) Σⱼ (pⱼ − tⱼ)², and its gradient.
fn squared_error(p: &[f64], t: &[f32], w: f64, dp: &mut [f64]) -> f64 {
    let ht = p.len() as f64;
    let mut value = 0f64;
    for j in 0..p.len() {
        let d = p[j] - t[j] as f64;
        value += w * d * d / ht;
        dp[j] = 2.0 * w * d / ht;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::loss::LossInput;
    use kdx_framework::testing::{gradient_check, SampleBatch};

    fn loss(projection: Projection) -> ProjectedHiddenLoss {
        ProjectedHiddenLoss::new("hidden-mse", projection, 3, squared_error)
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
        s.student_hidden = vec![1.0, 2.0, 0.0, 0.0];
        s.teacher_hidden = vec![0.0, 0.0, 1.0, 3.0];
        s.weights = vec![1.0, 0.5];
        // Row 0: (1 + 4)/2 = 2.5; row 1: (1 + 9)/2 = 5 with weight ½ → (2.5 + 2.5)/2.
        let v = loss(Projection::Auto).compute(&s.input(0, 1)).unwrap().value;
        assert!((v - 2.5).abs() < 1e-6, "{v}");
    }
}
