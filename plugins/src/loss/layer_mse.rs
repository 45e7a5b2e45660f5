//! `layer-mse`: TinyBERT's hidden-state loss between mapped transformer layers.

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, LossInput, LossOutput, Needs, Shapes};
use kdx_framework::model::{LayerGrads, LayerShape, LayerStates, Param};
use kdx_framework::nn::kernels::{matmul, Mat};

use kdx_framework::nn::{Linear, ProjectionMode};
use kdx_framework::registry::BuildCtx;
use rand::SeedableRng;
use schemars::JsonSchema;
use serde::Deserialize;

/// Hidden-state distillation over a layer map (TinyBERT, Jiao et al. 2020):
/// L = Σ_(i,j)∈map (1/N) Σ_b w_b Σ_{t<n_b} (1/Hₜ) ‖W h^s_i[b,t] + c − h^t_j[b,t]‖²,
/// h^s_i: the student's hidden state i (0 = embeddings, 1..=Lₛ = layer outputs) at token t
/// of sequence b, h^t_j the teacher's, n_b the sequence's real tokens, N = Σ_b n_b, w_b the
/// example weight. W (Hₛ × Hₜ, `proj.w`) and c (`proj.b`) are one learned projection shared
/// by all pairs, used when the widths differ (`projection`). Token-level: the student and
/// the teacher must tokenise alike (checked at plan time). The gradient reaches the student
/// through its hidden states only.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerMseParams {
    /// Pairs `[student_state, teacher_state]`. Default: the uniform map of TinyBERT,
    /// student state k ← teacher state k·Lₜ/Lₛ for k = 0..=Lₛ.
    #[serde(default)]
    pub map: Option<Vec<[usize; 2]>>,
    /// "auto": project only when the widths differ; "always"; "never".
    #[serde(default)]
    pub projection: ProjectionMode,
    /// Seed of the projection's initialisation.
    #[serde(default)]
    pub seed: u64,
}

/// The loss.
pub struct LayerMse {
    map: Option<Vec<[usize; 2]>>,
    mode: ProjectionMode,
    seed: u64,
    proj: Option<Linear>,
}

fn build(p: LayerMseParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    if p.map.as_ref().is_some_and(Vec::is_empty) {
        // An empty map compares nothing: the term would be zero and train nothing.
        return Err(ctx.error("map", "an empty map compares no layer; give pairs [student_state, teacher_state], or leave it out for TinyBERT's uniform map"));
    }
    Ok(Box::new(LayerMse { map: p.map, mode: p.projection, seed: p.seed, proj: None }))
}

kdx_framework::register_loss!(
    "layer-mse",
    "TinyBERT hidden-state MSE between mapped transformer layers (learned projection)",
    LayerMseParams,
    build
);

impl LayerMse {
    /// Creates the projection `hs → ht` on first need, from the loss's seed.
    fn ensure_projection(&mut self, hs: usize, ht: usize) {
        let project = match self.mode {
            ProjectionMode::Auto => hs != ht,
            ProjectionMode::Always => true,
            ProjectionMode::Never => false,
        };
        if project && hs > 0 && ht > 0 && self.proj.is_none() {
            self.proj = Some(Linear::new("proj", hs, ht, &mut rand::rngs::StdRng::seed_from_u64(self.seed)));
        }
    }

    fn pairs(&self, student_layers: usize, teacher_layers: usize) -> Vec<[usize; 2]> {
        self.map.clone().unwrap_or_else(|| {
            (0..=student_layers).map(|k| [k, k * teacher_layers / student_layers.max(1)]).collect()
        })
    }
}

