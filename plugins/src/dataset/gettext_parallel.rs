//! `gettext-parallel`: (English msgid, translation, locale) pairs from the corpus snapshot,
//! for embedding-level cross-lingual distillation (Reimers & Gurevych 2020).

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use kdx_corpus::select::Languages;
use kdx_framework::dataset::{Dataset, Example, Measure, Task};
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::registry::BuildCtx;

use super::gettext_lid::{check_selection, Selection};
use kdx_corpus::split::stable_hash64;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Parallel sentences: each translation of a message is an example whose `text` is the
/// translation and whose `source` is its English msgid; the teacher reads the source, the
/// student the translation, so an embedding loss (`hidden-mse`) teaches the student to put a
/// translation where the teacher puts its English source. With `english_pairs` (the
/// default) every distinct msgid is also an example of `en` with text = source = msgid: the
/// student learns to embed English where the teacher does — the two terms of Reimers &
/// Gurevych's ‖M(s) − M̂(s)‖² + ‖M(s) − M̂(t)‖², weighed by how often the sampler draws `en`.
/// The sampler draws the translation's language, so temperature, UniMax and teacher-gap
/// sampling apply unchanged. Labels are the languages, for bookkeeping only: the task is
/// scored by translation retrieval (`retrieval.csv`; the accuracy columns of
/// `languages.csv` and `run.csv` are translation → English accuracy@1). Splits come from a hash of the msgid, so a
/// message and all its translations share a split. Example ids: `LOCALE:LINE` for a
/// translation, `en:HASH` for an English message, `LOCALE:passage:I` for a passage
/// (`passages_per_language`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GettextParallelParams {
    /// The corpus snapshot (`kdx corpus build` output), relative to the recipe.
    pub corpus: PathBuf,
    /// Which locales: "top-N" (the N largest), "min-K" (every locale with ≥ K messages),
    /// "all", or an explicit list of locale codes.
    #[serde(default = "default_languages")]
    pub languages: Languages,
    /// Merge locales before selecting: e.g. { "pt_BR" = "pt", "sr@latin" = "sr" }.
    #[serde(default)]
    pub merge: BTreeMap<String, String>,
    /// Keep at most this many training pairs per language (the messages with the smallest
    /// msgid hash: the same messages in every language); dev and test are not capped.
    #[serde(default)]
    pub max_train_per_language: Option<usize>,
    /// Add the English messages themselves as examples of `en` (text = source = msgid).
    #[serde(default = "yes")]
    pub english_pairs: bool,
    /// What the teacher reads in training: "source" (the English msgid: a monolingual
    /// teacher made multilingual, Reimers & Gurevych) or "text" (the translation itself,
    /// as the student does: a multilingual teacher compressed, where layer-wise losses can
    /// compare the two token by token). Retrieval is scored the same way either way.
    #[serde(default)]
    pub teacher_reads: TeacherReads,
    /// Also train on this many *passages* per language: each joins 2 to
    /// `passage_messages` of the language's training messages with a space, its source the
    /// same messages' English joined in the same order. Gettext messages are short; text a
    /// deployment meets (articles, paragraphs) is not, and a student that only saw single
    /// messages handles long inputs worse. Passages reuse the training messages (nothing
    /// from dev or test; a language with fewer than two gets none); dev and test stay
    /// single messages.
    #[serde(default)]
    pub passages_per_language: usize,
    /// The most messages a passage joins (at least 2).
    #[serde(default = "default_passage_messages")]
    pub passage_messages: usize,
    /// Fraction of messages in the dev split.
    #[serde(default = "default_frac")]
    pub dev_fraction: f64,
    /// Fraction of messages in the test split.
    #[serde(default = "default_frac")]
    pub test_fraction: f64,
}

/// Which side of a pair the teacher reads in training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TeacherReads {
    /// The English source.
    #[default]
    Source,
    /// The translation, as the student.
    Text,
}

fn default_languages() -> Languages {
    Languages::Rule("top-40".into())
}
fn default_frac() -> f64 {
    0.1
}
fn yes() -> bool {
    true
}
fn default_passage_messages() -> usize {
    6
}

