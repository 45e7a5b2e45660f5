//! `per-language`: one model per language group, each example routed to its group's model.

use kdx_framework::features::{Featurizer, TokenRows};
use kdx_framework::kdx_recipe::{Diagnostic, KeyPath};
use kdx_framework::model::{Model, ModelBuilder, ModelSpec, OutputGrads, Outputs, Param, StepCtx};
use kdx_framework::registry::BuildCtx;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Per-language teachers (Tan et al. 2019, "Multilingual NMT with knowledge distillation"):
/// one model per language group, all of the `member` architecture; every example is routed
/// to the model of its language's group, in training (each model learns only from its own
/// languages) and in inference. `groups` lists languages that share a model; the languages
/// not listed share one more model (`rest = "shared"`) or get one each (`rest = "own"`).
/// Training runs each group's model forward once for the objective and once more for its
/// backward pass, so dropout inside members makes their gradient approximate: members are
/// best trained without dropout.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerLanguageParams {
    /// The model of every group (`{ plugin = "ngram-mlp", … }`).
    #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
    pub member: toml::Value,
    /// Groups of language codes that share a model, e.g. [["pt", "pt_BR", "gl"], ["hr", "bs"]].
    #[serde(default)]
    pub groups: Vec<Vec<String>>,
    /// Languages in no group: "shared" (one model for all of them) or "own" (one each).
    #[serde(default)]
    pub rest: Rest,
}

/// What happens to languages in no group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Rest {
    /// One model for all of them.
    #[default]
    Shared,
    /// One model each.
    Own,
}

struct PerLanguageBuilder {
    member: Box<dyn ModelBuilder>,
    groups: Vec<Vec<String>>,
    rest: Rest,
}

fn build(p: PerLanguageParams, ctx: &BuildCtx) -> Result<Box<dyn ModelBuilder>, Diagnostic> {
    let member = ctx.nested_model(KeyPath::root().key("member"), &p.member)?;
    let mut seen = std::collections::BTreeSet::new();
    for (g, langs) in p.groups.iter().enumerate() {
        if langs.is_empty() {
            return Err(ctx.error(&format!("groups[{g}]"), "a group needs at least one language"));
        }
        for l in langs {
            if !seen.insert(l.clone()) {
                return Err(ctx.error(&format!("groups[{g}]"), format!("language `{l}` is in two groups")));
            }
        }
    }
    Ok(Box::new(PerLanguageBuilder { member, groups: p.groups, rest: p.rest }))
}

kdx_framework::register_model!(
    "per-language",
    "a model per language group; each example routed to its group's model",
    PerLanguageParams,
    build
);

impl ModelBuilder for PerLanguageBuilder {
    fn inputs(&self) -> Vec<std::path::PathBuf> {
        self.member.inputs()
    }
    fn example_bytes(&self) -> Option<(&'static str, u128)> {
        // Each example goes through one group's model, built as `member` says.
        self.member.example_bytes().map(|(_, bytes)| ("member", bytes))
    }
    fn build(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn Model>> {
        anyhow::ensure!(!spec.langs.is_empty(), "per-language needs the task's languages to route examples");
        let mut route = vec![usize::MAX; spec.langs.len()];
        let mut names: Vec<String> = Vec::new();
        for (g, langs) in self.groups.iter().enumerate() {
            for l in langs {
                let i = spec.langs.iter().position(|x| x == l).ok_or_else(|| {
                    anyhow::anyhow!(
                        "per-language: group {g} names `{l}`, which is not a language of this task ({})",
                        spec.langs.join(", ")
                    )
                })?;
                route[i] = g;
            }
            names.push(langs.join("+"));
        }
        let rest: Vec<usize> = (0..route.len()).filter(|&i| route[i] == usize::MAX).collect();
        match self.rest {
            Rest::Shared if !rest.is_empty() => {
                for &i in &rest {
                    route[i] = names.len();
                }
                names.push("rest".into());
            }
            Rest::Own => {
                for &i in &rest {
                    route[i] = names.len();
                    names.push(spec.langs[i].clone());
                }
            }
            Rest::Shared => {}
        }
        let mut members = Vec::new();
        for (g, _) in names.iter().enumerate() {
            let mut m = self.member.build(&ModelSpec {
                seed: spec.seed.wrapping_add(0x9E37_79B9 * (g as u64 + 1)),
                ..spec.clone()
            })?;
            for p in m.params_mut() {
                p.name = format!("g{g}.{}", p.name);
            }
            members.push(m);
        }
        Ok(Box::new(PerLanguage { members, names, route }))
    }
}

/// The routed model.
pub struct PerLanguage {
    members: Vec<Box<dyn Model>>,
    names: Vec<String>,
    /// Group of each language.
    route: Vec<usize>,
}

impl PerLanguage {
    /// Example indices per group.
    fn split(&self, x: &TokenRows) -> anyhow::Result<Vec<Vec<usize>>> {
        anyhow::ensure!(
            x.langs.len() == x.len(),
            "per-language routes examples by language, but this batch carries no language ids (e.g. `kdx predict` on raw text)"
        );
        let mut idx = vec![Vec::new(); self.members.len()];
        for (i, &l) in x.langs.iter().enumerate() {
            let g = *self
                .route
                .get(l as usize)
                .ok_or_else(|| anyhow::anyhow!("language id {l} is outside the task"))?;
            idx[g].push(i);
        }
        Ok(idx)
    }

