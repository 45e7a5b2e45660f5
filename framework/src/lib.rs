//! kdx-framework: the core of kdx.
//!
//! Data flows one way: `recipe.toml` → [`kdx_recipe::RecipeDoc`] (parsed, merged, located)
//! → [`plan::Plan`] (plugins resolved through the [`registry`], parameters typed) →
//! [`engine::run`] (stages on dfdx) → [`report`]s. Plugins implement the traits in
//! [`dataset`], [`model`], [`loss`] and [`sampler`] and register with the `register_*!` macros.

pub mod batch;
pub mod bench;
pub mod cli;
pub mod compare;
pub mod dataset;
pub mod dfdx_prelude;
pub mod dylib;
pub mod engine;
pub mod export;
pub mod features;
pub mod loss;
pub mod model;
pub mod plan;
pub mod plot;
pub mod registry;
pub mod report;
pub mod retrieval;
pub mod sampler;
pub mod schedule;
pub mod schema;

// Re-exported for the registration macros and for plugin crates.
#[doc(hidden)]
pub use inventory;
pub use kdx_corpus;
pub use kdx_recipe;
#[doc(hidden)]
pub use schemars;
