//! The end of a run: test evaluation, the CSV reports, retrieval, speed, exported models.

use std::path::Path;

use anyhow::{Context, Result};

use super::inputs::Inputs;
use super::metrics::{metric_rows, texts_per_second};
use super::monitor::Monitor;
use super::teacher::Teacher;
use super::train::{LoopState, SamplingRow};
use crate::dataset::{Measure, Task};
use crate::embedding::Embedder;
use crate::infer::predict;
use crate::model::Model;
use crate::plan::{EvalSet, Plan, TEST_SET};
use crate::report::{write_csv, write_metrics, LanguageRow, MetricRow, RunRow};
use crate::retrieval::{
    distinct_texts, gather, language_sets, macro_row, mean_cosine, ParallelSet, RetrievalRow,
};

/// What fine-tuning leaves for the reports.
#[derive(Default)]
pub(super) struct Finetuned {
    /// Its rows of `sampling.csv`.
    pub(super) sampling: Vec<SamplingRow>,
    /// The student's test rows before fine-tuning (stage `distill`).
    pub(super) distilled_test_rows: Vec<MetricRow>,
}

/// Everything the stages produced.
pub(super) struct Finished<'a> {
    pub plan: &'a Plan,
    /// The run's losses after training (a learned projection maps the student's vectors).
    pub losses: &'a [crate::plan::LossInstance],
    pub task: &'a Task,
    pub dir: &'a Path,
    pub teacher: &'a Teacher,
    /// The teacher's cache directory (its embeddings of the test split are kept there).
    pub teacher_cache: &'a Path,
    /// The teacher's test logits and its featurisation of the test split.
    pub t_test: &'a [f32],
    pub t_test_inputs: &'a Inputs,
    pub student: &'a dyn Model,
    /// The student's featurisation of the test split.
    pub s_test: &'a Inputs,
    pub baseline: Option<&'a dyn Model>,
    /// The student as built, before any training: the reference row of translation
    /// retrieval (parallel-data tasks only).
    pub untrained: Option<&'a dyn Model>,
    /// The distillation stage's final loop state.
    pub distilled: &'a LoopState,
    pub finetuned: Finetuned,
}

