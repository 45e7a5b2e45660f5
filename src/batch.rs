//! `kdx batch`: every run of every recipe under some paths, each in its own `kdx run` child
//! process, so that a crash, an abort or a diverging run cannot take the others down.
//!
//! - Runs whose `run.csv` says `ok` for the same resolved-recipe hash are skipped
//!   (`--force` runs them again); interrupted ones resume from their checkpoints.
//! - `--shard K/N` keeps the runs whose hash is K modulo N: the shards of a batch are disjoint
//!   and together make the whole batch.
//! - Two batches may share a results directory: a run is started only under an OS lock on
//!   `results/<experiment>/<run>/.lock`, and `results/summary.csv` is rewritten (atomically)
//!   only under a lock on `results/.summary.lock`, one row per (recipe, run).
//! - Ctrl-C (or SIGTERM) stops the children as a signal stops `kdx run` (each checkpoints the
//!   step it is in) and records their runs as interrupted, so the next batch resumes them
//!   without redoing a step; a second Ctrl-C leaves at once.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fs2::FileExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kdx_framework::engine::lock_run;
use kdx_framework::event::{Event, RunStatus, TeacherSource};
use kdx_framework::plan::Plan;
use kdx_framework::report::{read_csv, RunRow};
use kdx_framework::stage::Stage;
use kdx_recipe::RecipeDoc;
use serde::{Deserialize, Serialize};

/// Arguments of `kdx batch`.
#[derive(clap::Args, Debug, Clone)]
pub struct BatchArgs {
    /// Recipe files or directories (searched recursively for `*.toml`).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Runs at a time; each gets (cores / jobs) worker threads.
    #[arg(long, short, default_value_t = 1)]
    pub jobs: usize,
    /// Run only this share of the batch: `K/N` keeps the runs whose recipe hash is K modulo N
    /// (e.g. `--shard $SLURM_ARRAY_TASK_ID/4`).
    #[arg(long, value_parser = Shard::parse)]
    pub shard: Option<Shard>,
    /// Run again runs whose results are already there.
    #[arg(long)]
    pub force: bool,
    /// List what would run (and why the others would not); run nothing, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Results root.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
}

/// A share of a batch: the runs whose hash is `index` modulo `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// K, in `0..count`.
    pub index: u64,
    /// N, at least 1.
    pub count: u64,
}

impl Shard {
    /// Parses `K/N`.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (k, n) = s.split_once('/').ok_or_else(|| format!("expected K/N (e.g. 0/4), found `{s}`"))?;
        let index: u64 = k.trim().parse().map_err(|_| format!("`{k}` is not a shard number"))?;
        let count: u64 = n.trim().parse().map_err(|_| format!("`{n}` is not a shard count"))?;
        if count == 0 {
            return Err("the shard count must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard {index} of {count} does not exist: shards are numbered 0 to {}",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether a run with this hash belongs to the shard.
    pub fn contains(&self, hash: &str) -> bool {
        hash_mod(hash, self.count) == self.index
    }
}

/// `hash` (hex) as a number, modulo `n`; other strings are hashed first.
pub fn hash_mod(hash: &str, n: u64) -> u64 {
    let hex = if !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        hash.to_string()
    } else {
        sha_hex(hash)
    };
    hex.bytes().fold(0u64, |r, b| (r * 16 + (b as char).to_digit(16).unwrap_or(0) as u64) % n)
}

fn sha_hex(s: &str) -> String {
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
    teacher_key: String,
    /// Stages in the order they run, with their steps.
    stages: Vec<(Stage, u64)>,
}

impl BatchRun {
    fn invalid(
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

    fn total_steps(&self) -> u64 {
        self.stages.iter().map(|s| s.1).sum()
    }
}

/// The recipe path as the summary names it: relative to the working directory when inside it.
fn recipe_key(p: &Path) -> String {
    let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let cwd = std::env::current_dir().ok().and_then(|c| c.canonicalize().ok());
    match cwd.and_then(|c| abs.strip_prefix(&c).ok().map(Path::to_path_buf)) {
        Some(rel) => rel.display().to_string(),
        None => abs.display().to_string(),
    }
}

fn render_value(v: &toml::Value) -> String {
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
        let key = recipe_key(&file);
        let runs = match RecipeDoc::load(&file).and_then(|doc| doc.expand_sweep().map(|runs| (doc, runs))) {
            Ok((_, runs)) => runs,
            Err(d) => {
                // Without a resolved recipe there is no run hash: shard by the path.
                out.push(BatchRun::invalid(
                    &file,
                    &key,
                    String::new(),
                    String::new(),
                    sha_hex(&key),
                    d.to_string(),
                ));
                continue;
            }
        };
        for r in runs {
            let name = if r.name.is_empty() { "run".to_string() } else { r.name.clone() };
            let hash = r.doc.content_hash();
            let params = r
                .settings
                .iter()
                .map(|(k, v)| format!("{k}={}", render_value(v)))
                .collect::<Vec<_>>()
                .join(";");
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
                Ok((plan, teacher_key)) => {
                    let mut stages: Vec<(Stage, u64)> =
                        plan.teacher_train.iter().map(|t| (Stage::Teacher, t.steps)).collect();
                    stages.push((Stage::Distill, plan.train.steps));
                    if let Some(ft) = &plan.finetune {
                        stages.push((Stage::Finetune, ft.steps));
                    }
                    if plan.train.baseline {
                        stages.push((Stage::Baseline, plan.train.steps));
                    }
                    out.push(BatchRun {
                        recipe: file.clone(),
                        recipe_key: key.clone(),
                        experiment,
                        run: name,
                        hash,
                        params,
                        problem: None,
                        teacher_key,
                        stages,
                    });
                }
                Err(d) => {
                    let mut b = BatchRun::invalid(&file, &key, experiment, name, hash, d);
                    b.params = params;
                    out.push(b);
                }
            }
        }
    }
    // Two recipes that would write to one run directory would overwrite each other.
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
    Ok(out)
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

/// What a batch does with a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run it from the start.
    Run,
    /// Continue it from its checkpoints.
    Resume,
    /// Leave it, for this reason.
    Skip(String),
    /// It cannot run: its recipe is invalid.
    Invalid,
}

