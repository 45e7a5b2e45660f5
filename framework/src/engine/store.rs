//! Persistence: atomic file writes and parameter files in safetensors.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};

use crate::model::Param;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then a
/// rename, so a reader (or a crash) never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Named f32 tensors (name → (shape, data)).
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Serialises tensors to safetensors bytes (little-endian f32).
pub fn to_safetensors(tensors: &TensorMap) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(k, (shape, data))| (k.clone(), shape.clone(), data.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (k.clone(), v)).map_err(|e| anyhow::anyhow!("tensor `{k}`: {e:?}"))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, &None).map_err(|e| anyhow::anyhow!("serialising safetensors: {e:?}"))
}

/// Reads all f32 tensors of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e:?}", path.display()))?;
    let mut out = TensorMap::new();
    for (name, view) in st.tensors() {
        anyhow::ensure!(view.dtype() == Dtype::F32, "{}: tensor `{name}` is {:?}, expected F32", path.display(), view.dtype());
        let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Collects parameters into a tensor map under `prefix`.
pub fn params_to_map(prefix: &str, params: &[&Param], out: &mut TensorMap) {
    for p in params {
        out.insert(format!("{prefix}{}", p.name), (p.shape.clone(), p.data.clone()));
    }
}

/// Loads parameters from a tensor map; every parameter must be present with its shape.
pub fn params_from_map(prefix: &str, params: &mut [&mut Param], map: &TensorMap, what: &Path) -> Result<()> {
    for p in params.iter_mut() {
        let key = format!("{prefix}{}", p.name);
        let (shape, data) = map.get(&key).with_context(|| format!("{}: tensor `{key}` is missing", what.display()))?;
        anyhow::ensure!(*shape == p.shape, "{}: tensor `{key}` has shape {:?}, the model expects {:?}", what.display(), shape, p.shape);
        p.data.copy_from_slice(data);
    }
    Ok(())
}
