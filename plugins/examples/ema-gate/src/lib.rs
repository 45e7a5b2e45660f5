//! `ema-gated-kd`: soft-label distillation that weights each language by how far the
//! student still is from the teacher there — a kdx loss plugin of ABI 2 whose state (a
//! moving average per language) is saved with every checkpoint, so a resumed run equals an
//! uninterrupted one.
//!
//! For example `i` of language `l`, at temperature `T`:
//!
//! ```text
//! L   = T² · (1/B) Σᵢ wᵢ · g_l · KL(softmax(tᵢ/T) ‖ softmax(zᵢ/T))
//! m_l ← β · m_l + (1 − β) · (mean KL of language l's examples in the batch)   (after each batch)
//! g_l = clamp(m_l / mean over languages seen of m, 0, max_weight)
//! ```
//!
//! Languages whose KL stays high get more of the gradient. `g` is a constant within a step
//! (no gradient flows through it). `metrics.csv` gets the columns `ema-gated-kd.ema` and
//! `ema-gated-kd.weight`, one value per language.
//!
//! Build and use (from the kdx repository root):
//!
//! ```text
//! cargo build --release --manifest-path plugins/examples/ema-gate/Cargo.toml --target-dir target/plugin-examples
//! kdx run RECIPE --plugin target/plugin-examples/release/libema_gate.so
//! ```

use kdx_sdk::math::{kl, log_softmax};
use kdx_sdk::{ensure, ensure_param, Loss, LossInput, LossOutput, Params, Result};
use serde::{Deserialize, Serialize};

/// The parameters of a `[[loss]] plugin = "ema-gated-kd"` table (all optional).
#[derive(Clone, Debug, Deserialize, Serialize, kdx_sdk::schemars::JsonSchema)]
#[schemars(crate = "kdx_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct EmaGateParams {
    /// Temperature T > 0. Default 2.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Decay β of the moving average, in [0, 1). Default 0.9.
    #[serde(default = "default_decay")]
    pub decay: f64,
    /// Largest weight a language gets. Default 3.
    #[serde(default = "default_max_weight")]
    pub max_weight: f64,
}

fn default_temperature() -> f32 {
    2.0
}
fn default_decay() -> f64 {
    0.9
}
fn default_max_weight() -> f64 {
    3.0
}

/// The loss and its state.
#[derive(Clone, Debug)]
pub struct EmaGate {
    p: EmaGateParams,
    /// Moving average of each language's KL; NaN until the language is first seen.
    ema: Vec<f64>,
}

impl EmaGate {
    /// Each language's weight from the moving averages (1 for a language not seen yet).
    fn weights(&self) -> Vec<f64> {
        let seen: Vec<f64> = self.ema.iter().copied().filter(|m| !m.is_nan()).collect();
        let mean = seen.iter().sum::<f64>() / seen.len().max(1) as f64;
        self.ema
            .iter()
            .map(|&m| if m.is_nan() || mean <= 0.0 { 1.0 } else { (m / mean).clamp(0.0, self.p.max_weight) })
            .collect()
    }
}

impl Loss for EmaGate {
    const NAME: &'static str = "ema-gated-kd";
    const SUMMARY: &'static str =
        "soft-label KD weighted per language by a moving average of its KL (stateful)";

    fn params_schema() -> Option<String> {
        Some(kdx_sdk::schema_for::<EmaGateParams>())
    }

    fn create(params: &Params) -> Result<Self> {
        let p: EmaGateParams = params.parse()?;
        ensure_param!(
            p.temperature > 0.0,
            "temperature",
            "must be a positive number, found {}",
            p.temperature
        );
        ensure_param!((0.0..1.0).contains(&p.decay), "decay", "must be in [0, 1), found {}", p.decay);
        ensure_param!(p.max_weight > 0.0, "max_weight", "must be positive, found {}", p.max_weight);
        Ok(EmaGate { p, ema: Vec::new() })
    }

