//! `MANIFEST.md`: what a snapshot contains and where it came from, written next to it for
//! people; and `MANIFEST.json`, its facts for programs ([`Manifest`]: the file's checksum,
//! rows per locale), which kdx reads back — the Markdown is never parsed.
//!
//! Neither carries a date, so rebuilding from the same catalogs gives identical files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::clean::MIN_CHARS;
use crate::snapshot::{BuildOptions, BuildReport, LocaleRows, HEADER};

/// Heading of the rows-per-locale table.
const LOCALE_TABLE_HEADING: &str = "## Rows per locale";

/// The format tag of `MANIFEST.json`.
pub const MANIFEST_FORMAT: &str = "kdx-corpus-manifest-1";

/// `MANIFEST.json`: what a snapshot holds, for programs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// The snapshot's file name.
    pub file: String,
    /// Hex sha256 of the snapshot.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The command that rebuilds it.
    pub command: String,
    /// The cap on rows per locale, if any.
    pub max_per_locale: Option<usize>,
    /// Rows written (header excluded).
    pub rows: usize,
    /// Distinct domains with at least one row.
    pub domains: usize,
    /// Rows per locale, and before the cap.
    pub locales: BTreeMap<String, LocaleCount>,
}

/// One locale's rows in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LocaleCount {
    /// Rows in the snapshot.
    pub rows: usize,
    /// Rows after cleaning and dedupe, before the cap.
    pub before_cap: usize,
}

/// The manifest's facts.
pub(crate) fn facts(input: &ManifestInput) -> Manifest {
    let ManifestInput { opts, report, locales, .. } = input;
    let available_of: BTreeMap<&str, usize> =
        locales.iter().map(|l| (l.locale.as_str(), l.available)).collect();
    Manifest {
        format: MANIFEST_FORMAT.into(),
        file: file_name(&opts.out),
        sha256: report.sha256.clone(),
        bytes: report.bytes,
        command: command_line(opts),
        max_per_locale: opts.max_per_locale,
        rows: report.rows,
        domains: report.domains,
        locales: report
            .per_locale
            .iter()
            .map(|(l, rows)| {
                let before_cap = available_of.get(l.as_str()).copied().unwrap_or(*rows);
                (l.clone(), LocaleCount { rows: *rows, before_cap })
            })
            .collect(),
    }
}

/// `MANIFEST.json`'s text (pretty, one trailing newline: a stable, diffable file).
pub(crate) fn render_json(manifest: &Manifest) -> String {
    serde_json::to_string_pretty(manifest).unwrap_or_default() + "\n"
}

/// The last component of `path`, or the whole path without one.
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned())
}

/// Where package ownership and versions are read from.
const DPKG_INFO: &str = "/var/lib/dpkg/info";
const DPKG_STATUS: &str = "/var/lib/dpkg/status";

/// One catalog file read by the build, for the source-package table.
pub(crate) struct CatalogSource {
    pub domain: String,
    pub path: PathBuf,
}

/// Everything the manifest reports on.
pub(crate) struct ManifestInput<'a> {
    pub opts: &'a BuildOptions,
    pub report: &'a BuildReport,
    pub locales: &'a [LocaleRows],
    pub sources: &'a [CatalogSource],
}

/// The manifest text: a section per function, in the order they appear.
pub(crate) fn render(input: &ManifestInput) -> String {
    let mut m = String::new();

    // `writeln!` into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(m, "# gettext corpus snapshot\n");
    let _ = writeln!(
        m,
        "Human translations of software messages, extracted from the GNU gettext catalogs \
         (`<locale>/LC_MESSAGES/*.mo`) installed on a Debian system. Built by:\n"
    );
    let _ = writeln!(m, "    {}\n", command_line(input.opts));
    let _ = writeln!(
        m,
        "Rebuilding from the same catalogs gives byte-identical files (no timestamps anywhere).\n"
    );

    for section in [
        file_section,
        totals_section,
        contents_section,
        cap_section,
        locales_section,
        domains_section,
        licences_section,
        warnings_section,
    ] {
        section(&mut m, input);
    }
    m
}

