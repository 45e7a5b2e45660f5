//! Loss plugins from dynamic libraries, and losses written against `kdx-sdk` in-tree.
//!
//! A plugin library is a `cdylib` built with `kdx_sdk::export_loss!`. Only plain data crosses
//! the boundary (see [`kdx_sdk::abi`]): the host hands the batch's buffers over, the plugin
//! returns the loss value and its gradient with respect to the student's outputs, and the
//! engine folds that gradient into its own tape as it does for every loss. A plugin may use
//! its own dfdx inside; its tensors never meet the host's.
//!
//! Loading checks, in order: the file exists; it is a dynamic library; it exports
//! [`kdx_sdk::abi::ENTRY_SYMBOL`]; the descriptor's ABI version (read before anything else)
//! is one this kdx speaks ([`kdx_sdk::abi::MIN_ABI_VERSION`] to [`kdx_sdk::ABI_VERSION`]: a
//! version-1 library is adapted); its framework version has this kdx's major version and a
//! minor version no newer; it is a
//! loss plugin with a valid name. A recipe ([`PluginSet::load`]) also refuses two plugins with
//! one name and a plugin named like a built-in. Every refusal is an error message, never a
//! crash; a panic inside a plugin fails the run it happens in with the plugin's message.
//!
//! Each loss created from a library holds an `Arc` of it: the library stays loaded for as
//! long as anything it created lives.
//!
//! [`SdkLoss`] adapts any [`kdx_sdk::Loss`] to the framework's [`Loss`] directly, so the same
//! source also compiles in-tree ([`register_sdk_loss!`](crate::register_sdk_loss)).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use kdx_recipe::{Diagnostic, Diagnostics, KeyPath, RecipeDoc};
pub use kdx_sdk;

use crate::registry::{self, PluginKind};

mod boundary;
mod dylib_loss;
mod library;
mod owned_params;
mod sdk_loss;
pub use boundary::{in_plugin_call, parameter_error, plugin_call};
pub use dylib_loss::DylibLoss;
pub use library::{valid_name, versions_compatible, PluginError, PluginLibrary, FRAMEWORK_VERSION};
pub use owned_params::LossParams;
pub use sdk_loss::{layers_view, SdkLoss};

/// The parameter schema of a loss written against the SDK: any table (the loss checks its
/// own parameters when it is created).
pub fn any_params_schema() -> schemars::schema::RootSchema {
    schemars::schema_for!(serde_json::Map<String, serde_json::Value>)
}

/// The parameter schema of the SDK loss `T`: the one it publishes
/// ([`kdx_sdk::Loss::params_schema`]), else any table.
pub fn sdk_params_schema<T: kdx_sdk::Loss>() -> schemars::schema::RootSchema {
    T::params_schema().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_else(any_params_schema)
}

/// Registers a [`kdx_sdk::Loss`] in-tree, like `register_loss!` does for framework losses:
/// `kdx_framework::register_sdk_loss!(MyLoss);` in a file under `plugins/src/loss/`. The
/// name and summary are the type's `NAME` and `SUMMARY`.
#[macro_export]
macro_rules! register_sdk_loss {
    ($loss:ty) => {
        $crate::inventory::submit! {
            $crate::registry::Registration {
                name: <$loss as $crate::dylib::kdx_sdk::Loss>::NAME,
                summary: <$loss as $crate::dylib::kdx_sdk::Loss>::SUMMARY,
                schema: $crate::dylib::sdk_params_schema::<$loss>,
                builder: $crate::registry::Builder::Loss($crate::dylib::SdkLoss::<$loss>::build),
                file: file!(),
            }
        }
    };
}

/// Where a library was named: a recipe key, or the command line.
#[derive(Clone, Debug)]
pub enum Origin {
    /// `[plugins] libraries[i]` of the recipe.
    Recipe(KeyPath),
    /// `kdx run --plugin PATH`.
    CommandLine,
}

/// The plugin libraries of one plan: recipe's `[plugins] libraries` and `--plugin` ones, each
/// loaded once, with unique names that no built-in has.
#[derive(Clone, Default, Debug)]
pub struct PluginSet {
    libs: Vec<Arc<PluginLibrary>>,
}

