//! `kdx bench --suite transformer`: the workloads of the PyTorch reference
//! `torch_transformer_step.py`, timed on kdx's transformer with the same shapes, sequence
//! lengths and threads — a training step of embedding-level distillation for a `tiny` and a
//! `small` student, and inference at all-MiniLM-L6-v2's shape.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use kdx_framework::features::TokenRows;
use kdx_framework::model::{Model, OutputGrads, StepCtx};
use kdx_framework::nn::kernels::FfnActivation;
use kdx_framework::nn::{Encoder, EncoderConfig, Pooling, TransformerModel};
use kdx_framework::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use kdx_framework::tokenize::TextTokenizer;
use rand::{Rng, SeedableRng};

/// A workload's shape, as the reference script defines it.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Name (`tiny`, `small`, `minilm-l6`).
    pub name: &'static str,
    vocab: usize,
    d: usize,
    layers: usize,
    heads: usize,
    ffn: usize,
    seq: usize,
    batch: usize,
}

/// The reference's `tiny` and `small` students (2·batch sequences per step).
pub const STEP_SHAPES: [Shape; 2] = [
    Shape { name: "tiny", vocab: 4096, d: 128, layers: 2, heads: 2, ffn: 512, seq: 32, batch: 32 },
    Shape { name: "small", vocab: 8192, d: 256, layers: 4, heads: 4, ffn: 1024, seq: 32, batch: 32 },
];
/// all-MiniLM-L6-v2's shape for `encode`.
pub const MINILM: Shape =
    Shape { name: "minilm-l6", vocab: 30522, d: 384, layers: 6, heads: 12, ffn: 1536, seq: 32, batch: 64 };
const TEACHER_DIM: usize = 384;

impl Shape {
    /// The reference's FLOP count per sequence (forward; ×3 for a training step).
    pub fn flops_per_seq(&self, train: bool) -> f64 {
        let (s, d, f) = (self.seq as f64, self.d as f64, self.ffn as f64);
        let per_layer = 2.0 * s * (4.0 * d * d + 2.0 * d * f) + 4.0 * s * s * d;
        let fwd = self.layers as f64 * per_layer;
        if train {
            3.0 * fwd
        } else {
            fwd
        }
    }

    fn model(&self, max_positions: usize, out: usize) -> TransformerModel {
        let cfg = EncoderConfig {
            vocab: self.vocab,
            width: self.d,
            layers: self.layers,
            heads: self.heads,
            ffn: self.ffn,
            max_positions,
            type_vocab: 0,
            position_offset: 0,
            eps: 1e-12,
            activation: FfnActivation::GeluErf,
            dropout: 0.0,
        };
        TransformerModel::new(
            Encoder::new(cfg, 0),
            TextTokenizer::bytes(self.seq),
            Pooling::Mean,
            false,
            out,
            0,
            "bench".into(),
        )
    }

    /// `n` sequences of random ids with lengths uniform in [seq/4, seq], as the reference.
    fn batch(&self, n: usize, rng: &mut rand::rngs::StdRng) -> TokenRows {
        let mut offsets = vec![0u32];
        let mut ids = Vec::new();
        for _ in 0..n {
            let len = rng.gen_range(self.seq / 4..=self.seq);
            ids.extend((0..len).map(|_| rng.gen_range(1..self.vocab as u32)));
            offsets.push(ids.len() as u32);
        }
        TokenRows { offsets, ids, langs: Vec::new() }
    }
}

/// One measurement: steps (or batches) per second and sequences per second.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Steps or batches per second.
    pub per_s: f64,
    /// Sequences per second.
    pub sequences_per_s: f64,
}

/// kdx's training step: 2·batch sequences, a linear projection of the mean-pooled vector to
/// 384, MSE against fixed targets, dense Adam (lr 1e-4).
pub fn kdx_step(s: &Shape, steps: usize, warmup: usize) -> Result<Rate> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut model = s.model(s.seq, TEACHER_DIM);
    let bags = s.batch(2 * s.batch, &mut rng);
    let target: Vec<f32> = (0..2 * s.batch * TEACHER_DIM).map(|_| rng.gen_range(-0.05f32..0.05)).collect();
    let config =
        OptimizerConfig { kind: OptimizerKind::Adam, lr: 1e-4, sparse: false, ..OptimizerConfig::default() };
    let mut opt = Optimizer::new(config);
    let n = target.len() as f32;
    let mut step = |i: usize| -> Result<()> {
        model.forward_backward(&bags, StepCtx::new(i as u64, 0), &mut |o| {
            let g = o.logits.iter().zip(&target).map(|(y, t)| 2.0 * (y - t) / n).collect();
            Ok(OutputGrads { logits: g, hidden: None, layers: None })
        })?;
        opt.step(&mut model.params_mut(), 1e-4)
    };
    for i in 0..warmup {
        step(i)?;
    }
    let t0 = Instant::now();
    for i in 0..steps {
        step(warmup + i)?;
    }
    let per_s = steps as f64 / t0.elapsed().as_secs_f64();
    Ok(Rate { per_s, sequences_per_s: per_s * 2.0 * s.batch as f64 })
}

/// kdx's inference at all-MiniLM-L6-v2's shape: mean pooling and L2 normalisation.
pub fn kdx_encode(s: &Shape, steps: usize, warmup: usize) -> Result<Rate> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut model = s.model(512, 1);
    model.normalize = true;
    let bags = s.batch(s.batch, &mut rng);
    for _ in 0..warmup {
        model.forward(&bags)?;
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        model.forward(&bags)?;
    }
    let per_s = steps as f64 / t0.elapsed().as_secs_f64();
    Ok(Rate { per_s, sequences_per_s: per_s * s.batch as f64 })
}

/// One run of the PyTorch reference for one workload.
pub fn torch(
    python: &str,
    script: &Path,
    s: &Shape,
    train: bool,
    threads: usize,
    steps: usize,
    warmup: usize,
) -> Result<Rate> {
    let (threads, steps, warmup) = (threads.to_string(), steps.to_string(), warmup.to_string());
    let mut args = vec!["--threads", &threads, "--steps", &steps, "--warmup", &warmup];
    if train {
        args.extend(["--workload", "step", "--variant", s.name]);
    } else {
        args.extend(["--workload", "encode"]);
    }
    let v = super::torch::torch_result(python, script, &args)?;
    let seqs = v
        .get("sequences_per_s")
        .and_then(|x| x.as_f64())
        .with_context(|| format!("no sequences_per_s in {v}"))?;
    let per = if train { 2.0 * s.batch as f64 } else { s.batch as f64 };
    Ok(Rate { per_s: seqs / per, sequences_per_s: seqs })
}
