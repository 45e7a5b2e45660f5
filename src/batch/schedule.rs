//! Running a batch's runs as child processes, `--jobs` at a time: start what may start (a run
//! waits while another one trains the teacher they share), listen to the children, and record
//! each one's outcome as it ends.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kdx_framework::engine::lock_run;

use super::args::BatchArgs;
use super::child::{observe, spawn, stop_child, Job, Said, STOP};
use super::console::{finish_steps, first_line, BatchConsole};
use super::decide::{decide, run_report, Action};
use super::discover::BatchRun;
use super::summary::{outcome, result_line, summary_path, update_summary, Outcome, SummaryRow};

/// Records the rows known without running anything (invalid recipes, runs to skip) and
/// returns the runs left to start, by index.
pub(super) fn record_known(
    runs: &[BatchRun],
    actions: &[Action],
    results: &std::path::Path,
    counts: &mut HashMap<Outcome, usize>,
) -> Result<VecDeque<usize>> {
    let mut early = Vec::new();
    let mut pending = VecDeque::new();
    for (i, (r, a)) in runs.iter().zip(actions).enumerate() {
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
                early.push(skipped_row(r, results, why));
                *counts.entry(Outcome::Skipped).or_default() += 1;
                println!("{:<11} {}  {why}", "skipped", r.label());
            }
            Action::Run | Action::Resume => pending.push_back(i),
        }
    }
    update_summary(results, &early)?;
    Ok(pending)
}

/// A skipped run's row, with the figures of its report when it has one.
fn skipped_row(r: &BatchRun, results: &std::path::Path, why: &str) -> SummaryRow {
    let row = SummaryRow::new(r, Outcome::Skipped, why.to_string());
    match run_report(&r.dir(results)) {
        Some(rep) => row.with_report(&rep),
        None => row,
    }
}

/// Jobs at a time and worker threads per job: the cores (under Slurm, the task's) shared.
fn jobs_and_threads(asked: usize, pending: usize) -> (usize, usize) {
    // Under Slurm, the task's CPUs (the node may have more than the task was given).
    let slurm_cpus =
        std::env::var("SLURM_CPUS_PER_TASK").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0);
    let cores =
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(slurm_cpus.unwrap_or(usize::MAX));
    let jobs = asked.min(pending).max(1);
    if asked > cores {
        eprintln!(
            "kdx batch: warning: {asked} jobs on {cores} cores: each job gets 1 thread and they compete"
        );
    }
    (jobs, (cores / jobs).max(1))
}

/// The children of a batch and what is known of its runs.
pub(super) struct Scheduler<'a> {
    args: &'a BatchArgs,
    runs: &'a [BatchRun],
    /// Runs not started yet, by index.
    pub(super) pending: VecDeque<usize>,
    running: Vec<Job>,
    /// Runs ended, by outcome.
    pub(super) counts: HashMap<Outcome, usize>,
    done: usize,
    to_run: usize,
    jobs: usize,
    threads: usize,
    exe: PathBuf,
    console: BatchConsole,
    tx: mpsc::Sender<(usize, Said)>,
    rx: mpsc::Receiver<(usize, Said)>,
}

