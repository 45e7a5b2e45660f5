//! `gettext-lid`: language identification over the gettext corpus snapshot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
pub use kdx_corpus::select::Languages;
use kdx_corpus::split::{split_of, stable_hash64, Split};
use kdx_framework::dataset::{Dataset, Example, Task};
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::registry::BuildCtx;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Language identification: each translated message is an example whose label is its
/// locale. Splits come from a hash of the English msgid, so all translations of one
/// message share a split (no leakage across languages). Confusable locales (pt/pt_BR/gl,
/// sr/sr@latin/hr/bs, nb/nn/da, zh_CN/zh_TW/zh_HK) make the task hard in the right way.
/// With `english = true` the English msgids become examples of language `en` too (one per
/// distinct msgid of the selected locales, id `en:HASH`), so the identifier also covers
/// the language it meets most often.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GettextLidParams {
    /// The corpus snapshot (`kdx corpus build` output), relative to the recipe.
    pub corpus: PathBuf,
    /// Which locales: "top-N" (the N largest), "min-K" (every locale with ≥ K messages),
    /// "all", or an explicit list of locale codes.
    #[serde(default = "default_languages")]
    pub languages: Languages,
    /// Merge locales before selecting: e.g. { "pt_BR" = "pt", "sr@latin" = "sr" }.
    #[serde(default)]
    pub merge: BTreeMap<String, String>,
    /// Keep at most this many training examples per language for the student (a
    /// low-data setting); dev and test are not capped.
    #[serde(default)]
    pub max_train_per_language: Option<usize>,
    /// Apply `max_train_per_language` to the teacher's pre-training too. By default the
    /// teacher sees the whole training split: the cap models a student short of data
    /// learning from a teacher that was not.
    #[serde(default)]
    pub cap_teacher: bool,
    /// Add the English side: every distinct msgid of the selected locales is an example of
    /// `en` (split with its translations; capped like any language).
    #[serde(default)]
    pub english: bool,
    /// Fraction of messages in the dev split.
    #[serde(default = "default_frac")]
    pub dev_fraction: f64,
    /// Fraction of messages in the test split.
    #[serde(default = "default_frac")]
    pub test_fraction: f64,
}

fn default_languages() -> Languages {
    Languages::Rule("top-40".into())
}
fn default_frac() -> f64 {
    0.1
}

fn build(mut p: GettextLidParams, ctx: &BuildCtx) -> Result<Box<dyn Dataset>, Diagnostic> {
    p.corpus = check_selection(ctx, &p.corpus, &p.languages, &p.merge, p.dev_fraction, p.test_fraction)?;
    Ok(Box::new(p))
}

/// The plan-time checks of a dataset over the corpus's translations (this one and
/// `gettext-parallel`): the language rule, the held-out fractions, the corpus file (returned
/// resolved) and the selection against the snapshot's locales.
pub(crate) fn check_selection(
    ctx: &BuildCtx,
    corpus: &Path,
    languages: &Languages,
    merge: &BTreeMap<String, String>,
    dev_fraction: f64,
    test_fraction: f64,
) -> Result<PathBuf, Diagnostic> {
    languages.check().map_err(|e| ctx.error("languages", e))?;
    ctx.held_out_fractions(dev_fraction, test_fraction)?;
    let corpus =
        ctx.existing_file("corpus", corpus, "corpus file", " (build one with `kdx corpus build`)")?;
    languages.check_in_snapshot(&corpus, merge).map_err(|e| ctx.error("languages", e))?;
    Ok(corpus)
}

kdx_framework::register_dataset!(
    "gettext-lid",
    "language identification over the gettext corpus (label = locale)",
    GettextLidParams,
    build
);

impl GettextLidParams {
    fn selection(&self) -> Selection<'_> {
        Selection {
            corpus: &self.corpus,
            languages: &self.languages,
            merge: &self.merge,
            max_train_per_language: self.max_train_per_language,
            dev_fraction: self.dev_fraction,
            test_fraction: self.test_fraction,
        }
    }
}

/// The corpus's translations in the selected (merged) locales, as examples labelled with
/// their locale: what `gettext-lid` and `gettext-parallel` both read.
pub(crate) struct Selection<'a> {
    pub corpus: &'a Path,
    pub languages: &'a Languages,
    pub merge: &'a BTreeMap<String, String>,
    pub max_train_per_language: Option<usize>,
    pub dev_fraction: f64,
    pub test_fraction: f64,
}

