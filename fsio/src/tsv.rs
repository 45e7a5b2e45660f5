//! Reading TAB-separated files: the one reader behind every TSV file kdx reads (the corpus
//! snapshot, the `tsv` dataset, `kdx eval --data`, retrieval pair files).
//!
//! It is the `csv` crate configured for raw TSV: fields are separated by TABs, a line ends at
//! `\n`, quotes are ordinary characters (no quoting, so a field cannot hold a TAB or a line
//! break), lines may have any number of fields (the caller checks the count and reports it in
//! its own words), there is no header row (a caller that has one reads it as the first
//! record) and no comment character. Each record comes with its 1-based line number, blank
//! lines counted, so a caller's message points at the line an editor shows.
//!
//! What the readers it replaced did differently from each other is an option, so each keeps
//! its behaviour: what happens to a `\r` ending a line ([`CarriageReturn`]), whether blank
//! lines are skipped or returned ([`TsvReader::keep_blank_lines`]), and a bound on a line's
//! length for inputs that may not be text at all ([`TsvReader::max_line_bytes`]).

use std::fmt;
use std::io::{self, Read};
use std::str::Utf8Error;

use csv::ByteRecord;

/// What happens to a carriage return (`\r`) that ends a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CarriageReturn {
    /// It stays at the end of the line's last field: for a caller that refuses CRLF files
    /// with its own message.
    Keep,
    /// `\r\n` ends a line as `\n` does, as `str::lines` and `BufRead::lines` read; a `\r`
    /// ending a last line that has no `\n` stays.
    BeforeNewline,
    /// It is dropped from the end of every line, the last one's too.
    Drop,
}

/// Why a TSV input could not be read (a record's content is the caller's to judge).
#[derive(Debug)]
pub enum TsvError {
    /// Reading the input failed.
    Io(io::Error),
    /// A line is longer than the bound set with [`TsvReader::max_line_bytes`].
    LineTooLong {
        /// The 1-based number of the line.
        line: u64,
        /// The bound, in bytes.
        max: usize,
    },
}

impl fmt::Display for TsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TsvError::Io(e) => write!(f, "{e}"),
            TsvError::LineTooLong { line, max } => write!(f, "line {line}: a line longer than {max} bytes"),
        }
    }
}

impl std::error::Error for TsvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TsvError::Io(e) => Some(e),
            TsvError::LineTooLong { .. } => None,
        }
    }
}

/// One line of a TSV input: its fields (none for a blank line) and its line number.
#[derive(Clone, Debug)]
pub struct Record {
    line: u64,
    fields: ByteRecord,
}

impl Record {
    /// The 1-based line number (blank lines counted).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// How many fields the line has: 0 for a blank line (one returned by
    /// [`TsvReader::keep_blank_lines`]), else one more than its TABs.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the line is blank (empty, or only a `\r` that was dropped).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The field at `index` (0-based), as bytes.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        self.fields.get(index)
    }

    /// The fields in order, as bytes.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.fields.iter()
    }

    /// The line as it was read, without its line end: the fields joined by TABs.
    pub fn bytes(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(self.fields.as_slice().len() + self.len());
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                line.push(b'\t');
            }
            line.extend_from_slice(f);
        }
        line
    }

    /// The fields as text. A line that is not UTF-8 is an error as `std::str::from_utf8`
    /// reports it for the whole line (its offset counted from the line's start), so a
    /// message reads as it did when lines were decoded whole.
    pub fn strs(&self) -> Result<Vec<&str>, Utf8Error> {
        let mut out = Vec::with_capacity(self.len());
        for f in self.fields.iter() {
            match std::str::from_utf8(f) {
                Ok(s) => out.push(s),
                // A TAB is ASCII, so the line is UTF-8 exactly when each field is: the line's
                // own error exists whenever a field's does.
                Err(e) => return Err(std::str::from_utf8(&self.bytes()).err().unwrap_or(e)),
            }
        }
        Ok(out)
    }
}

/// The input as the `csv` reader sees it: after a blank line put first (csv drops a UTF-8
/// byte-order mark starting its input, and only there; behind the blank line a mark stays,
/// so whether one is part of the data is the caller's decision, as before csv), every line
/// ending with `\n` (one is added after a last line without one, so each record's line
/// number is the line count just after it minus two, and a last line is not confused with
/// the blank lines csv skips), and lines longer than the bound stopping the reading at their
/// number.
struct Source<R> {
    inner: R,
    /// Whether the blank line put first was handed to csv.
    started: bool,
    /// At most `max + 1` bytes a line, counting its `\n`; `None`: unbounded.
    max: Option<usize>,
    /// The number of the line being read (counted only with a bound).
    line: u64,
    /// Bytes of that line so far.
    in_line: usize,
    /// A line found too long; the error comes with the next read.
    too_long: Option<u64>,
    /// The last byte of the input, to know whether it ended its line.
    last: Option<u8>,
    /// Bytes handed to csv, an added `\n` included.
    handed: u64,
    /// Whether a `\n` was added at the end.
    added_newline: bool,
    /// Whether the input is at its end.
    at_end: bool,
}

