//! Dev evaluation during training: the rows a stage's evaluation writes to `metrics.csv` —
//! accuracy (and agreement with the teacher) on a fixed subset of the dev split, or, for
//! parallel data, translation retrieval on its dev pairs.

use anyhow::Result;

use super::inputs::Inputs;
use super::metrics::{metric_rows, select_rows};
use super::train::LossReport;
use crate::dataset::{Measure, Task};
use crate::embedding::Embedder;
use crate::infer::predict;
use crate::model::Model;
use crate::nn::HiddenProjection;
use crate::report::MetricRow;
use crate::retrieval::{distinct_texts, gather, language_sets, ParallelSet};
use crate::sampler::LangStat;
use crate::stage::Stage;

/// What dev evaluations read: the dev split as each model featurises it, the teacher's dev
/// logits, and for parallel data the dev pairs.
pub(super) struct Evaluator {
    langs: Vec<String>,
    classes: usize,
    eval_fraction: f64,
    /// Languages averaged into `macro` rows: those the student trains on.
    pub in_macro: Vec<bool>,
    /// The teacher's featurisation of the dev split (for its pre-training).
    pub teacher_dev: Inputs,
    /// The teacher's dev logits (for agreement columns while the student trains).
    pub teacher_dev_logits: Option<Vec<f32>>,
    /// The student's featurisation of the dev split.
    pub student_dev: Inputs,
    /// A parallel-data run's dev pairs per language (language index, pairs): its dev
    /// evaluation is translation retrieval through the embedding loss's projection, the
    /// task's own measure, not the untrained language-label head. Empty otherwise.
    dev_retrieval: Vec<(usize, ParallelSet)>,
}

impl Evaluator {
    /// An evaluator of `task`'s dev split, every `1/eval_fraction`-th example; the dev
    /// inputs are filled in once the models that read them are built.
    pub fn new(task: &Task, eval_fraction: f64) -> Evaluator {
        let mut e = Evaluator {
            langs: task.langs.clone(),
            classes: task.labels.len(),
            eval_fraction,
            in_macro: task.train_sizes().iter().map(|&n| n > 0).collect(),
            teacher_dev: Inputs::default(),
            teacher_dev_logits: None,
            student_dev: Inputs::default(),
            dev_retrieval: Vec::new(),
        };
        if task.measure == Measure::Retrieval {
            let idx = e.dev_subset(task.dev.len());
            e.dev_retrieval = language_sets(idx.iter().map(|&i| &task.dev[i]), &e.in_macro);
        }
        e
    }

    /// Every `1/eval_fraction`-th of `n` dev examples.
    fn dev_subset(&self, n: usize) -> Vec<usize> {
        let stride = (1.0 / self.eval_fraction).round().max(1.0) as usize;
        (0..n).step_by(stride).collect()
    }

    /// One evaluation of `model` at `step`: its dev rows (one per language, `macro` last,
    /// the losses' values attached) and the measure they hold; `stats` get each language's
    /// dev accuracy. No rows when the stage has no dev examples.
    pub fn evaluate(
        &self,
        stage: Stage,
        step: u64,
        model: &dyn Model,
        projection: Option<&HiddenProjection>,
        stats: &mut [LangStat],
        report: &LossReport,
    ) -> Result<(Vec<MetricRow>, Measure)> {
        if let (false, Some(p), true) = (self.dev_retrieval.is_empty(), projection, stage != Stage::Teacher) {
            let mut rows = self.dev_retrieval_rows(stage, step, model, p)?;
            for (r, &(l, _)) in rows.iter().zip(&self.dev_retrieval) {
                stats[l].dev_acc = r.acc;
            }
            let lang_of: Vec<usize> = self.dev_retrieval.iter().map(|&(l, _)| l).collect();
            attach_loss_values(&mut rows, &lang_of, &self.in_macro, report);
            return Ok((rows, Measure::Retrieval));
        }
        let mut rows = self.classification_rows(stage, step, model)?;
        if rows.is_empty() {
            return Ok((rows, Measure::Classification));
        }
        if let Some(g) = &report.gates {
            for (r, &g) in rows.iter_mut().zip(g) {
                r.gate = Some(g as f64);
            }
        }
        let lang_of: Vec<usize> = (0..rows.len().saturating_sub(1)).collect();
        attach_loss_values(&mut rows, &lang_of, &self.in_macro, report);
        for (s, r) in stats.iter_mut().zip(&rows) {
            if r.examples > 0 {
                s.dev_acc = r.acc;
                s.teacher_dev_acc = r.teacher_acc.unwrap_or(f64::NAN);
            }
        }
        Ok((rows, Measure::Classification))
    }

