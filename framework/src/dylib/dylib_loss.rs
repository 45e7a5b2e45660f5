//! A loss living in a plugin library, called through the library's C functions.

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::Arc;

use kdx_recipe::{Diagnostic, KeyPath, RecipeDoc};
use kdx_sdk::abi::{self, RawLossInput, RawLossOutput};
use kdx_sdk::ParamDecl;

use super::boundary::parameter_error;
use super::library::{ApiV2, PluginLibrary};
use super::owned_params::{declare, LossParams};
use crate::loss::{Loss, LossInput, LossOutput, Needs, Shapes};
use crate::model::{LayerGrads, LayerStates, Param};
use crate::nn::HiddenProjection;

/// A loss living in a plugin library; calls through the library's C functions.
pub struct DylibLoss {
    pub(super) handle: *mut c_void,
    pub(super) flags: u32,
    /// Set when the plugin panicked: it is not called again.
    pub(super) failed: Option<String>,
    /// Languages of the last batch (sizes the language-state buffer).
    pub(super) n_langs: usize,
    pub(super) plugin: Arc<PluginLibrary>,
    /// The parameters it declared (ABI 2).
    pub(super) params: Option<LossParams>,
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

    /// The functions of ABI 2, or an error saying the library speaks version 1.
    fn v2(&self, what: &str) -> anyhow::Result<ApiV2> {
        self.plugin
            .api
            .v2
            .ok_or_else(|| anyhow::anyhow!("{} speaks plugin ABI 1, which has no {what}", self.what()))
    }

    /// Turns a status into a result, taking the plugin's message; a panic also marks the
    /// loss as failed, so it is not called again.
    fn status(&mut self, status: i32, err: *mut c_char) -> anyhow::Result<()> {
        match status {
            abi::STATUS_OK => Ok(()),
            abi::STATUS_PANIC => {
                let msg = self.plugin.take_message(err);
                self.failed = Some(msg.clone());
                anyhow::bail!("{} panicked: {msg}", self.what())
            }
            _ => anyhow::bail!("{}: {}", self.what(), self.plugin.take_message(err)),
        }
    }

    fn not_failed(&self) -> anyhow::Result<()> {
        match &self.failed {
            Some(msg) => anyhow::bail!("{} panicked earlier ({msg}) and is not called again", self.what()),
            None => Ok(()),
        }
    }

    /// One batch through ABI 2's compute: parameters and layer states in, their gradients out.
    fn compute_v2(
        &mut self,
        x: &LossInput,
        student: Option<&LayerStates>,
        teacher: Option<&LayerStates>,
    ) -> anyhow::Result<(LossOutput, LayerGrads)> {
        self.not_failed()?;
        let api = self.v2("compute with parameters or layers")?;
        x.check().map_err(|e| anyhow::anyhow!("{}: bad input: {e}", self.what()))?;
        let (b, c, h) = (x.batch, x.classes, x.student_hidden_dim);
        self.n_langs = x.stats.len();
        let sizes: Vec<usize> = self.params().iter().map(|p| p.numel()).collect();
        let values: Vec<*const f32> = self.params().iter().map(|p| p.data.as_ptr()).collect();
        let (s_raw, s_ptrs) = student.map(RawLayersOwned::new).unzip();
        let (t_raw, t_ptrs) = teacher.map(RawLayersOwned::new).unzip();
        let raw = abi::RawLossInputV2 {
            base: raw_input(x),
            params: values.as_ptr(),
            n_params: values.len(),
            student_layers: s_raw.as_ref().map_or(std::ptr::null(), |r| r as *const _),
            teacher_layers: t_raw.as_ref().map_or(std::ptr::null(), |r| r as *const _),
        };
        let (mut grad_logits, mut grad_hidden) = (vec![0f32; b * c], vec![0f32; b * h]);
        let mut slots_p = vec![std::ptr::null::<f32>(); values.len()];
        let mut slots_h = vec![std::ptr::null::<f32>(); student.map_or(0, |s| s.hidden.len())];
        let mut slots_a = vec![std::ptr::null::<f32>(); student.map_or(0, |s| s.attention.len())];
        let mut out = abi::RawLossOutputV2 {
            base: RawLossOutput {
                value: 0.0,
                has_grad_hidden: 0,
                grad_logits: grad_logits.as_mut_ptr(),
                grad_hidden: grad_hidden.as_mut_ptr(),
            },
            grad_params: slots_p.as_mut_ptr(),
            grad_hidden_states: slots_h.as_mut_ptr(),
            grad_attention: slots_a.as_mut_ptr(),
        };
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: every buffer and pointer array is sized as `raw` says and outlives the call.
        let status = unsafe { (api.compute)(self.handle, &raw, &mut out, &mut err) };
        drop((s_ptrs, t_ptrs));
        self.status(status, err)?;
        // Empty slots at the end are left out, as a loss called in-tree leaves them.
        let copy_out = |slots: &[*const f32], len: &dyn Fn(usize) -> usize| -> Vec<Option<Vec<f32>>> {
            let used = slots.iter().rposition(|p| !p.is_null()).map_or(0, |k| k + 1);
            let read_slot = |k: usize, p: *const f32| {
                // SAFETY: the plugin pointed each non-null slot at as many values as the
                // gradient's subject holds, valid until its next call on this handle (now).
                unsafe { std::slice::from_raw_parts(p, len(k)) }.to_vec()
            };
            slots[..used].iter().enumerate().map(|(k, &p)| (!p.is_null()).then(|| read_slot(k, p))).collect()
        };
        let param_grads = copy_out(&slots_p, &|k| sizes[k]);
        let grads = match student {
            Some(s) => {
                let (hs, att) = (s.lens.len() * s.seq * s.width, s.lens.len() * s.heads * s.seq * s.seq);
                LayerGrads { hidden: copy_out(&slots_h, &|_| hs), attention: copy_out(&slots_a, &|_| att) }
            }
            None => LayerGrads::default(),
        };
        if let Some(p) = &mut self.params {
            p.set_grads(param_grads).map_err(|e| anyhow::anyhow!("{}: {e}", self.what()))?;
        }
        let has_hidden = out.base.has_grad_hidden != 0;
        Ok((
            LossOutput { value: out.base.value, grad_logits, grad_hidden: has_hidden.then_some(grad_hidden) },
            grads,
        ))
    }
}

