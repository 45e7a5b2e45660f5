//! Recipe loading for kdx: TOML files with `extends` inheritance, `[sweep]`
//! grids, and diagnostics that point at file:line:column.
//!
//! This crate knows nothing about plugins. The framework deserialises sections
//! of a [`RecipeDoc`] into its own typed structs (see
//! [`RecipeDoc::deserialize_at`]) and uses [`RecipeDoc::locate`] /
//! [`RecipeDoc::diag`] to report what is wrong and where.
//!
//! ```no_run
//! use kdx_recipe::{KeyPath, RecipeDoc};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let doc = RecipeDoc::load("recipes/lid/quickstart.toml".as_ref())?;
//! for run in doc.expand_sweep()? {
//!     let key = KeyPath::parse_dotted("train.steps")?;
//!     let steps: u64 = run.doc.deserialize_at(&key, run.doc.get(&key).cloned().unwrap_or(0.into()))?;
//!     println!("{} {steps}", run.name);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Merge rule for `extends`: tables merge key by key, recursively; any other
//! value, arrays and arrays of tables included, is replaced wholesale by the
//! later file. A child recipe that declares `[[loss]]` therefore replaces the
//! whole `loss` list of its base, and a table naming a different `plugin` than
//! its base's replaces the base's table.

mod diag;
mod doc;
mod keypath;
mod sweep;

pub use diag::{did_you_mean, humanize_serde_message, unknown_key_help, Diagnostic, Diagnostics, Loc};
pub use doc::RecipeDoc;
pub use keypath::{KeyPath, ParseKeyPathError, Seg};
pub use sweep::{SweepRun, MAX_SWEEP_RUNS};

#[cfg(test)]
mod tests;
