//! `kdx batch` and `kdx report` end to end, on the tiny recipes of tests/batch/ (a good
//! recipe, a sweep of two runs, a recipe whose corpus is missing and one that diverges):
//! failures are isolated, finished runs skipped, shards partition the batch, two batches on
//! one results directory never run a run twice, Ctrl-C leaves resumable runs, and the report
//! prints its table and writes its plots.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kdx::batch::SummaryRow;
use kdx_framework::report::{read_csv, RunRow};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `kdx ARGS` run from the repository root (so recipes are named `tests/batch/…`).
fn kdx_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kdx"));
    c.args(args).current_dir(root()).stdin(Stdio::null());
    c
}

fn kdx(args: &[&str]) -> Output {
    kdx_cmd(args).output().expect("running kdx")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn summary(results: &Path) -> BTreeMap<(String, String), SummaryRow> {
    let rows: Vec<SummaryRow> = read_csv(&results.join("summary.csv")).unwrap();
    let n = rows.len();
    let map: BTreeMap<_, _> = rows.into_iter().map(|r| ((r.recipe.clone(), r.run.clone()), r)).collect();
    assert_eq!(map.len(), n, "one row per (recipe, run)");
    map
}

fn key(recipe: &str, run: &str) -> (String, String) {
    (format!("tests/batch/{recipe}"), run.to_string())
}

/// The runs a batch started itself (its `ok` and `failed` lines, invalid recipes excepted).
fn ran(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| (l.starts_with("ok ") || l.starts_with("failed ")) && !l.contains("invalid recipe"))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

/// Runs listed by `kdx batch --dry-run`, as (action, experiment/run).
fn dry_run(results: &Path, extra: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["batch", "tests/batch", "--dry-run", "--results", results.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = kdx(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let action = w.next()?;
            ["run", "resume", "skip", "invalid"]
                .contains(&action)
                .then(|| (action.to_string(), w.next().unwrap_or_default().to_string()))
        })
        .collect()
}

const VALID_RUNS: [&str; 4] =
    ["batch-diverge/run", "batch-good/run", "batch-sweep/tau=1", "batch-sweep/tau=5"];

#[test]
fn a_batch_isolates_failures_skips_finished_runs_and_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let r = results.to_str().unwrap();

    let out = kdx(&["batch", "tests/batch", "--jobs", "2", "--results", r]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "failed runs make the batch exit 1:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("3 ok, 2 failed"), "{stdout}");

    let rows = summary(&results);
    assert_eq!(rows.len(), 5, "{rows:#?}");
    for (recipe, run) in [("good.toml", "run"), ("sweep.toml", "tau=1"), ("sweep.toml", "tau=5")] {
        let row = &rows[&key(recipe, run)];
        assert_eq!(row.status.as_str(), "ok", "{row:?}");
        assert!(row.student_acc.unwrap() > 0.3 && row.teacher_acc.unwrap() > 0.5, "{row:?}");
        assert!(
            row.baseline_acc.is_some()
                && row.kd_gain.is_some()
                && !row.worst_lang.is_empty()
                && row.compression.unwrap() > 5.0
        );
        let dir = results.join(&row.experiment).join(&row.run);
        let rc: RunRow = read_csv::<RunRow>(&dir.join("run.csv")).unwrap().remove(0);
        assert_eq!(rc.hash, row.hash, "the summary names the run's resolved-recipe hash");
        let svg = std::fs::read_to_string(dir.join("run.svg")).expect("kdx run writes run.svg");
        assert!(svg.contains("<svg") && svg.contains("learning curves"));
    }
    assert_eq!(rows[&key("sweep.toml", "tau=5")].params, "sampler.tau=5.0");
    assert_eq!(rows[&key("good.toml", "run")].params, "");
    let missing = &rows[&key("missing-corpus.toml", "run")];
    assert_eq!(missing.status.as_str(), "failed");
    assert!(
        missing.error.contains("missing-corpus.toml:") && missing.error.contains("does not exist"),
        "{}",
        missing.error
    );
    let diverged = &rows[&key("diverge.toml", "run")];
    assert_eq!(diverged.status.as_str(), "failed");
    assert!(diverged.error.contains("diverged at step"), "{}", diverged.error);

    // The four runs share one teacher: one run trains it, the others wait and load it.
    let logs: Vec<String> = VALID_RUNS
        .iter()
        .map(|r| std::fs::read_to_string(results.join(r).join("batch.log")).unwrap())
        .collect();
    let loaded = logs.iter().filter(|l| l.contains("teacher: loaded from cache")).count();
    assert_eq!(loaded, 3, "the teacher is trained once:\n{}", logs.join("\n----\n"));
    // The same, from the children's typed events as the summary records them.
    let teachers: Vec<&str> =
        [("good.toml", "run"), ("sweep.toml", "tau=1"), ("sweep.toml", "tau=5"), ("diverge.toml", "run")]
            .iter()
            .map(|(recipe, run)| rows[&key(recipe, run)].teacher.as_str())
            .collect();
    let mut sorted = teachers.clone();
    sorted.sort();
    assert_eq!(sorted, ["cache", "cache", "cache", "trained"], "teacher column of summary.csv: {teachers:?}");
    assert_eq!(missing.teacher, "", "a run that never got a teacher");
    assert!(
        logs.iter().all(|l| l.contains(r#"event: {"type":"run_finished""#)),
        "batch.log keeps the child's events"
    );

    // A second batch skips what is done (failed runs are tried again).
    let again = kdx(&["batch", "tests/batch", "--jobs", "2", "--results", r]);
    let stdout2 = text(&again.stdout);
    assert!(stdout2.contains("0 ok, 2 failed, 0 interrupted, 3 skipped"), "{stdout2}");
    let rows2 = summary(&results);
    assert_eq!(rows2.len(), 5);
    let good = &rows2[&key("good.toml", "run")];
    assert_eq!(good.status.as_str(), "skipped");
    assert_eq!(
        good.student_acc,
        rows[&key("good.toml", "run")].student_acc,
        "a skipped row keeps the results"
    );
    let dry = dry_run(&results, &[]);
    assert_eq!(dry.iter().filter(|(a, _)| a == "skip").count(), 3, "{dry:?}");

    // The report: a table per run and language, CSV, and SVG plots.
    let rep = kdx(&["report", r]);
    assert!(rep.status.success(), "{}", text(&rep.stderr));
    let table = text(&rep.stdout);
    for needle in [
        "teacher",
        "student",
        "baseline",
        "KD gain",
        "batch-good/run",
        "batch-sweep/tau=5",
        "batch-diverge/run",
        "failed",
        "macro",
    ] {
        assert!(table.contains(needle), "`{needle}` missing from:\n{table}");
    }
    for lang in ["fr", "de", "ru", "cy", "is", "fo"] {
        assert!(
            table.lines().any(|l| l.trim_start().starts_with(&format!("{lang} "))),
            "no line for {lang}:\n{table}"
        );
    }
    let plots = results.join("report");
    for run in ["batch-good/run", "batch-sweep/tau=1", "batch-sweep/tau=5"] {
        for f in ["curves.svg", "languages.svg", "sampling.svg"] {
            let svg =
                std::fs::read_to_string(plots.join(run).join(f)).unwrap_or_else(|e| panic!("{run}/{f}: {e}"));
            assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{run}/{f}");
        }
    }
    let sweep = std::fs::read_to_string(plots.join("batch-sweep/sweep.svg")).unwrap();
    assert!(sweep.contains("tau") && sweep.contains("worst-language accuracy"));
    let languages = std::fs::read_to_string(plots.join("batch-good/run/languages.svg")).unwrap();
    assert!(
        languages.contains("fo (") && languages.contains("baseline"),
        "bars are labelled with language and size"
    );

    let csv = kdx(&["report", r, "--csv", "--no-plots"]);
    let csv = text(&csv.stdout);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("experiment,run,status,lang,train_size,teacher_acc,student_acc,baseline_acc,kd_gain")
    );
    let body: Vec<&str> = lines.collect();
    assert_eq!(
        body.len(),
        3 * 7 + 1,
        "6 languages + macro for each finished run, macro for the failed one:\n{csv}"
    );
}

#[test]
fn shards_split_a_batch_into_disjoint_parts_that_make_the_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let whole: BTreeSet<String> = dry_run(&results, &[]).into_iter().map(|(_, r)| r).collect();
    assert_eq!(whole.len(), 5, "{whole:?}");
    for n in [2, 3] {
        let mut union = BTreeSet::new();
        for k in 0..n {
            for (_, run) in dry_run(&results, &["--shard", &format!("{k}/{n}")]) {
                assert!(union.insert(run.clone()), "{run} is in two shards of {n}");
            }
        }
        assert_eq!(union, whole, "the shards of {n} make the whole batch");
    }
    assert!(!results.exists(), "a dry run writes nothing");
    let bad = kdx(&["batch", "tests/batch", "--shard", "2/2", "--dry-run"]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("shards are numbered 0 to 1"), "{}", text(&bad.stderr));
}

#[test]
fn two_batches_on_one_results_directory_never_run_a_run_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let r = results.to_str().unwrap();
    let a = kdx_cmd(&["batch", "tests/batch", "--results", r])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = kdx_cmd(&["batch", "tests/batch", "--results", r])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (sa, sb) = (text(&a.stdout), text(&b.stdout));
    let mut did: Vec<String> = ran(&sa);
    did.extend(ran(&sb));
    did.sort();
    assert_eq!(did, VALID_RUNS.to_vec(), "each run is run by exactly one batch:\n--- a:\n{sa}\n--- b:\n{sb}");
    for run in VALID_RUNS {
        let log = std::fs::read_to_string(results.join(run).join("batch.log")).unwrap();
        assert_eq!(log.matches("==== kdx batch").count(), 1, "{run} started once:\n{log}");
    }
    let rows = summary(&results);
    assert_eq!(rows.len(), 5);
    // A run finished by one batch may be found up to date by the other, which then records
    // it as skipped: either way it was run once (checked above).
    assert_eq!(
        rows.values().filter(|r| r.status.as_str() == "ok" || r.status.as_str() == "skipped").count(),
        3,
        "{rows:#?}"
    );
}

