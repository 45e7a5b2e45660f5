//! Testing a loss without kdx: reproducible sample batches and a finite-difference gradient
//! check of both gradients a loss returns.
//!
//! ```
//! use kdx_sdk::testing::{gradient_check, SampleBatch};
//! # use kdx_sdk::{Loss, LossInput, LossOutput, Params, Result};
//! # struct Sq;
//! # impl Loss for Sq {
//! #     const NAME: &'static str = "sq";
//! #     const SUMMARY: &'static str = "";
//! #     fn create(_: &Params) -> Result<Self> { Ok(Sq) }
//! #     fn needs_teacher(&self) -> bool { false }
//! #     fn compute(&mut self, x: &LossInput) -> Result<LossOutput> {
//! #         Ok(LossOutput { value: x.student_logits.iter().map(|z| z * z).sum(),
//! #             grad_logits: x.student_logits.iter().map(|z| 2.0 * z).collect(), grad_hidden: None })
//! #     }
//! # }
//! let batch = SampleBatch::random(4, 5, 3, 2.0, 7);
//! let mut loss = Sq::create(&Params::empty()).unwrap();
//! let check = gradient_check(&mut loss, &batch.input(0, 100), 1e-2).unwrap();
//! assert!(check.max_error < 1e-2, "{check}");
//! ```

use std::fmt;

use crate::{Extra, ExtraGrads, LangStat, Layers, Loss, LossInput, Result};

/// Owned buffers for a [`LossInput`]: random logits, teacher outputs and hidden states,
/// labels, two alternating languages, varied per-example weights.
#[derive(Clone, Debug)]
pub struct SampleBatch {
    /// `B`.
    pub batch: usize,
    /// `C`.
    pub classes: usize,
    /// `H`, the student's width.
    pub hidden_dim: usize,
    /// `H_t`, the teacher's width (`H` unless [`SampleBatch::with_teacher_width`] set another).
    pub teacher_hidden_dim: usize,
    /// Student logits.
    pub student_logits: Vec<f32>,
    /// Student hidden representation.
    pub student_hidden: Vec<f32>,
    /// Teacher logits.
    pub teacher_logits: Vec<f32>,
    /// Teacher hidden representation.
    pub teacher_hidden: Vec<f32>,
    /// Gold labels.
    pub labels: Vec<u32>,
    /// Languages (0, 1, 0, 1, …).
    pub langs: Vec<u32>,
    /// Per-example weights (0.5, 0.75, 1.0, …).
    pub weights: Vec<f32>,
    /// Statistics of the two languages.
    pub stats: Vec<LangStat>,
}

/// A small deterministic generator (SplitMix64): the same seed gives the same batch everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-scale, scale)`.
    fn uniform(&mut self, scale: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * scale
    }
}

impl SampleBatch {
    /// A reproducible random batch; `scale` is the logits' spread (large = peaked softmax).
    pub fn random(batch: usize, classes: usize, hidden_dim: usize, scale: f32, seed: u64) -> SampleBatch {
        let mut rng = Rng(seed);
        let mut v = |n: usize| (0..n).map(|_| rng.uniform(scale)).collect::<Vec<f32>>();
        let student_logits = v(batch * classes);
        let student_hidden = v(batch * hidden_dim);
        let teacher_logits = v(batch * classes);
        let teacher_hidden = v(batch * hidden_dim);
        SampleBatch {
            batch,
            classes,
            hidden_dim,
            teacher_hidden_dim: hidden_dim,
            student_logits,
            student_hidden,
            teacher_logits,
            teacher_hidden,
            labels: (0..batch).map(|i| (i * 7 % classes.max(1)) as u32).collect(),
            langs: (0..batch).map(|i| (i % 2) as u32).collect(),
            weights: (0..batch).map(|i| 0.5 + (i % 3) as f32 * 0.25).collect(),
            stats: vec![
                LangStat {
                    train_size: 100,
                    drawn: 40,
                    student_loss: 1.2,
                    teacher_loss: 0.3,
                    dev_acc: 0.5,
                    teacher_dev_acc: 0.9,
                },
                LangStat {
                    train_size: 10,
                    drawn: 4,
                    student_loss: 0.2,
                    teacher_loss: 0.25,
                    dev_acc: 0.95,
                    teacher_dev_acc: 0.9,
                },
            ],
        }
    }

