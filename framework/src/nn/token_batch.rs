//! A packed batch of token sequences: what every block of the encoder reads.

use super::attention::AttentionShape;
use super::config::EncoderConfig;

/// A packed batch of token sequences: sequence `b` is rows `offsets[b]..offsets[b + 1]`.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    /// Token ids of every sequence, one after another.
    pub ids: Vec<u32>,
    /// Row offsets, `batch + 1` of them.
    pub offsets: Vec<usize>,
    /// Position of each row within its sequence.
    pub(super) positions: Vec<u32>,
}

impl TokenBatch {
    /// Packs `seqs`; an empty sequence or one longer than `max_len` is an error that names
    /// it.
    pub fn new<'a>(seqs: impl Iterator<Item = &'a [u32]>, max_len: usize) -> anyhow::Result<TokenBatch> {
        let (mut ids, mut offsets, mut positions) = (Vec::new(), vec![0usize], Vec::new());
        for (b, s) in seqs.enumerate() {
            anyhow::ensure!(!s.is_empty(), "sequence {b} of the batch has no tokens");
            anyhow::ensure!(
                s.len() <= max_len,
                "sequence {b} has {} tokens, more than the model's {max_len} positions",
                s.len()
            );
            ids.extend_from_slice(s);
            positions.extend(0..s.len() as u32);
            offsets.push(ids.len());
        }
        Ok(TokenBatch { ids, offsets, positions })
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of tokens (rows).
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Length of sequence `b`.
    pub fn len(&self, b: usize) -> usize {
        self.offsets[b + 1] - self.offsets[b]
    }

    /// Whether the batch has no sequence.
    pub fn is_empty(&self) -> bool {
        self.batch() == 0
    }

    /// Lengths of all sequences.
    pub fn lens(&self) -> Vec<usize> {
        (0..self.batch()).map(|b| self.len(b)).collect()
    }

    /// The longest sequence (the padded length of [`Trace::states`]).
    pub fn max_len(&self) -> usize {
        (0..self.batch()).map(|b| self.len(b)).max().unwrap_or(0)
    }

    pub(super) fn shape(&self, cfg: &EncoderConfig) -> AttentionShape<'_> {
        AttentionShape { width: cfg.width, heads: cfg.heads, offsets: &self.offsets }
    }
}
