//! A BERT-style transformer encoder, forward and backward by hand: token + learned position
//! (+ token-type) embeddings, embedding layer norm, then post-LN layers of multi-head
//! self-attention and a GELU feed-forward block, each wrapped in dropout, a residual and a
//! layer norm — the layout of BERT, DistilBERT, RoBERTa / XLM-R, MiniLM and LaBSE.
//!
//! One struct per block — [`Embeddings`], [`SelfAttention`], [`FeedForward`], an
//! [`EncoderLayer`] of the two — each owning its parameters (listed once, with
//! [`module!`](crate::module)) and running itself: `forward` returns what its `backward`
//! reads (`…Saved`), and the [`Encoder`] is a loop over the blocks.
//!
//! Sequences are packed, not padded: the rows of sequence `b` are `offsets[b]..offsets[b+1]`
//! ([`TokenBatch`]), so no product is spent on padding. Layer-wise losses still see padded
//! `B × T × H` states ([`Trace::states`]); the conversion happens only when they ask.
//!
//! Activations are kept between forward and backward ([`Trace`]) so a step computes each
//! product once; [`Encoder::backward`] accepts extra gradients for any layer's hidden state
//! and attention distribution, which is what layer-wise distillation losses produce.
//! Inference ([`Encoder::encode`]) keeps nothing but the running hidden state. Buffers come
//! from the encoder's [`Workspace`] and go back to it, so the steady state allocates nothing.

use rand::SeedableRng;

pub use super::blocks::{Embeddings, EncoderLayer, FeedForward, SelfAttention};
use super::blocks::{EmbeddingsSaved, LayerSaved, Pass};
pub use super::config::EncoderConfig;
use super::init::init_uniform;
use super::layer_norm::LayerNorm;
use super::linear::Linear;
pub use super::token_batch::TokenBatch;
use super::workspace::Workspace;
use crate::outputs::{LayerGrads, LayerStates};
use crate::param::Param;

/// The encoder: embeddings and a stack of layers.
#[derive(Clone, Debug)]
pub struct Encoder {
    /// Its shape.
    pub cfg: EncoderConfig,
    /// The embeddings block.
    pub embeddings: Embeddings,
    /// The layers.
    pub layers: Vec<EncoderLayer>,
    /// Activation buffers kept between passes.
    ws: Workspace,
}
crate::module!(Encoder { embeddings, layers });

/// The activations of one forward pass: everything the backward pass reads.
pub struct Trace {
    batch: TokenBatch,
    heads: usize,
    /// L + 1 hidden states, each `tokens × H`, packed (0: the embeddings' output).
    pub hidden: Vec<Vec<f32>>,
    embeddings: EmbeddingsSaved,
    layers: Vec<LayerSaved>,
}

impl Trace {
    /// The packed batch it was computed on.
    pub fn batch(&self) -> &TokenBatch {
        &self.batch
    }

    /// Every layer's hidden state and attention, padded to `B × T × …` for layer-wise
    /// losses (padding rows and keys hold 0).
    pub fn states(&self) -> LayerStates {
        let (b, t) = (self.batch.batch(), self.batch.max_len());
        let width = self.hidden.first().map_or(0, |h| h.len() / self.batch.tokens().max(1));
        let pad_hidden = |x: &Vec<f32>| {
            let mut out = vec![0.0f32; b * t * width];
            for s in 0..b {
                let rows = self.batch.offsets[s]..self.batch.offsets[s + 1];
                out[s * t * width..(s * t + rows.len()) * width]
                    .copy_from_slice(&x[rows.start * width..rows.end * width]);
            }
            out
        };
        let heads = self.heads;
        let pad_probs = |p: &Vec<f32>| {
            let mut out = vec![0.0f32; b * heads * t * t];
            let mut at = 0;
            for s in 0..b {
                let len = self.batch.len(s);
                for h in 0..heads {
                    for q in 0..len {
                        let dst = ((s * heads + h) * t + q) * t;
                        out[dst..dst + len].copy_from_slice(&p[at..at + len]);
                        at += len;
                    }
                }
            }
            out
        };
        LayerStates {
            lens: self.batch.lens(),
            seq: t,
            width,
            heads,
            hidden: self.hidden.iter().map(pad_hidden).collect(),
            attention: self.layers.iter().map(|l| pad_probs(&l.attention.probs)).collect(),
        }
    }

    /// The last hidden state (packed).
    pub fn last(&self) -> &[f32] {
        self.hidden.last().map_or(&[], Vec::as_slice)
    }

    /// Every buffer, for the workspace.
    fn buffers(self) -> impl Iterator<Item = Vec<f32>> {
        let Trace { hidden, embeddings, layers, .. } = self;
        let mut v: Vec<Vec<f32>> = hidden;
        v.extend(embeddings.norm.buffers());
        v.extend(embeddings.mask);
        for l in layers {
            let (a, f) = (l.attention, l.ffn);
            v.extend([a.qkv, a.probs, a.ctx, l.h1, f.pre_act, f.act]);
            v.extend(a.norm.buffers().into_iter().chain(f.norm.buffers()));
            v.extend(a.mask.into_iter().chain(f.mask));
        }
        v.into_iter()
    }
}

