//! Runtime-sized layers on dfdx tensors: a fused embedding bag over hashed ids, linear
//! layers, layer norm, dropout and activations, assembled into an [`Mlp`] head.
//!
//! Dense layers run on dfdx with its autodiff. The embedding bag is fused by hand (row
//! gather + mean in one pass, spread over the batch with rayon) and its backward produces
//! gradients for the touched rows only ([`Grad::Rows`]): dfdx's generic gather would
//! materialise a dense gradient of the whole table every step, which dominated the step
//! time when measured (see DESIGN.md).

use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dfdx_prelude::*;
use crate::features::Bags;
use crate::model::{Grad, OutputGrads, Outputs, Param, StepCtx};

/// Initialises a parameter uniformly in ±`bound` from a seeded RNG.
pub fn init_uniform(p: &mut Param, bound: f32, rng: &mut impl Rng) {
    for x in &mut p.data {
        *x = rng.gen_range(-bound..=bound);
    }
}

/// An embedding bag: each example is the mean of the table rows of its ids (the zero vector
/// for an empty bag).
#[derive(Clone, Debug)]
pub struct EmbeddingBag {
    /// `rows × dim` table.
    pub table: Param,
    /// Scratch: the slot of each row touched in the current batch (`u32::MAX` = none).
    slot: Vec<u32>,
}

impl EmbeddingBag {
    /// A table of `rows × dim`, initialised uniformly in ±1/dim as fastText does (small
    /// initial bag means keep the first steps stable).
    pub fn new(name: &str, rows: usize, dim: usize, rng: &mut impl Rng) -> EmbeddingBag {
        let mut table = Param::zeros(name, &[rows, dim], false);
        table.table = true;
        init_uniform(&mut table, 1.0 / dim as f32, rng);
        EmbeddingBag { table, slot: Vec::new() }
    }

    /// Width of a row.
    pub fn dim(&self) -> usize {
        self.table.shape[1]
    }

    /// `B × dim` bag means.
    pub fn forward(&self, x: &Bags) -> Vec<f32> {
        let d = self.dim();
        let table = &self.table.data;
        let mut out = vec![0f32; x.len() * d];
        out.par_chunks_mut(d).enumerate().with_min_len(16).for_each(|(i, row)| {
            let ids = x.bag(i);
            if ids.is_empty() {
                return;
            }
            for &id in ids {
                let r = &table[id as usize * d..(id as usize + 1) * d];
                row.iter_mut().zip(r).for_each(|(o, v)| *o += v);
            }
            let inv = 1.0 / ids.len() as f32;
            row.iter_mut().for_each(|o| *o *= inv);
        });
        out
    }

    /// Back-propagates `dout` (`B × dim`) into a touched-rows gradient in `table.grad`.
    pub fn backward(&mut self, x: &Bags, dout: &[f32]) {
        let d = self.dim();
        let rows_total = self.table.shape[0];
        if self.slot.len() != rows_total {
            self.slot = vec![u32::MAX; rows_total];
        }
        let mut rows: Vec<u32> = Vec::new();
        let mut values: Vec<f32> = Vec::new();
        for i in 0..x.len() {
            let ids = x.bag(i);
            if ids.is_empty() {
                continue;
            }
            let inv = 1.0 / ids.len() as f32;
            let g = &dout[i * d..(i + 1) * d];
            for &id in ids {
                let s = &mut self.slot[id as usize];
                if *s == u32::MAX {
                    *s = rows.len() as u32;
                    rows.push(id);
                    values.extend(std::iter::repeat(0.0).take(d));
                }
                let k = *s as usize;
                values[k * d..(k + 1) * d].iter_mut().zip(g).for_each(|(a, b)| *a += b * inv);
            }
        }
        for &r in &rows {
            self.slot[r as usize] = u32::MAX;
        }
        self.table.grad = Grad::Rows { rows, values };
    }
}

/// A dense layer `y = x W + b` with `W: in × out`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `in × out` weights.
    pub w: Param,
    /// `out` bias.
    pub b: Param,
}

