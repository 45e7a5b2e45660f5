//! A run's `kdx run` child process: starting it with the run's lock handed over, reading its
//! events, stopping it as a signal stops `kdx run`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use kdx_framework::event::{Event, RunStatus, TeacherSource};
use kdx_framework::stage::Stage;

use super::console::BatchConsole;
use super::discover::BatchRun;

pub(super) static STOP: AtomicBool = AtomicBool::new(false);

/// A run in progress: its child process and what its events said so far.
pub(super) struct Job {
    pub(super) idx: usize,
    pub(super) child: Child,
    pub(super) _lock: File,
    pub(super) started: Instant,
    pub(super) resumed: bool,
    pub(super) bar: Option<ProgressBar>,
    /// Stages in run order with their steps.
    pub(super) stages: Vec<(Stage, u64)>,
    /// Steps already counted on the overall bar.
    pub(super) counted: u64,
    /// Until the child's `teacher_ready` event: it may be training the teacher, so a run with
    /// the same teacher waits for this one to cache it.
    pub(super) in_teacher: bool,
    /// Where the teacher came from (its `teacher_ready` event).
    pub(super) teacher: Option<TeacherSource>,
    /// The child's `run_finished` event: its status and error.
    pub(super) finished: Option<(RunStatus, Option<String>)>,
    /// The last lines of its stderr (why it died, when it ends without `run_finished`).
    pub(super) tail: VecDeque<String>,
    /// The threads reading its stdout and stderr: joined once it exits, so that everything
    /// it said is observed before its outcome is decided.
    pub(super) readers: Vec<std::thread::JoinHandle<()>>,
    /// When the batch, stopping, sent it SIGTERM.
    pub(super) stop_sent: Option<Instant>,
}

/// How long a child has, after the batch's SIGTERM, to checkpoint the step it is in and exit
/// before it is killed. Under Slurm, `KillWait` (30 s by default) ends it sooner.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(60);

/// Stops a child as a signal stops `kdx run`: SIGTERM first, so it checkpoints the step it is
/// in and records the run as interrupted (its resume redoes no step); SIGKILL only if it has
/// not exited within [`STOP_GRACE`].
pub(super) fn stop_child(job: &mut Job) {
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
    /// A job for run `idx`, just started.
    pub(super) fn new(
        idx: usize,
        child: Child,
        lock: File,
        resumed: bool,
        bar: Option<ProgressBar>,
        stages: Vec<(Stage, u64)>,
        readers: Vec<std::thread::JoinHandle<()>>,
    ) -> Job {
        Job {
            idx,
            child,
            _lock: lock,
            started: Instant::now(),
            resumed,
            bar,
            stages,
            counted: 0,
            in_teacher: true,
            teacher: None,
            finished: None,
            tail: VecDeque::new(),
            readers,
            stop_sent: None,
        }
    }

    pub(super) fn total(&self) -> u64 {
        self.stages.iter().map(|s| s.1).sum()
    }

    pub(super) fn position(&self, stage: Stage, step: u64) -> u64 {
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

/// What a child said: an event on its stdout, or a line of its stderr.
pub(super) enum Said {
    Event(Event),
    Line(String),
}

/// Starts `kdx run --events jsonl` for one run. Its events (stdout) and its log (stderr)
/// come back through `tx`; both also go to `batch.log` in the run directory.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn(
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
    let mut cmd = run_command(exe, r, results, threads, resume);
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
    let log = Arc::new(Mutex::new(log));
    let events = forward_lines(stdout, "event: ", event_or_line, log.clone(), tx.clone(), idx);
    let logs = forward_lines(stderr, "", Said::Line, log, tx, idx);
    Ok((child, vec![events, logs]))
}

/// The command line of one run's child: `kdx run RECIPE --only RUN` with the batch's results
/// directory and threads, events as JSON lines, and `--resume` when resuming.
fn run_command(exe: &Path, r: &BatchRun, results: &Path, threads: usize, resume: bool) -> Command {
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
    cmd
}

/// A thread that forwards one of the child's streams line by line: each line goes to
/// `batch.log` after `prefix` and, as `said` reads it, to `tx` with the run's `idx`. It ends
/// with the stream, or when nobody listens any more.
fn forward_lines(
    stream: impl Read + Send + 'static,
    prefix: &'static str,
    said: fn(String) -> Said,
    log: Arc<Mutex<File>>,
    tx: mpsc::Sender<(usize, Said)>,
    idx: usize,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut f) = log.lock() {
                let _ = writeln!(f, "{prefix}{line}");
            }
            if tx.send((idx, said(line))).is_err() {
                break;
            }
        }
    })
}

/// A line of the child's stdout: an event, or a log line when it is not one (a plugin
/// printing to stdout).
fn event_or_line(line: String) -> Said {
    match serde_json::from_str::<Event>(&line) {
        Ok(e) => Said::Event(e),
        Err(_) => Said::Line(line),
    }
}

/// The environment variable naming the run-lock descriptor a `kdx batch` child inherits.
pub(super) const LOCK_FD_VAR: &str = "KDX_RUN_LOCK_FD";

/// Ties a child to the batch: the child inherits the run's lock (so the lock lives as long
/// as the run, even if the batch is killed: a second batch never starts a run still
/// running), it runs in its own process group (Ctrl-C reaches the batch, which stops it),
/// and it is killed when the batch dies, even by SIGKILL (Linux's parent-death signal).
#[cfg(unix)]
pub(super) fn hand_over(cmd: &mut Command, lock: &File) {
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
pub(super) fn hand_over(_: &mut Command, _: &File) {}

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
pub(super) fn observe(job: &mut Job, said: Said, console: &BatchConsole) {
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
