//! Optimizers (SGD with momentum, Adam, AdamW), learning-rate schedules and gradient
//! clipping, over [`Param`]s.
//!
//! Sparse semantics: a table parameter ([`Param::table`]) whose gradient arrives as
//! [`Grad::Rows`] is updated only on the rows the batch touched, when `sparse = true`
//! (the default). For Adam/AdamW this is "lazy Adam", exactly torch's `SparseAdam`: the
//! moments of untouched rows are neither updated nor decayed, and the bias correction uses
//! the global step count. AdamW's decoupled weight decay is applied to touched rows only.
//! For SGD with momentum, untouched rows keep their velocity frozen (torch's sparse SGD has
//! no momentum; ours matches plain SGD when momentum = 0). `sparse = false` scatters the rows
//! into a dense gradient and updates every row, as a dense optimizer would.

use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{Grad, Param, RowGrad};

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Stochastic gradient descent with (optional) momentum.
    Sgd,
    /// Adam (L2 weight decay added to the gradient).
    Adam,
    /// AdamW (decoupled weight decay).
    Adamw,
}

/// The optimizer section of a recipe (`optimizer = { kind = "adamw", lr = 3e-3 }`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Update rule: "sgd", "adam" or "adamw".
    #[serde(default = "default_kind")]
    pub kind: OptimizerKind,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f32,
    /// Weight decay (L2 for sgd/adam, decoupled for adamw); not applied to biases and norms.
    #[serde(default)]
    pub weight_decay: f32,
    /// Adam's β₁ and β₂.
    #[serde(default = "default_betas")]
    pub betas: [f32; 2],
    /// Adam's ε.
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// SGD momentum.
    #[serde(default)]
    pub momentum: f32,
    /// Update only the embedding rows a batch touches (lazy Adam); false = dense updates.
    #[serde(default = "yes")]
    pub sparse: bool,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Warm-up steps (linear from 0 to `lr`), for any schedule.
    #[serde(default)]
    pub warmup: u64,
    /// Clip gradients to this global L2 norm (0 = no clipping).
    #[serde(default)]
    pub clip_norm: f32,
}

fn default_kind() -> OptimizerKind {
    OptimizerKind::Adamw
}
fn default_lr() -> f32 {
    1e-3
}
fn default_betas() -> [f32; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f32 {
    1e-8
}
fn yes() -> bool {
    true
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: default_kind(),
            lr: default_lr(),
            weight_decay: 0.0,
            betas: default_betas(),
            eps: default_eps(),
            momentum: 0.0,
            sparse: true,
            schedule: LrSchedule::Constant,
            warmup: 0,
            clip_norm: 0.0,
        }
    }
}

/// Learning-rate schedules after warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Constant.
    #[default]
    Constant,
    /// Linear decay to zero at the last step.
    Linear,
    /// Cosine decay to zero at the last step.
    Cosine,
}

impl OptimizerConfig {
    /// The learning rate at `step` (0-based) of `total` steps.
    pub fn lr_at(&self, step: u64, total: u64) -> f32 {
        if self.warmup > 0 && step < self.warmup {
            return self.lr * (step + 1) as f32 / self.warmup as f32;
        }
        let span = total.saturating_sub(self.warmup).max(1) as f32;
        let t = ((step - self.warmup.min(step)) as f32 / span).clamp(0.0, 1.0);
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Linear => self.lr * (1.0 - t),
            LrSchedule::Cosine => self.lr * 0.5 * (1.0 + (std::f32::consts::PI * t).cos()),
        }
    }
}

/// Optimizer state of one parameter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamState {
    /// First moment (Adam) or velocity (SGD).
    pub m: Vec<f32>,
    /// Second moment (Adam).
    pub v: Vec<f32>,
}

/// An optimizer: a configuration, per-parameter state (in parameter order) and a step count.
#[derive(Clone, Debug)]
pub struct Optimizer {
    /// The configuration.
    pub config: OptimizerConfig,
    /// State per parameter, in the model's parameter order.
    pub state: Vec<ParamState>,
    /// Updates applied so far (Adam's bias correction uses it).
    pub t: u64,
}

