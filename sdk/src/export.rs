//! What `export_loss!` expands to: the descriptor and the `extern "C"` functions it points to.
//! Every function catches panics itself — a panic unwinding out of an `extern "C"` function
//! aborts the host process — and turns them into [`STATUS_PANIC`] with the panic's message.

use std::any::Any;
use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use crate::abi::*;
use crate::{
    need_flags, Error, Extra, LangStat, LayerShape, Layers, Loss, LossInput, ParamDecl, Params, Result,
    Shapes,
};

/// What a handle points to: the loss, and the memory it hands the host (valid until the next
/// call on the handle, as the ABI says).
pub struct Handle<L> {
    loss: L,
    /// Declarations of the last `prepare`, and what their pointers point to.
    decls: Vec<RawParamDecl>,
    decl_names: Vec<CString>,
    decl_shapes: Vec<Vec<usize>>,
    decl_values: Vec<Vec<f32>>,
    /// Gradients of the last `compute_v2`.
    grads: crate::ExtraGrads,
    /// The last saved state.
    state: Vec<u8>,
    /// The last named values.
    values: Vec<(CString, Vec<f32>)>,
    raw_values: Vec<RawNamedValues>,
}

impl<L> Handle<L> {
    fn new(loss: L) -> Handle<L> {
        Handle {
            loss,
            decls: Vec::new(),
            decl_names: Vec::new(),
            decl_shapes: Vec::new(),
            decl_values: Vec::new(),
            grads: Default::default(),
            state: Vec::new(),
            values: Vec::new(),
            raw_values: Vec::new(),
        }
    }
}

/// The handle behind a host pointer.
///
/// # Safety
/// `handle` came from [`create`] for the same `L` and is used by one thread at a time.
unsafe fn handle_mut<'a, L>(handle: *mut c_void) -> Result<&'a mut Handle<L>> {
    crate::ensure!(!handle.is_null(), "the host passed a null handle");
    // SAFETY: forwarded to the caller.
    Ok(unsafe { &mut *(handle as *mut Handle<L>) })
}

/// Holds a plugin's descriptor, built on the first call of the entry point.
pub struct DescriptorCell(OnceLock<Option<SyncDescriptor>>);

/// A descriptor whose pointers are to immutable, leaked data: safe to share between threads.
pub struct SyncDescriptor(pub PluginDescriptor);

// SAFETY: the descriptor is never mutated after construction and every pointer in it refers to
// leaked, immutable strings or to functions.
unsafe impl Sync for SyncDescriptor {}
// SAFETY: as for `Sync`: nothing in it is owned by a thread or mutated.
unsafe impl Send for SyncDescriptor {}

impl DescriptorCell {
    /// An empty cell, for a `static`.
    pub const fn new() -> DescriptorCell {
        DescriptorCell(OnceLock::new())
    }

    /// The descriptor of `L` (null if it cannot be built, e.g. a name with a NUL byte).
    pub fn get<L: Loss>(&self) -> *const PluginDescriptor {
        let r = catch_unwind(|| match self.0.get_or_init(|| descriptor::<L>().map(SyncDescriptor)) {
            Some(d) => &d.0 as *const PluginDescriptor,
            None => std::ptr::null(),
        });
        r.unwrap_or_else(|p| {
            forget_payload(p);
            std::ptr::null()
        })
    }
}

/// Holds a plugin's parameter schema as a C string, made on the first call.
pub struct SchemaCell(OnceLock<Option<CString>>);

impl SchemaCell {
    /// An empty cell, for a `static`.
    pub const fn new() -> SchemaCell {
        SchemaCell(OnceLock::new())
    }

    /// `L`'s schema (null when it publishes none, or its schema cannot be made).
    pub fn get<L: Loss>(&self) -> *const c_char {
        let r = catch_unwind(|| {
            match self.0.get_or_init(|| L::params_schema().and_then(|s| CString::new(s).ok())) {
                Some(s) => s.as_ptr(),
                None => std::ptr::null(),
            }
        });
        r.unwrap_or_else(|p| {
            forget_payload(p);
            std::ptr::null()
        })
    }
}

