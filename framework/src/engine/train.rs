//! The training loop of one stage: sampling, forward/backward, losses, optimizer,
//! periodic evaluation and checkpoints. [`run_stage`] reads as the loop it is; its steps are
//! the methods of `engine::stage_loop::StageLoop`. Every random choice is derived from
//! (seed, stage, step), so a resumed stage replays exactly what an uninterrupted one does.

use anyhow::Result;

pub use super::hooks::{LoopState, SamplingRow, StageHooks};
pub use super::loss_report::{term_labels, LossReport};
pub use super::objective::{combine_losses, Term};
pub use super::rows::{argmax_rows, row_ce};
use super::stage_loop::StageLoop;
pub use super::stage_run::{StageLoss, StageRun};
use crate::loss::CrossEntropy;
use crate::model::Model;
use crate::sampler::Sampler;
use crate::schedule::Schedule;

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
    let steps = stage.cfg.steps;
    let mut run = StageLoop::new(stage, model, losses, sampler, langs)?;
    run.prepare_losses()?;
    run.restore(hooks)?;
    hooks.started(stage.stage, run.state.step, steps);
    let started = std::time::Instant::now();
    let base_seconds = run.state.train_seconds;
    while run.state.step < steps {
        run.refresh_distribution()?;
        let loss = run.step()?;
        let done = run.state.step;
        hooks.progress(stage.stage, done, steps, loss);
        let due = done == steps || (stage.cfg.eval_every > 0 && done.is_multiple_of(stage.cfg.eval_every));
        // A stop between evaluations checkpoints this step as it is: the resumed run then
        // evaluates at the same steps as one that was never stopped.
        if due || hooks.stop_requested() {
            run.state.train_seconds = base_seconds + started.elapsed().as_secs_f64();
            if due {
                run.evaluate(hooks)?;
            }
            run.checkpoint(hooks)?;
        }
    }
    Ok(run.state)
}

/// Runs a stage on gold labels alone — cross-entropy at weight 1, no teacher: the teacher's
/// pre-training, the baseline and a fine-tuning stage without distillation.
pub fn run_hard_label_stage(
    stage: &StageRun,
    model: &mut dyn Model,
    sampler: &mut dyn Sampler,
    langs: &[String],
    hooks: &mut dyn StageHooks,
) -> Result<LoopState> {
    let mut ce = CrossEntropy::default();
    let weight = Schedule::Constant(1.0);
    let mut losses = [StageLoss { name: "cross-entropy", weight: &weight, loss: &mut ce }];
    run_stage(stage, model, &mut losses, sampler, langs, hooks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::inputs::Inputs;
    use crate::features::{Featurizer, NgramHasher, TokenRows};
    use crate::loss::{CrossEntropy, Loss, LossInput};
    use crate::model::{OutputGrads, Outputs, Param, StepCtx};
    use crate::optim::Optimizer;
    use crate::optim::{OptimizerConfig, OptimizerKind};
    use crate::plan::StageConfig;
    use crate::sampler::LangStat;
    use crate::sampler::Proportional;
    use crate::schedule::Schedule;
    use crate::stage::Stage;
    use crate::store::TensorMap;

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

        fn logits(&self, x: &TokenRows) -> Vec<f32> {
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
        fn forward(&self, x: &TokenRows) -> Result<Outputs> {
            Ok(Outputs {
                batch: x.len(),
                logits: self.logits(x),
                classes: self.classes,
                ..Default::default()
            })
        }
        fn forward_backward(
            &mut self,
            x: &TokenRows,
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
        let bags = TokenRows {
            offsets: (0..=n).collect(),
            ids: ids.clone(),
            langs: (0..n).map(|i| i % 3).collect(),
        };
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
        fn needs(&self) -> crate::loss::Needs {
            crate::loss::Needs::LABELS
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
