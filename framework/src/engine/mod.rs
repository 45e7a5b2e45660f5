//! The engine: runs a [`Plan`] — pre-train (or load) the teacher → compute its outputs once
//! → distil → baseline → optional fine-tune → test evaluation → reports.

pub mod nn;
pub mod optim;
pub mod store;
pub mod train;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::dataset::{Example, Task};
use crate::dylib::kdx_sdk::math::log_softmax;
use crate::features::{Bags, FeatureCache};
use crate::model::Param;
use crate::model::{init_from, Model, ModelSpec};
use crate::plan::{Init, Plan};
use crate::report::{peak_rss_mb, write_csv, LanguageRow, MetricRow, RunRow};
use crate::sampler::LangStat;
use optim::Optimizer;
use store::{params_from_map, params_to_map, read_safetensors, to_safetensors, write_atomic, TensorMap};
use train::{argmax_rows, row_ce, run_stage, LoopState, Stage, StageHooks, StageLoss};

/// Mixes integers into one well-spread 64-bit seed (splitmix64 steps).
pub fn mix(parts: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        h ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(h << 6).wrapping_add(h >> 2);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

/// One split featurised for one model.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Feature bags.
    pub bags: Bags,
    /// Gold labels.
    pub labels: Vec<u32>,
    /// Languages.
    pub langs: Vec<u32>,
}

impl Inputs {
    /// Featurises `examples` (their `source` when `source` is true) through `cache`;
    /// `split` names the examples in the cache key.
    pub fn new(model: &dyn Model, examples: &[Example], source: bool, cache: &FeatureCache, split: &str) -> Result<Inputs> {
        let texts: Vec<&str> =
            examples.iter().map(|e| if source { e.source.as_deref().unwrap_or(&e.text) } else { e.text.as_str() }).collect();
        let tag = format!("{split}/{}", if source { "source" } else { "text" });
        let mut bags = cache.bags(model.featurizer(), texts, &tag)?;
        bags.langs = examples.iter().map(|e| e.lang).collect();
        Ok(Inputs { bags, labels: examples.iter().map(|e| e.label).collect(), langs: examples.iter().map(|e| e.lang).collect() })
    }
}

/// Teacher outputs on the student's training examples, computed once (offline distillation).
#[derive(Clone, Debug, Default)]
pub struct TeacherOut {
    /// `N × C` logits.
    pub logits: Vec<f32>,
    /// `N × H_t` hidden representations (empty unless a loss reads them).
    pub hidden: Vec<f32>,
    /// `H_t` (0 when `hidden` is empty).
    pub hidden_dim: usize,
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Results root (`results/`).
    pub results: PathBuf,
    /// Continue an interrupted run from its checkpoints.
    pub resume: bool,
    /// Show a progress bar (on a terminal) or log lines.
    pub progress: bool,
    /// Stop (as if interrupted) once this many training steps have run in this process;
    /// used by the tests of `--resume`.
    pub interrupt_after: Option<u64>,
}

/// Where a plan's run writes.
pub fn run_dir(plan: &Plan, results: &Path) -> PathBuf {
    results.join(&plan.experiment.name).join(&plan.run_name)
}

