//! Recipes: every shipped recipe validates and matches the JSON Schema; every malformed
//! recipe in tests/malformed produces its located, actionable error; misspelling any key
//! of a shipped recipe is caught with a suggestion.

use std::path::{Path, PathBuf};

use kdx::batch::find_recipes;
use kdx_framework::kdx_recipe::RecipeDoc;
use kdx_framework::plan::load_plans;
use kdx_plugins as _;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shipped() -> Vec<PathBuf> {
    find_recipes(&[root().join("recipes")]).unwrap()
}

#[test]
fn every_shipped_recipe_validates() {
    let files = shipped();
    assert!(!files.is_empty(), "no recipes found");
    for f in files {
        if let Err(d) = load_plans(&f) {
            panic!("{} does not validate:\n{d}", f.display());
        }
    }
}

/// Every built-in plugin trains in at least one shipped recipe: each is named (as a
/// section's or a nested member's `plugin`) by some run of some recipe.
#[test]
fn every_plugin_is_used_by_a_shipped_recipe() {
    fn collect(v: &toml::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    match (k.as_str(), v) {
                        ("plugin", toml::Value::String(s)) => {
                            out.insert(s.clone());
                        }
                        _ => collect(v, out),
                    }
                }
            }
            toml::Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut used = std::collections::BTreeSet::new();
    for f in shipped() {
        for plan in load_plans(&f).unwrap() {
            collect(&toml::Value::Table(plan.doc.root().clone()), &mut used);
            used.insert(plan.sampler.plugin.clone());
        }
    }
    use kdx_framework::registry::{list, PluginKind};
    let unused: Vec<String> = PluginKind::ALL
        .iter()
        .flat_map(|&k| list(k))
        .map(|r| r.name.to_string())
        .filter(|n| !used.contains(n))
        .collect();
    assert!(unused.is_empty(), "no shipped recipe uses: {}", unused.join(", "));
}

#[test]
fn malformed_recipes_give_their_expected_errors() {
    let dir = root().join("tests/malformed");
    let mut cases = 0;
    for f in find_recipes(std::slice::from_ref(&dir)).unwrap() {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('_') {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let expects: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        assert!(!expects.is_empty(), "{name} has no `# expect:` lines");
        // Relative paths make the expected `file:line:col` text independent of the checkout.
        let rel = f.strip_prefix(root()).unwrap().to_path_buf();
        let cwd_guard = CwdGuard::enter(&root());
        let err = match load_plans(&rel) {
            Ok(_) => panic!("{name} was accepted"),
            Err(d) => d.to_string(),
        };
        drop(cwd_guard);
        for e in expects {
            assert!(err.contains(e), "{name}: expected `{e}` in the error, got:\n{err}");
        }
        cases += 1;
    }
    assert!(cases >= 20, "only {cases} malformed cases");
}

#[test]
fn misspelling_any_key_of_a_shipped_recipe_is_located_with_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for f in shipped() {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let Some((key, _)) = line.split_once('=') else { continue };
            let key = key.trim();
            if key.is_empty()
                || key.starts_with('#')
                || key.starts_with('"')
                || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            if key == "extends" || key.len() < 4 {
                continue;
            }
            // Drop the key's second character: `temperature` → `tmperature`.
            let typo = format!("{}{}", &key[..1], &key[2..]);
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            lines[i] = line.replacen(key, &typo, 1);
            // Keep relative paths valid: write the copy beside the original.
            let copy = f.with_file_name(format!(".typo-{}-{}", i, f.file_name().unwrap().to_string_lossy()));
            std::fs::write(&copy, lines.join("\n")).unwrap();
            let r = load_plans(&copy);
            std::fs::remove_file(&copy).unwrap();
            let err = match r {
                Ok(_) => panic!("{}:{}: misspelt `{typo}` was accepted", f.display(), i + 1),
                Err(d) => d.to_string(),
            };
            let loc = format!(":{}:", i + 1);
            assert!(
                err.contains(&loc),
                "{}: typo `{typo}` not located at line {}: {err}",
                f.display(),
                i + 1
            );
            assert!(
                err.contains(&format!("did you mean `{key}`")),
                "{}: no suggestion for `{typo}`: {err}",
                f.display()
            );
            checked += 1;
        }
    }
    let _ = tmp;
    assert!(checked >= 10, "only {checked} keys checked");
}

