//! `gettext-xling`: cross-lingual transfer over the gettext corpus snapshot (Xu & Yang 2017).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context;
pub use kdx_corpus::load::Corpus;
pub use kdx_corpus::select::Languages;
use kdx_corpus::split::{split_of, stable_hash64, Split};
use kdx_framework::dataset::{Dataset, Example, Task};
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::registry::BuildCtx;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The language code of the English side (the msgids).
const ENGLISH: &str = "en";

/// Cross-lingual transfer: the label of a message is the domain (catalog) it comes from.
/// By default (`teacher = "english"`) the teacher is pre-trained on the English msgids only;
/// the student reads translations and learns from the teacher's outputs on their English
/// source (no gold label reaches it), then is evaluated per language. With
/// `teacher = "multilingual"` the teacher is pre-trained on the translations into every
/// selected locale as well as on the English msgids, reads each example in its own
/// language, and the student may see gold labels: the setting of a multilingual teacher
/// distilled into students for fewer languages (`student_languages`). The languages of the task are the selected
/// locales plus `en`: dev and test also hold each English message once (text = source =
/// msgid), so the reports have an `en` row. Splits come from a hash of the msgid, so a
/// message and all its translations share a split.
///
/// What is kept:
/// 1. the selected locales (`languages`);
/// 2. a msgid found under two or more domains anywhere in the corpus (any locale) is
///    dropped, never labelled with one of them;
/// 3. a msgid is *covered* when it is translated into at least ⌈`min_coverage` × L⌉ (and
///    at least one) of the L selected locales; domains are ranked by their number of
///    covered msgids (ties by name) and the first `domains` of them with at least one
///    covered msgid are the classes;
/// 4. every remaining msgid of those domains that is translated into at least one selected
///    locale is a message of the task, covered or not: each of its translations is a
///    student example, and the msgid itself is one English example.
///
/// Example ids: `LOCALE:LINE` for a translation (its line in the decompressed snapshot),
/// `en:HASH` for an English message (16 hex digits of the msgid's stable hash).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GettextXlingParams {
    /// The corpus snapshot (`kdx corpus build` output), relative to the recipe.
    pub corpus: PathBuf,
    /// Which locales the student reads: "top-N" (the N largest), "min-K" (every locale
    /// with ≥ K messages), "all", or an explicit list of locale codes. `en` is always
    /// added (the teacher's language).
    #[serde(default = "default_languages")]
    pub languages: Languages,
    /// How many domains (classes) to keep, at most: those with the most msgids that are
    /// translated into at least `min_coverage` of the selected locales.
    #[serde(default = "default_domains")]
    pub domains: usize,
    /// The fraction of the selected locales a msgid must be translated into to count
    /// towards its domain's rank, in [0, 1].
    #[serde(default = "default_coverage")]
    pub min_coverage: f64,
    /// Keep at most this many training examples per translated language for the student
    /// (the same messages in every language: those with the smallest msgid hash). The
    /// teacher always pre-trains on every English message of the training split; dev and
    /// test are not capped.
    #[serde(default)]
    pub max_train_per_language: Option<usize>,
    /// Split the training messages in two halves by a hash of the msgid: the teacher
    /// pre-trains on the English of one half, the student distils on the translations of
    /// the other. By default both use every training message, so the teacher's outputs on
    /// the student's training data are outputs on its own training set (near the gold
    /// labels); disjoint halves make them genuine predictions, as when the parallel data
    /// is unlabelled and separate from the teacher's labelled data.
    #[serde(default)]
    pub disjoint_teacher: bool,
    /// "english": the teacher pre-trains on the English msgids and reads the English source
    /// of each pair; "multilingual": it pre-trains on the English msgids and the
    /// translations into every selected locale, reading each example's own text, and gold
    /// labels may reach the student.
    #[serde(default)]
    pub teacher: TeacherSide,
    /// Train the student on these locales only (a subset of the selected ones), e.g. one
    /// language for a single-language student of a multilingual teacher. Dev and test keep
    /// every language, so the reports show the student on languages it never trained on;
    /// macro averages cover the student's languages.
    #[serde(default)]
    pub student_languages: Option<Vec<String>>,
    /// Fraction of messages in the dev split.
    #[serde(default = "default_frac")]
    pub dev_fraction: f64,
    /// Fraction of messages in the test split.
    #[serde(default = "default_frac")]
    pub test_fraction: f64,
}

