//! A feed-forward head on dfdx: hidden layers and an output layer, with autodiff.

use rand::{Rng, SeedableRng};

use super::{Activation, LayerNorm, Linear};
use crate::dfdx_prelude::*;
use crate::model::{OutputGrads, Outputs, Param, StepCtx};

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
                norms.push(LayerNorm::new(&format!("norm.{i}"), h));
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
        Outputs { batch, logits, classes: self.classes(), hidden, hidden_dim: self.hidden_dim(), layers: None }
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
        let outputs =
            Outputs { batch, logits: logits.as_vec(), classes: self.classes(), hidden, hidden_dim: self.hidden_dim(), layers: None };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Bags;
    use crate::model::Grad;
    use crate::nn::{init_uniform, EmbeddingBag};
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
            let x0 = bag.forward(&x).unwrap();
            let ctx = StepCtx::new(0, 1);
            let (_, dx) = mlp
                .forward_backward(x0, b, ctx, &mut |o| {
                    Ok(OutputGrads {
                        logits: o.logits.iter().zip(&wl).map(|(z, w)| 2.0 * w * z).collect(),
                        hidden: Some(wh.clone()),
                        layers: None,
                    })
                })
                .unwrap();
            bag.backward(&x, &dx);
            let f = |bag: &EmbeddingBag, mlp: &Mlp| {
                let out = mlp.forward(bag.forward(&x).unwrap(), b);
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
                for (j, &gj) in g.iter().enumerate() {
                    let mut m = mlp.clone();
                    m.params_mut()[pi].data[j] += eps;
                    let up = f(&bag, &m);
                    m.params_mut()[pi].data[j] -= 2.0 * eps;
                    let down = f(&bag, &m);
                    let num = ((up - down) / (2.0 * eps as f64)) as f32;
                    assert!((num - gj).abs() < 2e-2 * (1.0 + num.abs()), "{act:?} param {pi}[{j}]: {num} vs {gj}");
                }
            }
            // Touched rows of the embedding table.
            let Grad::Rows(rg) = bag.table.grad.clone() else { panic!("rows expected") };
            let (rows, values) = (rg.rows().to_vec(), rg.values().to_vec());
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
        let out = bag.forward(&x).unwrap();
        assert_eq!(&out[..3], &[0.0, 0.0, 0.0]);
        assert_eq!(&out[3..], &bag.table.data[6..9]);
        // An id outside the table (a damaged feature file) is an error, not a panic.
        let bad = Bags { offsets: vec![0, 1], ids: vec![5], langs: Vec::new() };
        assert!(bag.forward(&bad).unwrap_err().to_string().contains("feature id 5 is outside the embedding table of 5 rows"));
    }
}
