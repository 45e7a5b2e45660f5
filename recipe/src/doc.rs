//! Loading a recipe: parsing, `extends` merging and source locations.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::diag::humanize_serde_message;
use crate::{Diagnostic, Diagnostics, KeyPath, Loc, Seg};

/// Top-level key naming the base recipe(s).
const EXTENDS: &str = "extends";
/// Top-level table holding the sweep grid.
pub(crate) const SWEEP: &str = "sweep";

/// A loaded recipe: the merged TOML of the file and its bases, and where each
/// key was defined.
///
/// Merge rule for `extends`: tables merge key by key, recursively; every other
/// value is replaced wholesale by the later file. Arrays are values, so a child
/// that declares `[[loss]]` (or `hidden = [..]`) replaces the whole list from
/// its base rather than appending to it: keeping or editing single elements
/// would need an identity for each element, which TOML does not have. A table
/// that names a different `plugin` than its base's replaces it too: the base's
/// parameters belong to the base's plugin.
#[derive(Debug, Clone)]
pub struct RecipeDoc {
    /// The top file, as given.
    pub(crate) path: PathBuf,
    /// Merged content without `extends` and `sweep`.
    pub(crate) root: Table,
    /// Where each key (and each table header / array element) was defined.
    /// The `Loc` also names the defining file.
    pub(crate) locs: Locs,
    /// The merged `sweep` value, kept raw so that `expand_sweep` reports its
    /// problems all at once.
    pub(crate) sweep: Option<Value>,
    /// Sweep keys in file order (base entries first): the cartesian product
    /// follows it, and `toml::Table` does not keep it.
    pub(crate) sweep_order: Vec<String>,
}

/// Where each key of a [`RecipeDoc`] was defined.
///
/// The map built at load time holds an entry for every key, table header and
/// array element of every file, sweep values included, so it grows with the
/// sweep. It is shared (`Arc`), never copied, by the runs that
/// [`RecipeDoc::expand_sweep`] makes; what a run changes is the location of its
/// swept keys, kept apart in `swept`. That overlay is the same for every run of
/// a sweep (runs differ in the values, not in where the values are written), so
/// it is shared too: one more run costs two reference counts, whatever the size
/// of the sweep.
#[derive(Debug, Clone, Default)]
pub(crate) struct Locs {
    /// Locations read from the files.
    pub(crate) file: Arc<BTreeMap<KeyPath, Loc>>,
    /// Keys set by a sweep → the sweep entry that sets them (`None`: that entry
    /// has no known location). A key here hides every `file` entry at or below
    /// it: the value there now comes from the sweep. A key below another one
    /// here was set after it (setting a key drops the overrides below it), so
    /// the deepest one above a path is the one that decides.
    pub(crate) swept: Arc<BTreeMap<KeyPath, Option<Loc>>>,
}

impl Locs {
    fn new(file: BTreeMap<KeyPath, Loc>) -> Self {
        Locs { file: Arc::new(file), swept: Arc::default() }
    }

    /// The location recorded for exactly `segs`, if any.
    fn get(&self, segs: &[Seg]) -> Option<&Loc> {
        if !self.swept.is_empty() {
            // Paths are a handful of segments: probing each ancestor is cheap.
            for n in (1..=segs.len()).rev() {
                if let Some(loc) = self.swept.get(&KeyPath(segs[..n].to_vec())) {
                    return if n == segs.len() { loc.as_ref() } else { None };
                }
            }
        }
        self.file.get(&KeyPath(segs.to_vec()))
    }

    /// These locations after setting each of `keys`, in order, from a sweep
    /// entry located at its `Option<Loc>`: the key is located there, and what
    /// was recorded below it no longer applies. The file map is shared, not
    /// copied.
    pub(crate) fn with_swept(&self, keys: impl IntoIterator<Item = (KeyPath, Option<Loc>)>) -> Locs {
        let mut swept = (*self.swept).clone();
        for (key, loc) in keys {
            remove_subtree(&mut swept, &key);
            swept.insert(key, loc);
        }
        Locs { file: Arc::clone(&self.file), swept: Arc::new(swept) }
    }
}

/// Removes `key` and every path below it. Paths sort directly before the paths
/// below them, so these form one range of the map.
fn remove_subtree<V>(map: &mut BTreeMap<KeyPath, V>, key: &KeyPath) {
    let below: Vec<KeyPath> =
        map.range(key..).take_while(|(k, _)| k.starts_with(key)).map(|(k, _)| k.clone()).collect();
    for k in below {
        map.remove(&k);
    }
}

