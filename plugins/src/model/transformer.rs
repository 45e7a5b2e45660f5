//! `transformer`: a BERT-style encoder trained from scratch, with its tokenisation.

use std::path::PathBuf;

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::model::{check_memory, LayerShape, Model, ModelBuilder, ModelSpec};
use kdx_framework::nn::kernels::FfnActivation;
use kdx_framework::nn::{Encoder, EncoderConfig, Pooling, TransformerModel};
use kdx_framework::registry::BuildCtx;
use kdx_framework::tokenize::{Learned, TextTokenizer};
use schemars::JsonSchema;
use serde::Deserialize;

/// A BERT-style transformer encoder (token + learned position embeddings, embedding layer
/// norm, `layers` post-LN layers of `heads`-head self-attention with a padding mask and a
/// GELU feed-forward block of width `ffn`, dropout), pooled (`mean` over real tokens or
/// `cls`), then a classification head. Losses read the pooled vector; layer-wise losses
/// read every layer's hidden states and attention. Parameters:
/// (vocab + max_len + 2)·width + 2·width + layers·(4·width² + 2·width·ffn + ffn + 9·width)
/// + width·classes + classes.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformerParams {
    /// How text becomes tokens: "bytes" (UTF-8 bytes, 260 ids), "chars" (code points,
    /// `vocab` ids), "bpe" or "unigram" (a vocabulary of `vocab` tokens learned from the
    /// training text, cached by content hash), or "file" (`tokenizer_file`).
    #[serde(default = "default_tokenizer")]
    pub tokenizer: TokenizerKind,
    /// A Hugging Face tokenizer.json, when `tokenizer = "file"` (relative to the recipe).
    #[serde(default)]
    pub tokenizer_file: Option<PathBuf>,
    /// Vocabulary size for "chars", "bpe" and "unigram".
    #[serde(default = "default_vocab")]
    pub vocab: usize,
    /// Longest sequence in tokens, special tokens included: longer texts are truncated.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Model width.
    #[serde(default = "default_width")]
    pub width: usize,
    /// Encoder layers.
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Attention heads (the width must be a multiple).
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// Inner width of the feed-forward block.
    #[serde(default = "default_ffn")]
    pub ffn: usize,
    /// Dropout on the embeddings and each sublayer's output (training only).
    #[serde(default = "default_dropout")]
    pub dropout: f32,
    /// Sentence vector: "mean" over real tokens, or "cls" (the first token).
    #[serde(default = "default_pooling")]
    pub pooling: Pooling,
    /// L2-normalise the sentence vector.
    #[serde(default)]
    pub normalize: bool,
}

/// The tokenisations of [`TransformerParams::tokenizer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// UTF-8 bytes.
    Bytes,
    /// Unicode code points.
    Chars,
    /// A byte-pair-encoding vocabulary learned from the training text.
    Bpe,
    /// A unigram vocabulary learned from the training text.
    Unigram,
    /// `tokenizer_file`.
    File,
}

fn default_tokenizer() -> TokenizerKind {
    TokenizerKind::Bytes
}
fn default_vocab() -> usize {
    8000
}
fn default_max_len() -> usize {
    64
}
fn default_width() -> usize {
    128
}
fn default_layers() -> usize {
    2
}
fn default_heads() -> usize {
    2
}
fn default_ffn() -> usize {
    512
}
fn default_dropout() -> f32 {
    0.1
}
fn default_pooling() -> Pooling {
    Pooling::Mean
}

