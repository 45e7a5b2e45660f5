//! The C ABI between kdx and a loss plugin built as a dynamic library.
//!
//! Only plain data crosses it: `#[repr(C)]` structs, pointers to `f32`/`u32` buffers with
//! their sizes, NUL-terminated UTF-8 strings. No Rust type, no allocation and no unwinding
//! crosses it in either direction, so the host and the plugin may be built by different
//! compilers and each may link its own copy of any library (a dfdx inside a plugin keeps its
//! own tensor ids and never meets the host's tensors).
//!
//! # Protocol
//!
//! 1. The host opens the library and looks up one symbol, [`ENTRY_SYMBOL`], a function
//!    [`EntryFn`] taking nothing and returning a pointer to a static [`PluginDescriptor`].
//!    A library without it is not a kdx plugin.
//! 2. The host reads the descriptor's first field, [`PluginDescriptor::abi_version`] — in
//!    every version of this ABI a `u32` at offset 0 — and refuses the library unless it
//!    equals the host's [`ABI_VERSION`]. Nothing else is read before this check.
//! 3. The host compares `major.minor` of [`PluginDescriptor::framework_version`] with its own
//!    version and refuses a mismatch; then it reads `kind`, `name` and `summary`.
//! 4. For every `[[loss]]` naming the plugin, the host calls [`CreateFn`] with the table's
//!    parameters as JSON, gets an opaque handle and the loss's needs ([`NEEDS_TEACHER`] …),
//!    calls [`ComputeFn`] once per batch, [`LanguageStateFn`] when it reports, and
//!    [`DestroyFn`] exactly once at the end. The library stays loaded while a handle lives.
//! 5. Every function returns a status ([`STATUS_OK`], [`STATUS_ERROR`], [`STATUS_PANIC`]);
//!    on failure it stores a message, allocated by the plugin, that the host copies and
//!    hands back to [`FreeStringFn`]. Every exported function catches panics itself: a
//!    panic never unwinds into the host.

use std::ffi::{c_char, c_void};

/// The version of this ABI. The host refuses a plugin reporting another one.
pub const ABI_VERSION: u32 = 1;

/// The name of the one symbol a plugin library exports (an [`EntryFn`]).
pub const ENTRY_SYMBOL: &str = "kdx_plugin_entry";

/// The kdx version this SDK belongs to (the SDK is versioned with the framework). A plugin
/// reports it; the host accepts it when `major.minor` equals its own.
pub const FRAMEWORK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The name of an optional second symbol, a [`SchemaFn`]: a library that exports it publishes
/// the JSON Schema of its parameters (`kdx plugins` documents them, `kdx schema` and `kdx
/// validate` check recipes against them). A library without it is still valid: its
/// parameters are then checked by the plugin alone.
pub const SCHEMA_SYMBOL: &str = "kdx_plugin_params_schema";

/// [`SCHEMA_SYMBOL`]'s function: a NUL-terminated UTF-8 JSON Schema (draft 7) of the loss's
/// parameters that lives as long as the library, or null for none.
pub type SchemaFn = unsafe extern "C" fn() -> *const c_char;

/// [`PluginDescriptor::kind`] of a loss plugin (the only kind so far).
pub const KIND_LOSS: u32 = 1;

/// The call succeeded.
pub const STATUS_OK: i32 = 0;
/// The plugin refused or failed; a message is stored.
pub const STATUS_ERROR: i32 = 1;
/// The plugin panicked; the panic was caught at the boundary and its message is stored.
pub const STATUS_PANIC: i32 = 2;

/// Need flag: the loss reads teacher outputs.
pub const NEEDS_TEACHER: u32 = 1;
/// Need flag: the loss reads gold labels.
pub const NEEDS_LABELS: u32 = 2;
/// Need flag: the loss reads the teacher's hidden representation.
pub const NEEDS_TEACHER_HIDDEN: u32 = 4;

