//! Inference over many examples, in chunks: what evaluation, embedding, teacher outputs and
//! `kdx predict` share.

use anyhow::Result;

use crate::features::TokenRows;
use crate::model::{Model, Outputs};

/// Inference over many examples, in chunks. Identical inputs (an English source under each
/// of its translations) are computed once; for a model that routes by language, identical
/// means the same ids and language.
pub fn predict(model: &dyn Model, x: &TokenRows) -> Result<Outputs> {
    let mut row_of: std::collections::HashMap<(Option<u32>, &[u32]), usize> =
        std::collections::HashMap::new();
    let mut unique = Vec::new();
    let routed = model.routes_by_language();
    let slot: Vec<usize> = (0..x.len())
        .map(|i| {
            let lang = x.langs.get(i).copied().filter(|_| routed);
            *row_of.entry((lang, x.bag(i))).or_insert_with(|| {
                unique.push(i);
                unique.len() - 1
            })
        })
        .collect();
    if unique.len() == x.len() {
        return predict_chunks(model, x);
    }
    let u = predict_chunks(model, &x.gather(&unique))?;
    let (c, h) = (u.classes, u.hidden_dim);
    let mut all = Outputs { batch: x.len(), classes: c, hidden_dim: h, ..Default::default() };
    for &k in &slot {
        all.logits.extend_from_slice(&u.logits[k * c..(k + 1) * c]);
        all.hidden.extend_from_slice(&u.hidden[k * h..(k + 1) * h]);
    }
    Ok(all)
}

fn predict_chunks(model: &dyn Model, x: &TokenRows) -> Result<Outputs> {
    const CHUNK: usize = 2048;
    let mut all = Outputs { classes: model.classes(), hidden_dim: model.hidden_dim(), ..Default::default() };
    let mut start = 0;
    while start < x.len() {
        let end = (start + CHUNK).min(x.len());
        let o = model.forward(&x.range(start, end))?;
        all.logits.extend(o.logits);
        all.hidden.extend(o.hidden);
        all.batch += o.batch;
        start = end;
    }
    Ok(all)
}
