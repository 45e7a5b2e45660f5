//! The engine's side of the stage loop ([`StageHooks`]): dev evaluation, checkpoints, and
//! the run's events to its [`Observer`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::inputs::Inputs;
use super::metrics::{metric_rows, select_rows};
use super::options::{Interrupted, RunOptions};
use super::train::{LoopState, LossReport, StageHooks};
use crate::dataset::{Measure, Task};
use crate::embedding::Embedder;
use crate::event::{Event, Observer};
use crate::infer::predict;
use crate::model::{Model, Param};
use crate::nn::HiddenProjection;
use crate::optim::Optimizer;
use crate::report::{write_metrics, MetricRow};
use crate::retrieval::{distinct_texts, gather, language_sets, ParallelSet};
use crate::sampler::LangStat;
use crate::stage::Stage;
use crate::store::{read_sealed, write_sealed, Metadata, TensorMap};

/// Evaluation, checkpoints and events for the stages of one run.
pub(super) struct Monitor<'o> {
    /// The results root (the teacher cache lives under it).
    pub results: PathBuf,
    dir: PathBuf,
    observer: &'o mut dyn Observer,
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
    /// Every metric row so far, in order.
    pub metrics: Vec<MetricRow>,
    /// A parallel-data run's dev pairs per language (language index, pairs): its dev
    /// evaluation is translation retrieval through the embedding loss's projection, the
    /// task's own measure, not the untrained language-label head. Empty otherwise.
    pub dev_retrieval: Vec<(usize, ParallelSet)>,
    steps_run: u64,
    interrupt_after: Option<u64>,
    stop: Option<&'static std::sync::atomic::AtomicBool>,
    resume: bool,
    /// Hash of the resolved recipe: a checkpoint is resumed only by the recipe that wrote it.
    recipe_hash: String,
}

/// The loop state of a checkpoint, beside its tensors in the same file.
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointMeta {
    state: LoopState,
    metrics: Vec<MetricRow>,
}

/// The format tag of checkpoint files.
const CHECKPOINT_FORMAT: &str = "kdx-checkpoint-1";

impl<'o> Monitor<'o> {
    /// A monitor for a run writing to `dir`.
    pub fn new(
        opts: &RunOptions,
        dir: &Path,
        task: &Task,
        eval_fraction: f64,
        recipe_hash: &str,
        observer: &'o mut dyn Observer,
    ) -> Monitor<'o> {
        Monitor {
            results: opts.results.clone(),
            dir: dir.to_path_buf(),
            observer,
            langs: task.langs.clone(),
            classes: task.labels.len(),
            eval_fraction,
            in_macro: task.train_sizes().iter().map(|&n| n > 0).collect(),
            teacher_dev: Inputs::default(),
            teacher_dev_logits: None,
            student_dev: Inputs::default(),
            metrics: Vec::new(),
            dev_retrieval: Vec::new(),
            steps_run: 0,
            interrupt_after: opts.interrupt_after,
            stop: opts.stop,
            resume: opts.resume,
            recipe_hash: recipe_hash.to_string(),
        }
    }

    /// Sends an event to the observer.
    pub fn emit(&mut self, e: Event) {
        self.observer.event(&e);
    }

    /// A note for a person.
    pub fn note(&mut self, message: impl Into<String>) {
        self.emit(Event::Note { message: message.into() });
    }

    fn dev_subset(&self, inputs: &Inputs) -> Vec<usize> {
        self.dev_subset_of(inputs.labels.len())
    }

    /// Every `1/eval_fraction`-th of `n` dev examples.
    fn dev_subset_of(&self, n: usize) -> Vec<usize> {
        let stride = (1.0 / self.eval_fraction).round().max(1.0) as usize;
        (0..n).step_by(stride).collect()
    }

    /// A stage's checkpoint: one file holding its tensors and loop state, written atomically
    /// and sealed with a checksum, so weights and state are committed together or not at all.
    /// Removes the stage's checkpoint: the teacher's, once the teacher is in its cache
    /// (which holds the same weights), so a large teacher is not kept twice.
    pub(super) fn remove_checkpoint(&self, stage: Stage) -> Result<()> {
        let path = self.checkpoint_path(stage);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    fn checkpoint_path(&self, stage: Stage) -> PathBuf {
        self.dir.join("checkpoints").join(format!("{}.safetensors", stage.name()))
    }
}

