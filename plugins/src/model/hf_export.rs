//! A kdx transformer as a Hugging Face / sentence-transformers directory (`kdx export RUN
//! --hf DIR`): the inverse of what `hf-encoder` reads, so the ecosystem loads a distilled
//! student and kdx reads the export back as it was.
//!
//! The directory: `config.json` (BERT, or XLM-R when positions start after a padding id),
//! F32 `model.safetensors` with BERT's tensor names, the model's own `tokenizer.json` (a
//! pruned vocabulary stays pruned), `modules.json` with `1_Pooling` and, as the model
//! had them, `2_Normalize` and a `3_Dense` identity-activation projection (the embedding
//! loss's map into the teacher's space), `sentence_bert_config.json` (the length limit) and
//! `config_sentence_transformers.json` (the prefix as the default prompt).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use kdx_framework::features::Featurizer;
use kdx_framework::nn::kernels::FfnActivation;
use kdx_framework::nn::{HiddenProjection, Linear, Pooling, TransformerModel};
use serde_json::json;

/// A tensor for the weights file: name, shape, values.
type Tensor = (String, Vec<usize>, Vec<f32>);

/// `w` (`in × out`, kdx's layout) as PyTorch's `out × in` weight, columns `cols` of it.
fn transposed(w: &[f32], inputs: usize, outputs: usize, cols: std::ops::Range<usize>) -> Vec<f32> {
    let mut t = Vec::with_capacity(cols.len() * inputs);
    for c in cols {
        t.extend((0..inputs).map(|r| w[r * outputs + c]));
    }
    t
}

fn linear(name: &str, l: &Linear) -> [Tensor; 2] {
    let (i, o) = (l.w.shape[0], l.w.shape[1]);
    [
        (format!("{name}.weight"), vec![o, i], transposed(&l.w.data, i, o, 0..o)),
        (format!("{name}.bias"), vec![o], l.b.data.clone()),
    ]
}

fn norm(name: &str, n: &kdx_framework::nn::LayerNorm) -> [Tensor; 2] {
    let h = n.gain.data.len();
    [
        (format!("{name}.weight"), vec![h], n.gain.data.clone()),
        (format!("{name}.bias"), vec![h], n.bias.data.clone()),
    ]
}

/// The encoder's tensors under BERT's names, and its `config.json`.
fn encoder_tensors(m: &TransformerModel) -> (Vec<Tensor>, serde_json::Value) {
    let enc = &m.encoder;
    let c = &enc.cfg;
    let h = c.width;
    let e = &enc.embeddings;
    // BERT always has a token-type table; a model without one adds nothing, as a zero row does.
    let (type_vocab, types) = match &e.types {
        Some(t) => (c.type_vocab, t.data.clone()),
        None => (1, vec![0.0; h]),
    };
    let mut t: Vec<Tensor> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![c.vocab, h], e.tokens.data.clone()),
        ("embeddings.position_embeddings.weight".into(), vec![c.max_positions, h], e.positions.data.clone()),
        ("embeddings.token_type_embeddings.weight".into(), vec![type_vocab, h], types),
    ];
    t.extend(norm("embeddings.LayerNorm", &e.norm));
    for (i, l) in enc.layers.iter().enumerate() {
        let p = format!("encoder.layer.{i}");
        let qkv = &l.attention.qkv;
        for (j, part) in ["query", "key", "value"].into_iter().enumerate() {
            t.push((
                format!("{p}.attention.self.{part}.weight"),
                vec![h, h],
                transposed(&qkv.w.data, h, 3 * h, j * h..(j + 1) * h),
            ));
            t.push((
                format!("{p}.attention.self.{part}.bias"),
                vec![h],
                qkv.b.data[j * h..(j + 1) * h].to_vec(),
            ));
        }
        t.extend(linear(&format!("{p}.attention.output.dense"), &l.attention.out));
        t.extend(norm(&format!("{p}.attention.output.LayerNorm"), &l.attention.norm));
        t.extend(linear(&format!("{p}.intermediate.dense"), &l.ffn.input));
        t.extend(linear(&format!("{p}.output.dense"), &l.ffn.output));
        t.extend(norm(&format!("{p}.output.LayerNorm"), &l.ffn.norm));
    }
    let act = match c.activation {
        FfnActivation::GeluErf => "gelu",
        FfnActivation::GeluTanh => "gelu_new",
        FfnActivation::Relu => "relu",
    };
    // Positions from 0 are BERT's; from `padding_idx + 1`, XLM-R's (RoBERTa's).
    let (model_type, architecture, pad) = match c.position_offset {
        0 => ("bert", "BertModel", 0),
        o => ("xlm-roberta", "XLMRobertaModel", o - 1),
    };
    let config = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": c.vocab,
        "hidden_size": h,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "intermediate_size": c.ffn,
        "hidden_act": act,
        "max_position_embeddings": c.max_positions,
        "type_vocab_size": type_vocab,
        "layer_norm_eps": c.eps,
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.dropout,
        "pad_token_id": pad,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    });
    (t, config)
}

