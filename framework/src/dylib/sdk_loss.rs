//! Any [`kdx_sdk::Loss`] as a framework loss, in-tree.

use std::panic::{catch_unwind, AssertUnwindSafe};

use kdx_recipe::Diagnostic;

use crate::loss::{Loss, LossInput, LossOutput};
use crate::registry::BuildCtx;

/// Any [`kdx_sdk::Loss`] as a framework [`Loss`], called directly (no library, no C ABI):
/// how the source of a plugin crate also compiles in-tree. A panic inside is caught and
/// reported as an error, as it is for a dynamic library.
pub struct SdkLoss<T: kdx_sdk::Loss> {
    inner: T,
    failed: Option<String>,
}

impl<T: kdx_sdk::Loss> SdkLoss<T> {
    /// Wraps a loss.
    pub fn new(inner: T) -> SdkLoss<T> {
        SdkLoss { inner, failed: None }
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
}

impl<T: kdx_sdk::Loss> Loss for SdkLoss<T> {
    fn needs_teacher(&self) -> bool {
        self.inner.needs_teacher()
    }

    fn needs_labels(&self) -> bool {
        self.inner.needs_labels()
    }

    fn needs_teacher_hidden(&self) -> bool {
        self.inner.needs_teacher_hidden()
    }

    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        if let Some(msg) = &self.failed {
            anyhow::bail!("loss `{}` panicked earlier ({msg}) and is not called again", T::NAME);
        }
        x.check().map_err(|e| anyhow::anyhow!("loss `{}`: bad input: {e}", T::NAME))?;
        let out =
            match super::boundary::plugin_call(|| catch_unwind(AssertUnwindSafe(|| self.inner.compute(x)))) {
                Ok(r) => r.map_err(|e| anyhow::anyhow!("loss `{}`: {e}", T::NAME))?,
                Err(p) => {
                    let msg = kdx_sdk::export::panic_message(&*p);
                    self.failed = Some(msg.clone());
                    anyhow::bail!("loss `{}` panicked: {msg}", T::NAME)
                }
            };
        out.check(x).map_err(|e| anyhow::anyhow!("loss `{}`: {e}", T::NAME))?;
        Ok(out)
    }

    fn language_state(&self) -> Option<Vec<f32>> {
        self.inner.language_state()
    }
}
