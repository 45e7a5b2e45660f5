//! Tokenisation for transformer models, as a [`Featurizer`]: UTF-8 bytes, hashed
//! characters, or a Hugging Face `tokenizer.json` (WordPiece, BPE, Unigram) — read from a
//! file or trained on the recipe's own training text and cached by content hash.
//!
//! Sequences are `[CLS] tokens… [SEP]` (or whatever a tokenizer.json's post-processor
//! adds), truncated to the model's length so the final special token is kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokenizers::models::bpe::BpeTrainer;
use tokenizers::models::unigram::UnigramTrainer;
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::metaspace::Metaspace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder, TruncationParams};

use crate::features::Featurizer;

/// Ids of the special tokens of the built-in `bytes` and `chars` vocabularies, and of
/// vocabularies kdx trains.
pub const PAD: u32 = 0;
/// Unknown token.
pub const UNK: u32 = 1;
/// Start of a sequence.
pub const CLS: u32 = 2;
/// End of a sequence.
pub const SEP: u32 = 3;
const SPECIALS: [&str; 4] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];

/// A vocabulary kdx learns from the training text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// Byte-pair encoding.
    Bpe,
    /// A unigram language model (SentencePiece's).
    Unigram,
}

/// How a transformer turns text into token ids.
#[derive(Clone)]
pub struct TextTokenizer {
    kind: Kind,
    max_len: usize,
    describe: String,
    /// Whether the vocabulary was learned from the training data (exports carry it).
    learned: bool,
    /// Text put before every input (e5's `query: `), part of the model's pipeline.
    prefix: Option<String>,
}

#[derive(Clone)]
enum Kind {
    Bytes,
    Chars { vocab: usize },
    Hf(Arc<Tokenizer>),
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl TextTokenizer {
    /// UTF-8 bytes: ids 4..260, after the four special tokens.
    pub fn bytes(max_len: usize) -> TextTokenizer {
        TextTokenizer {
            kind: Kind::Bytes,
            max_len,
            describe: format!("bytes:max{max_len}"),
            learned: false,
            prefix: None,
        }
    }

    /// Characters: code point `c` is id `4 + c` when that is below `vocab`; rarer code
    /// points are hashed into the same range (collisions among them are possible).
    pub fn chars(vocab: usize, max_len: usize) -> TextTokenizer {
        TextTokenizer {
            kind: Kind::Chars { vocab: vocab.max(5) },
            max_len,
            describe: format!("chars{vocab}:max{max_len}"),
            learned: false,
            prefix: None,
        }
    }

    /// What identifies a tokenizer.json's tokenisation (its content hash), as
    /// [`crate::model::LayerShape::tokenizer`] compares it, without loading it.
    pub fn file_identity(path: &Path) -> anyhow::Result<String> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading the tokenizer {}", path.display()))?;
        Ok(format!("tokenizer.json:{}", &kdx_fsio::sha256_hex(&bytes)[..16]))
    }

