//! A transformer sentence model: tokenizer → [`Encoder`] → pooling (mean over real tokens,
//! or the first token) → optional L2 normalisation → classification head. The pooled
//! (normalised) vector is the model's hidden representation handed to losses; the head
//! reads it. The `transformer` and `hf-encoder` model plugins both build this.

use rand::SeedableRng;
use rayon::prelude::*;

use super::encoder::{Encoder, TokenBatch};
use super::kernels::{matmul, threads, Mat};
use super::linear::Linear;
use crate::features::{Featurizer, TokenRows};
use crate::model::Model;
use crate::outputs::{OutputGrads, Outputs, StepCtx};
use crate::param::Param;
use crate::tokenize::TextTokenizer;

/// How token states become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the real (non-padding) tokens.
    Mean,
    /// The first token's state (`[CLS]`).
    Cls,
}

/// Tokens per chunk in inference. Sequences are packed (no padding), so the activations
/// of a chunk are proportional to its tokens, not to its longest sequence: a token budget
/// bounds memory whatever the lengths (about 130 MB of activations at all-MiniLM-L6-v2's widths), and keeps
/// the products large enough to run near the kernel's peak.
const TOKEN_BUDGET: usize = 8192;

/// A transformer encoder with pooling and a classification head.
#[derive(Clone, Debug)]
pub struct TransformerModel {
    /// The encoder.
    pub encoder: Encoder,
    /// Pooling.
    pub pooling: Pooling,
    /// L2-normalise the pooled vector (sentence-transformers' `Normalize` module).
    pub normalize: bool,
    /// Classification head on the sentence vector (`H × classes`).
    pub head: Linear,
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// Name shown in logs (`transformer`, `hf-encoder <dir>`).
    pub name: String,
}
crate::module!(TransformerModel { encoder, head });

/// The pooled vectors of a batch, and their norms before normalisation.
struct Pooled {
    vectors: Vec<f32>,
    norms: Vec<f32>,
}

impl TransformerModel {
    /// A model around `encoder` with a fresh head for `classes` classes.
    pub fn new(
        encoder: Encoder,
        tokenizer: TextTokenizer,
        pooling: Pooling,
        normalize: bool,
        classes: usize,
        seed: u64,
        name: String,
    ) -> TransformerModel {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x4845_4144);
        let head = Linear::new("head", encoder.cfg.width, classes, &mut rng);
        TransformerModel { encoder, pooling, normalize, head, tokenizer, name }
    }

    fn width(&self) -> usize {
        self.encoder.cfg.width
    }

    fn batch(&self, x: &TokenRows, rows: impl Iterator<Item = usize>) -> anyhow::Result<TokenBatch> {
        TokenBatch::new(rows.map(|i| x.bag(i)), self.encoder.cfg.max_len())
    }

    /// Pools the packed last hidden state of `x` into one vector per sequence.
    fn pool(&self, x: &TokenBatch, last: &[f32]) -> Pooled {
        let h = self.width();
        let mut vectors = vec![0.0f32; x.batch() * h];
        for (b, out) in vectors.chunks_exact_mut(h).enumerate() {
            let rows = &last[x.offsets[b] * h..x.offsets[b + 1] * h];
            match self.pooling {
                Pooling::Cls => out.copy_from_slice(&rows[..h]),
                Pooling::Mean => {
                    for r in rows.chunks_exact(h) {
                        out.iter_mut().zip(r).for_each(|(o, v)| *o += v);
                    }
                    let n = x.len(b) as f32;
                    out.iter_mut().for_each(|o| *o /= n);
                }
            }
        }
        let mut norms = vec![1.0f32; x.batch()];
        if self.normalize {
            for (v, n) in vectors.chunks_exact_mut(h).zip(&mut norms) {
                // sentence-transformers' Normalize: x / max(‖x‖, 1e-12).
                *n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= *n);
            }
        }
        Pooled { vectors, norms }
    }

    fn logits(&self, emb: &[f32], batch: usize) -> Vec<f32> {
        let c = self.head.out_dim();
        let mut out = vec![0.0f32; batch * c];
        matmul(
            &mut out,
            c,
            Mat::new(emb, batch, self.width()),
            Mat::new(&self.head.w.data, self.width(), c),
            false,
            threads(),
        );
        super::kernels::add_bias(&mut out, &self.head.b.data);
        out
    }

    /// The outputs of a pass from its packed last hidden state, and the pooled vectors'
    /// norms before normalisation (the backward pass through the normalisation needs them).
    fn outputs(&self, x: &TokenBatch, last: &[f32]) -> (Outputs, Vec<f32>) {
        let batch = x.batch();
        let Pooled { vectors: emb, norms } = self.pool(x, last);
        let out = Outputs {
            batch,
            logits: self.logits(&emb, batch),
            classes: self.head.out_dim(),
            hidden: emb,
            hidden_dim: self.width(),
            layers: None,
        };
        (out, norms)
    }

    /// Sentence vectors of `texts` (the model's pipeline: pooling, normalisation), for
    /// `kdx embed` and tests.
    pub fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<f32>> {
        let bags = TokenRows::build(&self.tokenizer, texts.par_iter().copied());
        Ok(self.forward(&bags)?.hidden)
    }
}

