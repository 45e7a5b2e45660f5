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
//! 2. The host reads the descriptor's first field, [`PluginDescriptorV1::abi_version`] — in
//!    every version of this ABI a `u32` at offset 0 — and refuses the library unless it is
//!    one the host speaks ([`MIN_ABI_VERSION`] to its [`ABI_VERSION`]). Nothing else is read
//!    before this check. A version-1 descriptor is read as [`PluginDescriptorV1`].
//! 3. The host refuses a [`PluginDescriptorV1::framework_version`] of another major version
//!    or a newer minor version than its own; then it reads `kind`, `name` and `summary`.
//! 4. For every `[[loss]]` naming the plugin, the host calls [`CreateFn`] with the table's
//!    parameters as JSON, gets an opaque handle and the loss's needs ([`NEEDS_TEACHER`] …),
//!    calls [`ComputeFn`] once per batch, [`LanguageStateFn`] when it reports, and
//!    [`DestroyFn`] exactly once at the end. The library stays loaded while a handle lives.
//! 5. ABI 2 adds, after the functions of ABI 1 in the same descriptor: [`CheckFn`] at plan
//!    time with both models' shapes, [`PrepareFn`] at the start of every stage (the loss
//!    declares its trainable parameters; the host owns, trains, checkpoints and exports
//!    them), [`ComputeV2Fn`] instead of [`ComputeFn`] (the parameters' values and, for a
//!    loss with [`NEEDS_LAYERS`], per-layer states; gradients for both come back),
//!    [`SaveStateFn`] / [`LoadStateFn`] with every checkpoint, and [`LanguageValuesFn`]
//!    when the host reports. Memory the plugin hands back (declarations, gradients, state,
//!    values) stays the plugin's, valid until the next call on the same handle.
//! 6. Every function returns a status ([`STATUS_OK`], [`STATUS_ERROR`], [`STATUS_PANIC`]);
//!    on failure it stores a message, allocated by the plugin, that the host copies and
//!    hands back to [`FreeStringFn`]. Every exported function catches panics itself: a
//!    panic never unwinds into the host.

use std::ffi::{c_char, c_void};

/// The version of this ABI, which plugins built with this SDK report. The host loads every
/// version from [`MIN_ABI_VERSION`] to this one and refuses a newer one, naming both.
pub const ABI_VERSION: u32 = 2;

/// The oldest ABI version a host built with this SDK still loads (adapting it).
pub const MIN_ABI_VERSION: u32 = 1;

/// The name of the one symbol a plugin library exports (an [`EntryFn`]).
pub const ENTRY_SYMBOL: &str = "kdx_plugin_entry";

/// The kdx version this SDK belongs to (the SDK is versioned with the framework). A plugin
/// reports it; a host accepts it when the major versions are equal and the plugin's minor
/// version is no newer than its own.
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

/// Need flag (ABI 2): the loss reads per-layer states and attention of the student and, when
/// it needs the teacher, of the teacher ([`RawLossInputV2`]).
pub const NEEDS_LAYERS: u32 = 8;

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

/// (ABI 2) Checks, at plan time, that the loss fits the models: `shapes` are both models'
/// widths and layer shapes. On refusal stores a message; one that starts with a backquoted
/// key (`` `layers`: … ``, what `Error::param` makes) is reported at that recipe key.
pub type CheckFn =
    unsafe extern "C" fn(handle: *mut c_void, shapes: *const RawShapes, out_error: *mut *mut c_char) -> i32;

/// (ABI 2) Called at the start of every stage the loss takes part in, before a checkpoint
/// is restored: stores in `*out_params`/`*out_len` the trainable parameters the loss
/// declares (plugin memory, valid until the next call on the handle) and in
/// `*out_projection` the index of the declaration that maps student hidden vectors into the
/// teacher's space (a [`INIT_LINEAR`] one), or -1.
pub type PrepareFn = unsafe extern "C" fn(
    handle: *mut c_void,
    shapes: *const RawShapes,
    out_params: *mut *const RawParamDecl,
    out_len: *mut usize,
    out_projection: *mut isize,
    out_error: *mut *mut c_char,
) -> i32;

