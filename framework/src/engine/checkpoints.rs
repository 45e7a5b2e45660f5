//! A run's checkpoints: one sealed file per stage (`checkpoints/<stage>.safetensors`)
//! holding the trainable tensors, the optimizer's moments, the loop state and the metric
//! rows so far — written atomically, so weights and state are committed together or not at
//! all, and read back only by the recipe that wrote them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::train::LoopState;
use crate::model::Param;
use crate::optim::Optimizer;
use crate::report::MetricRow;
use crate::stage::Stage;
use crate::store::{read_sealed, write_sealed, Metadata, TensorMap};

/// The format tag of checkpoint files.
const CHECKPOINT_FORMAT: &str = "kdx-checkpoint-1";

/// The loop state of a checkpoint, beside its tensors in the same file.
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointMeta {
    state: LoopState,
    metrics: Vec<MetricRow>,
}

/// A stage restored from its checkpoint: tensors, loop state and the metric rows written
/// before it.
pub(super) struct Restored {
    pub tensors: TensorMap,
    pub state: LoopState,
    pub metrics: Vec<MetricRow>,
}

/// Where a run's checkpoints are, and whether this run resumes from them.
pub(super) struct Checkpoints {
    dir: PathBuf,
    resume: bool,
    /// Hash of the resolved recipe: a checkpoint is resumed only by the recipe that wrote it.
    recipe_hash: String,
}

impl Checkpoints {
    /// The checkpoints of the run writing to `run_dir`.
    pub fn new(run_dir: &Path, resume: bool, recipe_hash: &str) -> Checkpoints {
        Checkpoints { dir: run_dir.join("checkpoints"), resume, recipe_hash: recipe_hash.to_string() }
    }

    fn path(&self, stage: Stage) -> PathBuf {
        self.dir.join(format!("{}.safetensors", stage.name()))
    }

    /// Writes a stage's checkpoint: its parameters with the optimizer's moments, its loop
    /// state and every metric row so far.
    pub fn save(
        &self,
        stage: Stage,
        params: &[(String, &Param)],
        opt: &Optimizer,
        state: &LoopState,
        metrics: &[MetricRow],
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
        let meta = CheckpointMeta { state: state.clone(), metrics: metrics.to_vec() };
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
        write_sealed(&self.path(stage), &map, metadata)
    }

    /// A stage's checkpoint, when this run resumes and one exists; refused (with how to
    /// start over) when it is damaged, of another stage, or written by another recipe.
    pub fn load(&self, stage: Stage) -> Result<Option<Restored>> {
        let path = self.path(stage);
        if !self.resume || !path.exists() {
            return Ok(None);
        }
        let fresh = "run without --resume to start this run over";
        let (tensors, metadata) =
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
        Ok(Some(Restored { tensors, state: meta.state, metrics: meta.metrics }))
    }

    /// Removes a stage's checkpoint: the teacher's, once the teacher is in its cache (which
    /// holds the same weights), so a large teacher is not kept twice.
    pub fn remove(&self, stage: Stage) -> Result<()> {
        let path = self.path(stage);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}