impl<R: Read> Source<R> {
    fn too_long(&self, line: u64) -> io::Error {
        io::Error::other(TooLong { line, max: self.max.unwrap_or_default() })
    }
}

/// The payload of the I/O error [`Source`] stops csv with, turned back into
/// [`TsvError::LineTooLong`] by the reader.
#[derive(Debug)]
struct TooLong {
    line: u64,
    max: usize,
}

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: a line longer than {} bytes", self.line, self.max)
    }
}

impl std::error::Error for TooLong {}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(line) = self.too_long {
            return Err(self.too_long(line));
        }
        if self.at_end || buf.is_empty() {
            return Ok(0);
        }
        if !self.started {
            self.started = true;
            buf[0] = b'\n';
            self.handed += 1;
            return Ok(1);
        }
        let mut n = self.inner.read(buf)?;
        if n == 0 {
            self.at_end = true;
            if self.last.is_some_and(|b| b != b'\n') {
                buf[0] = b'\n';
                self.added_newline = true;
                self.handed += 1;
                return Ok(1);
            }
            return Ok(0);
        }
        if let Some(max) = self.max {
            for (i, &b) in buf[..n].iter().enumerate() {
                self.in_line += 1;
                if self.in_line > max + 1 {
                    self.too_long = Some(self.line);
                    if i == 0 {
                        return Err(self.too_long(self.line));
                    }
                    // The lines before it are read first; the error comes with the next read.
                    n = i;
                    break;
                }
                if b == b'\n' {
                    self.line += 1;
                    self.in_line = 0;
                }
            }
        }
        self.last = Some(buf[n - 1]);
        self.handed += n as u64;
        Ok(n)
    }
}

/// Records of a TSV input, in order, each with its line number (see the module's
/// documentation for the format). An iterator of `Result<Record, TsvError>`; after an error
/// it ends.
pub struct TsvReader<R: Read> {
    csv: csv::Reader<Source<R>>,
    carriage_return: CarriageReturn,
    keep_blank: bool,
    /// The first line not yet returned or skipped.
    next_line: u64,
    /// A record read while the blank lines before it are returned.
    pending: Option<Record>,
    /// At the end of the input: one past its last line.
    end: Option<u64>,
    failed: bool,
}

impl<R: Read> TsvReader<R> {
    /// A reader of `input` (a file, a decompressor, bytes): `\r` kept, blank lines skipped,
    /// lines of any length. `csv` buffers the input itself.
    pub fn new(input: R) -> TsvReader<R> {
        let source = Source {
            inner: input,
            started: false,
            max: None,
            line: 1,
            in_line: 0,
            too_long: None,
            last: None,
            handed: 0,
            added_newline: false,
            at_end: false,
        };
        let csv = csv::ReaderBuilder::new()
            .delimiter(b'\t')
            .terminator(csv::Terminator::Any(b'\n'))
            .quoting(false)
            .comment(None)
            .flexible(true)
            .has_headers(false)
            .from_reader(source);
        TsvReader {
            csv,
            carriage_return: CarriageReturn::Keep,
            keep_blank: false,
            next_line: 1,
            pending: None,
            end: None,
            failed: false,
        }
    }

    /// What happens to a `\r` ending a line (default [`CarriageReturn::Keep`]). A line that
    /// is only a dropped `\r` is blank.
    pub fn carriage_return(mut self, cr: CarriageReturn) -> TsvReader<R> {
        self.carriage_return = cr;
        self
    }

    /// Returns blank lines as records without fields instead of skipping them (default:
    /// skipped), for a format in which a blank line is an error.
    pub fn keep_blank_lines(mut self, keep: bool) -> TsvReader<R> {
        self.keep_blank = keep;
        self
    }

    /// Refuses a line of more than `max` bytes before its `\n` with
    /// [`TsvError::LineTooLong`], before reading it whole, so memory stays bounded whatever
    /// the input (`/dev/zero`). A last line without a `\n` may have `max + 1` bytes, as
    /// kdx's line reader for texts allows.
    pub fn max_line_bytes(mut self, max: usize) -> TsvReader<R> {
        self.csv.get_mut().max = Some(max);
        self
    }

