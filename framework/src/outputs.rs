//! What flows out of a model and back into it: a forward pass's outputs (logits, hidden
//! representation, per-layer states), the gradients of the objective with respect to them,
//! and a step's context. Kept below `model` and `nn` so both can use it.

/// What a forward pass produces, row-major.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Batch size.
    pub batch: usize,
    /// `batch × classes` logits.
    pub logits: Vec<f32>,
    /// Number of classes.
    pub classes: usize,
    /// `batch × hidden_dim`: the representation just before the output layer.
    pub hidden: Vec<f32>,
    /// Width of `hidden`.
    pub hidden_dim: usize,
    /// Every layer's states, from layered models (transformers) when the step asked for
    /// them ([`StepCtx::layers`], [`Model::forward_layers`]).
    pub layers: Option<LayerStates>,
}

/// Every layer's hidden state and attention distribution of a transformer on a padded
/// batch: what layer-wise distillation losses (TinyBERT, MiniLM) read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerStates {
    /// Tokens of each sequence; positions from there to `seq` are padding.
    pub lens: Vec<usize>,
    /// Padded length T.
    pub seq: usize,
    /// Width of a hidden state.
    pub width: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// L + 1 hidden states (0: the embeddings' output), each `B × T × width`, row-major.
    pub hidden: Vec<Vec<f32>>,
    /// L attention distributions, each `B × heads × T × T` (query rows, key columns;
    /// padded keys hold 0).
    pub attention: Vec<Vec<f32>>,
}

impl LayerStates {
    /// Whether token `i` of sequence `b` is real (not padding).
    pub fn is_real(&self, b: usize, i: usize) -> bool {
        i < self.lens[b]
    }

    /// Number of real tokens in the batch.
    pub fn tokens(&self) -> usize {
        self.lens.iter().sum()
    }
}

/// Gradients with respect to some of a model's [`LayerStates`] (same shapes; `None` for a
/// state no loss read).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerGrads {
    /// Per hidden state (L + 1 entries, or fewer).
    pub hidden: Vec<Option<Vec<f32>>>,
    /// Per attention distribution (L entries, or fewer).
    pub attention: Vec<Option<Vec<f32>>>,
}

impl LayerGrads {
    /// Adds `g` into hidden state `k`'s gradient.
    pub fn add_hidden(&mut self, k: usize, g: Vec<f32>) {
        add_slot(&mut self.hidden, k, g);
    }

    /// Adds `g` into attention `k`'s gradient.
    pub fn add_attention(&mut self, k: usize, g: Vec<f32>) {
        add_slot(&mut self.attention, k, g);
    }

    /// Adds another set of gradients into this one.
    pub fn merge(&mut self, other: LayerGrads) {
        for (k, g) in other.hidden.into_iter().enumerate() {
            if let Some(g) = g {
                self.add_hidden(k, g);
            }
        }
        for (k, g) in other.attention.into_iter().enumerate() {
            if let Some(g) = g {
                self.add_attention(k, g);
            }
        }
    }
}

fn add_slot(slots: &mut Vec<Option<Vec<f32>>>, k: usize, g: Vec<f32>) {
    if slots.len() <= k {
        slots.resize(k + 1, None);
    }
    match &mut slots[k] {
        Some(acc) => acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
        slot => *slot = Some(g),
    }
}

/// Gradients of the training objective with respect to a model's outputs.
#[derive(Clone, Debug, Default)]
pub struct OutputGrads {
    /// `batch × classes`.
    pub logits: Vec<f32>,
    /// `batch × hidden_dim`, when some loss reads the hidden representation.
    pub hidden: Option<Vec<f32>>,
    /// Gradients of per-layer states, when a layer-wise loss read them.
    pub layers: Option<LayerGrads>,
}

/// Per-step context for stochastic layers.
#[derive(Clone, Copy, Debug)]
pub struct StepCtx {
    /// Global step (0-based).
    pub step: u64,
    /// Seed for this step's randomness (dropout), derived from the run seed and the step,
    /// so a resumed run draws the same masks as an uninterrupted one.
    pub seed: u64,
    /// Whether the objective reads per-layer states ([`Outputs::layers`]).
    pub layers: bool,
}

impl StepCtx {
    /// A step that reads no per-layer states.
    pub fn new(step: u64, seed: u64) -> StepCtx {
        StepCtx { step, seed, layers: false }
    }
}