/// The run's `run.csv`, if it has a readable one.
fn run_report(dir: &Path) -> Option<RunRow> {
    read_csv::<RunRow>(&dir.join("run.csv")).ok().and_then(|mut v| v.pop())
}

/// The hash in the header of the run's resolved `recipe.toml` (written when the run starts).
fn started_hash(dir: &Path) -> Option<String> {
    let f = File::open(dir.join("recipe.toml")).ok()?;
    let first = BufReader::new(f).lines().next()?.ok()?;
    let rest = &first[first.find("(hash ")? + 6..];
    Some(rest.trim_end_matches(')').to_string())
}

fn has_checkpoints(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("checkpoints")).is_ok_and(|mut d| d.next().is_some())
}

/// Decides what to do with a run, from what its run directory holds.
pub fn decide(run: &BatchRun, results: &Path, force: bool) -> Action {
    if run.problem.is_some() {
        return Action::Invalid;
    }
    if force {
        return Action::Run;
    }
    let dir = run.dir(results);
    let report = run_report(&dir);
    if let Some(r) = &report {
        if r.status == RunStatus::Ok && r.hash == run.hash {
            return Action::Skip("up to date".into());
        }
    }
    // A failed run starts again from scratch (its checkpoints may hold the divergence).
    let failed = report.as_ref().is_some_and(|r| r.status == RunStatus::Failed);
    let recorded = report.map(|r| r.hash).or_else(|| started_hash(&dir));
    if !failed && recorded.as_deref() == Some(run.hash.as_str()) && has_checkpoints(&dir) {
        Action::Resume
    } else {
        Action::Run
    }
}

/// What became of a run in a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It ran to its end.
    Ok,
    /// It failed (or its recipe is invalid).
    #[default]
    Failed,
    /// It was stopped; the next batch resumes it.
    Interrupted,
    /// Not run: its results are there already, or another batch is running it.
    Skipped,
}

impl Outcome {
    /// The word in `summary.csv` and the result lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Skipped => "skipped",
        }
    }
}

impl From<RunStatus> for Outcome {
    fn from(s: RunStatus) -> Outcome {
        match s {
            RunStatus::Ok => Outcome::Ok,
            RunStatus::Failed => Outcome::Failed,
            RunStatus::Interrupted => Outcome::Interrupted,
        }
    }
}

/// A row of `results/summary.csv`: the outcome of one run in the last batch that ran it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SummaryRow {
    /// Recipe path.
    pub recipe: String,
    /// Experiment name.
    pub experiment: String,
    /// Run name.
    pub run: String,
    /// Hash of the resolved recipe of the run.
    pub hash: String,
    /// `ok`, `failed`, `interrupted` or `skipped` (results already there for this hash).
    pub status: Outcome,
    /// The error (for an invalid recipe, its diagnostics).
    pub error: String,
    /// The swept settings, `key=value;…`.
    pub params: String,
    /// Teacher macro accuracy (test).
    pub teacher_acc: Option<f64>,
    /// Student macro accuracy (test).
    pub student_acc: Option<f64>,
    /// Baseline (no teacher) macro accuracy (test).
    pub baseline_acc: Option<f64>,
    /// Student minus baseline macro accuracy.
    pub kd_gain: Option<f64>,
    /// Language where the student is worst.
    pub worst_lang: String,
    /// The student's accuracy there.
    pub worst_acc: Option<f64>,
    /// Teacher parameters / student parameters.
    pub compression: Option<f64>,
    /// Wall time of the run in this batch (for a skipped run, of the run that made the results).
    pub wall_s: f64,
    /// Where the run's teacher came from, as its `teacher_ready` event said: `trained`,
    /// `cache` or `precomputed` (empty when the run did not get that far in this batch).
    #[serde(default)]
    pub teacher: String,
}

