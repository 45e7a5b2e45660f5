//! Crate-level tests: loading, merging, locations, sweeps and typed errors.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Value;

use crate::{KeyPath, Loc, RecipeDoc};

fn kp(s: &str) -> KeyPath {
    KeyPath::parse_dotted(s).expect("test key path")
}

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&p, text).expect("write");
    p
}

fn load(p: &Path) -> RecipeDoc {
    match RecipeDoc::load(p) {
        Ok(d) => d,
        Err(e) => panic!("load failed:\n{e}"),
    }
}

fn line_col(loc: Option<Loc>) -> (usize, usize) {
    let loc = loc.expect("located");
    (loc.line, loc.col)
}

#[test]
fn deep_merge_three_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "base.toml",
        r#"
[train]
steps = 100
batch = 32
optimizer = { kind = "adamw", lr = 1e-3, weight_decay = 0.01 }

[[loss]]
plugin = "soft-kl"
weight = 0.9

[[loss]]
plugin = "hard-ce"
weight = 0.1

[student]
hidden = [64, 64]
"#,
    );
    write(
        dir.path(),
        "mid.toml",
        r#"
extends = "base.toml"
[train]
steps = 200
optimizer = { lr = 3e-3 }
[student]
hidden = [32]
"#,
    );
    let top = write(
        dir.path(),
        "top.toml",
        r#"
extends = "mid.toml"
[train]
steps = 300

[[loss]]
plugin = "hard-ce"
weight = 1.0
"#,
    );
    let doc = load(&top);
    // Later file wins; tables merge.
    assert_eq!(doc.get(&kp("train.steps")), Some(&Value::Integer(300)));
    assert_eq!(doc.get(&kp("train.batch")), Some(&Value::Integer(32)));
    assert_eq!(doc.get(&kp("train.optimizer.lr")), Some(&Value::Float(3e-3)));
    assert_eq!(doc.get(&kp("train.optimizer.kind")), Some(&Value::String("adamw".into())));
    // Arrays (plain and of tables) are replaced, not merged.
    assert_eq!(doc.get(&kp("student.hidden")), Some(&Value::Array(vec![Value::Integer(32)])));
    let loss = doc.get(&kp("loss")).and_then(Value::as_array).expect("loss");
    assert_eq!(loss.len(), 1);
    assert_eq!(doc.get(&kp("loss.1")), None);
    assert!(doc.root().get("extends").is_none());

    // Locations follow the file that defined each key.
    let at = |k: &str| doc.locate(&kp(k)).expect("located");
    assert_eq!(at("train.steps").file, top);
    assert_eq!((at("train.steps").line, at("train.steps").col), (4, 1));
    assert_eq!(at("train.batch").file, dir.path().join("base.toml"));
    assert_eq!(at("train.optimizer.lr").file, dir.path().join("mid.toml"));
    assert_eq!(at("train.optimizer.kind").file, dir.path().join("base.toml"));
    assert_eq!(at("loss.0.weight").file, top);
    assert_eq!(line_col(Some(at("loss.0.weight"))), (8, 1));
    // The replaced base list leaves no stale locations behind.
    assert_eq!(doc.locate(&kp("loss.1.weight")).map(|l| l.file), Some(top.clone()));
    assert_eq!(line_col(doc.locate(&kp("loss.1.weight"))), (6, 1));
}

#[test]
fn extends_array_applies_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a.toml", "[x]\nv = 1\nonly_a = true\n");
    write(dir.path(), "b.toml", "[x]\nv = 2\n");
    let top = write(dir.path(), "top.toml", "extends = [\"a.toml\", \"b.toml\"]\n");
    let doc = load(&top);
    assert_eq!(doc.get(&kp("x.v")), Some(&Value::Integer(2)));
    assert_eq!(doc.get(&kp("x.only_a")), Some(&Value::Boolean(true)));
}

