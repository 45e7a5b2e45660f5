//! End-to-end runs of the `kdx` binary on a small slice of the shipped corpus: training
//! really trains, the reports agree with each other, the same seed gives the same CSVs,
//! a resumed run equals an uninterrupted one, the teacher cache hits, divergence is caught.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::de::DeserializeOwned;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/gettext-corpus.tsv.gz")
}

/// A small but real recipe: 6 languages (two of them confusable), a small teacher and a
/// 16× smaller student.
fn recipe(dir: &Path, name: &str, extra_train: &str) -> PathBuf {
    let text = format!(
        r#"
[experiment]
name = "{name}"
seed = 5

[data]
plugin = "gettext-lid"
corpus = "{corpus}"
languages = ["de", "fr", "ru", "ja", "pt", "pt_BR"]
max_train_per_language = 1500

[teacher]
plugin = "ngram-mlp"
ngrams = [1, 3]
buckets = 16384
dim = 16
train = {{ steps = 300, batch = 64, optimizer = {{ kind = "adam", lr = 2e-2 }} }}

[student]
plugin = "ngram-mlp"
ngrams = [1, 2]
buckets = 1024
dim = 8
hidden = [16]

[[loss]]
plugin = "soft-kl"
weight = 0.7
temperature = 2.0

[[loss]]
plugin = "hard-ce"
weight = 0.3

[train]
steps = 120
batch = 64
eval_every = 40
optimizer = {{ kind = "adamw", lr = 2e-2, weight_decay = 0.01 }}
{extra_train}
"#,
        corpus = corpus().display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn kdx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kdx")).args(args).output().expect("running kdx")
}

fn read<T: DeserializeOwned>(p: &Path) -> Vec<T> {
    kdx_framework::report::read_csv(p).unwrap_or_else(|e| panic!("{e}"))
}

use kdx_framework::report::{LanguageRow, MetricRow, RunRow};

fn run_ok(recipe: &Path, results: &Path, extra: &[&str]) -> RunRow {
    let mut args = vec!["run", recipe.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    let out = kdx(&args);
    assert!(out.status.success(), "kdx run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let name = recipe.file_stem().unwrap().to_str().unwrap();
    read::<RunRow>(&results.join(name).join("run/run.csv")).remove(0)
}

#[test]
fn a_small_run_trains_and_its_reports_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "small", "");
    let results = tmp.path().join("results");
    let row = run_ok(&r, &results, &[]);
    let dir = results.join("small/run");
    // Six classes: chance is 1/6. Both models must be far above it.
    assert!(row.teacher_macro_acc > 0.85, "teacher {}", row.teacher_macro_acc);
    assert!(row.student_macro_acc > 0.7, "student {}", row.student_macro_acc);
    assert!(row.baseline_macro_acc.unwrap() > 0.5);
    assert_eq!(row.status, "ok");
    assert!(row.compression > 10.0, "compression {}", row.compression);
    assert_eq!(row.teacher_params, 16384 * 16 + 16 * 6 + 6);
    assert_eq!(row.student_params, 1024 * 8 + 8 * 16 + 16 + 16 * 6 + 6);

    let langs: Vec<LanguageRow> = read(&dir.join("languages.csv"));
    assert_eq!(langs.len(), 6);
    let mean = |f: &dyn Fn(&LanguageRow) -> f64| langs.iter().map(f).sum::<f64>() / langs.len() as f64;
    assert!((mean(&|r| r.student_acc) - row.student_macro_acc).abs() < 1e-9);
    assert!((mean(&|r| r.teacher_acc) - row.teacher_macro_acc).abs() < 1e-9);
    assert!((mean(&|r| r.kd_gain.unwrap()) - row.kd_gain.unwrap()).abs() < 1e-9);
    assert_eq!(langs.iter().map(|r| r.sampled).sum::<u64>(), 120 * 64, "every drawn example is counted once");
    assert!(langs.iter().all(|r| r.train_size <= 1500 && r.train_size > 1000));

    let metrics: Vec<MetricRow> = read(&dir.join("metrics.csv"));
    for stage in ["teacher", "distill", "baseline"] {
        let test: Vec<&MetricRow> = metrics.iter().filter(|m| m.stage == stage && m.split == "test").collect();
        assert_eq!(test.len(), 7, "{stage}: 6 languages + macro");
        let per_lang: Vec<&&MetricRow> = test.iter().filter(|m| m.lang != "macro").collect();
        let macro_row = test.iter().find(|m| m.lang == "macro").unwrap();
        assert_eq!(per_lang.iter().map(|m| m.examples).sum::<usize>(), macro_row.examples);
        let m = per_lang.iter().map(|m| m.acc).sum::<f64>() / 6.0;
        assert!((m - macro_row.acc).abs() < 1e-9);
    }
    // Periodic dev evaluations at 40, 80, 120 for the student stages.
    let dev_steps: Vec<u64> =
        metrics.iter().filter(|m| m.stage == "distill" && m.split == "dev" && m.lang == "macro").map(|m| m.step).collect();
    assert_eq!(dev_steps, vec![40, 80, 120]);
    assert!(dir.join("sampling.csv").exists());
    assert!(dir.join("student.safetensors").exists() && dir.join("student.json").exists());

    // The exported student is usable on its own.
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, "Datei konnte nicht geöffnet werden\nImpossible d'ouvrir le fichier\n").unwrap();
    let out = kdx(&["predict", dir.to_str().unwrap(), input.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let labels: Vec<&str> = text.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(labels, vec!["de", "fr"], "{text}");

    // Second run: the teacher comes from the cache and nothing else changes.
    let row2 = run_ok(&r, &results, &[]);
    assert!(row2.teacher_cached && !row.teacher_cached);
    assert_eq!(row2.teacher_macro_acc, row.teacher_macro_acc);
    assert_eq!(row2.student_macro_acc, row.student_macro_acc);
}

#[test]
fn same_seed_same_csvs_and_resume_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "resume", "");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    run_ok(&r, &a, &[]);
    // Interrupt after 350 training steps: the teacher's 300 and 50 of distillation, so the
    // stop lands at the distillation checkpoint at step 80.
    let out = kdx(&["run", r.to_str().unwrap(), "--results", b.to_str().unwrap(), "--quiet", "--interrupt-after", "350"]);
    assert!(!out.status.success());
    let row: RunRow = read::<RunRow>(&b.join("resume/run/run.csv")).remove(0);
    assert_eq!(row.status, "interrupted", "{}", row.error);
    assert!(!b.join("resume/run/languages.csv").exists());
    run_ok(&r, &b, &["--resume"]);
    for f in ["languages.csv", "metrics.csv", "sampling.csv"] {
        let x = std::fs::read_to_string(a.join("resume/run").join(f)).unwrap();
        let y = std::fs::read_to_string(b.join("resume/run").join(f)).unwrap();
        assert_eq!(x, y, "{f} differs between the uninterrupted and the resumed run");
    }
}

