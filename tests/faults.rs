//! Faults and bad input, end to end: every case here once crashed kdx, wrote outside
//! `results/`, or ended "ok" with a wrong result. Each now gives a clear error (or heals).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kdx_framework::report::{read_csv, MetricRow, RunRow};

mod common;
use common::good_recipe;

/// The tiny recipe of tests/batch/good.toml under another experiment name, with `replace`
/// applied to its text, written to `dir`.
fn recipe(dir: &Path, name: &str, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = good_recipe(name);
    for (a, b) in replace {
        assert!(text.contains(a), "`{a}` not in the recipe");
        text = text.replace(a, b);
    }
    let p = dir.join(format!("{}.toml", name.replace(['/', '.'], "_")));
    std::fs::write(&p, text).unwrap();
    p
}

fn kdx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdx")).args(args).stdin(Stdio::null()).output().expect("running kdx")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(recipe: &Path, results: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", recipe.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    kdx(&args)
}

fn no_panic(out: &Output) {
    let err = text(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "kdx panicked:\n{err}");
}

#[test]
fn experiment_names_cannot_leave_the_results_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("run/checkpoints")).unwrap();
    std::fs::write(outside.join("run/checkpoints/keep.txt"), "precious").unwrap();
    for bad in
        [outside.display().to_string(), "../outside".to_string(), ".cache".to_string(), "a/b".to_string()]
    {
        let r = recipe(tmp.path(), "x", &[("name = \"x\"", &format!("name = {bad:?}"))]);
        let v = kdx(&["validate", r.to_str().unwrap()]);
        let err = text(&v.stderr);
        assert!(!v.status.success() && err.contains(":5:1: experiment.name:"), "{bad}: {err}");
        let results = tmp.path().join("results");
        let out = run(&r, &results, &[]);
        assert!(!out.status.success());
        no_panic(&out);
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("run/checkpoints/keep.txt")).unwrap(),
        "precious",
        "nothing outside was deleted"
    );
    assert!(
        !tmp.path().join("results").exists()
            || std::fs::read_dir(tmp.path().join("results")).unwrap().count() == 0
    );
}

#[test]
fn learning_rates_must_be_positive_and_loss_weights_not_negative() {
    let tmp = tempfile::tempdir().unwrap();
    for (from, to, want) in [
        ("lr = 2e-2, weight_decay", "lr = 0.0, weight_decay", "train.optimizer.lr: the learning rate must be a positive number, found 0"),
        ("lr = 2e-2 } }", "lr = -1.0 } }", "teacher.train.optimizer.lr: the learning rate must be a positive number, found -1"),
        (
            "weight = 0.7",
            "weight = -0.5",
            "loss[0].weight: a loss weight must be a number of at least 0 (0 switches the term off), found -0.5",
        ),
        (
            "weight = 0.3",
            "weight = { kind = \"linear\", start = 1.0, end = -1.0 }",
            "loss[1].weight: a loss weight must be a number of at least 0 (0 switches the term off); `end` is -1",
        ),
    ] {
        let r = recipe(tmp.path(), "w", &[(from, to)]);
        let v = kdx(&["validate", r.to_str().unwrap()]);
        let err = text(&v.stderr);
        assert!(!v.status.success() && err.contains(want), "expected `{want}`:\n{err}");
    }
    // A warm-up from 0 is a weight that starts off: fine.
    let r = recipe(
        tmp.path(),
        "w",
        &[("weight = 0.3", "weight = { kind = \"linear\", start = 0.0, end = 1.0 }")],
    );
    assert!(kdx(&["validate", r.to_str().unwrap()]).status.success());
}

