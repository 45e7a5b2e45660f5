//! `ensemble`: several models whose predictions are averaged (typically a teacher).

use kdx_framework::features::{Featurizer, TokenRows};
use kdx_framework::kdx_recipe::{Diagnostic, KeyPath};
use kdx_framework::model::{Model, ModelBuilder, ModelSpec, OutputGrads, Outputs, Param, StepCtx};
use kdx_framework::registry::BuildCtx;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An ensemble of models: logits = mean of the members' logits (`combine = "logits"`) or
/// log of the mean of their probabilities (`combine = "probs"`). Each member is trained on
/// its own outputs, independently of the others (same batches, its own seed), so the
/// ensemble of pre-trained teachers is what distillation sees. The hidden representation is
/// the members' hidden representations concatenated. Members must featurise identically
/// (same n-grams and buckets); they may differ in width, depth or dropout.
/// Example: `members = [{ plugin = "ngram-mlp", dim = 32 }, { plugin = "ngram-mlp", dim = 32, hidden = [64] }]`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnsembleParams {
    /// The member models, each a model table (`{ plugin = "ngram-mlp", … }`); at least two.
    #[schemars(with = "Vec<std::collections::BTreeMap<String, serde_json::Value>>")]
    pub members: Vec<toml::Value>,
    /// How outputs are averaged: "logits" or "probs".
    #[serde(default)]
    pub combine: Combine,
}

/// How member outputs are averaged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    /// Mean of the logits.
    #[default]
    Logits,
    /// Log of the mean of the softmax probabilities.
    Probs,
}

struct EnsembleBuilder {
    members: Vec<Box<dyn ModelBuilder>>,
    combine: Combine,
}

fn build(p: EnsembleParams, ctx: &BuildCtx) -> Result<Box<dyn ModelBuilder>, Diagnostic> {
    if p.members.len() < 2 {
        return Err(ctx
            .error("members", format!("an ensemble needs at least two members, found {}", p.members.len())));
    }
    let members = p
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| ctx.nested_model(KeyPath::root().key("members").index(i), m))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Box::new(EnsembleBuilder { members, combine: p.combine }))
}

kdx_framework::register_model!(
    "ensemble",
    "several models averaged (logits or probabilities)",
    EnsembleParams,
    build
);

