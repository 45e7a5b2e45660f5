//! The end of a run: test evaluation, the CSV reports, retrieval, speed, exported models.

use std::path::Path;

use anyhow::Result;

use super::metrics::{metric_rows, predict, texts_per_second};
use super::monitor::Monitor;
use super::teacher::Teacher;
use super::train::LoopState;
use super::{Finetuned, Inputs};
use crate::dataset::Task;
use crate::features::Bags;
use crate::model::{Model, Outputs};
use crate::plan::Plan;
use crate::report::{write_csv, LanguageRow, MetricRow, RunRow};
use crate::retrieval::{retrieval_rows, RetrievalRow};

/// Everything the stages produced.
pub(super) struct Finished<'a> {
    pub plan: &'a Plan,
    pub task: &'a Task,
    pub dir: &'a Path,
    pub teacher: &'a Teacher,
    /// The teacher's test logits and its featurisation of the test split.
    pub t_test: &'a [f32],
    pub t_test_inputs: &'a Inputs,
    pub student: &'a dyn Model,
    /// The student's featurisation of the test split.
    pub s_test: &'a Inputs,
    pub baseline: Option<&'a dyn Model>,
    /// The distillation stage's final loop state.
    pub distilled: &'a LoopState,
    pub finetuned: Finetuned,
}

/// Scores teacher, student and baseline on test and writes `metrics.csv`, `sampling.csv`,
/// `languages.csv`, `retrieval.csv` (cross-lingual runs with an embedding loss), the run
/// row's figures and the exported models.
pub(super) fn finish(f: Finished, row: &mut RunRow, monitor: &mut Monitor) -> Result<()> {
    let Finished { plan, task, dir, teacher, t_test, t_test_inputs, student, s_test, baseline, distilled, mut finetuned } = f;
    let classes = task.labels.len();
    // The student's test outputs: logits for the metrics, hidden states for retrieval.
    let s_out = predict(student, &s_test.bags)?;
    let b_logits = match baseline {
        Some(b) => Some(predict(b, &s_test.bags)?.logits),
        None => None,
    };
    let final_step = plan.train.steps;
    let in_macro = monitor.in_macro.clone();
    let teacher_rows = metric_rows("teacher", "test", final_step, t_test, classes, t_test_inputs, None, &task.langs, &in_macro);
    let final_stage = if plan.finetune.is_some() { "finetune" } else { "distill" };
    let student_step = plan.finetune.as_ref().map_or(final_step, |f| f.steps);
    let student_rows = metric_rows(final_stage, "test", student_step, &s_out.logits, classes, s_test, Some(t_test), &task.langs, &in_macro);
    monitor.metrics.extend(teacher_rows.iter().cloned());
    monitor.metrics.append(&mut finetuned.distilled_test_rows);
    monitor.metrics.extend(student_rows.iter().cloned());
    let baseline_rows =
        b_logits.as_ref().map(|b| metric_rows("baseline", "test", final_step, b, classes, s_test, Some(t_test), &task.langs, &in_macro));
    if let Some(r) = &baseline_rows {
        monitor.metrics.extend(r.iter().cloned());
    }
    write_csv(&dir.join("metrics.csv"), &monitor.metrics)?;
    let mut sampling = distilled.sampling.clone();
    sampling.extend(finetuned.sampling);
    write_csv(&dir.join("sampling.csv"), &sampling)?;

    let sizes = task.train_sizes();
    let mut lang_rows = Vec::new();
    for (l, name) in task.langs.iter().enumerate() {
        let t = &teacher_rows[l];
        let s = &student_rows[l];
        let b = baseline_rows.as_ref().map(|r| r[l].acc);
        lang_rows.push(LanguageRow {
            lang: name.clone(),
            train_size: sizes[l],
            test_size: s.examples,
            sampled: distilled.stats[l].drawn,
            teacher_acc: t.acc,
            student_acc: s.acc,
            baseline_acc: b,
            kd_gain: b.map(|b| s.acc - b),
            agreement: s.agreement.unwrap_or(f64::NAN),
        });
    }
    write_csv(&dir.join("languages.csv"), &lang_rows)?;
    if let Some(rows) = translation_retrieval(plan, teacher, &s_out, task, s_test, &in_macro)? {
        if let Some(m) = rows.last() {
            monitor.note(format!(
                "translation retrieval among {} English sources: student {:.4}, teacher reading the translation {:.4} (chance {:.4})",
                m.candidates, m.student_acc, m.teacher_acc, m.chance
            ));
        }
        write_csv(&dir.join("retrieval.csv"), &rows)?;
    }

    let macro_of = |rows: &[MetricRow]| rows.last().map_or(f64::NAN, |r| r.acc);
    row.teacher_macro_acc = macro_of(&teacher_rows);
    row.student_macro_acc = macro_of(&student_rows);
    row.baseline_macro_acc = baseline_rows.as_deref().map(macro_of);
    row.kd_gain = row.baseline_macro_acc.map(|b| row.student_macro_acc - b);
    row.retention = row.student_macro_acc / row.teacher_macro_acc;
    let chance = 1.0 / classes.max(1) as f64;
    let at_chance = |acc: f64| acc < chance + 0.05 * (1.0 - chance);
    let mut flags = Vec::new();
    for (who, acc) in [("teacher", row.teacher_macro_acc), ("student", row.student_macro_acc)] {
        if at_chance(acc) {
            flags.push(format!("{who}-at-chance"));
            monitor.note(format!("warning: the {who} is at chance: macro accuracy {acc:.4} with {classes} classes (chance {chance:.4})"));
        }
    }
    row.flags = flags.join(";");
    if let Some(w) = lang_rows
        .iter()
        .zip(&in_macro)
        .filter(|(r, &m)| m && r.test_size > 0)
        .map(|(r, _)| r)
        .min_by(|a, b| a.student_acc.total_cmp(&b.student_acc))
    {
        row.worst_lang = w.lang.clone();
        row.worst_acc = w.student_acc;
    }
    let sample = &task.test[..task.test.len().min(2000)];
    row.teacher_texts_per_s = match teacher.network() {
        Some(t) => texts_per_second(t, sample, task.teacher_reads_source)?,
        None => f64::NAN,
    };
    row.student_texts_per_s = texts_per_second(student, sample, false)?;

    crate::export::export(student, &plan.student.plugin, &plan.student.section, task, &dir.join("student"))?;
    if let Some(t) = teacher.network() {
        crate::export::export(t, &plan.teacher.plugin, &plan.teacher.section, task, &dir.join("teacher"))?;
    }
    monitor.note(format!(
        "done: teacher {:.4}, student {:.4}{} macro accuracy on test; {}",
        row.teacher_macro_acc,
        row.student_macro_acc,
        row.baseline_macro_acc.map_or(String::new(), |b| format!(", baseline {b:.4}")),
        row.sizes()
    ));
    Ok(())
}

