//! `[sweep]` expansion: one recipe per point of a grid.

use std::collections::{HashMap, HashSet};

use toml::Value;

use crate::doc::{ordered_keys, type_name, SWEEP};
use crate::{Diagnostic, Diagnostics, KeyPath, RecipeDoc, Seg};

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
        let table =
            match &self.sweep {
                None => return Ok(vec![self.single_run()]),
                Some(Value::Table(t)) if t.is_empty() => return Ok(vec![self.single_run()]),
                Some(Value::Table(t)) => t,
                Some(other) => return Err(self
                    .diag(
                        &sweep_path,
                        format!("`sweep` must be a table, found {}", type_name(other)),
                        Some(
                            "write `[sweep]` followed by lines such as `\"loss.0.temperature\" = [1, 2, 4]`"
                                .into(),
                        ),
                    )
                    .into()),
            };

        let mut diags = Diagnostics::default();
        let entries = self.sweep_entries(table, &sweep_path, &mut diags);
        let total = self.sweep_size(&entries, &sweep_path, &mut diags);
        diags.into_result(())?;
        self.sweep_runs(&entries, total)
    }

    /// The sweep's entries in file order, each checked: a bad key, a key swept twice or a
    /// value that is not a non-empty array is reported in `diags` and left out.
    fn sweep_entries(
        &self,
        table: &toml::Table,
        sweep_path: &KeyPath,
        diags: &mut Diagnostics,
    ) -> Vec<Entry> {
        let mut entries: Vec<Entry> = Vec::new();
        // Key → its entry's index, to find a key swept twice.
        let mut swept: HashMap<KeyPath, usize> = HashMap::new();
        for name in ordered_keys(table, &self.sweep_order) {
            let at = sweep_path.key(name);
            let key = match self.sweep_key(name, &at) {
                Ok(k) => k,
                Err(d) => {
                    diags.push(d);
                    continue;
                }
            };
            if let Some(prev) = swept.get(&key).map(|&i| &entries[i]) {
                diags.push(self.diag(
                    &at,
                    format!(
                        "`{key}` is swept twice (also as `{}`)",
                        prev.at.last().map_or(String::new(), seg_text)
                    ),
                    None,
                ));
                continue;
            }
            let values = match self.sweep_values(table.get(name), name, &key, &at) {
                Ok(Some(values)) => values,
                Ok(None) => continue,
                Err(d) => {
                    diags.push(d);
                    continue;
                }
            };
            swept.insert(key.clone(), entries.len());
            entries.push(Entry { at, key, values });
        }
        entries
    }

    /// The key path a sweep entry named `name` (at `at`) sets: a dotted path outside
    /// `sweep` and `extends`, which are not values of the recipe.
    fn sweep_key(&self, name: &str, at: &KeyPath) -> Result<KeyPath, Diagnostic> {
        let key = match KeyPath::parse_dotted(name) {
            Ok(k) => k,
            Err(e) => {
                return Err(self.diag(
                    at,
                    format!("invalid sweep key: {}", e.reason),
                    Some("write the key path with dots and numeric array indices, e.g. `\"loss.0.temperature\"`".into()),
                ));
            }
        };
        if let Some(Seg::Key(first)) = key.segments().first() {
            if first == SWEEP || first == "extends" {
                return Err(self.diag(at, format!("`{first}` cannot be swept"), None));
            }
        }
        Ok(key)
    }

    /// The values a sweep entry gives `key`: a non-empty array. `None` when the table has
    /// no such entry.
    fn sweep_values(
        &self,
        entry: Option<&Value>,
        name: &str,
        key: &KeyPath,
        at: &KeyPath,
    ) -> Result<Option<Vec<Value>>, Diagnostic> {
        match entry {
            Some(Value::Array(a)) if !a.is_empty() => Ok(Some(a.clone())),
            Some(Value::Array(_)) => Err(self.diag(
                at,
                format!("sweep values for `{key}` are empty"),
                Some("give at least one value; an empty list would produce no runs".into()),
            )),
            Some(other) => Err(self.diag(
                at,
                format!("sweep values for `{key}` must be an array, found {}", type_name(other)),
                Some(format!(
                    "e.g. `\"{name}\" = [1, 2, 4]`; to fix a single value, set it in the recipe instead"
                )),
            )),
            None => Ok(None),
        }
    }

    /// How many runs the entries expand to (saturating), reported in `diags` when over
    /// [`MAX_SWEEP_RUNS`].
    fn sweep_size(&self, entries: &[Entry], sweep_path: &KeyPath, diags: &mut Diagnostics) -> usize {
        let mut total: usize = 1;
        for e in entries {
            total = total.saturating_mul(e.values.len());
        }
        if total > MAX_SWEEP_RUNS {
            diags.push(self.diag(
                sweep_path,
                format!(
                    "the sweep expands to {} runs; the limit is {MAX_SWEEP_RUNS}",
                    if total == usize::MAX { "too many".to_string() } else { total.to_string() }
                ),
                Some("split it into several recipes or sweep fewer values".into()),
            ));
        }
        total
    }

    /// Every run of the sweep, `total` of them in odometer order (the last entry varying
    /// fastest). A key that cannot be set in the recipe is reported once, at its entry,
    /// and fails the expansion.
    fn sweep_runs(&self, entries: &[Entry], total: usize) -> Result<Vec<SweepRun>, Diagnostics> {
        let labels = labels(&entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>());
        // Each swept key is located at its sweep entry, and the locations below
        // it no longer describe its value. That is the same for every run (runs
        // differ in values, not in where they are written), so it is worked out
        // once and shared, along with the file locations, which hold an entry
        // per sweep value: copying them into each run made the sweep quadratic.
        // A run whose key could not be set keeps these locations too; it is
        // never returned, as the expansion then fails.
        let locs = self.locs.with_swept(entries.iter().map(|e| (e.key.clone(), self.locate(&e.at))));
        let mut runs = Vec::with_capacity(total);
        let mut names = UniqueNames::default();
        let mut errors = Diagnostics::default();
        let mut reported: HashSet<KeyPath> = HashSet::new();
        let mut idx = vec![0usize; entries.len()];
        for _ in 0..total {
            let mut doc = RecipeDoc {
                path: self.path.clone(),
                root: self.root.clone(),
                locs: locs.clone(),
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
                    Ok(()) => {}
                    Err((message, help)) => {
                        if reported.insert(e.key.clone()) {
                            let mut d =
                                self.diag(&e.at, format!("cannot sweep `{}`: {message}", e.key), help);
                            d.key_path = Some(e.key.clone());
                            errors.push(d);
                        }
                    }
                }
                parts.push(format!("{}={}", sanitize(label), sanitize(&render_value(value))));
                settings.push((e.key.clone(), value.clone()));
            }
            let name = names.make(parts.join(","));
            runs.push(SweepRun { name, settings, doc });
            odometer_step(&mut idx, entries);
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

/// Advances the entries' value indices `idx` to the next point of the grid, last entry
/// fastest, like an odometer; after the last point they wrap round to all zeros.
fn odometer_step(idx: &mut [usize], entries: &[Entry]) {
    for (pos, e) in entries.iter().enumerate().rev() {
        idx[pos] += 1;
        if idx[pos] < e.values.len() {
            break;
        }
        idx[pos] = 0;
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

fn set_in(
    cur: &mut Value,
    segs: &[Seg],
    here: &KeyPath,
    value: Value,
) -> Result<(), (String, Option<String>)> {
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
            a.get_mut(*i)
                .ok_or_else(|| (format!("`{here}` has {len} element(s), so there is no `{next}`"), None))?
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
    // How many keys end with each suffix: a key's suffix is its own when only
    // the key itself does (counted once, rather than comparing every pair).
    let mut ends_with: HashMap<&[Seg], usize> = HashMap::new();
    for key in keys {
        let segs = key.segments();
        for start in 0..segs.len() {
            *ends_with.entry(&segs[start..]).or_default() += 1;
        }
    }
    keys.iter()
        .map(|key| {
            let segs = key.segments();
            let n = segs.len();
            let unique = (1..=n).find(|&len| {
                let suffix = &segs[n - len..];
                let starts_at_index = matches!(suffix.first(), Some(Seg::Index(_)));
                (!starts_at_index || len == n) && ends_with.get(suffix) == Some(&1)
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
        Value::Table(t) => {
            t.iter().map(|(k, v)| format!("{k}-{}", render_value(v))).collect::<Vec<_>>().join("+")
        }
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
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') { c } else { '_' })
        .collect()
}

/// The run names given so far.
#[derive(Default)]
struct UniqueNames {
    taken: HashSet<String>,
    /// For a name that was taken, the next `~n` to try: the smaller ones were
    /// all taken (and stay so), and trying them again for each of many runs
    /// that share a name (values that differ only in characters `sanitize`
    /// replaces) would be quadratic.
    next: HashMap<String, usize>,
}

impl UniqueNames {
    /// Makes `name` safe as a directory name and unique among those given.
    fn make(&mut self, name: String) -> String {
        let name = safe_name(name);
        let mut n = self.next.get(&name).copied().unwrap_or(1);
        let mut candidate = if n == 1 { name.clone() } else { format!("{name}~{n}") };
        while !self.taken.insert(candidate.clone()) {
            n += 1;
            candidate = format!("{name}~{n}");
        }
        self.next.insert(name, n + 1);
        candidate
    }
}

/// Makes `name` safe as a directory name: not hidden, not a flag, not too long.
fn safe_name(mut name: String) -> String {
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
    name
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use crate::{KeyPath, Loc, RecipeDoc};

    fn kp(s: &str) -> KeyPath {
        KeyPath::parse_dotted(s).expect("test key path")
    }

    /// A recipe sweeping `loss.0.temperature` over `n` values and
    /// `train.optimizer.lr` over two.
    fn recipe(n: usize) -> RecipeDoc {
        let values: Vec<String> = (0..n).map(|i| format!("{i}.5")).collect();
        let text = format!(
            "[[loss]]\nplugin = \"soft-kl\"\ntemperature = 4.0\n[train]\noptimizer = {{ kind = \"adamw\", lr = 3e-3 }}\n\
             [sweep]\n\"loss.0.temperature\" = [{}]\n\"train.optimizer.lr\" = [1e-3, 3e-3]\n",
            values.join(", ")
        );
        RecipeDoc::from_str(&text, Path::new("r.toml")).expect("parse")
    }

    #[test]
    fn runs_share_locations_whatever_the_sweep_size() {
        for n in [3, 1_000] {
            let doc = recipe(n);
            // The loaded map holds an entry per sweep value...
            assert!(doc.locs.file.len() > n, "{}", doc.locs.file.len());
            let runs = doc.expand_sweep().expect("expand");
            assert_eq!(runs.len(), 2 * n);
            let first = &runs[0].doc.locs;
            for run in &runs {
                // ...which every run shares rather than copies; what a run has
                // of its own is one entry per swept key, not per sweep value.
                assert!(Arc::ptr_eq(&run.doc.locs.file, &doc.locs.file));
                assert!(Arc::ptr_eq(&run.doc.locs.swept, &first.swept));
                assert_eq!(run.doc.locs.swept.len(), 2);
            }
            // One map for the recipe and all its runs, and one overlay for the runs.
            assert_eq!(Arc::strong_count(&doc.locs.file), runs.len() + 1);
            assert_eq!(Arc::strong_count(&first.swept), runs.len());
            let last = &runs.last().expect("runs").doc;
            assert_eq!(last.locate(&kp("loss.0.temperature")).map(|l| (l.line, l.col)), Some((7, 1)));
            assert_eq!(last.locate(&kp("train.optimizer.lr")).map(|l| (l.line, l.col)), Some((8, 1)));
            assert_eq!(last.locate(&kp("train.optimizer.kind")).map(|l| (l.line, l.col)), Some((5, 15)));
        }
    }

    #[test]
    fn unique_names_skip_taken_suffixes() {
        let mut names = super::UniqueNames::default();
        let got: Vec<String> =
            ["a", "a", "a~2", "a", "-x", "-x", "a"].into_iter().map(|s| names.make(s.to_owned())).collect();
        assert_eq!(got, ["a", "a~2", "a~2~2", "a~3", "_-x", "_-x~2", "a~4"]);
        // Many runs with one name stay unique (and quick).
        let mut names = super::UniqueNames::default();
        let many: std::collections::HashSet<String> =
            (0..10_000).map(|_| names.make("same".into())).collect();
        assert_eq!(many.len(), 10_000);
        assert!(many.contains("same~10000"));
    }

    #[test]
    fn labels_are_the_shortest_suffix_no_other_key_ends_with() {
        use crate::Seg;
        // The definition, pair by pair.
        fn pairwise(keys: &[KeyPath]) -> Vec<String> {
            keys.iter()
                .enumerate()
                .map(|(i, key)| {
                    let segs = key.segments();
                    let n = segs.len();
                    let unique = (1..=n).find(|&len| {
                        let suffix = &segs[n - len..];
                        let starts_at_index = matches!(suffix.first(), Some(Seg::Index(_)));
                        (!starts_at_index || len == n)
                            && keys
                                .iter()
                                .enumerate()
                                .all(|(j, other)| j == i || !other.segments().ends_with(suffix))
                    });
                    super::render_segs(&segs[n - unique.unwrap_or(n)..])
                })
                .collect()
        }
        let cases: [&[&str]; 6] = [
            &["loss.0.temperature", "train.optimizer.lr"],
            &["loss.0.weight", "loss.1.weight", "weight", "a.weight"],
            &["a.0.1", "b.0.1", "0.1", "a.0.0"],
            &["x.y.z", "y.z", "z", "x.y.z"],
            &["student.hidden", "teacher.hidden", "hidden.0"],
            &["t.k1", "t.k10", "u.k1", "k1"],
        ];
        for case in cases {
            let keys: Vec<KeyPath> = case.iter().map(|k| kp(k)).chain([KeyPath::root()]).collect();
            assert_eq!(super::labels(&keys), pairwise(&keys), "{case:?}");
        }
        assert_eq!(
            super::labels(&[kp("loss.0.weight"), kp("loss.1.weight")]),
            ["loss0.weight", "loss1.weight"]
        );
    }

    /// The locations a run had before they were shared: the loaded map
    /// copied, and for each swept key in order, everything at or below it
    /// dropped and the key located at its sweep entry.
    fn copied_locs(doc: &RecipeDoc) -> BTreeMap<KeyPath, Loc> {
        let mut locs = (*doc.locs.file).clone();
        for name in &doc.sweep_order {
            let key = kp(name);
            locs.retain(|k, _| !k.starts_with(&key));
            if let Some(loc) = doc.locate(&KeyPath::root().key("sweep").key(name.as_str())) {
                locs.insert(key, loc);
            }
        }
        locs
    }

    fn locate_in(locs: &BTreeMap<KeyPath, Loc>, key: &KeyPath) -> Option<Loc> {
        let segs = key.segments();
        (1..=segs.len()).rev().find_map(|n| locs.get(&KeyPath(segs[..n].to_vec()))).cloned()
    }

    #[test]
    fn shared_locations_locate_as_copied_ones_did() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("base.toml"),
            "[train]\nsteps = 3\noptimizer = { kind = \"adamw\", lr = 3e-3, betas = [0.9, 0.99] }\n\
             [[loss]]\nplugin = \"soft-kl\"\nweight = 0.9\n[student]\nhidden = [64, 64]\n",
        )
        .expect("write");
        let sweeps = [
            // A table swept whole, then a key inside it; and the other way round.
            "\"train.optimizer\" = [{ kind = \"sgd\", lr = 1.0 }]\n\"train.optimizer.lr\" = [0.1, 0.2]\n",
            "\"train.optimizer.lr\" = [0.1, 0.2]\n\"train.optimizer\" = [{ kind = \"sgd\", lr = 1.0 }]\n",
            // An array swept whole, a new leaf, an array element.
            "\"student.hidden\" = [[32], [16, 16]]\n\"loss.0.temperature\" = [1, 2]\n\"train.optimizer.betas.1\" = [0.9]\n",
        ];
        for sweep in sweeps {
            let top = dir.path().join("top.toml");
            std::fs::write(&top, format!("extends = \"base.toml\"\n[train]\nsteps = 5\n[sweep]\n{sweep}"))
                .expect("write");
            let doc = RecipeDoc::load(&top).expect("load");
            let expected = copied_locs(&doc);
            let runs = doc.expand_sweep().expect("expand");
            let mut probes: Vec<KeyPath> = doc.locs.file.keys().chain(expected.keys()).cloned().collect();
            probes.extend(probes.clone().into_iter().flat_map(|k| [k.key("missing"), k.index(7)]));
            for run in &runs {
                for p in &probes {
                    assert_eq!(run.doc.locate(p), locate_in(&expected, p), "{p} in {sweep}");
                }
            }
        }
    }
}
