//! What `kdx batch` shows: progress bars on a terminal, plain lines otherwise.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// What `kdx batch` shows (a batch of runs; a single run's console is `crate::console::Console`):
/// bars and lines above them on a terminal, plain lines otherwise.
pub(super) struct BatchConsole {
    pub(super) multi: Option<MultiProgress>,
    pub(super) overall: Option<ProgressBar>,
}

impl BatchConsole {
    pub(super) fn new(show_bars: bool, total_steps: u64) -> BatchConsole {
        if !show_bars {
            return BatchConsole { multi: None, overall: None };
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
        BatchConsole { multi: Some(multi), overall: Some(overall) }
    }

    /// A result line, on stdout.
    pub(super) fn result(&self, line: &str) {
        match &self.multi {
            Some(m) if std::io::stdout().is_terminal() => {
                let _ = m.println(line);
            }
            _ => println!("{line}"),
        }
    }

    /// A log line, on stderr.
    pub(super) fn log(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(format!("kdx batch: {line}"));
            }
            None => eprintln!("kdx batch: {line}"),
        }
    }

    pub(super) fn job_bar(&self, label: &str, total: u64) -> Option<ProgressBar> {
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

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

pub(super) fn finish_steps(console: &BatchConsole, total: u64, counted: u64) {
    if let Some(o) = &console.overall {
        o.inc(total.saturating_sub(counted));
    }
}