    /// Runs every group's model on its examples and assembles the batch's outputs.
    fn routed_forward(&self, x: &TokenRows, idx: &[Vec<usize>]) -> anyhow::Result<Outputs> {
        let (c, h) = (self.classes(), self.hidden_dim());
        let mut out = Outputs {
            batch: x.len(),
            logits: vec![0.0; x.len() * c],
            classes: c,
            hidden: vec![0.0; x.len() * h],
            hidden_dim: h,
            layers: None,
        };
        for (g, rows) in idx.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let o = self.members[g].forward(&x.gather(rows))?;
            for (k, &i) in rows.iter().enumerate() {
                out.logits[i * c..(i + 1) * c].copy_from_slice(&o.logits[k * c..(k + 1) * c]);
                out.hidden[i * h..(i + 1) * h].copy_from_slice(&o.hidden[k * h..(k + 1) * h]);
            }
        }
        Ok(out)
    }
}

impl Model for PerLanguage {
    fn routes_by_language(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("per-language [{}] of {}", self.names.join(" | "), self.members[0].describe())
    }
    fn classes(&self) -> usize {
        self.members[0].classes()
    }
    fn hidden_dim(&self) -> usize {
        self.members[0].hidden_dim()
    }
    fn featurizer(&self) -> &dyn Featurizer {
        self.members[0].featurizer()
    }
    fn forward(&self, x: &TokenRows) -> anyhow::Result<Outputs> {
        let idx = self.split(x)?;
        self.routed_forward(x, &idx)
    }
    fn forward_backward(
        &mut self,
        x: &TokenRows,
        ctx: StepCtx,
        objective: &mut dyn FnMut(&Outputs) -> anyhow::Result<OutputGrads>,
    ) -> anyhow::Result<Outputs> {
        let idx = self.split(x)?;
        let out = self.routed_forward(x, &idx)?;
        let g = objective(&out)?;
        let (c, h) = (out.classes, out.hidden_dim);
        for (m, rows) in self.members.iter_mut().zip(&idx) {
            if rows.is_empty() {
                continue;
            }
            let pick = |v: &[f32], w: usize| {
                rows.iter().flat_map(|&i| v[i * w..(i + 1) * w].iter().copied()).collect::<Vec<f32>>()
            };
            let sub = OutputGrads {
                logits: pick(&g.logits, c),
                hidden: g.hidden.as_ref().map(|gh| pick(gh, h)),
                layers: None,
            };
            let mut once = Some(sub);
            m.forward_backward(&x.gather(rows), ctx, &mut |_| {
                once.take().ok_or_else(|| anyhow::anyhow!("objective asked twice"))
            })?;
        }
        Ok(out)
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
    use kdx_framework::features::NgramHasher;
    use kdx_framework::model::Grad;

    fn routed(groups: Vec<Vec<String>>, rest: Rest) -> Box<dyn Model> {
        let member: NgramMlpParams = toml::from_str("buckets = 64\ndim = 4\nngrams = [1, 2]").unwrap();
        let langs: Vec<String> = ["de", "fr", "pt", "pt_BR"].iter().map(|s| s.to_string()).collect();
        PerLanguageBuilder { member: Box::new(member), groups, rest }
            .build(&ModelSpec { classes: 4, langs, seed: 3, ..Default::default() })
            .unwrap()
    }

    fn batch(langs: Vec<u32>) -> TokenRows {
        let texts: Vec<&str> =
            ["eins zwei", "un deux", "um dois", "um dois"].iter().take(langs.len()).copied().collect();
        let mut b = TokenRows::build(&NgramHasher { n_min: 1, n_max: 2, buckets: 64 }, texts);
        b.langs = langs;
        b
    }

    #[test]
    fn examples_reach_only_their_group_model() {
        let mut m = routed(vec![vec!["pt".into(), "pt_BR".into()]], Rest::Shared);
        assert!(m.describe().contains("pt+pt_BR | rest"), "{}", m.describe());
        let x = batch(vec![0, 1, 2, 3]);
        let before = m.forward(&x).unwrap();
        // Perturb the pt group's model (g0): only examples 2 and 3 change.
        for p in m.params_mut().into_iter().filter(|p| p.name.starts_with("g0.")) {
            p.data.iter_mut().for_each(|v| *v += 0.5);
        }
        let after = m.forward(&x).unwrap();
        let changed: Vec<bool> =
            (0..4).map(|i| before.logits[i * 4..(i + 1) * 4] != after.logits[i * 4..(i + 1) * 4]).collect();
        assert_eq!(changed, vec![false, false, true, true]);
        // A batch of German only trains the `rest` model, never the pt model.
        let x = batch(vec![0]);
        m.forward_backward(&x, StepCtx::new(0, 0), &mut |o| {
            Ok(OutputGrads { logits: vec![1.0; o.logits.len()], hidden: None, layers: None })
        })
        .unwrap();
        for p in m.params() {
            let has = !matches!(p.grad, Grad::None);
            assert_eq!(has, p.name.starts_with("g1."), "{}: {:?}", p.name, p.grad);
        }
    }

    #[test]
    fn own_rest_gives_a_model_per_language_and_routing_needs_languages() {
        let m = routed(vec![], Rest::Own);
        assert_eq!(m.describe().matches(" | ").count(), 3);
        let mut x = batch(vec![0, 1]);
        x.langs.clear();
        assert!(m.forward(&x).unwrap_err().to_string().contains("no language ids"));
        let member: NgramMlpParams = toml::from_str("buckets = 64").unwrap();
        let err = PerLanguageBuilder {
            member: Box::new(member),
            groups: vec![vec!["xx".into()]],
            rest: Rest::Shared,
        }
        .build(&ModelSpec { classes: 2, langs: vec!["de".into()], ..Default::default() })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("`xx`"), "{err}");
    }
}
