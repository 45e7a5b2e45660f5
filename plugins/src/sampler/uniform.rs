//! `uniform`: every language with training data equally often.

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::registry::BuildCtx;
use kdx_framework::sampler::{Sampler, SamplerCtx};
use schemars::JsonSchema;
use serde::Deserialize;

/// q_i = 1/L for each of the L languages with training examples (n_i > 0), 0 for the
/// others: small languages are seen as often as large ones (and repeated more).
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UniformParams {}

fn build(p: UniformParams, _: &BuildCtx) -> Result<Box<dyn Sampler>, Diagnostic> {
    Ok(Box::new(p))
}

kdx_framework::register_sampler!(
    "uniform",
    "q = 1/L over the languages with training data",
    UniformParams,
    build
);

impl Sampler for UniformParams {
    fn distribution(&mut self, ctx: &SamplerCtx) -> anyhow::Result<Vec<f64>> {
        Ok(ctx.stats.iter().map(|s| if s.train_size > 0 { 1.0 } else { 0.0 }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::sampler::{normalise, LangStat};

    #[test]
    fn uniform_over_languages_with_data() {
        let stats: Vec<LangStat> =
            [30, 10, 0, 60].iter().map(|&n| LangStat { train_size: n, ..Default::default() }).collect();
        let langs: Vec<String> = (0..4).map(|i| format!("l{i}")).collect();
        let ctx = SamplerCtx { step: 0, total_steps: 1, batch: 1, stats: &stats, langs: &langs };
        let q = normalise(&UniformParams {}.distribution(&ctx).unwrap()).unwrap();
        let third = 1.0 / 3.0;
        assert_eq!(q, vec![third, third, 0.0, third]);
    }
}
