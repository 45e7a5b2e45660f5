//! A learned projection from the student's hidden width to the teacher's.

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::linear::Linear;
use crate::param::{Grad, Param};

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
    pub fn ensure(
        &mut self,
        mode: ProjectionMode,
        seed: u64,
        hs: usize,
        ht: usize,
        who: &str,
    ) -> anyhow::Result<bool> {
        anyhow::ensure!(hs > 0 && ht > 0, "{who}: a hidden width is 0 (student {hs}, teacher {ht})");
        let project = match mode {
            ProjectionMode::Auto => hs != ht,
            ProjectionMode::Always => true,
            ProjectionMode::Never => {
                anyhow::ensure!(
                    hs == ht,
                    "{who} with projection = \"never\" needs equal widths, student {hs} ≠ teacher {ht}"
                );
                false
            }
        };
        if project && self.linear.is_none() {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            self.linear = Some(Linear::new("proj", hs, ht, &mut rng));
        }
        if let (true, Some(l)) = (project, &self.linear) {
            anyhow::ensure!(
                l.w.shape == [hs, ht],
                "{who}: the projection is {:?}, the widths are now {hs} → {ht}",
                l.w.shape
            );
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
    pub fn backward(
        &mut self,
        project: bool,
        h: &[f32],
        dp: &[f64],
        b: usize,
        hs: usize,
        ht: usize,
    ) -> Vec<f32> {
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

    /// Sets the projection to the ridge least-squares map from `x` (`n × hs`, student
    /// hidden vectors) to `y` (`n × ht`, the teacher's): W = (X̃ᵀX̃ + λI)⁻¹ X̃ᵀỸ on centred
    /// rows, b = ȳ − x̄W, with λ = `ridge` · tr(X̃ᵀX̃)/hs. A student that starts from a
    /// pretrained space then trains from the best linear reading of it instead of a random
    /// one, which would pull the student's space towards the teacher's scale first and lose
    /// its structure on the way. Needs the projection to exist ([`Self::ensure`]).
    // The Cholesky factorisation and the triangular solves read rows and columns by index.
    #[allow(clippy::needless_range_loop)]
    pub fn fit_least_squares(&mut self, x: &[f32], y: &[f32], n: usize, ridge: f64) -> anyhow::Result<()> {
        let l = self.linear.as_mut().ok_or_else(|| {
            anyhow::anyhow!("no projection to fit (equal widths and projection = \"auto\"?)")
        })?;
        let (hs, ht) = (l.w.shape[0], l.w.shape[1]);
        anyhow::ensure!(
            n > 0 && x.len() == n * hs && y.len() == n * ht,
            "fitting a {hs} → {ht} projection to {n} rows"
        );
        let mean = |m: &[f32], w: usize| -> Vec<f64> {
            let mut s = vec![0f64; w];
            for r in m.chunks(w) {
                s.iter_mut().zip(r).for_each(|(a, &v)| *a += v as f64);
            }
            s.iter().map(|v| v / n as f64).collect()
        };
        let (mx, my) = (mean(x, hs), mean(y, ht));
        // A = X̃ᵀX̃ + λI (hs × hs), B = X̃ᵀỸ (hs × ht), in f64.
        let mut a = vec![0f64; hs * hs];
        let mut bm = vec![0f64; hs * ht];
        for (xr, yr) in x.chunks(hs).zip(y.chunks(ht)) {
            let xc: Vec<f64> = xr.iter().zip(&mx).map(|(&v, m)| v as f64 - m).collect();
            let yc: Vec<f64> = yr.iter().zip(&my).map(|(&v, m)| v as f64 - m).collect();
            for i in 0..hs {
                let xi = xc[i];
                a[i * hs..(i + 1) * hs].iter_mut().zip(&xc).for_each(|(p, &xj)| *p += xi * xj);
                bm[i * ht..(i + 1) * ht].iter_mut().zip(&yc).for_each(|(p, &yj)| *p += xi * yj);
            }
        }
        let trace: f64 = (0..hs).map(|i| a[i * hs + i]).sum();
        let lambda = ridge * trace / hs as f64 + 1e-12;
        (0..hs).for_each(|i| a[i * hs + i] += lambda);
        // Cholesky A = LLᵀ, then solve L Z = B and Lᵀ W = Z column block by column block.
        for j in 0..hs {
            let mut d = a[j * hs + j] - (0..j).map(|k| a[j * hs + k].powi(2)).sum::<f64>();
            anyhow::ensure!(
                d > 0.0,
                "the student's hidden vectors are degenerate (not positive definite at {j})"
            );
            d = d.sqrt();
            a[j * hs + j] = d;
            for i in j + 1..hs {
                let s: f64 = (0..j).map(|k| a[i * hs + k] * a[j * hs + k]).sum();
                a[i * hs + j] = (a[i * hs + j] - s) / d;
            }
        }
        for c in 0..ht {
            let mut z = vec![0f64; hs];
            for i in 0..hs {
                z[i] = (bm[i * ht + c] - (0..i).map(|k| a[i * hs + k] * z[k]).sum::<f64>()) / a[i * hs + i];
            }
            for i in (0..hs).rev() {
                z[i] = (z[i] - (i + 1..hs).map(|k| a[k * hs + i] * z[k]).sum::<f64>()) / a[i * hs + i];
            }
            for i in 0..hs {
                l.w.data[i * ht + c] = z[i] as f32;
            }
            l.b.data[c] = (my[c] - (0..hs).map(|i| mx[i] * z[i]).sum::<f64>()) as f32;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows that are an exact affine image of the inputs give that map back (ridge ≈ 0).
    #[test]
    fn least_squares_recovers_an_affine_map() {
        let (n, hs, ht) = (64, 3, 2);
        let w = [0.5f32, -1.0, 2.0, 0.25, -0.75, 1.5];
        let b = [0.1f32, -0.2];
        let x: Vec<f32> = (0..n * hs).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let y: Vec<f32> = x
            .chunks(hs)
            .flat_map(|r| {
                (0..ht)
                    .map(move |c| b[c] + (0..hs).map(|k| r[k] * w[k * ht + c]).sum::<f32>())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut p = HiddenProjection::default();
        p.ensure(ProjectionMode::Always, 1, hs, ht, "test").unwrap();
        p.fit_least_squares(&x, &y, n, 1e-9).unwrap();
        let l = p.linear.as_ref().unwrap();
        for (got, want) in l.w.data.iter().zip(w).chain(l.b.data.iter().zip(b)) {
            assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        }
        assert!(p.apply(&x, n, hs).iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-3));
    }
}
