//! The encoder's blocks — [`Embeddings`], [`SelfAttention`], [`FeedForward`] and an
//! [`EncoderLayer`] of the two. Each owns its parameters (listed once, with
//! [`module!`](crate::module)) and runs itself: `forward` returns what its `backward`
//! reads (a `…Saved`, in training), and `backward` turns the gradient of the block's
//! output into the gradient of its input while adding its parameters' gradients.

use rand::Rng;
use rayon::prelude::*;

use super::attention;
use super::config::EncoderConfig;
use super::kernels::{self, matmul, threads, Mat};
use super::layer_norm::LayerNorm;
use super::linear::Linear;
use super::token_batch::TokenBatch;
use super::workspace::Workspace;
use crate::param::{Grad, Param, RowGrad};

/// The embeddings block: token + position (+ token type 0) embeddings, then a layer norm.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// Token embeddings, `vocab × H` (a table: sparse row updates).
    pub tokens: Param,
    /// Position embeddings, `max_positions × H`.
    pub positions: Param,
    /// Token-type embeddings, `type_vocab × H`, when the architecture has them.
    pub types: Option<Param>,
    /// Layer norm over the summed embeddings.
    pub norm: LayerNorm,
}
crate::module!(Embeddings { tokens, positions, types, norm });

/// Multi-head self-attention with its residual and post-layer norm:
/// `out = LN(dropout(attention(x·Wqkv)·Wo + bo) + x)`. Q, K and V are one `H × 3H` product.
#[derive(Clone, Debug)]
pub struct SelfAttention {
    /// Packed query | key | value projection, `H × 3H`.
    pub qkv: Linear,
    /// Output projection, `H × H`.
    pub out: Linear,
    /// Layer norm after the residual.
    pub norm: LayerNorm,
}
crate::module!(SelfAttention { qkv, out, norm });

/// The feed-forward block with its residual and post-layer norm:
/// `out = LN(dropout(act(x·W1 + b1)·W2 + b2) + x)`.
#[derive(Clone, Debug)]
pub struct FeedForward {
    /// Input projection, `H × F`.
    pub input: Linear,
    /// Output projection, `F × H`.
    pub output: Linear,
    /// Layer norm after the residual.
    pub norm: LayerNorm,
}
crate::module!(FeedForward { input, output, norm });

/// One post-LN encoder layer: attention, then feed-forward.
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    /// The attention block.
    pub attention: SelfAttention,
    /// The feed-forward block.
    pub ffn: FeedForward,
}
crate::module!(EncoderLayer { attention, ffn });

/// One pass's settings and buffers (a backward pass has no random stream).
pub(super) struct Pass<'a> {
    pub(super) cfg: &'a EncoderConfig,
    pub(super) batch: &'a TokenBatch,
    pub(super) ws: &'a Workspace,
    /// Dropout's random stream (training with dropout only).
    pub(super) rng: Option<rand::rngs::StdRng>,
}

impl Pass<'_> {
    fn rows(&self) -> usize {
        self.batch.tokens()
    }

    /// Multiplies `x` by an inverted-dropout mask, returning the mask (when dropout is on).
    fn dropout(&mut self, x: &mut [f32]) -> Option<Vec<f32>> {
        let p = self.cfg.dropout;
        let rng = self.rng.as_mut().filter(|_| p > 0.0)?;
        let keep = 1.0 - p;
        let mut mask = self.ws.take(x.len());
        mask.iter_mut().for_each(|m| *m = if rng.gen::<f32>() < keep { 1.0 / keep } else { 0.0 });
        x.iter_mut().zip(&mask).for_each(|(v, m)| *v *= m);
        Some(mask)
    }

    /// `out = x·W + b` for every row, into a workspace buffer.
    fn linear(&self, x: &[f32], l: &Linear) -> Vec<f32> {
        let mut out = self.ws.take(self.rows() * l.out_dim());
        l.forward_into(x, self.rows(), &mut out);
        out
    }

    /// Layer norm of `x` in place; in training also x̂ and 1/σ for the backward pass.
    fn norm(&self, x: &mut [f32], norm: &LayerNorm, train: bool) -> Option<NormSaved> {
        if !train {
            kernels::layer_norm_inplace(x, &norm.gain.data, &norm.bias.data, self.cfg.eps);
            return None;
        }
        let mut hat = self.ws.take(x.len());
        let mut rstd = self.ws.take(self.rows());
        kernels::layer_norm(x, &mut hat, &mut rstd, &norm.gain.data, &norm.bias.data, self.cfg.eps);
        Some(NormSaved { hat, rstd })
    }
}

/// What a layer norm's backward pass reads.
pub(super) struct NormSaved {
    pub(super) hat: Vec<f32>,
    pub(super) rstd: Vec<f32>,
}

impl NormSaved {
    fn backward(&self, d: &mut [f32], norm: &mut LayerNorm) {
        norm.gain.grad_buffer();
        norm.bias.grad_buffer();
        let (Grad::Dense(dg), Grad::Dense(db)) = (&mut norm.gain.grad, &mut norm.bias.grad) else {
            unreachable!("dense gradients were created just above")
        };
        kernels::layer_norm_backward(d, &self.hat, &self.rstd, &norm.gain.data, dg, db);
    }