impl Default for SchemaCell {
    fn default() -> Self {
        SchemaCell::new()
    }
}

impl Default for DescriptorCell {
    fn default() -> Self {
        DescriptorCell::new()
    }
}

fn leak_c_string(s: &str) -> Option<*const c_char> {
    Some(CString::new(s).ok()?.into_raw() as *const c_char)
}

/// The descriptor of `L` as this SDK version describes it; `None` if a string has a NUL byte.
/// (Public so that tests can build deliberately wrong descriptors.)
pub fn descriptor<L: Loss>() -> Option<PluginDescriptor> {
    Some(PluginDescriptor {
        v1: PluginDescriptorV1 {
            abi_version: ABI_VERSION,
            kind: KIND_LOSS,
            framework_version: leak_c_string(FRAMEWORK_VERSION)?,
            name: leak_c_string(L::NAME)?,
            summary: leak_c_string(L::SUMMARY)?,
            create: create::<L>,
            compute: compute::<L>,
            language_state: language_state::<L>,
            destroy: destroy::<L>,
            free_string,
        },
        check: check::<L>,
        prepare: prepare::<L>,
        compute_v2: compute_v2::<L>,
        save_state: save_state::<L>,
        load_state: load_state::<L>,
        language_values: language_values::<L>,
    })
}

/// The message of a panic payload (`panic!` with a string or a format).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// Drops a panic payload without letting a panicking destructor escape.
fn forget_payload(p: Box<dyn Any + Send>) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(p))) {
        std::mem::forget(p);
    }
}

unsafe fn store_error(out_error: *mut *mut c_char, message: &str) {
    if out_error.is_null() {
        return;
    }
    let clean = message.replace('\0', " ");
    let c = CString::new(clean).unwrap_or_default();
    // SAFETY: the host passes a valid pointer to a pointer slot (checked non-null above).
    unsafe { *out_error = c.into_raw() };
}

/// The environment variable that makes a plugin's panics print Rust's panic message (and
/// its backtrace, with `RUST_BACKTRACE=1`) as well as kdx's own report of it.
pub const PANIC_OUTPUT_VAR: &str = "KDX_PLUGIN_PANIC_OUTPUT";

/// Silences this library's panic hook, once: a panic is caught at the boundary and reported
/// by kdx with the plugin's message, so Rust's own "thread panicked at" lines (and a
/// backtrace under `RUST_BACKTRACE`) would only repeat it — unless [`PANIC_OUTPUT_VAR`] is
/// set. A `cdylib` has its own copy of the standard library, so this hook is the plugin's
/// alone; the host's is untouched.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os(PANIC_OUTPUT_VAR).is_none() {
            std::panic::set_hook(Box::new(|_| {}));
        }
    });
}

/// Runs `f`, turning an error into [`STATUS_ERROR`] and a panic into [`STATUS_PANIC`], each
/// with its message stored in `out_error`.
unsafe fn guard(out_error: *mut *mut c_char, f: impl FnOnce() -> Result<()>) -> i32 {
    quiet_panics();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => STATUS_OK,
        Ok(Err(e)) => {
            // SAFETY: as the caller's contract for out_error.
            unsafe { store_error(out_error, e.message()) };
            STATUS_ERROR
        }
        Err(p) => {
            let msg =
                catch_unwind(AssertUnwindSafe(|| panic_message(&*p))).unwrap_or_else(|_| "a panic".into());
            forget_payload(p);
            // SAFETY: as above.
            unsafe { store_error(out_error, &msg) };
            STATUS_PANIC
        }
    }
}

/// A slice from a pointer and a length; null or zero length gives an empty slice.
unsafe fn slice<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::msg(format!("the host passed no {what} buffer")));
    }
    // SAFETY: the host guarantees `len` readable values at `p` for the duration of the call.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

unsafe fn optional<'a, T>(p: *const T, len: usize) -> Option<&'a [T]> {
    if p.is_null() {
        None
    } else {
        // SAFETY: as for `slice`.
        Some(unsafe { std::slice::from_raw_parts(p, len) })
    }
}

