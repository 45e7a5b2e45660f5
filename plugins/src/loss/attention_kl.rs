//! `attention-kl`: MiniLM's attention-distribution transfer between transformer layers.

use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::loss::{Loss, LossInput, LossOutput, Needs};
use kdx_framework::model::{LayerGrads, LayerShape, LayerStates};
use kdx_framework::registry::BuildCtx;
use schemars::JsonSchema;
use serde::Deserialize;

/// Self-attention distribution transfer (MiniLM, Wang et al. 2020):
/// L = Σ_(i,j)∈layers (1/(A·N)) Σ_b w_b Σ_a Σ_{q<n_b} Σ_{k<n_b} Aᵗ_j[b,a,q,k] · (ln Aᵗ_j[b,a,q,k] − ln Aˢ_i[b,a,q,k]),
/// the KL divergence from the teacher's attention distribution of layer j to the student's of
/// layer i, for every head a of A, every real query token q of sequence b (n_b real tokens,
/// N = Σ_b n_b) with example weight w_b. Head by head over the same tokens: the student and
/// the teacher must have the same number of heads and tokenise alike (both checked at plan
/// time). The gradient reaches the student through its attention probabilities.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttentionKlParams {
    /// Pairs `[student_layer, teacher_layer]` (0-based encoder layers). Default: the last
    /// layer of each, as MiniLM.
    #[serde(default)]
    pub layers: Option<Vec<[usize; 2]>>,
}

/// The loss.
pub struct AttentionKl {
    layers: Option<Vec<[usize; 2]>>,
}

fn build(p: AttentionKlParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
    if p.layers.as_ref().is_some_and(Vec::is_empty) {
        return Err(ctx.error("layers", "name at least one [student_layer, teacher_layer] pair"));
    }
    Ok(Box::new(AttentionKl { layers: p.layers }))
}

kdx_framework::register_loss!(
    "attention-kl",
    "MiniLM attention-distribution KL between transformer layers (same heads and tokens)",
    AttentionKlParams,
    build
);

impl AttentionKl {
    fn pairs(&self, student_layers: usize, teacher_layers: usize) -> Vec<[usize; 2]> {
        self.layers
            .clone()
            .unwrap_or_else(|| vec![[student_layers.saturating_sub(1), teacher_layers.saturating_sub(1)]])
    }
}