impl Linear {
    /// Kaiming-uniform-like initialisation (±1/√in), as PyTorch's `nn.Linear`.
    pub fn new(name: &str, input: usize, output: usize, rng: &mut impl Rng) -> Linear {
        let mut w = Param::zeros(format!("{name}.w"), &[input, output], true);
        let mut b = Param::zeros(format!("{name}.b"), &[output], false);
        let bound = 1.0 / (input as f32).sqrt();
        init_uniform(&mut w, bound, rng);
        init_uniform(&mut b, bound, rng);
        Linear { w, b }
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.w.shape[1]
    }
}

/// Non-linearities between hidden layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// max(0, x).
    #[default]
    Relu,
    /// tanh(x).
    Tanh,
    /// GELU (tanh approximation).
    Gelu,
}

/// Layer norm parameters (gain and bias over the feature axis).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Gain, initialised to one.
    pub gain: Param,
    /// Bias, initialised to zero.
    pub bias: Param,
}

/// A feed-forward head: hidden layers (linear → optional layer norm → activation →
/// dropout) and an output layer. The representation after the last hidden layer (or the
/// input when there is none) is the "hidden" handed to losses.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// Hidden layers.
    pub hidden: Vec<Linear>,
    /// One layer norm per hidden layer, when enabled.
    pub norms: Vec<LayerNorm>,
    /// The output layer.
    pub out: Linear,
    /// Activation after each hidden layer.
    pub activation: Activation,
    /// Dropout probability after each hidden activation (training only).
    pub dropout: f32,
    /// Input width.
    pub input: usize,
}

/// dfdx tensors bound to the head's parameters for one pass, in [`Mlp::params`] order.
struct Bound(Vec<Tensor<(usize, usize), f32, Dev>>);

impl Mlp {
    /// A head `input → hidden[0] → … → classes`.
    pub fn new(
        input: usize,
        hidden: &[usize],
        classes: usize,
        activation: Activation,
        layer_norm: bool,
        dropout: f32,
        rng: &mut impl Rng,
    ) -> Mlp {
        let mut layers = Vec::new();
        let mut norms = Vec::new();
        let mut width = input;
        for (i, &h) in hidden.iter().enumerate() {
            layers.push(Linear::new(&format!("hidden.{i}"), width, h, rng));
            if layer_norm {
                let mut gain = Param::zeros(format!("norm.{i}.gain"), &[h], false);
                gain.data.fill(1.0);
                norms.push(LayerNorm { gain, bias: Param::zeros(format!("norm.{i}.bias"), &[h], false) });
            }
            width = h;
        }
        let out = Linear::new("out", width, classes, rng);
        Mlp { hidden: layers, norms, out, activation, dropout, input }
    }

    /// Width of the hidden representation.
    pub fn hidden_dim(&self) -> usize {
        self.hidden.last().map_or(self.input, Linear::out_dim)
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.out.out_dim()
    }

    /// The parameters, in a fixed order.
    pub fn params(&self) -> Vec<&Param> {
        let mut v = Vec::new();
        for (i, l) in self.hidden.iter().enumerate() {
            v.push(&l.w);
            v.push(&l.b);
            if let Some(n) = self.norms.get(i) {
                v.push(&n.gain);
                v.push(&n.bias);
            }
        }
        v.push(&self.out.w);
        v.push(&self.out.b);
        v
    }