/// Runs a plan and writes its reports. On failure `run.csv` records the error too.
pub fn run(plan: &mut Plan, opts: &RunOptions) -> Result<RunRow> {
    let started = Instant::now();
    let dir = run_dir(plan, &opts.results);
    let ckpt = dir.join("checkpoints");
    if !opts.resume && ckpt.exists() {
        std::fs::remove_dir_all(&ckpt).with_context(|| format!("clearing {}", ckpt.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let hash = plan.doc.content_hash();
    let resolved = format!("# resolved recipe of {} (hash {hash})\n{}", plan.doc.path().display(), plan.doc.to_toml_string());
    write_atomic(&dir.join("recipe.toml"), resolved.as_bytes())?;
    let mut row = RunRow {
        experiment: plan.experiment.name.clone(),
        run: plan.run_name.clone(),
        recipe: plan.doc.path().display().to_string(),
        hash,
        ..Default::default()
    };
    match run_inner(plan, opts, &dir, &mut row) {
        Ok(()) => {
            row.status = "ok".into();
            row.wall_s = started.elapsed().as_secs_f64();
            row.peak_rss_mb = peak_rss_mb();
            write_csv(&dir.join("run.csv"), std::slice::from_ref(&row))?;
            Ok(row)
        }
        Err(e) => {
            row.status = if e.downcast_ref::<Interrupted>().is_some() { "interrupted" } else { "failed" }.into();
            row.error = format!("{e:#}");
            row.wall_s = started.elapsed().as_secs_f64();
            row.peak_rss_mb = peak_rss_mb();
            write_csv(&dir.join("run.csv"), std::slice::from_ref(&row))?;
            Err(e)
        }
    }
}

/// The run stopped before its end on purpose (it can be resumed).
#[derive(Debug, thiserror::Error)]
#[error("interrupted after {0} training steps; `kdx run --resume` continues")]
pub struct Interrupted(pub u64);

fn sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().take(10).map(|b| format!("{b:02x}")).collect()
}

fn run_inner(plan: &mut Plan, opts: &RunOptions, dir: &Path, row: &mut RunRow) -> Result<()> {
    let seed = plan.experiment.seed;
    let task = plan.dataset.load().context("loading the dataset")?;
    task.validate().map_err(|e| anyhow::anyhow!("the dataset plugin `{}` produced an invalid task: {e}", plan.data_plugin))?;
    let classes = task.labels.len();
    let n_langs = task.langs.len();
    log(
        opts,
        &format!(
            "task: {} languages, {} classes, {} train / {} dev / {} test examples",
            n_langs,
            classes,
            task.train.len(),
            task.dev.len(),
            task.test.len()
        ),
    );
    let mut hooks = Hooks::new(opts, dir, &task, plan.train.eval_fraction)?;
    let spec = |seed: u64| ModelSpec { classes, labels: task.labels.clone(), langs: task.langs.clone(), seed };

    // ---- Teacher: load from the cache or pre-train on hard labels. ----
    let mut teacher = plan.teacher.builder.build(&spec(mix(&[seed, 1])))?;
    let reads_source = task.teacher_reads_source;
    let fingerprint = plan.dataset.fingerprint()?;
    let key = sha(&[
        env!("CARGO_PKG_VERSION"),
        &fingerprint,
        &plan.data_section.to_string(),
        &plan.teacher.section.to_string(),
        &toml::to_string(&plan.teacher_train).unwrap_or_default(),
        &seed.to_string(),
    ]);
    let cache = opts.results.join(".cache").join(format!("teacher-{key}"));
    let fcache = FeatureCache { dir: Some(opts.results.join(".cache").join("features")), data_key: fingerprint.clone() };
    let weights = cache.join("teacher.safetensors");
    hooks.teacher_dev = Inputs::new(&*teacher, &task.dev, reads_source, &fcache, "dev")?;
    // Held until the teacher is in the cache: another process (a batch with --jobs, or a
    // second batch) that needs the same teacher waits for it instead of training it again.
    let teacher_lock = if teacher.precomputed().is_none() { Some(lock_teacher_cache(&cache, opts)?) } else { None };
    if let Some(table) = teacher.precomputed() {
        log(opts, &format!("teacher: outputs read from {} (nothing to pre-train)", table.origin()));
    } else if weights.exists() {
        let map = read_safetensors(&weights)?;
        params_from_map("", &mut teacher.params_mut(), &map, &weights)?;
        row.teacher_cached = true;
        log(opts, &format!("teacher: loaded from cache {}", cache.display()));
    } else {
        let cfg = plan.teacher_train.as_ref().with_context(|| {
            format!("the teacher `{}` has no outputs of its own and no `train` stage to pre-train it", plan.teacher.plugin)
        })?;
        let t_examples = task.teacher_train.as_deref().unwrap_or(&task.train);
        let inputs = Inputs::new(&*teacher, t_examples, false, &fcache, "teacher-train")?;
        let mut ce = plan.loss("hard-ce", toml::Table::new())?;
        let mut sampler = plan.sampler("proportional", toml::Table::new())?;
        let w = crate::schedule::Schedule::Constant(1.0);
        let stage = Stage {
            name: "teacher",
            cfg,
            train: &inputs,
            teacher: None,
            labels_visible: true,
            allowed: None,
            seed: mix(&[seed, 11]),
            n_langs,
        };
        let mut losses = [StageLoss { name: "hard-ce", weight: &w, loss: &mut *ce }];
        run_stage(&stage, &mut *teacher, &mut losses, &mut *sampler, &task.langs, &mut hooks)?;
        let mut map = TensorMap::new();
        params_to_map("", &teacher.params(), &mut map);
        write_atomic(&weights, &to_safetensors(&map)?)?;
    }
    drop(teacher_lock);
    row.teacher_params = teacher.num_params();

    // ---- Teacher outputs, once per training set (cached with the teacher). ----
    let needs_hidden = plan.losses.iter().any(|l| l.loss.needs_teacher_hidden());
    let out_path = cache.join(if needs_hidden { "train-outputs-hidden.safetensors" } else { "train-outputs.safetensors" });
    let t_out = if let Some(table) = teacher.precomputed() {
        let o = table.lookup(&ids(&task.train), "training")?;
        if let Some(l) = plan.losses.iter().find(|l| l.loss.needs_teacher_hidden()).filter(|_| o.hidden_dim == 0) {
            anyhow::bail!(
                "loss `{}` reads the teacher's hidden representation, but {} has none (a .safetensors file with a `hidden` tensor can hold it)",
                l.plugin,
                table.origin()
            );
        }
        TeacherOut { logits: o.logits, hidden: o.hidden, hidden_dim: o.hidden_dim }
    } else if out_path.exists() {
        let map = read_safetensors(&out_path)?;
        let (_, logits) = map.get("logits").cloned().context("cached teacher outputs lack `logits`")?;
        let (hs, hidden) = map.get("hidden").cloned().unwrap_or_default();
        TeacherOut { logits, hidden, hidden_dim: hs.get(1).copied().unwrap_or(0) }
    } else {
        let inputs = Inputs::new(&*teacher, &task.train, reads_source, &fcache, "train")?;
        let o = predict(&*teacher, &inputs.bags)?;
        let mut map = TensorMap::new();
        map.insert("logits".into(), (vec![inputs.bags.len(), classes], o.logits.clone()));
        let (hidden, hidden_dim) = if needs_hidden { (o.hidden, o.hidden_dim) } else { (Vec::new(), 0) };
        if needs_hidden {
            map.insert("hidden".into(), (vec![inputs.bags.len(), hidden_dim], hidden.clone()));
        }
        write_atomic(&out_path, &to_safetensors(&map)?)?;
        TeacherOut { logits: o.logits, hidden, hidden_dim }
    };
    let t_dev = teacher_outputs(&*teacher, &hooks.teacher_dev, &task.dev, "dev")?.logits;
    let teacher_test_inputs = Inputs::new(&*teacher, &task.test, reads_source, &fcache, "test")?;
    let t_test = teacher_outputs(&*teacher, &teacher_test_inputs, &task.test, "test")?.logits;
    hooks.teacher_dev_logits = Some(t_dev);

    // ---- Student: distil. ----
    let mut student = plan.student.builder.build(&spec(mix(&[seed, 2])))?;
    anyhow::ensure!(student.precomputed().is_none(), "[student] plugin `{}`: a student must be a network that trains", plan.student.plugin);
    if plan.init == Init::FromTeacher {
        anyhow::ensure!(
            teacher.precomputed().is_none(),
            "init = \"from-teacher\" copies the teacher's weights, but the teacher `{}` has only outputs",
            plan.teacher.plugin
        );
        let copied = init_from(&mut *student, &*teacher)?;
        log(opts, &format!("student: initialised from the teacher ({})", copied.join(", ")));
    }
    row.student_params = student.num_params();
    row.compression = row.teacher_params as f64 / row.student_params.max(1) as f64;
    let s_train = Inputs::new(&*student, &task.train, false, &fcache, "train")?;
    hooks.student_dev = Inputs::new(&*student, &task.dev, false, &fcache, "dev")?;
    let s_test = Inputs::new(&*student, &task.test, false, &fcache, "test")?;
    let train_cfg = plan.train.stage();
    let any_teacher_loss = plan.losses.iter().any(|l| l.loss.needs_teacher());
    let labels_visible = !reads_source;
    if !labels_visible {
        // Cross-lingual transfer: the student must learn from the teacher alone.
        for l in &plan.losses {
            anyhow::ensure!(
                !l.loss.needs_labels(),
                "loss `{}` reads gold labels, but in this task the student sees translations and must learn from the teacher only",
                l.plugin
            );
        }
    }
    let distill_state = {
        let stage = Stage {
            name: "distill",
            cfg: &train_cfg,
            train: &s_train,
            teacher: any_teacher_loss.then_some(&t_out),
            labels_visible,
            allowed: None,
            seed: mix(&[seed, 12]),
            n_langs,
        };
        let mut losses: Vec<StageLoss> =
            plan.losses.iter_mut().map(|l| StageLoss { name: &l.plugin, weight: &l.weight, loss: &mut *l.loss }).collect();
        run_stage(&stage, &mut *student, &mut losses, &mut *plan.sampler, &task.langs, &mut hooks)?
    };
    row.train_examples_per_s = (plan.train.steps as f64 * plan.train.batch as f64) / distill_state.train_seconds.max(1e-9);

    // ---- Optional fine-tuning of the distilled student. ----
    let mut finetune_sampling = Vec::new();
    // With a fine-tuning stage the student is scored on test before it too (stage `distill`
    // in metrics.csv; the final rows are then stage `finetune`), so one run shows both.
    let mut distilled_test_rows = Vec::new();
    if let Some(ft) = plan.finetune.clone() {
        let logits = predict(&*student, &s_test.bags)?.logits;
        let in_macro = hooks.in_macro.clone();
        distilled_test_rows =
            metric_rows("distill", "test", plan.train.steps, &logits, classes, &s_test, Some(&t_test), &task.langs, &in_macro);
        let allowed = if ft.languages.is_empty() {
            None
        } else {
            let mut a = vec![false; n_langs];
            for l in &ft.languages {
                let i =
                    task.langs.iter().position(|x| x == l).with_context(|| {
                        format!("[finetune] languages: `{l}` is not a language of this task ({})", task.langs.join(", "))
                    })?;
                a[i] = true;
            }
            Some(a)
        };
        let mut ce = plan.loss("hard-ce", toml::Table::new())?;
        let mut sampler = plan.sampler(&plan.sampler_plugin.clone(), plan.sampler_params.clone())?;
        let w = crate::schedule::Schedule::Constant(1.0);
        let stage = Stage {
            name: "finetune",
            cfg: &ft.stage(),
            train: &s_train,
            teacher: (ft.distill && any_teacher_loss).then_some(&t_out),
            labels_visible,
            allowed,
            seed: mix(&[seed, 14]),
            n_langs,
        };
        let mut losses: Vec<StageLoss> = if ft.distill {
            plan.losses.iter_mut().map(|l| StageLoss { name: &l.plugin, weight: &l.weight, loss: &mut *l.loss }).collect()
        } else {
            vec![StageLoss { name: "hard-ce", weight: &w, loss: &mut *ce }]
        };
        finetune_sampling = run_stage(&stage, &mut *student, &mut losses, &mut *sampler, &task.langs, &mut hooks)?.sampling;
    }

    // ---- Baseline: the same student, no teacher. ----
    if plan.train.baseline && !labels_visible {
        log(opts, "baseline skipped: the student may not see gold labels in this task (the teacher reads the sources)");
    }
    let baseline = if plan.train.baseline && labels_visible {
        let mut b = plan.student.builder.build(&spec(mix(&[seed, 2])))?;
        let mut ce = plan.loss("hard-ce", toml::Table::new())?;
        let mut sampler = plan.sampler(&plan.sampler_plugin.clone(), plan.sampler_params.clone())?;
        let w = crate::schedule::Schedule::Constant(1.0);
        let stage = Stage {
            name: "baseline",
            cfg: &train_cfg,
            train: &s_train,
            teacher: None,
            labels_visible: true,
            allowed: None,
            seed: mix(&[seed, 12]),
            n_langs,
        };
        let mut losses = [StageLoss { name: "hard-ce", weight: &w, loss: &mut *ce }];
        run_stage(&stage, &mut *b, &mut losses, &mut *sampler, &task.langs, &mut hooks)?;
        Some(b)
    } else {
        None
    };

    // ---- Test evaluation and reports. ----
    // The student's test outputs: logits for the metrics, hidden states for retrieval.
    let s_out = predict(&*student, &s_test.bags)?;
    let b_logits = match &baseline {
        Some(b) => Some(predict(&**b, &s_test.bags)?.logits),
        None => None,
    };
    let final_step = plan.train.steps;
    let in_macro = hooks.in_macro.clone();
    let teacher_rows = metric_rows("teacher", "test", final_step, &t_test, classes, &teacher_test_inputs, None, &task.langs, &in_macro);
    let final_stage = if plan.finetune.is_some() { "finetune" } else { "distill" };
    let student_step = plan.finetune.as_ref().map_or(final_step, |f| f.steps);
    let student_rows =
        metric_rows(final_stage, "test", student_step, &s_out.logits, classes, &s_test, Some(&t_test), &task.langs, &in_macro);
    hooks.metrics.extend(teacher_rows.iter().cloned());
    hooks.metrics.append(&mut distilled_test_rows);
    hooks.metrics.extend(student_rows.iter().cloned());
    let baseline_rows =
        b_logits.as_ref().map(|b| metric_rows("baseline", "test", final_step, b, classes, &s_test, Some(&t_test), &task.langs, &in_macro));
    if let Some(r) = &baseline_rows {
        hooks.metrics.extend(r.iter().cloned());
    }
    write_csv(&dir.join("metrics.csv"), &hooks.metrics)?;
    let mut sampling = distill_state.sampling.clone();
    sampling.extend(finetune_sampling);
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
            sampled: distill_state.stats[l].drawn,
            teacher_acc: t.acc,
            student_acc: s.acc,
            baseline_acc: b,
            kd_gain: b.map(|b| s.acc - b),
            agreement: s.agreement.unwrap_or(f64::NAN),
        });
    }
    write_csv(&dir.join("languages.csv"), &lang_rows)?;
    if let Some(rows) = translation_retrieval(plan, &*teacher, &s_out, &task, &s_test, &in_macro)? {
        if let Some(m) = rows.last() {
            log(
                opts,
                &format!(
                    "translation retrieval among {} English sources: student {:.4}, teacher reading the translation {:.4} (chance {:.4})",
                    m.candidates, m.student_acc, m.teacher_acc, m.chance
                ),
            );
        }
        write_csv(&dir.join("retrieval.csv"), &rows)?;
    }

    let macro_of = |rows: &[MetricRow]| rows.last().map_or(f64::NAN, |r| r.acc);
    row.teacher_macro_acc = macro_of(&teacher_rows);
    row.student_macro_acc = macro_of(&student_rows);
    row.baseline_macro_acc = baseline_rows.as_deref().map(macro_of);
    row.kd_gain = row.baseline_macro_acc.map(|b| row.student_macro_acc - b);
    row.retention = row.student_macro_acc / row.teacher_macro_acc;
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
    row.teacher_texts_per_s = if teacher.precomputed().is_some() { f64::NAN } else { texts_per_second(&*teacher, sample, reads_source)? };
    row.student_texts_per_s = texts_per_second(&*student, sample, false)?;

    crate::export::export(&*student, &plan.student.plugin, &plan.student.section, &task, &dir.join("student"))?;
    if teacher.precomputed().is_none() {
        crate::export::export(&*teacher, &plan.teacher.plugin, &plan.teacher.section, &task, &dir.join("teacher"))?;
    }
    crate::plot::write_run_plot(dir).map(drop).unwrap_or_else(|e| eprintln!("kdx: warning: run.svg not written: {e:#}"));
    log(
        opts,
        &format!(
            "done: teacher {:.4}, student {:.4}{} macro accuracy on test; {}",
            row.teacher_macro_acc,
            row.student_macro_acc,
            row.baseline_macro_acc.map_or(String::new(), |b| format!(", baseline {b:.4}")),
            row.sizes()
        ),
    );
    Ok(())
}

