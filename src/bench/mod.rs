//! `kdx bench`: the reference distillation step (../shared/bench in the design notes), timed
//! in kdx and — when given the PyTorch script — in PyTorch on the same cores, alternating
//! the two so machine drift hits both, and reported as a ratio measured in one run.
//!
//! The step: embedding bag (V × D, mean over L = 64 ids) → Linear(D, H) → ReLU →
//! Linear(H, 40); loss 0.5·T²·KL(teacher_T ‖ student_T) + 0.5·CE at T = 2; Adam, lr 1e-3;
//! batch 256. Mode `dense` updates every embedding row (PyTorch: fused Adam), `sparse` only
//! the touched rows (PyTorch: SparseAdam).
//!
//! `--suite transformer` times the transformer workloads of `torch_transformer_step.py`
//! ([`transformer`]).

mod torch;
pub mod transformer;
pub use torch::torch_result;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};

use kdx_framework::engine::train::{combine_losses, StageLoss};
use kdx_framework::features::TokenRows;
use kdx_framework::loss::LossInput;
use kdx_framework::model::{Param, StepCtx};
use kdx_framework::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use kdx_framework::registry::{build_standalone, Instance, PluginKind};
use kdx_framework::schedule::Schedule;

const B: usize = 256;
const L: usize = 64;
const C: usize = 40;
const T: f32 = 2.0;

/// (V, D, H) of a variant.
pub fn variant(name: &str) -> Result<(usize, usize, usize)> {
    Ok(match name {
        "base" => (65536, 64, 256),
        "smallv" => (8192, 64, 256),
        "bigmlp" => (8192, 256, 1024),
        other => anyhow::bail!("unknown variant `{other}`: base, smallv or bigmlp"),
    })
}

/// Steps per second of the kdx step, median over `reps` repetitions.
pub fn kdx_steps_per_s(variant_name: &str, sparse: bool, steps: usize, warmup: usize) -> Result<f64> {
    let (v, d, h) = variant(variant_name)?;
    let mut params = toml::Table::new();
    params.insert("buckets".into(), (v as i64).into());
    params.insert("dim".into(), (d as i64).into());
    params.insert("hidden".into(), toml::Value::Array(vec![(h as i64).into()]));
    let Instance::Model(builder) = build_standalone(PluginKind::Model, "ngram-mlp", params, "kdx bench")?
    else {
        unreachable!("a model registration builds a model")
    };
    let mut model = builder.build(&kdx_framework::model::ModelSpec::new(C, 0))?;
    let mut kl_params = toml::Table::new();
    kl_params.insert("temperature".into(), (T as f64).into());
    let Instance::Loss(mut kl) = build_standalone(PluginKind::Loss, "soft-kl", kl_params, "kdx bench")?
    else {
        unreachable!()
    };
    let Instance::Loss(mut ce) =
        build_standalone(PluginKind::Loss, "hard-ce", toml::Table::new(), "kdx bench")?
    else {
        unreachable!()
    };
    let half = Schedule::Constant(0.5);

    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let ids: Vec<u32> = (0..B * L).map(|_| rng.gen_range(0..v as u32)).collect();
    let bags = TokenRows { offsets: (0..=B).map(|i| (i * L) as u32).collect(), ids, langs: Vec::new() };
    let labels: Vec<u32> = (0..B).map(|_| rng.gen_range(0..C as u32)).collect();
    let teacher: Vec<f32> = (0..B * C).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let langs = vec![0u32; B];
    let weights = vec![1f32; B];
    let mut opt =
        Optimizer::new(OptimizerConfig { kind: OptimizerKind::Adam, lr: 1e-3, sparse, ..Default::default() });
    let mut t0 = Instant::now();
    for step in 0..warmup + steps {
        if step == warmup {
            t0 = Instant::now();
        }
        let mut losses = [
            StageLoss { name: "soft-kl", weight: &half, loss: &mut *kl },
            StageLoss { name: "hard-ce", weight: &half, loss: &mut *ce },
        ];
        model.forward_backward(&bags, StepCtx::new(step as u64, 0), &mut |out| {
            let input = LossInput {
                batch: B,
                classes: C,
                student_logits: &out.logits,
                student_hidden: &out.hidden,
                student_hidden_dim: out.hidden_dim,
                teacher_logits: Some(&teacher),
                teacher_hidden: None,
                teacher_hidden_dim: 0,
                labels: Some(&labels),
                langs: &langs,
                weights: &weights,
                step: step as u64,
                total_steps: (warmup + steps) as u64,
                stats: &[],
            };
            Ok(combine_losses(&mut losses, &input, out.hidden.len(), None, None)?.0)
        })?;
        let mut ps: Vec<&mut Param> = model.params_mut();
        opt.step(&mut ps, 1e-3)?;
    }
    Ok(steps as f64 / t0.elapsed().as_secs_f64())
}

