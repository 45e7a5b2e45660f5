//! `logits-file`: a teacher whose outputs were computed elsewhere (a PyTorch model, an API),
//! read from a `.safetensors` or `.npy` file and matched to the dataset by example id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::model::{Model, ModelBuilder, ModelKind, ModelSpec, OutputTable, Outputs};
use kdx_framework::registry::BuildCtx;
use kdx_framework::store::read_safetensors;
use schemars::JsonSchema;
use serde::Deserialize;

/// Teacher outputs computed outside kdx, one row per example, matched to the recipe's data
/// by example id. Only a `[teacher]` can be one (it has no network: nothing to pre-train,
/// nothing to export, no `init = "from-teacher"`).
///
/// The file is a `.safetensors` file with an F32 tensor `logits` of shape N × C (and,
/// optionally, `hidden` of shape N × H: the representation the hidden-state losses read),
/// or a `.npy` file holding the N × C logits (float32 or float64, either byte order, C or
/// Fortran order). Row i belongs to the example whose id is on line i of the `ids` file.
/// Every train, dev and test example of the task needs a row (`kdx examples RECIPE` writes
/// the ids, splits and texts of a recipe's data, for the program that computes the
/// logits); extra rows are ignored. Mismatches — a column count that is not the task's
/// class count, an id missing or given twice, fewer ids than rows — are errors that say
/// which file, which ids and what was expected.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogitsFileParams {
    /// The outputs: `.safetensors` (tensor `logits`, optional `hidden`) or `.npy` (the
    /// logits), relative to the recipe.
    pub path: PathBuf,
    /// A text file with one example id per line, line i naming row i. Default: `path` with
    /// its extension replaced by `ids.txt` (`teacher.npy` → `teacher.ids.txt`).
    #[serde(default)]
    pub ids: Option<PathBuf>,
    /// The class of each column, in order. Default: the task's classes in the order
    /// `kdx examples` prints them. When given, columns are matched to the task's classes by
    /// name, so a file with another order (or extra classes) can be used.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

fn build(mut p: LogitsFileParams, ctx: &BuildCtx) -> Result<Box<dyn ModelBuilder>, Diagnostic> {
    let ext = p.path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    if !matches!(ext, "safetensors" | "npy") {
        return Err(ctx.error("path", format!("{}: expected a .safetensors or .npy file", p.path.display())));
    }
    p.path = ctx.existing_file("path", &p.path, "file", "")?;
    p.ids = p.ids.as_deref().map(|ids| ctx.resolve_path("ids", ids));
    let ids = p.ids_path();
    if !ids.is_file() {
        let key = if p.ids.is_some() { "ids" } else { "path" };
        return Err(ctx.error(
            key,
            format!("the ids file {} does not exist (one example id per line, row by row)", ids.display()),
        ));
    }
    if let Some(cols) = &p.columns {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = cols.iter().find(|c| !seen.insert(c.as_str())) {
            return Err(ctx.error("columns", format!("class `{dup}` is named twice")));
        }
    }
    Ok(Box::new(p))
}

kdx_framework::register_model!(
    "logits-file",
    "teacher outputs computed elsewhere (.safetensors / .npy), matched by example id",
    LogitsFileParams,
    build
);

impl LogitsFileParams {
    /// The ids file: `ids`, or `path` with its extension replaced by `ids.txt`.
    fn ids_path(&self) -> PathBuf {
        self.ids.clone().unwrap_or_else(|| self.path.with_extension("ids.txt"))
    }
}

impl ModelBuilder for LogitsFileParams {
    fn kind(&self) -> ModelKind {
        ModelKind::Precomputed
    }

    fn build(&self, _: &ModelSpec) -> anyhow::Result<Box<dyn Model>> {
        bail!(NOT_A_NETWORK)
    }

    fn build_table(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn OutputTable>> {
        let ids_path = self.ids_path();
        let (mut logits, hidden) = read_outputs(&self.path)?;
        let ids = read_ids(&ids_path)?;
        ensure!(
            ids.len() == logits.rows,
            "{} has {} ids but {} has {} rows; line i of the ids file names row i",
            ids_path.display(),
            ids.len(),
            self.path.display(),
            logits.rows
        );
        if let Some(h) = &hidden {
            ensure!(
                h.rows == logits.rows,
                "{}: `hidden` has {} rows but `logits` has {}",
                self.path.display(),
                h.rows,
                logits.rows
            );
        }
        logits = match &self.columns {
            Some(cols) => reorder(logits, cols, &spec.labels, &self.path)?,
            None => {
                ensure!(
                    logits.cols == spec.classes,
                    "{} has {} columns but the task has {} classes ({}); give `columns` to name each column's class",
                    self.path.display(),
                    logits.cols,
                    spec.classes,
                    spec.labels.join(", ")
                );
                logits
            }
        };
        let mut row_of = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if let Some(j) = row_of.insert(id.clone(), i) {
                bail!(
                    "{}: id `{id}` is on line {} and on line {}; each example may have one row",
                    ids_path.display(),
                    j + 1,
                    i + 1
                );
            }
        }
        Ok(Box::new(LogitsFile { path: self.path.clone(), ids_path, logits, hidden, row_of }))
    }
}

