//! `kdx new loss NAME`: a loss-plugin crate that builds and loads with no edits.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use kdx_framework::dylib::{valid_name, FRAMEWORK_VERSION};
use kdx_framework::registry::{self, PluginKind};

/// What [`new_loss`] created.
#[derive(Clone, Debug)]
pub struct Scaffold {
    /// The crate's directory.
    pub dir: PathBuf,
    /// The plugin (and crate) name.
    pub name: String,
    /// The Rust type of the loss.
    pub type_name: String,
    /// File name of the library `cargo build` makes (e.g. `libmy_loss.so`).
    pub library_file: String,
    /// How the crate depends on kdx-sdk (the value of its `kdx-sdk = { … }`).
    pub sdk_dependency: String,
}

impl Scaffold {
    /// What to do next, for the terminal.
    pub fn next_steps(&self) -> String {
        let d = self.dir.display();
        format!(
            "created loss plugin `{name}` in {d}\n\n\
             next steps:\n\
             \x20 cargo test --manifest-path {d}/Cargo.toml\n\
             \x20 cargo build --release --manifest-path {d}/Cargo.toml\n\
             \x20 kdx run RECIPE --plugin {d}/target/release/{lib}\n\
             with `[[loss]] plugin = \"{name}\"` in RECIPE (see {d}/README.md)\n",
            name = self.name,
            lib = self.library_file
        )
    }
}

/// Names a crate cannot have (Rust keywords and the standard crates).
const RUST_KEYWORDS: &str = "as async await break const continue crate dyn else enum extern false fn for if impl in let loop match \
     mod move mut pub ref return self static struct super trait true type unsafe use where while abstract become box do final \
     macro override priv typeof unsized virtual yield try gen std core alloc test proc_macro";

/// `my-loss` → `MyLoss`, avoiding the names the template imports.
fn type_name(name: &str) -> String {
    let mut s: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    if ["Loss", "LossInput", "LossOutput", "Params", "Result", "Deserialize"].contains(&s.as_str())
        || s.ends_with("Params")
    {
        s.push_str("Plugin");
    }
    s
}

/// `to` relative to the directory `from` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (f, t): (Vec<Component>, Vec<Component>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut p = PathBuf::new();
    for _ in common..f.len() {
        p.push("..");
    }
    for c in &t[common..] {
        p.push(c.as_os_str());
    }
    if p.as_os_str().is_empty() {
        p.push(".");
    }
    p
}

fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|s| s.lines().any(|l| l.trim() == "name = \"kdx-sdk\""))
}

/// The kdx-sdk crate of the kdx checkout `dir` is inside, if it is inside one.
fn find_sdk(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().map(|a| a.join("sdk")).find(|s| is_sdk(s))
}

