//! Sentence embeddings: a model's pooled hidden vector, through the projection an embedding
//! loss learned into the teacher's space when the model was distilled with one. The run's
//! retrieval report, `kdx embed` and `kdx eval --parallel` all embed through this, so what
//! a user embeds with an exported student is what the report scored.

use anyhow::Result;

use crate::features::TokenRows;
use crate::infer::predict;
use crate::model::Model;
use crate::nn::HiddenProjection;

/// A model and, optionally, the projection its embedding goes through.
#[derive(Clone, Copy)]
pub struct Embedder<'a> {
    /// The model; its [`Model::forward`] hidden vector is the embedding before projection.
    pub model: &'a dyn Model,
    /// The learned map into a teacher's space (`None`: the hidden vector itself).
    pub projection: Option<&'a HiddenProjection>,
}

impl<'a> Embedder<'a> {
    /// The model's own hidden vector, unprojected.
    pub fn plain(model: &'a dyn Model) -> Embedder<'a> {
        Embedder { model, projection: None }
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        let h = self.model.hidden_dim();
        self.projection.map_or(h, |p| p.output_dim(h))
    }

    /// Embeddings of featurised inputs, `rows × dim`, row-major (identical inputs are
    /// computed once).
    pub fn embed_bags(&self, bags: &TokenRows) -> Result<Vec<f32>> {
        let o = predict(self.model, bags)?;
        Ok(match self.projection {
            Some(p) => p.apply(&o.hidden, o.batch, o.hidden_dim),
            None => o.hidden,
        })
    }

    /// Embeddings of texts, `texts.len() × dim`.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(texts.len() * self.dim());
        // Bounded chunks: featurised inputs of a large file are not all held at once.
        for chunk in texts.chunks(4096) {
            let bags = TokenRows::build(self.model.featurizer(), chunk.to_vec());
            out.extend(self.embed_bags(&bags)?);
        }
        Ok(out)
    }
}
