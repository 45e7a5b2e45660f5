//! Opening a plugin library: the checks, in order, and the descriptor's strings and
//! functions copied out. What a library creates (its losses) is in `dylib_loss`.

use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kdx_sdk::abi::{self, PluginDescriptor, PluginDescriptorV1};

/// The version of kdx this framework is; plugins must have been built for the same major
/// version and a minor version no newer ([`versions_compatible`]).
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
    #[error(
        "{0}: the plugin's entry point returned no descriptor (it panicked or could not describe itself)"
    )]
    NoDescriptor(PathBuf),
    /// An ABI version this kdx does not speak (a newer one).
    #[error("{path} was built for plugin ABI version {found}, but this kdx ({host}) speaks versions {min} to {want}", min = abi::MIN_ABI_VERSION, want = abi::ABI_VERSION, host = FRAMEWORK_VERSION)]
    WrongAbi {
        /// The file.
        path: PathBuf,
        /// The version it reports.
        found: u32,
    },
    /// Built for a newer kdx.
    #[error("{path} was built for kdx {found}, but this is kdx {host} (a plugin must be built for this kdx's major version and a minor version no newer)", host = FRAMEWORK_VERSION)]
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
                Some(format!("rebuild the plugin against kdx-sdk = \"={FRAMEWORK_VERSION}\" (the kdx-sdk of this kdx), or use a kdx at least as new as the plugin"))
            }
            _ => None,
        }
    }
}