fn build(mut p: TransformerParams, ctx: &BuildCtx) -> Result<Box<dyn ModelBuilder>, Diagnostic> {
    match (p.tokenizer, &p.tokenizer_file) {
        (TokenizerKind::File, None) => {
            return Err(ctx.error(
                "tokenizer_file",
                "`tokenizer = \"file\"` needs `tokenizer_file`, the path of a tokenizer.json",
            ))
        }
        (TokenizerKind::File, Some(f)) => {
            let path = ctx.resolve_path("tokenizer_file", f);
            if !path.is_file() {
                return Err(ctx.error("tokenizer_file", format!("{} does not exist", path.display())));
            }
            // Read now, so that `kdx validate` refuses a file that is not a tokenizer rather
            // than the run after its teacher has trained.
            TextTokenizer::from_file(&path, p.max_len)
                .map_err(|e| ctx.error("tokenizer_file", format!("{e:#}")))?;
            p.tokenizer_file = Some(path);
        }
        (_, Some(_)) => return Err(ctx.error("tokenizer_file", "only read with `tokenizer = \"file\"`")),
        _ => {}
    }
    if matches!(p.tokenizer, TokenizerKind::Chars | TokenizerKind::Bpe | TokenizerKind::Unigram)
        && !(16..=1 << 20).contains(&p.vocab)
    {
        return Err(ctx.error("vocab", format!("expected 16 ..= 1048576 tokens, found {}", p.vocab)));
    }
    if !(3..=4096).contains(&p.max_len) {
        return Err(ctx.error("max_len", format!("expected 3 ..= 4096 tokens, found {}", p.max_len)));
    }
    let cfg = p.config(p.vocab.max(260));
    // The config's fields are this section's keys, but for the positions, which `max_len` sets.
    cfg.validate()
        .map_err(|e| ctx.error(if e.field == "max_positions" { "max_len" } else { e.field }, e.message))?;
    let scalars = cfg.num_params() as u128;
    check_memory(
        &format!("this transformer ({scalars} parameters, with gradients and optimizer moments)"),
        scalars * 16,
    )
    .map_err(|e| ctx.error("width", e.to_string()))?;
    Ok(Box::new(p))
}

kdx_framework::register_model!(
    "transformer",
    "BERT-style transformer encoder trained from scratch (bytes, chars, BPE or Unigram tokens)",
    TransformerParams,
    build
);

impl TransformerParams {
    fn config(&self, vocab: usize) -> EncoderConfig {
        EncoderConfig {
            vocab,
            width: self.width,
            layers: self.layers,
            heads: self.heads,
            ffn: self.ffn,
            max_positions: self.max_len,
            type_vocab: 0,
            position_offset: 0,
            eps: 1e-12,
            activation: FfnActivation::GeluErf,
            dropout: self.dropout,
        }
    }

    fn tokenizer(&self, spec: &ModelSpec) -> anyhow::Result<TextTokenizer> {
        if let Some(f) = &spec.tokenizer_file {
            return TextTokenizer::from_file(f, self.max_len);
        }
        let learn = |kind| {
            TextTokenizer::learn(kind, self.vocab, &spec.train_texts, self.max_len, spec.cache_dir.as_deref())
        };
        match self.tokenizer {
            TokenizerKind::Bytes => Ok(TextTokenizer::bytes(self.max_len)),
            TokenizerKind::Chars => Ok(TextTokenizer::chars(self.vocab, self.max_len)),
            TokenizerKind::Bpe => learn(Learned::Bpe),
            TokenizerKind::Unigram => learn(Learned::Unigram),
            TokenizerKind::File => TextTokenizer::from_file(
                self.tokenizer_file.as_deref().expect("checked at plan time"),
                self.max_len,
            ),
        }
    }
}

