//! What every section's resolver uses: the `plugin` key split off a section, a plugin built
//! through the registry with its unknown keys reported first, a diagnostic collected, the
//! resolved plugin sections (`ModelPlan`, `LossPlan`, `SamplerPlan`) and the builders of the
//! instances a run makes from them. Below `plan` and each section's resolver (`resolver`,
//! `retrieval`), which all call it, and `instances`.

use kdx_recipe::{did_you_mean, unknown_key_help, Diagnostic, Diagnostics, KeyPath, RecipeDoc};

use crate::dataset::Dataset;
use crate::dylib::PluginSet;
use crate::loss::Loss;
use crate::model::ModelBuilder;
use crate::registry::{self, BuildCtx, Builder, Instance as Built, PluginKind};
use crate::sampler::Sampler;
use crate::schedule::Schedule;

/// A model section resolved: the plugin and its framework-owned settings.
pub struct ModelPlan {
    /// Plugin name.
    pub plugin: String,
    /// The plugin instance.
    pub builder: Box<dyn ModelBuilder>,
    /// The section as written (resolved), for cache keys.
    pub section: toml::Value,
}

/// The value of `r`, or `None` with its diagnostic collected.
pub(super) fn ok<T>(diags: &mut Diagnostics, r: Result<T, Diagnostic>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            diags.push(e);
            None
        }
    }
}

/// Splits the `plugin` key off a section; the rest are the plugin's parameters.
pub(super) fn split_plugin(
    doc: &RecipeDoc,
    key: &KeyPath,
    mut t: toml::Table,
    diags: &mut Diagnostics,
) -> Option<(String, toml::Table)> {
    match t.remove("plugin") {
        Some(toml::Value::String(s)) => Some((s, t)),
        Some(other) => {
            diags.push(doc.diag(
                &key.key("plugin"),
                format!("expected a plugin name (a string), found {}", other.type_str()),
                None,
            ));
            None
        }
        None => {
            // A misspelt `plugin` is the likeliest cause: point at it.
            let near = t.keys().find(|k| did_you_mean(k, &["plugin"]).is_some());
            match near {
                Some(k) => diags.push(doc.diag(
                    &key.key(k.as_str()),
                    format!("unknown key `{k}`"),
                    Some(
                        "did you mean `plugin`? every section names its plugin with `plugin = \"…\"`".into(),
                    ),
                )),
                None => diags.push(doc.diag(key, "missing key `plugin`", None)),
            }
            None
        }
    }
}

/// Builds plugin `name` of `kind` for the section at `key` from `params` (`reserved`: the
/// section's framework keys); `None` with its diagnostics collected.
pub(super) fn build(
    doc: &RecipeDoc,
    key: &KeyPath,
    kind: PluginKind,
    name: &str,
    params: toml::Table,
    reserved: &[&str],
    diags: &mut Diagnostics,
) -> Option<Built> {
    let Some(reg) = registry::find(kind, name) else {
        let names = registry::names(kind);
        let mut help = String::new();
        if let Some(s) = did_you_mean(name, &names) {
            help.push_str(&format!("did you mean `{s}`? "));
        }
        help.push_str(&format!("registered {kind} plugins: {}", names.join(", ")));
        diags.push(doc.diag(&key.key("plugin"), format!("unknown {kind} plugin `{name}`"), Some(help)));
        return None;
    };
    let schema = serde_json::to_value((reg.schema)()).unwrap_or_default();
    if !known_keys(doc, key, &schema, &params, reserved, diags) {
        return None;
    }
    let ctx = BuildCtx { doc, key: key.clone(), params: toml::Value::Table(params) };
    let r = match reg.builder {
        Builder::Dataset(f) => f(&ctx).map(Built::Dataset),
        Builder::Model(f) => f(&ctx).map(Built::Model),
        Builder::Loss(f) => f(&ctx).map(Built::Loss),
        Builder::Sampler(f) => f(&ctx).map(Built::Sampler),
    };
    ok(diags, r)
}