/// Gathers a padded `B × T × width` gradient into the packed layout.
fn unpad_rows(batch: &TokenBatch, g: &[f32], width: usize, out: &mut [f32]) {
    let t = batch.max_len();
    for s in 0..batch.batch() {
        let rows = batch.offsets[s]..batch.offsets[s + 1];
        out[rows.start * width..rows.end * width]
            .copy_from_slice(&g[s * t * width..(s * t + rows.len()) * width]);
    }
}

/// Gathers a padded `B × heads × T × T` attention gradient into the packed layout.
fn unpad_probs(batch: &TokenBatch, heads: usize, g: &[f32]) -> Vec<f32> {
    let t = batch.max_len();
    let mut out = Vec::new();
    for s in 0..batch.batch() {
        let len = batch.len(s);
        for h in 0..heads {
            for q in 0..len {
                let src = ((s * heads + h) * t + q) * t;
                out.extend_from_slice(&g[src..src + len]);
            }
        }
    }
    out
}

impl Encoder {
    /// A freshly initialised encoder (BERT's initialisation: weights with standard
    /// deviation 0.02, biases zero, norms one), deterministic in `seed`.
    pub fn new(cfg: EncoderConfig, seed: u64) -> Encoder {
        Encoder::build(cfg, Some(&mut rand::rngs::StdRng::seed_from_u64(seed)))
    }

    /// An encoder whose weights are all zero (norms one): the frame a checkpoint is read
    /// into, without drawing a random number per weight first.
    pub fn zeroed(cfg: EncoderConfig) -> Encoder {
        Encoder::build(cfg, None)
    }

    fn build(cfg: EncoderConfig, mut rng: Option<&mut rand::rngs::StdRng>) -> Encoder {
        let bound = 0.02 * 3f32.sqrt();
        let h = cfg.width;
        let table = |name: &str, rows: usize, rng: &mut Option<&mut rand::rngs::StdRng>| {
            let mut p = Param::zeros(name, &[rows, h], true);
            if let Some(rng) = rng {
                init_uniform(&mut p, bound, rng);
            }
            p
        };
        let mut tokens = table("tokens", cfg.vocab, &mut rng);
        tokens.table = true;
        let positions = table("positions", cfg.max_positions, &mut rng);
        let types = (cfg.type_vocab > 0).then(|| table("types", cfg.type_vocab, &mut rng));
        let mut lin = |name: String, i: usize, o: usize| match rng.as_mut() {
            Some(rng) => {
                let mut l = Linear::new(&name, i, o, rng);
                init_uniform(&mut l.w, bound, rng);
                l.b.data.fill(0.0);
                l
            }
            None => Linear::zeros(&name, i, o),
        };
        let layers = (0..cfg.layers)
            .map(|i| {
                let qkv = lin(format!("layer.{i}.qkv"), h, 3 * h);
                let out = lin(format!("layer.{i}.attn_out"), h, h);
                let attention =
                    SelfAttention { qkv, out, norm: LayerNorm::new(&format!("layer.{i}.attn_norm"), h) };
                let input = lin(format!("layer.{i}.ffn_in"), h, cfg.ffn);
                let output = lin(format!("layer.{i}.ffn_out"), cfg.ffn, h);
                EncoderLayer {
                    attention,
                    ffn: FeedForward {
                        input,
                        output,
                        norm: LayerNorm::new(&format!("layer.{i}.ffn_norm"), h),
                    },
                }
            })
            .collect();
        let embeddings = Embeddings { tokens, positions, types, norm: LayerNorm::new("emb_norm", h) };
        Encoder { embeddings, layers, cfg, ws: Workspace::default() }
    }

