//! `kdx embed`: sentence vectors, one per input line, from a trained run's model or from a
//! Hugging Face model directory (read as the `hf-encoder` plugin reads it), as TAB-separated
//! lines or a `.npy` matrix; and `kdx eval --parallel`, translation retrieval with them.

use std::io::Write;
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

/// Embeds every line of `lines` with `model`: a `rows × width` matrix, row-major.
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

/// `kdx embed MODEL [FILE] [-o OUT]`: the vectors of `lines`.
pub fn run(model_path: &Path, which: &str, lines: &[String], output: Option<&Path>) -> Result<()> {
    let model = load(model_path, which)?;
    let width = model.hidden_dim();
    let vectors = embed(&*model, lines)?;
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

/// Translation retrieval on a user's parallel file (`source<TAB>translation` lines, no
/// header): the model embeds both sides; accuracy@1 of each translation's nearest distinct
/// source (cosine) being its own, and of each distinct source's nearest translation being
/// one of its own. Returns the printed summary.
pub fn eval_parallel(model_path: &Path, which: &str, file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let (mut sources, mut translations): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut cols = line.split('\t');
        match (cols.next(), cols.next()) {
            (Some(s), Some(t)) if !s.is_empty() && !t.is_empty() => {
                sources.push(s.to_string());
                translations.push(t.to_string());
            }
            _ => anyhow::bail!("{}:{}: expected `source<TAB>translation`, found {line:?}", file.display(), n + 1),
        }
    }
    anyhow::ensure!(sources.len() >= 2, "{}: retrieval needs at least 2 pairs, found {}", file.display(), sources.len());
    // Distinct sources are the candidates; a source translated twice is one candidate.
    let mut distinct: Vec<String> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let gold: Vec<usize> = sources
        .iter()
        .map(|s| {
            *index.entry(s.clone()).or_insert_with(|| {
                distinct.push(s.clone());
                distinct.len() - 1
            })
        })
        .collect();
    let model = load(model_path, which)?;
    let w = model.hidden_dim();
    let unit = |mut v: Vec<f32>| {
        for row in v.chunks_mut(w.max(1)) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= n);
        }
        v
    };
    let s = unit(embed(&*model, &distinct)?);
    let t = unit(embed(&*model, &translations)?);
    let nearest = |q: &[f32], keys: &[f32]| -> usize {
        let mut best = (f32::NEG_INFINITY, 0);
        for (j, k) in keys.chunks(w).enumerate() {
            let c: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
            if c > best.0 {
                best = (c, j);
            }
        }
        best.1
    };
    use rayon::prelude::*;
    let forward = t.par_chunks(w).zip(gold.par_iter()).filter(|(q, &g)| nearest(q, &s) == g).count();
    let backward = s.par_chunks(w).enumerate().filter(|(i, q)| gold[nearest(q, &t)] == *i).count();
    let (n, m) = (translations.len(), distinct.len());
    Ok(format!(
        "pairs {n}, distinct sources {m}\ntranslation → source accuracy@1 {:.4} (chance {:.4})\nsource → translation accuracy@1 {:.4} (chance {:.4})\n",
        forward as f64 / n as f64,
        1.0 / m as f64,
        backward as f64 / m as f64,
        1.0 / n as f64
    ))
}