    /// The parameters, mutably, in [`Mlp::params`] order.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = Vec::new();
        let mut norms = self.norms.iter_mut();
        for l in self.hidden.iter_mut() {
            v.push(&mut l.w);
            v.push(&mut l.b);
            if let Some(n) = norms.next() {
                v.push(&mut n.gain);
                v.push(&mut n.bias);
            }
        }
        v.push(&mut self.out.w);
        v.push(&mut self.out.b);
        v
    }

    /// Binds the parameters to tensors (biases as `1 × n` rows, broadcast over the batch).
    fn bind(&self, dev: &Dev) -> Bound {
        Bound(
            self.params()
                .into_iter()
                .map(|p| {
                    let (r, c) = if p.shape.len() == 2 { (p.shape[0], p.shape[1]) } else { (1, p.shape[0]) };
                    dev.tensor_from_vec(p.data.clone(), (r, c))
                })
                .collect(),
        )
    }

    /// The forward pass on any tape. Returns (hidden, logits). `mask_seed` enables dropout.
    fn run<T: Tape<f32, Dev> + Merge<NoneTape>>(
        &self,
        bound: &Bound,
        x: Tensor<(usize, usize), f32, Dev, T>,
        mask_seed: Option<u64>,
    ) -> Tensor<(usize, usize), f32, Dev, T> {
        let dev = device();
        let batch = x.shape().0;
        let mut k = 0;
        let mut h = x;
        let mut rng = mask_seed.map(rand::rngs::StdRng::seed_from_u64);
        for i in 0..self.hidden.len() {
            let (w, b) = (&bound.0[k], &bound.0[k + 1]);
            k += 2;
            let width = w.shape().1;
            h = h.matmul(w.clone()) + b.clone().reshape_like(&(width,)).broadcast_like::<_, Axis<0>>(&(batch, width));
            if !self.norms.is_empty() && i < self.norms.len() {
                let (g, bb) = (&bound.0[k], &bound.0[k + 1]);
                k += 2;
                h = h.normalize::<Axis<1>>(1e-5) * g.clone().reshape_like(&(width,)).broadcast_like::<_, Axis<0>>(&(batch, width))
                    + bb.clone().reshape_like(&(width,)).broadcast_like::<_, Axis<0>>(&(batch, width));
            }
            h = match self.activation {
                Activation::Relu => h.relu(),
                Activation::Tanh => h.tanh(),
                Activation::Gelu => h.fast_gelu(),
            };
            if let (Some(rng), true) = (rng.as_mut(), self.dropout > 0.0) {
                // Our own seeded mask (not the device RNG): resumed runs draw identical masks.
                let keep = 1.0 - self.dropout;
                let mask: Vec<f32> = (0..batch * width).map(|_| if rng.gen::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
                h = h * dev.tensor_from_vec(mask, (batch, width));
            }
        }
        h
    }

    /// Output layer on the hidden representation.
    fn output<T: Tape<f32, Dev> + Merge<NoneTape>>(
        &self,
        bound: &Bound,
        h: Tensor<(usize, usize), f32, Dev, T>,
    ) -> Tensor<(usize, usize), f32, Dev, T> {
        let n = bound.0.len();
        let (w, b) = (&bound.0[n - 2], &bound.0[n - 1]);
        let batch = h.shape().0;
        let c = w.shape().1;
        h.matmul(w.clone()) + b.clone().reshape_like(&(c,)).broadcast_like::<_, Axis<0>>(&(batch, c))
    }

    /// Inference: `x` is `B × input`.
    pub fn forward(&self, x: Vec<f32>, batch: usize) -> Outputs {
        let dev = device();
        let bound = self.bind(&dev);
        let x: T2 = dev.tensor_from_vec(x, (batch, self.input));
        let h = self.run(&bound, x, None);
        let hidden = h.as_vec();
        let logits = self.output(&bound, h).as_vec();
        Outputs { batch, logits, classes: self.classes(), hidden, hidden_dim: self.hidden_dim() }
    }

    /// Training pass: forward, ask `objective` for output gradients, back-propagate into the
    /// parameters' gradients; returns the outputs and the gradient with respect to `x`.
    pub fn forward_backward(
        &mut self,
        x: Vec<f32>,
        batch: usize,
        ctx: StepCtx,
        objective: &mut dyn FnMut(&Outputs) -> anyhow::Result<OutputGrads>,
    ) -> anyhow::Result<(Outputs, Vec<f32>)> {
        let dev = device();
        let bound = self.bind(&dev);
        let x_leaf: T2 = dev.tensor_from_vec(x, (batch, self.input));
        let h = self.run(&bound, x_leaf.leaky_trace(), Some(ctx.seed));
        // A second handle on the hidden representation with its own tape: the hidden-state
        // gradient enters through it and the tapes merge in the final sum.
        let h_branch = h.with_empty_tape();
        let hidden = h.as_vec();
        let logits = self.output(&bound, h);
        let outputs = Outputs { batch, logits: logits.as_vec(), classes: self.classes(), hidden, hidden_dim: self.hidden_dim() };
        let g = objective(&outputs)?;
        anyhow::ensure!(g.logits.len() == outputs.logits.len(), "logit gradient has the wrong size");
        // Surrogate objective: sum(z ⊙ g) has gradient g with respect to z.
        let gl: T2 = dev.tensor_from_vec(g.logits, (batch, self.classes()));
        let mut surrogate = (logits * gl).sum::<(), _>();
        if let Some(gh) = g.hidden {
            anyhow::ensure!(gh.len() == outputs.hidden.len(), "hidden gradient has the wrong size");
            let gh: T2 = dev.tensor_from_vec(gh, (batch, self.hidden_dim()));
            surrogate = surrogate + (h_branch * gh).sum::<(), _>();
        }
        let grads = surrogate.backward();
        for (p, t) in self.params_mut().into_iter().zip(&bound.0) {
            p.add_dense_grad(&grads.get(t).as_vec());
        }
        let dx = grads.get(&x_leaf).as_vec();
        Ok((outputs, dx))
    }
}

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
/// create it in `Loss::prepare` before a checkpoint is restored. Gradients are computed in
/// f64 on the host; [`HiddenProjection::backward`] *sets* the projection's gradients (a loss
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
            (Some(l), true) => (0..b)
                .flat_map(|i| {
                    let h = &h[i * hs..(i + 1) * hs];
                    (0..ht).map(move |j| l.b.data[j] as f64 + (0..hs).map(|a| h[a] as f64 * l.w.data[a * ht + j] as f64).sum::<f64>())
                })
                .collect(),
            _ => h.iter().map(|&v| v as f64).collect(),
        }
    }

    /// P (`b × ht`) for inference: through the projection once it exists, else h itself
    /// (the widths were equal, or the loss never ran).
    pub fn apply(&self, h: &[f32], b: usize, hs: usize) -> Vec<f32> {
        match &self.linear {
            Some(l) => self.forward(true, h, b, hs, l.w.shape[1]).into_iter().map(|v| v as f32).collect(),
            None => h.to_vec(),
        }
    }

    /// Given ∂L/∂P, sets the projection's gradients and returns ∂L/∂h (`b × hs`).
    pub fn backward(&mut self, project: bool, h: &[f32], dp: &[f64], b: usize, hs: usize, ht: usize) -> Vec<f32> {
        let l = match (&mut self.linear, project) {
            (Some(l), true) => l,
            _ => return dp.iter().map(|&v| v as f32).collect(),
        };
        let (mut gw, mut gb, mut gh) = (vec![0f64; hs * ht], vec![0f64; ht], vec![0f32; b * hs]);
        for i in 0..b {
            let hi = &h[i * hs..(i + 1) * hs];
            let dpi = &dp[i * ht..(i + 1) * ht];
            for j in 0..ht {
                gb[j] += dpi[j];
            }
            for a in 0..hs {
                let row = &l.w.data[a * ht..(a + 1) * ht];
                gh[i * hs + a] = (0..ht).map(|j| row[j] as f64 * dpi[j]).sum::<f64>() as f32;
                for j in 0..ht {
                    gw[a * ht + j] += hi[a] as f64 * dpi[j];
                }
            }
        }
        l.w.grad = Grad::Dense(gw.into_iter().map(|v| v as f32).collect());
        l.b.grad = Grad::Dense(gb.into_iter().map(|v| v as f32).collect());
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;

    fn objective_value(out: &Outputs, wl: &[f32], wh: &[f32]) -> f32 {
        // A fixed smooth scalar of the outputs: Σ wl·logits² + Σ wh·hidden.
        out.logits.iter().zip(wl).map(|(z, w)| w * z * z).sum::<f32>() + out.hidden.iter().zip(wh).map(|(h, w)| w * h).sum::<f32>()
    }

    /// Finite-difference check of every layer's gradient (embedding bag, linear, layer
    /// norm, activations) through the whole head.
    #[test]
    fn mlp_and_bag_gradients_match_finite_differences() {
        for (act, ln) in [(Activation::Relu, false), (Activation::Tanh, true), (Activation::Gelu, true)] {
            let mut rng = StdRng::seed_from_u64(3);
            let mut bag = EmbeddingBag::new("emb", 11, 4, &mut rng);
            init_uniform(&mut bag.table, 0.5, &mut rng);
            let mut mlp = Mlp::new(4, &[5], 3, act, ln, 0.0, &mut rng);
            let x = Bags { offsets: vec![0, 3, 3, 5], ids: vec![1, 2, 1, 7, 10], langs: Vec::new() };
            let b = x.len();
            let wl: Vec<f32> = (0..b * 3).map(|i| (i as f32 * 0.37).sin()).collect();
            let wh: Vec<f32> = (0..b * 5).map(|i| (i as f32 * 0.51).cos()).collect();
            let x0 = bag.forward(&x);
            let ctx = StepCtx { step: 0, seed: 1 };
            let (_, dx) = mlp
                .forward_backward(x0, b, ctx, &mut |o| {
                    Ok(OutputGrads { logits: o.logits.iter().zip(&wl).map(|(z, w)| 2.0 * w * z).collect(), hidden: Some(wh.clone()) })
                })
                .unwrap();
            bag.backward(&x, &dx);
            let f = |bag: &EmbeddingBag, mlp: &Mlp| {
                let out = mlp.forward(bag.forward(&x), b);
                objective_value(&out, &wl, &wh) as f64
            };
            let eps = 1e-2f32;
            // Parameters of the head.
            let grads: Vec<Vec<f32>> = mlp
                .params()
                .iter()
                .map(|p| match &p.grad {
                    Grad::Dense(g) => g.clone(),
                    _ => panic!("dense grad expected"),
                })
                .collect();
            for (pi, g) in grads.iter().enumerate() {
                for j in 0..g.len() {
                    let mut m = mlp.clone();
                    m.params_mut()[pi].data[j] += eps;
                    let up = f(&bag, &m);
                    m.params_mut()[pi].data[j] -= 2.0 * eps;
                    let down = f(&bag, &m);
                    let num = ((up - down) / (2.0 * eps as f64)) as f32;
                    assert!((num - g[j]).abs() < 2e-2 * (1.0 + num.abs()), "{act:?} param {pi}[{j}]: {num} vs {}", g[j]);
                }
            }
            // Touched rows of the embedding table.
            let Grad::Rows { rows, values } = bag.table.grad.clone() else { panic!("rows expected") };
            assert_eq!(rows, vec![1, 2, 7, 10]);
            for (k, &r) in rows.iter().enumerate() {
                for c in 0..4 {
                    let mut bg = bag.clone();
                    bg.table.data[r as usize * 4 + c] += eps;
                    let up = f(&bg, &mlp);
                    bg.table.data[r as usize * 4 + c] -= 2.0 * eps;
                    let down = f(&bg, &mlp);
                    let num = ((up - down) / (2.0 * eps as f64)) as f32;
                    let a = values[k * 4 + c];
                    assert!((num - a).abs() < 2e-2 * (1.0 + num.abs()), "{act:?} row {r} col {c}: {num} vs {a}");
                }
            }
        }
    }

    #[test]
    fn empty_bag_is_zero_vector() {
        let mut rng = StdRng::seed_from_u64(1);
        let bag = EmbeddingBag::new("emb", 5, 3, &mut rng);
        let x = Bags { offsets: vec![0, 0, 1], ids: vec![2], langs: Vec::new() };
        let out = bag.forward(&x);
        assert_eq!(&out[..3], &[0.0, 0.0, 0.0]);
        assert_eq!(&out[3..], &bag.table.data[6..9]);
    }
}
