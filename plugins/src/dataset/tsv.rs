//! `tsv`: the user's own labelled data, from TAB-separated files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kdx_corpus::split::{split_of, Split};
use kdx_framework::dataset::{Dataset, Example, Task};
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::registry::BuildCtx;
use kdx_fsio::tsv::{CarriageReturn, TsvReader};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The columns a file may have, required ones first.
const COLUMNS: [&str; 5] = ["text", "lang", "label", "source_text", "id"];
/// How many of [`COLUMNS`] are required.
const REQUIRED: usize = 3;

/// Your own data: UTF-8 files with TAB-separated columns and a header row naming them, in
/// any order: `text` (what the models read), `lang` (a language code), `label` (the class)
/// and, optionally, `source_text` (a parallel source, e.g. the English original of a
/// translation) and `id` (the example's id; without the column an example's id is
/// `FILE-NAME:LINE`). Ids must be unique across the files. Any other column is an error. Quotes are ordinary characters (no CSV
/// quoting); a field cannot hold a TAB or a newline. Blank lines are skipped, a final
/// `\r` (CRLF files) is dropped, and `lang`/`label` are trimmed of surrounding spaces;
/// empty `text`, `lang` or `label` is an error, an empty `source_text` means "none".
///
/// Labels and languages are the values found across all the files, in sorted order.
/// Without `dev` (or `test`), that split is carved out of `train` by a stable hash of each
/// row's `source_text` where it has one, else of its `text`: the same text (or all
/// translations of one source) always falls in the same split, on every machine, and a
/// row's split does not change when a file is given for the other split.
///
/// `source_text` is kept as each example's source, but the teacher still reads `text` and
/// the student learns from labels and the teacher alike (the task does not declare that the
/// teacher reads sources); use `gettext-xling` for cross-lingual transfer over parallel text.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TsvParams {
    /// The training file, relative to the recipe.
    pub train: PathBuf,
    /// The development file; without one, `dev_fraction` of `train` is held out.
    #[serde(default)]
    pub dev: Option<PathBuf>,
    /// The test file; without one, `test_fraction` of `train` is held out.
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Fraction of `train` held out as dev when `dev` is not given.
    #[serde(default = "default_frac")]
    pub dev_fraction: f64,
    /// Fraction of `train` held out as test when `test` is not given.
    #[serde(default = "default_frac")]
    pub test_fraction: f64,
}

fn default_frac() -> f64 {
    0.1
}

fn build(mut p: TsvParams, ctx: &BuildCtx) -> Result<Box<dyn Dataset>, Diagnostic> {
    ctx.held_out_fractions(p.dev_fraction, p.test_fraction)?;
    let check = |name: &str, path: &Path| ctx.existing_file(name, path, "file", "");
    p.train = check("train", &p.train)?;
    if let Some(d) = &p.dev {
        p.dev = Some(check("dev", d)?);
    }
    if let Some(t) = &p.test {
        p.test = Some(check("test", t)?);
    }
    Ok(Box::new(p))
}

kdx_framework::register_dataset!(
    "tsv",
    "your own data: TAB-separated files with a header (text, lang, label, optional source_text and id)",
    TsvParams,
    build
);

/// One parsed row, before languages and labels become indices.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    text: String,
    lang: String,
    label: String,
    source: Option<String>,
    /// The `id` column, or `FILE-NAME:LINE`.
    id: String,
    /// Where the row is, for errors: `FILE:LINE`.
    at: String,
}

/// Reads one file. Errors name the file and the 1-based line (the header is line 1) and,
/// for a bad field, its column.
fn read_file(path: &Path) -> anyhow::Result<Vec<Row>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name =
        path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut rows = parse(&bytes, &name).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?;
    for r in &mut rows {
        r.at = format!("{}:{}", path.display(), r.at);
    }
    Ok(rows)
}

