//! Recipe → plan: every plugin name resolved through the registry, every parameter typed,
//! every problem located. Nothing downstream of the plan reads TOML. A [`Plan`] is checked
//! configuration, read-only: a run makes the loss and sampler instances it trains with
//! ([`Plan::instantiate`]).

use std::path::PathBuf;

use kdx_recipe::{Diagnostic, Diagnostics, KeyPath, RecipeDoc};

use crate::dataset::Dataset;
use crate::dylib::PluginSet;

mod instances;
mod resolve;
mod resolver;
mod retrieval;
mod sections;
pub use instances::{Instances, LossInstance, Samplers};
use resolve::{data_section, root_diag};
pub use resolve::{LossPlan, ModelPlan, SamplerPlan};
use resolver::Resolver;
pub use retrieval::{EvalSet, RetrievalPlan, RetrievalSection, SetSection, TEST_SET};
pub use sections::{ExperimentSection, FinetuneSection, Init, StageConfig, TrainSection};

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
    /// `[sampler]`.
    pub sampler: SamplerPlan,
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
        // One resolver per section, in this order: the libraries first (they provide loss
        // plugins), the stages' samplers once `[train]` and `[finetune]` say which exist.
        let mut r = Resolver::new(&doc);
        let (plugins, libraries) = r.libraries(extra_libraries);
        let experiment = r.experiment();
        let data = r.data();
        let teacher = r.teacher();
        let student = r.student();
        let losses = r.losses(&plugins);
        let train = r.train();
        let finetune = r.finetune();
        let retrieval = r.retrieval();
        let sampler = r.sampler(train.as_ref().is_some_and(|t| t.baseline), finetune.is_some());
        if let (Some((t, _)), Some((s, _))) = (&teacher, &student) {
            r.check_losses_fit(t, s, &losses);
        }
        if !r.diags.is_empty() {
            return Err(r.diags);
        }
        // Every `None` above pushed a diagnostic, so these are all present here.
        let (
            Some(experiment),
            Some((data_plugin, dataset, data_section)),
            Some((teacher, teacher_train)),
            Some((student, init)),
            Some(sampler),
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
            losses: losses.into_iter().map(|l| l.plan).collect(),
            sampler,
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
        crate::seed::mix(&[seed, crate::seed::build::TEACHER])
    }

    /// The key of the teacher's cache (`results/.cache/teacher-<key>`): what the teacher
    /// is and what it is trained on — kdx's version, the data's fingerprint (its `[data]`
    /// section and files), the `[teacher]` section and the seed it is built with ([`Plan::teacher_seed`]). The
    /// engine and `kdx batch` both use this one.
    pub fn teacher_key(&self) -> anyhow::Result<String> {
        let parts = [
            env!("CARGO_PKG_VERSION").to_string(),
            self.data_fingerprint()?,
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

    /// Fresh instances of the recipe's losses and samplers for one run (the plan stays
    /// read-only). They were built once when the plan was checked, so this fails only if a
    /// plugin builds differently the second time.
    pub fn instantiate(&self) -> anyhow::Result<Instances> {
        instances::instantiate(&self.doc, &self.plugins, &self.losses, &self.sampler)
    }

    /// The data's fingerprint ([`crate::dataset::fingerprint`]): the `[data]` section and
    /// the content of the files its plugin reads.
    pub fn data_fingerprint(&self) -> anyhow::Result<String> {
        crate::dataset::fingerprint(&self.data_section, &self.dataset.input_files())
    }

    /// Cross-section checks that need more than one section.
    fn check(&self) -> Result<(), Diagnostics> {
        let mut d = Diagnostics(Vec::new());
        self.check_train_and_names(&mut d);
        let stages = self.stages();
        self.check_stages(&stages, &mut d);
        self.check_model_memory(&stages, &mut d);
        let root = KeyPath::root();
        for (i, l) in self.losses.iter().enumerate() {
            if let Err(e) = l.weight.check_weight() {
                d.push(self.doc.diag(
                    &root.key("loss").index(i).key("weight"),
                    e.to_string(),
                    Some("to leave a loss out, remove its `[[loss]]` table".into()),
                ));
            }
        }
        if self.init == Init::FromTeacher && !self.teacher.builder.kind().is_network() {
            d.push(self.doc.diag(
                &root.key("student").key("init"),
                format!("init = \"from-teacher\" copies the teacher's weights, but the teacher `{}` has only outputs", self.teacher.plugin),
                Some("use `init = \"none\"`, or a teacher that is a network".into()),
            ));
        }
        d.into_result(())
    }

    /// `[train]`'s sizes and fraction, the experiment's and the run's names.
    fn check_train_and_names(&self, d: &mut Diagnostics) {
        let t = &self.train;
        let root = KeyPath::root();
        if t.steps == 0 {
            d.push(self.doc.diag(&root.key("train").key("steps"), "must be at least 1", None));
        }
        if t.batch == 0 {
            d.push(self.doc.diag(&root.key("train").key("batch"), "must be at least 1", None));
        }
        if !(t.eval_fraction > 0.0 && t.eval_fraction <= 1.0) {
            d.push(self.doc.diag(&root.key("train").key("eval_fraction"), "must be in (0, 1]", None));
        }
        if let Err(e) = sections::plain_name(&self.experiment.name, "") {
            d.push(self.doc.diag(&root.key("experiment").key("name"), e.to_string(), None));
        }
        if let Err(e) = sections::plain_name(&self.run_name, "+=,~") {
            d.push(root_diag(
                &self.doc,
                format!("run name: {e}"),
                Some("the run names of a `[sweep]` come from its values".into()),
            ));
        }
    }

    /// Each stage with its key and the model it trains.
    fn stages(&self) -> Vec<(KeyPath, StageConfig, &'static str)> {
        let root = KeyPath::root();
        let mut stages = vec![(root.key("train"), self.train.stage(), "student")];
        stages.extend(
            self.teacher_train.iter().map(|t| (root.key("teacher").key("train"), t.clone(), "teacher")),
        );
        stages.extend(self.finetune.iter().map(|f| (root.key("finetune"), f.stage(), "student")));
        stages
    }

    /// Each stage's batch fits in memory and its learning rate is a positive number.
    fn check_stages(&self, stages: &[(KeyPath, StageConfig, &str)], d: &mut Diagnostics) {
        for (key, cfg, _) in stages {
            // A step holds at least this much per example (ids, logits, gradients, indices).
            const PER_EXAMPLE: u128 = 1024;
            let what = format!("a batch of {} examples", cfg.batch);
            if let Err(e) = crate::model::check_memory(&what, cfg.batch as u128 * PER_EXAMPLE) {
                d.push(self.doc.diag(&key.key("batch"), e.to_string(), None));
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
    }

    /// Each model's activations at the largest batch it trains with, located at the
    /// parameter that sizes them.
    fn check_model_memory(&self, stages: &[(KeyPath, StageConfig, &str)], d: &mut Diagnostics) {
        let root = KeyPath::root();
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
                    e.to_string(),
                    Some(format!("a smaller `{param}` or `{key}.batch`")),
                ));
            }
        }
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
