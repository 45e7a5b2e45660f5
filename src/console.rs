//! Observers of a run in the application: the console (progress bars on a terminal, log
//! lines otherwise) and JSON lines (`kdx run --events jsonl`, what `kdx batch` reads).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use kdx_framework::dataset::Measure;
use kdx_framework::event::{Event, Observer, TeacherSource};
use kdx_framework::stage::Stage;

/// Renders events for a person on stderr: a progress bar per stage on a terminal, a line
/// every ten seconds otherwise, and every note and evaluation as a `kdx: …` line.
pub struct Console {
    bar: Option<indicatif::ProgressBar>,
    terminal: bool,
    last_log: Instant,
}

impl Console {
    /// A console observer; bars only when stderr is a terminal.
    pub fn new() -> Console {
        Console { bar: None, terminal: std::io::stderr().is_terminal(), last_log: Instant::now() }
    }

    fn line(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(format!("kdx: {msg}")),
            None => eprintln!("kdx: {msg}"),
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

impl Observer for Console {
    fn event(&mut self, event: &Event) {
        match event {
            Event::RunStarted { .. } | Event::RunFinished { .. } | Event::TeacherWaiting { .. } | Event::Checkpointed { .. } => {}
            Event::TaskLoaded { languages, classes, train, dev, test } => {
                self.line(&format!("task: {languages} languages, {classes} classes, {train} train / {dev} dev / {test} test examples"))
            }
            Event::TeacherReady { source: TeacherSource::Trained, cache: Some(c) } => {
                self.line(&format!("teacher: trained and cached in {}", c.display()))
            }
            Event::TeacherReady { .. } => {}
            Event::Note { message } => self.line(message),
            Event::StageStarted { stage, steps, from_step } => {
                if *from_step > 0 {
                    self.line(&format!("[{stage}] resuming at step {from_step}/{steps}"));
                }
                if self.terminal {
                    let b = indicatif::ProgressBar::new(*steps);
                    b.set_style(
                        indicatif::ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} loss {msg} eta {eta}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                            .progress_chars("=> "),
                    );
                    b.set_prefix(stage.name());
                    b.set_position(*from_step);
                    self.bar = Some(b);
                }
            }
            Event::Step { stage, step, steps, loss } => {
                if let Some(b) = &self.bar {
                    b.set_position(*step);
                    b.set_message(format!("{loss:.4}"));
                    if step == steps {
                        b.finish();
                        self.bar = None;
                    }
                } else if self.last_log.elapsed() > Duration::from_secs(10) || step == steps {
                    self.last_log = Instant::now();
                    eprintln!("kdx: [{stage}] step {step}/{steps} loss {loss:.4}");
                }
            }
            Event::Evaluated { stage, step, macro_acc, measure: Measure::Retrieval, .. } => {
                self.line(&format!("[{stage}] step {step}: dev translation → English retrieval {macro_acc:.4}"))
            }
            Event::Evaluated { stage, step, macro_acc, .. } => {
                self.line(&format!("[{stage}] step {step}: dev macro accuracy {macro_acc:.4}"))
            }
        }
    }
}

/// Writes each event as one JSON object per line (the format of `docs/events.md`).
///
/// `step` events are rate-limited to one per [`JsonLines::STEP_INTERVAL`] per stage, plus
/// every stage's first and last step, so a long run does not write a line per step and a
/// reader always sees a stage's training begin; every other event is written as it
/// happens and flushed at once.
pub struct JsonLines<W: Write> {
    out: W,
    /// The stage and time of the last `step` written.
    last_step: Option<(Stage, Instant)>,
    /// Set once a write failed (a closed pipe): later events are dropped silently.
    closed: bool,
}

impl<W: Write> JsonLines<W> {
    /// Minimum time between two `step` events of a stage.
    pub const STEP_INTERVAL: Duration = Duration::from_millis(250);

    /// Events to `out`.
    pub fn new(out: W) -> JsonLines<W> {
        JsonLines { out, last_step: None, closed: false }
    }
}

impl<W: Write> Observer for JsonLines<W> {
    fn event(&mut self, event: &Event) {
        if self.closed {
            return;
        }
        if let Event::Step { stage, step, steps, .. } = event {
            let due = step == steps
                || self.last_step.is_none_or(|(s, t)| s != *stage || t.elapsed() >= Self::STEP_INTERVAL);
            if !due {
                return;
            }
            self.last_step = Some((*stage, Instant::now()));
        }
        let Ok(line) = serde_json::to_string(event) else { return };
        if writeln!(self.out, "{line}").and_then(|_| self.out.flush()).is_err() {
            self.closed = true;
        }
    }
}

/// Passes events on, and kills this process with SIGKILL after `n` training steps: a crash
/// at a chosen point, for the tests of `--resume` (`kdx run --kill-after-steps N`, hidden).
pub struct KillAfter {
    left: u64,
    inner: Box<dyn Observer>,
}

impl KillAfter {
    /// Kills after `n` steps; events go to `inner` until then.
    pub fn new(n: u64, inner: Box<dyn Observer>) -> KillAfter {
        KillAfter { left: n, inner }
    }
}

impl Observer for KillAfter {
    fn event(&mut self, event: &Event) {
        self.inner.event(event);
        if let Event::Step { .. } = event {
            self.left = self.left.saturating_sub(1);
            if self.left == 0 {
                #[cfg(unix)]
                // SAFETY: sends a signal to this very process; nothing is read or written.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                std::process::abort();
            }
        }
    }
}

/// Sends every event to several observers in turn.
pub struct Both<'a>(pub &'a mut dyn Observer, pub &'a mut dyn Observer);

impl Observer for Both<'_> {
    fn event(&mut self, event: &Event) {
        self.0.event(event);
        self.1.event(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::event::RunStatus;

    #[test]
    fn json_lines_rate_limit_steps_but_keep_each_stage_end() {
        let mut buf = Vec::new();
        {
            let mut j = JsonLines::new(&mut buf);
            j.event(&Event::Step { stage: Stage::Teacher, step: 1, steps: 2000, loss: 1.0 });
            for step in 1..=1000 {
                j.event(&Event::Step { stage: Stage::Distill, step, steps: 1000, loss: 1.0 });
            }
            j.event(&Event::RunFinished { status: RunStatus::Ok, error: None, wall_s: 0.1 });
        }
        let lines: Vec<Event> =
            String::from_utf8(buf).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines.len() < 10, "{} lines", lines.len());
        // A new stage's first step is written even right after another stage's.
        assert_eq!(lines[1], Event::Step { stage: Stage::Distill, step: 1, steps: 1000, loss: 1.0 });
        assert_eq!(
            lines[lines.len() - 2],
            Event::Step { stage: Stage::Distill, step: 1000, steps: 1000, loss: 1.0 }
        );
        assert!(matches!(lines.last(), Some(Event::RunFinished { status: RunStatus::Ok, .. })));
    }
}
