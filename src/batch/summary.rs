//! `results/summary.csv`: one row per (recipe, run), rewritten under a lock, and the outcome
//! and result line of a finished child.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use anyhow::{Context, Result};
use fs2::FileExt;
use kdx_framework::event::RunStatus;
use kdx_framework::report::{read_csv, RunRow};
use serde::{Deserialize, Serialize};

use super::child::Job;
use super::console::first_line;
use super::decide::run_report;
use super::discover::BatchRun;

/// What became of a run in a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It ran to its end.
    Ok,
    /// It failed (or its recipe is invalid).
    #[default]
    Failed,
    /// It was stopped; the next batch resumes it.
    Interrupted,
    /// Not run: its results are there already, or another batch is running it.
    Skipped,
}

impl Outcome {
    /// The word in `summary.csv` and the result lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Skipped => "skipped",
        }
    }
}

impl From<RunStatus> for Outcome {
    fn from(s: RunStatus) -> Outcome {
        match s {
            RunStatus::Ok => Outcome::Ok,
            RunStatus::Failed => Outcome::Failed,
            RunStatus::Interrupted => Outcome::Interrupted,
        }
    }
}

/// A row of `results/summary.csv`: the outcome of one run in the last batch that ran it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SummaryRow {
    /// Recipe path.
    pub recipe: String,
    /// Experiment name.
    pub experiment: String,
    /// Run name.
    pub run: String,
    /// Hash of the resolved recipe of the run.
    pub hash: String,
    /// `ok`, `failed`, `interrupted` or `skipped` (results already there for this hash).
    pub status: Outcome,
    /// The error (for an invalid recipe, its diagnostics).
    pub error: String,
    /// The swept settings, `key=value;…`.
    pub params: String,
    /// Teacher macro accuracy (test).
    pub teacher_acc: Option<f64>,
    /// Student macro accuracy (test).
    pub student_acc: Option<f64>,
    /// Baseline (no teacher) macro accuracy (test).
    pub baseline_acc: Option<f64>,
    /// Student minus baseline macro accuracy.
    pub kd_gain: Option<f64>,
    /// Language where the student is worst.
    pub worst_lang: String,
    /// The student's accuracy there.
    pub worst_acc: Option<f64>,
    /// Teacher parameters / student parameters.
    pub compression: Option<f64>,
    /// Wall time of the run in this batch (for a skipped run, of the run that made the results).
    pub wall_s: f64,
    /// Where the run's teacher came from, as its `teacher_ready` event said: `trained`,
    /// `cache` or `precomputed` (empty when the run did not get that far in this batch).
    #[serde(default)]
    pub teacher: String,
}

impl SummaryRow {
    pub(super) fn new(run: &BatchRun, status: Outcome, error: String) -> SummaryRow {
        SummaryRow {
            recipe: run.recipe_key.clone(),
            experiment: run.experiment.clone(),
            run: run.run.clone(),
            hash: run.hash.clone(),
            status,
            error,
            params: run.params.clone(),
            ..Default::default()
        }
    }

    pub(super) fn with_report(mut self, r: &RunRow) -> SummaryRow {
        if r.status == RunStatus::Ok {
            self.teacher_acc = Some(r.teacher_macro_acc);
            self.student_acc = Some(r.student_macro_acc);
            self.baseline_acc = r.baseline_macro_acc;
            self.kd_gain = r.kd_gain;
            self.worst_lang = r.worst_lang.clone();
            self.worst_acc = Some(r.worst_acc);
        }
        if r.compression > 0.0 {
            self.compression = Some(r.compression);
        }
        if self.teacher.is_empty() && r.status == RunStatus::Ok {
            // For a row made from a report (a skipped run), as the run's event said it.
            self.teacher = match (r.teacher_params, r.teacher_cached) {
                (0, _) => "precomputed",
                (_, true) => "cache",
                (_, false) => "trained",
            }
            .into();
        }
        self.wall_s = r.wall_s;
        self
    }
}

/// Path of the summary of a results root.
pub fn summary_path(results: &Path) -> PathBuf {
    results.join("summary.csv")
}