/// One file's content after its own bases were merged in.
struct Layer {
    root: Table,
    locs: BTreeMap<KeyPath, Loc>,
    sweep_order: Vec<String>,
}

/// Keeps the chain of files being loaded, for cycle detection.
struct Loader {
    /// (identity for comparison, path for display) of each file being loaded.
    stack: Vec<(PathBuf, PathBuf)>,
}

impl RecipeDoc {
    /// Loads a recipe file and, recursively, the files it `extends`.
    ///
    /// Syntax errors are located at the line and column the parser reports; a
    /// base that cannot be read is reported at the `extends` entry naming it.
    pub fn load(path: &Path) -> Result<RecipeDoc, Diagnostics> {
        let text = fs::read_to_string(path)
            .map_err(|e| Diagnostic::new(format!("cannot read recipe `{}`: {e}", path.display())))?;
        Self::from_str(&text, path)
    }

    /// Loads a recipe from `text` as if it were the content of `path`: bases
    /// named by `extends` are read from disk relative to `path`'s directory, and
    /// locations name `path`. The file itself need not exist.
    pub fn from_str(text: &str, path: &Path) -> Result<RecipeDoc, Diagnostics> {
        let path = clean(path);
        let mut loader = Loader { stack: vec![(identity(&path), path.clone())] };
        let mut layer = loader.load_text(text, &path)?;
        let sweep = layer.root.remove(SWEEP);
        Ok(RecipeDoc {
            path,
            root: layer.root,
            locs: Locs::new(layer.locs),
            sweep,
            sweep_order: layer.sweep_order,
        })
    }

    /// The top recipe file, as given to [`RecipeDoc::load`] / [`RecipeDoc::from_str`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The merged recipe, without `extends` and `sweep`.
    pub fn root(&self) -> &Table {
        &self.root
    }

    /// The value at `key`, or `None` when absent. The empty path has no value
    /// (use [`RecipeDoc::root`]).
    pub fn get(&self, key: &KeyPath) -> Option<&Value> {
        let (first, rest) = key.segments().split_first()?;
        let mut cur = table_get(&self.root, first)?;
        for seg in rest {
            cur = match cur {
                Value::Table(t) => table_get(t, seg)?,
                Value::Array(a) => match seg {
                    Seg::Index(i) => a.get(*i)?,
                    Seg::Key(_) => return None,
                },
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Where `key` was defined; for a key that is not in the recipe (a missing
    /// key, a parameter left at its default), the nearest ancestor that is, so a
    /// missing key inside `[[loss]]` points at that `[[loss]]` header.
    pub fn locate(&self, key: &KeyPath) -> Option<Loc> {
        self.locate_ref(key).cloned()
    }

    fn locate_ref(&self, key: &KeyPath) -> Option<&Loc> {
        let segs = key.segments();
        (1..=segs.len()).rev().find_map(|n| self.locs.get(&segs[..n]))
    }

    /// The file that defined `key` (or its nearest located ancestor).
    pub fn defining_file(&self, key: &KeyPath) -> Option<&Path> {
        self.locate_ref(key).map(|l| l.file.as_path())
    }

    /// Resolves a path string found at `key` against the directory of the file
    /// that defined `key`, so a base recipe in another directory keeps pointing
    /// at its own data. Absolute paths are returned unchanged, `~/…` is taken from
    /// `$HOME`; a key with no known file resolves against the top recipe's directory.
    pub fn resolve_path(&self, key: &KeyPath, rel: &str) -> PathBuf {
        let rel = Path::new(rel);
        // `~/…` is the home directory, as in a shell: where the fetch scripts cache models and data.
        if let (Ok(rest), Some(home)) = (rel.strip_prefix("~"), std::env::var_os("HOME")) {
            return PathBuf::from(home).join(rest);
        }
        if rel.is_absolute() {
            return rel.to_path_buf();
        }
        let file = self.defining_file(key).unwrap_or(&self.path);
        let dir = file.parent().unwrap_or(Path::new(""));
        clean(&dir.join(rel))
    }

    /// A diagnostic about `key`, located with [`RecipeDoc::locate`].
    pub fn diag(&self, key: &KeyPath, message: impl Into<String>, help: Option<String>) -> Diagnostic {
        Diagnostic { loc: self.locate(key), key_path: Some(key.clone()), message: message.into(), help }
    }

    /// Deserialises `value` (normally `self.get(key).cloned()`) into `T`, turning
    /// a failure into a located diagnostic: the path inside `value` where serde
    /// failed is joined onto `key`, and serde's wording is translated
    /// (`unknown field` → "unknown key `x`" with a did-you-mean over the
    /// accepted keys; `invalid type` → "expected a number, found string \"x\"";
    /// `missing field` → "missing key `x`", located at the enclosing table).
    pub fn deserialize_at<T: DeserializeOwned>(&self, key: &KeyPath, value: Value) -> Result<T, Diagnostic> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let mut full = key.join(&KeyPath::from_serde(e.path()));
            let raw = e.inner().message();
            // Point at the offending key itself, whether or not serde's path
            // already ends with it.
            if let Some(word) = raw.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
                if full.last() != Some(&Seg::Key(word.to_owned())) {
                    full = full.key(word);
                }
            }
            let (message, help) = humanize_serde_message(raw);
            Diagnostic { loc: self.locate(&full), key_path: Some(full), message, help }
        })
    }