const CHUNK: usize = 4096;

impl Optimizer {
    /// A fresh optimizer.
    pub fn new(config: OptimizerConfig) -> Optimizer {
        Optimizer { config, state: Vec::new(), t: 0 }
    }

    /// Global L2 norm of all gradients. Summed in parallel over fixed blocks whose partial
    /// sums are added in order (rayon's `sum` adds in an order that follows work stealing),
    /// so the same step gives the same bits every time.
    pub fn grad_norm(params: &[&mut Param]) -> f32 {
        let squares = |v: &[f32]| -> f64 {
            let blocks: Vec<f64> = v
                .par_chunks(1 << 14)
                .map(|b| b.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .collect();
            blocks.iter().sum()
        };
        let mut s = 0f64;
        for p in params {
            s += match &p.grad {
                Grad::None => 0.0,
                Grad::Rows(r) => squares(r.values()),
                Grad::Dense(g) => squares(g),
            };
        }
        s.sqrt() as f32
    }

    /// Checks that every gradient and every moment buffer has its parameter's size, before
    /// [`Optimizer::step`] writes anything (the touched-rows update writes through raw
    /// pointers, so a short buffer from a damaged checkpoint must never reach it).
    pub fn check(&self, params: &[&mut Param]) -> anyhow::Result<()> {
        let adam = self.config.kind != OptimizerKind::Sgd;
        for (i, p) in params.iter().enumerate() {
            let n = p.numel();
            anyhow::ensure!(
                p.shape.iter().product::<usize>() == n,
                "parameter `{}` holds {n} values but its shape is {:?}",
                p.name,
                p.shape
            );
            if let Some(st) = self.state.get(i) {
                anyhow::ensure!(
                    st.m.len() == n,
                    "optimizer state of `{}`: first moment has {} values, the parameter {n}",
                    p.name,
                    st.m.len()
                );
                let want_v = if adam { n } else { 0 };
                anyhow::ensure!(
                    st.v.len() == want_v,
                    "optimizer state of `{}`: second moment has {} values, expected {want_v}",
                    p.name,
                    st.v.len()
                );
            }
            match &p.grad {
                Grad::None => {}
                Grad::Dense(g) => {
                    anyhow::ensure!(
                        g.len() == n,
                        "gradient of `{}` has {} values, the parameter {n}",
                        p.name,
                        g.len()
                    )
                }
                Grad::Rows(r) => anyhow::ensure!(
                    p.shape.len() == 2 && p.shape[0] == r.table_rows() && p.shape[1] == r.width(),
                    "row gradient of `{}` is for a {} × {} table, the parameter is {:?}",
                    p.name,
                    r.table_rows(),
                    r.width(),
                    p.shape
                ),
            }
        }
        Ok(())
    }

    /// Applies one update with learning rate `lr`, then clears the gradients. Refuses
    /// (changing nothing) when a size does not match ([`Optimizer::check`]).
    pub fn step(&mut self, params: &mut [&mut Param], lr: f32) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.state.is_empty() || self.state.len() == params.len(),
            "the optimizer holds state for {} parameters, the model has {}",
            self.state.len(),
            params.len()
        );
        let c = self.config.clone();
        if self.state.len() != params.len() {
            self.state = fresh_state(&c, params);
        }
        self.check(params)?;
        self.t += 1;
        let scale = clip_scale(&c, params);
        let t = self.t as i32;
        let bc1 = 1.0 - c.betas[0].powi(t);
        let bc2 = 1.0 - c.betas[1].powi(t);
        for (p, st) in params.iter_mut().zip(&mut self.state) {
            let wd = if p.decay { c.weight_decay } else { 0.0 };
            let upd = Update { c: &c, lr, wd, scale, bc1, bc2 };
            match std::mem::take(&mut p.grad) {
                Grad::None => {}
                Grad::Dense(g) => upd.dense(p, st, g),
                // SAFETY: `self.check(params)` above accepted this parameter, its gradient and
                // its state, which is what `touched_rows` requires.
                Grad::Rows(rg) if c.sparse => unsafe { upd.touched_rows(p, st, &rg) },
                Grad::Rows(rg) => upd.every_row(p, st, &rg),
            }
        }
        Ok(())
    }
}