fn build(mut p: GettextParallelParams, ctx: &BuildCtx) -> Result<Box<dyn Dataset>, Diagnostic> {
    if p.passage_messages < 2 {
        return Err(ctx.error(
            "passage_messages",
            format!("a passage joins at least 2 messages, found {}", p.passage_messages),
        ));
    }
    p.corpus = check_selection(ctx, &p.corpus, &p.languages, &p.merge, p.dev_fraction, p.test_fraction)?;
    Ok(Box::new(p))
}

kdx_framework::register_dataset!(
    "gettext-parallel",
    "parallel (English msgid, translation) pairs over the gettext corpus, for embedding distillation",
    GettextParallelParams,
    build
);

impl Dataset for GettextParallelParams {
    fn input_files(&self) -> Vec<PathBuf> {
        vec![self.corpus.clone()]
    }

    fn load(&self) -> anyhow::Result<Task> {
        // gettext-lid's examples with its English side: the same selection, splits, ids and
        // cap; here the teacher reads each translation's source.
        let selection = Selection {
            corpus: &self.corpus,
            languages: &self.languages,
            merge: &self.merge,
            max_train_per_language: self.max_train_per_language,
            dev_fraction: self.dev_fraction,
            test_fraction: self.test_fraction,
        };
        let clash = "the selection has a locale `en`; the English side is the msgids (deselect it)";
        let (mut task, _) = selection.load(Some(clash), self.english_pairs, false)?;
        task.teacher_reads_source = self.teacher_reads == TeacherReads::Source;
        task.measure = Measure::Retrieval;
        let en = (task.langs.len() - 1) as u32;
        // The teacher is never trained here (a pretrained encoder reads the sources); its
        // own training set, were it given a `train` stage, is the English side.
        task.teacher_train = Some(task.train.iter().filter(|e| e.lang == en).cloned().collect())
            .filter(|v: &Vec<Example>| !v.is_empty());
        let passages = passages(&task, self.passages_per_language, self.passage_messages);
        task.train.extend(passages);
        Ok(task)
    }
}

