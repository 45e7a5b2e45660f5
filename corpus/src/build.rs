//! `kdx corpus build`: walk a locale tree, extract and clean every translation, and write a
//! reproducible `.tsv.gz` snapshot plus its `MANIFEST.md`.
//!
//! Decisions worth knowing:
//! - **Which catalogs.** `<locale_dir>/<locale>/LC_MESSAGES/*.mo`, in sorted order. `iso_*`
//!   catalogs (country, language and currency names from iso-codes) are skipped: they are
//!   lists of proper nouns, not sentences, and would swamp the tail locales.
//! - **Which locales.** Translations *into* English variants (`en`, `en_GB`, `en_US`,
//!   `en@quot`, `en@boldquot`, ... every `en_*` and `en@*`) are skipped: the English side of
//!   every pair is already there as the msgid, and these catalogs are mostly spelling
//!   variants of it. `en@shaw` is kept: it is English in the Shavian alphabet, text the
//!   msgid does not provide.
//! - **Dedupe.** Per locale on (clean msgid, clean text), keeping the first domain in sorted
//!   order, so shared libraries (gnulib, glib) do not repeat a message once per program.
//! - **Cap.** With `max_per_locale = N`, a locale with more than N rows keeps the N whose
//!   hashed msgid is smallest. Hashing the msgid (not the row) makes the same messages
//!   survive in every capped locale, which keeps the corpus parallel. The hash is salted so
//!   that it is independent of [`crate::split::split_of`]: otherwise the cap would keep
//!   mostly test messages in the head locales. Locales under the cap (the tail) are whole,
//!   so the natural imbalance remains, only the head is flattened.
//! - **Reproducible.** Rows are sorted by (locale, domain, msgid, text); the gzip header has
//!   mtime 0, no file name and a fixed OS byte; the compression level is fixed (best). The
//!   manifest carries no date. Rebuilding from the same catalogs gives identical bytes.
//! - **Robust.** A corrupt or unreadable catalog is skipped with a warning (path and reason)
//!   in [`BuildReport::warnings`]; the build goes on.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use flate2::{Compression, GzBuilder};

use crate::clean::{clean_pair, keep};
use crate::manifest::{self, CatalogSource, ManifestInput};
use crate::mo::parse_mo;
use crate::snapshot::LocaleRow;
use crate::snapshot::LocaleRows;
pub use crate::snapshot::{BuildOptions, BuildReport, HEADER};
use crate::split::{mix64, stable_hash64};

/// Salt that makes the cap's ordering independent of the split's (see the module docs).
const CAP_SALT: u64 = 0x6361_702d_6b64_7831; // "cap-kdx1"

/// Builds the snapshot described by `opts` and its manifest.
pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let mut warnings = Vec::new();
    let mut sources = Vec::new();
    let mut locales = Vec::new();
    for (locale, dir) in list_locales(&opts.locale_dir, &mut warnings)? {
        let catalogs = list_catalogs(&dir, &mut warnings);
        let result = read_locale(&locale, &catalogs, opts.max_per_locale, &mut warnings);
        for (domain, path) in catalogs {
            sources.push(CatalogSource { domain, path });
        }
        if !result.rows.is_empty() {
            locales.push(result);
        }
    }

    let tsv = render_tsv(&locales)?;
    let gz = gzip(tsv.as_bytes()).context("compressing the snapshot")?;
    let sha256 = kdx_fsio::sha256_hex(&gz);

    // Largest first; capped locales tie on rows, so their size before the cap orders them.
    let mut order: Vec<&LocaleRows> = locales.iter().collect();
    order.sort_by(|a, b| {
        (b.rows.len(), b.available).cmp(&(a.rows.len(), a.available)).then_with(|| a.locale.cmp(&b.locale))
    });
    let per_locale: Vec<(String, usize)> = order.iter().map(|l| (l.locale.clone(), l.rows.len())).collect();
    let domains: BTreeSet<&str> =
        locales.iter().flat_map(|l| l.rows.iter().map(|r| l.domains[r.0].as_str())).collect();
    let report = BuildReport {
        locales: locales.len(),
        rows: locales.iter().map(|l| l.rows.len()).sum(),
        domains: domains.len(),
        bytes: gz.len() as u64,
        sha256,
        warnings,
        per_locale,
    };

    let manifest_path = manifest_path(&opts.out);
    let input = ManifestInput { opts, report: &report, locales: &locales, sources: &sources };
    let (text, facts) = (manifest::render(&input), manifest::facts(&input));
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating output directory {}", dir.display()))?;
    }
    kdx_fsio::write_atomic(&opts.out, &gz)?;
    kdx_fsio::write_atomic(&manifest_path, text.as_bytes())?;
    kdx_fsio::write_atomic(&manifest_json_path(&opts.out), manifest::render_json(&facts).as_bytes())?;
    Ok(report)
}

