//! Loss plugins as dynamic libraries: the focal-kd example builds, loads, trains and gives
//! the same gradients as its own source compiled in-tree; every kind of bad library is
//! refused with a clear message and no crash; a panic inside a plugin fails its run, not the
//! process; `kdx new loss` makes a crate that builds, passes its test and loads.
//!
//! The plugin crates under plugins/examples/ are not workspace members: the tests build them
//! (release) into target/plugin-examples/, where CI's cache of target/ keeps them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use kdx_framework::dylib::{PluginError, PluginLibrary, SdkLoss};
use kdx_framework::loss::Loss;
use kdx_framework::registry::{self, Instance, PluginKind};
use kdx_framework::testing::SampleBatch;
use kdx_plugins as _;

mod common;

/// The example's source, compiled here in-tree: the same file the cdylib is built from.
#[path = "../plugins/examples/focal-kd/src/lib.rs"]
mod focal_kd;

use common::{build_plugin, cargo, examples_target, library_file, root};

fn focal_kd() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| build_plugin(&root().join("plugins/examples/focal-kd"), "focal-kd"))
}

fn misbehaving() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| build_plugin(&root().join("plugins/examples/misbehaving"), "misbehaving"))
}

fn kdx(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kdx"));
    c.args(args).env_remove("KDX_MISBEHAVE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running kdx")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed command that exited normally (no signal, no abort) with an error message.
fn assert_refused(o: &Output) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected a clean failure (exit 1), got {:?}:\n{e}", o.status);
    assert!(e.contains("error"), "{e}");
    e
}