#[test]
fn cycle_is_reported_with_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write(dir.path(), "a.toml", "extends = \"b.toml\"\nx = 1\n");
    write(dir.path(), "b.toml", "y = 2\nextends = \"a.toml\"\n");
    let err = RecipeDoc::load(&a).expect_err("cycle");
    assert_eq!(err.0.len(), 1);
    let d = &err.0[0];
    let (sa, sb) =
        (dir.path().join("a.toml").display().to_string(), dir.path().join("b.toml").display().to_string());
    assert_eq!(d.message, format!("`extends` cycle: {sa} → {sb} → {sa}"));
    // Located at the `extends` that closes the cycle.
    let loc = d.loc.clone().expect("located");
    assert_eq!(loc.file, dir.path().join("b.toml"));
    assert_eq!((loc.line, loc.col), (2, 1));

    let selfish = write(dir.path(), "self.toml", "extends = \"./self.toml\"\n");
    let err = RecipeDoc::load(&selfish).expect_err("self cycle");
    assert!(err.to_string().contains("cycle"), "{err}");
}

#[test]
fn diamond_is_not_a_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "common.toml", "c = 1\n");
    write(dir.path(), "l.toml", "extends = \"common.toml\"\nl = 1\n");
    write(dir.path(), "r.toml", "extends = \"common.toml\"\nr = 1\n");
    let top = write(dir.path(), "top.toml", "extends = [\"l.toml\", \"r.toml\"]\n");
    let doc = load(&top);
    assert_eq!(doc.root().len(), 3);
}

#[test]
fn missing_base_is_located_at_extends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let top = write(dir.path(), "top.toml", "# comment\nextends = \"nope.toml\"\n");
    let err = RecipeDoc::load(&top).expect_err("missing base");
    let d = &err.0[0];
    assert_eq!(line_col(d.loc.clone()), (2, 1));
    assert!(d.message.contains("`nope.toml`"), "{}", d.message);
    assert!(d.help.is_some());
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{}:2:1: extends: cannot read base recipe", top.display())),
        "{shown}"
    );

    // In an array: located at the entry.
    let top = write(dir.path(), "top2.toml", "extends = [\n  \"top.toml\",\n  \"gone.toml\",\n]\n");
    let err = RecipeDoc::load(&top).expect_err("missing base");
    // Both problems: the nested missing base inside top.toml and gone.toml.
    assert_eq!(err.0.len(), 2, "{err}");
    assert_eq!(line_col(err.0[1].loc.clone()), (3, 3));

    let bad = write(dir.path(), "bad.toml", "extends = 3\n");
    let err = RecipeDoc::load(&bad).expect_err("bad extends");
    assert!(err.0[0].message.contains("found an integer"), "{err}");
}

#[test]
fn relative_paths_resolve_against_defining_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "shared/base.toml", "[data]\ncorpus = \"../data/c.tsv\"\nlanguages = \"top-40\"\n");
    let top = write(
        dir.path(),
        "recipes/lid/top.toml",
        "extends = \"../../shared/base.toml\"\n[data]\nlanguages = \"top-10\"\nextra = \"more.tsv\"\n",
    );
    let doc = load(&top);
    let corpus = kp("data.corpus");
    assert_eq!(
        doc.defining_file(&corpus),
        Some(dir.path().join("recipes/lid/../../shared/base.toml").as_path())
    );
    assert_eq!(
        doc.resolve_path(&corpus, "../data/c.tsv"),
        dir.path().join("recipes/lid/../../shared/../data/c.tsv")
    );
    assert_eq!(doc.resolve_path(&kp("data.extra"), "more.tsv"), dir.path().join("recipes/lid/more.tsv"));
    // Absolute paths pass through; unknown keys fall back to the top file.
    assert_eq!(doc.resolve_path(&corpus, "/abs/x"), PathBuf::from("/abs/x"));
    assert_eq!(doc.resolve_path(&kp("nowhere"), "x"), dir.path().join("recipes/lid/x"));
    // `~/` is the home directory, wherever the key was set.
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
    assert_eq!(doc.resolve_path(&corpus, "~/.cache/kdx/models/m"), home.join(".cache/kdx/models/m"));
}

#[test]
fn syntax_error_is_located() {
    let text = "[train]\nsteps = 10\nbatch = = 3\n";
    let err = RecipeDoc::from_str(text, Path::new("r.toml")).expect_err("syntax");
    let d = &err.0[0];
    let loc = d.loc.clone().expect("located");
    assert_eq!(loc.file, PathBuf::from("r.toml"));
    assert_eq!((loc.line, loc.col), (3, 9));
    assert_eq!(d.message, "invalid TOML: invalid string, expected `\"`, `'`");

    let dup = "a = 1\nb = 2\na = 3\n";
    let err = RecipeDoc::from_str(dup, Path::new("r.toml")).expect_err("duplicate");
    assert_eq!(err.0[0].loc.as_ref().map(|l| l.line), Some(3), "{err}");

    // Columns count characters, not bytes.
    let text = "k = \"é\" x\n";
    let err = RecipeDoc::from_str(text, Path::new("r.toml")).expect_err("syntax");
    assert_eq!(line_col(err.0[0].loc.clone()), (1, 9), "{err}");
}