/// One language of `kdx sample`'s table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SamplingPreview {
    /// Language.
    pub lang: String,
    /// Training examples.
    pub train_size: usize,
    /// Probability of the language at the first step.
    pub probability: f64,
    /// probability × steps × batch.
    pub expected_draws: f64,
    /// expected_draws / train_size.
    pub expected_passes: f64,
}

/// What the distillation stage's sampler will do on the plan's data, before training (the
/// distribution at step 0; dynamic samplers move from there).
pub fn sampling_preview(plan: &mut Plan) -> Result<Vec<SamplingPreview>> {
    let task = plan.dataset.load().context("loading the dataset")?;
    let sizes = task.train_sizes();
    let stats: Vec<LangStat> = sizes.iter().map(|&n| LangStat { train_size: n, ..Default::default() }).collect();
    let ctx =
        crate::sampler::SamplerCtx { step: 0, total_steps: plan.train.steps, batch: plan.train.batch, stats: &stats, langs: &task.langs };
    let mut d = crate::sampler::normalise(&plan.sampler.distribution(&ctx)?)?;
    for (p, &n) in d.iter_mut().zip(&sizes) {
        if n == 0 {
            *p = 0.0;
        }
    }
    let d = crate::sampler::normalise(&d)?;
    let total = plan.train.steps as f64 * plan.train.batch as f64;
    Ok(task
        .langs
        .iter()
        .zip(&sizes)
        .zip(&d)
        .map(|((l, &n), &p)| SamplingPreview {
            lang: l.clone(),
            train_size: n,
            probability: p,
            expected_draws: p * total,
            expected_passes: if n == 0 { 0.0 } else { p * total / n as f64 },
        })
        .collect())
}

