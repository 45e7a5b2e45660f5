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
    let n = langs.len();
    #[derive(Default, Clone)]
    struct Acc {
        n: usize,
        loss: f64,
        correct: usize,
        t_correct: usize,
        agree: usize,
        kl: f64,
    }
    let mut acc = vec![Acc::default(); n];
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
    let has_t = teacher.is_some();
    let mut rows: Vec<MetricRow> = acc
        .iter()
        .zip(langs)
        .map(|(a, l)| {
            let d = a.n.max(1) as f64;
            let nan_if_empty = |x: f64| if a.n == 0 { f64::NAN } else { x };
            MetricRow {
                step,
                stage: stage.into(),
                split: split.into(),
                lang: l.clone(),
                examples: a.n,
                loss: nan_if_empty(a.loss / d),
                acc: nan_if_empty(a.correct as f64 / d),
                teacher_acc: has_t.then(|| nan_if_empty(a.t_correct as f64 / d)),
                agreement: has_t.then(|| nan_if_empty(a.agree as f64 / d)),
                kl: has_t.then(|| nan_if_empty(a.kl / d)),
                gate: None,
                values: Default::default(),
            }
        })
        .collect();
    // Macro row: unweighted mean over languages that have examples in this split.
    let present: Vec<&MetricRow> =
        rows.iter().zip(in_macro).filter(|(r, &m)| m && r.examples > 0).map(|(r, _)| r).collect();
    let m = present.len().max(1) as f64;
    let mean = |f: &dyn Fn(&MetricRow) -> f64| present.iter().map(|r| f(r)).sum::<f64>() / m;
    let macro_row = MetricRow {
        step,
        stage: stage.into(),
        split: split.into(),
        lang: "macro".into(),
        examples: present.iter().map(|r| r.examples).sum(),
        loss: mean(&|r| r.loss),
        acc: mean(&|r| r.acc),
        teacher_acc: has_t.then(|| mean(&|r| r.teacher_acc.unwrap_or(0.0))),
        agreement: has_t.then(|| mean(&|r| r.agreement.unwrap_or(0.0))),
        kl: has_t.then(|| mean(&|r| r.kl.unwrap_or(0.0))),
        gate: None,
        values: Default::default(),
    };
    rows.push(macro_row);
    rows
}

/// Rows `idx` of a row-major matrix of `width` columns.
pub fn select_rows(m: &[f32], width: usize, idx: &[usize]) -> Vec<f32> {
    let mut v = Vec::with_capacity(idx.len() * width);
    for &i in idx {
        v.extend_from_slice(&m[i * width..(i + 1) * width]);
    }
    v
}
