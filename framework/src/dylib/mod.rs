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
//! equals [`kdx_sdk::ABI_VERSION`]; its framework version has this kdx's `major.minor`; it is a
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
use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kdx_recipe::{Diagnostic, Diagnostics, KeyPath, RecipeDoc};
pub use kdx_sdk;
use kdx_sdk::abi::{self, PluginDescriptor};

use crate::loss::Loss;
use crate::registry::{self, PluginKind};

mod dylib_loss;
mod sdk_loss;
pub use dylib_loss::DylibLoss;
pub use sdk_loss::SdkLoss;

/// The version of kdx this framework is; plugins must have been built for the same
/// `major.minor`.
pub const FRAMEWORK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a library was refused.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file does not exist.
    #[error("plugin library {0} does not exist")]
    Missing(PathBuf),
    /// The file is not a dynamic library the system can load.
    #[error("{path} could not be loaded as a dynamic library: {reason}")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The loader's words.
        reason: String,
    },
    /// A dynamic library without the entry point.
    #[error("{0} is not a kdx plugin: it exports no `{sym}` function", sym = abi::ENTRY_SYMBOL)]
    NotAPlugin(PathBuf),
    /// The entry point gave no descriptor (it panicked or could not describe itself).
    #[error("{0}: the plugin's entry point returned no descriptor (it panicked or could not describe itself)")]
    NoDescriptor(PathBuf),
    /// Another ABI version.
    #[error("{path} was built for plugin ABI version {found}, but this kdx ({host}) speaks version {want}", want = abi::ABI_VERSION, host = FRAMEWORK_VERSION)]
    WrongAbi {
        /// The file.
        path: PathBuf,
        /// The version it reports.
        found: u32,
    },
    /// Built for another kdx version.
    #[error("{path} was built for kdx {found}, but this is kdx {host} (a plugin must be built for the same major.minor version)", host = FRAMEWORK_VERSION)]
    WrongVersion {
        /// The file.
        path: PathBuf,
        /// The version it reports.
        found: String,
    },
    /// A malformed descriptor (a kind this kdx does not know, a bad name).
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl PluginError {
    /// How to fix it, when there is something to say.
    pub fn help(&self) -> Option<String> {
        match self {
            PluginError::Missing(_) => Some(
                "paths in `[plugins] libraries` are relative to the recipe file; build the plugin first (cargo build --release)".into(),
            ),
            PluginError::NotAPlugin(_) => {
                Some("a plugin crate has `crate-type = [\"cdylib\"]` and ends with `kdx_sdk::export_loss!(YourLoss);`".into())
            }
            PluginError::WrongAbi { .. } | PluginError::WrongVersion { .. } => {
                Some(format!("rebuild the plugin against kdx-sdk = \"={FRAMEWORK_VERSION}\" (the kdx-sdk of this kdx)"))
            }
            _ => None,
        }
    }
}

/// Whether a plugin built for kdx `plugin` can be loaded by kdx `host`: same `major.minor`.
pub fn versions_compatible(plugin: &str, host: &str) -> bool {
    fn major_minor(v: &str) -> Option<(u64, u64)> {
        let mut it = v.trim().split(['.', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }
    matches!((major_minor(plugin), major_minor(host)), (Some(a), Some(b)) if a == b)
}

/// The descriptor's functions, copied out (valid while the library is loaded).
#[derive(Clone, Copy)]
struct Api {
    create: abi::CreateFn,
    compute: abi::ComputeFn,
    language_state: abi::LanguageStateFn,
    destroy: abi::DestroyFn,
    free_string: abi::FreeStringFn,
}

/// A loaded, checked plugin library.
pub struct PluginLibrary {
    path: PathBuf,
    name: String,
    summary: String,
    framework_version: String,
    /// The JSON Schema of its parameters, when it publishes one.
    params_schema: Option<serde_json::Value>,
    api: Api,
    // Declared last: dropped after everything above (nothing above points into it, but the
    // function pointers in `api` are only valid while it is loaded).
    lib: Arc<libloading::Library>,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary").field("path", &self.path).field("name", &self.name).finish()
    }
}

/// Reads a NUL-terminated UTF-8 string of the descriptor.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string valid while the library is loaded.
unsafe fn descriptor_str(p: *const c_char, what: &str, path: &Path) -> Result<String, PluginError> {
    let invalid = |reason: String| PluginError::Invalid { path: path.to_path_buf(), reason };
    if p.is_null() {
        return Err(invalid(format!("the plugin's descriptor has no {what}")));
    }
    // SAFETY: forwarded to the caller.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(str::to_string).map_err(|_| invalid(format!("the plugin's {what} is not UTF-8")))
}

fn open_library(path: &Path) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: loading a library runs its initialisers; a plugin is code the user chose to run.
    #[cfg(unix)]
    unsafe {
        // Resolve every symbol now, so a library with missing dependencies fails here, not
        // in the middle of a run.
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        Library::open(Some(path), RTLD_NOW | RTLD_LOCAL).map(Into::into)
    }
    #[cfg(not(unix))]
    unsafe {
        libloading::Library::new(path)
    }
}