/// Which texts the teacher of a `gettext-xling` task learns from and reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TeacherSide {
    /// English msgids only; the teacher reads the source of each pair.
    #[default]
    English,
    /// English msgids and the translations into every selected locale.
    Multilingual,
}

fn default_languages() -> Languages {
    Languages::Rule("top-10".into())
}
fn default_domains() -> usize {
    10
}
fn default_coverage() -> f64 {
    0.5
}
fn default_frac() -> f64 {
    0.1
}

fn build(mut p: GettextXlingParams, ctx: &BuildCtx) -> Result<Box<dyn Dataset>, Diagnostic> {
    if matches!(&p.languages, Languages::List(v) if v.iter().any(|l| l == ENGLISH)) {
        return Err(ctx
            .error("languages", "`en` is the teacher's language and is always part of the task; list only the locales the student reads"));
    }
    if let Err(e) = p.languages.check() {
        return Err(ctx.error("languages", e));
    }
    if p.domains < 2 {
        return Err(ctx.error(
            "domains",
            format!("at least 2 domains are needed (they are the classes), found {}", p.domains),
        ));
    }
    if !(0.0..=1.0).contains(&p.min_coverage) {
        return Err(ctx.error("min_coverage", format!("must be in [0, 1], found {}", p.min_coverage)));
    }
    if let Some(student) = &p.student_languages {
        if student.is_empty() {
            return Err(
                ctx.error("student_languages", "name at least one locale (leave the key out for all)")
            );
        }
        if let Languages::List(selected) = &p.languages {
            if let Some(l) = student.iter().find(|l| !selected.contains(l)) {
                return Err(ctx.error(
                    "student_languages",
                    format!("`{l}` is not one of `languages` ({})", selected.join(", ")),
                ));
            }
        }
    }
    if p.max_train_per_language == Some(0) {
        return Err(ctx.error("max_train_per_language", "must be at least 1 (leave it out for no cap)"));
    }
    ctx.held_out_fractions(p.dev_fraction, p.test_fraction)?;
    p.corpus =
        ctx.existing_file("corpus", &p.corpus, "corpus file", " (build one with `kdx corpus build`)")?;
    p.languages.check_in_snapshot(&p.corpus, &BTreeMap::new()).map_err(|e| ctx.error("languages", e))?;
    Ok(Box::new(p))
}

kdx_framework::register_dataset!(
    "gettext-xling",
    "cross-lingual transfer over the gettext corpus (label = domain; teacher reads English, student the translation)",
    GettextXlingParams,
    build
);

impl Dataset for GettextXlingParams {
    fn input_files(&self) -> Vec<PathBuf> {
        vec![self.corpus.clone()]
    }

    fn load(&self) -> anyhow::Result<Task> {
        let corpus = kdx_corpus::load::load(&self.corpus)
            .with_context(|| format!("loading {}", self.corpus.display()))?;

        // 1. Locales.
        let selected = self.select_locales(&corpus)?;
        let is_selected: BTreeSet<&str> = selected.iter().map(String::as_str).collect();

        // 2. Msgids under more than one domain, anywhere in the corpus.
        let (domain_of, ambiguous) = domains_of_msgids(&corpus);

        // 3. Coverage of each remaining msgid over the selected locales; rank the domains.
        let labels = self.rank_domains(&corpus, &selected, &is_selected, &domain_of, &ambiguous)?;

        // 4. Examples.
        self.examples(&corpus, &selected, labels, &is_selected, &ambiguous)
    }
}