impl SummaryRow {
    fn new(run: &BatchRun, status: Outcome, error: String) -> SummaryRow {
        SummaryRow {
            recipe: run.recipe_key.clone(),
            experiment: run.experiment.clone(),
            run: run.run.clone(),
            hash: run.hash.clone(),
            status,
            error,
            params: run.params.clone(),
            ..Default::default()
        }
    }

    fn with_report(mut self, r: &RunRow) -> SummaryRow {
        if r.status == RunStatus::Ok {
            self.teacher_acc = Some(r.teacher_macro_acc);
            self.student_acc = Some(r.student_macro_acc);
            self.baseline_acc = r.baseline_macro_acc;
            self.kd_gain = r.kd_gain;
            self.worst_lang = r.worst_lang.clone();
            self.worst_acc = Some(r.worst_acc);
        }
        if r.compression > 0.0 {
            self.compression = Some(r.compression);
        }
        if self.teacher.is_empty() && r.status == RunStatus::Ok {
            // For a row made from a report (a skipped run), as the run's event said it.
            self.teacher = match (r.teacher_params, r.teacher_cached) {
                (0, _) => "precomputed",
                (_, true) => "cache",
                (_, false) => "trained",
            }
            .into();
        }
        self.wall_s = r.wall_s;
        self
    }
}

/// Path of the summary of a results root.
pub fn summary_path(results: &Path) -> PathBuf {
    results.join("summary.csv")
}

/// Reads `summary.csv` (empty when there is none).
pub fn read_summary(results: &Path) -> Result<Vec<SummaryRow>> {
    let p = summary_path(results);
    if !p.exists() {
        return Ok(Vec::new());
    }
    read_csv(&p)
}