    /// The same batch with a teacher of another width `H_t` (its hidden states drawn anew
    /// from `seed`): a feature loss between models of different widths is tested this way.
    pub fn with_teacher_width(mut self, teacher_hidden_dim: usize, scale: f32, seed: u64) -> SampleBatch {
        let mut rng = Rng(seed);
        self.teacher_hidden = (0..self.batch * teacher_hidden_dim).map(|_| rng.uniform(scale)).collect();
        self.teacher_hidden_dim = teacher_hidden_dim;
        self
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
            teacher_hidden_dim: self.teacher_hidden_dim,
            labels: Some(&self.labels),
            langs: &self.langs,
            weights: &self.weights,
            step,
            total_steps,
            stats: &self.stats,
        }
    }
}

/// The result of [`gradient_check`]: the largest relative error and where it was.
#[derive(Clone, Debug, PartialEq)]
pub struct GradientCheck {
    /// Largest `|a − n| / max(1, |a|, |n|)` over every checked coordinate.
    pub max_error: f32,
    /// Where it was: `"logits"` or `"hidden"`.
    pub buffer: &'static str,
    /// Index into that buffer.
    pub index: usize,
    /// The loss's gradient there.
    pub analytic: f32,
    /// The central finite difference there.
    pub numeric: f32,
    /// Coordinates checked.
    pub checked: usize,
}

impl fmt::Display for GradientCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "largest relative error {:.3e} at {}[{}]: analytic {} vs numeric {} ({} coordinates checked)",
            self.max_error, self.buffer, self.index, self.analytic, self.numeric, self.checked
        )
    }
}

/// Checks a loss's gradients against central finite differences `(L(x+ε) − L(x−ε)) / 2ε`:
/// every student logit, and every student hidden value when the loss returns a hidden
/// gradient. Also checks the gradient sizes. `ε ≈ 1e-2` suits `f32` losses; expect errors
/// of 1e-3 or less from a correct gradient.
pub fn gradient_check<L: Loss>(loss: &mut L, x: &LossInput, eps: f32) -> Result<GradientCheck> {
    check_outputs(&mut |x| loss.compute(x), x, eps)
}

impl GradientCheck {
    /// Counts one checked coordinate of `buffer`: analytic gradient `a`, numeric `n`. The
    /// report keeps the largest relative error (a NaN always replaces it).
    fn note(&mut self, buffer: &'static str, i: usize, a: f32, n: f32) {
        let err = (a - n).abs() / 1f32.max(a.abs()).max(n.abs());
        self.checked += 1;
        if err > self.max_error || err.is_nan() {
            *self = GradientCheck {
                max_error: err,
                buffer,
                index: i,
                analytic: a,
                numeric: n,
                checked: self.checked,
            };
        }
    }
}

/// [`gradient_check`] of any function of a batch.
fn check_outputs(
    compute: &mut dyn FnMut(&LossInput) -> Result<crate::LossOutput>,
    x: &LossInput,
    eps: f32,
) -> Result<GradientCheck> {
    x.check()?;
    let base = compute(x)?;
    base.check(x)?;
    let mut report =
        GradientCheck { max_error: 0.0, buffer: "logits", index: 0, analytic: 0.0, numeric: 0.0, checked: 0 };
    let mut z = x.student_logits.to_vec();
    for i in 0..z.len() {
        let orig = z[i];
        z[i] = orig + eps;
        let up = compute(&LossInput { student_logits: &z, ..*x })?.value;
        z[i] = orig - eps;
        let down = compute(&LossInput { student_logits: &z, ..*x })?.value;
        z[i] = orig;
        report.note("logits", i, base.grad_logits[i], (up - down) / (2.0 * eps));
    }
    if let Some(gh) = &base.grad_hidden {
        let mut h = x.student_hidden.to_vec();
        for i in 0..h.len() {
            let orig = h[i];
            h[i] = orig + eps;
            let up = compute(&LossInput { student_hidden: &h, ..*x })?.value;
            h[i] = orig - eps;
            let down = compute(&LossInput { student_hidden: &h, ..*x })?.value;
            h[i] = orig;
            report.note("hidden", i, gh[i], (up - down) / (2.0 * eps));
        }
    }
    Ok(report)
}

