//! What a corpus build is and makes: its options, its report, the snapshot's columns and a
//! locale's rows. The build, the manifest and the loader all read these; they live here,
//! below all three, so that none of them imports another in a circle.

use std::path::PathBuf;

/// Columns of the snapshot, in order; the first line of the file.
pub const HEADER: &str = "locale\tdomain\tmsgid\ttext";

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Root of the locale tree, usually `/usr/share/locale`.
    pub locale_dir: PathBuf,
    /// The `.tsv.gz` to write; `MANIFEST.md` goes in the same directory.
    pub out: PathBuf,
    /// Keep at most this many rows per locale (see the module docs for which ones).
    pub max_per_locale: Option<usize>,
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// Number of locales with at least one row.
    pub locales: usize,
    /// Total rows written (header excluded).
    pub rows: usize,
    /// Number of distinct domains (catalog names) with at least one row.
    pub domains: usize,
    /// Size of the written `.tsv.gz` in bytes.
    pub bytes: u64,
    /// Hex sha256 of the written `.tsv.gz` (also in the manifest).
    pub sha256: String,
    /// Catalogs or names that were skipped or only partly read, each with path and reason.
    pub warnings: Vec<String>,
    /// Rows per locale, largest first (ties by size before the cap, then by name).
    pub per_locale: Vec<(String, usize)>,
}

/// One output row of a locale: domain index (into the locale's sorted domains), msgid, text.
pub(crate) type LocaleRow = (usize, String, String);

/// The rows of one locale after dedupe and cap.
pub(crate) struct LocaleRows {
    pub locale: String,
    /// Catalog stems read for this locale, sorted (indices of `rows` point here).
    pub domains: Vec<String>,
    pub rows: Vec<LocaleRow>,
    /// Rows before the cap.
    pub available: usize,
}
