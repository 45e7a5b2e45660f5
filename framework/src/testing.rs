//! The test kit for loss authors (in-tree and SDK losses alike): a reproducible sample batch,
//! random per-layer states, and finite-difference checks of every gradient a loss returns
//! (logits, hidden representation, its own parameters, per-layer states). Kept out of
//! `loss`, which holds what runs in training.

use crate::loss::{Loss, LossInput};
use crate::model::LayerStates;

/// Checks a loss's analytic gradients against central finite differences: with respect to
/// the student logits, the student hidden representation (when the loss returns a hidden
/// gradient) and the loss's own parameters (e.g. a projection). Returns the largest relative
/// error (|a − n| / max(1, |a|, |n|)). Loss authors call this in their tests; see
/// docs/writing-a-loss-plugin.md.
pub fn gradient_check(loss: &mut dyn Loss, x: &LossInput, eps: f32) -> anyhow::Result<f32> {
    let rel = |a: f32, n: f32| (a - n).abs() / 1f32.max(a.abs()).max(n.abs());
    let out = loss.compute(x)?;
    let mut worst = 0f32;
    let mut z = x.student_logits.to_vec();
    for i in 0..z.len() {
        let orig = z[i];
        z[i] = orig + eps;
        let up = loss.compute(&LossInput { student_logits: &z, ..*x })?.value;
        z[i] = orig - eps;
        let down = loss.compute(&LossInput { student_logits: &z, ..*x })?.value;
        z[i] = orig;
        worst = worst.max(rel(out.grad_logits[i], (up - down) / (2.0 * eps)));
    }
    if let Some(gh) = &out.grad_hidden {
        let mut h = x.student_hidden.to_vec();
        for i in 0..h.len() {
            let orig = h[i];
            h[i] = orig + eps;
            let up = loss.compute(&LossInput { student_hidden: &h, ..*x })?.value;
            h[i] = orig - eps;
            let down = loss.compute(&LossInput { student_hidden: &h, ..*x })?.value;
            h[i] = orig;
            worst = worst.max(rel(gh[i], (up - down) / (2.0 * eps)));
        }
    }
    // The loss's own parameters: their gradients are those of the unperturbed batch.
    loss.compute(x)?;
    let grads: Vec<Vec<f32>> = loss
        .params()
        .iter()
        .map(|p| match &p.grad {
            crate::model::Grad::Dense(g) => Ok(g.clone()),
            other => {
                Err(anyhow::anyhow!("parameter `{}` has no dense gradient after compute: {other:?}", p.name))
            }
        })
        .collect::<anyhow::Result<_>>()?;
    for (pi, g) in grads.iter().enumerate() {
        for (k, &gk) in g.iter().enumerate() {
            let orig = loss.params()[pi].data[k];
            loss.params_mut()[pi].data[k] = orig + eps;
            let up = loss.compute(x)?.value;
            loss.params_mut()[pi].data[k] = orig - eps;
            let down = loss.compute(x)?.value;
            loss.params_mut()[pi].data[k] = orig;
            worst = worst.max(rel(gk, (up - down) / (2.0 * eps)));
        }
    }
    Ok(worst)
}

/// Owned buffers for a [`LossInput`]: the SDK's sample batch (one kit for in-tree and
/// library losses), with teacher and student widths that may differ.
pub use kdx_sdk::testing::SampleBatch;

/// Random per-layer states for tests of layer-wise losses: `lens` sequences padded to the
/// longest, `layers` layers of `width` with `heads` heads, attention rows that are
/// distributions over the real keys (zero on padding), from a seed.
pub fn sample_layers(lens: &[usize], layers: usize, width: usize, heads: usize, seed: u64) -> LayerStates {
    // The SDK's generator, so in-tree and library losses are tested on the same states.
    let o = kdx_sdk::testing::OwnedLayers::random(lens, layers, width, heads, seed);
    LayerStates {
        lens: o.lens,
        seq: o.seq,
        width: o.width,
        heads: o.heads,
        hidden: o.hidden,
        attention: o.attention,
    }
}

/// The largest relative difference between a layer-wise loss's gradients (with respect to
/// the student's real hidden states and attention entries, and the loss's own parameters)
/// and central finite differences of step `eps`.
pub fn layer_gradient_check(
    loss: &mut dyn Loss,
    x: &LossInput,
    s: &LayerStates,
    t: Option<&LayerStates>,
    eps: f32,
) -> anyhow::Result<f32> {
    let rel = |a: f64, n: f64| ((a - n).abs() / 1f64.max(a.abs()).max(n.abs())) as f32;
    let (_, g) = loss.compute_layers(x, s, t)?;
    let own: Vec<Vec<f32>> = loss
        .params()
        .iter()
        .map(|p| match &p.grad {
            crate::model::Grad::Dense(g) => g.clone(),
            _ => vec![0.0; p.numel()],
        })
        .collect();
    let value =
        |loss: &mut dyn Loss, s: &LayerStates| loss.compute_layers(x, s, t).map(|(o, _)| o.value as f64);
    let mut worst = 0f32;
    let (tt, w, h) = (s.seq, s.width, s.heads);
    for (attention, k) in
        (0..s.hidden.len()).map(|k| (false, k)).chain((0..s.attention.len()).map(|k| (true, k)))
    {
        let slot = if attention { g.attention.get(k) } else { g.hidden.get(k) };
        let zero = Vec::new();
        let an = slot.and_then(Option::as_ref).unwrap_or(&zero);
        let n = if attention { s.attention[k].len() } else { s.hidden[k].len() };
        for i in (0..n).step_by(3) {
            let ok = if attention {
                let b = i / (h * tt * tt);
                s.is_real(b, i / tt % tt) && s.is_real(b, i % tt)
            } else {
                s.is_real(i / (tt * w), i / w % tt)
            };
            if !ok {
                continue;
            }
            let mut p = s.clone();
            let buf = if attention { &mut p.attention[k] } else { &mut p.hidden[k] };
            let orig = buf[i];
            buf[i] = orig + eps;
            let up = value(loss, &p)?;
            let buf = if attention { &mut p.attention[k] } else { &mut p.hidden[k] };
            buf[i] = orig - eps;
            let down = value(loss, &p)?;
            worst =
                worst.max(rel(an.get(i).copied().unwrap_or(0.0) as f64, (up - down) / (2.0 * eps as f64)));
        }
    }
    for (pi, g) in own.iter().enumerate() {
        for k in (0..g.len()).step_by(5) {
            let orig = loss.params()[pi].data[k];
            loss.params_mut()[pi].data[k] = orig + eps;
            let up = value(loss, s)?;
            loss.params_mut()[pi].data[k] = orig - eps;
            let down = value(loss, s)?;
            loss.params_mut()[pi].data[k] = orig;
            worst = worst.max(rel(g[k] as f64, (up - down) / (2.0 * eps as f64)));
        }
    }
    Ok(worst)
}
