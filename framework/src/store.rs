//! Persistence: parameter files in safetensors (atomic writes are `kdx_fsio::write_atomic`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};

use crate::model::Param;

/// Named f32 tensors (name → (shape, data)).
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Serialises tensors to safetensors bytes (little-endian f32).
pub fn to_safetensors(tensors: &TensorMap) -> Result<Vec<u8>> {
    to_safetensors_with(tensors, None)
}

/// Text entries of a safetensors header (`__metadata__`).
pub type Metadata = BTreeMap<String, String>;

/// SHA-256 (hex) of tensors and metadata: every name, shape and value, in order.
pub fn digest(tensors: &TensorMap, metadata: &Metadata) -> String {
    let mut h = Vec::new();
    for (k, (shape, data)) in tensors {
        h.extend_from_slice(k.as_bytes());
        h.push(0);
        for d in shape {
            h.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        h.push(0);
        for x in data {
            h.extend_from_slice(&x.to_le_bytes());
        }
    }
    for (k, v) in metadata {
        h.extend_from_slice(k.as_bytes());
        h.push(0);
        h.extend_from_slice(v.as_bytes());
        h.push(0);
    }
    kdx_fsio::sha256_hex(&h)
}

const SEAL: &str = "kdx.sha256";

/// Writes tensors and metadata as one safetensors file, atomically, sealed with a checksum
/// of both ([`read_sealed`] verifies it): one file is one unit that is either whole or
/// refused.
pub fn write_sealed(path: &Path, tensors: &TensorMap, mut metadata: Metadata) -> Result<()> {
    metadata.remove(SEAL);
    let seal = digest(tensors, &metadata);
    metadata.insert(SEAL.into(), seal);
    kdx_fsio::write_atomic(path, &to_safetensors_with(tensors, Some(metadata))?)
}

/// Reads a file written by [`write_sealed`]; an error if it is unreadable, unsealed, or its
/// contents do not match its checksum (a damaged or edited file).
pub fn read_sealed(path: &Path) -> Result<(TensorMap, Metadata)> {
    let (tensors, mut metadata) = read_safetensors_with(path)?;
    let seal = metadata
        .remove(SEAL)
        .with_context(|| format!("{}: no checksum (not written by this version of kdx)", path.display()))?;
    anyhow::ensure!(
        digest(&tensors, &metadata) == seal,
        "{} is damaged: its contents do not match its checksum",
        path.display()
    );
    Ok((tensors, metadata))
}

fn to_safetensors_with(tensors: &TensorMap, metadata: Option<Metadata>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (shape, data))| {
            (k.clone(), shape.clone(), data.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| anyhow::anyhow!("tensor `{k}`: {e:?}"))
        })
        .collect::<Result<_>>()?;
    let metadata = metadata.map(|m| m.into_iter().collect());
    safetensors::serialize(views, &metadata).map_err(|e| anyhow::anyhow!("serialising safetensors: {e:?}"))
}

/// Maps a file read-only into memory (a checkpoint: only the pages that are read are
/// loaded).
pub fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the map is read-only and private to this process. Its contents are undefined
    // only if another process truncates or rewrites the file while it is mapped; kdx never
    // writes a checkpoint in place (writes go to a temporary and are renamed over it), so a
    // file kdx maps is replaced, not changed, and the old contents stay mapped.
    unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))
}

/// Reads all f32 tensors of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    read_safetensors_with(path).map(|(t, _)| t)
}

/// Reads all f32 tensors of a safetensors file and its metadata.
pub fn read_safetensors_with(path: &Path) -> Result<(TensorMap, Metadata)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e:?}", path.display()))?;
    let metadata: Metadata = header.metadata().clone().map(|m| m.into_iter().collect()).unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e:?}", path.display()))?;
    let mut out = TensorMap::new();
    for (name, view) in st.tensors() {
        anyhow::ensure!(
            view.dtype() == Dtype::F32,
            "{}: tensor `{name}` is {:?}, expected F32",
            path.display(),
            view.dtype()
        );
        let data =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok((out, metadata))
}

/// Collects parameters into a tensor map under `prefix`.
pub fn params_to_map(prefix: &str, params: &[&Param], out: &mut TensorMap) {
    for p in params {
        out.insert(format!("{prefix}{}", p.name), (p.shape.clone(), p.data.clone()));
    }
}

/// Loads parameters from a tensor map; every parameter must be present with its shape.
/// Every tensor is checked before any is copied, so a refused map leaves the parameters as
/// they were (a teacher whose cache is refused then trains from its own initialisation).
pub fn params_from_map(prefix: &str, params: &mut [&mut Param], map: &TensorMap, what: &Path) -> Result<()> {
    let mut found = Vec::with_capacity(params.len());
    for p in params.iter() {
        let key = format!("{prefix}{}", p.name);
        let (shape, data) =
            map.get(&key).with_context(|| format!("{}: tensor `{key}` is missing", what.display()))?;
        anyhow::ensure!(
            *shape == p.shape && data.len() == p.numel(),
            "{}: tensor `{key}` has shape {:?}, the model expects {:?}",
            what.display(),
            shape,
            p.shape
        );
        found.push(data);
    }
    for (p, data) in params.iter_mut().zip(found) {
        p.data.copy_from_slice(data);
    }
    Ok(())
}
