//! The sampler plugin kind: which language each training example comes from.
//!
//! A sampler returns a distribution over languages; the engine draws each example's
//! language from it and then an example of that language without replacement, reshuffling
//! each language's examples at every pass. Samplers see running per-language statistics,
//! so dynamic strategies (teacher-gap, DoReMi-style) fit the same trait.

/// Running statistics of one language, maintained by the engine: the SDK's plain type,
/// so dynamic-library plugins and in-tree ones see the same thing.
pub use kdx_sdk::LangStat;

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

/// Languages in proportion to their training data: the natural distribution, q ∝ n. The
/// framework's own sampler for teacher pre-training and recipes without `[sampler]`; the
/// `proportional` plugin offers it by name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Proportional;

impl Sampler for Proportional {
    fn distribution(&mut self, ctx: &SamplerCtx) -> anyhow::Result<Vec<f64>> {
        Ok(ctx.stats.iter().map(|s| s.train_size as f64).collect())
    }
}

/// Normalises `w` to sum to one; an error if it is empty, has a negative or non-finite
/// entry, or sums to zero.
pub fn normalise(w: &[f64]) -> anyhow::Result<Vec<f64>> {
    anyhow::ensure!(!w.is_empty(), "the sampler returned an empty distribution");
    anyhow::ensure!(
        w.iter().all(|x| x.is_finite() && *x >= 0.0),
        "the sampler returned a negative or non-finite weight: {w:?}"
    );
    let s: f64 = w.iter().sum();
    anyhow::ensure!(s > 0.0, "the sampler's weights sum to zero");
    Ok(w.iter().map(|x| x / s).collect())
}