    /// Whether the recipe has a non-empty `[sweep]` (or a malformed `sweep`
    /// that [`RecipeDoc::expand_sweep`] will report).
    pub fn has_sweep(&self) -> bool {
        match &self.sweep {
            None => false,
            Some(Value::Table(t)) => !t.is_empty(),
            Some(_) => true,
        }
    }

    /// The fully resolved recipe as TOML: bases merged, `extends` gone, the
    /// sweep (if not yet expanded) kept as a `[sweep]` table in its order, so
    /// loading the output gives the same recipe. Path strings are kept as
    /// written: they are relative to the file that defined them.
    pub fn to_toml_string(&self) -> String {
        self.render(false)
    }

    /// Hex SHA-256 of the canonical resolved recipe (keys sorted, sweep in its
    /// order), independent of formatting, comments and how it was split into
    /// files.
    pub fn content_hash(&self) -> String {
        kdx_fsio::sha256_hex(self.render(true).as_bytes())
    }

    fn render(&self, canonical: bool) -> String {
        let root = if canonical { sorted_table(&self.root) } else { self.root.clone() };
        let main = match toml::to_string(&root) {
            Ok(s) => s,
            // Cannot happen for values that came out of the TOML parser; keep
            // the output a valid (if empty) recipe rather than panic.
            Err(e) => format!("# could not serialise the recipe: {e}\n"),
        };
        let Some(sweep) = &self.sweep else {
            return main;
        };
        let mut doc: toml_edit::DocumentMut = match main.parse() {
            Ok(d) => d,
            Err(_) => return main,
        };
        let item = match sweep {
            Value::Table(t) => {
                let mut out = toml_edit::Table::new();
                for k in ordered_keys(t, &self.sweep_order) {
                    if let Some(v) = t.get(k) {
                        out.insert(k, toml_edit::Item::Value(to_edit_value(v)));
                    }
                }
                toml_edit::Item::Table(out)
            }
            other => toml_edit::Item::Value(to_edit_value(other)),
        };
        doc.insert(SWEEP, item);
        doc.to_string()
    }
}

/// Keys of `t` in `order`, then any others (in the table's order).
pub(crate) fn ordered_keys<'a>(t: &'a Table, order: &'a [String]) -> Vec<&'a str> {
    let mut keys: Vec<&str> = order.iter().map(String::as_str).filter(|k| t.contains_key(*k)).collect();
    let mut seen: HashSet<&str> = keys.iter().copied().collect();
    for k in t.keys() {
        if seen.insert(k) {
            keys.push(k);
        }
    }
    keys
}

/// Looks up one segment in a table; an index addresses a table key made of
/// digits, so `langs.12` works whether `langs` is an array or a table.
pub(crate) fn table_get<'a>(t: &'a Table, seg: &Seg) -> Option<&'a Value> {
    match seg {
        Seg::Key(k) => t.get(k),
        Seg::Index(i) => t.get(&i.to_string()),
    }
}

