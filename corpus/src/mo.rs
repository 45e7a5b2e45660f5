//! GNU gettext `.mo` catalogs: a bounds-checked parser that never panics on any input.
//!
//! Layout (all integers 32-bit, in the byte order given by the magic number):
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `0x950412de` |
//! | 4 | revision (major in the high 16 bits: 0 or 1) |
//! | 8 | N, number of strings |
//! | 12 | O, offset of the table of original strings |
//! | 16 | T, offset of the table of translations |
//! | 20, 24 | hash table size and offset (not needed to read every entry) |
//!
//! Each table has N (length, offset) pairs; string i runs `offset .. offset + length`.
//! Revision 1 adds system-dependent strings in a separate table that we do not read: they are
//! the `%<PRIu64>`-style messages, few, and would only become placeholders that cleaning removes.

use encoding_rs::Encoding;
use thiserror::Error;

/// The `.mo` magic number as read in the file's own byte order.
const MAGIC: u32 = 0x9504_12de;
/// Size of the fixed header we rely on (magic .. hash table offset).
const HEADER_LEN: usize = 28;

/// Why a `.mo` file could not be read. Every variant names what is wrong so a build can report
/// the file and move on.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MoError {
    /// Fewer bytes than the fixed header.
    #[error("file too short for a .mo header ({len} bytes, need {HEADER_LEN})")]
    TooShort {
        /// Length of the file in bytes.
        len: usize,
    },
    /// The first four bytes are not the magic number in either byte order.
    #[error("not a .mo file: bad magic number {0:#010x}")]
    BadMagic(u32),
    /// A major revision this parser does not know (only 0 and 1 exist).
    #[error("unsupported .mo major revision {0}")]
    UnsupportedRevision(u32),
    /// A string table does not fit inside the file.
    #[error(
        "{table} table ({count} entries at offset {offset}) runs past the end of the file ({len} bytes)"
    )]
    TableOutOfBounds {
        /// "original" or "translation".
        table: &'static str,
        /// Number of entries the header claims.
        count: u32,
        /// Offset of the table.
        offset: u32,
        /// Length of the file.
        len: usize,
    },
    /// One string points outside the file.
    #[error("{table} string {index} (offset {offset}, length {length}) runs past the end of the file ({len} bytes)")]
    StringOutOfBounds {
        /// "original" or "translation".
        table: &'static str,
        /// Index of the string in its table.
        index: u32,
        /// Offset the table gives.
        offset: u32,
        /// Length the table gives.
        length: u32,
        /// Length of the file.
        len: usize,
    },
}

/// One translated message of a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The `msgctxt`, when the message has one (kept apart so the text stays the msgid).
    pub context: Option<String>,
    /// The English source text (or `msgid_plural` for the plural pair of a plural entry).
    pub msgid: String,
    /// The translation.
    pub msgstr: String,
}

/// The decoded content of a `.mo` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// Charset declared in the header entry (`"UTF-8"` when there is no header or no charset).
    pub charset: String,
    /// Translated entries in file order (which is msgid order for msgfmt output).
    pub entries: Vec<Entry>,
    /// Entries skipped because their bytes are not valid in the declared charset (or, when
    /// the charset is unknown to us, not valid UTF-8).
    pub skipped: usize,
}

/// Byte order of the file, found from the magic number.
#[derive(Clone, Copy)]
enum Order {
    Little,
    Big,
}

/// Bounds-checked reader over the whole file.
struct Reader<'a> {
    bytes: &'a [u8],
    order: Order,
}

impl<'a> Reader<'a> {
    /// The u32 at `pos`, or `None` when it does not fit.
    fn u32_at(&self, pos: usize) -> Option<u32> {
        let end = pos.checked_add(4)?;
        let b: [u8; 4] = self.bytes.get(pos..end)?.try_into().ok()?;
        Some(match self.order {
            Order::Little => u32::from_le_bytes(b),
            Order::Big => u32::from_be_bytes(b),
        })
    }

