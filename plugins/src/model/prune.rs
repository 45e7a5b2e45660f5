//! Vocabulary pruning for `hf-encoder` (Abdaoui et al. 2020, "Load What You Need"): keep
//! the pieces of a Unigram vocabulary that a recipe's languages need and drop the rest of
//! the token table, which is most of a multilingual encoder's parameters (96M of
//! multilingual-e5-small's 118M).
//!
//! What is kept: the special tokens; every piece the training text uses (most frequent
//! first, when they alone exceed the budget); then, up to the budget, the pieces with the
//! highest Unigram scores among those written only in the scripts the training text uses
//! (so words the corpus lacks still find their pieces). Kept pieces keep their relative
//! order, so the specials keep their ids. A text whose best segmentation uses only kept
//! pieces is segmented identically: the pruned vocabulary is a subset, so no better
//! segmentation can appear.

use std::collections::{HashMap, HashSet};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

/// A pruned vocabulary: the tokenizer.json and, for each new id, the original id.
pub struct Pruned {
    /// The pruned tokenizer.json.
    pub json: String,
    /// Original id of each kept piece, in new-id order.
    pub rows: Vec<u32>,
}

/// The Unigram pieces and scores of a tokenizer.json, and its special tokens' ids.
struct Vocab {
    doc: Value,
    pieces: Vec<(String, f64)>,
    specials: Vec<u32>,
}

fn vocab(json: &[u8]) -> Result<Vocab> {
    let doc: Value = serde_json::from_slice(json).context("not a tokenizer.json")?;
    ensure!(
        doc.pointer("/model/type").and_then(Value::as_str) == Some("Unigram"),
        "pruning needs a Unigram vocabulary (XLM-R, multilingual-e5); this tokenizer.json has {}",
        doc.pointer("/model/type").unwrap_or(&Value::Null)
    );
    let list = doc
        .pointer("/model/vocab")
        .and_then(Value::as_array)
        .context("a Unigram tokenizer.json without model.vocab")?;
    let pieces = list
        .iter()
        .map(|e| Some((e.get(0)?.as_str()?.to_string(), e.get(1)?.as_f64()?)))
        .collect::<Option<Vec<_>>>()
        .context("model.vocab entries must be [piece, score]")?;
    let mut specials: Vec<u32> = doc
        .get("added_tokens")
        .and_then(Value::as_array)
        .map_or(Vec::new(), |a| a.iter().filter_map(|t| t.get("id")?.as_u64().map(|i| i as u32)).collect());
    specials.extend(doc.pointer("/model/unk_id").and_then(Value::as_u64).map(|i| i as u32));
    Ok(Vocab { doc, pieces, specials })
}

/// Which 128-code-point block a character is in (a cheap stand-in for its script).
fn block(c: char) -> u32 {
    c as u32 / 0x80
}

/// Chooses at most `budget` pieces of `full` (a tokenizer.json) for `texts`, given each
/// text's ids under the full vocabulary.
pub fn choose(full: &[u8], tokenised: &[Vec<u32>], texts: &[String], budget: usize) -> Result<Pruned> {
    let v = vocab(full)?;
    ensure!(
        budget > v.specials.len(),
        "a budget of {budget} pieces leaves no room beside the {} special tokens",
        v.specials.len()
    );
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for ids in tokenised {
        for &i in ids {
            *counts.entry(i).or_default() += 1;
        }
    }
    let mut keep: HashSet<u32> = v.specials.iter().copied().collect();
    let mut used: Vec<(u32, usize)> = counts.into_iter().filter(|(i, _)| !keep.contains(i)).collect();
    used.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (i, _) in used {
        if keep.len() >= budget {
            break;
        }
        keep.insert(i);
    }
    // Fill with the best-scored pieces of the scripts the text is written in.
    let blocks: HashSet<u32> =
        texts.iter().flat_map(|t| t.chars()).filter(|c| c.is_alphabetic()).map(block).collect();
    let mut candidates: Vec<(u32, f64)> = v
        .pieces
        .iter()
        .enumerate()
        .filter(|(i, _)| !keep.contains(&(*i as u32)))
        .filter(|(_, (p, _))| {
            p.chars().filter(|&c| c != '\u{2581}').all(|c| !c.is_alphabetic() || blocks.contains(&block(c)))
        })
        .map(|(i, (_, s))| (i as u32, *s))
        .collect();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    for (i, _) in candidates {
        if keep.len() >= budget {
            break;
        }
        keep.insert(i);
    }
    let mut rows: Vec<u32> = keep.into_iter().collect();
    rows.sort_unstable();
    build(v, rows)
}

/// The pruned vocabulary a model exported with `pruned` (its tokenizer.json) was made of,
/// found by piece in the `full` tokenizer.json.
pub fn reload(full: &[u8], pruned: &[u8]) -> Result<Pruned> {
    let v = vocab(full)?;
    let p = vocab(pruned)?;
    let index: HashMap<&str, u32> =
        v.pieces.iter().enumerate().map(|(i, (s, _))| (s.as_str(), i as u32)).collect();
    let rows = p
        .pieces
        .iter()
        .map(|(s, _)| {
            index
                .get(s.as_str())
                .copied()
                .with_context(|| format!("the pruned vocabulary's piece {s:?} is not in the model's"))
        })
        .collect::<Result<Vec<u32>>>()?;
    build(v, rows)
}

/// The tokenizer.json of `v` restricted to `rows` (ascending original ids), every id in it
/// renumbered.
fn build(v: Vocab, rows: Vec<u32>) -> Result<Pruned> {
    let new_id: HashMap<u32, u32> = rows.iter().enumerate().map(|(n, &o)| (o, n as u32)).collect();
    let remap = |o: u64| -> Result<u64> {
        new_id
            .get(&(o as u32))
            .map(|&n| n as u64)
            .with_context(|| format!("special token id {o} was not kept"))
    };
    let mut doc = v.doc;
    let list: Vec<Value> =
        rows.iter().map(|&o| serde_json::json!([v.pieces[o as usize].0, v.pieces[o as usize].1])).collect();
    doc["model"]["vocab"] = Value::Array(list);
    if let Some(u) = doc.pointer("/model/unk_id").and_then(Value::as_u64) {
        doc["model"]["unk_id"] = remap(u)?.into();
    }
    if let Some(added) = doc.get_mut("added_tokens").and_then(Value::as_array_mut) {
        for t in added {
            if let Some(id) = t.get("id").and_then(Value::as_u64) {
                t["id"] = remap(id)?.into();
            }
        }
    }
    if let Some(specials) = doc.pointer_mut("/post_processor/special_tokens").and_then(Value::as_object_mut) {
        for (_, s) in specials.iter_mut() {
            if let Some(ids) = s.get_mut("ids").and_then(Value::as_array_mut) {
                for id in ids.iter_mut() {
                    *id = remap(id.as_u64().context("a special token id that is not a number")?)?.into();
                }
            }
        }
    }
    Ok(Pruned { json: serde_json::to_string(&doc)?, rows })
}
