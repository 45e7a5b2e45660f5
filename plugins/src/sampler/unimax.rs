//! `unimax`: uniform sampling with a cap on repeated epochs (Chung et al., ICLR 2023).

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::registry::BuildCtx;
use kdx_framework::sampler::{Sampler, SamplerCtx};
use schemars::JsonSchema;
use serde::Deserialize;

/// UniMax (Chung et al. 2023, Algorithm 1): spend a budget of B examples as uniformly as
/// possible over the languages without repeating any language more than N epochs.
/// Languages are visited from the smallest to the largest; each gets
/// uᵢ = min(B_left / L_left, N·nᵢ), which is then taken off the budget, and
/// qᵢ = uᵢ / Σⱼ uⱼ. nᵢ: language i's training examples. Sizes and budget are counted in
/// examples (the paper counts characters; there is no other unit here). Languages without
/// examples get 0.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnimaxParams {
    /// Budget B > 0 in examples; by default the examples the stage draws (steps × batch).
    #[serde(default)]
    pub budget: Option<f64>,
    /// Maximum number N > 0 of epochs over any one language.
    #[serde(default = "one")]
    pub max_epochs: f64,
}

fn one() -> f64 {
    1.0
}

fn build(p: UnimaxParams, ctx: &BuildCtx) -> Result<Box<dyn Sampler>, Diagnostic> {
    if let Some(b) = p.budget {
        if !(b.is_finite() && b > 0.0) {
            return Err(ctx.error("budget", format!("must be a positive number of examples, found {b}")));
        }
    }
    if !(p.max_epochs.is_finite() && p.max_epochs > 0.0) {
        return Err(ctx.error("max_epochs", format!("must be a positive number, found {}", p.max_epochs)));
    }
    Ok(Box::new(p))
}

kdx_framework::register_sampler!(
    "unimax",
    "uniform over languages, capped at N epochs each, within a budget (Chung et al. 2023)",
    UnimaxParams,
    build
);

/// Algorithm 1 of Chung et al.: the normalised allocation per language, in input order.
pub fn unimax(sizes: &[f64], budget: f64, max_epochs: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..sizes.len()).filter(|&i| sizes[i] > 0.0).collect();
    order.sort_by(|&a, &b| sizes[a].total_cmp(&sizes[b]).then(a.cmp(&b)));
    let mut alloc = vec![0.0; sizes.len()];
    let mut left = budget;
    for (k, &i) in order.iter().enumerate() {
        let u = (left / (order.len() - k) as f64).min(max_epochs * sizes[i]);
        alloc[i] = u;
        left -= u;
    }
    let total: f64 = alloc.iter().sum();
    if total > 0.0 {
        alloc.iter_mut().for_each(|a| *a /= total);
    }
    alloc
}

impl Sampler for UnimaxParams {
    fn distribution(&mut self, ctx: &SamplerCtx) -> anyhow::Result<Vec<f64>> {
        let sizes: Vec<f64> = ctx.stats.iter().map(|s| s.train_size as f64).collect();
        let budget = self.budget.unwrap_or(ctx.total_steps as f64 * ctx.batch as f64);
        anyhow::ensure!(budget > 0.0, "unimax: the budget is {budget} examples");
        Ok(unimax(&sizes, budget, self.max_epochs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::sampler::LangStat;

    #[test]
    fn matches_the_papers_example() {
        let q = unimax(&[180.0, 184.6, 42.5, 10.03, 0.55], 250.0, 4.0);
        // The published figures are truncated to 4 decimals (the fourth is exactly
        // 4 × 10.03 / 250 = 0.16048, which would round to 0.1605).
        let expect = [0.2769, 0.2769, 0.2769, 0.1604, 0.0088];
        for (a, b) in q.iter().zip(expect) {
            assert!(((a * 1e4 + 1e-9).floor() / 1e4 - b).abs() < 1e-12, "{q:?}");
        }
        // Exactly: 0.55 and 10.03 are capped at 4 epochs, the rest share what is left.
        let share = (250.0 - 4.0 * (0.55 + 10.03)) / 3.0 / 250.0;
        for (a, b) in q.iter().zip([share, share, share, 4.0 * 10.03 / 250.0, 4.0 * 0.55 / 250.0]) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
    }

    #[test]
    fn default_budget_is_the_stage_and_large_budgets_become_proportional() {
        let stats: Vec<LangStat> =
            [10, 0, 1000, 100].iter().map(|&n| LangStat { train_size: n, ..Default::default() }).collect();
        let langs: Vec<String> = (0..4).map(|i| format!("l{i}")).collect();
        // A stage of 30 × 10 = 300 examples, N = 1: 300/3 = 100 > 10 → 10;
        // 290/2 = 145 > 100 → 100; the remaining 190 for the largest.
        let ctx = SamplerCtx { step: 0, total_steps: 30, batch: 10, stats: &stats, langs: &langs };
        let q = UnimaxParams { budget: None, max_epochs: 1.0 }.distribution(&ctx).unwrap();
        let expect = [10.0 / 300.0, 0.0, 190.0 / 300.0, 100.0 / 300.0];
        for (a, b) in q.iter().zip(expect) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
        let q = UnimaxParams { budget: Some(1e9), max_epochs: 2.0 }.distribution(&ctx).unwrap();
        for (a, b) in q.iter().zip([10.0 / 1110.0, 0.0, 1000.0 / 1110.0, 100.0 / 1110.0]) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
    }
}