impl<'a> LossInput<'a> {
    /// Views a raw input as slices.
    ///
    /// # Safety
    /// Every non-null pointer of `raw` must point to as many values as its sizes say, valid
    /// for `'a`.
    pub unsafe fn from_raw(raw: &RawLossInput) -> Result<LossInput<'a>> {
        let (b, c) = (raw.batch, raw.classes);
        // SAFETY: forwarded to the caller.
        unsafe {
            Ok(LossInput {
                batch: b,
                classes: c,
                student_logits: slice(raw.student_logits, b * c, "student logits")?,
                student_hidden: slice(raw.student_hidden, b * raw.student_hidden_dim, "student hidden")?,
                student_hidden_dim: raw.student_hidden_dim,
                teacher_logits: optional(raw.teacher_logits, b * c),
                teacher_hidden: optional(raw.teacher_hidden, b * raw.teacher_hidden_dim),
                teacher_hidden_dim: raw.teacher_hidden_dim,
                labels: optional(raw.labels, b),
                langs: slice(raw.langs, b, "language")?,
                weights: slice(raw.weights, b, "weight")?,
                step: raw.step,
                total_steps: raw.total_steps,
                stats: slice::<LangStat>(raw.stats, raw.n_langs, "statistics")?,
            })
        }
    }
}

/// [`CreateFn`] for `L`.
pub unsafe extern "C" fn create<L: Loss>(
    params_json: *const u8,
    params_len: usize,
    out_handle: *mut *mut c_void,
    out_flags: *mut u32,
    out_error: *mut *mut c_char,
) -> i32 {
    // SAFETY: the host passes valid out-pointers and `params_len` bytes at `params_json`.
    unsafe {
        guard(out_error, || {
            let bytes = slice(params_json, params_len, "parameter")?;
            let text = std::str::from_utf8(bytes).map_err(|_| Error::msg("the parameters are not UTF-8"))?;
            let loss = L::create(&Params::from_json(text))?;
            crate::ensure!(
                !out_handle.is_null() && !out_flags.is_null(),
                "the host passed no place for the handle"
            );
            *out_flags = need_flags(&loss);
            *out_handle = Box::into_raw(Box::new(Handle::new(loss))) as *mut c_void;
            Ok(())
        })
    }
}

/// [`ComputeFn`] for `L`.
pub unsafe extern "C" fn compute<L: Loss>(
    handle: *mut c_void,
    input: *const RawLossInput,
    output: *mut RawLossOutput,
    out_error: *mut *mut c_char,
) -> i32 {
    // SAFETY: `handle` came from `create::<L>` and is used by one thread at a time; `input`
    // and `output` are valid for the call, the output buffers sized as the input says.
    unsafe {
        guard(out_error, || {
            crate::ensure!(!input.is_null() && !output.is_null(), "null pointer passed to compute");
            let loss = &mut handle_mut::<L>(handle)?.loss;
            let raw = &*input;
            let x = LossInput::from_raw(raw)?;
            let out = loss.compute(&x)?;
            out.check(&x)?;
            write_output(&out, &mut *output)
        })
    }
}

/// Writes ABI 1's part of a result into the host's buffers.
///
/// # Safety
/// `o`'s buffers are sized as the input that `out` was checked against says.
unsafe fn write_output(out: &crate::LossOutput, o: &mut RawLossOutput) -> Result<()> {
    // SAFETY: forwarded to the caller.
    unsafe {
        crate::ensure!(
            !o.grad_logits.is_null() || out.grad_logits.is_empty(),
            "the host passed no gradient buffer"
        );
        if !out.grad_logits.is_empty() {
            std::ptr::copy_nonoverlapping(out.grad_logits.as_ptr(), o.grad_logits, out.grad_logits.len());
        }
        o.has_grad_hidden = 0;
        if let Some(g) = &out.grad_hidden {
            if !g.is_empty() {
                crate::ensure!(!o.grad_hidden.is_null(), "the host passed no hidden-gradient buffer");
                std::ptr::copy_nonoverlapping(g.as_ptr(), o.grad_hidden, g.len());
            }
            o.has_grad_hidden = 1;
        }
        o.value = out.value;
        Ok(())
    }
}

