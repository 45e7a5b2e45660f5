//! kdx-plugins: the built-in datasets, models, losses and samplers.
//!
//! One file per plugin under `src/<kind>/`; the build script lists them, each file
//! registers itself with one `register_*!`. Binaries and tests must name this crate
//! (`use kdx_plugins as _;`) or the linker drops the registrations.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// Call from a binary or test to make sure the plugins are linked.
pub fn link() {}
