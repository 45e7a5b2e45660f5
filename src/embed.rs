//! `kdx embed`: sentence vectors, one per input line, from a trained run's model or from a
//! Hugging Face model directory (read as the `hf-encoder` plugin reads it), as TAB-separated
//! lines or a `.npy` matrix; and `kdx eval --parallel`, translation retrieval with them.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use kdx_framework::embedding::Embedder;
use kdx_framework::model::Model;
use kdx_framework::nn::HiddenProjection;
use kdx_framework::retrieval::ParallelSet;
use kdx_plugins::model::hf_encoder::HfDir;

/// The model behind `path`: a Hugging Face directory (it has a `config.json`) or a run
/// directory's exported `which` (student or teacher), with the projection its embedding goes
/// through (a student distilled with an embedding loss carries one into the teacher's space).
pub fn load(path: &Path, which: &str) -> Result<(Box<dyn Model>, Option<HiddenProjection>)> {
    if path.join("config.json").is_file() {
        let hf = HfDir::open(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let projection = hf.projection()?;
        return Ok((Box::new(hf.model(1)?), projection));
    }
    let stem = path.join(which);
    anyhow::ensure!(
        stem.with_extension("json").is_file(),
        "{} is neither a Hugging Face model directory (no config.json) nor a run directory with an exported {which} ({} is missing)",
        path.display(),
        stem.with_extension("json").display()
    );
    kdx_framework::export::load_embedder(&stem)
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
    let (model, projection) = load(model_path, which)?;
    let embedder = Embedder { model: &*model, projection: projection.as_ref() };
    let width = embedder.dim();
    let vectors = embedder.embed(&lines.iter().map(String::as_str).collect::<Vec<_>>())?;
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
        Some(p) if p.extension().is_some_and(|e| e == "npy") => kdx_fsio::write_output(p, &npy(&vectors, lines.len(), width)),
        Some(p) => kdx_fsio::write_output(p, tsv().as_bytes()),
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            out.write_all(tsv().as_bytes())?;
            out.flush().context("writing the vectors")
        }
    }
}

/// Translation retrieval on a user's parallel file (`source<TAB>translation` lines, no
/// header): the model embeds both sides; accuracy@1 in both directions among the file's
/// distinct sources and translations, as a run's `retrieval.csv` scores them. Returns the
/// printed summary.
pub fn eval_parallel(model_path: &Path, which: &str, file: &Path) -> Result<String> {
    let set = ParallelSet::read(file)?;
    let (model, projection) = load(model_path, which)?;
    let embedder = Embedder { model: &*model, projection: projection.as_ref() };
    let side = |texts: &[String]| embedder.embed(&texts.iter().map(String::as_str).collect::<Vec<_>>());
    let (to_en, from_en) = set.score(&side(&set.sources)?, &side(&set.translations)?, embedder.dim());
    let (s, t) = (set.sources.len(), set.translations.len());
    Ok(format!(
        "pairs {}, distinct sources {s}, distinct translations {t}\n\
         translation → source accuracy@1 {to_en:.4} (chance {:.4})\n\
         source → translation accuracy@1 {from_en:.4} (chance {:.4})\n",
        set.pairs.len(),
        1.0 / s as f64,
        1.0 / t as f64
    ))
}
