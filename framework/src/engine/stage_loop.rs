//! One stage's training loop as a type whose methods are its steps: prepare the losses,
//! restore a checkpoint (or fit the losses that ask), refresh the sampling distribution, draw
//! a batch, the teacher's side of it, the step itself, and the evaluation and checkpoint that
//! may follow. [`super::train::run_stage`] runs them in that order. Every random choice is
//! derived from (seed, stage, step), so a resumed stage replays exactly what an uninterrupted
//! one does.

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};

use super::hooks::{LoopState, SamplingRow, StageHooks};
use super::loss_report::{add_terms, loss_report};
use super::objective::combine_losses;
use super::queues::Queues;
use super::rows::{gather_rows, update_stats};
use super::stage_run::{StageLoss, StageRun};
use crate::features::TokenRows;
use crate::loss::{LossInput, Shapes};
use crate::model::{LayerStates, Model, Param, StepCtx};
use crate::optim::{Optimizer, ParamState};
use crate::sampler::{normalise, LangStat, Sampler, SamplerCtx};
use crate::seed::mix;
use crate::store::TensorMap;

/// A stage in progress: what it trains and the state a checkpoint carries.
pub(super) struct StageLoop<'r, 's, 'l> {
    stage: &'r StageRun<'s>,
    model: &'r mut dyn Model,
    losses: &'r mut [StageLoss<'l>],
    sampler: &'r mut dyn Sampler,
    langs: &'r [String],
    queues: Queues,
    /// Training examples per language in this stage.
    sizes: Vec<usize>,
    opt: Optimizer,
    /// The state a checkpoint saves.
    pub(super) state: LoopState,
    /// Whether a loss reads per-layer states.
    layered: bool,
}

/// A drawn batch: example indices and what the student reads of them.
struct Batch {
    idx: Vec<usize>,
    bags: TokenRows,
    labels: Vec<u32>,
    langs: Vec<u32>,
}

/// The teacher's side of a batch.
#[derive(Default)]
struct TeacherBatch {
    logits: Option<Vec<f32>>,
    hidden: Option<Vec<f32>>,
    hidden_dim: usize,
    layers: Option<LayerStates>,
}