/// A small, fast recipe: three languages, a tiny teacher; `loss` is the `[[loss]]` body,
/// `extra` more TOML at the end.
fn recipe(dir: &Path, name: &str, loss: &str, extra: &str, steps: u64) -> PathBuf {
    let text = format!(
        r#"
[experiment]
name = "{name}"
seed = 3

[data]
plugin = "gettext-lid"
corpus = "{corpus}"
languages = ["de", "fr", "ja"]
max_train_per_language = 300

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
batch = 32
baseline = false
optimizer = {{ kind = "adam", lr = 2e-2 }}

{extra}
"#,
        corpus = root().join("data/gettext-corpus.tsv.gz").display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn run_row(results: &Path, experiment: &str, run: &str) -> kdx_framework::report::RunRow {
    let p = results.join(experiment).join(run).join("run.csv");
    kdx_framework::report::read_csv::<kdx_framework::report::RunRow>(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .remove(0)
}

// ---------------------------------------------------------------------------------------
// The example: loads, matches its in-tree build, trains.

#[test]
fn focal_kd_loads_and_describes_itself() {
    let lib = PluginLibrary::open(focal_kd()).unwrap();
    assert_eq!(lib.name(), "focal-kd");
    assert!(lib.summary().contains("γ"), "{}", lib.summary());
    assert_eq!(lib.framework_version(), kdx_framework::dylib::FRAMEWORK_VERSION);
    let l = lib.create_loss(r#"{"gamma": 1.0}"#).unwrap();
    assert_eq!(l.needs(), kdx_framework::loss::Needs::TEACHER);
    // The plugin's own refusals come back as its messages.
    let e = lib.create_loss(r#"{"temperature": -1}"#).err().unwrap().to_string();
    assert!(e.contains("temperature must be a positive number"), "{e}");
    let e = lib.create_loss(r#"{"gama": 1}"#).err().unwrap().to_string();
    assert!(e.contains("unknown field `gama`"), "{e}");
    // It publishes its parameters' schema, doc comments included.
    let props = lib
        .params_schema()
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.as_object())
        .expect("a published schema");
    let mut keys: Vec<&str> = props.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["detach_weight", "gamma", "scale_t2", "temperature"]);
}

#[test]
fn a_library_losss_parameters_are_documented_and_checked_like_a_built_in() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = focal_kd().to_str().unwrap();
    // `kdx plugins` shows them with their types, defaults and docs.
    let out = kdx(&["plugins", "loss", "focal-kd", "--plugin", lib], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains("temperature: number = 2.0") && text.contains("Temperature T > 0 of the KL term"),
        "{text}"
    );
    // A misspelt key: at its line, with the suggestion, before the plugin is called.
    let r = recipe(tmp.path(), "typo", "plugin = \"focal-kd\"\ntempreature = 2.0", "", 1);
    let out = kdx(&["validate", r.to_str().unwrap(), "--plugin", lib], &[]);
    let e = stderr(&out);
    let line =
        std::fs::read_to_string(&r).unwrap().lines().position(|l| l.starts_with("tempreature")).unwrap() + 1;
    assert!(
        !out.status.success()
            && e.contains(&format!(
                "{}:{line}:1: loss[0].tempreature: unknown key `tempreature`",
                r.display()
            )),
        "{e}"
    );
    assert!(e.contains("did you mean `temperature`"), "{e}");
    // `kdx schema` accepts only its parameters.
    let out = kdx(&["schema", "--plugin", lib], &[]);
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let variants =
        schema.pointer("/properties/loss/items/oneOf").and_then(|v| v.as_array()).expect("loss variants");
    let focal = variants
        .iter()
        .find(|v| v.pointer("/properties/plugin/const") == Some(&serde_json::json!("focal-kd")))
        .unwrap();
    assert_eq!(focal["additionalProperties"], serde_json::json!(false));
    assert!(
        focal.pointer("/properties/gamma").is_some() && focal.pointer("/properties/weight").is_some(),
        "{focal}"
    );
}

#[test]
fn focal_kd_has_the_same_gradients_in_tree_and_as_a_dynamic_library() {
    let lib = PluginLibrary::open(focal_kd()).unwrap();
    let params = [
        r#"{}"#,
        r#"{"gamma": 0.5, "temperature": 1.0}"#,
        r#"{"gamma": 3.0, "temperature": 4.0, "scale_t2": false}"#,
        r#"{"gamma": 2.0, "detach_weight": true}"#,
    ];
    let mut compared = 0;
    for json in params {
        let mut dynamic = lib.create_loss(json).unwrap();
        let mut in_tree = SdkLoss::<focal_kd::FocalKd>::from_json(json).unwrap();
        for (seed, scale, b, c) in [(1, 1.0, 8, 5), (2, 6.0, 17, 3), (3, 20.0, 4, 11)] {
            let s = SampleBatch::random(b, c, 3, scale, seed);
            let x = s.input(seed, 50);
            let (d, t) = (dynamic.compute(&x).unwrap(), in_tree.compute(&x).unwrap());
            assert!((d.value - t.value).abs() <= 1e-6, "{json}: value {} vs {}", d.value, t.value);
            assert_eq!(d.grad_logits.len(), b * c);
            for (i, (a, b)) in d.grad_logits.iter().zip(&t.grad_logits).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6,
                    "{json}, seed {seed}: grad[{i}] {a} (library) vs {b} (in-tree)"
                );
            }
            assert!(d.grad_hidden.is_none() && t.grad_hidden.is_none());
            assert!(d.grad_logits.iter().any(|g| *g != 0.0));
            compared += 1;
        }
    }
    assert_eq!(compared, 12);
}

#[test]
fn focal_kd_with_gamma_zero_is_the_built_in_soft_kl() {
    let lib = PluginLibrary::open(focal_kd()).unwrap();
    let mut focal = lib.create_loss(r#"{"gamma": 0.0, "temperature": 3.0}"#).unwrap();
    let mut t = toml::Table::new();
    t.insert("temperature".into(), toml::Value::Float(3.0));
    let Instance::Loss(mut soft_kl) =
        registry::build_standalone(PluginKind::Loss, "soft-kl", t, "test").unwrap()
    else {
        unreachable!()
    };
    let s = SampleBatch::random(9, 6, 2, 4.0, 8);
    let (a, b) = (focal.compute(&s.input(0, 1)).unwrap(), soft_kl.compute(&s.input(0, 1)).unwrap());
    assert!((a.value - b.value).abs() < 1e-4 * b.value.abs().max(1.0), "{} vs {}", a.value, b.value);
    for (x, y) in a.grad_logits.iter().zip(&b.grad_logits) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}

#[test]
fn focal_kd_trains_a_student_far_above_chance() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let recipe = root().join("plugins/examples/focal-kd/recipe.toml");
    let out = kdx(
        &[
            "run",
            recipe.to_str().unwrap(),
            "--plugin",
            focal_kd().to_str().unwrap(),
            "--results",
            results.to_str().unwrap(),
            "--quiet",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let row = run_row(&results, "focal-kd-example", "run");
    // Six languages, two of them confusable (pt, pt_BR): chance is 1/6.
    assert_eq!(row.status.as_str(), "ok");
    assert!(row.teacher_macro_acc > 0.8, "teacher {}", row.teacher_macro_acc);
    assert!(row.student_macro_acc > 0.6, "student {} (chance 0.167)", row.student_macro_acc);
}

// ---------------------------------------------------------------------------------------
// Refusals: each one a clear message and a clean exit, never a crash.

#[test]
fn missing_files_and_non_libraries_are_refused_with_their_location() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("libfake.so");
    std::fs::write(&fake, "not a library").unwrap();
    let r = recipe(
        tmp.path(),
        "missing",
        "plugin = \"focal-kd\"",
        "[plugins]\nlibraries = [\"no-such-lib.so\", \"libfake.so\"]",
        1,
    );
    let out = kdx(
        &[
            "run",
            r.to_str().unwrap(),
            "--plugin",
            "/nonexistent/libother.so",
            "--results",
            tmp.path().to_str().unwrap(),
        ],
        &[],
    );
    let e = assert_refused(&out);
    // Recipe paths are relative to the recipe, and each refusal is located.
    let missing = tmp.path().join("no-such-lib.so");
    assert!(
        e.contains(&format!("plugins.libraries[0]: plugin library {} does not exist", missing.display())),
        "{e}"
    );
    assert!(
        e.contains("plugins.libraries[1]: ") && e.contains("could not be loaded as a dynamic library"),
        "{e}"
    );
    assert!(e.contains("--plugin: plugin library /nonexistent/libother.so does not exist"), "{e}");
    // With no library providing it, the loss name is unknown, and said so.
    assert!(e.contains("unknown loss plugin `focal-kd`"), "{e}");

    // In-process, the same checks as typed errors.
    assert!(matches!(PluginLibrary::open(&missing), Err(PluginError::Missing(_))));
    assert!(matches!(PluginLibrary::open(&fake), Err(PluginError::NotALibrary { .. })));
}

/// A shared library of the system that is certainly not a kdx plugin.
fn system_library() -> Option<PathBuf> {
    let candidates = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib/aarch64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib64/libm.so.6",
        "/usr/lib/libm.so.6",
        "/usr/lib/libSystem.B.dylib",
    ];
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

#[test]
fn a_library_that_is_not_a_kdx_plugin_is_refused() {
    let Some(libm) = system_library() else {
        eprintln!("no system libm found: skipped");
        return;
    };
    let e = PluginLibrary::open(&libm).unwrap_err();
    assert!(matches!(e, PluginError::NotAPlugin(_)), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "not-a-plugin", "plugin = \"soft-kl\"", "", 1);
    let out = kdx(
        &[
            "run",
            r.to_str().unwrap(),
            "--plugin",
            libm.to_str().unwrap(),
            "--results",
            tmp.path().to_str().unwrap(),
        ],
        &[],
    );
    let e = assert_refused(&out);
    assert!(e.contains("is not a kdx plugin: it exports no `kdx_plugin_entry` function"), "{e}");
    assert!(e.contains("help: a plugin crate has `crate-type = [\"cdylib\"]`"), "{e}");
}

#[test]
fn wrong_abi_and_framework_versions_are_refused_before_use() {
    let lib = misbehaving().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "versions", "plugin = \"misbehaving\"", "", 1);
    let run = |mode: &str| {
        kdx(
            &["run", r.to_str().unwrap(), "--plugin", lib, "--results", tmp.path().to_str().unwrap()],
            &[("KDX_MISBEHAVE", mode)],
        )
    };
    let v = kdx_framework::dylib::FRAMEWORK_VERSION;
    let abi = kdx_framework::dylib::kdx_sdk::ABI_VERSION;

    let e = assert_refused(&run("wrong-abi"));
    assert!(
        e.contains(&format!(
            "was built for plugin ABI version {}, but this kdx ({v}) speaks versions 1 to {abi}",
            abi + 1
        )),
        "{e}"
    );
    assert!(e.contains(&format!("rebuild the plugin against kdx-sdk = \"={v}\"")), "{e}");

    let e = assert_refused(&run("wrong-version"));
    assert!(e.contains(&format!("was built for kdx 99.0.0, but this is kdx {v}")), "{e}");

    let e = assert_refused(&run("panic-entry"));
    assert!(e.contains("the plugin's entry point returned no descriptor"), "{e}");
}

#[test]
fn two_plugins_with_one_name_and_a_clash_with_a_built_in_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // Two copies of the same plugin are two libraries defining `focal-kd`.
    let copy_dir = tmp.path().join("copy");
    std::fs::create_dir(&copy_dir).unwrap();
    let copy = copy_dir.join(library_file("focal-kd"));
    std::fs::copy(focal_kd(), &copy).unwrap();
    let r = recipe(
        tmp.path(),
        "dup",
        "plugin = \"focal-kd\"",
        &format!("[plugins]\nlibraries = [{:?}]", focal_kd().to_str().unwrap()),
        1,
    );
    let out = kdx(
        &[
            "run",
            r.to_str().unwrap(),
            "--plugin",
            copy.to_str().unwrap(),
            "--results",
            tmp.path().to_str().unwrap(),
        ],
        &[],
    );
    let e = assert_refused(&out);
    assert!(e.contains("two loss plugins are named `focal-kd`"), "{e}");
    assert!(
        e.contains(&format!(
            "one in {} (named at plugins.libraries[0]), one in {}",
            focal_kd().display(),
            copy.display()
        )),
        "{e}"
    );

    // The same file named twice (recipe and command line) is loaded once: no clash.
    let out = kdx(
        &[
            "run",
            r.to_str().unwrap(),
            "--plugin",
            focal_kd().to_str().unwrap(),
            "--results",
            tmp.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(!stderr(&out).contains("two loss plugins"), "{}", stderr(&out));

    // A plugin named like a built-in.
    let lib = misbehaving().to_str().unwrap();
    let r = recipe(tmp.path(), "clash", "plugin = \"soft-kl\"", "", 1);
    let out = kdx(
        &["run", r.to_str().unwrap(), "--plugin", lib, "--results", tmp.path().to_str().unwrap()],
        &[("KDX_MISBEHAVE", "name=soft-kl")],
    );
    let e = assert_refused(&out);
    assert!(
        e.contains("defines the loss `soft-kl`, but a built-in loss has that name (registered in"),
        "{e}"
    );
}

#[test]
fn a_plugins_refusal_of_its_parameters_is_located_in_the_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = focal_kd().to_str().unwrap();
    let r = recipe(
        tmp.path(),
        "params",
        "plugin = \"focal-kd\"\ntemperature = -1.0\n\n[[loss]]\nplugin = \"misbehaving\"\npanic = \"create\"",
        "",
        1,
    );
    let m = misbehaving().to_str().unwrap();
    let out = kdx(
        &[
            "run",
            r.to_str().unwrap(),
            "--plugin",
            lib,
            "--plugin",
            m,
            "--results",
            tmp.path().to_str().unwrap(),
        ],
        &[],
    );
    let e = assert_refused(&out);
    let file = r.display().to_string();
    assert!(e.contains(&format!("{file}:")), "{e}");
    assert!(
        e.contains("loss[0]: loss plugin `focal-kd`")
            && e.contains("temperature must be a positive number, found -1"),
        "{e}"
    );
    assert!(
        e.contains("loss[1]: loss plugin `misbehaving`")
            && e.contains("the plugin panicked: misbehaving: deliberate panic in create"),
        "{e}"
    );

    // A wrong type: at its key's line, in the recipe's words (not Rust's `f32`).
    let r = recipe(tmp.path(), "types", "plugin = \"focal-kd\"\ntemperature = \"hot\"", "", 1);
    let out =
        kdx(&["run", r.to_str().unwrap(), "--plugin", lib, "--results", tmp.path().to_str().unwrap()], &[]);
    let e = assert_refused(&out);
    let line = std::fs::read_to_string(&r)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("temperature = \"hot\""))
        .unwrap()
        + 1;
    assert!(
        e.contains(&format!("{}:{line}:1: loss[0].temperature: loss plugin `focal-kd`", r.display())),
        "{e}"
    );
    assert!(e.contains("expected a number, found string \"hot\"") && !e.contains("f32"), "{e}");
}