/// (ABI 2) [`ComputeFn`] with the loss's parameters and layer states: writes what
/// [`ComputeFn`] writes, and pointers to its gradients (plugin memory) into the slots of
/// `output`.
pub type ComputeV2Fn = unsafe extern "C" fn(
    handle: *mut c_void,
    input: *const RawLossInputV2,
    output: *mut RawLossOutputV2,
    out_error: *mut *mut c_char,
) -> i32;

/// (ABI 2) Stores the loss's opaque state (plugin memory, valid until the next call on the
/// handle) for a checkpoint.
pub type SaveStateFn = unsafe extern "C" fn(
    handle: *mut c_void,
    out_data: *mut *const u8,
    out_len: *mut usize,
    out_error: *mut *mut c_char,
) -> i32;

/// (ABI 2) Restores a state [`SaveStateFn`] gave, when a run resumes.
pub type LoadStateFn = unsafe extern "C" fn(
    handle: *mut c_void,
    data: *const u8,
    len: usize,
    out_error: *mut *mut c_char,
) -> i32;

/// (ABI 2) Stores the loss's named per-language values (plugin memory, valid until the next
/// call on the handle): `*out_len` entries, each a name and one value per language.
pub type LanguageValuesFn = unsafe extern "C" fn(
    handle: *mut c_void,
    out_values: *mut *const RawNamedValues,
    out_len: *mut usize,
    out_error: *mut *mut c_char,
) -> i32;