impl Selection<'_> {
    /// The task: one example per translation (text = translation, source = msgid), split
    /// by the msgid's hash, the training split capped per language to the messages with the
    /// smallest msgid hash (the same messages in every language, so a capped corpus stays
    /// parallel). `english_lang` appends `en` to the languages, an error with this message
    /// when the selection already has it; `english_examples` makes every distinct msgid an
    /// example of `en` (text = source = msgid, id `en:HASH`), split and capped with its
    /// translations. With `keep_uncapped`, also returns the training split before the cap.
    pub fn load(
        &self,
        english_lang: Option<&str>,
        english_examples: bool,
        keep_uncapped: bool,
    ) -> anyhow::Result<(Task, Option<Vec<Example>>)> {
        let corpus = kdx_corpus::load::load(self.corpus)
            .with_context(|| format!("loading {}", self.corpus.display()))?;
        let locale = |l: &str| self.merge.get(l).cloned().unwrap_or_else(|| l.to_string());
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in &corpus.rows {
            *counts.entry(locale(&r.locale)).or_default() += 1;
        }
        let mut langs = self.languages.select(&counts, &self.corpus.display().to_string())?;
        let selected = langs.len();
        if let Some(clash) = english_lang {
            anyhow::ensure!(!langs.iter().any(|l| l == ENGLISH), "{clash}");
            langs.push(ENGLISH.to_string());
        }
        let en = selected as u32;
        let index: BTreeMap<&str, u32> =
            langs[..selected].iter().enumerate().map(|(i, l)| (l.as_str(), i as u32)).collect();
        let mut task = Task { labels: langs.clone(), langs: langs.clone(), ..Default::default() };
        let mut train_by_lang: Vec<Vec<(u64, Example)>> = vec![Vec::new(); langs.len()];
        let mut english = std::collections::BTreeSet::new();
        for (row, r) in corpus.rows.iter().enumerate() {
            let Some(&li) = index.get(locale(&r.locale).as_str()) else { continue };
            let h = stable_hash64(r.msgid.as_bytes());
            let mut examples = vec![Example {
                id: kdx_corpus::load::row_id(r, row),
                text: r.text.clone(),
                source: Some(r.msgid.clone()),
                lang: li,
                label: li,
            }];
            if english_examples && english.insert(r.msgid.as_str()) {
                examples.push(Example {
                    id: format!("{ENGLISH}:{h:016x}"),
                    text: r.msgid.clone(),
                    source: Some(r.msgid.clone()),
                    lang: en,
                    label: en,
                });
            }
            for e in examples {
                match split_of(&r.msgid, self.dev_fraction, self.test_fraction) {
                    Split::Train => train_by_lang[e.lang as usize].push((h, e)),
                    Split::Dev => task.dev.push(e),
                    Split::Test => task.test.push(e),
                }
            }
        }
        let mut uncapped = keep_uncapped.then(Vec::new);
        for mut v in train_by_lang {
            if let Some(full) = &mut uncapped {
                full.extend(v.iter().map(|(_, e)| e.clone()));
            }
            if let Some(cap) = self.max_train_per_language {
                v.sort_by_key(|(h, _)| *h);
                v.truncate(cap);
            }
            task.train.extend(v.into_iter().map(|(_, e)| e));
        }
        Ok((task, uncapped))
    }
}

impl Dataset for GettextLidParams {
    fn input_files(&self) -> Vec<PathBuf> {
        vec![self.corpus.clone()]
    }

    fn load(&self) -> anyhow::Result<Task> {
        let english = self.english.then_some(
            "english = true adds `en`, and the selection already has a locale `en` (merge or deselect it)",
        );
        let keep_uncapped = self.max_train_per_language.is_some() && !self.cap_teacher;
        let (task, uncapped) = self.selection().load(english, self.english, keep_uncapped)?;
        Ok(Task { teacher_train: uncapped, ..task })
    }
}

/// The language code of the English side (the msgids).
const ENGLISH: &str = "en";

#[cfg(test)]
mod tests {
    use super::*;

    fn params(english: bool) -> GettextLidParams {
        let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/gettext-corpus.tsv.gz");
        GettextLidParams {
            corpus,
            languages: Languages::List(vec!["fr".into(), "de".into()]),
            merge: BTreeMap::new(),
            max_train_per_language: None,
            cap_teacher: false,
            english,
            dev_fraction: 0.1,
            test_fraction: 0.1,
        }
    }

    #[test]
    fn english_adds_each_msgid_once_in_the_split_of_its_translations() {
        let plain = params(false).load().unwrap();
        let task = params(true).load().unwrap();
        assert_eq!(task.langs.last().map(String::as_str), Some("en"));
        assert_eq!(task.langs.len(), plain.langs.len() + 1);
        let en = (task.langs.len() - 1) as u32;
        let all: Vec<&Example> = task.train.iter().chain(&task.dev).chain(&task.test).collect();
        let english: Vec<&&Example> = all.iter().filter(|e| e.lang == en).collect();
        let msgids: std::collections::BTreeSet<&str> = plain
            .train
            .iter()
            .chain(&plain.dev)
            .chain(&plain.test)
            .filter_map(|e| e.source.as_deref())
            .collect();
        assert_eq!(english.len(), msgids.len(), "one English example per distinct msgid");
        assert!(english.iter().all(|e| Some(e.text.as_str()) == e.source.as_deref()
            && e.label == en
            && e.id.starts_with("en:")));
        // Every translation keeps its example; a message and its translations share a split.
        assert_eq!(all.len(), plain.train.len() + plain.dev.len() + plain.test.len() + english.len());
        let test_en: std::collections::BTreeSet<&str> =
            task.test.iter().filter(|e| e.lang == en).map(|e| e.text.as_str()).collect();
        assert!(task
            .test
            .iter()
            .filter(|e| e.lang != en)
            .all(|e| test_en.contains(e.source.as_deref().unwrap())));
    }
}
