//! The training loop of one stage: sampling, forward/backward, losses, optimizer,
//! periodic evaluation and checkpoints. Every random choice is derived from
//! (seed, stage, step), so a resumed stage replays exactly what an uninterrupted one does.

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::loss_report::{add_terms, loss_report};
pub use super::loss_report::{term_labels, LossReport};
pub use super::objective::{combine_losses, Term};
use super::queues::Queues;
pub use super::rows::{argmax_rows, row_ce};
use super::rows::{gather_rows, update_stats};
pub use super::stage_run::{StageLoss, StageRun};
use crate::loss::LossInput;
use crate::model::{Model, Param, StepCtx};
use crate::optim::{Optimizer, ParamState};
use crate::sampler::{normalise, LangStat, Sampler, SamplerCtx};
use crate::seed::mix;
use crate::stage::Stage;
use crate::store::TensorMap;

/// A row of `sampling.csv`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SamplingRow {
    /// Stage.
    pub stage: String,
    /// Step at which the distribution was set.
    pub step: u64,
    /// Language.
    pub lang: String,
    /// Probability of drawing the language.
    pub probability: f64,
    /// Examples of the language drawn so far in the stage.
    pub drawn: u64,
}

/// The loop state that a checkpoint must carry besides parameters and moments.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoopState {
    /// Next step to run.
    pub step: u64,
    /// Optimizer updates so far.
    pub opt_t: u64,
    /// Queue cursors and passes.
    pub cursor: Vec<usize>,
    /// Queue passes.
    pub pass: Vec<u64>,
    /// Per-language statistics.
    pub stats: Vec<LangStat>,
    /// The sampler's current distribution.
    pub dist: Vec<f64>,
    /// Sampler rows written so far.
    pub sampling: Vec<SamplingRow>,
    /// Seconds spent training so far (for `run.csv`).
    pub train_seconds: f64,
    /// The sampler's own state ([`Sampler::state`]).
    pub sampler_state: Vec<f64>,
    /// Each loss's own state ([`crate::loss::Loss::save_state`]), by position; empty for
    /// checkpoints written before losses had one.
    #[serde(default)]
    pub loss_states: Vec<Vec<u8>>,
    /// Per loss: the sum of its values and the number of steps it was computed in since
    /// the previous evaluation (the `loss.<term>` columns of `metrics.csv`).
    #[serde(default)]
    pub term_sums: Vec<(f64, u64)>,
}

