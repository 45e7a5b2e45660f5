//! The sections of one run's recipe, resolved one by one: a method per section, each
//! pushing what it finds wrong onto one list of diagnostics (so that all problems are
//! reported together) and returning `None` where a section could not be resolved.

use std::path::PathBuf;

use kdx_recipe::{unknown_key_help, Diagnostics, KeyPath, RecipeDoc};

use super::resolve::{
    build, build_loss, build_sampler, data_section, known_keys, ok, root_diag, split_plugin, LossPlan,
    ModelPlan, SamplerPlan,
};
use super::retrieval::{self, RetrievalPlan};
use super::sections::{ExperimentSection, FinetuneSection, Init, StageConfig, TrainSection};

use crate::dataset::Dataset;
use crate::dylib::{Origin, PluginSet};
use crate::model::ModelKind;
use crate::registry::{self, Instance as Built, PluginKind};
use crate::schedule::Schedule;

/// The sections a recipe may have.
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

/// A `[[loss]]` resolved, with the instance built to check it.
pub(super) struct LocatedLoss {
    pub(super) plan: LossPlan,
    probe: Box<dyn crate::loss::Loss>,
}

/// Resolves the sections of one recipe.
pub(super) struct Resolver<'d> {
    doc: &'d RecipeDoc,
    root: toml::Table,
    /// Everything found wrong so far.
    pub(super) diags: Diagnostics,
}

