//! kdx-sdk: write a kdx loss once, use it in-tree or as a dynamic library.
//!
//! A loss sees plain buffers — student logits and hidden state, teacher outputs, labels,
//! language ids, per-example weights, the step and per-language statistics ([`LossInput`]) —
//! and returns its value and its gradient with respect to the student's outputs
//! ([`LossOutput`]). kdx folds that gradient into its own autodiff tape. This crate does not
//! depend on the framework or on dfdx: a plugin crate builds in seconds.
//!
//! ```
//! use kdx_sdk::{Loss, LossInput, LossOutput, Params, Result};
//!
//! /// Mean squared error between student and teacher logits.
//! pub struct Mse;
//!
//! impl Loss for Mse {
//!     const NAME: &'static str = "my-mse";
//!     const SUMMARY: &'static str = "mean squared logit difference";
//!     fn create(_params: &Params) -> Result<Self> {
//!         Ok(Mse)
//!     }
//!     fn needs_teacher(&self) -> bool {
//!         true
//!     }
//!     fn compute(&mut self, x: &LossInput) -> Result<LossOutput> {
//!         let t = x.teacher_logits()?;
//!         let n = x.student_logits.len() as f32;
//!         let d: Vec<f32> = x.student_logits.iter().zip(t).map(|(z, t)| z - t).collect();
//!         Ok(LossOutput {
//!             value: d.iter().map(|d| d * d).sum::<f32>() / n,
//!             grad_logits: d.iter().map(|d| 2.0 * d / n).collect(),
//!             grad_hidden: None,
//!         })
//!     }
//! }
//!
//! // In a `crate-type = ["cdylib"]` crate, this exports the C entry point kdx loads:
//! kdx_sdk::export_loss!(Mse);
//! ```
//!
//! The same type registers in-tree with `kdx_framework::register_sdk_loss!(Mse)`. Test it with
//! [`testing::gradient_check`]. See `docs/writing-a-loss-plugin.md` in the kdx repository.
//!
//! Since plugin ABI 2 (this SDK, 0.2) a loss may also read per-layer states
//! ([`Loss::needs_layers`], [`Loss::compute_with`]), own trainable parameters
//! ([`Loss::parameters`], [`Loss::projection`]), check the models at plan time
//! ([`Loss::check`]), keep state across a resume ([`Loss::save_state`]) and report named
//! per-language values ([`Loss::language_values`]); every such method has a default.

#![warn(missing_docs)]

pub mod abi;
#[doc(hidden)]
pub mod export;
mod layers;
pub mod math;
mod shapes;
pub mod testing;

use std::fmt;

pub use abi::{LangStat, ABI_VERSION, FRAMEWORK_VERSION};
pub use layers::{Extra, ExtraGrads, Layers};
pub use shapes::{LayerShape, ParamDecl, Shapes};

/// An error a loss reports: a message shown to the user, located at the recipe's `[[loss]]`
/// table when it comes from [`Loss::create`].
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Error {
        Error(message.to_string())
    }

    /// An error about one parameter: kdx points at that key of the recipe's `[[loss]]` table
    /// (`loss[0].temperature: must be a positive number, found -1`), not at the table.
    /// [`ensure_param!`] builds it from a condition.
    pub fn param(key: &str, message: impl fmt::Display) -> Error {
        Error(format!("`{key}`: {message}"))
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

// `Error` deliberately does not implement `std::error::Error`, so that every error type
// converts into it with `?`.
impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Error {
        Error(e.to_string())
    }
}

/// `Result<T, kdx_sdk::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns early with an [`Error`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error::msg(::std::format!($($arg)*)))
    };
}

/// Returns early with an [`Error`] (built like `format!`) unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::bail!($($arg)*);
        }
    };
}