/// `<out dir>/MANIFEST.md`, for people.
pub fn manifest_path(out: &Path) -> PathBuf {
    out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).join("MANIFEST.md")
}

/// `<out dir>/MANIFEST.json`, for programs ([`crate::manifest::Manifest`]).
pub fn manifest_json_path(out: &Path) -> PathBuf {
    manifest_path(out).with_extension("json")
}

/// Whether `locale` is a translation into English (see the module docs).
pub fn is_english_variant(locale: &str) -> bool {
    locale == "en" || locale.starts_with("en_") || (locale.starts_with("en@") && locale != "en@shaw")
}

/// A name usable as a TSV field: UTF-8 and free of control characters.
fn safe_name(name: &std::ffi::OsStr) -> Option<&str> {
    name.to_str().filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
}

/// Sorted `(locale, <locale>/LC_MESSAGES)` pairs, English variants left out.
fn list_locales(root: &Path, warnings: &mut Vec<String>) -> Result<Vec<(String, PathBuf)>> {
    let entries =
        fs::read_dir(root).with_context(|| format!("reading locale directory {}", root.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        let name = entry.file_name();
        let lc = entry.path().join("LC_MESSAGES");
        if !lc.is_dir() {
            continue; // locale.alias and the like
        }
        match safe_name(&name) {
            Some(locale) if is_english_variant(locale) => {}
            Some(locale) => out.push((locale.to_owned(), lc)),
            None => warnings.push(format!(
                "{}: locale name is not usable as a TSV field, skipped",
                entry.path().display()
            )),
        }
    }
    out.sort();
    Ok(out)
}

/// Sorted `(domain, path)` of the `.mo` catalogs in one `LC_MESSAGES`, `iso_*` left out.
fn list_catalogs(dir: &Path, warnings: &mut Vec<String>) -> Vec<(String, PathBuf)> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            warnings.push(format!("{}: cannot list: {e}", dir.display()));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                warnings.push(format!("{}: cannot list: {e}", dir.display()));
                continue;
            }
        };
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "mo") {
            continue;
        }
        match path.file_stem().and_then(safe_name) {
            Some(d) if d.starts_with("iso_") => {}
            Some(d) => out.push((d.to_owned(), path)),
            None => warnings
                .push(format!("{}: catalog name is not usable as a TSV field, skipped", path.display())),
        }
    }
    out.sort();
    out
}

/// Reads, cleans, filters, dedupes and caps the catalogs of one locale.
fn read_locale(
    locale: &str,
    catalogs: &[(String, PathBuf)],
    cap: Option<usize>,
    warnings: &mut Vec<String>,
) -> LocaleRows {
    let mut rows: Vec<LocaleRow> = Vec::new();
    let mut domains = Vec::with_capacity(catalogs.len());
    for (domain, path) in catalogs {
        let idx = domains.len();
        domains.push(domain.clone());
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                warnings.push(format!("{}: cannot read: {e}", path.display()));
                continue;
            }
        };
        let catalog = match parse_mo(&bytes) {
            Ok(c) => c,
            Err(e) => {
                warnings.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        if catalog.skipped > 0 {
            warnings.push(format!(
                "{}: {} entries not valid in charset {}, skipped",
                path.display(),
                catalog.skipped,
                catalog.charset
            ));
        }
        for entry in catalog.entries {
            let (msgid, text) = clean_pair(&entry.msgid, &entry.msgstr);
            if keep(&msgid, &text) {
                rows.push((idx, msgid, text));
            }
        }
    }

    // Dedupe on (msgid, text): sorting by domain index last puts the first domain in sorted
    // order first, and `dedup_by` keeps the first of each run.
    rows.sort_unstable_by(|a, b| (&a.1, &a.2, a.0).cmp(&(&b.1, &b.2, b.0)));
    rows.dedup_by(|b, a| a.1 == b.1 && a.2 == b.2);
    let available = rows.len();

    if let Some(cap) = cap.filter(|&c| rows.len() > c) {
        // The key is a pure function of the msgid, so capped locales keep the same messages;
        // ties (one msgid, several rows) are broken by the row itself for a total order.
        let key = |r: &LocaleRow| mix64(stable_hash64(r.1.as_bytes()) ^ CAP_SALT);
        rows.sort_by_cached_key(|r| (key(r), r.1.clone(), r.0, r.2.clone()));
        rows.truncate(cap);
    }
    rows.sort_unstable_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
    LocaleRows { locale: locale.to_owned(), domains, rows, available }
}