fn sorted_table(t: &Table) -> Table {
    // `toml::Table` is sorted unless some crate enables `preserve_order`;
    // sorting explicitly keeps the hash stable either way.
    let mut entries: Vec<(&String, &Value)> = t.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries.into_iter().map(|(k, v)| (k.clone(), sorted_value(v))).collect()
}

fn sorted_value(v: &Value) -> Value {
    match v {
        Value::Table(t) => Value::Table(sorted_table(t)),
        Value::Array(a) => Value::Array(a.iter().map(sorted_value).collect()),
        other => other.clone(),
    }
}

fn to_edit_value(v: &Value) -> toml_edit::Value {
    match v {
        Value::String(s) => s.as_str().into(),
        Value::Integer(i) => (*i).into(),
        Value::Float(f) => (*f).into(),
        Value::Boolean(b) => (*b).into(),
        Value::Datetime(d) => (*d).into(),
        Value::Array(a) => {
            let arr: toml_edit::Array = a.iter().map(to_edit_value).collect();
            arr.into()
        }
        Value::Table(t) => {
            let mut it = toml_edit::InlineTable::new();
            for (k, v) in t {
                it.insert(k, to_edit_value(v));
            }
            it.into()
        }
    }
}

impl Loader {
    /// Parses one file's text, loads its bases and merges it over them.
    fn load_text(&mut self, text: &str, path: &Path) -> Result<Layer, Diagnostics> {
        let lines = LineIndex::new(text);
        let mut root: Table = toml::from_str(text).map_err(|e| {
            Diagnostic::new(format!("invalid TOML: {}", one_line(e.message())))
                .with_loc(Some(lines.loc(path, e.span().map_or(0, |s| s.start))))
        })?;
        // Second pass with the span-keeping parser; the same parser underlies
        // `toml`, so it accepts exactly the same documents.
        let edit = toml_edit::ImDocument::parse(text).map_err(|e| {
            Diagnostic::new(format!("invalid TOML: {}", one_line(e.message())))
                .with_loc(Some(lines.loc(path, e.span().map_or(0, |s| s.start))))
        })?;
        let mut locs = BTreeMap::new();
        let mut walker = Walker { lines: &lines, path, locs: &mut locs };
        walker.table(edit.as_table(), &KeyPath::root());
        let sweep_order = match edit.get(SWEEP).and_then(|i| i.as_table_like()) {
            Some(t) => t.iter().map(|(k, _)| k.to_owned()).collect(),
            None => Vec::new(),
        };

        let extends_key = KeyPath::root().key(EXTENDS);
        let extends = root.remove(EXTENDS);
        let mut diags = Diagnostics::default();
        let mut bases = Vec::new();
        match extends {
            None => {}
            Some(Value::String(s)) => bases.push((s, extends_key.clone())),
            Some(Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(s) => bases.push((s, extends_key.index(i))),
                        other => diags.push(
                            Diagnostic::new(format!(
                                "`extends` entries must be file names, found {}",
                                type_name(&other)
                            ))
                            .with_key(extends_key.index(i))
                            .with_loc(locate_in(&locs, &extends_key.index(i))),
                        ),
                    }
                }
            }
            Some(other) => diags.push(
                Diagnostic::new(format!(
                    "`extends` must be a file name or an array of file names, found {}",
                    type_name(&other)
                ))
                .with_key(extends_key.clone())
                .with_loc(locate_in(&locs, &extends_key))
                .with_help("e.g. `extends = \"base.toml\"` or `extends = [\"a.toml\", \"b.toml\"]`"),
            ),
        }

        let mut acc: Option<Layer> = None;
        for (rel, key) in bases {
            let loc = locate_in(&locs, &key);
            match self.load_base(path, &rel, loc) {
                Ok(base) => match &mut acc {
                    None => acc = Some(base),
                    Some(a) => merge_layer(a, base),
                },
                Err(d) => diags.extend(d),
            }
        }
        diags.into_result(())?;

        // `extends` is consumed here; its locations would only confuse `locate`.
        locs.retain(|k, _| !k.starts_with(&extends_key));
        let own = Layer { root, locs, sweep_order };
        Ok(match acc {
            None => own,
            Some(mut base) => {
                merge_layer(&mut base, own);
                base
            }
        })
    }

    /// Loads the base `rel` named in `from`, reporting problems at `loc` (the
    /// `extends` entry).
    fn load_base(&mut self, from: &Path, rel: &str, loc: Option<Loc>) -> Result<Layer, Diagnostics> {
        let dir = from.parent().unwrap_or(Path::new(""));
        let path = clean(&dir.join(rel));
        let id = identity(&path);
        if let Some(pos) = self.stack.iter().position(|(i, _)| *i == id) {
            let chain: Vec<String> = self.stack[pos..]
                .iter()
                .map(|(_, shown)| shown.display().to_string())
                .chain(std::iter::once(path.display().to_string()))
                .collect();
            return Err(Diagnostic::new(format!("`extends` cycle: {}", chain.join(" → ")))
                .with_key(KeyPath::root().key(EXTENDS))
                .with_loc(loc)
                .with_help("a recipe cannot extend itself, directly or through its bases")
                .into());
        }
        let text = fs::read_to_string(&path).map_err(|e| {
            let d = Diagnostic::new(format!(
                "cannot read base recipe `{rel}` (looked for `{}`): {e}",
                path.display()
            ))
            .with_key(KeyPath::root().key(EXTENDS))
            .with_loc(loc.clone());
            if e.kind() == std::io::ErrorKind::NotFound {
                d.with_help("`extends` paths are relative to the directory of the recipe that names them")
            } else {
                d
            }
        })?;
        self.stack.push((id, path.clone()));
        let layer = self.load_text(&text, &path);
        self.stack.pop();
        layer
    }
}

