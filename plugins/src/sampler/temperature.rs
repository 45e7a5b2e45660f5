//! `temperature`: temperature-scaled sampling (XLM, mT5, M2M).

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::registry::BuildCtx;
use kdx_framework::sampler::{Sampler, SamplerCtx};
use schemars::JsonSchema;
use serde::Deserialize;

/// q_i ∝ n_i^(1/τ) = n_i^α, n_i: language i's training examples (languages without any get
/// 0). τ = 1 (α = 1) is `proportional`, τ → ∞ (α = 0) is `uniform`; XLM-R uses α = 0.3,
/// mT5 α = 0.3, M2M-100 τ = 5. Give either `tau` or `alpha` (= 1/τ), not both; by
/// default τ = 5.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemperatureParams {
    /// Temperature τ > 0 (default 5 when `alpha` is not given).
    #[serde(default)]
    pub tau: Option<f64>,
    /// Exponent α = 1/τ ≥ 0, as XLM and mT5 write it.
    #[serde(default)]
    pub alpha: Option<f64>,
}

/// The sampler with its exponent resolved.
pub struct Temperature {
    /// α = 1/τ.
    pub alpha: f64,
}

fn build(p: TemperatureParams, ctx: &BuildCtx) -> Result<Box<dyn Sampler>, Diagnostic> {
    let alpha = match (p.tau, p.alpha) {
        (Some(_), Some(_)) => {
            return Err(ctx.error("alpha", "give either `tau` or `alpha` (= 1/tau), not both"))
        }
        (Some(tau), None) if !(tau.is_finite() && tau > 0.0) => {
            return Err(ctx.error("tau", format!("must be a positive number, found {tau}")))
        }
        (Some(tau), None) => 1.0 / tau,
        (None, Some(a)) if !(a.is_finite() && a >= 0.0) => {
            return Err(ctx.error("alpha", format!("must be a non-negative number, found {a}")))
        }
        (None, Some(a)) => a,
        (None, None) => 0.2,
    };
    Ok(Box::new(Temperature { alpha }))
}

kdx_framework::register_sampler!(
    "temperature",
    "q ∝ n^(1/τ): between proportional (τ = 1) and uniform (τ → ∞)",
    TemperatureParams,
    build
);

/// n_i^α for each size, scaled by the largest so large sizes and exponents do not overflow.
pub fn temperature_weights(sizes: &[f64], alpha: f64) -> Vec<f64> {
    let max = sizes.iter().cloned().fold(0.0, f64::max);
    sizes.iter().map(|&n| if n > 0.0 { (alpha * (n / max).ln()).exp() } else { 0.0 }).collect()
}

impl Sampler for Temperature {
    fn distribution(&mut self, ctx: &SamplerCtx) -> anyhow::Result<Vec<f64>> {
        let sizes: Vec<f64> = ctx.stats.iter().map(|s| s.train_size as f64).collect();
        Ok(temperature_weights(&sizes, self.alpha))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::sampler::{normalise, LangStat};

    #[test]
    fn follows_n_to_the_one_over_tau() {
        let stats: Vec<LangStat> = [1000, 10, 0, 100_000]
            .iter()
            .map(|&n| LangStat { train_size: n, ..Default::default() })
            .collect();
        let langs: Vec<String> = (0..4).map(|i| format!("l{i}")).collect();
        let ctx = SamplerCtx { step: 0, total_steps: 1, batch: 1, stats: &stats, langs: &langs };
        // α = ½: √1000 : √10 : 0 : √100000 = 10 : 1 : 0 : 100 (×√10).
        let q = normalise(&Temperature { alpha: 0.5 }.distribution(&ctx).unwrap()).unwrap();
        for (a, b) in q.iter().zip([10.0 / 111.0, 1.0 / 111.0, 0.0, 100.0 / 111.0]) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
        // α = 1 is proportional, α = 0 uniform over languages with data.
        let q = normalise(&Temperature { alpha: 1.0 }.distribution(&ctx).unwrap()).unwrap();
        assert!((q[3] - 100_000.0 / 101_010.0).abs() < 1e-12);
        let q = normalise(&Temperature { alpha: 0.0 }.distribution(&ctx).unwrap()).unwrap();
        assert_eq!(q, vec![1.0 / 3.0, 1.0 / 3.0, 0.0, 1.0 / 3.0]);
    }

    fn build_from(text: &str) -> Result<Box<dyn Sampler>, Diagnostic> {
        use kdx_framework::kdx_recipe::{KeyPath, RecipeDoc};
        let doc = RecipeDoc::from_str(text, std::path::Path::new("r.toml")).unwrap();
        let key = KeyPath::root().key("sampler");
        let ctx = BuildCtx { doc: &doc, key: key.clone(), params: doc.get(&key).unwrap().clone() };
        build(ctx.params()?, &ctx)
    }

    #[test]
    fn tau_or_alpha_not_both() {
        let err = build_from("[sampler]\ntau = 5.0\nalpha = 0.2\n").err().expect("both given");
        assert_eq!(err.key_path.map(|k| k.to_string()).as_deref(), Some("sampler.alpha"));
        assert_eq!(err.loc.map(|l| l.line), Some(3));
        assert!(build_from("[sampler]\ntau = 0.0\n").is_err());
        let mut s = build_from("[sampler]\nalpha = 0.3\n").ok().unwrap();
        let stats: Vec<LangStat> =
            [1, 4].iter().map(|&n| LangStat { train_size: n, ..Default::default() }).collect();
        let langs: Vec<String> = (0..2).map(|i| format!("l{i}")).collect();
        let ctx = SamplerCtx { step: 0, total_steps: 1, batch: 1, stats: &stats, langs: &langs };
        let w = s.distribution(&ctx).unwrap();
        assert!((w[0] / w[1] - 0.25f64.powf(0.3)).abs() < 1e-12);
        let mut s = build_from("[sampler]\n").ok().unwrap();
        let w = s.distribution(&ctx).unwrap();
        assert!((w[0] / w[1] - 0.25f64.powf(0.2)).abs() < 1e-12, "default τ = 5");
    }
}