impl Model for TransformerModel {
    fn describe(&self) -> String {
        let c = &self.encoder.cfg;
        format!(
            "{} {} → {} layers × {} wide ({} heads, ffn {}) → {:?}{} → {}",
            self.name,
            self.tokenizer.describe(),
            c.layers,
            c.width,
            c.heads,
            c.ffn,
            self.pooling,
            if self.normalize { " + L2" } else { "" },
            self.head.out_dim()
        )
    }
    fn classes(&self) -> usize {
        self.head.out_dim()
    }
    fn hidden_dim(&self) -> usize {
        self.width()
    }
    fn featurizer(&self) -> &dyn Featurizer {
        &self.tokenizer
    }
    fn forward(&self, x: &TokenRows) -> anyhow::Result<Outputs> {
        infer(self, x, false)
    }
    fn forward_layers(&self, x: &TokenRows) -> anyhow::Result<Outputs> {
        infer(self, x, true)
    }
    fn forward_backward(
        &mut self,
        x: &TokenRows,
        ctx: StepCtx,
        objective: &mut dyn FnMut(&Outputs) -> anyhow::Result<OutputGrads>,
    ) -> anyhow::Result<Outputs> {
        let tb = self.batch(x, 0..x.len())?;
        let trace = self.encoder.forward(tb, Some(ctx.seed))?;
        let (mut outputs, norms) = self.outputs(trace.batch(), trace.last());
        if ctx.layers {
            outputs.layers = Some(trace.states());
        }
        let g = objective(&outputs)?;
        let (b, h, c) = (outputs.batch, self.width(), self.head.out_dim());
        anyhow::ensure!(
            g.logits.len() == b * c,
            "logit gradient has {} numbers, expected {}",
            g.logits.len(),
            b * c
        );
        // Head: logits = e·Wc + bc.
        let mut de = match g.hidden {
            Some(gh) => {
                anyhow::ensure!(
                    gh.len() == b * h,
                    "hidden gradient has {} numbers, expected {}",
                    gh.len(),
                    b * h
                );
                gh
            }
            None => vec![0.0f32; b * h],
        };
        matmul(
            self.head.w.grad_buffer(),
            c,
            Mat::new(&outputs.hidden, b, h).t(),
            Mat::new(&g.logits, b, c),
            true,
            threads(),
        );
        super::kernels::add_column_sums(self.head.b.grad_buffer(), &g.logits);
        matmul(&mut de, h, Mat::new(&g.logits, b, c), Mat::new(&self.head.w.data, h, c).t(), true, threads());
        // Normalisation: e = p/‖p‖ ⇒ dp = (de − e·(e·de))/‖p‖.
        if self.normalize {
            for ((d, e), n) in de.chunks_exact_mut(h).zip(outputs.hidden.chunks_exact(h)).zip(norms) {
                let dot: f32 = d.iter().zip(e).map(|(a, b)| a * b).sum();
                d.iter_mut().zip(e).for_each(|(d, e)| *d = (*d - e * dot) / n);
            }
        }
        // Pooling.
        let x = trace.batch();
        let mut dlast = vec![0.0f32; x.tokens() * h];
        for (bi, d) in de.chunks_exact(h).enumerate() {
            let rows = &mut dlast[x.offsets[bi] * h..x.offsets[bi + 1] * h];
            match self.pooling {
                Pooling::Cls => rows[..h].copy_from_slice(d),
                Pooling::Mean => {
                    let n = x.len(bi) as f32;
                    for r in rows.chunks_exact_mut(h) {
                        r.iter_mut().zip(d).for_each(|(r, d)| *r = d / n);
                    }
                }
            }
        }
        let result = self.encoder.backward(&trace, &mut dlast, g.layers.as_ref());
        self.encoder.recycle(trace);
        result?;
        Ok(outputs)
    }
    fn params(&self) -> Vec<&Param> {
        super::module::Module::params(self)
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        super::module::Module::params_mut(self)
    }
}

