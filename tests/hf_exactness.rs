//! kdx's transformer against Hugging Face `transformers` and `sentence-transformers`:
//! identical token ids, every layer's hidden states, attention and pooled vectors within
//! 1e-4. The references were written by `scripts/reference/make_tiny_models.py` (tiny random
//! BERT, DistilBERT and XLM-R under tests/data/hf/) and `scripts/reference/minilm_reference.py`
//! (all-MiniLM-L6-v2, fetched by `scripts/fetch-minilm.sh`; tests/data/minilm/).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kdx_framework::features::TokenRows;
use kdx_framework::model::Model;
use kdx_framework::nn::Pooling;
use kdx_plugins::model::hf_encoder::HfDir;

const TOLERANCE: f32 = 1e-4;

struct Reference {
    sentences: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    tensors: HashMap<String, Vec<f32>>,
}

fn reference(dir: &Path) -> Reference {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let sentences =
        json["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let token_ids = json["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ids| ids.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect())
        .collect();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            (name, t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        })
        .collect();
    Reference { sentences, token_ids, tensors }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hf").join(name)
}

/// Every layer, the attention and both poolings of one tiny checkpoint.
fn check_tiny(name: &str) {
    let dir = data(name);
    let r = reference(&dir);
    let hf = HfDir::open(&dir).unwrap();
    let model = hf.model(2).unwrap();
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    for (t, want) in texts.iter().zip(&r.token_ids) {
        let mut ids = Vec::new();
        model.featurizer().featurize(t, &mut ids);
        assert_eq!(&ids, want, "{name}: token ids of {t:?}");
    }
    let bags = TokenRows::build(model.featurizer(), texts.clone());
    let out = model.forward_layers(&bags).unwrap();
    let s = out.layers.as_ref().unwrap();
    let (w, t) = (s.width, s.seq);
    for (k, h) in s.hidden.iter().enumerate() {
        let real: Vec<f32> =
            (0..s.lens.len()).flat_map(|b| h[b * t * w..(b * t + s.lens[b]) * w].iter().copied()).collect();
        let d = max_abs_diff(&real, &r.tensors[&format!("hidden.{k}")]);
        eprintln!("{name}: hidden state {k}: max |kdx − transformers| = {d:.2e}");
        assert!(d <= TOLERANCE, "{name}: hidden state {k} differs by {d}");
    }
    for (k, a) in s.attention.iter().enumerate() {
        let mut real = Vec::new();
        for (b, &n) in s.lens.iter().enumerate() {
            for h in 0..s.heads {
                for q in 0..n {
                    let row = ((b * s.heads + h) * t + q) * t;
                    real.extend_from_slice(&a[row..row + n]);
                }
            }
        }
        let d = max_abs_diff(&real, &r.tensors[&format!("attention.{k}")]);
        eprintln!("{name}: attention {k}: max |kdx − transformers| = {d:.2e}");
        assert!(d <= TOLERANCE, "{name}: attention {k} differs by {d}");
    }
    for (pooling, key) in [(Pooling::Mean, "pooled_mean"), (Pooling::Cls, "pooled_cls")] {
        let mut m = hf.model(2).unwrap();
        (m.pooling, m.normalize) = (pooling, false);
        let d = max_abs_diff(&m.forward(&bags).unwrap().hidden, &r.tensors[key]);
        assert!(d <= TOLERANCE, "{name}: {key} differs by {d}");
    }
}

#[test]
fn tiny_bert_equals_transformers_layer_by_layer() {
    check_tiny("tiny-bert");
}

#[test]
fn tiny_distilbert_equals_transformers_layer_by_layer() {
    check_tiny("tiny-distilbert");
}

#[test]
fn tiny_xlmr_equals_transformers_layer_by_layer() {
    check_tiny("tiny-xlmr");
}

#[test]
fn tiny_bert_sentence_pipeline_equals_sentence_transformers() {
    // modules.json: Transformer → mean Pooling → Normalize.
    let dir = data("tiny-bert");
    let r = reference(&dir);
    let hf = HfDir::open(&dir).unwrap();
    assert_eq!((hf.pooling, hf.normalize), (Pooling::Mean, true));
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    let d = max_abs_diff(&hf.model(2).unwrap().embed(&texts).unwrap(), &r.tensors["embeddings"]);
    assert!(d <= TOLERANCE, "sentence embeddings differ by {d}");
}