/// `## File`: name, format, checksum, size.
fn file_section(m: &mut String, input: &ManifestInput) {
    let ManifestInput { opts, report, .. } = input;
    let file = file_name(&opts.out);
    let _ = writeln!(m, "## File\n");
    let _ = writeln!(
        m,
        "- `{file}`: gzip'd UTF-8 TSV; first line `{}`; rows sorted by (locale, domain, msgid, text).",
        HEADER.replace('\t', "<TAB>")
    );
    let _ = writeln!(m, "- sha256: `{}`", report.sha256);
    let _ = writeln!(m, "- bytes: {}\n", report.bytes);
}

/// `## Totals`.
fn totals_section(m: &mut String, input: &ManifestInput) {
    let ManifestInput { report, locales, .. } = input;
    let available: usize = locales.iter().map(|l| l.available).sum();
    let _ = writeln!(m, "## Totals\n");
    let _ = writeln!(m, "| locales | rows | domains | bytes | rows before cap |");
    let _ = writeln!(m, "|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        m,
        "| {} | {} | {} | {} | {} |\n",
        report.locales, report.rows, report.domains, report.bytes, available
    );
}

/// `## What is in it`: columns and cleaning rules.
fn contents_section(m: &mut String, _: &ManifestInput) {
    let _ = writeln!(m, "## What is in it\n");
    let _ = writeln!(
        m,
        "- Columns: `locale` (directory name under the locale tree), `domain` (catalog file \
         name without `.mo`), `msgid` (English source), `text` (the translation).\n\
         - Both sides are cleaned: markup tags, entities, keyboard mnemonics (`_File`, `&File`, \
         `(_F)`), printf/brace/shell placeholders removed; escapes and control characters \
         become spaces; Unicode NFC; whitespace collapsed. No field contains a TAB or newline.\n\
         - A pair is kept when the translation has at least {MIN_CHARS} characters, differs \
         from the msgid, and the msgid is not empty after cleaning. Plural entries give the \
         singular pair and one plural pair.\n\
         - Deduplicated per locale on (msgid, text), keeping the first domain in sorted order.\n\
         - Skipped: `iso_*` catalogs (lists of country/language/currency names), and \
         translations into English variants (`en`, `en_*`, `en@quot`, `en@boldquot`, ...), \
         whose English is already the msgid; `en@shaw` (Shavian alphabet) is kept.\n\
         - Splits are not stored: they come from a hash of the msgid at load time, so every \
         translation of a message is in the same split.\n"
    );
}

/// `## Cap`: which rows the cap kept, and why there is one.
fn cap_section(m: &mut String, input: &ManifestInput) {
    let ManifestInput { opts, report, locales, .. } = input;
    let available: usize = locales.iter().map(|l| l.available).sum();
    let _ = writeln!(m, "## Cap\n");
    match opts.max_per_locale {
        Some(cap) => {
            let capped = locales.iter().filter(|l| l.available > cap).count();
            let smallest = report.per_locale.last().map_or(0, |p| p.1);
            let median = report.per_locale.get(report.per_locale.len() / 2).map_or(0, |p| p.1);
            let largest_whole =
                locales.iter().filter(|l| l.available <= cap).map(|l| l.available).max().unwrap_or(0);
            let _ = writeln!(
                m,
                "At most {cap} rows per locale. {capped} of {} locales had more and keep the {cap} \
                 rows whose hashed msgid is smallest (a salted FNV-1a of the msgid, so the same \
                 messages survive in every capped locale and the head stays parallel); the other \
                 {} locales, the tail (largest {largest_whole} rows, smallest {smallest}), are \
                 whole. The cap keeps {} of {available} rows ({:.1}%); the median locale has \
                 {median} rows.\n\n\
                 Why a cap: the snapshot ships inside the repository, so it is kept small (the \
                 built-in one aims at about 12 MB), and flattening only the head keeps the \
                 natural imbalance that multilingual distillation is about: the tail is left \
                 exactly as the catalogs have it, from {largest_whole} rows down to {smallest}.\n",
                report.locales,
                report.locales - capped,
                report.rows,
                100.0 * report.rows as f64 / available.max(1) as f64,
            );
        }
        None => {
            let _ = writeln!(m, "None: every locale is whole.\n");
        }
    }
}