const RECIPE: &str = r#"[experiment]
name = "x"

[[loss]]
plugin = "soft-kl"
weight = 0.9
temperature = 4.0

[[loss]]
plugin = "hard-ce"
weight = 0.1

[train]
steps = 3000
optimizer = { kind = "adamw", lr = 3e-3 }
"#;

#[test]
fn locate_exact_and_ancestor() {
    let doc = RecipeDoc::from_str(RECIPE, Path::new("r.toml")).expect("parse");
    assert_eq!(line_col(doc.locate(&kp("loss.0.temperature"))), (7, 1));
    assert_eq!(line_col(doc.locate(&kp("loss.1"))), (9, 1));
    // Missing key inside [[loss]] → that header.
    assert_eq!(line_col(doc.locate(&kp("loss.1.temperature"))), (9, 1));
    assert_eq!(line_col(doc.locate(&kp("train.optimizer.lr"))), (15, 31));
    assert_eq!(line_col(doc.locate(&kp("train.optimizer.beta1"))), (15, 1));
    assert_eq!(line_col(doc.locate(&kp("train"))), (13, 1));
    assert_eq!(doc.locate(&kp("nothing.here")), None);
    let d = doc.diag(&kp("loss.1.temperature"), "bad", Some("fix it".into()));
    assert_eq!(d.to_string(), "r.toml:9:1: loss[1].temperature: bad\n  help: fix it");
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Loss {
    plugin: String,
    weight: f32,
    #[serde(default)]
    temperature: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Train {
    steps: u64,
    optimizer: Optimizer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Optimizer {
    kind: String,
    lr: f64,
}

fn de_err<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str, key: &str) -> crate::Diagnostic {
    let doc = RecipeDoc::from_str(text, Path::new("r.toml")).expect("parse");
    let key = kp(key);
    let value = doc.get(&key).cloned().expect("value");
    doc.deserialize_at::<T>(&key, value).expect_err("should fail")
}

#[test]
fn deserialize_ok() {
    let doc = RecipeDoc::from_str(RECIPE, Path::new("r.toml")).expect("parse");
    let key = kp("train");
    let t: Train = doc.deserialize_at(&key, doc.get(&key).cloned().expect("train")).expect("ok");
    assert_eq!(t.steps, 3000);
    let losses: Vec<Loss> =
        doc.deserialize_at(&kp("loss"), doc.get(&kp("loss")).cloned().expect("loss")).expect("ok");
    assert_eq!(losses.len(), 2);
}

#[test]
fn deserialize_unknown_field() {
    let text = RECIPE.replace("temperature = 4.0", "temprature = 4.0");
    let d = de_err::<Loss>(&text, "loss.0");
    assert_eq!(d.message, "unknown key `temprature`");
    assert_eq!(
        d.help.as_deref(),
        Some("did you mean `temperature`? valid keys: plugin, weight, temperature")
    );
    assert_eq!(d.key_path.as_ref().map(|k| k.to_string()).as_deref(), Some("loss[0].temprature"));
    assert_eq!(line_col(d.loc.clone()), (7, 1));
    assert_eq!(
        d.to_string(),
        "r.toml:7:1: loss[0].temprature: unknown key `temprature`\n  help: did you mean `temperature`? valid keys: plugin, weight, temperature"
    );
    // Nested inline table, whole list deserialised at once.
    let text = RECIPE.replace("lr = 3e-3", "lrr = 3e-3");
    let d = de_err::<Train>(&text, "train");
    assert_eq!(d.key_path.as_ref().map(|k| k.to_string()).as_deref(), Some("train.optimizer.lrr"));
    assert_eq!(line_col(d.loc.clone()), (15, 31));
    assert_eq!(d.help.as_deref(), Some("did you mean `lr`? valid keys: kind, lr"));
}

#[test]
fn deserialize_wrong_type() {
    let text = RECIPE.replace("temperature = 4.0", "temperature = \"hot\"");
    let d = de_err::<Vec<Loss>>(&text, "loss");
    assert_eq!(d.message, "expected a number, found string \"hot\"");
    assert_eq!(d.key_path.as_ref().map(|k| k.to_string()).as_deref(), Some("loss[0].temperature"));
    assert_eq!(line_col(d.loc.clone()), (7, 1));
    let text = RECIPE.replace("steps = 3000", "steps = -5");
    let d = de_err::<Train>(&text, "train");
    assert_eq!(d.message, "invalid value integer -5, expected a non-negative integer");
    assert_eq!(line_col(d.loc.clone()), (14, 1));
}

#[test]
fn deserialize_missing_field() {
    let text = RECIPE.replace("weight = 0.1\n", "");
    let d = de_err::<Loss>(&text, "loss.1");
    assert_eq!(d.message, "missing key `weight`");
    assert_eq!(d.key_path.as_ref().map(|k| k.to_string()).as_deref(), Some("loss[1]"));
    // At the [[loss]] header of that element.
    assert_eq!(line_col(d.loc.clone()), (9, 1));
}

const SWEEP: &str = r#"[[loss]]
plugin = "soft-kl"
weight = 0.9
temperature = 4.0

[[loss]]
plugin = "hard-ce"
weight = 0.1

[train]
optimizer = { kind = "adamw", lr = 3e-3 }

[sweep]
"loss.0.temperature" = [1, 2, 4]
"train.optimizer.lr" = [1e-3, 3e-3]
"#;

#[test]
fn sweep_product_order_and_names() {
    let doc = RecipeDoc::from_str(SWEEP, Path::new("r.toml")).expect("parse");
    assert!(doc.has_sweep());
    assert!(doc.root().get("sweep").is_none());
    let runs = doc.expand_sweep().expect("expand");
    assert_eq!(runs.len(), 6);
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "temperature=1,lr=0.001",
            "temperature=1,lr=0.003",
            "temperature=2,lr=0.001",
            "temperature=2,lr=0.003",
            "temperature=4,lr=0.001",
            "temperature=4,lr=0.003",
        ]
    );
    let last = &runs[5];
    assert_eq!(last.settings[0].0, kp("loss.0.temperature"));
    assert_eq!(last.settings[1].1, Value::Float(3e-3));
    assert_eq!(last.doc.get(&kp("loss.0.temperature")), Some(&Value::Integer(4)));
    assert_eq!(last.doc.get(&kp("train.optimizer.lr")), Some(&Value::Float(3e-3)));
    assert!(!last.doc.has_sweep());
    assert!(!last.doc.to_toml_string().contains("sweep"));
    // Swept keys are located at their sweep entries.
    assert_eq!(line_col(last.doc.locate(&kp("loss.0.temperature"))), (14, 1));
    assert_eq!(line_col(last.doc.locate(&kp("train.optimizer.lr"))), (15, 1));
    // Unswept keys keep their place.
    assert_eq!(line_col(last.doc.locate(&kp("loss.0.weight"))), (3, 1));
    // Expanded docs differ in hash; the same settings give the same hash.
    assert_ne!(runs[0].doc.content_hash(), runs[1].doc.content_hash());
    let again = doc.expand_sweep().expect("expand");
    assert_eq!(runs[3].doc.content_hash(), again[3].doc.content_hash());
}