    fn needs_teacher(&self) -> bool {
        true
    }

    fn compute(&mut self, x: &LossInput) -> Result<LossOutput> {
        let teacher = x.teacher_logits()?;
        let (b, c) = (x.batch, x.classes);
        if self.ema.len() < x.stats.len() {
            self.ema.resize(x.stats.len(), f64::NAN);
        }
        let g = self.weights();
        let t = self.p.temperature as f64;
        let mut value = 0f64;
        let mut grad = vec![0f32; b * c];
        let mut per_lang = vec![(0f64, 0usize); self.ema.len()];
        for i in 0..b {
            let (z, tz) = (&x.student_logits[i * c..(i + 1) * c], &teacher[i * c..(i + 1) * c]);
            let (lq, lp) = (log_softmax(z, t), log_softmax(tz, t));
            let p: Vec<f64> = lp.iter().map(|v| v.exp()).collect();
            let k = kl(&p, &lp, &lq);
            let l = x.langs[i] as usize;
            per_lang[l] = (per_lang[l].0 + k, per_lang[l].1 + 1);
            let s = t * t * x.weights[i] as f64 * g[l] / b as f64;
            value += s * k;
            for j in 0..c {
                grad[i * c + j] = (s * (lq[j].exp() - p[j]) / t) as f32;
            }
        }
        let beta = self.p.decay;
        for (m, &(sum, n)) in self.ema.iter_mut().zip(&per_lang) {
            if n > 0 {
                let k = sum / n as f64;
                *m = if m.is_nan() { k } else { beta * *m + (1.0 - beta) * k };
            }
        }
        Ok(LossOutput { value: value as f32, grad_logits: grad, grad_hidden: None })
    }

    fn language_values(&self) -> Vec<(String, Vec<f32>)> {
        vec![
            ("ema".into(), self.ema.iter().map(|&m| m as f32).collect()),
            ("weight".into(), self.weights().iter().map(|&w| w as f32).collect()),
        ]
    }

    fn save_state(&self) -> Result<Vec<u8>> {
        Ok(self.ema.iter().flat_map(|m| m.to_le_bytes()).collect())
    }

    fn load_state(&mut self, state: &[u8]) -> Result<()> {
        ensure!(state.len().is_multiple_of(8), "a state of {} bytes is not a list of f64", state.len());
        self.ema =
            state.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default())).collect();
        Ok(())
    }
}

kdx_sdk::export_loss!(EmaGate);

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_sdk::testing::{gradient_check, SampleBatch};

    fn loss() -> EmaGate {
        EmaGate::create(&Params::empty()).unwrap()
    }

    #[test]
    fn gradients_match_finite_differences_once_the_weights_differ() {
        let s = SampleBatch::random(6, 4, 2, 3.0, 5);
        let mut l = loss();
        l.compute(&s.input(0, 10)).unwrap();
        assert!(l.weights().iter().any(|&w| (w - 1.0).abs() > 1e-3), "{:?}", l.weights());
        // A gradient check calls compute many times, each moving the average: check a copy
        // frozen at a decay of (almost) 1.
        let mut frozen = EmaGate { p: EmaGateParams { decay: 0.999_999_999, ..l.p.clone() }, ..l.clone() };
        let check = gradient_check(&mut frozen, &s.input(1, 10), 1e-2).unwrap();
        assert!(check.max_error < 1e-2, "{check}");
    }

    #[test]
    fn the_state_round_trips_and_makes_the_next_step_equal() {
        let s = SampleBatch::random(6, 4, 2, 3.0, 5);
        let mut a = loss();
        a.compute(&s.input(0, 10)).unwrap();
        let mut b = loss();
        b.load_state(&a.save_state().unwrap()).unwrap();
        assert_eq!(a.compute(&s.input(1, 10)).unwrap(), b.compute(&s.input(1, 10)).unwrap());
        assert!(loss().load_state(&[1, 2, 3]).is_err());
    }
}
