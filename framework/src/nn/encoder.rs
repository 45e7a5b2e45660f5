//! A BERT-style transformer encoder, forward and backward by hand: token + learned position
//! (+ token-type) embeddings, embedding layer norm, then post-LN layers of multi-head
//! self-attention and a GELU feed-forward block, each wrapped in dropout, a residual and a
//! layer norm — the layout of BERT, DistilBERT, RoBERTa / XLM-R, MiniLM and LaBSE.
//!
//! Activations are kept between forward and backward ([`Trace`]) so a step computes each
//! product once; [`Encoder::backward`] accepts extra gradients for any layer's hidden state
//! and attention distribution, which is what layer-wise distillation losses produce.

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::attention::{self, AttentionShape};
use super::dense::{self, add_bias, add_column_sums, matmul, threads, FfnActivation, Mat};
use super::{init_uniform, LayerNorm, Linear};
use crate::model::{Grad, LayerGrads, LayerStates, Param, RowGrad};

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
            return Err(format!("the width ({}) must be a positive multiple of the heads ({})", self.width, self.heads));
        }
        if self.vocab == 0 || self.ffn == 0 || self.layers == 0 {
            return Err(format!(
                "vocabulary ({}), feed-forward width ({}) and layers ({}) must be positive",
                self.vocab, self.ffn, self.layers
            ));
        }
        if self.max_len() == 0 {
            return Err(format!("{} positions leave no room after the offset {}", self.max_positions, self.position_offset));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), found {}", self.dropout));
        }
        Ok(())
    }
}

/// One post-LN encoder layer. Q, K and V are one `H × 3H` product.
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    /// Packed query | key | value projection, `H × 3H`.
    pub qkv: Linear,
    /// Attention output projection, `H × H`.
    pub attn_out: Linear,
    /// Layer norm after the attention residual.
    pub attn_norm: LayerNorm,
    /// Feed-forward input, `H × F`.
    pub ffn_in: Linear,
    /// Feed-forward output, `F × H`.
    pub ffn_out: Linear,
    /// Layer norm after the feed-forward residual.
    pub ffn_norm: LayerNorm,
}

/// The encoder's parameters.
#[derive(Clone, Debug)]
pub struct Encoder {
    /// Its shape.
    pub cfg: EncoderConfig,
    /// Token embeddings, `vocab × H` (a table: sparse row updates).
    pub tokens: Param,
    /// Position embeddings, `max_positions × H`.
    pub positions: Param,
    /// Token-type embeddings, `type_vocab × H`, when the architecture has them.
    pub types: Option<Param>,
    /// Layer norm over the summed embeddings.
    pub emb_norm: LayerNorm,
    /// The layers.
    pub layers: Vec<EncoderLayer>,
}

/// A padded batch of token sequences: row `b·seq + i` is token `i` of sequence `b`.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    /// Token ids, `batch × seq` (padding rows hold 0 and are masked).
    pub ids: Vec<u32>,
    /// Length of each sequence (≥ 1).
    pub lens: Vec<usize>,
    /// Padded length.
    pub seq: usize,
}

impl TokenBatch {
    /// Pads `seqs` to the longest; an empty sequence or one longer than `max_len` is an
    /// error that names it.
    pub fn new<'a>(seqs: impl Iterator<Item = &'a [u32]>, max_len: usize) -> anyhow::Result<TokenBatch> {
        let seqs: Vec<&[u32]> = seqs.collect();
        let seq = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; seqs.len() * seq];
        let mut lens = Vec::with_capacity(seqs.len());
        for (b, s) in seqs.iter().enumerate() {
            anyhow::ensure!(!s.is_empty(), "sequence {b} of the batch has no tokens");
            anyhow::ensure!(s.len() <= max_len, "sequence {b} has {} tokens, more than the model's {max_len} positions", s.len());
            ids[b * seq..b * seq + s.len()].copy_from_slice(s);
            lens.push(s.len());
        }
        Ok(TokenBatch { ids, lens, seq })
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }
}