#[test]
fn sweep_order_is_file_order() {
    let text = "[b]\nx = 1\n[a]\ny = 1\n[sweep]\n\"b.x\" = [1, 2]\n\"a.y\" = [3, 4]\n";
    let doc = RecipeDoc::from_str(text, Path::new("r.toml")).expect("parse");
    let names: Vec<String> = doc.expand_sweep().expect("expand").into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["x=1,y=3", "x=1,y=4", "x=2,y=3", "x=2,y=4"]);
}

#[test]
fn sweep_ambiguous_suffix_and_new_leaf() {
    let text = format!(
        "{}\n\"loss.0.weight\" = [0.5, 0.25]\n\"loss.1.weight\" = [0.5]\n\"loss.1.temperature\" = [2.0]\n",
        SWEEP
    );
    let doc = RecipeDoc::from_str(&text, Path::new("r.toml")).expect("parse");
    let runs = doc.expand_sweep().expect("expand");
    assert_eq!(runs.len(), 3 * 2 * 2);
    assert_eq!(
        runs[0].name,
        "loss0.temperature=1,lr=0.001,loss0.weight=0.5,loss1.weight=0.5,loss1.temperature=2"
    );
    // A key that was left at its default is added, located at the sweep entry.
    assert_eq!(runs[0].doc.get(&kp("loss.1.temperature")), Some(&Value::Float(2.0)));
    assert_eq!(line_col(runs[0].doc.locate(&kp("loss.1.temperature"))), (19, 1));
    let mut names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), runs.len());
}