impl Loss for LayerMse {
    fn needs(&self) -> Needs {
        Needs { layers: true, ..Needs::TEACHER }
    }
    fn check_layers(&self, s: &LayerShape, t: &LayerShape) -> anyhow::Result<()> {
        kdx_framework::model::same_tokens(s, t, "compares token by token")?;
        if self.mode == ProjectionMode::Never && s.width != t.width {
            anyhow::bail!(
                "projection = \"never\" needs equal widths, student {} ≠ teacher {}",
                s.width,
                t.width
            );
        }
        for [i, j] in self.pairs(s.layers, t.layers) {
            if i > s.layers || j > t.layers {
                anyhow::bail!(
                    "map pair [{i}, {j}]: the student has hidden states 0..={}, the teacher 0..={}",
                    s.layers,
                    t.layers
                );
            }
        }
        Ok(())
    }
    fn prepare(&mut self, shapes: &Shapes) -> anyhow::Result<()> {
        let (hs, ht) = (shapes.student_hidden_dim.unwrap_or(0), shapes.teacher_hidden_dim.unwrap_or(0));
        self.ensure_projection(hs, ht);
        Ok(())
    }
    fn compute(&mut self, _: &LossInput) -> anyhow::Result<LossOutput> {
        anyhow::bail!("layer-mse reads per-layer states (compute_layers)")
    }
    fn compute_layers(
        &mut self,
        x: &LossInput,
        s: &LayerStates,
        t: Option<&LayerStates>,
    ) -> anyhow::Result<(LossOutput, LayerGrads)> {
        let t = t.ok_or_else(|| anyhow::anyhow!("layer-mse needs the teacher's layer states"))?;
        anyhow::ensure!(
            s.lens == t.lens,
            "student and teacher token counts differ ({:?} vs {:?}): they must tokenise alike",
            s.lens,
            t.lens
        );
        let (hs, ht) = (s.width, t.width);
        self.ensure_projection(hs, ht);
        if let Some(p) = &mut self.proj {
            anyhow::ensure!(
                p.w.shape == [hs, ht],
                "the projection is {:?}, the widths are {hs} → {ht}",
                p.w.shape
            );
            p.w.grad_buffer().fill(0.0);
            p.b.grad_buffer().fill(0.0);
        }
        anyhow::ensure!(
            self.proj.is_some() || hs == ht,
            "widths differ (student {hs}, teacher {ht}) and there is no projection"
        );
        let (b, seq) = (s.lens.len(), s.seq);
        let rows = b * seq;
        let n = s.tokens().max(1) as f64;
        let mut value = 0f64;
        let mut grads = LayerGrads::default();
        for [i, j] in self.pairs(s.hidden.len() - 1, t.hidden.len() - 1) {
            let (hsi, htj) = (&s.hidden[i], &t.hidden[j]);
            let p: Vec<f32> = match &self.proj {
                Some(l) => {
                    let mut out = vec![0.0f32; rows * ht];
                    matmul(&mut out, ht, Mat::new(hsi, rows, hs), Mat::new(&l.w.data, hs, ht), false, 1);
                    out.chunks_exact_mut(ht)
                        .for_each(|r| r.iter_mut().zip(&l.b.data).for_each(|(v, c)| *v += c));
                    out
                }
                None => hsi.clone(),
            };
            let mut dp = vec![0.0f32; rows * ht];
            for r in 0..rows {
                let (bi, tok) = (r / seq, r % seq);
                if !s.is_real(bi, tok) {
                    continue;
                }
                let w = x.weights[bi] as f64;
                for k in 0..ht {
                    let d = (p[r * ht + k] - htj[r * ht + k]) as f64;
                    value += w * d * d / (n * ht as f64);
                    dp[r * ht + k] = (2.0 * w * d / (n * ht as f64)) as f32;
                }
            }
            let dh = match &mut self.proj {
                Some(l) => {
                    matmul(
                        l.w.grad_buffer(),
                        ht,
                        Mat::new(hsi, rows, hs).t(),
                        Mat::new(&dp, rows, ht),
                        true,
                        1,
                    );
                    let db = l.b.grad_buffer();
                    dp.chunks_exact(ht).for_each(|r| db.iter_mut().zip(r).for_each(|(a, v)| *a += v));
                    let mut dh = vec![0.0f32; rows * hs];
                    matmul(&mut dh, hs, Mat::new(&dp, rows, ht), Mat::new(&l.w.data, hs, ht).t(), false, 1);
                    dh
                }
                None => dp,
            };
            grads.add_hidden(i, dh);
        }
        let out = LossOutput {
            value: value as f32,
            grad_logits: vec![0.0; x.student_logits.len()],
            grad_hidden: None,
        };
        Ok((out, grads))
    }
    fn params(&self) -> Vec<&Param> {
        self.proj.iter().flat_map(|l| [&l.w, &l.b]).collect()
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.proj.iter_mut().flat_map(|l| [&mut l.w, &mut l.b]).collect()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_empty_map_is_refused_at_its_key() {
        use kdx_framework::registry::{build_standalone, PluginKind};
        let mut p = toml::Table::new();
        p.insert("map".into(), toml::Value::Array(Vec::new()));
        let e = build_standalone(PluginKind::Loss, "layer-mse", p, "recipe.toml")
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("map") && e.contains("empty map compares no layer"), "{e}");
    }

