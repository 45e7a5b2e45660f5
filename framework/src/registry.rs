//! The plugin registry: every dataset, model, loss and sampler registers here through
//! `inventory`, one `inventory::submit!` in the plugin's own file (use the `register_*!`
//! macros). The recipe layer resolves names through [`find`]; `kdx plugins` and
//! `kdx schema` read the parameter schemas from here.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use kdx_recipe::{Diagnostic, KeyPath, RecipeDoc};
use schemars::schema::RootSchema;
use serde::de::DeserializeOwned;

use crate::dataset::Dataset;
use crate::loss::Loss;
use crate::model::ModelBuilder;
use crate::sampler::Sampler;

/// The four kinds of plugin a recipe can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PluginKind {
    /// Loads a task: texts, languages, labels, splits (`[data]`).
    Dataset,
    /// A runtime-sized network, used as teacher or student (`[teacher]`, `[student]`).
    Model,
    /// A differentiable objective (`[[loss]]`).
    Loss,
    /// Chooses the language of each training example (`[sampler]`).
    Sampler,
}

impl PluginKind {
    /// All kinds, in display order.
    pub const ALL: [PluginKind; 4] =
        [PluginKind::Dataset, PluginKind::Model, PluginKind::Loss, PluginKind::Sampler];

    /// The lowercase name used on the command line (`kdx plugins loss`).
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Dataset => "dataset",
            PluginKind::Model => "model",
            PluginKind::Loss => "loss",
            PluginKind::Sampler => "sampler",
        }
    }

    /// Parses a kind name as written on the command line.
    pub fn parse(s: &str) -> Option<PluginKind> {
        PluginKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a plugin's builder gets: its own parameters (already stripped of the keys the
/// framework owns, such as `plugin` and `weight`) and a way to locate errors and resolve
/// paths against the recipe file. Plugins never see the TOML file itself.
pub struct BuildCtx<'a> {
    /// The recipe the parameters come from (used only to locate errors and resolve paths).
    pub doc: &'a RecipeDoc,
    /// Where the plugin's table sits in the recipe, e.g. `loss[1]`.
    pub key: KeyPath,
    /// The plugin's parameters.
    pub params: toml::Value,
}

impl BuildCtx<'_> {
    /// Deserialises the parameters into the plugin's typed struct; errors are located.
    pub fn params<P: DeserializeOwned>(&self) -> Result<P, Diagnostic> {
        self.doc.deserialize_at(&self.key, self.params.clone())
    }

    /// Resolves a path parameter against the directory of the recipe file that set it.
    pub fn resolve_path(&self, param: &str, value: &std::path::Path) -> PathBuf {
        let key = self.key.key(param);
        self.doc.resolve_path(&key, &value.to_string_lossy())
    }

    /// A located error about one of this plugin's parameters.
    pub fn error(&self, param: &str, message: impl std::fmt::Display) -> Diagnostic {
        let key = if param.is_empty() { self.key.clone() } else { self.key.key(param) };
        // `{:#}`: an error's whole chain, in one line.
        self.doc.diag(&key, format!("{message:#}"), None)
    }

    /// Resolves a file parameter against the recipe's directory and checks the file is
    /// there: otherwise "`what` PATH does not exist`hint`", located at the parameter.
    pub fn existing_file(
        &self,
        param: &str,
        value: &std::path::Path,
        what: &str,
        hint: &str,
    ) -> Result<PathBuf, Diagnostic> {
        let path = self.resolve_path(param, value);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            Ok(m) if m.is_dir() => {
                Err(self.error(param, format!("{what} {} is a directory, not a file", path.display())))
            }
            Ok(_) => Err(self.error(
                param,
                format!("{what} {} is not a regular file (a device or a pipe)", path.display()),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(self.error(param, format!("{what} {} does not exist{hint}", path.display())))
            }
            Err(e) => Err(self.error(param, format!("{what} {} cannot be read: {e}", path.display()))),
        }
    }

    /// Checks the held-out fractions of a dataset (`dev_fraction`, `test_fraction`): each
    /// in [0, 0.5).
    pub fn held_out_fractions(&self, dev: f64, test: f64) -> Result<(), Diagnostic> {
        for (name, f) in [("dev_fraction", dev), ("test_fraction", test)] {
            if !(0.0..0.5).contains(&f) {
                return Err(self.error(name, format!("must be in [0, 0.5), found {f}")));
            }
        }
        Ok(())
    }
}

