//! The teacher of a run: a network (pre-trained by the run, or loaded from the cache) or a
//! table of outputs computed elsewhere, as one type. Its outputs on the student's training
//! set are computed once and cached beside its weights (offline distillation).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::inputs::{Inputs, TeacherOut};
use super::monitor::Monitor;
use super::stage_run::StageRun;
use super::train::run_hard_label_stage;
use crate::dataset::{Example, Task};
use crate::event::{Event, TeacherSource};
use crate::features::{FeatureCache, TokenRows};
use crate::infer::predict;
use crate::model::{Model, ModelBuilder, ModelKind, ModelSpec, OutputTable, Outputs};
use crate::plan::Plan;
use crate::report::MetricRow;
use crate::sampler::Proportional;
use crate::seed::mix;
use crate::stage::Stage;
use crate::store::{params_from_map, params_to_map, read_sealed, write_sealed, Metadata, TensorMap};

/// A run's teacher.
pub enum Teacher {
    /// A network: pre-trained by kdx (or loaded from the cache) and run on the data.
    Network(Box<dyn Model>),
    /// Outputs computed elsewhere, looked up by example id.
    Precomputed(Box<dyn OutputTable>),
}

impl Teacher {
    /// Builds the teacher the plugin describes.
    pub fn build(builder: &dyn ModelBuilder, spec: &ModelSpec) -> Result<Teacher> {
        Ok(match builder.kind() {
            ModelKind::Network | ModelKind::Pretrained => Teacher::Network(builder.build(spec)?),
            ModelKind::Precomputed => Teacher::Precomputed(builder.build_table(spec)?),
        })
    }

    /// The network, when the teacher is one.
    pub fn network(&self) -> Option<&dyn Model> {
        match self {
            Teacher::Network(m) => Some(&**m),
            Teacher::Precomputed(_) => None,
        }
    }

    /// Trainable parameters (0 for precomputed outputs).
    pub fn num_params(&self) -> usize {
        self.network().map_or(0, |m| m.num_params())
    }

    /// Width of its hidden representation (0 when it has none).
    pub fn hidden_dim(&self) -> usize {
        match self {
            Teacher::Network(m) => m.hidden_dim(),
            Teacher::Precomputed(t) => t.hidden_dim(),
        }
    }

    /// Featurises `examples` for the teacher (their sources where the teacher reads them).
    /// A precomputed teacher reads no text: only labels and languages are kept.
    pub fn inputs(
        &self,
        examples: &[Example],
        source: bool,
        cache: &FeatureCache,
        split: &str,
    ) -> Result<Inputs> {
        match self {
            Teacher::Network(m) => Inputs::new(&**m, examples, source, cache, split),
            Teacher::Precomputed(_) => Ok(Inputs::labels_only(examples)),
        }
    }

    /// Its outputs on some examples (featurised as `inputs`): looked up by id, or a forward
    /// pass cached in `cache` (the teacher's cache directory). `what` names the examples in
    /// errors.
    pub fn outputs(
        &self,
        inputs: &Inputs,
        examples: &[Example],
        what: &str,
        cache: &Path,
    ) -> Result<Outputs> {
        match self {
            Teacher::Network(m) => cached_predict(cache, &**m, &inputs.bags),
            Teacher::Precomputed(t) => t.lookup(&ids(examples), what),
        }
    }
}

/// The ids of some examples, in order.
fn ids(examples: &[Example]) -> Vec<&str> {
    examples.iter().map(|e| e.id.as_str()).collect()
}

/// The cache directory of the teacher with this key ([`Plan::teacher_key`]).
pub fn cache_dir(results: &Path, key: &str) -> PathBuf {
    results.join(".cache").join(format!("teacher-{key}"))
}

/// The teacher ready for distillation, and where it came from.
pub(super) struct Ready {
    pub teacher: Teacher,
    pub source: TeacherSource,
    /// Its cache directory (also for outputs).
    pub cache: PathBuf,
}