/// What one layer keeps for its backward pass.
struct LayerTrace {
    qkv: Vec<f32>,
    probs: Vec<f32>,
    ctx: Vec<f32>,
    attn_hat: Vec<f32>,
    attn_rstd: Vec<f32>,
    attn_mask: Option<Vec<f32>>,
    /// The attention block's output: the feed-forward block's input.
    h1: Vec<f32>,
    pre_act: Vec<f32>,
    act: Vec<f32>,
    ffn_hat: Vec<f32>,
    ffn_rstd: Vec<f32>,
    ffn_mask: Option<Vec<f32>>,
}

/// The activations of one forward pass: everything the backward pass reads.
pub struct Trace {
    batch: TokenBatch,
    /// L + 1 hidden states, each `B·T × H` (0: the embeddings' output).
    pub hidden: Vec<Vec<f32>>,
    emb_hat: Vec<f32>,
    emb_rstd: Vec<f32>,
    emb_mask: Option<Vec<f32>>,
    layers: Vec<LayerTrace>,
}

impl Trace {
    /// The padded batch it was computed on.
    pub fn batch(&self) -> &TokenBatch {
        &self.batch
    }

    /// Every layer's hidden state and attention, for layer-wise losses.
    pub fn states(&self, heads: usize) -> LayerStates {
        LayerStates {
            lens: self.batch.lens.clone(),
            seq: self.batch.seq,
            width: self.hidden.first().map_or(0, |h| h.len() / (self.batch.batch() * self.batch.seq).max(1)),
            heads,
            hidden: self.hidden.clone(),
            attention: self.layers.iter().map(|l| l.probs.clone()).collect(),
        }
    }

    /// The last hidden state.
    pub fn last(&self) -> &[f32] {
        self.hidden.last().map_or(&[], Vec::as_slice)
    }
}

/// Multiplies by an inverted-dropout mask drawn from `rng`, returning the mask.
fn dropout(x: &mut [f32], p: f32, rng: Option<&mut rand::rngs::StdRng>) -> Option<Vec<f32>> {
    let rng = rng.filter(|_| p > 0.0)?;
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..x.len()).map(|_| if rng.gen::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
    x.iter_mut().zip(&mask).for_each(|(v, m)| *v *= m);
    Some(mask)
}

fn apply_mask(x: &mut [f32], mask: &Option<Vec<f32>>) {
    if let Some(m) = mask {
        x.iter_mut().zip(m).for_each(|(v, m)| *v *= m);
    }
}

/// `out = x·W + b` for `rows` rows.
fn linear(x: &[f32], rows: usize, l: &Linear) -> Vec<f32> {
    let (i, o) = (l.w.shape[0], l.w.shape[1]);
    let mut out = vec![0.0f32; rows * o];
    matmul(&mut out, o, Mat::new(x, rows, i), Mat::new(&l.w.data, i, o), false, threads());
    add_bias(&mut out, &l.b.data);
    out
}

/// Back through `y = x·W + b`: adds the weight and bias gradients, returns the gradient
/// of `x` (added into `dx` when given).
fn linear_backward(x: &[f32], dy: &[f32], rows: usize, l: &mut Linear, dx: Option<&mut Vec<f32>>) -> Option<Vec<f32>> {
    let (i, o) = (l.w.shape[0], l.w.shape[1]);
    let gw = dense_grad(&mut l.w);
    matmul(gw, o, Mat::new(x, rows, i).t(), Mat::new(dy, rows, o), true, threads());
    add_column_sums(dense_grad(&mut l.b), dy);
    let wt = Mat::new(&l.w.data, i, o).t();
    match dx {
        Some(acc) => {
            matmul(acc, i, Mat::new(dy, rows, o), wt, true, threads());
            None
        }
        None => {
            let mut out = vec![0.0f32; rows * i];
            matmul(&mut out, i, Mat::new(dy, rows, o), wt, false, threads());
            Some(out)
        }
    }
}

/// The parameter's dense gradient buffer, created at zero when it has none.
pub fn dense_grad(p: &mut Param) -> &mut Vec<f32> {
    if !matches!(p.grad, Grad::Dense(_)) {
        p.grad = Grad::Dense(vec![0.0; p.data.len()]);
    }
    match &mut p.grad {
        Grad::Dense(g) => g,
        _ => unreachable!("set to Dense just above"),
    }
}