#[test]
fn sweep_names_are_filesystem_safe_and_unique() {
    let text = "[data]\nlang = \"x\"\n[sweep]\n\"data.lang\" = [\"a/b\", \"a b\", \"a_b\"]\n";
    let doc = RecipeDoc::from_str(text, Path::new("r.toml")).expect("parse");
    let names: Vec<String> = doc.expand_sweep().expect("expand").into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["lang=a_b", "lang=a_b~2", "lang=a_b~3"]);
}

#[test]
fn sweep_errors() {
    let text = r#"[train]
steps = 3
[[loss]]
weight = 1.0
[sweep]
"train.optimizer.lr" = [1, 2]
"train.steps" = 5
"loss.3.weight" = [1]
"loss.0.weight" = []
"bad..key" = [1]
"train.steps.x" = [1]
"#;
    let doc = RecipeDoc::from_str(text, Path::new("r.toml")).expect("parse");
    let err = doc.expand_sweep().expect_err("errors");
    let lines: Vec<(usize, &str)> =
        err.0.iter().map(|d| (d.loc.as_ref().map_or(0, |l| l.line), d.message.as_str())).collect();
    // Value-shape problems first (all found in one pass), in file order.
    assert_eq!(lines[0].0, 7);
    assert!(lines[0].1.contains("must be an array, found an integer"), "{err}");
    assert_eq!(lines[1].0, 9);
    assert!(lines[1].1.contains("are empty"), "{err}");
    assert_eq!(lines[2].0, 10);
    assert!(lines[2].1.contains("invalid sweep key"), "{err}");

    // Structural problems are reported once the values are well-formed.
    let text = r#"[train]
steps = 3
[[loss]]
weight = 1.0
[sweep]
"train.optimizer.lr" = [1, 2]
"loss.3.weight" = [1]
"train.steps.x" = [1]
"#;
    let doc = RecipeDoc::from_str(text, Path::new("r.toml")).expect("parse");
    let err = doc.expand_sweep().expect_err("errors");
    assert_eq!(err.0.len(), 3, "{err}");
    let d = &err.0[0];
    assert_eq!(line_col(d.loc.clone()), (6, 1));
    assert_eq!(
        d.message,
        "cannot sweep `train.optimizer.lr`: `train.optimizer` does not exist in the recipe"
    );
    assert!(d.help.is_some());
    assert_eq!(line_col(err.0[1].loc.clone()), (7, 1));
    assert_eq!(
        err.0[1].message,
        "cannot sweep `loss[3].weight`: `loss` has 1 element(s), so there is no `loss[3]`"
    );
    assert_eq!(
        err.0[2].message,
        "cannot sweep `train.steps.x`: `train.steps` is an integer, not a table or array"
    );

    let doc = RecipeDoc::from_str("sweep = 3\n", Path::new("r.toml")).expect("parse");
    assert!(doc.has_sweep());
    assert!(doc.expand_sweep().is_err());
}

#[test]
fn sweep_limit() {
    let mut text = String::from("[a]\n[sweep]\n");
    for i in 0..5 {
        text.push_str(&format!("\"a.k{i}\" = [1,2,3,4,5,6,7,8,9,10]\n"));
    }
    let doc = RecipeDoc::from_str(&text, Path::new("r.toml")).expect("parse");
    let err = doc.expand_sweep().expect_err("too many");
    assert!(err.to_string().contains("100000 runs"), "{err}");
}

#[test]
fn no_sweep_is_one_unnamed_run() {
    let doc = RecipeDoc::from_str(RECIPE, Path::new("r.toml")).expect("parse");
    assert!(!doc.has_sweep());
    let runs = doc.expand_sweep().expect("expand");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].name, "");
    assert!(runs[0].settings.is_empty());
    assert_eq!(runs[0].doc.root(), doc.root());
}

