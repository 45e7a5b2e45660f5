//! Multi-head scaled dot-product self-attention over a packed `Q | K | V` buffer, forward
//! and backward.
//!
//! Sequences are packed: the rows of sequence `b` are `offsets[b]..offsets[b + 1]` of a
//! `tokens × 3H` buffer, with no padding rows, so no product is spent on padding and no
//! mask is needed. Heads are read in place: head `h` of Q is the `len × d` block at column
//! `h·d` (row stride 3H), so no per-head copies are made. Sequences are independent, so the
//! batch is split over rayon's pool by sequence and every product inside runs
//! single-threaded.

use std::cell::RefCell;

use rayon::prelude::*;

use super::kernels::{matmul, softmax_scaled, Mat};

/// Shapes of one attention call: `width` = H, `heads` heads of `width / heads`, and the
/// packed sequences' row offsets (`batch + 1` entries, the last the number of rows).
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape<'a> {
    /// Model width H.
    pub width: usize,
    /// Heads.
    pub heads: usize,
    /// Row offsets of the packed sequences.
    pub offsets: &'a [usize],
}

impl AttentionShape<'_> {
    fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    fn len(&self, b: usize) -> usize {
        self.offsets[b + 1] - self.offsets[b]
    }

    /// Numbers of the attention distributions of the whole batch: Σ heads · len².
    pub fn probs_len(&self) -> usize {
        (0..self.offsets.len().saturating_sub(1)).map(|b| self.heads * self.len(b) * self.len(b)).sum()
    }

    /// `buf` cut into per-sequence pieces of `per_row · len` numbers each.
    fn rows_of<'b>(&self, buf: &'b mut [f32], per_row: usize) -> Vec<&'b mut [f32]> {
        split_sizes(buf, (0..self.offsets.len() - 1).map(|b| self.len(b) * per_row))
    }

    /// `buf` cut into per-sequence attention blocks of `heads · len²` numbers each.
    fn probs_of<'b>(&self, buf: &'b mut [f32]) -> Vec<&'b mut [f32]> {
        split_sizes(buf, (0..self.offsets.len() - 1).map(|b| self.heads * self.len(b) * self.len(b)))
    }
}

/// Consecutive mutable pieces of the given sizes.
fn split_sizes(mut buf: &mut [f32], sizes: impl Iterator<Item = usize>) -> Vec<&mut [f32]> {
    let mut out = Vec::new();
    for n in sizes {
        let (head, rest) = std::mem::take(&mut buf).split_at_mut(n);
        out.push(head);
        buf = rest;
    }
    out
}

