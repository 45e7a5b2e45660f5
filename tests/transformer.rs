//! Transformers end to end: a layer-wise distillation run between two `transformer`
//! models, a pretrained `hf-encoder` teacher fine-tuned and distilled into a student made
//! of one of its layers, and the plan-time refusal of a token-level loss between models
//! that tokenise differently.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use kdx_framework::report::RunRow;

fn kdx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kdx")).args(args).output().expect("running kdx")
}

/// The six-language data of tests/batch/good.toml with the given model and loss sections.
fn recipe(dir: &Path, name: &str, models_and_losses: &str, train: &str) -> PathBuf {
    let corpus = common::root().join("data/gettext-corpus.tsv.gz");
    let text = format!(
        r#"[experiment]
name = "{name}"
seed = 5

[data]
plugin = "gettext-lid"
corpus = "{}"
languages = ["fr", "de", "ru", "cy", "is", "fo"]
max_train_per_language = 600

{models_and_losses}

[sampler]
plugin = "proportional"

[train]
{train}
"#,
        corpus.display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn run_ok(recipe: &Path, results: &Path) -> RunRow {
    let out = kdx(&["run", recipe.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "kdx run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let name = recipe.file_stem().unwrap().to_str().unwrap();
    kdx_framework::report::read_csv::<RunRow>(&results.join(name).join("run/run.csv")).unwrap().remove(0)
}

const LAYERWISE: &str = r#"
[teacher]
plugin = "transformer"
tokenizer = "bytes"
max_len = 32
width = 32
layers = 2
heads = 2
ffn = 64
dropout = 0.0
train = { steps = 150, batch = 32, optimizer = { kind = "adamw", lr = 3e-3 } }

[student]
plugin = "transformer"
tokenizer = "bytes"
max_len = 32
width = 16
layers = 1
heads = 2
ffn = 32
dropout = 0.0

[[loss]]
plugin = "soft-kl"
temperature = 2.0

[[loss]]
plugin = "layer-mse"

[[loss]]
plugin = "attention-kl"
"#;

#[test]
fn layerwise_distillation_between_transformers_trains_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(
        tmp.path(),
        "layerwise",
        LAYERWISE,
        "steps = 120\nbatch = 32\neval_every = 60\noptimizer = { kind = \"adamw\", lr = 3e-3 }",
    );
    let results = tmp.path().join("results");
    let row = run_ok(&r, &results);
    eprintln!("layer-wise: teacher {:.3}, student {:.3}", row.teacher_macro_acc, row.student_macro_acc);
    // Six classes: chance is 1/6.
    assert!(row.teacher_macro_acc > 0.6, "teacher {}", row.teacher_macro_acc);
    assert!(row.student_macro_acc > 0.45, "student {}", row.student_macro_acc);
    // Exact sizes: bytes (260 ids) + 32 positions, documented formula.
    let size = |w: usize, l: usize, f: usize| {
        (260 + 32) * w + 2 * w + l * (4 * w * w + 2 * w * f + f + 9 * w) + w * 6 + 6
    };
    assert_eq!(row.teacher_params, size(32, 2, 64));
    assert_eq!(row.student_params, size(16, 1, 32));
    let dir = results.join("layerwise/run");
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, "Не удалось открыть файл\nImpossible d'ouvrir le fichier\n").unwrap();
    let out = kdx(&["predict", dir.to_str().unwrap(), input.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    // Its sentence vectors: one line per text, the student's width.
    let out = kdx(&["embed", dir.to_str().unwrap(), input.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().map(|l| l.split('\t').count()).collect::<Vec<_>>(), vec![16, 16]);
}

#[test]
fn a_pretrained_teacher_is_fine_tuned_and_distilled_into_one_of_its_layers() {
    let tmp = tempfile::tempdir().unwrap();
    // The model directory is named relative to the recipe, as a user writes it.
    let bert = tmp.path().join("models/tiny-bert");
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.path().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    copy_dir(&common::root().join("tests/data/hf/tiny-bert"), &bert);
    let sections = format!(
        r#"
[teacher]
plugin = "hf-encoder"
path = "{0}"
train = {{ steps = 120, batch = 32, optimizer = {{ kind = "adamw", lr = 3e-3 }} }}

[student]
plugin = "hf-encoder"
path = "{0}"
layers = [1]

[[loss]]
plugin = "soft-kl"

[[loss]]
plugin = "layer-mse"
map = [[0, 0], [1, 2]]

[[loss]]
plugin = "attention-kl"
layers = [[0, 1]]
"#,
        "models/tiny-bert"
    );
    let r = recipe(
        tmp.path(),
        "pretrained",
        &sections,
        "steps = 80\nbatch = 32\neval_every = 40\noptimizer = { kind = \"adamw\", lr = 3e-3 }",
    );
    let row = run_ok(&r, &tmp.path().join("results"));
    eprintln!("pretrained: teacher {:.3}, student {:.3}", row.teacher_macro_acc, row.student_macro_acc);
    assert!(row.teacher_macro_acc > 0.5, "teacher {}", row.teacher_macro_acc);
    assert!(row.student_macro_acc > 0.4, "student {}", row.student_macro_acc);
    assert!(row.compression > 1.0 && row.compression < 2.0, "one layer of two: {}", row.compression);
    // The run's student is usable from anywhere: its card names the model directory as
    // resolved against the recipe, not relative to the run directory.
    let run = tmp.path().join("results/pretrained/run");
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, "Impossible d'ouvrir le fichier\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(["embed", run.to_str().unwrap(), input.to_str().unwrap()])
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end().split('\t').count(), 32);
    // The model directory is read again at load: once its config changed, the run's model
    // is refused, naming the directory and the file.
    let config = bert.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"layer_norm_eps\": 1e-12", "\"layer_norm_eps\": 1e-05")).unwrap();
    let out = kdx(&["embed", run.to_str().unwrap(), input.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!("{}: config.json has changed since the run", bert.display())),
        "{err}"
    );
}

#[test]
fn token_level_losses_between_different_tokenisations_are_refused_at_plan_time() {
    let tmp = tempfile::tempdir().unwrap();
    let chars = LAYERWISE.replacen(
        "tokenizer = \"bytes\"\nmax_len = 32\nwidth = 16",
        "tokenizer = \"chars\"\nmax_len = 32\nwidth = 16",
        1,
    );
    let r = recipe(tmp.path(), "mismatch", &chars, "steps = 10\nbatch = 8");
    let out = kdx(&["validate", r.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("layer-mse")
            && err.contains("tokenise alike")
            && err.contains("chars8000")
            && err.contains("bytes"),
        "{err}"
    );
    assert!(err.contains("mismatch.toml:"), "located: {err}");
    // A student without layers.
    let ngram = LAYERWISE.replace(
        "[student]\nplugin = \"transformer\"\ntokenizer = \"bytes\"\nmax_len = 32\nwidth = 16\nlayers = 1\nheads = 2\nffn = 32\ndropout = 0.0",
        "[student]\nplugin = \"ngram-mlp\"",
    );
    let r = recipe(tmp.path(), "nolayers", &ngram, "steps = 10\nbatch = 8");
    let out = kdx(&["validate", r.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the student `ngram-mlp` has none"), "{err}");
}