impl<'r, 's, 'l> StageLoop<'r, 's, 'l> {
    /// A stage at step 0, its queues seeded from the stage.
    pub(super) fn new(
        stage: &'r StageRun<'s>,
        model: &'r mut dyn Model,
        losses: &'r mut [StageLoss<'l>],
        sampler: &'r mut dyn Sampler,
        langs: &'r [String],
    ) -> Result<Self> {
        let queues = Queues::new(
            &stage.train.langs,
            stage.n_langs,
            stage.allowed.as_deref(),
            mix(&[stage.seed, stage.stage.salt()]),
        );
        let sizes = queues.sizes();
        anyhow::ensure!(sizes.iter().any(|&n| n > 0), "stage `{}` has no training examples", stage.stage);
        let state = LoopState {
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
        let layered = losses.iter().any(|l| l.loss.needs().layers);
        let opt = Optimizer::new(stage.cfg.optimizer());
        Ok(StageLoop { stage, model, losses, sampler, langs, queues, sizes, opt, state, layered })
    }

    /// Lets each loss create what depends on the models' shapes (a projection), before a
    /// checkpoint is restored into it.
    pub(super) fn prepare_losses(&mut self) -> Result<()> {
        let stage = self.stage;
        // A transformer teacher's width is its layers' width too (layer-wise projections).
        let teacher_hidden_dim = stage
            .teacher
            .map_or(0, |t| t.hidden_dim)
            .max(stage.teacher_net.map_or(0, |(m, _)| m.hidden_dim()));
        let shapes = Shapes {
            classes: self.model.classes(),
            student_hidden_dim: Some(self.model.hidden_dim()).filter(|&h| h > 0),
            teacher_hidden_dim: Some(teacher_hidden_dim).filter(|&h| h > 0),
            student_layers: None,
            teacher_layers: None,
        };
        for l in self.losses.iter_mut() {
            l.loss.prepare(&shapes).with_context(|| format!("preparing loss `{}`", l.name))?;
        }
        Ok(())
    }

    /// Continues from the stage's checkpoint when there is one; otherwise fits the losses
    /// that fit something to the data before the first step.
    pub(super) fn restore(&mut self, hooks: &mut dyn StageHooks) -> Result<()> {
        match hooks.load_checkpoint(self.stage.stage)? {
            None => super::fit::fit_losses(self.stage, &*self.model, self.losses),
            Some((map, s)) => self.restore_from(&map, s),
        }
    }

    fn restore_from(&mut self, map: &TensorMap, s: LoopState) -> Result<()> {
        let (stage, steps) = (self.stage, self.stage.cfg.steps);
        let mut moments = Vec::new();
        for (name, p) in named_params_mut(self.model, self.losses).iter_mut() {
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
            s.step <= steps && s.stats.len() == stage.n_langs && (s.dist.is_empty() || s.dist.len() == stage.n_langs),
            "checkpoint of stage `{}` does not fit this run: step {} of {steps}, {} language statistics and {} sampling weights for {} languages",
            stage.stage,
            s.step,
            s.stats.len(),
            s.dist.len(),
            stage.n_langs
        );
        self.queues
            .restore(s.cursor.clone(), s.pass.clone())
            .with_context(|| format!("checkpoint of stage `{}`", stage.stage))?;
        self.sampler.restore(&s.sampler_state).context("restoring the sampler from the checkpoint")?;
        self.opt.t = s.opt_t;
        self.opt.state = moments;
        for (l, bytes) in self.losses.iter_mut().zip(&s.loss_states) {
            l.loss.load_state(bytes).with_context(|| {
                format!("restoring loss `{}` from the checkpoint of stage `{}`", l.name, stage.stage)
            })?;
        }
        self.state = s;
        self.state.term_sums.resize(self.losses.len(), (0.0, 0));
        Ok(())
    }

    /// Asks the sampler for a distribution at the start and every `update_every` steps;
    /// records it in `sampling.csv` when it changed.
    pub(super) fn refresh_distribution(&mut self) -> Result<()> {
        let (stage, step) = (self.stage, self.state.step);
        let every = self.sampler.update_every().max(1);
        if !(self.state.dist.is_empty() || step.is_multiple_of(every) && step > 0) {
            return Ok(());
        }
        let ctx = SamplerCtx {
            step,
            total_steps: stage.cfg.steps,
            batch: stage.cfg.batch,
            stats: &self.state.stats,
            langs: self.langs,
        };
        let mut d =
            normalise(&self.sampler.distribution(&ctx).with_context(|| format!("sampler at step {step}"))?)
                .with_context(|| format!("sampler at step {step}"))?;
        anyhow::ensure!(
            d.len() == stage.n_langs,
            "the sampler returned {} weights for {} languages",
            d.len(),
            stage.n_langs
        );
        // Languages without examples in this stage cannot be drawn.
        for (p, &n) in d.iter_mut().zip(&self.sizes) {
            if n == 0 {
                *p = 0.0;
            }
        }
        d = normalise(&d).context("no language with examples has a positive sampling weight")?;
        if d != self.state.dist {
            for (l, &p) in d.iter().enumerate() {
                self.state.sampling.push(SamplingRow {
                    stage: stage.stage.name().into(),
                    step,
                    lang: self.langs[l].clone(),
                    probability: p,
                    drawn: self.state.stats[l].drawn,
                });
            }
        }
        self.state.dist = d;
        Ok(())
    }

    /// Draws the step's batch: a language from the distribution for each example (from the
    /// step's own random stream), then that language's next example.
    fn draw_batch(&mut self) -> Batch {
        let (stage, step) = (self.stage, self.state.step);
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(&[
            stage.seed,
            stage.stage.salt(),
            step,
            crate::seed::step::BATCH,
        ]));
        let cdf: Vec<f64> = self
            .state
            .dist
            .iter()
            .scan(0.0, |acc, p| {
                *acc += p;
                Some(*acc)
            })
            .collect();
        let mut idx = Vec::with_capacity(stage.cfg.batch);
        for _ in 0..stage.cfg.batch {
            let u: f64 = rng.gen::<f64>() * cdf[cdf.len() - 1];
            let l = cdf.partition_point(|&c| c <= u).min(cdf.len() - 1);
            // partition_point may land on a zero-probability language at the end: walk back.
            let l = (0..=l).rev().find(|&k| self.sizes[k] > 0 && self.state.dist[k] > 0.0).unwrap_or(l);
            idx.push(self.queues.next(l));
        }
        let train = stage.train;
        Batch {
            bags: train.bags.gather(&idx),
            labels: idx.iter().map(|&i| train.labels[i]).collect(),
            langs: idx.iter().map(|&i| train.langs[i]).collect(),
            idx,
        }
    }

    /// The teacher's outputs on the batch: from the cache of its outputs, and — for
    /// layer-wise losses, which read its states of this very batch — from running it now
    /// (its outputs then come from the same pass).
    fn teacher_batch(&self, idx: &[usize]) -> Result<TeacherBatch> {
        let stage = self.stage;
        let net = match stage.teacher_net.filter(|_| self.layered) {
            Some((net, inputs)) => Some(net.forward_layers(&inputs.bags.gather(idx))?),
            None => None,
        };
        Ok(match (stage.teacher, net) {
            (Some(t), net) => {
                let hidden = (t.hidden_dim > 0).then(|| gather_rows(&t.hidden, t.hidden_dim, idx));
                TeacherBatch {
                    logits: Some(gather_rows(&t.logits, self.model.classes(), idx)),
                    hidden_dim: if hidden.is_some() { t.hidden_dim } else { 0 },
                    hidden,
                    layers: net.and_then(|o| o.layers),
                }
            }
            (None, Some(o)) => TeacherBatch {
                logits: Some(o.logits),
                hidden: Some(o.hidden),
                hidden_dim: o.hidden_dim,
                layers: o.layers,
            },
            (None, None) => TeacherBatch::default(),
        })
    }

    /// One training step: draw, forward and backward through every loss, the optimizer,
    /// the running statistics. Returns the step's weighted loss.
    pub(super) fn step(&mut self) -> Result<f32> {
        let (stage, step) = (self.stage, self.state.step);
        let batch = self.draw_batch();
        let teacher = self.teacher_batch(&batch.idx)?;
        let ctx = StepCtx {
            layers: self.layered,
            ..StepCtx::new(step, mix(&[stage.seed, stage.stage.salt(), step, crate::seed::step::COMPUTE]))
        };
        let weights = vec![1f32; batch.idx.len()];
        let (mut total_loss, mut step_terms) = (0f32, Vec::new());
        let stats = self.state.stats.clone();
        let (losses, langs) = (&mut *self.losses, self.langs);
        let outputs = self.model.forward_backward(&batch.bags, ctx, &mut |out| {
            let input = LossInput {
                batch: out.batch,
                classes: out.classes,
                student_logits: &out.logits,
                student_hidden: &out.hidden,
                student_hidden_dim: out.hidden_dim,
                teacher_logits: teacher.logits.as_deref(),
                teacher_hidden: teacher.hidden.as_deref(),
                teacher_hidden_dim: teacher.hidden_dim,
                labels: stage.labels_visible.then_some(&batch.labels[..]),
                langs: &batch.langs,
                weights: &weights,
                step,
                total_steps: stage.cfg.steps,
                stats: &stats,
            };
            let (g, total, terms) = combine_losses(
                losses,
                &input,
                out.hidden.len(),
                out.layers.as_ref(),
                teacher.layers.as_ref(),
            )?;
            total_loss = total;
            step_terms = terms.iter().map(|t| (t.index, t.value)).collect();
            if !total_loss.is_finite() || terms.iter().any(|t| !t.value.is_finite()) {
                let mut counts = std::collections::BTreeMap::<&str, usize>::new();
                for &l in &batch.langs {
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
        let lr = self.opt.config.lr_at(step, stage.cfg.steps);
        let mut params: Vec<&mut Param> =
            named_params_mut(self.model, self.losses).into_iter().map(|(_, p)| p).collect();
        self.opt
            .step(&mut params, lr)
            .with_context(|| format!("optimizer at step {step} of stage `{}`", stage.stage))?;
        update_stats(
            &mut self.state.stats,
            &outputs.logits,
            self.model.classes(),
            &batch.labels,
            teacher.logits.as_deref(),
            &batch.langs,
            stage.labels_visible,
        );
        add_terms(&mut self.state.term_sums, &step_terms);
        self.state.step += 1;
        self.state.opt_t = self.opt.t;
        Ok(total_loss)
    }

    /// Evaluates on the dev split, with what the losses report.
    pub(super) fn evaluate(&mut self, hooks: &mut dyn StageHooks) -> Result<()> {
        let report = loss_report(self.losses, &mut self.state.term_sums)?;
        let projection = self.losses.iter().find_map(|l| l.loss.projection());
        hooks.evaluate(
            self.stage.stage,
            self.state.step,
            &*self.model,
            projection,
            &mut self.state.stats,
            report,
        )
    }

    /// Writes the stage's checkpoint at the current step: parameters, optimizer, and the loop
    /// state with the queues', the sampler's and the losses' own.
    pub(super) fn checkpoint(&mut self, hooks: &mut dyn StageHooks) -> Result<()> {
        self.state.cursor = self.queues.cursor.clone();
        self.state.pass = self.queues.pass.clone();
        self.state.sampler_state = self.sampler.state();
        self.state.loss_states = self
            .losses
            .iter()
            .map(|l| l.loss.save_state().with_context(|| format!("saving the state of loss `{}`", l.name)))
            .collect::<Result<_>>()?;
        let named: Vec<(String, &Param)> = named_params(&*self.model, self.losses);
        hooks.checkpoint(self.stage.stage, &named, &self.opt, &self.state)
    }
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
