//! Fitting losses to data before a fresh stage's first step ([`crate::loss::Loss::fit`]):
//! e.g. a projection between hidden spaces solved in closed form.

use anyhow::{Context, Result};

use super::stage_run::{StageLoss, StageRun};
use crate::infer::predict;
use crate::model::Model;

/// Rows the losses that ask for it ([`crate::loss::Loss::wants_fit`]) are fitted on.
const FIT_ROWS: usize = 4096;

/// Before a fresh stage's first step, gives the losses that ask for it the student's and
/// the teacher's hidden vectors of up to [`FIT_ROWS`] training examples, evenly spread
/// (e.g. to fit a projection in closed form). A resumed stage skips it: its checkpoint
/// holds what was fitted.
pub(super) fn fit_losses(stage: &StageRun, model: &dyn Model, losses: &mut [StageLoss]) -> Result<()> {
    if !losses.iter().any(|l| l.loss.wants_fit()) {
        return Ok(());
    }
    let n = stage.train.bags.len();
    let rows: Vec<usize> = (0..n.min(FIT_ROWS)).map(|i| i * n / n.min(FIT_ROWS)).collect();
    let teacher = match (stage.teacher, stage.teacher_net) {
        (Some(t), _) if t.hidden_dim > 0 => rows
            .iter()
            .flat_map(|&r| t.hidden[r * t.hidden_dim..(r + 1) * t.hidden_dim].iter().copied())
            .collect(),
        (_, Some((net, inputs))) => predict(net, &inputs.bags.gather(&rows))?.hidden,
        _ => anyhow::bail!("a loss fits to the teacher's hidden vectors, and this stage has none"),
    };
    let student = predict(model, &stage.train.bags.gather(&rows))?.hidden;
    for l in losses.iter_mut().filter(|l| l.loss.wants_fit()) {
        l.loss
            .fit(&student, &teacher, rows.len())
            .with_context(|| format!("fitting loss `{}` to {} training examples", l.name, rows.len()))?;
    }
    Ok(())
}
