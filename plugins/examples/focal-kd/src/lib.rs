//! `focal-kd`: soft-label distillation that concentrates on the examples the student still
//! gets wrong — a kdx loss plugin built as a dynamic library.
//!
//! For example `i` with student logits `zᵢ`, teacher logits `tᵢ` and weight `wᵢ`:
//!
//! ```text
//! L  = scale · (1/B) Σᵢ wᵢ · cᵢ · KL(softmax(tᵢ/T) ‖ softmax(zᵢ/T))
//! cᵢ = (1 − πᵢ[aᵢ])^γ,   πᵢ = softmax(zᵢ),   aᵢ = argmax tᵢ
//! ```
//!
//! `scale` is T² (Hinton's convention; `scale_t2 = false` drops it). `cᵢ` is the focal factor
//! of Lin et al. (2017) applied to distillation: `πᵢ[aᵢ]` is the student's probability (at
//! temperature 1) of the teacher's answer, so examples the student already agrees with
//! confidently count little. With `γ = 0` the loss is exactly `soft-kl`.
//!
//! **Gradient.** By default the gradient is exact: it includes the focal factor's own
//! dependence on the student logits,
//! `∂cᵢ/∂zᵢⱼ = −γ (1 − πᵢ[aᵢ])^(γ−1) · πᵢ[aᵢ] · (δ(j = aᵢ) − πᵢⱼ)`.
//! With `detach_weight = true` the factor is treated as a constant per-example weight (its
//! gradient is dropped, as in most focal-KD implementations); the reported value is the same.
//!
//! Build and use (from the kdx repository root):
//!
//! ```text
//! cargo build --release --manifest-path plugins/examples/focal-kd/Cargo.toml --target-dir target/plugin-examples
//! kdx run plugins/examples/focal-kd/recipe.toml --plugin target/plugin-examples/release/libfocal_kd.so
//! ```

use kdx_sdk::math::{argmax, kl, log_softmax, softmax};
use kdx_sdk::{ensure, Loss, LossInput, LossOutput, Params, Result};
use serde::Deserialize;

/// The parameters of a `[[loss]] plugin = "focal-kd"` table (all optional). Published as a
/// JSON Schema (`params_schema` below): `kdx plugins --plugin LIB` shows these doc comments,
/// and a misspelt key is reported at its line.
#[derive(Clone, Debug, Deserialize, kdx_sdk::schemars::JsonSchema)]
#[schemars(crate = "kdx_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct FocalKdParams {
    /// Temperature T > 0 of the KL term. Default 2.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Focusing exponent γ ≥ 0; 0 gives plain soft-label KD. Default 2.
    #[serde(default = "default_gamma")]
    pub gamma: f32,
    /// Treat the focal factor as a constant weight (drop its gradient). Default false.
    #[serde(default)]
    pub detach_weight: bool,
    /// Multiply by T². Default true.
    #[serde(default = "yes")]
    pub scale_t2: bool,
}

fn default_temperature() -> f32 {
    2.0
}
fn default_gamma() -> f32 {
    2.0
}
fn yes() -> bool {
    true
}

/// The loss: its checked parameters.
#[derive(Clone, Debug)]
pub struct FocalKd {
    p: FocalKdParams,
}

impl Loss for FocalKd {
    const NAME: &'static str = "focal-kd";
    const SUMMARY: &'static str = "soft-label KD weighted per example by (1 − p_student(teacher argmax))^γ";

    fn params_schema() -> Option<String> {
        Some(kdx_sdk::schema_for::<FocalKdParams>())
    }

    fn create(params: &Params) -> Result<Self> {
        let p: FocalKdParams = params.parse()?;
        ensure!(
            p.temperature > 0.0 && p.temperature.is_finite(),
            "temperature must be a positive number, found {}",
            p.temperature
        );
        ensure!(p.gamma >= 0.0 && p.gamma.is_finite(), "gamma must be a number >= 0, found {}", p.gamma);
        Ok(FocalKd { p })
    }

    fn needs_teacher(&self) -> bool {
        true
    }

