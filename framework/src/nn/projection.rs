//! A learned projection from the student's hidden width to the teacher's.

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::Linear;
use crate::model::{Grad, Param};

/// When a loss on hidden representations puts a learned projection between the student's
/// and the teacher's widths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionMode {
    /// Only when the student's and the teacher's widths differ.
    #[default]
    Auto,
    /// Always, even for equal widths.
    Always,
    /// Never; the widths must match.
    Never,
}

/// Student hidden representation → teacher width: P = h W + b with a learned `Linear`
/// (`proj.w`, `proj.b`), or P = h without one. Created on first need, seeded, so a loss can
/// create it in `Loss::prepare` before a checkpoint is restored. Products run in f32
/// through gemm, the loss's criterion in f64; [`HiddenProjection::backward`] *sets* the
/// projection's gradients (a loss
/// computes once per step and the optimizer clears gradients after each step).
#[derive(Clone, Debug, Default)]
pub struct HiddenProjection {
    /// The projection, once created.
    pub linear: Option<Linear>,
}

impl HiddenProjection {
    /// Whether a projection is used for widths `hs → ht` under `mode`; creates it (from
    /// `seed`) on first need. `who` names the loss in errors.
    pub fn ensure(&mut self, mode: ProjectionMode, seed: u64, hs: usize, ht: usize, who: &str) -> anyhow::Result<bool> {
        anyhow::ensure!(hs > 0 && ht > 0, "{who}: a hidden width is 0 (student {hs}, teacher {ht})");
        let project = match mode {
            ProjectionMode::Auto => hs != ht,
            ProjectionMode::Always => true,
            ProjectionMode::Never => {
                anyhow::ensure!(hs == ht, "{who} with projection = \"never\" needs equal widths, student {hs} ≠ teacher {ht}");
                false
            }
        };
        if project && self.linear.is_none() {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            self.linear = Some(Linear::new("proj", hs, ht, &mut rng));
        }
        if let (true, Some(l)) = (project, &self.linear) {
            anyhow::ensure!(l.w.shape == [hs, ht], "{who}: the projection is {:?}, the widths are now {hs} → {ht}", l.w.shape);
        }
        Ok(project)
    }

    /// P (`b × ht`, f64) from the student hidden `h` (`b × hs`); the identity when `project` is false.
    pub fn forward(&self, project: bool, h: &[f32], b: usize, hs: usize, ht: usize) -> Vec<f64> {
        match (&self.linear, project) {
            (Some(l), true) => {
                debug_assert_eq!(l.w.shape, [hs, ht]);
                self.apply(h, b, hs).into_iter().map(f64::from).collect()
            }
            _ => h.iter().map(|&v| v as f64).collect(),
        }
    }

    /// P (`b × ht`) for inference: through the projection once it exists, else h itself
    /// (the widths were equal, or the loss never ran).
    pub fn apply(&self, h: &[f32], b: usize, hs: usize) -> Vec<f32> {
        use super::kernels::{add_bias, matmul, threads, Mat};
        match &self.linear {
            Some(l) => {
                // f32 through gemm: inference over a whole split is millions of rows.
                let ht = l.w.shape[1];
                assert_eq!(l.w.shape[0], hs, "projection from width {} applied to width {hs}", l.w.shape[0]);
                let mut out = vec![0f32; b * ht];
                matmul(&mut out, ht, Mat::new(h, b, hs), Mat::new(&l.w.data, hs, ht), false, threads());
                add_bias(&mut out, &l.b.data);
                out
            }
            None => h.to_vec(),
        }
    }

    /// A projection `hs → ht` whose values are about to be read from stored tensors
    /// (`proj.w`, `proj.b`).
    pub fn for_loading(hs: usize, ht: usize) -> HiddenProjection {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        HiddenProjection { linear: Some(Linear::new("proj", hs, ht, &mut rng)) }
    }

    /// The width of [`apply`](Self::apply)'s output for input width `hs`.
    pub fn output_dim(&self, hs: usize) -> usize {
        self.linear.as_ref().map_or(hs, |l| l.w.shape[1])
    }

    /// Given ∂L/∂P, sets the projection's gradients and returns ∂L/∂h (`b × hs`).
    pub fn backward(&mut self, project: bool, h: &[f32], dp: &[f64], b: usize, hs: usize, ht: usize) -> Vec<f32> {
        let l = match (&mut self.linear, project) {
            (Some(l), true) => l,
            _ => return dp.iter().map(|&v| v as f32).collect(),
        };
        // f32 products through gemm, as in the forward: scalar f64 loops made the projection
        // the costliest part of an n-gram student's step.
        use super::kernels::{add_column_sums, matmul, threads, Mat};
        let dpf: Vec<f32> = dp.iter().map(|&v| v as f32).collect();
        let (mut gw, mut gb, mut gh) = (vec![0f32; hs * ht], vec![0f32; ht], vec![0f32; b * hs]);
        matmul(&mut gh, hs, Mat::new(&dpf, b, ht), Mat::new(&l.w.data, hs, ht).t(), false, threads());
        matmul(&mut gw, ht, Mat::new(h, b, hs).t(), Mat::new(&dpf, b, ht), false, threads());
        add_column_sums(&mut gb, &dpf);
        l.w.grad = Grad::Dense(gw);
        l.b.grad = Grad::Dense(gb);
        gh
    }

    /// The projection's parameters (none before it exists).
    pub fn params(&self) -> Vec<&Param> {
        self.linear.iter().flat_map(|l| [&l.w, &l.b]).collect()
    }

    /// The same, mutably.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        self.linear.iter_mut().flat_map(|l| [&mut l.w, &mut l.b]).collect()
    }
}
