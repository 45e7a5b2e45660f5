//! Featurisation: texts to bags of integer ids (hashed character n-grams, or bytes).
//!
//! Both the teacher and the student featurise every split once per run; the result is a
//! CSR [`TokenRows`] the models index into, so featurisation never runs inside the training step.

use rayon::prelude::*;
use sha2::{Digest, Sha256};

/// A text-to-ids function. Implementations must be deterministic and thread-safe.
pub trait Featurizer: Send + Sync {
    /// Appends the ids of `text` to `out`.
    fn featurize(&self, text: &str, out: &mut Vec<u32>);
    /// A string identifying the featurisation (for caches and exported models).
    fn describe(&self) -> String;
    /// The tokenizer.json of a vocabulary learned from the training data, which an exported
    /// model must carry to tokenise as it did in training; `None` for everything else.
    fn tokenizer_json(&self) -> Option<String> {
        None
    }
    /// The size of a token vocabulary and its unknown token's id, for tokenizers that have
    /// them (`run.csv` reports the size and the unknown-token rate on test); `None` for
    /// hashed features.
    fn vocabulary(&self) -> Option<Vocabulary> {
        None
    }
}

/// A tokenizer's vocabulary, as the reports see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vocabulary {
    /// Number of tokens (specials included).
    pub size: usize,
    /// The id a piece outside the vocabulary becomes, if the tokenizer has one.
    pub unknown: Option<u32>,
}

impl Vocabulary {
    /// The share of `bags`' ids that are the unknown token (0 without one).
    pub fn unknown_rate(&self, bags: &TokenRows) -> f64 {
        match self.unknown {
            Some(u) => bags.ids.iter().filter(|&&i| i == u).count() as f64 / bags.ids.len().max(1) as f64,
            None => 0.0,
        }
    }
}

/// One row of ids per text, in compressed-sparse-row form: row `i` is
/// `ids[offsets[i]..offsets[i+1]]`. A row is an ordered token sequence for a transformer and
/// a bag of hashed n-gram ids for `ngram-mlp` (hence `bag(i)`, the row's ids, for both).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenRows {
    /// `len() + 1` offsets into `ids`.
    pub offsets: Vec<u32>,
    /// The ids of all bags, concatenated.
    pub ids: Vec<u32>,
    /// The language of each bag, where known (routing teachers read it); empty otherwise.
    /// Not part of the cached form: languages come from the dataset.
    pub langs: Vec<u32>,
}