impl Encoder {
    /// A freshly initialised encoder (BERT's initialisation: weights with standard
    /// deviation 0.02, biases zero, norms one), deterministic in `seed`.
    pub fn new(cfg: EncoderConfig, seed: u64) -> Encoder {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bound = 0.02 * 3f32.sqrt();
        let h = cfg.width;
        let table = |name: &str, rows: usize, rng: &mut rand::rngs::StdRng| {
            let mut p = Param::zeros(name, &[rows, h], true);
            init_uniform(&mut p, bound, rng);
            p
        };
        let mut tokens = table("tokens", cfg.vocab, &mut rng);
        tokens.table = true;
        let positions = table("positions", cfg.max_positions, &mut rng);
        let types = (cfg.type_vocab > 0).then(|| table("types", cfg.type_vocab, &mut rng));
        let mut lin = |name: String, i: usize, o: usize| {
            let mut l = Linear::new(&name, i, o, &mut rng);
            init_uniform(&mut l.w, bound, &mut rng);
            l.b.data.fill(0.0);
            l
        };
        let layers = (0..cfg.layers)
            .map(|i| EncoderLayer {
                qkv: lin(format!("layer.{i}.qkv"), h, 3 * h),
                attn_out: lin(format!("layer.{i}.attn_out"), h, h),
                attn_norm: LayerNorm::new(&format!("layer.{i}.attn_norm"), h),
                ffn_in: lin(format!("layer.{i}.ffn_in"), h, cfg.ffn),
                ffn_out: lin(format!("layer.{i}.ffn_out"), cfg.ffn, h),
                ffn_norm: LayerNorm::new(&format!("layer.{i}.ffn_norm"), h),
            })
            .collect();
        Encoder { tokens, positions, types, emb_norm: LayerNorm::new("emb_norm", h), layers, cfg }
    }

    /// The parameters, in a fixed order.
    pub fn params(&self) -> Vec<&Param> {
        let mut v = vec![&self.tokens, &self.positions];
        v.extend(self.types.as_ref());
        v.extend([&self.emb_norm.gain, &self.emb_norm.bias]);
        for l in &self.layers {
            v.extend([&l.qkv.w, &l.qkv.b, &l.attn_out.w, &l.attn_out.b, &l.attn_norm.gain, &l.attn_norm.bias]);
            v.extend([&l.ffn_in.w, &l.ffn_in.b, &l.ffn_out.w, &l.ffn_out.b, &l.ffn_norm.gain, &l.ffn_norm.bias]);
        }
        v
    }

