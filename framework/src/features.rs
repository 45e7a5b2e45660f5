//! Featurisation: texts to bags of integer ids (hashed character n-grams, or bytes).
//!
//! Both the teacher and the student featurise every split once per run; the result is a
//! CSR [`Bags`] the models index into, so featurisation never runs inside the training step.

use rayon::prelude::*;

/// A text-to-ids function. Implementations must be deterministic and thread-safe.
pub trait Featurizer: Send + Sync {
    /// Appends the ids of `text` to `out`.
    fn featurize(&self, text: &str, out: &mut Vec<u32>);
    /// A string identifying the featurisation (for caches and exported models).
    fn describe(&self) -> String;
}

/// Many bags of ids in compressed-sparse-row form: bag `i` is `ids[offsets[i]..offsets[i+1]]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bags {
    /// `len() + 1` offsets into `ids`.
    pub offsets: Vec<u32>,
    /// The ids of all bags, concatenated.
    pub ids: Vec<u32>,
}

impl Bags {
    /// Featurises `texts` in parallel.
    pub fn build<'a>(f: &dyn Featurizer, texts: impl IntoParallelIterator<Item = &'a str>) -> Bags {
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
        Bags { offsets, ids }
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
    pub fn gather(&self, idx: &[usize]) -> Bags {
        let mut offsets = Vec::with_capacity(idx.len() + 1);
        offsets.push(0u32);
        let mut ids = Vec::new();
        for &i in idx {
            ids.extend_from_slice(self.bag(i));
            offsets.push(ids.len() as u32);
        }
        Bags { offsets, ids }
    }

    /// A contiguous range of bags as a new batch.
    pub fn range(&self, start: usize, end: usize) -> Bags {
        let idx: Vec<usize> = (start..end).collect();
        self.gather(&idx)
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
                    let h = kdx_corpus::split::stable_hash64(&buf[..len]);
                    out.push((h % self.buckets as u64) as u32);
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("char-ngrams n={}..={} buckets={} fnv1a64 lowercase word-markers", self.n_min, self.n_max, self.buckets)
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
    fn bags_gather_and_range() {
        let h = NgramHasher { n_min: 1, n_max: 1, buckets: 50 };
        let bags = Bags::build(&h, vec!["ab", "c", ""]);
        assert_eq!(bags.len(), 3);
        assert_eq!(bags.bag(0).len(), 4);
        assert_eq!(bags.bag(2).len(), 0);
        let g = bags.gather(&[1, 0]);
        assert_eq!(g.bag(0), bags.bag(1));
        assert_eq!(g.bag(1), bags.bag(0));
        assert_eq!(bags.range(0, 3), bags);
    }
}
