//! A loss living in a plugin library, called through the library's C functions.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use kdx_recipe::{Diagnostic, KeyPath, RecipeDoc};
use kdx_sdk::abi::{self, RawLossInput, RawLossOutput};

use super::boundary::parameter_error;
use super::library::PluginLibrary;
use crate::loss::{Loss, LossInput, LossOutput};

/// A loss living in a plugin library; calls through the library's C functions.
pub struct DylibLoss {
    pub(super) handle: *mut c_void,
    pub(super) flags: u32,
    /// Set when the plugin panicked: it is not called again.
    pub(super) failed: Option<String>,
    /// Languages of the last batch (sizes the language-state buffer).
    pub(super) n_langs: usize,
    pub(super) plugin: Arc<PluginLibrary>,
    // Keeps the code behind `handle` loaded for as long as this loss lives.
    pub(super) _lib: Arc<libloading::Library>,
}

// SAFETY: the plugin's loss type is `Send` (`kdx_sdk::Loss: Send`), and the handle is used by
// one thread at a time (`&mut self`).
unsafe impl Send for DylibLoss {}

impl DylibLoss {
    /// The library the loss comes from.
    pub fn library(&self) -> &Arc<PluginLibrary> {
        &self.plugin
    }

    fn what(&self) -> String {
        format!("loss plugin `{}` ({})", self.plugin.name, self.plugin.path.display())
    }
}

impl Drop for DylibLoss {
    fn drop(&mut self) {
        // SAFETY: the handle came from this library's `create` and is destroyed once; the
        // library is still loaded (`_lib` is dropped after this).
        unsafe { (self.plugin.api.destroy)(self.handle) };
    }
}

impl Loss for DylibLoss {
    fn needs_teacher(&self) -> bool {
        self.flags & abi::NEEDS_TEACHER != 0
    }

    fn needs_labels(&self) -> bool {
        self.flags & abi::NEEDS_LABELS != 0
    }

    fn needs_teacher_hidden(&self) -> bool {
        self.flags & abi::NEEDS_TEACHER_HIDDEN != 0
    }

    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        if let Some(msg) = &self.failed {
            anyhow::bail!("{} panicked earlier ({msg}) and is not called again", self.what());
        }
        x.check().map_err(|e| anyhow::anyhow!("{}: bad input: {e}", self.what()))?;
        let stats = x.stats;
        let (b, c, h) = (x.batch, x.classes, x.student_hidden_dim);
        let ptr = |s: Option<&[f32]>| s.map_or(std::ptr::null(), <[f32]>::as_ptr);
        let raw = RawLossInput {
            batch: b,
            classes: c,
            student_logits: x.student_logits.as_ptr(),
            student_hidden: x.student_hidden.as_ptr(),
            student_hidden_dim: h,
            teacher_logits: ptr(x.teacher_logits),
            teacher_hidden: ptr(x.teacher_hidden),
            teacher_hidden_dim: x.teacher_hidden_dim,
            labels: x.labels.map_or(std::ptr::null(), <[u32]>::as_ptr),
            langs: x.langs.as_ptr(),
            weights: x.weights.as_ptr(),
            step: x.step,
            total_steps: x.total_steps,
            stats: stats.as_ptr(),
            n_langs: stats.len(),
        };
        self.n_langs = stats.len();
        let mut grad_logits = vec![0f32; b * c];
        let mut grad_hidden = vec![0f32; b * h];
        let mut out = RawLossOutput {
            value: 0.0,
            has_grad_hidden: 0,
            grad_logits: grad_logits.as_mut_ptr(),
            grad_hidden: grad_hidden.as_mut_ptr(),
        };
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: every buffer is sized as `raw` says (checked above) and outlives the call.
        let status = unsafe { (self.plugin.api.compute)(self.handle, &raw, &mut out, &mut err) };
        match status {
            abi::STATUS_OK => Ok(LossOutput {
                value: out.value,
                grad_logits,
                grad_hidden: (out.has_grad_hidden != 0).then_some(grad_hidden),
            }),
            abi::STATUS_PANIC => {
                let msg = self.plugin.take_message(err);
                self.failed = Some(msg.clone());
                anyhow::bail!("{} panicked: {msg}", self.what())
            }
            _ => anyhow::bail!("{}: {}", self.what(), self.plugin.take_message(err)),
        }
    }

    fn language_state(&self) -> Option<Vec<f32>> {
        if self.failed.is_some() {
            return None;
        }
        let mut cap = self.n_langs.max(64);
        for _ in 0..2 {
            let mut buf = vec![0f32; cap];
            let mut len = 0usize;
            let mut err: *mut c_char = std::ptr::null_mut();
            // SAFETY: `buf` holds `cap` values.
            let status = unsafe {
                (self.plugin.api.language_state)(self.handle, buf.as_mut_ptr(), cap, &mut len, &mut err)
            };
            if status != abi::STATUS_OK {
                let msg = self.plugin.take_message(err);
                eprintln!("warning: {}: language state: {msg}", self.what());
                return None;
            }
            if len == abi::NO_LANGUAGE_STATE {
                return None;
            }
            if len <= cap {
                buf.truncate(len);
                return Some(buf);
            }
            cap = len;
        }
        None
    }
}

impl PluginLibrary {
    /// Creates a loss from its parameters (a JSON object). The error is the plugin's message;
    /// a panic inside the plugin is reported as one.
    pub fn create_loss(self: &Arc<Self>, params_json: &str) -> Result<DylibLoss, String> {
        let mut handle: *mut c_void = std::ptr::null_mut();
        let mut flags = 0u32;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid pointers to locals; the JSON outlives the call.
        let status = unsafe {
            (self.api.create)(params_json.as_ptr(), params_json.len(), &mut handle, &mut flags, &mut err)
        };
        match status {
            abi::STATUS_OK if !handle.is_null() => Ok(DylibLoss {
                handle,
                flags,
                failed: None,
                n_langs: 0,
                plugin: self.clone(),
                _lib: self.lib.clone(),
            }),
            abi::STATUS_OK => Err("the plugin reported success but returned no loss".into()),
            abi::STATUS_PANIC => Err(format!("the plugin panicked: {}", self.take_message(err))),
            _ => Err(self.take_message(err)),
        }
    }

    /// Builds a loss for the `[[loss]]` table at `key`: `params` is the table without
    /// `plugin` and `weight`. The plugin's refusal is located at `key`.
    pub fn build_loss(
        self: &Arc<Self>,
        doc: &RecipeDoc,
        key: &KeyPath,
        params: &toml::Table,
    ) -> Result<Box<dyn Loss>, Diagnostic> {
        let json = serde_json::to_string(params)
            .map_err(|e| doc.diag(key, format!("cannot pass the parameters to the plugin: {e}"), None))?;
        match self.create_loss(&json) {
            Ok(l) => Ok(Box::new(l)),
            Err(msg) => Err(parameter_error(
                doc,
                key,
                params,
                &msg,
                &format!("loss plugin `{}` ({}): ", self.name, self.path.display()),
            )),
        }
    }
}
