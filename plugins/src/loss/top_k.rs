//! `top-k`: distillation from the teacher's K most probable classes (Tan et al. 2019).

use kdx_framework::dylib::kdx_sdk::math::{log_softmax, log_softmax_masked};
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, LossInput, LossOutput, Needs};
use kdx_framework::registry::BuildCtx;
use kdx_framework::schedule::Schedule;
use schemars::JsonSchema;
use serde::Deserialize;

/// Top-K soft targets (Tan et al. 2019, multilingual NMT distillation):
/// L = T² · (1/B) Σᵢ wᵢ · KL(p̃ᵢ ‖ softmax(zᵢ/T)),
/// p̃ᵢ = softmax(tᵢ/T) restricted to the teacher's K most probable classes of row i and
/// renormalised over them (0 elsewhere); ties go to the lower class index. The KL differs
/// from the cross-entropy −Σ p̃ log softmax(z/T) by the constant entropy of p̃ only (same
/// gradient), and is 0 when the student reproduces p̃. K ≥ C is `soft-kl`.
/// `scale_t2 = false` drops the T² factor.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopKParams {
    /// Number K ≥ 1 of teacher classes kept per example.
    #[serde(default = "eight")]
    pub k: usize,
    /// Temperature T > 0: a number or a schedule over the stage.
    #[serde(default = "default_t")]
    pub temperature: Schedule,
    /// Multiply by T².
    #[serde(default = "yes")]
    pub scale_t2: bool,
}

fn eight() -> usize {
    8
}
fn default_t() -> Schedule {
    Schedule::Constant(1.0)
}
fn yes() -> bool {
    true
}

fn build(p: TopKParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    if p.k == 0 {
        return Err(ctx.error("k", "must be at least 1"));
    }
    if !p.temperature.stays_positive() {
        return Err(
            ctx.error("temperature", format!("must stay positive over the stage, found {:?}", p.temperature))
        );
    }
    Ok(Box::new(p))
}

kdx_framework::register_loss!(
    "top-k",
    "KL to the teacher's distribution cut to its K most probable classes (Tan et al. 2019)",
    TopKParams,
    build
);

impl Loss for TopKParams {
    fn needs(&self) -> Needs {
        Needs::TEACHER
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let t_logits = x.teacher_logits.ok_or_else(|| anyhow::anyhow!("top-k needs teacher logits"))?;
        let (b, c) = (x.batch, x.classes);
        let t = self.temperature.at(x.step, x.total_steps) as f64;
        anyhow::ensure!(t > 0.0 && t.is_finite(), "top-k: the temperature is {t} at step {}", x.step);
        let scale = if self.scale_t2 { t * t } else { 1.0 };
        let k = self.k.min(c);
        let mut value = 0f64;
        let mut grad = vec![0f32; b * c];
        let mut kept = vec![false; c];
        for i in 0..b {
            let tr = &t_logits[i * c..(i + 1) * c];
            let mut order: Vec<usize> = (0..c).collect();
            order.sort_by(|&a, &bb| tr[bb].total_cmp(&tr[a]).then(a.cmp(&bb)));
            kept.iter_mut().for_each(|v| *v = false);
            order[..k].iter().for_each(|&j| kept[j] = true);
            let lp = log_softmax_masked(tr, t, |j| kept[j]);
            let lq = log_softmax(&x.student_logits[i * c..(i + 1) * c], t);
            let w = x.weights[i] as f64 / b as f64 * scale;
            value += w * (0..c).filter(|&j| kept[j]).map(|j| lp[j].exp() * (lp[j] - lq[j])).sum::<f64>();
            for j in 0..c {
                grad[i * c + j] = (w / t * (lq[j].exp() - lp[j].exp())) as f32;
            }
        }
        Ok(LossOutput { value: value as f32, grad_logits: grad, grad_hidden: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::soft_kl::SoftKlParams;
    use kdx_framework::testing::{gradient_check, SampleBatch};

    fn top(k: usize, t: f32) -> TopKParams {
        TopKParams { k, temperature: Schedule::Constant(t), scale_t2: true }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for (k, t) in [(1, 1.0), (3, 2.0), (8, 1.0)] {
            let s = SampleBatch::random(5, 6, 2, 3.0, 4);
            let err = gradient_check(&mut top(k, t), &s.input(0, 10), 1e-2).unwrap();
            assert!(err < 1e-2, "K={k} T={t}: relative error {err}");
        }
    }

    #[test]
    fn value_matches_hand_computation_and_soft_kl_when_k_covers_all() {
        let mut s = SampleBatch::random(1, 3, 1, 1.0, 2);
        s.weights = vec![1.0];
        // Teacher (4, 3, 1)/8 cut to two classes: (4/7, 3/7, 0); student uniform.
        s.teacher_logits = vec![4f32.ln(), 3f32.ln(), 0.0];
        s.student_logits = vec![0.5, 0.5, 0.5];
        let v = top(2, 1.0).compute(&s.input(0, 1)).unwrap().value as f64;
        let expect = 4.0 / 7.0 * (12f64 / 7.0).ln() + 3.0 / 7.0 * (9f64 / 7.0).ln();
        assert!((v - expect).abs() < 1e-6, "{v} vs {expect}");
        let s = SampleBatch::random(4, 5, 1, 3.0, 9);
        let a = top(8, 2.0).compute(&s.input(0, 1)).unwrap().value;
        let b = SoftKlParams { temperature: Schedule::Constant(2.0), scale_t2: true }
            .compute(&s.input(0, 1))
            .unwrap()
            .value;
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}