/// The rows-per-locale table.
fn locales_section(m: &mut String, input: &ManifestInput) {
    let ManifestInput { report, locales, .. } = input;
    let _ = writeln!(m, "{LOCALE_TABLE_HEADING}\n");
    let _ = writeln!(m, "Largest first. `before cap` counts the rows after cleaning and dedupe.\n");
    let _ = writeln!(m, "| locale | rows | before cap |");
    let _ = writeln!(m, "|---|---:|---:|");
    let available_of: BTreeMap<&str, usize> =
        locales.iter().map(|l| (l.locale.as_str(), l.available)).collect();
    for (locale, rows) in &report.per_locale {
        let before = available_of.get(locale.as_str()).copied().unwrap_or(*rows);
        let _ = writeln!(m, "| `{locale}` | {rows} | {before} |");
    }
    let _ = writeln!(m);
}

/// `## Rows per domain`, with the packages that installed the catalogs.
fn domains_section(m: &mut String, input: &ManifestInput) {
    let ManifestInput { opts, locales, sources, .. } = input;
    let mut per_domain: BTreeMap<&str, usize> = BTreeMap::new();
    for l in locales.iter() {
        for r in &l.rows {
            *per_domain.entry(l.domains[r.0].as_str()).or_default() += 1;
        }
    }
    let packages = source_packages(sources, &opts.locale_dir);
    let mut domains: Vec<(&str, usize)> = per_domain.into_iter().collect();
    domains.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let _ = writeln!(m, "## Rows per domain\n");
    let _ = writeln!(
        m,
        "Largest first, with the Debian package(s) that installed the catalogs (from \
         `{DPKG_INFO}/*.list` and `{DPKG_STATUS}`; `unknown` when no package owns them).\n"
    );
    let _ = writeln!(m, "| domain | rows | source package |");
    let _ = writeln!(m, "|---|---:|---|");
    for (domain, rows) in &domains {
        let pkgs = packages
            .get(*domain)
            .map(|s| s.iter().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_else(|| "unknown".into());
        let _ = writeln!(m, "| `{domain}` | {rows} | {pkgs} |");
    }
    let _ = writeln!(m);
}

/// `## Licences`.
fn licences_section(m: &mut String, _: &ManifestInput) {
    let _ = writeln!(m, "## Licences\n");
    let _ = writeln!(
        m,
        "The translations are the work of the translation teams of each program and carry the \
         licences of their source packages (listed above): see \
         `/usr/share/doc/<package>/copyright` on a Debian system with the package installed \
         (mostly GPL or LGPL; check each package's file). This snapshot is a mechanical \
         extraction (cleaned, deduplicated, capped) and is redistributed under those same \
         terms.\n"
    );
}

/// `## Warnings`: catalogs skipped or read in part.
fn warnings_section(m: &mut String, input: &ManifestInput) {
    let ManifestInput { report, .. } = input;
    let _ = writeln!(m, "## Warnings\n");
    if report.warnings.is_empty() {
        let _ = writeln!(m, "None: every catalog was read whole.");
    } else {
        let _ = writeln!(m, "Catalogs skipped or read in part:\n");
        for w in &report.warnings {
            let _ = writeln!(m, "- {}", w.replace('\n', " "));
        }
    }
}

/// The command that rebuilds this snapshot, with paths exactly as given.
fn command_line(opts: &BuildOptions) -> String {
    let mut cmd = format!(
        "kdx corpus build --locale-dir {} --out {}",
        shell_quote(&opts.locale_dir.to_string_lossy()),
        shell_quote(&opts.out.to_string_lossy())
    );
    if let Some(cap) = opts.max_per_locale {
        let _ = write!(cmd, " --max-per-locale {cap}");
    }
    cmd
}

/// Quotes `s` for a POSIX shell only when it needs it, so ordinary paths stay readable.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./@%+=:,".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Domain → `"package version"` of the packages owning its catalogs, plus `unknown` when
/// some catalog has no owner. Reading the dpkg database is best effort: on a system without
/// one every domain is `unknown`.
fn source_packages(sources: &[CatalogSource], locale_dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    // dpkg records absolute paths; the locale tree may have been given relative or through
    // a symlink, so resolve the directory (not the files: a catalog may itself be a link).
    let root = fs::canonicalize(locale_dir).unwrap_or_else(|_| locale_dir.to_path_buf());
    let wanted: BTreeMap<PathBuf, &str> = sources
        .iter()
        .filter_map(|s| {
            let rel = s.path.strip_prefix(locale_dir).ok()?;
            Some((root.join(rel), s.domain.as_str()))
        })
        .collect();
    let owners = dpkg_owners(&wanted);
    let versions = dpkg_versions();

    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, domain) in &wanted {
        let set = out.entry((*domain).to_owned()).or_default();
        match owners.get(path) {
            Some(pkgs) => {
                for p in pkgs {
                    let v = versions.get(p).map_or("unknown", String::as_str);
                    set.insert(format!("{p} {v}"));
                }
            }
            None => {
                set.insert("unknown".to_owned());
            }
        }
    }
    out
}

