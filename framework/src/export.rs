//! A trained model as a stand-alone artefact: `<name>.safetensors` (its parameters) plus
//! `<name>.json` (plugin, parameters, labels, languages, featurisation), enough to load it
//! without the recipe (`kdx predict`, `kdx eval`, `kdx embed`). A student distilled with an
//! embedding loss also carries that loss's learned projection into the teacher's space
//! (tensors `embedding.proj.*`), so its sentence vectors are the teacher's kind.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::dataset::Task;
use crate::model::Model;
use crate::nn::HiddenProjection;
use crate::registry::{self, Instance, PluginKind};
use crate::store::{params_from_map, params_to_map, read_sealed, write_sealed, Metadata, TensorMap};
use kdx_fsio::write_atomic;

/// The JSON side of an exported model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelCard {
    /// Format version of this file.
    pub format: u32,
    /// The kdx version that wrote it.
    pub kdx_version: String,
    /// Model plugin name.
    pub plugin: String,
    /// The model section's parameters (as in the recipe).
    pub params: serde_json::Value,
    /// Class names, indexed by output.
    pub labels: Vec<String>,
    /// Languages of the training task.
    pub languages: Vec<String>,
    /// The featuriser, described.
    pub featurizer: String,
    /// Number of parameters.
    pub num_params: usize,
    /// The model's own tokenizer.json beside the card (`<stem>.tokenizer.json`), when its
    /// vocabulary was learned from the training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// The width of the model's sentence embedding when a learned projection (tensors
    /// `embedding.proj.w`, `embedding.proj.b` in the weights file) maps its hidden vector
    /// into a teacher's space; absent when the embedding is the hidden vector itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_dim: Option<usize>,
}

/// Prefix of the embedding projection's tensors in an exported weights file.
const EMBEDDING: &str = "embedding.";

/// Writes `<stem>.safetensors` and `<stem>.json`; `projection` is the embedding loss's map
/// into the teacher's space, if the model was distilled with one.
pub fn export(
    model: &dyn Model,
    plugin: &str,
    section: &toml::Value,
    task: &Task,
    stem: &Path,
    projection: Option<&HiddenProjection>,
) -> Result<()> {
    let mut map = TensorMap::new();
    params_to_map("", &model.params(), &mut map);
    let projection = projection.filter(|p| p.linear.is_some());
    if let Some(p) = projection {
        params_to_map(EMBEDDING, &p.params(), &mut map);
    }
    // Sealed: a damaged weights file is refused by `load`, not silently mispredicting.
    write_sealed(&stem.with_extension("safetensors"), &map, Metadata::new())?;
    let mut params = section.clone();
    if let Some(t) = params.as_table_mut() {
        t.remove("plugin");
    }
    let tokenizer = match model.featurizer().tokenizer_json() {
        Some(json) => {
            let path = stem.with_extension("tokenizer.json");
            write_atomic(&path, json.as_bytes())?;
            path.file_name().map(|n| n.to_string_lossy().into_owned())
        }
        None => None,
    };
    let card = ModelCard {
        format: 1,
        kdx_version: env!("CARGO_PKG_VERSION").into(),
        plugin: plugin.into(),
        params: serde_json::to_value(&params)?,
        labels: task.labels.clone(),
        languages: task.langs.clone(),
        featurizer: model.featurizer().describe(),
        num_params: model.num_params(),
        tokenizer,
        embedding_dim: projection.map(|p| p.output_dim(model.hidden_dim())),
    };
    write_atomic(&stem.with_extension("json"), &serde_json::to_vec_pretty(&card)?)
}

/// Loads a model written by [`export`]; `stem` without extension.
pub fn load(stem: &Path) -> Result<(Box<dyn Model>, ModelCard)> {
    let (model, card, _) = load_parts(stem)?;
    Ok((model, card))
}

/// Loads a model written by [`export`] with its embedding projection, if it has one.
pub fn load_embedder(stem: &Path) -> Result<(Box<dyn Model>, Option<HiddenProjection>)> {
    let (model, card, map) = load_parts(stem)?;
    let projection = match card.embedding_dim {
        Some(out) => {
            let mut p = HiddenProjection::for_loading(model.hidden_dim(), out);
            params_from_map(EMBEDDING, &mut p.params_mut(), &map, &stem.with_extension("safetensors"))?;
            Some(p)
        }
        None => None,
    };
    Ok((model, projection))
}

fn load_parts(stem: &Path) -> Result<(Box<dyn Model>, ModelCard, TensorMap)> {
    let json = stem.with_extension("json");
    let card: ModelCard = serde_json::from_slice(&std::fs::read(&json).with_context(|| format!("reading {}", json.display()))?)
        .with_context(|| format!("{} is not a kdx model card", json.display()))?;
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = card.labels.iter().find(|l| !seen.insert(l.as_str())) {
        // Outputs are read by position in `labels`: a repeated name would relabel them.
        anyhow::bail!("{}: label `{dup}` appears twice in `labels`; the card does not match its model", json.display());
    }
    let params: toml::Value = serde_json::from_value(card.params.clone())?;
    let params = params.as_table().cloned().unwrap_or_default();
    let what = json.display().to_string();
    let Instance::Model(builder) = registry::build_standalone(PluginKind::Model, &card.plugin, params, &what)? else {
        unreachable!("a model registration builds a model")
    };
    let mut model = builder.build(&crate::model::ModelSpec {
        classes: card.labels.len(),
        labels: card.labels.clone(),
        langs: card.languages.clone(),
        seed: 0,
        tokenizer_file: card.tokenizer.as_ref().map(|t| json.with_file_name(t)),
        ..Default::default()
    })?;
    let weights = stem.with_extension("safetensors");
    let (map, _) = read_sealed(&weights)?;
    params_from_map("", &mut model.params_mut(), &map, &weights)?;
    Ok((model, card, map))
}