/// Writes a plugin crate for the loss `name` into `dir` (default `./NAME`), which must not
/// exist or be empty.
pub fn new_loss(name: &str, dir: Option<&Path>) -> Result<Scaffold> {
    if !valid_name(name) {
        bail!("`{name}` is not a valid plugin name: use lowercase letters and digits, words joined by `-` (e.g. `focal-kd`)");
    }
    if RUST_KEYWORDS.split_whitespace().any(|k| k == name.replace('-', "_")) {
        bail!("`{name}` cannot name a Rust crate; choose another name");
    }
    if let Some(r) = registry::find(PluginKind::Loss, name) {
        bail!(
            "a built-in loss is already named `{name}` (registered in {}); plugin names must be unique",
            r.file
        );
    }
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from(name),
    };
    if dir.exists()
        && std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?.next().is_some()
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    let abs = std::fs::canonicalize(&dir)?;
    let version = format!("version = \"={FRAMEWORK_VERSION}\"");
    let sdk_dependency = match find_sdk(&abs) {
        // Inside a kdx checkout: its SDK, by a relative path.
        Some(sdk) => {
            format!("{version}, path = \"{}\"", relative(&abs, &std::fs::canonicalize(&sdk)?).display())
        }
        // Anywhere else: a copy of this kdx's SDK inside the crate, so the crate builds on
        // its own and can be shared as one directory.
        None => {
            vendor_sdk(&dir.join("kdx-sdk"))?;
            format!("{version}, path = \"kdx-sdk\"")
        }
    };
    let ty = type_name(name);
    let lib = name.replace('-', "_");
    let library_file = format!("{}{lib}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let fill = |t: &str| {
        t.replace("__NAME__", name)
            .replace("__TYPE__", &ty)
            .replace("__LIBFILE__", &library_file)
            .replace("__SDK__", &sdk_dependency)
            .replace("__VERSION__", FRAMEWORK_VERSION)
    };
    let files = [
        ("Cargo.toml", CARGO_TOML),
        ("src/lib.rs", LIB_RS),
        ("README.md", README),
        (".gitignore", "/target\n"),
    ];
    for (f, t) in files {
        let p = dir.join(f);
        kdx_fsio::write_atomic(&p, fill(t).as_bytes())?;
    }
    Ok(Scaffold { dir, name: name.to_string(), type_name: ty, library_file, sdk_dependency })
}

/// The SDK's sources, as this kdx was built with them.
const SDK_FILES: [(&str, &str); 8] = [
    ("Cargo.toml", include_str!("../sdk/Cargo.toml")),
    ("src/lib.rs", include_str!("../sdk/src/lib.rs")),
    ("src/abi.rs", include_str!("../sdk/src/abi.rs")),
    ("src/export.rs", include_str!("../sdk/src/export.rs")),
    ("src/layers.rs", include_str!("../sdk/src/layers.rs")),
    ("src/math.rs", include_str!("../sdk/src/math.rs")),
    ("src/shapes.rs", include_str!("../sdk/src/shapes.rs")),
    ("src/testing.rs", include_str!("../sdk/src/testing.rs")),
];

/// Writes the SDK into `dir` as a stand-alone crate (its workspace settings made explicit).
fn vendor_sdk(dir: &Path) -> Result<()> {
    for (f, text) in SDK_FILES {
        let text = if f == "Cargo.toml" {
            text.replace("version.workspace = true", &format!("version = \"{FRAMEWORK_VERSION}\""))
                .replace("edition.workspace = true", "edition = \"2021\"")
                .replace("license.workspace = true", "license = \"MIT OR Apache-2.0\"")
                .replace("[lints]\nworkspace = true\n", "")
        } else {
            text.to_string()
        };
        let p = dir.join(f);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        kdx_fsio::write_atomic(&p, text.as_ref())?;
    }
    Ok(())
}

const CARGO_TOML: &str = r#"[package]
name = "__NAME__"
description = "A kdx loss plugin"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# A dynamic library kdx loads at run time.
crate-type = ["cdylib"]

[dependencies]
# The SDK of the kdx version this plugin is built for: kdx loads it, and every later kdx of
# the same major version (which adapts older plugin ABIs); an older kdx refuses it.
kdx-sdk = { __SDK__, features = ["schema"] }
serde = { version = "1", features = ["derive"] }

# A plugin crate is a workspace of its own, wherever it lives.
[workspace]
"#;

const LIB_RS: &str = r##"//! `__NAME__`: a kdx loss plugin.
//!
//! ```text
//! cargo test                    # the gradient check below
//! cargo build --release         # makes target/release/__LIBFILE__
//! kdx run RECIPE --plugin target/release/__LIBFILE__
//! ```
//!
//! with, in RECIPE (or name the library there: `[plugins] libraries = ["…/__LIBFILE__"]`,
//! relative to the recipe):
//!
//! ```toml
//! [[loss]]
//! plugin = "__NAME__"
//! weight = 1.0
//! temperature = 2.0
//! ```
//!
//! As generated, the loss is Hinton's soft-label distillation loss
//! `L = T² · (1/B) Σᵢ wᵢ · KL(softmax(tᵢ/T) ‖ softmax(zᵢ/T))` (z: student logits, t: teacher
//! logits, w: per-example weights) with its exact gradient. Change `compute` into your own
//! objective and keep the gradient test passing.

