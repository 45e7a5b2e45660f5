//! The `kdx corpus build` command line. The main binary mounts [`BuildArgs`] as a clap
//! subcommand and calls [`run_build`].

use std::path::PathBuf;

use anyhow::{Context, Result};

use kdx_corpus::build::{build, manifest_json_path, manifest_path, BuildOptions};

/// Arguments of `kdx corpus build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Root of the locale tree holding `<locale>/LC_MESSAGES/*.mo`.
    #[arg(long, value_name = "DIR", default_value = "/usr/share/locale")]
    pub locale_dir: PathBuf,
    /// The `.tsv.gz` snapshot to write; `MANIFEST.md` is written in the same directory.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Keep at most N rows per locale: larger locales keep the N messages with the smallest
    /// hashed msgid (the same messages in every locale), smaller ones stay whole.
    #[arg(long, value_name = "N")]
    pub max_per_locale: Option<usize>,
}

/// Builds the corpus and prints a short summary (warnings go to stderr).
pub fn run_build(args: &BuildArgs) -> Result<()> {
    let opts = BuildOptions {
        locale_dir: args.locale_dir.clone(),
        out: args.out.clone(),
        max_per_locale: args.max_per_locale,
    };
    let report = build(&opts)
        .with_context(|| format!("building the gettext corpus from {}", args.locale_dir.display()))?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "wrote {}: {} locales, {} rows, {} domains, {} bytes (sha256 {})",
        args.out.display(),
        report.locales,
        report.rows,
        report.domains,
        report.bytes,
        report.sha256
    );
    let show =
        |v: &[(String, usize)]| v.iter().map(|(l, n)| format!("{l} {n}")).collect::<Vec<_>>().join(", ");
    let n = report.per_locale.len();
    println!("largest: {}", show(&report.per_locale[..n.min(5)]));
    println!("smallest: {}", show(&report.per_locale[n.saturating_sub(5)..]));
    println!(
        "manifest: {} (for programs: {}){}",
        manifest_path(&args.out).display(),
        manifest_json_path(&args.out).display(),
        if report.warnings.is_empty() {
            String::new()
        } else {
            format!(" ({} warnings, listed there too)", report.warnings.len())
        }
    );
    Ok(())
}