/// Translation retrieval on the test split (`retrieval.csv`), for cross-lingual tasks (the
/// teacher reads sources) where a loss maps the student's hidden space into the teacher's
/// (`hidden-mse`, `cosine-embedding`): each translation's nearest neighbour among all
/// distinct English sources of the split, per language the student trains on.
/// `student_out` is the student's output on the test split (`s_test`).
fn translation_retrieval(
    plan: &Plan,
    teacher: &dyn Model,
    student_out: &crate::model::Outputs,
    task: &Task,
    s_test: &Inputs,
    in_macro: &[bool],
) -> Result<Option<Vec<crate::retrieval::RetrievalRow>>> {
    if !task.teacher_reads_source || task.test.is_empty() || teacher.precomputed().is_some() || teacher.hidden_dim() == 0 {
        return Ok(None);
    }
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
    Ok(Some(crate::retrieval::retrieval_rows(&queries, &direct, &keys, d, &gold, &s_test.langs, &task.langs, in_macro)))
}

/// Locks a teacher's cache directory (`teacher.lock` in it, an OS lock released when the
/// file is closed, also when the process dies), waiting while another process holds it.
fn lock_teacher_cache(cache: &Path, opts: &RunOptions) -> Result<std::fs::File> {
    use fs2::FileExt;
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let path = cache.join("teacher.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if f.try_lock_exclusive().is_err() {
        log(opts, &format!("teacher: another process is training it; waiting for {}", cache.display()));
        f.lock_exclusive().with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(f)
}

/// The ids of some examples, in order.
fn ids(examples: &[Example]) -> Vec<&str> {
    examples.iter().map(|e| e.id.as_str()).collect()
}

/// The teacher's outputs on some examples: looked up by id for a teacher whose outputs were
/// computed elsewhere, a forward pass over their features otherwise.
fn teacher_outputs(teacher: &dyn Model, inputs: &Inputs, examples: &[Example], what: &str) -> Result<crate::model::Outputs> {
    match teacher.precomputed() {
        Some(table) => table.lookup(&ids(examples), what),
        None => predict(teacher, &inputs.bags),
    }
}

/// Inference over many examples, in chunks.
pub fn predict(model: &dyn Model, x: &Bags) -> Result<crate::model::Outputs> {
    const CHUNK: usize = 2048;
    let mut all = crate::model::Outputs { classes: model.classes(), hidden_dim: model.hidden_dim(), ..Default::default() };
    let mut start = 0;
    while start < x.len() {
        let end = (start + CHUNK).min(x.len());
        let o = model.forward(&x.range(start, end))?;
        all.logits.extend(o.logits);
        all.hidden.extend(o.hidden);
        all.batch += o.batch;
        start = end;
    }
    Ok(all)
}

/// Single-threaded inference speed, featurisation included (what a user of the model sees).
/// Languages ride along for models that route by language.
fn texts_per_second(model: &dyn Model, examples: &[Example], source: bool) -> Result<f64> {
    if examples.is_empty() {
        return Ok(0.0);
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    pool.install(|| {
        let t0 = Instant::now();
        for chunk in examples.chunks(256) {
            let texts: Vec<&str> =
                chunk.iter().map(|e| if source { e.source.as_deref().unwrap_or(&e.text) } else { e.text.as_str() }).collect();
            let mut bags = Bags::build(model.featurizer(), texts);
            bags.langs = chunk.iter().map(|e| e.lang).collect();
            model.forward(&bags)?;
        }
        Ok(examples.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9))
    })
}

/// Per-language metric rows (one per language of the task, then a `macro` row over the
/// languages that have examples in the split and are marked in `in_macro`: the languages
/// the student trains on; in cross-lingual tasks the teacher's own language is reported
/// but not averaged in).
#[allow(clippy::too_many_arguments)]
pub fn metric_rows(
    stage: &str,
    split: &str,
    step: u64,
    logits: &[f32],
    classes: usize,
    inputs: &Inputs,
    teacher: Option<&[f32]>,
    langs: &[String],
    in_macro: &[bool],
) -> Vec<MetricRow> {
    let pred = argmax_rows(logits, classes);
    let ce = row_ce(logits, classes, |i| inputs.labels[i] as usize);
    let t_pred = teacher.map(|t| argmax_rows(t, classes));
    let kl: Option<Vec<f64>> = teacher.map(|t| {
        t.chunks(classes)
            .zip(logits.chunks(classes))
            .map(|(tz, sz)| {
                let lp = log_softmax(tz, 1.0);
                let lq = log_softmax(sz, 1.0);
                lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
            })
            .collect()
    });
    let n = langs.len();
    #[derive(Default, Clone)]
    struct Acc {
        n: usize,
        loss: f64,
        correct: usize,
        t_correct: usize,
        agree: usize,
        kl: f64,
    }
    let mut acc = vec![Acc::default(); n];
    for i in 0..pred.len() {
        let a = &mut acc[inputs.langs[i] as usize];
        a.n += 1;
        a.loss += ce[i];
        a.correct += (pred[i] == inputs.labels[i] as usize) as usize;
        if let Some(tp) = &t_pred {
            a.t_correct += (tp[i] == inputs.labels[i] as usize) as usize;
            a.agree += (tp[i] == pred[i]) as usize;
        }
        if let Some(k) = &kl {
            a.kl += k[i];
        }
    }
    let has_t = teacher.is_some();
    let mut rows: Vec<MetricRow> = acc
        .iter()
        .zip(langs)
        .map(|(a, l)| {
            let d = a.n.max(1) as f64;
            let nan_if_empty = |x: f64| if a.n == 0 { f64::NAN } else { x };
            MetricRow {
                step,
                stage: stage.into(),
                split: split.into(),
                lang: l.clone(),
                examples: a.n,
                loss: nan_if_empty(a.loss / d),
                acc: nan_if_empty(a.correct as f64 / d),
                teacher_acc: has_t.then(|| nan_if_empty(a.t_correct as f64 / d)),
                agreement: has_t.then(|| nan_if_empty(a.agree as f64 / d)),
                kl: has_t.then(|| nan_if_empty(a.kl / d)),
                gate: None,
            }
        })
        .collect();
    // Macro row: unweighted mean over languages that have examples in this split.
    let present: Vec<&MetricRow> = rows.iter().zip(in_macro).filter(|(r, &m)| m && r.examples > 0).map(|(r, _)| r).collect();
    let m = present.len().max(1) as f64;
    let mean = |f: &dyn Fn(&MetricRow) -> f64| present.iter().map(|r| f(r)).sum::<f64>() / m;
    let macro_row = MetricRow {
        step,
        stage: stage.into(),
        split: split.into(),
        lang: "macro".into(),
        examples: present.iter().map(|r| r.examples).sum(),
        loss: mean(&|r| r.loss),
        acc: mean(&|r| r.acc),
        teacher_acc: has_t.then(|| mean(&|r| r.teacher_acc.unwrap_or(0.0))),
        agreement: has_t.then(|| mean(&|r| r.agreement.unwrap_or(0.0))),
        kl: has_t.then(|| mean(&|r| r.kl.unwrap_or(0.0))),
        gate: None,
    };
    rows.push(macro_row);
    rows
}

fn log(opts: &RunOptions, msg: &str) {
    if opts.progress {
        eprintln!("kdx: {msg}");
    }
}

/// Evaluation, checkpoints and progress for the stages of one run.
struct Hooks {
    dir: PathBuf,
    progress: bool,
    bar: Option<indicatif::ProgressBar>,
    last_log: Instant,
    langs: Vec<String>,
    classes: usize,
    eval_fraction: f64,
    in_macro: Vec<bool>,
    teacher_dev: Inputs,
    teacher_dev_logits: Option<Vec<f32>>,
    student_dev: Inputs,
    metrics: Vec<MetricRow>,
    steps_run: u64,
    interrupt_after: Option<u64>,
    resume: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointMeta {
    state: LoopState,
    metrics: Vec<MetricRow>,
}

impl Hooks {
    fn new(opts: &RunOptions, dir: &Path, task: &Task, eval_fraction: f64) -> Result<Hooks> {
        Ok(Hooks {
            dir: dir.to_path_buf(),
            progress: opts.progress,
            bar: None,
            last_log: Instant::now(),
            langs: task.langs.clone(),
            classes: task.labels.len(),
            eval_fraction,
            in_macro: task.train_sizes().iter().map(|&n| n > 0).collect(),
            teacher_dev: Inputs::default(),
            teacher_dev_logits: None,
            student_dev: Inputs::default(),
            metrics: Vec::new(),
            steps_run: 0,
            interrupt_after: opts.interrupt_after,
            resume: opts.resume,
        })
    }

    fn dev_subset(&self, inputs: &Inputs) -> Vec<usize> {
        let stride = (1.0 / self.eval_fraction).round().max(1.0) as usize;
        (0..inputs.labels.len()).step_by(stride).collect()
    }
}

impl StageHooks for Hooks {
    fn evaluate(&mut self, stage: &str, step: u64, model: &dyn Model, stats: &mut [LangStat], gates: Option<Vec<f32>>) -> Result<()> {
        let inputs = if stage == "teacher" { &self.teacher_dev } else { &self.student_dev };
        if inputs.labels.is_empty() {
            return Ok(());
        }
        let idx = self.dev_subset(inputs);
        let sub = Inputs {
            bags: inputs.bags.gather(&idx),
            labels: idx.iter().map(|&i| inputs.labels[i]).collect(),
            langs: idx.iter().map(|&i| inputs.langs[i]).collect(),
        };
        let logits = predict(model, &sub.bags)?.logits;
        let t: Option<Vec<f32>> =
            if stage == "teacher" { None } else { self.teacher_dev_logits.as_ref().map(|t| train_rows(t, self.classes, &idx)) };
        let mut rows = metric_rows(stage, "dev", step, &logits, self.classes, &sub, t.as_deref(), &self.langs, &self.in_macro);
        if let Some(g) = gates {
            for (r, g) in rows.iter_mut().zip(g) {
                r.gate = Some(g as f64);
            }
        }
        for (s, r) in stats.iter_mut().zip(&rows) {
            if r.examples > 0 {
                s.dev_acc = Some(r.acc);
                s.teacher_dev_acc = r.teacher_acc;
            }
        }
        if let Some(m) = rows.last() {
            let msg = format!("[{stage}] step {step}: dev macro accuracy {:.4}", m.acc);
            match &self.bar {
                Some(b) => b.println(msg),
                None if self.progress => eprintln!("kdx: {msg}"),
                None => {}
            }
        }
        self.metrics.extend(rows);
        Ok(())
    }

    fn checkpoint(&mut self, stage: &str, params: &[(String, &Param)], opt: &Optimizer, state: &LoopState) -> Result<()> {
        if stage == "teacher" {
            // The teacher is cached as a whole once trained; an interrupted pre-training restarts.
            return Ok(());
        }
        let dir = self.dir.join("checkpoints");
        let mut map = TensorMap::new();
        for ((name, p), s) in params.iter().zip(&opt.state) {
            map.insert(format!("param/{name}"), (p.shape.clone(), p.data.clone()));
            if !s.m.is_empty() {
                map.insert(format!("m/{name}"), (vec![s.m.len()], s.m.clone()));
            }
            if !s.v.is_empty() {
                map.insert(format!("v/{name}"), (vec![s.v.len()], s.v.clone()));
            }
        }
        write_atomic(&dir.join(format!("{stage}.safetensors")), &to_safetensors(&map)?)?;
        let meta = CheckpointMeta { state: state.clone(), metrics: self.metrics.clone() };
        write_atomic(&dir.join(format!("{stage}.json")), &serde_json::to_vec(&meta)?)?;
        write_csv(&self.dir.join("metrics.csv"), &self.metrics)?;
        if let Some(limit) = self.interrupt_after {
            if self.steps_run >= limit {
                return Err(Interrupted(self.steps_run).into());
            }
        }
        Ok(())
    }

    fn load_checkpoint(&mut self, stage: &str) -> Result<Option<(TensorMap, LoopState)>> {
        let meta_path = self.dir.join("checkpoints").join(format!("{stage}.json"));
        if !self.resume || !meta_path.exists() {
            return Ok(None);
        }
        let meta: CheckpointMeta =
            serde_json::from_slice(&std::fs::read(&meta_path)?).with_context(|| format!("reading checkpoint {}", meta_path.display()))?;
        let map = read_safetensors(&self.dir.join("checkpoints").join(format!("{stage}.safetensors")))?;
        self.metrics = meta.metrics;
        Ok(Some((map, meta.state)))
    }

    fn progress(&mut self, stage: &str, step: u64, total: u64, loss: f32) {
        self.steps_run += 1;
        if !self.progress {
            return;
        }
        if std::io::stderr().is_terminal() {
            if step == 1 || self.bar.is_none() {
                let b = indicatif::ProgressBar::new(total);
                b.set_style(
                    indicatif::ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} loss {msg} eta {eta}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                b.set_prefix(stage.to_string());
                self.bar = Some(b);
            }
            if let Some(b) = &self.bar {
                b.set_position(step);
                b.set_message(format!("{loss:.4}"));
                if step == total {
                    b.finish();
                    self.bar = None;
                }
            }
        } else if self.last_log.elapsed().as_secs_f64() > 10.0 || step == total {
            self.last_log = Instant::now();
            eprintln!("kdx: [{stage}] step {step}/{total} loss {loss:.4}");
        }
    }
}

fn train_rows(m: &[f32], width: usize, idx: &[usize]) -> Vec<f32> {
    let mut v = Vec::with_capacity(idx.len() * width);
    for &i in idx {
        v.extend_from_slice(&m[i * width..(i + 1) * width]);
    }
    v
}