    /// A Hugging Face `tokenizer.json`; `describe` identifies it in caches (its content hash).
    pub fn from_file(path: &Path, max_len: usize) -> anyhow::Result<TextTokenizer> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading the tokenizer {}", path.display()))?;
        let tk = Tokenizer::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a Hugging Face tokenizer.json: {e}", path.display()))?;
        let hash = kdx_fsio::sha256_hex(&bytes);
        Self::hf(tk, max_len, format!("tokenizer.json:{}:max{max_len}", &hash[..16]))
    }

    /// A tokenizer.json made by kdx from the data (a pruned vocabulary): like a learned one,
    /// an exported model carries it.
    pub fn derived(json: &str, max_len: usize) -> anyhow::Result<TextTokenizer> {
        let tk = Tokenizer::from_bytes(json.as_bytes())
            .map_err(|e| anyhow::anyhow!("a derived tokenizer.json does not load: {e}"))?;
        let hash = kdx_fsio::sha256_hex(json.as_bytes());
        Ok(TextTokenizer {
            learned: true,
            ..Self::hf(tk, max_len, format!("tokenizer.json:{}:max{max_len}", &hash[..16]))?
        })
    }

    fn hf(mut tk: Tokenizer, max_len: usize, describe: String) -> anyhow::Result<TextTokenizer> {
        // Special tokens alone would map every text to the same sequence, and so every text
        // to one vector.
        let specials = tk.get_added_tokens_decoder().len();
        anyhow::ensure!(
            tk.get_vocab_size(false) > 0 && tk.get_vocab_size(true) > specials,
            "the tokenizer has no vocabulary beyond its {specials} special tokens: every text would be the same sequence"
        );
        // Padding is the model's business (it masks); truncation keeps the special tokens.
        tk.with_padding(None);
        tk.with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("setting the tokenizer's truncation to {max_len}: {e}"))?;
        Ok(TextTokenizer { kind: Kind::Hf(Arc::new(tk)), max_len, describe, learned: false, prefix: None })
    }

    /// The same tokenizer putting `prefix` before every text (an instruction prefix such as
    /// e5's `query: `); it is part of what identifies the tokenisation in caches.
    pub fn with_prefix(mut self, prefix: &str) -> TextTokenizer {
        if !prefix.is_empty() {
            self.describe = format!("{}:prefix{prefix:?}", self.describe);
            self.prefix = Some(prefix.to_string());
        }
        self
    }

    /// The tokenizer.json of a Hugging Face vocabulary (learned, read or pruned), as the
    /// `tokenizers` library writes it; `None` for bytes and characters.
    pub fn hf_json(&self) -> Option<String> {
        match &self.kind {
            Kind::Hf(tk) => tk.to_string(false).ok(),
            Kind::Bytes | Kind::Chars { .. } => None,
        }
    }

    /// The prefix put before every text, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// A BPE or Unigram vocabulary of `vocab` tokens learned from `texts`, cached in
    /// `cache_dir` under the hash of the texts and settings (trained once, then read).
    pub fn learn(
        kind: Learned,
        vocab: usize,
        texts: &[String],
        max_len: usize,
        cache_dir: Option<&Path>,
    ) -> anyhow::Result<TextTokenizer> {
        anyhow::ensure!(
            !texts.is_empty(),
            "learning a {kind:?} vocabulary needs training text, and the task has none"
        );
        let mut h = sha2::Sha256::default();
        use sha2::Digest;
        h.update(format!("{kind:?}:{vocab}:{}\n", texts.len()));
        for t in texts {
            h.update(t.as_bytes());
            h.update([0u8]);
        }
        let key = kdx_fsio::hex(&h.finalize());
        let describe = format!("{kind:?}{vocab}:{}:max{max_len}", &key[..16]).to_lowercase();
        let path: Option<PathBuf> = cache_dir
            .map(|d| d.join(format!("{}-{vocab}-{}.json", format!("{kind:?}").to_lowercase(), &key[..32])));
        if let Some(p) = path.as_ref().filter(|p| p.exists()) {
            if let Ok(tk) = Tokenizer::from_file(p) {
                return Ok(TextTokenizer { learned: true, ..Self::hf(tk, max_len, describe)? });
            }
            // A damaged cache entry is rebuilt below (and overwritten atomically).
        }
        let json = train(kind, vocab, texts)?;
        if let Some(p) = &path {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            kdx_fsio::write_atomic(p, json.as_bytes())?;
        }
        let tk = Tokenizer::from_bytes(json.as_bytes())
            .map_err(|e| anyhow::anyhow!("reading back the learned vocabulary: {e}"))?;
        Ok(TextTokenizer { learned: true, ..Self::hf(tk, max_len, describe)? })
    }

    /// Size of the vocabulary (the model's token table needs this many rows).
    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            Kind::Bytes => 260,
            Kind::Chars { vocab } => *vocab,
            Kind::Hf(tk) => tk.get_vocab_size(true),
        }
    }

    /// Longest sequence produced, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The token ids of `text`, or an error from the tokenizer.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let prefixed;
        let text = match &self.prefix {
            Some(p) => {
                prefixed = format!("{p}{text}");
                prefixed.as_str()
            }
            None => text,
        };
        let body_max = self.max_len.saturating_sub(2);
        match &self.kind {
            Kind::Bytes => Ok(wrap(text.bytes().take(body_max).map(|b| 4 + b as u32))),
            Kind::Chars { vocab } => {
                let room = (*vocab - 4) as u32;
                Ok(wrap(text.chars().take(body_max).map(|c| {
                    let c = c as u32;
                    4 + if c < room { c } else { (c.wrapping_mul(0x9E37_79B1) >> 7) % room }
                })))
            }
            Kind::Hf(tk) => Ok(tk
                .encode(text, true)
                .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?
                .get_ids()
                .to_vec()),
        }
    }
}

fn wrap(body: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut v = vec![CLS];
    v.extend(body);
    v.push(SEP);
    v
}

