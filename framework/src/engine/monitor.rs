//! The engine's side of the stage loop ([`StageHooks`]): a run's [`Evaluator`] (dev
//! evaluation), [`Checkpoints`] and [`Reporter`] (events, metric rows, stop requests),
//! put together. Each part holds its own state; this file only routes the loop's calls.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::checkpoints::Checkpoints;
use super::evaluator::Evaluator;
use super::options::RunOptions;
use super::reporter::Reporter;
use super::train::{LoopState, LossReport, StageHooks};
use crate::dataset::Task;
use crate::event::{Event, Observer};
use crate::model::{Model, Param};
use crate::nn::HiddenProjection;
use crate::optim::Optimizer;
use crate::sampler::LangStat;
use crate::stage::Stage;
use crate::store::TensorMap;

/// Evaluation, checkpoints and reporting for the stages of one run.
pub(super) struct Monitor<'o> {
    /// The results root (the teacher cache lives under it).
    pub results: PathBuf,
    /// Dev evaluation.
    pub eval: Evaluator,
    /// The run's checkpoints.
    pub checkpoints: Checkpoints,
    /// Events, metric rows, stop requests.
    pub report: Reporter<'o>,
}

impl<'o> Monitor<'o> {
    /// A monitor for a run of `task` writing to `dir`.
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
            eval: Evaluator::new(task, eval_fraction),
            checkpoints: Checkpoints::new(dir, opts.resume, recipe_hash),
            report: Reporter::new(opts, dir, observer),
        }
    }

    /// Sends an event to the observer.
    pub fn emit(&mut self, e: Event) {
        self.report.emit(e);
    }

    /// A note for a person.
    pub fn note(&mut self, message: impl Into<String>) {
        self.report.note(message);
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
        let (rows, measure) = self.eval.evaluate(stage, step, model, projection, stats, &report)?;
        if let Some(m) = rows.last() {
            let (macro_acc, values) = (m.acc, m.values.clone());
            self.emit(Event::Evaluated { stage, step, macro_acc, measure, values });
        }
        self.report.metrics.extend(rows);
        Ok(())
    }

    fn checkpoint(
        &mut self,
        stage: Stage,
        params: &[(String, &Param)],
        opt: &Optimizer,
        state: &LoopState,
    ) -> Result<()> {
        self.checkpoints.save(stage, params, opt, state, &self.report.metrics)?;
        self.report.write_metrics()?;
        self.emit(Event::Checkpointed { stage, step: state.step });
        self.report.interrupted()
    }

    fn stop_requested(&self) -> bool {
        self.report.stop_requested()
    }

    fn load_checkpoint(&mut self, stage: Stage) -> Result<Option<(TensorMap, LoopState)>> {
        Ok(self.checkpoints.load(stage)?.map(|r| {
            self.report.metrics = r.metrics;
            (r.tensors, r.state)
        }))
    }

    fn started(&mut self, stage: Stage, from_step: u64, steps: u64) {
        self.emit(Event::StageStarted { stage, steps, from_step });
    }

    fn progress(&mut self, stage: Stage, step: u64, total: u64, loss: f32) {
        self.report.stepped();
        self.emit(Event::Step { stage, step, steps: total, loss: loss as f64 });
    }
}
