//! The engine: runs a [`Plan`] — teacher (pre-trained or from the cache) → its outputs
//! once → distillation → optional fine-tuning → baseline → test evaluation → reports.
//!
//! One function per stage, called in order by [`run`]. The engine reports what happens as
//! [`Event`]s to an [`Observer`] and never prints: presentation belongs to the application.

mod checkpoints;
mod evaluator;
mod fit;
pub mod hooks;
pub mod inputs;
pub mod loss_report;
pub mod metrics;
mod monitor;
pub mod objective;
mod options;
pub mod preview;
pub mod queues;
mod reporter;
mod reports;
pub mod rows;
mod stage_loop;
pub mod stage_run;
pub mod teacher;
pub mod train;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::dataset::Task;
use crate::event::{Event, Observer, RunStatus, TeacherSource};
use crate::features::FeatureCache;
pub use crate::infer::predict;
use crate::model::{init_from, Model, ModelSpec};
use crate::plan::{Init, Instances, LossInstance, Plan};
use crate::report::{peak_rss_mb, write_csv, RunRow};
pub use crate::seed::mix;
use crate::stage::Stage;
pub use inputs::{Inputs, TeacherOut};
pub use metrics::metric_rows;
use monitor::Monitor;
pub use options::{Interrupted, RunOptions};
use reports::Finetuned;
use teacher::Teacher;
use train::{run_hard_label_stage, run_stage, LoopState, StageLoss, StageRun};

/// Takes the OS lock of a run directory (`DIR/.lock`, held while the returned file stays
/// open, released by the OS when the process dies), or `None` when another process holds
/// it. The holder's pid is written into the file for people looking at a stuck run.
pub fn lock_run(dir: &Path) -> Result<Option<std::fs::File>> {
    use fs2::FileExt;
    use std::io::Write;
    no_links_below(dir.parent().and_then(Path::parent).unwrap_or(dir), dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join(".lock");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    match f.try_lock_exclusive() {
        Ok(()) => {
            let _ = f.set_len(0).and_then(|_| writeln!(f, "{}", std::process::id()));
            Ok(Some(f))
        }
        Err(e)
            if e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
                || e.kind() == std::io::ErrorKind::WouldBlock =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("locking {}", p.display())),
    }
}

/// Whether `path` lies inside `root`: every component after `root` is a plain name that does
/// not start with `.`. Checked before the engine writes or deletes under a run directory.
fn contained(root: &Path, path: &Path) -> bool {
    use std::path::Component;
    path.strip_prefix(root).is_ok_and(|rest| {
        rest.components().all(|c| matches!(c, Component::Normal(n) if !n.to_string_lossy().starts_with('.')))
    })
}

/// Refuses a path below `root` that passes through a symbolic link (an experiment or run
/// directory, or `checkpoints`, that is a link): kdx would write, and clear checkpoints,
/// wherever it points. Checked on what is on disk, component by component, before anything
/// is written or deleted; the results directory itself may be a link (the user chose it).
pub fn no_links_below(root: &Path, path: &Path) -> Result<()> {
    let Ok(rest) = path.strip_prefix(root) else { return Ok(()) };
    let mut at = root.to_path_buf();
    for c in rest.components() {
        at.push(c);
        if let Ok(m) = std::fs::symlink_metadata(&at) {
            anyhow::ensure!(
                !m.file_type().is_symlink(),
                "refusing to write to {}: {} is a symbolic link (to {}), and kdx writes and deletes only inside {} itself; \
                 remove the link, or give the experiment another name",
                path.display(),
                at.display(),
                std::fs::read_link(&at).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into()),
                root.display()
            );
        }
    }
    Ok(())
}