/// Scores teacher, student and baseline on test and writes `metrics.csv`, `sampling.csv`,
/// `languages.csv`, `retrieval.csv` (parallel-data runs with an embedding loss), the run
/// row's figures and the exported models. In a parallel-data run with retrieval, the
/// accuracies of `languages.csv` and `run.csv` are translation → English retrieval
/// accuracy@1, the task's own measure: teacher = the teacher reading the translations,
/// student = the distilled student, baseline = the untrained student, agreement = the
/// student's cosine to the teacher on English.
pub(super) fn finish(f: Finished, row: &mut RunRow, monitor: &mut Monitor) -> Result<()> {
    let rows = test_rows(&f, monitor)?;
    write_metrics(&f.dir.join("metrics.csv"), &monitor.report.metrics)?;
    let mut sampling = f.distilled.sampling.clone();
    sampling.extend(f.finetuned.sampling.iter().cloned());
    write_csv(&f.dir.join("sampling.csv"), &sampling)?;
    let projection = f.losses.iter().find_map(|l| l.loss.projection());
    let retrieval = retrieval_report(&f, projection, monitor)?;
    let scored = retrieval.as_ref().filter(|_| f.task.measure == Measure::Retrieval);
    let lang_rows = match scored {
        Some(r) => retrieval_languages(r, f.task, f.distilled),
        None => classification_languages(&f, &rows),
    };
    write_csv(&f.dir.join("languages.csv"), &lang_rows)?;
    summarize(&f, &rows, scored.map(Vec::as_slice), &lang_rows, row, monitor);
    let sample = &f.task.test[..f.task.test.len().min(2000)];
    row.teacher_texts_per_s = match f.teacher.network() {
        Some(t) => texts_per_second(t, sample, f.task.teacher_reads_source)?,
        None => f64::NAN,
    };
    row.student_texts_per_s = texts_per_second(f.student, sample, false)?;
    if let Some(v) = f.student.featurizer().vocabulary() {
        row.student_vocabulary = Some(v.size);
        row.student_unknown_rate = Some(v.unknown_rate(&f.s_test.bags));
    }
    crate::export::export(f.student, &f.plan.student, f.task, &f.dir.join("student"), projection)?;
    if let Some(t) = f.teacher.network() {
        crate::export::export(t, &f.plan.teacher, f.task, &f.dir.join("teacher"), None)?;
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

/// Each model's test rows of `metrics.csv`.
struct TestRows {
    teacher: Vec<MetricRow>,
    student: Vec<MetricRow>,
    baseline: Option<Vec<MetricRow>>,
}

/// Scores teacher, student and baseline on the test split and appends their rows (and the
/// student's before fine-tuning) to the run's metrics, in that order.
fn test_rows(f: &Finished, monitor: &mut Monitor) -> Result<TestRows> {
    let (plan, task, s_test) = (f.plan, f.task, f.s_test);
    let classes = task.labels.len();
    let in_macro = monitor.eval.in_macro.clone();
    let final_step = plan.train.steps;
    let rows = |stage: &str, step: u64, logits: &[f32], inputs: &Inputs, teacher: Option<&[f32]>| {
        metric_rows(stage, "test", step, logits, classes, inputs, teacher, &task.langs, &in_macro)
    };
    let teacher = rows("teacher", final_step, f.t_test, f.t_test_inputs, None);
    let final_stage = if plan.finetune.is_some() { "finetune" } else { "distill" };
    let student_step = plan.finetune.as_ref().map_or(final_step, |f| f.steps);
    let student =
        rows(final_stage, student_step, &predict(f.student, &s_test.bags)?.logits, s_test, Some(f.t_test));
    let baseline = match f.baseline {
        Some(b) => {
            Some(rows("baseline", final_step, &predict(b, &s_test.bags)?.logits, s_test, Some(f.t_test)))
        }
        None => None,
    };
    monitor.report.metrics.extend(teacher.iter().cloned());
    monitor.report.metrics.extend(f.finetuned.distilled_test_rows.iter().cloned());
    monitor.report.metrics.extend(student.iter().cloned());
    monitor.report.metrics.extend(baseline.iter().flatten().cloned());
    Ok(TestRows { teacher, student, baseline })
}

/// Translation retrieval on the test split and the recipe's other sets, for a parallel-data
/// run whose loss relates the two spaces: writes `retrieval.csv`, notes the figures, and
/// returns the test split's rows.
fn retrieval_report(
    f: &Finished,
    projection: Option<&crate::nn::HiddenProjection>,
    monitor: &mut Monitor,
) -> Result<Option<Vec<RetrievalRow>>> {
    let (Some(t), Some(p), true) = (f.teacher.network(), projection, f.task.is_parallel()) else {
        return Ok(None);
    };
    let models = RetrievalModels {
        teacher: t,
        teacher_cache: f.teacher_cache,
        student: Embedder { model: f.student, projection: Some(p) },
        untrained: f.untrained,
        references: build_references(f.plan, f.task)?,
    };
    let in_macro = monitor.eval.in_macro.clone();
    let Some(rows) = translation_retrieval(&models, f.task, &in_macro, &f.plan.retrieval.sets)? else {
        return Ok(None);
    };
    write_csv(&f.dir.join("retrieval.csv"), &rows)?;
    // Retrieval on the test split is the task's measure, or an extra report beside
    // classification; the other sets are reported beside it.
    let (test, other): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.set == TEST_SET);
    for r in other.iter().filter(|r| r.lang == "macro") {
        monitor.note(format!(
            "translation retrieval on `{}`: {} → English {:.4}, English → {} {:.4}",
            r.set, r.model, r.to_en, r.model, r.from_en
        ));
    }
    let find = |m: &str| test.iter().find(|r| r.model == m && r.lang == "macro");
    if let (Some(s), Some(t)) = (find("student"), find("teacher")) {
        monitor.note(format!(
            "translation retrieval over {} languages (accuracy@1 among each language's test messages): \
             student → English {:.4}, English → student {:.4}, cosine to the teacher on English {:.4}; \
             teacher reading the translations {:.4}{}",
            test.iter().filter(|r| r.model == "student").count() - 1,
            s.to_en,
            s.from_en,
            s.en_cosine.unwrap_or(f64::NAN),
            t.to_en,
            find("untrained").map_or(String::new(), |u| format!(", untrained student {:.4}", u.to_en))
        ));
    }
    Ok(Some(test))
}

/// `languages.csv` of a classification run: each language's test accuracies.
fn classification_languages(f: &Finished, rows: &TestRows) -> Vec<LanguageRow> {
    let sizes = f.task.train_sizes();
    f.task
        .langs
        .iter()
        .enumerate()
        .map(|(l, name)| {
            let s = &rows.student[l];
            let b = rows.baseline.as_ref().map(|r| r[l].acc);
            LanguageRow {
                lang: name.clone(),
                train_size: sizes[l],
                test_size: s.examples,
                sampled: f.distilled.stats[l].drawn,
                teacher_acc: rows.teacher[l].acc,
                student_acc: s.acc,
                baseline_acc: b,
                kd_gain: b.map(|b| s.acc - b),
                agreement: s.agreement.unwrap_or(f64::NAN),
            }
        })
        .collect()
}

/// The run row's figures: macro accuracies (retrieval ones when that is the task's measure),
/// the gain over the baseline, flags for a model at chance, the worst language.
fn summarize(
    f: &Finished,
    rows: &TestRows,
    scored: Option<&[RetrievalRow]>,
    lang_rows: &[LanguageRow],
    row: &mut RunRow,
    monitor: &mut Monitor,
) {
    let macro_of = |rows: &[MetricRow]| rows.last().map_or(f64::NAN, |r| r.acc);
    // What "chance" is for the run's accuracies: one class of many, or one candidate.
    let chance = match scored {
        Some(rows) => {
            let find = |m: &str| rows.iter().find(|r| r.model == m && r.lang == "macro");
            let (s, t, u) = (find("student"), find("teacher"), find("untrained"));
            row.student_macro_acc = s.map_or(f64::NAN, |r| r.to_en);
            row.teacher_macro_acc = t.map_or(f64::NAN, |r| r.to_en);
            row.baseline_macro_acc = u.map(|r| r.to_en);
            let langs: Vec<&RetrievalRow> =
                rows.iter().filter(|r| r.model == "student" && r.lang != "macro").collect();
            langs.iter().map(|r| 1.0 / r.sources.max(1) as f64).sum::<f64>() / langs.len().max(1) as f64
        }
        None => {
            row.teacher_macro_acc = macro_of(&rows.teacher);
            row.student_macro_acc = macro_of(&rows.student);
            row.baseline_macro_acc = rows.baseline.as_deref().map(macro_of);
            1.0 / f.task.labels.len().max(1) as f64
        }
    };
    row.kd_gain = row.baseline_macro_acc.map(|b| row.student_macro_acc - b);
    row.retention = row.student_macro_acc / row.teacher_macro_acc;
    let at_chance = |acc: f64| acc < chance + 0.05 * (1.0 - chance);
    let mut flags = Vec::new();
    for (who, acc) in [("teacher", row.teacher_macro_acc), ("student", row.student_macro_acc)] {
        if at_chance(acc) {
            flags.push(format!("{who}-at-chance"));
            monitor.note(format!(
                "warning: the {who} is at chance: macro accuracy {acc:.4} (chance {chance:.4})"
            ));
        }
    }
    row.flags = flags.join(";");
    let in_macro = &monitor.eval.in_macro;
    let in_report = |r: &LanguageRow| {
        scored.is_some() || f.task.langs.iter().position(|l| *l == r.lang).is_some_and(|l| in_macro[l])
    };
    if let Some(w) = lang_rows
        .iter()
        .filter(|r| in_report(r) && r.test_size > 0)
        .min_by(|a, b| a.student_acc.total_cmp(&b.student_acc))
    {
        row.worst_lang = w.lang.clone();
        row.worst_acc = w.student_acc;
    }
}

/// The models translation retrieval compares.
struct RetrievalModels<'a> {
    teacher: &'a dyn Model,
    teacher_cache: &'a Path,
    /// The distilled student through its loss's projection into the teacher's space.
    student: Embedder<'a>,
    untrained: Option<&'a dyn Model>,
    /// `[retrieval] references`, built: each reads both sides itself.
    references: Vec<(String, Box<dyn Model>)>,
}

