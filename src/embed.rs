//! `kdx embed`: sentence vectors, one per input line, from a trained run's model or from a
//! Hugging Face model directory (read as the `hf-encoder` plugin reads it), as TAB-separated
//! lines or a `.npy` matrix.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, Result};
use kdx_framework::features::Bags;
use kdx_framework::model::Model;
use kdx_plugins::model::hf_encoder::HfDir;

/// The model behind `path`: a Hugging Face directory (it has a `config.json`) or a run
/// directory's exported `which` (student or teacher).
pub fn load(path: &Path, which: &str) -> Result<Box<dyn Model>> {
    if path.join("config.json").is_file() {
        let hf = HfDir::open(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(Box::new(hf.model(1)?));
    }
    let stem = path.join(which);
    anyhow::ensure!(
        stem.with_extension("json").is_file(),
        "{} is neither a Hugging Face model directory (no config.json) nor a run directory with an exported {which} ({} is missing)",
        path.display(),
        stem.with_extension("json").display()
    );
    Ok(kdx_framework::export::load(&stem)?.0)
}

/// Embeds every line of `input` with `model`: a `rows × width` matrix, row-major.
pub fn embed(model: &dyn Model, lines: &[String]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(lines.len() * model.hidden_dim());
    for chunk in lines.chunks(256) {
        let bags = Bags::build(model.featurizer(), chunk.iter().map(String::as_str).collect::<Vec<_>>());
        out.extend(model.forward(&bags)?.hidden);
    }
    Ok(out)
}

/// A little-endian f32 `.npy` file (format 1.0) of a `rows × cols` matrix.
pub fn npy(data: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// `kdx embed MODEL [FILE] [-o OUT]`.
pub fn run(model_path: &Path, which: &str, file: Option<&Path>, output: Option<&Path>) -> Result<()> {
    let model = load(model_path, which)?;
    let input: Box<dyn BufRead> = match file {
        Some(f) => Box::new(std::io::BufReader::new(std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?)),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let lines: Vec<String> = input.lines().collect::<std::io::Result<_>>().context("reading the texts")?;
    let width = model.hidden_dim();
    let vectors = embed(&*model, &lines)?;
    let tsv = || {
        let mut s = String::with_capacity(vectors.len() * 12);
        for row in vectors.chunks(width.max(1)) {
            let cells: Vec<String> = row.iter().map(f32::to_string).collect();
            s.push_str(&cells.join("\t"));
            s.push('\n');
        }
        s
    };
    match output {
        Some(p) if p.extension().is_some_and(|e| e == "npy") => kdx_fsio::write_atomic(p, &npy(&vectors, lines.len(), width)),
        Some(p) => kdx_fsio::write_atomic(p, tsv().as_bytes()),
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            out.write_all(tsv().as_bytes())?;
            out.flush().context("writing the vectors")
        }
    }
}
