//! What a loss learns about the models before anything trains (ABI 2): their widths and,
//! for transformers, their layer shapes. [`crate::Loss::check`] refuses a misfit at plan
//! time (`kdx validate`); [`crate::Loss::parameters`] sizes the loss's own parameters.

/// The per-layer shape of a transformer model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerShape {
    /// Encoder layers L (hidden states 0..=L, attention 0..L).
    pub layers: usize,
    /// Width of each hidden state.
    pub width: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// Longest sequence in tokens.
    pub max_len: usize,
    /// What identifies the tokenisation: token-level losses compare only models whose
    /// tokenisations (and `max_len`) are equal.
    pub tokenizer: String,
}

/// Both models' shapes. `None` where a model has no such shape, or the stage no teacher.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shapes {
    /// Number of classes; 0 in [`crate::Loss::check`] (the plan does not read the data).
    pub classes: usize,
    /// The student's hidden width, when known.
    pub student_hidden_dim: Option<usize>,
    /// The teacher's hidden width, when there is a teacher and it is known.
    pub teacher_hidden_dim: Option<usize>,
    /// The student's layers, for a transformer student.
    pub student_layers: Option<LayerShape>,
    /// The teacher's layers, for a transformer teacher.
    pub teacher_layers: Option<LayerShape>,
}

/// A trainable parameter a loss declares ([`crate::Loss::parameters`]). kdx owns it from
/// then on: it passes its current values to every call ([`crate::Extra::params`]), trains it
/// with the student's optimizer from the gradient the loss returns, saves it in checkpoints
/// (`loss<i>.NAME`); the exported model carries the one named as [`crate::Loss::projection`].
/// (`run.csv`'s `student_params` counts the student's own parameters, not these.)
#[derive(Clone, Debug, PartialEq)]
pub enum ParamDecl {
    /// A linear map `input → output`, initialised by kdx from `seed` exactly as its built-in
    /// layers and projections are. It is two parameters, in this order: `NAME.w`
    /// (`input × output`, row-major, weight decay) and `NAME.b` (`output`, no decay).
    /// Name one as [`crate::Loss::projection`] to make it the student's map into the
    /// teacher's space (translation retrieval, `kdx embed`, the exported model).
    Linear {
        /// Its name.
        name: String,
        /// Input width (rows of `NAME.w`).
        input: usize,
        /// Output width.
        output: usize,
        /// Seed of its initialisation.
        seed: u64,
    },
    /// A tensor with the values the loss gives.
    Tensor {
        /// Its name.
        name: String,
        /// Its shape (row-major).
        shape: Vec<usize>,
        /// Its initial values, as many as the shape holds.
        values: Vec<f32>,
        /// Whether weight decay applies.
        decay: bool,
    },
}

impl ParamDecl {
    /// A linear map (see [`ParamDecl::Linear`]).
    pub fn linear(name: &str, input: usize, output: usize, seed: u64) -> ParamDecl {
        ParamDecl::Linear { name: name.to_string(), input, output, seed }
    }

    /// A tensor with these initial values, without weight decay.
    pub fn tensor(name: &str, shape: &[usize], values: Vec<f32>) -> ParamDecl {
        ParamDecl::Tensor { name: name.to_string(), shape: shape.to_vec(), values, decay: false }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            ParamDecl::Linear { name, .. } | ParamDecl::Tensor { name, .. } => name,
        }
    }

    /// The parameters it is, as (name, shape): one, or two for a linear map.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            ParamDecl::Linear { name, input, output, .. } => {
                vec![(format!("{name}.w"), vec![*input, *output]), (format!("{name}.b"), vec![*output])]
            }
            ParamDecl::Tensor { name, shape, .. } => vec![(name.clone(), shape.clone())],
        }
    }
}