impl Featurizer for TextTokenizer {
    fn featurize(&self, text: &str, out: &mut Vec<u32>) {
        match self.encode(text) {
            Ok(ids) => out.extend(ids),
            // A text the tokenizer cannot encode (it has no errors for valid UTF-8 in
            // practice) becomes an unknown token rather than an empty sequence.
            Err(_) => out.extend([CLS, UNK, SEP]),
        }
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn tokenizer_json(&self) -> Option<String> {
        match &self.kind {
            Kind::Hf(tk) if self.learned => tk.to_string(false).ok(),
            _ => None,
        }
    }
    fn vocabulary(&self) -> Option<crate::features::Vocabulary> {
        match &self.kind {
            Kind::Hf(tk) => Some(crate::features::Vocabulary {
                size: tk.get_vocab_size(true),
                unknown: ["<unk>", "[UNK]"].iter().find_map(|t| tk.token_to_id(t)),
            }),
            Kind::Bytes | Kind::Chars { .. } => None,
        }
    }
}

/// Trains a vocabulary and returns its tokenizer.json.
fn train(kind: Learned, vocab: usize, texts: &[String]) -> anyhow::Result<String> {
    let specials: Vec<AddedToken> = SPECIALS.iter().map(|s| AddedToken::from(s.to_string(), true)).collect();
    let (model, mut trainer): (ModelWrapper, TrainerWrapper) = match kind {
        Learned::Bpe => (
            tokenizers::models::bpe::BPE::builder()
                .unk_token("[UNK]".into())
                .build()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .into(),
            BpeTrainer::builder()
                .show_progress(false)
                .vocab_size(vocab)
                .min_frequency(2)
                .special_tokens(specials)
                .build()
                .into(),
        ),
        Learned::Unigram => (
            tokenizers::models::unigram::Unigram::default().into(),
            UnigramTrainer::builder()
                .show_progress(false)
                .vocab_size(vocab as u32)
                .unk_token(Some("[UNK]".into()))
                .special_tokens(specials)
                .build()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .into(),
        ),
    };
    let post = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .special_tokens(vec![("[CLS]", CLS), ("[SEP]", SEP)])
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nfkc: NormalizerWrapper = tokenizers::normalizers::unicode::NFKC.into();
    let mut tk = TokenizerBuilder::<ModelWrapper, NormalizerWrapper, _, _, _>::new()
        .with_model(model)
        .with_normalizer(Some(nfkc))
        .with_pre_tokenizer(Some(tokenizers::pre_tokenizers::PreTokenizerWrapper::from(Metaspace::default())))
        .with_post_processor(Some(tokenizers::processors::PostProcessorWrapper::from(post)))
        .with_decoder(Some(tokenizers::decoders::DecoderWrapper::from(Metaspace::default())))
        .build()
        .map_err(|e| anyhow::anyhow!("building the tokenizer: {e}"))?;
    tk.train(&mut trainer, texts.iter())
        .map_err(|e| anyhow::anyhow!("learning the {kind:?} vocabulary: {e}"))?;
    for (i, s) in SPECIALS.iter().enumerate() {
        anyhow::ensure!(
            tk.token_to_id(s) == Some(i as u32),
            "the learned vocabulary put {s} at {:?}, not {i}",
            tk.token_to_id(s)
        );
    }
    tk.to_string(false).map_err(|e| anyhow::anyhow!("serialising the learned vocabulary: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_chars_wrap_and_truncate() {
        let b = TextTokenizer::bytes(5);
        assert_eq!(b.encode("héllo").unwrap(), vec![CLS, 4 + b'h' as u32, 4 + 0xC3, 4 + 0xA9, SEP]);
        let c = TextTokenizer::chars(1000, 16);
        assert_eq!(c.encode("aé").unwrap(), vec![CLS, 4 + 'a' as u32, 4 + 'é' as u32, SEP]);
        let cjk = c.encode("中").unwrap()[1];
        assert!((4..1000).contains(&cjk), "{cjk}");
    }

    #[test]
    fn a_learned_vocabulary_is_cached_and_reused() {
        let texts: Vec<String> =
            (0..200).map(|i| format!("hello world {} привет мир {} 你好世界", i % 7, i % 5)).collect();
        let dir = tempfile::tempdir().unwrap();
        for kind in [Learned::Bpe, Learned::Unigram] {
            let a = TextTokenizer::learn(kind, 60, &texts, 32, Some(dir.path())).unwrap();
            let ids = a.encode("hello привет 你好").unwrap();
            assert_eq!((ids[0], *ids.last().unwrap()), (CLS, SEP), "{kind:?}: {ids:?}");
            assert!(ids.iter().all(|&i| (i as usize) < a.vocab_size()), "{kind:?}: {ids:?}");
            assert!(!ids[1..ids.len() - 1].contains(&UNK), "{kind:?}: {ids:?}");
            let b = TextTokenizer::learn(kind, 60, &texts, 32, Some(dir.path())).unwrap();
            assert_eq!(a.describe(), b.describe());
            assert_eq!(b.encode("hello привет 你好").unwrap(), ids);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