/// What the stage loop calls out to: evaluation, checkpoints, progress. The engine's
/// implementation evaluates on the dev split, writes checkpoints and tells the run's
/// observer; tests use recording ones.
pub trait StageHooks {
    /// Called after step `step` (1-based count of steps done) when an evaluation is due;
    /// fills per-language dev accuracies (student, teacher) into the statistics.
    /// `report` is what the losses report (their gate, named values, term values).
    /// `projection` is the embedding loss's map into the teacher's space, if any: a
    /// parallel-data run scores translation retrieval through it.
    fn evaluate(
        &mut self,
        stage: Stage,
        step: u64,
        model: &dyn Model,
        projection: Option<&crate::nn::HiddenProjection>,
        stats: &mut [LangStat],
        report: LossReport,
    ) -> Result<()>;
    /// Persists a checkpoint of the stage: every trained parameter (model and losses) by
    /// name, the optimizer and the loop state.
    fn checkpoint(
        &mut self,
        stage: Stage,
        params: &[(String, &Param)],
        opt: &Optimizer,
        state: &LoopState,
    ) -> Result<()>;
    /// The stage's last checkpoint, when resuming: tensors by name and the loop state.
    fn load_checkpoint(&mut self, stage: Stage) -> Result<Option<(TensorMap, LoopState)>>;
    /// The stage begins at step `from_step` of `steps`.
    fn started(&mut self, stage: Stage, from_step: u64, steps: u64);
    /// Progress report after each step.
    fn progress(&mut self, stage: Stage, step: u64, total: u64, loss: f32);
    /// Whether the run was asked to stop (a signal): the loop then checkpoints at the step it
    /// has just finished, without an evaluation that was not due, and [`StageHooks::checkpoint`]
    /// ends the run as interrupted.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// Runs a stage to its end, from `resume` if given. Returns the final loop state.
#[allow(clippy::too_many_arguments)]
pub fn run_stage(
    stage: &StageRun,
    model: &mut dyn Model,
    losses: &mut [StageLoss],
    sampler: &mut dyn Sampler,
    langs: &[String],
    hooks: &mut dyn StageHooks,
) -> Result<LoopState> {
    let cfg = stage.cfg;
    let stage_id = stage.stage.salt();
    let mut queues = Queues::new(
        &stage.train.langs,
        stage.n_langs,
        stage.allowed.as_deref(),
        mix(&[stage.seed, stage_id]),
    );
    let sizes = queues.sizes();
    anyhow::ensure!(sizes.iter().any(|&n| n > 0), "stage `{}` has no training examples", stage.stage);
    let mut opt = Optimizer::new(cfg.optimizer());
    let mut state = LoopState {
        step: 0,
        opt_t: 0,
        cursor: queues.cursor.clone(),
        pass: queues.pass.clone(),
        stats: sizes.iter().map(|&n| LangStat::new(n as u64)).collect(),
        dist: Vec::new(),
        sampling: Vec::new(),
        train_seconds: 0.0,
        sampler_state: Vec::new(),
        loss_states: Vec::new(),
        term_sums: vec![(0.0, 0); losses.len()],
    };
    // A transformer teacher's width is its layers' width too (layer-wise projections).
    let teacher_hidden_dim =
        stage.teacher.map_or(0, |t| t.hidden_dim).max(stage.teacher_net.map_or(0, |(m, _)| m.hidden_dim()));
    let layered = losses.iter().any(|l| l.loss.needs_layers());
    let shapes = crate::loss::Shapes {
        classes: model.classes(),
        student_hidden_dim: Some(model.hidden_dim()).filter(|&h| h > 0),
        teacher_hidden_dim: Some(teacher_hidden_dim).filter(|&h| h > 0),
        student_layers: None,
        teacher_layers: None,
    };
    for l in losses.iter_mut() {
        l.loss.prepare(&shapes).with_context(|| format!("preparing loss `{}`", l.name))?;
    }
    let restored = hooks.load_checkpoint(stage.stage)?;
    if restored.is_none() {
        super::fit::fit_losses(stage, model, losses)?;
    }
    if let Some((map, s)) = restored {
        let mut params = named_params_mut(model, losses);
        let mut moments = Vec::new();
        for (name, p) in params.iter_mut() {
            let (shape, data) = map
                .get(&format!("param/{name}"))
                .with_context(|| format!("checkpoint of stage `{}` lacks `{name}`", stage.stage))?;
            anyhow::ensure!(
                *shape == p.shape && data.len() == p.numel(),
                "checkpoint tensor `{name}` has shape {shape:?} ({} values), the model expects {:?}",
                data.len(),
                p.shape
            );
            p.data.copy_from_slice(data);
            let get = |k: &str| map.get(&format!("{k}/{name}")).map(|x| x.1.clone()).unwrap_or_default();
            moments.push(ParamState { m: get("m"), v: get("v") });
        }
        anyhow::ensure!(
            s.step <= cfg.steps && s.stats.len() == stage.n_langs && (s.dist.is_empty() || s.dist.len() == stage.n_langs),
            "checkpoint of stage `{}` does not fit this run: step {} of {}, {} language statistics and {} sampling weights for {} languages",
            stage.stage,
            s.step,
            cfg.steps,
            s.stats.len(),
            s.dist.len(),
            stage.n_langs
        );
        queues
            .restore(s.cursor.clone(), s.pass.clone())
            .with_context(|| format!("checkpoint of stage `{}`", stage.stage))?;
        sampler.restore(&s.sampler_state).context("restoring the sampler from the checkpoint")?;
        opt.t = s.opt_t;
        opt.state = moments;
        for (l, bytes) in losses.iter_mut().zip(&s.loss_states) {
            l.loss.load_state(bytes).with_context(|| {
                format!("restoring loss `{}` from the checkpoint of stage `{}`", l.name, stage.stage)
            })?;
        }
        state = s;
        state.term_sums.resize(losses.len(), (0.0, 0));
    }
    hooks.started(stage.stage, state.step, cfg.steps);
    let classes = model.classes();
    let started = std::time::Instant::now();
    let base_seconds = state.train_seconds;
    while state.step < cfg.steps {
        let step = state.step;
        // Ask the sampler for a distribution at the start and every `update_every` steps.
        let every = sampler.update_every().max(1);
        if state.dist.is_empty() || step.is_multiple_of(every) && step > 0 {
            let ctx =
                SamplerCtx { step, total_steps: cfg.steps, batch: cfg.batch, stats: &state.stats, langs };
            let mut d =
                normalise(&sampler.distribution(&ctx).with_context(|| format!("sampler at step {step}"))?)
                    .with_context(|| format!("sampler at step {step}"))?;
            anyhow::ensure!(
                d.len() == stage.n_langs,
                "the sampler returned {} weights for {} languages",
                d.len(),
                stage.n_langs
            );
            // Languages without examples in this stage cannot be drawn.
            for (p, &n) in d.iter_mut().zip(&sizes) {
                if n == 0 {
                    *p = 0.0;
                }
            }
            d = normalise(&d).context("no language with examples has a positive sampling weight")?;
            if d != state.dist {
                for (l, &p) in d.iter().enumerate() {
                    state.sampling.push(SamplingRow {
                        stage: stage.stage.name().into(),
                        step,
                        lang: langs[l].clone(),
                        probability: p,
                        drawn: state.stats[l].drawn,
                    });
                }
            }
            state.dist = d;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(&[stage.seed, stage_id, step, 1]));
        let cdf: Vec<f64> = state
            .dist
            .iter()
            .scan(0.0, |acc, p| {
                *acc += p;
                Some(*acc)
            })
            .collect();
        let mut idx = Vec::with_capacity(cfg.batch);
        for _ in 0..cfg.batch {
            let u: f64 = rng.gen::<f64>() * cdf[cdf.len() - 1];
            let l = cdf.partition_point(|&c| c <= u).min(cdf.len() - 1);
            // partition_point may land on a zero-probability language at the end: walk back.
            let l = (0..=l).rev().find(|&k| sizes[k] > 0 && state.dist[k] > 0.0).unwrap_or(l);
            idx.push(queues.next(l));
        }
        let bags = stage.train.bags.gather(&idx);
        let labels: Vec<u32> = idx.iter().map(|&i| stage.train.labels[i]).collect();
        let blangs: Vec<u32> = idx.iter().map(|&i| stage.train.langs[i]).collect();
        // Layer-wise losses read the teacher's states of this very batch: run it now, and take
        // its outputs from the same pass.
        let t_net = match stage.teacher_net.filter(|_| layered) {
            Some((net, inputs)) => Some(net.forward_layers(&inputs.bags.gather(&idx))?),
            None => None,
        };
        let (t_logits, t_hidden, t_hidden_dim, t_layers) = match (stage.teacher, t_net) {
            (Some(t), net) => {
                let hidden = (t.hidden_dim > 0).then(|| gather_rows(&t.hidden, t.hidden_dim, &idx));
                let dim = if hidden.is_some() { t.hidden_dim } else { 0 };
                (Some(gather_rows(&t.logits, classes, &idx)), hidden, dim, net.and_then(|o| o.layers))
            }
            (None, Some(o)) => (Some(o.logits), Some(o.hidden), o.hidden_dim, o.layers),
            (None, None) => (None, None, 0, None),
        };
        let weights = vec![1f32; idx.len()];
        let ctx = StepCtx { layers: layered, ..StepCtx::new(step, mix(&[stage.seed, stage_id, step, 2])) };
        let mut total_loss = 0f32;
        let mut step_terms: Vec<(usize, f32)> = Vec::new();
        let stats_snapshot = state.stats.clone();
        let outputs = model.forward_backward(&bags, ctx, &mut |out| {
            let input = LossInput {
                batch: out.batch,
                classes: out.classes,
                student_logits: &out.logits,
                student_hidden: &out.hidden,
                student_hidden_dim: out.hidden_dim,
                teacher_logits: t_logits.as_deref(),
                teacher_hidden: t_hidden.as_deref(),
                teacher_hidden_dim: t_hidden_dim,
                labels: stage.labels_visible.then_some(&labels[..]),
                langs: &blangs,
                weights: &weights,
                step,
                total_steps: cfg.steps,
                stats: &stats_snapshot,
            };
            let (g, total, terms) =
                combine_losses(losses, &input, out.hidden.len(), out.layers.as_ref(), t_layers.as_ref())?;
            total_loss = total;
            step_terms = terms.iter().map(|t| (t.index, t.value)).collect();
            if !total_loss.is_finite() || terms.iter().any(|t| !t.value.is_finite()) {
                let mut counts = std::collections::BTreeMap::<&str, usize>::new();
                for &l in &blangs {
                    *counts.entry(&langs[l as usize]).or_default() += 1;
                }
                let terms: Vec<String> =
                    terms.iter().map(|t| format!("{} = {} (weight {})", t.name, t.value, t.weight)).collect();
                let batch: Vec<String> = counts.iter().map(|(l, n)| format!("{l}×{n}")).collect();
                anyhow::bail!(
                    "the loss diverged at step {step} of stage `{}`: {}; batch languages: {}",
                    stage.stage,
                    terms.join(", "),
                    batch.join(" ")
                );
            }
            Ok(g)
        })?;
        let lr = opt.config.lr_at(step, cfg.steps);
        let mut params: Vec<&mut Param> =
            named_params_mut(model, losses).into_iter().map(|(_, p)| p).collect();
        opt.step(&mut params, lr)
            .with_context(|| format!("optimizer at step {step} of stage `{}`", stage.stage))?;
        update_stats(
            &mut state.stats,
            &outputs.logits,
            classes,
            &labels,
            t_logits.as_deref(),
            &blangs,
            stage.labels_visible,
        );
        add_terms(&mut state.term_sums, &step_terms);
        state.step += 1;
        state.opt_t = opt.t;
        hooks.progress(stage.stage, state.step, cfg.steps, total_loss);
        let due =
            state.step == cfg.steps || (cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every));
        // A stop between evaluations checkpoints this step as it is: the resumed run then
        // evaluates at the same steps as one that was never stopped.
        let stop = hooks.stop_requested();
        if due || stop {
            state.train_seconds = base_seconds + started.elapsed().as_secs_f64();
            if due {
                let report = loss_report(losses, &mut state.term_sums);
                let projection = losses.iter().find_map(|l| l.loss.projection());
                hooks.evaluate(stage.stage, state.step, &*model, projection, &mut state.stats, report)?;
            }
            state.cursor = queues.cursor.clone();
            state.pass = queues.pass.clone();
            state.sampler_state = sampler.state();
            state.loss_states = losses
                .iter()
                .map(|l| {
                    l.loss.save_state().with_context(|| format!("saving the state of loss `{}`", l.name))
                })
                .collect::<Result<_>>()?;
            let named: Vec<(String, &Param)> = named_params(&*model, losses);
            hooks.checkpoint(stage.stage, &named, &opt, &state)?;
        }
    }
    Ok(state)
}