/// Parses a file's content; errors start with `LINE: ` (the caller adds the file name).
/// `name` makes the default ids; each row's `at` is its line number.
fn parse(bytes: &[u8], name: &str) -> anyhow::Result<Vec<Row>> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    // Blank lines are skipped and a final `\r` dropped from every line, the last one's too.
    let mut lines = TsvReader::new(bytes).carriage_return(CarriageReturn::Drop);
    let Some(header) = lines.next().transpose()? else {
        bail!("1: the file is empty; expected a header row naming the columns `text`, `lang`, `label` and, optionally, `source_text` and `id`");
    };
    let hl = header.line();
    let header = header.strs().map_err(|e| anyhow::anyhow!("{hl}: the header is not valid UTF-8 ({e})"))?;
    // For each column of the file, its index in COLUMNS.
    let mut cols: Vec<usize> = Vec::new();
    for &name in &header {
        let Some(c) = COLUMNS.iter().position(|&k| k == name.trim()) else {
            bail!("{hl}: unknown column `{name}` in the header; the columns are `text`, `lang`, `label` and, optionally, `source_text` and `id`");
        };
        if cols.contains(&c) {
            bail!("{hl}: column `{name}` appears twice in the header");
        }
        cols.push(c);
    }
    let missing: Vec<String> = COLUMNS[..REQUIRED]
        .iter()
        .enumerate()
        .filter(|(i, _)| !cols.contains(i))
        .map(|(_, k)| format!("`{k}`"))
        .collect();
    if !missing.is_empty() {
        bail!("{hl}: the header lacks column {} (it has: {})", missing.join(", "), header.join(", "));
    }
    let names: Vec<&str> = cols.iter().map(|&c| COLUMNS[c]).collect();
    let mut rows = Vec::new();
    for record in lines {
        let record = record?;
        let lineno = record.line();
        let fields = record.strs().map_err(|e| anyhow::anyhow!("{lineno}: not valid UTF-8 ({e})"))?;
        if fields.len() != cols.len() {
            bail!(
                "{lineno}: expected {} columns ({}, as in the header), found {}",
                cols.len(),
                names.join(", "),
                fields.len()
            );
        }
        let mut values: [Option<&str>; 5] = [None; 5];
        for (&c, f) in cols.iter().zip(&fields) {
            values[c] = Some(f);
        }
        let required = |c: usize, trim: bool| -> anyhow::Result<String> {
            let v = values[c].unwrap_or_default();
            if v.trim().is_empty() {
                bail!("{lineno}: column `{}`: empty", COLUMNS[c]);
            }
            Ok(if trim { v.trim() } else { v }.to_string())
        };
        rows.push(Row {
            text: required(0, false)?,
            lang: required(1, true)?,
            label: required(2, true)?,
            source: values[3].filter(|s| !s.trim().is_empty()).map(str::to_string),
            id: match values[4] {
                Some(_) => required(4, true)?,
                None => format!("{name}:{lineno}"),
            },
            at: lineno.to_string(),
        });
    }
    if rows.is_empty() {
        bail!("{hl}: the file has a header but no rows");
    }
    Ok(rows)
}

impl Dataset for TsvParams {
    fn input_files(&self) -> Vec<PathBuf> {
        std::iter::once(&self.train).chain(&self.dev).chain(&self.test).cloned().collect()
    }

    fn load(&self) -> anyhow::Result<Task> {
        let train = read_file(&self.train)?;
        let dev = self.dev.as_deref().map(read_file).transpose()?;
        let test = self.test.as_deref().map(read_file).transpose()?;
        let all = || train.iter().chain(dev.iter().flatten()).chain(test.iter().flatten());
        let labels: Vec<String> =
            all().map(|r| r.label.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let langs: Vec<String> = all().map(|r| r.lang.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let mut first: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        for r in all() {
            if let Some(at) = first.insert(&r.id, &r.at) {
                bail!(
                    "{}: id `{}` is already the id of the row at {at}; ids must be unique across the files",
                    r.at,
                    r.id
                );
            }
        }
        let example = |r: &Row| Example {
            id: r.id.clone(),
            text: r.text.clone(),
            source: r.source.clone(),
            lang: langs.binary_search(&r.lang).unwrap_or_default() as u32,
            label: labels.binary_search(&r.label).unwrap_or_default() as u32,
        };
        let mut task = Task { labels: labels.clone(), langs: langs.clone(), ..Default::default() };
        // Hold out only the splits that have no file of their own; a row's split does not
        // depend on whether the other split has a file.
        for r in &train {
            let key = r.source.as_deref().unwrap_or(&r.text);
            match split_of(key, self.dev_fraction, self.test_fraction) {
                Split::Dev if dev.is_none() => task.dev.push(example(r)),
                Split::Test if test.is_none() => task.test.push(example(r)),
                _ => task.train.push(example(r)),
            }
        }
        task.dev.extend(dev.iter().flatten().map(example));
        task.test.extend(test.iter().flatten().map(example));
        anyhow::ensure!(
            !task.train.is_empty(),
            "{}: every row fell in the held-out dev/test splits; give more rows or smaller fractions",
            self.train.display()
        );
        Ok(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn params(train: PathBuf) -> TsvParams {
        TsvParams { train, dev: None, test: None, dev_fraction: 0.1, test_fraction: 0.1 }
    }

    fn good_file(n: usize) -> String {
        let mut s = String::from("lang\ttext\tlabel\n");
        for i in 0..n {
            let (lang, label) = [("fr", "greeting"), ("de", "farewell"), ("es", "greeting")][i % 3];
            s.push_str(&format!("{lang}\tsentence \"number\" {i}\t{label}\n"));
        }
        s
    }

    fn err_of(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "data.tsv", text);
        let e = format!("{:#}", params(p).load().unwrap_err());
        assert!(e.contains("data.tsv:"), "{e}");
        e
    }

    #[test]
    fn a_good_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "train.tsv", &good_file(300));
        let task = params(p).load().unwrap();
        task.validate().unwrap();
        assert_eq!(task.labels, ["farewell", "greeting"]);
        assert_eq!(task.langs, ["de", "es", "fr"]);
        assert_eq!(task.train.len() + task.dev.len() + task.test.len(), 300);
        assert!(!task.dev.is_empty() && !task.test.is_empty() && task.train.len() > 200);
        assert!(!task.teacher_reads_source && task.teacher_train.is_none());
        // Quotes are kept as they are.
        let e = task
            .train
            .iter()
            .chain(&task.dev)
            .chain(&task.test)
            .find(|e| e.text == "sentence \"number\" 0")
            .unwrap();
        assert_eq!(
            (task.langs[e.lang as usize].as_str(), task.labels[e.label as usize].as_str()),
            ("fr", "greeting")
        );
    }

    #[test]
    fn source_text_crlf_bom_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text = "\u{feff}label\tsource_text\ttext\tlang\r\n b \tHello there\tBonjour à tous\t fr\r\n\r\na\t\tHallo zusammen\tde\r\n";
        let p = write(dir.path(), "train.tsv", text);
        let mut p = params(p);
        p.dev_fraction = 0.0;
        p.test_fraction = 0.0;
        let task = p.load().unwrap();
        assert_eq!(task.labels, ["a", "b"]);
        assert_eq!(task.langs, ["de", "fr"]);
        assert_eq!(
            task.train,
            [
                Example {
                    id: "train.tsv:2".into(),
                    text: "Bonjour à tous".into(),
                    source: Some("Hello there".into()),
                    lang: 1,
                    label: 1
                },
                Example {
                    id: "train.tsv:4".into(),
                    text: "Hallo zusammen".into(),
                    source: None,
                    lang: 0,
                    label: 0
                },
            ]
        );
        assert!(!task.teacher_reads_source);
    }

