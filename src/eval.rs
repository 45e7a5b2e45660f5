//! `kdx eval RUN --data FILE`: a trained model's accuracy per language on a labelled file,
//! read and predicted a chunk at a time (memory does not grow with the file).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use kdx_framework::engine;
use kdx_framework::export::ModelCard;
use kdx_framework::model::Model;

use kdx_fsio::tsv::{CarriageReturn, TsvError, TsvReader};

use crate::input::{self, MAX_LINE_BYTES};

/// One labelled row of an evaluation file.
struct EvalRow {
    lang: String,
    label: String,
    text: String,
}

/// Where the fields of a row are.
enum Layout {
    /// A header named them: the columns of `text`, `lang`, `label` and (to filter on) `split`.
    Header { width: usize, text: usize, lang: usize, label: usize, split: Option<(usize, String)> },
    /// `lang<TAB>text` lines, labelled with their language.
    LangText,
}

/// Reads an evaluation file a row at a time: a header naming `text`, `lang` and `label` (any
/// order, other columns ignored; `split` filters when `--split` is given), or headerless
/// `lang<TAB>text` lines labelled with their language. Fields are split on TABs; quotes are
/// ordinary characters, as in the `tsv` dataset and `kdx examples` output. Blank lines are
/// skipped. Lines are bounded as `kdx predict` bounds its texts ([`MAX_LINE_BYTES`]), so a
/// file that is not text is refused at its first long line, not read into memory.
struct EvalReader {
    records: TsvReader<std::fs::File>,
    /// The file's name, for messages.
    name: String,
    layout: Layout,
    /// A headerless file's first line (its number and fields), read to tell it from a header.
    pending: Option<(u64, Vec<String>)>,
}

impl EvalReader {
    fn open(data: &Path, split: Option<&str>) -> Result<EvalReader> {
        let name = data.display().to_string();
        let file = std::fs::File::open(data).with_context(|| format!("opening {name}"))?;
        let mut records = TsvReader::new(file)
            .carriage_return(CarriageReturn::BeforeNewline)
            .max_line_bytes(MAX_LINE_BYTES);
        let (number, mut first) = loop {
            match next_fields(&mut records, &name)? {
                None => anyhow::bail!("{}: the file is empty", data.display()),
                Some((_, f)) if is_blank(&f) => continue,
                Some(r) => break r,
            }
        };
        // Spreadsheet exports often start with a byte-order mark; it is not part of the header.
        if let Some(f) = first.first_mut() {
            if let Some(rest) = f.strip_prefix('\u{feff}') {
                *f = rest.to_string();
            }
        }
        let header: Vec<&str> = first.iter().map(|f| f.trim()).collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let layout = match (col("text"), col("lang"), col("label")) {
            (Some(text), Some(lang), Some(label)) => {
                let split = match (split, col("split")) {
                    (Some(_), None) => {
                        anyhow::bail!(
                            "{}:{}: --split needs a `split` column (the header has: {})",
                            data.display(),
                            number,
                            header.join(", ")
                        )
                    }
                    (Some(want), Some(c)) => Some((c, want.to_string())),
                    (None, _) => None,
                };
                Layout::Header { width: header.len(), text, lang, label, split }
            }
            _ => {
                anyhow::ensure!(
                    split.is_none(),
                    "{}: --split needs a header with `text`, `lang`, `label` and `split` columns",
                    data.display()
                );
                Layout::LangText
            }
        };
        let pending = matches!(layout, Layout::LangText).then_some((number, first));
        Ok(EvalReader { records, name, layout, pending })
    }

    /// The next row, `None` at the end.
    fn next_row(&mut self) -> Result<Option<EvalRow>> {
        loop {
            let (n, f) = match self.pending.take() {
                Some(r) => r,
                None => match next_fields(&mut self.records, &self.name)? {
                    Some(r) => r,
                    None => return Ok(None),
                },
            };
            if is_blank(&f) {
                continue;
            }
            let name = &self.name;
            match &self.layout {
                Layout::Header { width, text, lang, label, split } => {
                    anyhow::ensure!(
                        f.len() == *width,
                        "{name}:{n}: expected {width} columns, as in the header, found {}",
                        f.len()
                    );
                    if split.as_ref().is_some_and(|(c, want)| f[*c] != *want) {
                        continue;
                    }
                    return Ok(Some(EvalRow {
                        lang: f[*lang].trim().into(),
                        label: f[*label].trim().into(),
                        text: f[*text].clone(),
                    }));
                }
                Layout::LangText => {
                    // The text is everything after the first TAB, TABs included.
                    let (lang, text) = f.split_first().filter(|(_, text)| !text.is_empty()).with_context(|| {
                        format!("{name}:{n}: expected `lang<TAB>text`, or a header row naming `text`, `lang` and `label`")
                    })?;
                    return Ok(Some(EvalRow {
                        lang: lang.trim().into(),
                        label: lang.trim().into(),
                        text: text.join("\t"),
                    }));
                }
            }
        }
    }
}

/// The next line's number and fields, `None` at the end; a line over the bound or not UTF-8
/// is refused as [`input::TextLines`] refuses it.
fn next_fields(records: &mut TsvReader<std::fs::File>, name: &str) -> Result<Option<(u64, Vec<String>)>> {
    match records.next() {
        None => Ok(None),
        Some(Err(TsvError::LineTooLong { line, max })) => Err(input::line_too_long(name, line, max)),
        Some(Err(e)) => Err(anyhow::Error::new(e).context(format!("reading {name}"))),
        Some(Ok(r)) => {
            let fields = r.strs().map_err(|_| input::not_utf8(name, r.line()))?;
            Ok(Some((r.line(), fields.into_iter().map(String::from).collect())))
        }
    }
}

