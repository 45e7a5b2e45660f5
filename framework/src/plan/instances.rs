//! The plugin instances one run trains with, made from its checked plan
//! ([`crate::plan::Plan::instantiate`]): losses and samplers keep state while they train
//! (moving averages, gates, a dynamic sampler's statistics, a projection's weights), so the
//! plan stays the read-only configuration and each run owns fresh instances.

use anyhow::Result;
use kdx_recipe::{Diagnostics, RecipeDoc};

use super::resolve::{build_loss, build_sampler, LossPlan, SamplerPlan};
use crate::dylib::PluginSet;
use crate::loss::Loss;
use crate::sampler::{Proportional, Sampler};
use crate::schedule::Schedule;

/// A run's instances of the recipe's losses and samplers.
pub struct Instances {
    /// One per `[[loss]]`, in recipe order.
    pub losses: Vec<LossInstance>,
    /// One sampler per stage that samples languages.
    pub samplers: Samplers,
}

/// A `[[loss]]` instance with its name and weight, as the stages use it.
pub struct LossInstance {
    /// Plugin name.
    pub plugin: String,
    /// Weight (a number or a schedule).
    pub weight: Schedule,
    /// The loss.
    pub loss: Box<dyn Loss>,
}

/// The language samplers of a run's stages, each its own instance of the recipe's
/// `[sampler]` (dynamic samplers keep state per stage).
pub struct Samplers {
    /// The distillation stage's.
    pub distill: Box<dyn Sampler>,
    /// The baseline's (`None` when `[train] baseline = false`).
    pub baseline: Option<Box<dyn Sampler>>,
    /// The fine-tuning stage's (`None` without `[finetune]`).
    pub finetune: Option<Box<dyn Sampler>>,
}

/// Fresh instances of a checked recipe's losses and sampler (`doc`'s, with its plugin
/// libraries); fails only if a plugin builds differently than when the plan was checked.
pub(super) fn instantiate(
    doc: &RecipeDoc,
    plugins: &PluginSet,
    loss_plans: &[LossPlan],
    s: &SamplerPlan,
) -> Result<Instances> {
    let mut diags = Diagnostics(Vec::new());
    let mut losses = Vec::new();
    for l in loss_plans {
        if let Some(loss) = build_loss(doc, plugins, &l.key, &l.plugin, l.params.clone(), &mut diags) {
            losses.push(LossInstance { plugin: l.plugin.clone(), weight: l.weight.clone(), loss });
        }
    }
    let mut one = || -> Option<Box<dyn Sampler>> {
        match &s.params {
            None => Some(Box::new(Proportional)),
            Some(params) => build_sampler(doc, &s.plugin, params.clone(), &mut diags),
        }
    };
    let (distill, baseline, finetune) = (one(), s.baseline.then(&mut one), s.finetune.then(&mut one));
    match (diags.is_empty(), distill) {
        (true, Some(distill)) => Ok(Instances {
            losses,
            samplers: Samplers { distill, baseline: baseline.flatten(), finetune: finetune.flatten() },
        }),
        _ => anyhow::bail!("the recipe's plugins no longer build as when it was checked:\n{diags}"),
    }
}