/// The `[retrieval] references` models, built as the recipe names them.
fn build_references(plan: &Plan, task: &Task) -> Result<Vec<(String, Box<dyn Model>)>> {
    plan.retrieval
        .references
        .iter()
        .map(|(name, r)| {
            let spec = crate::model::ModelSpec {
                classes: task.labels.len(),
                labels: task.labels.clone(),
                langs: task.langs.clone(),
                ..Default::default()
            };
            let model =
                r.builder.build(&spec).with_context(|| format!("building the reference model `{name}`"))?;
            Ok((name.clone(), model))
        })
        .collect()
}

/// One evaluation set's languages: (language index, parallel pairs).
type Languages = Vec<(usize, ParallelSet)>;

/// The sets retrieval scores: the test split (`test`), then the recipe's
/// `[retrieval.sets]`, each read from its files (for the run's languages only). Languages whose examples are their own
/// sources (English self-pairs) have nothing to retrieve and get no row.
fn retrieval_sets(task: &Task, in_macro: &[bool], extra: &[EvalSet]) -> Result<Vec<(String, Languages)>> {
    let mut sets = vec![(TEST_SET.to_string(), language_sets(task.test.iter(), in_macro))];
    for set in extra {
        let mut langs = Languages::new();
        for (lang, file) in &set.files {
            // A set names files for more languages than one run may have (recipes that extend
            // it choose their own): those the run lacks are left out.
            let Some(l) = task.langs.iter().position(|x| x == lang) else { continue };
            langs.push((
                l,
                ParallelSet::read(file)
                    .with_context(|| format!("retrieval.sets.{}.files.{lang}", set.name))?,
            ));
        }
        sets.push((set.name.clone(), langs));
    }
    sets.retain(|(_, langs)| !langs.is_empty());
    Ok(sets)
}

