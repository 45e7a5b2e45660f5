//! `table`: a fixed, user-given distribution over languages.

use std::collections::BTreeMap;

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::registry::BuildCtx;
use kdx_framework::sampler::{Sampler, SamplerCtx};
use schemars::JsonSchema;
use serde::Deserialize;

/// q_i ∝ weights[lang_i] (`default` for languages not listed); languages without training
/// examples get 0. Example: `weights = { fr = 2.0, de = 1.0 }, default = 0.5`.
/// A listed language that the task does not have is an error when the run starts.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableParams {
    /// Weight per language code.
    pub weights: BTreeMap<String, f64>,
    /// Weight of the languages not listed.
    #[serde(default)]
    pub default: f64,
}

fn build(p: TableParams, ctx: &BuildCtx) -> Result<Box<dyn Sampler>, Diagnostic> {
    for (lang, w) in &p.weights {
        if !(w.is_finite() && *w >= 0.0) {
            return Err(
                ctx.error(&format!("weights.{lang}"), format!("must be a non-negative number, found {w}"))
            );
        }
    }
    if !(p.default.is_finite() && p.default >= 0.0) {
        return Err(ctx.error("default", format!("must be a non-negative number, found {}", p.default)));
    }
    Ok(Box::new(p))
}

kdx_framework::register_sampler!(
    "table",
    "a fixed distribution given per language in the recipe",
    TableParams,
    build
);

impl Sampler for TableParams {
    fn distribution(&mut self, ctx: &SamplerCtx) -> anyhow::Result<Vec<f64>> {
        for lang in self.weights.keys() {
            anyhow::ensure!(
                ctx.langs.contains(lang),
                "sampler table: language `{lang}` is not in the task (its languages: {})",
                ctx.langs.join(", ")
            );
        }
        Ok(ctx
            .langs
            .iter()
            .zip(ctx.stats)
            .map(
                |(l, s)| {
                    if s.train_size == 0 {
                        0.0
                    } else {
                        self.weights.get(l).copied().unwrap_or(self.default)
                    }
                },
            )
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::sampler::{normalise, LangStat};

    #[test]
    fn follows_the_table() {
        let stats: Vec<LangStat> =
            [10, 10, 0, 10].iter().map(|&n| LangStat { train_size: n, ..Default::default() }).collect();
        let langs: Vec<String> = ["de", "fr", "ja", "ru"].iter().map(|s| s.to_string()).collect();
        let mut t =
            TableParams { weights: [("fr".to_string(), 3.0), ("ja".to_string(), 5.0)].into(), default: 1.0 };
        let ctx = SamplerCtx { step: 0, total_steps: 1, batch: 1, stats: &stats, langs: &langs };
        let q = normalise(&t.distribution(&ctx).unwrap()).unwrap();
        assert_eq!(q, vec![0.2, 0.6, 0.0, 0.2]);
        let mut bad = TableParams { weights: [("xx".to_string(), 1.0)].into(), default: 1.0 };
        assert!(bad.distribution(&ctx).unwrap_err().to_string().contains("`xx` is not in the task"));
    }
}