/// Steps per second of the PyTorch reference, one repetition, via its RESULT line.
fn torch_steps_per_s(
    python: &str,
    script: &Path,
    variant_name: &str,
    sparse: bool,
    threads: usize,
    steps: usize,
    warmup: usize,
) -> Result<f64> {
    let args = [
        "--variant",
        variant_name,
        "--mode",
        if sparse { "sparse" } else { "dense" },
        "--threads",
        &threads.to_string(),
        "--steps",
        &steps.to_string(),
        "--warmup",
        &warmup.to_string(),
        "--reps",
        "1",
    ];
    let v = torch_result(python, script, &args)?;
    v.get("steps_per_s")
        .or_else(|| v.get("steps_per_sec"))
        .and_then(|x| x.as_f64())
        .with_context(|| format!("no steps_per_s in {v}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Options of `kdx bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// base, smallv, bigmlp or all.
    #[arg(long, default_value = "all")]
    pub variant: String,
    /// dense, sparse or all.
    #[arg(long, default_value = "all")]
    pub mode: String,
    /// Threads for both kdx and PyTorch.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed steps per repetition.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Repetitions (alternating kdx and PyTorch); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// The PyTorch reference script (torch_kd_step.py) to time alongside.
    #[arg(long)]
    pub torch_script: Option<PathBuf>,
    /// The Python interpreter that has torch installed.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Which benchmarks: ngram (the n-gram distillation step), transformer (transformer
    /// steps and MiniLM-shaped encoding), or all.
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// The PyTorch transformer reference (torch_transformer_step.py) to time alongside.
    #[arg(long)]
    pub torch_transformer_script: Option<PathBuf>,
    /// Timed steps (or batches) per repetition of the transformer workloads.
    #[arg(long, default_value_t = 20)]
    pub transformer_steps: usize,
}

/// Runs the benchmarks the suite names.
pub fn run(args: &BenchArgs) -> Result<()> {
    rayon::ThreadPoolBuilder::new().num_threads(args.threads).build_global().ok();
    match args.suite.as_str() {
        "ngram" => run_ngram(args),
        "transformer" => run_transformer(args),
        "all" => {
            run_ngram(args)?;
            println!();
            run_transformer(args)
        }
        s => anyhow::bail!("unknown suite `{s}`: ngram, transformer or all"),
    }
}

/// The transformer workloads, kdx and (when given) PyTorch alternating, medians of `reps`.
fn run_transformer(args: &BenchArgs) -> Result<()> {
    use transformer::{kdx_encode, kdx_step, torch, MINILM, STEP_SHAPES};
    println!(
        "{:<8} {:<10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "workload", "variant", "kdx seq/s", "torch seq/s", "kdx GF/s", "torch GF/s", "ratio"
    );
    let work: Vec<(&transformer::Shape, bool)> =
        STEP_SHAPES.iter().map(|s| (s, true)).chain([(&MINILM, false)]).collect();
    let (steps, warmup) = (args.transformer_steps, 3);
    for (shape, train) in work {
        let (mut k, mut t) = (Vec::new(), Vec::new());
        for _ in 0..args.reps.max(1) {
            k.push(
                if train { kdx_step(shape, steps, warmup)? } else { kdx_encode(shape, steps, warmup)? }
                    .sequences_per_s,
            );
            if let Some(script) = &args.torch_transformer_script {
                t.push(
                    torch(&args.python, script, shape, train, args.threads, steps, warmup)?.sequences_per_s,
                );
            }
        }
        let gf = |seqs: f64| seqs * shape.flops_per_seq(train) / 1e9;
        let km = median(k);
        let name = if train { "step" } else { "encode" };
        if t.is_empty() {
            println!(
                "{name:<8} {:<10} {km:>10.1} {:>10} {:>10.1} {:>10} {:>8}",
                shape.name,
                "-",
                gf(km),
                "-",
                "-"
            );
        } else {
            let tm = median(t);
            println!(
                "{name:<8} {:<10} {km:>10.1} {tm:>10.1} {:>10.1} {:>10.1} {:>7.2}×",
                shape.name,
                gf(km),
                gf(tm),
                km / tm
            );
        }
    }
    Ok(())
}

/// The n-gram distillation step, one line per (variant, mode).
fn run_ngram(args: &BenchArgs) -> Result<()> {
    let variants: Vec<&str> =
        if args.variant == "all" { vec!["base", "smallv", "bigmlp"] } else { vec![args.variant.as_str()] };
    let modes: Vec<bool> = match args.mode.as_str() {
        "all" => vec![false, true],
        "dense" => vec![false],
        "sparse" => vec![true],
        m => anyhow::bail!("unknown mode `{m}`: dense, sparse or all"),
    };
    println!("{:<8} {:<7} {:>12} {:>14} {:>8}", "variant", "mode", "kdx steps/s", "torch steps/s", "ratio");
    for v in &variants {
        for &sparse in &modes {
            let mut k = Vec::new();
            let mut t = Vec::new();
            for _ in 0..args.reps.max(1) {
                k.push(kdx_steps_per_s(v, sparse, args.steps, args.warmup)?);
                if let Some(script) = &args.torch_script {
                    t.push(torch_steps_per_s(
                        &args.python,
                        script,
                        v,
                        sparse,
                        args.threads,
                        args.steps,
                        args.warmup,
                    )?);
                }
            }
            let km = median(k);
            let mode = if sparse { "sparse" } else { "dense" };
            if t.is_empty() {
                println!("{v:<8} {mode:<7} {km:>12.1} {:>14} {:>8}", "-", "-");
            } else {
                let tm = median(t);
                println!("{v:<8} {mode:<7} {km:>12.1} {tm:>14.1} {:>7.2}×", km / tm);
            }
        }
    }
    Ok(())
}