/// A row-major matrix read from a file.
#[derive(Clone, Debug, PartialEq)]
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

/// Reads the logits (and the hidden states, when the file has them).
fn read_outputs(path: &Path) -> anyhow::Result<(Matrix, Option<Matrix>)> {
    if path.extension().is_some_and(|e| e == "npy") {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok((
            parse_npy(&bytes).with_context(|| format!("{}: not a usable .npy file", path.display()))?,
            None,
        ));
    }
    let map = read_safetensors(path)?;
    let matrix = |name: &str| -> anyhow::Result<Option<Matrix>> {
        let Some((shape, data)) = map.get(name) else { return Ok(None) };
        ensure!(
            shape.len() == 2,
            "{}: tensor `{name}` has shape {shape:?}; expected 2 dimensions (examples × width)",
            path.display()
        );
        Ok(Some(Matrix { rows: shape[0], cols: shape[1], data: data.clone() }))
    };
    let Some(logits) = matrix("logits")? else {
        let names: Vec<&str> = map.keys().map(String::as_str).collect();
        bail!(
            "{}: no tensor `logits` (it has: {})",
            path.display(),
            if names.is_empty() { "none".into() } else { names.join(", ") }
        );
    };
    Ok((logits, matrix("hidden")?))
}

/// Parses a 2-D float `.npy` array (format versions 1–3) into a row-major f32 matrix.
fn parse_npy(bytes: &[u8]) -> anyhow::Result<Matrix> {
    ensure!(
        bytes.starts_with(b"\x93NUMPY") && bytes.len() >= 10,
        "the file does not start with the .npy magic string"
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => bail!("unsupported .npy format version {v}"),
    };
    let header = bytes.get(start..start + header_len).context("the header is cut short")?;
    let header = std::str::from_utf8(header).context("the header is not text")?;
    let field = |key: &str| -> anyhow::Result<&str> {
        let at = header
            .find(&format!("'{key}'"))
            .with_context(|| format!("the header has no '{key}' ({header})"))?;
        let rest = header[at + key.len() + 2..]
            .trim_start()
            .strip_prefix(':')
            .context("malformed header")?
            .trim_start();
        Ok(rest)
    };
    let descr = field("descr")?;
    let descr = descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).context("malformed 'descr'")?;
    let (big_endian, width) = match descr {
        "<f4" | "|f4" => (false, 4),
        ">f4" => (true, 4),
        "<f8" | "|f8" => (false, 8),
        ">f8" => (true, 8),
        other => bail!("the array's dtype is `{other}`; expected float32 (<f4) or float64 (<f8)"),
    };
    let fortran = field("fortran_order")?.starts_with("True");
    let shape = field("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).context("malformed 'shape'")?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("malformed 'shape'")?;
    let [rows, cols] = dims[..] else {
        bail!("the array has shape ({shape}); expected 2 dimensions (examples × classes)");
    };
    let body = &bytes[start + header_len..];
    ensure!(
        body.len() == rows * cols * width,
        "the array is {rows} × {cols} of {width}-byte floats ({} bytes) but the file holds {} bytes of data",
        rows * cols * width,
        body.len()
    );
    let values: Vec<f32> = body
        .chunks_exact(width)
        .map(|c| match (width, big_endian) {
            (4, false) => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            (4, true) => f32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            (_, false) => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
            (_, true) => f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
        })
        .collect();
    let data = if fortran {
        (0..rows * cols).map(|k| values[(k % cols) * rows + k / cols]).collect()
    } else {
        values
    };
    Ok(Matrix { rows, cols, data })
}

