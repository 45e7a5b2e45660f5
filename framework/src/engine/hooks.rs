//! What the stage loop hands out and calls out to: the state a checkpoint carries
//! ([`LoopState`], with the `sampling.csv` rows so far) and the hooks through which the engine
//! evaluates, checkpoints and reports ([`StageHooks`]).

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::loss_report::LossReport;
use crate::model::{Model, Param};
use crate::optim::Optimizer;
use crate::sampler::LangStat;
use crate::stage::Stage;
use crate::store::TensorMap;

/// A row of `sampling.csv`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SamplingRow {
    /// Stage.
    pub stage: String,
    /// Step at which the distribution was set.
    pub step: u64,
    /// Language.
    pub lang: String,
    /// Probability of drawing the language.
    pub probability: f64,
    /// Examples of the language drawn so far in the stage.
    pub drawn: u64,
}

/// The loop state that a checkpoint must carry besides parameters and moments.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoopState {
    /// Next step to run.
    pub step: u64,
    /// Optimizer updates so far.
    pub opt_t: u64,
    /// Queue cursors and passes.
    pub cursor: Vec<usize>,
    /// Queue passes.
    pub pass: Vec<u64>,
    /// Per-language statistics.
    pub stats: Vec<LangStat>,
    /// The sampler's current distribution.
    pub dist: Vec<f64>,
    /// Sampler rows written so far.
    pub sampling: Vec<SamplingRow>,
    /// Seconds spent training so far (for `run.csv`).
    pub train_seconds: f64,
    /// The sampler's own state ([`crate::sampler::Sampler::state`]).
    pub sampler_state: Vec<f64>,
    /// Each loss's own state ([`crate::loss::Loss::save_state`]), by position; empty for
    /// checkpoints written before losses had one.
    #[serde(default)]
    pub loss_states: Vec<Vec<u8>>,
    /// Per loss: the sum of its values and the number of steps it was computed in since
    /// the previous evaluation (the `loss.<term>` columns of `metrics.csv`).
    #[serde(default)]
    pub term_sums: Vec<(f64, u64)>,
}

/// What the stage loop calls out to: evaluation, checkpoints, progress. The engine's
/// implementation evaluates on the dev split, writes checkpoints and tells the run's
/// observer; tests use recording ones.
pub trait StageHooks {
    /// Called after step `step` (1-based count of steps done) when an evaluation is due;
    /// fills per-language dev accuracies (student, teacher) into the statistics.
    /// `report` is what the losses report (their gate, named values, term values).
    /// `projection` is the embedding loss's map into the teacher's space, if any: a
    /// parallel-data run scores translation retrieval through it.
    fn evaluate(
        &mut self,
        stage: Stage,
        step: u64,
        model: &dyn Model,
        projection: Option<&crate::nn::HiddenProjection>,
        stats: &mut [LangStat],
        report: LossReport,
    ) -> Result<()>;
    /// Persists a checkpoint of the stage: every trained parameter (model and losses) by
    /// name, the optimizer and the loop state.
    fn checkpoint(
        &mut self,
        stage: Stage,
        params: &[(String, &Param)],
        opt: &Optimizer,
        state: &LoopState,
    ) -> Result<()>;
    /// The stage's last checkpoint, when resuming: tensors by name and the loop state.
    fn load_checkpoint(&mut self, stage: Stage) -> Result<Option<(TensorMap, LoopState)>>;
    /// The stage begins at step `from_step` of `steps`.
    fn started(&mut self, stage: Stage, from_step: u64, steps: u64);
    /// Progress report after each step.
    fn progress(&mut self, stage: Stage, step: u64, total: u64, loss: f32);
    /// Whether the run was asked to stop (a signal): the loop then checkpoints at the step it
    /// has just finished, without an evaluation that was not due, and [`StageHooks::checkpoint`]
    /// ends the run as interrupted.
    fn stop_requested(&self) -> bool {
        false
    }
}