/// The hash in the first line of a run's `recipe.toml` (`# resolved recipe of … (hash H)`).
fn recorded_hash(recipe: &Path) -> Option<String> {
    use std::io::{BufRead, Read};
    let mut first = String::new();
    std::io::BufReader::new(std::fs::File::open(recipe).ok()?).take(4096).read_line(&mut first).ok()?;
    let hash = first.trim_end().strip_suffix(')')?.rsplit_once("(hash ")?.1;
    Some(hash.to_string())
}

/// Where a plan's run writes.
pub fn run_dir(plan: &Plan, results: &Path) -> PathBuf {
    results.join(&plan.experiment.name).join(&plan.run_name)
}

/// Runs a plan and writes its reports, telling `observer` what happens. On failure
/// `run.csv` records the error too.
pub fn run(plan: &Plan, opts: &RunOptions, observer: &mut dyn Observer) -> Result<RunRow> {
    let started = Instant::now();
    let dir = run_dir(plan, &opts.results);
    let _lock = claim_run_dir(opts, &dir)?;
    let hash = plan.doc.content_hash();
    // A resume of another recipe is refused before anything is written: the interrupted
    // run's recipe.toml stays the one its checkpoints belong to.
    let recorded = dir.join("recipe.toml");
    if let Some(old) = opts.resume.then(|| recorded_hash(&recorded)).flatten() {
        anyhow::ensure!(
            old == hash,
            "{} was written by another recipe (hash {old}; this one is {hash}): the recipe changed since the run was interrupted; \
             run without --resume to start this run over",
            recorded.display()
        );
    }
    observer.event(&Event::RunStarted {
        experiment: plan.experiment.name.clone(),
        run: plan.run_name.clone(),
        hash: hash.clone(),
        dir: dir.clone(),
        resume: opts.resume,
    });
    let resolved = format!(
        "# resolved recipe of {} (hash {hash})\n{}",
        plan.doc.path().display(),
        plan.doc.to_toml_string()
    );
    kdx_fsio::write_atomic(&recorded, resolved.as_bytes())?;
    let mut row = RunRow {
        experiment: plan.experiment.name.clone(),
        run: plan.run_name.clone(),
        recipe: plan.doc.path().display().to_string(),
        hash,
        ..RunRow::not_run()
    };
    let result = run_stages(plan, opts, &dir, &mut row, observer);
    row.status = match &result {
        Ok(()) => RunStatus::Ok,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => RunStatus::Interrupted,
        Err(_) => RunStatus::Failed,
    };
    row.error = result.as_ref().err().map(|e| format!("{e:#}")).unwrap_or_default();
    row.wall_s = started.elapsed().as_secs_f64();
    row.peak_rss_mb = peak_rss_mb();
    let written = write_csv(&dir.join("run.csv"), std::slice::from_ref(&row));
    observer.event(&Event::RunFinished {
        status: row.status,
        error: Some(row.error.clone()).filter(|e| !e.is_empty()),
        wall_s: row.wall_s,
    });
    result?;
    written?;
    Ok(row)
}