    /// Reads the next record from csv: `None` at the end of the input.
    fn read(&mut self) -> Result<Option<Record>, TsvError> {
        let mut fields = ByteRecord::new();
        let found = self.csv.read_byte_record(&mut fields).map_err(|e| match e.into_kind() {
            csv::ErrorKind::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref::<TooLong>()) {
                Some(t) => TsvError::LineTooLong { line: t.line, max: t.max },
                None => TsvError::Io(io),
            },
            // Raw bytes, no quoting, any field count: csv has nothing else to refuse.
            other => TsvError::Io(io::Error::other(format!("{other:?}"))),
        })?;
        let pos = self.csv.position();
        // The position counts the blank line put first, and every line ends with a `\n`
        // (see `Source`).
        if !found {
            self.end = Some(pos.line() - 1);
            return Ok(None);
        }
        let line = pos.line() - 2;
        let source = self.csv.get_ref();
        let real_newline = !(source.added_newline && pos.byte() == source.handed);
        let strip = match self.carriage_return {
            CarriageReturn::Keep => false,
            CarriageReturn::BeforeNewline => real_newline,
            CarriageReturn::Drop => true,
        };
        if strip {
            fields = drop_final_cr(fields);
        }
        Ok(Some(Record { line, fields }))
    }
}

/// `fields` without the `\r` ending the last one, if it has one; a line that was only the
/// `\r` has no fields.
fn drop_final_cr(fields: ByteRecord) -> ByteRecord {
    let n = fields.len();
    if !n.checked_sub(1).and_then(|i| fields.get(i)).is_some_and(|f| f.ends_with(b"\r")) {
        return fields;
    }
    let mut out = ByteRecord::with_capacity(fields.as_slice().len(), n);
    for (i, f) in fields.iter().enumerate() {
        out.push_field(if i + 1 == n { &f[..f.len() - 1] } else { f });
    }
    if n == 1 && out.get(0).is_some_and(<[u8]>::is_empty) {
        out.clear();
    }
    out
}

impl<R: Read> Iterator for TsvReader<R> {
    type Item = Result<Record, TsvError>;

