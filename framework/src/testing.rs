//! The test kit for loss authors (in-tree and SDK losses alike): a reproducible sample batch,
//! random per-layer states, and finite-difference checks of every gradient a loss returns
//! (logits, hidden representation, its own parameters, per-layer states). Kept out of
//! `loss`, which holds what runs in training.

use crate::loss::{Loss, LossInput};
use crate::model::LayerStates;
use crate::sampler::LangStat;

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

/// Owned buffers for a [`LossInput`], for tests and gradient checks: random logits,
/// teacher logits and hidden states, labels and languages from a seed.
#[derive(Clone, Debug)]
pub struct SampleBatch {
    /// `B`.
    pub batch: usize,
    /// `C`.
    pub classes: usize,
    /// `H` (student and teacher).
    pub hidden_dim: usize,
    /// Student logits.
    pub student_logits: Vec<f32>,
    /// Student hidden.
    pub student_hidden: Vec<f32>,
    /// Teacher logits.
    pub teacher_logits: Vec<f32>,
    /// Teacher hidden.
    pub teacher_hidden: Vec<f32>,
    /// Labels.
    pub labels: Vec<u32>,
    /// Languages (two languages, alternating).
    pub langs: Vec<u32>,
    /// Per-example weights.
    pub weights: Vec<f32>,
    /// Statistics of the two languages.
    pub stats: Vec<LangStat>,
}

impl SampleBatch {
    /// A reproducible random batch; `scale` sets the logits' spread (large = peaked).
    pub fn random(batch: usize, classes: usize, hidden_dim: usize, scale: f32, seed: u64) -> SampleBatch {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = |n: usize| (0..n).map(|_| rng.gen_range(-scale..scale)).collect::<Vec<f32>>();
        let student_logits = v(batch * classes);
        let student_hidden = v(batch * hidden_dim);
        let teacher_logits = v(batch * classes);
        let teacher_hidden = v(batch * hidden_dim);
        let labels = (0..batch).map(|i| (i * 7 % classes) as u32).collect();
        let langs = (0..batch).map(|i| (i % 2) as u32).collect();
        let weights = (0..batch).map(|i| 0.5 + (i % 3) as f32 * 0.25).collect();
        let stats = vec![
            LangStat { dev_acc: 0.5, teacher_dev_acc: 0.9, ..LangStat::new(100) },
            LangStat { dev_acc: 0.95, teacher_dev_acc: 0.9, ..LangStat::new(10) },
        ];
        SampleBatch {
            batch,
            classes,
            hidden_dim,
            student_logits,
            student_hidden,
            teacher_logits,
            teacher_hidden,
            labels,
            langs,
            weights,
            stats,
        }
    }

    /// Borrows the batch as a loss input at `step` of `total_steps`.
    pub fn input(&self, step: u64, total_steps: u64) -> LossInput<'_> {
        LossInput {
            batch: self.batch,
            classes: self.classes,
            student_logits: &self.student_logits,
            student_hidden: &self.student_hidden,
            student_hidden_dim: self.hidden_dim,
            teacher_logits: Some(&self.teacher_logits),
            teacher_hidden: Some(&self.teacher_hidden),
            teacher_hidden_dim: self.hidden_dim,
            labels: Some(&self.labels),
            langs: &self.langs,
            weights: &self.weights,
            step,
            total_steps,
            stats: &self.stats,
        }
    }
}

/// Random per-layer states for tests of layer-wise losses: `lens` sequences padded to the
/// longest, `layers` layers of `width` with `heads` heads, attention rows that are
/// distributions over the real keys (zero on padding), from a seed.
pub fn sample_layers(lens: &[usize], layers: usize, width: usize, heads: usize, seed: u64) -> LayerStates {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (b, t) = (lens.len(), lens.iter().copied().max().unwrap_or(1));
    let hidden =
        (0..=layers).map(|_| (0..b * t * width).map(|_| rng.gen_range(-1.0f32..1.0)).collect()).collect();
    let attention = (0..layers)
        .map(|_| {
            let mut a = vec![0.0f32; b * heads * t * t];
            for (row_i, row) in a.chunks_exact_mut(t).enumerate() {
                let n = lens[row_i / (heads * t)];
                let e: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0f32..2.0).exp()).collect();
                let z: f32 = e.iter().sum();
                row[..n].iter_mut().zip(&e).for_each(|(r, v)| *r = v / z);
            }
            a
        })
        .collect();
    LayerStates { lens: lens.to_vec(), seq: t, width, heads, hidden, attention }
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