/// ABI 1's view of a batch (the pointers borrow from `x`).
fn raw_input(x: &LossInput) -> RawLossInput {
    let ptr = |s: Option<&[f32]>| s.map_or(std::ptr::null(), <[f32]>::as_ptr);
    RawLossInput {
        batch: x.batch,
        classes: x.classes,
        student_logits: x.student_logits.as_ptr(),
        student_hidden: x.student_hidden.as_ptr(),
        student_hidden_dim: x.student_hidden_dim,
        teacher_logits: ptr(x.teacher_logits),
        teacher_hidden: ptr(x.teacher_hidden),
        teacher_hidden_dim: x.teacher_hidden_dim,
        labels: x.labels.map_or(std::ptr::null(), <[u32]>::as_ptr),
        langs: x.langs.as_ptr(),
        weights: x.weights.as_ptr(),
        step: x.step,
        total_steps: x.total_steps,
        stats: x.stats.as_ptr(),
        n_langs: x.stats.len(),
    }
}

/// The pointer arrays a [`abi::RawLayers`] points into: kept alive for the call.
struct RawLayersOwned(Vec<*const f32>, Vec<*const f32>);

impl RawLayersOwned {
    fn new(s: &LayerStates) -> (abi::RawLayers, RawLayersOwned) {
        let owned = RawLayersOwned(
            s.hidden.iter().map(|v| v.as_ptr()).collect(),
            s.attention.iter().map(|v| v.as_ptr()).collect(),
        );
        let raw = abi::RawLayers {
            batch: s.lens.len(),
            seq: s.seq,
            width: s.width,
            heads: s.heads,
            lens: s.lens.as_ptr(),
            hidden: owned.0.as_ptr(),
            n_hidden: owned.0.len(),
            attention: owned.1.as_ptr(),
            n_attention: owned.1.len(),
        };
        (raw, owned)
    }
}

/// Shapes as the C ABI passes them; the strings they point to live in `.1`.
fn raw_shapes(s: &Shapes) -> (abi::RawShapes, Vec<CString>) {
    let mut strings = Vec::new();
    let mut layers = |l: &Option<kdx_sdk::LayerShape>| match l {
        None => abi::RawLayerShape {
            present: 0,
            layers: 0,
            width: 0,
            heads: 0,
            max_len: 0,
            tokenizer: std::ptr::null(),
        },
        Some(l) => {
            let c = CString::new(l.tokenizer.replace('\0', " ")).unwrap_or_default();
            // A CString's buffer does not move when the CString does.
            let ptr = c.as_ptr();
            strings.push(c);
            abi::RawLayerShape {
                present: 1,
                layers: l.layers,
                width: l.width,
                heads: l.heads,
                max_len: l.max_len,
                tokenizer: ptr,
            }
        }
    };
    let raw = abi::RawShapes {
        classes: s.classes,
        student_hidden_dim: s.student_hidden_dim.unwrap_or(0),
        teacher_hidden_dim: s.teacher_hidden_dim.unwrap_or(0),
        student_layers: layers(&s.student_layers),
        teacher_layers: layers(&s.teacher_layers),
    };
    (raw, strings)
}