/// Reads `summary.csv` (empty when there is none).
pub fn read_summary(results: &Path) -> Result<Vec<SummaryRow>> {
    let p = summary_path(results);
    if !p.exists() {
        return Ok(Vec::new());
    }
    read_csv(&p)
}

/// Adds rows to `summary.csv`, replacing the rows of the same (recipe, run), under the
/// summary lock, written atomically.
pub fn update_summary(results: &Path, rows: &[SummaryRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(results).with_context(|| format!("creating {}", results.display()))?;
    let lock_path = results.join(".summary.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    FileExt::lock_exclusive(&lock).with_context(|| format!("locking {}", lock_path.display()))?;
    let mut all = match read_summary(results) {
        Ok(v) => v,
        Err(e) => {
            // Never lose a summary that cannot be read (edited by hand, older format): keep it aside.
            let p = summary_path(results);
            let aside = results.join(format!("summary.csv.unreadable-{}", std::process::id()));
            eprintln!(
                "kdx batch: warning: {e:#}; keeping it as {} and starting a new summary",
                aside.display()
            );
            std::fs::rename(&p, &aside).with_context(|| format!("renaming {}", p.display()))?;
            Vec::new()
        }
    };
    for r in rows {
        match all.iter_mut().find(|x| x.recipe == r.recipe && x.run == r.run) {
            Some(x) => *x = r.clone(),
            None => all.push(r.clone()),
        }
    }
    let result = kdx_framework::report::write_csv(&summary_path(results), &all);
    let _ = FileExt::unlock(&lock);
    result
}

pub(super) fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => "ended".into(),
    }
}

/// The summary row of a finished child: its status from its `run_finished` event, its
/// figures from its `run.csv`.
pub(super) fn outcome(
    r: &BatchRun,
    results: &Path,
    job: &Job,
    status: ExitStatus,
    stopping: bool,
) -> SummaryRow {
    let wall = job.started.elapsed().as_secs_f64();
    let report = run_report(&r.dir(results)).filter(|x| x.hash == r.hash);
    let mut row = match (&job.finished, &report) {
        (Some((s, _)), _) if stopping && *s != RunStatus::Ok => {
            SummaryRow::new(r, Outcome::Interrupted, "stopped by the batch; the next batch resumes it".into())
        }
        (Some((s, error)), report) => {
            let row = SummaryRow::new(r, Outcome::from(*s), error.clone().unwrap_or_default());
            match report {
                Some(rep) => row.with_report(rep),
                None => row,
            }
        }
        (None, _) if stopping => {
            SummaryRow::new(r, Outcome::Interrupted, "stopped by the batch; the next batch resumes it".into())
        }
        (None, _) => {
            let tail: Vec<&str> = job.tail.iter().map(String::as_str).collect();
            SummaryRow::new(
                r,
                Outcome::Failed,
                format!(
                    "kdx run {} before it finished; its last lines: {}",
                    describe(status),
                    tail.join(" | ")
                ),
            )
        }
    };
    row.teacher = job.teacher.map(|t| t.as_str().to_string()).unwrap_or_default();
    row.wall_s = wall;
    row
}

pub(super) fn result_line(r: &BatchRun, row: &SummaryRow, resumed: bool) -> String {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    match row.status {
        Outcome::Ok => format!(
            "{:<11} {}  teacher {}  student {}  baseline {}  KD gain {}  worst {} {}  {:.1}×  {:.1}s{}",
            "ok",
            r.label(),
            f(row.teacher_acc),
            f(row.student_acc),
            f(row.baseline_acc),
            row.kd_gain.map_or("-".to_string(), |g| format!("{g:+.4}")),
            if row.worst_lang.is_empty() { "-" } else { &row.worst_lang },
            f(row.worst_acc),
            row.compression.unwrap_or(0.0),
            row.wall_s,
            if resumed { " (resumed)" } else { "" }
        ),
        s => format!("{:<11} {}  {}", s.as_str(), r.label(), first_line(&row.error)),
    }
}
