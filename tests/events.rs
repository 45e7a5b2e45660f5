//! The engine as a library: a run watched by a recording observer tells its stages in
//! order, once each, and its events are exactly what `kdx run --events jsonl` prints.

use std::process::Command;

use kdx_framework::engine::{self, RunOptions};
use kdx_framework::event::{Event, Recorder, RunStatus, TeacherSource};
use kdx_framework::plan::load_plans;
use kdx_framework::stage::Stage;
use kdx_plugins as _;

mod common;
use common::good_recipe;

#[test]
fn a_run_tells_its_stages_in_order_to_any_observer() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("events.toml");
    let text = good_recipe("events");
    std::fs::write(&recipe, text).unwrap();
    let plan = load_plans(&recipe).unwrap().remove(0);
    let opts = RunOptions {
        results: tmp.path().join("lib"),
        resume: false,
        interrupt_after: None,
        lock_held: false,
        stop: None,
    };
    let mut rec = Recorder::default();
    let row = engine::run(&plan, &opts, &mut rec).unwrap();
    assert_eq!(row.status, RunStatus::Ok);

    let events = &rec.events;
    assert!(
        matches!(events.first(), Some(Event::RunStarted { experiment, resume: false, .. }) if experiment == "events")
    );
    assert!(matches!(events.last(), Some(Event::RunFinished { status: RunStatus::Ok, error: None, .. })));
    let stages: Vec<(Stage, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StageStarted { stage, steps, from_step: 0 } => Some((*stage, *steps)),
            _ => None,
        })
        .collect();
    assert_eq!(stages, [(Stage::Teacher, 120), (Stage::Distill, 80), (Stage::Baseline, 80)]);
    let ready: Vec<&Event> = events.iter().filter(|e| matches!(e, Event::TeacherReady { .. })).collect();
    assert!(
        matches!(ready[..], [Event::TeacherReady { source: TeacherSource::Trained, cache: Some(_) }]),
        "{ready:?}"
    );
    // Every step of every stage, in order, then the stage's evaluations at 40 and 80.
    for (stage, steps) in stages {
        let seen: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Step { stage: s, step, .. } if *s == stage => Some(*step),
                _ => None,
            })
            .collect();
        assert_eq!(seen, (1..=steps).collect::<Vec<_>>(), "{stage}");
    }
    let evals: Vec<(Stage, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Evaluated { stage, step, macro_acc, .. } if (0.0..=1.0).contains(macro_acc) => {
                Some((*stage, *step))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        evals.iter().filter(|(s, _)| *s == Stage::Distill).map(|(_, n)| *n).collect::<Vec<_>>(),
        [40, 80]
    );

    // `kdx run --events jsonl` prints the same events (steps aside: rate-limited there).
    let out = Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args([
            "run",
            recipe.to_str().unwrap(),
            "--results",
            tmp.path().join("cli").to_str().unwrap(),
            "--quiet",
            "--events",
            "jsonl",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<Event> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds = |v: &[Event]| -> Vec<String> {
        v.iter()
            .filter(|e| !matches!(e, Event::Step { .. }))
            .map(|e| serde_json::to_value(e).unwrap()["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kinds(&printed), kinds(events));
}

/// A plan is read-only configuration: each run makes its own loss and sampler instances
/// (`Plan::instantiate`), so one plan run twice — with a sampler whose weights move while it
/// trains — writes the same reports both times.
#[test]
fn one_plan_run_twice_writes_the_same_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("twice.toml");
    let text = good_recipe("twice").replace(
        "[sampler]\nplugin = \"temperature\"\ntau = 1.0",
        "[sampler]\nplugin = \"teacher-gap\"\nevery = 20",
    );
    assert!(text.contains("teacher-gap"), "the recipe's sampler was not replaced");
    std::fs::write(&recipe, text).unwrap();
    let plan = load_plans(&recipe).unwrap().remove(0);
    let dirs = ["first", "second"].map(|d| tmp.path().join(d));
    for results in &dirs {
        let opts = RunOptions {
            results: results.clone(),
            resume: false,
            interrupt_after: None,
            lock_held: false,
            stop: None,
        };
        let row = engine::run(&plan, &opts, &mut Recorder::default()).unwrap();
        assert_eq!(row.status, RunStatus::Ok, "{}", row.error);
    }
    // The sampler's weights did move during the run, so a second run that inherited them
    // would start from another distribution than the first did.
    let sampling = std::fs::read_to_string(dirs[0].join("twice/run/sampling.csv")).unwrap();
    let first_lang: Vec<f64> = sampling
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("distill,") && l.split(',').nth(2) == Some("fr"))
        .map(|l| l.split(',').nth(3).unwrap().parse().unwrap())
        .collect();
    assert!(first_lang.len() > 1, "sampling.csv has fewer than two distillation rows for fr:\n{sampling}");
    assert!(first_lang.windows(2).any(|w| w[0] != w[1]), "teacher-gap's weights never moved: {first_lang:?}");
    for f in ["metrics.csv", "sampling.csv", "languages.csv"] {
        let [a, b] = dirs.clone().map(|d| std::fs::read_to_string(d.join("twice/run").join(f)).unwrap());
        assert!(a.len() > 100, "{f} is nearly empty");
        assert_eq!(a, b, "{f} differs between two runs of one plan");
    }
}