    pub(super) fn buffers(self) -> [Vec<f32>; 2] {
        [self.hat, self.rstd]
    }
}

/// What the embeddings block's backward pass reads.
pub(super) struct EmbeddingsSaved {
    pub(super) norm: NormSaved,
    pub(super) mask: Option<Vec<f32>>,
}

/// What the attention block's backward pass reads.
pub(super) struct AttentionSaved {
    pub(super) qkv: Vec<f32>,
    pub(super) probs: Vec<f32>,
    pub(super) ctx: Vec<f32>,
    pub(super) norm: NormSaved,
    pub(super) mask: Option<Vec<f32>>,
}

/// What the feed-forward block's backward pass reads.
pub(super) struct FeedForwardSaved {
    pub(super) pre_act: Vec<f32>,
    pub(super) act: Vec<f32>,
    pub(super) norm: NormSaved,
    pub(super) mask: Option<Vec<f32>>,
}

/// What one layer keeps for its backward pass.
pub(super) struct LayerSaved {
    pub(super) attention: AttentionSaved,
    /// The attention block's output: the feed-forward block's input.
    pub(super) h1: Vec<f32>,
    pub(super) ffn: FeedForwardSaved,
}

fn apply_mask(x: &mut [f32], mask: &Option<Vec<f32>>) {
    if let Some(m) = mask {
        x.iter_mut().zip(m).for_each(|(v, m)| *v *= m);
    }
}

impl Embeddings {
    pub(super) fn forward(&self, p: &mut Pass, train: bool) -> (Vec<f32>, Option<EmbeddingsSaved>) {
        let (h, offset, x) = (p.cfg.width, p.cfg.position_offset, p.batch);
        let mut e = p.ws.take(p.rows() * h);
        e.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
            let (id, pos) = (x.ids[r] as usize, x.positions[r] as usize + offset);
            let tok = &self.tokens.data[id * h..(id + 1) * h];
            let ps = &self.positions.data[pos * h..(pos + 1) * h];
            for i in 0..h {
                row[i] = tok[i] + ps[i];
            }
            if let Some(ty) = &self.types {
                row.iter_mut().zip(&ty.data[..h]).for_each(|(v, y)| *v += y);
            }
        });
        let norm = p.norm(&mut e, &self.norm, train);
        let mask = p.dropout(&mut e);
        (e, norm.map(|norm| EmbeddingsSaved { norm, mask }))
    }

    /// Back from `d`, the gradient of the block's output. Tables get touched-row gradients.
    pub(super) fn backward(
        &mut self,
        saved: &EmbeddingsSaved,
        p: &Pass,
        d: &mut [f32],
    ) -> anyhow::Result<()> {
        let (batch, cfg) = (p.batch, p.cfg);
        let h = cfg.width;
        apply_mask(d, &saved.mask);
        saved.norm.backward(d, &mut self.norm);
        let n = batch.tokens();
        let dpos = self.positions.grad_buffer();
        let mut dtype = vec![0.0f32; h];
        let mut rows: Vec<u32> = batch.ids.clone();
        rows.sort_unstable();
        rows.dedup();
        let mut values = vec![0.0f32; rows.len() * h];
        for r in 0..n {
            let g = &d[r * h..(r + 1) * h];
            let pos = batch.positions[r] as usize + cfg.position_offset;
            dpos[pos * h..(pos + 1) * h].iter_mut().zip(g).for_each(|(a, b)| *a += b);
            dtype.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            let k = rows.binary_search(&batch.ids[r]).expect("every token's id was collected");
            values[k * h..(k + 1) * h].iter_mut().zip(g).for_each(|(a, b)| *a += b);
        }
        if let Some(ty) = &mut self.types {
            ty.grad_buffer()[..h].iter_mut().zip(&dtype).for_each(|(a, b)| *a += b);
        }
        let new = RowGrad::new(rows, values, cfg.vocab, h)?;
        self.tokens.grad = match std::mem::take(&mut self.tokens.grad) {
            Grad::Rows(old) => Grad::Rows(merge_rows(old, new)?),
            Grad::Dense(mut old) => {
                for (k, &r) in new.rows().iter().enumerate() {
                    let r = r as usize;
                    old[r * h..(r + 1) * h]
                        .iter_mut()
                        .zip(&new.values()[k * h..(k + 1) * h])
                        .for_each(|(a, b)| *a += b);
                }
                Grad::Dense(old)
            }
            Grad::None => Grad::Rows(new),
        };
        Ok(())
    }
}

