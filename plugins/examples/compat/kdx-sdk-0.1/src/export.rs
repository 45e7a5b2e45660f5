//! What `export_loss!` expands to: the descriptor and the `extern "C"` functions it points to.
//! Every function catches panics itself — a panic unwinding out of an `extern "C"` function
//! aborts the host process — and turns them into [`STATUS_PANIC`] with the panic's message.

use std::any::Any;
use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use crate::abi::*;
use crate::{need_flags, Error, LangStat, Loss, LossInput, Params, Result};

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
            *out_handle = Box::into_raw(Box::new(loss)) as *mut c_void;
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
            crate::ensure!(
                !handle.is_null() && !input.is_null() && !output.is_null(),
                "null pointer passed to compute"
            );
            let loss = &mut *(handle as *mut L);
            let raw = &*input;
            let x = LossInput::from_raw(raw)?;
            let out = loss.compute(&x)?;
            out.check(&x)?;
            let o = &mut *output;
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
        })
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
            crate::ensure!(!handle.is_null() && !out_len.is_null(), "null pointer passed to language_state");
            let loss = &*(handle as *const L);
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
    let r = catch_unwind(AssertUnwindSafe(|| unsafe { drop(Box::from_raw(handle as *mut L)) }));
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
