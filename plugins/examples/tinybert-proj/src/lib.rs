//! `tinybert-proj`: TinyBERT's hidden-state distillation between mapped transformer layers
//! through a learned projection — a kdx loss plugin of ABI 2, which reads per-layer states
//! and owns a trainable parameter.
//!
//! For student hidden state `i` and teacher hidden state `j` of every mapped pair:
//!
//! ```text
//! L = Σ_(i,j) (1/N) Σ_b w_b Σ_{t < n_b} (1/Hₜ) ‖W h^s_i[b,t] + c − h^t_j[b,t]‖²
//! ```
//!
//! over the real tokens `t` of each sequence `b` (`N` of them in the batch), with example
//! weights `w_b`. `W` (`Hₛ × Hₜ`) and `c` are one projection, `proj`, shared by all pairs:
//! declared to kdx, which initialises it from `seed` as its built-in layers, trains it with
//! the student and exports it as the student's map into the teacher's space (`kdx embed`
//! then gives teacher-width vectors). It is what the built-in `layer-mse` computes, written
//! against the SDK alone: with the same map, projection and seed the two train alike.
//!
//! Build and use (from the kdx repository root):
//!
//! ```text
//! cargo build --release --manifest-path plugins/examples/tinybert-proj/Cargo.toml --target-dir target/plugin-examples
//! kdx run RECIPE --plugin target/plugin-examples/release/libtinybert_proj.so
//! ```

use kdx_sdk::{
    ensure, ensure_param, Error, Extra, ExtraGrads, Loss, LossInput, LossOutput, ParamDecl, Params, Result,
    Shapes,
};
use serde::{Deserialize, Serialize};

/// When to project the student's states.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, kdx_sdk::schemars::JsonSchema,
)]
#[schemars(crate = "kdx_sdk::schemars")]
#[serde(rename_all = "kebab-case")]
pub enum Projection {
    /// Only when the widths differ.
    #[default]
    Auto,
    /// Always (a learned map even between equal widths).
    Always,
    /// Never: the widths must be equal.
    Never,
}

/// The parameters of a `[[loss]] plugin = "tinybert-proj"` table (all optional).
#[derive(Clone, Debug, Deserialize, Serialize, kdx_sdk::schemars::JsonSchema)]
#[schemars(crate = "kdx_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct TinyBertParams {
    /// Pairs `[student_state, teacher_state]` (0: the embeddings' output, k: layer k's).
    /// Default: TinyBERT's uniform map, student state k ← teacher state k·Lₜ/Lₛ.
    #[serde(default)]
    pub map: Option<Vec<[usize; 2]>>,
    /// "auto": project only when the widths differ; "always"; "never".
    #[serde(default)]
    pub projection: Projection,
    /// Seed of the projection's initialisation.
    #[serde(default)]
    pub seed: u64,
}

/// The loss.
#[derive(Clone, Debug)]
pub struct TinyBertProj {
    p: TinyBertParams,
    /// Whether `proj` was declared (the widths at the stage's start said so).
    projected: bool,
}

impl TinyBertProj {
    fn pairs(&self, student_states: usize, teacher_states: usize) -> Vec<[usize; 2]> {
        let (ls, lt) = (student_states.saturating_sub(1), teacher_states.saturating_sub(1));
        self.p.map.clone().unwrap_or_else(|| (0..=ls).map(|k| [k, k * lt / ls.max(1)]).collect())
    }

    fn wants_projection(&self, hs: usize, ht: usize) -> bool {
        match self.p.projection {
            Projection::Auto => hs != ht,
            Projection::Always => true,
            Projection::Never => false,
        }
    }
}

impl Loss for TinyBertProj {
    const NAME: &'static str = "tinybert-proj";
    const SUMMARY: &'static str =
        "TinyBERT hidden-state MSE between mapped layers, through a learned projection";

    fn params_schema() -> Option<String> {
        Some(kdx_sdk::schema_for::<TinyBertParams>())
    }

    fn create(params: &Params) -> Result<Self> {
        let p: TinyBertParams = params.parse()?;
        ensure_param!(
            p.map.as_ref().is_none_or(|m| !m.is_empty()),
            "map",
            "an empty map compares no layer; give pairs [student_state, teacher_state], or leave it out"
        );
        Ok(TinyBertProj { p, projected: false })
    }

    fn needs_teacher(&self) -> bool {
        true
    }

    fn needs_labels(&self) -> bool {
        false
    }

    fn needs_layers(&self) -> bool {
        true
    }

    fn check(&self, shapes: &Shapes) -> Result<()> {
        let (Some(s), Some(t)) = (&shapes.student_layers, &shapes.teacher_layers) else {
            return Err(Error::msg(
                "reads per-layer states: the student and the teacher must be transformers",
            ));
        };
        ensure!(
            s.tokenizer == t.tokenizer && s.max_len == t.max_len,
            "compares token by token, so student and teacher must tokenise alike (student: {}, max_len {}; teacher: {}, max_len {})",
            s.tokenizer,
            s.max_len,
            t.tokenizer,
            t.max_len
        );
        ensure_param!(
            self.p.projection != Projection::Never || s.width == t.width,
            "projection",
            "\"never\" needs equal widths, and the student's is {}, the teacher's {}",
            s.width,
            t.width
        );
        for [i, j] in self.pairs(s.layers + 1, t.layers + 1) {
            ensure_param!(
                i <= s.layers && j <= t.layers,
                "map",
                "pair [{i}, {j}]: the student has hidden states 0..={}, the teacher 0..={}",
                s.layers,
                t.layers
            );
        }
        Ok(())
    }