/// Path → owning packages (architecture qualifier dropped), for the wanted paths only.
fn dpkg_owners(wanted: &BTreeMap<PathBuf, &str>) -> BTreeMap<PathBuf, BTreeSet<String>> {
    let mut owners: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let Ok(entries) = fs::read_dir(DPKG_INFO) else {
        return owners;
    };
    let mut lists: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "list"))
        .collect();
    lists.sort();
    for list in lists {
        let Some(pkg) = list.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let pkg = pkg.split(':').next().unwrap_or(pkg).to_owned();
        let Ok(text) = fs::read_to_string(&list) else {
            continue;
        };
        for line in text.lines().filter(|l| l.ends_with(".mo")) {
            let path = Path::new(line);
            if wanted.contains_key(path) {
                owners.entry(path.to_path_buf()).or_default().insert(pkg.clone());
            }
        }
    }
    owners
}

/// Package → version of the installed packages (several architectures joined).
fn dpkg_versions() -> BTreeMap<String, String> {
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let Ok(status) = fs::read_to_string(DPKG_STATUS) else {
        return BTreeMap::new();
    };
    for para in status.split("\n\n") {
        let field =
            |name: &str| para.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim));
        if let (Some(p), Some(v)) = (field("Package"), field("Version")) {
            versions.entry(p.to_owned()).or_default().insert(v.to_owned());
        }
    }
    versions.into_iter().map(|(p, v)| (p, v.into_iter().collect::<Vec<_>>().join("/"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/share/locale"), "/usr/share/locale");
        assert_eq!(shell_quote("my dir/x"), "'my dir/x'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn command_is_as_given() {
        let opts = BuildOptions {
            locale_dir: "/usr/share/locale".into(),
            out: "data/gettext-corpus.tsv.gz".into(),
            max_per_locale: Some(5000),
        };
        assert_eq!(
            command_line(&opts),
            "kdx corpus build --locale-dir /usr/share/locale --out data/gettext-corpus.tsv.gz --max-per-locale 5000"
        );
    }
}
