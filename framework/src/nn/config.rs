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

    /// Checks the shape, naming what is wrong and which field it is (a caller points at its
    /// own key for it, as the `transformer` plugin does at the recipe's).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, message| Err(ConfigError { field, message });
        if self.width == 0 || self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            let message = format!(
                "the width ({}) must be a positive multiple of the heads ({})",
                self.width, self.heads
            );
            return err(if self.width == 0 { "width" } else { "heads" }, message);
        }
        for (field, value) in [("vocab", self.vocab), ("ffn", self.ffn), ("layers", self.layers)] {
            if value == 0 {
                let message = format!(
                    "vocabulary ({}), feed-forward width ({}) and layers ({}) must be positive",
                    self.vocab, self.ffn, self.layers
                );
                return err(field, message);
            }
        }
        if self.max_len() == 0 {
            let message = format!(
                "{} positions leave no room after the offset {}",
                self.max_positions, self.position_offset
            );
            return err("max_positions", message);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return err("dropout", format!("dropout must be in [0, 1), found {}", self.dropout));
        }
        Ok(())
    }
}

/// What is wrong with an [`EncoderConfig`], and in which field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// The field of [`EncoderConfig`] at fault (`width`, `heads`, `vocab`, `ffn`, `layers`,
    /// `max_positions`, `dropout`).
    pub field: &'static str,
    /// What is wrong, with the values.
    pub message: String,
}