/// Adds rows to `summary.csv`, replacing the rows of the same (recipe, run), under the
/// summary lock, written atomically.
pub fn update_summary(results: &Path, rows: &[SummaryRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(results).with_context(|| format!("creating {}", results.display()))?;
    let lock_path = results.join(".summary.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    FileExt::lock_exclusive(&lock).with_context(|| format!("locking {}", lock_path.display()))?;
    let mut all = match read_summary(results) {
        Ok(v) => v,
        Err(e) => {
            // Never lose a summary that cannot be read (edited by hand, older format): keep it aside.
            let p = summary_path(results);
            let aside = results.join(format!("summary.csv.unreadable-{}", std::process::id()));
            eprintln!(
                "kdx batch: warning: {e:#}; keeping it as {} and starting a new summary",
                aside.display()
            );
            std::fs::rename(&p, &aside).with_context(|| format!("renaming {}", p.display()))?;
            Vec::new()
        }
    };
    for r in rows {
        match all.iter_mut().find(|x| x.recipe == r.recipe && x.run == r.run) {
            Some(x) => *x = r.clone(),
            None => all.push(r.clone()),
        }
    }
    let result = kdx_framework::report::write_csv(&summary_path(results), &all);
    let _ = FileExt::unlock(&lock);
    result
}

/// Whether another process holds the run's lock (without creating anything).
fn lock_held(dir: &Path) -> bool {
    let p = dir.join(".lock");
    match OpenOptions::new().read(true).write(true).open(&p) {
        Ok(f) => FileExt::try_lock_exclusive(&f).is_err(),
        Err(_) => false,
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

/// A run in progress: its child process and what its events said so far.
struct Job {
    idx: usize,
    child: Child,
    _lock: File,
    started: Instant,
    resumed: bool,
    bar: Option<ProgressBar>,
    /// Stages in run order with their steps.
    stages: Vec<(Stage, u64)>,
    /// Steps already counted on the overall bar.
    counted: u64,
    /// Until the child's `teacher_ready` event: it may be training the teacher, so a run with
    /// the same teacher waits for this one to cache it.
    in_teacher: bool,
    /// Where the teacher came from (its `teacher_ready` event).
    teacher: Option<TeacherSource>,
    /// The child's `run_finished` event: its status and error.
    finished: Option<(RunStatus, Option<String>)>,
    /// The last lines of its stderr (why it died, when it ends without `run_finished`).
    tail: VecDeque<String>,
    /// The threads reading its stdout and stderr: joined once it exits, so that everything
    /// it said is observed before its outcome is decided.
    readers: Vec<std::thread::JoinHandle<()>>,
    /// When the batch, stopping, sent it SIGTERM.
    stop_sent: Option<Instant>,
}

/// How long a child has, after the batch's SIGTERM, to checkpoint the step it is in and exit
/// before it is killed. Under Slurm, `KillWait` (30 s by default) ends it sooner.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// Stops a child as a signal stops `kdx run`: SIGTERM first, so it checkpoints the step it is
/// in and records the run as interrupted (its resume redoes no step); SIGKILL only if it has
/// not exited within [`STOP_GRACE`].
fn stop_child(job: &mut Job) {
    match job.stop_sent {
        None => {
            // SAFETY: kill(2) of a child this process spawned and has not yet reaped, so its
            // pid cannot have been reused.
            unsafe { libc::kill(job.child.id() as libc::pid_t, libc::SIGTERM) };
            job.stop_sent = Some(Instant::now());
        }
        Some(sent) if sent.elapsed() > STOP_GRACE => {
            let _ = job.child.kill();
        }
        Some(_) => {}
    }
}

impl Job {
    fn total(&self) -> u64 {
        self.stages.iter().map(|s| s.1).sum()
    }

    fn position(&self, stage: Stage, step: u64) -> u64 {
        let mut off = 0;
        for &(name, n) in &self.stages {
            if name == stage {
                return off + step.min(n);
            }
            off += n;
        }
        off
    }
}

/// Console output: bars and lines above them on a terminal, plain lines otherwise.
struct Console {
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
}

impl Console {
    fn new(show_bars: bool, total_steps: u64) -> Console {
        if !show_bars {
            return Console { multi: None, overall: None };
        }
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(total_steps.max(1)));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>24} [{bar:30}] {percent:>3}% {msg} elapsed {elapsed} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.set_prefix("batch");
        Console { multi: Some(multi), overall: Some(overall) }
    }

    /// A result line, on stdout.
    fn result(&self, line: &str) {
        match &self.multi {
            Some(m) if std::io::stdout().is_terminal() => {
                let _ = m.println(line);
            }
            _ => println!("{line}"),
        }
    }

    /// A log line, on stderr.
    fn log(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(format!("kdx batch: {line}"));
            }
            None => eprintln!("kdx batch: {line}"),
        }
    }

    fn job_bar(&self, label: &str, total: u64) -> Option<ProgressBar> {
        let (m, overall) = (self.multi.as_ref()?, self.overall.as_ref()?);
        let b = m.insert_before(overall, ProgressBar::new(total.max(1)));
        b.set_style(
            ProgressStyle::with_template("{prefix:>24} [{bar:30}] {msg} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let short: String = if label.chars().count() > 24 {
            format!(
                "…{}",
                label.chars().rev().take(23).collect::<Vec<_>>().into_iter().rev().collect::<String>()
            )
        } else {
            label.into()
        };
        b.set_prefix(short);
        b.set_message("starting");
        Some(b)
    }
}

/// `kdx batch`.
pub fn run(args: &BatchArgs) -> Result<ExitCode> {
    anyhow::ensure!(args.jobs >= 1, "--jobs must be at least 1");
    let started = Instant::now();
    let all = discover(&args.paths)?;
    let total_found = all.len();
    let runs: Vec<BatchRun> = match args.shard {
        Some(s) => all.into_iter().filter(|r| s.contains(&r.hash)).collect(),
        None => all,
    };
    let elsewhere = total_found - runs.len();
    let actions: Vec<Action> = runs.iter().map(|r| decide(r, &args.results, args.force)).collect();

    if args.dry_run {
        for (r, a) in runs.iter().zip(&actions) {
            let short = &r.hash[..r.hash.len().min(12)];
            let (what, why) = match a {
                Action::Run if lock_held(&r.dir(&args.results)) => {
                    ("skip", "running in another batch".to_string())
                }
                Action::Run => ("run", String::new()),
                Action::Resume => ("resume", "interrupted; continues from its checkpoints".to_string()),
                Action::Skip(why) => ("skip", why.clone()),
                Action::Invalid => (
                    "invalid",
                    r.problem.as_deref().unwrap_or_default().lines().next().unwrap_or_default().to_string(),
                ),
            };
            println!(
                "{what:<8} {}  {}  {short}{}",
                r.label(),
                r.recipe_key,
                if why.is_empty() { String::new() } else { format!("  ({why})") }
            );
        }
        let count = |f: &dyn Fn(&Action) -> bool| actions.iter().filter(|a| f(a)).count();
        println!(
            "{} run(s): {} to run, {} to resume, {} skipped, {} invalid{}",
            runs.len(),
            count(&|a| *a == Action::Run),
            count(&|a| *a == Action::Resume),
            count(&|a| matches!(a, Action::Skip(_))),
            count(&|a| *a == Action::Invalid),
            match args.shard {
                Some(s) => format!("; {elsewhere} more belong to the other shards of {}", s.count),
                None => String::new(),
            }
        );
        return Ok(ExitCode::SUCCESS);
    }

    // Rows known without running anything: invalid recipes and finished runs.
    let mut counts: HashMap<Outcome, usize> = HashMap::new();
    let mut early = Vec::new();
    let mut pending: VecDeque<usize> = VecDeque::new();
    for (i, (r, a)) in runs.iter().zip(&actions).enumerate() {
        match a {
            Action::Invalid => {
                early.push(SummaryRow::new(r, Outcome::Failed, r.problem.clone().unwrap_or_default()));
                *counts.entry(Outcome::Failed).or_default() += 1;
                println!(
                    "{:<11} {}  invalid recipe: {}",
                    "failed",
                    r.label(),
                    first_line(r.problem.as_deref().unwrap_or_default())
                );
            }
            Action::Skip(why) => {
                let mut row = SummaryRow::new(r, Outcome::Skipped, why.clone());
                if let Some(rep) = run_report(&r.dir(&args.results)) {
                    row = row.with_report(&rep);
                }
                early.push(row);
                *counts.entry(Outcome::Skipped).or_default() += 1;
                println!("{:<11} {}  {why}", "skipped", r.label());
            }
            Action::Run | Action::Resume => pending.push_back(i),
        }
    }
    update_summary(&args.results, &early)?;

    // Under Slurm, the task's CPUs (the node may have more than the task was given).
    let slurm_cpus =
        std::env::var("SLURM_CPUS_PER_TASK").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0);
    let cores =
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(slurm_cpus.unwrap_or(usize::MAX));
    let jobs = args.jobs.min(pending.len()).max(1);
    let threads = (cores / jobs).max(1);
    if args.jobs > cores {
        eprintln!(
            "kdx batch: warning: {} jobs on {cores} cores: each job gets 1 thread and they compete",
            args.jobs
        );
    }
    if !pending.is_empty() {
        let _ = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: leave now.
                std::process::exit(130);
            }
        });
    }
    let exe = std::env::current_exe().context("locating the kdx executable")?;
    let console = Console::new(
        std::io::stderr().is_terminal() && !pending.is_empty(),
        pending.iter().map(|&i| runs[i].total_steps()).sum(),
    );
    let (tx, rx) = mpsc::channel::<(usize, Said)>();
    let mut running: Vec<Job> = Vec::new();
    let mut done_runs = 0usize;
    let to_run = pending.len();
    let set_overall_msg = |done: usize| {
        if let Some(o) = &console.overall {
            o.set_message(format!("{done}/{to_run} runs"));
        }
    };
    set_overall_msg(0);

    loop {
        let stopping = STOP.load(Ordering::SeqCst);
        // Start what may start: a run waits while another run training its teacher is in
        // that stage, so the teacher is trained once and then loaded from the cache.
        while !stopping && running.len() < jobs {
            let Some(pos) = pending.iter().position(|&i| {
                !running.iter().any(|j| j.in_teacher && runs[j.idx].teacher_key == runs[i].teacher_key)
            }) else {
                break;
            };
            let idx = pending.remove(pos).unwrap_or_default();
            let r = &runs[idx];
            let dir = r.dir(&args.results);
            let Some(lock) = lock_run(&dir)? else {
                console.result(&format!("{:<11} {}  running in another batch process", "skipped", r.label()));
                *counts.entry(Outcome::Skipped).or_default() += 1;
                finish_steps(&console, r.total_steps(), 0);
                done_runs += 1;
                set_overall_msg(done_runs);
                continue;
            };
            // Another batch may have finished it while we were deciding.
            let action = decide(r, &args.results, args.force);
            if let Action::Skip(why) = &action {
                let mut row = SummaryRow::new(r, Outcome::Skipped, why.clone());
                if let Some(rep) = run_report(&dir) {
                    row = row.with_report(&rep);
                }
                update_summary(&args.results, &[row])?;
                console.result(&format!("{:<11} {}  {why}", "skipped", r.label()));
                *counts.entry(Outcome::Skipped).or_default() += 1;
                finish_steps(&console, r.total_steps(), 0);
                done_runs += 1;
                set_overall_msg(done_runs);
                continue;
            }
            let resume = action == Action::Resume;
            match spawn(&exe, r, &args.results, threads, resume, &dir, idx, &lock, tx.clone()) {
                Ok((child, readers)) => {
                    let bar = console.job_bar(&r.label(), r.total_steps());
                    if console.multi.is_none() {
                        console.log(&format!(
                            "{} {} ({})",
                            if resume { "resuming" } else { "starting" },
                            r.label(),
                            r.recipe_key
                        ));
                    }
                    running.push(Job {
                        idx,
                        child,
                        _lock: lock,
                        started: Instant::now(),
                        resumed: resume,
                        bar,
                        stages: r.stages.clone(),
                        counted: 0,
                        in_teacher: true,
                        teacher: None,
                        finished: None,
                        tail: VecDeque::new(),
                        readers,
                        stop_sent: None,
                    });
                }
                Err(e) => {
                    let row = SummaryRow::new(r, Outcome::Failed, format!("could not start kdx run: {e:#}"));
                    update_summary(&args.results, &[row])?;
                    console.result(&format!("{:<11} {}  could not start: {e:#}", "failed", r.label()));
                    *counts.entry(Outcome::Failed).or_default() += 1;
                    done_runs += 1;
                }
            }
        }
        if running.is_empty() && (pending.is_empty() || stopping) {
            break;
        }

        // What the children said.
        let deadline = Instant::now() + Duration::from_millis(100);
        while let Ok((idx, line)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Some(job) = running.iter_mut().find(|j| j.idx == idx) {
                observe(job, line, &console);
            }
        }

        if stopping {
            for job in &mut running {
                stop_child(job);
            }
        }
        let mut i = 0;
        while i < running.len() {
            let status = running[i].child.try_wait().context("waiting for a kdx run")?;
            let Some(status) = status else {
                i += 1;
                continue;
            };
            let mut job = running.swap_remove(i);
            for reader in job.readers.drain(..) {
                let _ = reader.join();
            }
            // The log lines still in the pipe (the last ones say why a run failed).
            while let Ok((idx, line)) = rx.try_recv() {
                if let Some(j) = running.iter_mut().find(|j| j.idx == idx) {
                    observe(j, line, &console);
                } else if idx == job.idx {
                    observe(&mut job, line, &console);
                }
            }
            let r = &runs[job.idx];
            let row = outcome(r, &args.results, &job, status, STOP.load(Ordering::SeqCst));
            // The summary row is written while the run's lock is still held (dropped with `job`).
            update_summary(&args.results, std::slice::from_ref(&row))?;
            if let Some(b) = &job.bar {
                b.finish_and_clear();
                if let Some(m) = &console.multi {
                    m.remove(b);
                }
            }
            finish_steps(&console, job.total(), job.counted);
            console.result(&result_line(r, &row, job.resumed));
            *counts.entry(row.status).or_default() += 1;
            done_runs += 1;
            set_overall_msg(done_runs);
            drop(job);
        }
    }
    if let Some(o) = &console.overall {
        o.finish_and_clear();
    }
    let c = |k: Outcome| counts.get(&k).copied().unwrap_or(0);
    let interrupted = STOP.load(Ordering::SeqCst);
    println!(
        "batch: {} run(s) — {} ok, {} failed, {} interrupted, {} skipped{}{}; summary in {} ({:.1}s)",
        runs.len(),
        c(Outcome::Ok),
        c(Outcome::Failed),
        c(Outcome::Interrupted),
        c(Outcome::Skipped),
        if interrupted && !pending.is_empty() {
            format!(", {} not started", pending.len())
        } else {
            String::new()
        },
        match args.shard {
            Some(s) => format!(" (shard {}/{}; {elsewhere} in other shards)", s.index, s.count),
            None => String::new(),
        },
        summary_path(&args.results).display(),
        started.elapsed().as_secs_f64()
    );
    Ok(if interrupted {
        ExitCode::from(130)
    } else if c(Outcome::Failed) > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn finish_steps(console: &Console, total: u64, counted: u64) {
    if let Some(o) = &console.overall {
        o.inc(total.saturating_sub(counted));
    }
}

/// What a child said: an event on its stdout, or a line of its stderr.
enum Said {
    Event(Event),
    Line(String),
}

/// Starts `kdx run --events jsonl` for one run. Its events (stdout) and its log (stderr)
/// come back through `tx`; both also go to `batch.log` in the run directory.
#[allow(clippy::too_many_arguments)]
fn spawn(
    exe: &Path,
    r: &BatchRun,
    results: &Path,
    threads: usize,
    resume: bool,
    dir: &Path,
    idx: usize,
    lock: &File,
    tx: mpsc::Sender<(usize, Said)>,
) -> Result<(Child, Vec<std::thread::JoinHandle<()>>)> {
    // A stale report must not be mistaken for this run's if the child dies without one.
    let _ = std::fs::remove_file(dir.join("run.csv"));
    let log_path = dir.join("batch.log");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg(&r.recipe)
        .arg("--only")
        .arg(&r.run)
        .arg("--results")
        .arg(results)
        .arg("--threads")
        .arg(threads.to_string());
    cmd.arg("--events").arg("jsonl");
    if resume {
        cmd.arg("--resume");
    }
    let unix_s =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    writeln!(
        log,
        "==== kdx batch (pid {}) {} {} at unix time {unix_s}: {:?}",
        std::process::id(),
        if resume { "resumes" } else { "starts" },
        r.label(),
        cmd
    )?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    hand_over(&mut cmd, lock);
    let mut child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let log = std::sync::Arc::new(std::sync::Mutex::new(log));
    let (events_log, events_tx) = (log.clone(), tx.clone());
    let events = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut f) = events_log.lock() {
                let _ = writeln!(f, "event: {line}");
            }
            // A line that is not an event (a plugin printing to stdout) is kept as log.
            let said = match serde_json::from_str::<Event>(&line) {
                Ok(e) => Said::Event(e),
                Err(_) => Said::Line(line),
            };
            if events_tx.send((idx, said)).is_err() {
                break;
            }
        }
    });
    let logs = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut f) = log.lock() {
                let _ = writeln!(f, "{line}");
            }
            if tx.send((idx, Said::Line(line))).is_err() {
                break;
            }
        }
    });
    Ok((child, vec![events, logs]))
}

