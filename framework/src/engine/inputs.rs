//! What the engine feeds models: a split featurised for one model, and the teacher's outputs
//! on the training examples.

use anyhow::Result;

use crate::dataset::Example;
use crate::features::{FeatureCache, TokenRows};
use crate::model::Model;

/// One split featurised for one model.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Feature bags.
    pub bags: TokenRows,
    /// Gold labels.
    pub labels: Vec<u32>,
    /// Languages.
    pub langs: Vec<u32>,
}

impl Inputs {
    /// Featurises `examples` (their `source` when `source` is true) through `cache`;
    /// `split` names the examples in the cache key.
    pub fn new(
        model: &dyn Model,
        examples: &[Example],
        source: bool,
        cache: &FeatureCache,
        split: &str,
    ) -> Result<Inputs> {
        let texts: Vec<&str> = examples
            .iter()
            .map(|e| if source { e.source.as_deref().unwrap_or(&e.text) } else { e.text.as_str() })
            .collect();
        let tag = format!("{split}/{}", if source { "source" } else { "text" });
        let mut bags = cache.bags(model.featurizer(), texts, &tag)?;
        bags.langs = examples.iter().map(|e| e.lang).collect();
        Ok(Inputs { bags, ..Inputs::labels_only(examples) })
    }

    /// Labels and languages without features (for outputs looked up by example id).
    pub fn labels_only(examples: &[Example]) -> Inputs {
        Inputs {
            bags: TokenRows::default(),
            labels: examples.iter().map(|e| e.label).collect(),
            langs: examples.iter().map(|e| e.lang).collect(),
        }
    }
}

/// Teacher outputs on the student's training examples, computed once (offline distillation).
#[derive(Clone, Debug, Default)]
pub struct TeacherOut {
    /// `N × C` logits.
    pub logits: Vec<f32>,
    /// `N × H_t` hidden representations (empty unless a loss reads them).
    pub hidden: Vec<f32>,
    /// `H_t` (0 when `hidden` is empty).
    pub hidden_dim: usize,
}
