//! Any [`kdx_sdk::Loss`] as a framework loss, in-tree.

use std::panic::{catch_unwind, AssertUnwindSafe};

use kdx_recipe::Diagnostic;

use super::owned_params::{declare, LossParams};
use crate::loss::{Loss, LossInput, LossOutput, Needs, Shapes};
use crate::model::{LayerGrads, LayerStates, Param};
use crate::nn::HiddenProjection;
use crate::registry::BuildCtx;

/// Any [`kdx_sdk::Loss`] as a framework [`Loss`], called directly (no library, no C ABI):
/// how the source of a plugin crate also compiles in-tree. A panic inside is caught and
/// reported as an error, as it is for a dynamic library.
pub struct SdkLoss<T: kdx_sdk::Loss> {
    inner: T,
    failed: Option<String>,
    params: Option<LossParams>,
}

impl<T: kdx_sdk::Loss> SdkLoss<T> {
    /// Wraps a loss.
    pub fn new(inner: T) -> SdkLoss<T> {
        SdkLoss { inner, failed: None, params: None }
    }

    /// Creates the loss from JSON parameters (an object), as a dynamic library would.
    pub fn from_json(params_json: &str) -> anyhow::Result<SdkLoss<T>> {
        let r = super::boundary::plugin_call(|| {
            catch_unwind(AssertUnwindSafe(|| T::create(&kdx_sdk::Params::from_json(params_json))))
        });
        match r {
            Ok(Ok(l)) => Ok(SdkLoss::new(l)),
            Ok(Err(e)) => anyhow::bail!("{e}"),
            Err(p) => anyhow::bail!("the loss panicked: {}", kdx_sdk::export::panic_message(&*p)),
        }
    }

    /// The wrapped loss.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The registry's builder (used by [`register_sdk_loss!`](crate::register_sdk_loss)).
    pub fn build(ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
        let json = serde_json::to_string(&ctx.params).map_err(|e| ctx.error("", e.to_string()))?;
        let params = ctx.params.as_table().cloned().unwrap_or_default();
        SdkLoss::<T>::from_json(&json)
            .map(|l| Box::new(l) as Box<dyn Loss>)
            .map_err(|e| super::boundary::parameter_error(ctx.doc, &ctx.key, &params, &format!("{e:#}"), ""))
    }

    /// Calls into the loss: an error is prefixed with its name; a panic is reported once and
    /// the loss is not called again.
    fn call<R>(&mut self, what: &str, f: impl FnOnce(&mut T) -> kdx_sdk::Result<R>) -> anyhow::Result<R> {
        if let Some(msg) = &self.failed {
            anyhow::bail!("loss `{}` panicked earlier ({msg}) and is not called again", T::NAME);
        }
        let inner = &mut self.inner;
        match super::boundary::plugin_call(|| catch_unwind(AssertUnwindSafe(|| f(inner)))) {
            Ok(r) => r.map_err(|e| anyhow::anyhow!("loss `{}`{what}: {e}", T::NAME)),
            Err(p) => {
                let msg = kdx_sdk::export::panic_message(&*p);
                self.failed = Some(msg.clone());
                anyhow::bail!("loss `{}` panicked: {msg}", T::NAME)
            }
        }
    }

    /// One batch through [`kdx_sdk::Loss::compute_with`].
    fn run(
        &mut self,
        x: &LossInput,
        student: Option<&LayerStates>,
        teacher: Option<&LayerStates>,
    ) -> anyhow::Result<(LossOutput, LayerGrads)> {
        x.check().map_err(|e| anyhow::anyhow!("loss `{}`: bad input: {e}", T::NAME))?;
        let mut params = self.params.take();
        let r = (|| {
            let extra = kdx_sdk::Extra {
                params: params.as_ref().map(LossParams::values).unwrap_or_default(),
                student_layers: student.map(layers_view),
                teacher_layers: teacher.map(layers_view),
            };
            let (out, grads) = self.call("", |l| {
                let (out, grads) = l.compute_with(x, &extra)?;
                out.check(x)?;
                grads.check(&extra)?;
                Ok((out, grads))
            })?;
            if let Some(p) = &mut params {
                p.set_grads(grads.params)?;
            }
            Ok((out, LayerGrads { hidden: grads.hidden, attention: grads.attention }))
        })();
        self.params = params;
        r
    }
}

/// A framework model's layer states as an SDK loss reads them.
pub fn layers_view(s: &LayerStates) -> kdx_sdk::Layers<'_> {
    kdx_sdk::Layers {
        lens: &s.lens,
        seq: s.seq,
        width: s.width,
        heads: s.heads,
        hidden: s.hidden.iter().map(Vec::as_slice).collect(),
        attention: s.attention.iter().map(Vec::as_slice).collect(),
    }
}

impl<T: kdx_sdk::Loss> Loss for SdkLoss<T> {
    fn needs(&self) -> Needs {
        let l = &self.inner;
        Needs {
            teacher: l.needs_teacher(),
            labels: l.needs_labels(),
            teacher_hidden: l.needs_teacher_hidden(),
            layers: l.needs_layers(),
        }
    }

    fn check_shapes(&self, shapes: &Shapes) -> anyhow::Result<()> {
        // `check` takes `&self`: a panic in it cannot leave the loss half-changed.
        let inner = &self.inner;
        match super::boundary::plugin_call(|| catch_unwind(AssertUnwindSafe(|| inner.check(shapes)))) {
            Ok(r) => r.map_err(|e| anyhow::anyhow!("{e}")),
            Err(p) => anyhow::bail!("the loss panicked: {}", kdx_sdk::export::panic_message(&*p)),
        }
    }

    fn prepare(&mut self, shapes: &Shapes) -> anyhow::Result<()> {
        let (decls, projection) = self.call(" declaring its parameters", |l| {
            let decls = l.parameters(shapes)?;
            let projection = match l.projection() {
                None => None,
                Some(name) => Some(decls.iter().position(|d| d.name() == name).ok_or_else(|| {
                    kdx_sdk::Error::msg(format!("its projection `{name}` is not a declared parameter"))
                })?),
            };
            Ok((decls, projection))
        })?;
        declare(&mut self.params, decls, projection, &format!("loss `{}`", T::NAME))
    }

    fn params(&self) -> Vec<&Param> {
        self.params.as_ref().map(LossParams::params).unwrap_or_default()
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.params.as_mut().map(LossParams::params_mut).unwrap_or_default()
    }

    fn projection(&self) -> Option<&HiddenProjection> {
        self.params.as_ref().and_then(LossParams::projection)
    }

    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        Ok(self.run(x, None, None)?.0)
    }

    fn compute_layers(
        &mut self,
        x: &LossInput,
        student: &LayerStates,
        teacher: Option<&LayerStates>,
    ) -> anyhow::Result<(LossOutput, LayerGrads)> {
        self.run(x, Some(student), teacher)
    }

    fn language_state(&self) -> anyhow::Result<Option<Vec<f32>>> {
        Ok(self.inner.language_state())
    }

    fn language_values(&self) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
        Ok(self.inner.language_values())
    }

    fn save_state(&self) -> anyhow::Result<Vec<u8>> {
        self.inner.save_state().map_err(|e| anyhow::anyhow!("loss `{}`: {e}", T::NAME))
    }

    fn load_state(&mut self, state: &[u8]) -> anyhow::Result<()> {
        self.call(" restoring its state", |l| l.load_state(state))
    }
}