/// [`LanguageStateFn`] for `L`.
pub unsafe extern "C" fn language_state<L: Loss>(
    handle: *mut c_void,
    buf: *mut f32,
    cap: usize,
    out_len: *mut usize,
    out_error: *mut *mut c_char,
) -> i32 {
    // SAFETY: as for `compute`; `buf` holds `cap` values.
    unsafe {
        guard(out_error, || {
            crate::ensure!(!out_len.is_null(), "null pointer passed to language_state");
            let loss = &handle_mut::<L>(handle)?.loss;
            match loss.language_state() {
                None => *out_len = NO_LANGUAGE_STATE,
                Some(v) => {
                    *out_len = v.len();
                    if v.len() <= cap && !v.is_empty() && !buf.is_null() {
                        std::ptr::copy_nonoverlapping(v.as_ptr(), buf, v.len());
                    }
                }
            }
            Ok(())
        })
    }
}

/// [`DestroyFn`] for `L`.
pub unsafe extern "C" fn destroy<L: Loss>(handle: *mut c_void) {
    if handle.is_null() {
        return;
    }
    // SAFETY: `handle` came from `create::<L>` and is destroyed once. A panicking destructor is
    // caught (the loss is then leaked).
    let r = catch_unwind(AssertUnwindSafe(|| unsafe { drop(Box::from_raw(handle as *mut Handle<L>)) }));
    if let Err(p) = r {
        forget_payload(p);
    }
}

/// [`FreeStringFn`].
pub unsafe extern "C" fn free_string(message: *mut c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: `message` came from `store_error` (CString::into_raw) and is freed once.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { drop(CString::from_raw(message)) }));
}

/// A C string as `&str`; null is an error naming `what`.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    crate::ensure!(!p.is_null(), "the host passed no {what}");
    // SAFETY: the host passes NUL-terminated strings valid for the call.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Error::msg(format!("the {what} is not UTF-8")))
}

impl Shapes {
    /// Views the host's shapes.
    ///
    /// # Safety
    /// The strings of `raw` are NUL-terminated and valid for the call.
    pub unsafe fn from_raw(raw: &RawShapes) -> Result<Shapes> {
        let layers = |l: &RawLayerShape| -> Result<Option<LayerShape>> {
            if l.present == 0 {
                return Ok(None);
            }
            Ok(Some(LayerShape {
                layers: l.layers,
                width: l.width,
                heads: l.heads,
                max_len: l.max_len,
                // SAFETY: forwarded to the caller.
                tokenizer: unsafe { c_str(l.tokenizer, "tokenizer identity") }?.to_string(),
            }))
        };
        let known = |w: usize| (w > 0).then_some(w);
        Ok(Shapes {
            classes: raw.classes,
            student_hidden_dim: known(raw.student_hidden_dim),
            teacher_hidden_dim: known(raw.teacher_hidden_dim),
            student_layers: layers(&raw.student_layers)?,
            teacher_layers: layers(&raw.teacher_layers)?,
        })
    }
}

impl<'a> Layers<'a> {
    /// Views the host's layer states.
    ///
    /// # Safety
    /// Every pointer of `raw` points to as many values as its sizes say, valid for `'a`.
    pub unsafe fn from_raw(raw: &RawLayers) -> Result<Layers<'a>> {
        let (b, t, w, h) = (raw.batch, raw.seq, raw.width, raw.heads);
        // SAFETY: forwarded to the caller.
        unsafe {
            let hidden = slice(raw.hidden, raw.n_hidden, "hidden-state")?
                .iter()
                .map(|&p| slice(p, b * t * w, "hidden state"))
                .collect::<Result<Vec<_>>>()?;
            let attention = slice(raw.attention, raw.n_attention, "attention")?
                .iter()
                .map(|&p| slice(p, b * h * t * t, "attention"))
                .collect::<Result<Vec<_>>>()?;
            Ok(Layers { lens: slice(raw.lens, b, "length")?, seq: t, width: w, heads: h, hidden, attention })
        }
    }
}