/// One id per line; a final newline and `\r` line ends are allowed, an empty line is not.
fn read_ids(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading ids file {}", path.display()))?;
    let body = text.strip_suffix('\n').unwrap_or(&text);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::new();
    for (i, line) in body.split('\n').enumerate() {
        let id = line.strip_suffix('\r').unwrap_or(line);
        ensure!(
            !id.is_empty(),
            "{}:{}: empty line; each line names one row's example id",
            path.display(),
            i + 1
        );
        ids.push(id.to_string());
    }
    Ok(ids)
}

/// Selects and orders the columns named `cols` as the task's classes `labels`.
fn reorder(m: Matrix, cols: &[String], labels: &[String], path: &Path) -> anyhow::Result<Matrix> {
    ensure!(
        cols.len() == m.cols,
        "`columns` names {} classes but {} has {} columns",
        cols.len(),
        path.display(),
        m.cols
    );
    let mut pick = Vec::with_capacity(labels.len());
    let mut missing = Vec::new();
    for l in labels {
        match cols.iter().position(|c| c == l) {
            Some(j) => pick.push(j),
            None => missing.push(l.as_str()),
        }
    }
    ensure!(
        missing.is_empty(),
        "`columns` lacks the task's class(es) {}; the task's classes are: {}",
        missing.join(", "),
        labels.join(", ")
    );
    let data = (0..m.rows)
        .flat_map(|i| pick.iter().map(move |&j| (i, j)))
        .map(|(i, j)| m.data[i * m.cols + j])
        .collect();
    Ok(Matrix { rows: m.rows, cols: labels.len(), data })
}

/// The loaded outputs.
struct LogitsFile {
    path: PathBuf,
    ids_path: PathBuf,
    logits: Matrix,
    hidden: Option<Matrix>,
    row_of: HashMap<String, usize>,
}

const NOT_A_NETWORK: &str =
    "the `logits-file` model holds outputs for example ids, not a network: it can only be the recipe's \
                             [teacher] (not a student, nor a member of `ensemble` or `per-language`)";

