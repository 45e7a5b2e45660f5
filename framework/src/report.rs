//! The CSV reports of a run (schemas in ARCHITECTURE.md), written atomically.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use kdx_fsio::write_atomic;

use crate::event::RunStatus;

/// A row of `metrics.csv`: one language (or `macro`) on one split at one step of one stage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetricRow {
    /// Steps done in the stage.
    pub step: u64,
    /// `teacher`, `distill`, `baseline` or `finetune`.
    pub stage: String,
    /// `dev` or `test`.
    pub split: String,
    /// Language code, or `macro` for the unweighted mean over languages.
    pub lang: String,
    /// Examples evaluated.
    pub examples: usize,
    /// Mean cross-entropy against the gold labels.
    pub loss: f64,
    /// Accuracy of the stage's model.
    pub acc: f64,
    /// Accuracy of the teacher on the same examples (empty in the teacher stage).
    pub teacher_acc: Option<f64>,
    /// Fraction of examples where the model's argmax equals the teacher's.
    pub agreement: Option<f64>,
    /// Mean KL(teacher ‖ model) at temperature 1.
    pub kl: Option<f64>,
    /// Per-language loss gate (1 = distilling, 0 = not), for losses that gate languages.
    pub gate: Option<f64>,
    /// What the losses report beyond the gate, by column name: `loss.<term>` (a term's mean
    /// training value since the previous evaluation, on the `macro` row) and `<term>.<name>`
    /// (a named per-language value; its mean on the `macro` row). In `metrics.csv` these are
    /// columns after `gate`, in name order ([`write_metrics`]); a run without them has none.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub values: std::collections::BTreeMap<String, f64>,
}

/// Writes `metrics.csv`: the fixed columns of [`MetricRow`], then one column per name in any
/// row's [`MetricRow::values`] (sorted; empty where a row has no such value).
pub fn write_metrics(path: &Path, rows: &[MetricRow]) -> Result<()> {
    write_atomic(path, &metrics_bytes(rows)?)
}

/// A number as the fixed columns write it (serde's float format, e.g. `1.0`).
fn csv_cell(v: f64) -> Result<String> {
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    w.serialize(v)?;
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).trim_end().to_string())
}

/// [`write_metrics`]'s text.
pub fn metrics_bytes(rows: &[MetricRow]) -> Result<Vec<u8>> {
    let names: std::collections::BTreeSet<&String> = rows.iter().flat_map(|r| r.values.keys()).collect();
    if names.is_empty() {
        return csv_bytes(rows);
    }
    // The fixed columns as serde writes them (the values map is skipped once emptied), then
    // the named ones appended to each record.
    let fixed: Vec<MetricRow> =
        rows.iter().map(|r| MetricRow { values: Default::default(), ..r.clone() }).collect();
    let text = csv_bytes(&fixed)?;
    let mut reader = csv::Reader::from_reader(&text[..]);
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = reader.headers()?.clone();
    names.iter().for_each(|n| header.push_field(n));
    w.write_record(&header)?;
    for (record, row) in reader.records().zip(rows) {
        let mut record = record?;
        for n in &names {
            record.push_field(&row.values.get(*n).map(|&v| csv_cell(v)).transpose()?.unwrap_or_default());
        }
        w.write_record(&record)?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))
}

/// A row of `languages.csv`: the final per-language table on the test split.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LanguageRow {
    /// Language code.
    pub lang: String,
    /// Training examples of the language.
    pub train_size: usize,
    /// Test examples.
    pub test_size: usize,
    /// Examples the sampler drew during distillation.
    pub sampled: u64,
    /// Teacher accuracy.
    pub teacher_acc: f64,
    /// Distilled student accuracy (after fine-tuning, when there is a fine-tuning stage).
    pub student_acc: f64,
    /// Accuracy of the same student trained without a teacher (empty without a baseline).
    pub baseline_acc: Option<f64>,
    /// student_acc − baseline_acc.
    pub kd_gain: Option<f64>,
    /// Agreement of the student with the teacher.
    pub agreement: f64,
}

