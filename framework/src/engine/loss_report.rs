//! What the losses of a stage report at an evaluation, beside the model's own metrics: the
//! gate, named per-language values, and each term's mean value since the previous evaluation.

use anyhow::Context;

use super::stage_run::StageLoss;

/// What the losses report at an evaluation, beside the model's own metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossReport {
    /// The per-language state a loss reports (e.g. the selective gate): `metrics.csv`'s
    /// `gate` column.
    pub gates: Option<Vec<f32>>,
    /// Named per-language values, as `(<term>.<name>, one value per language)`.
    pub per_language: Vec<(String, Vec<f32>)>,
    /// Each term's mean value over the steps since the previous evaluation, as
    /// `(loss.<term>, value)`; a term switched off throughout has none.
    pub terms: Vec<(String, f64)>,
}

/// Names for the terms of a stage's objective in reports: the plugin's name, or
/// `<plugin>#<i>` for the `i`-th `[[loss]]` when two name the same plugin.
pub fn term_labels(losses: &[StageLoss]) -> Vec<String> {
    losses
        .iter()
        .enumerate()
        .map(|(i, l)| match losses.iter().filter(|o| o.name == l.name).count() {
            1 => l.name.to_string(),
            _ => format!("{}#{i}", l.name),
        })
        .collect()
}

/// The losses' report at an evaluation, and the term sums started over.
pub(super) fn loss_report(losses: &[StageLoss], sums: &mut [(f64, u64)]) -> anyhow::Result<LossReport> {
    let labels = term_labels(losses);
    let terms = labels
        .iter()
        .zip(sums.iter_mut())
        .filter(|(_, (_, n))| *n > 0)
        .map(|(label, (sum, n))| (format!("loss.{label}"), *sum / *n as f64))
        .collect();
    sums.iter_mut().for_each(|s| *s = (0.0, 0));
    let mut per_language = Vec::new();
    let mut gates = None;
    for (l, label) in losses.iter().zip(&labels) {
        let values =
            l.loss.language_values().with_context(|| format!("loss `{}`'s per-language values", l.name))?;
        per_language.extend(values.into_iter().map(|(name, v)| (format!("{label}.{name}"), v)));
        if gates.is_none() {
            gates =
                l.loss.language_state().with_context(|| format!("loss `{}`'s per-language state", l.name))?;
        }
    }
    Ok(LossReport { gates, per_language, terms })
}

/// Adds one step's term values (loss position, value) into the running sums.
pub(super) fn add_terms(sums: &mut [(f64, u64)], step: &[(usize, f32)]) {
    for &(i, v) in step {
        let (sum, n) = &mut sums[i];
        *sum += v as f64;
        *n += 1;
    }
}