impl SelfAttention {
    pub(super) fn forward(&self, x: &[f32], p: &mut Pass, train: bool) -> (Vec<f32>, Option<AttentionSaved>) {
        let shape = p.batch.shape(p.cfg);
        let qkv = p.linear(x, &self.qkv);
        let mut ctx = p.ws.take(p.rows() * p.cfg.width);
        let probs = if train {
            let mut probs = p.ws.take(shape.probs_len());
            attention::forward(shape, &qkv, &mut probs, &mut ctx);
            Some(probs)
        } else {
            attention::forward_lean(shape, &qkv, &mut ctx);
            None
        };
        let mut a = p.linear(&ctx, &self.out);
        let mask = p.dropout(&mut a);
        a.iter_mut().zip(x).for_each(|(v, r)| *v += r);
        let norm = p.norm(&mut a, &self.norm, train);
        match (probs, norm) {
            (Some(probs), Some(norm)) => (a, Some(AttentionSaved { qkv, probs, ctx, norm, mask })),
            _ => {
                p.ws.give_all([qkv, ctx]);
                (a, None)
            }
        }
    }

    /// Back from `d` (the gradient of the block's output; on return, of its input `x`).
    pub(super) fn backward(
        &mut self,
        s: &AttentionSaved,
        x: &[f32],
        dprobs: Option<&[f32]>,
        p: &Pass,
        d: &mut [f32],
    ) {
        let (batch, cfg, ws) = (p.batch, p.cfg, p.ws);
        let (n, h) = (batch.tokens(), cfg.width);
        s.norm.backward(d, &mut self.norm);
        let mut da = ws.take(n * h);
        da.copy_from_slice(d);
        apply_mask(&mut da, &s.mask);
        let mut dctx = ws.take(n * h);
        self.out.backward(&s.ctx, &da, n, &mut dctx, false);
        let mut dqkv = ws.take(n * 3 * h);
        attention::backward(batch.shape(cfg), &s.qkv, &s.probs, &dctx, dprobs, &mut dqkv);
        // d holds the residual's share of dx; add the projection's.
        self.qkv.backward(x, &dqkv, n, d, true);
        ws.give_all([da, dctx, dqkv]);
    }
}

impl FeedForward {
    pub(super) fn forward(
        &self,
        x: &[f32],
        p: &mut Pass,
        train: bool,
    ) -> (Vec<f32>, Option<FeedForwardSaved>) {
        let (n, f, act_fn) = (p.rows(), self.input.out_dim(), p.cfg.activation);
        let mut pre_act = p.ws.take(n * f);
        matmul(
            &mut pre_act,
            f,
            Mat::new(x, n, p.cfg.width),
            Mat::new(&self.input.w.data, p.cfg.width, f),
            false,
            threads(),
        );
        let act = if train {
            let mut act = p.ws.take(n * f);
            kernels::bias_activation(&mut pre_act, &mut act, &self.input.b.data, act_fn);
            Some(act)
        } else {
            kernels::bias_activation_inplace(&mut pre_act, &self.input.b.data, act_fn);
            None
        };
        let mut out = p.linear(act.as_ref().unwrap_or(&pre_act), &self.output);
        let mask = p.dropout(&mut out);
        out.iter_mut().zip(x).for_each(|(v, r)| *v += r);
        let norm = p.norm(&mut out, &self.norm, train);
        match (act, norm) {
            (Some(act), Some(norm)) => (out, Some(FeedForwardSaved { pre_act, act, norm, mask })),
            _ => {
                p.ws.give(pre_act);
                (out, None)
            }
        }
    }

    /// Back from `d` (the gradient of the block's output; on return, of its input `x`).
    pub(super) fn backward(&mut self, s: &FeedForwardSaved, x: &[f32], p: &Pass, d: &mut [f32]) {
        let (cfg, ws) = (p.cfg, p.ws);
        let n = d.len() / cfg.width;
        s.norm.backward(d, &mut self.norm);
        let mut df = ws.take(d.len());
        df.copy_from_slice(d);
        apply_mask(&mut df, &s.mask);
        let mut dact = ws.take(n * cfg.ffn);
        self.output.backward(&s.act, &df, n, &mut dact, false);
        kernels::activation_backward(&mut dact, &s.pre_act, cfg.activation);
        self.input.backward(x, &dact, n, d, true);
        ws.give_all([df, dact]);
    }
}

impl EncoderLayer {
    pub(super) fn forward(&self, x: &[f32], p: &mut Pass, train: bool) -> (Vec<f32>, Option<LayerSaved>) {
        let (h1, attention) = self.attention.forward(x, p, train);
        let (out, ffn) = self.ffn.forward(&h1, p, train);
        match (attention, ffn) {
            (Some(attention), Some(ffn)) => (out, Some(LayerSaved { attention, h1, ffn })),
            _ => {
                p.ws.give(h1);
                (out, None)
            }
        }
    }
}

/// Two row gradients of one table as one.
fn merge_rows(a: RowGrad, b: RowGrad) -> anyhow::Result<RowGrad> {
    let w = a.width();
    let mut rows: Vec<u32> = a.rows().iter().chain(b.rows()).copied().collect();
    rows.sort_unstable();
    rows.dedup();
    let mut values = vec![0.0f32; rows.len() * w];
    for g in [&a, &b] {
        for (k, r) in g.rows().iter().enumerate() {
            let j = rows.binary_search(r).expect("collected above");
            values[j * w..(j + 1) * w]
                .iter_mut()
                .zip(&g.values()[k * w..(k + 1) * w])
                .for_each(|(x, y)| *x += y);
        }
    }
    RowGrad::new(rows, values, a.table_rows(), w)
}