impl Loss for AttentionKl {
    fn needs(&self) -> Needs {
        Needs { layers: true, ..Needs::TEACHER }
    }
    fn check_layers(&self, s: &LayerShape, t: &LayerShape) -> anyhow::Result<()> {
        kdx_framework::model::same_tokens(s, t, "compares attention over the same tokens")?;
        if s.heads != t.heads {
            anyhow::bail!(
                "compares head by head: the student has {} heads, the teacher {}",
                s.heads,
                t.heads
            );
        }
        for [i, j] in self.pairs(s.layers, t.layers) {
            if i >= s.layers || j >= t.layers {
                anyhow::bail!(
                    "layers pair [{i}, {j}]: the student has layers 0..{}, the teacher 0..{}",
                    s.layers,
                    t.layers
                );
            }
        }
        Ok(())
    }
    fn compute(&mut self, _: &LossInput) -> anyhow::Result<LossOutput> {
        anyhow::bail!("attention-kl reads per-layer states (compute_layers)")
    }
    fn compute_layers(
        &mut self,
        x: &LossInput,
        s: &LayerStates,
        t: Option<&LayerStates>,
    ) -> anyhow::Result<(LossOutput, LayerGrads)> {
        let t = t.ok_or_else(|| anyhow::anyhow!("attention-kl needs the teacher's layer states"))?;
        anyhow::ensure!(
            s.lens == t.lens,
            "student and teacher token counts differ ({:?} vs {:?}): they must tokenise alike",
            s.lens,
            t.lens
        );
        anyhow::ensure!(s.heads == t.heads, "the student has {} heads, the teacher {}", s.heads, t.heads);
        let (a, seq) = (s.heads, s.seq);
        let norm = (a * s.tokens().max(1)) as f64;
        let mut value = 0f64;
        let mut grads = LayerGrads::default();
        for [i, j] in self.pairs(s.attention.len(), t.attention.len()) {
            let (sa, ta) = (&s.attention[i], &t.attention[j]);
            let mut g = vec![0.0f32; sa.len()];
            for (row_i, (srow, trow)) in sa.chunks_exact(seq).zip(ta.chunks_exact(seq)).enumerate() {
                let (b, q) = (row_i / (a * seq), row_i % seq);
                let n = s.lens[b];
                if q >= n {
                    continue;
                }
                let w = x.weights[b] as f64 / norm;
                for k in 0..n {
                    let (pt, ps) = (trow[k] as f64, (srow[k] as f64).max(1e-30));
                    if pt > 0.0 {
                        value += w * pt * (pt.ln() - ps.ln());
                        g[row_i * seq + k] = (-w * pt / ps) as f32;
                    }
                }
            }
            grads.add_attention(i, g);
        }
        let out = LossOutput {
            value: value as f32,
            grad_logits: vec![0.0; x.student_logits.len()],
            grad_hidden: None,
        };
        Ok((out, grads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::testing::{layer_gradient_check, sample_layers, SampleBatch};

    #[test]
    fn gradients_match_finite_differences() {
        let sb = SampleBatch::random(3, 2, 4, 1.0, 1);
        let s = sample_layers(&[4, 2, 3], 2, 6, 2, 7);
        let t = sample_layers(&[4, 2, 3], 3, 8, 2, 8);
        let mut l = AttentionKl { layers: Some(vec![[0, 2], [1, 1]]) };
        let err = layer_gradient_check(&mut l, &sb.input(0, 1), &s, Some(&t), 1e-3).unwrap();
        assert!(err < 1e-2, "relative error {err}");
    }

    #[test]
    fn zero_for_equal_distributions_and_kl_otherwise() {
        let sb = SampleBatch::random(1, 2, 4, 1.0, 1);
        let x = LossInput { weights: &[1.0], ..sb.input(0, 1) };
        let s = sample_layers(&[3], 1, 4, 1, 2);
        let mut l = AttentionKl { layers: None };
        assert!(l.compute_layers(&x, &s, Some(&s)).unwrap().0.value.abs() < 1e-7);
        let mut t = s.clone();
        t.attention[0] = vec![1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.2, 0.3, 0.5];
        let mut u = s.clone();
        u.attention[0] = vec![0.5, 0.5, 0.0, 0.5, 0.5, 0.0, 0.2, 0.3, 0.5];
        // Query 0: KL((1,0,0) ‖ (½,½,0)) = ln 2; the others match: ln 2 over 3 tokens.
        let v = l.compute_layers(&x, &u, Some(&t)).unwrap().0.value;
        assert!((v - std::f32::consts::LN_2 / 3.0).abs() < 1e-6, "{v}");
    }

    #[test]
    fn unequal_heads_or_tokenisations_are_refused_before_training() {
        let shape = |heads: usize, tok: &str| LayerShape {
            layers: 2,
            width: 8,
            heads,
            max_len: 32,
            tokenizer: tok.into(),
        };
        let l = AttentionKl { layers: None };
        assert!(l
            .check_layers(&shape(2, "bytes"), &shape(4, "bytes"))
            .unwrap_err()
            .to_string()
            .contains("2 heads, the teacher 4"));
        assert!(l
            .check_layers(&shape(2, "bytes"), &shape(2, "bpe"))
            .unwrap_err()
            .to_string()
            .contains("tokenise alike"));
        assert!(l.check_layers(&shape(2, "bytes"), &shape(2, "bytes")).is_ok());
        let long = LayerShape { max_len: 64, ..shape(2, "bytes") };
        assert!(l
            .check_layers(&long, &shape(2, "bytes"))
            .unwrap_err()
            .to_string()
            .contains("max_len is 64, the teacher's 32"));
    }
}
