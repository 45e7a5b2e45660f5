//! A dense layer `y = x W + b`, forward and backward on the kernels.

use rand::Rng;

use super::init::init_uniform;
use super::kernels::{add_bias, add_column_sums, matmul, threads, Mat};
use crate::param::Param;

/// A dense layer `y = x W + b` with `W: in × out`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `in × out` weights.
    pub w: Param,
    /// `out` bias.
    pub b: Param,
}

crate::module!(Linear { w, b });

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

    /// A layer of zeros (to be filled from a checkpoint), named `{name}.w` and `{name}.b`.
    pub fn zeros(name: &str, input: usize, output: usize) -> Linear {
        Linear {
            w: Param::zeros(format!("{name}.w"), &[input, output], true),
            b: Param::zeros(format!("{name}.b"), &[output], false),
        }
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.w.shape[1]
    }

    /// `out = x·W + b` for `rows` rows of `x`.
    pub fn forward_into(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let (i, o) = (self.w.shape[0], self.w.shape[1]);
        matmul(out, o, Mat::new(x, rows, i), Mat::new(&self.w.data, i, o), false, threads());
        add_bias(out, &self.b.data);
    }

    /// Back through `y = x·W + b` over `rows` rows: adds the weight and bias gradients, and
    /// the gradient of `x` into `dx` (or writes it there when not `accumulate`).
    pub fn backward(&mut self, x: &[f32], dy: &[f32], rows: usize, dx: &mut [f32], accumulate: bool) {
        let (i, o) = (self.w.shape[0], self.w.shape[1]);
        matmul(self.w.grad_buffer(), o, Mat::new(x, rows, i).t(), Mat::new(dy, rows, o), true, threads());
        add_column_sums(self.b.grad_buffer(), dy);
        matmul(dx, i, Mat::new(dy, rows, o), Mat::new(&self.w.data, i, o).t(), accumulate, threads());
    }
}