/// [`CheckFn`] for `L`.
pub unsafe extern "C" fn check<L: Loss>(
    handle: *mut c_void,
    shapes: *const RawShapes,
    out_error: *mut *mut c_char,
) -> i32 {
    // SAFETY: as for `compute`; `shapes` is valid for the call.
    unsafe {
        guard(out_error, || {
            crate::ensure!(!shapes.is_null(), "null pointer passed to check");
            let h = handle_mut::<L>(handle)?;
            h.loss.check(&Shapes::from_raw(&*shapes)?)
        })
    }
}

/// [`PrepareFn`] for `L`.
pub unsafe extern "C" fn prepare<L: Loss>(
    handle: *mut c_void,
    shapes: *const RawShapes,
    out_params: *mut *const RawParamDecl,
    out_len: *mut usize,
    out_projection: *mut isize,
    out_error: *mut *mut c_char,
) -> i32 {
    // SAFETY: as for `check`; the out-pointers are valid.
    unsafe {
        guard(out_error, || {
            crate::ensure!(
                !shapes.is_null() && !out_params.is_null() && !out_len.is_null() && !out_projection.is_null(),
                "null pointer passed to prepare"
            );
            let h = handle_mut::<L>(handle)?;
            let decls = h.loss.parameters(&Shapes::from_raw(&*shapes)?)?;
            let projection = match h.loss.projection() {
                None => -1,
                Some(p) => match decls.iter().position(|d| d.name() == p) {
                    Some(i) if matches!(decls[i], ParamDecl::Linear { .. }) => i as isize,
                    _ => crate::bail!("the projection `{p}` is not one of the loss's linear parameters"),
                },
            };
            h.decl_names =
                decls.iter().map(|d| CString::new(d.name())).collect::<std::result::Result<_, _>>()?;
            h.decl_shapes = decls
                .iter()
                .map(|d| match d {
                    ParamDecl::Linear { input, output, .. } => vec![*input, *output],
                    ParamDecl::Tensor { shape, .. } => shape.clone(),
                })
                .collect();
            h.decl_values = decls
                .iter()
                .map(|d| match d {
                    ParamDecl::Linear { .. } => Vec::new(),
                    ParamDecl::Tensor { values, .. } => values.clone(),
                })
                .collect();
            h.decls = decls
                .iter()
                .enumerate()
                .map(|(i, d)| RawParamDecl {
                    name: h.decl_names[i].as_ptr(),
                    init: if matches!(d, ParamDecl::Linear { .. }) { INIT_LINEAR } else { INIT_VALUES },
                    decay: matches!(d, ParamDecl::Tensor { decay: true, .. }) as u32,
                    shape: h.decl_shapes[i].as_ptr(),
                    ndim: h.decl_shapes[i].len(),
                    values: h.decl_values[i].as_ptr(),
                    seed: match d {
                        ParamDecl::Linear { seed, .. } => *seed,
                        ParamDecl::Tensor { .. } => 0,
                    },
                })
                .collect();
            *out_params = h.decls.as_ptr();
            *out_len = h.decls.len();
            *out_projection = projection;
            Ok(())
        })
    }
}