/// The TSV text, header first, rows in (locale, domain, msgid, text) order.
fn render_tsv(locales: &[LocaleRows]) -> Result<String> {
    let size: usize = locales.iter().flat_map(|l| l.rows.iter()).map(|r| r.1.len() + r.2.len() + 32).sum();
    let mut out = String::with_capacity(size + HEADER.len() + 1);
    out.push_str(HEADER);
    out.push('\n');
    for l in locales {
        for (d, msgid, text) in &l.rows {
            let domain = &l.domains[*d];
            // Cleaning turns every control character into a space and names with control
            // characters are refused when listed, so this only guards against a future bug.
            for field in [l.locale.as_str(), domain, msgid, text] {
                ensure!(
                    !field.is_empty() && !field.contains(['\t', '\n', '\r']),
                    "internal error: unsafe TSV field {field:?} in locale {}",
                    l.locale
                );
            }
            for (i, field) in [l.locale.as_str(), domain, msgid, text].iter().enumerate() {
                if i > 0 {
                    out.push('\t');
                }
                out.push_str(field);
            }
            out.push('\n');
        }
    }
    Ok(out)
}

/// Gzip with a fixed header (mtime 0, no name, OS "unknown") and level, for identical bytes.
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::with_capacity(data.len() / 3), Compression::best());
    enc.write_all(data)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{load, read_manifest_counts};
    use crate::mo_writer::{write_mo, Endian, RawEntry};

    fn put(root: &Path, locale: &str, domain: &str, bytes: &[u8]) {
        let dir = root.join(locale).join("LC_MESSAGES");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{domain}.mo")), bytes).unwrap();
    }

    /// A small locale tree exercising every rule of the build.
    fn tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("locale");
        let fr = |pairs: &[(&str, &str)]| {
            let mut e = vec![RawEntry::header("UTF-8")];
            e.extend(pairs.iter().map(|(a, b)| RawEntry::simple(a, b)));
            e
        };
        put(
            &root,
            "fr",
            "beta",
            &write_mo(
                &fr(&[
                    ("_Open the file", "_Ouvrir le fichier"),
                    ("Cancel", "Annuler"),                      // too short
                    ("Untouched message", "Untouched message"), // identical
                    ("Cannot open %s", "Impossible d'ouvrir %s"),
                ]),
                Endian::Little,
            ),
        );
        put(
            &root,
            "fr",
            "alpha",
            &write_mo(
                &fr(&[
                    ("Open the file", "Ouvrir le fichier"),
                    ("Delete everything", "Tout supprimer définitivement"),
                ]),
                Endian::Big,
            ),
        );
        put(
            &root,
            "fr",
            "iso_639",
            &write_mo(&fr(&[("French language", "langue française")]), Endian::Little),
        );
        put(&root, "fr", "broken", b"this is not a catalog at all, sorry");
        put(
            &root,
            "en_GB",
            "alpha",
            &write_mo(&fr(&[("Color settings", "Colour settings")]), Endian::Little),
        );
        put(
            &root,
            "de",
            "alpha",
            &write_mo(
                &[
                    RawEntry::header("ISO-8859-1"),
                    RawEntry::raw(b"Open the file".to_vec(), b"Die Datei \xf6ffnen".to_vec()),
                    RawEntry::raw(b"Delete everything".to_vec(), b"Alles endg\xfcltig l\xf6schen".to_vec()),
                ],
                Endian::Little,
            ),
        );
        fs::write(root.join("locale.alias"), "x y\n").unwrap();
        tmp
    }

    #[test]
    fn build_is_reproducible_and_skips_what_it_should() {
        let tmp = tree();
        let opts = |out: &str| BuildOptions {
            locale_dir: tmp.path().join("locale"),
            out: tmp.path().join(out).join("corpus.tsv.gz"),
            max_per_locale: None,
        };
        let a = build(&opts("a")).unwrap();
        let b = build(&opts("b")).unwrap();
        assert_eq!(a.sha256, b.sha256);
        let read = |d: &str, f: &str| fs::read(tmp.path().join(d).join(f)).unwrap();
        assert_eq!(read("a", "corpus.tsv.gz"), read("b", "corpus.tsv.gz"));
        // The manifests differ only in the output path written in the command line.
        let ma = String::from_utf8(read("a", "MANIFEST.md")).unwrap();
        let mb = String::from_utf8(read("b", "MANIFEST.md")).unwrap();
        assert_eq!(ma.replace("/a/", "/b/"), mb);
        let ja = String::from_utf8(read("a", "MANIFEST.json")).unwrap();
        assert_eq!(ja.replace("/a/", "/b/"), String::from_utf8(read("b", "MANIFEST.json")).unwrap());
        // Building twice into the same place gives the same bytes too.
        let a2 = build(&opts("a")).unwrap();
        assert_eq!(a, a2);
        assert_eq!(String::from_utf8(read("a", "MANIFEST.md")).unwrap(), ma);
        assert_eq!(String::from_utf8(read("a", "MANIFEST.json")).unwrap(), ja);

        assert_eq!(a.warnings.len(), 1, "{:?}", a.warnings);
        assert!(a.warnings[0].contains("broken.mo") && a.warnings[0].contains("magic"));
        assert!(ma.contains("broken.mo"));

        let corpus = load(&tmp.path().join("a/corpus.tsv.gz")).unwrap();
        let rows: Vec<[&str; 4]> =
            corpus.rows.iter().map(|r| [r.locale.as_str(), &r.domain, &r.msgid, &r.text]).collect();
        assert_eq!(
            rows,
            vec![
                ["de", "alpha", "Delete everything", "Alles endgültig löschen"],
                ["de", "alpha", "Open the file", "Die Datei öffnen"],
                ["fr", "alpha", "Delete everything", "Tout supprimer définitivement"],
                ["fr", "alpha", "Open the file", "Ouvrir le fichier"],
                ["fr", "beta", "Cannot open", "Impossible d'ouvrir"],
            ]
        );
        assert_eq!(a.per_locale, vec![("fr".to_string(), 3), ("de".to_string(), 2)]);
        assert_eq!((a.locales, a.rows, a.domains), (2, 5, 2));
        let counts = read_manifest_counts(&tmp.path().join("a/MANIFEST.json")).unwrap();
        assert_eq!(counts.into_iter().collect::<Vec<_>>(), vec![("de".into(), 2), ("fr".into(), 3)]);
        assert!(ma.contains(&a.sha256));
    }

    #[test]
    fn cap_keeps_the_same_messages_across_locales() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("locale");
        let msgids: Vec<String> = (0..40).map(|i| format!("Message number {i} here")).collect();
        for (locale, n) in [("de", 40), ("fr", 30), ("ga", 5)] {
            let mut e = vec![RawEntry::header("UTF-8")];
            e.extend(
                msgids[..n].iter().map(|m| RawEntry::simple(m, &format!("{locale} translation of {m}"))),
            );
            put(&root, locale, "app", &write_mo(&e, Endian::Little));
        }
        let out = tmp.path().join("out/c.tsv.gz");
        let report =
            build(&BuildOptions { locale_dir: root, out: out.clone(), max_per_locale: Some(10) }).unwrap();
        assert_eq!(
            report.per_locale,
            vec![("de".to_string(), 10), ("fr".to_string(), 10), ("ga".to_string(), 5)]
        );
        let corpus = load(&out).unwrap();
        let ids = |loc: &str| -> BTreeSet<String> {
            corpus.rows.iter().filter(|r| r.locale == loc).map(|r| r.msgid.clone()).collect()
        };
        // fr's 30 are a subset of de's 40, so fr keeps whatever de keeps among them.
        let de = ids("de");
        let fr = ids("fr");
        let de_in_fr_range: BTreeSet<String> =
            de.iter().filter(|m| msgids[..30].contains(m)).cloned().collect();
        assert!(de_in_fr_range.is_subset(&fr), "{de_in_fr_range:?} vs {fr:?}");
        let manifest = fs::read_to_string(tmp.path().join("out/MANIFEST.md")).unwrap();
        assert!(manifest.contains("--max-per-locale 10"));
    }

    #[test]
    fn missing_locale_dir_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = build(&BuildOptions {
            locale_dir: tmp.path().join("nope"),
            out: tmp.path().join("x.tsv.gz"),
            max_per_locale: None,
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
    }

    #[test]
    fn english_variants() {
        for l in ["en", "en_US", "en_GB", "en_AU", "en_CA", "en_NZ", "en@quot", "en@boldquot"] {
            assert!(is_english_variant(l), "{l}");
        }
        for l in ["en@shaw", "eo", "fr", "de_CH"] {
            assert!(!is_english_variant(l), "{l}");
        }
    }
}