    /// The parameters, mutably, in [`Encoder::params`] order.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.tokens, &mut self.positions];
        v.extend(self.types.as_mut());
        v.extend([&mut self.emb_norm.gain, &mut self.emb_norm.bias]);
        for l in &mut self.layers {
            v.extend([&mut l.qkv.w, &mut l.qkv.b, &mut l.attn_out.w, &mut l.attn_out.b, &mut l.attn_norm.gain, &mut l.attn_norm.bias]);
            v.extend([&mut l.ffn_in.w, &mut l.ffn_in.b, &mut l.ffn_out.w, &mut l.ffn_out.b, &mut l.ffn_norm.gain, &mut l.ffn_norm.bias]);
        }
        v
    }

    fn shape(&self, x: &TokenBatch) -> AttentionShape {
        AttentionShape { batch: x.batch(), seq: x.seq, width: self.cfg.width, heads: self.cfg.heads }
    }

    /// The forward pass. `dropout_seed` enables dropout (training). Every id must be below
    /// the vocabulary size (an error names the first that is not).
    pub fn forward(&self, x: TokenBatch, dropout_seed: Option<u64>) -> anyhow::Result<Trace> {
        let cfg = &self.cfg;
        let (h, t) = (cfg.width, x.seq);
        let n = x.batch() * t;
        anyhow::ensure!(t <= cfg.max_len(), "a sequence of {t} tokens is longer than the model's {} positions", cfg.max_len());
        if let Some(&bad) = x.ids.iter().find(|&&id| id as usize >= cfg.vocab) {
            anyhow::bail!("token id {bad} is outside the vocabulary of {} tokens", cfg.vocab);
        }
        let mut rng = dropout_seed.map(rand::rngs::StdRng::seed_from_u64);
        let mut e = vec![0.0f32; n * h];
        e.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
            let (id, pos) = (x.ids[r] as usize, r % t + cfg.position_offset);
            let tok = &self.tokens.data[id * h..(id + 1) * h];
            let p = &self.positions.data[pos * h..(pos + 1) * h];
            for i in 0..h {
                row[i] = tok[i] + p[i];
            }
            if let Some(ty) = &self.types {
                row.iter_mut().zip(&ty.data[..h]).for_each(|(v, y)| *v += y);
            }
        });
        let mut emb_hat = vec![0.0f32; n * h];
        let mut emb_rstd = vec![0.0f32; n];
        dense::layer_norm(&mut e, &mut emb_hat, &mut emb_rstd, &self.emb_norm.gain.data, &self.emb_norm.bias.data, cfg.eps);
        let emb_mask = dropout(&mut e, cfg.dropout, rng.as_mut());
        let shape = self.shape(&x);
        let mut hidden = vec![e];
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let input = hidden.last().expect("the embeddings are pushed first");
            let qkv = linear(input, n, &l.qkv);
            let mut probs = vec![0.0f32; x.batch() * cfg.heads * t * t];
            let mut ctx = vec![0.0f32; n * h];
            attention::forward(shape, &x.lens, &qkv, &mut probs, &mut ctx);
            let mut a = linear(&ctx, n, &l.attn_out);
            let attn_mask = dropout(&mut a, cfg.dropout, rng.as_mut());
            a.iter_mut().zip(input).for_each(|(v, r)| *v += r);
            let mut attn_hat = vec![0.0f32; n * h];
            let mut attn_rstd = vec![0.0f32; n];
            dense::layer_norm(&mut a, &mut attn_hat, &mut attn_rstd, &l.attn_norm.gain.data, &l.attn_norm.bias.data, cfg.eps);
            let mut pre_act = vec![0.0f32; n * cfg.ffn];
            matmul(&mut pre_act, cfg.ffn, Mat::new(&a, n, h), Mat::new(&l.ffn_in.w.data, h, cfg.ffn), false, threads());
            let mut act = vec![0.0f32; n * cfg.ffn];
            dense::bias_activation(&mut pre_act, &mut act, &l.ffn_in.b.data, cfg.activation);
            let mut f = linear(&act, n, &l.ffn_out);
            let ffn_mask = dropout(&mut f, cfg.dropout, rng.as_mut());
            f.iter_mut().zip(&a).for_each(|(v, r)| *v += r);
            let mut ffn_hat = vec![0.0f32; n * h];
            let mut ffn_rstd = vec![0.0f32; n];
            dense::layer_norm(&mut f, &mut ffn_hat, &mut ffn_rstd, &l.ffn_norm.gain.data, &l.ffn_norm.bias.data, cfg.eps);
            layers.push(LayerTrace { qkv, probs, ctx, attn_hat, attn_rstd, attn_mask, h1: a, pre_act, act, ffn_hat, ffn_rstd, ffn_mask });
            hidden.push(f);
        }
        Ok(Trace { batch: x, hidden, emb_hat, emb_rstd, emb_mask, layers })
    }

    /// The backward pass from `dlast` (the gradient of the last hidden state, `B·T × H`)
    /// and the layer-wise losses' gradients `extra`; adds every parameter's gradient.
    pub fn backward(&mut self, trace: &Trace, dlast: Vec<f32>, extra: Option<&LayerGrads>) -> anyhow::Result<()> {
        let cfg = self.cfg.clone();
        let (h, t) = (cfg.width, trace.batch.seq);
        let n = trace.batch.batch() * t;
        let shape = self.shape(&trace.batch);
        let extra_hidden = |k: usize| extra.and_then(|g| g.hidden.get(k)).and_then(Option::as_ref);
        let mut d = dlast;
        anyhow::ensure!(d.len() == n * h, "the last hidden state's gradient has {} numbers, expected {}", d.len(), n * h);
        if let Some(g) = extra_hidden(cfg.layers) {
            d.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        }
        for (i, l) in self.layers.iter_mut().enumerate().rev() {
            let tr = &trace.layers[i];
            let input = &trace.hidden[i];
            let h1 = &tr.h1;
            // Feed-forward block: out = LN(dropout(act·W2 + b2) + h1).
            norm_backward(&mut d, &tr.ffn_hat, &tr.ffn_rstd, &mut l.ffn_norm);
            let mut df = d.clone();
            apply_mask(&mut df, &tr.ffn_mask);
            let mut dact = linear_backward(&tr.act, &df, n, &mut l.ffn_out, None).expect("no accumulator given");
            dense::activation_backward(&mut dact, &tr.pre_act, cfg.activation);
            // d now holds the residual's share of dh1; add the feed-forward input's.
            linear_backward(h1, &dact, n, &mut l.ffn_in, Some(&mut d));
            // Attention block: h1 = LN(dropout(ctx·Wo + bo) + input).
            norm_backward(&mut d, &tr.attn_hat, &tr.attn_rstd, &mut l.attn_norm);
            let mut da = d.clone();
            apply_mask(&mut da, &tr.attn_mask);
            let dctx = linear_backward(&tr.ctx, &da, n, &mut l.attn_out, None).expect("no accumulator given");
            let mut dqkv = vec![0.0f32; n * 3 * h];
            let dprobs = extra.and_then(|g| g.attention.get(i)).and_then(Option::as_deref);
            attention::backward(shape, &trace.batch.lens, &tr.qkv, &tr.probs, &dctx, dprobs, &mut dqkv);
            linear_backward(input, &dqkv, n, &mut l.qkv, Some(&mut d));
            if let Some(g) = extra_hidden(i) {
                d.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        apply_mask(&mut d, &trace.emb_mask);
        norm_backward(&mut d, &trace.emb_hat, &trace.emb_rstd, &mut self.emb_norm);
        // Embedding tables: only real tokens' rows (padding rows carry no gradient).
        let x = &trace.batch;
        let real = |r: usize| r % t < x.lens[r / t];
        let dpos = dense_grad(&mut self.positions);
        let mut dtype = vec![0.0f32; h];
        let mut rows: Vec<u32> = (0..n).filter(|&r| real(r)).map(|r| x.ids[r]).collect();
        rows.sort_unstable();
        rows.dedup();
        let mut values = vec![0.0f32; rows.len() * h];
        for r in (0..n).filter(|&r| real(r)) {
            let g = &d[r * h..(r + 1) * h];
            let pos = r % t + cfg.position_offset;
            dpos[pos * h..(pos + 1) * h].iter_mut().zip(g).for_each(|(a, b)| *a += b);
            dtype.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            let k = rows.binary_search(&x.ids[r]).expect("every real token's id was collected");
            values[k * h..(k + 1) * h].iter_mut().zip(g).for_each(|(a, b)| *a += b);
        }
        if let Some(ty) = &mut self.types {
            dense_grad(ty)[..h].iter_mut().zip(&dtype).for_each(|(a, b)| *a += b);
        }
        let new = RowGrad::new(rows, values, cfg.vocab, h)?;
        self.tokens.grad = match std::mem::take(&mut self.tokens.grad) {
            Grad::Rows(old) => Grad::Rows(merge_rows(old, new)?),
            Grad::Dense(mut old) => {
                for (k, &r) in new.rows().iter().enumerate() {
                    let r = r as usize;
                    old[r * h..(r + 1) * h].iter_mut().zip(&new.values()[k * h..(k + 1) * h]).for_each(|(a, b)| *a += b);
                }
                Grad::Dense(old)
            }
            Grad::None => Grad::Rows(new),
        };
        Ok(())
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
            values[j * w..(j + 1) * w].iter_mut().zip(&g.values()[k * w..(k + 1) * w]).for_each(|(x, y)| *x += y);
        }
    }
    RowGrad::new(rows, values, a.table_rows(), w)
}

/// Back through a layer norm (gradient of its output in `d`, of its input on return).
fn norm_backward(d: &mut [f32], xhat: &[f32], rstd: &[f32], norm: &mut LayerNorm) {
    dense_grad(&mut norm.gain);
    dense_grad(&mut norm.bias);
    let (Grad::Dense(dg), Grad::Dense(db)) = (&mut norm.gain.grad, &mut norm.bias.grad) else {
        unreachable!("dense gradients were created just above")
    };
    dense::layer_norm_backward(d, xhat, rstd, &norm.gain.data, dg, db);
}