/// Owned per-layer states for tests of layer-wise losses ([`OwnedLayers::view`] lends them as
/// [`Layers`]): random hidden states, attention rows that are distributions over the real keys.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedLayers {
    /// Real tokens of each sequence.
    pub lens: Vec<usize>,
    /// Padded length.
    pub seq: usize,
    /// Width.
    pub width: usize,
    /// Heads.
    pub heads: usize,
    /// L + 1 hidden states.
    pub hidden: Vec<Vec<f32>>,
    /// L attention distributions.
    pub attention: Vec<Vec<f32>>,
}

impl OwnedLayers {
    /// `lens` sequences padded to the longest, `layers` layers of `width` with `heads` heads,
    /// from a seed. Student and teacher may differ in every size but the sequences.
    pub fn random(lens: &[usize], layers: usize, width: usize, heads: usize, seed: u64) -> OwnedLayers {
        let mut rng = Rng(seed ^ 0x6c61_7965_7273);
        let (b, t) = (lens.len(), lens.iter().copied().max().unwrap_or(1));
        let hidden = (0..=layers).map(|_| (0..b * t * width).map(|_| rng.uniform(1.0)).collect()).collect();
        let attention = (0..layers)
            .map(|_| {
                let mut a = vec![0.0f32; b * heads * t * t];
                for (row_i, row) in a.chunks_exact_mut(t).enumerate() {
                    let n = lens[row_i / (heads * t)];
                    let e: Vec<f32> = (0..n).map(|_| (2.0 * rng.uniform(1.0)).exp()).collect();
                    let z: f32 = e.iter().sum();
                    row[..n].iter_mut().zip(&e).for_each(|(r, v)| *r = v / z);
                }
                a
            })
            .collect();
        OwnedLayers { lens: lens.to_vec(), seq: t, width, heads, hidden, attention }
    }

    /// Whether entry `i` of a hidden state (`attention` false) or of an attention
    /// distribution lies at a real token (and, for attention, at a real key), not padding.
    fn is_real(&self, attention: bool, i: usize) -> bool {
        let (seq, heads, width) = (self.seq, self.heads, self.width);
        let b = if attention { i / (heads * seq * seq) } else { i / (seq * width) };
        let tok = if attention { (i / seq) % seq } else { (i / width) % seq };
        let key = if attention { i % seq } else { 0 };
        tok < self.lens[b] && key < self.lens[b]
    }

    /// Attention distribution `k` (`attention` true) or hidden state `k`.
    fn buffer_mut(&mut self, attention: bool, k: usize) -> &mut Vec<f32> {
        if attention {
            &mut self.attention[k]
        } else {
            &mut self.hidden[k]
        }
    }

    /// The states as a loss sees them.
    pub fn view(&self) -> Layers<'_> {
        Layers {
            lens: &self.lens,
            seq: self.seq,
            width: self.width,
            heads: self.heads,
            hidden: self.hidden.iter().map(Vec::as_slice).collect(),
            attention: self.attention.iter().map(Vec::as_slice).collect(),
        }
    }
}

