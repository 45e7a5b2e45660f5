//! Plugin ABI 2 end to end, with the example plugins as dynamic libraries built outside the
//! workspace: a layer-wise loss with a learned projection (`tinybert-proj`) trains as its
//! built-in twin `layer-mse` does, is checked at plan time at its recipe keys, and exports its
//! projection; a stateful loss (`ema-gated-kd`) resumes exactly and reports named
//! per-language values; a library built with the frozen SDK 0.1 (ABI 1) still loads and
//! trains exactly as the same source built with today's SDK.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{build_plugin, root};
use kdx_framework::dylib::PluginLibrary;
use kdx_framework::report::{read_csv, MetricRow};

fn library(dir: &str, crate_name: &str) -> &'static Path {
    static LIBS: OnceLock<std::sync::Mutex<std::collections::BTreeMap<String, &'static Path>>> =
        OnceLock::new();
    let mut libs = LIBS.get_or_init(Default::default).lock().unwrap();
    libs.entry(crate_name.to_string()).or_insert_with(|| {
        Box::leak(build_plugin(&root().join("plugins/examples").join(dir), crate_name).into_boxed_path())
    })
}

fn kdx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdx")).args(args).output().expect("running kdx")
}

fn run(recipe: &Path, results: &Path, plugin: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", recipe.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet"];
    args.extend(["--plugin", plugin.to_str().unwrap()]);
    args.extend(extra);
    kdx(&args)
}