impl GettextXlingParams {
    /// Step 1 of [`Dataset::load`]: the locales `languages` selects among the snapshot's
    /// (ranked by their number of rows), without English, which is the teacher's side.
    fn select_locales(&self, corpus: &Corpus) -> anyhow::Result<Vec<String>> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in &corpus.rows {
            *counts.entry(r.locale.clone()).or_default() += 1;
        }
        let mut selected = self.languages.select(&counts, &self.corpus.display().to_string())?;
        // A snapshot never holds `en` itself (English variants are skipped when it is
        // built), but a hand-made one might: English is the teacher's side here.
        selected.retain(|l| l != ENGLISH);
        anyhow::ensure!(!selected.is_empty(), "no locale of {} matches `languages`", self.corpus.display());
        Ok(selected)
    }

    /// Step 3 of [`Dataset::load`]: the classes, in name order. A msgid counts towards its
    /// domain's rank when it is translated into at least ⌈`min_coverage` × L⌉ (and at least
    /// one) of the L selected locales; the first `domains` domains by that count (ties by
    /// name) are kept, and fewer than two is an error.
    fn rank_domains(
        &self,
        corpus: &Corpus,
        selected: &[String],
        is_selected: &BTreeSet<&str>,
        domain_of: &BTreeMap<&str, &str>,
        ambiguous: &BTreeSet<&str>,
    ) -> anyhow::Result<Vec<String>> {
        let mut coverage: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for r in &corpus.rows {
            if is_selected.contains(r.locale.as_str()) && !ambiguous.contains(r.msgid.as_str()) {
                coverage.entry(r.msgid.as_str()).or_default().insert(r.locale.as_str());
            }
        }
        let need = ((self.min_coverage * selected.len() as f64).ceil() as usize).max(1);
        let mut covered: BTreeMap<&str, usize> = BTreeMap::new();
        for (msgid, locales) in &coverage {
            if locales.len() >= need {
                *covered.entry(domain_of[msgid]).or_default() += 1;
            }
        }
        let mut ranked: Vec<(&str, usize)> = covered.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut labels: Vec<String> = ranked.iter().take(self.domains).map(|(d, _)| d.to_string()).collect();
        labels.sort();
        anyhow::ensure!(
            labels.len() >= 2,
            "only {} domain(s) of {} have msgids translated into at least {need} of the {} selected locales; \
             lower `min_coverage` or select other `languages`",
            labels.len(),
            self.corpus.display(),
            selected.len()
        );
        Ok(labels)
    }

    /// Step 4 of [`Dataset::load`]: every translation of a kept msgid into a selected locale
    /// becomes an example of its msgid's split, then every such msgid once as an English
    /// example; the student's training examples are capped last.
    fn examples(
        &self,
        corpus: &Corpus,
        selected: &[String],
        labels: Vec<String>,
        is_selected: &BTreeSet<&str>,
        ambiguous: &BTreeSet<&str>,
    ) -> anyhow::Result<Task> {
        let label_index: BTreeMap<&str, u32> =
            labels.iter().enumerate().map(|(i, d)| (d.as_str(), i as u32)).collect();
        let mut langs = selected.to_vec();
        langs.push(ENGLISH.to_string());
        langs.sort();
        let lang_index: BTreeMap<&str, u32> =
            langs.iter().enumerate().map(|(i, l)| (l.as_str(), i as u32)).collect();
        let en = lang_index[ENGLISH];
        let multilingual = self.teacher == TeacherSide::Multilingual;
        let task = Task {
            labels: labels.clone(),
            langs: langs.clone(),
            teacher_reads_source: !multilingual,
            ..Default::default()
        };
        let student_lang = self.student_languages_mask(&langs, selected, is_selected)?;
        let mut splits =
            Splits { task, teacher_train: Vec::new(), train_by_lang: vec![Vec::new(); langs.len()] };
        // English messages, once each, in msgid order (the map sorts them).
        let mut english: BTreeMap<&str, u32> = BTreeMap::new();
        for (row, r) in corpus.rows.iter().enumerate() {
            if !is_selected.contains(r.locale.as_str()) || ambiguous.contains(r.msgid.as_str()) {
                continue;
            }
            let Some(&label) = label_index.get(r.domain.as_str()) else { continue };
            let lang = lang_index[r.locale.as_str()];
            english.insert(r.msgid.as_str(), label);
            let e = Example {
                id: kdx_corpus::load::row_id(r, row),
                text: r.text.clone(),
                source: Some(r.msgid.clone()),
                lang,
                label,
            };
            splits.translation(self, e, &r.msgid, student_lang[lang as usize]);
        }
        for (msgid, label) in english {
            let e = Example {
                id: english_id(msgid),
                text: msgid.to_string(),
                source: Some(msgid.to_string()),
                lang: en,
                label,
            };
            splits.english(self, e, msgid);
        }
        splits.finish(self.max_train_per_language)
    }

    /// For each of the task's languages (`langs`), whether the student trains on it: all of
    /// them, or those `student_languages` names, each of which must be a selected locale.
    fn student_languages_mask(
        &self,
        langs: &[String],
        selected: &[String],
        is_selected: &BTreeSet<&str>,
    ) -> anyhow::Result<Vec<bool>> {
        Ok(match &self.student_languages {
            None => vec![true; langs.len()],
            Some(list) => {
                if let Some(l) = list.iter().find(|l| !is_selected.contains(l.as_str())) {
                    anyhow::bail!(
                        "student_languages: `{l}` is not one of the selected locales ({})",
                        selected.join(", ")
                    );
                }
                langs.iter().map(|l| list.contains(l)).collect()
            }
        })
    }
}

