//! `kdx batch`'s command line.

use std::path::PathBuf;

use super::shard::Shard;

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
