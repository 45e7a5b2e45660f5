//! Recipe → plan: every plugin name resolved through the registry, every parameter typed,
//! every problem located. Nothing downstream of the plan reads TOML.

use std::path::PathBuf;

use kdx_recipe::{unknown_key_help, Diagnostic, Diagnostics, KeyPath, RecipeDoc};

use crate::dataset::Dataset;
use crate::dylib::{Origin, PluginSet};
use crate::loss::Loss;
use crate::model::ModelKind;
use crate::registry::{self, Instance as Built, PluginKind};
use crate::sampler::Sampler;
use crate::schedule::Schedule;

mod resolve;
mod retrieval;
mod sections;
pub use resolve::ModelPlan;
use resolve::{build, known_keys, ok, split_plugin};
pub use retrieval::{EvalSet, RetrievalPlan, RetrievalSection, SetSection, TEST_SET};
pub use sections::{ExperimentSection, FinetuneSection, Init, StageConfig, TrainSection};

/// One `[[loss]]` resolved.
pub struct LossPlan {
    /// Plugin name.
    pub plugin: String,
    /// Weight (a number or a schedule).
    pub weight: Schedule,
    /// The plugin instance.
    pub loss: Box<dyn Loss>,
}

/// The language samplers of a run's stages, each its own instance of the recipe's
/// `[sampler]` (dynamic samplers keep state per stage).
pub struct Samplers {
    /// The distillation stage's.
    pub distill: Box<dyn Sampler>,
    /// The baseline's (`None` when `[train] baseline = false`).
    pub baseline: Option<Box<dyn Sampler>>,
    /// The fine-tuning stage's (`None` without `[finetune]`).
    pub finetune: Option<Box<dyn Sampler>>,
}

/// A fully resolved experiment, ready to run.
pub struct Plan {
    /// The resolved recipe.
    pub doc: RecipeDoc,
    /// Run name within the experiment (the sweep settings, or `run`).
    pub run_name: String,
    /// `[experiment]`.
    pub experiment: ExperimentSection,
    /// `[data]` plugin name.
    pub data_plugin: String,
    /// `[data]`.
    pub dataset: Box<dyn Dataset>,
    /// `[data]` section as written, for cache keys.
    pub data_section: toml::Value,
    /// `[teacher]`.
    pub teacher: ModelPlan,
    /// `[teacher].train`; `None` for a teacher the engine does not pre-train
    /// ([`ModelKind::Precomputed`]).
    pub teacher_train: Option<StageConfig>,
    /// `[student]`.
    pub student: ModelPlan,
    /// `[student].init`.
    pub init: Init,
    /// `[[loss]]`.
    pub losses: Vec<LossPlan>,
    /// `[sampler]` plugin name.
    pub sampler_plugin: String,
    /// `[sampler]`, one instance per stage that samples languages.
    pub samplers: Samplers,
    /// `[train]`.
    pub train: TrainSection,
    /// `[finetune]`.
    pub finetune: Option<FinetuneSection>,
    /// `[retrieval]`: extra evaluation sets and reference models (empty without it).
    pub retrieval: RetrievalPlan,
    /// Dynamic plugin libraries named by `[plugins] libraries` (resolved) and `--plugin`.
    pub libraries: Vec<PathBuf>,
    /// Those libraries, loaded: the losses they provide.
    pub plugins: PluginSet,
}

const TOP_KEYS: &[&str] = &[
    "experiment",
    "data",
    "teacher",
    "student",
    "loss",
    "sampler",
    "train",
    "finetune",
    "retrieval",
    "plugins",
];

impl Plan {
    /// Resolves a loaded recipe (one run: sweeps are expanded before). All problems found
    /// are returned together.
    pub fn from_doc(doc: RecipeDoc, run_name: &str) -> Result<Plan, Diagnostics> {
        Plan::from_doc_with_libraries(doc, run_name, &[])
    }