impl<'d> Resolver<'d> {
    /// A resolver for `doc`; reports its unknown top-level sections.
    pub(super) fn new(doc: &'d RecipeDoc) -> Resolver<'d> {
        let mut r = Resolver { doc, root: doc.root().clone(), diags: Diagnostics(Vec::new()) };
        for key in r.root.keys() {
            if !TOP_KEYS.contains(&key.as_str()) {
                r.diags.push(doc.diag(
                    &KeyPath::root().key(key),
                    format!("unknown section `{key}`"),
                    Some(unknown_key_help(key, TOP_KEYS)),
                ));
            }
        }
        r
    }

    /// Section `name` when it is there and a table.
    fn section(&mut self, name: &str) -> Option<toml::Table> {
        match self.root.get(name) {
            Some(toml::Value::Table(t)) => Some(t.clone()),
            Some(other) => {
                self.diags.push(self.doc.diag(
                    &KeyPath::root().key(name),
                    format!("`{name}` must be a table, found {}", other.type_str()),
                    None,
                ));
                None
            }
            None => None,
        }
    }

    /// Section `name`, which a recipe must have.
    fn required(&mut self, name: &str) -> Option<toml::Table> {
        let t = self.section(name);
        if t.is_none() && self.root.get(name).is_none() {
            self.diags.push(root_diag(self.doc, format!("missing section `[{name}]`"), None));
        }
        t
    }

    /// `[plugins]` (first: the libraries it names provide loss plugins `[[loss]]` may use)
    /// and the `--plugin` libraries, loaded.
    pub(super) fn libraries(&mut self, extra: &[PathBuf]) -> (PluginSet, Vec<PathBuf>) {
        let doc = self.doc;
        let mut named = Vec::new();
        if let Some(t) = self.section("plugins") {
            let key = KeyPath::root().key("plugins");
            for (k, v) in &t {
                if k != "libraries" {
                    let help = Some(unknown_key_help(k, &["libraries"]));
                    self.diags.push(doc.diag(&key.key(k), format!("unknown key `{k}`"), help));
                    continue;
                }
                let Some(items) = v.as_array() else {
                    self.diags.push(doc.diag(&key.key("libraries"), "expected an array of paths", None));
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    let at = key.key("libraries").index(i);
                    match item.as_str() {
                        Some(s) => named.push((Origin::Recipe(at.clone()), doc.resolve_path(&at, s))),
                        None => self.diags.push(doc.diag(&at, "expected a path string", None)),
                    }
                }
            }
        }
        named.extend(extra.iter().map(|p| (Origin::CommandLine, p.clone())));
        let plugins = PluginSet::load(doc, &named, &mut self.diags);
        (plugins, named.into_iter().map(|(_, p)| p).collect())
    }

    /// `[experiment]`.
    pub(super) fn experiment(&mut self) -> Option<ExperimentSection> {
        let t = self.required("experiment")?;
        ok(
            &mut self.diags,
            self.doc.deserialize_at(&KeyPath::root().key("experiment"), toml::Value::Table(t)),
        )
    }

    /// `[data]`: its plugin name, dataset and parameters.
    pub(super) fn data(&mut self) -> Option<(String, Box<dyn Dataset>, toml::Value)> {
        let t = self.required("data")?;
        data_section(self.doc, t, &mut self.diags)
    }

    /// `[teacher]` and its pre-training stage (`train`), which a network kdx trains needs,
    /// a pretrained one may have and precomputed outputs may not.
    pub(super) fn teacher(&mut self) -> Option<(ModelPlan, Option<StageConfig>)> {
        let (doc, mut t) = (self.doc, self.required("teacher")?);
        let key = KeyPath::root().key("teacher");
        let train = t.remove("train");
        let section = toml::Value::Table(t.clone());
        let (name, params) = split_plugin(doc, &key, t, &mut self.diags)?;
        let Built::Model(m) =
            build(doc, &key, PluginKind::Model, &name, params, &["plugin", "train"], &mut self.diags)?
        else {
            return None;
        };
        let train = match (train, m.kind().is_network()) {
            (Some(v), true) => {
                Some(ok(&mut self.diags, doc.deserialize_at::<StageConfig>(&key.key("train"), v))?)
            }
            (None, true) if m.kind() == ModelKind::Pretrained => None,
            (None, true) => {
                self.diags.push(doc.diag(
                    &key,
                    "missing key `train` (the teacher's pre-training stage, e.g. `train = { steps = 2000 }`)",
                    None,
                ));
                return None;
            }
            (Some(_), false) => {
                self.diags.push(doc.diag(
                    &key.key("train"),
                    format!("the `{name}` teacher is not trained by kdx (its outputs come from elsewhere); remove `train`"),
                    None,
                ));
                return None;
            }
            (None, false) => None,
        };
        Some((ModelPlan { plugin: name, builder: m, section }, train))
    }

    /// `[student]` (a network) and how it starts (`init`).
    pub(super) fn student(&mut self) -> Option<(ModelPlan, Init)> {
        let (doc, mut t) = (self.doc, self.required("student")?);
        let key = KeyPath::root().key("student");
        let init = match t.remove("init") {
            Some(v) => ok(&mut self.diags, doc.deserialize_at::<Init>(&key.key("init"), v))?,
            None => Init::None,
        };
        let section = toml::Value::Table(t.clone());
        let (name, params) = split_plugin(doc, &key, t, &mut self.diags)?;
        match build(doc, &key, PluginKind::Model, &name, params, &["plugin", "init"], &mut self.diags)? {
            Built::Model(m) if !m.kind().is_network() => {
                self.diags.push(doc.diag(
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
    }

    /// Every `[[loss]]`, built-in or from a library; at least one.
    pub(super) fn losses(&mut self, plugins: &PluginSet) -> Vec<LocatedLoss> {
        let doc = self.doc;
        let mut losses = Vec::new();
        match self.root.get("loss").cloned() {
            Some(toml::Value::Array(items)) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    let key = KeyPath::root().key("loss").index(i);
                    let Some(t) = item.as_table().cloned() else {
                        self.diags.push(doc.diag(&key, "each `[[loss]]` must be a table", None));
                        continue;
                    };
                    losses.extend(self.loss(plugins, key, t));
                }
            }
            Some(toml::Value::Array(_)) | None => self.diags.push(root_diag(
                doc,
                "no `[[loss]]`: name at least one loss (e.g. `[[loss]]` with `plugin = \"soft-kl\"`)",
                Some(format!("registered losses: {}", registry::names(PluginKind::Loss).join(", "))),
            )),
            Some(other) => self.diags.push(doc.diag(
                &KeyPath::root().key("loss"),
                format!("`loss` must be an array of tables (`[[loss]]`), found {}", other.type_str()),
                None,
            )),
        }
        losses
    }

    /// One `[[loss]]` table: its weight and its plugin, from a library when one provides it.
    fn loss(&mut self, plugins: &PluginSet, key: KeyPath, mut t: toml::Table) -> Option<LocatedLoss> {
        let doc = self.doc;
        let weight = match t.remove("weight") {
            Some(v) => ok(&mut self.diags, doc.deserialize_at::<Schedule>(&key.key("weight"), v)),
            None => Some(Schedule::Constant(1.0)),
        };
        let (name, params) = split_plugin(doc, &key, t, &mut self.diags)?;
        let table = params.clone();
        if let Some(schema) = plugins.loss(&name).and_then(|lib| lib.params_schema()) {
            if !known_keys(doc, &key, schema, &params, &["plugin", "weight"], &mut self.diags) {
                return None;
            }
        }
        let probe = build_loss(doc, plugins, &key, &name, params, &mut self.diags)?;
        let plan = LossPlan { plugin: name, weight: weight?, needs: probe.needs(), key, params: table };
        Some(LocatedLoss { plan, probe })
    }

    /// `[train]`.
    pub(super) fn train(&mut self) -> Option<TrainSection> {
        let t = self.required("train")?;
        ok(&mut self.diags, self.doc.deserialize_at(&KeyPath::root().key("train"), toml::Value::Table(t)))
    }

    /// `[finetune]`, when there is one.
    pub(super) fn finetune(&mut self) -> Option<FinetuneSection> {
        let t = self.section("finetune")?;
        ok(&mut self.diags, self.doc.deserialize_at(&KeyPath::root().key("finetune"), toml::Value::Table(t)))
    }

    /// `[retrieval]` (empty without it).
    pub(super) fn retrieval(&mut self) -> RetrievalPlan {
        match self.root.get("retrieval").cloned() {
            Some(v) => retrieval::resolve(self.doc, v, &mut self.diags).unwrap_or_default(),
            None => RetrievalPlan::default(),
        }
    }

    /// `[sampler]`: one instance per stage that samples languages (the baseline's and the
    /// fine-tuning's when there are such stages). Without it, languages are drawn in
    /// proportion to their data.
    pub(super) fn sampler(&mut self, baseline: bool, finetune: bool) -> Option<SamplerPlan> {
        let Some(t) = self.section("sampler") else {
            return Some(SamplerPlan { plugin: "proportional".into(), params: None, baseline, finetune });
        };
        let key = KeyPath::root().key("sampler");
        let (plugin, params) = split_plugin(self.doc, &key, t, &mut self.diags)?;
        // Built once to check it; each stage's instance is made by `Plan::instantiate`.
        build_sampler(self.doc, &plugin, params.clone(), &mut self.diags)?;
        Some(SamplerPlan { plugin, params: Some(params), baseline, finetune })
    }

    /// Whether every loss fits the two models: a layer-wise loss needs layers on both sides
    /// that fit it; then each loss checks both models' shapes ([`crate::loss::Loss::check_shapes`]),
    /// reported at the loss's key.
    pub(super) fn check_losses_fit(
        &mut self,
        teacher: &ModelPlan,
        student: &ModelPlan,
        losses: &[LocatedLoss],
    ) {
        let (s, t) = (student.builder.layer_shape(), teacher.builder.layer_shape());
        let shapes = crate::loss::Shapes {
            classes: 0,
            student_hidden_dim: student.builder.hidden_width(),
            teacher_hidden_dim: teacher.builder.hidden_width(),
            student_layers: s.clone(),
            teacher_layers: t.clone(),
        };
        for l in losses {
            let (key, params) = (&l.plan.key, &l.plan.params);
            if let Err(e) = check_layers(l, &student.plugin, s.as_ref(), &teacher.plugin, t.as_ref()) {
                self.diags.push(self.doc.diag(&key.key("plugin"), format!("{e:#}"), None));
            } else if let Err(e) = l.probe.check_shapes(&shapes) {
                let prefix = format!("loss `{}` does not fit the models: ", l.plan.plugin);
                let d = crate::dylib::parameter_error(self.doc, key, params, &format!("{e:#}"), &prefix);
                self.diags.push(d);
            }
        }
    }
}

/// A layer-wise loss needs a student and a teacher with per-layer states that fit it.
fn check_layers(
    l: &LocatedLoss,
    student: &str,
    s: Option<&crate::model::LayerShape>,
    teacher: &str,
    t: Option<&crate::model::LayerShape>,
) -> anyhow::Result<()> {
    let (plugin, needs) = (&l.plan.plugin, l.plan.needs);
    if !needs.layers {
        return Ok(());
    }
    let none = |role: &str, name: &str| {
        format!(
            "loss `{plugin}` reads per-layer states, and the {role} `{name}` has none (transformer and hf-encoder models have them)"
        )
    };
    let s = s.ok_or_else(|| anyhow::anyhow!(none("student", student)))?;
    let t = t.ok_or_else(|| anyhow::anyhow!(none("teacher", teacher)))?;
    l.probe.check_layers(s, t).map_err(|e| anyhow::anyhow!("loss `{plugin}`: {e:#}"))
}
