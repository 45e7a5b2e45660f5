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