    /// [`Plan::from_doc`], also loading the plugin libraries `extra_libraries` (named on the
    /// command line: `kdx run --plugin PATH`) besides the recipe's `[plugins] libraries`.
    pub fn from_doc_with_libraries(
        doc: RecipeDoc,
        run_name: &str,
        extra_libraries: &[PathBuf],
    ) -> Result<Plan, Diagnostics> {
        let mut diags = Diagnostics(Vec::new());
        let root = doc.root().clone();
        for key in root.keys() {
            if !TOP_KEYS.contains(&key.as_str()) {
                diags.push(doc.diag(
                    &KeyPath::root().key(key),
                    format!("unknown section `{key}`"),
                    Some(unknown_key_help(key, TOP_KEYS)),
                ));
            }
        }
        let section = |name: &str, diags: &mut Diagnostics| -> Option<toml::Table> {
            match root.get(name) {
                Some(toml::Value::Table(t)) => Some(t.clone()),
                Some(other) => {
                    diags.push(doc.diag(
                        &KeyPath::root().key(name),
                        format!("`{name}` must be a table, found {}", other.type_str()),
                        None,
                    ));
                    None
                }
                None => None,
            }
        };
        let required = |name: &str, diags: &mut Diagnostics| -> Option<toml::Table> {
            let t = section(name, diags);
            if t.is_none() && root.get(name).is_none() {
                diags.push(root_diag(&doc, format!("missing section `[{name}]`"), None));
            }
            t
        };

        // `[plugins]` first: the libraries it names provide loss plugins `[[loss]]` may use.
        let mut named_libraries = Vec::new();
        if let Some(t) = section("plugins", &mut diags) {
            let key = KeyPath::root().key("plugins");
            for (k, v) in &t {
                if k != "libraries" {
                    diags.push(doc.diag(
                        &key.key(k),
                        format!("unknown key `{k}`"),
                        Some(unknown_key_help(k, &["libraries"])),
                    ));
                    continue;
                }
                match v.as_array() {
                    Some(items) => {
                        for (i, item) in items.iter().enumerate() {
                            let at = key.key("libraries").index(i);
                            match item.as_str() {
                                Some(s) => named_libraries
                                    .push((Origin::Recipe(at.clone()), doc.resolve_path(&at, s))),
                                None => diags.push(doc.diag(&at, "expected a path string", None)),
                            }
                        }
                    }
                    None => diags.push(doc.diag(&key.key("libraries"), "expected an array of paths", None)),
                }
            }
        }
        named_libraries.extend(extra_libraries.iter().map(|p| (Origin::CommandLine, p.clone())));
        let plugins = PluginSet::load(&doc, &named_libraries, &mut diags);
        let libraries: Vec<PathBuf> = named_libraries.into_iter().map(|(_, p)| p).collect();

        let experiment = required("experiment", &mut diags).and_then(|t| {
            ok(&mut diags, doc.deserialize_at(&KeyPath::root().key("experiment"), toml::Value::Table(t)))
        });

        let data = required("data", &mut diags).and_then(|t| data_section(&doc, t, &mut diags));

        let teacher = required("teacher", &mut diags).and_then(|mut t| {
            let key = KeyPath::root().key("teacher");
            let train = t.remove("train");
            let section = toml::Value::Table(t.clone());
            let (name, params) = split_plugin(&doc, &key, t, &mut diags)?;
            let Built::Model(m) = build(&doc, &key, PluginKind::Model, &name, params, &["plugin", "train"], &mut diags)? else {
                return None;
            };
            let train = match (train, m.kind().is_network()) {
                (Some(v), true) => Some(ok(&mut diags, doc.deserialize_at::<StageConfig>(&key.key("train"), v))?),
                (None, true) if m.kind() == ModelKind::Pretrained => None,
                (None, true) => {
                    diags.push(doc.diag(
                        &key,
                        "missing key `train` (the teacher's pre-training stage, e.g. `train = { steps = 2000 }`)",
                        None,
                    ));
                    return None;
                }
                (Some(_), false) => {
                    diags.push(doc.diag(
                        &key.key("train"),
                        format!("the `{name}` teacher is not trained by kdx (its outputs come from elsewhere); remove `train`"),
                        None,
                    ));
                    return None;
                }
                (None, false) => None,
            };
            Some((ModelPlan { plugin: name, builder: m, section }, train))
        });

        let student = required("student", &mut diags).and_then(|mut t| {
            let key = KeyPath::root().key("student");
            let init = match t.remove("init") {
                Some(v) => ok(&mut diags, doc.deserialize_at::<Init>(&key.key("init"), v))?,
                None => Init::None,
            };
            let section = toml::Value::Table(t.clone());
            let (name, params) = split_plugin(&doc, &key, t, &mut diags)?;
            match build(&doc, &key, PluginKind::Model, &name, params, &["plugin", "init"], &mut diags)? {
                Built::Model(m) if !m.kind().is_network() => {
                    diags.push(doc.diag(
                        &key.key("plugin"),
                        format!(
                            "the `{name}` model holds outputs computed elsewhere, not a network: a student must be a network that trains"
                        ),
                        None,
                    ));
                    None
                }
                Built::Model(m) => Some((ModelPlan { plugin: name, builder: m, section }, init)),
                _ => None,
            }
        });

        let mut losses = Vec::new();
        let mut loss_keys = Vec::new();
        match root.get("loss") {
            Some(toml::Value::Array(items)) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    let key = KeyPath::root().key("loss").index(i);
                    let Some(mut t) = item.as_table().cloned() else {
                        diags.push(doc.diag(&key, "each `[[loss]]` must be a table", None));
                        continue;
                    };
                    let weight = match t.remove("weight") {
                        Some(v) => ok(&mut diags, doc.deserialize_at::<Schedule>(&key.key("weight"), v)),
                        None => Some(Schedule::Constant(1.0)),
                    };
                    let Some((name, params)) = split_plugin(&doc, &key, t, &mut diags) else { continue };
                    let table = params.clone();
                    let built = match plugins.loss(&name) {
                        Some(lib)
                            if !lib.params_schema().is_none_or(|s| {
                                known_keys(&doc, &key, s, &params, &["plugin", "weight"], &mut diags)
                            }) =>
                        {
                            None
                        }
                        Some(lib) => ok(&mut diags, lib.build_loss(&doc, &key, &params)).map(Built::Loss),
                        None => build(
                            &doc,
                            &key,
                            PluginKind::Loss,
                            &name,
                            params,
                            &["plugin", "weight"],
                            &mut diags,
                        ),
                    };
                    if let (Some(Built::Loss(l)), Some(weight)) = (built, weight) {
                        losses.push(LossPlan { plugin: name, weight, loss: l });
                        loss_keys.push((key, table));
                    }
                }
            }
            Some(toml::Value::Array(_)) | None => diags.push(root_diag(
                &doc,
                "no `[[loss]]`: name at least one loss (e.g. `[[loss]]` with `plugin = \"soft-kl\"`)",
                Some(format!("registered losses: {}", registry::names(PluginKind::Loss).join(", "))),
            )),
            Some(other) => diags.push(doc.diag(
                &KeyPath::root().key("loss"),
                format!("`loss` must be an array of tables (`[[loss]]`), found {}", other.type_str()),
                None,
            )),
        }

        let train = required("train", &mut diags).and_then(|t| {
            ok(
                &mut diags,
                doc.deserialize_at::<TrainSection>(&KeyPath::root().key("train"), toml::Value::Table(t)),
            )
        });
        let finetune = section("finetune", &mut diags).and_then(|t| {
            ok(
                &mut diags,
                doc.deserialize_at::<FinetuneSection>(
                    &KeyPath::root().key("finetune"),
                    toml::Value::Table(t),
                ),
            )
        });

        let retrieval = match root.get("retrieval") {
            Some(v) => retrieval::resolve(&doc, v.clone(), &mut diags).unwrap_or_default(),
            None => RetrievalPlan::default(),
        };

        // Without a `[sampler]`, languages are drawn in proportion to their data.
        let sampler = match section("sampler", &mut diags) {
            Some(t) => {
                let key = KeyPath::root().key("sampler");
                split_plugin(&doc, &key, t, &mut diags).and_then(|(name, params)| {
                    let one = |diags: &mut Diagnostics| match build(
                        &doc,
                        &key,
                        PluginKind::Sampler,
                        &name,
                        params.clone(),
                        &["plugin"],
                        diags,
                    )? {
                        Built::Sampler(s) => Some(s),
                        _ => None,
                    };
                    let distill = one(&mut diags)?;
                    let baseline = match train.as_ref().is_some_and(|t| t.baseline) {
                        true => Some(one(&mut diags)?),
                        false => None,
                    };
                    let finetune = match finetune.is_some() {
                        true => Some(one(&mut diags)?),
                        false => None,
                    };
                    Some((name.clone(), Samplers { distill, baseline, finetune }))
                })
            }
            None => {
                let one = || -> Box<dyn Sampler> { Box::new(crate::sampler::Proportional) };
                let baseline = train.as_ref().is_some_and(|t| t.baseline).then(one);
                let finetune = finetune.is_some().then(one);
                Some(("proportional".to_string(), Samplers { distill: one(), baseline, finetune }))
            }
        };

        if let (Some((t, _)), Some((s, _))) = (&teacher, &student) {
            let shapes = crate::loss::Shapes {
                classes: 0,
                student_hidden_dim: s.builder.hidden_width(),
                teacher_hidden_dim: t.builder.hidden_width(),
                student_layers: s.builder.layer_shape().as_ref().map(crate::dylib::sdk_layer_shape),
                teacher_layers: t.builder.layer_shape().as_ref().map(crate::dylib::sdk_layer_shape),
            };
            for (l, (key, table)) in losses.iter().zip(&loss_keys) {
                if let Err(e) =
                    check_layers(l, &s.plugin, s.builder.layer_shape(), &t.plugin, t.builder.layer_shape())
                {
                    diags.push(doc.diag(&key.key("plugin"), e, None));
                } else if let Err(e) = l.loss.check_shapes(&shapes) {
                    let prefix = format!("loss `{}` does not fit the models: ", l.plugin);
                    diags.push(crate::dylib::parameter_error(&doc, key, table, &format!("{e:#}"), &prefix));
                }
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        // Every `None` above pushed a diagnostic, so these are all present here.
        let (
            Some(experiment),
            Some((data_plugin, dataset, data_section)),
            Some((teacher, teacher_train)),
            Some((student, init)),
            Some((sampler_plugin, samplers)),
            Some(train),
        ) = (experiment, data, teacher, student, sampler, train)
        else {
            return Err(Diagnostics(vec![Diagnostic::new(
                "internal error: incomplete plan without a diagnostic",
            )]));
        };
        let plan = Plan {
            doc,
            run_name: if run_name.is_empty() { "run".into() } else { run_name.into() },
            experiment,
            data_plugin,
            dataset,
            data_section,
            teacher,
            teacher_train,
            student,
            init,
            losses,
            sampler_plugin,
            samplers,
            train,
            finetune,
            retrieval,
            libraries,
            plugins,
        };
        plan.check()?;
        Ok(plan)
    }

    /// The seed the teacher is built with. A teacher kdx does not train (a pretrained
    /// encoder used as it is, precomputed outputs) is the same in every seed of a sweep —
    /// the classification head a pretrained encoder gets is seeded by 0 — so the seeds share
    /// its cache and its outputs, which for a transformer teacher take minutes.
    pub fn teacher_seed(&self) -> u64 {
        let seed = if self.teacher_train.is_some() { self.experiment.seed } else { 0 };
        crate::seed::mix(&[seed, 1])
    }

    /// The key of the teacher's cache (`results/.cache/teacher-<key>`): what the teacher
    /// is and what it is trained on — kdx's version, the data's fingerprint, the `[data]`
    /// and `[teacher]` sections and the seed it is built with ([`Plan::teacher_seed`]). The
    /// engine and `kdx batch` both use this one.
    pub fn teacher_key(&self) -> anyhow::Result<String> {
        let parts = [
            env!("CARGO_PKG_VERSION").to_string(),
            self.dataset.fingerprint()?,
            self.data_section.to_string(),
            self.teacher.section.to_string(),
            toml::to_string(&self.teacher_train).unwrap_or_default(),
            self.teacher_seed().to_string(),
        ];
        let mut joined = Vec::new();
        for p in &parts {
            joined.extend_from_slice(p.as_bytes());
            joined.push(0);
        }
        Ok(kdx_fsio::sha256_hex(&joined)[..20].to_string())
    }

    /// Cross-section checks that need more than one section.
    fn check(&self) -> Result<(), Diagnostics> {
        let mut d = Diagnostics(Vec::new());
        let t = &self.train;
        if t.steps == 0 {
            d.push(self.doc.diag(&KeyPath::root().key("train").key("steps"), "must be at least 1", None));
        }
        if t.batch == 0 {
            d.push(self.doc.diag(&KeyPath::root().key("train").key("batch"), "must be at least 1", None));
        }
        if !(self.train.eval_fraction > 0.0 && self.train.eval_fraction <= 1.0) {
            d.push(self.doc.diag(
                &KeyPath::root().key("train").key("eval_fraction"),
                "must be in (0, 1]",
                None,
            ));
        }
        let root = KeyPath::root();
        if let Err(e) = sections::plain_name(&self.experiment.name, "") {
            d.push(self.doc.diag(&root.key("experiment").key("name"), e, None));
        }
        if let Err(e) = sections::plain_name(&self.run_name, "+=,~") {
            d.push(root_diag(
                &self.doc,
                format!("run name: {e}"),
                Some("the run names of a `[sweep]` come from its values".into()),
            ));
        }
        // Each stage with the model it trains.
        let mut stages: Vec<(KeyPath, StageConfig, &str)> =
            vec![(root.key("train"), self.train.stage(), "student")];
        stages.extend(
            self.teacher_train.iter().map(|t| (root.key("teacher").key("train"), t.clone(), "teacher")),
        );
        stages.extend(self.finetune.iter().map(|f| (root.key("finetune"), f.stage(), "student")));
        for (key, cfg, _) in &stages {
            // A step holds at least this much per example (ids, logits, gradients, indices).
            const PER_EXAMPLE: u128 = 1024;
            let what = format!("a batch of {} examples", cfg.batch);
            if let Err(e) = crate::model::check_memory(&what, cfg.batch as u128 * PER_EXAMPLE) {
                d.push(self.doc.diag(&key.key("batch"), e, None));
            }
            let (lr_key, lr) = cfg.lr_key();
            if !(lr.is_finite() && lr > 0.0) {
                let at = lr_key.split('.').fold(key.clone(), |k, part| k.key(part));
                d.push(self.doc.diag(
                    &at,
                    format!("the learning rate must be a positive number, found {lr}"),
                    None,
                ));
            }
        }
        // Each model's activations at the largest batch it trains with, located at the parameter that sizes them.
        for (role, model) in [("teacher", &self.teacher), ("student", &self.student)] {
            let largest = stages.iter().filter(|s| s.2 == role).max_by_key(|s| s.1.batch);
            let (Some((param, per)), Some((key, cfg, _))) = (model.builder.example_bytes(), largest) else {
                continue;
            };
            let what = format!(
                "a `{key}` batch of {} examples through this model ({per} bytes each while it trains)",
                cfg.batch
            );
            if let Err(e) = crate::model::check_memory(&what, cfg.batch as u128 * per) {
                d.push(self.doc.diag(
                    &root.key(role).key(param),
                    e,
                    Some(format!("a smaller `{param}` or `{key}.batch`")),
                ));
            }
        }
        for (i, l) in self.losses.iter().enumerate() {
            if let Err(e) = l.weight.check_weight() {
                d.push(self.doc.diag(
                    &root.key("loss").index(i).key("weight"),
                    e,
                    Some("to leave a loss out, remove its `[[loss]]` table".into()),
                ));
            }
        }
        if self.init == Init::FromTeacher && !self.teacher.builder.kind().is_network() {
            d.push(self.doc.diag(
                &KeyPath::root().key("student").key("init"),
                format!("init = \"from-teacher\" copies the teacher's weights, but the teacher `{}` has only outputs", self.teacher.plugin),
                Some("use `init = \"none\"`, or a teacher that is a network".into()),
            ));
        }
        d.into_result(())
    }
}