#[test]
fn a_bare_file_name_means_that_file_not_a_system_library() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(focal_kd(), tmp.path().join(library_file("focal-kd"))).unwrap();
    // Loaded (its own refusal of the temperature proves it), from the working directory
    // for `--plugin` and from the recipe's directory for `[plugins] libraries`.
    let r = recipe(tmp.path(), "bare", "plugin = \"focal-kd\"\ntemperature = -3.0", "", 1);
    let lib = library_file("focal-kd");
    let out = Command::new(env!("CARGO_BIN_EXE_kdx"))
        .current_dir(tmp.path())
        .args(["run", "bare.toml", "--plugin", &lib])
        .output()
        .unwrap();
    let e = assert_refused(&out);
    assert!(e.contains("temperature must be a positive number, found -3"), "{e}");
    std::fs::write(&r, std::fs::read_to_string(&r).unwrap() + &format!("[plugins]\nlibraries = [{lib:?}]\n"))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kdx"))
        .current_dir(tmp.path())
        .args(["run", "bare.toml"])
        .output()
        .unwrap();
    let e = assert_refused(&out);
    assert!(e.contains("temperature must be a positive number, found -3"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Panics and errors inside a plugin.

#[test]
fn a_panic_inside_a_plugin_is_an_error_and_the_process_goes_on() {
    let lib = PluginLibrary::open(misbehaving()).unwrap();
    let s = SampleBatch::random(4, 3, 2, 1.0, 1);
    // A plain call works.
    let mut ok = lib.create_loss("{}").unwrap();
    let out = ok.compute(&s.input(0, 1)).unwrap();
    assert_eq!(out.grad_logits.len(), 12);
    // A panic in compute: an error with the plugin's message; then the loss is not called again.
    let mut bad = lib.create_loss(r#"{"panic": "compute"}"#).unwrap();
    let e = format!("{:#}", bad.compute(&s.input(7, 10)).unwrap_err());
    assert!(e.contains("panicked: misbehaving: deliberate panic in compute at step 7"), "{e}");
    let e = format!("{:#}", bad.compute(&s.input(8, 10)).unwrap_err());
    assert!(e.contains("panicked earlier"), "{e}");
    // An error: reported, and the loss stays usable.
    let mut failing = lib.create_loss(r#"{"fail": "compute"}"#).unwrap();
    for step in 0..2 {
        let e = format!("{:#}", failing.compute(&s.input(step, 10)).unwrap_err());
        assert!(e.contains(&format!("misbehaving: deliberate error in compute at step {step}")), "{e}");
    }
    // A panic in create.
    let e = lib.create_loss(r#"{"panic": "create"}"#).err().unwrap().to_string();
    assert!(e.contains("the plugin panicked: misbehaving: deliberate panic in create"), "{e}");
    // Still alive, and the well-behaved loss still works.
    assert!(ok.compute(&s.input(1, 1)).is_ok());
}

#[test]
fn a_panic_in_compute_fails_that_run_and_the_next_run_still_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let r = recipe(
        tmp.path(),
        "panics",
        "plugin = \"misbehaving\"",
        &format!(
            "[plugins]\nlibraries = [{:?}]\n\n[sweep]\n\"loss.0.panic\" = [\"compute\", \"no\"]",
            misbehaving().to_str().unwrap()
        ),
        5,
    );
    let out = kdx(
        &["run", r.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet"],
        &[("RUST_BACKTRACE", "1")],
    );
    let e = assert_refused(&out);
    assert!(
        e.contains("loss plugin `misbehaving`")
            && e.contains("panicked: misbehaving: deliberate panic in compute at step 0"),
        "{e}"
    );
    // kdx's report only: no "thread … panicked at", no backtrace, even under RUST_BACKTRACE.
    assert!(!e.contains("panicked at") && !e.contains("stack backtrace"), "{e}");
    // Rust's own output, on request.
    let loud = kdx(
        &["run", r.to_str().unwrap(), "--results", tmp.path().join("loud").to_str().unwrap(), "--quiet"],
        &[("KDX_PLUGIN_PANIC_OUTPUT", "1")],
    );
    assert!(stderr(&loud).contains("panicked at"), "{}", stderr(&loud));
    // The failed run says why in its run.csv; the sweep's other run ran to the end in the
    // same process.
    let mut rows: Vec<(String, String, String)> = std::fs::read_dir(results.join("panics"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .map(|n| {
            let row = run_row(&results, "panics", &n);
            (n, row.status.to_string(), row.error)
        })
        .collect();
    rows.sort();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (failed, ok) = (&rows[0], &rows[1]);
    assert!(failed.0.contains("compute") && failed.1 == "failed", "{rows:?}");
    assert!(failed.2.contains("deliberate panic in compute"), "{rows:?}");
    assert!(ok.0.contains("no") && ok.1 == "ok", "{rows:?}");
}

// ---------------------------------------------------------------------------------------
// In-tree registration of an SDK loss, and `kdx new loss`.

/// `Σ wᵢ (zᵢⱼ − tᵢⱼ)² / B`, written against the SDK and registered in-tree.
struct SdkProbe {
    scale: f32,
}

impl kdx_sdk::Loss for SdkProbe {
    const NAME: &'static str = "sdk-probe";
    const SUMMARY: &'static str = "test: an SDK loss registered in-tree";
    fn create(params: &kdx_sdk::Params) -> kdx_sdk::Result<Self> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            scale: f32,
        }
        let p: P = params.parse()?;
        kdx_sdk::ensure!(p.scale > 0.0, "scale must be positive");
        Ok(SdkProbe { scale: p.scale })
    }
    fn needs_teacher(&self) -> bool {
        true
    }
    fn compute(&mut self, x: &kdx_sdk::LossInput) -> kdx_sdk::Result<kdx_sdk::LossOutput> {
        let t = x.teacher_logits()?;
        let (b, c) = (x.batch, x.classes);
        let mut value = 0.0;
        let mut g = vec![0.0; b * c];
        for i in 0..b * c {
            let (d, w) = (x.student_logits[i] - t[i], x.weights[i / c] * self.scale / b as f32);
            value += w * d * d;
            g[i] = 2.0 * w * d;
        }
        Ok(kdx_sdk::LossOutput { value, grad_logits: g, grad_hidden: None })
    }
}

kdx_framework::register_sdk_loss!(SdkProbe);

#[test]
fn an_sdk_loss_registers_in_tree() {
    registry::check_unique().unwrap();
    let reg = registry::find(PluginKind::Loss, "sdk-probe").expect("registered");
    assert_eq!(reg.summary, "test: an SDK loss registered in-tree");
    let mut t = toml::Table::new();
    t.insert("scale".into(), toml::Value::Float(2.0));
    let Instance::Loss(mut l) = registry::build_standalone(PluginKind::Loss, "sdk-probe", t, "test").unwrap()
    else {
        unreachable!()
    };
    let s = SampleBatch::random(3, 4, 1, 1.0, 2);
    let err = kdx_framework::testing::gradient_check(&mut *l, &s.input(0, 1), 1e-2).unwrap();
    assert!(err < 1e-2, "{err}");
    let mut t = toml::Table::new();
    t.insert("scale".into(), toml::Value::Float(-1.0));
    let e = registry::build_standalone(PluginKind::Loss, "sdk-probe", t, "test").err().unwrap().to_string();
    assert!(e.contains("scale must be positive"), "{e}");
}

#[test]
fn kdx_new_loss_makes_a_crate_that_builds_passes_its_test_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my-kd");
    let out = kdx(&["new", "loss", "my-kd", "--dir", dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("created loss plugin `my-kd`") && said.contains("cargo build --release"), "{said}");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!("version = \"={}\"", kdx_framework::dylib::FRAMEWORK_VERSION)),
        "{manifest}"
    );

    // Refuses to overwrite, and refuses a built-in's name.
    assert_refused(&kdx(&["new", "loss", "my-kd", "--dir", dir.to_str().unwrap()], &[]));
    let e = assert_refused(&kdx(
        &["new", "loss", "soft-kl", "--dir", tmp.path().join("x").to_str().unwrap()],
        &[],
    ));
    assert!(e.contains("a built-in loss is already named `soft-kl`"), "{e}");

    // Its own test (the gradient check) passes, with no edits.
    let t = std::time::Instant::now();
    let test = cargo()
        .args(["test", "--release", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(examples_target())
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    let said = String::from_utf8_lossy(&test.stdout);
    assert!(
        said.contains("test tests::gradient_matches_finite_differences ... ok") && said.contains("2 passed"),
        "{said}"
    );
    eprintln!("tested the scaffold in {:.1}s", t.elapsed().as_secs_f64());
    let lib = build_plugin(&dir, "my-kd");

    // It loads from a recipe that names it relative to itself, and trains.
    let run_dir = tmp.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::copy(&lib, run_dir.join(library_file("my-kd"))).unwrap();
    let r = recipe(
        &run_dir,
        "scaffold",
        "plugin = \"my-kd\"\ntemperature = 2.0",
        &format!("[plugins]\nlibraries = [{:?}]", library_file("my-kd")),
        20,
    );
    let results = tmp.path().join("results");
    let out = kdx(&["run", r.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let row = run_row(&results, "scaffold", "run");
    assert_eq!(row.status.as_str(), "ok");
    assert!(row.student_macro_acc > 0.4, "student {} (chance 0.33)", row.student_macro_acc);

    // Its parameters are published as generated: documented in `kdx plugins` with their
    // default, and a value out of range is reported at its key's line, not at the table.
    let lib = lib.to_str().unwrap();
    let out = kdx(&["plugins", "loss", "my-kd", "--plugin", lib], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("temperature: number = 2.0") && text.contains("Temperature T > 0 of both softmaxes"),
        "{text}"
    );
    let r = recipe(&run_dir, "range", "plugin = \"my-kd\"\ntemperature = -1.0", "", 1);
    let out = kdx(&["validate", r.to_str().unwrap(), "--plugin", lib], &[]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    let line = std::fs::read_to_string(&r)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("temperature = -1.0"))
        .unwrap()
        + 1;
    assert!(
        e.contains(&format!("{}:{line}:1: loss[0].temperature:", r.display()))
            && e.contains("must be a positive number, found -1"),
        "{e}"
    );
}

#[test]
fn kdx_plugins_and_kdx_schema_include_a_librarys_loss() {
    let lib = focal_kd().to_str().unwrap();
    let out = kdx(&["plugins", "loss", "--plugin", lib], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains("soft-kl") && text.contains("focal-kd") && text.contains("from the dynamic library"),
        "{text}"
    );
    // A library that publishes no schema: its parameters are the plugin's to check.
    let m = misbehaving().to_str().unwrap();
    let out = kdx(&["plugins", "loss", "misbehaving", "--plugin", m], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("checked by the plugin"), "{}", stderr(&out));
    // Without the library the name is unknown.
    assert!(!kdx(&["plugins", "loss", "focal-kd"], &[]).status.success());

    // The schema with the library accepts a recipe that uses its loss; without it, not.
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "schema", "plugin = \"focal-kd\"\ngamma = 2.0\nweight = 0.5", "", 10);
    let json = serde_json::to_value(kdx_framework::kdx_recipe::RecipeDoc::load(&r).unwrap().root()).unwrap();
    let schema_of = |args: &[&str]| -> serde_json::Value {
        let out = kdx(args, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let with = schema_of(&["schema", "--plugin", lib]);
    let errors: Vec<String> =
        jsonschema::validator_for(&with).unwrap().iter_errors(&json).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let without = schema_of(&["schema"]);
    assert!(jsonschema::validator_for(&without).unwrap().iter_errors(&json).next().is_some());
    let out = kdx(&["plugins", "--plugin", "/no/such/lib.so"], &[]);
    assert!(!out.status.success() && stderr(&out).contains("--plugin /no/such/lib.so"), "{}", stderr(&out));
}
