//! Located, user-facing diagnostics and "did you mean" suggestions.

use std::fmt;
use std::path::PathBuf;

use crate::KeyPath;

/// A position in a recipe file; `line` and `col` are 1-based, `col` counts
/// characters (not bytes) so it matches what editors show.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Loc {
    /// The file, as it was named when loaded (top file as given, bases joined
    /// onto the directory of the file that extends them).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// One problem in a recipe, with as much location as is known.
///
/// Displays as
/// `path/to/r.toml:12:1: loss[1].temperature: expected a number, found string "hot"`
/// followed by `\n  help: ...` when there is help; absent parts are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where in which file, when known.
    pub loc: Option<Loc>,
    /// The key the problem is about, when there is one.
    pub key_path: Option<KeyPath>,
    /// What is wrong, in the user's terms.
    pub message: String,
    /// How to fix it, when we can tell.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic with only a message; add the rest with the `with_*` methods.
    pub fn new(message: impl Into<String>) -> Self {
        Diagnostic { loc: None, key_path: None, message: message.into(), help: None }
    }

    /// Sets the location.
    pub fn with_loc(mut self, loc: Option<Loc>) -> Self {
        self.loc = loc;
        self
    }

    /// Sets the key path.
    pub fn with_key(mut self, key: KeyPath) -> Self {
        self.key_path = Some(key);
        self
    }

    /// Sets the help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.loc {
            write!(f, "{loc}: ")?;
        }
        if let Some(key) = self.key_path.as_ref().filter(|k| !k.is_empty()) {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// Several diagnostics, reported together so a user fixes a recipe in one pass.
///
/// Implements `std::error::Error` (so it converts into `anyhow::Error`);
/// displays one diagnostic per block, separated by newlines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of diagnostics.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds one.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// `Ok(ok)` when empty, else `Err(self)`: the end of a collect-all-errors pass.
    pub fn into_result<T>(self, ok: T) -> Result<T, Diagnostics> {
        if self.0.is_empty() {
            Ok(ok)
        } else {
            Err(self)
        }
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl From<Vec<Diagnostic>> for Diagnostics {
    fn from(v: Vec<Diagnostic>) -> Self {
        Diagnostics(v)
    }
}

impl Extend<Diagnostic> for Diagnostics {
    fn extend<I: IntoIterator<Item = Diagnostic>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
///
/// Accepts a case-insensitive match, or a Damerau-Levenshtein distance of at most
/// a third of the word's length (at least 1, so `lr`/`Lr`/`l` still match), or a
/// Jaro-Winkler similarity of 0.9 or more (catches long words with a shared
/// prefix). Ties go to the smallest distance, then the earliest candidate.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_lowercase();
    let max_dist = (word.chars().count() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for &cand in candidates {
        if cand == word {
            // The word is valid: nothing to suggest in its place.
            continue;
        }
        let cand_lower = cand.to_lowercase();
        let dist = if cand_lower == lower { 0 } else { strsim::damerau_levenshtein(&lower, &cand_lower) };
        let close = dist <= max_dist || strsim::jaro_winkler(&lower, &cand_lower) >= 0.9;
        if close && best.map_or(true, |(d, _)| dist < d) {
            best = Some((dist, cand));
        }
    }
    best.map(|(_, c)| c)
}

/// Help text for an unknown key: "did you mean `x`? valid keys: a, b, c", without
/// the question when nothing is close.
pub fn unknown_key_help(word: &str, valid: &[&str]) -> String {
    choice_help(word, valid, "keys")
}

/// Shared by unknown keys and unknown enum values.
fn choice_help(word: &str, valid: &[&str], what: &str) -> String {
    let list = if valid.is_empty() {
        format!("no {what} are accepted here")
    } else {
        format!("valid {what}: {}", valid.join(", "))
    };
    match did_you_mean(word, valid) {
        Some(s) => format!("did you mean `{s}`? {list}"),
        None => list,
    }
}

/// Turns serde's deserialisation messages into user-facing ones with help.
///
/// Serde's wording (`invalid type: string "x", expected f32`) talks about Rust
/// types; users think in TOML. Messages that match no known shape (custom
/// errors from a plugin's own `Deserialize`) are kept as they are.
pub fn humanize_serde_message(msg: &str) -> (String, Option<String>) {
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let (word, expected) = split_unknown(rest);
        return (format!("unknown key `{word}`"), Some(choice_help(&word, &refs(&expected), "keys")));
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let (word, expected) = split_unknown(rest);
        return (format!("unknown value `{word}`"), Some(choice_help(&word, &refs(&expected), "values")));
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return (format!("missing key {rest}"), None);
    }
    if let Some(rest) = msg.strip_prefix("duplicate field ") {
        return (format!("duplicate key {rest}"), None);
    }
    for (prefix, kind) in [("invalid type: ", "type"), ("invalid value: ", "value")] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some(at) = rest.rfind(", expected ") {
                let found = humanize_unexpected(&rest[..at]);
                let expected = humanize_expected(&rest[at + ", expected ".len()..]);
                let msg = if kind == "type" {
                    format!("expected {expected}, found {found}")
                } else {
                    format!("invalid value {found}, expected {expected}")
                };
                return (msg, None);
            }
        }
    }
    if let Some(rest) = msg.strip_prefix("invalid length ") {
        if let Some(at) = rest.find(", expected ") {
            let n = &rest[..at];
            let expected = humanize_expected(&rest[at + ", expected ".len()..]);
            return (format!("expected {expected}, found an array of {n} elements"), None);
        }
    }
    (msg.to_owned(), None)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Splits "`word`, expected one of `a`, `b`" / "`word`, expected `a`" /
/// "`word`, there are no fields" into the word and the expected names.
fn split_unknown(rest: &str) -> (String, Vec<String>) {
    let names = backticked(rest);
    let mut it = names.into_iter();
    let word = it.next().unwrap_or_default();
    (word, it.collect())
}

/// All `backticked` substrings, in order.
fn backticked(s: &str) -> Vec<String> {
    s.split('`').enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, part)| part.to_owned()).collect()
}