#[test]
fn unsupported_or_mismatched_directories_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(data("tiny-bert").join(f), tmp.path().join(f)).unwrap();
    }
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type": "gpt2", "vocab_size": 10}"#).unwrap();
    let e = format!("{:#}", HfDir::open(tmp.path()).unwrap_err());
    assert!(e.contains("\"gpt2\"") && e.contains("bert, distilbert, roberta, xlm-roberta"), "{e}");
    // A config that says 48 wide for 32-wide tensors: the tensor and both shapes are named.
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("tiny-bert").join("config.json")).unwrap()).unwrap();
    config["hidden_size"] = 48.into();
    config["num_attention_heads"] = 4.into();
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    // Checked against the checkpoint's header when the directory is opened, before any
    // weight is read: the key and both shapes are named.
    let e = format!("{:#}", HfDir::open(tmp.path()).unwrap_err());
    assert!(e.contains("`hidden_size`") && e.contains("[800, 32]") && e.contains("[800, 48]"), "{e}");
    let write = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(data("tiny-bert").join("config.json")).unwrap()).unwrap();
        edit(&mut c);
        std::fs::write(tmp.path().join("config.json"), c.to_string()).unwrap();
    };
    // A layer count that disagrees with the weights is refused, not silently cut.
    write(&|c| c["num_hidden_layers"] = 1.into());
    let e = format!("{:#}", HfDir::open(tmp.path()).unwrap_err());
    assert!(e.contains("`num_hidden_layers` = 1") && e.contains("holds 2 layers"), "{e}");
    // A value of the wrong type names its key instead of becoming a default.
    write(&|c| c["layer_norm_eps"] = "x".into());
    let e = format!("{:#}", HfDir::open(tmp.path()).unwrap_err());
    assert!(e.contains("`layer_norm_eps`") && e.contains("invalid type"), "{e}");
    // A size no encoder has is refused before anything is allocated.
    write(&|c| c["vocab_size"] = 1_000_000_000u64.into());
    let t0 = std::time::Instant::now();
    let e = format!("{:#}", HfDir::open(tmp.path()).unwrap_err());
    assert!(e.contains("`vocab_size` = 1000000000") && t0.elapsed().as_secs_f64() < 1.0, "{e}");
}

#[test]
fn a_tokenizer_without_a_vocabulary_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(data("tiny-bert").join(f), tmp.path().join(f)).unwrap();
    }
    let mut t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("tiny-bert").join("tokenizer.json")).unwrap()).unwrap();
    let specials: serde_json::Map<String, serde_json::Value> = t["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["content"].as_str().unwrap().to_string(), a["id"].clone()))
        .collect();
    t["model"]["vocab"] = serde_json::Value::Object(specials);
    std::fs::write(tmp.path().join("tokenizer.json"), t.to_string()).unwrap();
    let e = format!("{:#}", HfDir::open(tmp.path()).unwrap().model(2).unwrap_err());
    assert!(e.contains("no vocabulary beyond its") && e.contains("special tokens"), "{e}");
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(data("tiny-bert").join(f), tmp.path().join(f)).unwrap();
    }
    let mut map =
        kdx_framework::store::read_safetensors(&data("tiny-bert").join("model.safetensors")).unwrap();
    let (_, w) = map.get_mut("encoder.layer.1.output.dense.weight").expect("tiny-bert has this tensor");
    w[5] = f32::NAN;
    std::fs::write(tmp.path().join("model.safetensors"), kdx_framework::store::to_safetensors(&map).unwrap())
        .unwrap();
    let e = HfDir::open(tmp.path()).unwrap().encoder(None, 0.0).unwrap_err().to_string();
    assert!(e.contains("`encoder.layer.1.output.dense.weight` holds NaN or infinite weights"), "{e}");
}

#[test]
fn a_student_from_chosen_teacher_layers_reuses_their_weights() {
    let hf = HfDir::open(&data("tiny-bert")).unwrap();
    let full = hf.encoder(None, 0.0).unwrap();
    let one = hf.encoder(Some(&[1]), 0.0).unwrap();
    assert_eq!(one.layers.len(), 1);
    assert_eq!(one.layers[0].attention.qkv.w.data, full.layers[1].attention.qkv.w.data);
    assert_eq!(one.layers[0].ffn.norm.bias.data, full.layers[1].ffn.norm.bias.data);
    assert_eq!(one.embeddings.tokens.data, full.embeddings.tokens.data);
}