/// Returns early with an [`Error::param`] about `key` (built like `format!`) unless the
/// condition holds: `ensure_param!(p.temperature > 0.0, "temperature", "must be a positive
/// number, found {}", p.temperature)` is reported at `loss[i].temperature` in the recipe.
#[macro_export]
macro_rules! ensure_param {
    ($cond:expr, $key:expr, $($arg:tt)*) => {
        // Not `if !cond`: a float comparison in `cond` would trip clippy's
        // `neg_cmp_op_on_partial_ord` in the plugin's crate.
        if $cond {
        } else {
            return ::core::result::Result::Err($crate::Error::param($key, ::std::format!($($arg)*)));
        }
    };
}

/// A loss's parameters: the recipe's `[[loss]]` table without `plugin` and `weight`, as a
/// JSON object (e.g. `{"temperature":4.0}`).
#[derive(Clone, Copy, Debug)]
pub struct Params<'a> {
    json: &'a str,
}

impl<'a> Params<'a> {
    /// Parameters from JSON text (an object).
    pub fn from_json(json: &'a str) -> Params<'a> {
        Params { json }
    }

    /// No parameters (`{}`).
    pub fn empty() -> Params<'static> {
        Params { json: "{}" }
    }

    /// The JSON text.
    pub fn json(&self) -> &'a str {
        self.json
    }

    /// Deserialises the parameters into a typed struct. Use `#[serde(deny_unknown_fields)]`
    /// and `#[serde(default)]` as kdx's built-in losses do. The error starts with the
    /// offending key in backquotes (`` `temperature`: invalid type: … ``): kdx then points at
    /// that key of the recipe and words the rest as it does for built-in losses.
    #[cfg(feature = "json")]
    pub fn parse<P: serde::de::DeserializeOwned>(&self) -> Result<P> {
        let de = &mut serde_json::Deserializer::from_str(self.json);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            // serde_json's position ("at line 1 column 17") is in the JSON text, which the user
            // never wrote: drop it; the host adds the recipe location.
            let s = e.into_inner().to_string();
            let s = match s.rfind(" at line ") {
                Some(i) => s[..i].to_string(),
                None => s,
            };
            Error(if path.is_empty() || path == "." { s } else { format!("`{path}`: {s}") })
        })
    }
}

/// Everything a loss may read for one batch. Matrices are row-major.
#[derive(Clone, Copy, Debug)]
pub struct LossInput<'a> {
    /// Batch size `B`.
    pub batch: usize,
    /// Number of classes `C`.
    pub classes: usize,
    /// `B × C` student logits.
    pub student_logits: &'a [f32],
    /// `B × H` student hidden representation.
    pub student_hidden: &'a [f32],
    /// `H`.
    pub student_hidden_dim: usize,
    /// `B × C` teacher logits; `None` in a stage without a teacher (e.g. the baseline).
    pub teacher_logits: Option<&'a [f32]>,
    /// `B × H_t` teacher hidden representation, where the teacher provides one and the loss
    /// asked for it ([`Loss::needs_teacher_hidden`]).
    pub teacher_hidden: Option<&'a [f32]>,
    /// `H_t`.
    pub teacher_hidden_dim: usize,
    /// `B` gold labels; `None` where the student must not see them (cross-lingual transfer).
    pub labels: Option<&'a [u32]>,
    /// `B` language ids: indices into `stats` (and into the task's language list).
    pub langs: &'a [u32],
    /// `B` per-example weights (1.0 unless a gate or sampler correction says otherwise).
    pub weights: &'a [f32],
    /// Step within the current stage (0-based).
    pub step: u64,
    /// Total steps of the current stage.
    pub total_steps: u64,
    /// Running per-language statistics.
    pub stats: &'a [LangStat],
}