/// Step 2 of [`Dataset::load`]: the first domain each msgid appears under, and the msgids
/// found under more than one domain anywhere in the corpus (any locale), which are dropped
/// rather than labelled with one of them.
fn domains_of_msgids(corpus: &Corpus) -> (BTreeMap<&str, &str>, BTreeSet<&str>) {
    let mut domain_of: BTreeMap<&str, &str> = BTreeMap::new();
    let mut ambiguous: BTreeSet<&str> = BTreeSet::new();
    for r in &corpus.rows {
        let d = domain_of.entry(r.msgid.as_str()).or_insert(r.domain.as_str());
        if *d != r.domain {
            ambiguous.insert(r.msgid.as_str());
        }
    }
    (domain_of, ambiguous)
}

/// A task's examples while [`Dataset::load`] sorts them into splits. The teacher's training
/// set and the student's training examples per language (each with its msgid's hash, the
/// key of the cap) are kept apart until [`Splits::finish`].
struct Splits {
    /// Dev and test filled as examples arrive; train at the end.
    task: Task,
    /// The teacher's pre-training examples.
    teacher_train: Vec<Example>,
    /// The student's training examples, per language index.
    train_by_lang: Vec<Vec<(u64, Example)>>,
}

impl Splits {
    /// Places a translation of `msgid` by its msgid's split. A training one goes to the
    /// teacher (multilingual teacher only) and, if its language is one the student trains on
    /// (`student`), to the student; with `disjoint_teacher`, to only one of them by the
    /// msgid's half.
    fn translation(&mut self, p: &GettextXlingParams, e: Example, msgid: &str, student: bool) {
        let multilingual = p.teacher == TeacherSide::Multilingual;
        match split_of(msgid, p.dev_fraction, p.test_fraction) {
            Split::Train if p.disjoint_teacher && teacher_half(msgid) => {
                if multilingual {
                    self.teacher_train.push(e);
                }
            }
            Split::Train => {
                if multilingual && !p.disjoint_teacher {
                    self.teacher_train.push(e.clone());
                }
                if student {
                    self.train_by_lang[e.lang as usize].push((stable_hash64(msgid.as_bytes()), e));
                }
            }
            Split::Dev => self.task.dev.push(e),
            Split::Test => self.task.test.push(e),
        }
    }

