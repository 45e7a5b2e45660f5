//! `ngram-mlp`: hashed character n-grams → embedding bag (mean) → hidden layers → logits.
//! The fastText / CLD3 family of language identifiers, with every size from the recipe.

use kdx_framework::features::{Featurizer, NgramHasher, TokenRows};
use kdx_framework::kdx_recipe::Diagnostic;
use kdx_framework::model::{Model, ModelBuilder, ModelSpec, OutputGrads, Outputs, Param, StepCtx};
use kdx_framework::nn::{Activation, EmbeddingBag, Mlp};
use kdx_framework::registry::BuildCtx;
use rand::SeedableRng;
use schemars::JsonSchema;
use serde::Deserialize;

/// Hashed character n-gram model (fastText / CLD3 style): the text's n-grams are hashed
/// into `buckets` rows of an embedding table, averaged, and fed through `hidden` layers
/// to the output layer. With `hidden = []` it is a linear classifier on the bag mean.
/// Parameters: buckets·dim + Σ(in·out + out) over the layers.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NgramMlpParams {
    /// Shortest and longest n-gram, in characters (words are wrapped in `<` `>`).
    #[serde(default = "default_ngrams")]
    pub ngrams: [usize; 2],
    /// Hash buckets: rows of the embedding table.
    #[serde(default = "default_buckets")]
    pub buckets: usize,
    /// Embedding width.
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// Widths of the hidden layers.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Activation after each hidden layer: "relu", "tanh" or "gelu".
    #[serde(default)]
    pub activation: Activation,
    /// Layer norm after each hidden linear layer.
    #[serde(default)]
    pub layer_norm: bool,
    /// Dropout after each hidden activation (training only).
    #[serde(default)]
    pub dropout: f32,
}

fn default_ngrams() -> [usize; 2] {
    [1, 4]
}
fn default_buckets() -> usize {
    65536
}
fn default_dim() -> usize {
    64
}

fn build(p: NgramMlpParams, ctx: &BuildCtx) -> Result<Box<dyn ModelBuilder>, Diagnostic> {
    let [lo, hi] = p.ngrams;
    if lo == 0 || lo > hi || hi > 8 {
        return Err(
            ctx.error("ngrams", format!("expected [min, max] with 1 ≤ min ≤ max ≤ 8, found [{lo}, {hi}]"))
        );
    }
    if p.buckets == 0 || p.buckets > 1 << 24 {
        return Err(ctx.error("buckets", format!("expected 1 ..= 16777216 buckets, found {}", p.buckets)));
    }
    if p.dim == 0 {
        return Err(ctx.error("dim", "must be at least 1"));
    }
    if let Some(i) = p.hidden.iter().position(|&h| h == 0) {
        return Err(ctx.error("hidden", format!("layer {i} has width 0")));
    }
    if !(0.0..1.0).contains(&p.dropout) {
        return Err(ctx.error("dropout", format!("must be in [0, 1), found {}", p.dropout)));
    }
    // Every parameter tensor, with its gradient and two Adam moments, in f32: the table,
    // then the layers (the output layer's classes counted as the fewest a task has).
    let table = p.buckets as u128 * p.dim as u128;
    let mut layers = 0u128;
    let mut width = p.dim as u128;
    for &h in &p.hidden {
        let h = h as u128;
        layers += width * h + h + if p.layer_norm { 2 * h } else { 0 };
        width = h;
    }
    layers += width * MIN_CLASSES + MIN_CLASSES;
    let scalars = table + layers;
    let key = if !p.hidden.is_empty() && layers > table { "hidden" } else { "dim" };
    let what = format!("this model (at least {scalars} parameters, with gradients and optimizer moments)");
    kdx_framework::model::check_memory(&what, scalars * 4 * 4).map_err(|e| ctx.error(key, e.to_string()))?;
    Ok(Box::new(p))
}

/// The fewest classes a task has: the output layer's size before the data is loaded.
const MIN_CLASSES: u128 = 2;

