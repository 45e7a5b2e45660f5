//! A trained model as a stand-alone artefact: `<name>.safetensors` (its parameters) plus
//! `<name>.json` (plugin, parameters, labels, languages, featurisation), enough to load it
//! without the recipe (`kdx predict`, `kdx eval`, `kdx embed`). A student distilled with an
//! embedding loss also carries that loss's learned projection into the teacher's space
//! (tensors `embedding.proj.*`), so its sentence vectors are the teacher's kind.
//!
//! The weights file is sealed ([`write_sealed`]) and its metadata records the SHA-256 of
//! the card's bytes, of the run's own tokenizer.json and of every file outside the run
//! the model reads again when it is loaded ([`ModelBuilder::inputs`]): loading refuses a
//! model any of whose files changed after the run wrote or read them, rather than
//! predicting with labels, parameters or a tokenisation it was not trained with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::dataset::Task;
use crate::model::{Model, ModelBuilder};
use crate::nn::HiddenProjection;
use crate::plan::ModelPlan;
use crate::registry::{self, Instance, PluginKind};
use crate::store::{params_from_map, params_to_map, read_sealed, write_sealed, Metadata, TensorMap};
use kdx_fsio::{sha256_hex, write_atomic};

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

/// Metadata of the weights file: the SHA-256 of the card's exact bytes.
const CARD_SHA256: &str = "kdx.card.sha256";
/// Metadata of the weights file: the SHA-256 of the run's own tokenizer.json, if any.
const TOKENIZER_SHA256: &str = "kdx.tokenizer.sha256";
/// Metadata of the weights file: the model's inputs outside the run, as a JSON object of
/// path → SHA-256 (`null` for a file that did not exist).
const INPUTS: &str = "kdx.inputs";

/// Writes `<stem>.safetensors` and `<stem>.json` for `model`, built from `source`;
/// `projection` is the embedding loss's map into the teacher's space, if the model was
/// distilled with one.
pub fn export(
    model: &dyn Model,
    source: &ModelPlan,
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
    let mut metadata = Metadata::new();
    let mut params = source.builder.card_section(&source.section);
    if let Some(t) = params.as_table_mut() {
        t.remove("plugin");
    }
    let tokenizer = match model.featurizer().tokenizer_json() {
        Some(json) => {
            let path = stem.with_extension("tokenizer.json");
            write_atomic(&path, json.as_bytes())?;
            metadata.insert(TOKENIZER_SHA256.into(), sha256_hex(json.as_bytes()));
            path.file_name().map(|n| n.to_string_lossy().into_owned())
        }
        None => None,
    };
    let inputs = input_hashes(source.builder.as_ref())?;
    if !inputs.is_empty() {
        metadata.insert(INPUTS.into(), serde_json::to_string(&inputs)?);
    }
    let card = ModelCard {
        format: 1,
        kdx_version: env!("CARGO_PKG_VERSION").into(),
        plugin: source.plugin.clone(),
        params: serde_json::to_value(&params)?,
        labels: task.labels.clone(),
        languages: task.langs.clone(),
        featurizer: model.featurizer().describe(),
        num_params: model.num_params(),
        tokenizer,
        embedding_dim: projection.map(|p| p.output_dim(model.hidden_dim())),
    };
    let card = serde_json::to_vec_pretty(&card)?;
    metadata.insert(CARD_SHA256.into(), sha256_hex(&card));
    // Sealed: a damaged weights file is refused by `load`, not silently mispredicting; the
    // hashes in its metadata extend the seal to the card and the files the model reads.
    write_sealed(&stem.with_extension("safetensors"), &map, metadata)?;
    write_atomic(&stem.with_extension("json"), &card)
}

