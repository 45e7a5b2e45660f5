//! Key paths: the address of a value inside a recipe (`loss[1].temperature`).

use std::fmt;
use std::str::FromStr;

/// One step of a [`KeyPath`]: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seg {
    /// A key of a table (`temperature`).
    Key(String),
    /// A 0-based index into an array (`[1]`), including arrays of tables (`[[loss]]`).
    Index(usize),
}

impl From<&str> for Seg {
    fn from(key: &str) -> Self {
        Seg::Key(key.to_owned())
    }
}

impl From<String> for Seg {
    fn from(key: String) -> Self {
        Seg::Key(key)
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Self {
        Seg::Index(index)
    }
}

/// The address of a value inside a recipe, from the root table.
///
/// Displayed the way users read it: `loss[1].temperature`, `train.optimizer.lr`;
/// keys that are not bare TOML keys are quoted (`sweep."loss.0.temperature"`).
/// The empty path is the root table and displays as the empty string.
///
/// Ordering is lexicographic over segments, so a path sorts directly before all
/// paths below it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyPath(pub Vec<Seg>);

/// Why a key path string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key path `{input}`: {reason}")]
pub struct ParseKeyPathError {
    /// The text that was parsed.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl KeyPath {
    /// The empty path (the root table).
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// A path made of the given segments.
    pub fn new(segs: impl IntoIterator<Item = Seg>) -> Self {
        KeyPath(segs.into_iter().collect())
    }

    /// Parses the sweep syntax: dot-separated keys where an all-digit segment is an
    /// array index (`loss.0.temperature`).
    ///
    /// The display syntax is accepted too (`loss[0].temperature`, quoted keys such
    /// as `a."b.c"`), so a user who copies a path out of an error message gets
    /// what they meant.
    pub fn parse_dotted(s: &str) -> Result<KeyPath, ParseKeyPathError> {
        if s.trim().is_empty() {
            return Err(ParseKeyPathError { input: s.to_owned(), reason: "it is empty".into() });
        }
        parse(s, true)
    }

    /// Parses what `serde_path_to_error::Path::to_string()` produces
    /// (`loss[1].temperature`, `optimizer.lr`, `.` for the root). Never fails:
    /// `?` segments (serde could not tell the key) are kept as keys named `?`,
    /// and anything unparsable falls back to splitting on dots, because this is
    /// only used to make an error message more precise.
    pub fn from_serde_path(s: &str) -> KeyPath {
        let s = s.trim();
        if s.is_empty() || s == "." {
            return KeyPath::root();
        }
        parse(s, false).unwrap_or_else(|_| {
            KeyPath(s.split('.').filter(|p| !p.is_empty()).map(|p| Seg::Key(p.to_owned())).collect())
        })
    }

    /// Converts the structured path of a `serde_path_to_error` error. Preferred
    /// over [`KeyPath::from_serde_path`] where the `Path` itself is at hand, as
    /// it cannot confuse a dotted key with nesting.
    pub fn from_serde(path: &serde_path_to_error::Path) -> KeyPath {
        use serde_path_to_error::Segment;
        KeyPath(
            path.iter()
                .map(|s| match s {
                    Segment::Seq { index } => Seg::Index(*index),
                    Segment::Map { key } => Seg::Key(key.clone()),
                    Segment::Enum { variant } => Seg::Key(variant.clone()),
                    Segment::Unknown => Seg::Key("?".into()),
                })
                .collect(),
        )
    }

    /// `self` followed by `rest` (`loss[0]` joined with `temperature`).
    pub fn join(&self, rest: &KeyPath) -> KeyPath {
        let mut segs = self.0.clone();
        segs.extend(rest.0.iter().cloned());
        KeyPath(segs)
    }

    /// `self` followed by one key.
    pub fn key(&self, key: impl Into<String>) -> KeyPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.into()));
        KeyPath(segs)
    }

    /// `self` followed by one array index.
    pub fn index(&self, index: usize) -> KeyPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        KeyPath(segs)
    }

    /// The segments, root first.
    pub fn segments(&self) -> &[Seg] {
        &self.0
    }

    /// Whether this is the root (no segments).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The path without its last segment; `None` for the root.
    pub fn parent(&self) -> Option<KeyPath> {
        let (_, init) = self.0.split_last()?;
        Some(KeyPath(init.to_vec()))
    }

    /// The last segment; `None` for the root.
    pub fn last(&self) -> Option<&Seg> {
        self.0.last()
    }

    /// Whether `prefix` is this path or one of its ancestors.
    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    write_key(f, k)?;
                }
            }
        }
        Ok(())
    }
}

/// Parses the display syntax (`loss[1].temperature`, `sweep."loss.0.t"`); digits
/// are keys here, as `Display` writes indices in brackets.
impl FromStr for KeyPath {
    type Err = ParseKeyPathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(KeyPath::root());
        }
        parse(s, false)
    }
}

/// Characters that need no quoting. `?` is included because serde uses it for
/// keys it could not name, and `"?"` would suggest a literal key.
fn is_bare(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '?'
}