impl<'a> Scheduler<'a> {
    /// A scheduler for `pending` (indices into `runs`); installs the Ctrl-C handler when
    /// something will run.
    pub(super) fn new(
        args: &'a BatchArgs,
        runs: &'a [BatchRun],
        pending: VecDeque<usize>,
        counts: HashMap<Outcome, usize>,
    ) -> Result<Scheduler<'a>> {
        let (jobs, threads) = jobs_and_threads(args.jobs, pending.len());
        if !pending.is_empty() {
            let _ = ctrlc::set_handler(|| {
                if STOP.swap(true, Ordering::SeqCst) {
                    // A second Ctrl-C: leave now.
                    std::process::exit(130);
                }
            });
        }
        let console = BatchConsole::new(
            std::io::stderr().is_terminal() && !pending.is_empty(),
            pending.iter().map(|&i| runs[i].total_steps()).sum(),
        );
        let (tx, rx) = mpsc::channel();
        let s = Scheduler {
            args,
            runs,
            to_run: pending.len(),
            pending,
            running: Vec::new(),
            counts,
            done: 0,
            jobs,
            threads,
            exe: std::env::current_exe().context("locating the kdx executable")?,
            console,
            tx,
            rx,
        };
        s.show_done();
        Ok(s)
    }

    /// Runs everything pending, or until a stop signal (then the children are stopped and
    /// their runs recorded as interrupted).
    pub(super) fn run_all(&mut self) -> Result<()> {
        loop {
            let stopping = STOP.load(Ordering::SeqCst);
            if !stopping {
                self.start_ready()?;
            }
            if self.running.is_empty() && (self.pending.is_empty() || stopping) {
                break;
            }
            self.listen();
            if stopping {
                self.running.iter_mut().for_each(stop_child);
            }
            self.reap()?;
        }
        if let Some(o) = &self.console.overall {
            o.finish_and_clear();
        }
        Ok(())
    }

    /// Starts pending runs while there is room. A run waits while another run training the
    /// same teacher is in that stage, so the teacher is trained once and then loaded from
    /// the cache.
    fn start_ready(&mut self) -> Result<()> {
        while self.running.len() < self.jobs {
            let (runs, running) = (self.runs, &self.running);
            let Some(pos) = self.pending.iter().position(|&i| {
                !running.iter().any(|j| j.in_teacher && runs[j.idx].teacher_key == runs[i].teacher_key)
            }) else {
                break;
            };
            let idx = self.pending.remove(pos).unwrap_or_default();
            self.start(idx)?;
        }
        Ok(())
    }

    /// Starts run `idx` under its lock, unless another process holds it or finished the run
    /// meanwhile.
    fn start(&mut self, idx: usize) -> Result<()> {
        let r = &self.runs[idx];
        let dir = r.dir(&self.args.results);
        let Some(lock) = lock_run(&dir)? else {
            self.console.result(&format!(
                "{:<11} {}  running in another batch process",
                "skipped",
                r.label()
            ));
            self.ended(Outcome::Skipped, Some(r.total_steps()));
            return Ok(());
        };
        // Another batch may have finished it while we were deciding.
        let action = decide(r, &self.args.results, self.args.force);
        if let Action::Skip(why) = &action {
            update_summary(&self.args.results, &[skipped_row(r, &self.args.results, why)])?;
            self.console.result(&format!("{:<11} {}  {why}", "skipped", r.label()));
            self.ended(Outcome::Skipped, Some(r.total_steps()));
            return Ok(());
        }
        let resume = action == Action::Resume;
        let spawned =
            spawn(&self.exe, r, &self.args.results, self.threads, resume, &dir, idx, &lock, self.tx.clone());
        match spawned {
            Ok((child, readers)) => {
                let bar = self.console.job_bar(&r.label(), r.total_steps());
                if self.console.multi.is_none() {
                    let verb = if resume { "resuming" } else { "starting" };
                    self.console.log(&format!("{verb} {} ({})", r.label(), r.recipe_key));
                }
                self.running.push(Job::new(idx, child, lock, resume, bar, r.stages.clone(), readers));
            }
            Err(e) => {
                let row = SummaryRow::new(r, Outcome::Failed, format!("could not start kdx run: {e:#}"));
                update_summary(&self.args.results, &[row])?;
                self.console.result(&format!("{:<11} {}  could not start: {e:#}", "failed", r.label()));
                self.ended(Outcome::Failed, Some(r.total_steps()));
            }
        }
        Ok(())
    }

    /// What the children said in the next 100 ms.
    fn listen(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(100);
        while let Ok((idx, line)) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Some(job) = self.running.iter_mut().find(|j| j.idx == idx) {
                observe(job, line, &self.console);
            }
        }
    }

    /// Records every child that has exited.
    fn reap(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.running.len() {
            match self.running[i].child.try_wait().context("waiting for a kdx run")? {
                Some(status) => {
                    let job = self.running.swap_remove(i);
                    self.finish(job, status)?;
                }
                None => i += 1,
            }
        }
        Ok(())
    }

    /// A child has exited: everything it said is read, its outcome decided and recorded.
    fn finish(&mut self, mut job: Job, status: ExitStatus) -> Result<()> {
        for reader in job.readers.drain(..) {
            let _ = reader.join();
        }
        // The log lines still in the pipe (the last ones say why a run failed).
        while let Ok((idx, line)) = self.rx.try_recv() {
            if let Some(j) = self.running.iter_mut().find(|j| j.idx == idx) {
                observe(j, line, &self.console);
            } else if idx == job.idx {
                observe(&mut job, line, &self.console);
            }
        }
        let r = &self.runs[job.idx];
        let row = outcome(r, &self.args.results, &job, status, STOP.load(Ordering::SeqCst));
        // The summary row is written while the run's lock is still held (dropped with `job`).
        update_summary(&self.args.results, std::slice::from_ref(&row))?;
        if let Some(b) = &job.bar {
            b.finish_and_clear();
            if let Some(m) = &self.console.multi {
                m.remove(b);
            }
        }
        finish_steps(&self.console, job.total(), job.counted);
        self.console.result(&result_line(r, &row, job.resumed));
        self.ended(row.status, None);
        drop(job);
        Ok(())
    }

    /// Counts a run that ended; `unstarted_steps` are its steps, when it never ran, for the
    /// overall bar.
    fn ended(&mut self, status: Outcome, unstarted_steps: Option<u64>) {
        *self.counts.entry(status).or_default() += 1;
        if let Some(steps) = unstarted_steps {
            finish_steps(&self.console, steps, 0);
        }
        self.done += 1;
        self.show_done();
    }

    fn show_done(&self) {
        if let Some(o) = &self.console.overall {
            o.set_message(format!("{}/{} runs", self.done, self.to_run));
        }
    }
}

/// The batch's last line and its exit code: 130 when stopped, failure when a run failed.
pub(super) fn report(
    args: &BatchArgs,
    runs: usize,
    s: &Scheduler,
    elsewhere: usize,
    started: Instant,
) -> ExitCode {
    let c = |k: Outcome| s.counts.get(&k).copied().unwrap_or(0);
    let interrupted = STOP.load(Ordering::SeqCst);
    println!(
        "batch: {runs} run(s) — {} ok, {} failed, {} interrupted, {} skipped{}{}; summary in {} ({:.1}s)",
        c(Outcome::Ok),
        c(Outcome::Failed),
        c(Outcome::Interrupted),
        c(Outcome::Skipped),
        if interrupted && !s.pending.is_empty() {
            format!(", {} not started", s.pending.len())
        } else {
            String::new()
        },
        match args.shard {
            Some(sh) => format!(" (shard {}/{}; {elsewhere} in other shards)", sh.index, sh.count),
            None => String::new(),
        },
        summary_path(&args.results).display(),
        started.elapsed().as_secs_f64()
    );
    if interrupted {
        ExitCode::from(130)
    } else if c(Outcome::Failed) > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