/// A declaration as the plugin stored it, copied into the host's type.
///
/// # Safety
/// `d`'s pointers are valid as the ABI says (until the plugin's next call on the handle).
unsafe fn decl_from_raw(d: &abi::RawParamDecl) -> anyhow::Result<ParamDecl> {
    anyhow::ensure!(!d.name.is_null(), "a parameter declaration without a name");
    // SAFETY: forwarded to the caller.
    let (name, shape) = unsafe {
        let name =
            CStr::from_ptr(d.name).to_str().map_err(|_| anyhow::anyhow!("a parameter name is not UTF-8"))?;
        anyhow::ensure!(d.ndim == 0 || !d.shape.is_null(), "parameter `{name}` has no shape");
        let shape =
            if d.ndim == 0 { Vec::new() } else { std::slice::from_raw_parts(d.shape, d.ndim).to_vec() };
        (name.to_string(), shape)
    };
    match d.init {
        abi::INIT_LINEAR => {
            let [input, output] = shape[..] else {
                anyhow::bail!("linear parameter `{name}` has shape {shape:?}, not [input, output]")
            };
            Ok(ParamDecl::Linear { name, input, output, seed: d.seed })
        }
        abi::INIT_VALUES => {
            let n: usize = shape.iter().product();
            anyhow::ensure!(n == 0 || !d.values.is_null(), "parameter `{name}` has no values");
            let values = match n {
                0 => Vec::new(),
                // SAFETY: as above; the plugin stores as many values as the shape holds.
                _ => unsafe { std::slice::from_raw_parts(d.values, n) }.to_vec(),
            };
            Ok(ParamDecl::Tensor { name, shape, values, decay: d.decay != 0 })
        }
        other => anyhow::bail!("parameter `{name}` has an unknown initialisation ({other})"),
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
    fn needs(&self) -> Needs {
        let flag = |f: u32| self.flags & f != 0;
        Needs {
            teacher: flag(abi::NEEDS_TEACHER),
            labels: flag(abi::NEEDS_LABELS),
            teacher_hidden: flag(abi::NEEDS_TEACHER_HIDDEN),
            // Version 1 had no such flag: whatever a version-1 library sets there means nothing.
            layers: self.plugin.api.v2.is_some() && flag(abi::NEEDS_LAYERS),
        }
    }

    fn check_shapes(&self, shapes: &Shapes) -> anyhow::Result<()> {
        let Some(api) = self.plugin.api.v2 else { return Ok(()) };
        let (raw, _strings) = raw_shapes(shapes);
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: `raw` and the strings it points to outlive the call.
        let status = unsafe { (api.check)(self.handle, &raw, &mut err) };
        match status {
            abi::STATUS_OK => Ok(()),
            // The message as the plugin wrote it: a leading `key` locates it in the recipe.
            abi::STATUS_ERROR => anyhow::bail!("{}", self.plugin.take_message(err)),
            _ => anyhow::bail!("the plugin panicked: {}", self.plugin.take_message(err)),
        }
    }

    fn prepare(&mut self, shapes: &Shapes) -> anyhow::Result<()> {
        let Some(api) = self.plugin.api.v2 else { return Ok(()) };
        self.not_failed()?;
        let (raw, _strings) = raw_shapes(shapes);
        let (mut decls, mut len, mut projection) = (std::ptr::null(), 0usize, -1isize);
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid pointers to locals; `raw` outlives the call.
        let status =
            unsafe { (api.prepare)(self.handle, &raw, &mut decls, &mut len, &mut projection, &mut err) };
        self.status(status, err)?;
        anyhow::ensure!(len == 0 || !decls.is_null(), "{}: declared parameters but passed none", self.what());
        // SAFETY: the plugin stored `len` declarations, valid until its next call.
        let decls: Vec<ParamDecl> = (0..len)
            .map(|i| unsafe { decl_from_raw(&*decls.add(i)) })
            .collect::<anyhow::Result<_>>()
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.what()))?;
        let projection = usize::try_from(projection).ok();
        let who = self.what();
        declare(&mut self.params, decls, projection, &who)
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

    fn compute_layers(
        &mut self,
        x: &LossInput,
        student: &LayerStates,
        teacher: Option<&LayerStates>,
    ) -> anyhow::Result<(LossOutput, LayerGrads)> {
        self.compute_v2(x, Some(student), teacher)
    }

    fn language_values(&self) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
        let Some(api) = self.plugin.api.v2 else { return Ok(Vec::new()) };
        self.not_failed()?;
        let (mut values, mut len) = (std::ptr::null(), 0usize);
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid pointers to locals.
        let status = unsafe { (api.language_values)(self.handle, &mut values, &mut len, &mut err) };
        if status != abi::STATUS_OK {
            anyhow::bail!("{}: its language values: {}", self.what(), self.plugin.take_message(err));
        }
        anyhow::ensure!(
            len == 0 || !values.is_null(),
            "{}: {len} language values at a null pointer",
            self.what()
        );
        (0..len)
            .map(|i| {
                // SAFETY: the plugin stored `len` entries, each a name and `len` values, valid
                // until its next call.
                let v = unsafe { &*values.add(i) };
                anyhow::ensure!(!v.name.is_null(), "{}: language value {i} has no name", self.what());
                anyhow::ensure!(
                    v.len == 0 || !v.values.is_null(),
                    "{}: language value {i} has no values",
                    self.what()
                );
                // SAFETY: as above.
                let name = unsafe { CStr::from_ptr(v.name) }.to_string_lossy().into_owned();
                let data = match v.len {
                    0 => Vec::new(),
                    // SAFETY: as above.
                    n => unsafe { std::slice::from_raw_parts(v.values, n) }.to_vec(),
                };
                Ok((name, data))
            })
            .collect()
    }

    fn save_state(&self) -> anyhow::Result<Vec<u8>> {
        let Some(api) = self.plugin.api.v2 else { return Ok(Vec::new()) };
        self.not_failed()?;
        let (mut data, mut len) = (std::ptr::null(), 0usize);
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid pointers to locals.
        let status = unsafe { (api.save_state)(self.handle, &mut data, &mut len, &mut err) };
        if status != abi::STATUS_OK {
            anyhow::bail!("{}: saving its state: {}", self.what(), self.plugin.take_message(err));
        }
        anyhow::ensure!(
            len == 0 || !data.is_null(),
            "{}: a state of {len} bytes at a null pointer",
            self.what()
        );
        // SAFETY: `len` bytes at `data`, valid until the plugin's next call.
        Ok(if len == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(data, len) }.to_vec() })
    }

    fn load_state(&mut self, state: &[u8]) -> anyhow::Result<()> {
        let Some(api) = self.plugin.api.v2 else { return Ok(()) };
        self.not_failed()?;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: `state` outlives the call.
        let status = unsafe { (api.load_state)(self.handle, state.as_ptr(), state.len(), &mut err) };
        self.status(status, err)
    }

    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        if self.plugin.api.v2.is_some() {
            return Ok(self.compute_v2(x, None, None)?.0);
        }
        self.not_failed()?;
        x.check().map_err(|e| anyhow::anyhow!("{}: bad input: {e}", self.what()))?;
        let (b, c, h) = (x.batch, x.classes, x.student_hidden_dim);
        let raw = raw_input(x);
        self.n_langs = x.stats.len();
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
        self.status(status, err)?;
        Ok(LossOutput {
            value: out.value,
            grad_logits,
            grad_hidden: (out.has_grad_hidden != 0).then_some(grad_hidden),
        })
    }

    fn language_state(&self) -> anyhow::Result<Option<Vec<f32>>> {
        self.not_failed()?;
        let mut cap = self.n_langs.max(64);
        loop {
            let mut buf = vec![0f32; cap];
            let mut len = 0usize;
            let mut err: *mut c_char = std::ptr::null_mut();
            // SAFETY: `buf` holds `cap` values.
            let status = unsafe {
                (self.plugin.api.language_state)(self.handle, buf.as_mut_ptr(), cap, &mut len, &mut err)
            };
            if status != abi::STATUS_OK {
                anyhow::bail!("{}: its language state: {}", self.what(), self.plugin.take_message(err));
            }
            if len == abi::NO_LANGUAGE_STATE {
                return Ok(None);
            }
            if len <= cap {
                buf.truncate(len);
                return Ok(Some(buf));
            }
            // Too small: once more with the size the plugin asked for (a second refusal is
            // the plugin's error).
            anyhow::ensure!(
                cap < len && cap == self.n_langs.max(64),
                "{}: its language state keeps growing",
                self.what()
            );
            cap = len;
        }
    }
}

impl PluginLibrary {
    /// Creates a loss from its parameters (a JSON object). The error is the plugin's message;
    /// a panic inside the plugin is reported as one.
    pub fn create_loss(self: &Arc<Self>, params_json: &str) -> anyhow::Result<DylibLoss> {
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
                params: None,
                plugin: self.clone(),
                _lib: self.lib.clone(),
            }),
            abi::STATUS_OK => anyhow::bail!("the plugin reported success but returned no loss"),
            abi::STATUS_PANIC => anyhow::bail!("the plugin panicked: {}", self.take_message(err)),
            _ => Err(anyhow::Error::msg(self.take_message(err))),
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
            Err(e) => Err(parameter_error(
                doc,
                key,
                params,
                &format!("{e:#}"),
                &format!("loss plugin `{}` ({}): ", self.name, self.path.display()),
            )),
        }
    }
}