#[test]
fn ctrl_c_stops_the_runs_and_the_next_batch_resumes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recipes");
    std::fs::create_dir_all(&dir).unwrap();
    // Long enough to be interrupted: the student checkpoints every 20 steps.
    let recipe = common::good_recipe("batch-long")
        .replace("steps = 80", "steps = 50000")
        .replace("eval_every = 40", "eval_every = 20");
    std::fs::write(dir.join("long.toml"), recipe).unwrap();
    let results = tmp.path().join("results");
    let mut child = kdx_cmd(&["batch", dir.to_str().unwrap(), "--results", results.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a second student evaluation: the first one's checkpoint is then on disk.
    let log = results.join("batch-long/run/batch.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("[distill] step 40:") {
        assert!(started.elapsed() < Duration::from_secs(120), "the run never reached step 40");
        assert!(child.try_wait().unwrap().is_none(), "the batch ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("interrupted batch-long/run"), "{stdout}");
    let rows: Vec<SummaryRow> = read_csv(&results.join("summary.csv")).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status.as_str(), "interrupted");
    // The batch stopped its child as a signal stops `kdx run`: it checkpointed the step it
    // was in, past every step it reported, so its resume redoes none.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let own: Vec<RunRow> = read_csv(&results.join("batch-long/run/run.csv"))
        .expect("the child's own run.csv (a killed child writes none)");
    assert_eq!(own[0].status.as_str(), "interrupted");
    let saved = events.iter().rev().find(|e| e["type"] == "checkpointed").expect("a checkpointed event");
    let done = events
        .iter()
        .filter(|e| e["type"] == "step" && e["stage"] == "distill")
        .map(|e| e["step"].as_u64().unwrap())
        .max();
    assert!(
        saved["stage"] == "distill" && done.is_some_and(|d| saved["step"].as_u64().unwrap() >= d),
        "{saved} after step {done:?}"
    );
    // The child is gone: its run is not locked any more, and the next batch resumes it.
    let dry = kdx(&["batch", dir.to_str().unwrap(), "--results", results.to_str().unwrap(), "--dry-run"]);
    let dry = text(&dry.stdout);
    assert!(dry.starts_with("resume   batch-long/run"), "{dry}");
}

/// `kill -9` of a batch takes its running child with it (its lock goes with it too), so no
/// orphan keeps training a run that the next batch would start again.
#[cfg(target_os = "linux")]
#[test]
fn a_killed_batch_takes_its_children_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("recipes");
    std::fs::create_dir_all(&dir).unwrap();
    let text = common::good_recipe("orphan")
        .replace("steps = 80\nbatch = 64\neval_every = 40", "steps = 200000\nbatch = 64\neval_every = 1000");
    std::fs::write(dir.join("long.toml"), text).unwrap();
    let results = tmp.path().join("results");
    let mut batch = Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(["batch", dir.to_str().unwrap(), "--results", results.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The child `kdx run`, once the batch has started it.
    let children = format!("/proc/{0}/task/{0}/children", batch.id());
    let started = Instant::now();
    let child: u32 = loop {
        let pids = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = pids.split_whitespace().next().and_then(|p| p.parse().ok()) {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the batch started no child");
        std::thread::sleep(Duration::from_millis(50));
    };
    batch.kill().unwrap();
    batch.wait().unwrap();
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
    };
    let killed = Instant::now();
    while !gone(child) {
        assert!(killed.elapsed() < Duration::from_secs(10), "child {child} outlived its batch");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its run is free for the next batch (the lock goes when its last holder has exited).
    let free = Instant::now();
    while kdx_framework::engine::lock_run(&results.join("orphan/run")).unwrap().is_none() {
        assert!(free.elapsed() < Duration::from_secs(10), "the run's lock outlived the batch and its child");
        std::thread::sleep(Duration::from_millis(50));
    }
}
