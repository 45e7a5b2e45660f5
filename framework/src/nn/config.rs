//! An encoder's sizes and flavour, which its blocks and the encoder read.

use super::kernels::FfnActivation;

/// Sizes and flavour of an encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Rows of the token embedding table.
    pub vocab: usize,
    /// Model width H.
    pub width: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads (H must be a multiple).
    pub heads: usize,
    /// Inner width of the feed-forward block.
    pub ffn: usize,
    /// Rows of the position table.
    pub max_positions: usize,
    /// Rows of the token-type table (0: none, as DistilBERT); type 0 is added everywhere.
    pub type_vocab: usize,
    /// Position of the first token: 0 for BERT, `padding_idx + 1` for RoBERTa / XLM-R.
    pub position_offset: usize,
    /// Layer-norm epsilon.
    pub eps: f32,
    /// Feed-forward activation.
    pub activation: FfnActivation,
    /// Dropout on the embeddings and on each sublayer's output (training only).
    pub dropout: f32,
}

impl EncoderConfig {
    /// Longest sequence the position table allows.
    pub fn max_len(&self) -> usize {
        self.max_positions.saturating_sub(self.position_offset)
    }

    /// Number of parameters of an encoder of this shape (without a head).
    pub fn num_params(&self) -> usize {
        let (h, f) = (self.width, self.ffn);
        let emb = (self.vocab + self.max_positions + self.type_vocab) * h + 2 * h;
        let layer = (h * 3 * h + 3 * h) + (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h;
        emb + self.layers * layer
    }

    /// Checks the shape, naming what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.width == 0 || self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            return Err(format!(
                "the width ({}) must be a positive multiple of the heads ({})",
                self.width, self.heads
            ));
        }
        if self.vocab == 0 || self.ffn == 0 || self.layers == 0 {
            return Err(format!(
                "vocabulary ({}), feed-forward width ({}) and layers ({}) must be positive",
                self.vocab, self.ffn, self.layers
            ));
        }
        if self.max_len() == 0 {
            return Err(format!(
                "{} positions leave no room after the offset {}",
                self.max_positions, self.position_offset
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), found {}", self.dropout));
        }
        Ok(())
    }
}