impl<'a> LossInput<'a> {
    /// The teacher logits, or an error naming what is missing.
    pub fn teacher_logits(&self) -> Result<&'a [f32]> {
        self.teacher_logits
            .ok_or_else(|| Error::msg("this loss needs teacher logits, and this stage has no teacher"))
    }

    /// The gold labels, or an error naming what is missing.
    pub fn labels(&self) -> Result<&'a [u32]> {
        self.labels.ok_or_else(|| {
            Error::msg("this loss needs gold labels, and the student may not see them in this task")
        })
    }

    /// Fraction of the stage done, in `[0, 1]`: `step / (total_steps - 1)`. Use it for your
    /// own schedules (a temperature annealed over the stage, a warm-up).
    pub fn progress(&self) -> f64 {
        if self.total_steps <= 1 {
            1.0
        } else {
            (self.step as f64 / (self.total_steps - 1) as f64).min(1.0)
        }
    }

    /// Row `i` of the student logits.
    pub fn student_row(&self, i: usize) -> &'a [f32] {
        &self.student_logits[i * self.classes..(i + 1) * self.classes]
    }

    /// Checks that every buffer has the size its dimensions say.
    pub fn check(&self) -> Result<()> {
        let (b, c) = (self.batch, self.classes);
        let sized = |what: &str, len: usize, want: usize| -> Result<()> {
            ensure!(len == want, "{what} has {len} values, expected {want}");
            Ok(())
        };
        sized("student_logits", self.student_logits.len(), b * c)?;
        sized("student_hidden", self.student_hidden.len(), b * self.student_hidden_dim)?;
        if let Some(t) = self.teacher_logits {
            sized("teacher_logits", t.len(), b * c)?;
        }
        if let Some(t) = self.teacher_hidden {
            sized("teacher_hidden", t.len(), b * self.teacher_hidden_dim)?;
        }
        if let Some(l) = self.labels {
            sized("labels", l.len(), b)?;
            ensure!(l.iter().all(|&y| (y as usize) < c), "a label is out of range (>= {c} classes)");
        }
        sized("langs", self.langs.len(), b)?;
        sized("weights", self.weights.len(), b)?;
        ensure!(self.langs.iter().all(|&l| (l as usize) < self.stats.len()), "a language id is out of range");
        Ok(())
    }
}

/// What a loss returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossOutput {
    /// The loss value, already reduced over the batch (normally a weighted mean).
    pub value: f32,
    /// `B × C` gradient of `value` with respect to the student logits.
    pub grad_logits: Vec<f32>,
    /// `B × H` gradient with respect to the student hidden representation, if the loss uses it.
    pub grad_hidden: Option<Vec<f32>>,
}

impl LossOutput {
    /// Checks the gradient sizes against the input's.
    pub fn check(&self, x: &LossInput) -> Result<()> {
        let want = x.batch * x.classes;
        ensure!(
            self.grad_logits.len() == want,
            "the loss returned {} logit gradients, expected {want}",
            self.grad_logits.len()
        );
        if let Some(g) = &self.grad_hidden {
            let want = x.batch * x.student_hidden_dim;
            ensure!(g.len() == want, "the loss returned {} hidden gradients, expected {want}", g.len());
        }
        Ok(())
    }
}

