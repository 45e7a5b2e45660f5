//! A step's objective: every loss of the stage on one batch, weighted and summed into the
//! gradients of the student's outputs (logits, hidden representation, layer states).

use anyhow::{Context, Result};

use super::train::StageLoss;
use crate::loss::LossInput;
use crate::model::{Grad, LayerStates, OutputGrads};

/// One term of a step's objective: the loss's name, its weight and its value.
pub type Term<'a> = (&'a str, f32, f32);

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
    for l in losses.iter_mut() {
        let w = l.weight.at(step, total_steps);
        let (r, layer_grads) = if l.loss.needs_layers() {
            let s = student_layers.with_context(|| format!("loss `{}` reads per-layer states, and the student returned none", l.name))?;
            let (r, g) = l.loss.compute_layers(input, s, teacher_layers).with_context(|| format!("loss `{}` at step {step}", l.name))?;
            (r, Some(g))
        } else {
            (l.loss.compute(input).with_context(|| format!("loss `{}` at step {step}", l.name))?, None)
        };
        // A NaN or infinite gradient of a finite value would reach the weights and surface a
        // step later as a NaN value of some other loss: stop here and name the culprit. (A
        // non-finite value is reported with every term by the divergence check.)
        let own = || {
            l.loss.params().into_iter().find_map(|p| match &p.grad {
                Grad::Dense(g) => g.iter().find(|x| !x.is_finite()).copied(),
                _ => None,
            })
        };
        let layer_values = layer_grads.iter().flat_map(|g| g.hidden.iter().chain(&g.attention).flatten().flatten());
        let bad =
            r.grad_logits.iter().chain(r.grad_hidden.iter().flatten()).chain(layer_values).find(|x| !x.is_finite()).copied().or_else(own);
        if let Some(x) = bad.filter(|_| r.value.is_finite()) {
            anyhow::bail!("loss `{}` returned a non-finite gradient ({x}) at step {step} (its value: {})", l.name, r.value);
        }
        terms.push((l.name, w, r.value));
        // The loss's own parameters (a projection) are part of the weighted objective too.
        for p in l.loss.params_mut() {
            match &mut p.grad {
                Grad::Dense(g) if w != 0.0 => g.iter_mut().for_each(|x| *x *= w),
                _ if w == 0.0 => p.grad = Grad::None,
                _ => {}
            }
        }
        if w == 0.0 {
            continue;
        }
        total += w * r.value;
        anyhow::ensure!(r.grad_logits.len() == g.logits.len(), "loss `{}` returned a logit gradient of the wrong size", l.name);
        g.logits.iter_mut().zip(&r.grad_logits).for_each(|(a, b)| *a += w * b);
        if let Some(mut lg) = layer_grads {
            for v in lg.hidden.iter_mut().chain(lg.attention.iter_mut()).flatten() {
                v.iter_mut().for_each(|x| *x *= w);
            }
            g.layers.get_or_insert_with(Default::default).merge(lg);
        }
        if let Some(gh) = r.grad_hidden {
            anyhow::ensure!(gh.len() == hidden_len, "loss `{}` returned a hidden gradient of the wrong size", l.name);
            let acc = g.hidden.get_or_insert_with(|| vec![0.0; hidden_len]);
            acc.iter_mut().zip(&gh).for_each(|(a, b)| *a += w * b);
        }
    }
    Ok((g, total, terms))
}