/// The descriptor of ABI version 1, and the first field of every later version's
/// ([`PluginDescriptor::v1`]): a host reads this much of any descriptor.
#[repr(C)]
pub struct PluginDescriptorV1 {
    /// [`ABI_VERSION`] of the SDK the plugin was built with. Read, alone, before anything else.
    pub abi_version: u32,
    /// [`KIND_LOSS`].
    pub kind: u32,
    /// The kdx version the plugin was built for.
    pub framework_version: *const c_char,
    /// The loss's name.
    pub name: *const c_char,
    /// One line for listings.
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

/// What the entry point returns. The layout is fixed for one [`ABI_VERSION`]: a version only
/// appends fields, so every descriptor starts with version 1's ([`PluginDescriptorV1`]), whose
/// first field, `abi_version: u32`, the host reads before anything else.
#[repr(C)]
pub struct PluginDescriptor {
    /// What ABI 1 has: version, kind, names, and the functions of ABI 1.
    pub v1: PluginDescriptorV1,
    /// (ABI 2) See [`CheckFn`].
    pub check: CheckFn,
    /// (ABI 2) See [`PrepareFn`].
    pub prepare: PrepareFn,
    /// (ABI 2) See [`ComputeV2Fn`]; the host calls it instead of `compute`.
    pub compute_v2: ComputeV2Fn,
    /// (ABI 2) See [`SaveStateFn`].
    pub save_state: SaveStateFn,
    /// (ABI 2) See [`LoadStateFn`].
    pub load_state: LoadStateFn,
    /// (ABI 2) See [`LanguageValuesFn`].
    pub language_values: LanguageValuesFn,
}

/// [`RawParamDecl::init`]: the values are given (`values`, as many as the shape holds).
pub const INIT_VALUES: u32 = 0;
/// [`RawParamDecl::init`]: a linear map `shape = [input, output]` the host initialises from
/// `seed` exactly as its built-in layers (and projections) are: two parameters,
/// `NAME.w` (`input × output`, weight decay) and `NAME.b` (`output`, none).
pub const INIT_LINEAR: u32 = 1;

/// (ABI 2) A trainable parameter a loss declares ([`PrepareFn`]).
#[repr(C)]
#[derive(Debug)]
pub struct RawParamDecl {
    /// Its name, NUL-terminated UTF-8 (the checkpoint key is `loss<i>.NAME`).
    pub name: *const c_char,
    /// [`INIT_VALUES`] or [`INIT_LINEAR`].
    pub init: u32,
    /// Whether weight decay applies ([`INIT_VALUES`] only).
    pub decay: u32,
    /// Its shape: `ndim` sizes.
    pub shape: *const usize,
    /// Number of dimensions.
    pub ndim: usize,
    /// The initial values ([`INIT_VALUES`]): as many as the shape holds.
    pub values: *const f32,
    /// The seed ([`INIT_LINEAR`]).
    pub seed: u64,
}

/// (ABI 2) The per-layer shape of a model; `present = 0` when it has none.
#[repr(C)]
#[derive(Debug)]
pub struct RawLayerShape {
    /// 1 when the model has per-layer states, else 0 (the rest is then meaningless).
    pub present: u32,
    /// Encoder layers L (hidden states 0..=L).
    pub layers: usize,
    /// Width of each hidden state.
    pub width: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// Longest sequence in tokens.
    pub max_len: usize,
    /// What identifies the tokenisation, NUL-terminated UTF-8.
    pub tokenizer: *const c_char,
}

/// (ABI 2) Both models' shapes ([`CheckFn`], [`PrepareFn`]). A width of 0 is unknown (or,
/// for the teacher, absent).
#[repr(C)]
#[derive(Debug)]
pub struct RawShapes {
    /// Number of classes.
    pub classes: usize,
    /// The student's hidden width.
    pub student_hidden_dim: usize,
    /// The teacher's hidden width.
    pub teacher_hidden_dim: usize,
    /// The student's layers.
    pub student_layers: RawLayerShape,
    /// The teacher's layers.
    pub teacher_layers: RawLayerShape,
}

/// (ABI 2) One model's per-layer states for one batch.
#[repr(C)]
#[derive(Debug)]
pub struct RawLayers {
    /// Sequences B.
    pub batch: usize,
    /// Padded length T.
    pub seq: usize,
    /// Width of a hidden state.
    pub width: usize,
    /// Attention heads.
    pub heads: usize,
    /// `B` real token counts.
    pub lens: *const usize,
    /// `n_hidden` pointers to `B × T × width` hidden states (0: the embeddings' output).
    pub hidden: *const *const f32,
    /// L + 1.
    pub n_hidden: usize,
    /// `n_attention` pointers to `B × heads × T × T` attention distributions.
    pub attention: *const *const f32,
    /// L.
    pub n_attention: usize,
}

/// (ABI 2) One batch: ABI 1's input, the loss's parameters, and per-layer states.
#[repr(C)]
#[derive(Debug)]
pub struct RawLossInputV2 {
    /// What ABI 1 passes.
    pub base: RawLossInput,
    /// `n_params` pointers to the current values of the declared parameters, in
    /// declaration order (a linear declaration is two: `.w`, then `.b`).
    pub params: *const *const f32,
    /// Number of parameters.
    pub n_params: usize,
    /// The student's layer states, or null (the loss does not need them).
    pub student_layers: *const RawLayers,
    /// The teacher's layer states, or null.
    pub teacher_layers: *const RawLayers,
}

/// (ABI 2) Where the plugin writes its result: ABI 1's output, and slots (initialised to
/// null by the host) that the plugin points at its own gradient buffers, each as large as
/// the value it is the gradient of; a null slot is a zero gradient.
#[repr(C)]
#[derive(Debug)]
pub struct RawLossOutputV2 {
    /// What ABI 1 writes.
    pub base: RawLossOutput,
    /// `n_params` slots: gradients of the parameters.
    pub grad_params: *mut *const f32,
    /// `n_hidden` slots (of the student's layers): gradients of its hidden states.
    pub grad_hidden_states: *mut *const f32,
    /// `n_attention` slots: gradients of its attention distributions.
    pub grad_attention: *mut *const f32,
}

/// (ABI 2) A named per-language value ([`LanguageValuesFn`]).
#[repr(C)]
#[derive(Debug)]
pub struct RawNamedValues {
    /// Its name, NUL-terminated UTF-8.
    pub name: *const c_char,
    /// One value per language.
    pub values: *const f32,
    /// Number of values.
    pub len: usize,
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
        use std::mem::offset_of;
        assert_eq!(offset_of!(PluginDescriptor, v1) + offset_of!(PluginDescriptorV1, abi_version), 0);
        assert_eq!(std::mem::size_of_val(&ABI_VERSION), 4);
    }

    #[test]
    fn version_2_only_appends_to_the_version_1_descriptor() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(PluginDescriptor, v1), 0);
        assert_eq!(std::mem::size_of::<PluginDescriptorV1>(), offset_of!(PluginDescriptor, check));
    }
}