/// Inference in chunks of at most [`TOKEN_BUDGET`] tokens, in input order. Layer states
/// come back for the whole batch at once (a teacher's per-step batch), from a training-style
/// pass that keeps them; otherwise the lean pass keeps nothing.
fn infer(m: &TransformerModel, x: &TokenRows, layers: bool) -> anyhow::Result<Outputs> {
    let n = x.len();
    if layers {
        let trace = m.encoder.forward(m.batch(x, 0..n)?, None)?;
        let (mut out, _) = m.outputs(trace.batch(), trace.last());
        out.layers = Some(trace.states());
        m.encoder.recycle(trace);
        return Ok(out);
    }
    let (h, c) = (m.width(), m.head.out_dim());
    let mut out = Outputs {
        batch: n,
        logits: Vec::with_capacity(n * c),
        classes: c,
        hidden: Vec::with_capacity(n * h),
        hidden_dim: h,
        layers: None,
    };
    let max_len = m.encoder.cfg.max_len();
    let mut start = 0;
    while start < n {
        let (mut end, mut tokens) = (start, 0);
        while end < n && (end == start || tokens + x.bag(end).len().min(max_len) <= TOKEN_BUDGET) {
            tokens += x.bag(end).len().min(max_len);
            end += 1;
        }
        let tb = m.batch(x, start..end)?;
        let last = m.encoder.encode(&tb)?;
        let (o, _) = m.outputs(&tb, &last);
        m.encoder.give(last);
        out.logits.extend_from_slice(&o.logits);
        out.hidden.extend_from_slice(&o.hidden);
        start = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::kernels::FfnActivation;
    use super::super::EncoderConfig;
    use super::*;
    use crate::model::{Grad, LayerGrads};

    fn tiny(pooling: Pooling, normalize: bool) -> TransformerModel {
        let cfg = EncoderConfig {
            vocab: 20,
            width: 8,
            layers: 2,
            heads: 2,
            ffn: 12,
            max_positions: 12,
            type_vocab: 2,
            position_offset: 2,
            eps: 1e-5,
            activation: FfnActivation::GeluErf,
            dropout: 0.0,
        };
        let mut enc = Encoder::new(cfg, 7);
        // Norms away from their identity initialisation, so their gradients are exercised.
        for p in crate::nn::Module::params_mut(&mut enc) {
            if p.name.contains("norm") {
                p.data.iter_mut().enumerate().for_each(|(i, x)| *x += 0.1 * ((i * 7 % 5) as f32 - 2.0));
            }
            p.data.iter_mut().for_each(|x| *x *= 8.0);
        }
        TransformerModel::new(enc, TextTokenizer::bytes(10), pooling, normalize, 3, 1, "test".into())
    }

    #[test]
    fn parameter_counts_are_exact() {
        let m = tiny(Pooling::Mean, false);
        let counted: usize = crate::nn::Module::params(&m.encoder).iter().map(|p| p.numel()).sum();
        assert_eq!(counted, m.encoder.cfg.num_params());
        assert_eq!(m.num_params(), counted + 8 * 3 + 3);
        // all-MiniLM-L6-v2's encoder (its unused pooler's 147,840 aside: 22,713,216 in all).
        let minilm = EncoderConfig {
            vocab: 30522,
            width: 384,
            layers: 6,
            heads: 12,
            ffn: 1536,
            max_positions: 512,
            type_vocab: 2,
            ..m.encoder.cfg
        };
        assert_eq!(minilm.num_params(), 22_565_376);
    }

    /// A fixed pseudo-random coefficient per (tensor, index).
    fn coef(tag: usize, i: usize) -> f32 {
        (((tag * 7919 + i * 104_729) % 1000) as f32 / 500.0) - 1.0
    }

    /// L = Σ a·logits + Σ b·hidden + Σ_k Σ c_k·hidden_k + Σ_k Σ e_k·attention_k over real
    /// tokens, and its gradients with respect to the outputs.
    fn objective(o: &Outputs) -> (f64, OutputGrads) {
        let s = o.layers.as_ref().expect("layers were asked for");
        let mut value = 0.0f64;
        let lg: Vec<f32> = (0..o.logits.len()).map(|i| coef(1, i)).collect();
        let hg: Vec<f32> = (0..o.hidden.len()).map(|i| coef(2, i)).collect();
        value += o.logits.iter().zip(&lg).map(|(a, b)| (a * b) as f64).sum::<f64>();
        value += o.hidden.iter().zip(&hg).map(|(a, b)| (a * b) as f64).sum::<f64>();
        let mut layers = LayerGrads::default();
        let w = s.width;
        for (k, hk) in s.hidden.iter().enumerate() {
            let g: Vec<f32> = (0..hk.len())
                .map(|i| if s.is_real(i / w / s.seq, i / w % s.seq) { coef(10 + k, i) } else { 0.0 })
                .collect();
            value += hk.iter().zip(&g).map(|(a, b)| (a * b) as f64).sum::<f64>();
            layers.add_hidden(k, g);
        }
        let t = s.seq;
        for (k, ak) in s.attention.iter().enumerate() {
            let g: Vec<f32> = (0..ak.len())
                .map(|i| {
                    let b = i / (s.heads * t * t);
                    if s.is_real(b, i / t % t) && s.is_real(b, i % t) {
                        3.0 * coef(20 + k, i)
                    } else {
                        0.0
                    }
                })
                .collect();
            value += ak.iter().zip(&g).map(|(a, b)| (a * b) as f64).sum::<f64>();
            layers.add_attention(k, g);
        }
        (value, OutputGrads { logits: lg, hidden: Some(hg), layers: Some(layers) })
    }

    fn value(m: &mut TransformerModel, x: &TokenRows) -> f64 {
        let mut v = 0.0;
        let ctx = StepCtx { step: 0, seed: 0, layers: true };
        m.forward_backward(x, ctx, &mut |o| {
            let (val, g) = objective(o);
            v = val;
            Ok(g)
        })
        .unwrap();
        v
    }

    #[test]
    fn gradients_match_finite_differences_through_attention_masking_and_norms() {
        for (pooling, normalize) in [(Pooling::Mean, true), (Pooling::Cls, false)] {
            let mut m = tiny(pooling, normalize);
            let x = TokenRows::build(&m.tokenizer, ["ab", "hello", "xyz!"].into_par_iter());
            // Ids of bytes run past the tiny vocabulary: fold them in.
            let x = TokenRows { ids: x.ids.iter().map(|&i| i % 20).collect(), ..x };
            value(&mut m, &x);
            let analytic: Vec<(String, Vec<f32>)> = m
                .params()
                .iter()
                .map(|p| {
                    let mut g = vec![0.0f32; p.numel()];
                    match &p.grad {
                        Grad::Dense(d) => g.copy_from_slice(d),
                        Grad::Rows(r) => {
                            for (k, &row) in r.rows().iter().enumerate() {
                                let w = r.width();
                                g[row as usize * w..(row as usize + 1) * w]
                                    .copy_from_slice(&r.values()[k * w..(k + 1) * w]);
                            }
                        }
                        Grad::None => {}
                    }
                    (p.name.clone(), g)
                })
                .collect();
            let mut checked = 0;
            for (pi, (name, g)) in analytic.iter().enumerate() {
                let n = g.len();
                for j in 0..4 {
                    let i = (j * 7919 + pi * 31) % n;
                    let eps = 3e-3f32;
                    let orig = m.params()[pi].data[i];
                    m.params_mut()[pi].data[i] = orig + eps;
                    let up = value(&mut m, &x);
                    m.params_mut()[pi].data[i] = orig - eps;
                    let down = value(&mut m, &x);
                    m.params_mut()[pi].data[i] = orig;
                    let fd = (up - down) / (2.0 * eps as f64);
                    let an = g[i] as f64;
                    assert!(
                        (fd - an).abs() <= 2e-2 * (1.0 + fd.abs().max(an.abs())),
                        "{pooling:?}: ∂L/∂{name}[{i}]: analytic {an}, finite differences {fd}"
                    );
                    checked += 1;
                }
            }
            assert!(checked > 100);
        }
    }

    #[test]
    fn padding_does_not_change_a_sequence() {
        let m = tiny(Pooling::Mean, true);
        let alone = TokenRows::build(&m.tokenizer, ["ab"].into_par_iter());
        let padded = TokenRows::build(&m.tokenizer, ["ab", "a much longer one"].into_par_iter());
        let fold = |b: TokenRows| TokenRows { ids: b.ids.iter().map(|&i| i % 20).collect(), ..b };
        let a = m.forward_layers(&fold(alone)).unwrap();
        let b = m.forward_layers(&fold(padded.clone())).unwrap();
        for (x, y) in a.hidden.iter().zip(&b.hidden[..8]) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        // The lean inference pass computes what the training-style pass does.
        let lean = m.forward(&fold(padded)).unwrap();
        for (x, y) in lean.hidden.iter().zip(&b.hidden) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn steps_of_a_size_seen_before_allocate_no_activation_or_gradient() {
        use crate::optim::{Optimizer, OptimizerConfig, OptimizerKind};
        let mut m = tiny(Pooling::Mean, true);
        let x = TokenRows::build(&m.tokenizer, ["ab", "hello", "xyz!"].into_par_iter());
        let x = TokenRows { ids: x.ids.iter().map(|&i| i % 20).collect(), ..x };
        let mut opt = Optimizer::new(OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 1e-3,
            ..OptimizerConfig::default()
        });
        let mut step = |m: &mut TransformerModel| {
            let ctx = StepCtx { step: 0, seed: 0, layers: false };
            m.forward_backward(&x, ctx, &mut |o| {
                Ok(OutputGrads { logits: vec![0.1; o.logits.len()], hidden: None, layers: None })
            })
            .unwrap();
            opt.step(&mut Model::params_mut(m), 1e-3).unwrap();
        };
        step(&mut m);
        step(&mut m);
        let held = m.encoder.workspace_held();
        let spare: Vec<*const f32> = Model::params(&m).iter().map(|p| p.spare.0.as_ptr()).collect();
        assert!(held > 0 && Model::params(&m).iter().filter(|p| !p.spare.0.is_empty()).count() > 20);
        step(&mut m);
        assert_eq!(
            m.encoder.workspace_held(),
            held,
            "the step took every buffer from the workspace and gave it back"
        );
        let again: Vec<*const f32> = Model::params(&m).iter().map(|p| p.spare.0.as_ptr()).collect();
        assert_eq!(spare, again, "each gradient buffer is the previous step's");
    }
}
