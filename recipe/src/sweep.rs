//! `[sweep]` expansion: one recipe per point of a grid.

use std::collections::HashSet;

use toml::Value;

use crate::doc::{ordered_keys, type_name, SWEEP};
use crate::{Diagnostics, KeyPath, RecipeDoc, Seg};

/// Upper bound on the runs one sweep may expand to. A typo such as a 1000-value
/// array crossed with others should be an error, not an out-of-memory.
pub const MAX_SWEEP_RUNS: usize = 10_000;

/// Longest run name; longer ones are shortened and made unique with a hash,
/// because file names are limited to 255 bytes on common filesystems.
const MAX_NAME_LEN: usize = 120;

/// One point of a sweep.
#[derive(Debug, Clone)]
pub struct SweepRun {
    /// Filesystem-safe name made of the settings (`temperature=4,lr=0.003`),
    /// unique within the sweep; empty when the recipe has no sweep.
    pub name: String,
    /// The swept keys and the values they take in this run, in sweep order.
    pub settings: Vec<(KeyPath, Value)>,
    /// The recipe with these values set and without `[sweep]`; each swept key
    /// is located at its sweep entry.
    pub doc: RecipeDoc,
}

/// One validated sweep entry.
struct Entry {
    /// Path of the entry itself (`sweep."loss.0.temperature"`), for locations.
    at: KeyPath,
    key: KeyPath,
    values: Vec<Value>,
}