/// Zeroed moments for every parameter, the state of an optimizer's first step (SGD keeps no
/// second moment).
fn fresh_state(c: &OptimizerConfig, params: &[&mut Param]) -> Vec<ParamState> {
    params
        .iter()
        .map(|p| {
            let n = p.numel();
            let adam = c.kind != OptimizerKind::Sgd;
            ParamState { m: vec![0.0; n], v: if adam { vec![0.0; n] } else { Vec::new() } }
        })
        .collect()
}

/// The factor every gradient is multiplied by: `clip_norm / ‖g‖` when clipping is on and the
/// global norm exceeds it, 1 otherwise.
fn clip_scale(c: &OptimizerConfig, params: &[&mut Param]) -> f32 {
    if c.clip_norm > 0.0 {
        let n = Optimizer::grad_norm(params);
        if n > c.clip_norm {
            c.clip_norm / n
        } else {
            1.0
        }
    } else {
        1.0
    }
}

/// A raw pointer that may cross rayon tasks; callers guarantee disjoint access.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: the pointer is only dereferenced in `Update::touched_rows` (a step of
// `Optimizer::step`), where every task writes a disjoint slice (unique rows) and the buffer
// outlives the parallel loop.
unsafe impl Send for SharedMut {}
// SAFETY: as for `Send`: shared copies never write to overlapping memory.
unsafe impl Sync for SharedMut {}
impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn par_chunks_or_empty(v: &mut [f32], chunk: usize, n: usize) -> rayon::vec::IntoIter<&mut [f32]> {
    if v.is_empty() {
        let chunks = n.div_ceil(chunk);
        (0..chunks).map(|_| &mut [][..]).collect::<Vec<_>>().into_par_iter()
    } else {
        v.chunks_mut(chunk).collect::<Vec<_>>().into_par_iter()
    }
}

/// One update rule with its per-step constants.
struct Update<'a> {
    c: &'a OptimizerConfig,
    lr: f32,
    wd: f32,
    scale: f32,
    bc1: f32,
    bc2: f32,
}