#[test]
fn schema_accepts_every_shipped_recipe() {
    let schema = kdx_framework::schema::recipe_schema();
    let validator = jsonschema::validator_for(&schema).expect("the generated schema is a valid JSON Schema");
    for f in shipped() {
        let doc = RecipeDoc::load(&f).unwrap();
        let json = serde_json::to_value(doc.root()).unwrap();
        let errors: Vec<String> =
            validator.iter_errors(&json).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{}: schema rejects it: {errors:#?}", f.display());
    }
    // And it rejects what `kdx validate` rejects, e.g. an unknown key.
    let bad: serde_json::Value = serde_json::json!({ "experiment": { "name": "x", "sed": 1 } });
    assert!(validator.iter_errors(&bad).next().is_some());
}

#[test]
fn every_plugin_is_documented() {
    use kdx_framework::registry::{list, PluginKind};
    for kind in PluginKind::ALL {
        for r in list(kind) {
            assert!(!r.summary.is_empty(), "{kind} `{}` has no summary", r.name);
            let schema = serde_json::to_value((r.schema)()).unwrap();
            assert!(
                schema.get("description").is_some(),
                "{kind} `{}`: its params struct has no doc comment",
                r.name
            );
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (k, p) in props {
                    assert!(
                        p.get("description").is_some(),
                        "{kind} `{}`: parameter `{k}` has no doc comment",
                        r.name
                    );
                }
            }
            let help = kdx::cli::plugins_help(Some(kind.as_str()), Some(r.name)).unwrap();
            assert!(help.contains(r.name));
        }
    }
    kdx_framework::registry::check_unique().unwrap();
}

/// Changes the working directory for the duration of a scope (tests in this file that
/// use it run one at a time thanks to the lock).
struct CwdGuard {
    prev: PathBuf,
    _lock: std::sync::MutexGuard<'static, ()>,
}

static CWD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl CwdGuard {
    fn enter(dir: &Path) -> CwdGuard {
        let lock = CWD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let prev = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir).unwrap();
        CwdGuard { prev, _lock: lock }
    }
}

impl Drop for CwdGuard {
    fn drop(&mut self) {
        let _ = std::env::set_current_dir(&self.prev);
    }
}

#[test]
fn no_mangled_recipe_makes_kdx_panic() {
    // Every prefix of every shipped recipe (cut at each line and mid-line), and every recipe
    // with one line deleted: each must load or fail with diagnostics, never panic.
    let mut variants = 0;
    for f in shipped() {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut mangled: Vec<String> = Vec::new();
        for i in 0..lines.len() {
            mangled.push(lines[..i].join("\n"));
            let half: String = lines[i].chars().take(lines[i].chars().count() / 2).collect();
            mangled.push(format!("{}\n{half}", lines[..i].join("\n")));
            let mut without = lines.clone();
            without.remove(i);
            mangled.push(without.join("\n"));
        }
        for (k, m) in mangled.iter().enumerate() {
            let copy = f.with_file_name(format!(".mangled-{k}-{}", f.file_name().unwrap().to_string_lossy()));
            std::fs::write(&copy, m).unwrap();
            let r = std::panic::catch_unwind(|| load_plans(&copy).map(|_| ()).map_err(|d| d.to_string()));
            std::fs::remove_file(&copy).unwrap();
            match r {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => {
                    assert!(!msg.trim().is_empty(), "{}: empty diagnostics for variant {k}", f.display())
                }
                Err(_) => panic!("{}: variant {k} panicked:\n{m}", f.display()),
            }
            variants += 1;
        }
    }
    assert!(variants > 100);
}

/// The framework fingerprints a dataset (the key of the teacher and feature caches) from its
/// `[data]` section and the content of the files its plugin declares: it follows both, and
/// nothing else.
#[test]
fn the_data_fingerprint_follows_the_data_section_and_the_files_read() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.tsv");
    std::fs::copy(root().join("tests/data/tiny-lid.tsv"), &data).unwrap();
    let text = std::fs::read_to_string(root().join("recipes/data/tsv-example.toml"))
        .unwrap()
        .replace("\"../../tests/data/tiny-lid.tsv\"", "\"rows.tsv\"");
    let recipe = tmp.path().join("r.toml");
    let fingerprint = |text: &str| {
        std::fs::write(&recipe, text).unwrap();
        load_plans(&recipe).unwrap().remove(0).data_fingerprint().unwrap()
    };
    let first = fingerprint(&text);
    assert_eq!(first, fingerprint(&text), "the same data gives the same fingerprint");
    let other_params = text.replace("train = \"rows.tsv\"", "train = \"rows.tsv\"\ndev_fraction = 0.2");
    assert_ne!(first, fingerprint(&other_params), "a parameter of [data] changed");
    let mut rows = std::fs::read_to_string(&data).unwrap();
    rows = rows.replacen("\n", "\n\n", 1);
    std::fs::write(&data, rows).unwrap();
    assert_ne!(first, fingerprint(&text), "the file's content changed");
    // What is outside [data] does not enter it.
    std::fs::copy(root().join("tests/data/tiny-lid.tsv"), &data).unwrap();
    assert_eq!(first, fingerprint(&text.replace("seed = 7", "seed = 8")));
}