/// [`LanguageStateFn`]'s `out_len` when the loss has no per-language state.
pub const NO_LANGUAGE_STATE: usize = usize::MAX;

/// The entry point, exported as [`ENTRY_SYMBOL`]. Returns a pointer to a descriptor that
/// lives as long as the library, or null if the plugin could not describe itself.
pub type EntryFn = unsafe extern "C" fn() -> *const PluginDescriptor;

/// Creates one loss instance from its parameters: `params_json` (`params_len` bytes of UTF-8,
/// not NUL-terminated) is the `[[loss]]` table without `plugin` and `weight`, as a JSON
/// object. On success stores an opaque handle in `*out_handle` and the need flags in
/// `*out_flags`; on failure stores a message in `*out_error`.
pub type CreateFn = unsafe extern "C" fn(
    params_json: *const u8,
    params_len: usize,
    out_handle: *mut *mut c_void,
    out_flags: *mut u32,
    out_error: *mut *mut c_char,
) -> i32;

/// Computes the loss on one batch: reads `*input`, writes `output.value` and the gradients
/// into the host's zero-filled buffers; sets `output.has_grad_hidden` when it wrote
/// `grad_hidden`.
pub type ComputeFn = unsafe extern "C" fn(
    handle: *mut c_void,
    input: *const RawLossInput,
    output: *mut RawLossOutput,
    out_error: *mut *mut c_char,
) -> i32;

/// Reports per-language state (e.g. a gate) for `metrics.csv`: stores its length in
/// `*out_len` ([`NO_LANGUAGE_STATE`] for none) and, when it is at most `cap`, the values in
/// `buf`. The host calls again with a larger buffer when `cap` was too small.
pub type LanguageStateFn = unsafe extern "C" fn(
    handle: *mut c_void,
    buf: *mut f32,
    cap: usize,
    out_len: *mut usize,
    out_error: *mut *mut c_char,
) -> i32;

/// Destroys a handle made by [`CreateFn`]. Called exactly once per handle.
pub type DestroyFn = unsafe extern "C" fn(handle: *mut c_void);

/// Frees a message the plugin stored in an `out_error`.
pub type FreeStringFn = unsafe extern "C" fn(message: *mut c_char);

/// What the entry point returns. The layout is fixed for one [`ABI_VERSION`]; the first
/// field stays `abi_version: u32` in every version.
#[repr(C)]
pub struct PluginDescriptor {
    /// [`ABI_VERSION`] of the SDK the plugin was built with. Checked before anything else.
    pub abi_version: u32,
    /// What the plugin provides: [`KIND_LOSS`].
    pub kind: u32,
    /// The kdx version the plugin was built for (NUL-terminated, e.g. `"0.1.0"`).
    pub framework_version: *const c_char,
    /// The name recipes use (`[[loss]] plugin = "…"`), NUL-terminated UTF-8.
    pub name: *const c_char,
    /// One line for listings, NUL-terminated UTF-8.
    pub summary: *const c_char,
    /// See [`CreateFn`].
    pub create: CreateFn,
    /// See [`ComputeFn`].
    pub compute: ComputeFn,
    /// See [`LanguageStateFn`].
    pub language_state: LanguageStateFn,
    /// See [`DestroyFn`].
    pub destroy: DestroyFn,
    /// See [`FreeStringFn`].
    pub free_string: FreeStringFn,
}

/// Running statistics of one language, as the host keeps them. `NaN` marks an unknown value.
///
/// The same type is the framework's: its samplers, its losses and its checkpoints use it
/// (in JSON an unknown accuracy is `null`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "json", derive(serde::Serialize, serde::Deserialize))]
pub struct LangStat {
    /// Training examples of this language.
    pub train_size: u64,
    /// Examples drawn so far in the current stage.
    pub drawn: u64,
    /// Exponential moving average of the student's per-example training loss (hard
    /// cross-entropy against the teacher's argmax where a teacher exists, else the label).
    pub student_loss: f64,
    /// Moving average of the teacher's per-example loss on the same examples.
    pub teacher_loss: f64,
    /// Student dev accuracy at the last evaluation; `NaN` before the first.
    #[cfg_attr(feature = "json", serde(with = "nan_as_null"))]
    pub dev_acc: f64,
    /// Teacher dev accuracy; `NaN` without a teacher.
    #[cfg_attr(feature = "json", serde(with = "nan_as_null"))]
    pub teacher_dev_acc: f64,
}