/// Reports every key of `params` that a plugin's `schema` does not accept (when it accepts
/// no others), each located with a suggestion, before the plugin sees its parameters: serde
/// would stop at the first, in alphabetical order — not necessarily the one misspelt.
/// Framework keys of the section (`reserved`) count as known. Whether all were known.
pub(super) fn known_keys(
    doc: &RecipeDoc,
    key: &KeyPath,
    schema: &serde_json::Value,
    params: &toml::Table,
    reserved: &[&str],
    diags: &mut Diagnostics,
) -> bool {
    if schema.get("additionalProperties") == Some(&serde_json::Value::Bool(false)) {
        let mut valid: Vec<String> = reserved.iter().map(|s| s.to_string()).collect();
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            valid.extend(props.keys().cloned());
        }
        let valid: Vec<&str> = valid.iter().map(String::as_str).collect();
        let unknown: Vec<&String> = params.keys().filter(|k| !valid.contains(&k.as_str())).collect();
        for k in &unknown {
            diags.push(doc.diag(
                &key.key(k.as_str()),
                format!("unknown key `{k}`"),
                Some(unknown_key_help(k, &valid)),
            ));
        }
        return unknown.is_empty();
    }
    true
}

/// One `[[loss]]` resolved and checked: what it is and reads, not yet an instance (a run
/// makes its own with [`crate::plan::Plan::instantiate`]).
pub struct LossPlan {
    /// Plugin name.
    pub plugin: String,
    /// Weight (a number or a schedule).
    pub weight: Schedule,
    /// What the loss reads, as the instance the resolver checked said.
    pub needs: crate::loss::Needs,
    /// Where the loss is in the recipe, and its parameters: what an instance is built from.
    pub(super) key: KeyPath,
    pub(super) params: toml::Table,
}

/// The `[sampler]` resolved and checked: each stage that samples languages builds its own
/// instance ([`crate::plan::Plan::instantiate`]), since dynamic samplers keep state per stage.
pub struct SamplerPlan {
    /// Plugin name.
    pub plugin: String,
    /// Its parameters; `None` without a `[sampler]` section (proportional sampling).
    pub(super) params: Option<toml::Table>,
    /// Whether the baseline stage runs (`[train] baseline`).
    pub(super) baseline: bool,
    /// Whether a fine-tuning stage runs (`[finetune]`).
    pub(super) finetune: bool,
}

/// Builds the loss plugin `name` for the `[[loss]]` table at `key` from its parameters — from
/// the library that provides it, or the registry; `None` with its diagnostics collected.
pub(super) fn build_loss(
    doc: &RecipeDoc,
    plugins: &PluginSet,
    key: &KeyPath,
    name: &str,
    params: toml::Table,
    diags: &mut Diagnostics,
) -> Option<Box<dyn Loss>> {
    match plugins.loss(name) {
        Some(lib) => ok(diags, lib.build_loss(doc, key, &params)),
        None => match build(doc, key, PluginKind::Loss, name, params, &["plugin", "weight"], diags)? {
            Built::Loss(loss) => Some(loss),
            _ => None,
        },
    }
}

/// Builds the `[sampler]` plugin `name` from its parameters; `None` with its diagnostics
/// collected.
pub(super) fn build_sampler(
    doc: &RecipeDoc,
    name: &str,
    params: toml::Table,
    diags: &mut Diagnostics,
) -> Option<Box<dyn Sampler>> {
    match build(doc, &KeyPath::root().key("sampler"), PluginKind::Sampler, name, params, &["plugin"], diags)?
    {
        Built::Sampler(s) => Some(s),
        _ => None,
    }
}

/// A diagnostic about the recipe as a whole, located at the top of its file.
pub(super) fn root_diag(doc: &RecipeDoc, message: impl Into<String>, help: Option<String>) -> Diagnostic {
    let mut d = doc.diag(&KeyPath::root(), message, help);
    if d.loc.is_none() {
        d.loc = Some(kdx_recipe::Loc { file: doc.path().to_path_buf(), line: 1, col: 1 });
    }
    d
}

/// Builds the `[data]` section: its plugin name, dataset and parameters.
pub(super) fn data_section(
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