impl PluginLibrary {
    /// Loads and checks a plugin library (see the module documentation for the checks).
    pub fn open(path: &Path) -> Result<Arc<PluginLibrary>, PluginError> {
        // An absolute path: the system loader searches its own directories for a bare name.
        let Ok(absolute) = std::fs::canonicalize(path) else {
            return Err(PluginError::Missing(path.to_path_buf()));
        };
        let lib = open_library(&absolute).map_err(|e| PluginError::NotALibrary { path: path.to_path_buf(), reason: e.to_string() })?;
        // SAFETY: the symbol, if present, is an `EntryFn` (the ABI's contract for this name).
        let entry: abi::EntryFn = unsafe {
            match lib.get::<abi::EntryFn>(abi::ENTRY_SYMBOL.as_bytes()) {
                Ok(sym) => *sym,
                Err(_) => return Err(PluginError::NotAPlugin(path.to_path_buf())),
            }
        };
        // SAFETY: the entry point takes nothing and catches its own panics (export_loss!).
        let desc = unsafe { entry() };
        if desc.is_null() {
            return Err(PluginError::NoDescriptor(path.to_path_buf()));
        }
        // The ABI version is the first field in every version of the ABI: read it alone,
        // and nothing else unless it matches.
        // SAFETY: a non-null descriptor starts with a u32 and lives as long as the library.
        let found = unsafe { std::ptr::read(desc as *const u32) };
        if found != abi::ABI_VERSION {
            return Err(PluginError::WrongAbi { path: path.to_path_buf(), found });
        }
        // SAFETY: same ABI version, so the layout is `PluginDescriptor`.
        let d: &PluginDescriptor = unsafe { &*desc };
        // SAFETY: the descriptor's strings are NUL-terminated and static in the library.
        let framework_version = unsafe { descriptor_str(d.framework_version, "framework version", path)? };
        if !versions_compatible(&framework_version, FRAMEWORK_VERSION) {
            return Err(PluginError::WrongVersion { path: path.to_path_buf(), found: framework_version });
        }
        let invalid = |reason: String| PluginError::Invalid { path: path.to_path_buf(), reason };
        if d.kind != abi::KIND_LOSS {
            return Err(invalid(format!("the plugin is of kind {}, which this kdx cannot load (it loads loss plugins)", d.kind)));
        }
        // SAFETY: as above.
        let (name, summary) = unsafe { (descriptor_str(d.name, "name", path)?, descriptor_str(d.summary, "summary", path)?) };
        if !valid_name(&name) {
            return Err(invalid(format!("the plugin's name `{name}` is not a valid plugin name (lowercase letters, digits and `-`)")));
        }
        let api =
            Api { create: d.create, compute: d.compute, language_state: d.language_state, destroy: d.destroy, free_string: d.free_string };
        // SAFETY: the symbol, when present, is a `SchemaFn` (exported by `export_loss!` of an
        // SDK whose ABI version was checked above).
        let schema_fn: Option<abi::SchemaFn> = unsafe { lib.get::<abi::SchemaFn>(abi::SCHEMA_SYMBOL.as_bytes()).ok().map(|s| *s) };
        let params_schema = match schema_fn {
            None => None,
            // SAFETY: it returns null or a NUL-terminated string that lives as long as the library.
            Some(f) => match unsafe { f() } {
                p if p.is_null() => None,
                // SAFETY: as above.
                p => Some(unsafe { descriptor_str(p, "parameter schema", path)? })
                    .map(|s| serde_json::from_str::<serde_json::Value>(&s))
                    .transpose()
                    .map_err(|e| invalid(format!("its parameter schema is not JSON: {e}")))?,
            },
        };
        Ok(Arc::new(PluginLibrary { path: path.to_path_buf(), name, summary, framework_version, params_schema, api, lib: Arc::new(lib) }))
    }