/// [`gradient_check`] for what ABI 2 adds: checks [`Loss::compute_with`]'s gradients with
/// respect to the loss's parameters, the student's real hidden states and attention
/// entries, and the student's logits and hidden vectors, against central finite
/// differences. `params` are the parameters' values, `student`/`teacher` the layer states.
pub fn extra_gradient_check<L: Loss>(
    loss: &mut L,
    x: &LossInput,
    params: &[Vec<f32>],
    student: Option<&OwnedLayers>,
    teacher: Option<&OwnedLayers>,
    eps: f32,
) -> Result<GradientCheck> {
    x.check()?;
    let (base, grads) = loss.compute_with(x, &extra_view(params, student, teacher))?;
    base.check(x)?;
    grads.check(&extra_view(params, student, teacher))?;
    let mut report =
        GradientCheck { max_error: 0.0, buffer: "logits", index: 0, analytic: 0.0, numeric: 0.0, checked: 0 };
    let mut check = ExtraCheck { loss: &mut *loss, x, params, student, teacher, eps };
    check.params(&grads, &mut report)?;
    if let Some(s) = student {
        check.student_layers(s, &grads, &mut report)?;
    }
    let logits =
        check_outputs(&mut |x| Ok(loss.compute_with(x, &extra_view(params, student, teacher))?.0), x, eps)?;
    Ok(if logits.max_error > report.max_error || logits.max_error.is_nan() {
        GradientCheck { checked: report.checked + logits.checked, ..logits }
    } else {
        GradientCheck { checked: report.checked + logits.checked, ..report }
    })
}

/// What [`Loss::compute_with`] reads besides the batch, lent from owned buffers.
fn extra_view<'a>(p: &'a [Vec<f32>], s: Option<&'a OwnedLayers>, t: Option<&'a OwnedLayers>) -> Extra<'a> {
    Extra {
        params: p.iter().map(Vec::as_slice).collect(),
        student_layers: s.map(OwnedLayers::view),
        teacher_layers: t.map(OwnedLayers::view),
    }
}

/// The gradient `g` reports for entry `i` of buffer `k`; 0 where it reports none.
fn grad_at(g: &[Option<Vec<f32>>], k: usize, i: usize) -> f32 {
    g.get(k).and_then(Option::as_ref).map_or(0.0, |v| v[i])
}

/// One [`extra_gradient_check`]: the loss and the inputs it is checked at. Its steps
/// perturb one kind of input at a time, the others held at these values.
struct ExtraCheck<'a, L> {
    loss: &'a mut L,
    x: &'a LossInput<'a>,
    params: &'a [Vec<f32>],
    student: Option<&'a OwnedLayers>,
    teacher: Option<&'a OwnedLayers>,
    eps: f32,
}

