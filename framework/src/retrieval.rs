//! Translation retrieval: how well embeddings line a translation up with its English source
//! (Reimers & Gurevych 2020's evaluation of embedding-level transfer), in both directions.

use std::collections::HashMap;

use kdx_fsio::tsv::{CarriageReturn, TsvReader};
use serde::{Deserialize, Serialize};

/// A row of `retrieval.csv`: one model on one language's test pairs (or `macro`, the mean
/// over languages). Candidates are that language's test messages only: a translation is
/// searched for among the distinct English sources of the language's test pairs, and a
/// source among the distinct translations.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RetrievalRow {
    /// The evaluation set: `test` (the run's own test split) or the name of a
    /// `[retrieval.sets]` entry (e.g. `udhr`, text from outside the corpus).
    pub set: String,
    /// `student` (distilled, embedding both sides), `mixed` (the student embeds the
    /// translations, the teacher the English: the student as a query encoder for an index
    /// the teacher built), `teacher` (the source-language model reading the translations
    /// itself: what one gets without distillation), `untrained` (the student before
    /// training, both sides: what its architecture gives by itself, e.g. shared n-grams) or
    /// the name of a `[retrieval] references` model reading both sides.
    pub model: String,
    /// Language of the translations.
    pub lang: String,
    /// Training pairs of the language (of the run's corpus, whatever the set).
    pub train_pairs: usize,
    /// Pairs of the language in the set.
    pub pairs: usize,
    /// Distinct English sources among them (translation → English candidates; chance is
    /// 1/sources).
    pub sources: usize,
    /// Distinct translations among them (English → translation candidates).
    pub translations: usize,
    /// Accuracy@1 of translation → English: the share of distinct translations whose
    /// nearest source (cosine) is theirs.
    pub to_en: f64,
    /// Accuracy@1 of English → translation: the share of distinct sources whose nearest
    /// translation is one of theirs.
    pub from_en: f64,
    /// Mean cosine between the model's and the teacher's embeddings of the language's
    /// English test sources (student rows; empty for the others).
    pub en_cosine: Option<f64>,
}

/// Parallel pairs with their distinct sides: what retrieval ranks.
#[derive(Clone, Debug, Default)]
pub struct ParallelSet {
    /// Distinct sources, in first-seen order.
    pub sources: Vec<String>,
    /// Distinct translations, in first-seen order.
    pub translations: Vec<String>,
    /// (source row, translation row) of each pair.
    pub pairs: Vec<(usize, usize)>,
}