    fn next(&mut self) -> Option<Result<Record, TsvError>> {
        loop {
            if let Some(r) = self.pending.take() {
                if self.keep_blank && self.next_line < r.line {
                    let blank = Record { line: self.next_line, fields: ByteRecord::new() };
                    self.next_line += 1;
                    self.pending = Some(r);
                    return Some(Ok(blank));
                }
                self.next_line = r.line + 1;
                if r.is_empty() && !self.keep_blank {
                    continue;
                }
                return Some(Ok(r));
            }
            if let Some(end) = self.end {
                if self.keep_blank && self.next_line < end {
                    self.next_line += 1;
                    return Some(Ok(Record { line: self.next_line - 1, fields: ByteRecord::new() }));
                }
                return None;
            }
            if self.failed {
                return None;
            }
            match self.read() {
                Ok(Some(r)) => self.pending = Some(r),
                Ok(None) => {}
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each record as (line, fields as text), or the error's message.
    fn read(
        input: &[u8],
        configure: impl Fn(TsvReader<&[u8]>) -> TsvReader<&[u8]>,
    ) -> Vec<(u64, Vec<String>)> {
        configure(TsvReader::new(input))
            .map(|r| {
                let r = r.unwrap();
                (r.line(), r.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect())
            })
            .collect()
    }

    fn row(line: u64, fields: &[&str]) -> (u64, Vec<String>) {
        (line, fields.iter().map(|f| f.to_string()).collect())
    }

    #[test]
    fn fields_are_raw_and_lines_counted_with_blank_ones() {
        let input = b"a\tb\"c\t\n\n\"q\"\t,x\n\t\n\nlast";
        let want =
            vec![row(1, &["a", "b\"c", ""]), row(3, &["\"q\"", ",x"]), row(4, &["", ""]), row(6, &["last"])];
        assert_eq!(read(input, |r| r), want);
        // A final newline, or several blank lines after the last record, change nothing.
        assert_eq!(read(b"a\tb\n", |r| r), vec![row(1, &["a", "b"])]);
        assert_eq!(read(b"a\tb\n\n\n", |r| r), vec![row(1, &["a", "b"])]);
        assert_eq!(read(b"", |r| r), vec![]);
        assert_eq!(read(b"\n\n", |r| r), vec![]);
        // `#` starts no comment, and fields may hold spaces.
        assert_eq!(read(b"# x\t y \n", |r| r), vec![row(1, &["# x", " y "])]);
        // A byte-order mark is data, at the start as anywhere (csv alone would drop it there).
        assert_eq!(read(b"\xef\xbb\xbfa\tb\n", |r| r), vec![row(1, &["\u{feff}a", "b"])]);
    }

    #[test]
    fn blank_lines_are_returned_when_asked() {
        let blank = |line| (line, Vec::new());
        let r = read(b"\na\n\n\nb\n\n", |r| r.keep_blank_lines(true));
        assert_eq!(r, vec![blank(1), row(2, &["a"]), blank(3), blank(4), row(5, &["b"]), blank(6)]);
        assert_eq!(read(b"a\nb", |r| r.keep_blank_lines(true)), vec![row(1, &["a"]), row(2, &["b"])]);
        assert_eq!(read(b"\n", |r| r.keep_blank_lines(true)), vec![blank(1)]);
        assert_eq!(read(b"", |r| r.keep_blank_lines(true)), vec![]);
    }

    #[test]
    fn carriage_returns_follow_the_chosen_rule() {
        let input = b"a\tb\r\n\r\nc\r\r\nd\r";
        let keep = read(input, |r| r);
        assert_eq!(keep, vec![row(1, &["a", "b\r"]), row(2, &["\r"]), row(3, &["c\r\r"]), row(4, &["d\r"])]);
        let before = read(input, |r| r.carriage_return(CarriageReturn::BeforeNewline));
        assert_eq!(before, vec![row(1, &["a", "b"]), row(3, &["c\r"]), row(4, &["d\r"])]);
        let drop = read(input, |r| r.carriage_return(CarriageReturn::Drop).keep_blank_lines(true));
        assert_eq!(drop, vec![row(1, &["a", "b"]), (2, vec![]), row(3, &["c\r"]), row(4, &["d"])]);
        // A `\r` inside a line is an ordinary byte.
        assert_eq!(
            read(b"a\rb\tc\n", |r| r.carriage_return(CarriageReturn::Drop)),
            vec![row(1, &["a\rb", "c"])]
        );
    }

    #[test]
    fn utf8_errors_are_reported_for_the_whole_line() {
        let mut r = TsvReader::new(&b"ok\tfine\nab\tc\xffd\n"[..]);
        assert_eq!(r.next().unwrap().unwrap().strs().unwrap(), ["ok", "fine"]);
        let bad = r.next().unwrap().unwrap();
        assert_eq!(bad.line(), 2);
        let e = bad.strs().unwrap_err();
        assert_eq!(e.valid_up_to(), 4, "counted from the line's start, TAB included");
        assert_eq!(e.to_string(), "invalid utf-8 sequence of 1 bytes from index 4");
        assert_eq!(bad.bytes(), b"ab\tc\xffd");
        assert!(r.next().is_none());
    }

    #[test]
    fn a_line_over_the_bound_is_refused_at_its_number_after_the_lines_before_it() {
        let mut r = TsvReader::new(&b"12345678\n123456789\nx\n"[..]).max_line_bytes(8);
        assert_eq!(r.next().unwrap().unwrap().line(), 1);
        let e = r.next().unwrap().unwrap_err();
        assert!(matches!(e, TsvError::LineTooLong { line: 2, max: 8 }), "{e:?}");
        assert_eq!(e.to_string(), "line 2: a line longer than 8 bytes");
        assert!(r.next().is_none(), "the reader stops at an error");
        // A last line without `\n` may have one byte more, as kdx's text lines allow.
        let r: Vec<_> =
            TsvReader::new(&b"a\n123456789"[..]).max_line_bytes(8).map(|r| r.unwrap().line()).collect();
        assert_eq!(r, [1, 2]);
        // Beyond csv's buffer too, and without reading the endless line whole.
        let endless = std::io::repeat(b'x');
        let mut r = TsvReader::new(std::io::Read::chain(&b"fine\n"[..], endless)).max_line_bytes(1 << 16);
        assert_eq!(r.next().unwrap().unwrap().strs().unwrap(), ["fine"]);
        assert!(matches!(r.next(), Some(Err(TsvError::LineTooLong { line: 2, .. }))));
    }

    #[test]
    fn many_lines_read_through_a_small_buffer_keep_their_numbers() {
        // Longer than csv's buffer, so records and line ends straddle refills.
        let mut text = String::new();
        for i in 0..5000 {
            if i % 7 == 0 {
                text.push('\n');
            }
            text.push_str(&format!("{i}\tv{i}\r\n"));
        }
        let r: Vec<_> =
            TsvReader::new(text.as_bytes()).carriage_return(CarriageReturn::BeforeNewline).collect();
        assert_eq!(r.len(), 5000);
        let mut line = 0;
        for (i, rec) in r.into_iter().enumerate() {
            let rec = rec.unwrap();
            line += 1 + (i % 7 == 0) as u64;
            assert_eq!(
                (rec.line(), rec.strs().unwrap()),
                (line, vec![i.to_string().as_str(), &format!("v{i}")])
            );
        }
    }
}