impl TokenRows {
    /// Featurises `texts` in parallel.
    pub fn build<'a>(f: &dyn Featurizer, texts: impl IntoParallelIterator<Item = &'a str>) -> TokenRows {
        let per: Vec<Vec<u32>> = texts
            .into_par_iter()
            .map(|t| {
                let mut v = Vec::new();
                f.featurize(t, &mut v);
                v
            })
            .collect();
        let mut offsets = Vec::with_capacity(per.len() + 1);
        offsets.push(0u32);
        let total: usize = per.iter().map(Vec::len).sum();
        let mut ids = Vec::with_capacity(total);
        for v in per {
            ids.extend_from_slice(&v);
            offsets.push(ids.len() as u32);
        }
        TokenRows { offsets, ids, langs: Vec::new() }
    }

    /// Number of bags.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether there are no bags.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of bag `i`.
    pub fn bag(&self, i: usize) -> &[u32] {
        &self.ids[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Copies the bags at `idx` (in that order) into a new, contiguous batch.
    pub fn gather(&self, idx: &[usize]) -> TokenRows {
        let mut offsets = Vec::with_capacity(idx.len() + 1);
        offsets.push(0u32);
        let mut ids = Vec::new();
        for &i in idx {
            ids.extend_from_slice(self.bag(i));
            offsets.push(ids.len() as u32);
        }
        let langs =
            if self.langs.is_empty() { Vec::new() } else { idx.iter().map(|&i| self.langs[i]).collect() };
        TokenRows { offsets, ids, langs }
    }

    /// A contiguous range of bags as a new batch.
    pub fn range(&self, start: usize, end: usize) -> TokenRows {
        let idx: Vec<usize> = (start..end).collect();
        self.gather(&idx)
    }
}

/// Featurised splits cached on disk across runs, keyed by the dataset's fingerprint, the
/// featuriser's description and the split: a sweep of students over one dataset, or a
/// re-run, featurises each split once. Files are written atomically; a damaged file is
/// rebuilt, never trusted.
pub struct FeatureCache {
    /// Directory of the cache files (`results/.cache/features`); `None` disables caching.
    pub dir: Option<std::path::PathBuf>,
    /// The dataset fingerprint.
    pub data_key: String,
}

const BAGS_MAGIC: &[u8; 8] = b"KDXBAGS2";

impl FeatureCache {
    /// The bags of `texts` under `tag` (e.g. `train/source`), from the cache or built.
    pub fn bags(&self, f: &dyn Featurizer, texts: Vec<&str>, tag: &str) -> anyhow::Result<TokenRows> {
        let Some(dir) = &self.dir else { return Ok(TokenRows::build(f, texts)) };
        let key = kdx_fsio::sha256_hex(
            format!("{}\0{}\0{tag}\0{}", self.data_key, f.describe(), texts.len()).as_bytes(),
        )[..24]
            .to_string();
        let path = dir.join(format!("{key}.bags"));
        if let Ok(bytes) = std::fs::read(&path) {
            if let Some(b) = TokenRows::from_bytes(&bytes).filter(|b| b.len() == texts.len()) {
                return Ok(b);
            }
        }
        let b = TokenRows::build(f, texts);
        kdx_fsio::write_atomic(&path, &b.to_bytes())?;
        Ok(b)
    }
}

impl TokenRows {
    /// Serialises as `KDXBAGS2`, two little-endian u64 lengths, offsets and ids (u32 LE),
    /// then the SHA-256 of everything before it (a damaged cache file is rebuilt, not used).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + 4 * (self.offsets.len() + self.ids.len()));
        v.extend_from_slice(BAGS_MAGIC);
        v.extend_from_slice(&(self.offsets.len() as u64).to_le_bytes());
        v.extend_from_slice(&(self.ids.len() as u64).to_le_bytes());
        for x in self.offsets.iter().chain(&self.ids) {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&Sha256::digest(&v));
        v
    }

    /// Parses [`TokenRows::to_bytes`]; `None` for anything malformed or inconsistent.
    pub fn from_bytes(b: &[u8]) -> Option<TokenRows> {
        if b.len() < 24 + 32 || &b[..8] != BAGS_MAGIC {
            return None;
        }
        let (b, seal) = b.split_at(b.len() - 32);
        if Sha256::digest(b).as_slice() != seal {
            return None;
        }
        let n_off = u64::from_le_bytes(b[8..16].try_into().ok()?) as usize;
        let n_ids = u64::from_le_bytes(b[16..24].try_into().ok()?) as usize;
        if b.len() != 24 + 4 * n_off.checked_add(n_ids)? {
            return None;
        }
        let words: Vec<u32> =
            b[24..].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let (offsets, ids) = words.split_at(n_off);
        let ok = offsets.first() == Some(&0)
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && offsets.last().map(|&l| l as usize) == Some(n_ids);
        ok.then(|| TokenRows { offsets: offsets.to_vec(), ids: ids.to_vec(), langs: Vec::new() })
    }
}

/// Bytes of the UTF-8 text as ids 0..=255, for byte-level sequence models (the order is
/// kept: bag `i` is the byte sequence of text `i`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByteIds;

impl Featurizer for ByteIds {
    fn featurize(&self, text: &str, out: &mut Vec<u32>) {
        out.extend(text.bytes().map(u32::from));
    }
    fn describe(&self) -> String {
        "utf8-bytes".into()
    }
}

/// Characters as ids, for character-level sequence models: each character (after
/// lowercasing when `lowercase`) hashed with FNV-1a 64 into `vocab` ids, order kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharIds {
    /// Number of ids.
    pub vocab: usize,
    /// Unicode-aware lowercasing first.
    pub lowercase: bool,
}

impl Featurizer for CharIds {
    fn featurize(&self, text: &str, out: &mut Vec<u32>) {
        let mut buf = [0u8; 4];
        let mut push = |c: char| {
            let h = kdx_fsio::stable_hash64(c.encode_utf8(&mut buf).as_bytes());
            out.push((h % self.vocab as u64) as u32);
        };
        if self.lowercase {
            text.chars().flat_map(char::to_lowercase).for_each(&mut push);
        } else {
            text.chars().for_each(push);
        }
    }
    fn describe(&self) -> String {
        format!("chars fnv1a64 vocab={} lowercase={}", self.vocab, self.lowercase)
    }
}