thread_local! {
    /// One sequence's scores (len × len) in inference and backward: reused per thread.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One head of one sequence: scores → softmax into `p` (`len × len`), then `ctx = p·V`.
fn head_forward(qkv: &[f32], w: usize, d: usize, h: usize, len: usize, p: &mut [f32], ctx: &mut [f32]) {
    let scale = 1.0 / (d as f32).sqrt();
    let q = Mat::strided(&qkv[h * d..], len, d, 3 * w);
    let k = Mat::strided(&qkv[w + h * d..], len, d, 3 * w);
    let v = Mat::strided(&qkv[2 * w + h * d..], len, d, 3 * w);
    matmul(p, len, q, k.t(), false, 1);
    p.chunks_exact_mut(len).for_each(|row| softmax_scaled(row, scale));
    matmul(&mut ctx[h * d..], w, Mat::new(p, len, len), v, false, 1);
}

/// Forward for training: writes every head's attention distribution into `probs` (per
/// sequence `heads × len × len`, in batch order: [`AttentionShape::probs_len`] numbers)
/// and the heads' outputs into `ctx` (`tokens × H`, head `h` at columns `h·d..`).
pub fn forward(s: AttentionShape, qkv: &[f32], probs: &mut [f32], ctx: &mut [f32]) {
    let (w, d) = (s.width, s.head_dim());
    let probs = s.probs_of(probs);
    let ctx = s.rows_of(ctx, w);
    probs.into_par_iter().zip(ctx).enumerate().for_each(|(b, (p_b, ctx_b))| {
        let (len, qkv_b) = (s.len(b), &qkv[s.offsets[b] * 3 * w..s.offsets[b + 1] * 3 * w]);
        for (h, p) in p_b.chunks_exact_mut(len * len).enumerate() {
            head_forward(qkv_b, w, d, h, len, p, ctx_b);
        }
    });
}

/// Forward for inference: as [`forward`], but the distributions are scratch, one
/// sequence's head at a time, and nothing is kept.
pub fn forward_lean(s: AttentionShape, qkv: &[f32], ctx: &mut [f32]) {
    let (w, d) = (s.width, s.head_dim());
    let ctx = s.rows_of(ctx, w);
    ctx.into_par_iter().enumerate().for_each(|(b, ctx_b)| {
        let (len, qkv_b) = (s.len(b), &qkv[s.offsets[b] * 3 * w..s.offsets[b + 1] * 3 * w]);
        SCRATCH.with_borrow_mut(|p| {
            p.resize(len * len, 0.0);
            for h in 0..s.heads {
                head_forward(qkv_b, w, d, h, len, p, ctx_b);
            }
        });
    });
}

/// Backward: from `dctx` (the gradient of `ctx`) and, where a loss reads this layer's
/// attention, `dprobs` (the gradient of `probs`, in its layout), writes the gradient of
/// `qkv` into `dqkv`.
pub fn backward(
    s: AttentionShape,
    qkv: &[f32],
    probs: &[f32],
    dctx: &[f32],
    dprobs: Option<&[f32]>,
    dqkv: &mut [f32],
) {
    let (w, d) = (s.width, s.head_dim());
    let scale = 1.0 / (d as f32).sqrt();
    let mut prob_offsets = vec![0usize];
    for b in 0..s.offsets.len() - 1 {
        prob_offsets.push(prob_offsets[b] + s.heads * s.len(b) * s.len(b));
    }
    s.rows_of(dqkv, 3 * w).into_par_iter().enumerate().for_each(|(b, dqkv_b)| {
        let len = s.len(b);
        let rows = s.offsets[b]..s.offsets[b + 1];
        let qkv_b = &qkv[rows.start * 3 * w..rows.end * 3 * w];
        let dctx_b = &dctx[rows.start * w..rows.end * w];
        let p_b = &probs[prob_offsets[b]..prob_offsets[b + 1]];
        SCRATCH.with_borrow_mut(|ds| {
            ds.resize(len * len, 0.0);
            for (h, p) in p_b.chunks_exact(len * len).enumerate() {
                let q = Mat::strided(&qkv_b[h * d..], len, d, 3 * w);
                let k = Mat::strided(&qkv_b[w + h * d..], len, d, 3 * w);
                let v = Mat::strided(&qkv_b[2 * w + h * d..], len, d, 3 * w);
                let dc = Mat::strided(&dctx_b[h * d..], len, d, w);
                // dP = dC·Vᵀ (len × len), plus the loss's own gradient of P.
                matmul(ds, len, dc, v.t(), false, 1);
                if let Some(dp) = dprobs {
                    let dp = &dp[prob_offsets[b] + h * len * len..prob_offsets[b] + (h + 1) * len * len];
                    ds.iter_mut().zip(dp).for_each(|(x, y)| *x += y);
                }
                // dS = P ⊙ (dP − Σ_j P·dP), times the 1/√d of the scores.
                for (row, p_row) in ds.chunks_exact_mut(len).zip(p.chunks_exact(len)) {
                    let dot: f32 = row.iter().zip(p_row).map(|(a, b)| a * b).sum();
                    row.iter_mut().zip(p_row).for_each(|(x, &pp)| *x = pp * (*x - dot) * scale);
                }
                let dsm = Mat::new(ds, len, len);
                matmul(&mut dqkv_b[h * d..], 3 * w, dsm, k, false, 1);
                matmul(&mut dqkv_b[w + h * d..], 3 * w, dsm.t(), q, false, 1);
                matmul(&mut dqkv_b[2 * w + h * d..], 3 * w, Mat::new(p, len, len).t(), dc, false, 1);
            }
        });
    });
}