fn run_ok(recipe: &Path, results: &Path, plugin: &Path, extra: &[&str]) {
    let out = run(recipe, results, plugin, extra);
    assert!(out.status.success(), "kdx run failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Three languages of the corpus with the given models, losses and training section.
fn recipe(dir: &Path, name: &str, body: &str) -> PathBuf {
    let text = format!(
        r#"[experiment]
name = "{name}"
seed = 7

[data]
plugin = "gettext-lid"
corpus = "{}"
languages = ["de", "fr", "ru"]
max_train_per_language = 300

{body}
"#,
        root().join("data/gettext-corpus.tsv.gz").display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Two small byte-level transformers of different widths and depths, and `loss` beside a
/// soft-label term.
fn transformers(loss: &str) -> String {
    format!(
        r#"
[teacher]
plugin = "transformer"
tokenizer = "bytes"
max_len = 32
width = 32
layers = 2
heads = 2
ffn = 64
dropout = 0.0
train = {{ steps = 60, batch = 32, optimizer = {{ kind = "adamw", lr = 3e-3 }} }}

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
{loss}

[train]
steps = 40
batch = 16
eval_every = 20
baseline = false
optimizer = {{ kind = "adamw", lr = 3e-3 }}
"#
    )
}

/// Two small n-gram models (a teacher trained for 30 steps), `loss` alone, `steps` of
/// distillation evaluated every 20.
fn ngrams(loss: &str, steps: u64) -> String {
    format!(
        r#"
[teacher]
plugin = "ngram-mlp"
ngrams = [1, 2]
buckets = 2048
dim = 8
train = {{ steps = 30, batch = 32, optimizer = {{ kind = "adam", lr = 2e-2 }} }}

[student]
plugin = "ngram-mlp"
ngrams = [1, 1]
buckets = 512
dim = 8

[[loss]]
{loss}

[train]
steps = {steps}
batch = 16
eval_every = 20
baseline = false
optimizer = {{ kind = "adam", lr = 2e-2 }}
"#
    )
}

fn metrics(results: &Path, experiment: &str) -> Vec<MetricRow> {
    read_csv(&results.join(experiment).join("run/metrics.csv")).unwrap()
}

fn tinybert() -> &'static Path {
    library("tinybert-proj", "tinybert-proj")
}

#[test]
fn a_layer_wise_library_loss_with_a_projection_trains_as_its_built_in_twin() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let built_in = recipe(tmp.path(), "twin-built-in", &transformers("plugin = \"layer-mse\"\nseed = 3"));
    let library = recipe(tmp.path(), "twin-library", &transformers("plugin = \"tinybert-proj\"\nseed = 3"));
    run_ok(&built_in, &results, tinybert(), &[]);
    run_ok(&library, &results, tinybert(), &[]);
    let (a, b) = (metrics(&results, "twin-built-in"), metrics(&results, "twin-library"));
    assert_eq!(a.len(), b.len());
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 || (x.is_nan() && y.is_nan());
    let mut compared = 0;
    for (x, y) in a.iter().zip(&b).filter(|(x, _)| x.stage == "distill") {
        assert!(close(x.loss, y.loss) && close(x.acc, y.acc), "{x:?}\n{y:?}");
        assert!(close(x.kl.unwrap_or(0.0), y.kl.unwrap_or(0.0)), "{x:?}\n{y:?}");
        compared += 1;
    }
    assert!(compared >= 8, "{compared} distillation rows");
    // The term's own value, under each loss's name, in metrics.csv.
    let text = |e: &str| std::fs::read_to_string(results.join(e).join("run/metrics.csv")).unwrap();
    assert!(text("twin-library").lines().next().unwrap().ends_with("loss.soft-kl,loss.tinybert-proj"));
    // On the last dev `macro` row of distillation: the mean over its last 20 steps.
    let term = |e: &str, col: &str| -> f64 {
        let t = text(e);
        let header: Vec<&str> = t.lines().next().unwrap().split(',').collect();
        let i = header.iter().position(|h| *h == col).unwrap();
        let row = t.lines().rfind(|l| l.starts_with("40,distill,dev,macro,")).unwrap();
        row.split(',').nth(i).unwrap().parse().unwrap()
    };
    let (x, y) = (term("twin-built-in", "loss.layer-mse"), term("twin-library", "loss.tinybert-proj"));
    assert!(x > 0.0 && (x - y).abs() <= 1e-5 * x.max(1.0), "{x} vs {y}");
    // Stopped in distillation between two evaluations (60 teacher steps + 10) and resumed:
    // the projection and its optimizer moments come back from the checkpoint, and every
    // CSV equals the uninterrupted run's.
    let stopped = tmp.path().join("stopped");
    assert!(!run(&library, &stopped, tinybert(), &["--interrupt-after", "70"]).status.success());
    run_ok(&library, &stopped, tinybert(), &["--resume"]);
    for f in ["metrics.csv", "languages.csv", "sampling.csv"] {
        let a = std::fs::read_to_string(results.join("twin-library/run").join(f)).unwrap();
        let b = std::fs::read_to_string(stopped.join("twin-library/run").join(f)).unwrap();
        assert_eq!(a, b, "{f} differs between the uninterrupted and the resumed run");
    }
    // The projection is the student's map into the teacher's space: `kdx embed` of the
    // library run gives the teacher's width (32), the built-in run's the student's (16).
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, "Impossible d'ouvrir le fichier\n").unwrap();
    for (e, width) in [("twin-library", 32), ("twin-built-in", 16)] {
        let dir = results.join(e).join("run");
        let out = kdx(&["embed", dir.to_str().unwrap(), input.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim().split('\t').count(), width, "{e}");
    }
}

#[test]
fn kdx_validate_reports_a_library_losss_misfit_at_its_key_before_anything_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tinybert().to_str().unwrap();
    for (loss, key, message) in [
        (
            "projection = \"never\"",
            "projection",
            "\"never\" needs equal widths, and the student's is 16, the teacher's 32",
        ),
        (
            "map = [[0, 0], [1, 5]]",
            "map",
            "pair [1, 5]: the student has hidden states 0..=1, the teacher 0..=2",
        ),
    ] {
        let r = recipe(tmp.path(), "misfit", &transformers(&format!("plugin = \"tinybert-proj\"\n{loss}")));
        let out = kdx(&["validate", r.to_str().unwrap(), "--plugin", lib]);
        let e = String::from_utf8_lossy(&out.stderr);
        let line = std::fs::read_to_string(&r).unwrap().lines().position(|l| l == loss).unwrap() + 1;
        assert!(!out.status.success(), "{loss}: {e}");
        assert!(
            e.contains(&format!(
                "{}:{line}:1: loss[1].{key}: loss `tinybert-proj` does not fit the models: {message}",
                r.display()
            )),
            "{e}"
        );
        // And `kdx run` refuses it before the teacher trains: nothing is written.
        let results = tmp.path().join("results");
        assert!(!run(&r, &results, tinybert(), &[]).status.success());
        assert!(!results.join("misfit").exists());
    }
}

#[test]
fn a_stateful_library_loss_resumes_exactly_and_reports_its_named_values() {
    let lib = library("ema-gate", "ema-gate");
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "ema", &ngrams("plugin = \"ema-gated-kd\"\ndecay = 0.8", 60));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_ok(&r, &a, lib, &[]);
    // Stop in the middle of distillation (30 teacher steps + 30), between evaluations: the
    // checkpoint holds step 30 and the loss's moving averages.
    let out = run(&r, &b, lib, &["--interrupt-after", "60"]);
    assert!(!out.status.success());
    run_ok(&r, &b, lib, &["--resume"]);
    for f in ["metrics.csv", "languages.csv", "sampling.csv"] {
        let x = std::fs::read_to_string(a.join("ema/run").join(f)).unwrap();
        let y = std::fs::read_to_string(b.join("ema/run").join(f)).unwrap();
        assert_eq!(x, y, "{f} differs between the uninterrupted and the resumed run");
    }
    let text = std::fs::read_to_string(a.join("ema/run/metrics.csv")).unwrap();
    let header = text.lines().next().unwrap();
    // The fixed columns, then the named ones in name order (the teacher's pre-training term
    // is `loss.cross-entropy`).
    assert!(
        header.ends_with(",gate,ema-gated-kd.ema,ema-gated-kd.weight,loss.cross-entropy,loss.ema-gated-kd"),
        "{header}"
    );
    let col = |name: &str| header.split(',').position(|h| h == name).unwrap();
    // Per language at the last evaluation, the moving average and the weight; on `macro`
    // their means and the term's value.
    let last: Vec<Vec<&str>> =
        text.lines().filter(|l| l.starts_with("60,distill,dev,")).map(|l| l.split(',').collect()).collect();
    assert_eq!(last.iter().map(|r| r[3]).collect::<Vec<_>>(), ["de", "fr", "ru", "macro"]);
    let weights: Vec<f64> =
        last[..3].iter().map(|r| r[col("ema-gated-kd.weight")].parse().unwrap()).collect();
    assert!(weights.iter().any(|&w| (w - 1.0).abs() > 1e-3), "the weights moved: {weights:?}");
    let mean: f64 = weights.iter().sum::<f64>() / 3.0;
    let macro_weight: f64 = last[3][col("ema-gated-kd.weight")].parse().unwrap();
    assert!((macro_weight - mean).abs() < 1e-6, "{macro_weight} vs {mean}");
    assert!(last[3][col("loss.ema-gated-kd")].parse::<f64>().unwrap() > 0.0);
    assert!(last[0][col("loss.ema-gated-kd")].is_empty(), "a term's value is on the macro row only");
}

