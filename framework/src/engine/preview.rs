//! `kdx sample`: what the distillation stage's sampler will do, before training.

use anyhow::{Context, Result};

use crate::plan::Plan;
use crate::sampler::{normalise, LangStat, SamplerCtx};

/// One language of `kdx sample`'s table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SamplingPreview {
    /// Language.
    pub lang: String,
    /// Training examples.
    pub train_size: usize,
    /// Probability of the language at the first step.
    pub probability: f64,
    /// probability × steps × batch.
    pub expected_draws: f64,
    /// expected_draws / train_size.
    pub expected_passes: f64,
}

/// What the distillation stage's sampler will do on the plan's data, before training (the
/// distribution at step 0; dynamic samplers move from there).
pub fn sampling_preview(plan: &Plan) -> Result<Vec<SamplingPreview>> {
    let task = plan.dataset.load().context("loading the dataset")?;
    let sizes = task.train_sizes();
    let stats: Vec<LangStat> = sizes.iter().map(|&n| LangStat::new(n as u64)).collect();
    let ctx = SamplerCtx {
        step: 0,
        total_steps: plan.train.steps,
        batch: plan.train.batch,
        stats: &stats,
        langs: &task.langs,
    };
    let mut sampler = plan.instantiate()?.samplers.distill;
    let mut d = normalise(&sampler.distribution(&ctx)?)?;
    for (p, &n) in d.iter_mut().zip(&sizes) {
        if n == 0 {
            *p = 0.0;
        }
    }
    let d = normalise(&d)?;
    let total = plan.train.steps as f64 * plan.train.batch as f64;
    Ok(task
        .langs
        .iter()
        .zip(&sizes)
        .zip(&d)
        .map(|((l, &n), &p)| SamplingPreview {
            lang: l.clone(),
            train_size: n,
            probability: p,
            expected_draws: p * total,
            expected_passes: if n == 0 { 0.0 } else { p * total / n as f64 },
        })
        .collect())
}
