//! How to run, and how a run that stopped on purpose ends.

use std::path::PathBuf;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Results root (`results/`).
    pub results: PathBuf,
    /// Continue an interrupted run from its checkpoints.
    pub resume: bool,
    /// Stop (as if interrupted) once this many training steps have run in this process;
    /// used by the tests of `--resume`.
    pub interrupt_after: Option<u64>,
    /// The caller already holds the run directory's lock ([`lock_run`]) for this run, as a
    /// `kdx batch` child does through the lock file it inherits; otherwise [`run`] takes it.
    pub lock_held: bool,
    /// Set (by the application's SIGTERM/SIGINT handler) to stop at the end of the current
    /// step: a stage with checkpoints writes one at that step, and the run ends interrupted.
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
}

/// The run stopped before its end on purpose (it can be resumed).
#[derive(Debug, thiserror::Error)]
#[error("interrupted after {0} training steps; `kdx run --resume` continues")]
pub struct Interrupted(pub u64);