/// Translation retrieval (`retrieval.csv`) for parallel-data tasks (the teacher reads the
/// sources) whose loss relates the student's space to the teacher's (`hidden-mse`,
/// `cosine-embedding`): on every set of [`retrieval_sets`], per language, both directions
/// among that language's pairs, for the distilled student on both sides, the student's
/// translations against the teacher's English (`mixed`: the student as a query encoder for
/// an index the teacher built), the teacher reading the translations itself, the untrained
/// student and each reference model; then the student's cosine to the teacher on English.
fn translation_retrieval(
    m: &RetrievalModels,
    task: &Task,
    in_macro: &[bool],
    extra: &[EvalSet],
) -> Result<Option<Vec<RetrievalRow>>> {
    let d = m.teacher.hidden_dim();
    if task.test.is_empty() || d == 0 {
        return Ok(None);
    }
    anyhow::ensure!(
        m.student.dim() == d,
        "the student's embedding (through the loss's projection) is {} wide, the teacher's {d}",
        m.student.dim()
    );
    let sets = retrieval_sets(task, in_macro, extra)?;
    if sets.is_empty() {
        return Ok(None);
    }
    let sizes = task.train_sizes();
    let mut rows: Vec<RetrievalRow> = Vec::new();
    for (set_name, langs) in &sets {
        // Every distinct text of the set once per model; each language then gathers its rows.
        let (texts, index) = distinct_texts(langs);
        let teacher = super::teacher::cached_embeddings(m.teacher_cache, m.teacher, &texts)?;
        let student = m.student.embed(&texts)?;
        let untrained =
            m.untrained.map(|u| Embedder::plain(u).embed(&texts).map(|e| (e, u.hidden_dim()))).transpose()?;
        let references = m
            .references
            .iter()
            .map(|(name, r)| {
                Ok((
                    name.as_str(),
                    super::teacher::cached_embeddings(m.teacher_cache, &**r, &texts)?,
                    r.hidden_dim(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let gather = |e: &[f32], w: usize, side: &[String]| gather(e, w, side, &index);
        // (name, English side, translation side, width).
        let mut models: Vec<(&str, &[f32], &[f32], usize)> = vec![
            ("student", &student, &student, d),
            ("mixed", &teacher, &student, d),
            ("teacher", &teacher, &teacher, d),
        ];
        if let Some((u, w)) = &untrained {
            models.push(("untrained", u, u, *w));
        }
        models.extend(references.iter().map(|(name, e, w)| (*name, e.as_slice(), e.as_slice(), *w)));
        for (name, en, xx, w) in models {
            let mut lang_rows: Vec<RetrievalRow> = langs
                .iter()
                .map(|(l, set)| {
                    let src = gather(en, w, &set.sources);
                    let (to_en, from_en) = set.score(&src, &gather(xx, w, &set.translations), w);
                    RetrievalRow {
                        set: set_name.clone(),
                        model: name.into(),
                        lang: task.langs[*l].clone(),
                        train_pairs: sizes[*l],
                        pairs: set.pairs.len(),
                        sources: set.sources.len(),
                        translations: set.translations.len(),
                        to_en,
                        from_en,
                        en_cosine: (name == "student")
                            .then(|| mean_cosine(&src, &gather(&teacher, d, &set.sources), d)),
                    }
                })
                .collect();
            lang_rows.push(macro_row(set_name, name, &lang_rows));
            rows.extend(lang_rows);
        }
    }
    Ok(Some(rows))
}

/// `languages.csv` of a parallel-data run: per language with retrieval rows, translation →
/// English accuracy@1 of the teacher (reading the translations), the student and the
/// untrained student (as baseline), and the student's cosine to the teacher on English as
/// its agreement.
fn retrieval_languages(rows: &[RetrievalRow], task: &Task, distilled: &LoopState) -> Vec<LanguageRow> {
    let of = |model: &str, lang: &str| rows.iter().find(|r| r.model == model && r.lang == lang);
    rows.iter()
        .filter(|r| r.model == "student" && r.lang != "macro")
        .map(|s| {
            let l = task.langs.iter().position(|x| *x == s.lang).unwrap_or(0);
            let b = of("untrained", &s.lang).map(|u| u.to_en);
            LanguageRow {
                lang: s.lang.clone(),
                train_size: s.train_pairs,
                test_size: s.pairs,
                sampled: distilled.stats.get(l).map_or(0, |st| st.drawn),
                teacher_acc: of("teacher", &s.lang).map_or(f64::NAN, |t| t.to_en),
                student_acc: s.to_en,
                baseline_acc: b,
                kd_gain: b.map(|b| s.to_en - b),
                agreement: s.en_cosine.unwrap_or(f64::NAN),
            }
        })
        .collect()
}