/// The single row of `run.csv`. A figure the run did not get to (a failed run's
/// accuracies, a precomputed teacher's speed) is `NaN` here and an empty cell in the file, so
/// that aggregations never count it as 0.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunRow {
    /// Experiment name.
    pub experiment: String,
    /// Run name.
    pub run: String,
    /// Recipe path.
    pub recipe: String,
    /// Hash of the resolved recipe.
    pub hash: String,
    /// How the run ended.
    pub status: RunStatus,
    /// The error, when failed.
    pub error: String,
    /// Teacher parameters.
    pub teacher_params: usize,
    /// Student parameters.
    pub student_params: usize,
    /// teacher_params / student_params.
    pub compression: f64,
    /// Teacher inference speed, texts/s on one thread (featurisation included).
    #[serde(with = "kdx_sdk::abi::nan_as_null")]
    pub teacher_texts_per_s: f64,
    /// Student inference speed, texts/s on one thread (featurisation included).
    #[serde(with = "kdx_sdk::abi::nan_as_null")]
    pub student_texts_per_s: f64,
    /// Teacher macro accuracy (test).
    #[serde(with = "kdx_sdk::abi::nan_as_null")]
    pub teacher_macro_acc: f64,
    /// Student macro accuracy (test).
    #[serde(with = "kdx_sdk::abi::nan_as_null")]
    pub student_macro_acc: f64,
    /// Baseline macro accuracy (test).
    pub baseline_macro_acc: Option<f64>,
    /// Student minus baseline macro accuracy.
    pub kd_gain: Option<f64>,
    /// Student macro accuracy / teacher macro accuracy.
    #[serde(with = "kdx_sdk::abi::nan_as_null")]
    pub retention: f64,
    /// Language where the student is worst.
    pub worst_lang: String,
    /// The student's accuracy there.
    #[serde(with = "kdx_sdk::abi::nan_as_null")]
    pub worst_acc: f64,
    /// Whether the teacher came from the cache.
    pub teacher_cached: bool,
    /// Wall time of the run, seconds.
    pub wall_s: f64,
    /// Training examples per second over the distillation stage.
    #[serde(with = "kdx_sdk::abi::nan_as_null")]
    pub train_examples_per_s: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mb: f64,
    /// The student's token vocabulary (a pruned one's kept pieces; empty for hashed
    /// features).
    #[serde(default)]
    pub student_vocabulary: Option<usize>,
    /// The share of the student's tokens of the test text that are its unknown token
    /// (empty without a vocabulary).
    #[serde(default)]
    pub student_unknown_rate: Option<f64>,
    /// Warnings about the results, `;`-separated: `teacher-at-chance`, `student-at-chance`
    /// (macro accuracy on test less than 5% of the way from chance, 1/classes, to 1).
    #[serde(default)]
    pub flags: String,
}

impl RunRow {
    /// A row whose figures are all missing (`NaN`): what a run that fails before its end reports.
    pub fn not_run() -> RunRow {
        let nan = f64::NAN;
        RunRow {
            teacher_texts_per_s: nan,
            student_texts_per_s: nan,
            teacher_macro_acc: nan,
            student_macro_acc: nan,
            retention: nan,
            worst_acc: nan,
            train_examples_per_s: nan,
            ..RunRow::default()
        }
    }

    /// "T → S params, R×", or "teacher outputs from a file → S params" for a teacher
    /// without weights (`logits-file`).
    pub fn sizes(&self) -> String {
        if self.teacher_params == 0 {
            format!("teacher outputs from a file → {} params", self.student_params)
        } else {
            format!("{} → {} params, {:.1}×", self.teacher_params, self.student_params, self.compression)
        }
    }
}

/// Serialises rows as CSV (with a header) and writes them atomically.
pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    write_atomic(path, &csv_bytes(rows)?)
}

/// Rows as CSV text with a header.
pub fn csv_bytes<T: Serialize>(rows: &[T]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))
}

/// Reads rows written by [`write_csv`].
pub fn read_csv<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let mut r = csv::Reader::from_path(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    r.deserialize().map(|x| x.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))).collect()
}

/// Peak resident set size of this process in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(lang: &str, values: &[(&str, f64)]) -> MetricRow {
        MetricRow {
            step: 10,
            stage: "distill".into(),
            split: "dev".into(),
            lang: lang.into(),
            examples: 4,
            loss: 0.5,
            acc: 1.0,
            teacher_acc: None,
            agreement: None,
            kl: Some(0.25),
            gate: None,
            values: values.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
        }
    }

    #[test]
    fn metrics_gain_a_column_per_named_value_and_read_back_without_them() {
        let plain = [row("de", &[]), row("macro", &[])];
        assert_eq!(metrics_bytes(&plain).unwrap(), csv_bytes(&plain).unwrap(), "no values, no new column");
        let rows = [row("de", &[("x.gate", 0.5)]), row("macro", &[("x.gate", 0.5), ("loss.x", 2.0)])];
        let text = String::from_utf8(metrics_bytes(&rows).unwrap()).unwrap();
        assert_eq!(
            text,
            "step,stage,split,lang,examples,loss,acc,teacher_acc,agreement,kl,gate,loss.x,x.gate\n\
             10,distill,dev,de,4,0.5,1.0,,,0.25,,,0.5\n\
             10,distill,dev,macro,4,0.5,1.0,,,0.25,,2.0,0.5\n"
        );
        // Readers of the fixed columns (plots, comparisons) read it as before.
        let back: Vec<MetricRow> =
            csv::Reader::from_reader(text.as_bytes()).deserialize().collect::<Result<_, _>>().unwrap();
        assert_eq!(back, plain);
        // The checkpoint keeps the values (JSON), and a row without them writes none.
        let json = serde_json::to_string(&rows[1]).unwrap();
        assert_eq!(serde_json::from_str::<MetricRow>(&json).unwrap(), rows[1]);
        assert!(!serde_json::to_string(&plain[0]).unwrap().contains("values"));
    }
}