#[test]
fn sweep_from_base_merges_with_child() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "base/b.toml", "[t]\nx = 1\ny = 1\n[sweep]\n\"t.x\" = [1, 2]\n");
    let top = write(dir.path(), "top.toml", "extends = \"base/b.toml\"\n[sweep]\n\"t.y\" = [5, 6]\n");
    let doc = load(&top);
    let runs = doc.expand_sweep().expect("expand");
    assert_eq!(runs.len(), 4);
    assert_eq!(runs[1].name, "x=1,y=6");
    let loc = runs[1].doc.locate(&kp("t.x")).expect("loc");
    assert_eq!(loc.file, dir.path().join("base/b.toml"));
    assert_eq!(loc.line, 5);
}

#[test]
fn to_toml_round_trips_and_hash_is_stable() {
    let doc = RecipeDoc::from_str(SWEEP, Path::new("r.toml")).expect("parse");
    let text = doc.to_toml_string();
    // The sweep is kept, in its order, so reloading gives the same recipe.
    let again = RecipeDoc::from_str(&text, Path::new("r.toml")).expect("reparse");
    assert_eq!(again.root(), doc.root());
    assert_eq!(again.content_hash(), doc.content_hash());
    let names = |d: &RecipeDoc| -> Vec<String> {
        d.expand_sweep().expect("expand").into_iter().map(|r| r.name).collect()
    };
    assert_eq!(names(&again), names(&doc));
    // Formatting and comments do not change the hash; content does.
    let reformatted =
        RecipeDoc::from_str(&format!("# hi\n{SWEEP}\n\n"), Path::new("other.toml")).expect("parse");
    assert_eq!(reformatted.content_hash(), doc.content_hash());
    let changed = RecipeDoc::from_str(&SWEEP.replace("0.9", "0.8"), Path::new("r.toml")).expect("parse");
    assert_ne!(changed.content_hash(), doc.content_hash());
    assert_eq!(doc.content_hash().len(), 64);
}

#[test]
fn no_panic_on_odd_input() {
    for text in [
        "",
        "\u{feff}a = 1",
        "[a]\n[a]\n",
        "a = [[1], {}]\n[sweep]\n\"a.0.0\" = [2]\n\"a.1.k\" = [3]\n",
        "[sweep]\n\"\" = [1]\n\"a[\" = [1]\n\"\\\"\" = [1]\n",
        "sweep = []\nextends = []\n",
        "extends = [1, \"x\"]\n",
        "[a\n",
        "x = \"\u{0}\"",
    ] {
        if let Ok(doc) = RecipeDoc::from_str(text, Path::new("r.toml")) {
            let _ = doc.expand_sweep();
            let _ = doc.to_toml_string();
            let _ = doc.content_hash();
            let _ = doc.locate(&KeyPath::root());
            let _ = doc.get(&KeyPath::root());
        }
    }
    let doc = RecipeDoc::from_str(
        "a = [[1], {}]\n[sweep]\n\"a.0.0\" = [2]\n\"a.1.k\" = [3]\n",
        Path::new("r.toml"),
    )
    .expect("parse");
    let runs = doc.expand_sweep().expect("expand");
    assert_eq!(runs[0].doc.get(&kp("a.0.0")), Some(&Value::Integer(2)));
    assert_eq!(runs[0].name, "a0.0=2,k=3");
    let err = RecipeDoc::load(Path::new("/definitely/not/here.toml")).expect_err("missing");
    assert!(err.to_string().starts_with("cannot read recipe `/definitely/not/here.toml`"));
}

#[test]
fn a_table_naming_another_plugin_replaces_its_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "base.toml",
        "[teacher]\nplugin = \"ngram-mlp\"\nbuckets = 1024\n\n[student]\nplugin = \"ngram-mlp\"\ndim = 8\n",
    );
    let child = write(
        dir.path(),
        "child.toml",
        "extends = \"base.toml\"\n[teacher]\nplugin = \"ensemble\"\n\n[student]\nplugin = \"ngram-mlp\"\ndim = 4\n",
    );
    let doc = RecipeDoc::load(&child).expect("loads");
    let teacher = doc.root()["teacher"].as_table().expect("table");
    assert_eq!(teacher.get("plugin").and_then(|v| v.as_str()), Some("ensemble"));
    assert!(teacher.get("buckets").is_none(), "the base plugin's parameters are dropped");
    let student = doc.root()["student"].as_table().expect("table");
    assert_eq!(student.get("dim").and_then(|v| v.as_integer()), Some(4), "same plugin: merged as usual");
}