impl Update<'_> {
    /// Updates `w` (and its moments `m`, `v`) from gradient `g`; all the same length
    /// (`v` empty for SGD). Written as zipped iterators so the loops vectorise.
    #[inline]
    fn apply(&self, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let c = self.c;
        let (b1, b2) = (c.betas[0], c.betas[1]);
        let (scale, lr, wd) = (self.scale, self.lr, self.wd);
        let g = &g[..w.len()];
        let m = &mut m[..w.len()];
        match c.kind {
            OptimizerKind::Sgd if c.momentum > 0.0 => {
                for ((w, &g), m) in w.iter_mut().zip(g).zip(m.iter_mut()) {
                    *m = c.momentum * *m + g * scale + wd * *w;
                    *w -= lr * *m;
                }
            }
            OptimizerKind::Sgd => {
                for (w, &g) in w.iter_mut().zip(g) {
                    *w -= lr * (g * scale + wd * *w);
                }
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let v = &mut v[..w.len()];
                let step_size = lr / self.bc1;
                let inv_sqrt_bc2 = 1.0 / self.bc2.sqrt();
                // AdamW decays the weight itself; Adam adds the decay to the gradient.
                let (shrink, l2) =
                    if c.kind == OptimizerKind::Adamw { (1.0 - lr * wd, 0.0) } else { (1.0, wd) };
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let gi = g * scale + l2 * *w;
                    *w *= shrink;
                    *m = b1 * *m + (1.0 - b1) * gi;
                    *v = b2 * *v + (1.0 - b2) * gi * gi;
                    *w -= step_size * *m / (v.sqrt() * inv_sqrt_bc2 + c.eps);
                }
            }
        }
    }

    /// A dense gradient: every value of the parameter moves, in parallel over fixed chunks.
    /// The gradient's buffer is then handed back to the parameter for the next step.
    fn dense(&self, p: &mut Param, st: &mut ParamState, g: Vec<f32>) {
        let n = p.data.len();
        p.data
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(st.m.par_chunks_mut(CHUNK))
            .zip(par_chunks_or_empty(&mut st.v, CHUNK, n))
            .for_each(|(((w, g), m), v)| self.apply(w, g, m, v));
        // The buffer serves the next step's gradient (Param::grad_buffer).
        p.spare.0 = g;
    }

    /// Sparse mode ("lazy" updates): only the rows the batch touched move, and only their
    /// moments change.
    ///
    /// # Safety
    ///
    /// [`Optimizer::check`] must have accepted `p` with `rg` as its gradient and `st` as its
    /// state: the rows are written through raw pointers, in bounds only because of it.
    unsafe fn touched_rows(&self, p: &mut Param, st: &mut ParamState, rg: &RowGrad) {
        let width = p.shape.last().copied().unwrap_or(1);
        let (rows, values) = (rg.rows(), rg.values());
        let adam = self.c.kind != OptimizerKind::Sgd;
        // Rows are unique, so the row slices are disjoint: update them in parallel.
        let data = SharedMut(p.data.as_mut_ptr());
        let m = SharedMut(st.m.as_mut_ptr());
        let v = SharedMut(st.v.as_mut_ptr());
        rows.par_iter().enumerate().with_min_len(64).for_each(|(k, &r)| {
            let off = r as usize * width;
            // SAFETY: `RowGrad::new` guarantees unique rows below `table_rows`, and `check`
            // (this function's precondition) proved `table_rows × width` is the length of the
            // parameter and of both moments (or that `v` is unused, for SGD). So `off + width`
            // is in bounds of each buffer and each task touches its own disjoint `width`-long
            // slice; the buffers outlive the loop.
            unsafe {
                let w = std::slice::from_raw_parts_mut(data.get().add(off), width);
                let mm = std::slice::from_raw_parts_mut(m.get().add(off), width);
                let vv: &mut [f32] =
                    if adam { std::slice::from_raw_parts_mut(v.get().add(off), width) } else { &mut [] };
                self.apply(w, &values[k * width..(k + 1) * width], mm, vv);
            }
        });
    }

    /// Dense mode for a touched-rows gradient: every row is updated, untouched ones with a
    /// zero gradient (their moments decay and still move them), without materialising the
    /// full-table gradient: a row → slot map finds each touched row's values.
    fn every_row(&self, p: &mut Param, st: &mut ParamState, rg: &RowGrad) {
        let width = p.shape.last().copied().unwrap_or(1);
        let (rows, values) = (rg.rows(), rg.values());
        let n_rows = p.data.len() / width.max(1);
        let mut slot = vec![u32::MAX; n_rows];
        for (k, &r) in rows.iter().enumerate() {
            slot[r as usize] = k as u32;
        }
        let zeros = vec![0f32; width];
        let rows_per_chunk = (CHUNK / width.max(1)).max(1);
        let chunk = rows_per_chunk * width;
        let n = p.data.len();
        p.data
            .par_chunks_mut(chunk)
            .zip(st.m.par_chunks_mut(chunk))
            .zip(par_chunks_or_empty(&mut st.v, chunk, n))
            .enumerate()
            .for_each(|(ci, ((w, m), v))| {
                for j in 0..w.len() / width {
                    let r = ci * rows_per_chunk + j;
                    let g = match slot[r] {
                        u32::MAX => &zeros[..],
                        k => &values[k as usize * width..(k as usize + 1) * width],
                    };
                    let vv: &mut [f32] =
                        if v.is_empty() { &mut [] } else { &mut v[j * width..(j + 1) * width] };
                    self.apply(&mut w[j * width..(j + 1) * width], g, &mut m[j * width..(j + 1) * width], vv);
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(data: &[f32], grad: Grad, table: bool) -> Param {
        let rows = if table { data.len() / 2 } else { 1 };
        let shape = if table { vec![rows, 2] } else { vec![data.len()] };
        Param {
            name: "p".into(),
            shape,
            data: data.to_vec(),
            grad,
            decay: true,
            table,
            spare: Default::default(),
        }
    }

    /// A touched-rows gradient of the 3 × 2 test table.
    fn rows(rows: Vec<u32>, values: Vec<f32>) -> Grad {
        Grad::Rows(crate::model::RowGrad::new(rows, values, 3, 2).unwrap())
    }

    fn cfg(kind: OptimizerKind) -> OptimizerConfig {
        OptimizerConfig { kind, lr: 0.1, ..Default::default() }
    }

    #[test]
    fn adam_first_steps_follow_the_formula() {
        // After bias correction Adam's first step is lr · g/|g| per coordinate.
        let mut p = param(&[1.0, -2.0], Grad::Dense(vec![0.5, -4.0]), false);
        let mut opt = Optimizer::new(cfg(OptimizerKind::Adam));
        opt.step(&mut [&mut p], 0.1).unwrap();
        assert!((p.data[0] - 0.9).abs() < 1e-6 && (p.data[1] + 1.9).abs() < 1e-6, "{:?}", p.data);
        assert_eq!(p.grad, Grad::None, "gradients are cleared after a step");
        // Second step by hand.
        p.grad = Grad::Dense(vec![1.0, 1.0]);
        opt.step(&mut [&mut p], 0.1).unwrap();
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let m = b1 * (0.1 * 0.5) + 0.1 * 1.0;
        let v = b2 * (0.001 * 0.25) + 0.001 * 1.0;
        let step = 0.1 * (m / (1.0 - b1 * b1)) / ((v / (1.0 - b2 * b2)).sqrt() + eps);
        assert!((p.data[0] as f64 - (0.9 - step)).abs() < 1e-5, "{} vs {}", p.data[0], 0.9 - step);
    }

    #[test]
    fn sgd_momentum_and_adamw_decay() {
        let mut p = param(&[1.0], Grad::Dense(vec![1.0]), false);
        let mut opt = Optimizer::new(OptimizerConfig { momentum: 0.9, ..cfg(OptimizerKind::Sgd) });
        opt.step(&mut [&mut p], 0.1).unwrap();
        p.grad = Grad::Dense(vec![1.0]);
        opt.step(&mut [&mut p], 0.1).unwrap();
        // v1 = 1, v2 = 0.9 + 1 = 1.9: w = 1 − 0.1 − 0.19.
        assert!((p.data[0] - 0.71).abs() < 1e-6);
        // AdamW with a zero gradient only decays: w ← w·(1 − lr·wd).
        let mut q = param(&[2.0], Grad::Dense(vec![0.0]), false);
        let mut opt = Optimizer::new(OptimizerConfig { weight_decay: 0.5, ..cfg(OptimizerKind::Adamw) });
        opt.step(&mut [&mut q], 0.1).unwrap();
        assert!((q.data[0] - 1.9).abs() < 1e-6);
    }

    #[test]
    fn lazy_rows_equal_dense_when_every_row_is_touched_and_skip_untouched_rows() {
        let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let rows_all = rows(vec![2, 0, 1], vec![0.5, 0.6, 0.1, 0.2, 0.3, 0.4]);
        let dense = Grad::Dense(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        let mut a = param(&data, rows_all, true);
        let mut b = param(&data, dense, true);
        let mut oa = Optimizer::new(cfg(OptimizerKind::Adam));
        let mut ob = Optimizer::new(cfg(OptimizerKind::Adam));
        oa.step(&mut [&mut a], 0.1).unwrap();
        ob.step(&mut [&mut b], 0.1).unwrap();
        assert_eq!(a.data, b.data);
        // Only row 1 touched: rows 0 and 2 keep their values and their moments.
        a.grad = rows(vec![1], vec![1.0, 1.0]);
        let before = (a.data.clone(), oa.state[0].m.clone());
        oa.step(&mut [&mut a], 0.1).unwrap();
        assert_eq!(&a.data[0..2], &before.0[0..2]);
        assert_eq!(&a.data[4..6], &before.0[4..6]);
        assert_eq!(&oa.state[0].m[4..6], &before.1[4..6]);
        assert_ne!(&a.data[2..4], &before.0[2..4]);
        // Dense mode updates untouched rows too (their moments carry momentum).
        let mut c = param(&data, rows(vec![0], vec![1.0, 1.0]), true);
        let mut oc = Optimizer::new(OptimizerConfig { sparse: false, ..cfg(OptimizerKind::Adam) });
        oc.step(&mut [&mut c], 0.1).unwrap();
        c.grad = rows(vec![1], vec![1.0, 1.0]);
        let row0 = c.data[0];
        oc.step(&mut [&mut c], 0.1).unwrap();
        assert_ne!(c.data[0], row0, "dense Adam keeps moving row 0 on its momentum");
    }

    #[test]
    fn row_gradients_and_damaged_state_are_refused_before_any_write() {
        use crate::model::RowGrad;
        assert!(RowGrad::new(vec![0, 0], vec![0.0; 4], 3, 2)
            .unwrap_err()
            .to_string()
            .contains("row 0 twice"));
        assert!(RowGrad::new(vec![3], vec![0.0; 2], 3, 2)
            .unwrap_err()
            .to_string()
            .contains("row 3 of a table of 3 rows"));
        assert!(RowGrad::new(vec![1], vec![0.0; 3], 3, 2)
            .unwrap_err()
            .to_string()
            .contains("3 values for 1 rows of width 2"));
        let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        // A gradient for a table of another shape.
        let mut p = param(&data, Grad::Rows(RowGrad::new(vec![3], vec![1.0, 1.0], 4, 2).unwrap()), true);
        let mut opt = Optimizer::new(cfg(OptimizerKind::Adam));
        let e = opt.step(&mut [&mut p], 0.1).unwrap_err().to_string();
        assert!(e.contains("4 × 2 table, the parameter is [3, 2]"), "{e}");
        assert_eq!(p.data, data, "nothing written");
        // Moments shorter than the parameter (a damaged checkpoint).
        let mut p = param(&data, rows(vec![2], vec![1.0, 1.0]), true);
        let mut opt = Optimizer::new(cfg(OptimizerKind::Adam));
        opt.state = vec![ParamState { m: vec![0.0; 2], v: vec![0.0; 6] }];
        let e = opt.step(&mut [&mut p], 0.1).unwrap_err().to_string();
        assert!(e.contains("first moment has 2 values, the parameter 6"), "{e}");
        assert_eq!(p.data, data, "nothing written");
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let mut p = param(&[0.0, 0.0], Grad::Dense(vec![3.0, 4.0]), false);
        let mut opt = Optimizer::new(OptimizerConfig { clip_norm: 1.0, ..cfg(OptimizerKind::Sgd) });
        opt.step(&mut [&mut p], 1.0).unwrap();
        assert!((p.data[0] + 0.6).abs() < 1e-6 && (p.data[1] + 0.8).abs() < 1e-6, "{:?}", p.data);
    }

    #[test]
    fn learning_rate_schedules() {
        let mut c = OptimizerConfig { lr: 1.0, warmup: 10, ..Default::default() };
        assert!((c.lr_at(0, 110) - 0.1).abs() < 1e-6);
        assert_eq!(c.lr_at(9, 110), 1.0);
        assert_eq!(c.lr_at(50, 110), 1.0);
        c.schedule = LrSchedule::Linear;
        assert!((c.lr_at(60, 110) - 0.5).abs() < 1e-6);
        c.schedule = LrSchedule::Cosine;
        assert!((c.lr_at(60, 110) - 0.5).abs() < 1e-6);
        assert!(c.lr_at(110, 110).abs() < 1e-6);
    }
}