/// The SHA-256 of each of `builder`'s inputs outside the run (`None`: it does not exist).
fn input_hashes(builder: &dyn ModelBuilder) -> Result<BTreeMap<String, Option<String>>> {
    let mut out = BTreeMap::new();
    for path in builder.inputs() {
        let hash = match std::fs::read(&path) {
            Ok(bytes) => Some(sha256_hex(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        out.insert(path.display().to_string(), hash);
    }
    Ok(out)
}

/// Loads a model written by [`export`]; `stem` without extension. A model whose card,
/// tokenizer or inputs outside the run changed since the export is refused, naming the file.
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

/// Refuses `path` (read as `bytes`) unless its SHA-256 is `sealed`, the one `weights` records.
fn unchanged(path: &Path, bytes: &[u8], sealed: &str, weights: &Path) -> Result<()> {
    anyhow::ensure!(
        sha256_hex(bytes) == sealed,
        "{} was changed after the run wrote it: its SHA-256 is not the one sealed in {}; the model is usable only with the \
         files it was trained with (restore the file the run wrote)",
        path.display(),
        weights.display()
    );
    Ok(())
}

/// Refuses a model whose inputs outside the run (`recorded`: [`INPUTS`]) changed since.
fn check_inputs(stem: &Path, recorded: &str, weights: &Path) -> Result<()> {
    let recorded: BTreeMap<String, Option<String>> = serde_json::from_str(recorded)
        .with_context(|| format!("{}: `{INPUTS}` in its metadata is not readable", weights.display()))?;
    for (file, sealed) in recorded {
        let path = PathBuf::from(&file);
        let now = match std::fs::read(&path) {
            Ok(bytes) => Some(sha256_hex(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {file}")),
        };
        if now == sealed {
            continue;
        }
        let dir = path.parent().map_or_else(|| ".".into(), |d| d.display().to_string());
        let name = path.file_name().map_or_else(|| file.clone(), |n| n.to_string_lossy().into_owned());
        let what = match (&sealed, &now) {
            (Some(_), Some(_)) => "has changed since",
            (Some(_), None) => "is gone since",
            _ => "did not exist when",
        };
        anyhow::bail!(
            "{dir}: {name} {what} the run that wrote {} read it, and the model reads it again to load; it is usable only with \
             the files it was trained with (restore {name}, or train a new run)",
            stem.display()
        );
    }
    Ok(())
}

fn load_parts(stem: &Path) -> Result<(Box<dyn Model>, ModelCard, TensorMap)> {
    let json = stem.with_extension("json");
    let bytes = std::fs::read(&json).with_context(|| format!("reading {}", json.display()))?;
    let weights = stem.with_extension("safetensors");
    let (map, metadata) = read_sealed(&weights)?;
    // A card written before the weights sealed it has no hash there: it still loads,
    // trusted as it was then.
    if let Some(sealed) = metadata.get(CARD_SHA256) {
        unchanged(&json, &bytes, sealed, &weights)?;
    }
    let card: ModelCard = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a kdx model card", json.display()))?;
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = card.labels.iter().find(|l| !seen.insert(l.as_str())) {
        // Outputs are read by position in `labels`: a repeated name would relabel them.
        anyhow::bail!(
            "{}: label `{dup}` appears twice in `labels`; the card does not match its model",
            json.display()
        );
    }
    let tokenizer_file = card.tokenizer.as_ref().map(|t| json.with_file_name(t));
    if let (Some(path), Some(sealed)) = (&tokenizer_file, metadata.get(TOKENIZER_SHA256)) {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        unchanged(path, &bytes, sealed, &weights)?;
    }
    if let Some(recorded) = metadata.get(INPUTS) {
        check_inputs(stem, recorded, &weights)?;
    }
    let params: toml::Value = serde_json::from_value(card.params.clone())?;
    let params = params.as_table().cloned().unwrap_or_default();
    let what = json.display().to_string();
    let Instance::Model(builder) =
        registry::build_standalone(PluginKind::Model, &card.plugin, params, &what)?
    else {
        unreachable!("a model registration builds a model")
    };
    let mut model = builder.build(&crate::model::ModelSpec {
        classes: card.labels.len(),
        labels: card.labels.clone(),
        langs: card.languages.clone(),
        seed: 0,
        tokenizer_file,
        ..Default::default()
    })?;
    params_from_map("", &mut model.params_mut(), &map, &weights)?;
    Ok((model, card, map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kdx_recipe::Diagnostic;
    use crate::model::ModelSpec;
    use crate::nn::kernels::FfnActivation;
    use crate::nn::{Encoder, EncoderConfig, Pooling, TransformerModel};
    use crate::registry::BuildCtx;
    use crate::tokenize::TextTokenizer;

    /// A small transformer whose tokenizer.json is its own (so the run exports it), and
    /// which reads `input` again when it is built (a stand-in for a model directory's file).
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct TestModel {
        input: Option<PathBuf>,
    }

    fn build(p: TestModel, _: &BuildCtx) -> Result<Box<dyn ModelBuilder>, Diagnostic> {
        Ok(Box::new(p))
    }

    crate::register_model!("export-test", "a transformer for export's tests", TestModel, build);

    fn tiny_bert_tokenizer() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/hf/tiny-bert/tokenizer.json");
        std::fs::read_to_string(path).unwrap()
    }

    impl ModelBuilder for TestModel {
        fn build(&self, spec: &ModelSpec) -> Result<Box<dyn Model>> {
            if let Some(f) = &self.input {
                std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            }
            let json = match &spec.tokenizer_file {
                Some(f) => std::fs::read_to_string(f)?,
                None => tiny_bert_tokenizer(),
            };
            let tokenizer = TextTokenizer::derived(&json, 8)?;
            let cfg = EncoderConfig {
                vocab: tokenizer.vocab_size(),
                width: 4,
                layers: 1,
                heads: 2,
                ffn: 4,
                max_positions: 8,
                type_vocab: 0,
                position_offset: 0,
                eps: 1e-12,
                activation: FfnActivation::GeluErf,
                dropout: 0.0,
            };
            Ok(Box::new(TransformerModel::new(
                Encoder::new(cfg, spec.seed),
                tokenizer,
                Pooling::Mean,
                false,
                spec.classes,
                spec.seed,
                "test".into(),
            )))
        }
        fn inputs(&self) -> Vec<PathBuf> {
            self.input.iter().cloned().collect()
        }
    }

    /// Exports a model reading `input` under `dir/run/student`; returns the stem.
    fn exported(dir: &Path, input: &Path) -> PathBuf {
        let mut params = toml::Table::new();
        params.insert("input".into(), toml::Value::String(input.display().to_string()));
        let mut section = params.clone();
        section.insert("plugin".into(), toml::Value::String("export-test".into()));
        let section = toml::Value::Table(section);
        let Instance::Model(builder) =
            registry::build_standalone(PluginKind::Model, "export-test", params, "test").unwrap()
        else {
            unreachable!()
        };
        let task = Task {
            labels: vec!["de".into(), "fr".into()],
            langs: vec!["de".into(), "fr".into()],
            ..Default::default()
        };
        let model = builder.build(&ModelSpec::new(2, 3)).unwrap();
        let source = ModelPlan { plugin: "export-test".into(), builder, section };
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let stem = dir.join("run/student");
        export(model.as_ref(), &source, &task, &stem, None).unwrap();
        stem
    }

    fn refusal(stem: &Path) -> String {
        format!("{:#}", load(stem).err().expect("the model was loaded"))
    }

    #[test]
    fn an_untouched_export_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("config.json");
        std::fs::write(&input, "{}").unwrap();
        let stem = exported(tmp.path(), &input);
        assert!(stem.with_extension("tokenizer.json").is_file());
        let (model, card) = load(&stem).unwrap();
        assert_eq!(card.labels, ["de", "fr"]);
        assert_eq!(model.classes(), 2);
    }

    #[test]
    fn an_edited_card_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("config.json");
        std::fs::write(&input, "{}").unwrap();
        let stem = exported(tmp.path(), &input);
        // Labels swapped: every prediction would be relabelled.
        let json = stem.with_extension("json");
        let text = std::fs::read_to_string(&json).unwrap();
        let swapped = text.replacen("\"de\",\n    \"fr\"", "\"fr\",\n    \"de\"", 1);
        assert_ne!(swapped, text);
        std::fs::write(&json, swapped).unwrap();
        let e = refusal(&stem);
        assert!(e.contains("student.json was changed after the run wrote it"), "{e}");
    }

    #[test]
    fn an_edited_tokenizer_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("config.json");
        std::fs::write(&input, "{}").unwrap();
        let stem = exported(tmp.path(), &input);
        let path = stem.with_extension("tokenizer.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}\n")).unwrap();
        let e = refusal(&stem);
        assert!(e.contains("student.tokenizer.json was changed after the run wrote it"), "{e}");
    }

    #[test]
    fn a_changed_input_outside_the_run_is_refused_naming_directory_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("config.json");
        std::fs::write(&input, "{}").unwrap();
        let stem = exported(tmp.path(), &input);
        std::fs::write(&input, "{\"hidden_size\": 8}").unwrap();
        let e = refusal(&stem);
        let dir = tmp.path().display().to_string();
        assert!(e.starts_with(&format!("{dir}: config.json has changed since the run")), "{e}");
        std::fs::remove_file(&input).unwrap();
        assert!(refusal(&stem).contains("config.json is gone since the run"));
        // Restored, it loads again.
        std::fs::write(&input, "{}").unwrap();
        load(&stem).unwrap();
    }

    #[test]
    fn a_card_written_before_the_seal_still_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("config.json");
        std::fs::write(&input, "{}").unwrap();
        let stem = exported(tmp.path(), &input);
        // The weights as an earlier kdx wrote them: sealed, without the hashes.
        let weights = stem.with_extension("safetensors");
        let (map, mut metadata) = read_sealed(&weights).unwrap();
        for k in [CARD_SHA256, TOKENIZER_SHA256, INPUTS] {
            assert!(metadata.remove(k).is_some(), "{k}");
        }
        write_sealed(&weights, &map, metadata).unwrap();
        std::fs::write(&input, "changed").unwrap();
        load(&stem).unwrap();
    }
}
