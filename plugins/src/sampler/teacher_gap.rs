//! `teacher-gap`: DoReMi-style dynamic sampling from the per-language student–teacher gap.

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::registry::BuildCtx;
use kdx_framework::sampler::{Sampler, SamplerCtx};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Languages where the student trails the teacher most are drawn more (after DoReMi,
/// Xie et al. 2023, with the teacher as reference model). Weights w start at `init`; every
/// `every` steps they take one exponentiated-gradient step
/// wᵢ ← softmax(log wᵢ + η · max(0, ℓₛ,ᵢ − ℓₜ,ᵢ)),
/// ℓₛ,ᵢ and ℓₜ,ᵢ: running means of the student's and the teacher's per-example loss on
/// language i (kept by the engine; ℓₜ = 0 without a teacher). The sampling distribution is
/// q = (1 − ε)·w + ε·uniform, ε = `smoothing`. Languages without examples get 0 throughout.
/// The first distribution (step 0) is the smoothed initial w; each later one applies one
/// update. w is checkpointed, so a resumed run samples as an uninterrupted one.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TeacherGapParams {
    /// Steps between two updates (≥ 1).
    #[serde(default = "hundred")]
    pub every: u64,
    /// Step size η ≥ 0 of the update.
    #[serde(default = "one")]
    pub eta: f64,
    /// Mixing weight ε in [0, 1] of the uniform distribution.
    #[serde(default = "tenth")]
    pub smoothing: f64,
    /// Initial weights: "proportional" (to the training sizes) or "uniform".
    #[serde(default)]
    pub init: Init,
}

/// Initial weights of `teacher-gap`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// wᵢ ∝ nᵢ.
    #[default]
    Proportional,
    /// wᵢ = 1/L over the languages with examples.
    Uniform,
}

fn hundred() -> u64 {
    100
}
fn one() -> f64 {
    1.0
}
fn tenth() -> f64 {
    0.1
}

/// The sampler and its state.
pub struct TeacherGap {
    /// Parameters from the recipe.
    pub params: TeacherGapParams,
    /// Current weights w (normalised), empty before the first distribution.
    pub w: Vec<f64>,
}

fn build(p: TeacherGapParams, ctx: &BuildCtx) -> Result<Box<dyn Sampler>, Diagnostic> {
    if p.every == 0 {
        return Err(ctx.error("every", "must be at least 1"));
    }
    if !(p.eta.is_finite() && p.eta >= 0.0) {
        return Err(ctx.error("eta", format!("must be a non-negative number, found {}", p.eta)));
    }
    if !(0.0..=1.0).contains(&p.smoothing) {
        return Err(ctx.error("smoothing", format!("must be in [0, 1], found {}", p.smoothing)));
    }
    Ok(Box::new(TeacherGap { params: p, w: Vec::new() }))
}

kdx_framework::register_sampler!(
    "teacher-gap",
    "DoReMi-style: up-weights languages where the student trails the teacher",
    TeacherGapParams,
    build
);