/// Whether a line holds only white space (TABs included).
fn is_blank(fields: &[String]) -> bool {
    fields.iter().all(|f| f.trim().is_empty())
}

/// Counts of one language.
#[derive(Default)]
struct Tally {
    /// Rows whose label the model predicts.
    scored: usize,
    correct: usize,
}

impl Tally {
    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.scored.max(1) as f64
    }
}

/// What a pass over the file counted.
#[derive(Default)]
struct Tallies {
    /// Per language, in the order met.
    langs: Vec<(String, Tally)>,
    /// The first few labels the model does not know, for the messages.
    unknown_labels: BTreeSet<String>,
    /// Rows read.
    rows: usize,
}

impl Tallies {
    /// Counts one row the model predicted class `predicted` for.
    fn add(&mut self, row: &EvalRow, predicted: usize, labels: &[String]) {
        let li = match self.langs.iter().position(|(l, _)| *l == row.lang) {
            Some(i) => i,
            None => {
                self.langs.push((row.lang.clone(), Tally::default()));
                self.langs.len() - 1
            }
        };
        // Only rows whose label the model knows are scored.
        match labels.iter().position(|l| *l == row.label) {
            Some(y) => {
                self.langs[li].1.scored += 1;
                self.langs[li].1.correct += usize::from(y == predicted);
            }
            None if self.unknown_labels.len() < 9 => {
                self.unknown_labels.insert(row.label.clone());
            }
            None => {}
        }
    }
}

/// Rows predicted at a time.
const CHUNK: usize = 512;

/// Reads, predicts and counts the whole file, a chunk at a time.
fn tally(model: &dyn Model, card: &ModelCard, reader: &mut EvalReader) -> Result<Tallies> {
    let mut t = Tallies::default();
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        while chunk.len() < CHUNK {
            match reader.next_row()? {
                Some(r) => chunk.push(r),
                None => break,
            }
        }
        if chunk.is_empty() {
            return Ok(t);
        }
        t.rows += chunk.len();
        let texts: Vec<&str> = chunk.iter().map(|r| r.text.as_str()).collect();
        let mut bags = kdx_framework::features::TokenRows::build(model.featurizer(), texts);
        // Models that route by language read it; a language the model was not trained on gets
        // index 0 (its rows are scored all the same).
        let lang_of = |r: &EvalRow| card.languages.iter().position(|l| *l == r.lang).unwrap_or(0) as u32;
        bags.langs = chunk.iter().map(lang_of).collect();
        let logits = engine::predict(model, &bags)?.logits;
        for (r, p) in chunk.iter().zip(engine::train::argmax_rows(&logits, card.labels.len())) {
            t.add(r, p, &card.labels);
        }
    }
}

/// Prints accuracy per language and the macro average; writes them to `csv_out` if given.
fn report(mut t: Tallies, csv_out: Option<&Path>) -> Result<()> {
    t.langs.sort_by(|a, b| a.0.cmp(&b.0));
    let known: Vec<&(String, Tally)> = t.langs.iter().filter(|(_, t)| t.scored > 0).collect();
    let macro_acc = known.iter().map(|(_, t)| t.accuracy()).sum::<f64>() / known.len().max(1) as f64;
    let scored: usize = known.iter().map(|(_, t)| t.scored).sum();
    println!("{:<16} {:>8} {:>9}", "lang", "examples", "accuracy");
    for (lang, t) in &t.langs {
        let note = if t.scored > 0 { "" } else { "  (no row with a label of this model)" };
        println!("{lang:<16} {:>8} {:>9.4}{note}", t.scored, t.accuracy());
    }
    println!("{:<16} {scored:>8} {macro_acc:>9.4}", "macro");
    if let Some(p) = csv_out {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            lang: &'a str,
            examples: usize,
            accuracy: f64,
        }
        let mut out: Vec<Row> =
            known.iter().map(|(l, t)| Row { lang: l, examples: t.scored, accuracy: t.accuracy() }).collect();
        out.push(Row { lang: "macro", examples: scored, accuracy: macro_acc });
        kdx_fsio::write_output(p, &kdx_framework::report::csv_bytes(&out)?)?;
    }
    Ok(())
}

/// `kdx eval RUN --data FILE`: prints accuracy per language and the macro average, and
/// writes them to `csv_out` when given.
pub fn run(
    run_dir: &Path,
    which: &str,
    data: &Path,
    split: Option<&str>,
    csv_out: Option<&Path>,
) -> Result<()> {
    let (model, card) = kdx_framework::export::load(&run_dir.join(which))?;
    let t = tally(&*model, &card, &mut EvalReader::open(data, split)?)?;
    let with_split = split.map_or(String::new(), |s| format!(" with split `{s}`"));
    anyhow::ensure!(t.rows > 0, "{}: no rows{with_split}", data.display());
    let shown: Vec<&str> = t.unknown_labels.iter().take(8).map(String::as_str).collect();
    if t.langs.iter().all(|(_, t)| t.scored == 0) {
        let model_labels: Vec<&str> = card.labels.iter().take(8).map(String::as_str).collect();
        anyhow::bail!(
            "{}: no row has a label this model predicts, so there is nothing to score (labels found: {}; the model's: {}{})",
            data.display(),
            if shown.is_empty() { "none".to_string() } else { shown.join(", ") },
            model_labels.join(", "),
            if card.labels.len() > 8 { ", …" } else { "" }
        );
    }
    if !t.unknown_labels.is_empty() {
        eprintln!("note: labels this model does not predict are not scored: {}", shown.join(", "));
    }
    report(t, csv_out)
}
