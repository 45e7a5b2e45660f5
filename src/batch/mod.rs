//! `kdx batch`: every run of every recipe under some paths, each in its own `kdx run` child
//! process, so that a crash, an abort or a diverging run cannot take the others down.
//!
//! - Runs whose `run.csv` says `ok` for the same resolved-recipe hash are skipped
//!   (`--force` runs them again); interrupted ones resume from their checkpoints.
//! - `--shard K/N` keeps the runs whose hash is K modulo N: the shards of a batch are disjoint
//!   and together make the whole batch.
//! - Two batches may share a results directory: a run is started only under an OS lock on
//!   `results/<experiment>/<run>/.lock`, and `results/summary.csv` is rewritten (atomically)
//!   only under a lock on `results/.summary.lock`, one row per (recipe, run).
//! - Ctrl-C (or SIGTERM) stops the children as a signal stops `kdx run` (each checkpoints the
//!   step it is in) and records their runs as interrupted, so the next batch resumes them
//!   without redoing a step; a second Ctrl-C leaves at once.
//!
//! One module per job: `discover` (recipes → runs), `shard`, `decide` (run, resume, skip,
//! invalid; `--dry-run`), `schedule` (the children, `--jobs` at a time), `child` (one `kdx run`
//! process and its events), `summary` (`summary.csv`, a run's outcome), `console`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;

mod args;
mod child;
mod console;
mod decide;
mod discover;
mod schedule;
mod shard;
mod summary;

use self::decide::print_plan;
use self::schedule::{record_known, Scheduler};

pub use self::args::BatchArgs;
pub use self::child::inherited_run_lock;
pub use self::decide::{decide, Action};
pub use self::discover::{discover, find_recipes, load_run, BatchRun};
pub use self::shard::{hash_mod, Shard};
pub use self::summary::{read_summary, summary_path, update_summary, Outcome, SummaryRow};

/// `kdx batch`.
pub fn run(args: &BatchArgs) -> Result<ExitCode> {
    anyhow::ensure!(args.jobs >= 1, "--jobs must be at least 1");
    let started = Instant::now();
    let all = discover(&args.paths)?;
    let total_found = all.len();
    let runs: Vec<BatchRun> = match args.shard {
        Some(s) => all.into_iter().filter(|r| s.contains(&r.hash)).collect(),
        None => all,
    };
    let elsewhere = total_found - runs.len();
    let actions: Vec<Action> = runs.iter().map(|r| decide(r, &args.results, args.force)).collect();
    if args.dry_run {
        print_plan(&runs, &actions, args, elsewhere);
        return Ok(ExitCode::SUCCESS);
    }
    let mut counts = HashMap::new();
    let pending = record_known(&runs, &actions, &args.results, &mut counts)?;
    let mut scheduler = Scheduler::new(args, &runs, pending, counts)?;
    scheduler.run_all()?;
    Ok(schedule::report(args, runs.len(), &scheduler, elsewhere, started))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::decide::lock_held;
    use crate::batch::discover::sha_hex;
    use kdx_framework::engine::lock_run;

    #[test]
    fn shards_parse_and_partition() {
        assert_eq!(Shard::parse("1/4").unwrap(), Shard { index: 1, count: 4 });
        assert!(Shard::parse("4/4").is_err());
        assert!(Shard::parse("0/0").is_err());
        assert!(Shard::parse("x").is_err());
        let hashes: Vec<String> = (0..200).map(|i| sha_hex(&i.to_string())).collect();
        for n in 1..6u64 {
            let mut counts = vec![0; n as usize];
            for h in &hashes {
                let owners: Vec<u64> = (0..n).filter(|&k| Shard { index: k, count: n }.contains(h)).collect();
                assert_eq!(owners.len(), 1, "each run belongs to exactly one shard");
                counts[owners[0] as usize] += 1;
            }
            assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
        }
        // The whole hash counts, not a prefix: 0x…10 mod 16 = 0, mod 3 = 16 mod 3 = 1.
        assert_eq!(hash_mod("10", 16), 0);
        assert_eq!(hash_mod("10", 3), 1);
    }

    #[test]
    fn summary_rows_are_replaced_by_recipe_and_run() {
        let tmp = tempfile::tempdir().unwrap();
        let row = |recipe: &str, run: &str, status: Outcome| SummaryRow {
            recipe: recipe.into(),
            run: run.into(),
            status,
            ..Default::default()
        };
        update_summary(
            tmp.path(),
            &[row("a.toml", "run", Outcome::Failed), row("b.toml", "x=1", Outcome::Ok)],
        )
        .unwrap();
        update_summary(tmp.path(), &[row("a.toml", "run", Outcome::Ok), row("b.toml", "x=2", Outcome::Ok)])
            .unwrap();
        let all = read_summary(tmp.path()).unwrap();
        let got: Vec<(&str, &str, &str)> =
            all.iter().map(|r| (r.recipe.as_str(), r.run.as_str(), r.status.as_str())).collect();
        assert_eq!(got, vec![("a.toml", "run", "ok"), ("b.toml", "x=1", "ok"), ("b.toml", "x=2", "ok")]);
    }

    #[test]
    fn a_run_lock_excludes_a_second_holder_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let a = lock_run(tmp.path()).unwrap().expect("first lock");
        assert!(
            lock_run(tmp.path()).unwrap().is_none(),
            "second open file description must not get the lock"
        );
        assert!(lock_held(tmp.path()));
        drop(a);
        assert!(lock_run(tmp.path()).unwrap().is_some());
    }
}