impl Default for LangStat {
    /// No examples, nothing drawn, accuracies unknown.
    fn default() -> LangStat {
        LangStat::new(0)
    }
}

/// A serde codec (`#[serde(with = "…")]`) for an `f64` whose `NaN` means "unknown": written
/// as a missing value (`null` in JSON, an empty cell in CSV) and read back as `NaN`. JSON has
/// no NaN; kdx's reports use it too.
#[cfg(feature = "json")]
pub mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    /// `NaN` as none, anything else as the number.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_nan() {
            s.serialize_none()
        } else {
            s.serialize_some(v)
        }
    }

    /// None as `NaN`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

impl LangStat {
    /// A language with `train_size` training examples, before any step.
    pub fn new(train_size: u64) -> LangStat {
        LangStat {
            train_size,
            drawn: 0,
            student_loss: 0.0,
            teacher_loss: 0.0,
            dev_acc: f64::NAN,
            teacher_dev_acc: f64::NAN,
        }
    }

    /// The student's dev accuracy, if it has been evaluated.
    pub fn dev_accuracy(&self) -> Option<f64> {
        Some(self.dev_acc).filter(|v| !v.is_nan())
    }

    /// The teacher's dev accuracy, if there is a teacher.
    pub fn teacher_dev_accuracy(&self) -> Option<f64> {
        Some(self.teacher_dev_acc).filter(|v| !v.is_nan())
    }
}

/// One batch, as the host passes it. Matrices are row-major; a null pointer marks an absent
/// buffer (its size is then meaningless).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawLossInput {
    /// Batch size `B`.
    pub batch: usize,
    /// Number of classes `C`.
    pub classes: usize,
    /// `B × C` student logits.
    pub student_logits: *const f32,
    /// `B × H` student hidden representation (may be null when `H = 0`).
    pub student_hidden: *const f32,
    /// `H`.
    pub student_hidden_dim: usize,
    /// `B × C` teacher logits, or null (a stage without a teacher).
    pub teacher_logits: *const f32,
    /// `B × H_t` teacher hidden representation, or null.
    pub teacher_hidden: *const f32,
    /// `H_t`.
    pub teacher_hidden_dim: usize,
    /// `B` gold labels, or null where the student must not see them.
    pub labels: *const u32,
    /// `B` language ids (indices into `stats`).
    pub langs: *const u32,
    /// `B` per-example weights.
    pub weights: *const f32,
    /// Step within the stage (0-based).
    pub step: u64,
    /// Total steps of the stage.
    pub total_steps: u64,
    /// `n_langs` per-language statistics.
    pub stats: *const LangStat,
    /// Number of languages.
    pub n_langs: usize,
}

/// Where the plugin writes its result. The host allocates and zero-fills both buffers.
#[repr(C)]
#[derive(Debug)]
pub struct RawLossOutput {
    /// The loss value (already reduced over the batch).
    pub value: f32,
    /// Set to 1 by the plugin when it wrote `grad_hidden`.
    pub has_grad_hidden: u32,
    /// `B × C` gradient with respect to the student logits.
    pub grad_logits: *mut f32,
    /// `B × H` gradient with respect to the student hidden representation.
    pub grad_hidden: *mut f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_abi_version_is_the_first_field() {
        assert_eq!(std::mem::offset_of!(PluginDescriptor, abi_version), 0);
        assert_eq!(std::mem::size_of_val(&ABI_VERSION), 4);
    }
}