/// The environment variable naming the run-lock descriptor a `kdx batch` child inherits.
const LOCK_FD_VAR: &str = "KDX_RUN_LOCK_FD";

/// Ties a child to the batch: the child inherits the run's lock (so the lock lives as long
/// as the run, even if the batch is killed: a second batch never starts a run still
/// running), it runs in its own process group (Ctrl-C reaches the batch, which stops it),
/// and it is killed when the batch dies, even by SIGKILL (Linux's parent-death signal).
#[cfg(unix)]
fn hand_over(cmd: &mut Command, lock: &File) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = lock.as_raw_fd();
    let batch = std::process::id() as libc::pid_t;
    cmd.env(LOCK_FD_VAR, fd.to_string()).process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (fcntl, prctl) on values copied into it.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags == -1 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The batch may have died between the fork and the prctl: then no signal comes.
            #[cfg(target_os = "linux")]
            if libc::getppid() != batch {
                return Err(std::io::Error::other("kdx batch ended before its child started"));
            }
            Ok(())
        });
    }
}

#[cfg(not(unix))]
fn hand_over(_: &mut Command, _: &File) {}

/// The run lock a `kdx batch` child inherited for the run directory `dir`, if it did: the
/// descriptor named by `KDX_RUN_LOCK_FD`, accepted only if it is that directory's `.lock`.
#[cfg(unix)]
pub fn inherited_run_lock(dir: &Path) -> Option<File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::MetadataExt;
    let fd: i32 = std::env::var(LOCK_FD_VAR).ok()?.parse().ok()?;
    // SAFETY: F_GETFD only asks whether `fd` is an open descriptor of this process.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: `fd` is open (checked above) and, by the protocol with `hand_over`, ours to own;
    // if it is not the run's lock file it is closed below and nothing else uses it.
    let f = unsafe { File::from_raw_fd(fd) };
    let (held, want) = (f.metadata().ok()?, std::fs::metadata(dir.join(".lock")).ok()?);
    (held.dev() == want.dev() && held.ino() == want.ino()).then_some(f)
}