/// Builders, one signature per kind. Builders run at plan time (also by `kdx validate`),
/// so they must be cheap: check parameters, do not load data or train.
#[derive(Clone, Copy)]
pub enum Builder {
    /// Builds a dataset loader.
    Dataset(fn(&BuildCtx) -> Result<Box<dyn Dataset>, Diagnostic>),
    /// Builds a model factory (sized later, once the task's label count is known).
    Model(fn(&BuildCtx) -> Result<Box<dyn ModelBuilder>, Diagnostic>),
    /// Builds a loss.
    Loss(fn(&BuildCtx) -> Result<Box<dyn Loss>, Diagnostic>),
    /// Builds a language sampler.
    Sampler(fn(&BuildCtx) -> Result<Box<dyn Sampler>, Diagnostic>),
}

impl Builder {
    /// The kind this builder produces.
    pub fn kind(&self) -> PluginKind {
        match self {
            Builder::Dataset(_) => PluginKind::Dataset,
            Builder::Model(_) => PluginKind::Model,
            Builder::Loss(_) => PluginKind::Loss,
            Builder::Sampler(_) => PluginKind::Sampler,
        }
    }
}

/// One registered plugin. Create these with the `register_*!` macros.
pub struct Registration {
    /// The name recipes use (`plugin = "soft-kl"`).
    pub name: &'static str,
    /// One line shown by `kdx plugins`.
    pub summary: &'static str,
    /// The longer documentation (the params struct's doc comment is in the schema).
    pub schema: fn() -> RootSchema,
    /// The builder.
    pub builder: Builder,
    /// Source file of the registration, to name both sides of a duplicate.
    pub file: &'static str,
}

impl Registration {
    /// The plugin's kind.
    pub fn kind(&self) -> PluginKind {
        self.builder.kind()
    }
}

inventory::collect!(Registration);

/// Every registered plugin of `kind`, sorted by name.
pub fn list(kind: PluginKind) -> Vec<&'static Registration> {
    let mut v: Vec<_> = inventory::iter::<Registration>.into_iter().filter(|r| r.kind() == kind).collect();
    v.sort_by_key(|r| r.name);
    v
}

/// Looks a plugin up by kind and name.
pub fn find(kind: PluginKind, name: &str) -> Option<&'static Registration> {
    inventory::iter::<Registration>.into_iter().find(|r| r.kind() == kind && r.name == name)
}

/// Names of the registered plugins of `kind`.
pub fn names(kind: PluginKind) -> Vec<&'static str> {
    list(kind).into_iter().map(|r| r.name).collect()
}

impl BuildCtx<'_> {
    /// Builds a model nested in this plugin's parameters (`member = { plugin = "…", … }`),
    /// errors located under `param` (e.g. `teacher.members[1].dim`).
    pub fn nested_model(
        &self,
        param: KeyPath,
        table: &toml::Value,
    ) -> Result<Box<dyn ModelBuilder>, Diagnostic> {
        let key = self.key.join(&param);
        let Some(t) = table.as_table() else {
            return Err(self.doc.diag(
                &key,
                "expected a model table such as { plugin = \"ngram-mlp\", dim = 16 }",
                None,
            ));
        };
        let mut t = t.clone();
        let name = match t.remove("plugin") {
            Some(toml::Value::String(s)) => s,
            _ => return Err(self.doc.diag(&key, "missing key `plugin` (the member's model plugin)", None)),
        };
        let Some(reg) = find(PluginKind::Model, &name) else {
            let names = names(PluginKind::Model);
            return Err(self.doc.diag(
                &key.key("plugin"),
                format!("unknown model plugin `{name}`"),
                Some(format!("registered model plugins: {}", names.join(", "))),
            ));
        };
        let Builder::Model(build) = reg.builder else { unreachable!("model registrations build models") };
        build(&BuildCtx { doc: self.doc, key, params: toml::Value::Table(t) })
    }
}