/// A distillation or supervised objective over plain buffers.
///
/// Implement it once; then `export_loss!(T)` makes a dynamic library of it and
/// `kdx_framework::register_sdk_loss!(T)` registers it in-tree. A loss implements
/// [`Loss::compute`] (it reads the student's outputs) or [`Loss::compute_with`] (it also reads
/// its own parameters or per-layer states, ABI 2); everything else has a default.
pub trait Loss: Sized + Send + 'static {
    /// The name recipes use (`[[loss]] plugin = "…"`): lowercase, words joined by `-`.
    const NAME: &'static str;
    /// One line shown in listings.
    const SUMMARY: &'static str;

    /// Builds the loss from its parameters (see [`Params::parse`]). A returned error is shown
    /// with the recipe location of the `[[loss]]` table; check every parameter here.
    fn create(params: &Params) -> Result<Self>;

    /// Whether the loss reads teacher outputs. Such losses are skipped in teacher-free
    /// stages (the baseline).
    fn needs_teacher(&self) -> bool;

    /// Whether the loss reads gold labels (refused in tasks where the student may not).
    fn needs_labels(&self) -> bool {
        !self.needs_teacher()
    }

    /// Whether the loss reads the teacher's hidden representation (kept for every training
    /// example when asked for, which costs memory).
    fn needs_teacher_hidden(&self) -> bool {
        false
    }

    /// (ABI 2) Whether the loss reads per-layer states and attention ([`Extra::student_layers`],
    /// and the teacher's when it [`Loss::needs_teacher`]). kdx computes them only for such
    /// losses, and runs the teacher on every batch for them (its states are too large to
    /// cache). The models must be transformers; [`Loss::check`] says what else must fit.
    fn needs_layers(&self) -> bool {
        false
    }

    /// (ABI 2) Checks, before anything trains (`kdx validate` too), that the loss fits the
    /// models: widths, layer indices, heads, tokenisation. An [`Error::param`] is reported at
    /// that key of the `[[loss]]` table, any other error at the table.
    fn check(&self, shapes: &Shapes) -> Result<()> {
        let _ = shapes;
        Ok(())
    }

    /// (ABI 2) The trainable parameters the loss owns (a projection between widths),
    /// declared at the start of every stage it takes part in; kdx creates, trains,
    /// checkpoints and exports them and passes their values in [`Extra::params`]. Called
    /// again in a later stage, return the same declarations: kdx keeps the values it has.
    fn parameters(&mut self, shapes: &Shapes) -> Result<Vec<ParamDecl>> {
        let _ = shapes;
        Ok(Vec::new())
    }

    /// (ABI 2) The name of the [`ParamDecl::Linear`] that maps the student's hidden vectors
    /// into the teacher's space, if the loss relates the two: kdx then scores translation
    /// retrieval through it, and `kdx embed` and the exported model use it.
    fn projection(&self) -> Option<&str> {
        None
    }

    /// Computes the value and the gradients on one batch. The default refuses: implement
    /// this or [`Loss::compute_with`].
    fn compute(&mut self, x: &LossInput) -> Result<LossOutput> {
        let _ = x;
        Err(Error::msg(format!("loss `{}` implements neither compute nor compute_with", Self::NAME)))
    }

    /// (ABI 2) Computes the value and the gradients on one batch with what ABI 2 adds: the
    /// loss's parameters and per-layer states in, their gradients out. The default calls
    /// [`Loss::compute`].
    fn compute_with(&mut self, x: &LossInput, extra: &Extra) -> Result<(LossOutput, ExtraGrads)> {
        let _ = extra;
        Ok((self.compute(x)?, ExtraGrads::default()))
    }

    /// Per-language state to report in `metrics.csv`'s `gate` column (ABI 1), if any.
    /// [`Loss::language_values`] names its values.
    fn language_state(&self) -> Option<Vec<f32>> {
        None
    }

    /// (ABI 2) Named per-language values, one per language each (a gate, a moving
    /// average): `metrics.csv` gets a column `<loss>.<name>` for each, its `macro` row the
    /// mean over the languages averaged there, and the `evaluated` event carries it.
    fn language_values(&self) -> Vec<(String, Vec<f32>)> {
        Vec::new()
    }

    /// (ABI 2) The loss's state beyond its parameters (moving averages, counters, a random
    /// generator), as bytes of the loss's own format: saved with every checkpoint and given
    /// back to [`Loss::load_state`] when the run resumes, so the resumed run equals the
    /// uninterrupted one.
    fn save_state(&self) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    /// (ABI 2) Restores what [`Loss::save_state`] returned.
    fn load_state(&mut self, state: &[u8]) -> Result<()> {
        let _ = state;
        Ok(())
    }

    /// The JSON Schema (draft 7) of the parameters, if the plugin publishes one: kdx then
    /// documents them in `kdx plugins`, accepts only them in `kdx schema`, and reports an
    /// unknown key at its line with a suggestion, as for built-in losses. With the `schema`
    /// feature, `Some(kdx_sdk::schema_for::<MyParams>())` makes it from a params struct that
    /// derives `schemars::JsonSchema` (its doc comments become the parameters' documentation).
    fn params_schema() -> Option<String> {
        None
    }
}