    /// Checks that a table of `count` (length, offset) pairs at `offset` fits in the file.
    fn check_table(&self, table: &'static str, count: u32, offset: u32) -> Result<(), MoError> {
        let fits = (count as usize)
            .checked_mul(8)
            .and_then(|n| n.checked_add(offset as usize))
            .is_some_and(|end| end <= self.bytes.len());
        if fits {
            Ok(())
        } else {
            Err(MoError::TableOutOfBounds { table, count, offset, len: self.bytes.len() })
        }
    }

    /// String `index` of the table at `table_offset` (already checked by `check_table`).
    fn string(&self, table: &'static str, table_offset: u32, index: u32) -> Result<&'a [u8], MoError> {
        let slot = table_offset as usize + 8 * index as usize;
        let len = self.bytes.len();
        // `check_table` guarantees the slot is inside the file; stay defensive anyway.
        let (length, offset) = match (self.u32_at(slot), self.u32_at(slot + 4)) {
            (Some(l), Some(o)) => (l, o),
            _ => {
                return Err(MoError::TableOutOfBounds { table, count: index + 1, offset: table_offset, len })
            }
        };
        let start = offset as usize;
        start
            .checked_add(length as usize)
            .and_then(|end| self.bytes.get(start..end))
            .ok_or(MoError::StringOutOfBounds { table, index, offset, length, len })
    }
}

/// Parses a GNU `.mo` catalog (either byte order).
///
/// - The header entry (empty msgid) gives the charset; strings are decoded with it, and an
///   entry that does not decode is skipped and counted in [`Catalog::skipped`]. An unknown
///   charset falls back to UTF-8, the modern default, so most catalogs still read.
/// - `msgctxt` (stored as `ctx\x04msgid`) goes to [`Entry::context`].
/// - A plural entry yields the singular pair and one plural pair (`msgid_plural` with
///   `msgstr[1]` when there is one): more forms would only repeat the same words.
/// - An empty translation means untranslated and is skipped.
///
/// Corrupt or truncated files give a [`MoError`] saying what is wrong; no input panics.
pub fn parse_mo(bytes: &[u8]) -> Result<Catalog, MoError> {
    if bytes.len() < HEADER_LEN {
        return Err(MoError::TooShort { len: bytes.len() });
    }
    let mut r = Reader { bytes, order: Order::Little };
    let order = match r.u32_at(0) {
        Some(MAGIC) => Order::Little,
        Some(m) if m.swap_bytes() == MAGIC => Order::Big,
        other => return Err(MoError::BadMagic(other.unwrap_or(0))),
    };
    r.order = order;
    // The header is 28 bytes long and we checked the length, so these reads succeed; map a
    // failure to TooShort rather than trusting that.
    let field = |pos| r.u32_at(pos).ok_or(MoError::TooShort { len: bytes.len() });
    let revision = field(4)?;
    if revision >> 16 > 1 {
        return Err(MoError::UnsupportedRevision(revision >> 16));
    }
    let count = field(8)?;
    let orig_off = field(12)?;
    let trans_off = field(16)?;
    r.check_table("original", count, orig_off)?;
    r.check_table("translation", count, trans_off)?;

    // Read every raw pair first (this is where corrupt offsets are caught), then find the
    // header wherever it is, since decoding every other entry depends on its charset.
    let mut raw = Vec::with_capacity(count as usize);
    for i in 0..count {
        raw.push((r.string("original", orig_off, i)?, r.string("translation", trans_off, i)?));
    }
    let charset = raw
        .iter()
        .find(|(id, _)| id.is_empty())
        .and_then(|(_, header)| charset_of_header(header))
        .unwrap_or_else(|| "UTF-8".to_string());
    let decoder = Decoder::new(&charset);

    let mut catalog = Catalog { charset, entries: Vec::new(), skipped: 0 };
    for (id, tr) in raw {
        if id.is_empty() {
            continue; // the header entry is metadata, not a message
        }
        match decode_entry(&decoder, id, tr) {
            Some(entries) => catalog.entries.extend(entries),
            None => catalog.skipped += 1,
        }
    }
    Ok(catalog)
}

/// Extracts `X` from the `Content-Type: text/plain; charset=X` line of a header entry.
fn charset_of_header(header: &[u8]) -> Option<String> {
    // Header fields are ASCII; a lossy view is enough to find the line.
    let text = String::from_utf8_lossy(header);
    text.lines().find(|l| l.get(..13).is_some_and(|k| k.eq_ignore_ascii_case("content-type:"))).and_then(
        |l| {
            let lower = l.to_ascii_lowercase();
            let at = lower.find("charset=")? + "charset=".len();
            let value: String = l[at..].chars().take_while(|c| !c.is_whitespace() && *c != ';').collect();
            (!value.is_empty()).then_some(value)
        },
    )
}

/// Strict decoding in one charset.
struct Decoder {
    /// `None` means UTF-8 (declared, or the fallback for an unknown charset).
    encoding: Option<&'static Encoding>,
}

impl Decoder {
    fn new(charset: &str) -> Self {
        let encoding = Encoding::for_label(charset.trim().as_bytes()).filter(|e| *e != encoding_rs::UTF_8);
        Decoder { encoding }
    }

