//! `logit-std`: KD on standardised logits (Sun et al., CVPR 2024).

use kdx_framework::dylib::kdx_sdk::math::log_softmax_f64;
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, LossInput, LossOutput, Needs};
use kdx_framework::registry::BuildCtx;
use kdx_framework::schedule::Schedule;
use schemars::JsonSchema;
use serde::Deserialize;

/// Logit standardisation before soft KD (Sun et al. 2024):
/// L = T² · (1/B) Σᵢ wᵢ · KL(softmax(std(tᵢ)/T) ‖ softmax(std(zᵢ)/T)),
/// std(v) = (v − mean(v)) / (σ(v) + ε), σ(v) = √((1/C) Σ_c (v_c − mean(v))²) (the paper's
/// population standard deviation). The student only has to match the teacher's logits up
/// to a shift and a scale per example. The gradient flows through the student's
/// standardisation; the teacher side is a constant computed in f64.
/// `scale_t2 = false` drops the T² factor.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogitStdParams {
    /// Temperature T > 0 applied to the standardised logits: a number or a schedule.
    #[serde(default = "default_t")]
    pub temperature: Schedule,
    /// Multiply by T².
    #[serde(default = "yes")]
    pub scale_t2: bool,
    /// ε > 0 added to the standard deviation (guards constant logit vectors).
    #[serde(default = "default_eps")]
    pub eps: f32,
}

fn default_t() -> Schedule {
    Schedule::Constant(2.0)
}
fn yes() -> bool {
    true
}
fn default_eps() -> f32 {
    1e-7
}

fn build(p: LogitStdParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    if !p.temperature.stays_positive() {
        return Err(
            ctx.error("temperature", format!("must stay positive over the stage, found {:?}", p.temperature))
        );
    }
    if !(p.eps.is_finite() && p.eps > 0.0) {
        return Err(ctx.error("eps", format!("must be a positive number, found {}", p.eps)));
    }
    Ok(Box::new(p))
}

kdx_framework::register_loss!(
    "logit-std",
    "soft KL between z-scored student and teacher logits (Sun et al. 2024)",
    LogitStdParams,
    build
);

/// Standardises a row: (centred values d, σ, d / (σ + ε)).
fn standardise(row: &[f32], eps: f64) -> (Vec<f64>, f64, Vec<f64>) {
    let c = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c;
    let d: Vec<f64> = row.iter().map(|&v| v as f64 - mean).collect();
    let sigma = (d.iter().map(|v| v * v).sum::<f64>() / c).sqrt();
    let z = d.iter().map(|v| v / (sigma + eps)).collect();
    (d, sigma, z)
}

impl Loss for LogitStdParams {
    fn needs(&self) -> Needs {
        Needs::TEACHER
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let t_logits = x.teacher_logits.ok_or_else(|| anyhow::anyhow!("logit-std needs teacher logits"))?;
        let (b, c) = (x.batch, x.classes);
        let t = self.temperature.at(x.step, x.total_steps) as f64;
        anyhow::ensure!(t > 0.0 && t.is_finite(), "logit-std: the temperature is {t} at step {}", x.step);
        let scale = if self.scale_t2 { t * t } else { 1.0 };
        let eps = self.eps as f64;
        let mut value = 0f64;
        let mut grad = vec![0f32; b * c];
        for i in 0..b {
            let (d, sigma, zs) = standardise(&x.student_logits[i * c..(i + 1) * c], eps);
            let (_, _, ts) = standardise(&t_logits[i * c..(i + 1) * c], eps);
            let (lq, lp) = (log_softmax_f64(&zs, t), log_softmax_f64(&ts, t));
            let w = x.weights[i] as f64 / b as f64 * scale;
            value += w * (0..c).map(|k| lp[k].exp() * (lp[k] - lq[k])).sum::<f64>();
            // g = ∂L/∂ẑ, then through ẑ = d/(σ+ε):
            // ∂L/∂z_j = (g_j − mean g)/(σ+ε) − (Σ_k g_k d_k)·d_j / (C·σ·(σ+ε)²).
            let g: Vec<f64> = (0..c).map(|k| w / t * (lq[k].exp() - lp[k].exp())).collect();
            let g_mean = g.iter().sum::<f64>() / c as f64;
            let gd: f64 = g.iter().zip(&d).map(|(g, d)| g * d).sum();
            let k2 = if sigma > 0.0 { gd / (c as f64 * sigma * (sigma + eps).powi(2)) } else { 0.0 };
            for j in 0..c {
                grad[i * c + j] = ((g[j] - g_mean) / (sigma + eps) - k2 * d[j]) as f32;
            }
        }
        Ok(LossOutput { value: value as f32, grad_logits: grad, grad_hidden: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::testing::{gradient_check, SampleBatch};

    fn ls(t: f32, scale_t2: bool) -> LogitStdParams {
        LogitStdParams { temperature: Schedule::Constant(t), scale_t2, eps: 1e-7 }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for (t, scale) in [(1.0, true), (2.0, true), (3.0, false)] {
            let s = SampleBatch::random(5, 6, 2, 3.0, 4);
            let err = gradient_check(&mut ls(t, scale), &s.input(0, 10), 1e-2).unwrap();
            assert!(err < 1e-2, "T={t}: relative error {err}");
        }
    }

    #[test]
    fn value_matches_hand_computation_and_ignores_shift_and_scale() {
        let mut s = SampleBatch::random(1, 3, 1, 1.0, 2);
        s.weights = vec![1.0];
        // Teacher (0, 4, 8) → (−√1.5, 0, √1.5); student (1, 1, 3) → (−1/√2, −1/√2, √2).
        s.teacher_logits = vec![0.0, 4.0, 8.0];
        s.student_logits = vec![1.0, 1.0, 3.0];
        let softmax = |v: [f64; 3]| {
            let e = v.map(f64::exp);
            let s: f64 = e.iter().sum();
            e.map(|x| x / s)
        };
        let p = softmax([-1.5f64.sqrt(), 0.0, 1.5f64.sqrt()]);
        let q = softmax([-0.5f64.sqrt(), -0.5f64.sqrt(), 2f64.sqrt()]);
        let expect: f64 = (0..3).map(|k| p[k] * (p[k] / q[k]).ln()).sum();
        let v = ls(1.0, true).compute(&s.input(0, 1)).unwrap().value as f64;
        assert!((v - expect).abs() < 1e-5, "{v} vs {expect}");
        // A shifted and rescaled copy of the teacher costs nothing.
        s.student_logits = vec![-7.0, -6.0, -5.0];
        let out = ls(2.0, true).compute(&s.input(0, 1)).unwrap();
        assert!(out.value.abs() < 1e-5 && out.grad_logits.iter().all(|g| g.abs() < 1e-5), "{out:?}");
    }
}