/// Hashed character n-grams, fastText/CLD3 style.
///
/// The text is lowercased (Unicode-aware), each whitespace-separated word is wrapped in
/// boundary markers `<` and `>` (word-final and word-initial n-grams are the most
/// language-specific), and every n-gram of `n_min..=n_max` characters that lies within one
/// marked word is hashed with FNV-1a 64 (the corpus crate's [`kdx_corpus::split::stable_hash64`],
/// stable across machines and Rust versions) salted by `n`, then reduced modulo `buckets`.
/// A text with no characters yields no ids (models treat an empty bag as the zero vector).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NgramHasher {
    /// Shortest n-gram, in characters (≥ 1).
    pub n_min: usize,
    /// Longest n-gram, in characters (≥ n_min).
    pub n_max: usize,
    /// Number of hash buckets (the embedding table's rows).
    pub buckets: usize,
}

impl Featurizer for NgramHasher {
    fn featurize(&self, text: &str, out: &mut Vec<u32>) {
        let lower = text.to_lowercase();
        let mut chars: Vec<char> = Vec::with_capacity(lower.len() + 2);
        let mut buf = [0u8; 4 * 16];
        for word in lower.split_whitespace() {
            chars.clear();
            chars.push('<');
            chars.extend(word.chars());
            chars.push('>');
            for n in self.n_min..=self.n_max {
                if n > chars.len() {
                    break;
                }
                for w in chars.windows(n) {
                    // Encode the window into a stack buffer: no allocation per n-gram.
                    let mut len = 0;
                    buf[len] = n as u8; // salt: the same bytes at different n hash apart
                    len += 1;
                    for c in w {
                        if len + 4 > buf.len() {
                            break;
                        }
                        len += c.encode_utf8(&mut buf[len..]).len();
                    }
                    let h = kdx_fsio::stable_hash64(&buf[..len]);
                    out.push((h % self.buckets as u64) as u32);
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "char-ngrams n={}..={} buckets={} fnv1a64 lowercase word-markers",
            self.n_min, self.n_max, self.buckets
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngrams_are_stable_and_in_range() {
        let h = NgramHasher { n_min: 1, n_max: 3, buckets: 1000 };
        let mut a = Vec::new();
        h.featurize("Hé ho", &mut a);
        // "<hé>" has 4 unigrams, 3 bigrams, 2 trigrams; "<ho>" likewise.
        assert_eq!(a.len(), 18);
        assert!(a.iter().all(|&x| x < 1000));
        let mut b = Vec::new();
        h.featurize("HÉ   ho", &mut b);
        assert_eq!(a, b, "lowercasing and whitespace must not change the features");
    }

    #[test]
    fn byte_and_char_ids_keep_order() {
        let mut v = Vec::new();
        ByteIds.featurize("aé", &mut v);
        assert_eq!(v, vec![97, 0xc3, 0xa9]);
        let c = CharIds { vocab: 1 << 20, lowercase: true };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        c.featurize("Ab", &mut a);
        c.featurize("ab", &mut b);
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn bags_round_trip_and_reject_damage() {
        let h = NgramHasher { n_min: 1, n_max: 2, buckets: 97 };
        let bags = TokenRows::build(&h, vec!["one two", "", "drei"]);
        let bytes = bags.to_bytes();
        assert_eq!(TokenRows::from_bytes(&bytes), Some(bags.clone()));
        assert_eq!(TokenRows::from_bytes(&bytes[..bytes.len() - 1]), None);
        // Any flipped byte is caught by the checksum.
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            assert_eq!(TokenRows::from_bytes(&flipped), None, "byte {i}");
        }
        let mut bad = bytes.clone();
        bad[24..28].copy_from_slice(&5u32.to_le_bytes()); // first offset must be 0
        assert_eq!(TokenRows::from_bytes(&bad), None);
        // The cache returns what it built, from disk the second time.
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache { dir: Some(dir.path().to_path_buf()), data_key: "k".into() };
        let a = cache.bags(&h, vec!["one two", "", "drei"], "train").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let b = cache.bags(&h, vec!["one two", "", "drei"], "train").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, bags);
    }

    #[test]
    fn bags_gather_and_range() {
        let h = NgramHasher { n_min: 1, n_max: 1, buckets: 50 };
        let bags = TokenRows::build(&h, vec!["ab", "c", ""]);
        assert_eq!(bags.len(), 3);
        assert_eq!(bags.bag(0).len(), 4);
        assert_eq!(bags.bag(2).len(), 0);
        let g = bags.gather(&[1, 0]);
        assert_eq!(g.bag(0), bags.bag(1));
        assert_eq!(g.bag(1), bags.bag(0));
        assert_eq!(bags.range(0, 3), bags);
    }
}
