//! `selective`: per-language selective distillation (Tan et al. 2019).

use kdx_framework::dylib::kdx_sdk::math::log_softmax;
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, LossInput, LossOutput, Needs};
use kdx_framework::registry::BuildCtx;
use kdx_framework::sampler::LangStat;
use kdx_framework::schedule::Schedule;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Selective distillation (Tan et al. 2019, multilingual NMT): each language is distilled
/// only while the student is not yet better than the teacher on it.
/// L = (1/B) Σᵢ wᵢ · ℓᵢ, with, for example i of language ℓ:
/// ℓᵢ = T² · KL(softmax(tᵢ/T) ‖ softmax(zᵢ/T)) while the gate of ℓ is open, else
/// ℓᵢ = −log softmax(zᵢ)_yᵢ (`fallback = "hard-ce"`) or 0 (`fallback = "none"`).
/// The gate of ℓ is open while acc_student(ℓ) < acc_teacher(ℓ) + margin, both measured on
/// the dev split at the last evaluation; it is open before the first evaluation and
/// wherever the teacher's accuracy is unknown. The gates (1 open, 0 closed, one per
/// language) are reported in `metrics.csv`. `scale_t2 = false` drops T².
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectiveParams {
    /// Temperature T > 0 of the distillation term: a number or a schedule over the stage.
    #[serde(default = "default_t")]
    pub temperature: Schedule,
    /// Multiply the distillation term by T².
    #[serde(default = "yes")]
    pub scale_t2: bool,
    /// Accuracy margin: a language stops being distilled once the student's dev accuracy
    /// reaches the teacher's plus this (as a fraction, 0.01 = one point).
    #[serde(default = "default_margin")]
    pub margin: f64,
    /// Objective of languages whose gate is closed: "hard-ce" (gold labels) or "none".
    #[serde(default)]
    pub fallback: Fallback,
}

/// What a language with a closed gate trains on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Cross-entropy with the gold labels.
    #[default]
    HardCe,
    /// Nothing: the examples do not contribute.
    None,
}

fn default_t() -> Schedule {
    Schedule::Constant(1.0)
}
fn yes() -> bool {
    true
}
fn default_margin() -> f64 {
    0.01
}

/// The loss with the gates of its last batch.
pub struct Selective {
    /// Parameters from the recipe.
    pub params: SelectiveParams,
    /// Gate per language at the last `compute` (1 open, 0 closed).
    pub gates: Option<Vec<f32>>,
}

fn build(p: SelectiveParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    if !p.temperature.stays_positive() {
        return Err(
            ctx.error("temperature", format!("must stay positive over the stage, found {:?}", p.temperature))
        );
    }
    if !p.margin.is_finite() {
        return Err(ctx.error("margin", format!("must be a finite number, found {}", p.margin)));
    }
    Ok(Box::new(Selective { params: p, gates: None }))
}

kdx_framework::register_loss!(
    "selective",
    "soft KD per language while the student trails the teacher on dev, else hard CE (Tan et al. 2019)",
    SelectiveParams,
    build
);

impl Selective {
    /// Whether a language is still distilled.
    pub fn open(&self, s: &LangStat) -> bool {
        match (s.dev_accuracy(), s.teacher_dev_accuracy()) {
            (Some(student), Some(teacher)) => student < teacher + self.params.margin,
            _ => true,
        }
    }
}