    /// Places the English example of `msgid` by its split: training English is the
    /// teacher's (only the teacher's half with `disjoint_teacher`).
    fn english(&mut self, p: &GettextXlingParams, e: Example, msgid: &str) {
        match split_of(msgid, p.dev_fraction, p.test_fraction) {
            Split::Train if p.disjoint_teacher && !teacher_half(msgid) => {}
            Split::Train => self.teacher_train.push(e),
            Split::Dev => self.task.dev.push(e),
            Split::Test => self.task.test.push(e),
        }
    }

    /// The task: the student's training examples language by language, each language
    /// capped at `cap` examples, and the teacher's training set, which must not be empty.
    fn finish(mut self, cap: Option<usize>) -> anyhow::Result<Task> {
        for mut v in self.train_by_lang {
            if let Some(cap) = cap {
                // The smallest msgid hashes: the same messages in every language, so a
                // capped task stays parallel.
                v.sort_by_key(|(h, _)| *h);
                v.truncate(cap);
            }
            self.task.train.extend(v.into_iter().map(|(_, e)| e));
        }
        anyhow::ensure!(
            !self.teacher_train.is_empty(),
            "no English message of the selected domains falls in the training split"
        );
        self.task.teacher_train = Some(self.teacher_train);
        Ok(self.task)
    }
}

/// The id of an English message: `en:` and the msgid's stable hash in hex (a msgid has no
/// row of its own in the snapshot; it is the source of several).
fn english_id(msgid: &str) -> String {
    format!("{ENGLISH}:{:016x}", stable_hash64(msgid.as_bytes()))
}