#[cfg(not(unix))]
pub fn inherited_run_lock(_: &Path) -> Option<File> {
    None
}

/// Updates a job from what its child said.
fn observe(job: &mut Job, said: Said, console: &Console) {
    let event = match said {
        Said::Line(line) => {
            if job.tail.len() == 6 {
                job.tail.pop_front();
            }
            job.tail.push_back(line);
            return;
        }
        Said::Event(e) => e,
    };
    match event {
        Event::TeacherReady { source, .. } => {
            job.in_teacher = false;
            job.teacher = Some(source);
            if source != TeacherSource::Trained {
                // The teacher's steps will not run: take them out of both bars.
                if let Some(t) = job.stages.iter_mut().find(|s| s.0 == Stage::Teacher) {
                    if let Some(o) = &console.overall {
                        o.set_length(o.length().unwrap_or(0).saturating_sub(t.1));
                    }
                    t.1 = 0;
                }
                if let Some(b) = &job.bar {
                    b.set_length(job.total().max(1));
                }
            }
        }
        Event::Step { stage, step, steps, loss } => {
            if let Some(s) = job.stages.iter_mut().find(|s| s.0 == stage) {
                s.1 = steps;
            }
            let pos = job.position(stage, step);
            if let Some(b) = &job.bar {
                b.set_length(job.total().max(1));
                b.set_position(pos);
                b.set_message(format!("{stage} {step}/{steps} loss {loss:.4}"));
            }
            if pos > job.counted {
                if let Some(o) = &console.overall {
                    o.inc(pos - job.counted);
                }
                job.counted = pos;
            }
        }
        Event::RunFinished { status, error, .. } => job.finished = Some((status, error)),
        _ => {}
    }
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => "ended".into(),
    }
}