impl Loss for Selective {
    fn needs(&self) -> Needs {
        Needs { labels: self.params.fallback == Fallback::HardCe, ..Needs::TEACHER }
    }
    fn language_state(&self) -> anyhow::Result<Option<Vec<f32>>> {
        Ok(self.gates.clone())
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let t_logits = x.teacher_logits.ok_or_else(|| anyhow::anyhow!("selective needs teacher logits"))?;
        let (b, c) = (x.batch, x.classes);
        let t = self.params.temperature.at(x.step, x.total_steps) as f64;
        anyhow::ensure!(t > 0.0 && t.is_finite(), "selective: the temperature is {t} at step {}", x.step);
        let scale = if self.params.scale_t2 { t * t } else { 1.0 };
        let gates: Vec<bool> = x.stats.iter().map(|s| self.open(s)).collect();
        let mut value = 0f64;
        let mut grad = vec![0f32; b * c];
        for i in 0..b {
            let lang = x.langs[i] as usize;
            anyhow::ensure!(
                lang < gates.len(),
                "selective: language {lang} has no statistics ({} languages)",
                gates.len()
            );
            let w = x.weights[i] as f64 / b as f64;
            let z = &x.student_logits[i * c..(i + 1) * c];
            let g = &mut grad[i * c..(i + 1) * c];
            if gates[lang] {
                let (lq, lp) = (log_softmax(z, t), log_softmax(&t_logits[i * c..(i + 1) * c], t));
                let w = w * scale;
                value += w * (0..c).map(|k| lp[k].exp() * (lp[k] - lq[k])).sum::<f64>();
                for k in 0..c {
                    g[k] = (w / t * (lq[k].exp() - lp[k].exp())) as f32;
                }
            } else if self.params.fallback == Fallback::HardCe {
                let labels = x.labels.ok_or_else(|| {
                    anyhow::anyhow!("selective falls back to hard CE, and this stage has no gold labels")
                })?;
                let y = labels[i] as usize;
                anyhow::ensure!(y < c, "selective: label {y} out of range for {c} classes");
                let lq = log_softmax(z, 1.0);
                value -= w * lq[y];
                for k in 0..c {
                    g[k] = (w * (lq[k].exp() - if k == y { 1.0 } else { 0.0 })) as f32;
                }
            }
        }
        self.gates = Some(gates.iter().map(|&o| if o { 1.0 } else { 0.0 }).collect());
        Ok(LossOutput { value: value as f32, grad_logits: grad, grad_hidden: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::soft_kl::SoftKlParams;
    use kdx_framework::testing::{gradient_check, SampleBatch};

    fn sel(t: f32, fallback: Fallback) -> Selective {
        Selective {
            params: SelectiveParams {
                temperature: Schedule::Constant(t),
                scale_t2: true,
                margin: 0.01,
                fallback,
            },
            gates: None,
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for t in [1.0, 3.0] {
            // Languages alternate: language 0 distils, language 1 is on hard CE.
            let s = SampleBatch::random(6, 5, 2, 3.0, 4);
            let err = gradient_check(&mut sel(t, Fallback::HardCe), &s.input(0, 10), 1e-2).unwrap();
            assert!(err < 1e-2, "T={t}: relative error {err}");
        }
    }

    #[test]
    fn gate_closes_when_the_student_beats_the_teacher_plus_margin() {
        let mut s = SampleBatch::random(6, 5, 2, 3.0, 5);
        let mut l = sel(2.0, Fallback::HardCe);
        assert_eq!(l.language_state().unwrap(), None);
        l.compute(&s.input(0, 1)).unwrap();
        // Language 0: 0.5 < 0.9 + 0.01, open; language 1: 0.95 ≥ 0.91, closed.
        assert_eq!(l.language_state().unwrap(), Some(vec![1.0, 0.0]));
        // Closed rows are hard CE, open rows soft KL.
        s.langs = vec![1; 6];
        let v = l.compute(&s.input(0, 1)).unwrap().value;
        let ce =
            kdx_framework::loss::CrossEntropy { label_smoothing: 0.0 }.compute(&s.input(0, 1)).unwrap().value;
        assert!((v - ce).abs() < 1e-5, "{v} vs {ce}");
        assert_eq!(sel(2.0, Fallback::None).compute(&s.input(0, 1)).unwrap().value, 0.0);
        s.langs = vec![0; 6];
        let v = l.compute(&s.input(0, 1)).unwrap().value;
        let kd = SoftKlParams { temperature: Schedule::Constant(2.0), scale_t2: true }
            .compute(&s.input(0, 1))
            .unwrap()
            .value;
        assert!((v - kd).abs() < 1e-5, "{v} vs {kd}");
        // Before the first evaluation every gate is open.
        s.stats.iter_mut().for_each(|st| st.dev_acc = f64::NAN);
        l.compute(&s.input(0, 1)).unwrap();
        assert_eq!(l.language_state().unwrap(), Some(vec![1.0, 1.0]));
    }
}
