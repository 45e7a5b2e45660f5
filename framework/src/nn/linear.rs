//! A dense layer `y = x W + b`.

use rand::Rng;

use super::init_uniform;
use crate::model::Param;

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
        Linear { w: Param::zeros(format!("{name}.w"), &[input, output], true), b: Param::zeros(format!("{name}.b"), &[output], false) }
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.w.shape[1]
    }
}