impl Sampler for TeacherGap {
    fn distribution(&mut self, ctx: &SamplerCtx) -> anyhow::Result<Vec<f64>> {
        let n: Vec<f64> = ctx.stats.iter().map(|s| s.train_size as f64).collect();
        let live = n.iter().filter(|&&x| x > 0.0).count();
        anyhow::ensure!(live > 0, "teacher-gap: no language has training examples");
        if self.w.is_empty() {
            self.w = match self.params.init {
                Init::Proportional => n.clone(),
                Init::Uniform => n.iter().map(|&x| if x > 0.0 { 1.0 } else { 0.0 }).collect(),
            };
        } else {
            anyhow::ensure!(
                self.w.len() == n.len(),
                "teacher-gap: the state has {} weights for {} languages",
                self.w.len(),
                n.len()
            );
            let eta = self.params.eta;
            let logit: Vec<f64> = (0..n.len())
                .map(|i| match n[i] > 0.0 && self.w[i] > 0.0 {
                    true => {
                        self.w[i].ln()
                            + eta * (ctx.stats[i].student_loss - ctx.stats[i].teacher_loss).max(0.0)
                    }
                    false => f64::NEG_INFINITY,
                })
                .collect();
            let m = logit.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            anyhow::ensure!(m.is_finite(), "teacher-gap: the weights are degenerate: {:?}", self.w);
            // Normalised below by dividing by the sum, not by `kdx_sdk::math`'s log-sum-exp:
            // the two round differently, and the weights drive every draw of a run.
            self.w = logit.iter().map(|l| (l - m).exp()).collect();
        }
        let total: f64 = self.w.iter().sum();
        self.w.iter_mut().for_each(|x| *x /= total);
        let eps = self.params.smoothing;
        Ok((0..n.len())
            .map(|i| if n[i] > 0.0 { (1.0 - eps) * self.w[i] + eps / live as f64 } else { 0.0 })
            .collect())
    }
    fn update_every(&self) -> u64 {
        self.params.every
    }
    fn state(&self) -> Vec<f64> {
        self.w.clone()
    }
    fn restore(&mut self, state: &[f64]) -> anyhow::Result<()> {
        anyhow::ensure!(
            state.iter().all(|x| x.is_finite() && *x >= 0.0),
            "teacher-gap: invalid weights in the checkpoint: {state:?}"
        );
        self.w = state.to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::sampler::LangStat;

    fn stats(losses: [(f64, f64); 3]) -> Vec<LangStat> {
        [100, 300, 0]
            .iter()
            .zip(losses)
            .map(|(&n, (s, t))| LangStat {
                train_size: n,
                student_loss: s,
                teacher_loss: t,
                ..Default::default()
            })
            .collect()
    }

    fn close(a: &[f64], b: &[f64]) {
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12), "{a:?} vs {b:?}");
    }

    #[test]
    fn two_updates_by_hand_and_state_round_trip() {
        let params = TeacherGapParams { every: 100, eta: 1.0, smoothing: 0.1, init: Init::Proportional };
        let mut s = TeacherGap { params: params.clone(), w: Vec::new() };
        let langs: Vec<String> = (0..3).map(|i| format!("l{i}")).collect();
        let ask = |s: &mut TeacherGap, step, st: &[LangStat]| {
            s.distribution(&SamplerCtx { step, total_steps: 1000, batch: 8, stats: st, langs: &langs })
                .unwrap()
        };
        // Step 0: w = (¼, ¾, 0); q = 0.9·w + 0.1·(½, ½, 0).
        close(&ask(&mut s, 0, &stats([(0.0, 0.0); 3])), &[0.275, 0.725, 0.0]);
        // Update 1: gaps (1, 0 — negative clipped, 0): w ∝ (¼e, ¾, 0).
        let e = std::f64::consts::E;
        let st1 = stats([(2.0, 1.0), (1.0, 1.5), (5.0, 0.0)]);
        let w1 = [0.25 * e / (0.25 * e + 0.75), 0.75 / (0.25 * e + 0.75), 0.0];
        close(&ask(&mut s, 100, &st1), &[0.9 * w1[0] + 0.05, 0.9 * w1[1] + 0.05, 0.0]);
        close(&s.state(), &w1);
        // A sampler restored from the state continues identically.
        let mut r = TeacherGap { params, w: Vec::new() };
        r.restore(&s.state()).unwrap();
        // Update 2: gaps (0, 1): w ∝ (¼e, ¾e) = (¼, ¾) again.
        let st2 = stats([(1.0, 1.0), (2.0, 1.0), (0.0, 0.0)]);
        close(&ask(&mut s, 200, &st2), &[0.275, 0.725, 0.0]);
        close(&ask(&mut r, 200, &st2), &[0.275, 0.725, 0.0]);
        assert_eq!(s.update_every(), 100);
    }

    #[test]
    fn uniform_init() {
        let params = TeacherGapParams { every: 10, eta: 1.0, smoothing: 0.0, init: Init::Uniform };
        let mut s = TeacherGap { params, w: Vec::new() };
        let langs: Vec<String> = (0..3).map(|i| format!("l{i}")).collect();
        let st = stats([(0.0, 0.0); 3]);
        let q = s
            .distribution(&SamplerCtx { step: 0, total_steps: 1, batch: 1, stats: &st, langs: &langs })
            .unwrap();
        close(&q, &[0.5, 0.5, 0.0]);
    }
}
