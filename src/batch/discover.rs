//! Finding a batch's runs: the recipe files under the given paths, each expanded into its runs
//! (one per sweep point), with the hash and teacher key that decide what runs and in what order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kdx_framework::plan::Plan;
use kdx_framework::stage::Stage;
use kdx_recipe::{RecipeDoc, SweepRun};

pub(super) fn sha_hex(s: &str) -> String {
    kdx_fsio::sha256_hex(s.as_bytes())
}

/// One run of a batch: a recipe and, for a sweep, one point of its grid.
#[derive(Clone, Debug)]
pub struct BatchRun {
    /// The recipe file, as found.
    pub recipe: PathBuf,
    /// The recipe as `summary.csv` names it (relative to the working directory when inside it).
    pub recipe_key: String,
    /// `[experiment] name` (empty when the recipe could not be read).
    pub experiment: String,
    /// Run name (`run` without a sweep; empty when the recipe could not be expanded).
    pub run: String,
    /// Hash of the resolved recipe of this run.
    pub hash: String,
    /// The swept settings, `key=value;…`.
    pub params: String,
    /// Why the run cannot run (the diagnostics of an invalid recipe).
    pub problem: Option<String>,
    /// Runs with the same key train the same teacher (which the first one caches).
    pub(super) teacher_key: String,
    /// Stages in the order they run, with their steps.
    pub(super) stages: Vec<(Stage, u64)>,
}

impl BatchRun {
    pub(super) fn invalid(
        recipe: &Path,
        recipe_key: &str,
        experiment: String,
        run: String,
        hash: String,
        problem: String,
    ) -> BatchRun {
        BatchRun {
            recipe: recipe.to_path_buf(),
            recipe_key: recipe_key.to_string(),
            experiment,
            run,
            hash,
            params: String::new(),
            problem: Some(problem),
            teacher_key: String::new(),
            stages: Vec::new(),
        }
    }

    /// `results/<experiment>/<run>`.
    pub fn dir(&self, results: &Path) -> PathBuf {
        results.join(&self.experiment).join(&self.run)
    }

    /// `experiment/run`, for messages.
    pub fn label(&self) -> String {
        if self.run.is_empty() {
            self.recipe_key.clone()
        } else {
            format!("{}/{}", self.experiment, self.run)
        }
    }

    pub(super) fn total_steps(&self) -> u64 {
        self.stages.iter().map(|s| s.1).sum()
    }
}

/// The recipe path as the summary names it: relative to the working directory when inside it.
pub(super) fn recipe_key(p: &Path) -> String {
    let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let cwd = std::env::current_dir().ok().and_then(|c| c.canonicalize().ok());
    match cwd.and_then(|c| abs.strip_prefix(&c).ok().map(Path::to_path_buf)) {
        Some(rel) => rel.display().to_string(),
        None => abs.display().to_string(),
    }
}

pub(super) fn render_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Recipe files under `paths` (directories recursively, `*.toml`, hidden files skipped, sorted).
pub fn find_recipes(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
                    let path = e?.path();
                    // Hidden files and directories (editor swap files, `.cache`) are not recipes.
                    if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                        continue;
                    }
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|x| x == "toml") {
                        out.push(path);
                    }
                }
            }
        } else if p.exists() {
            out.push(p.clone());
        } else {
            anyhow::bail!("{}: no such file or directory", p.display());
        }
    }
    out.sort();
    Ok(out)
}

/// Finds the recipes under `paths` and expands them into runs. A recipe that fails to load
/// or validate becomes runs with a `problem`, never an error of the whole batch.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<BatchRun>> {
    let mut out = Vec::new();
    for file in find_recipes(paths)? {
        recipe_runs(&file, &mut out);
    }
    refuse_shared_directories(&mut out);
    Ok(out)
}

