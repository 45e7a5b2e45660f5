//! Multi-head scaled dot-product self-attention over a packed `Q | K | V` buffer, forward
//! and backward, with a padding mask given as each sequence's length.
//!
//! Heads are read in place: head `h` of Q is the `T × d` block at column `h·d` of the
//! `B·T × 3H` buffer (row stride 3H), so no per-head copies are made. Sequences are
//! independent, so the batch is split over rayon's pool by sequence and every product
//! inside runs single-threaded.

use rayon::prelude::*;

use super::dense::{matmul, softmax_prefix, Mat};

/// Shapes of one attention call: `batch` sequences padded to `seq` tokens, `width` = H,
/// `heads` heads of `width / heads`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Padded length T.
    pub seq: usize,
    /// Model width H.
    pub width: usize,
    /// Heads.
    pub heads: usize,
}

impl AttentionShape {
    fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}

/// Forward: `qkv` is `B·T × 3H`; writes the attention distributions into `probs`
/// (`B × heads × T × T`, zero on padded keys) and the heads' outputs into `ctx`
/// (`B·T × H`, head `h` at columns `h·d..`).
pub fn forward(s: AttentionShape, lens: &[usize], qkv: &[f32], probs: &mut [f32], ctx: &mut [f32]) {
    let (t, w, d) = (s.seq, s.width, s.head_dim());
    let scale = 1.0 / (d as f32).sqrt();
    probs.par_chunks_mut(s.heads * t * t).zip(ctx.par_chunks_mut(t * w)).zip(qkv.par_chunks(t * 3 * w)).zip(lens.par_iter()).for_each(
        |(((p_b, ctx_b), qkv_b), &len)| {
            for h in 0..s.heads {
                let p = &mut p_b[h * t * t..(h + 1) * t * t];
                let q = Mat::strided(&qkv_b[h * d..], t, d, 3 * w);
                let k = Mat::strided(&qkv_b[w + h * d..], len, d, 3 * w);
                let v = Mat::strided(&qkv_b[2 * w + h * d..], len, d, 3 * w);
                matmul(p, t, q, k.t(), false, 1);
                for row in p.chunks_exact_mut(t) {
                    row[..len].iter_mut().for_each(|x| *x *= scale);
                    softmax_prefix(row, len);
                }
                matmul(&mut ctx_b[h * d..], w, Mat::strided(p, t, len, t), v, false, 1);
            }
        },
    );
}

/// Backward: from `dctx` (the gradient of `ctx`) and, where a loss reads this layer's
/// attention, `dprobs` (the gradient of `probs`), writes the gradient of `qkv` into `dqkv`.
pub fn backward(s: AttentionShape, lens: &[usize], qkv: &[f32], probs: &[f32], dctx: &[f32], dprobs: Option<&[f32]>, dqkv: &mut [f32]) {
    let (t, w, d) = (s.seq, s.width, s.head_dim());
    let scale = 1.0 / (d as f32).sqrt();
    dqkv.par_chunks_mut(t * 3 * w).enumerate().for_each(|(b, dqkv_b)| {
        let len = lens[b];
        let qkv_b = &qkv[b * t * 3 * w..(b + 1) * t * 3 * w];
        let dctx_b = &dctx[b * t * w..(b + 1) * t * w];
        dqkv_b.fill(0.0);
        let mut ds = vec![0.0f32; t * len.max(1)];
        for h in 0..s.heads {
            let p = &probs[(b * s.heads + h) * t * t..(b * s.heads + h + 1) * t * t];
            let q = Mat::strided(&qkv_b[h * d..], t, d, 3 * w);
            let k = Mat::strided(&qkv_b[w + h * d..], len, d, 3 * w);
            let v = Mat::strided(&qkv_b[2 * w + h * d..], len, d, 3 * w);
            let dc = Mat::strided(&dctx_b[h * d..], t, d, w);
            // dP = dC·Vᵀ (T × len), plus the loss's own gradient of P.
            matmul(&mut ds, len, dc, v.t(), false, 1);
            if let Some(dp) = dprobs {
                let dp = &dp[(b * s.heads + h) * t * t..(b * s.heads + h + 1) * t * t];
                for (row, dp_row) in ds.chunks_exact_mut(len).zip(dp.chunks_exact(t)) {
                    row.iter_mut().zip(dp_row).for_each(|(x, y)| *x += y);
                }
            }
            // dS = P ⊙ (dP − Σ_j P·dP), times the 1/√d of the scores.
            for (row, p_row) in ds.chunks_exact_mut(len).zip(p.chunks_exact(t)) {
                let dot: f32 = row.iter().zip(p_row).map(|(a, b)| a * b).sum();
                row.iter_mut().zip(p_row).for_each(|(x, &pp)| *x = pp * (*x - dot) * scale);
            }
            let dsm = Mat::strided(&ds, t, len, len);
            matmul(&mut dqkv_b[h * d..], 3 * w, dsm, k, false, 1);
            matmul(&mut dqkv_b[w + h * d..], 3 * w, dsm.t(), q, false, 1);
            matmul(&mut dqkv_b[2 * w + h * d..], 3 * w, Mat::strided(p, t, len, t).t(), dc, false, 1);
        }
    });
}
