//! `proportional`: languages in proportion to their training data (the natural distribution).

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::registry::BuildCtx;
use kdx_framework::sampler::{Proportional, Sampler};
use schemars::JsonSchema;
use serde::Deserialize;

/// The framework's [`Proportional`] sampler: q_i = n_i / Σ_j n_j, where n_i is language i's number of training examples: every
/// example is equally likely, so large languages dominate.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProportionalParams {}

fn build(_: ProportionalParams, _: &BuildCtx) -> Result<Box<dyn Sampler>, Diagnostic> {
    Ok(Box::new(Proportional))
}

kdx_framework::register_sampler!(
    "proportional",
    "q ∝ n: the natural distribution of the training data",
    ProportionalParams,
    build
);

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::sampler::{normalise, LangStat, SamplerCtx};

    #[test]
    fn proportional_to_sizes() {
        let stats: Vec<LangStat> =
            [30, 10, 0, 60].iter().map(|&n| LangStat { train_size: n, ..Default::default() }).collect();
        let langs: Vec<String> = (0..4).map(|i| format!("l{i}")).collect();
        let ctx = SamplerCtx { step: 0, total_steps: 1, batch: 1, stats: &stats, langs: &langs };
        let q = normalise(&Proportional.distribution(&ctx).unwrap()).unwrap();
        assert_eq!(q, vec![0.3, 0.1, 0.0, 0.6]);
    }
}
