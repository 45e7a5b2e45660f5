//! The sampler plugin kind: which language each training example comes from.
//!
//! A sampler returns a distribution over languages; the engine draws each example's
//! language from it and then an example of that language without replacement, reshuffling
//! each language's examples at every pass. Samplers see running per-language statistics,
//! so dynamic strategies (teacher-gap, DoReMi-style) fit the same trait.

/// Running statistics of one language, maintained by the engine.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LangStat {
    /// Training examples of this language.
    pub train_size: usize,
    /// Examples drawn so far in the current stage.
    pub drawn: u64,
    /// Exponential moving average of the student's per-example training loss (hard CE
    /// against the teacher's argmax where a teacher exists, else against the label).
    pub student_loss: f64,
    /// Exponential moving average of the teacher's per-example loss on the same examples.
    pub teacher_loss: f64,
    /// Student accuracy on the dev split at the last evaluation (`None` before the first).
    pub dev_acc: Option<f64>,
    /// Teacher accuracy on the dev split (`None` without a teacher).
    pub teacher_dev_acc: Option<f64>,
}

/// What a sampler sees when asked for a distribution.
pub struct SamplerCtx<'a> {
    /// Global step within the stage (0-based).
    pub step: u64,
    /// Total steps of the stage.
    pub total_steps: u64,
    /// Examples per step.
    pub batch: usize,
    /// Per-language statistics.
    pub stats: &'a [LangStat],
    /// Language codes, in the order of `stats`.
    pub langs: &'a [String],
}

/// A language sampler.
pub trait Sampler: Send {
    /// The distribution over languages at this step; must be non-negative and sum to > 0
    /// (the engine normalises and checks it).
    fn distribution(&mut self, ctx: &SamplerCtx) -> anyhow::Result<Vec<f64>>;
    /// How often, in steps, [`Sampler::distribution`] is asked again (static samplers: once).
    fn update_every(&self) -> u64 {
        u64::MAX
    }
    /// Internal state (e.g. dynamic weights) for checkpoints; empty for stateless samplers.
    fn state(&self) -> Vec<f64> {
        Vec::new()
    }
    /// Restores what [`Sampler::state`] returned, when a run resumes.
    fn restore(&mut self, state: &[f64]) -> anyhow::Result<()> {
        anyhow::ensure!(state.is_empty(), "this sampler keeps no state, but the checkpoint has some");
        Ok(())
    }
}

/// Normalises `w` to sum to one; an error if it is empty, has a negative or non-finite
/// entry, or sums to zero.
pub fn normalise(w: &[f64]) -> anyhow::Result<Vec<f64>> {
    anyhow::ensure!(!w.is_empty(), "the sampler returned an empty distribution");
    anyhow::ensure!(w.iter().all(|x| x.is_finite() && *x >= 0.0), "the sampler returned a negative or non-finite weight: {w:?}");
    let s: f64 = w.iter().sum();
    anyhow::ensure!(s > 0.0, "the sampler's weights sum to zero");
    Ok(w.iter().map(|x| x / s).collect())
}