/// Makes the run directory this process's: checks it lies inside the results root with no
/// link on the way, takes its lock (unless the caller holds it: `None` then), removes what
/// killed writers left (there and in the shared caches) and, unless resuming, the old
/// checkpoints.
fn claim_run_dir(opts: &RunOptions, dir: &Path) -> Result<Option<std::fs::File>> {
    let ckpt = dir.join("checkpoints");
    // The plan admits plain names only; this holds the engine to it before it touches anything.
    anyhow::ensure!(
        contained(&opts.results, &ckpt),
        "refusing to write to {}: the run directory is not inside {}",
        dir.display(),
        opts.results.display()
    );
    no_links_below(&opts.results, &ckpt)?;
    let lock = match opts.lock_held {
        true => None,
        false => Some(lock_run(dir)?.with_context(|| {
            let pid = std::fs::read_to_string(dir.join(".lock")).unwrap_or_default();
            format!(
                "{} is in use by another kdx process (pid {}): wait for it, or give this experiment another name",
                dir.display(),
                pid.trim()
            )
        })?),
    };
    // What a killed writer left behind (never a file in use: those have a live pid).
    for d in [dir, ckpt.as_path()] {
        kdx_fsio::remove_stale_temporaries(d);
    }
    // And in the shared caches (teachers, their outputs, features), which a run killed while
    // writing one leaves too.
    let cache = opts.results.join(".cache");
    let cache_dirs =
        std::fs::read_dir(&cache).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir());
    for d in std::iter::once(cache.clone()).chain(cache_dirs) {
        kdx_fsio::remove_stale_temporaries(&d);
    }
    if !opts.resume && ckpt.exists() {
        std::fs::remove_dir_all(&ckpt).with_context(|| format!("clearing {}", ckpt.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(lock)
}

/// The teacher network and its featurisation of the training examples, for layer-wise losses.
type TeacherNet<'a> = Option<(&'a dyn Model, &'a Inputs)>;

/// What the stages share: the task, the feature cache and the teacher's outputs.
struct Shared {
    task: Task,
    fcache: FeatureCache,
    /// Whether gold labels may reach the student's losses (false in cross-lingual
    /// distillation, where the teacher reads the sources).
    labels_visible: bool,
    /// The teacher's outputs on the training examples, when a loss reads them.
    t_out: Option<TeacherOut>,
    /// The student's featurisation of the training split.
    s_train: Inputs,
    /// The run seed.
    seed: u64,
    /// Where models cache vocabularies they learn from the training text.
    vocab_cache: PathBuf,
}

impl Shared {
    /// What the stages of a run of `plan` on `task` share, before the models are built.
    fn new(plan: &Plan, opts: &RunOptions, task: Task) -> Result<Shared> {
        let cache = opts.results.join(".cache");
        Ok(Shared {
            fcache: FeatureCache { dir: Some(cache.join("features")), data_key: plan.data_fingerprint()? },
            labels_visible: !task.teacher_reads_source,
            t_out: None,
            s_train: Inputs::default(),
            seed: plan.experiment.seed,
            vocab_cache: cache.join("vocabularies"),
            task,
        })
    }

    /// What a model is built for; `source` when it reads the training examples' sources
    /// (a teacher in cross-lingual distillation).
    fn spec(&self, seed: u64, source: bool) -> ModelSpec {
        let texts = self
            .task
            .train
            .iter()
            .map(|e| if source { e.source.clone().unwrap_or_default() } else { e.text.clone() })
            .collect();
        ModelSpec {
            classes: self.task.labels.len(),
            labels: self.task.labels.clone(),
            langs: self.task.langs.clone(),
            seed,
            train_texts: std::sync::Arc::new(texts),
            cache_dir: Some(self.vocab_cache.clone()),
            tokenizer_file: None,
        }
    }

    /// A stage over the student's training split.
    fn stage<'a>(&'a self, stage: Stage, cfg: &'a crate::plan::StageConfig, teacher: bool) -> StageRun<'a> {
        StageRun {
            stage,
            cfg,
            train: &self.s_train,
            teacher: if teacher { self.t_out.as_ref() } else { None },
            teacher_net: None,
            labels_visible: stage == Stage::Baseline || self.labels_visible,
            allowed: None,
            seed: mix(&[self.seed, stage.seed_tag()]),
            n_langs: self.task.langs.len(),
        }
    }
}

fn run_stages(
    plan: &Plan,
    opts: &RunOptions,
    dir: &Path,
    row: &mut RunRow,
    observer: &mut dyn Observer,
) -> Result<()> {
    let task = load_task(plan, observer)?;
    let mut monitor = Monitor::new(opts, dir, &task, plan.train.eval_fraction, &row.hash, observer);
    let mut shared = Shared::new(plan, opts, task)?;

    let mut parts = plan.instantiate()?;
    let teacher = teacher_side(plan, &mut shared, &mut monitor, row)?;
    let ready = &teacher.ready;

    // ---- Student: distil, then optionally fine-tune. ----
    let mut student = new_student(plan, &shared)?;
    if plan.init == Init::FromTeacher {
        monitor.note(format!(
            "student: initialised from the teacher ({})",
            teacher.copied_into_student(&mut *student)?
        ));
    }
    row.student_params = student.num_params();
    row.compression = row.teacher_params as f64 / row.student_params.max(1) as f64;
    shared.s_train = Inputs::new(&*student, &shared.task.train, false, &shared.fcache, "train")?;
    monitor.eval.student_dev = Inputs::new(&*student, &shared.task.dev, false, &shared.fcache, "dev")?;
    let s_test = Inputs::new(&*student, &shared.task.test, false, &shared.fcache, "test")?;
    let teacher_net = teacher.network_for_layers(plan)?;
    let distilled = distill(plan, &mut parts, &shared, &mut *student, teacher_net, &mut monitor)?;
    row.train_examples_per_s =
        (plan.train.steps as f64 * plan.train.batch as f64) / distilled.train_seconds.max(1e-9);
    let finetuned = finetune(
        plan,
        &mut parts,
        &shared,
        &mut *student,
        teacher_net,
        &s_test,
        &teacher.test_logits,
        &mut monitor,
    )?;

    // ---- Baseline: the same student, hard labels, no teacher. ----
    let baseline = baseline(plan, &mut parts, &shared, &mut monitor)?;
    let untrained = untrained_reference(plan, &shared, &teacher)?;

    reports::finish(
        reports::Finished {
            plan,
            losses: &parts.losses,
            task: &shared.task,
            dir,
            teacher: &ready.teacher,
            teacher_cache: &ready.cache,
            t_test: &teacher.test_logits,
            t_test_inputs: &teacher.test_inputs,
            student: &*student,
            s_test: &s_test,
            baseline: baseline.as_deref(),
            untrained: untrained.as_deref(),
            distilled: &distilled,
            finetuned,
        },
        row,
        &mut monitor,
    )
}

/// The recipe's data, loaded and checked; the observer hears its size.
fn load_task(plan: &Plan, observer: &mut dyn Observer) -> Result<Task> {
    let task = plan.dataset.load().context("loading the dataset")?;
    task.validate().map_err(|e| {
        anyhow::anyhow!("the dataset plugin `{}` produced an invalid task: {e}", plan.data_plugin)
    })?;
    observer.event(&Event::TaskLoaded {
        languages: task.langs.len(),
        classes: task.labels.len(),
        train: task.train.len(),
        dev: task.dev.len(),
        test: task.test.len(),
    });
    Ok(task)
}

/// Parallel data has no labels to train a baseline on; the student as built (the same
/// seed gives the same initial weights) is retrieval's reference instead.
fn untrained_reference(
    plan: &Plan,
    shared: &Shared,
    teacher: &TeacherSide,
) -> Result<Option<Box<dyn Model>>> {
    if !shared.task.is_parallel() {
        return Ok(None);
    }
    let mut u = new_student(plan, shared)?;
    if plan.init == Init::FromTeacher {
        teacher.copied_into_student(&mut *u)?;
    }
    Ok(Some(u))
}

/// The student as the recipe builds it, before any training.
fn new_student(plan: &Plan, shared: &Shared) -> Result<Box<dyn Model>> {
    plan.student.builder.build(&shared.spec(mix(&[shared.seed, crate::seed::build::STUDENT]), false))
}

/// The teacher, ready for the student's stages: pre-trained or from its cache, its outputs
/// on every split it is read on.
struct TeacherSide {
    ready: teacher::Ready,
    /// Its test logits and its featurisation of the test split.
    test_logits: Vec<f32>,
    test_inputs: Inputs,
    /// Its featurisation of the training split, for layer-wise losses (which run it batch by
    /// batch).
    train_inputs: Option<Inputs>,
}

impl TeacherSide {
    /// Copies the teacher's weights into a student (`init = "from-teacher"`); says what.
    fn copied_into_student(&self, student: &mut dyn Model) -> Result<String> {
        let network =
            self.ready.teacher.network().context("init = \"from-teacher\" needs a teacher with weights")?;
        Ok(init_from(student, network)?.join(", "))
    }

    /// The teacher network with its training inputs, when layer-wise losses read it.
    fn network_for_layers(&self, plan: &Plan) -> Result<TeacherNet<'_>> {
        match (&self.train_inputs, self.ready.teacher.network()) {
            (Some(inputs), Some(net)) => Ok(Some((net, inputs))),
            (Some(_), None) => anyhow::bail!(
                "layer-wise losses need a teacher network, and `{}` holds outputs only",
                plan.teacher.plugin
            ),
            (None, _) => Ok(None),
        }
    }
}

/// Builds the teacher, pre-trains it (or loads it from the cache) and computes its outputs:
/// on the training split once (unless layer-wise losses run it batch by batch), on dev for
/// the agreement columns, on test for the reports.
fn teacher_side(
    plan: &Plan,
    shared: &mut Shared,
    monitor: &mut Monitor,
    row: &mut RunRow,
) -> Result<TeacherSide> {
    let reads_source = shared.task.teacher_reads_source;
    let teacher = Teacher::build(&*plan.teacher.builder, &shared.spec(plan.teacher_seed(), reads_source))?;
    monitor.eval.teacher_dev = teacher.inputs(&shared.task.dev, reads_source, &shared.fcache, "dev")?;
    let ready = teacher::pretrain(plan, teacher, &shared.task, &shared.fcache, monitor)?;
    row.teacher_cached = ready.source == TeacherSource::Cache;
    row.teacher_params = ready.teacher.num_params();
    let any_teacher_loss = plan.losses.iter().any(|l| l.needs.teacher);
    // With a layer-wise loss the teacher network runs on every batch anyway, and its outputs
    // come from there: no pass over the whole training set first.
    let layered = plan.losses.iter().any(|l| l.needs.layers);
    // A pretrained encoder reading every split can take minutes the first time: say so, and
    // how long it took (cached outputs come back at once).
    let encoding = std::time::Instant::now();
    if ready.teacher.network().is_some() {
        let (n, t) = (
            if layered { 0 } else { shared.task.train.len() },
            shared.task.dev.len() + shared.task.test.len(),
        );
        monitor.note(format!(
            "teacher: outputs on {n} training and {t} dev and test examples (cached in {})",
            ready.cache.display()
        ));
    }
    if !layered {
        let t_out = teacher::train_outputs(plan, &ready, &shared.task, &shared.fcache)?;
        shared.t_out = any_teacher_loss.then_some(t_out);
    }
    let t_dev =
        ready.teacher.outputs(&monitor.eval.teacher_dev, &shared.task.dev, "dev", &ready.cache)?.logits;
    let test_inputs = ready.teacher.inputs(&shared.task.test, reads_source, &shared.fcache, "test")?;
    let test_logits = ready.teacher.outputs(&test_inputs, &shared.task.test, "test", &ready.cache)?.logits;
    monitor.eval.teacher_dev_logits = Some(t_dev);
    if ready.teacher.network().is_some() {
        monitor.note(format!("teacher: outputs ready in {:.1} s", encoding.elapsed().as_secs_f64()));
    }
    let train_inputs = match layered {
        true => Some(ready.teacher.inputs(&shared.task.train, reads_source, &shared.fcache, "train")?),
        false => None,
    };
    Ok(TeacherSide { ready, test_logits, test_inputs, train_inputs })
}

/// Distillation: the recipe's losses and sampler, the teacher's outputs.
fn distill(
    plan: &Plan,
    parts: &mut Instances,
    shared: &Shared,
    student: &mut dyn Model,
    teacher_net: TeacherNet,
    monitor: &mut Monitor,
) -> Result<LoopState> {
    if !shared.labels_visible {
        // Cross-lingual transfer: the student must learn from the teacher alone.
        for l in &plan.losses {
            anyhow::ensure!(
                !l.needs.labels,
                "loss `{}` reads gold labels, but in this task the student sees translations and must learn from the teacher only",
                l.plugin
            );
        }
    }
    let cfg = plan.train.stage();
    let run = StageRun { teacher_net, ..shared.stage(Stage::Distill, &cfg, true) };
    let mut losses = stage_losses(&mut parts.losses);
    run_stage(&run, student, &mut losses, &mut *parts.samplers.distill, &shared.task.langs, monitor)
}

/// The optional fine-tuning stage (`[finetune]`): a language subset, the distillation
/// losses or hard labels. The student is scored on test before it, so one run shows both.
#[allow(clippy::too_many_arguments)]
fn finetune(
    plan: &Plan,
    parts: &mut Instances,
    shared: &Shared,
    student: &mut dyn Model,
    teacher_net: TeacherNet,
    s_test: &Inputs,
    t_test: &[f32],
    monitor: &mut Monitor,
) -> Result<Finetuned> {
    let (Some(ft), Some(sampler)) = (plan.finetune.clone(), parts.samplers.finetune.as_mut()) else {
        return Ok(Finetuned::default());
    };
    let task = &shared.task;
    let logits = predict(student, &s_test.bags)?.logits;
    let distilled_test_rows = metric_rows(
        "distill",
        "test",
        plan.train.steps,
        &logits,
        task.labels.len(),
        s_test,
        Some(t_test),
        &task.langs,
        &monitor.eval.in_macro,
    );
    let allowed = if ft.languages.is_empty() {
        None
    } else {
        let mut a = vec![false; task.langs.len()];
        for l in &ft.languages {
            let i = task.langs.iter().position(|x| x == l).with_context(|| {
                format!(
                    "[finetune] languages: `{l}` is not a language of this task ({})",
                    task.langs.join(", ")
                )
            })?;
            a[i] = true;
        }
        Some(a)
    };
    let cfg = ft.stage();
    let run = StageRun {
        allowed,
        teacher_net: teacher_net.filter(|_| ft.distill),
        ..shared.stage(Stage::Finetune, &cfg, ft.distill)
    };
    let state = if ft.distill {
        let mut losses = stage_losses(&mut parts.losses);
        run_stage(&run, student, &mut losses, &mut **sampler, &task.langs, monitor)?
    } else {
        run_hard_label_stage(&run, student, &mut **sampler, &task.langs, monitor)?
    };
    Ok(Finetuned { sampling: state.sampling, distilled_test_rows })
}

/// The baseline: the same student architecture trained on hard labels without a teacher,
/// with the distillation stage's sampler, steps and batches. Skipped where the student may
/// not see gold labels.
fn baseline(
    plan: &Plan,
    parts: &mut Instances,
    shared: &Shared,
    monitor: &mut Monitor,
) -> Result<Option<Box<dyn Model>>> {
    let Some(sampler) = parts.samplers.baseline.as_mut() else { return Ok(None) };
    if !shared.labels_visible {
        monitor.note("baseline skipped: the student may not see gold labels in this task (the teacher reads the sources)");
        return Ok(None);
    }
    let mut b = new_student(plan, shared)?;
    let cfg = plan.train.stage();
    let run = shared.stage(Stage::Baseline, &cfg, false);
    run_hard_label_stage(&run, &mut *b, &mut **sampler, &shared.task.langs, monitor)?;
    Ok(Some(b))
}

/// The run's losses as a stage trains with them.
fn stage_losses(losses: &mut [LossInstance]) -> Vec<StageLoss<'_>> {
    losses.iter_mut().map(|l| StageLoss { name: &l.plugin, weight: &l.weight, loss: &mut *l.loss }).collect()
}
