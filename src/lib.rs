//! kdx, the application: the command line, batch runs, report comparison and plots, the
//! benchmark and the plugin scaffold, on top of the `kdx-framework` core.
//!
//! Architecture invariant: this crate presents and orchestrates; it trains nothing itself.
//! It drives the core through `Plan` and `engine::run`, and watches runs through the core's
//! `Observer` trait ([`console`] renders events for a person or as JSON lines).

pub mod batch;
pub mod bench;
pub mod cli;
pub mod compare;
pub mod console;
pub mod convert;
pub mod corpus_build;
pub mod embed;
pub mod eval;
pub mod input;
pub mod plot;
pub mod scaffold;