    use super::*;
    use kdx_framework::testing::{layer_gradient_check, sample_layers, SampleBatch};

    fn loss(map: Option<Vec<[usize; 2]>>, mode: ProjectionMode) -> LayerMse {
        LayerMse { map, mode, seed: 4, proj: None }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let sb = SampleBatch::random(3, 2, 4, 1.0, 1);
        let x = sb.input(0, 1);
        let s = sample_layers(&[4, 2, 3], 2, 6, 2, 7);
        for (t, mode) in [
            (sample_layers(&[4, 2, 3], 4, 6, 2, 8), ProjectionMode::Never),
            (sample_layers(&[4, 2, 3], 4, 5, 2, 9), ProjectionMode::Auto),
        ] {
            let mut l = loss(None, mode);
            let err = layer_gradient_check(&mut l, &x, &s, Some(&t), 1e-2).unwrap();
            assert!(err < 1e-2, "{mode:?}: relative error {err}");
        }
    }

    #[test]
    fn value_matches_hand_computation_and_the_default_map_is_uniform() {
        let sb = SampleBatch::random(1, 2, 4, 1.0, 1);
        let x = LossInput { weights: &[1.0], ..sb.input(0, 1) };
        let mut s = sample_layers(&[2], 1, 2, 1, 3);
        let mut t = sample_layers(&[2], 2, 2, 1, 4);
        // Student state k ← teacher state 2k: pairs [0,0] and [1,2].
        s.hidden = vec![vec![1.0, 0.0, 0.0, 0.0], vec![0.0, 0.0, 2.0, 2.0]];
        t.hidden = vec![vec![0.0; 4], vec![9.0; 4], vec![0.0, 0.0, 0.0, 2.0]];
        let (o, _) = loss(None, ProjectionMode::Never).compute_layers(&x, &s, Some(&t)).unwrap();
        // Pair 0: (1² ) / (2 tokens · 2 wide) = 0.25; pair 1: 2² / 4 = 1.
        assert!((o.value - 1.25).abs() < 1e-6, "{}", o.value);
        let l = loss(None, ProjectionMode::Auto);
        assert_eq!(l.pairs(3, 6), vec![[0, 0], [1, 2], [2, 4], [3, 6]]);
    }

    #[test]
    fn different_tokenisations_are_refused_before_training() {
        let shape =
            |tok: &str| LayerShape { layers: 2, width: 8, heads: 2, max_len: 32, tokenizer: tok.into() };
        let e = loss(None, ProjectionMode::Auto)
            .check_layers(&shape("bytes"), &shape("tokenizer.json:ab"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tokenise alike") && e.contains("bytes") && e.contains("tokenizer.json:ab"),
            "{e}"
        );
        let e = loss(Some(vec![[1, 5]]), ProjectionMode::Auto)
            .check_layers(&shape("bytes"), &shape("bytes"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[1, 5]"), "{e}");
        // Equal tokenizers that truncate at different lengths cut long texts differently.
        let short = LayerShape { max_len: 16, ..shape("bytes") };
        let e =
            loss(None, ProjectionMode::Auto).check_layers(&short, &shape("bytes")).unwrap_err().to_string();
        assert!(e.contains("max_len is 16, the teacher's 32"), "{e}");
    }
}