/// safetensors bytes of `tensors` (F32, little-endian).
fn safetensors_bytes(tensors: &[Tensor]) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let meta: Option<std::collections::HashMap<String, String>> =
        Some([("format".to_string(), "pt".to_string())].into());
    Ok(safetensors::serialize(views, &meta)?)
}

fn pretty(v: &serde_json::Value) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s.into_bytes()
}

/// `tokenizer_config.json`: load `tokenizer.json` as it is (transformers would otherwise
/// rebuild a BERT tokenizer from a `vocab.txt` there is none of), with its special tokens by
/// role — XLM-R's `<s> </s> <pad> <unk> <mask>` or kdx's `[CLS] [SEP] [PAD] [UNK] [MASK]`.
fn tokenizer_config(tokenizer_json: &str, max_len: usize) -> serde_json::Value {
    let doc: serde_json::Value = serde_json::from_str(tokenizer_json).unwrap_or_default();
    let added: Vec<&str> = doc
        .get("added_tokens")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(|t| t.get("content")?.as_str()).collect())
        .unwrap_or_default();
    let mut c = json!({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len});
    for (role, names) in [
        ("cls_token", ["<s>", "[CLS]"]),
        ("sep_token", ["</s>", "[SEP]"]),
        ("pad_token", ["<pad>", "[PAD]"]),
        ("unk_token", ["<unk>", "[UNK]"]),
        ("mask_token", ["<mask>", "[MASK]"]),
    ] {
        if let Some(n) = names.iter().find(|n| added.contains(n)) {
            c[role] = json!(n);
        }
    }
    c
}

/// Writes `model` (and `projection`, the embedding loss's map into its teacher's space) to
/// the new directory `dir`, all at once (nothing is left half-written, nothing existing is
/// replaced). Models without a Hugging Face vocabulary (bytes, characters) are refused.
pub fn write(model: &TransformerModel, projection: Option<&HiddenProjection>, dir: &Path) -> Result<()> {
    let tokenizer = model.tokenizer.hf_json().with_context(|| {
        format!(
            "{} tokenises by {}: only a Hugging Face vocabulary (learned, pretrained or pruned) exports",
            model.name,
            model.tokenizer.describe()
        )
    })?;
    let (tensors, config) = encoder_tensors(model);
    let h = model.encoder.cfg.width;
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    let pooling = json!({
        "word_embedding_dimension": h,
        "pooling_mode_cls_token": model.pooling == Pooling::Cls,
        "pooling_mode_mean_tokens": model.pooling == Pooling::Mean,
        "pooling_mode_max_tokens": false,
        "pooling_mode_mean_sqrt_len_tokens": false,
        "pooling_mode_weightedmean_tokens": false,
        "pooling_mode_lasttoken": false,
        "include_prompt": true,
    });
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("tokenizer_config.json".into(), pretty(&tokenizer_config(&tokenizer, model.tokenizer.max_len()))),
        ("config.json".into(), pretty(&config)),
        ("model.safetensors".into(), safetensors_bytes(&tensors)?),
        ("tokenizer.json".into(), tokenizer.into_bytes()),
        ("1_Pooling/config.json".into(), pretty(&pooling)),
        (
            "sentence_bert_config.json".into(),
            pretty(&json!({"max_seq_length": model.tokenizer.max_len(), "do_lower_case": false})),
        ),
    ];
    if model.normalize {
        modules.push(json!({"idx": modules.len(), "name": modules.len().to_string(), "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
        // sentence-transformers wants the module's directory to exist, even empty.
        files.push(("2_Normalize/.keep".into(), Vec::new()));
    }
    if let Some(l) = projection.and_then(|p| p.linear.as_ref()) {
        let (i, o) = (l.w.shape[0], l.w.shape[1]);
        let dense = [
            ("linear.weight".to_string(), vec![o, i], transposed(&l.w.data, i, o, 0..o)),
            ("linear.bias".to_string(), vec![o], l.b.data.clone()),
        ];
        modules.push(json!({"idx": modules.len(), "name": modules.len().to_string(), "path": "3_Dense", "type": "sentence_transformers.models.Dense"}));
        files.push((
            "3_Dense/config.json".into(),
            pretty(&json!({"in_features": i, "out_features": o, "bias": true, "activation_function": "torch.nn.modules.linear.Identity"})),
        ));
        files.push(("3_Dense/model.safetensors".into(), safetensors_bytes(&dense)?));
    }
    files.push(("modules.json".into(), pretty(&serde_json::Value::Array(modules))));
    let mut st = BTreeMap::new();
    if let Some(p) = model.tokenizer.prefix() {
        st.insert("prompts", json!({"query": p}));
        st.insert("default_prompt_name", json!("query"));
    }
    st.insert("similarity_fn_name", json!("cosine"));
    files.push(("config_sentence_transformers.json".into(), pretty(&json!(st))));
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    kdx_fsio::write_dir_atomic(dir, &refs)
}