/// The summary row of a finished child: its status from its `run_finished` event, its
/// figures from its `run.csv`.
fn outcome(r: &BatchRun, results: &Path, job: &Job, status: ExitStatus, stopping: bool) -> SummaryRow {
    let wall = job.started.elapsed().as_secs_f64();
    let report = run_report(&r.dir(results)).filter(|x| x.hash == r.hash);
    let mut row = match (&job.finished, &report) {
        (Some((s, _)), _) if stopping && *s != RunStatus::Ok => {
            SummaryRow::new(r, Outcome::Interrupted, "stopped by the batch; the next batch resumes it".into())
        }
        (Some((s, error)), report) => {
            let row = SummaryRow::new(r, Outcome::from(*s), error.clone().unwrap_or_default());
            match report {
                Some(rep) => row.with_report(rep),
                None => row,
            }
        }
        (None, _) if stopping => {
            SummaryRow::new(r, Outcome::Interrupted, "stopped by the batch; the next batch resumes it".into())
        }
        (None, _) => {
            let tail: Vec<&str> = job.tail.iter().map(String::as_str).collect();
            SummaryRow::new(
                r,
                Outcome::Failed,
                format!(
                    "kdx run {} before it finished; its last lines: {}",
                    describe(status),
                    tail.join(" | ")
                ),
            )
        }
    };
    row.teacher = job.teacher.map(|t| t.as_str().to_string()).unwrap_or_default();
    row.wall_s = wall;
    row
}