/// With `disjoint_teacher`, whether a training message belongs to the teacher's half: one
/// bit of the msgid's hash after a full avalanche (MurmurHash3's finaliser), independent of
/// the bits `split_of` and the cap use.
fn teacher_half(msgid: &str) -> bool {
    let mut h = stable_hash64(msgid.as_bytes()) ^ 0x7465_6163_6865_7221; // "teacher!"
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// A gzip member holding `data` in stored (uncompressed) deflate blocks: what the
    /// corpus loader reads, written without a compression library.
    pub(crate) fn gzip_stored(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        let mut chunks: Vec<&[u8]> = data.chunks(65535).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, c) in chunks.iter().enumerate() {
            out.push(u8::from(i == last));
            let n = c.len() as u16;
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&(!n).to_le_bytes());
            out.extend_from_slice(c);
        }
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        out.extend_from_slice(&(!crc).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    /// Writes a snapshot with the header and row order of `kdx corpus build`.
    fn write_corpus(dir: &Path, rows: &[(&str, &str, &str, &str)]) -> PathBuf {
        let mut rows = rows.to_vec();
        rows.sort();
        let mut text = String::from("locale\tdomain\tmsgid\ttext\n");
        for (l, d, m, t) in rows {
            text.push_str(&format!("{l}\t{d}\t{m}\t{t}\n"));
        }
        let path = dir.join("corpus.tsv.gz");
        std::fs::write(&path, gzip_stored(text.as_bytes())).unwrap();
        path
    }

    const LOCALES: [&str; 3] = ["de", "fr", "ja"];

    /// Three domains of 40 messages each, translated into every locale; `tail` has 40
    /// messages in `fr` only; "Shared message N" is in both `app` and `net`.
    fn tiny_corpus(dir: &Path) -> PathBuf {
        let mut owned: Vec<(String, String, String, String)> = Vec::new();
        for d in ["app", "net", "disk"] {
            for i in 0..40 {
                for l in LOCALES {
                    owned.push((
                        l.into(),
                        d.into(),
                        format!("{d} message number {i}"),
                        format!("{l} {d} traduction {i}"),
                    ));
                }
            }
        }
        for i in 0..40 {
            owned.push(("fr".into(), "tail".into(), format!("tail message {i}"), format!("fr queue {i}")));
        }
        for i in 0..10 {
            owned.push((
                "fr".into(),
                "app".into(),
                format!("Shared message {i}"),
                format!("fr partagé app {i}"),
            ));
            owned.push((
                "de".into(),
                "net".into(),
                format!("Shared message {i}"),
                format!("de geteilt net {i}"),
            ));
        }
        let rows: Vec<(&str, &str, &str, &str)> =
            owned.iter().map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), d.as_str())).collect();
        write_corpus(dir, &rows)
    }

    fn params(corpus: &Path) -> GettextXlingParams {
        GettextXlingParams {
            corpus: corpus.to_path_buf(),
            languages: Languages::Rule("all".into()),
            domains: 10,
            min_coverage: 0.5,
            max_train_per_language: None,
            disjoint_teacher: false,
            teacher: TeacherSide::English,
            student_languages: None,
            dev_fraction: 0.2,
            test_fraction: 0.2,
        }
    }

    fn build_from(text: &str) -> Result<Box<dyn Dataset>, Diagnostic> {
        use kdx_framework::kdx_recipe::{KeyPath, RecipeDoc};
        let doc = RecipeDoc::from_str(text, Path::new("r.toml")).unwrap();
        let key = KeyPath::root().key("data");
        let ctx = BuildCtx { doc: &doc, key: key.clone(), params: doc.get(&key).unwrap().clone() };
        build(ctx.params()?, &ctx)
    }

    #[test]
    fn labels_are_the_covered_domains() {
        let dir = tempfile::tempdir().unwrap();
        let task = params(&tiny_corpus(dir.path())).load().unwrap();
        // `tail` is translated into one locale of three (< 50%): not a class.
        assert_eq!(task.labels, ["app", "disk", "net"]);
        assert_eq!(task.langs, ["de", "en", "fr", "ja"]);
        task.validate().unwrap();
        for e in task.train.iter().chain(&task.dev).chain(&task.test) {
            let src = e.source.as_deref().expect("every example has a source");
            assert!(src.starts_with(&task.labels[e.label as usize]), "{e:?}");
        }
        // With a lower coverage bar `tail` qualifies; `domains` caps the count, keeping the
        // best covered.
        let mut p = params(&tiny_corpus(dir.path()));
        p.min_coverage = 0.0;
        assert_eq!(p.load().unwrap().labels, ["app", "disk", "net", "tail"]);
        p.domains = 2;
        assert_eq!(p.load().unwrap().labels, ["app", "disk"]);
    }

    #[test]
    fn a_msgid_in_two_domains_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let task = params(&tiny_corpus(dir.path())).load().unwrap();
        let all = task
            .train
            .iter()
            .chain(&task.dev)
            .chain(&task.test)
            .chain(task.teacher_train.as_deref().unwrap());
        for e in all {
            assert!(!e.source.as_deref().unwrap().starts_with("Shared"), "{e:?}");
            assert!(!e.text.starts_with("Shared"), "{e:?}");
        }
    }

    #[test]
    fn the_teacher_trains_on_english_once_per_msgid() {
        let dir = tempfile::tempdir().unwrap();
        let task = params(&tiny_corpus(dir.path())).load().unwrap();
        assert!(task.teacher_reads_source);
        let en = task.langs.iter().position(|l| l == "en").unwrap() as u32;
        let tt = task.teacher_train.as_deref().unwrap();
        let mut seen = BTreeSet::new();
        for e in tt {
            assert_eq!(e.lang, en);
            assert_eq!(e.source.as_deref(), Some(e.text.as_str()));
            assert!(seen.insert(e.text.clone()), "{} twice", e.text);
        }
        // Exactly the msgids of the student's training split.
        let train_msgids: BTreeSet<String> = task.train.iter().map(|e| e.source.clone().unwrap()).collect();
        assert_eq!(seen, train_msgids);
        // The student never trains on English; dev/test hold each English message once.
        assert!(task.train.iter().all(|e| e.lang != en));
        for split in [&task.dev, &task.test] {
            let en_rows: Vec<&Example> = split.iter().filter(|e| e.lang == en).collect();
            let msgids: BTreeSet<&str> =
                split.iter().filter(|e| e.lang != en).map(|e| e.source.as_deref().unwrap()).collect();
            assert_eq!(en_rows.len(), msgids.len());
            assert!(en_rows
                .iter()
                .all(|e| msgids.contains(e.text.as_str()) && e.source.as_deref() == Some(e.text.as_str())));
        }
    }

    #[test]
    fn a_multilingual_teacher_and_a_single_language_student() {
        let dir = tempfile::tempdir().unwrap();
        let english = params(&tiny_corpus(dir.path())).load().unwrap();
        let mut p = params(&tiny_corpus(dir.path()));
        p.teacher = TeacherSide::Multilingual;
        p.student_languages = Some(vec!["fr".into()]);
        let task = p.load().unwrap();
        task.validate().unwrap();
        // The teacher reads each example's own text; it trains on every language's
        // translations of the training messages and on their English.
        assert!(!task.teacher_reads_source);
        let tt = task.teacher_train.as_deref().unwrap();
        let count = |xs: &[Example], l: &str| xs.iter().filter(|e| task.langs[e.lang as usize] == l).count();
        for l in ["de", "en", "fr", "ja"] {
            assert!(count(tt, l) > 0, "{l}");
        }
        assert_eq!(tt.len(), english.train.len() + english.teacher_train.as_deref().unwrap().len());
        // The student trains on `fr` only, on the same examples as before; dev and test keep
        // every language.
        assert_eq!(
            task.train,
            english.train.iter().filter(|e| task.langs[e.lang as usize] == "fr").cloned().collect::<Vec<_>>()
        );
        assert_eq!((task.dev.clone(), task.test.clone()), (english.dev, english.test));
        p.student_languages = Some(vec!["xx".into()]);
        assert!(format!("{:#}", p.load().unwrap_err())
            .contains("student_languages: `xx` is not one of the selected locales"));
    }

    #[test]
    fn a_disjoint_teacher_trains_on_other_messages() {
        let dir = tempfile::tempdir().unwrap();
        let shared = params(&tiny_corpus(dir.path())).load().unwrap();
        let mut p = params(&tiny_corpus(dir.path()));
        p.disjoint_teacher = true;
        let task = p.load().unwrap();
        task.validate().unwrap();
        let teacher: BTreeSet<String> =
            task.teacher_train.as_deref().unwrap().iter().map(|e| e.text.clone()).collect();
        let student: BTreeSet<String> = task.train.iter().map(|e| e.source.clone().unwrap()).collect();
        assert!(teacher.is_disjoint(&student));
        let all: BTreeSet<String> =
            shared.teacher_train.as_deref().unwrap().iter().map(|e| e.text.clone()).collect();
        assert_eq!(teacher.union(&student).cloned().collect::<BTreeSet<_>>(), all);
        // Roughly halves, and dev/test are untouched.
        assert!(
            teacher.len() > all.len() / 4 && student.len() > all.len() / 4,
            "{} {} {}",
            teacher.len(),
            student.len(),
            all.len()
        );
        assert_eq!((task.dev.clone(), task.test.clone()), (shared.dev, shared.test));
    }

    #[test]
    fn a_message_and_its_translations_share_a_split() {
        let dir = tempfile::tempdir().unwrap();
        let task = params(&tiny_corpus(dir.path())).load().unwrap();
        let mut split_of_msgid: BTreeMap<String, &str> = BTreeMap::new();
        for (name, xs) in [("train", &task.train), ("dev", &task.dev), ("test", &task.test)] {
            assert!(!xs.is_empty(), "{name} is empty");
            for e in xs.iter() {
                let prev = split_of_msgid.insert(e.source.clone().unwrap(), name);
                assert!(prev.is_none() || prev == Some(name), "{e:?} in {name} and {prev:?}");
            }
        }
        // Each of the 3 × 40 messages is translated into 3 locales: none is lost.
        let en = task.langs.iter().position(|l| l == "en").unwrap() as u32;
        assert_eq!(
            task.train.iter().chain(&task.dev).chain(&task.test).filter(|e| e.lang != en).count(),
            3 * 40 * 3
        );
    }

    #[test]
    fn the_cap_keeps_the_same_messages_in_every_language() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = params(&tiny_corpus(dir.path()));
        p.max_train_per_language = Some(5);
        let task = p.load().unwrap();
        assert_eq!(task.train_sizes().iter().filter(|&&n| n > 0).collect::<Vec<_>>(), [&5, &5, &5]);
        let per_lang = |l: u32| {
            task.train
                .iter()
                .filter(|e| e.lang == l)
                .map(|e| e.source.clone().unwrap())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(per_lang(0), per_lang(2));
        // The teacher is not capped.
        assert!(task.teacher_train.as_deref().unwrap().len() > 5);
    }

    #[test]
    fn language_rules_and_input_files() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = tiny_corpus(dir.path());
        let mut p = params(&corpus);
        p.languages = Languages::List(vec!["fr".into(), "ja".into()]);
        let task = p.load().unwrap();
        assert_eq!(task.langs, ["en", "fr", "ja"]);
        p.languages = Languages::List(vec!["xx".into()]);
        assert!(format!("{:#}", p.load().unwrap_err()).contains("locale `xx` is not in"));
        // `fr` is largest (170 rows): top-1 leaves only it, whose `tail` and shared rows
        // count too.
        p.languages = Languages::Rule("top-1".into());
        assert_eq!(p.load().unwrap().langs, ["en", "fr"]);
        assert_eq!(p.input_files(), [corpus]);
    }

    #[test]
    fn bad_params_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let c = tiny_corpus(dir.path()).display().to_string();
        assert!(build_from(&format!("[data]\ncorpus = {c:?}\n")).is_ok());
        for (extra, key, want) in [
            ("languages = \"top-x\"", "data.languages", "expected \"top-N\""),
            ("languages = [\"fr\", \"en\"]", "data.languages", "always part of the task"),
            ("domains = 1", "data.domains", "at least 2"),
            ("min_coverage = 1.5", "data.min_coverage", "[0, 1]"),
            ("dev_fraction = 0.6", "data.dev_fraction", "[0, 0.5)"),
            ("max_train_per_language = 0", "data.max_train_per_language", "at least 1"),
            (
                "student_languages = [\"de\"]\nlanguages = [\"fr\"]",
                "data.student_languages",
                "not one of `languages` (fr)",
            ),
            ("student_languages = []", "data.student_languages", "at least one"),
            ("teacher = \"bilingual\"", "data.teacher", "english"),
            ("corpus2 = 1", "data", "corpus2"),
        ] {
            let err = build_from(&format!("[data]\ncorpus = {c:?}\n{extra}\n")).err().expect(extra);
            assert!(err.key_path.as_ref().is_some_and(|k| k.to_string().starts_with(key)), "{extra}: {err}");
            assert_eq!(err.loc.as_ref().map(|l| l.line), Some(3), "{extra}: {err}");
            assert!(err.to_string().contains(want), "{extra}: {err}");
        }
        let missing = build_from("[data]\ncorpus = \"nowhere.tsv.gz\"\n").err().unwrap();
        assert_eq!(missing.key_path.map(|k| k.to_string()).as_deref(), Some("data.corpus"));
        assert!(missing.message.contains("does not exist"), "{}", missing.message);
    }
}