/// Merges `over` on top of `base` (see [`RecipeDoc`] for the rule), keeping
/// locations consistent: locations under a replaced value go with it, and the
/// later file's locations win.
fn merge_layer(base: &mut Layer, over: Layer) {
    let mut replaced = Vec::new();
    merge_tables(&mut base.root, over.root, &KeyPath::root(), &mut replaced);
    for r in &replaced {
        remove_subtree(&mut base.locs, r);
    }
    base.locs.extend(over.locs);
    let mut seen: HashSet<String> = base.sweep_order.iter().cloned().collect();
    for k in over.sweep_order {
        if seen.insert(k.clone()) {
            base.sweep_order.push(k);
        }
    }
}

fn merge_tables(base: &mut Table, over: Table, prefix: &KeyPath, replaced: &mut Vec<KeyPath>) {
    for (k, v) in over {
        let path = prefix.key(k.as_str());
        match (base.get_mut(&k), v) {
            // A table that names a different `plugin` is a different thing: the base's
            // parameters belong to the base's plugin, so the table is replaced, not merged.
            (Some(Value::Table(b)), Value::Table(o)) if !switches_plugin(b, &o) => {
                merge_tables(b, o, &path, replaced)
            }
            (_, v) => {
                replaced.push(path);
                base.insert(k, v);
            }
        }
    }
}

/// Whether `over` names a `plugin` other than the one `base` names.
fn switches_plugin(base: &Table, over: &Table) -> bool {
    matches!((base.get("plugin"), over.get("plugin")), (Some(a), Some(b)) if a != b)
}

/// Exact location of `key` in one file's map, else its nearest ancestor's.
fn locate_in(locs: &BTreeMap<KeyPath, Loc>, key: &KeyPath) -> Option<Loc> {
    let segs = key.segments();
    (1..=segs.len()).rev().find_map(|n| locs.get(&KeyPath(segs[..n].to_vec()))).cloned()
}

/// The parser's messages span lines ("invalid string\nexpected `\"`"); a
/// diagnostic's message is one line, followed by its help.
fn one_line(msg: &str) -> String {
    msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(", ")
}

/// A noun phrase for a value's type, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Drops `.` components (`a/./b.toml` → `a/b.toml`) for readable locations.
/// `..` is kept: resolving it lexically is wrong across symlinks.
fn clean(p: &Path) -> PathBuf {
    let cleaned: PathBuf = p.components().collect();
    if cleaned.as_os_str().is_empty() {
        p.to_path_buf()
    } else {
        cleaned
    }
}

/// What identifies a file for cycle detection: its canonical path, or (for a
/// file that does not exist, e.g. `from_str` text) its absolute path.
fn identity(p: &Path) -> PathBuf {
    fs::canonicalize(p).or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| p.to_path_buf())
}

