//! A step's objective: every loss of the stage on one batch, weighted and summed into the
//! gradients of the student's outputs (logits, hidden representation, layer states).

use anyhow::{Context, Result};

use super::stage_run::StageLoss;
use crate::loss::{LossInput, LossOutput};
use crate::model::{Grad, LayerGrads, LayerStates, OutputGrads};

/// One term of a step's objective.
#[derive(Clone, Copy, Debug)]
pub struct Term<'a> {
    /// The loss's position in the stage.
    pub index: usize,
    /// The loss's name.
    pub name: &'a str,
    /// Its weight at this step.
    pub weight: f32,
    /// Its value (before the weight).
    pub value: f32,
}

/// Evaluates every loss on one batch and sums their weighted gradients. Returns the
/// gradients, the weighted total and each term.
/// `layers` are the student's and the teacher's per-layer states, for layer-wise losses.
pub fn combine_losses<'a>(
    losses: &mut [StageLoss<'a>],
    input: &LossInput,
    hidden_len: usize,
    student_layers: Option<&LayerStates>,
    teacher_layers: Option<&LayerStates>,
) -> Result<(OutputGrads, f32, Vec<Term<'a>>)> {
    let (step, total_steps) = (input.step, input.total_steps);
    let mut g = OutputGrads { logits: vec![0.0; input.student_logits.len()], hidden: None, layers: None };
    let mut total = 0f32;
    let mut terms = Vec::new();
    for (index, l) in losses.iter_mut().enumerate() {
        let w = l.weight.at(step, total_steps);
        if w == 0.0 {
            // Switched off at this step: not computed at all, so the loss's own state (a
            // gate, a moving average) and parameters stay as they were and an ablation with
            // weight 0 trains exactly as the recipe without the term.
            for p in l.loss.params_mut() {
                p.grad = Grad::None;
            }
            continue;
        }
        let (r, layer_grads) = evaluate(l, input, student_layers, teacher_layers)?;
        // A NaN or infinite gradient of a finite value would reach the weights and surface a
        // step later as a NaN value of some other loss: stop here and name the culprit. (A
        // non-finite value is reported with every term by the divergence check.)
        if let Some(x) = non_finite_gradient(l, &r, layer_grads.as_ref()).filter(|_| r.value.is_finite()) {
            anyhow::bail!(
                "loss `{}` returned a non-finite gradient ({x}) at step {step} (its value: {})",
                l.name,
                r.value
            );
        }
        terms.push(Term { index, name: l.name, weight: w, value: r.value });
        // The loss's own parameters (a projection) are part of the weighted objective too.
        for p in l.loss.params_mut() {
            if let Grad::Dense(g) = &mut p.grad {
                g.iter_mut().for_each(|x| *x *= w);
            }
        }
        total += w * r.value;
        add_weighted(&mut g, w, r, layer_grads, hidden_len, l.name)?;
    }
    Ok((g, total, terms))
}

/// One loss on the batch: its output, and its layer-state gradients when it reads layers.
fn evaluate(
    l: &mut StageLoss,
    input: &LossInput,
    student_layers: Option<&LayerStates>,
    teacher_layers: Option<&LayerStates>,
) -> Result<(LossOutput, Option<LayerGrads>)> {
    let step = input.step;
    if !l.loss.needs().layers {
        return Ok((
            l.loss.compute(input).with_context(|| format!("loss `{}` at step {step}", l.name))?,
            None,
        ));
    }
    let s = student_layers.with_context(|| {
        format!("loss `{}` reads per-layer states, and the student returned none", l.name)
    })?;
    let (r, g) = l
        .loss
        .compute_layers(input, s, teacher_layers)
        .with_context(|| format!("loss `{}` at step {step}", l.name))?;
    Ok((r, Some(g)))
}

/// The first non-finite entry of a loss's gradients: of the logits, the hidden vector, the
/// layer states, then its own parameters.
fn non_finite_gradient(l: &StageLoss, r: &LossOutput, layer_grads: Option<&LayerGrads>) -> Option<f32> {
    let own = || {
        l.loss.params().into_iter().find_map(|p| match &p.grad {
            Grad::Dense(g) => g.iter().find(|x| !x.is_finite()).copied(),
            _ => None,
        })
    };
    let layer_values =
        layer_grads.iter().flat_map(|g| g.hidden.iter().chain(&g.attention).flatten().flatten());
    r.grad_logits
        .iter()
        .chain(r.grad_hidden.iter().flatten())
        .chain(layer_values)
        .find(|x| !x.is_finite())
        .copied()
        .or_else(own)
}