    /// The JSON Schema of its parameters, when it publishes one ([`kdx_sdk::Loss::params_schema`]).
    pub fn params_schema(&self) -> Option<&serde_json::Value> {
        self.params_schema.as_ref()
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin's name (what `[[loss]] plugin = "…"` names).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's one-line summary.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// The kdx version the plugin was built for.
    pub fn framework_version(&self) -> &str {
        &self.framework_version
    }

    /// Takes a message the plugin stored, and frees it with the plugin's allocator.
    fn take_message(&self, p: *mut c_char) -> String {
        if p.is_null() {
            return "(the plugin gave no message)".into();
        }
        // SAFETY: the plugin stored a NUL-terminated string it allocated; it is freed once.
        unsafe {
            let s = CStr::from_ptr(p).to_string_lossy().into_owned();
            (self.api.free_string)(p);
            s
        }
    }

    /// Creates a loss from its parameters (a JSON object). The error is the plugin's message;
    /// a panic inside the plugin is reported as one.
    pub fn create_loss(self: &Arc<Self>, params_json: &str) -> Result<DylibLoss, String> {
        let mut handle: *mut c_void = std::ptr::null_mut();
        let mut flags = 0u32;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid pointers to locals; the JSON outlives the call.
        let status = unsafe { (self.api.create)(params_json.as_ptr(), params_json.len(), &mut handle, &mut flags, &mut err) };
        match status {
            abi::STATUS_OK if !handle.is_null() => {
                Ok(DylibLoss { handle, flags, failed: None, n_langs: 0, plugin: self.clone(), _lib: self.lib.clone() })
            }
            abi::STATUS_OK => Err("the plugin reported success but returned no loss".into()),
            abi::STATUS_PANIC => Err(format!("the plugin panicked: {}", self.take_message(err))),
            _ => Err(self.take_message(err)),
        }
    }

    /// Builds a loss for the `[[loss]]` table at `key`: `params` is the table without
    /// `plugin` and `weight`. The plugin's refusal is located at `key`.
    pub fn build_loss(self: &Arc<Self>, doc: &RecipeDoc, key: &KeyPath, params: &toml::Table) -> Result<Box<dyn Loss>, Diagnostic> {
        let json =
            serde_json::to_string(params).map_err(|e| doc.diag(key, format!("cannot pass the parameters to the plugin: {e}"), None))?;
        match self.create_loss(&json) {
            Ok(l) => Ok(Box::new(l)),
            Err(msg) => Err(parameter_error(doc, key, params, &msg, &format!("loss plugin `{}` ({}): ", self.name, self.path.display()))),
        }
    }
}

/// A plugin's refusal of its parameters as a diagnostic: at the offending key when the message
/// names one (`` `temperature`: … ``, as `kdx_sdk::Params::parse` writes it), worded as for
/// built-in plugins (`expected a number, found string "hot"`); at the table otherwise.
pub fn parameter_error(doc: &RecipeDoc, key: &KeyPath, params: &toml::Table, msg: &str, prefix: &str) -> Diagnostic {
    let named = msg.strip_prefix('`').and_then(|r| r.split_once("`: ")).filter(|(k, _)| {
        let first = k.split(['.', '[']).next().unwrap_or_default();
        params.contains_key(first)
    });
    match named {
        Some((k, rest)) => {
            let at = k.split('.').filter(|s| !s.is_empty()).fold(key.clone(), |p, s| p.key(s));
            let (message, help) = kdx_recipe::humanize_serde_message(rest);
            doc.diag(&at, format!("{prefix}{message}"), help)
        }
        None => {
            let (message, help) = kdx_recipe::humanize_serde_message(msg);
            doc.diag(key, format!("{prefix}{message}"), help)
        }
    }
}

thread_local! {
    static IN_PLUGIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a call into plugin code that catches its panics) marked as such, so the
/// application's panic hook can stay silent for panics kdx reports itself ([`in_plugin_call`]).
pub fn plugin_call<R>(f: impl FnOnce() -> R) -> R {
    let was = IN_PLUGIN.with(|c| c.replace(true));
    let r = f();
    IN_PLUGIN.with(|c| c.set(was));
    r
}

/// Whether this thread is inside [`plugin_call`]: a panic here is caught and reported by kdx.
pub fn in_plugin_call() -> bool {
    IN_PLUGIN.with(std::cell::Cell::get)
}

/// Plugin names: lowercase ASCII letters and digits in words joined by `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.split('-').all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
}

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

    #[test]
    fn versions_match_on_major_and_minor() {
        assert!(versions_compatible("0.1.0", "0.1.7"));
        assert!(versions_compatible("1.2.3-beta.1", "1.2.0"));
        assert!(!versions_compatible("0.2.0", "0.1.0"));
        assert!(!versions_compatible("99.0.0", "0.1.0"));
        assert!(!versions_compatible("garbage", "0.1.0"));
        assert!(versions_compatible(kdx_sdk::FRAMEWORK_VERSION, FRAMEWORK_VERSION), "the SDK is versioned with the framework");
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
