//! What a run tells: its events to the [`Observer`], its metric rows (`metrics.csv`,
//! rewritten at every checkpoint), and whether it must stop (a signal, or the test hook
//! `--interrupt-after`).

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::options::{Interrupted, RunOptions};
use crate::event::{Event, Observer};
use crate::report::{write_metrics, MetricRow};

/// A run's events, metric rows and stop requests.
pub(super) struct Reporter<'o> {
    observer: &'o mut dyn Observer,
    /// `metrics.csv` of the run.
    metrics_csv: PathBuf,
    /// Every metric row so far, in order.
    pub metrics: Vec<MetricRow>,
    steps_run: u64,
    interrupt_after: Option<u64>,
    stop: Option<&'static std::sync::atomic::AtomicBool>,
}

impl<'o> Reporter<'o> {
    /// The reporter of the run writing to `run_dir`.
    pub fn new(opts: &RunOptions, run_dir: &Path, observer: &'o mut dyn Observer) -> Reporter<'o> {
        Reporter {
            observer,
            metrics_csv: run_dir.join("metrics.csv"),
            metrics: Vec::new(),
            steps_run: 0,
            interrupt_after: opts.interrupt_after,
            stop: opts.stop,
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

    /// Counts a training step (of any stage) towards `--interrupt-after`.
    pub fn stepped(&mut self) {
        self.steps_run += 1;
    }

    /// Writes `metrics.csv` with every row so far.
    pub fn write_metrics(&self) -> Result<()> {
        write_metrics(&self.metrics_csv, &self.metrics)
    }

    /// Whether a stop was requested (a signal): the stage checkpoints and ends.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// [`Interrupted`] when the run must end here, after a checkpoint: a stop was requested
    /// or `--interrupt-after` steps have run.
    pub fn interrupted(&self) -> Result<()> {
        if self.interrupt_after.is_some_and(|limit| self.steps_run >= limit) || self.stop_requested() {
            return Err(Interrupted(self.steps_run).into());
        }
        Ok(())
    }
}
