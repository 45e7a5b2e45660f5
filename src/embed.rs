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

use crate::input::TextLines;

/// The model behind `path`: a Hugging Face directory (it has a `config.json`) or a run
/// directory's exported `which` (student or teacher), with the projection its embedding goes
/// through (a student distilled with an embedding loss carries one into the teacher's space).
pub fn load(path: &Path, which: &str) -> Result<(Box<dyn Model>, Option<HiddenProjection>)> {
    if path.join("config.json").is_file() {
        let hf = HfDir::open(path)?;
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

/// The header of a little-endian f32 `.npy` file (format 1.0) of a `rows × cols` matrix,
/// always [`NPY_HEADER`] bytes long, so that a streamed file's header, written last with its
/// final row count, fits the place kept for it.
pub fn npy_header(rows: usize, cols: usize) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n' (the format asks for a multiple
    // of 64; 128 holds any shape of two 20-digit numbers).
    while 10 + header.len() + 1 < NPY_HEADER {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// The length of [`npy_header`].
pub const NPY_HEADER: usize = 128;

/// The rows of a little-endian f32 `.npy` matrix (its body, after [`npy_header`]).
fn npy_rows(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// TAB-separated text rows of `width` values each.
fn tsv_rows(data: &[f32], width: usize) -> Vec<u8> {
    let mut s = String::with_capacity(data.len() * 12);
    for row in data.chunks(width.max(1)) {
        let cells: Vec<String> = row.iter().map(f32::to_string).collect();
        s.push_str(&cells.join("\t"));
        s.push('\n');
    }
    s.into_bytes()
}

/// Lines embedded at a time: memory stays the same whatever the input's size (a
/// transformer's activations for 256 texts are tens of MB; for 1,024 they were ~350 MB).
const CHUNK: usize = 256;

/// `kdx embed MODEL [FILE] [-o OUT]`: the vectors of `lines`, embedded and written a chunk
/// at a time, so memory does not grow with the input. To a file, the output appears whole
/// when every line is embedded (nothing on an error); a `.npy` needs an output that can be
/// rewound, since its header, holding the row count, is written last.
pub fn run(model_path: &Path, which: &str, lines: &mut TextLines, output: Option<&Path>) -> Result<()> {
    let (model, projection) = load(model_path, which)?;
    let embedder = Embedder { model: &*model, projection: projection.as_ref() };
    let width = embedder.dim();
    let Some(path) = output else {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        embed_lines(&embedder, lines, |v| out.write_all(&tsv_rows(v, width)))?;
        return out.flush().context("writing the vectors");
    };
    let npy = path.extension().is_some_and(|e| e == "npy");
    let mut file = kdx_fsio::Output::create(path)?;
    if npy {
        anyhow::ensure!(
            file.seekable(),
            "cannot write {}: a .npy file's header (its row count) is written last, and this output cannot be rewound; \
             write to a regular file, or to a name without .npy for TAB-separated text",
            path.display()
        );
        file.write_all(&npy_header(0, width))?;
    }
    let mut out = std::io::BufWriter::new(file);
    let rows =
        embed_lines(&embedder, lines, |v| out.write_all(&if npy { npy_rows(v) } else { tsv_rows(v, width) }))
            .with_context(|| format!("{} is left as it was", path.display()))?;
    let mut file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", path.display()))?;
    if npy {
        use std::io::Seek;
        file.file()
            .seek(std::io::SeekFrom::Start(0))
            .and_then(|_| file.write_all(&npy_header(rows, width)))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    file.commit()
}

/// Embeds `lines` a chunk at a time, giving each chunk's vectors to `write`; returns how
/// many lines there were.
fn embed_lines(
    embedder: &Embedder,
    lines: &mut TextLines,
    mut write: impl FnMut(&[f32]) -> std::io::Result<()>,
) -> Result<usize> {
    let mut rows = 0;
    loop {
        let chunk = lines.next_chunk(CHUNK)?;
        if chunk.is_empty() {
            return Ok(rows);
        }
        let vectors = embedder.embed(&chunk.iter().map(String::as_str).collect::<Vec<_>>())?;
        write(&vectors).context("writing the vectors")?;
        rows += chunk.len();
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
