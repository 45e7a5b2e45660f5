//! The texts `kdx predict`, `kdx embed` and `kdx eval` read: one per line, from a file or
//! standard input, read a line at a time with a bound on its length, so memory stays the
//! same whatever the input's size (a file without newlines, `/dev/zero`, is an error at its
//! first line, not the whole file in memory).

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result};

/// The longest line kdx reads: far beyond any sentence, short of what would hurt memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Lines of a text input, numbered from 1, each at most [`MAX_LINE_BYTES`] long, without
/// their `\n` or `\r\n`.
pub struct TextLines {
    reader: Box<dyn BufRead>,
    /// The file's name, or `stdin`, for messages.
    name: String,
    /// The number of the last line read.
    pub number: usize,
    max: usize,
}

impl TextLines {
    /// The lines of `file`, or of standard input without one.
    pub fn open(file: Option<&Path>) -> Result<TextLines> {
        let (reader, name): (Box<dyn BufRead>, String) = match file {
            Some(f) => (
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?,
                )),
                f.display().to_string(),
            ),
            None => (Box::new(std::io::BufReader::new(std::io::stdin())), "stdin".to_string()),
        };
        Ok(TextLines { reader, name, number: 0, max: MAX_LINE_BYTES })
    }

    /// The source's name as messages give it (`FILE` or `stdin`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next line, `None` at the end. A line longer than the bound, or not UTF-8, is an
    /// error naming its number.
    pub fn next_line(&mut self) -> Result<Option<String>> {
        let mut line = Vec::new();
        loop {
            let buf = self.reader.fill_buf().with_context(|| format!("reading {}", self.name))?;
            if buf.is_empty() {
                if line.is_empty() {
                    return Ok(None);
                }
                break;
            }
            let (take, end) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if line.len() + take > self.max + 1 {
                return Err(line_too_long(&self.name, self.number as u64 + 1, self.max));
            }
            line.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            if end {
                break;
            }
        }
        self.number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        String::from_utf8(line).map(Some).map_err(|_| not_utf8(&self.name, self.number as u64))
    }

    /// Up to `n` next lines (fewer only at the end).
    pub fn next_chunk(&mut self, n: usize) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_line()? {
                Some(l) => out.push(l),
                None => break,
            }
        }
        Ok(out)
    }
}

/// The error for line `line` of `name` longer than `max` bytes, as every reader of texts and
/// labelled files (`kdx eval`) words it.
pub fn line_too_long(name: &str, line: u64, max: usize) -> anyhow::Error {
    anyhow::anyhow!(
        "{name}:{line}: a line longer than {max} bytes; kdx reads one text per line (is this a text file?)"
    )
}

/// The error for line `line` of `name` not being UTF-8, worded as [`line_too_long`]'s.
pub fn not_utf8(name: &str, line: u64) -> anyhow::Error {
    anyhow::anyhow!("{name}:{line}: the line is not UTF-8 text")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &'static [u8], max: usize) -> TextLines {
        TextLines { reader: Box::new(bytes), name: "in.txt".into(), number: 0, max }
    }

    #[test]
    fn lines_are_read_one_at_a_time_and_an_endless_one_is_refused_at_its_number() {
        let mut l = lines(b"one\r\ntwo\n\nthree", 8);
        assert_eq!(l.next_chunk(10).unwrap(), ["one", "two", "", "three"]);
        assert!(l.next_line().unwrap().is_none());
        // Exactly the bound passes; one byte more (before any newline) is an error.
        let mut l = lines(b"12345678\n123456789\n", 8);
        assert_eq!(l.next_line().unwrap().as_deref(), Some("12345678"));
        let e = l.next_line().unwrap_err().to_string();
        assert!(e.starts_with("in.txt:2: a line longer than 8 bytes"), "{e}");
        let e = lines(b"ok\n\xff\n", 8).next_chunk(2).unwrap_err().to_string();
        assert_eq!(e, "in.txt:2: the line is not UTF-8 text");
    }
}