    fn compute(&mut self, x: &LossInput) -> Result<LossOutput> {
        let teacher = x.teacher_logits()?;
        let (b, c) = (x.batch, x.classes);
        let t = self.p.temperature as f64;
        let gamma = self.p.gamma as f64;
        let scale = if self.p.scale_t2 { t * t } else { 1.0 };
        let mut value = 0f64;
        let mut grad = vec![0f32; b * c];
        for i in 0..b {
            let (z, tz) = (&x.student_logits[i * c..(i + 1) * c], &teacher[i * c..(i + 1) * c]);
            let (lq, lp) = (log_softmax(z, t), log_softmax(tz, t));
            let (q, p): (Vec<f64>, Vec<f64>) =
                (lq.iter().map(|v| v.exp()).collect(), lp.iter().map(|v| v.exp()).collect());
            let k = kl(&p, &lp, &lq);
            // The focal factor from the student's confidence (T = 1) in the teacher's answer.
            let a = argmax(tz);
            let pi = softmax(z, 1.0);
            let rest: f64 = (0..c).filter(|&j| j != a).map(|j| pi[j]).sum(); // 1 − π[a], accurately
            let factor = if gamma == 0.0 { 1.0 } else { rest.powf(gamma) };
            let s = scale * x.weights[i] as f64 / b as f64;
            value += s * factor * k;
            let g = &mut grad[i * c..(i + 1) * c];
            for j in 0..c {
                g[j] = (s * factor * (q[j] - p[j]) / t) as f32;
            }
            if !self.p.detach_weight && gamma != 0.0 && rest > 0.0 {
                // ∂c/∂z_j = −γ rest^(γ−1) π[a] (δ(j=a) − π[j])
                let d = -gamma * rest.powf(gamma - 1.0) * pi[a];
                for j in 0..c {
                    let delta = if j == a { 1.0 } else { 0.0 };
                    g[j] += (s * k * d * (delta - pi[j])) as f32;
                }
            }
        }
        Ok(LossOutput { value: value as f32, grad_logits: grad, grad_hidden: None })
    }
}

kdx_sdk::export_loss!(FocalKd);

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_sdk::testing::{gradient_check, SampleBatch};

    fn loss(json: &str) -> FocalKd {
        FocalKd::create(&Params::from_json(json)).unwrap()
    }

    #[test]
    fn the_exact_gradient_matches_finite_differences() {
        for (json, scale) in [
            (r#"{"gamma": 2.0, "temperature": 2.0}"#, 3.0),
            (r#"{"gamma": 0.5, "temperature": 1.0}"#, 4.0),
            (r#"{"gamma": 1.0, "temperature": 4.0, "scale_t2": false}"#, 2.0),
            (r#"{"gamma": 0.0}"#, 3.0),
        ] {
            let s = SampleBatch::random(6, 5, 2, scale, 11);
            let check = gradient_check(&mut loss(json), &s.input(3, 10), 1e-2).unwrap();
            assert!(check.max_error < 5e-3, "{json}: {check}");
        }
    }

    #[test]
    fn a_detached_weight_keeps_the_value_and_drops_the_factors_gradient() {
        let s = SampleBatch::random(4, 3, 1, 2.0, 3);
        let exact = loss(r#"{"gamma": 2.0}"#).compute(&s.input(0, 1)).unwrap();
        let detached = loss(r#"{"gamma": 2.0, "detach_weight": true}"#).compute(&s.input(0, 1)).unwrap();
        assert_eq!(exact.value, detached.value);
        assert_ne!(exact.grad_logits, detached.grad_logits);
    }

    #[test]
    fn confident_agreement_counts_less() {
        let mut s = SampleBatch::random(2, 3, 1, 1.0, 5);
        s.teacher_logits = vec![3.0, 0.0, 0.0, 3.0, 0.0, 0.0];
        // Example 0: the student agrees confidently; example 1: it prefers another class.
        s.student_logits = vec![4.0, 0.0, 0.5, 0.0, 2.0, 0.0];
        s.weights = vec![1.0, 1.0];
        let plain = loss(r#"{"gamma": 0.0}"#).compute(&s.input(0, 1)).unwrap();
        let focal = loss(r#"{"gamma": 2.0}"#).compute(&s.input(0, 1)).unwrap();
        let ratio = |i: usize| focal.grad_logits[i * 3].abs() / plain.grad_logits[i * 3].abs();
        assert!(ratio(0) < 0.01 && ratio(1) > 0.3, "{} {}", ratio(0), ratio(1));
    }

    #[test]
    fn bad_parameters_are_refused_with_their_name() {
        let e = FocalKd::create(&Params::from_json(r#"{"temperature": -1}"#)).unwrap_err();
        assert!(e.message().contains("temperature must be a positive number"), "{e}");
        let e = FocalKd::create(&Params::from_json(r#"{"gama": 1}"#)).unwrap_err();
        assert!(e.message().contains("unknown field `gama`"), "{e}");
    }
}
