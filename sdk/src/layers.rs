//! What ABI 2 adds to a batch ([`Extra`]) and to a loss's result ([`ExtraGrads`]): the
//! loss's own parameters and, for a loss that needs them, per-layer states.

/// One model's per-layer states for a batch. Matrices are row-major.
#[derive(Clone, Debug)]
pub struct Layers<'a> {
    /// Real tokens of each sequence; positions from there to `seq` are padding.
    pub lens: &'a [usize],
    /// Padded length T.
    pub seq: usize,
    /// Width of a hidden state.
    pub width: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// L + 1 hidden states (0: the embeddings' output), each `B × T × width`.
    pub hidden: Vec<&'a [f32]>,
    /// L attention distributions, each `B × heads × T × T` (query rows, key columns; padded
    /// keys hold 0).
    pub attention: Vec<&'a [f32]>,
}

impl Layers<'_> {
    /// Sequences B.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Real tokens in the batch.
    pub fn tokens(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Whether position `i` of sequence `b` is a real token.
    pub fn is_real(&self, b: usize, i: usize) -> bool {
        i < self.lens[b]
    }
}

/// What a batch carries beyond [`crate::LossInput`] (ABI 2).
#[derive(Clone, Debug, Default)]
pub struct Extra<'a> {
    /// Current values of the parameters the loss declared ([`crate::Loss::parameters`]), in
    /// declaration order (a linear map is two: `.w`, then `.b`).
    pub params: Vec<&'a [f32]>,
    /// The student's per-layer states, for a loss that [`crate::Loss::needs_layers`].
    pub student_layers: Option<Layers<'a>>,
    /// The teacher's, when the loss also needs the teacher.
    pub teacher_layers: Option<Layers<'a>>,
}

impl<'a> Extra<'a> {
    /// The student's layers, or an error naming what is missing.
    pub fn student_layers(&self) -> crate::Result<&Layers<'a>> {
        self.student_layers.as_ref().ok_or_else(|| {
            crate::Error::msg("this loss reads per-layer states, and the student has none (needs_layers?)")
        })
    }

    /// The teacher's layers, or an error naming what is missing.
    pub fn teacher_layers(&self) -> crate::Result<&Layers<'a>> {
        self.teacher_layers.as_ref().ok_or_else(|| {
            crate::Error::msg("this loss reads the teacher's per-layer states, and there are none")
        })
    }

    /// Parameter `i`, or an error when the loss declared fewer.
    pub fn param(&self, i: usize) -> crate::Result<&'a [f32]> {
        self.params.get(i).copied().ok_or_else(|| {
            crate::Error::msg(format!("parameter {i} was not declared ({} are)", self.params.len()))
        })
    }
}

/// Gradients beyond the student's outputs. An empty vector, or `None` in a slot, is a zero
/// gradient.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtraGrads {
    /// Per declared parameter, in declaration order.
    pub params: Vec<Option<Vec<f32>>>,
    /// Per hidden state of the student (`B × T × width` each).
    pub hidden: Vec<Option<Vec<f32>>>,
    /// Per attention distribution of the student (`B × heads × T × T` each).
    pub attention: Vec<Option<Vec<f32>>>,
}

impl ExtraGrads {
    /// Adds `g` into hidden state `k`'s gradient.
    pub fn add_hidden(&mut self, k: usize, g: &[f32]) {
        add_into(&mut self.hidden, k, g)
    }

    /// Adds `g` into attention distribution `k`'s gradient.
    pub fn add_attention(&mut self, k: usize, g: &[f32]) {
        add_into(&mut self.attention, k, g)
    }

    /// Checks every gradient's size against what it is the gradient of.
    pub fn check(&self, x: &Extra) -> crate::Result<()> {
        let sized = |what: &str, g: &[Option<Vec<f32>>], want: &[usize]| -> crate::Result<()> {
            crate::ensure!(
                g.len() <= want.len(),
                "the loss returned {} {what} gradients for {}",
                g.len(),
                want.len()
            );
            for (k, (g, &n)) in g.iter().zip(want).enumerate() {
                if let Some(g) = g {
                    crate::ensure!(
                        g.len() == n,
                        "the loss returned {} values for {what} {k}'s gradient, expected {n}",
                        g.len()
                    );
                }
            }
            Ok(())
        };
        sized("parameter", &self.params, &x.params.iter().map(|p| p.len()).collect::<Vec<_>>())?;
        match &x.student_layers {
            Some(s) => {
                sized("hidden-state", &self.hidden, &s.hidden.iter().map(|h| h.len()).collect::<Vec<_>>())?;
                sized(
                    "attention",
                    &self.attention,
                    &s.attention.iter().map(|a| a.len()).collect::<Vec<_>>(),
                )?;
            }
            None => crate::ensure!(
                self.hidden.iter().chain(&self.attention).all(Option::is_none),
                "the loss returned layer gradients without layer states"
            ),
        }
        Ok(())
    }

    /// Adds `g` into parameter `k`'s gradient.
    pub fn add_param(&mut self, k: usize, g: &[f32]) {
        add_into(&mut self.params, k, g)
    }
}

fn add_into(slots: &mut Vec<Option<Vec<f32>>>, k: usize, g: &[f32]) {
    if slots.len() <= k {
        slots.resize(k + 1, None);
    }
    match &mut slots[k] {
        Some(acc) => acc.iter_mut().zip(g).for_each(|(a, b)| *a += b),
        slot => *slot = Some(g.to_vec()),
    }
}
