//! The dataset plugin kind and the task it produces.
//!
//! A dataset plugin turns its parameters into a [`Task`]: texts with a language and a label,
//! split into train/dev/test, and for cross-lingual tasks the source text the teacher reads.

/// One labelled example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// A stable identifier, unique within the task's train, dev and test splits: outputs
    /// computed outside kdx (the `logits-file` teacher) are matched to examples by it.
    /// `kdx examples RECIPE` lists the ids of a recipe's data. Each dataset documents its
    /// scheme.
    pub id: String,
    /// The text the student reads.
    pub text: String,
    /// The parallel source text the teacher reads (cross-lingual distillation), if any.
    pub source: Option<String>,
    /// Index into [`Task::langs`].
    pub lang: u32,
    /// Index into [`Task::labels`].
    pub label: u32,
}

/// A loaded task, ready for featurisation.
#[derive(Clone, Debug, Default)]
pub struct Task {
    /// Class names, indexed by [`Example::label`].
    pub labels: Vec<String>,
    /// Language codes, indexed by [`Example::lang`].
    pub langs: Vec<String>,
    /// Training examples (what the sampler draws from).
    pub train: Vec<Example>,
    /// Development examples (periodic evaluation).
    pub dev: Vec<Example>,
    /// Test examples (final evaluation).
    pub test: Vec<Example>,
    /// Examples the teacher is pre-trained on, where they differ from `train`
    /// (cross-lingual tasks: English sources only). `None` means `train`. The teacher reads
    /// their `text` (not `source`) in pre-training.
    pub teacher_train: Option<Vec<Example>>,
    /// The teacher reads [`Example::source`] rather than [`Example::text`]; the student
    /// learns only from the teacher's outputs (no target-language labels reach it).
    pub teacher_reads_source: bool,
    /// What the reports' accuracy columns measure.
    pub measure: Measure,
}

/// What a task is scored by: the accuracy columns of `languages.csv` and `run.csv` (and,
/// in events, `accuracy` or `retrieval`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    /// Classification accuracy of the model's labels.
    #[default]
    #[serde(rename = "accuracy")]
    Classification,
    /// Translation → English retrieval accuracy@1 of the model's sentence embeddings, for
    /// parallel data whose labels only name each pair's language (`retrieval.csv` has both
    /// directions and the reference rows). Needs a loss that relates the student's space to
    /// the teacher's; without one the reports fall back to classification.
    Retrieval,
}

impl Task {
    /// Whether the test examples are translations with their English sources, so
    /// `retrieval.csv` can score translation retrieval: the teacher reads the sources
    /// (cross-lingual distillation), or the task is measured by retrieval (parallel data,
    /// whichever side the teacher reads).
    pub fn is_parallel(&self) -> bool {
        self.teacher_reads_source || self.measure == Measure::Retrieval
    }

    /// Checks the invariants the engine relies on; returns a message naming what is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.labels.len() < 2 {
            return Err(anyhow::anyhow!(
                "the task has {} class(es); at least 2 are needed",
                self.labels.len()
            ));
        }
        for (split, xs) in [("train", &self.train), ("dev", &self.dev), ("test", &self.test)] {
            if xs.is_empty() {
                return Err(anyhow::anyhow!(
                    "the {split} split is empty: every split needs examples (for the dev and test splits, \
                     a file of their own or a larger fraction of the data)"
                ));
            }
        }
        if self.teacher_train.as_ref().is_some_and(Vec::is_empty) {
            return Err(anyhow::anyhow!("the teacher's training set is empty"));
        }
        let teacher_train = self.teacher_train.as_deref().unwrap_or(&[]);
        let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        for (split, xs) in [("train", &self.train[..]), ("dev", &self.dev[..]), ("test", &self.test[..])] {
            for e in xs {
                if let Some(first) = seen.insert(&e.id, split) {
                    return Err(anyhow::anyhow!(
                        "example id `{}` appears twice (in {first} and in {split}); ids must be unique",
                        e.id
                    ));
                }
            }
        }
        for (split, xs) in [
            ("train", &self.train[..]),
            ("dev", &self.dev[..]),
            ("test", &self.test[..]),
            ("teacher-train", teacher_train),
        ] {
            for (i, e) in xs.iter().enumerate() {
                if e.lang as usize >= self.langs.len() || e.label as usize >= self.labels.len() {
                    return Err(anyhow::anyhow!("{split} example {i} has an out-of-range language or label"));
                }
                if self.teacher_reads_source && split != "teacher-train" && e.source.is_none() {
                    return Err(anyhow::anyhow!(
                        "{split} example {i} has no source text, but the teacher reads sources"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Number of training examples per language.
    pub fn train_sizes(&self) -> Vec<usize> {
        let mut n = vec![0; self.langs.len()];
        for e in &self.train {
            n[e.lang as usize] += 1;
        }
        n
    }
}

/// A dataset plugin instance (built from its parameters at plan time; loads at run time).
pub trait Dataset: Send + Sync {
    /// Loads the task. May be slow (reads files); called once per run.
    fn load(&self) -> anyhow::Result<Task>;
    /// The files [`Dataset::load`] reads. The framework fingerprints the dataset from its
    /// `[data]` section and these files' content ([`fingerprint`]): the cache key of
    /// teacher artefacts and features, which must change whenever the loaded task would.
    fn input_files(&self) -> Vec<std::path::PathBuf>;
}

/// The fingerprint of a dataset: its `[data]` section as resolved (every parameter that
/// shapes the task) and the content of each file it reads, in order. One function for every
/// dataset plugin, so none can forget a parameter.
pub fn fingerprint(section: &toml::Value, files: &[std::path::PathBuf]) -> anyhow::Result<String> {
    let mut parts = vec![section.to_string()];
    for f in files {
        parts.push(format!("{}={}", f.display(), file_fingerprint(f)?));
    }
    Ok(kdx_fsio::sha256_hex(parts.join("\0").as_bytes()))
}

/// SHA-256 (hex) of a file's content: the data part of a dataset's [`fingerprint`].
///
/// Remembered per process by (path, length, modification time): `kdx batch` asks for the
/// fingerprint of every run of a sweep, and they share one corpus file.
pub fn file_fingerprint(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Key = (std::path::PathBuf, u64, Option<std::time::SystemTime>);
    static SEEN: Mutex<Option<HashMap<Key, String>>> = Mutex::new(None);
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(h) = SEEN.lock().ok().and_then(|m| m.as_ref().and_then(|m| m.get(&key).cloned())) {
        return Ok(h);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let h = kdx_fsio::sha256_hex(&bytes);
    if let Ok(mut m) = SEEN.lock() {
        m.get_or_insert_with(HashMap::new).insert(key, h.clone());
    }
    Ok(h)
}