    /// Accuracy per language on the dev subset (and agreement with the teacher's dev
    /// logits while the student trains); empty without dev examples.
    fn classification_rows(&self, stage: Stage, step: u64, model: &dyn Model) -> Result<Vec<MetricRow>> {
        let inputs = if stage == Stage::Teacher { &self.teacher_dev } else { &self.student_dev };
        if inputs.labels.is_empty() {
            return Ok(Vec::new());
        }
        let idx = self.dev_subset(inputs.labels.len());
        let sub = Inputs {
            bags: inputs.bags.gather(&idx),
            labels: idx.iter().map(|&i| inputs.labels[i]).collect(),
            langs: idx.iter().map(|&i| inputs.langs[i]).collect(),
        };
        let logits = predict(model, &sub.bags)?.logits;
        let t: Option<Vec<f32>> = if stage == Stage::Teacher {
            None
        } else {
            self.teacher_dev_logits.as_ref().map(|t| select_rows(t, self.classes, &idx))
        };
        Ok(metric_rows(
            stage.name(),
            "dev",
            step,
            &logits,
            self.classes,
            &sub,
            t.as_deref(),
            &self.langs,
            &self.in_macro,
        ))
    }

    /// Translation → English retrieval on the dev pairs, through `projection`: one metric
    /// row per language (`acc` is accuracy@1, `examples` the pairs) and `macro`.
    fn dev_retrieval_rows(
        &self,
        stage: Stage,
        step: u64,
        model: &dyn Model,
        projection: &HiddenProjection,
    ) -> Result<Vec<MetricRow>> {
        let (texts, index) = distinct_texts(&self.dev_retrieval);
        let embedder = Embedder { model, projection: Some(projection) };
        let (vectors, d) = (embedder.embed(&texts)?, embedder.dim());
        let side = |xs: &[String]| gather(&vectors, d, xs, &index);
        let row = |lang: &str, examples: usize, acc: f64| MetricRow {
            step,
            stage: stage.name().into(),
            split: "dev".into(),
            lang: lang.into(),
            examples,
            loss: f64::NAN,
            acc,
            teacher_acc: None,
            agreement: None,
            kl: None,
            gate: None,
            values: Default::default(),
        };
        let mut rows: Vec<MetricRow> = self
            .dev_retrieval
            .iter()
            .map(|(l, set)| {
                row(
                    &self.langs[*l],
                    set.pairs.len(),
                    set.score(&side(&set.sources), &side(&set.translations), d).0,
                )
            })
            .collect();
        let k = rows.len().max(1) as f64;
        let mean = rows.iter().map(|r| r.acc).sum::<f64>() / k;
        rows.push(row("macro", rows.iter().map(|r| r.examples).sum(), mean));
        Ok(rows)
    }
}

/// Puts what the losses report into an evaluation's rows: `lang_of[k]` is the language of
/// row `k`; the last row is `macro`, which gets the term values and the mean of each named
/// value over the languages averaged there.
fn attach_loss_values(rows: &mut [MetricRow], lang_of: &[usize], in_macro: &[bool], report: &LossReport) {
    let Some((macro_row, rows)) = rows.split_last_mut() else { return };
    for (name, v) in &report.per_language {
        let mut sum = (0.0, 0);
        for (r, &l) in rows.iter_mut().zip(lang_of) {
            if let Some(&x) = v.get(l) {
                r.values.insert(name.clone(), x as f64);
                if in_macro.get(l) == Some(&true) {
                    sum = (sum.0 + x as f64, sum.1 + 1);
                }
            }
        }
        if sum.1 > 0 {
            macro_row.values.insert(name.clone(), sum.0 / sum.1 as f64);
        }
    }
    for (name, v) in &report.terms {
        macro_row.values.insert(name.clone(), *v);
    }
}
