//! `hidden-mse`: match the teacher's hidden representation through a learned projection.

use kdx_framework::engine::nn::HiddenProjection;
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, LossInput, LossOutput};
use kdx_framework::model::Param;
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
}

/// When to put a learned linear projection between student and teacher hidden states.
pub use kdx_framework::engine::nn::ProjectionMode as Projection;

/// The loss with its (lazily created) projection.
pub struct HiddenMse {
    /// Parameters from the recipe.
    pub params: HiddenMseParams,
    /// The projection, once the widths are known.
    pub proj: HiddenProjection,
}

fn build(p: HiddenMseParams, _: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    Ok(Box::new(HiddenMse { params: p, proj: HiddenProjection::default() }))
}

kdx_framework::register_loss!("hidden-mse", "MSE between projected student and teacher hidden representations", HiddenMseParams, build);

impl HiddenMse {
    /// Whether a projection is used for these widths; creates it (seeded) on first need.
    fn ensure_projection(&mut self, hs: usize, ht: usize) -> anyhow::Result<bool> {
        self.proj.ensure(self.params.projection, self.params.seed, hs, ht, "hidden-mse")
    }
}

impl Loss for HiddenMse {
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
        let th = x.teacher_hidden.ok_or_else(|| anyhow::anyhow!("hidden-mse needs the teacher's hidden representation"))?;
        let (b, hs, ht) = (x.batch, x.student_hidden_dim, x.teacher_hidden_dim);
        let project = self.ensure_projection(hs, ht)?;
        // P = hₛ W + b (or hₛ), dP = ∂L/∂P.
        let p = self.proj.forward(project, x.student_hidden, b, hs, ht);
        let mut dp = vec![0f64; b * ht];
        let mut value = 0f64;
        for i in 0..b {
            let w = x.weights[i] as f64 / b as f64;
            for j in 0..ht {
                let d = p[i * ht + j] - th[i * ht + j] as f64;
                value += w * d * d / ht as f64;
                dp[i * ht + j] = 2.0 * w * d / ht as f64;
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

    fn loss(projection: Projection) -> HiddenMse {
        HiddenMse { params: HiddenMseParams { projection, seed: 3 }, proj: HiddenProjection::default() }
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
    fn value_matches_hand_computation_and_init_is_seeded() {
        let mut s = SampleBatch::random(2, 2, 2, 1.0, 2);
        s.student_hidden = vec![1.0, 2.0, 0.0, 0.0];
        s.teacher_hidden = vec![0.0, 0.0, 1.0, 3.0];
        s.weights = vec![1.0, 0.5];
        // Row 0: (1 + 4)/2 = 2.5; row 1: (1 + 9)/2 = 5 with weight ½ → (2.5 + 2.5)/2.
        let v = loss(Projection::Auto).compute(&s.input(0, 1)).unwrap().value;
        assert!((v - 2.5).abs() < 1e-6, "{v}");
        let (mut a, mut b) = (loss(Projection::Always), loss(Projection::Always));
        a.compute(&s.input(0, 1)).unwrap();
        b.compute(&s.input(0, 1)).unwrap();
        assert_eq!(a.params()[0].data, b.params()[0].data);
    }
}