impl Monitor<'_> {
    /// Sets the dev pairs of a parallel-data task (every `1/eval_fraction`-th dev example),
    /// so that dev evaluations score translation retrieval.
    pub fn retrieval_on_dev(&mut self, task: &Task) {
        let idx = self.dev_subset_of(task.dev.len());
        self.dev_retrieval = language_sets(idx.iter().map(|&i| &task.dev[i]), &self.in_macro);
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

impl StageHooks for Monitor<'_> {
    fn evaluate(
        &mut self,
        stage: Stage,
        step: u64,
        model: &dyn Model,
        projection: Option<&HiddenProjection>,
        stats: &mut [LangStat],
        report: LossReport,
    ) -> Result<()> {
        if let (false, Some(p), true) = (self.dev_retrieval.is_empty(), projection, stage != Stage::Teacher) {
            let mut rows = self.dev_retrieval_rows(stage, step, model, p)?;
            for (r, &(l, _)) in rows.iter().zip(&self.dev_retrieval) {
                stats[l].dev_acc = r.acc;
            }
            let lang_of: Vec<usize> = self.dev_retrieval.iter().map(|&(l, _)| l).collect();
            attach_loss_values(&mut rows, &lang_of, &self.in_macro, &report);
            if let Some(m) = rows.last() {
                let values = m.values.clone();
                self.emit(Event::Evaluated {
                    stage,
                    step,
                    macro_acc: m.acc,
                    measure: Measure::Retrieval,
                    values,
                });
            }
            self.metrics.extend(rows);
            return Ok(());
        }
        let inputs = if stage == Stage::Teacher { &self.teacher_dev } else { &self.student_dev };
        if inputs.labels.is_empty() {
            return Ok(());
        }
        let idx = self.dev_subset(inputs);
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
        let mut rows = metric_rows(
            stage.name(),
            "dev",
            step,
            &logits,
            self.classes,
            &sub,
            t.as_deref(),
            &self.langs,
            &self.in_macro,
        );
        if let Some(g) = &report.gates {
            for (r, &g) in rows.iter_mut().zip(g) {
                r.gate = Some(g as f64);
            }
        }
        let lang_of: Vec<usize> = (0..rows.len().saturating_sub(1)).collect();
        attach_loss_values(&mut rows, &lang_of, &self.in_macro, &report);
        for (s, r) in stats.iter_mut().zip(&rows) {
            if r.examples > 0 {
                s.dev_acc = r.acc;
                s.teacher_dev_acc = r.teacher_acc.unwrap_or(f64::NAN);
            }
        }
        if let Some(m) = rows.last() {
            let (macro_acc, values) = (m.acc, m.values.clone());
            self.emit(Event::Evaluated { stage, step, macro_acc, measure: Measure::Classification, values });
        }
        self.metrics.extend(rows);
        Ok(())
    }

    fn checkpoint(
        &mut self,
        stage: Stage,
        params: &[(String, &Param)],
        opt: &Optimizer,
        state: &LoopState,
    ) -> Result<()> {
        let mut map = TensorMap::new();
        for ((name, p), s) in params.iter().zip(&opt.state) {
            map.insert(format!("param/{name}"), (p.shape.clone(), p.data.clone()));
            if !s.m.is_empty() {
                map.insert(format!("m/{name}"), (vec![s.m.len()], s.m.clone()));
            }
            if !s.v.is_empty() {
                map.insert(format!("v/{name}"), (vec![s.v.len()], s.v.clone()));
            }
        }
        let meta = CheckpointMeta { state: state.clone(), metrics: self.metrics.clone() };
        let metadata: Metadata = [
            ("format", CHECKPOINT_FORMAT.to_string()),
            ("stage", stage.name().to_string()),
            ("step", state.step.to_string()),
            ("recipe_hash", self.recipe_hash.clone()),
            ("state", serde_json::to_string(&meta)?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        write_sealed(&self.checkpoint_path(stage), &map, metadata)?;
        write_metrics(&self.dir.join("metrics.csv"), &self.metrics)?;
        self.emit(Event::Checkpointed { stage, step: state.step });
        if let Some(limit) = self.interrupt_after {
            if self.steps_run >= limit {
                return Err(Interrupted(self.steps_run).into());
            }
        }
        if self.stop_requested() {
            return Err(Interrupted(self.steps_run).into());
        }
        Ok(())
    }

    fn stop_requested(&self) -> bool {
        self.stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn load_checkpoint(&mut self, stage: Stage) -> Result<Option<(TensorMap, LoopState)>> {
        let path = self.checkpoint_path(stage);
        if !self.resume || !path.exists() {
            return Ok(None);
        }
        let fresh = "run without --resume to start this run over";
        let (map, metadata) =
            read_sealed(&path).with_context(|| format!("cannot resume from {}; {fresh}", path.display()))?;
        let get = |k: &str| metadata.get(k).map(String::as_str).unwrap_or_default();
        anyhow::ensure!(
            get("format") == CHECKPOINT_FORMAT && get("stage") == stage.name(),
            "{} is not a checkpoint of stage `{stage}` (format `{}`, stage `{}`); {fresh}",
            path.display(),
            get("format"),
            get("stage")
        );
        anyhow::ensure!(
            get("recipe_hash") == self.recipe_hash,
            "{} was written by another recipe (hash {}; this one is {}): the recipe changed since the run was interrupted; {fresh}",
            path.display(),
            get("recipe_hash"),
            self.recipe_hash
        );
        let meta: CheckpointMeta = serde_json::from_str(get("state"))
            .with_context(|| format!("reading the loop state of {}; {fresh}", path.display()))?;
        self.metrics = meta.metrics;
        Ok(Some((map, meta.state)))
    }

    fn started(&mut self, stage: Stage, from_step: u64, steps: u64) {
        self.emit(Event::StageStarted { stage, steps, from_step });
    }

    fn progress(&mut self, stage: Stage, step: u64, total: u64, loss: f32) {
        self.steps_run += 1;
        self.emit(Event::Step { stage, step, steps: total, loss: loss as f64 });
    }
}