/// `per_language` passages for each language of the training split: passage `i` joins
/// `2 + i mod (most − 1)` messages (2, 3, …, `most`, 2, …), taken in turn from the
/// language's messages in a fixed pseudo-random order (the stable hash of their ids) that
/// starts over when it runs out, so every message is used about equally often.
fn passages(task: &Task, per_language: usize, most: usize) -> Vec<Example> {
    let mut out = Vec::new();
    if per_language == 0 {
        return out;
    }
    for lang in 0..task.langs.len() as u32 {
        let mut pool: Vec<&Example> = task.train.iter().filter(|e| e.lang == lang).collect();
        if pool.len() < 2 {
            continue;
        }
        pool.sort_by_key(|e| (stable_hash64(format!("passage {}", e.id).as_bytes()), e.id.as_str()));
        let mut next = pool.iter().cycle();
        for i in 0..per_language {
            let parts: Vec<&Example> =
                (0..(2 + i % (most - 1)).min(pool.len())).filter_map(|_| next.next().copied()).collect();
            let join =
                |f: &dyn Fn(&Example) -> &str| parts.iter().map(|e| f(e)).collect::<Vec<_>>().join(" ");
            out.push(Example {
                id: format!("{}:passage:{i}", task.langs[lang as usize]),
                text: join(&|e| e.text.as_str()),
                source: Some(join(&|e| e.source.as_deref().unwrap_or(e.text.as_str()))),
                lang,
                label: lang,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn params(cap: Option<usize>) -> GettextParallelParams {
        GettextParallelParams {
            corpus: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/gettext-corpus.tsv.gz"),
            languages: Languages::List(vec!["fr".into(), "ru".into(), "ja".into()]),
            merge: BTreeMap::new(),
            max_train_per_language: cap,
            english_pairs: true,
            teacher_reads: TeacherReads::Source,
            passages_per_language: 0,
            passage_messages: 6,
            dev_fraction: 0.1,
            test_fraction: 0.1,
        }
    }

    #[test]
    fn pairs_share_their_messages_split_and_english_appears_once_per_message() {
        let task = params(None).load().unwrap();
        assert_eq!(task.langs.len(), 4);
        assert_eq!(task.langs[3], "en");
        assert!(task.teacher_reads_source);
        let en = 3;
        for split in [&task.train, &task.dev, &task.test] {
            let english: BTreeSet<&str> =
                split.iter().filter(|e| e.lang == en).map(|e| e.text.as_str()).collect();
            assert_eq!(english.len(), split.iter().filter(|e| e.lang == en).count(), "each msgid once");
            // Every translation's source is an English example of the same split.
            assert!(split
                .iter()
                .filter(|e| e.lang != en)
                .all(|e| english.contains(e.source.as_deref().unwrap())));
            assert!(split
                .iter()
                .filter(|e| e.lang == en)
                .all(|e| e.source.as_deref() == Some(e.text.as_str())));
        }
    }

    #[test]
    fn the_cap_keeps_the_same_messages_in_every_language() {
        let task = params(Some(50)).load().unwrap();
        let per = |l: u32| task.train.iter().filter(|e| e.lang == l).count();
        assert!((0..4).all(|l| per(l) <= 50) && per(0) == 50, "{:?}", (0..4).map(per).collect::<Vec<_>>());
        // Smallest msgid hashes first: fr and ru keep mostly the same messages.
        let src = |l: u32| {
            task.train
                .iter()
                .filter(|e| e.lang == l)
                .map(|e| e.source.clone().unwrap())
                .collect::<BTreeSet<_>>()
        };
        assert!(src(0).intersection(&src(1)).count() >= 25);
    }

    #[test]
    fn passages_join_training_messages_and_their_sources_in_the_same_order() {
        let plain = params(Some(50)).load().unwrap();
        let task =
            GettextParallelParams { passages_per_language: 30, passage_messages: 4, ..params(Some(50)) }
                .load()
                .unwrap();
        assert_eq!(
            (task.dev.len(), task.test.len()),
            (plain.dev.len(), plain.test.len()),
            "dev and test stay single messages"
        );
        assert_eq!(
            task.train[..plain.train.len()].iter().map(|e| &e.id).collect::<Vec<_>>(),
            plain.train.iter().map(|e| &e.id).collect::<Vec<_>>()
        );
        let added = &task.train[plain.train.len()..];
        assert_eq!(added.len(), 4 * 30, "30 passages for each of fr, ru, ja and en");
        let mut sizes = BTreeSet::new();
        for p in added {
            // The passage splits into 2 to 4 training messages of its language whose
            // sources, joined in the same order, are its source.
            let messages: Vec<&Example> = plain.train.iter().filter(|e| e.lang == p.lang).collect();
            let k = split_into(&p.text, p.source.as_deref().unwrap(), &messages, 4)
                .unwrap_or_else(|| panic!("{}: {:?} is not 2–4 joined training messages", p.id, p.text));
            assert!(k >= 2, "{}: {k} message", p.id);
            sizes.insert(k);
            if task.langs[p.lang as usize] == "en" {
                assert_eq!(p.source.as_deref(), Some(p.text.as_str()));
            }
        }
        assert!(sizes.contains(&2) && sizes.contains(&4), "{sizes:?}");
        let ids: BTreeSet<&str> = task.train.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), task.train.len(), "ids stay unique");
    }

    /// How many of `messages` (at most `most`), joined by spaces, make `text` while their
    /// sources, joined in the same order, make `source`; `None` if no such split exists.
    fn split_into(text: &str, source: &str, messages: &[&Example], most: usize) -> Option<usize> {
        // What follows `part` at the start of `whole`: nothing, or a space and more.
        fn rest<'a>(whole: &'a str, part: &str) -> Option<&'a str> {
            let tail = whole.strip_prefix(part)?;
            if tail.is_empty() {
                Some("")
            } else {
                tail.strip_prefix(' ')
            }
        }
        if text.is_empty() && source.is_empty() {
            return Some(0);
        }
        if most == 0 {
            return None;
        }
        messages.iter().find_map(|m| {
            let src = m.source.as_deref()?;
            let (t, s) = (rest(text, &m.text)?, rest(source, src)?);
            split_into(t, s, messages, most - 1).map(|k| k + 1)
        })
    }
}