impl OutputTable for LogitsFile {
    fn classes(&self) -> usize {
        self.logits.cols
    }
    fn hidden_dim(&self) -> usize {
        self.hidden.as_ref().map_or(0, |h| h.cols)
    }
    fn lookup(&self, ids: &[&str], what: &str) -> anyhow::Result<Outputs> {
        let rows: Vec<Option<usize>> = ids.iter().map(|id| self.row_of.get(*id).copied()).collect();
        let missing: Vec<&str> =
            ids.iter().zip(&rows).filter(|(_, r)| r.is_none()).map(|(id, _)| *id).collect();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(5).map(|id| format!("`{id}`")).collect();
            bail!(
                "{}: {} of the {} {what} examples have no row (e.g. {}); the ids must be the example ids of this recipe's data, \
                 as `kdx examples RECIPE` lists them",
                self.ids_path.display(),
                missing.len(),
                ids.len(),
                shown.join(", ")
            );
        }
        let gather = |m: &Matrix| {
            rows.iter()
                .flatten()
                .flat_map(|&r| m.data[r * m.cols..(r + 1) * m.cols].iter().copied())
                .collect()
        };
        Ok(Outputs {
            batch: ids.len(),
            logits: gather(&self.logits),
            classes: self.logits.cols,
            hidden: self.hidden.as_ref().map(gather).unwrap_or_default(),
            hidden_dim: self.hidden_dim(),
            layers: None,
        })
    }

    fn origin(&self) -> String {
        format!("{} ({} examples × {} classes)", self.path.display(), self.logits.rows, self.logits.cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 .npy file of `data` (row-major unless `fortran`).
    fn npy(descr: &str, shape: &str, fortran: bool, body: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(body);
        out
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn spec(labels: &[&str]) -> ModelSpec {
        ModelSpec {
            classes: labels.len(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn params(dir: &Path, file: &[u8], ext: &str, ids: &str) -> LogitsFileParams {
        let path = dir.join(format!("t.{ext}"));
        std::fs::write(&path, file).unwrap();
        std::fs::write(dir.join("t.ids.txt"), ids).unwrap();
        LogitsFileParams { path, ids: None, columns: None }
    }

    #[test]
    fn npy_in_every_layout_reads_the_same_matrix() {
        let want = Matrix { rows: 2, cols: 3, data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] };
        assert_eq!(parse_npy(&npy("<f4", "(2, 3)", false, &f32s(&want.data))).unwrap(), want);
        let f64s: Vec<u8> = want.data.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect();
        assert_eq!(parse_npy(&npy("<f8", "(2, 3)", false, &f64s)).unwrap(), want);
        let be: Vec<u8> = want.data.iter().flat_map(|x| x.to_be_bytes()).collect();
        assert_eq!(parse_npy(&npy(">f4", "(2, 3)", false, &be)).unwrap(), want);
        // Fortran order stores columns one after another.
        assert_eq!(
            parse_npy(&npy("<f4", "(2, 3)", true, &f32s(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]))).unwrap(),
            want
        );
        for (file, msg) in [
            (npy("<i8", "(2, 3)", false, &[0; 48]), "dtype is `<i8`"),
            (npy("<f4", "(6,)", false, &f32s(&want.data)), "expected 2 dimensions"),
            (npy("<f4", "(2, 3)", false, &f32s(&want.data[..5])), "24 bytes) but the file holds 20"),
            (b"PK\x03\x04".to_vec(), "magic"),
        ] {
            let e = format!("{:#}", parse_npy(&file).unwrap_err());
            assert!(e.contains(msg), "expected `{msg}` in `{e}`");
        }
    }

    #[test]
    fn outputs_are_looked_up_by_id_and_columns_reordered() {
        let dir = tempfile::tempdir().unwrap();
        let p = params(
            dir.path(),
            &npy("<f4", "(2, 3)", false, &f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
            "npy",
            "a\r\nb\n",
        );
        let t = p.build_table(&spec(&["x", "y", "z"])).unwrap();
        let o = t.lookup(&["b", "a", "b"], "test").unwrap();
        assert_eq!((o.batch, o.classes, o.hidden_dim), (3, 3, 0));
        assert_eq!(o.logits, [4.0, 5.0, 6.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(p.kind(), ModelKind::Precomputed);
        assert!(p
            .build(&spec(&["x", "y", "z"]))
            .err()
            .unwrap()
            .to_string()
            .contains("only be the recipe's [teacher]"));
        // Named columns are matched to the task's classes; extra ones are dropped.
        let p = LogitsFileParams { columns: Some(vec!["z".into(), "x".into(), "y".into()]), ..p };
        let o = p.build_table(&spec(&["x", "y"])).unwrap().lookup(&["a"], "test").unwrap();
        assert_eq!(o.logits, [2.0, 3.0]);
        let e = p.build_table(&spec(&["x", "w"])).err().unwrap().to_string();
        assert!(e.contains("lacks the task's class(es) w") && e.contains("x, w"), "{e}");
    }

    #[test]
    fn safetensors_with_hidden_states() {
        use kdx_framework::store::{to_safetensors, TensorMap};
        let dir = tempfile::tempdir().unwrap();
        let mut map = TensorMap::new();
        map.insert("logits".into(), (vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]));
        map.insert("hidden".into(), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let p = params(dir.path(), &to_safetensors(&map).unwrap(), "safetensors", "p\nq\n");
        let m = p.build_table(&spec(&["x", "y"])).unwrap();
        assert_eq!(m.hidden_dim(), 3);
        let o = m.lookup(&["q"], "train").unwrap();
        assert_eq!((o.logits, o.hidden), (vec![0.0, 1.0], vec![4.0, 5.0, 6.0]));
        map.remove("logits");
        let p = params(dir.path(), &to_safetensors(&map).unwrap(), "safetensors", "p\nq\n");
        assert!(p
            .build_table(&spec(&["x", "y"]))
            .err()
            .unwrap()
            .to_string()
            .contains("no tensor `logits` (it has: hidden)"));
    }

    #[test]
    fn mismatches_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let file = npy("<f4", "(2, 3)", false, &f32s(&[0.0; 6]));
        let cases = [
            ("a\nb\n", &["x", "y"][..], "has 3 columns but the task has 2 classes (x, y)"),
            ("a\nb\nc\n", &["x", "y", "z"], "has 3 ids but"),
            ("a\na\n", &["x", "y", "z"], "id `a` is on line 1 and on line 2"),
            ("a\n\nb\n", &["x", "y", "z"], "t.ids.txt:2: empty line"),
        ];
        for (ids, labels, want) in cases {
            let e =
                params(dir.path(), &file, "npy", ids).build_table(&spec(labels)).err().unwrap().to_string();
            assert!(e.contains(want), "expected `{want}` in `{e}`");
        }
        let m = params(dir.path(), &file, "npy", "a\nb\n").build_table(&spec(&["x", "y", "z"])).unwrap();
        let e = m.lookup(&["a", "fr:12", "de:7"], "training").unwrap_err().to_string();
        assert!(
            e.contains("2 of the 3 training examples have no row (e.g. `fr:12`, `de:7`)")
                && e.contains("kdx examples"),
            "{e}"
        );
    }
}