use kdx_sdk::math::{kl, log_softmax};
use kdx_sdk::{ensure_param, Loss, LossInput, LossOutput, Params, Result};
use serde::{Deserialize, Serialize};

/// Parameters: the recipe's `[[loss]]` table without `plugin` and `weight`. Their JSON
/// Schema is published (`params_schema` below): `kdx plugins loss __NAME__ --plugin LIB`
/// shows each field with its type, default and doc comment, and `kdx validate` checks recipes
/// against it. (`Serialize` lets a field's default appear there.)
#[derive(Clone, Debug, Deserialize, Serialize, kdx_sdk::schemars::JsonSchema)]
#[schemars(crate = "kdx_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct __TYPE__Params {
    /// Temperature T > 0 of both softmaxes.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
}

fn default_temperature() -> f32 {
    2.0
}

/// The loss.
pub struct __TYPE__ {
    params: __TYPE__Params,
}

impl Loss for __TYPE__ {
    /// What recipes write: `[[loss]] plugin = "__NAME__"`.
    const NAME: &'static str = "__NAME__";
    const SUMMARY: &'static str =
        "soft-label distillation at temperature T (generated by kdx new loss)";

    /// Checks the parameters. `parse` reports a wrong type or an unknown key at its line of
    /// the recipe; `ensure_param!` does the same for a value out of range.
    fn create(params: &Params) -> Result<Self> {
        let params: __TYPE__Params = params.parse()?;
        ensure_param!(
            params.temperature > 0.0 && params.temperature.is_finite(),
            "temperature",
            "must be a positive number, found {}",
            params.temperature
        );
        Ok(__TYPE__ { params })
    }

    /// The parameters' JSON Schema, from the struct above and its doc comments.
    fn params_schema() -> Option<String> {
        Some(kdx_sdk::schema_for::<__TYPE__Params>())
    }

    /// Reads teacher outputs (so it is skipped in the no-teacher baseline).
    fn needs_teacher(&self) -> bool {
        true
    }

    /// One batch. What `x` holds (row-major; B = x.batch, C = x.classes):
    /// - `x.student_logits` B×C, `x.student_hidden` B×H (H = `x.student_hidden_dim`);
    /// - `x.teacher_logits` B×C; `x.teacher_hidden` B×H_t when `needs_teacher_hidden` says so;
    /// - `x.labels`: B gold labels, or `None` where the student may not see them;
    /// - `x.langs`: B language ids, indices into `x.stats` (per-language statistics);
    /// - `x.weights`: B per-example weights;
    /// - `x.step` of `x.total_steps` (`x.progress()` is the fraction of the stage done).
    ///
    /// Return the value and its gradient with respect to the student logits (and, if the
    /// loss uses it, the student hidden state).
    fn compute(&mut self, x: &LossInput) -> Result<LossOutput> {
        let teacher = x.teacher_logits()?;
        let (b, c, t) = (x.batch, x.classes, self.params.temperature as f64);
        let mut value = 0.0;
        let mut grad = vec![0f32; b * c];
        for i in 0..b {
            let row = i * c..(i + 1) * c;
            let log_q = log_softmax(&x.student_logits[row.clone()], t);
            let log_p = log_softmax(&teacher[row.clone()], t);
            let p: Vec<f64> = log_p.iter().map(|v| v.exp()).collect();
            let s = t * t * x.weights[i] as f64 / b as f64;
            value += s * kl(&p, &log_p, &log_q);
            // ∂/∂z KL(p ‖ softmax(z/T)) = (softmax(z/T) − p) / T
            for (j, g) in grad[row].iter_mut().enumerate() {
                *g = (s * (log_q[j].exp() - p[j]) / t) as f32;
            }
        }
        Ok(LossOutput {
            value: value as f32,
            grad_logits: grad,
            grad_hidden: None,
        })
    }
}