/// Where `scripts/fetch-minilm.sh` puts the model.
#[test]
fn all_minilm_l6_v2_embeddings_equal_sentence_transformers() {
    let dir = common::minilm_dir();
    let r = reference(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm"));
    let hf = HfDir::open(&dir).unwrap();
    assert_eq!((hf.pooling, hf.normalize, hf.max_len), (Pooling::Mean, true, 256));
    let model = hf.model(2).unwrap();
    assert_eq!(model.num_params(), 22_565_376 + 384 * 2 + 2, "encoder (pooler aside) + a 2-class head");
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    for (t, want) in texts.iter().zip(&r.token_ids) {
        let mut ids = Vec::new();
        model.featurizer().featurize(t, &mut ids);
        assert_eq!(&ids, want, "token ids of {t:?}");
    }
    let d = max_abs_diff(&model.embed(&texts).unwrap(), &r.tensors["embeddings"]);
    eprintln!("all-MiniLM-L6-v2: embeddings: max |kdx − sentence-transformers| = {d:.2e}");
    assert!(d <= TOLERANCE, "all-MiniLM-L6-v2 embeddings differ from sentence-transformers' by {d}");
}

#[test]
fn kdx_embed_prints_the_pipeline_vectors_of_a_model_directory() {
    let dir = data("tiny-bert");
    let r = reference(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, r.sentences.join("\n") + "\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(["embed", dir.to_str().unwrap(), input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<f32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .flat_map(|l| l.split('\t').map(|v| v.parse::<f32>().unwrap()).collect::<Vec<_>>())
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 16, "one line per input line");
    let d = max_abs_diff(&printed, &r.tensors["embeddings"]);
    assert!(d <= TOLERANCE, "kdx embed differs from sentence-transformers by {d}");
    // The same as a float32 .npy matrix.
    let npy = tmp.path().join("v.npy");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(["embed", dir.to_str().unwrap(), input.to_str().unwrap(), "-o", npy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&npy).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY\x01\x00"));
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'shape': (16, 32)"));
    let body: Vec<f32> = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(body, printed);
}

#[test]
fn kdx_eval_scores_translation_retrieval_on_a_parallel_file() {
    // tests/data/tiny-lid.tsv: 60 translations (fr, de, es) of 20 English messages.
    let tmp = tempfile::tempdir().unwrap();
    let tsv = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-lid.tsv"))
        .unwrap();
    let pairs: String = tsv
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            format!("{}\t{}\n", c[3], c[0])
        })
        .collect();
    let file = tmp.path().join("pairs.tsv");
    std::fs::write(&file, pairs).unwrap();
    let eval = |model: &Path, file: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kdx"))
            .args(["eval", model.to_str().unwrap(), "--parallel", file.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = eval(&common::minilm_dir(), &file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("pairs 60, distinct sources 20"), "{text}");
    let acc = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap()
            .split_whitespace()
            .nth(4)
            .unwrap()
            .parse()
            .unwrap()
    };
    // all-MiniLM-L6-v2 is English, yet finds most French, German and Spanish translations
    // (chance 0.05 and 0.0167): 0.63 and 0.75 when measured.
    assert!(acc("translation → source") > 0.5 && acc("source → translation") > 0.5, "{text}");
    // A header row names the columns; it is not scored as a pair.
    std::fs::write(&file, format!("source\ttranslation\n{}", std::fs::read_to_string(&file).unwrap()))
        .unwrap();
    let out = eval(&common::minilm_dir(), &file);
    let with_header = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(with_header, text, "the header changes nothing");
    // A malformed line is named.
    std::fs::write(&file, "a\tb\nno tab here\n").unwrap();
    let out = eval(&data("tiny-bert"), &file);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pairs.tsv:2: expected `source<TAB>translation`"));
}

/// Vocabulary pruning: the token table shrinks to the kept pieces, a text whose pieces are
/// all kept embeds exactly as with the whole vocabulary, and an exported run's pruned
/// tokenizer.json rebuilds the same model.
#[test]
fn a_pruned_vocabulary_embeds_texts_of_kept_pieces_exactly() {
    use kdx_framework::model::ModelSpec;
    use kdx_framework::registry::{build_standalone, Instance, PluginKind};
    let dir = data("tiny-xlmr");
    let texts: Vec<String> = ["hello world", "the cat sat", "a small test", "world of cats"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let build = |budget: Option<i64>, tokenizer_file: Option<PathBuf>| -> Box<dyn Model> {
        let mut p = toml::Table::new();
        p.insert("path".into(), dir.display().to_string().into());
        if let Some(b) = budget {
            p.insert("max_vocabulary".into(), b.into());
        }
        let Ok(Instance::Model(b)) = build_standalone(PluginKind::Model, "hf-encoder", p, "test") else {
            panic!("hf-encoder builds")
        };
        let spec = ModelSpec {
            classes: 2,
            train_texts: std::sync::Arc::new(texts.clone()),
            tokenizer_file,
            ..Default::default()
        };
        b.build(&spec).unwrap()
    };
    let full = build(None, None);
    let pruned = build(Some(60), None);
    let table = |m: &dyn Model| m.params().iter().find(|p| p.name == "tokens").unwrap().shape.clone();
    assert_eq!(table(&*full)[0], 600);
    assert_eq!(table(&*pruned)[0], 60, "{}", pruned.describe());
    let embed = |m: &dyn Model, t: &[String]| {
        m.forward(&TokenRows::build(m.featurizer(), t.iter().map(String::as_str).collect::<Vec<_>>()))
            .unwrap()
            .hidden
    };
    // The training texts' pieces are all kept: the same vectors.
    let d = max_abs_diff(&embed(&*pruned, &texts), &embed(&*full, &texts));
    assert!(d <= 1e-5, "pruned and whole vocabularies differ by {d}");
    // The exported tokenizer.json rebuilds the pruned model (its rows found by piece).
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("student.tokenizer.json");
    std::fs::write(&file, pruned.featurizer().tokenizer_json().expect("a pruned vocabulary is exported"))
        .unwrap();
    let again = build(Some(60), Some(file));
    assert_eq!(embed(&*again, &texts), embed(&*pruned, &texts));
}