    /// The text of `bytes`, or `None` when they are not valid in the charset.
    fn decode(&self, bytes: &[u8]) -> Option<String> {
        match self.encoding {
            None => std::str::from_utf8(bytes).ok().map(str::to_owned),
            Some(enc) => {
                enc.decode_without_bom_handling_and_without_replacement(bytes).map(|c| c.into_owned())
            }
        }
    }
}

/// Decodes one raw (original, translation) pair into zero, one or two entries; `None` when
/// any part does not decode.
fn decode_entry(dec: &Decoder, id: &[u8], tr: &[u8]) -> Option<Vec<Entry>> {
    let (context, id) = match id.iter().position(|&b| b == 0x04) {
        Some(p) => (Some(dec.decode(&id[..p])?), &id[p + 1..]),
        None => (None, id),
    };
    let mut ids = id.split(|&b| b == 0);
    let msgid = dec.decode(ids.next().unwrap_or_default())?;
    let msgid_plural = match ids.next() {
        Some(p) => Some(dec.decode(p)?),
        None => None,
    };
    let mut forms = tr.split(|&b| b == 0);
    let singular = dec.decode(forms.next().unwrap_or_default())?;

    let mut out = Vec::with_capacity(2);
    if !singular.is_empty() {
        out.push(Entry { context: context.clone(), msgid, msgstr: singular });
    }
    if let (Some(plural_id), Some(form1)) = (msgid_plural, forms.next()) {
        let plural = dec.decode(form1)?;
        if !plural.is_empty() {
            out.push(Entry { context, msgid: plural_id, msgstr: plural });
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mo_writer::{write_mo, Endian, RawEntry};

    fn entry(ctx: Option<&str>, id: &str, s: &str) -> Entry {
        Entry { context: ctx.map(str::to_owned), msgid: id.to_owned(), msgstr: s.to_owned() }
    }

    fn sample() -> Vec<RawEntry> {
        vec![
            RawEntry::header("UTF-8"),
            RawEntry::simple("Open file", "Datei öffnen"),
            RawEntry::simple("Untranslated", ""),
            RawEntry::with_context("menu", "Quit", "Beenden"),
            RawEntry::plural("%d file", "%d files", &["%d Datei", "%d Dateien"]),
        ]
    }

    #[test]
    fn both_byte_orders_give_the_same_catalog() {
        for endian in [Endian::Little, Endian::Big] {
            let cat = parse_mo(&write_mo(&sample(), endian)).expect("valid catalog");
            assert_eq!(cat.charset, "UTF-8");
            assert_eq!(cat.skipped, 0);
            assert_eq!(
                cat.entries,
                // File order, which the writer sorts by original as msgfmt does.
                vec![
                    entry(None, "%d file", "%d Datei"),
                    entry(None, "%d files", "%d Dateien"),
                    entry(None, "Open file", "Datei öffnen"),
                    entry(Some("menu"), "Quit", "Beenden"),
                ]
            );
        }
    }

    #[test]
    fn plural_with_one_form_keeps_only_the_singular() {
        let entries = vec![
            RawEntry::header("UTF-8"),
            RawEntry::plural("%d file", "%d files", &["%d 个文件"]),
            RawEntry::plural("%d dir", "%d dirs", &["", "%d Verzeichnisse"]),
        ];
        let cat = parse_mo(&write_mo(&entries, Endian::Little)).expect("valid");
        assert_eq!(
            cat.entries,
            vec![entry(None, "%d dirs", "%d Verzeichnisse"), entry(None, "%d file", "%d 个文件"),]
        );
    }

    #[test]
    fn legacy_charset_is_decoded_and_bad_bytes_are_counted() {
        let mut entries = vec![RawEntry::header("ISO-8859-1")];
        // "Größe" in Latin-1.
        entries.push(RawEntry::raw(b"Size".to_vec(), b"Gr\xf6\xdfe".to_vec()));
        let cat = parse_mo(&write_mo(&entries, Endian::Big)).expect("valid");
        assert_eq!(cat.charset, "ISO-8859-1");
        assert_eq!(cat.entries, vec![entry(None, "Size", "Größe")]);

        // Shift_JIS with a truncated double-byte sequence cannot decode: skipped, counted.
        let entries = vec![
            RawEntry::header("Shift_JIS"),
            RawEntry::raw(b"File".to_vec(), b"\x83t\x83@\x83C\x83".to_vec()),
            RawEntry::raw(b"Yes".to_vec(), b"\x82\xcd\x82\xa2".to_vec()),
        ];
        let cat = parse_mo(&write_mo(&entries, Endian::Little)).expect("valid");
        assert_eq!(cat.skipped, 1);
        assert_eq!(cat.entries, vec![entry(None, "Yes", "はい")]);
    }

    #[test]
    fn no_header_means_utf8_and_invalid_utf8_is_skipped() {
        let entries =
            vec![RawEntry::simple("Hello", "Bonjour"), RawEntry::raw(b"Bad".to_vec(), b"\xff\xfe".to_vec())];
        let cat = parse_mo(&write_mo(&entries, Endian::Little)).expect("valid");
        assert_eq!(cat.charset, "UTF-8");
        assert_eq!(cat.skipped, 1);
        assert_eq!(cat.entries, vec![entry(None, "Hello", "Bonjour")]);
    }

    #[test]
    fn charset_is_read_from_content_type() {
        let h = b"Project-Id-Version: x\nContent-Type: text/plain; charset=KOI8-R\nPlural-Forms: n\n";
        assert_eq!(charset_of_header(h).as_deref(), Some("KOI8-R"));
        assert_eq!(charset_of_header(b"MIME-Version: 1.0\n"), None);
        assert_eq!(charset_of_header(b"content-type: text/plain; CHARSET=utf-8"), Some("utf-8".into()));
    }

    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let good = write_mo(&sample(), Endian::Little);
        assert!(matches!(parse_mo(&[]), Err(MoError::TooShort { len: 0 })));
        assert!(matches!(
            parse_mo(b"garbage that is long enough to have a header"),
            Err(MoError::BadMagic(_))
        ));
        // Every truncation of a valid file must fail cleanly (or, past the string data, parse).
        for cut in 0..good.len() {
            let _ = parse_mo(&good[..cut]);
        }
        assert!(parse_mo(&good[..good.len() / 2]).is_err());
        // A huge count must not allocate or overflow.
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_mo(&bad), Err(MoError::TableOutOfBounds { .. })));
        // A string offset past the end.
        let mut bad = good.clone();
        let orig = u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
        bad[orig + 4..orig + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_mo(&bad), Err(MoError::StringOutOfBounds { .. })));
        // Unknown revision.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&0x0005_0000u32.to_le_bytes());
        assert_eq!(parse_mo(&bad), Err(MoError::UnsupportedRevision(5)));
        // Byte flips anywhere never panic (a cheap, deterministic fuzz).
        for i in 0..good.len() {
            let mut m = good.clone();
            m[i] ^= 0xa5;
            let _ = parse_mo(&m);
        }
    }
}