impl PluginSet {
    /// Loads every library; each refusal becomes a diagnostic (located at the recipe key
    /// that named the library, where there is one). A file named twice is loaded once.
    pub fn load(doc: &RecipeDoc, libraries: &[(Origin, PathBuf)], diags: &mut Diagnostics) -> PluginSet {
        let mut set = PluginSet::default();
        let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
        let mut origin_of: BTreeMap<String, Origin> = BTreeMap::new();
        for (origin, path) in libraries {
            let report = |diags: &mut Diagnostics, message: String, help: Option<String>| match origin {
                Origin::Recipe(key) => diags.push(doc.diag(key, message, help)),
                Origin::CommandLine => {
                    let mut d = Diagnostic::new(format!("--plugin: {message}"));
                    d.help = help;
                    diags.push(d)
                }
            };
            let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            if !seen.insert(canonical) {
                continue;
            }
            let lib = match PluginLibrary::open(path) {
                Ok(l) => l,
                Err(e) => {
                    report(diags, e.to_string(), e.help());
                    continue;
                }
            };
            if let Some(builtin) = registry::find(PluginKind::Loss, lib.name()) {
                report(
                    diags,
                    format!(
                        "{} defines the loss `{}`, but a built-in loss has that name (registered in {})",
                        path.display(),
                        lib.name(),
                        builtin.file
                    ),
                    Some("rename the plugin (its `NAME`): plugin names must be unique".into()),
                );
                continue;
            }
            if let Some(prev) = set.libs.iter().find(|l| l.name() == lib.name()) {
                let named = match &origin_of[lib.name()] {
                    Origin::Recipe(k) => format!(" (named at {k})"),
                    Origin::CommandLine => " (named by --plugin)".into(),
                };
                report(
                    diags,
                    format!(
                        "two loss plugins are named `{}`: one in {}{named}, one in {}",
                        lib.name(),
                        prev.path().display(),
                        path.display()
                    ),
                    Some("load only one of them, or rename one (its `NAME`)".into()),
                );
                continue;
            }
            origin_of.insert(lib.name().to_string(), origin.clone());
            set.libs.push(lib);
        }
        set
    }

    /// The library providing the loss `name`, if one does.
    pub fn loss(&self, name: &str) -> Option<&Arc<PluginLibrary>> {
        self.libs.iter().find(|l| l.name() == name)
    }

    /// The loaded libraries.
    pub fn libraries(&self) -> &[Arc<PluginLibrary>] {
        &self.libs
    }

    /// Names of the losses the libraries provide.
    pub fn names(&self) -> Vec<&str> {
        self.libs.iter().map(|l| l.name()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn plugins_for_this_or_an_older_minor_version_load() {
        assert!(versions_compatible("0.1.0", "0.1.7"));
        assert!(versions_compatible("1.2.3-beta.1", "1.2.0"));
        assert!(versions_compatible("0.1.0", "0.2.0"), "a kdx 0.1 plugin (ABI 1) loads in kdx 0.2");
        assert!(!versions_compatible("0.2.0", "0.1.0"));
        assert!(!versions_compatible("1.0.0", "2.3.0"), "another major version");
        assert!(!versions_compatible("99.0.0", "0.1.0"));
        assert!(!versions_compatible("garbage", "0.1.0"));
        assert!(
            versions_compatible(kdx_sdk::FRAMEWORK_VERSION, FRAMEWORK_VERSION),
            "the SDK is versioned with the framework"
        );
    }

    #[test]
    fn plugin_names_are_kebab_case() {
        for ok in ["focal-kd", "a", "kd2", "my-loss-3"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "Focal", "a_b", "3d", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_missing_file_and_a_non_library_are_refused() {
        let e = PluginLibrary::open(Path::new("/nonexistent/libx.so")).unwrap_err();
        assert!(matches!(e, PluginError::Missing(_)), "{e}");
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("libfake.so");
        std::fs::write(&p, "not a library").unwrap();
        let e = PluginLibrary::open(&p).unwrap_err();
        assert!(matches!(e, PluginError::NotALibrary { .. }), "{e}");
    }
}