/// A diagnostic about the recipe as a whole, located at the top of its file.
fn root_diag(doc: &RecipeDoc, message: impl Into<String>, help: Option<String>) -> Diagnostic {
    let mut d = doc.diag(&KeyPath::root(), message, help);
    if d.loc.is_none() {
        d.loc = Some(kdx_recipe::Loc { file: doc.path().to_path_buf(), line: 1, col: 1 });
    }
    d
}

/// Builds the `[data]` section: its plugin name, dataset and parameters.
fn data_section(
    doc: &RecipeDoc,
    t: toml::Table,
    diags: &mut Diagnostics,
) -> Option<(String, Box<dyn Dataset>, toml::Value)> {
    let key = KeyPath::root().key("data");
    let (name, params) = split_plugin(doc, &key, t, diags)?;
    match build(doc, &key, PluginKind::Dataset, &name, params.clone(), &["plugin"], diags)? {
        Built::Dataset(d) => Some((name, d, toml::Value::Table(params))),
        _ => None,
    }
}

/// Builds only the `[data]` section of a recipe (its first run, for a sweep): what
/// `kdx examples` needs, before the rest of the recipe (say a `logits-file` teacher whose
/// file is computed from those examples) can be complete.
pub fn load_dataset(path: &std::path::Path) -> Result<Box<dyn Dataset>, Diagnostics> {
    let doc = RecipeDoc::load(path)?;
    let Some(run) = doc.expand_sweep()?.into_iter().next() else {
        return Err(Diagnostics(vec![Diagnostic::new(format!("{}: the recipe has no run", path.display()))]));
    };
    let mut diags = Diagnostics(Vec::new());
    let data = match run.doc.root().get("data") {
        Some(toml::Value::Table(t)) => data_section(&run.doc, t.clone(), &mut diags),
        _ => {
            diags.push(root_diag(&run.doc, "missing section `[data]`", None));
            None
        }
    };
    match data {
        Some((_, d, _)) if diags.is_empty() => Ok(d),
        // Every `None` pushed a diagnostic.
        _ => Err(diags),
    }
}

