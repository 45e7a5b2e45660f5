//! What a batch does with a run: run it, resume it from its checkpoints, skip it (done, or
//! running elsewhere), or report its recipe as invalid.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::Path;

use fs2::FileExt;
use kdx_framework::event::RunStatus;
use kdx_framework::report::{read_csv, RunRow};

use super::args::BatchArgs;
use super::discover::BatchRun;

/// What a batch does with a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run it from the start.
    Run,
    /// Continue it from its checkpoints.
    Resume,
    /// Leave it, for this reason.
    Skip(String),
    /// It cannot run: its recipe is invalid.
    Invalid,
}

/// The run's `run.csv`, if it has a readable one.
pub(super) fn run_report(dir: &Path) -> Option<RunRow> {
    read_csv::<RunRow>(&dir.join("run.csv")).ok().and_then(|mut v| v.pop())
}

/// The hash in the header of the run's resolved `recipe.toml` (written when the run starts).
pub(super) fn started_hash(dir: &Path) -> Option<String> {
    let f = File::open(dir.join("recipe.toml")).ok()?;
    let first = BufReader::new(f).lines().next()?.ok()?;
    let rest = &first[first.find("(hash ")? + 6..];
    Some(rest.trim_end_matches(')').to_string())
}

pub(super) fn has_checkpoints(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("checkpoints")).is_ok_and(|mut d| d.next().is_some())
}

/// Decides what to do with a run, from what its run directory holds.
pub fn decide(run: &BatchRun, results: &Path, force: bool) -> Action {
    if run.problem.is_some() {
        return Action::Invalid;
    }
    if force {
        return Action::Run;
    }
    let dir = run.dir(results);
    let report = run_report(&dir);
    if let Some(r) = &report {
        if r.status == RunStatus::Ok && r.hash == run.hash {
            return Action::Skip("up to date".into());
        }
    }
    // A failed run starts again from scratch (its checkpoints may hold the divergence).
    let failed = report.as_ref().is_some_and(|r| r.status == RunStatus::Failed);
    let recorded = report.map(|r| r.hash).or_else(|| started_hash(&dir));
    if !failed && recorded.as_deref() == Some(run.hash.as_str()) && has_checkpoints(&dir) {
        Action::Resume
    } else {
        Action::Run
    }
}

/// Whether another process holds the run's lock (without creating anything).
pub(super) fn lock_held(dir: &Path) -> bool {
    let p = dir.join(".lock");
    match OpenOptions::new().read(true).write(true).open(&p) {
        Ok(f) => FileExt::try_lock_exclusive(&f).is_err(),
        Err(_) => false,
    }
}

/// `--dry-run`: what would happen to each run, and why, and the counts.
pub(super) fn print_plan(runs: &[BatchRun], actions: &[Action], args: &BatchArgs, elsewhere: usize) {
    for (r, a) in runs.iter().zip(actions) {
        let short = &r.hash[..r.hash.len().min(12)];
        let (what, why) = match a {
            Action::Run if lock_held(&r.dir(&args.results)) => {
                ("skip", "running in another batch".to_string())
            }
            Action::Run => ("run", String::new()),
            Action::Resume => ("resume", "interrupted; continues from its checkpoints".to_string()),
            Action::Skip(why) => ("skip", why.clone()),
            Action::Invalid => (
                "invalid",
                r.problem.as_deref().unwrap_or_default().lines().next().unwrap_or_default().to_string(),
            ),
        };
        println!(
            "{what:<8} {}  {}  {short}{}",
            r.label(),
            r.recipe_key,
            if why.is_empty() { String::new() } else { format!("  ({why})") }
        );
    }
    let count = |f: &dyn Fn(&Action) -> bool| actions.iter().filter(|a| f(a)).count();
    println!(
        "{} run(s): {} to run, {} to resume, {} skipped, {} invalid{}",
        runs.len(),
        count(&|a| *a == Action::Run),
        count(&|a| *a == Action::Resume),
        count(&|a| matches!(a, Action::Skip(_))),
        count(&|a| *a == Action::Invalid),
        match args.shard {
            Some(s) => format!("; {elsewhere} more belong to the other shards of {}", s.count),
            None => String::new(),
        }
    );
}
