//! Translation retrieval: how well embeddings line a translation up with its English source
//! (Reimers & Gurevych 2020's evaluation of embedding-level transfer), per language.

use serde::{Deserialize, Serialize};

/// A row of `retrieval.csv`: one language (or `macro`) of the test split.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RetrievalRow {
    /// Language of the translations (the queries).
    pub lang: String,
    /// Translations searched from.
    pub queries: usize,
    /// English sources searched among (all distinct sources of the split).
    pub candidates: usize,
    /// Fraction of translations whose nearest source (cosine), in the teacher's space, is
    /// their own: the student's embedding of the translation mapped by the loss's projection
    /// against the teacher's embeddings of the sources.
    pub student_acc: f64,
    /// The same with the teacher embedding the translation itself: what the source-language
    /// model does with the other language without distillation.
    pub teacher_acc: f64,
    /// 1 / candidates.
    pub chance: f64,
}

/// Rows of `x` (`n × d`) scaled to unit length (zero rows stay zero).
fn normalise(x: &[f32], d: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_mut(d) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|v| *v /= n);
        }
    }
    out
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

/// Per-language retrieval accuracy. `student` and `teacher` are `n × d` query embeddings
/// (both in the teacher's space), `gold[i]` the row of query i's source in `keys`
/// (`m × d`), `langs[i]` its language; only languages marked in `include` get a row, and the
/// `macro` row averages those that have queries.
#[allow(clippy::too_many_arguments)]
pub fn retrieval_rows(
    student: &[f32],
    teacher: &[f32],
    keys: &[f32],
    d: usize,
    gold: &[usize],
    langs: &[u32],
    names: &[String],
    include: &[bool],
) -> Vec<RetrievalRow> {
    let m = keys.len() / d.max(1);
    let (s, t) = (nearest(student, keys, d), nearest(teacher, keys, d));
    let mut rows: Vec<RetrievalRow> = Vec::new();
    for (l, name) in names.iter().enumerate().filter(|(l, _)| include[*l]) {
        let idx: Vec<usize> = (0..gold.len()).filter(|&i| langs[i] as usize == l).collect();
        if idx.is_empty() {
            continue;
        }
        let acc = |pred: &[usize]| idx.iter().filter(|&&i| pred[i] == gold[i]).count() as f64 / idx.len() as f64;
        rows.push(RetrievalRow {
            lang: name.clone(),
            queries: idx.len(),
            candidates: m,
            student_acc: acc(&s),
            teacher_acc: acc(&t),
            chance: 1.0 / m.max(1) as f64,
        });
    }
    let k = rows.len().max(1) as f64;
    let macro_row = RetrievalRow {
        lang: "macro".into(),
        queries: rows.iter().map(|r| r.queries).sum(),
        candidates: m,
        student_acc: rows.iter().map(|r| r.student_acc).sum::<f64>() / k,
        teacher_acc: rows.iter().map(|r| r.teacher_acc).sum::<f64>() / k,
        chance: 1.0 / m.max(1) as f64,
    };
    rows.push(macro_row);
    rows
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
    fn rows_per_language_and_macro() {
        // Three sources on the axes; queries in two languages.
        let keys = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let student = [0.9, 0.1, 0.0, 0.0, 1.0, 0.2, 0.1, 0.0, 1.0, 1.0, 0.0, 0.0];
        let teacher = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0];
        let gold = [0, 1, 2, 2];
        let langs = [0, 0, 0, 2];
        let names = ["de".to_string(), "en".to_string(), "fr".to_string()];
        let rows = retrieval_rows(&student, &teacher, &keys, 3, &gold, &langs, &names, &[true, false, true]);
        let got: Vec<(&str, usize, f64, f64)> = rows.iter().map(|r| (r.lang.as_str(), r.queries, r.student_acc, r.teacher_acc)).collect();
        assert_eq!(got, vec![("de", 3, 1.0, 1.0 / 3.0), ("fr", 1, 0.0, 0.0), ("macro", 4, 0.5, 1.0 / 6.0)]);
        assert!(rows.iter().all(|r| r.candidates == 3 && (r.chance - 1.0 / 3.0).abs() < 1e-12));
    }
}