    #[test]
    fn ids_come_from_the_id_column_or_the_line_and_must_be_unique() {
        let dir = tempfile::tempdir().unwrap();
        let p =
            write(dir.path(), "train.tsv", "id\ttext\tlang\tlabel\n q1 \thello\ten\tx\nq2\tbonjour\tfr\ty\n");
        let mut q = params(p);
        (q.dev_fraction, q.test_fraction) = (0.0, 0.0);
        let ids: Vec<String> = q.load().unwrap().train.into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["q1", "q2"]);
        // The same id in the test file is refused, naming both rows.
        q.test = Some(write(dir.path(), "test.tsv", "text\tlang\tlabel\tid\nhallo\tde\tx\tq2\n"));
        let e = format!("{:#}", q.load().unwrap_err());
        assert!(
            e.contains("test.tsv:2: id `q2` is already the id of the row at") && e.contains("train.tsv:3"),
            "{e}"
        );
        assert!(err_of("id\ttext\tlang\tlabel\n\thello\ten\tx\n").contains("data.tsv:2: column `id`: empty"));
    }

    #[test]
    fn bad_rows_name_the_line_and_the_column() {
        let h = "text\tlang\tlabel\n";
        let cases = [
            (
                format!("{h}hello world\ten\tx\nshort row\ten\n"),
                "data.tsv:3: expected 3 columns (text, lang, label, as in the header), found 2",
            ),
            (format!("{h}hello world\ten\t\n"), "data.tsv:2: column `label`: empty"),
            (format!("{h}hello\ten\tx\n\n  \tfr\ty\n"), "data.tsv:4: column `text`: empty"),
            (format!("{h}a\tb\tc\td\n"), "data.tsv:2: expected 3 columns"),
            ("text\tlabel\nhello\tx\n".to_string(), "data.tsv:1: the header lacks column `lang`"),
            ("text\tlang\tlabel\tscore\n".to_string(), "data.tsv:1: unknown column `score`"),
            ("text\tlang\ttext\tlabel\n".to_string(), "data.tsv:1: column `text` appears twice"),
            (String::new(), "data.tsv:1: the file is empty"),
            ("\n\n".to_string(), "data.tsv:1: the file is empty"),
            (h.to_string(), "data.tsv:1: the file has a header but no rows"),
        ];
        for (text, want) in cases {
            let e = err_of(&text);
            assert!(e.contains(want), "expected `{want}` in `{e}`");
        }
        // The unknown-column error lists the valid ones.
        assert!(err_of("text\tlang\tlabel\tscore\n")
            .contains("`text`, `lang`, `label` and, optionally, `source_text` and `id`"));
        // Invalid UTF-8.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.tsv");
        std::fs::write(&p, b"text\tlang\tlabel\nab\xff\ten\tx\n").unwrap();
        assert!(format!("{:#}", params(p).load().unwrap_err()).contains("data.tsv:2: not valid UTF-8"));
    }

    #[test]
    fn missing_files_are_located() {
        use kdx_framework::kdx_recipe::{KeyPath, RecipeDoc};
        let dir = tempfile::tempdir().unwrap();
        let train = write(dir.path(), "train.tsv", &good_file(30)).display().to_string();
        let build_from = |text: &str| {
            let doc = RecipeDoc::from_str(text, &dir.path().join("r.toml")).unwrap();
            let key = KeyPath::root().key("data");
            let ctx = BuildCtx { doc: &doc, key: key.clone(), params: doc.get(&key).unwrap().clone() };
            build(ctx.params()?, &ctx)
        };
        assert!(build_from(&format!("[data]\ntrain = {train:?}\n")).is_ok());
        // Paths are relative to the recipe.
        assert!(build_from("[data]\ntrain = \"train.tsv\"\n").is_ok());
        for (text, key, line) in [
            ("[data]\ntrain = \"nope.tsv\"\n".to_string(), "data.train", 2),
            (format!("[data]\ntrain = {train:?}\n\ntest = \"nope.tsv\"\n"), "data.test", 4),
            (format!("[data]\ntrain = {train:?}\ndev = \"nope.tsv\"\n"), "data.dev", 3),
            (format!("[data]\ntrain = {train:?}\ntest_fraction = 0.5\n"), "data.test_fraction", 3),
        ] {
            let err = build_from(&text).err().expect(key);
            assert_eq!(err.key_path.as_ref().map(|k| k.to_string()).as_deref(), Some(key), "{err}");
            assert_eq!(err.loc.as_ref().map(|l| l.line), Some(line), "{err}");
        }
        let err = build_from("[data]\ntrain = \"nope.tsv\"\n").err().unwrap();
        assert!(
            err.message.contains("nope.tsv") && err.message.contains("does not exist"),
            "{}",
            err.message
        );
        // A file that disappears after planning is still named when loading.
        let e = format!("{:#}", params(dir.path().join("gone.tsv")).load().unwrap_err());
        assert!(e.contains("gone.tsv"), "{e}");
    }

    #[test]
    fn splits_are_deterministic_and_respect_given_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "train.tsv", &good_file(600));
        let a = params(p.clone()).load().unwrap();
        let b = params(p.clone()).load().unwrap();
        assert_eq!((a.train.clone(), a.dev.clone(), a.test.clone()), (b.train, b.dev, b.test));
        // The split of a row depends on its text alone: the same text in another file, at
        // another position, falls in the same split.
        let mut reversed = String::from("text\tlang\tlabel\n");
        for line in good_file(600).lines().skip(1).collect::<Vec<_>>().into_iter().rev() {
            let f: Vec<&str> = line.split('\t').collect();
            reversed.push_str(&format!("{}\t{}\t{}\n", f[1], f[0], f[2]));
        }
        let c = params(write(dir.path(), "rev.tsv", &reversed)).load().unwrap();
        let texts = |xs: &[Example]| xs.iter().map(|e| e.text.clone()).collect::<BTreeSet<_>>();
        assert_eq!(texts(&a.dev), texts(&c.dev));
        assert_eq!(texts(&a.test), texts(&c.test));
        // Given dev/test files are used as they are, and nothing is held out of train.
        let dev = write(dir.path(), "dev.tsv", "text\tlang\tlabel\nheld out\tfr\tgreeting\n");
        let test = write(dir.path(), "test.tsv", "text\tlang\tlabel\nalso held out\tit\tfarewell\n");
        let mut q = params(p.clone());
        q.dev = Some(dev);
        q.test = Some(test.clone());
        let t = q.load().unwrap();
        assert_eq!(t.train.len(), 600);
        assert_eq!(texts(&t.dev), BTreeSet::from(["held out".to_string()]));
        assert_eq!(texts(&t.test), BTreeSet::from(["also held out".to_string()]));
        // A language found only in the test file is still a language of the task.
        assert_eq!(t.langs, ["de", "es", "fr", "it"]);
        // With only a test file, dev is still carved out of train.
        let mut r = params(p);
        r.test = Some(test);
        let t = r.load().unwrap();
        assert_eq!(t.test.len(), 1);
        assert_eq!(t.train.len() + t.dev.len(), 600);
        assert_eq!(texts(&t.dev), texts(&a.dev));
        // A header after blank lines: errors count the real line numbers.
        assert!(err_of("\n\ntext\tlang\n").contains("data.tsv:3: the header lacks column `label`"));
        // The fingerprint follows the files read.
        assert_eq!(r.input_files(), [dir.path().join("train.tsv"), dir.path().join("test.tsv")]);
    }
}
