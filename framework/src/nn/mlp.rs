//! A feed-forward head: hidden layers and an output layer, forward and backward by hand on
//! the transformer's kernels (`gemm` with run-time AVX-512/AVX2 dispatch). It ran on dfdx's
//! autodiff before; at the n-gram student's sizes dfdx's per-op allocations and its older
//! `gemm` cost more than the products.

use rand::{Rng, SeedableRng};

use super::activation::Activation;
use super::kernels::{layer_norm, layer_norm_backward, FfnActivation};
use super::layer_norm::LayerNorm;
use super::linear::Linear;
use super::module::Module;
use crate::outputs::{OutputGrads, Outputs, StepCtx};
use crate::param::{Grad, Param};

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

/// What the backward pass of one hidden layer reads.
struct HiddenSaved {
    /// The layer's input.
    input: Vec<f32>,
    /// The activation's input (after the norm, when there is one).
    pre: Vec<f32>,
    /// x̂ and 1/σ of the layer norm.
    norm: Option<(Vec<f32>, Vec<f32>)>,
    /// The inverted-dropout mask.
    mask: Option<Vec<f32>>,
}

/// Layer norm's epsilon (dfdx's `normalize`, which this head used before it ran on kernels).
const EPS: f32 = 1e-5;

impl Activation {
    /// The activation of one value.
    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
            Activation::GeluTanh => FfnActivation::GeluTanh.apply(x),
        }
    }

    /// Its derivative at `x`.
    #[inline(always)]
    fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::Relu => FfnActivation::Relu.derivative(x),
            Activation::Tanh => 1.0 - x.tanh().powi(2),
            Activation::GeluTanh => FfnActivation::GeluTanh.derivative(x),
        }
    }
}

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

    /// The parameters, in a fixed order (each hidden layer's weight, bias, then its norm's
    /// gain and bias; the output layer last).
    pub fn params(&self) -> Vec<&Param> {
        let mut v = Vec::new();
        for (i, l) in self.hidden.iter().enumerate() {
            v.extend(l.params());
            v.extend(self.norms.get(i).map(|n| n.params()).unwrap_or_default());
        }
        v.extend(self.out.params());
        v
    }

    /// The parameters, mutably, in [`Mlp::params`] order.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = Vec::new();
        let mut norms = self.norms.iter_mut();
        for l in self.hidden.iter_mut() {
            v.extend(l.params_mut());
            v.extend(norms.next().map(|n| n.params_mut()).unwrap_or_default());
        }
        v.extend(self.out.params_mut());
        v
    }

    /// `x·W + b` for `batch` rows.
    fn linear(l: &Linear, x: &[f32], batch: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; batch * l.out_dim()];
        l.forward_into(x, batch, &mut y);
        y
    }

    /// The hidden layers: returns the hidden representation and, when `train`, what the
    /// backward pass reads. `mask_seed` enables dropout.
    fn run(
        &self,
        x: Vec<f32>,
        batch: usize,
        mask_seed: Option<u64>,
        train: bool,
    ) -> (Vec<f32>, Vec<HiddenSaved>) {
        let mut rng = mask_seed.map(rand::rngs::StdRng::seed_from_u64);
        let mut h = x;
        let mut saved = Vec::new();
        for (i, l) in self.hidden.iter().enumerate() {
            let mut z = Self::linear(l, &h, batch);
            let norm = self.norms.get(i).map(|n| {
                let mut hat = vec![0.0f32; z.len()];
                let mut rstd = vec![0.0f32; batch];
                layer_norm(&mut z, &mut hat, &mut rstd, &n.gain.data, &n.bias.data, EPS);
                (hat, rstd)
            });
            let act = self.activation;
            let mut a: Vec<f32> = z.iter().map(|&v| act.apply(v)).collect();
            let mask = match (rng.as_mut(), self.dropout > 0.0) {
                (Some(rng), true) => {
                    // Our own seeded mask: resumed runs draw identical masks.
                    let keep = 1.0 - self.dropout;
                    let mask: Vec<f32> = (0..a.len())
                        .map(|_| if rng.gen::<f32>() < keep { 1.0 / keep } else { 0.0 })
                        .collect();
                    a.iter_mut().zip(&mask).for_each(|(v, m)| *v *= m);
                    Some(mask)
                }
                _ => None,
            };
            let input = std::mem::replace(&mut h, a);
            if train {
                saved.push(HiddenSaved { input, pre: z, norm, mask });
            }
        }
        (h, saved)
    }

    /// Inference: `x` is `B × input`.
    pub fn forward(&self, x: Vec<f32>, batch: usize) -> Outputs {
        let (hidden, _) = self.run(x, batch, None, false);
        let logits = Self::linear(&self.out, &hidden, batch);
        Outputs {
            batch,
            logits,
            classes: self.classes(),
            hidden,
            hidden_dim: self.hidden_dim(),
            layers: None,
        }
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
        anyhow::ensure!(
            x.len() == batch * self.input,
            "the head's input has {} numbers, expected {}",
            x.len(),
            batch * self.input
        );
        let (hidden, saved) = self.run(x, batch, Some(ctx.seed), true);
        let logits = Self::linear(&self.out, &hidden, batch);
        let outputs = Outputs {
            batch,
            logits,
            classes: self.classes(),
            hidden,
            hidden_dim: self.hidden_dim(),
            layers: None,
        };
        let g = objective(&outputs)?;
        let hd = self.hidden_dim();
        anyhow::ensure!(g.logits.len() == outputs.logits.len(), "logit gradient has the wrong size");
        // Output layer.
        let mut dh = match g.hidden {
            Some(gh) => {
                anyhow::ensure!(gh.len() == outputs.hidden.len(), "hidden gradient has the wrong size");
                gh
            }
            None => vec![0.0f32; batch * hd],
        };
        self.out.backward(&outputs.hidden, &g.logits, batch, &mut dh, true);
        // Hidden layers, last first.
        for (i, s) in saved.iter().enumerate().rev() {
            if let Some(m) = &s.mask {
                dh.iter_mut().zip(m).for_each(|(d, m)| *d *= m);
            }
            let act = self.activation;
            dh.iter_mut().zip(&s.pre).for_each(|(d, &z)| *d *= act.derivative(z));
            if let (Some((hat, rstd)), Some(n)) = (&s.norm, self.norms.get_mut(i)) {
                n.gain.grad_buffer();
                n.bias.grad_buffer();
                let (Grad::Dense(dg), Grad::Dense(db)) = (&mut n.gain.grad, &mut n.bias.grad) else {
                    unreachable!("dense gradients were created just above")
                };
                layer_norm_backward(&mut dh, hat, rstd, &n.gain.data, dg, db);
            }
            let width_in = self.hidden[i].w.shape[0];
            let mut dx = vec![0.0f32; batch * width_in];
            self.hidden[i].backward(&s.input, &dh, batch, &mut dx, false);
            dh = dx;
        }
        Ok((outputs, dh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::TokenRows;
    use crate::model::Grad;
    use crate::nn::{init_uniform, EmbeddingBag};
    use rand::rngs::StdRng;

    fn objective_value(out: &Outputs, wl: &[f32], wh: &[f32]) -> f32 {
        // A fixed smooth scalar of the outputs: Σ wl·logits² + Σ wh·hidden.
        out.logits.iter().zip(wl).map(|(z, w)| w * z * z).sum::<f32>()
            + out.hidden.iter().zip(wh).map(|(h, w)| w * h).sum::<f32>()
    }

    /// Finite-difference check of every layer's gradient (embedding bag, linear, layer
    /// norm, activations) through the whole head.
    #[test]
    fn mlp_and_bag_gradients_match_finite_differences() {
        for (act, ln) in [(Activation::Relu, false), (Activation::Tanh, true), (Activation::GeluTanh, true)] {
            let mut rng = StdRng::seed_from_u64(3);
            let mut bag = EmbeddingBag::new("emb", 11, 4, &mut rng);
            init_uniform(&mut bag.table, 0.5, &mut rng);
            let mut mlp = Mlp::new(4, &[5], 3, act, ln, 0.0, &mut rng);
            let x = TokenRows { offsets: vec![0, 3, 3, 5], ids: vec![1, 2, 1, 7, 10], langs: Vec::new() };
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
                    assert!(
                        (num - gj).abs() < 2e-2 * (1.0 + num.abs()),
                        "{act:?} param {pi}[{j}]: {num} vs {gj}"
                    );
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
                    assert!(
                        (num - a).abs() < 2e-2 * (1.0 + num.abs()),
                        "{act:?} row {r} col {c}: {num} vs {a}"
                    );
                }
            }
        }
    }

    #[test]
    fn empty_bag_is_zero_vector() {
        let mut rng = StdRng::seed_from_u64(1);
        let bag = EmbeddingBag::new("emb", 5, 3, &mut rng);
        let x = TokenRows { offsets: vec![0, 0, 1], ids: vec![2], langs: Vec::new() };
        let out = bag.forward(&x).unwrap();
        assert_eq!(&out[..3], &[0.0, 0.0, 0.0]);
        assert_eq!(&out[3..], &bag.table.data[6..9]);
        // An id outside the table (a damaged feature file) is an error, not a panic.
        let bad = TokenRows { offsets: vec![0, 1], ids: vec![5], langs: Vec::new() };
        assert!(bag
            .forward(&bad)
            .unwrap_err()
            .to_string()
            .contains("feature id 5 is outside the embedding table of 5 rows"));
    }
}