impl ModelBuilder for TransformerParams {
    fn layer_shape(&self) -> Option<LayerShape> {
        let tokenizer = match self.tokenizer {
            TokenizerKind::Bytes => "bytes".to_string(),
            TokenizerKind::Chars => format!("chars{}", self.vocab),
            TokenizerKind::Bpe => format!("bpe{} learned from the training text", self.vocab),
            TokenizerKind::Unigram => format!("unigram{} learned from the training text", self.vocab),
            TokenizerKind::File => TextTokenizer::file_identity(self.tokenizer_file.as_deref()?).ok()?,
        };
        Some(LayerShape {
            layers: self.layers,
            width: self.width,
            heads: self.heads,
            max_len: self.max_len,
            tokenizer,
        })
    }
    fn card_section(&self, section: &toml::Value) -> toml::Value {
        // The tokenizer file as resolved against the recipe, so that the run's exported
        // model finds it from anywhere.
        let mut s = section.clone();
        if let (Some(t), Some(f)) = (s.as_table_mut(), &self.tokenizer_file) {
            t.insert("tokenizer_file".into(), toml::Value::String(f.display().to_string()));
        }
        s
    }
    fn inputs(&self) -> Vec<PathBuf> {
        self.tokenizer_file.iter().cloned().collect()
    }
    fn build(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn Model>> {
        let tokenizer = self.tokenizer(spec)?;
        let encoder = Encoder::new(self.config(tokenizer.vocab_size()), spec.seed);
        Ok(Box::new(TransformerModel::new(
            encoder,
            tokenizer,
            self.pooling,
            self.normalize,
            spec.classes,
            spec.seed,
            "transformer".into(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::features::TokenRows;
    use kdx_framework::model::{OutputGrads, StepCtx};
    use kdx_framework::optim::Optimizer;
    use kdx_framework::registry::{build_standalone, PluginKind};

    fn params(toml: &str) -> TransformerParams {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn a_tokenizer_file_that_is_not_a_tokenizer_is_refused_when_planned() {
        let tmp = tempfile::tempdir().unwrap();
        for (name, bytes) in
            [("empty.json", &b"{}"[..]), ("random.json", &[0x8f, 0x01, 0xff, 0x7b, 0x00][..])]
        {
            let path = tmp.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let file = path.display().to_string();
            let params: toml::Table =
                toml::from_str(&format!("tokenizer = \"file\"\ntokenizer_file = {file:?}")).unwrap();
            let e = build_standalone(PluginKind::Model, "transformer", params, "recipe.toml")
                .err()
                .expect("a file that is not a tokenizer was accepted")
                .to_string();
            assert!(
                e.contains("model.tokenizer_file")
                    && e.contains(&format!("{name}: not a Hugging Face tokenizer.json")),
                "{e}"
            );
        }
    }

    #[test]
    fn parameter_count_follows_the_documented_formula() {
        let p = params("width = 16\nlayers = 2\nheads = 4\nffn = 24\nmax_len = 20");
        let m = p.build(&ModelSpec::new(5, 0)).unwrap();
        let (v, w, l, f, c) = (260, 16, 2, 24, 5);
        assert_eq!(
            m.num_params(),
            (v + 20) * w + 2 * w + l * (4 * w * w + 2 * w * f + f + 9 * w) + w * c + c
        );
    }

    #[test]
    fn learns_to_tell_scripts_apart() {
        // Latin vs Cyrillic vs Greek, from bytes: a transformer that trains must get this.
        let texts = [
            "hello there friend",
            "привет мой друг",
            "γεια σου φίλε",
            "good morning all",
            "доброе утро всем",
            "καλημέρα σε όλους",
        ];
        let p = params("width = 32\nlayers = 1\nheads = 2\nffn = 64\ndropout = 0.0\nmax_len = 40");
        let mut m = p.build(&ModelSpec::new(3, 1)).unwrap();
        let bags = TokenRows::build(m.featurizer(), texts.to_vec());
        let labels = [0usize, 1, 2, 0, 1, 2];
        let mut opt = Optimizer::new(toml::from_str("kind = \"adam\"\nlr = 3e-3").unwrap());
        let mut last = f32::INFINITY;
        for step in 0..60 {
            let mut loss = 0.0;
            m.forward_backward(&bags, StepCtx::new(step, step), &mut |o| {
                let mut g = vec![0.0; o.logits.len()];
                loss = 0.0;
                for (i, row) in o.logits.chunks(3).enumerate() {
                    let mx = row.iter().fold(f32::MIN, |a, &b| a.max(b));
                    let z: f32 = row.iter().map(|x| (x - mx).exp()).sum();
                    for c in 0..3 {
                        let pr = (row[c] - mx).exp() / z;
                        g[i * 3 + c] = (pr - (c == labels[i]) as u8 as f32) / 6.0;
                        if c == labels[i] {
                            loss -= pr.ln() / 6.0;
                        }
                    }
                }
                Ok(OutputGrads { logits: g, hidden: None, layers: None })
            })
            .unwrap();
            opt.step(&mut m.params_mut(), 3e-3).unwrap();
            m.params_mut().into_iter().for_each(|p| p.grad = Default::default());
            last = loss;
        }
        assert!(last < 0.05, "cross-entropy after 60 steps: {last}");
    }
}