/// The parameters a stage trains, by checkpoint name: the model's, then each loss's
/// (prefixed `loss<i>.`).
fn named_params<'a>(model: &'a dyn Model, losses: &'a [StageLoss]) -> Vec<(String, &'a Param)> {
    let mut v: Vec<(String, &Param)> = model.params().into_iter().map(|p| (p.name.clone(), p)).collect();
    for (i, l) in losses.iter().enumerate() {
        v.extend(l.loss.params().into_iter().map(|p| (format!("loss{i}.{}", p.name), p)));
    }
    v
}

fn named_params_mut<'a>(
    model: &'a mut dyn Model,
    losses: &'a mut [StageLoss],
) -> Vec<(String, &'a mut Param)> {
    let mut v: Vec<(String, &mut Param)> =
        model.params_mut().into_iter().map(|p| (p.name.clone(), p)).collect();
    for (i, l) in losses.iter_mut().enumerate() {
        v.extend(l.loss.params_mut().into_iter().map(|p| (format!("loss{i}.{}", p.name), p)));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::inputs::Inputs;
    use crate::features::{Bags, Featurizer, NgramHasher};
    use crate::loss::{CrossEntropy, Loss};
    use crate::model::{OutputGrads, Outputs};
    use crate::optim::{OptimizerConfig, OptimizerKind};
    use crate::plan::StageConfig;
    use crate::sampler::Proportional;
    use crate::schedule::Schedule;

    /// A model whose logits are one learned row per feature id, summed over the bag: small
    /// enough to follow by hand, real enough to learn the labels of separable bags.
    struct Toy {
        w: Param,
        classes: usize,
        f: NgramHasher,
    }

    impl Toy {
        fn new(ids: usize, classes: usize) -> Toy {
            Toy {
                w: Param::zeros("w", &[ids, classes], true),
                classes,
                f: NgramHasher { n_min: 1, n_max: 1, buckets: ids },
            }
        }

        fn logits(&self, x: &Bags) -> Vec<f32> {
            let c = self.classes;
            let mut z = vec![0f32; x.len() * c];
            for i in 0..x.len() {
                for &id in x.bag(i) {
                    for k in 0..c {
                        z[i * c + k] += self.w.data[id as usize * c + k];
                    }
                }
            }
            z
        }
    }

    impl Model for Toy {
        fn describe(&self) -> String {
            "toy".into()
        }
        fn classes(&self) -> usize {
            self.classes
        }
        fn hidden_dim(&self) -> usize {
            0
        }
        fn featurizer(&self) -> &dyn Featurizer {
            &self.f
        }
        fn forward(&self, x: &Bags) -> Result<Outputs> {
            Ok(Outputs {
                batch: x.len(),
                logits: self.logits(x),
                classes: self.classes,
                ..Default::default()
            })
        }
        fn forward_backward(
            &mut self,
            x: &Bags,
            _: StepCtx,
            objective: &mut dyn FnMut(&Outputs) -> Result<OutputGrads>,
        ) -> Result<Outputs> {
            let out = self.forward(x)?;
            let g = objective(&out)?;
            let c = self.classes;
            let mut dw = vec![0f32; self.w.numel()];
            for i in 0..x.len() {
                for &id in x.bag(i) {
                    for k in 0..c {
                        dw[id as usize * c + k] += g.logits[i * c + k];
                    }
                }
            }
            self.w.add_dense_grad(&dw);
            Ok(out)
        }
        fn params(&self) -> Vec<&Param> {
            vec![&self.w]
        }
        fn params_mut(&mut self) -> Vec<&mut Param> {
            vec![&mut self.w]
        }
    }

    /// Records what the loop calls; can hand back a checkpoint it saved.
    #[derive(Default)]
    struct Recording {
        calls: Vec<String>,
        saved: Vec<(TensorMap, LoopState)>,
        resume_from: Option<(TensorMap, LoopState)>,
    }

    impl StageHooks for Recording {
        fn evaluate(
            &mut self,
            stage: Stage,
            step: u64,
            _: &dyn Model,
            _: Option<&crate::nn::HiddenProjection>,
            _: &mut [LangStat],
            _: LossReport,
        ) -> Result<()> {
            self.calls.push(format!("evaluate {stage} {step}"));
            Ok(())
        }
        fn checkpoint(
            &mut self,
            stage: Stage,
            params: &[(String, &Param)],
            opt: &Optimizer,
            state: &LoopState,
        ) -> Result<()> {
            self.calls.push(format!("checkpoint {stage} {}", state.step));
            let mut map = TensorMap::new();
            for ((name, p), s) in params.iter().zip(&opt.state) {
                map.insert(format!("param/{name}"), (p.shape.clone(), p.data.clone()));
                map.insert(format!("m/{name}"), (vec![s.m.len()], s.m.clone()));
                map.insert(format!("v/{name}"), (vec![s.v.len()], s.v.clone()));
            }
            self.saved.push((map, state.clone()));
            Ok(())
        }
        fn load_checkpoint(&mut self, _: Stage) -> Result<Option<(TensorMap, LoopState)>> {
            Ok(self.resume_from.take())
        }
        fn started(&mut self, stage: Stage, from: u64, steps: u64) {
            self.calls.push(format!("started {stage} {from}/{steps}"));
        }
        fn progress(&mut self, _: Stage, _: u64, _: u64, _: f32) {}
    }

    /// Three languages of 40 examples each; each example's one feature id determines its label.
    fn inputs() -> Inputs {
        let n = 120;
        let ids: Vec<u32> = (0..n).map(|i| i % 6).collect();
        let bags =
            Bags { offsets: (0..=n).collect(), ids: ids.clone(), langs: (0..n).map(|i| i % 3).collect() };
        Inputs { labels: ids.iter().map(|&i| i % 2).collect(), langs: bags.langs.clone(), bags }
    }

    fn run(hooks: &mut Recording, cfg: &StageConfig) -> (Toy, LoopState) {
        try_run(hooks, cfg).unwrap()
    }

    fn try_run(hooks: &mut Recording, cfg: &StageConfig) -> Result<(Toy, LoopState)> {
        let train = inputs();
        let run = StageRun {
            stage: Stage::Distill,
            cfg,
            train: &train,
            teacher: None,
            teacher_net: None,
            labels_visible: true,
            allowed: None,
            seed: 5,
            n_langs: 3,
        };
        let mut model = Toy::new(6, 2);
        let mut ce = CrossEntropy::default();
        let w = Schedule::Constant(1.0);
        let mut losses = [StageLoss { name: "cross-entropy", weight: &w, loss: &mut ce }];
        let langs: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let state = run_stage(&run, &mut model, &mut losses, &mut Proportional, &langs, hooks)?;
        Ok((model, state))
    }

    fn cfg() -> StageConfig {
        StageConfig {
            steps: 30,
            batch: 16,
            lr: None,
            optimizer: OptimizerConfig { kind: OptimizerKind::Adam, lr: 0.1, ..Default::default() },
            eval_every: 10,
        }
    }

    #[test]
    fn the_loop_trains_evaluates_and_checkpoints_on_schedule() {
        let mut hooks = Recording::default();
        let (model, state) = run(&mut hooks, &cfg());
        let expect: Vec<String> = std::iter::once("started distill 0/30".to_string())
            .chain(
                [10, 20, 30]
                    .iter()
                    .flat_map(|s| [format!("evaluate distill {s}"), format!("checkpoint distill {s}")]),
            )
            .collect();
        assert_eq!(hooks.calls, expect);
        assert_eq!((state.step, state.opt_t), (30, 30));
        assert_eq!(state.stats.iter().map(|s| s.drawn).sum::<u64>(), 30 * 16);
        // The toy learns its separable labels.
        let x = inputs();
        let z = model.forward(&x.bags).unwrap().logits;
        let acc = argmax_rows(&z, 2).iter().zip(&x.labels).filter(|(p, &y)| **p == y as usize).count();
        assert_eq!(acc, 120, "every example right after training");
    }

    #[test]
    fn a_stage_resumed_from_its_checkpoint_ends_where_an_uninterrupted_one_does() {
        let mut whole = Recording::default();
        let (straight, s1) = run(&mut whole, &cfg());
        let mut resumed = Recording { resume_from: Some(whole.saved[0].clone()), ..Default::default() };
        let (again, s2) = run(&mut resumed, &cfg());
        assert_eq!(resumed.calls[0], "started distill 10/30");
        assert_eq!(straight.w.data, again.w.data, "same weights, bit for bit");
        assert_eq!(
            (s1.step, s1.opt_t, &s1.cursor, &s1.pass, &s1.sampling),
            (s2.step, s2.opt_t, &s2.cursor, &s2.pass, &s2.sampling)
        );
    }

    /// A loss with a finite value and a NaN gradient (a broken plugin).
    struct NanGradient;

    impl Loss for NanGradient {
        fn needs_teacher(&self) -> bool {
            false
        }
        fn compute(&mut self, x: &LossInput) -> Result<crate::loss::LossOutput> {
            let mut g = vec![0.0; x.batch * x.classes];
            g[1] = f32::NAN;
            Ok(crate::loss::LossOutput { value: 0.5, grad_logits: g, grad_hidden: None })
        }
    }

    #[test]
    fn a_non_finite_gradient_stops_the_step_and_names_the_loss() {
        let s = crate::testing::SampleBatch::random(4, 3, 2, 1.0, 1);
        let w = Schedule::Constant(1.0);
        let (mut ce, mut bad) = (CrossEntropy::default(), NanGradient);
        let mut losses = [
            StageLoss { name: "hard-ce", weight: &w, loss: &mut ce },
            StageLoss { name: "broken", weight: &w, loss: &mut bad },
        ];
        let e = combine_losses(&mut losses, &s.input(7, 10), 8, None, None).unwrap_err().to_string();
        assert_eq!(e, "loss `broken` returned a non-finite gradient (NaN) at step 7 (its value: 0.5)");
    }

    #[test]
    fn a_checkpoint_that_does_not_fit_is_refused() {
        let mut whole = Recording::default();
        run(&mut whole, &cfg());
        let (map, mut state) = whole.saved[0].clone();
        state.step = 999_999;
        let mut hooks = Recording { resume_from: Some((map, state)), ..Default::default() };
        let Err(e) = try_run(&mut hooks, &cfg()) else {
            panic!("a checkpoint past the stage's end was accepted")
        };
        assert!(format!("{e:#}").contains("step 999999 of 30"), "{e:#}");
    }
}