    fn parameters(&mut self, shapes: &Shapes) -> Result<Vec<ParamDecl>> {
        let (Some(hs), Some(ht)) = (shapes.student_hidden_dim, shapes.teacher_hidden_dim) else {
            return Ok(Vec::new());
        };
        self.projected = self.wants_projection(hs, ht);
        Ok(if self.projected { vec![ParamDecl::linear("proj", hs, ht, self.p.seed)] } else { Vec::new() })
    }

    fn projection(&self) -> Option<&str> {
        self.projected.then_some("proj")
    }

    fn compute_with(&mut self, x: &LossInput, extra: &Extra) -> Result<(LossOutput, ExtraGrads)> {
        let (s, t) = (extra.student_layers()?, extra.teacher_layers()?);
        ensure!(s.lens == t.lens, "student and teacher token counts differ: they must tokenise alike");
        let (hs, ht, seq) = (s.width, t.width, s.seq);
        let proj = if self.projected { Some((extra.param(0)?, extra.param(1)?)) } else { None };
        ensure!(
            proj.is_some() || hs == ht,
            "widths differ (student {hs}, teacher {ht}) and there is no projection"
        );
        let n = s.tokens().max(1) as f64;
        let mut value = 0f64;
        let mut grads = ExtraGrads::default();
        let (mut dw, mut db) = (vec![0f32; hs * ht], vec![0f32; ht]);
        for [i, j] in self.pairs(s.hidden.len(), t.hidden.len()) {
            let (hsi, htj) = (s.hidden[i], t.hidden[j]);
            let mut dh = vec![0f32; hsi.len()];
            let mut p = vec![0f32; ht];
            for r in 0..s.batch() * seq {
                let (b, tok) = (r / seq, r % seq);
                if !s.is_real(b, tok) {
                    continue;
                }
                let row = &hsi[r * hs..(r + 1) * hs];
                match proj {
                    Some((w, c)) => {
                        p.copy_from_slice(c);
                        for (a, &h) in row.iter().enumerate() {
                            p.iter_mut().zip(&w[a * ht..(a + 1) * ht]).for_each(|(pk, wk)| *pk += h * wk);
                        }
                    }
                    None => p.copy_from_slice(row),
                }
                let w = x.weights[b] as f64;
                // dp = ∂L/∂p for this row.
                let dp: Vec<f32> = (0..ht)
                    .map(|k| {
                        let d = (p[k] - htj[r * ht + k]) as f64;
                        value += w * d * d / (n * ht as f64);
                        (2.0 * w * d / (n * ht as f64)) as f32
                    })
                    .collect();
                match proj {
                    Some((wm, _)) => {
                        for (a, &h) in row.iter().enumerate() {
                            let wrow = &wm[a * ht..(a + 1) * ht];
                            dw[a * ht..(a + 1) * ht].iter_mut().zip(&dp).for_each(|(g, d)| *g += h * d);
                            dh[r * hs + a] = wrow.iter().zip(&dp).map(|(wk, d)| wk * d).sum();
                        }
                        db.iter_mut().zip(&dp).for_each(|(g, d)| *g += d);
                    }
                    None => dh[r * hs..(r + 1) * hs].copy_from_slice(&dp),
                }
            }
            grads.add_hidden(i, &dh);
        }
        if proj.is_some() {
            grads.add_param(0, &dw);
            grads.add_param(1, &db);
        }
        let out = LossOutput {
            value: value as f32,
            grad_logits: vec![0.0; x.student_logits.len()],
            grad_hidden: None,
        };
        Ok((out, grads))
    }
}

kdx_sdk::export_loss!(TinyBertProj);

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_sdk::testing::{extra_gradient_check, OwnedLayers, SampleBatch};

    fn loss(json: &str) -> TinyBertProj {
        TinyBertProj::create(&Params::from_json(json)).unwrap()
    }

    #[test]
    fn gradients_match_finite_differences_between_different_widths() {
        let sb = SampleBatch::random(3, 2, 4, 1.0, 1);
        let x = sb.input(0, 1);
        let s = OwnedLayers::random(&[4, 2, 3], 2, 6, 2, 7);
        let t = OwnedLayers::random(&[4, 2, 3], 4, 5, 2, 8);
        let mut l = loss("{}");
        let shapes =
            Shapes { student_hidden_dim: Some(6), teacher_hidden_dim: Some(5), ..Default::default() };
        assert_eq!(l.parameters(&shapes).unwrap(), vec![ParamDecl::linear("proj", 6, 5, 0)]);
        let w: Vec<f32> = (0..30).map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0).collect();
        let c: Vec<f32> = (0..5).map(|i| i as f32 / 10.0).collect();
        let check = extra_gradient_check(&mut l, &x, &[w, c], Some(&s), Some(&t), 1e-2).unwrap();
        assert!(check.max_error < 1e-2, "{check}");
        assert!(check.checked > 30 + 5, "{check}");
    }

    #[test]
    fn misfits_are_reported_at_their_keys() {
        use kdx_sdk::LayerShape;
        let layers =
            |layers, width| LayerShape { layers, width, heads: 2, max_len: 32, tokenizer: "bytes".into() };
        let shapes = Shapes {
            student_layers: Some(layers(1, 16)),
            teacher_layers: Some(layers(2, 32)),
            ..Default::default()
        };
        assert!(loss("{}").check(&shapes).is_ok());
        let e = loss(r#"{"projection": "never"}"#).check(&shapes).unwrap_err();
        assert!(e.message().starts_with("`projection`: \"never\" needs equal widths"), "{e}");
        let e = loss(r#"{"map": [[0, 0], [1, 3]]}"#).check(&shapes).unwrap_err();
        assert!(e.message().starts_with("`map`: pair [1, 3]"), "{e}");
    }
}
