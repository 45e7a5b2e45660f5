//! Reading a snapshot back. Done at the start of every run: the file is decompressed in one
//! go, then read by the workspace's one TSV reader (`kdx_fsio::tsv`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use flate2::read::MultiGzDecoder;
use kdx_fsio::tsv::{CarriageReturn, TsvReader};

use crate::manifest::{Manifest, MANIFEST_FORMAT};
use crate::snapshot::HEADER;

/// One parallel pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Locale of the translation (directory name, e.g. `pt_BR`, `sr@latin`).
    pub locale: String,
    /// Catalog the message comes from (e.g. `coreutils`).
    pub domain: String,
    /// Cleaned English source.
    pub msgid: String,
    /// Cleaned translation.
    pub text: String,
}

/// A loaded snapshot, rows in file order (sorted by locale, domain, msgid, text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Corpus {
    /// Every row of the file.
    pub rows: Vec<Row>,
}

/// Loads a `.tsv.gz` snapshot. A malformed line is an error naming the file, the line
/// number (1-based, the header is line 1) and what is wrong with it.
pub fn load(path: &Path) -> Result<Corpus> {
    let file = fs::File::open(path).with_context(|| format!("opening corpus {}", path.display()))?;
    // The text compresses about 3.5:1; sizing the buffer up front avoids regrowing it.
    let compressed = file.metadata().map_or(0, |m| m.len() as usize);
    let mut bytes = Vec::with_capacity(compressed.saturating_mul(4));
    MultiGzDecoder::new(std::io::BufReader::with_capacity(1 << 16, file))
        .read_to_end(&mut bytes)
        .with_context(|| format!("decompressing corpus {} (is it a .tsv.gz?)", path.display()))?;
    parse(&bytes).with_context(|| format!("reading corpus {}", path.display()))
}

/// Parses the decompressed TSV. Strict, since kdx wrote it: exactly the header, then four
/// non-empty fields a line; a blank line or a `\r` line end (a file that went through an
/// editor or a Windows tool) is an error, not something to skip or strip.
fn parse(bytes: &[u8]) -> Result<Corpus> {
    let mut lines = TsvReader::new(bytes).carriage_return(CarriageReturn::Keep).keep_blank_lines(true);
    let header = lines.next().transpose()?.map(|r| r.bytes()).unwrap_or_default();
    if header != HEADER.as_bytes() {
        bail!(
            "line 1: expected the header {:?}, found {:?}",
            HEADER,
            String::from_utf8_lossy(&header[..header.len().min(80)])
        );
    }
    // About 100 bytes a row: reserving up front avoids regrowing a large vector.
    let mut rows = Vec::with_capacity(bytes.len() / 100);
    for record in lines {
        let record = record?;
        let lineno = record.line();
        if record.is_empty() {
            bail!("line {lineno}: empty line");
        }
        let fields = record.strs().map_err(|e| anyhow::anyhow!("line {lineno}: not valid UTF-8 ({e})"))?;
        let mut fields = fields.into_iter();
        let mut next = |name: &str| -> Result<String> {
            match fields.next() {
                Some("") => bail!("line {lineno}: empty {name} field"),
                Some(f) => Ok(f.to_owned()),
                None => {
                    bail!("line {lineno}: missing {name} field (expected 4 TAB-separated fields)")
                }
            }
        };
        let row = Row {
            locale: next("locale")?,
            domain: next("domain")?,
            msgid: next("msgid")?,
            text: next("text")?,
        };
        if fields.next().is_some() {
            bail!("line {lineno}: more than 4 TAB-separated fields");
        }
        if row.text.ends_with('\r') {
            bail!("line {lineno}: carriage return at end of line (CRLF line endings?)");
        }
        rows.push(row);
    }
    Ok(Corpus { rows })
}

/// The example id of the row at `index` (0-based, in file order): `LOCALE:LINE`, LINE being
/// its 1-based line in the decompressed file (the header is line 1), so
/// `zcat SNAPSHOT | sed -n LINEp` shows it. Unique within a snapshot, stable for as long as
/// the snapshot is (its checksum is in the MANIFEST).
pub fn row_id(row: &Row, index: usize) -> String {
    format!("{}:{}", row.locale, index + 2)
}

/// A snapshot's `MANIFEST.json` ([`Manifest`]), checked for its format.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let text = fs::read_to_string(path).with_context(|| format!("reading manifest {}", path.display()))?;
    let m: Manifest =
        serde_json::from_str(&text).with_context(|| format!("reading manifest {}", path.display()))?;
    if m.format != MANIFEST_FORMAT {
        bail!("{}: format `{}`, expected `{MANIFEST_FORMAT}`", path.display(), m.format);
    }
    Ok(m)
}

