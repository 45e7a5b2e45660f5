//! Evaluation: inference in chunks, per-language metric rows, inference speed.

use std::time::Instant;

use anyhow::Result;

use super::inputs::Inputs;
use super::rows::{argmax_rows, row_ce};
use crate::dataset::Example;
use crate::features::TokenRows;
pub use crate::infer::predict;
use crate::model::Model;
use crate::report::MetricRow;
use kdx_sdk::math::log_softmax;

/// How long [`texts_per_second`] measures at most.
pub const SPEED_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);

/// Single-threaded inference speed, featurisation included (what a user of the model sees).
/// Languages ride along for models that route by language. Measured over `examples` or
/// [`SPEED_BUDGET`], whichever ends first: a transformer teacher reads ~100 texts/s.
pub fn texts_per_second(model: &dyn Model, examples: &[Example], source: bool) -> Result<f64> {
    if examples.is_empty() {
        return Ok(0.0);
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    pool.install(|| {
        let t0 = Instant::now();
        let mut done = 0;
        for chunk in examples.chunks(64) {
            if t0.elapsed() >= SPEED_BUDGET {
                break;
            }
            done += chunk.len();
            let texts: Vec<&str> = chunk
                .iter()
                .map(|e| if source { e.source.as_deref().unwrap_or(&e.text) } else { e.text.as_str() })
                .collect();
            let mut bags = TokenRows::build(model.featurizer(), texts);
            bags.langs = chunk.iter().map(|e| e.lang).collect();
            model.forward(&bags)?;
        }
        Ok(done as f64 / t0.elapsed().as_secs_f64().max(1e-9))
    })
}

/// Per-language metric rows (one per language of the task, then a `macro` row over the
/// languages that have examples in the split and are marked in `in_macro`: the languages
/// the student trains on; in cross-lingual tasks the teacher's own language is reported
/// but not averaged in).
#[allow(clippy::too_many_arguments)]
pub fn metric_rows(
    stage: &str,
    split: &str,
    step: u64,
    logits: &[f32],
    classes: usize,
    inputs: &Inputs,
    teacher: Option<&[f32]>,
    langs: &[String],
    in_macro: &[bool],
) -> Vec<MetricRow> {
    let blank = MetricRow {
        step,
        stage: stage.into(),
        split: split.into(),
        lang: String::new(),
        examples: 0,
        loss: f64::NAN,
        acc: f64::NAN,
        teacher_acc: None,
        agreement: None,
        kl: None,
        gate: None,
        values: Default::default(),
    };
    let tallies = tally(logits, classes, inputs, teacher, langs.len());
    let has_t = teacher.is_some();
    let mut rows: Vec<MetricRow> = tallies
        .iter()
        .zip(langs)
        .map(|(t, l)| MetricRow { lang: l.clone(), ..t.row(&blank, has_t) })
        .collect();
    rows.push(macro_row(&rows, in_macro, has_t, blank));
    rows
}

/// One language's counts and sums over a split.
#[derive(Default, Clone)]
struct Tally {
    n: usize,
    loss: f64,
    correct: usize,
    t_correct: usize,
    agree: usize,
    kl: f64,
}

/// Each language's [`Tally`]: the student's cross-entropy and hits, and with the teacher's
/// logits its hits, the agreement and KL(teacher ‖ student) at T = 1.
fn tally(
    logits: &[f32],
    classes: usize,
    inputs: &Inputs,
    teacher: Option<&[f32]>,
    n_langs: usize,
) -> Vec<Tally> {
    let pred = argmax_rows(logits, classes);
    let ce = row_ce(logits, classes, |i| inputs.labels[i] as usize);
    let t_pred = teacher.map(|t| argmax_rows(t, classes));
    let kl: Option<Vec<f64>> = teacher.map(|t| {
        t.chunks(classes)
            .zip(logits.chunks(classes))
            .map(|(tz, sz)| {
                let lp = log_softmax(tz, 1.0);
                let lq = log_softmax(sz, 1.0);
                lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
            })
            .collect()
    });
    let mut acc = vec![Tally::default(); n_langs];
    for i in 0..pred.len() {
        let a = &mut acc[inputs.langs[i] as usize];
        a.n += 1;
        a.loss += ce[i];
        a.correct += (pred[i] == inputs.labels[i] as usize) as usize;
        if let Some(tp) = &t_pred {
            a.t_correct += (tp[i] == inputs.labels[i] as usize) as usize;
            a.agree += (tp[i] == pred[i]) as usize;
        }
        if let Some(k) = &kl {
            a.kl += k[i];
        }
    }
    acc
}

impl Tally {
    /// The language's row (NaN where it has no examples); teacher columns when `has_t`.
    fn row(&self, blank: &MetricRow, has_t: bool) -> MetricRow {
        let d = self.n.max(1) as f64;
        let nan_if_empty = |x: f64| if self.n == 0 { f64::NAN } else { x };
        MetricRow {
            examples: self.n,
            loss: nan_if_empty(self.loss / d),
            acc: nan_if_empty(self.correct as f64 / d),
            teacher_acc: has_t.then(|| nan_if_empty(self.t_correct as f64 / d)),
            agreement: has_t.then(|| nan_if_empty(self.agree as f64 / d)),
            kl: has_t.then(|| nan_if_empty(self.kl / d)),
            ..blank.clone()
        }
    }
}

/// The `macro` row: the unweighted mean over the languages in `in_macro` that have examples
/// in this split.
fn macro_row(rows: &[MetricRow], in_macro: &[bool], has_t: bool, blank: MetricRow) -> MetricRow {
    let present: Vec<&MetricRow> =
        rows.iter().zip(in_macro).filter(|(r, &m)| m && r.examples > 0).map(|(r, _)| r).collect();
    let m = present.len().max(1) as f64;
    let mean = |f: &dyn Fn(&MetricRow) -> f64| present.iter().map(|r| f(r)).sum::<f64>() / m;
    MetricRow {
        lang: "macro".into(),
        examples: present.iter().map(|r| r.examples).sum(),
        loss: mean(&|r| r.loss),
        acc: mean(&|r| r.acc),
        teacher_acc: has_t.then(|| mean(&|r| r.teacher_acc.unwrap_or(0.0))),
        agreement: has_t.then(|| mean(&|r| r.agreement.unwrap_or(0.0))),
        kl: has_t.then(|| mean(&|r| r.kl.unwrap_or(0.0))),
        ..blank
    }
}

/// Rows `idx` of a row-major matrix of `width` columns.
pub fn select_rows(m: &[f32], width: usize, idx: &[usize]) -> Vec<f32> {
    let mut v = Vec::with_capacity(idx.len() * width);
    for &i in idx {
        v.extend_from_slice(&m[i * width..(i + 1) * width]);
    }
    v
}