#[test]
fn divergence_stops_the_run_and_names_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "diverge", "");
    let text = std::fs::read_to_string(&r).unwrap().replace("lr = 2e-2, weight_decay", "lr = 1e35, weight_decay");
    std::fs::write(&r, text).unwrap();
    let results = tmp.path().join("results");
    let out = kdx(&["run", r.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("diverged at step"), "{err}");
    assert!(err.contains("soft-kl = ") && err.contains("hard-ce = "), "each loss term is named: {err}");
    assert!(err.contains("batch languages:"), "{err}");
    let row: RunRow = read::<RunRow>(&results.join("diverge/run/run.csv")).remove(0);
    assert_eq!(row.status, "failed");
    assert!(row.error.contains("diverged"));
}

#[test]
fn fine_tuning_stage_trains_on_its_languages_and_eval_scores_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(
        tmp.path(),
        "finetune",
        "\n[finetune]\nsteps = 30\nbatch = 32\nlanguages = [\"de\", \"fr\"]\noptimizer = { kind = \"adam\", lr = 1e-3 }\n",
    );
    let results = tmp.path().join("results");
    let row = run_ok(&r, &results, &[]);
    assert!(row.student_macro_acc > 0.7);
    let dir = results.join("finetune/run");
    let metrics: Vec<MetricRow> = read(&dir.join("metrics.csv"));
    assert!(metrics.iter().any(|m| m.stage == "finetune" && m.split == "dev" && m.step == 30));
    #[derive(serde::Deserialize)]
    struct S {
        stage: String,
        lang: String,
        probability: f64,
    }
    let sampling: Vec<S> = read(&dir.join("sampling.csv"));
    let ft: Vec<&S> = sampling.iter().filter(|s| s.stage == "finetune").collect();
    assert_eq!(ft.len(), 6);
    for s in ft {
        assert_eq!(s.probability > 0.0, s.lang == "de" || s.lang == "fr", "{} {}", s.lang, s.probability);
    }

    // `kdx eval` on a labelled file of the test split's kind.
    let data = tmp.path().join("eval.tsv");
    std::fs::write(
        &data,
        "de\tDie Datei konnte nicht gelesen werden\nde\tUngültige Option für den Befehl\nfr\tImpossible de lire le fichier\nfr\tOption non valide pour la commande\nja\tファイルを読み込めません\nxx\tunknown language line\n",
    )
    .unwrap();
    let csv_out = tmp.path().join("eval.csv");
    let out = kdx(&["eval", dir.to_str().unwrap(), "--data", data.to_str().unwrap(), "--csv", csv_out.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not a label of this model"), "{text}");
    #[derive(serde::Deserialize)]
    struct E {
        lang: String,
        examples: usize,
        accuracy: f64,
    }
    let rows: Vec<E> = read(&csv_out);
    let get = |l: &str| rows.iter().find(|r| r.lang == l).unwrap();
    assert_eq!(get("de").examples, 2);
    assert_eq!(get("macro").examples, 5, "the unknown language is reported but not scored");
    assert!(get("macro").accuracy >= 0.6, "macro {}", get("macro").accuracy);
}

#[test]
fn kdx_sample_predicts_what_training_draws() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "sampling", "\n[sampler]\nplugin = \"temperature\"\ntau = 3.0\n");
    // Make the languages unequal so the sampler has something to flatten.
    let text =
        std::fs::read_to_string(&r).unwrap().replace("max_train_per_language = 1500", "max_train_per_language = 1500\ncap_teacher = true");
    let text = text
        .replace("languages = [\"de\", \"fr\", \"ru\", \"ja\", \"pt\", \"pt_BR\"]", "languages = [\"de\", \"fr\", \"br\", \"fo\", \"tl\"]");
    std::fs::write(&r, text).unwrap();
    let out = kdx(&["sample", r.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let results = tmp.path().join("results");
    run_ok(&r, &results, &[]);
    let langs: Vec<LanguageRow> = read(&results.join("sampling/run/languages.csv"));
    let n = 120.0 * 64.0;
    for l in &langs {
        let line = table.lines().find(|x| x.split_whitespace().next() == Some(l.lang.as_str())).unwrap();
        let cols: Vec<f64> = line.split_whitespace().skip(1).map(|c| c.parse().unwrap()).collect();
        let (size, p, expected) = (cols[0], cols[1], cols[2]);
        assert_eq!(size as usize, l.train_size);
        assert!((expected - p * n).abs() < 1.0);
        let sd = (n * p * (1.0 - p)).sqrt();
        assert!((l.sampled as f64 - expected).abs() < 4.0 * sd + 1.0, "{}: drew {}, expected {expected:.0} ± {sd:.0}", l.lang, l.sampled);
    }
    // The temperature sampler flattens: the smallest language is drawn beyond its share.
    let small = langs.iter().min_by_key(|l| l.train_size).unwrap();
    let total: usize = langs.iter().map(|l| l.train_size).sum();
    assert!(small.sampled as f64 / n > small.train_size as f64 / total as f64);
}