impl ParallelSet {
    /// The set of `(source, translation)` pairs.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> ParallelSet {
        let mut set = ParallelSet::default();
        let (mut src, mut tgt) = (HashMap::new(), HashMap::new());
        for (s, t) in pairs {
            let si = *src.entry(s.to_string()).or_insert_with(|| {
                set.sources.push(s.to_string());
                set.sources.len() - 1
            });
            let ti = *tgt.entry(t.to_string()).or_insert_with(|| {
                set.translations.push(t.to_string());
                set.translations.len() - 1
            });
            set.pairs.push((si, ti));
        }
        set
    }

    /// The pairs of a parallel file: `source<TAB>translation` lines (blank lines skipped; a
    /// first line `source<TAB>translation`, as spreadsheets and pandas write, is a header).
    /// A malformed line is an error naming the file and line; fewer than 2 pairs leave
    /// nothing to rank.
    pub fn read(file: &std::path::Path) -> anyhow::Result<ParallelSet> {
        let reading = |e: &dyn std::fmt::Display| anyhow::anyhow!("reading {}: {e}", file.display());
        let input = std::fs::File::open(file).map_err(|e| reading(&e))?;
        let mut pairs: Vec<(String, String)> = Vec::new();
        // `\r\n` ends a line as `\n` does, as `str::lines` read these files before.
        for record in TsvReader::new(input).carriage_return(CarriageReturn::BeforeNewline) {
            let record = record.map_err(|e| reading(&e))?;
            let n = record.line();
            let cols = record
                .strs()
                .map_err(|e| anyhow::anyhow!("{}:{n}: not valid UTF-8 ({e})", file.display()))?;
            // A line of spaces and TABs is as blank as an empty one.
            if cols.iter().all(|c| c.trim().is_empty()) {
                continue;
            }
            let line = || cols.join("\t");
            // Scored as a pair, a header would be a free hit.
            if n == 1 && line().trim_start_matches('\u{feff}').eq_ignore_ascii_case("source\ttranslation") {
                continue;
            }
            // Columns after the second are ignored.
            match (cols.first(), cols.get(1)) {
                (Some(s), Some(t)) if !s.is_empty() && !t.is_empty() => {
                    pairs.push((s.to_string(), t.to_string()))
                }
                _ => anyhow::bail!(
                    "{}:{n}: expected `source<TAB>translation`, found {:?}",
                    file.display(),
                    line()
                ),
            }
        }
        anyhow::ensure!(
            pairs.len() >= 2,
            "{}: retrieval needs at least 2 pairs, found {}",
            file.display(),
            pairs.len()
        );
        Ok(ParallelSet::new(pairs.iter().map(|(s, t)| (s.as_str(), t.as_str()))))
    }

    /// Accuracy@1 in both directions, `(to_en, from_en)`, given `src` (`sources × d`) and
    /// `tgt` (`translations × d`) embeddings. A side that appears in several pairs counts
    /// once, and is right when its nearest neighbour is any of its partners.
    pub fn score(&self, src: &[f32], tgt: &[f32], d: usize) -> (f64, f64) {
        let (ns, nt) = (self.sources.len(), self.translations.len());
        assert_eq!(
            (src.len(), tgt.len()),
            (ns * d, nt * d),
            "embeddings of {ns} sources and {nt} translations of width {d}"
        );
        let partners = |n: usize, side: fn(&(usize, usize)) -> (usize, usize)| {
            let mut p = vec![Vec::new(); n];
            for pair in &self.pairs {
                let (a, b) = side(pair);
                p[a].push(b);
            }
            p
        };
        let of_tgt = partners(nt, |&(s, t)| (t, s));
        let of_src = partners(ns, |&(s, t)| (s, t));
        let hits = |queries: &[f32], keys: &[f32], gold: &[Vec<usize>]| {
            let found = nearest(queries, keys, d);
            found.iter().zip(gold).filter(|(f, g)| g.contains(f)).count() as f64 / gold.len().max(1) as f64
        };
        (hits(tgt, src, &of_tgt), hits(src, tgt, &of_src))
    }
}

/// Per language `l` with `keep[l]`, the (source, translation) pairs among `examples` (a
/// pair whose sides are equal — an English self-pair — has nothing to retrieve); languages
/// left with no pair are left out.
pub fn language_sets<'a>(
    examples: impl Iterator<Item = &'a crate::dataset::Example> + Clone,
    keep: &[bool],
) -> Vec<(usize, ParallelSet)> {
    (0..keep.len())
        .filter(|&l| keep[l])
        .map(|l| {
            let pairs = examples
                .clone()
                .filter(|e| e.lang as usize == l)
                .filter_map(|e| e.source.as_deref().map(|s| (s, e.text.as_str())));
            (l, ParallelSet::new(pairs.filter(|(s, t)| s != t)))
        })
        .filter(|(_, set)| !set.pairs.is_empty())
        .collect()
}

/// Every distinct text of `sets` once, in first-seen order, with each text's row: what a
/// model embeds once for all of a set's languages.
pub fn distinct_texts(sets: &[(usize, ParallelSet)]) -> (Vec<&str>, HashMap<&str, usize>) {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut texts: Vec<&str> = Vec::new();
    for (_, set) in sets {
        for t in set.sources.iter().chain(&set.translations) {
            index.entry(t.as_str()).or_insert_with(|| {
                texts.push(t.as_str());
                texts.len() - 1
            });
        }
    }
    (texts, index)
}

/// The rows of `embeddings` (`n × w`, one per text of [`distinct_texts`]) of `side`'s texts.
pub fn gather(embeddings: &[f32], w: usize, side: &[String], index: &HashMap<&str, usize>) -> Vec<f32> {
    side.iter().flat_map(|t| embeddings[index[t.as_str()] * w..][..w].iter().copied()).collect()
}

/// Rows of `x` (`n × d`) scaled to unit length (zero rows stay zero).
pub fn normalise(x: &[f32], d: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_mut(d.max(1)) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|v| *v /= n);
        }
    }
    out
}