/// Serde's `Unexpected` display (`string "x"`, `integer `5``, `sequence`) in TOML terms.
fn humanize_unexpected(found: &str) -> String {
    let strip = |s: &str| s.trim_matches('`').to_owned();
    if let Some(v) = found.strip_prefix("integer ") {
        return format!("integer {}", strip(v));
    }
    if let Some(v) = found.strip_prefix("floating point ") {
        return format!("float {}", strip(v));
    }
    if let Some(v) = found.strip_prefix("boolean ") {
        return format!("boolean {}", strip(v));
    }
    match found {
        "sequence" => "an array".into(),
        "map" => "a table".into(),
        "unit value" => "an empty value".into(),
        _ => found.to_owned(),
    }
}

/// Serde's "expected" text (`f32`, `a sequence`, `struct Loss`) in TOML terms.
fn humanize_expected(expected: &str) -> String {
    match expected {
        "f32" | "f64" => "a number".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".into(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".into(),
        "a boolean" | "bool" => "a boolean (true or false)".into(),
        "a string" | "a borrowed string" | "string" => "a string".into(),
        "a character" | "char" => "a single character".into(),
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        e if e.starts_with("struct ") || e.starts_with("map ") => "a table".into(),
        e if e.starts_with("tuple") => format!("an array ({e})"),
        e => e.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = ["weight", "temperature", "plugin"];
        assert_eq!(did_you_mean("temprature", &keys), Some("temperature"));
        assert_eq!(did_you_mean("wieght", &keys), Some("weight"));
        assert_eq!(did_you_mean("Plugin", &keys), Some("plugin"));
        assert_eq!(did_you_mean("xyz", &keys), None);
        assert_eq!(did_you_mean("weight", &keys), None);
        assert_eq!(did_you_mean("anything", &[]), None);
        assert_eq!(did_you_mean("lrr", &["lr", "steps"]), Some("lr"));
        assert_eq!(
            unknown_key_help("temprature", &keys),
            "did you mean `temperature`? valid keys: weight, temperature, plugin"
        );
        assert_eq!(unknown_key_help("zzz", &["a", "b"]), "valid keys: a, b");
    }

    #[test]
    fn serde_messages() {
        let (m, h) =
            humanize_serde_message("unknown field `temprature`, expected one of `weight`, `temperature`");
        assert_eq!(m, "unknown key `temprature`");
        assert_eq!(h.as_deref(), Some("did you mean `temperature`? valid keys: weight, temperature"));
        let (m, _) = humanize_serde_message("invalid type: string \"x\", expected f32");
        assert_eq!(m, "expected a number, found string \"x\"");
        let (m, _) = humanize_serde_message("invalid type: sequence, expected a string");
        assert_eq!(m, "expected a string, found an array");
        let (m, _) = humanize_serde_message("invalid value: integer `-1`, expected u32");
        assert_eq!(m, "invalid value integer -1, expected a non-negative integer");
        let (m, h) = humanize_serde_message("missing field `weight`");
        assert_eq!((m.as_str(), h), ("missing key `weight`", None));
        let (m, h) = humanize_serde_message("unknown variant `adamx`, expected `adamw` or `sgd`");
        assert_eq!(m, "unknown value `adamx`");
        assert_eq!(h.as_deref(), Some("did you mean `adamw`? valid values: adamw, sgd"));
        let (m, h) = humanize_serde_message("unknown field `x`, there are no fields");
        assert_eq!(m, "unknown key `x`");
        assert_eq!(h.as_deref(), Some("no keys are accepted here"));
        let (m, _) = humanize_serde_message("something custom");
        assert_eq!(m, "something custom");
    }

    #[test]
    fn display() {
        let d = Diagnostic {
            loc: Some(Loc { file: "r.toml".into(), line: 12, col: 1 }),
            key_path: Some(KeyPath::parse_dotted("loss.1.temperature").unwrap()),
            message: "expected a number, found string \"hot\"".into(),
            help: Some("did you mean `temperature`?".into()),
        };
        assert_eq!(
            d.to_string(),
            "r.toml:12:1: loss[1].temperature: expected a number, found string \"hot\"\n  help: did you mean `temperature`?"
        );
        let bare = Diagnostic::new("boom");
        assert_eq!(bare.to_string(), "boom");
        let all = Diagnostics(vec![d, bare]);
        assert!(all.to_string().ends_with("?\nboom"));
        let _: Box<dyn std::error::Error + Send + Sync> = Box::new(all);
    }
}