/// Builds a registered plugin from parameters given in code (benchmarks, tools), outside any
/// recipe: `what` names the caller in error messages.
pub fn build_standalone(
    kind: PluginKind,
    name: &str,
    params: toml::Table,
    what: &str,
) -> anyhow::Result<Instance> {
    let reg =
        find(kind, name).ok_or_else(|| anyhow::anyhow!("{what}: no {kind} plugin `{name}` is registered"))?;
    let text = format!("[{}]\n{}", kind.as_str(), toml::to_string(&params)?);
    let doc = RecipeDoc::from_str(&text, std::path::Path::new(what))?;
    let ctx =
        BuildCtx { doc: &doc, key: KeyPath::root().key(kind.as_str()), params: toml::Value::Table(params) };
    Ok(match reg.builder {
        Builder::Dataset(f) => Instance::Dataset(f(&ctx)?),
        Builder::Model(f) => Instance::Model(f(&ctx)?),
        Builder::Loss(f) => Instance::Loss(f(&ctx)?),
        Builder::Sampler(f) => Instance::Sampler(f(&ctx)?),
    })
}

/// A built plugin instance of any kind.
pub enum Instance {
    /// A dataset.
    Dataset(Box<dyn Dataset>),
    /// A model builder.
    Model(Box<dyn ModelBuilder>),
    /// A loss.
    Loss(Box<dyn Loss>),
    /// A sampler.
    Sampler(Box<dyn Sampler>),
}

/// Checks the registry for two plugins of one kind with one name; called at start-up.
pub fn check_unique() -> anyhow::Result<()> {
    let mut seen: BTreeMap<(PluginKind, &str), &Registration> = BTreeMap::new();
    let mut errors = Vec::new();
    for r in inventory::iter::<Registration> {
        if let Some(prev) = seen.insert((r.kind(), r.name), r) {
            errors.push(format!(
                "two {} plugins are named `{}`: one registered in {}, one in {}",
                r.kind(),
                r.name,
                prev.file,
                r.file
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(errors.join("\n")))
    }
}

/// Registers a plugin. Use the kind-specific wrappers (`register_loss!` …).
#[doc(hidden)]
#[macro_export]
macro_rules! __register {
    ($variant:ident, $name:literal, $summary:literal, $params:ty, $build:path) => {
        $crate::inventory::submit! {
            $crate::registry::Registration {
                name: $name,
                summary: $summary,
                schema: || $crate::schemars::schema_for!($params),
                builder: $crate::registry::Builder::$variant(|ctx| {
                    let p: $params = ctx.params()?;
                    $build(p, ctx)
                }),
                file: file!(),
            }
        }
    };
}

/// Registers a dataset plugin:
/// `register_dataset!("name", "summary", Params, build)` with
/// `fn build(p: Params, ctx: &BuildCtx) -> Result<Box<dyn Dataset>, Diagnostic>`.
#[macro_export]
macro_rules! register_dataset {
    ($name:literal, $summary:literal, $params:ty, $build:path) => {
        $crate::__register!(Dataset, $name, $summary, $params, $build);
    };
}

/// Registers a model plugin (see [`register_dataset!`] for the shape).
#[macro_export]
macro_rules! register_model {
    ($name:literal, $summary:literal, $params:ty, $build:path) => {
        $crate::__register!(Model, $name, $summary, $params, $build);
    };
}

/// Registers a loss plugin (see [`register_dataset!`] for the shape).
#[macro_export]
macro_rules! register_loss {
    ($name:literal, $summary:literal, $params:ty, $build:path) => {
        $crate::__register!(Loss, $name, $summary, $params, $build);
    };
}

/// Registers a sampler plugin (see [`register_dataset!`] for the shape).
#[macro_export]
macro_rules! register_sampler {
    ($name:literal, $summary:literal, $params:ty, $build:path) => {
        $crate::__register!(Sampler, $name, $summary, $params, $build);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters of the two clashing test plugins.
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct NoParams {}

    fn refuse(_: NoParams, ctx: &BuildCtx) -> Result<Box<dyn Loss>, Diagnostic> {
        Err(ctx.error("", "test plugin"))
    }

    // Two registrations with one name; they exist only in this crate's unit-test binary.
    crate::register_loss!("dup-test", "first", NoParams, refuse);
    crate::register_loss!("dup-test", "second", NoParams, refuse);

    #[test]
    fn two_plugins_with_one_name_are_refused_naming_both() {
        let err = check_unique().unwrap_err().to_string();
        assert!(err.contains("two loss plugins are named `dup-test`"), "{err}");
        assert_eq!(err.matches("registry.rs").count(), 2, "both registrations are named: {err}");
    }
}