impl ModelBuilder for EnsembleBuilder {
    fn inputs(&self) -> Vec<std::path::PathBuf> {
        self.members.iter().flat_map(|m| m.inputs()).collect()
    }
    fn example_bytes(&self) -> Option<(&'static str, u128)> {
        // Every example goes through every member.
        let each: Vec<u128> = self.members.iter().filter_map(|m| m.example_bytes().map(|(_, b)| b)).collect();
        (!each.is_empty()).then(|| ("members", each.iter().sum()))
    }
    fn build(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn Model>> {
        let mut members = Vec::new();
        for (i, b) in self.members.iter().enumerate() {
            let mut m = b.build(&ModelSpec {
                seed: spec.seed.wrapping_add(0x9E37_79B9 * (i as u64 + 1)),
                ..spec.clone()
            })?;
            // Unique names: they are checkpoint keys.
            for p in m.params_mut() {
                p.name = format!("m{i}.{}", p.name);
            }
            members.push(m);
        }
        let f0 = members[0].featurizer().describe();
        for (i, m) in members.iter().enumerate() {
            anyhow::ensure!(
                m.featurizer().describe() == f0,
                "ensemble member {i} featurises as `{}`, member 0 as `{f0}`: members must featurise identically",
                m.featurizer().describe()
            );
        }
        Ok(Box::new(Ensemble { members, combine: self.combine }))
    }
}

/// The ensemble model.
pub struct Ensemble {
    members: Vec<Box<dyn Model>>,
    combine: Combine,
}

impl Ensemble {
    fn combine_outputs(&self, outs: &[Outputs]) -> Outputs {
        let (b, c) = (outs[0].batch, outs[0].classes);
        let n = outs.len() as f32;
        let mut logits = vec![0f32; b * c];
        match self.combine {
            Combine::Logits => {
                for o in outs {
                    logits.iter_mut().zip(&o.logits).for_each(|(a, x)| *a += x / n);
                }
            }
            Combine::Probs => {
                let mut probs = vec![0f64; b * c];
                // Not `kdx_sdk::math::softmax`: here `x − max` is taken in f32 and only then
                // widened (the kit divides in f64 first), so the kit would move an ensemble
                // teacher's logits in their last bits and every result computed from them.
                for o in outs {
                    for (row, prow) in o.logits.chunks(c).zip(probs.chunks_mut(c)) {
                        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        let z: f64 = row.iter().map(|&x| ((x - m) as f64).exp()).sum();
                        for (p, &x) in prow.iter_mut().zip(row) {
                            *p += ((x - m) as f64).exp() / z / n as f64;
                        }
                    }
                }
                // log p is a valid logit vector (softmax(log p) = p); floor keeps it finite.
                logits.iter_mut().zip(&probs).for_each(|(l, p)| *l = p.max(1e-30).ln() as f32);
            }
        }
        let hidden_dim: usize = outs.iter().map(|o| o.hidden_dim).sum();
        let mut hidden = Vec::with_capacity(b * hidden_dim);
        for i in 0..b {
            for o in outs {
                hidden.extend_from_slice(&o.hidden[i * o.hidden_dim..(i + 1) * o.hidden_dim]);
            }
        }
        Outputs { batch: b, logits, classes: c, hidden, hidden_dim, layers: None }
    }
}

impl Model for Ensemble {
    fn routes_by_language(&self) -> bool {
        self.members.iter().any(|m| m.routes_by_language())
    }
    fn describe(&self) -> String {
        let parts: Vec<String> = self.members.iter().map(|m| m.describe()).collect();
        format!("ensemble ({:?}) of [{}]", self.combine, parts.join("; "))
    }
    fn classes(&self) -> usize {
        self.members[0].classes()
    }
    fn hidden_dim(&self) -> usize {
        self.members.iter().map(|m| m.hidden_dim()).sum()
    }
    fn featurizer(&self) -> &dyn Featurizer {
        self.members[0].featurizer()
    }
    fn forward(&self, x: &TokenRows) -> anyhow::Result<Outputs> {
        let outs = self.members.iter().map(|m| m.forward(x)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(self.combine_outputs(&outs))
    }
    fn forward_backward(
        &mut self,
        x: &TokenRows,
        ctx: StepCtx,
        objective: &mut dyn FnMut(&Outputs) -> anyhow::Result<OutputGrads>,
    ) -> anyhow::Result<Outputs> {
        let mut outs = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            let c = StepCtx { seed: ctx.seed.wrapping_add(i as u64), ..ctx };
            outs.push(m.forward_backward(x, c, objective)?);
        }
        Ok(self.combine_outputs(&outs))
    }
    fn params(&self) -> Vec<&Param> {
        self.members.iter().flat_map(|m| m.params()).collect()
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.members.iter_mut().flat_map(|m| m.params_mut()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ngram_mlp::NgramMlpParams;

    fn member(dim: usize) -> Box<dyn ModelBuilder> {
        let p: NgramMlpParams =
            toml::from_str(&format!("buckets = 64\ndim = {dim}\nngrams = [1, 2]")).unwrap();
        Box::new(p)
    }

    #[test]
    fn averages_members_and_names_their_parameters_apart() {
        let x = TokenRows::build(
            &kdx_framework::features::NgramHasher { n_min: 1, n_max: 2, buckets: 64 },
            vec!["abc", "de"],
        );
        let e = EnsembleBuilder { members: vec![member(4), member(6)], combine: Combine::Logits }
            .build(&ModelSpec::new(3, 7))
            .unwrap();
        assert_eq!(e.hidden_dim(), 10);
        let names: Vec<&str> = e.params().iter().map(|p| p.name.as_str()).collect();
        assert!(names.contains(&"m0.emb") && names.contains(&"m1.emb"), "{names:?}");
        for combine in [Combine::Logits, Combine::Probs] {
            let members: Vec<Box<dyn Model>> = vec![
                member(4).build(&ModelSpec::new(3, 1)).unwrap(),
                member(6).build(&ModelSpec::new(3, 2)).unwrap(),
            ];
            let a = members[0].forward(&x).unwrap();
            let b = members[1].forward(&x).unwrap();
            let o = Ensemble { members, combine }.forward(&x).unwrap();
            let sm = |z: &[f32], j: usize| {
                let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                (z[j] - m).exp() / z.iter().map(|v| (v - m).exp()).sum::<f32>()
            };
            for k in 0..6 {
                let r = k / 3 * 3;
                let expect = match combine {
                    Combine::Logits => (a.logits[k] + b.logits[k]) / 2.0,
                    Combine::Probs => {
                        ((sm(&a.logits[r..r + 3], k % 3) + sm(&b.logits[r..r + 3], k % 3)) / 2.0).ln()
                    }
                };
                assert!((o.logits[k] - expect).abs() < 1e-5, "{combine:?} {k}: {} vs {expect}", o.logits[k]);
            }
            assert_eq!(&o.hidden[..4], &a.hidden[..4]);
            assert_eq!(&o.hidden[4..10], &b.hidden[..6]);
        }
    }

    #[test]
    fn members_must_featurise_alike() {
        let other: NgramMlpParams = toml::from_str("buckets = 32\ndim = 4").unwrap();
        let err = EnsembleBuilder { members: vec![member(4), Box::new(other)], combine: Combine::Logits }
            .build(&ModelSpec::new(3, 0))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("must featurise identically"), "{err}");
    }
}
