//! Runs the corpus build without the main binary:
//! `cargo run --release -p kdx-corpus --example build -- --out data/gettext-corpus.tsv.gz`.
//! Same arguments and code path as `kdx corpus build`.

use clap::Parser;

/// Build the gettext corpus snapshot.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    build: kdx_corpus::cli::BuildArgs,
}

fn main() -> anyhow::Result<()> {
    kdx_corpus::cli::run_build(&Cli::parse().build)
}
