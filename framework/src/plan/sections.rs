//! The framework's own recipe sections, typed: `[experiment]`, `[train]`, `[finetune]`,
//! a teacher's `train = { … }` and `[student] init`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::optim::OptimizerConfig;

/// `[experiment]`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSection {
    /// Experiment name: results go to `results/<name>/<run>/`.
    pub name: String,
    /// Seed of every random choice (initialisation, sampling, dropout).
    #[serde(default)]
    pub seed: u64,
    /// Free text, copied into the reports.
    #[serde(default)]
    pub description: String,
}

/// Whether `name` may name a directory under the results root: letters, digits, `.`, `_`,
/// `-` and the characters of `extra`, not starting with `.` (no `..`, no hidden names such as
/// the `.cache`) and no separators, so `results/<experiment>/<run>` stays inside `results/`.
/// Experiment names take no `extra`; run names, which kdx makes from sweep settings
/// (`tau=1,lr=0.01`), may also hold `+=,~`. The error says what is wrong.
pub fn plain_name(name: &str, extra: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        return Err(anyhow::anyhow!("must not be empty"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || extra.contains(c)))
    {
        return Err(anyhow::anyhow!("`{name}` contains `{c}`: use letters, digits, `.`, `_` and `-` only (it names a directory under results/)"));
    }
    if name.starts_with('.') {
        return Err(anyhow::anyhow!(
            "`{name}` starts with `.`: results/ keeps its own hidden directories (`.cache`)"
        ));
    }
    Ok(())
}

/// Training settings of one stage (`[train]`, `[teacher].train`, `[finetune]`).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Optimisation steps.
    pub steps: u64,
    /// Examples per step.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Shorthand for `optimizer.lr`.
    #[serde(default)]
    pub lr: Option<f32>,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Evaluate on the dev split (and checkpoint) every this many steps; 0 = only at the end.
    #[serde(default)]
    pub eval_every: u64,
}

fn default_batch() -> usize {
    256
}

impl StageConfig {
    /// The key of the learning rate this stage uses (`lr` or `optimizer.lr`) and its value.
    pub fn lr_key(&self) -> (&'static str, f32) {
        match self.lr {
            Some(lr) => ("lr", lr),
            None => ("optimizer.lr", self.optimizer.lr),
        }
    }

    /// The optimizer with the `lr` shorthand applied.
    pub fn optimizer(&self) -> OptimizerConfig {
        let mut o = self.optimizer.clone();
        if let Some(lr) = self.lr {
            o.lr = lr;
        }
        o
    }
}

/// `[train]`: the distillation stage (and the baseline, which mirrors it).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimisation steps.
    pub steps: u64,
    /// Examples per step.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Shorthand for `optimizer.lr`.
    #[serde(default)]
    pub lr: Option<f32>,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Evaluate on the dev split (and checkpoint) every this many steps; 0 = only at the end.
    #[serde(default)]
    pub eval_every: u64,
    /// Also train the same student without a teacher (hard labels only), for the KD-gain column.
    #[serde(default = "yes")]
    pub baseline: bool,
    /// Fraction of the dev split used for periodic evaluation (1 = all).
    #[serde(default = "one")]
    pub eval_fraction: f64,
}

impl TrainSection {
    /// The stage settings.
    pub fn stage(&self) -> StageConfig {
        StageConfig {
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            optimizer: self.optimizer.clone(),
            eval_every: self.eval_every,
        }
    }
}

/// `[finetune]`: an optional last stage on a subset of languages.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSection {
    /// Optimisation steps.
    pub steps: u64,
    /// Examples per step.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Shorthand for `optimizer.lr`.
    #[serde(default)]
    pub lr: Option<f32>,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Evaluate on the dev split (and checkpoint) every this many steps; 0 = only at the end.
    #[serde(default)]
    pub eval_every: u64,
    /// Languages to fine-tune on (all when empty).
    #[serde(default)]
    pub languages: Vec<String>,
    /// Keep the distillation losses (true) or fine-tune on hard labels only (false).
    #[serde(default)]
    pub distill: bool,
}

impl FinetuneSection {
    /// The stage settings.
    pub fn stage(&self) -> StageConfig {
        StageConfig {
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            optimizer: self.optimizer.clone(),
            eval_every: self.eval_every,
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

/// How the student starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// Fresh random initialisation.
    #[default]
    None,
    /// Copy the teacher's tensors where names and shapes allow.
    FromTeacher,
}