    /// Keeps only these rows of the token table, in this order (a pruned vocabulary: new id
    /// `k` is old row `rows[k]`).
    pub fn keep_token_rows(&mut self, rows: &[u32]) -> anyhow::Result<()> {
        let (h, old) = (self.cfg.width, &self.embeddings.tokens);
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= self.cfg.vocab) {
            anyhow::bail!("row {bad} is outside the token table of {} rows", self.cfg.vocab);
        }
        let mut data = Vec::with_capacity(rows.len() * h);
        for &r in rows {
            data.extend_from_slice(&old.data[r as usize * h..(r as usize + 1) * h]);
        }
        let t = &mut self.embeddings.tokens;
        t.data = data;
        t.shape = vec![rows.len(), h];
        t.grad = Default::default();
        self.cfg.vocab = rows.len();
        Ok(())
    }

    /// Checks a batch against the model: positions and vocabulary.
    fn check(&self, x: &TokenBatch) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        let t = x.max_len();
        anyhow::ensure!(
            t <= cfg.max_len(),
            "a sequence of {t} tokens is longer than the model's {} positions",
            cfg.max_len()
        );
        if let Some(&bad) = x.ids.iter().find(|&&id| id as usize >= cfg.vocab) {
            anyhow::bail!("token id {bad} is outside the vocabulary of {} tokens", cfg.vocab);
        }
        Ok(())
    }

    /// The forward pass of training (or of inference that needs every layer's states).
    /// `dropout_seed` enables dropout. Every id must be below the vocabulary size (an error
    /// names the first that is not). Hand the trace back with [`Encoder::recycle`].
    pub fn forward(&self, x: TokenBatch, dropout_seed: Option<u64>) -> anyhow::Result<Trace> {
        self.check(&x)?;
        let rng = dropout_seed.map(rand::rngs::StdRng::seed_from_u64);
        let mut p = Pass { cfg: &self.cfg, batch: &x, ws: &self.ws, rng };
        let (e, embeddings) = self.embeddings.forward(&mut p, true);
        let mut hidden = vec![e];
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let (out, saved) =
                l.forward(hidden.last().expect("the embeddings are pushed first"), &mut p, true);
            layers.push(saved.expect("training passes keep what backward reads"));
            hidden.push(out);
        }
        let embeddings = embeddings.expect("training passes keep what backward reads");
        Ok(Trace { batch: x, heads: self.cfg.heads, hidden, embeddings, layers })
    }

    /// Inference: the last hidden state (`tokens × H`, packed), keeping no activation a
    /// backward pass would need. Hand the buffer back with [`Encoder::give`].
    pub fn encode(&self, x: &TokenBatch) -> anyhow::Result<Vec<f32>> {
        self.check(x)?;
        let mut p = Pass { cfg: &self.cfg, batch: x, ws: &self.ws, rng: None };
        let (mut h, _) = self.embeddings.forward(&mut p, false);
        for l in &self.layers {
            let (out, _) = l.forward(&h, &mut p, false);
            p.ws.give(std::mem::replace(&mut h, out));
        }
        Ok(h)
    }

    /// Numbers held by the workspace's idle buffers.
    pub fn workspace_held(&self) -> usize {
        self.ws.held()
    }

    /// Returns a buffer to the encoder's workspace.
    pub fn give(&self, b: Vec<f32>) {
        self.ws.give(b)
    }

    /// Returns a trace's buffers to the encoder's workspace, for the next pass.
    pub fn recycle(&self, trace: Trace) {
        self.ws.give_all(trace.buffers())
    }

    /// The backward pass from `dlast` (the gradient of the last hidden state, packed
    /// `tokens × H`) and the layer-wise losses' gradients `extra` (padded, as
    /// [`Trace::states`]); adds every parameter's gradient.
    pub fn backward(
        &mut self,
        trace: &Trace,
        dlast: &mut [f32],
        extra: Option<&LayerGrads>,
    ) -> anyhow::Result<()> {
        let cfg = self.cfg.clone();
        let (h, batch) = (cfg.width, &trace.batch);
        let n = batch.tokens();
        anyhow::ensure!(
            dlast.len() == n * h,
            "the last hidden state's gradient has {} numbers, expected {}",
            dlast.len(),
            n * h
        );
        let add_extra = |k: usize, d: &mut [f32], ws: &Workspace| -> anyhow::Result<()> {
            if let Some(g) = extra.and_then(|g| g.hidden.get(k)).and_then(Option::as_ref) {
                let want = batch.batch() * batch.max_len() * h;
                anyhow::ensure!(
                    g.len() == want,
                    "hidden state {k}'s gradient has {} numbers, expected {want}",
                    g.len()
                );
                let mut packed = ws.take(n * h);
                unpad_rows(batch, g, h, &mut packed);
                d.iter_mut().zip(&packed).for_each(|(a, b)| *a += b);
                ws.give(packed);
            }
            Ok(())
        };
        let d = dlast;
        add_extra(cfg.layers, d, &self.ws)?;
        for (i, l) in self.layers.iter_mut().enumerate().rev() {
            let s = &trace.layers[i];
            let p = Pass { cfg: &cfg, batch, ws: &self.ws, rng: None };
            l.ffn.backward(&s.ffn, &s.h1, &p, d);
            let dprobs = extra
                .and_then(|g| g.attention.get(i))
                .and_then(Option::as_deref)
                .map(|g| unpad_probs(batch, cfg.heads, g));
            l.attention.backward(&s.attention, &trace.hidden[i], dprobs.as_deref(), &p, d);
            add_extra(i, d, &self.ws)?;
        }
        let p = Pass { cfg: &cfg, batch, ws: &self.ws, rng: None };
        self.embeddings.backward(&trace.embeddings, &p, d)
    }
}
