//! `info-nce`: a contrastive loss between the student's and the teacher's sentence vectors,
//! with the batch's other examples as negatives.

use kdx_framework::dylib::kdx_sdk::math::log_sum_exp;
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, ProjectedHiddenLoss, ProjectionInit};
use kdx_framework::registry::BuildCtx;
use schemars::JsonSchema;
use serde::Deserialize;

/// InfoNCE with in-batch negatives (van den Oord et al. 2018; as multilingual sentence
/// encoders are aligned, e.g. LaBSE, mSimCSE):
/// L = (1/B) Σᵢ wᵢ · −log softmax_j(sᵢ·tⱼ / τ)ᵢ, sᵢ = (W hₛ,ᵢ + b)/‖W hₛ,ᵢ + b‖, tⱼ = hₜ,ⱼ/‖hₜ,ⱼ‖,
/// hₛ: student hidden vectors, hₜ: teacher hidden vectors of the same batch, τ the
/// temperature, W and b a projection trained with the student (`proj.w`, `proj.b`; none when
/// the widths match and `projection = "auto"`). Each student vector must pick out its own
/// teacher vector among the batch's: what translation retrieval scores, where a regression
/// onto the teacher (`hidden-mse`) only approaches it. The gradient reaches the student
/// through its hidden representation only; reads the teacher's hidden representation.
///
/// With `alignment` α > 0 the loss adds α · (1/B) Σᵢ wᵢ (1 − sᵢ·tᵢ), a cosine pull of each
/// student vector onto its own teacher vector. InfoNCE alone stops pulling once a pair wins
/// its row's softmax, so the student's vectors rank right but stay far from the teacher's
/// (cosine ≈ 0.5 to all-MiniLM-L6-v2 in `xling/e5-student-passages-more.toml`); the
/// alignment term keeps pulling, for students that must also stand in for the teacher's
/// vectors (an index the teacher built).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InfoNceParams {
    /// Temperature τ > 0 of the similarities. Default 0.05.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// "auto": project only when the widths differ; "always"; "never" (widths must match).
    #[serde(default)]
    pub projection: Projection,
    /// Seed of the projection's initialisation.
    #[serde(default)]
    pub seed: u64,
    /// How the projection starts: "random", or "least-squares" (the best linear map from
    /// the student's hidden vectors to the teacher's on 4096 training examples).
    #[serde(default)]
    pub projection_init: ProjectionInit,
    /// Weight α ≥ 0 of the cosine pull 1 − sᵢ·tᵢ onto each example's own teacher vector,
    /// added to the contrastive loss. Default 0 (InfoNCE alone).
    #[serde(default)]
    pub alignment: f64,
}

fn default_temperature() -> f64 {
    0.05
}

/// When to put a learned linear projection between student and teacher hidden states.
pub use kdx_framework::nn::ProjectionMode as Projection;

/// Floor of a vector's norm before it is normalised.
const EPS: f64 = 1e-12;

fn build(p: InfoNceParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    if !(p.temperature > 0.0 && p.temperature.is_finite()) {
        return Err(ctx.error("temperature", format!("must be a positive number, found {}", p.temperature)));
    }
    if !(p.alignment >= 0.0 && p.alignment.is_finite()) {
        return Err(ctx.error("alignment", format!("must be a number ≥ 0, found {}", p.alignment)));
    }
    let (tau, alpha) = (p.temperature, p.alignment);
    let criterion = Box::new(move |s: &[f64], t: &[f32], w: &[f64], h: usize, ds: &mut [f64]| {
        info_nce(s, t, w, h, tau, alpha, ds)
    });
    Ok(Box::new(
        ProjectedHiddenLoss::over_batch("info-nce", p.projection, p.seed, criterion)
            .with_init(p.projection_init),
    ))
}

kdx_framework::register_loss!(
    "info-nce",
    "contrastive loss: each student vector picks out its own teacher vector among the batch's (temperature τ)",
    InfoNceParams,
    build
);

/// Rows of `m` (`n × h`) scaled to unit length, with their norms.
fn normalise(m: &[f64], h: usize) -> (Vec<f64>, Vec<f64>) {
    let norms: Vec<f64> =
        m.chunks_exact(h).map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt().max(EPS)).collect();
    let unit = m.chunks_exact(h).zip(&norms).flat_map(|(r, n)| r.iter().map(move |v| v / n)).collect();
    (unit, norms)
}