/// Mean cosine similarity of corresponding rows of `a` and `b` (`n × d` each).
pub fn mean_cosine(a: &[f32], b: &[f32], d: usize) -> f64 {
    let (a, b) = (normalise(a, d), normalise(b, d));
    let n = a.len() / d.max(1);
    let sum: f64 = a
        .chunks(d)
        .zip(b.chunks(d))
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p * q) as f64).sum::<f64>())
        .sum();
    sum / n.max(1) as f64
}

/// For each query row, the index of the key row with the highest cosine similarity (the
/// first one on ties).
pub fn nearest(queries: &[f32], keys: &[f32], d: usize) -> Vec<usize> {
    use rayon::prelude::*;
    let (q, k) = (normalise(queries, d), normalise(keys, d));
    q.par_chunks(d)
        .map(|qi| {
            let mut best = (0, f32::NEG_INFINITY);
            for (j, kj) in k.chunks(d).enumerate() {
                let s: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                if s > best.1 {
                    best = (j, s);
                }
            }
            best.0
        })
        .collect()
}

/// The `macro` row of `rows` (one model's languages on one set): means of the accuracies
/// and cosines, sums of the counts.
pub fn macro_row(set: &str, model: &str, rows: &[RetrievalRow]) -> RetrievalRow {
    let k = rows.len().max(1) as f64;
    let cos: Vec<f64> = rows.iter().filter_map(|r| r.en_cosine).collect();
    RetrievalRow {
        set: set.into(),
        model: model.into(),
        lang: "macro".into(),
        train_pairs: rows.iter().map(|r| r.train_pairs).sum(),
        pairs: rows.iter().map(|r| r.pairs).sum(),
        sources: rows.iter().map(|r| r.sources).sum(),
        translations: rows.iter().map(|r| r.translations).sum(),
        to_en: rows.iter().map(|r| r.to_en).sum::<f64>() / k,
        from_en: rows.iter().map(|r| r.from_en).sum::<f64>() / k,
        en_cosine: (!cos.is_empty()).then(|| cos.iter().sum::<f64>() / cos.len() as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_uses_cosine_not_distance() {
        let keys = [1.0, 0.0, 0.0, 1.0, 10.0, 10.0];
        // (3, 0.1) is far from (1, 0) in distance but closest in angle.
        assert_eq!(nearest(&[3.0, 0.1, 0.1, 5.0, 1.0, 1.1], &keys, 2), vec![0, 1, 2]);
    }

    #[test]
    fn both_directions_count_distinct_sides() {
        // Sources a, b, c on the axes; "b" is translated twice (x and y), so there are four
        // pairs, three distinct sources and four distinct translations.
        let set = ParallelSet::new([("a", "u"), ("b", "x"), ("b", "y"), ("c", "z")]);
        assert_eq!((set.sources.len(), set.translations.len(), set.pairs.len()), (3, 4, 4));
        let src = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        // u → a (right), x → b (right), y → a (wrong), z → b (wrong).
        let tgt = [1.0, 0.1, 0.0, 0.0, 1.0, 0.1, 0.9, 0.2, 0.0, 0.0, 0.9, 0.3];
        let (to_en, from_en) = set.score(&src, &tgt, 3);
        assert_eq!(to_en, 2.0 / 4.0);
        // a → u (right: nearer than y), b → x (right: one of b's two), c → z (right).
        assert_eq!(from_en, 3.0 / 3.0);
    }

    #[test]
    fn macro_averages_languages() {
        let row = |lang: &str, to_en: f64, cos: Option<f64>| RetrievalRow {
            set: "test".into(),
            model: "student".into(),
            lang: lang.into(),
            train_pairs: 10,
            pairs: 4,
            sources: 4,
            translations: 4,
            to_en,
            from_en: to_en / 2.0,
            en_cosine: cos,
        };
        let m = macro_row("test", "student", &[row("de", 1.0, Some(0.9)), row("fr", 0.5, Some(0.7))]);
        assert_eq!(
            (m.lang.as_str(), m.train_pairs, m.pairs, m.to_en, m.from_en),
            ("macro", 20, 8, 0.75, 0.375)
        );
        assert!((m.en_cosine.unwrap() - 0.8).abs() < 1e-12);
        assert!(
            (mean_cosine(&[1.0, 0.0, 0.0, 2.0], &[3.0, 0.0, 1.0, 1.0], 2) - (1.0 + 0.5f64.sqrt()) / 2.0)
                .abs()
                < 1e-6
        );
    }
}
