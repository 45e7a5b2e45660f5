//! The parameters an SDK loss declares ([`kdx_sdk::ParamDecl`]), owned by the host: created
//! here (a linear map exactly as the built-in layers are, from its seed), trained by the
//! stage's optimizer, checkpointed as `loss<i>.NAME`, and — for the declaration the loss
//! names as its projection — held as a [`HiddenProjection`] that retrieval, `kdx embed` and
//! the exported model use.

use anyhow::{Context, Result};
use kdx_sdk::ParamDecl;
use rand::SeedableRng;

use crate::model::{Grad, Param};
use crate::nn::{HiddenProjection, Linear};

/// A declared parameter's place: in the projection, or among the others.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    /// The projection's weight and bias.
    ProjectionW,
    ProjectionB,
    /// Tensor `k` of [`LossParams::others`].
    Other(usize),
}

/// The declared parameters of one loss, in declaration order (a linear map is two: `.w`,
/// then `.b`).
#[derive(Default)]
pub struct LossParams {
    decls: Vec<ParamDecl>,
    projection: HiddenProjection,
    others: Vec<Param>,
    slots: Vec<Slot>,
}

impl LossParams {
    /// Creates the parameters `decls` declare; `projection` is the index of the linear
    /// declaration that maps student hidden vectors into the teacher's space.
    pub fn new(decls: Vec<ParamDecl>, projection: Option<usize>) -> Result<LossParams> {
        let mut p = LossParams::default();
        for (i, d) in decls.iter().enumerate() {
            let name = d.name();
            anyhow::ensure!(
                !name.is_empty() && !decls[..i].iter().any(|o| o.name() == name),
                "parameter {i}: the name `{name}` is empty or declared twice"
            );
            match d {
                ParamDecl::Linear { name, input, output, seed } => {
                    anyhow::ensure!(
                        *input > 0 && *output > 0,
                        "parameter `{name}`: a linear map {input} → {output}"
                    );
                    let l = Linear::new(name, *input, *output, &mut rand::rngs::StdRng::seed_from_u64(*seed));
                    if projection == Some(i) {
                        p.projection.linear = Some(l);
                        p.slots.extend([Slot::ProjectionW, Slot::ProjectionB]);
                    } else {
                        p.slots.extend([Slot::Other(p.others.len()), Slot::Other(p.others.len() + 1)]);
                        p.others.extend([l.w, l.b]);
                    }
                }
                ParamDecl::Tensor { name, shape, values, decay } => {
                    let n: usize = shape.iter().product();
                    anyhow::ensure!(
                        values.len() == n,
                        "parameter `{name}`: shape {shape:?} holds {n} values, {} were given",
                        values.len()
                    );
                    let mut t = Param::zeros(name.clone(), shape, *decay);
                    t.data.copy_from_slice(values);
                    p.slots.push(Slot::Other(p.others.len()));
                    p.others.push(t);
                }
            }
        }
        if let Some(i) = projection {
            anyhow::ensure!(
                matches!(decls.get(i), Some(ParamDecl::Linear { .. })),
                "the projection is not one of the loss's linear parameters"
            );
        }
        p.decls = decls;
        Ok(p)
    }

    /// The declarations these parameters were made from.
    pub fn decls(&self) -> &[ParamDecl] {
        &self.decls
    }

    /// The parameters, in declaration order.
    pub fn params(&self) -> Vec<&Param> {
        let lin = self.projection.linear.as_ref();
        self.slots
            .iter()
            .filter_map(|s| match s {
                Slot::ProjectionW => lin.map(|l| &l.w),
                Slot::ProjectionB => lin.map(|l| &l.b),
                Slot::Other(k) => self.others.get(*k),
            })
            .collect()
    }

    /// The same, mutably.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let (mut w, mut b) = match self.projection.linear.as_mut() {
            Some(l) => (Some(&mut l.w), Some(&mut l.b)),
            None => (None, None),
        };
        let mut others: Vec<Option<&mut Param>> = self.others.iter_mut().map(Some).collect();
        self.slots
            .iter()
            .filter_map(|s| match s {
                Slot::ProjectionW => w.take(),
                Slot::ProjectionB => b.take(),
                Slot::Other(k) => others.get_mut(*k).and_then(Option::take),
            })
            .collect()
    }

    /// The current values, in declaration order.
    pub fn values(&self) -> Vec<&[f32]> {
        self.params().into_iter().map(|p| p.data.as_slice()).collect()
    }

    /// Stores the gradients a loss returned (`None` or missing: zero).
    pub fn set_grads(&mut self, grads: Vec<Option<Vec<f32>>>) -> Result<()> {
        let mut grads = grads.into_iter();
        for p in self.params_mut() {
            p.grad = match grads.next().flatten() {
                Some(g) => {
                    anyhow::ensure!(
                        g.len() == p.numel(),
                        "the gradient of `{}` has {} values, expected {}",
                        p.name,
                        g.len(),
                        p.numel()
                    );
                    Grad::Dense(g)
                }
                None => Grad::None,
            };
        }
        Ok(())
    }

    /// The projection, when the loss named one.
    pub fn projection(&self) -> Option<&HiddenProjection> {
        self.projection.linear.is_some().then_some(&self.projection)
    }
}

/// Declares a loss's parameters once: a later stage that declares the same (or none) keeps
/// the values trained so far; another declaration is refused (the parameters cannot change shape
/// between stages of one run).
pub fn declare(
    current: &mut Option<LossParams>,
    decls: Vec<ParamDecl>,
    projection: Option<usize>,
    who: &str,
) -> Result<()> {
    match current {
        // The same, or none in a stage that does not need them (no teacher): keep them.
        Some(p) if p.decls == decls || decls.is_empty() => Ok(()),
        Some(_) => anyhow::bail!("{who} declared other parameters than in the previous stage"),
        None => {
            *current =
                Some(LossParams::new(decls, projection).with_context(|| format!("{who}'s parameters"))?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_parameters_keep_their_order_and_a_linear_starts_as_a_built_in_one() {
        let decls = vec![
            ParamDecl::tensor("alpha", &[2], vec![0.5, 1.5]),
            ParamDecl::linear("proj", 3, 4, 7),
            ParamDecl::linear("aux", 2, 2, 1),
        ];
        let mut p = LossParams::new(decls, Some(1)).unwrap();
        let names: Vec<&str> = p.params().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["alpha", "proj.w", "proj.b", "aux.w", "aux.b"]);
        let built_in = Linear::new("proj", 3, 4, &mut rand::rngs::StdRng::seed_from_u64(7));
        assert_eq!(p.params()[1].data, built_in.w.data);
        assert_eq!(p.projection().and_then(|h| h.linear.as_ref()).map(|l| &l.b.data), Some(&built_in.b.data));
        assert_eq!(p.values()[0], &[0.5, 1.5]);
        p.set_grads(vec![None, Some(vec![1.0; 12])]).unwrap();
        assert!(matches!(p.params()[0].grad, Grad::None) && matches!(p.params()[1].grad, Grad::Dense(_)));
        assert!(p.set_grads(vec![Some(vec![1.0])]).is_err(), "a gradient of the wrong size");
        assert_eq!(p.params_mut().len(), 5);
        assert!(LossParams::new(vec![ParamDecl::tensor("a", &[2], vec![1.0])], None).is_err());
        assert!(LossParams::new(vec![ParamDecl::tensor("a", &[1], vec![1.0])], Some(0)).is_err());
    }
}