/// The loss of a batch of projected student rows `p` against teacher rows `t`, weights `w`
/// (each / B), width `h`, alignment weight `alpha`; writes ∂L/∂p into `dp`.
fn info_nce(p: &[f64], t: &[f32], w: &[f64], h: usize, tau: f64, alpha: f64, dp: &mut [f64]) -> f64 {
    let b = w.len();
    let (s, ns) = normalise(p, h);
    let (t, _) = normalise(&t.iter().map(|&v| v as f64).collect::<Vec<_>>(), h);
    let mut value = 0f64;
    // ∂L/∂s, accumulated row by row.
    let mut ds = vec![0f64; b * h];
    for i in 0..b {
        let si = &s[i * h..(i + 1) * h];
        let z: Vec<f64> =
            t.chunks_exact(h).map(|tj| si.iter().zip(tj).map(|(a, c)| a * c).sum::<f64>() / tau).collect();
        let lse = log_sum_exp(&z, 1.0);
        // z_ii = sᵢ·tᵢ/τ, so the alignment term α wᵢ (1 − sᵢ·tᵢ) is α wᵢ (1 − τ z_ii).
        value += w[i] * (lse - z[i]) + alpha * w[i] * (1.0 - tau * z[i]);
        // ∂L/∂z_ij = wᵢ (softmax_j − δ_ij) (− α τ wᵢ at j = i); ∂z_ij/∂sᵢ = tⱼ/τ.
        for (j, tj) in t.chunks_exact(h).enumerate() {
            let g = w[i] * ((z[j] - lse).exp() - if i == j { 1.0 + alpha * tau } else { 0.0 }) / tau;
            ds[i * h..(i + 1) * h].iter_mut().zip(tj).for_each(|(d, v)| *d += g * v);
        }
    }
    // Through the normalisation s = p/‖p‖: ∂L/∂p = (∂L/∂s − s (s·∂L/∂s)) / ‖p‖.
    for (((out, si), di), n) in dp.chunks_exact_mut(h).zip(s.chunks_exact(h)).zip(ds.chunks_exact(h)).zip(&ns)
    {
        let dot: f64 = si.iter().zip(di).map(|(a, c)| a * c).sum();
        for ((o, &sv), &dv) in out.iter_mut().zip(si).zip(di) {
            *o = (dv - sv * dot) / n;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::testing::{gradient_check, SampleBatch};

    fn loss(projection: Projection, tau: f64, alpha: f64) -> ProjectedHiddenLoss {
        let c = Box::new(move |s: &[f64], t: &[f32], w: &[f64], h: usize, ds: &mut [f64]| {
            info_nce(s, t, w, h, tau, alpha, ds)
        });
        ProjectedHiddenLoss::over_batch("info-nce", projection, 3, c)
    }

    #[test]
    fn gradients_match_finite_differences() {
        let s = SampleBatch::random(5, 3, 4, 2.0, 6);
        for (projection, tau, alpha) in [
            (Projection::Never, 0.5, 0.0),
            (Projection::Always, 0.2, 0.0),
            (Projection::Never, 0.05, 0.0),
            (Projection::Never, 0.2, 3.0),
            (Projection::Always, 0.05, 10.0),
        ] {
            let mut l = loss(projection, tau, alpha);
            let err = gradient_check(&mut l, &s.input(0, 1), 1e-3).unwrap();
            assert!(err < 2e-2, "{projection:?}, τ = {tau}, α = {alpha}: relative error {err}");
        }
    }

    #[test]
    fn matching_vectors_cost_little_and_swapped_ones_much() {
        // Teacher rows e₀, e₁, e₂; a student equal to them is right, one with rows 0 and 1
        // swapped is wrong twice.
        let t: Vec<f32> = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let right: Vec<f64> = t.iter().map(|&v| v as f64).collect();
        let swapped: Vec<f64> = vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let w = [1.0 / 3.0; 3];
        let mut dp = vec![0.0; 9];
        let good = info_nce(&right, &t, &w, 3, 0.1, 0.0, &mut dp);
        let bad = info_nce(&swapped, &t, &w, 3, 0.1, 0.0, &mut dp);
        // Right: −log(e^10 / (e^10 + 2)) ≈ 9.1e-5 per example.
        assert!((good - (1.0 + 2.0 * (-10f64).exp()).ln()).abs() < 1e-12, "{good}");
        assert!(bad > 6.0, "{bad}");
        // Scaling a student row changes nothing: only directions count.
        let scaled: Vec<f64> = right.iter().map(|v| v * 7.0).collect();
        assert!((info_nce(&scaled, &t, &w, 3, 0.1, 0.0, &mut dp) - good).abs() < 1e-12);
    }

    #[test]
    fn alignment_adds_the_mean_cosine_gap_and_pulls_a_winning_pair_closer() {
        // Teacher rows e₀, e₁; unit student rows at cosine 0.8 to their own teacher row and
        // 0.6 to the other's: each pair already wins its row.
        let t: Vec<f32> = vec![1.0, 0.0, 0.0, 1.0];
        let p: Vec<f64> = vec![0.8, 0.6, 0.6, 0.8];
        let w = [0.5; 2];
        let (mut d0, mut d1) = (vec![0.0; 4], vec![0.0; 4]);
        let plain = info_nce(&p, &t, &w, 2, 0.05, 0.0, &mut d0);
        let aligned = info_nce(&p, &t, &w, 2, 0.05, 2.0, &mut d1);
        // α × the mean of 1 − cosine: 2 × 0.2.
        assert!((aligned - plain - 0.4).abs() < 1e-12, "{aligned} − {plain} ≠ 0.4");
        // The step −∂L/∂p turns row 0 towards e₀ (its second component shrinks), and more
        // with the alignment term than without.
        assert!(d1[1] > d0[1] && d1[1] > 0.0, "{d0:?} {d1:?}");
    }

    #[test]
    fn a_temperature_that_is_not_positive_or_a_negative_alignment_is_refused_at_its_key() {
        use kdx_framework::registry::{build_standalone, PluginKind};
        // The error of a recipe whose only key is `key = value`.
        let refused = |key: &str, value: f64| {
            let p = toml::Table::from_iter([(key.to_string(), toml::Value::Float(value))]);
            build_standalone(PluginKind::Loss, "info-nce", p, "recipe.toml")
                .err()
                .expect("refused")
                .to_string()
        };
        let e = refused("temperature", 0.0);
        assert!(e.contains("temperature") && e.contains("must be a positive number"), "{e}");
        let e = refused("alignment", -1.0);
        assert!(e.contains("alignment") && e.contains("≥ 0"), "{e}");
    }
}