/// Adds `w` times a loss's gradients (logits, layer states, hidden vector) to the step's.
fn add_weighted(
    g: &mut OutputGrads,
    w: f32,
    r: LossOutput,
    layer_grads: Option<LayerGrads>,
    hidden_len: usize,
    name: &str,
) -> Result<()> {
    anyhow::ensure!(
        r.grad_logits.len() == g.logits.len(),
        "loss `{name}` returned a logit gradient of the wrong size"
    );
    g.logits.iter_mut().zip(&r.grad_logits).for_each(|(a, b)| *a += w * b);
    if let Some(mut lg) = layer_grads {
        for v in lg.hidden.iter_mut().chain(lg.attention.iter_mut()).flatten() {
            v.iter_mut().for_each(|x| *x *= w);
        }
        g.layers.get_or_insert_with(Default::default).merge(lg);
    }
    if let Some(gh) = r.grad_hidden {
        anyhow::ensure!(gh.len() == hidden_len, "loss `{name}` returned a hidden gradient of the wrong size");
        let acc = g.hidden.get_or_insert_with(|| vec![0.0; hidden_len]);
        acc.iter_mut().zip(&gh).for_each(|(a, b)| *a += w * b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::{Loss, LossOutput, Needs};
    use crate::model::{LayerGrads, LayerStates};
    use crate::schedule::Schedule;
    use crate::testing::{sample_layers, SampleBatch};

    /// A layer-wise loss with fixed gradients: ones on hidden state 1, twos on attention 0.
    struct Fixed;

    impl Loss for Fixed {
        fn needs(&self) -> Needs {
            Needs { layers: true, ..Needs::LABELS }
        }
        fn compute(&mut self, _: &LossInput) -> Result<LossOutput> {
            unreachable!("a layer-wise loss is computed through compute_layers")
        }
        fn compute_layers(
            &mut self,
            x: &LossInput,
            s: &LayerStates,
            _: Option<&LayerStates>,
        ) -> Result<(LossOutput, LayerGrads)> {
            let mut g = LayerGrads::default();
            g.add_hidden(1, vec![1.0; s.hidden[1].len()]);
            g.add_attention(0, vec![2.0; s.attention[0].len()]);
            Ok((
                LossOutput { value: 0.5, grad_logits: vec![0.0; x.student_logits.len()], grad_hidden: None },
                g,
            ))
        }
    }

    #[test]
    fn layer_gradients_are_weighted_and_reach_the_step() {
        let sb = SampleBatch::random(2, 3, 4, 1.0, 1);
        let s = sample_layers(&[3, 2], 2, 4, 2, 5);
        let w = Schedule::Constant(3.0);
        let mut fixed = Fixed;
        let mut losses = [StageLoss { name: "fixed", weight: &w, loss: &mut fixed }];
        let (g, total, _) = combine_losses(&mut losses, &sb.input(0, 1), 8, Some(&s), None).unwrap();
        assert!((total - 1.5).abs() < 1e-6);
        let layers = g.layers.expect("layer gradients are passed on");
        assert!(layers.hidden[1].as_ref().unwrap().iter().all(|&v| v == 3.0));
        assert!(layers.attention[0].as_ref().unwrap().iter().all(|&v| v == 6.0));
        assert!(layers.hidden[0].is_none());
        // A student without layer states is an error that names the loss.
        let e = combine_losses(&mut losses, &sb.input(0, 1), 8, None, None).unwrap_err().to_string();
        assert!(e.contains("`fixed`") && e.contains("per-layer states"), "{e}");
    }

    /// Counts its calls (the state a gate or a moving average would update).
    struct Counting(usize);

    impl Loss for Counting {
        fn needs(&self) -> Needs {
            Needs::LABELS
        }
        fn compute(&mut self, x: &LossInput) -> Result<LossOutput> {
            self.0 += 1;
            Ok(LossOutput { value: 1.0, grad_logits: vec![1.0; x.student_logits.len()], grad_hidden: None })
        }
    }

    #[test]
    fn a_term_of_weight_zero_is_not_computed() {
        let sb = SampleBatch::random(2, 3, 4, 1.0, 1);
        // A warm-up: 0 at the stage's first step, 1 at its last.
        let w =
            Schedule::Curve(serde_json::from_str(r#"{"kind": "linear", "start": 0.0, "end": 1.0}"#).unwrap());
        let mut counting = Counting(0);
        let mut losses = [StageLoss { name: "counting", weight: &w, loss: &mut counting }];
        let (g, total, terms) = combine_losses(&mut losses, &sb.input(0, 3), 8, None, None).unwrap();
        assert!(total == 0.0 && terms.is_empty() && g.logits.iter().all(|&v| v == 0.0));
        let (_, total, terms) = combine_losses(&mut losses, &sb.input(2, 3), 8, None, None).unwrap();
        assert!(total == 1.0 && terms.len() == 1);
        assert_eq!(counting.0, 1, "called at the step of weight 1 only");
    }
}
