//! What a run tells whoever watches it: typed [`Event`]s sent to an [`Observer`].
//!
//! The engine never prints, draws a progress bar or knows who listens. The application
//! renders events for a person (a console observer), writes them as JSON lines (`kdx run
//! --events jsonl`, read by `kdx batch`), or records them in tests. The JSON form of each
//! event is part of kdx's interface and is documented in `docs/events.md`: an object with a
//! `type` field naming the variant in snake case and the variant's fields beside it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::stage::Stage;

/// How a run ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every stage ran and every report was written.
    Ok,
    /// An error stopped the run (the error is in `run.csv`).
    #[default]
    Failed,
    /// The run stopped on purpose before its end; `kdx run --resume` continues it.
    Interrupted,
}

impl RunStatus {
    /// The word used in `run.csv` and `summary.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a run's teacher came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherSource {
    /// Pre-trained by this run (and now in the cache).
    Trained,
    /// Loaded from the cache, where an earlier run left it.
    Cache,
    /// Outputs computed elsewhere (`logits-file`): nothing to train or cache.
    Precomputed,
    /// A pretrained checkpoint used as it is (`hf-encoder` without `train`).
    Pretrained,
}

impl TeacherSource {
    /// The word used in `summary.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            TeacherSource::Trained => "trained",
            TeacherSource::Cache => "cache",
            TeacherSource::Pretrained => "pretrained",
            TeacherSource::Precomputed => "precomputed",
        }
    }
}

/// Something that happened in a run, in the order it happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The run begins; it writes to `dir`.
    RunStarted {
        /// `[experiment] name`.
        experiment: String,
        /// The run's name within the experiment.
        run: String,
        /// Hash of the resolved recipe.
        hash: String,
        /// The run directory.
        dir: PathBuf,
        /// Whether it continues from checkpoints.
        resume: bool,
    },
    /// The dataset is loaded.
    TaskLoaded {
        /// Languages.
        languages: usize,
        /// Classes.
        classes: usize,
        /// Training examples.
        train: usize,
        /// Dev examples.
        dev: usize,
        /// Test examples.
        test: usize,
    },
    /// Another process is pre-training the same teacher; this run waits for its cache.
    TeacherWaiting {
        /// The teacher's cache directory.
        cache: PathBuf,
    },
    /// The teacher is ready.
    TeacherReady {
        /// Where it came from.
        source: TeacherSource,
        /// Its cache directory (`None` for a precomputed teacher).
        cache: Option<PathBuf>,
    },
    /// A stage begins, or resumes after `from_step` steps.
    StageStarted {
        /// The stage.
        stage: Stage,
        /// Its total steps.
        steps: u64,
        /// Steps already done (from a checkpoint).
        from_step: u64,
    },
    /// A training step is done.
    Step {
        /// The stage.
        stage: Stage,
        /// Steps done in the stage.
        step: u64,
        /// The stage's total steps.
        steps: u64,
        /// The weighted training loss of the step.
        loss: f64,
    },
    /// An evaluation on the dev split.
    Evaluated {
        /// The stage.
        stage: Stage,
        /// Steps done in the stage.
        step: u64,
        /// Macro accuracy over the languages the student trains on: classification
        /// accuracy, or translation → English retrieval accuracy@1 (`measure`).
        macro_acc: f64,
        /// What `macro_acc` measures: `accuracy` or `retrieval` (parallel-data runs).
        #[serde(default)]
        measure: crate::dataset::Measure,
        /// What the losses report on the `macro` row of `metrics.csv`: each term's mean
        /// value since the previous evaluation (`loss.<term>`) and the macro mean of each
        /// named per-language value (`<term>.<name>`). Absent when there is none.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        values: std::collections::BTreeMap<String, f64>,
    },
    /// A checkpoint of the stage at `step` is on disk: `--resume` continues from there. Written
    /// at each evaluation and at the step a stop signal found done.
    Checkpointed {
        /// The stage.
        stage: Stage,
        /// Steps done in the stage.
        step: u64,
    },
    /// Information for a person (what was chosen and why, a skipped stage, a summary).
    Note {
        /// The message.
        message: String,
    },
    /// The run ended; its reports are written.
    RunFinished {
        /// How it ended.
        status: RunStatus,
        /// The error, when it did not end `ok`.
        error: Option<String>,
        /// Wall time, seconds.
        wall_s: f64,
    },
}

/// Receives a run's events. Implementations must be quick: the engine calls them between
/// training steps.
pub trait Observer {
    /// One event.
    fn event(&mut self, event: &Event);
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Observer for Silent {
    fn event(&mut self, _: &Event) {}
}

/// An observer that keeps every event (for tests and for programs that inspect a run).
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    /// The events, in order.
    pub events: Vec<Event>,
}

impl Observer for Recorder {
    fn event(&mut self, event: &Event) {
        self.events.push(event.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_is_tagged_by_type() {
        let e = Event::Step { stage: Stage::Distill, step: 3, steps: 10, loss: 0.5 };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(s, r#"{"type":"step","stage":"distill","step":3,"steps":10,"loss":0.5}"#);
        assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), e);
        let e = Event::TeacherReady {
            source: TeacherSource::Cache,
            cache: Some("results/.cache/teacher-ab".into()),
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(s, r#"{"type":"teacher_ready","source":"cache","cache":"results/.cache/teacher-ab"}"#);
        let e = Event::RunFinished { status: RunStatus::Interrupted, error: None, wall_s: 1.5 };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"run_finished","status":"interrupted","error":null,"wall_s":1.5}"#
        );
        let e = Event::Evaluated {
            stage: Stage::Distill,
            step: 5,
            macro_acc: 0.5,
            measure: crate::dataset::Measure::Retrieval,
            values: Default::default(),
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(
            s,
            r#"{"type":"evaluated","stage":"distill","step":5,"macro_acc":0.5,"measure":"retrieval"}"#
        );
        // A reader of events written before `measure` existed reads classification accuracy.
        let old: Event =
            serde_json::from_str(r#"{"type":"evaluated","stage":"distill","step":5,"macro_acc":0.5}"#)
                .unwrap();
        assert!(matches!(old, Event::Evaluated { measure: crate::dataset::Measure::Classification, .. }));
    }
}