fn result_line(r: &BatchRun, row: &SummaryRow, resumed: bool) -> String {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    match row.status {
        Outcome::Ok => format!(
            "{:<11} {}  teacher {}  student {}  baseline {}  KD gain {}  worst {} {}  {:.1}×  {:.1}s{}",
            "ok",
            r.label(),
            f(row.teacher_acc),
            f(row.student_acc),
            f(row.baseline_acc),
            row.kd_gain.map_or("-".to_string(), |g| format!("{g:+.4}")),
            if row.worst_lang.is_empty() { "-" } else { &row.worst_lang },
            f(row.worst_acc),
            row.compression.unwrap_or(0.0),
            row.wall_s,
            if resumed { " (resumed)" } else { "" }
        ),
        s => format!("{:<11} {}  {}", s.as_str(), r.label(), first_line(&row.error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition() {
        assert_eq!(Shard::parse("1/4").unwrap(), Shard { index: 1, count: 4 });
        assert!(Shard::parse("4/4").is_err());
        assert!(Shard::parse("0/0").is_err());
        assert!(Shard::parse("x").is_err());
        let hashes: Vec<String> = (0..200).map(|i| sha_hex(&i.to_string())).collect();
        for n in 1..6u64 {
            let mut counts = vec![0; n as usize];
            for h in &hashes {
                let owners: Vec<u64> = (0..n).filter(|&k| Shard { index: k, count: n }.contains(h)).collect();
                assert_eq!(owners.len(), 1, "each run belongs to exactly one shard");
                counts[owners[0] as usize] += 1;
            }
            assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
        }
        // The whole hash counts, not a prefix: 0x…10 mod 16 = 0, mod 3 = 16 mod 3 = 1.
        assert_eq!(hash_mod("10", 16), 0);
        assert_eq!(hash_mod("10", 3), 1);
    }

    #[test]
    fn summary_rows_are_replaced_by_recipe_and_run() {
        let tmp = tempfile::tempdir().unwrap();
        let row = |recipe: &str, run: &str, status: Outcome| SummaryRow {
            recipe: recipe.into(),
            run: run.into(),
            status,
            ..Default::default()
        };
        update_summary(
            tmp.path(),
            &[row("a.toml", "run", Outcome::Failed), row("b.toml", "x=1", Outcome::Ok)],
        )
        .unwrap();
        update_summary(tmp.path(), &[row("a.toml", "run", Outcome::Ok), row("b.toml", "x=2", Outcome::Ok)])
            .unwrap();
        let all = read_summary(tmp.path()).unwrap();
        let got: Vec<(&str, &str, &str)> =
            all.iter().map(|r| (r.recipe.as_str(), r.run.as_str(), r.status.as_str())).collect();
        assert_eq!(got, vec![("a.toml", "run", "ok"), ("b.toml", "x=1", "ok"), ("b.toml", "x=2", "ok")]);
    }

    #[test]
    fn a_run_lock_excludes_a_second_holder_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let a = lock_run(tmp.path()).unwrap().expect("first lock");
        assert!(
            lock_run(tmp.path()).unwrap().is_none(),
            "second open file description must not get the lock"
        );
        assert!(lock_held(tmp.path()));
        drop(a);
        assert!(lock_run(tmp.path()).unwrap().is_some());
    }
}