/// Whether a plugin built for kdx `plugin` can be loaded by kdx `host`: the same major
/// version, and a minor version no newer than the host's (what a plugin may rely on is its
/// ABI version, checked first; an older SDK's library speaks an older ABI the host adapts).
pub fn versions_compatible(plugin: &str, host: &str) -> bool {
    fn major_minor(v: &str) -> Option<(u64, u64)> {
        let mut it = v.trim().split(['.', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }
    matches!((major_minor(plugin), major_minor(host)), (Some(a), Some(b)) if a.0 == b.0 && a.1 <= b.1)
}

/// The descriptor's functions, copied out (valid while the library is loaded).
#[derive(Clone, Copy)]
pub(super) struct Api {
    pub(super) create: abi::CreateFn,
    pub(super) compute: abi::ComputeFn,
    pub(super) language_state: abi::LanguageStateFn,
    pub(super) destroy: abi::DestroyFn,
    pub(super) free_string: abi::FreeStringFn,
    /// What ABI 2 adds; `None` for a version-1 library, which the host adapts.
    pub(super) v2: Option<ApiV2>,
}

/// The functions ABI 2 adds.
#[derive(Clone, Copy)]
pub(super) struct ApiV2 {
    pub(super) check: abi::CheckFn,
    pub(super) prepare: abi::PrepareFn,
    pub(super) compute: abi::ComputeV2Fn,
    pub(super) save_state: abi::SaveStateFn,
    pub(super) load_state: abi::LoadStateFn,
    pub(super) language_values: abi::LanguageValuesFn,
}

/// A loaded, checked plugin library.
pub struct PluginLibrary {
    pub(super) path: PathBuf,
    pub(super) name: String,
    pub(super) summary: String,
    pub(super) framework_version: String,
    /// The ABI version it speaks.
    pub(super) abi_version: u32,
    /// The JSON Schema of its parameters, when it publishes one.
    pub(super) params_schema: Option<serde_json::Value>,
    pub(super) api: Api,
    // Declared last: dropped after everything above (nothing above points into it, but the
    // function pointers in `api` are only valid while it is loaded).
    pub(super) lib: Arc<libloading::Library>,
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
        let (lib, desc) = load_descriptor(path)?;
        // The ABI version is the first field in every version of the ABI: read it alone,
        // and nothing else unless it matches.
        // SAFETY: a non-null descriptor starts with a u32 and lives as long as the library.
        let found = unsafe { std::ptr::read(desc as *const u32) };
        if !(abi::MIN_ABI_VERSION..=abi::ABI_VERSION).contains(&found) {
            return Err(PluginError::WrongAbi { path: path.to_path_buf(), found });
        }
        // SAFETY: every version's descriptor starts with version 1's fields, in its layout.
        let d: &PluginDescriptorV1 = unsafe { &*(desc as *const PluginDescriptorV1) };
        // SAFETY: `d` is the descriptor of `lib`, which stays loaded.
        let framework_version = unsafe { checked_framework_version(d, path)? };
        // SAFETY: as above.
        let (name, summary) = unsafe { checked_name_and_summary(d, path)? };
        // SAFETY: `desc` is `lib`'s descriptor, of ABI version `found` (checked above).
        let api = unsafe { Api::from_descriptor(desc, found) };
        // SAFETY: `lib` is a plugin library whose ABI version was checked above.
        let params_schema = unsafe { params_schema(&lib, path)? };
        Ok(Arc::new(PluginLibrary {
            path: path.to_path_buf(),
            name,
            summary,
            framework_version,
            abi_version: found,
            params_schema,
            api,
            lib: Arc::new(lib),
        }))
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

    /// The plugin ABI version the library speaks (1 is adapted by the host).
    pub fn abi_version(&self) -> u32 {
        self.abi_version
    }

    /// Takes a message the plugin stored, and frees it with the plugin's allocator.
    pub(super) fn take_message(&self, p: *mut c_char) -> String {
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
}

/// Loads the library at `path` and calls its entry point: the library and the descriptor it
/// returned (not null, not yet read). Refuses a missing file, a file the system cannot load
/// and a library without the entry point, each with its own [`PluginError`].
fn load_descriptor(path: &Path) -> Result<(libloading::Library, *const PluginDescriptor), PluginError> {
    // An absolute path: the system loader searches its own directories for a bare name.
    let Ok(absolute) = std::fs::canonicalize(path) else {
        return Err(PluginError::Missing(path.to_path_buf()));
    };
    let lib = open_library(&absolute)
        .map_err(|e| PluginError::NotALibrary { path: path.to_path_buf(), reason: e.to_string() })?;
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
    Ok((lib, desc))
}

/// The kdx version the plugin was built for, refused unless this kdx can load it
/// ([`versions_compatible`]).
///
/// # Safety
/// `d` is the descriptor of a library that is still loaded.
unsafe fn checked_framework_version(d: &PluginDescriptorV1, path: &Path) -> Result<String, PluginError> {
    // SAFETY: the descriptor's strings are NUL-terminated and static in the library.
    let framework_version = unsafe { descriptor_str(d.framework_version, "framework version", path)? };
    if !versions_compatible(&framework_version, FRAMEWORK_VERSION) {
        return Err(PluginError::WrongVersion { path: path.to_path_buf(), found: framework_version });
    }
    Ok(framework_version)
}

/// The plugin's name and summary, once its kind is known to be a loss (the only kind a
/// library may be) and its name a valid plugin name.
///
/// # Safety
/// `d` is the descriptor of a library that is still loaded.
unsafe fn checked_name_and_summary(
    d: &PluginDescriptorV1,
    path: &Path,
) -> Result<(String, String), PluginError> {
    let invalid = |reason: String| PluginError::Invalid { path: path.to_path_buf(), reason };
    if d.kind != abi::KIND_LOSS {
        return Err(invalid(format!(
            "the plugin is of kind {}, which this kdx cannot load (it loads loss plugins)",
            d.kind
        )));
    }
    // SAFETY: the descriptor's strings are NUL-terminated and static in the library.
    let (name, summary) =
        unsafe { (descriptor_str(d.name, "name", path)?, descriptor_str(d.summary, "summary", path)?) };
    if !valid_name(&name) {
        return Err(invalid(format!(
            "the plugin's name `{name}` is not a valid plugin name (lowercase letters, digits and `-`)"
        )));
    }
    Ok((name, summary))
}

impl Api {
    /// The descriptor's functions, copied out; those of ABI 2 only when the library speaks it.
    ///
    /// # Safety
    /// `desc` is the descriptor of a library that is still loaded, of ABI version `found`
    /// (at least 1).
    unsafe fn from_descriptor(desc: *const PluginDescriptor, found: u32) -> Api {
        // SAFETY: every version's descriptor starts with version 1's fields, in its layout.
        let d: &PluginDescriptorV1 = unsafe { &*(desc as *const PluginDescriptorV1) };
        let v2 = (found >= 2).then(|| {
            // SAFETY: a version-2 descriptor is a `PluginDescriptor`.
            let d: &PluginDescriptor = unsafe { &*desc };
            ApiV2 {
                check: d.check,
                prepare: d.prepare,
                compute: d.compute_v2,
                save_state: d.save_state,
                load_state: d.load_state,
                language_values: d.language_values,
            }
        });
        Api {
            create: d.create,
            compute: d.compute,
            language_state: d.language_state,
            destroy: d.destroy,
            free_string: d.free_string,
            v2,
        }
    }
}

/// The JSON Schema of the plugin's parameters, when the library exports one; a schema that
/// is not JSON refuses the library.
///
/// # Safety
/// `lib` is a plugin library whose ABI version was checked.
unsafe fn params_schema(
    lib: &libloading::Library,
    path: &Path,
) -> Result<Option<serde_json::Value>, PluginError> {
    let invalid = |reason: String| PluginError::Invalid { path: path.to_path_buf(), reason };
    // SAFETY: the symbol, when present, is a `SchemaFn` (exported by `export_loss!` of an
    // SDK whose ABI version was checked, this function's precondition).
    let schema_fn: Option<abi::SchemaFn> =
        unsafe { lib.get::<abi::SchemaFn>(abi::SCHEMA_SYMBOL.as_bytes()).ok().map(|s| *s) };
    Ok(match schema_fn {
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
    })
}

/// Plugin names: lowercase ASCII letters and digits in words joined by `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .split('-')
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
}