// The C entry point kdx looks for when it loads the library.
kdx_sdk::export_loss!(__TYPE__);

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_sdk::testing::{gradient_check, SampleBatch};

    #[test]
    fn gradient_matches_finite_differences() {
        let mut loss = __TYPE__::create(&Params::from_json(r#"{"temperature": 2.0}"#)).unwrap();
        let batch = SampleBatch::random(8, 5, 3, 3.0, 1);
        let check = gradient_check(&mut loss, &batch.input(0, 100), 1e-2).unwrap();
        assert!(check.max_error < 5e-3, "{check}");
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(__TYPE__::create(&Params::from_json(r#"{"temperature": 0}"#)).is_err());
        assert!(__TYPE__::create(&Params::from_json(r#"{"temprature": 2}"#)).is_err());
    }
}
"##;

const README: &str = r#"# __NAME__

A kdx loss plugin, built as a dynamic library against kdx-sdk __VERSION__.

    cargo test                  # gradient check
    cargo build --release       # target/release/__LIBFILE__
    kdx run RECIPE --plugin target/release/__LIBFILE__

In the recipe:

    [[loss]]
    plugin = "__NAME__"
    temperature = 2.0

or name the library in the recipe itself (paths relative to the recipe):

    [plugins]
    libraries = ["path/to/__LIBFILE__"]

See docs/writing-a-loss-plugin.md in the kdx repository.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_and_relative_paths() {
        assert_eq!(type_name("my-loss"), "MyLoss");
        assert_eq!(type_name("kd2"), "Kd2");
        assert_eq!(type_name("loss"), "LossPlugin");
        assert_eq!(relative(Path::new("/a/b/c"), Path::new("/a/sdk")), PathBuf::from("../../sdk"));
        assert_eq!(relative(Path::new("/a"), Path::new("/a/sdk")), PathBuf::from("sdk"));
    }

    #[test]
    fn refuses_bad_names_and_non_empty_directories() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(new_loss("Bad_Name", Some(&tmp.path().join("x")))
            .unwrap_err()
            .to_string()
            .contains("not a valid plugin name"));
        assert!(new_loss("loop", Some(&tmp.path().join("x"))).is_err());
        std::fs::write(tmp.path().join("f"), "").unwrap();
        assert!(new_loss("ok-name", Some(tmp.path())).unwrap_err().to_string().contains("not empty"));
        let s = new_loss("ok-name", Some(&tmp.path().join("ok"))).unwrap();
        let toml = std::fs::read_to_string(s.dir.join("Cargo.toml")).unwrap();
        assert!(toml.contains(&format!("version = \"={FRAMEWORK_VERSION}\"")), "{toml}");
        assert!(
            toml.contains("path = \"kdx-sdk\""),
            "outside a checkout: a copy of the SDK in the crate\n{toml}"
        );
        let sdk = std::fs::read_to_string(s.dir.join("kdx-sdk/Cargo.toml")).unwrap();
        assert!(
            sdk.contains(&format!("version = \"{FRAMEWORK_VERSION}\"")) && !sdk.contains("workspace = true"),
            "{sdk}"
        );
        // Every source file of the SDK is copied (a new module would otherwise break the copy).
        let sources = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/src")).unwrap();
        for f in sources.map(|e| e.unwrap().file_name().into_string().unwrap()) {
            assert!(s.dir.join("kdx-sdk/src").join(&f).exists(), "the SDK copy lacks src/{f}");
        }
        let lib = std::fs::read_to_string(s.dir.join("src/lib.rs")).unwrap();
        assert!(
            lib.contains("pub struct OkName {")
                && lib.contains("export_loss!(OkName)")
                && !lib.contains("__")
        );
    }
}