impl RecipeDoc {
    /// Expands `[sweep]` into the cartesian product of its values.
    ///
    /// Order is deterministic: entries in file order (a base's entries before the
    /// extending file's new ones), the last entry varying fastest. Each swept key
    /// must lie inside a table or array element the recipe already has; the leaf
    /// itself may be new (a parameter otherwise left at its default). Without a
    /// sweep, returns the recipe itself as a single run with an empty name. All
    /// problems are reported together.
    pub fn expand_sweep(&self) -> Result<Vec<SweepRun>, Diagnostics> {
        let sweep_path = KeyPath::root().key(SWEEP);
        let table = match &self.sweep {
            None => return Ok(vec![self.single_run()]),
            Some(Value::Table(t)) if t.is_empty() => return Ok(vec![self.single_run()]),
            Some(Value::Table(t)) => t,
            Some(other) => {
                return Err(self
                    .diag(
                        &sweep_path,
                        format!("`sweep` must be a table, found {}", type_name(other)),
                        Some("write `[sweep]` followed by lines such as `\"loss.0.temperature\" = [1, 2, 4]`".into()),
                    )
                    .into())
            }
        };

        let mut diags = Diagnostics::default();
        let mut entries: Vec<Entry> = Vec::new();
        for name in ordered_keys(table, &self.sweep_order) {
            let at = sweep_path.key(name);
            let key = match KeyPath::parse_dotted(name) {
                Ok(k) => k,
                Err(e) => {
                    diags.push(self.diag(
                        &at,
                        format!("invalid sweep key: {}", e.reason),
                        Some("write the key path with dots and numeric array indices, e.g. `\"loss.0.temperature\"`".into()),
                    ));
                    continue;
                }
            };
            if let Some(Seg::Key(first)) = key.segments().first() {
                if first == SWEEP || first == "extends" {
                    diags.push(self.diag(&at, format!("`{first}` cannot be swept"), None));
                    continue;
                }
            }
            if let Some(prev) = entries.iter().find(|e| e.key == key) {
                diags.push(self.diag(
                    &at,
                    format!("`{key}` is swept twice (also as `{}`)", prev.at.last().map_or(String::new(), seg_text)),
                    None,
                ));
                continue;
            }
            let values = match table.get(name) {
                Some(Value::Array(a)) if !a.is_empty() => a.clone(),
                Some(Value::Array(_)) => {
                    diags.push(self.diag(
                        &at,
                        format!("sweep values for `{key}` are empty"),
                        Some("give at least one value; an empty list would produce no runs".into()),
                    ));
                    continue;
                }
                Some(other) => {
                    diags.push(self.diag(
                        &at,
                        format!("sweep values for `{key}` must be an array, found {}", type_name(other)),
                        Some(format!("e.g. `\"{name}\" = [1, 2, 4]`; to fix a single value, set it in the recipe instead")),
                    ));
                    continue;
                }
                None => continue,
            };
            entries.push(Entry { at, key, values });
        }

        let mut total: usize = 1;
        for e in &entries {
            total = total.saturating_mul(e.values.len());
        }
        if total > MAX_SWEEP_RUNS {
            diags.push(self.diag(
                &sweep_path,
                format!(
                    "the sweep expands to {} runs; the limit is {MAX_SWEEP_RUNS}",
                    if total == usize::MAX { "too many".to_string() } else { total.to_string() }
                ),
                Some("split it into several recipes or sweep fewer values".into()),
            ));
        }
        diags.into_result(())?;

        let labels = labels(&entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>());
        let mut runs = Vec::with_capacity(total);
        let mut names = HashSet::new();
        let mut errors = Diagnostics::default();
        let mut reported: HashSet<KeyPath> = HashSet::new();
        let mut idx = vec![0usize; entries.len()];
        for _ in 0..total {
            let mut doc = RecipeDoc {
                path: self.path.clone(),
                root: self.root.clone(),
                locs: self.locs.clone(),
                sweep: None,
                sweep_order: Vec::new(),
            };
            let mut settings = Vec::with_capacity(entries.len());
            let mut parts = Vec::with_capacity(entries.len());
            for (e, (&i, label)) in entries.iter().zip(idx.iter().zip(&labels)) {
                let Some(value) = e.values.get(i) else {
                    continue;
                };
                match set_value(&mut doc.root, &e.key, value.clone()) {
                    Ok(()) => {
                        // The swept value now comes from the sweep entry: its old
                        // sub-locations no longer describe it.
                        doc.locs.retain(|k, _| !k.starts_with(&e.key));
                        if let Some(loc) = self.locate(&e.at) {
                            doc.locs.insert(e.key.clone(), loc);
                        }
                    }
                    Err((message, help)) => {
                        if reported.insert(e.key.clone()) {
                            let mut d = self.diag(&e.at, format!("cannot sweep `{}`: {message}", e.key), help);
                            d.key_path = Some(e.key.clone());
                            errors.push(d);
                        }
                    }
                }
                parts.push(format!("{}={}", sanitize(label), sanitize(&render_value(value))));
                settings.push((e.key.clone(), value.clone()));
            }
            let name = unique_name(parts.join(","), &mut names);
            runs.push(SweepRun { name, settings, doc });
            // Odometer step, last entry fastest.
            for (pos, e) in entries.iter().enumerate().rev() {
                idx[pos] += 1;
                if idx[pos] < e.values.len() {
                    break;
                }
                idx[pos] = 0;
            }
        }
        errors.into_result(runs)
    }

    fn single_run(&self) -> SweepRun {
        let mut doc = self.clone();
        doc.sweep = None;
        doc.sweep_order.clear();
        SweepRun { name: String::new(), settings: Vec::new(), doc }
    }
}

fn seg_text(s: &Seg) -> String {
    match s {
        Seg::Key(k) => k.clone(),
        Seg::Index(i) => i.to_string(),
    }
}

/// Sets `key` (non-empty) to `value`; every parent must exist, the leaf may be
/// new in a table but must exist in an array. Errors are (message, help).
fn set_value(root: &mut toml::Table, key: &KeyPath, value: Value) -> Result<(), (String, Option<String>)> {
    let mut whole = Value::Table(std::mem::take(root));
    let r = set_in(&mut whole, key.segments(), &KeyPath::root(), value);
    if let Value::Table(t) = whole {
        *root = t;
    }
    r
}