/// Translation retrieval on the test split (`retrieval.csv`), for cross-lingual tasks (the
/// teacher reads sources) where a loss maps the student's hidden space into the teacher's
/// (`hidden-mse`, `cosine-embedding`): each translation's nearest neighbour among all
/// distinct English sources of the split, per language the student trains on.
/// `student_out` is the student's output on the test split (`s_test`).
fn translation_retrieval(
    plan: &Plan,
    teacher: &Teacher,
    student_out: &Outputs,
    task: &Task,
    s_test: &Inputs,
    in_macro: &[bool],
) -> Result<Option<Vec<RetrievalRow>>> {
    let Some(teacher) = teacher.network().filter(|t| task.teacher_reads_source && !task.test.is_empty() && t.hidden_dim() > 0) else {
        return Ok(None);
    };
    let Some(queries) = plan.losses.iter().find_map(|l| l.loss.embed(&student_out.hidden, student_out.batch, student_out.hidden_dim))
    else {
        return Ok(None);
    };
    let d = teacher.hidden_dim();
    anyhow::ensure!(
        queries.len() == student_out.batch * d,
        "the loss's projection maps to width {}, the teacher's is {d}",
        queries.len() / student_out.batch.max(1)
    );
    // Distinct sources, in first-seen order; each query's gold is its own source's row.
    let mut row_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut sources: Vec<&str> = Vec::new();
    let gold: Vec<usize> = task
        .test
        .iter()
        .map(|e| {
            let src = e.source.as_deref().unwrap_or(&e.text);
            *row_of.entry(src).or_insert_with(|| {
                sources.push(src);
                sources.len() - 1
            })
        })
        .collect();
    let featurise = |texts: Vec<&str>, langs: Vec<u32>| {
        let mut b = Bags::build(teacher.featurizer(), texts);
        b.langs = langs;
        b
    };
    let en = task.test.iter().find(|e| e.source.as_deref() == Some(e.text.as_str())).map_or(0, |e| e.lang);
    let keys = predict(teacher, &featurise(sources.clone(), vec![en; sources.len()]))?.hidden;
    let texts: Vec<&str> = task.test.iter().map(|e| e.text.as_str()).collect();
    let direct = predict(teacher, &featurise(texts, s_test.langs.clone()))?.hidden;
    Ok(Some(retrieval_rows(&queries, &direct, &keys, d, &gold, &s_test.langs, &task.langs, in_macro)))
}