/// A loss of weight 0 is switched off, not computed: the run trains exactly as the recipe
/// without that `[[loss]]`, so an ablation needs no 0.001 stand-in.
#[test]
fn a_loss_of_weight_zero_is_an_exact_ablation() {
    let tmp = tempfile::tempdir().unwrap();
    let off = recipe(tmp.path(), "ablation", &[("weight = 0.7", "weight = 0.0")]);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let out = run(&off, &a, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let without = recipe(
        tmp.path(),
        "ablation",
        &[("[[loss]]\nplugin = \"soft-kl\"\nweight = 0.7\ntemperature = 2.0\n", "")],
    );
    let out = run(&without, &b, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in ["languages.csv", "metrics.csv", "sampling.csv"] {
        let x = std::fs::read_to_string(a.join("ablation/run").join(f)).unwrap();
        let y = std::fs::read_to_string(b.join("ablation/run").join(f)).unwrap();
        assert!(x == y, "{f} differs between soft-kl at weight 0 and no soft-kl");
    }
}

#[test]
fn checkpoints_resume_only_the_recipe_that_wrote_them_and_only_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let r = recipe(tmp.path(), "ckpt", &[]);
    // Teacher (120 steps) and 50 distillation steps: stops at the distillation checkpoint 40… 80.
    let out = run(&r, &results, &["--interrupt-after", "170"]);
    assert!(!out.status.success());
    let ckpt = results.join("ckpt/run/checkpoints/distill.safetensors");
    assert!(ckpt.exists());
    let files: Vec<String> = std::fs::read_dir(ckpt.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // The teacher's checkpoint went when the teacher was cached (the cache holds it).
    assert_eq!(
        files,
        vec!["distill.safetensors"],
        "one file per checkpoint: weights and loop state together"
    );

    // The recipe changed since: refused, with the way out, and before anything is written
    // (the run's recipe.toml is still the one its checkpoints belong to).
    let recorded = std::fs::read(results.join("ckpt/run/recipe.toml")).unwrap();
    let edited = recipe(tmp.path(), "ckpt", &[("temperature = 2.0", "temperature = 3.0")]);
    let out = run(&edited, &results, &["--resume"]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("was written by another recipe")
            && err.contains("run without --resume"),
        "{err}"
    );
    no_panic(&out);
    assert_eq!(
        std::fs::read(results.join("ckpt/run/recipe.toml")).unwrap(),
        recorded,
        "a refused resume rewrote recipe.toml"
    );
    let r = recipe(tmp.path(), "ckpt", &[]);

    // A damaged checkpoint: refused, never loaded, never a crash.
    let bytes = std::fs::read(&ckpt).unwrap();
    for at in [bytes.len() / 2, bytes.len() - 3] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        std::fs::write(&ckpt, &bad).unwrap();
        let out = run(&r, &results, &["--resume"]);
        let err = text(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("cannot resume from")
                && err.contains("run without --resume"),
            "{err}"
        );
        no_panic(&out);
    }
    std::fs::write(&ckpt, &bytes).unwrap();
    let out = run(&r, &results, &["--resume"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_damaged_teacher_cache_is_rebuilt_and_a_cached_teacher_keeps_its_dev_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let r = recipe(tmp.path(), "cache", &[]);
    assert!(run(&r, &results, &[]).status.success());
    let metrics = |results: &Path| read_csv::<MetricRow>(&results.join("cache/run/metrics.csv")).unwrap();
    let first = metrics(&results);
    assert!(first.iter().any(|m| m.stage == "teacher" && m.split == "dev"));
    let cache = std::fs::read_dir(results.join(".cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("teacher-"));
    let cache = cache.unwrap();
    let weights = cache.join("teacher.safetensors");
    // What a writer killed mid-write left in the shared cache (a pid above any the kernel gives) is
    // removed by the next run.
    let stale = cache.join(".teacher.safetensors.tmp4194305-00000000deadbeef");
    std::fs::write(&stale, "half").unwrap();
    // From the cache: the same metrics.csv, teacher dev rows included.
    assert!(run(&r, &results, &[]).status.success());
    assert_eq!(metrics(&results), first);
    assert!(!stale.exists(), "a dead writer's temporary is still in the teacher cache");
    let row: RunRow = read_csv::<RunRow>(&results.join("cache/run/run.csv")).unwrap().remove(0);
    assert!(row.teacher_cached);
    // Damaged: reported, trained again, and the run is the same.
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    std::fs::write(&weights, &bytes).unwrap();
    let out = kdx(&["run", r.to_str().unwrap(), "--results", results.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(
        out.status.success()
            && err.contains("the cache is unusable")
            && err.contains("training the teacher again"),
        "{err}"
    );
    let row: RunRow = read_csv::<RunRow>(&results.join("cache/run/run.csv")).unwrap().remove(0);
    assert!(!row.teacher_cached);
    assert_eq!(metrics(&results), first);
}

#[test]
fn one_run_directory_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let r = recipe(tmp.path(), "busy", &[]);
    let mut first = Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(["run", r.to_str().unwrap(), "--results", results.to_str().unwrap(), "--events", "jsonl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first run has started (its first event), then try a second.
    let mut stdout = first.stdout.take().unwrap();
    let mut buf = [0u8; 1];
    stdout.read_exact(&mut buf).unwrap();
    let out = run(&r, &results, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("is in use by another kdx process"), "{err}");
    drop(stdout);
    let _ = first.wait();
}

#[test]
fn a_closed_pipe_ends_kdx_quietly() {
    // `kdx plugins | head -1`: the reader goes away; kdx must neither panic nor complain.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(["plugins"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    no_panic(&out);
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        // Whatever it had left to print went nowhere; it ended as a Unix tool does, or cleanly.
        assert!(out.status.success() || out.status.signal() == Some(13), "{:?}", out.status);
    }
}

/// The stage of the last `stage_started` event in a run's JSON events.
fn last_stage(events: &str) -> Option<String> {
    events
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["type"] == "stage_started")
        .map(|e| e["stage"].as_str().unwrap_or_default().to_string())
}

/// Kills a run with SIGKILL at random points of every stage, resumes it each time, and
/// checks that it ends with the very CSVs of an uninterrupted run, byte for byte.
#[test]
fn a_run_killed_anywhere_resumes_to_the_same_csvs() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(
        tmp.path(),
        "crash",
        &[
            ("train = { steps = 120,", "train = { steps = 30,"),
            ("steps = 80\nbatch = 64\neval_every = 40", "steps = 80\nbatch = 64\neval_every = 10"),
        ],
    );
    let mut body = std::fs::read_to_string(&r).unwrap();
    body.push_str("\n[finetune]\nsteps = 40\nbatch = 32\neval_every = 10\nlanguages = [\"cy\", \"is\"]\n");
    std::fs::write(&r, body).unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert!(run(&r, &a, &[]).status.success());

    // A seeded generator: the kill points are random but the same at every run of the test.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |lo: u64, hi: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        lo + state % (hi - lo + 1)
    };
    // Steps: teacher 30 (not checkpointed: a kill in it trains it again), then distill 80,
    // fine-tune 40 and baseline 80, checkpointed every 10. The first kill lands in the
    // teacher; after that each process runs past at least one new checkpoint, so the run
    // always gets further.
    let mut kills: Vec<(u64, String)> = Vec::new();
    let first = next(5, 25);
    let mut plan = vec![next(35, 45), first];
    loop {
        let k = plan.pop().unwrap_or_else(|| next(11, 24));
        let resume: &[&str] = if kills.is_empty() { &[] } else { &["--resume"] };
        let mut args = vec![
            "run",
            r.to_str().unwrap(),
            "--results",
            b.to_str().unwrap(),
            "--quiet",
            "--events",
            "jsonl",
        ];
        args.extend_from_slice(resume);
        let k_text = k.to_string();
        args.extend_from_slice(&["--kill-after-steps", &k_text]);
        let out = kdx(&args);
        no_panic(&out);
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if out.status.signal() != Some(9) {
                // It ran to its end before its kill point came: the run is complete.
                assert!(out.status.success(), "{}", text(&out.stderr));
                break;
            }
        }
        kills.push((k, last_stage(&text(&out.stdout)).unwrap_or_default()));
        assert!(kills.len() < 60, "no progress: {kills:?}");
    }
    eprintln!("{} kills (steps run before each, stage): {kills:?}", kills.len());
    let stages: std::collections::BTreeSet<&str> = kills.iter().map(|(_, s)| s.as_str()).collect();
    assert!(kills.len() >= 10, "only {} kills: {kills:?}", kills.len());
    assert_eq!(
        stages.into_iter().collect::<Vec<_>>(),
        ["baseline", "distill", "finetune", "teacher"],
        "{kills:?}"
    );
    for f in ["languages.csv", "metrics.csv", "sampling.csv"] {
        let x = std::fs::read_to_string(a.join("crash/run").join(f)).unwrap();
        let y = std::fs::read_to_string(b.join("crash/run").join(f)).unwrap();
        assert!(x == y, "{f} differs after {} kills ({kills:?})", kills.len());
    }
    let (x, y) = (
        read_csv::<RunRow>(&a.join("crash/run/run.csv")).unwrap(),
        read_csv::<RunRow>(&b.join("crash/run/run.csv")).unwrap(),
    );
    let same = |r: &RunRow| {
        (
            r.teacher_macro_acc,
            r.student_macro_acc,
            r.baseline_macro_acc,
            r.kd_gain,
            r.retention,
            r.worst_acc,
            r.teacher_params,
            r.student_params,
        )
    };
    assert_eq!(same(&x[0]), same(&y[0]));
    assert_eq!(y[0].status.as_str(), "ok");
}

/// `--threads` is checked against the machine before anything starts: 0 is refused, more
/// than the machine's cores is clamped to them with a warning (it used to start thousands of
/// threads and never finish).
#[test]
fn threads_beyond_the_machine_are_clamped_and_zero_is_refused() {
    let out = kdx(&["run", "no-such-recipe.toml", "--threads", "0"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("--threads must be at least 1")
    );
    let out = kdx(&["run", "no-such-recipe.toml", "--threads", "100000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(
        err.contains(&format!(
            "--threads 100000 is more than the {cores} cores this machine has; using {cores}"
        )),
        "{err}"
    );
    assert!(err.contains("no-such-recipe.toml"), "then the run goes on (here: to the missing recipe): {err}");
}

/// SIGTERM (what Slurm and batch systems send) in the distill stage: the run finishes the
/// step it is in, checkpoints it — between two evaluations —, records `interrupted` and exits
/// 143; `--resume` continues from that very step and ends with the CSVs of a run that was
/// never stopped, byte for byte.
#[test]
fn sigterm_checkpoints_the_current_step_and_the_resumed_run_is_exact() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(
        tmp.path(),
        "term",
        &[
            ("train = { steps = 120,", "train = { steps = 3000, eval_every = 1000,"),
            ("steps = 80\nbatch = 64\neval_every = 40", "steps = 3000\nbatch = 64\neval_every = 1000"),
        ],
    );
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert!(run(&r, &a, &[]).status.success());
    let event = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap();
    let step_of = |e: &serde_json::Value| e["step"].as_u64().unwrap();
    // Five signals, each to the run the previous one left: twice while the teacher
    // pre-trains, three times while the student distills, each as the stage (re)starts.
    let points = ["teacher", "teacher", "distill", "distill", "distill"];
    let mut last: Option<(&str, u64)> = None;
    for (k, &stage) in points.iter().enumerate() {
        let mut args = vec![
            "run",
            r.to_str().unwrap(),
            "--results",
            b.to_str().unwrap(),
            "--quiet",
            "--events",
            "jsonl",
        ];
        if k > 0 {
            args.push("--resume");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_kdx"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen_events = Vec::new();
        let seen = loop {
            let Some(line) = lines.next() else {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!(
                    "signal {k}: the run ended before its {stage} stage started: {:?}\n{err}",
                    child.wait()
                );
            };
            let e = event(&line.unwrap());
            seen_events.push(e.clone());
            if e["type"] == "stage_started" && e["stage"] == stage {
                break e["from_step"].as_u64().unwrap();
            }
        };
        // SAFETY: a plain kill(2) of the child this test spawned.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        seen_events.extend(lines.map(|l| event(&l.unwrap())));
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(143), "signal {k}: exit status of a run stopped by SIGTERM");
        // Resumed where the last signal left it: at the step its checkpoint recorded, not at
        // the last evaluation's, so no step is done twice.
        if let Some((stage, step)) = last {
            let from = seen_events
                .iter()
                .find(|e| e["type"] == "stage_started" && e["stage"] == stage)
                .map(|e| e["from_step"].clone());
            assert_eq!(
                from,
                Some(step.into()),
                "signal {k}: the {stage} stage resumed from {from:?}, its checkpoint was at {step}"
            );
        }
        let finished =
            seen_events.iter().find(|e| e["type"] == "run_finished").expect("a run_finished event");
        assert_eq!(finished["status"], "interrupted");
        let row: RunRow = read_csv::<RunRow>(&b.join("term/run/run.csv")).unwrap().remove(0);
        assert_eq!(row.status.as_str(), "interrupted");
        let saved =
            seen_events.iter().rev().find(|e| e["type"] == "checkpointed").expect("a checkpointed event");
        assert_eq!(saved["stage"], stage, "signal {k}");
        let at = step_of(saved);
        assert!(
            at > seen && at % 1000 != 0,
            "signal {k}: checkpointed at step {at} of {stage}, which started at step {seen}"
        );
        assert!(b.join(format!("term/run/checkpoints/{stage}.safetensors")).is_file());
        last = Some((stage, at));
    }
    let out = run(&r, &b, &["--resume", "--events", "jsonl"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stage, step) = last.unwrap();
    let from = text(&out.stdout)
        .lines()
        .map(event)
        .find(|e| e["type"] == "stage_started" && e["stage"] == stage)
        .map(|e| e["from_step"].clone());
    assert_eq!(from, Some(step.into()));
    for f in ["languages.csv", "metrics.csv", "sampling.csv"] {
        let x = std::fs::read_to_string(a.join("term/run").join(f)).unwrap();
        let y = std::fs::read_to_string(b.join("term/run").join(f)).unwrap();
        assert!(x == y, "{f} differs after five SIGTERMs and --resume");
    }
}

/// Runs `kdx args…` with `stdin` as its standard input and output to `stdout`; returns its
/// exit status and its peak resident memory in MiB (`wait4`'s own accounting of this child).
fn peak_rss(args: &[&str], stdin: &Path, stdout: &Path) -> (i32, f64) {
    // Reaped by wait4 below, not by `Child::wait`: wait4 reports this child's own peak.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(args)
        .stdin(std::fs::File::open(stdin).unwrap())
        .stdout(std::fs::File::create(stdout).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // SAFETY: `rusage` is plain integers, for which all zero bytes is a valid value.
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for the child this test spawned (and never waits for it again).
    assert_eq!(unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) }, child.id() as i32);
    (libc::WEXITSTATUS(status), usage.ru_maxrss as f64 / 1024.0)
}

/// `kdx predict` and `kdx embed` read, predict and write a chunk at a time: their memory
/// does not follow the input (50 MB of text took 1.2 and 5.0 GB), and a line without end is
/// an error at its number, not the whole file in memory.
#[test]
fn predict_and_embed_stream_in_bounded_memory_and_refuse_endless_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let r = recipe(tmp.path(), "stream", &[]);
    assert!(run(&r, &results, &[]).status.success());
    let model = results.join("stream/run");
    // 64 MiB of short lines in six scripts: more than the bound below, so a reader that
    // holds its input cannot pass.
    // (This process never holds the file: a child started by vfork inherits its parent's
    // peak in the count wait4 reports.)
    let big = tmp.path().join("big.txt");
    let mut lines = 0usize;
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let words = ["bonjour le monde", "guten Tag", "привет мир", "helló", "Góðan dag", "Prynhawn da"];
        let mut n = 0usize;
        while n < 64 << 20 {
            let line = format!("{} {lines}\n", words[lines % words.len()]);
            f.write_all(line.as_bytes()).unwrap();
            n += line.len();
            lines += 1;
        }
    }
    let count = |p: &Path| {
        use std::io::BufRead;
        std::io::BufReader::new(std::fs::File::open(p).unwrap()).lines().count()
    };
    let bound = 48.0;
    let (code, mb) = peak_rss(&["predict", model.to_str().unwrap()], &big, &tmp.path().join("labels.txt"));
    assert_eq!(code, 0);
    assert_eq!(count(&tmp.path().join("labels.txt")), lines);
    assert!(mb < bound, "kdx predict on 64 MiB of text peaked at {mb:.0} MiB (bound {bound})");
    let npy = tmp.path().join("vectors.npy");
    let (code, mb) = peak_rss(
        &["embed", model.to_str().unwrap(), "-o", npy.to_str().unwrap()],
        &big,
        &tmp.path().join("none.txt"),
    );
    assert_eq!(code, 0);
    assert!(mb < bound, "kdx embed on 64 MiB of text peaked at {mb:.0} MiB (bound {bound})");
    // The .npy's header, written last, holds every row.
    let mut head = [0u8; 128];
    std::fs::File::open(&npy).unwrap().read_exact(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head);
    assert!(head.contains(&format!("'shape': ({lines}, ")), "{head}");

    // A line without end: refused at its number, quickly, with the output left as it was.
    let endless = tmp.path().join("endless.txt");
    std::fs::write(&endless, "fine\n".to_string() + &"x".repeat(3 << 20)).unwrap();
    std::fs::write(&npy, "old").unwrap();
    for args in [
        vec!["predict", model.to_str().unwrap()],
        vec!["embed", model.to_str().unwrap(), "-o", npy.to_str().unwrap()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kdx"))
            .args(&args)
            .stdin(std::fs::File::open(&endless).unwrap())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(
            !out.status.success() && err.contains("stdin:2: a line longer than 1048576 bytes"),
            "{args:?}: {err}"
        );
        no_panic(&out);
    }
    assert_eq!(std::fs::read(&npy).unwrap(), b"old");
    let labelled = tmp.path().join("labelled.tsv");
    std::fs::write(&labelled, "fr\tbonjour\nde\t".to_string() + &"x".repeat(3 << 20)).unwrap();
    let out = kdx(&["eval", model.to_str().unwrap(), "--data", labelled.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("labelled.tsv:2: a line longer than"), "{err}");
    let out = kdx(&["embed", model.to_str().unwrap(), "/dev/zero"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("/dev/zero:1: a line longer than"),
        "{}",
        text(&out.stderr)
    );
}