fn set_in(cur: &mut Value, segs: &[Seg], here: &KeyPath, value: Value) -> Result<(), (String, Option<String>)> {
    let Some((seg, rest)) = segs.split_first() else {
        *cur = value;
        return Ok(());
    };
    let next = here.join(&KeyPath(vec![seg.clone()]));
    let missing = || {
        (
            format!("`{next}` does not exist in the recipe"),
            Some(
                "a swept key must lie inside a table or array element the recipe already has (its own value may be left at the default)"
                    .to_string(),
            ),
        )
    };
    let child = match (cur, seg) {
        (Value::Table(t), seg) => {
            let k = seg_text(seg);
            if rest.is_empty() {
                t.insert(k, value);
                return Ok(());
            }
            t.get_mut(&k).ok_or_else(missing)?
        }
        (Value::Array(a), Seg::Index(i)) => {
            let len = a.len();
            a.get_mut(*i).ok_or_else(|| (format!("`{here}` has {len} element(s), so there is no `{next}`"), None))?
        }
        (Value::Array(_), Seg::Key(k)) => {
            return Err((
                format!("`{here}` is an array, so `{k}` must be an index"),
                Some(format!("e.g. `{here}.0.{k}` for the first element")),
            ))
        }
        (other, _) => return Err((format!("`{here}` is {}, not a table or array", type_name(other)), None)),
    };
    set_in(child, rest, &next, value)
}

/// Shortest unambiguous suffix of each key, for run names: `temperature`, or
/// `loss0.weight` when another swept key also ends in `weight`. A suffix never
/// starts at an index (`0.weight` says too little), and indices attach to their
/// key without a dot.
fn labels(keys: &[KeyPath]) -> Vec<String> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            let segs = key.segments();
            let n = segs.len();
            let unique = (1..=n).find(|&len| {
                let suffix = &segs[n - len..];
                let starts_at_index = matches!(suffix.first(), Some(Seg::Index(_)));
                (!starts_at_index || len == n) && keys.iter().enumerate().all(|(j, other)| j == i || !other.segments().ends_with(suffix))
            });
            render_segs(&segs[n - unique.unwrap_or(n)..])
        })
        .collect()
}

fn render_segs(segs: &[Seg]) -> String {
    let mut out = String::new();
    let mut after_index = false;
    for s in segs {
        match s {
            Seg::Index(i) => {
                // `loss0`, but `a0.1` rather than the unreadable `a01`.
                if after_index {
                    out.push('.');
                }
                out.push_str(&i.to_string());
            }
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
        }
        after_index = matches!(s, Seg::Index(_));
    }
    out
}

/// A value as it appears in a run name: floats shortest (`0.003`, `4`), strings
/// bare, arrays joined with `x` (`64x64`).
fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => render_float(*f),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(a) => a.iter().map(render_value).collect::<Vec<_>>().join("x"),
        Value::Table(t) => t.iter().map(|(k, v)| format!("{k}-{}", render_value(v))).collect::<Vec<_>>().join("+"),
    }
}

/// Rust's `Display` is the shortest string that reads back to the same float
/// (`0.003`, `4` for 4.0); very small or large numbers use exponent form.
fn render_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let plain = format!("{f}");
    let sci = format!("{f:e}");
    if plain.len() > 8 && sci.len() < plain.len() {
        sci
    } else {
        plain
    }
}

/// Keeps ASCII letters, digits, `.`, `_`, `-`, `+`; anything else (path
/// separators, spaces, the `=` and `,` of the name syntax) becomes `_`.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') { c } else { '_' }).collect()
}

/// Makes `name` safe as a directory name and unique among `taken`.
fn unique_name(mut name: String, taken: &mut HashSet<String>) -> String {
    // Hidden files, `..`, and names that look like command-line flags.
    if name.starts_with('.') || name.starts_with('-') {
        name.insert(0, '_');
    }
    if name.len() > MAX_NAME_LEN {
        let short = kdx_fsio::sha256_hex(name.as_bytes())[..8].to_string();
        // Only ASCII remains after sanitising, so any byte index is a boundary.
        name.truncate(MAX_NAME_LEN - 9);
        name.push('~');
        name.push_str(&short);
    }
    let mut candidate = name.clone();
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = format!("{name}~{n}");
        n += 1;
    }
    candidate
}