/// Rows per locale as stated in a snapshot's `MANIFEST.json`, so the plan can check a locale
/// selection without loading the corpus and a test that the snapshot and its manifest agree.
pub fn read_manifest_counts(path: &Path) -> Result<BTreeMap<String, usize>> {
    Ok(read_manifest(path)?.locales.into_iter().map(|(l, c)| (l, c.rows)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    fn load_text(text: &str) -> Result<Corpus> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.tsv.gz");
        fs::write(&path, gz(text)).unwrap();
        load(&path)
    }

    #[test]
    fn loads_good_file() {
        let c =
            load_text("locale\tdomain\tmsgid\ttext\nfr\tapp\tOpen the file\tOuvrir le fichier\n").unwrap();
        assert_eq!(
            c.rows,
            vec![Row {
                locale: "fr".into(),
                domain: "app".into(),
                msgid: "Open the file".into(),
                text: "Ouvrir le fichier".into()
            }]
        );
        // No final newline is fine too.
        assert_eq!(load_text("locale\tdomain\tmsgid\ttext\nfr\ta\tb\tc").unwrap().rows.len(), 1);
        assert_eq!(load_text("locale\tdomain\tmsgid\ttext\n").unwrap().rows.len(), 0);
    }

    #[test]
    fn malformed_lines_are_named() {
        let h = "locale\tdomain\tmsgid\ttext\n";
        let cases = [
            (format!("{h}fr\ta\tb\tc\nfr\ta\tb\n"), "line 3: missing text field"),
            (format!("{h}fr\ta\tb\tc\td\n"), "line 2: more than 4"),
            (format!("{h}fr\t\tb\tc\n"), "line 2: empty domain field"),
            (format!("{h}\nfr\ta\tb\tc\n"), "line 2: empty line"),
            (format!("{h}fr\ta\tb\tc\n\n"), "line 3: empty line"),
            (format!("{h}fr\ta\tb\tc\r\n"), "line 2: carriage return at end of line"),
            (format!("\n{h}"), "line 1: expected the header"),
            ("lang\ttext\n".to_string(), "line 1: expected the header"),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", load_text(&text).unwrap_err());
            assert!(err.contains(want) && err.contains("c.tsv.gz"), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.tsv.gz");
        // Invalid UTF-8 in a field.
        let mut raw = b"locale\tdomain\tmsgid\ttext\nfr\ta\tb\t".to_vec();
        raw.push(0xff);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw).unwrap();
        fs::write(&p, e.finish().unwrap()).unwrap();
        let err = format!("{:#}", load(&p).unwrap_err());
        assert!(err.contains("line 2: not valid UTF-8"), "{err}");
        // Not gzip at all.
        fs::write(&p, "plain text").unwrap();
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("decompressing"));
        // Missing file.
        assert!(format!("{:#}", load(&dir.path().join("none")).unwrap_err()).contains("opening"));
    }

    #[test]
    fn a_manifest_is_read_with_its_format_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("MANIFEST.json");
        let count = |rows| crate::manifest::LocaleCount { rows, before_cap: 20 };
        let m = Manifest {
            format: MANIFEST_FORMAT.into(),
            file: "c.tsv.gz".into(),
            sha256: "ab".into(),
            bytes: 3,
            command: "kdx corpus build".into(),
            max_per_locale: Some(10),
            rows: 13,
            domains: 1,
            locales: [("fr".to_string(), count(10)), ("sr@latin".to_string(), count(3))].into(),
        };
        fs::write(&p, crate::manifest::render_json(&m)).unwrap();
        assert_eq!(read_manifest(&p).unwrap(), m);
        let c = read_manifest_counts(&p).unwrap();
        assert_eq!(c.into_iter().collect::<Vec<_>>(), vec![("fr".into(), 10), ("sr@latin".into(), 3)]);
        fs::write(&p, crate::manifest::render_json(&Manifest { format: "other".into(), ..m })).unwrap();
        assert!(format!("{:#}", read_manifest(&p).unwrap_err()).contains("expected `kdx-corpus-manifest-1`"));
        fs::write(&p, "# MANIFEST.md is for people\n").unwrap();
        assert!(format!("{:#}", read_manifest(&p).unwrap_err()).contains("reading manifest"));
    }
}
