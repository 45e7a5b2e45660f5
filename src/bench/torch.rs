//! The PyTorch reference side of a benchmark: a script of `../shared/bench/` run with its
//! arguments, its `RESULT {json}` line read back.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// Runs a PyTorch reference script and returns the JSON of its `RESULT {json}` line.
pub fn torch_result(python: &str, script: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the PyTorch reference failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .context("no RESULT line from the PyTorch reference")?;
    Ok(serde_json::from_str(line)?)
}