#[test]
fn a_version_1_library_still_loads_and_trains_as_its_source_does_today() {
    let v1 = library("compat/focal-kd-v1", "focal-kd-v1");
    let v2 = library("focal-kd", "focal-kd");
    let (old, new) = (PluginLibrary::open(v1).unwrap(), PluginLibrary::open(v2).unwrap());
    assert_eq!((old.abi_version(), old.framework_version()), (1, "0.1.0"));
    assert_eq!(new.abi_version(), kdx_framework::dylib::kdx_sdk::ABI_VERSION);
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "focal", &ngrams("plugin = \"focal-kd\"", 40));
    let (a, b) = (tmp.path().join("v1"), tmp.path().join("v2"));
    run_ok(&r, &a, v1, &[]);
    run_ok(&r, &b, v2, &[]);
    for f in ["metrics.csv", "languages.csv"] {
        let x = std::fs::read_to_string(a.join("focal/run").join(f)).unwrap();
        let y = std::fs::read_to_string(b.join("focal/run").join(f)).unwrap();
        assert_eq!(x, y, "{f}: the ABI-1 build and the ABI-2 build of one source differ");
    }
}

/// The example's source, compiled here in-tree: the same file the library is built from.
#[path = "../plugins/examples/tinybert-proj/src/lib.rs"]
#[allow(dead_code)]
mod tinybert_proj;

#[test]
fn layers_parameters_and_their_gradients_cross_the_c_boundary_intact() {
    use kdx_framework::dylib::SdkLoss;
    use kdx_framework::loss::{Loss, Shapes};
    use kdx_framework::model::Grad;
    use kdx_framework::testing::{sample_layers, SampleBatch};
    let lib = PluginLibrary::open(tinybert()).unwrap();
    assert_eq!(lib.abi_version(), 2);
    let json = r#"{"map": [[0, 0], [1, 2]], "seed": 5}"#;
    let mut dynamic = lib.create_loss(json).unwrap();
    let mut in_tree = SdkLoss::<tinybert_proj::TinyBertProj>::from_json(json).unwrap();
    assert!(dynamic.needs().layers && in_tree.needs().layers);
    let shapes =
        Shapes { classes: 3, student_hidden_dim: Some(6), teacher_hidden_dim: Some(5), ..Default::default() };
    dynamic.prepare(&shapes).unwrap();
    in_tree.prepare(&shapes).unwrap();
    let names =
        |l: &dyn Loss| l.params().iter().map(|p| (p.name.clone(), p.shape.clone())).collect::<Vec<_>>();
    assert_eq!(names(&dynamic), [("proj.w".to_string(), vec![6, 5]), ("proj.b".to_string(), vec![5])]);
    assert_eq!(names(&dynamic), names(&in_tree));
    assert_eq!(dynamic.params()[0].data, in_tree.params()[0].data, "one initialisation from one seed");
    assert!(dynamic.projection().is_some(), "the declared projection is the student's");
    let sb = SampleBatch::random(3, 3, 6, 1.0, 1);
    let x = sb.input(0, 1);
    let s = sample_layers(&[4, 2, 3], 1, 6, 2, 7);
    let t = sample_layers(&[4, 2, 3], 2, 5, 2, 8);
    let (a, ga) = dynamic.compute_layers(&x, &s, Some(&t)).unwrap();
    let (b, gb) = in_tree.compute_layers(&x, &s, Some(&t)).unwrap();
    assert!(a.value > 0.0 && a.value == b.value, "{} vs {}", a.value, b.value);
    assert_eq!(ga, gb, "hidden-state gradients");
    assert!(ga.hidden[1].as_ref().is_some_and(|g| g.iter().any(|v| *v != 0.0)));
    for (p, q) in dynamic.params().iter().zip(in_tree.params()) {
        match (&p.grad, &q.grad) {
            (Grad::Dense(g), Grad::Dense(h)) => assert_eq!(g, h, "{}", p.name),
            other => panic!("{}: {other:?}", p.name),
        }
    }
    // State and values of a stateless loss: empty, through the boundary as in-tree.
    assert_eq!(dynamic.save_state().unwrap(), Vec::<u8>::new());
    assert!(dynamic.language_values().unwrap().is_empty());
}