/// Appends the runs of one recipe file to `out`: one per sweep point, or a single run with
/// the problem when the recipe cannot be loaded or expanded.
fn recipe_runs(file: &Path, out: &mut Vec<BatchRun>) {
    let key = recipe_key(file);
    let runs = match RecipeDoc::load(file).and_then(|doc| doc.expand_sweep().map(|runs| (doc, runs))) {
        Ok((_, runs)) => runs,
        Err(d) => {
            // Without a resolved recipe there is no run hash: shard by the path.
            out.push(BatchRun::invalid(
                file,
                &key,
                String::new(),
                String::new(),
                sha_hex(&key),
                d.to_string(),
            ));
            return;
        }
    };
    for r in runs {
        out.push(batch_run(file, &key, r));
    }
}

/// One run of a recipe (`key` as the summary names it), planned: its stages and teacher, or
/// the problem that keeps it from being planned.
fn batch_run(file: &Path, key: &str, r: SweepRun) -> BatchRun {
    let name = if r.name.is_empty() { "run".to_string() } else { r.name.clone() };
    let hash = r.doc.content_hash();
    let params =
        r.settings.iter().map(|(k, v)| format!("{k}={}", render_value(v))).collect::<Vec<_>>().join(";");
    let experiment = r
        .doc
        .root()
        .get("experiment")
        .and_then(|e| e.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let planned = Plan::from_doc(r.doc, &name)
        .map_err(|d| d.to_string())
        .and_then(|plan| plan.teacher_key().map(|k| (plan, k)).map_err(|e| format!("{e:#}")));
    match planned {
        Ok((plan, teacher_key)) => BatchRun {
            recipe: file.to_path_buf(),
            recipe_key: key.to_string(),
            experiment,
            run: name,
            hash,
            params,
            problem: None,
            teacher_key,
            stages: stages_of(&plan),
        },
        Err(d) => {
            let mut b = BatchRun::invalid(file, key, experiment, name, hash, d);
            b.params = params;
            b
        }
    }
}

/// The stages a plan runs, in the order they run, with their steps.
fn stages_of(plan: &Plan) -> Vec<(Stage, u64)> {
    let mut stages: Vec<(Stage, u64)> =
        plan.teacher_train.iter().map(|t| (Stage::Teacher, t.steps)).collect();
    stages.push((Stage::Distill, plan.train.steps));
    if let Some(ft) = &plan.finetune {
        stages.push((Stage::Finetune, ft.steps));
    }
    if plan.train.baseline {
        stages.push((Stage::Baseline, plan.train.steps));
    }
    stages
}

/// Gives every valid run that would write to the results directory of a run before it a
/// problem: two recipes that would write to one run directory would overwrite each other.
fn refuse_shared_directories(out: &mut [BatchRun]) {
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    for b in out.iter_mut().filter(|b| b.problem.is_none()) {
        let k = (b.experiment.clone(), b.run.clone());
        match seen.get(&k) {
            Some(first) => {
                b.problem = Some(format!(
                    "{}: run `{}` of experiment `{}` writes to the same results directory as {first}; give the experiments different names",
                    b.recipe_key, b.run, b.experiment
                ))
            }
            None => {
                seen.insert(k, b.recipe_key.clone());
            }
        }
    }
}

/// Loads one run of a recipe (`run` for a recipe without a sweep), for `kdx run --only`,
/// with the plugin libraries `libraries` (`--plugin`). Other members of the sweep are not
/// validated.
pub fn load_run(recipe: &Path, name: &str, libraries: &[PathBuf]) -> Result<Plan> {
    let doc = RecipeDoc::load(recipe)?;
    let runs = doc.expand_sweep()?;
    let names: Vec<String> =
        runs.iter().map(|r| if r.name.is_empty() { "run".to_string() } else { r.name.clone() }).collect();
    let i = names.iter().position(|n| n == name).with_context(|| {
        format!("{}: no run `{name}`; its runs are: {}", recipe.display(), names.join(", "))
    })?;
    let run = runs.into_iter().nth(i).context("run vanished")?;
    Plan::from_doc_with_libraries(run.doc, &names[i], libraries).map_err(anyhow::Error::from)
}