/// The JSON Schema of a parameters struct, for [`Loss::params_schema`].
#[cfg(feature = "schema")]
pub fn schema_for<P: schemars::JsonSchema>() -> String {
    serde_json::to_string(&schemars::schema_for!(P)).unwrap_or_default()
}

#[cfg(feature = "schema")]
pub use schemars;

/// The need flags ([`abi::NEEDS_TEACHER`] …) of a loss.
pub fn need_flags<L: Loss>(loss: &L) -> u32 {
    let mut f = 0;
    if loss.needs_teacher() {
        f |= abi::NEEDS_TEACHER;
    }
    if loss.needs_labels() {
        f |= abi::NEEDS_LABELS;
    }
    if loss.needs_teacher_hidden() {
        f |= abi::NEEDS_TEACHER_HIDDEN;
    }
    if loss.needs_layers() {
        f |= abi::NEEDS_LAYERS;
    }
    f
}

/// Exports a [`Loss`] as a kdx plugin: emits the C entry point ([`abi::ENTRY_SYMBOL`]) and the
/// functions its descriptor points to, each of which catches panics. Use once per
/// `crate-type = ["cdylib"]` crate: `kdx_sdk::export_loss!(MyLoss);`.
#[macro_export]
macro_rules! export_loss {
    ($loss:ty) => {
        /// The kdx plugin entry point (generated by `kdx_sdk::export_loss!`).
        #[no_mangle]
        pub extern "C" fn kdx_plugin_entry() -> *const $crate::abi::PluginDescriptor {
            static DESCRIPTOR: $crate::export::DescriptorCell = $crate::export::DescriptorCell::new();
            DESCRIPTOR.get::<$loss>()
        }

        /// The JSON Schema of the loss's parameters, or null (generated by `kdx_sdk::export_loss!`).
        #[no_mangle]
        pub extern "C" fn kdx_plugin_params_schema() -> *const ::std::ffi::c_char {
            static SCHEMA: $crate::export::SchemaCell = $crate::export::SchemaCell::new();
            SCHEMA.get::<$loss>()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_from_any_error_type() {
        fn f() -> Result<u32> {
            let n: u32 = "x".parse()?;
            Ok(n)
        }
        assert!(f().unwrap_err().message().contains("invalid digit"));
        fn g(ok: bool) -> Result<()> {
            ensure!(ok, "not ok: {}", 3);
            Ok(())
        }
        assert_eq!(g(false).unwrap_err().message(), "not ok: 3");
        assert!(g(true).is_ok());
    }

    #[cfg(feature = "json")]
    #[test]
    fn params_parse_errors_name_the_key_without_json_positions() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct P {
            temperature: f32,
        }
        let e = Params::from_json(r#"{"tempreature": 2.0}"#).parse::<P>().unwrap_err();
        assert!(e.message().starts_with("`tempreature`: unknown field `tempreature`"), "{e}");
        assert!(!e.message().contains("line"), "{e}");
        let e = Params::from_json(r#"{"temperature": "hot"}"#).parse::<P>().unwrap_err();
        assert_eq!(e.message(), "`temperature`: invalid type: string \"hot\", expected f32");
    }

    #[test]
    fn progress_runs_from_zero_to_one() {
        let s = testing::SampleBatch::random(2, 3, 1, 1.0, 1);
        assert_eq!(s.input(0, 11).progress(), 0.0);
        assert_eq!(s.input(5, 11).progress(), 0.5);
        assert_eq!(s.input(10, 11).progress(), 1.0);
        assert_eq!(s.input(0, 1).progress(), 1.0);
    }
}
