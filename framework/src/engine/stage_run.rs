//! What one stage of training is given: its settings and inputs ([`StageRun`]) and its
//! weighted losses ([`StageLoss`]). The stage loop, the objective and the least-squares
//! start all read these.

use super::inputs::{Inputs, TeacherOut};
use crate::loss::Loss;
use crate::model::Model;
use crate::plan::StageConfig;
use crate::schedule::Schedule;
use crate::stage::Stage;

/// A loss with its weight, as a stage uses it.
pub struct StageLoss<'a> {
    /// Plugin name (for messages).
    pub name: &'a str,
    /// Weight schedule.
    pub weight: &'a Schedule,
    /// The loss.
    pub loss: &'a mut dyn Loss,
}

/// Everything a stage needs besides the model.
pub struct StageRun<'a> {
    /// The stage.
    pub stage: Stage,
    /// Settings.
    pub cfg: &'a StageConfig,
    /// The model's own featurisation of the training examples.
    pub train: &'a Inputs,
    /// Teacher outputs aligned with `train`, when a loss needs them.
    pub teacher: Option<&'a TeacherOut>,
    /// The teacher network and its featurisation of the same examples, when a layer-wise
    /// loss reads its per-layer states (computed batch by batch).
    pub teacher_net: Option<(&'a dyn Model, &'a Inputs)>,
    /// Whether gold labels may reach the losses (false in cross-lingual distillation).
    pub labels_visible: bool,
    /// Languages the stage trains on (all when `None`).
    pub allowed: Option<Vec<bool>>,
    /// The stage's seed (the run seed mixed with [`Stage::seed_tag`]).
    pub seed: u64,
    /// Number of languages.
    pub n_langs: usize,
}