impl<L: Loss> ExtraCheck<'_, L> {
    /// The loss's value with these parameters and student layers (the teacher's are fixed).
    fn value(&mut self, params: &[Vec<f32>], student: Option<&OwnedLayers>) -> Result<f32> {
        Ok(self.loss.compute_with(self.x, &extra_view(params, student, self.teacher))?.0.value)
    }

    /// Compares the gradient of every parameter value with its central difference.
    fn params(&mut self, grads: &ExtraGrads, report: &mut GradientCheck) -> Result<()> {
        let eps = self.eps;
        let mut p = self.params.to_vec();
        for k in 0..p.len() {
            for i in 0..p[k].len() {
                let orig = p[k][i];
                p[k][i] = orig + eps;
                let up = self.value(&p, self.student)?;
                p[k][i] = orig - eps;
                let down = self.value(&p, self.student)?;
                p[k][i] = orig;
                report.note("params", i, grad_at(&grads.params, k, i), (up - down) / (2.0 * eps));
            }
        }
        Ok(())
    }

    /// Compares the gradient of every real entry of the student's hidden states, then of its
    /// attention distributions, with its central difference.
    fn student_layers(
        &mut self,
        s: &OwnedLayers,
        grads: &ExtraGrads,
        report: &mut GradientCheck,
    ) -> Result<()> {
        let eps = self.eps;
        let mut s = s.clone();
        for attention in [false, true] {
            let n = if attention { s.attention.len() } else { s.hidden.len() };
            for k in 0..n {
                let len = if attention { s.attention[k].len() } else { s.hidden[k].len() };
                for i in 0..len {
                    // Real positions only: padding is not part of any loss.
                    if !s.is_real(attention, i) {
                        continue;
                    }
                    let orig = s.buffer_mut(attention, k)[i];
                    s.buffer_mut(attention, k)[i] = orig + eps;
                    let up = self.value(self.params, Some(&s))?;
                    s.buffer_mut(attention, k)[i] = orig - eps;
                    let down = self.value(self.params, Some(&s))?;
                    s.buffer_mut(attention, k)[i] = orig;
                    let g = if attention { &grads.attention } else { &grads.hidden };
                    report.note(
                        if attention { "attention" } else { "hidden states" },
                        i,
                        grad_at(g, k, i),
                        (up - down) / (2.0 * eps),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LossOutput, Params};

    /// `Σ wᵢ (zᵢ·hᵢ-ish)`: uses both logits and hidden, with a deliberately wrong variant.
    struct Probe {
        wrong: bool,
    }

    impl Loss for Probe {
        const NAME: &'static str = "probe";
        const SUMMARY: &'static str = "test";
        fn create(_: &Params) -> Result<Self> {
            Ok(Probe { wrong: false })
        }
        fn needs_teacher(&self) -> bool {
            false
        }
        fn compute(&mut self, x: &LossInput) -> Result<LossOutput> {
            let v: f32 = x.student_logits.iter().map(|z| z * z * z).sum::<f32>()
                + x.student_hidden.iter().map(|h| h.sin()).sum::<f32>();
            let mut g: Vec<f32> = x.student_logits.iter().map(|z| 3.0 * z * z).collect();
            if self.wrong {
                g[3] += 0.5;
            }
            Ok(LossOutput {
                value: v,
                grad_logits: g,
                grad_hidden: Some(x.student_hidden.iter().map(|h| h.cos()).collect()),
            })
        }
    }

    #[test]
    fn a_right_gradient_passes_and_a_wrong_one_is_located() {
        let s = SampleBatch::random(3, 4, 2, 1.0, 9);
        let good = gradient_check(&mut Probe { wrong: false }, &s.input(0, 1), 1e-2).unwrap();
        assert!(good.max_error < 1e-3, "{good}");
        assert_eq!(good.checked, 3 * 4 + 3 * 2);
        let bad = gradient_check(&mut Probe { wrong: true }, &s.input(0, 1), 1e-2).unwrap();
        assert_eq!((bad.buffer, bad.index), ("logits", 3), "{bad}");
        assert!(bad.max_error > 0.1, "{bad}");
    }

    #[test]
    fn sample_batches_are_reproducible_and_valid() {
        let a = SampleBatch::random(5, 6, 2, 3.0, 4);
        let b = SampleBatch::random(5, 6, 2, 3.0, 4);
        assert_eq!(a.student_logits, b.student_logits);
        assert_ne!(a.student_logits, SampleBatch::random(5, 6, 2, 3.0, 5).student_logits);
        assert!(a.student_logits.iter().all(|v| v.abs() <= 3.0));
        a.input(0, 1).check().unwrap();
        // A teacher of another width: its hidden states are sized by it, the student's not.
        let w = a.with_teacher_width(7, 1.0, 9);
        let x = w.input(0, 1);
        assert_eq!(
            (x.student_hidden.len(), x.teacher_hidden.map(<[f32]>::len), x.teacher_hidden_dim),
            (10, Some(35), 7)
        );
        x.check().unwrap();
    }

    #[test]
    fn a_parameter_error_names_its_key() {
        fn create(t: f32) -> Result<()> {
            crate::ensure_param!(t > 0.0, "temperature", "must be a positive number, found {t}");
            Ok(())
        }
        assert!(create(1.0).is_ok());
        assert_eq!(create(-1.0).unwrap_err().message(), "`temperature`: must be a positive number, found -1");
    }
}