/// Loads a recipe file and expands its sweep: one plan per run.
pub fn load_plans(path: &std::path::Path) -> Result<Vec<Plan>, Diagnostics> {
    load_plans_with_libraries(path, &[])
}

/// [`load_plans`], also loading the plugin libraries `extra_libraries` (`kdx run --plugin`).
pub fn load_plans_with_libraries(
    path: &std::path::Path,
    extra_libraries: &[PathBuf],
) -> Result<Vec<Plan>, Diagnostics> {
    let doc = RecipeDoc::load(path)?;
    let runs = doc.expand_sweep()?;
    let mut plans = Vec::new();
    let mut diags = Diagnostics(Vec::new());
    for run in runs {
        match Plan::from_doc_with_libraries(run.doc, &run.name, extra_libraries) {
            Ok(p) => plans.push(p),
            Err(d) => diags.0.extend(d.0),
        }
    }
    diags.into_result(plans)
}

/// A layer-wise loss needs a student and a teacher with per-layer states that fit it.
fn check_layers(
    l: &LossPlan,
    student: &str,
    s: Option<crate::model::LayerShape>,
    teacher: &str,
    t: Option<crate::model::LayerShape>,
) -> Result<(), String> {
    if !l.loss.needs_layers() {
        return Ok(());
    }
    let none = |role: &str, name: &str| {
        format!(
            "loss `{}` reads per-layer states, and the {role} `{name}` has none (transformer and hf-encoder models have them)",
            l.plugin
        )
    };
    let s = s.ok_or_else(|| none("student", student))?;
    let t = t.ok_or_else(|| none("teacher", teacher))?;
    l.loss.check_layers(&s, &t).map_err(|e| format!("loss `{}`: {e}", l.plugin))
}