/// Pre-trains the teacher on hard labels and caches it — or loads it from the cache, where
/// this or another run already did (a pretrained teacher without a `train` stage, or
/// precomputed outputs, need neither). The cache directory is locked meanwhile, so concurrent runs that share a
/// teacher train it once.
pub(super) fn pretrain(
    plan: &Plan,
    mut teacher: Teacher,
    task: &Task,
    fcache: &FeatureCache,
    monitor: &mut Monitor,
) -> Result<Ready> {
    let cache = cache_dir(&monitor.results, &plan.teacher_key()?);
    let model = match &mut teacher {
        Teacher::Precomputed(t) => {
            monitor.note(format!("teacher: outputs read from {} (nothing to pre-train)", t.origin()));
            monitor.emit(Event::TeacherReady { source: TeacherSource::Precomputed, cache: None });
            return Ok(Ready { teacher, source: TeacherSource::Precomputed, cache });
        }
        Teacher::Network(_)
            if plan.teacher_train.is_none() && plan.teacher.builder.kind() == ModelKind::Pretrained =>
        {
            monitor.note(format!(
                "teacher: the pretrained `{}` used as it is (no `train` stage)",
                plan.teacher.plugin
            ));
            monitor
                .emit(Event::TeacherReady { source: TeacherSource::Pretrained, cache: Some(cache.clone()) });
            return Ok(Ready { teacher, source: TeacherSource::Pretrained, cache });
        }
        Teacher::Network(m) => m,
    };
    let weights = cache.join("teacher.safetensors");
    let load = |model: &mut dyn Model| weights.exists().then(|| load_cached(&weights, model));
    // A complete cache needs no lock (it is renamed into place whole). Without one, take the
    // lock and look again: it is held until the teacher is in the cache, so another process
    // (a batch with --jobs, or a second batch) that needs the same teacher waits for it
    // instead of training it again.
    let mut cached = load(&mut **model);
    let mut lock = None;
    if !matches!(cached, Some(Ok(_))) {
        lock = Some(lock_cache(&cache, monitor)?);
        cached = load(&mut **model);
    }
    let source = if let Some(Ok(rows)) = cached {
        // The teacher's dev evaluations during its training, as a run that trained it wrote
        // them: metrics.csv is the same whether the teacher was trained or loaded.
        monitor.report.metrics.extend(rows);
        monitor.note(format!("teacher: loaded from cache {}", cache.display()));
        TeacherSource::Cache
    } else {
        if let Some(Err(e)) = cached {
            // Never trusted, never a permanent block: a damaged cache is trained again.
            monitor.note(format!("teacher: the cache is unusable ({e:#}); training the teacher again"));
        }
        train_into_cache(plan, &mut **model, task, fcache, monitor, &weights)?;
        TeacherSource::Trained
    };
    drop(lock);
    monitor.emit(Event::TeacherReady { source, cache: Some(cache.clone()) });
    Ok(Ready { teacher, source, cache })
}

/// Pre-trains the teacher on hard labels and writes it, with its dev metric rows, into its
/// cache (`weights`); its checkpoint is removed then (the cache holds the same weights).
fn train_into_cache(
    plan: &Plan,
    model: &mut dyn Model,
    task: &Task,
    fcache: &FeatureCache,
    monitor: &mut Monitor,
    weights: &Path,
) -> Result<()> {
    let cfg = plan.teacher_train.as_ref().with_context(|| {
        format!(
            "the teacher `{}` has no outputs of its own and no `train` stage to pre-train it",
            plan.teacher.plugin
        )
    })?;
    let t_examples = task.teacher_train.as_deref().unwrap_or(&task.train);
    let inputs = Inputs::new(&*model, t_examples, false, fcache, "teacher-train")?;
    let run = StageRun {
        stage: Stage::Teacher,
        cfg,
        train: &inputs,
        teacher: None,
        teacher_net: None,
        labels_visible: true,
        allowed: None,
        seed: mix(&[plan.experiment.seed, Stage::Teacher.seed_tag()]),
        n_langs: task.langs.len(),
    };
    run_hard_label_stage(&run, model, &mut Proportional, &task.langs, monitor)?;
    let mut map = TensorMap::new();
    params_to_map("", &model.params(), &mut map);
    let rows: Vec<&MetricRow> =
        monitor.report.metrics.iter().filter(|r| r.stage == Stage::Teacher.name()).collect();
    let metadata: Metadata = [("metrics".to_string(), serde_json::to_string(&rows)?)].into_iter().collect();
    write_sealed(weights, &map, metadata)?;
    monitor.checkpoints.remove(Stage::Teacher)
}

/// Loads cached teacher weights into `model`; returns the teacher's dev metric rows.
fn load_cached(weights: &Path, model: &mut dyn Model) -> Result<Vec<MetricRow>> {
    let (map, metadata) = read_sealed(weights)?;
    params_from_map("", &mut model.params_mut(), &map, weights)?;
    let rows = metadata.get("metrics").map(String::as_str).unwrap_or("[]");
    serde_json::from_str(rows).with_context(|| format!("{}: the teacher's metrics", weights.display()))
}