/// Byte offset → 1-based line and character column.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
    /// The last (offset, column) found: offsets come mostly in order, and
    /// counting on from there keeps a long line (a sweep of thousands of
    /// values) linear rather than counting from its start for each value.
    last: Cell<(usize, usize)>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        LineIndex { text, starts, last: Cell::new((0, 1)) }
    }

    pub(crate) fn loc(&self, file: &Path, offset: usize) -> Loc {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let (last_offset, last_col) = self.last.get();
        // From the last offset when it lies on this line, before `offset`.
        let (from, from_col) =
            if (start..=offset).contains(&last_offset) { (last_offset, last_col) } else { (start, 1) };
        let col = match self.text.get(from..offset) {
            Some(s) => {
                let col = from_col + s.chars().count();
                self.last.set((offset, col));
                col
            }
            // Not a char boundary (should not happen with parser spans): bytes.
            None => offset.saturating_sub(start) + 1,
        };
        Loc { file: file.to_path_buf(), line, col }
    }
}

/// Records the location of every key, table header and array element of one
/// parsed file.
struct Walker<'a, 'b> {
    lines: &'a LineIndex<'b>,
    path: &'a Path,
    locs: &'a mut BTreeMap<KeyPath, Loc>,
}

impl Walker<'_, '_> {
    fn record(&mut self, key: KeyPath, span: Option<std::ops::Range<usize>>) {
        if let Some(span) = span {
            let loc = self.lines.loc(self.path, span.start);
            self.locs.insert(key, loc);
        }
    }

    fn table(&mut self, t: &toml_edit::Table, prefix: &KeyPath) {
        for (k, item) in t.iter() {
            let key_span = t.get_key_value(k).and_then(|(key, _)| key.span());
            self.item(item, key_span, prefix.key(k));
        }
    }

    fn item(&mut self, item: &toml_edit::Item, key_span: Option<std::ops::Range<usize>>, path: KeyPath) {
        match item {
            toml_edit::Item::None => {}
            toml_edit::Item::Value(v) => {
                // The key, not the value: "12:1" reads as "the line that sets it".
                self.record(path.clone(), key_span.or_else(|| v.span()));
                self.value_children(v, &path);
            }
            toml_edit::Item::Table(t) => {
                // A `[header]` beats the key inside it; implicit tables (parents
                // of `[a.b]`, dotted keys) only have the key, if that.
                self.record(path.clone(), t.span().or(key_span));
                self.table(t, &path);
            }
            toml_edit::Item::ArrayOfTables(a) => {
                let first = a.iter().next().and_then(|t| t.span());
                self.record(path.clone(), first.or(key_span));
                for (i, t) in a.iter().enumerate() {
                    let p = path.index(i);
                    self.record(p.clone(), t.span());
                    self.table(t, &p);
                }
            }
        }
    }

    fn value_children(&mut self, v: &toml_edit::Value, path: &KeyPath) {
        match v {
            toml_edit::Value::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    let p = path.index(i);
                    self.record(p.clone(), e.span());
                    self.value_children(e, &p);
                }
            }
            toml_edit::Value::InlineTable(t) => {
                for (k, e) in t.iter() {
                    let p = path.key(k);
                    let key_span = t.get_key_value(k).and_then(|(key, _)| key.span());
                    self.record(p.clone(), key_span.or_else(|| e.span()));
                    self.value_children(e, &p);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_count_on_from_the_last_offset() {
        let text = "a = [1, \"é\", 3]\nbé = \"ü\" # ö\n\nx = 1";
        let naive = |offset: usize| {
            let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
            (text[..offset].matches('\n').count() + 1, text[start..offset].chars().count() + 1)
        };
        let offsets: Vec<usize> = (0..=text.len()).filter(|&o| text.is_char_boundary(o)).collect();
        // In order, backwards, and jumping about: the memo must never change an answer.
        let mut orders = vec![offsets.clone(), offsets.iter().rev().copied().collect()];
        orders.push(offsets.iter().enumerate().map(|(i, _)| offsets[(i * 7) % offsets.len()]).collect());
        for order in orders {
            let index = LineIndex::new(text);
            for o in order {
                let loc = index.loc(Path::new("r.toml"), o);
                assert_eq!((loc.line, loc.col), naive(o), "offset {o}");
            }
        }
        // Past the end is clamped; inside a character counts bytes, as before.
        let index = LineIndex::new(text);
        assert_eq!(index.loc(Path::new("r"), 999).line, 4);
        let inside = text.find('é').expect("é") + 1;
        assert_eq!(index.loc(Path::new("r"), inside).col, inside + 1);
    }
}
