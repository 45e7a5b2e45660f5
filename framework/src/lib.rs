//! kdx-framework: the core of kdx, a library with no command line, terminal or plotting code.
//!
//! Data flows one way: `recipe.toml` → [`kdx_recipe::RecipeDoc`] (parsed, merged, located)
//! → [`plan::Plan`] (plugins resolved through the [`registry`], parameters typed, plugin
//! instances built) → [`engine::run`] (stages on dfdx, [`event::Event`]s to an
//! [`event::Observer`]) → [`report`]s. Plugins implement the traits in [`dataset`],
//! [`model`], [`loss`] and [`sampler`] and register with the `register_*!` macros; plugin
//! authors start from [`prelude`].

#![warn(missing_docs)]

pub mod dataset;
pub mod dfdx_prelude;
pub mod dylib;
pub mod embedding;
pub mod engine;
pub mod event;
pub mod export;
pub mod features;
pub mod infer;
pub mod loss;
pub mod model;
pub mod nn;
pub mod optim;
pub mod outputs;
pub mod param;
pub mod plan;
pub mod prelude;
pub mod registry;
pub mod report;
pub mod retrieval;
pub mod sampler;
pub mod schedule;
pub mod schema;
pub mod seed;
pub mod stage;
pub mod store;
pub mod testing;
pub mod tokenize;

// Re-exported for the registration macros and for plugin crates.
#[doc(hidden)]
pub use inventory;
pub use kdx_recipe;
#[doc(hidden)]
pub use schemars;