/// The teacher's outputs on the student's training examples, once per training set: read
/// from its cache, or computed and cached. Hidden states are kept only when a loss reads them.
pub(super) fn train_outputs(
    plan: &Plan,
    ready: &Ready,
    task: &Task,
    fcache: &FeatureCache,
) -> Result<TeacherOut> {
    let needs_hidden = plan.losses.iter().any(|l| l.needs.teacher_hidden);
    match &ready.teacher {
        Teacher::Precomputed(table) => {
            let o = table.lookup(&ids(&task.train), "training")?;
            if let Some(l) = plan.losses.iter().find(|l| l.needs.teacher_hidden).filter(|_| o.hidden_dim == 0)
            {
                anyhow::bail!(
                    "loss `{}` reads the teacher's hidden representation, but {} has none (a .safetensors file with a `hidden` tensor can hold it)",
                    l.plugin,
                    table.origin()
                );
            }
            Ok(TeacherOut { logits: o.logits, hidden: o.hidden, hidden_dim: o.hidden_dim })
        }
        Teacher::Network(model) => {
            let path = ready.cache.join(if needs_hidden {
                "train-outputs-hidden.safetensors"
            } else {
                "train-outputs.safetensors"
            });
            let rows = task.train.len();
            let cached = path.exists().then(|| -> Result<TeacherOut> {
                let (map, _) = read_sealed(&path)?;
                let (ls, logits) = map.get("logits").cloned().context("no `logits`")?;
                let (hs, hidden) = map.get("hidden").cloned().unwrap_or_default();
                let hidden_dim = hs.get(1).copied().unwrap_or(0);
                anyhow::ensure!(
                    ls == [rows, task.labels.len()]
                        && hidden.len() == rows * hidden_dim
                        && (!needs_hidden || hidden_dim > 0),
                    "{}: outputs of shape {ls:?} / {hs:?} for {rows} examples",
                    path.display()
                );
                Ok(TeacherOut { logits, hidden, hidden_dim })
            });
            // A damaged file is computed again, never trusted.
            if let Some(Ok(out)) = cached {
                return Ok(out);
            }
            let inputs = Inputs::new(&**model, &task.train, task.teacher_reads_source, fcache, "train")?;
            let o = predict(&**model, &inputs.bags)?;
            let mut map = TensorMap::new();
            map.insert("logits".into(), (vec![inputs.bags.len(), task.labels.len()], o.logits.clone()));
            let (hidden, hidden_dim) = if needs_hidden { (o.hidden, o.hidden_dim) } else { (Vec::new(), 0) };
            if needs_hidden {
                map.insert("hidden".into(), (vec![inputs.bags.len(), hidden_dim], hidden.clone()));
            }
            write_sealed(&path, &map, Metadata::new())?;
            Ok(TeacherOut { logits: o.logits, hidden, hidden_dim })
        }
    }
}

/// Locks a teacher's cache directory (`teacher.lock` in it, an OS lock released when the
/// file is closed, also when the process dies), waiting while another process holds it.
fn lock_cache(cache: &Path, monitor: &mut Monitor) -> Result<std::fs::File> {
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
        monitor.note(format!("teacher: another process is training it; waiting for {}", cache.display()));
        monitor.emit(Event::TeacherWaiting { cache: cache.to_path_buf() });
        f.lock_exclusive().with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(f)
}

/// A teacher network's outputs on featurised inputs, read from its cache directory or
/// computed and cached there under a hash of the inputs. Runs that share a teacher share
/// its dev and test outputs (a sweep's runs, a recipe run again), and a transformer teacher
/// reads only ~70 texts/s on 2 cores.
pub(super) fn cached_predict(cache: &Path, model: &dyn Model, bags: &TokenRows) -> Result<Outputs> {
    use sha2::Digest;
    let mut h = sha2::Sha256::default();
    h.update(format!("{}:{}:{}\n", bags.len(), model.classes(), model.hidden_dim()));
    // The weights are part of the key: a teacher trained again is not served stale outputs.
    for p in model.params() {
        h.update(p.name.as_bytes());
        h.update(p.data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    }
    let langs: &[u32] = if model.routes_by_language() { &bags.langs } else { &[] };
    for part in [&bags.offsets, &bags.ids, langs] {
        h.update(part.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        h.update(b"|");
    }
    let path = cache.join(format!("outputs-{}.safetensors", &kdx_fsio::hex(&h.finalize())[..20]));
    let (n, c, d) = (bags.len(), model.classes(), model.hidden_dim());
    if path.exists() {
        // A damaged or mismatched file is computed again, never trusted.
        if let Ok((map, _)) = read_sealed(&path) {
            if let (Some((ls, logits)), Some((hs, hidden))) = (map.get("logits"), map.get("hidden")) {
                if *ls == [n, c] && *hs == [n, d] {
                    return Ok(Outputs {
                        batch: n,
                        classes: c,
                        hidden_dim: d,
                        logits: logits.clone(),
                        hidden: hidden.clone(),
                        layers: None,
                    });
                }
            }
        }
    }
    let o = predict(model, bags)?;
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut map = TensorMap::new();
    map.insert("logits".into(), (vec![n, c], o.logits.clone()));
    map.insert("hidden".into(), (vec![n, d], o.hidden.clone()));
    write_sealed(&path, &map, Metadata::new())?;
    Ok(o)
}

/// The teacher network's hidden vectors of `texts` (`texts.len() × hidden`), through
/// [`cached_predict`].
pub(super) fn cached_embeddings(cache: &Path, teacher: &dyn Model, texts: &[&str]) -> Result<Vec<f32>> {
    Ok(cached_predict(cache, teacher, &TokenRows::build(teacher.featurizer(), texts.to_vec()))?.hidden)
}