kdx_framework::register_model!(
    "ngram-mlp",
    "hashed character n-grams → embedding bag → MLP (fastText/CLD3-like)",
    NgramMlpParams,
    build
);

impl ModelBuilder for NgramMlpParams {
    fn hidden_width(&self) -> Option<usize> {
        // As `Mlp::hidden_dim`: the last hidden layer's width, or the bag's without one.
        Some(self.hidden.last().copied().unwrap_or(self.dim))
    }
    fn example_bytes(&self) -> Option<(&'static str, u128)> {
        // f32s one example holds in a step: the bag mean and its gradient; per hidden unit
        // the pre-activation, the activation and its gradient (a norm's output and a
        // dropout mask besides); the logits and their gradient.
        let per_unit = 3 + u128::from(self.layer_norm) + u128::from(self.dropout > 0.0);
        let hidden: u128 = self.hidden.iter().map(|&h| h as u128).sum();
        let floats = 2 * self.dim as u128 + per_unit * hidden + 2 * MIN_CLASSES;
        Some((if self.hidden.is_empty() { "dim" } else { "hidden" }, floats * 4))
    }
    fn build(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn Model>> {
        let (classes, seed) = (spec.classes, spec.seed);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bag = EmbeddingBag::new("emb", self.buckets, self.dim, &mut rng);
        let mlp = Mlp::new(
            self.dim,
            &self.hidden,
            classes,
            self.activation,
            self.layer_norm,
            self.dropout,
            &mut rng,
        );
        let hasher = NgramHasher { n_min: self.ngrams[0], n_max: self.ngrams[1], buckets: self.buckets };
        Ok(Box::new(NgramMlp { hasher, bag, mlp }))
    }
}

/// The model.
#[derive(Clone, Debug)]
pub struct NgramMlp {
    hasher: NgramHasher,
    bag: EmbeddingBag,
    mlp: Mlp,
}

impl Model for NgramMlp {
    fn describe(&self) -> String {
        format!(
            "ngram-mlp {} → {}×{} → {:?} → {}",
            self.hasher.describe(),
            self.bag.table.shape[0],
            self.bag.dim(),
            self.mlp.hidden.iter().map(|l| l.out_dim()).collect::<Vec<_>>(),
            self.mlp.classes()
        )
    }
    fn classes(&self) -> usize {
        self.mlp.classes()
    }
    fn hidden_dim(&self) -> usize {
        self.mlp.hidden_dim()
    }
    fn featurizer(&self) -> &dyn Featurizer {
        &self.hasher
    }
    fn forward(&self, x: &TokenRows) -> anyhow::Result<Outputs> {
        Ok(self.mlp.forward(self.bag.forward(x)?, x.len()))
    }
    fn forward_backward(
        &mut self,
        x: &TokenRows,
        ctx: StepCtx,
        objective: &mut dyn FnMut(&Outputs) -> anyhow::Result<OutputGrads>,
    ) -> anyhow::Result<Outputs> {
        let x0 = self.bag.forward(x)?;
        let (out, dx) = self.mlp.forward_backward(x0, x.len(), ctx, objective)?;
        self.bag.backward(x, &dx);
        Ok(out)
    }
    fn params(&self) -> Vec<&Param> {
        let mut v = vec![&self.bag.table];
        v.extend(self.mlp.params());
        v
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.bag.table];
        v.extend(self.mlp.params_mut());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_is_exact() {
        let p = NgramMlpParams {
            ngrams: [1, 3],
            buckets: 1000,
            dim: 16,
            hidden: vec![32, 8],
            activation: Activation::Relu,
            layer_norm: true,
            dropout: 0.0,
        };
        let m = p.build(&ModelSpec::new(5, 0)).unwrap();
        // table + (16·32+32) + norm(2·32) + (32·8+8) + norm(2·8) + (8·5+5)
        assert_eq!(m.num_params(), 1000 * 16 + 16 * 32 + 32 + 64 + 32 * 8 + 8 + 16 + 8 * 5 + 5);
        assert_eq!(m.hidden_dim(), 8);
    }
}