fn write_key(f: &mut fmt::Formatter<'_>, k: &str) -> fmt::Result {
    if !k.is_empty() && k.chars().all(is_bare) {
        return f.write_str(k);
    }
    f.write_str("\"")?;
    for c in k.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            c if c.is_control() => write!(f, "\\u{:04X}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

/// Shared parser for both syntaxes: `seg ('.' seg | '[' digits ']')*` where a
/// segment is bare or double-quoted; with `digits_as_index`, an all-digit bare
/// segment is an index (the sweep syntax).
fn parse(s: &str, digits_as_index: bool) -> Result<KeyPath, ParseKeyPathError> {
    let err = |reason: &str| ParseKeyPathError { input: s.to_owned(), reason: reason.to_owned() };
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut segs = Vec::new();
    // Whether the next thing must be a key segment (at start or after a dot).
    let mut expect_key = true;
    while i < chars.len() {
        let c = chars[i];
        if c == '[' {
            let close = chars[i..].iter().position(|&c| c == ']').ok_or_else(|| err("unclosed `[`"))?;
            let digits: String = chars[i + 1..i + close].iter().collect();
            let n = parse_index(&digits).ok_or_else(|| err("`[...]` must hold an array index"))?;
            segs.push(Seg::Index(n));
            i += close + 1;
            expect_key = false;
            continue;
        }
        if !expect_key {
            if c != '.' {
                return Err(err("expected `.` or `[` between segments"));
            }
            i += 1;
            if i == chars.len() {
                return Err(err("it ends with `.`"));
            }
            expect_key = true;
            continue;
        }
        if c == '"' {
            let mut key = String::new();
            i += 1;
            loop {
                let Some(&c) = chars.get(i) else {
                    return Err(err("unclosed `\"`"));
                };
                i += 1;
                match c {
                    '"' => break,
                    '\\' => {
                        let Some(&e) = chars.get(i) else {
                            return Err(err("unfinished escape"));
                        };
                        i += 1;
                        key.push(e);
                    }
                    c => key.push(c),
                }
            }
            segs.push(Seg::Key(key));
        } else {
            let start = i;
            while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let word = word.trim();
            if word.is_empty() {
                return Err(err("it has an empty segment"));
            }
            if digits_as_index && word.chars().all(|c| c.is_ascii_digit()) {
                let n = parse_index(word).ok_or_else(|| err("array index is too large"))?;
                segs.push(Seg::Index(n));
            } else {
                segs.push(Seg::Key(word.to_owned()));
            }
        }
        expect_key = false;
    }
    if expect_key && !segs.is_empty() {
        return Err(err("it ends with `.`"));
    }
    Ok(KeyPath(segs))
}

fn parse_index(digits: &str) -> Option<usize> {
    let digits = digits.trim();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kp(segs: &[Seg]) -> KeyPath {
        KeyPath(segs.to_vec())
    }

    #[test]
    fn display_and_parse_round_trip() {
        let cases = [
            kp(&["loss".into(), 1.into(), "temperature".into()]),
            kp(&["train".into(), "optimizer".into(), "lr".into()]),
            kp(&["sweep".into(), "loss.0.temperature".into()]),
            kp(&["a".into(), 0.into(), 2.into(), "q\"uote".into()]),
            kp(&["0".into()]),
            KeyPath::root(),
        ];
        for p in cases {
            let shown = p.to_string();
            assert_eq!(shown.parse::<KeyPath>().unwrap(), p, "{shown}");
            assert_eq!(KeyPath::from_serde_path(&shown), p, "{shown}");
        }
        assert_eq!(kp(&["loss".into(), 1.into(), "temperature".into()]).to_string(), "loss[1].temperature");
        assert_eq!(kp(&["sweep".into(), "loss.0.t".into()]).to_string(), "sweep.\"loss.0.t\"");
    }

    #[test]
    fn parse_dotted_sweep_syntax() {
        let p = KeyPath::parse_dotted("loss.0.temperature").unwrap();
        assert_eq!(p, kp(&["loss".into(), 0.into(), "temperature".into()]));
        assert_eq!(KeyPath::parse_dotted("loss[0].temperature").unwrap(), p);
        assert_eq!(p.to_string(), "loss[0].temperature");
        assert!(KeyPath::parse_dotted("").is_err());
        assert!(KeyPath::parse_dotted("a..b").is_err());
        assert!(KeyPath::parse_dotted("a.").is_err());
        assert!(KeyPath::parse_dotted("a[x]").is_err());
        assert!(KeyPath::parse_dotted("a.99999999999999999999999").is_err());
    }

    #[test]
    fn serde_paths() {
        assert_eq!(KeyPath::from_serde_path("."), KeyPath::root());
        assert_eq!(KeyPath::from_serde_path("optimizer.lr"), kp(&["optimizer".into(), "lr".into()]));
        assert_eq!(KeyPath::from_serde_path("loss[1].?"), kp(&["loss".into(), 1.into(), "?".into()]));
        // Numbers after a dot are map keys in serde's syntax.
        assert_eq!(KeyPath::from_serde_path("langs.12"), kp(&["langs".into(), "12".into()]));
        // Unparsable text still yields something usable.
        assert_eq!(KeyPath::from_serde_path("a.\"b"), kp(&["a".into(), "\"b".into()]));
    }

    #[test]
    fn join_and_prefix() {
        let a = KeyPath::parse_dotted("loss.1").unwrap();
        let b = KeyPath::from_serde_path("temperature");
        let j = a.join(&b);
        assert_eq!(j.to_string(), "loss[1].temperature");
        assert!(j.starts_with(&a));
        assert!(!a.starts_with(&j));
        assert_eq!(j.parent(), Some(a.clone()));
        assert_eq!(a.key("x").index(2).to_string(), "loss[1].x[2]");
    }
}
