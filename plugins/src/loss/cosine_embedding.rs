//! `cosine-embedding`: align the direction of student and teacher hidden representations.

use kdx_framework::engine::nn::HiddenProjection;
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, LossInput, LossOutput};
use kdx_framework::model::Param;
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
}

/// When to put a learned linear projection between student and teacher hidden states.
pub use kdx_framework::engine::nn::ProjectionMode as Projection;

/// The loss with its (lazily created) projection.
pub struct CosineEmbedding {
    /// Parameters from the recipe.
    pub params: CosineEmbeddingParams,
    /// The projection, once the widths are known.
    pub proj: HiddenProjection,
}

/// Floor of ‖u‖·‖v‖ in the cosine, as PyTorch's `cosine_similarity`.
const EPS: f64 = 1e-8;

fn build(p: CosineEmbeddingParams, _: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    Ok(Box::new(CosineEmbedding { params: p, proj: HiddenProjection::default() }))
}

kdx_framework::register_loss!(
    "cosine-embedding",
    "1 − cosine similarity between projected student and teacher hidden representations",
    CosineEmbeddingParams,
    build
);

impl CosineEmbedding {
    /// Whether a projection is used for these widths; creates it (seeded) on first need.
    fn ensure_projection(&mut self, hs: usize, ht: usize) -> anyhow::Result<bool> {
        self.proj.ensure(self.params.projection, self.params.seed, hs, ht, "cosine-embedding")
    }
}

impl Loss for CosineEmbedding {
    fn needs_teacher(&self) -> bool {
        true
    }
    fn needs_labels(&self) -> bool {
        false
    }
    fn needs_teacher_hidden(&self) -> bool {
        true
    }
    fn prepare(&mut self, student_hidden_dim: usize, teacher_hidden_dim: usize) -> anyhow::Result<()> {
        if student_hidden_dim > 0 && teacher_hidden_dim > 0 {
            self.ensure_projection(student_hidden_dim, teacher_hidden_dim)?;
        }
        Ok(())
    }
    fn params(&self) -> Vec<&Param> {
        self.proj.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.proj.params_mut()
    }
    fn embed(&self, student_hidden: &[f32], batch: usize, student_hidden_dim: usize) -> Option<Vec<f32>> {
        Some(self.proj.apply(student_hidden, batch, student_hidden_dim))
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let th = x.teacher_hidden.ok_or_else(|| anyhow::anyhow!("cosine-embedding needs the teacher's hidden representation"))?;
        let (b, hs, ht) = (x.batch, x.student_hidden_dim, x.teacher_hidden_dim);
        let project = self.ensure_projection(hs, ht)?;
        // P = hₛ W + b (or hₛ), dP = ∂L/∂P.
        let proj_out = self.proj.forward(project, x.student_hidden, b, hs, ht);
        let mut dp = vec![0f64; b * ht];
        let mut value = 0f64;
        for i in 0..b {
            let p = &proj_out[i * ht..(i + 1) * ht];
            let t: Vec<f64> = th[i * ht..(i + 1) * ht].iter().map(|&v| v as f64).collect();
            let (np, nt) = (p.iter().map(|v| v * v).sum::<f64>().sqrt(), t.iter().map(|v| v * v).sum::<f64>().sqrt());
            let dot: f64 = p.iter().zip(&t).map(|(a, b)| a * b).sum();
            let w = x.weights[i] as f64 / b as f64;
            let (den, clamped) = if np * nt > EPS { (np * nt, false) } else { (EPS, true) };
            let cos = dot / den;
            value += w * (1.0 - cos);
            // ∂cos/∂P = t/(‖P‖‖t‖) − cos·P/‖P‖² (or t/ε where the denominator is clamped).
            for j in 0..ht {
                let dcos = if clamped { t[j] / EPS } else { t[j] / den - cos * p[j] / (np * np) };
                dp[i * ht + j] = -w * dcos;
            }
        }
        let grad_hidden = self.proj.backward(project, x.student_hidden, &dp, b, hs, ht);
        Ok(LossOutput { value: value as f32, grad_logits: vec![0.0; b * x.classes], grad_hidden: Some(grad_hidden) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::loss::{gradient_check, SampleBatch};

    fn loss(projection: Projection) -> CosineEmbedding {
        CosineEmbedding { params: CosineEmbeddingParams { projection, seed: 3 }, proj: HiddenProjection::default() }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let s = SampleBatch::random(4, 3, 5, 2.0, 6);
        // Different widths: the teacher is 3 wide, the student 5.
        let th: Vec<f32> = s.teacher_hidden[..4 * 3].to_vec();
        let x = LossInput { teacher_hidden: Some(&th), teacher_hidden_dim: 3, ..s.input(0, 1) };
        let mut l = loss(Projection::Auto);
        assert!(l.params().is_empty(), "no projection before the first batch");
        let err = gradient_check(&mut l, &x, 1e-2).unwrap();
        assert!(err < 1e-2, "relative error {err}");
        let names: Vec<_> = l.params().iter().map(|p| (p.name.clone(), p.shape.clone())).collect();
        assert_eq!(names, vec![("proj.w".to_string(), vec![5, 3]), ("proj.b".to_string(), vec![3])]);
        for p in [Projection::Never, Projection::Always] {
            let mut l = loss(p);
            let err = gradient_check(&mut l, &s.input(0, 1), 1e-2).unwrap();
            assert!(err < 1e-2, "{p:?}: relative error {err}");
            assert_eq!(l.params().len(), if p == Projection::Always { 2 } else { 0 });
        }
        assert!(loss(Projection::Never).compute(&x).is_err(), "unequal widths without projection");
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