/// [`ComputeV2Fn`] for `L`.
pub unsafe extern "C" fn compute_v2<L: Loss>(
    handle: *mut c_void,
    input: *const RawLossInputV2,
    output: *mut RawLossOutputV2,
    out_error: *mut *mut c_char,
) -> i32 {
    // SAFETY: as for `compute`; the slot arrays of `output` are as long as the input says.
    unsafe {
        guard(out_error, || {
            crate::ensure!(!input.is_null() && !output.is_null(), "null pointer passed to compute");
            let h = handle_mut::<L>(handle)?;
            let raw = &*input;
            let x = LossInput::from_raw(&raw.base)?;
            let layers = |p: *const RawLayers| -> Result<Option<Layers>> {
                if p.is_null() {
                    Ok(None)
                } else {
                    Layers::from_raw(&*p).map(Some)
                }
            };
            let student_layers = layers(raw.student_layers)?;
            let params = slice(raw.params, raw.n_params, "parameter")?
                .iter()
                .map(|&p| {
                    crate::ensure!(!p.is_null(), "the host passed a null parameter");
                    Ok(p)
                })
                .collect::<Result<Vec<_>>>()?;
            // Sizes are known to the loss (it declared them); the host's values are as long.
            let sizes: Vec<usize> = h
                .decl_shapes
                .iter()
                .zip(&h.decls)
                .flat_map(|(s, d)| {
                    let n: usize = s.iter().product();
                    if d.init == INIT_LINEAR {
                        vec![n, *s.last().unwrap_or(&0)]
                    } else {
                        vec![n]
                    }
                })
                .collect();
            crate::ensure!(
                sizes.len() == params.len(),
                "the host passed {} parameters, the loss declared {}",
                params.len(),
                sizes.len()
            );
            let extra = Extra {
                params: params
                    .iter()
                    .zip(&sizes)
                    .map(|(&p, &n)| slice(p, n, "parameter"))
                    .collect::<Result<_>>()?,
                student_layers,
                teacher_layers: layers(raw.teacher_layers)?,
            };
            let (out, grads) = h.loss.compute_with(&x, &extra)?;
            out.check(&x)?;
            grads.check(&extra)?;
            let o = &mut *output;
            write_output(&out, &mut o.base)?;
            h.grads = grads;
            let fill = |slots: *mut *const f32, n: usize, g: &[Option<Vec<f32>>]| -> Result<()> {
                for (k, gk) in g.iter().enumerate().take(n) {
                    if let Some(v) = gk {
                        crate::ensure!(!slots.is_null(), "the host passed no gradient slots");
                        *slots.add(k) = v.as_ptr();
                    }
                }
                Ok(())
            };
            fill(o.grad_params, raw.n_params, &h.grads.params)?;
            if let Some(s) = &extra.student_layers {
                fill(o.grad_hidden_states, s.hidden.len(), &h.grads.hidden)?;
                fill(o.grad_attention, s.attention.len(), &h.grads.attention)?;
            }
            Ok(())
        })
    }
}

/// [`SaveStateFn`] for `L`.
pub unsafe extern "C" fn save_state<L: Loss>(
    handle: *mut c_void,
    out_data: *mut *const u8,
    out_len: *mut usize,
    out_error: *mut *mut c_char,
) -> i32 {
    // SAFETY: as for `compute`; the out-pointers are valid.
    unsafe {
        guard(out_error, || {
            crate::ensure!(!out_data.is_null() && !out_len.is_null(), "null pointer passed to save_state");
            let h = handle_mut::<L>(handle)?;
            h.state = h.loss.save_state()?;
            *out_data = h.state.as_ptr();
            *out_len = h.state.len();
            Ok(())
        })
    }
}

/// [`LoadStateFn`] for `L`.
pub unsafe extern "C" fn load_state<L: Loss>(
    handle: *mut c_void,
    data: *const u8,
    len: usize,
    out_error: *mut *mut c_char,
) -> i32 {
    // SAFETY: as for `compute`; `len` bytes at `data`.
    unsafe {
        guard(out_error, || {
            let h = handle_mut::<L>(handle)?;
            h.loss.load_state(slice(data, len, "state")?)
        })
    }
}

/// [`LanguageValuesFn`] for `L`.
pub unsafe extern "C" fn language_values<L: Loss>(
    handle: *mut c_void,
    out_values: *mut *const RawNamedValues,
    out_len: *mut usize,
    out_error: *mut *mut c_char,
) -> i32 {
    // SAFETY: as for `compute`; the out-pointers are valid.
    unsafe {
        guard(out_error, || {
            crate::ensure!(
                !out_values.is_null() && !out_len.is_null(),
                "null pointer passed to language_values"
            );
            let h = handle_mut::<L>(handle)?;
            h.values = h
                .loss
                .language_values()
                .into_iter()
                .map(|(n, v)| Ok((CString::new(n)?, v)))
                .collect::<Result<_>>()?;
            h.raw_values = h
                .values
                .iter()
                .map(|(n, v)| RawNamedValues { name: n.as_ptr(), values: v.as_ptr(), len: v.len() })
                .collect();
            *out_values = h.raw_values.as_ptr();
            *out_len = h.raw_values.len();
            Ok(())
        })
    }
}
