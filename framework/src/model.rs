//! The model plugin kind: runtime-sized networks used as teacher or student.
//!
//! Parameters are plain `f32` buffers ([`Param`]) owned by the model; each training step
//! binds them to dfdx tensors, runs dfdx autodiff, and leaves the gradients in
//! [`Param::grad`] for the framework's optimizers. Keeping parameters as plain data makes
//! checkpoints, weight transfer (`init = "from-teacher"`) and export trivial.

use crate::features::{Featurizer, TokenRows};
pub use crate::outputs::{LayerGrads, LayerStates, OutputGrads, Outputs, StepCtx};
pub use crate::param::{Grad, Param, RowGrad, SpareBuffer};

/// A trained or trainable network. It is `Any`, so what needs one concrete model (`kdx export
/// --hf` reads a transformer's blocks) downcasts a `&dyn Model` instead of the trait naming
/// every model type.
pub trait Model: Send + Sync + std::any::Any {
    /// One line describing the architecture (for logs and `run.csv`).
    fn describe(&self) -> String;
    /// Number of classes it predicts.
    fn classes(&self) -> usize;
    /// Width of the hidden representation handed to losses.
    fn hidden_dim(&self) -> usize;
    /// Its featuriser: the engine featurises each split once with it.
    fn featurizer(&self) -> &dyn Featurizer;
    /// Inference on a batch of featurised examples (no dropout, no gradients).
    fn forward(&self, x: &TokenRows) -> anyhow::Result<Outputs>;
    /// Training forward and backward: runs the forward pass, asks `objective` for the
    /// gradient of the loss with respect to the outputs, and back-propagates it into
    /// [`Param::grad`] of every parameter. Returns the forward outputs.
    fn forward_backward(
        &mut self,
        x: &TokenRows,
        ctx: StepCtx,
        objective: &mut dyn FnMut(&Outputs) -> anyhow::Result<OutputGrads>,
    ) -> anyhow::Result<Outputs>;
    /// The parameters, in a fixed order.
    fn params(&self) -> Vec<&Param>;
    /// The parameters, mutably, in the same order.
    fn params_mut(&mut self) -> Vec<&mut Param>;

    /// Inference that also returns every layer's states ([`Outputs::layers`]), for a
    /// teacher read by layer-wise losses. Models without layers return plain outputs.
    fn forward_layers(&self, x: &TokenRows) -> anyhow::Result<Outputs> {
        self.forward(x)
    }

    /// Total number of trainable scalars.
    fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.numel()).sum()
    }

    /// Whether outputs depend on [`TokenRows::langs`] (a model that routes by language). When
    /// they do not, inference computes a text once however many languages it appears under
    /// (an English source read for each of its translations).
    fn routes_by_language(&self) -> bool {
        false
    }
}

/// The per-layer shape of a layered model: what layer-wise losses check at plan time. The
/// SDK's type, so that built-in and library losses check the same thing.
pub use kdx_sdk::LayerShape;

/// Whether `teacher` tokenises as `student` does, which token-level losses need; the error
/// says what the loss `compares` and names both tokenisations.
pub fn same_tokens(student: &LayerShape, teacher: &LayerShape, compares: &str) -> anyhow::Result<()> {
    if student.max_len != teacher.max_len {
        // Texts longer than the shorter limit would be cut at different tokens: the run would
        // stop at its first such batch, after the teacher has trained.
        anyhow::bail!(
            "{compares}, so student and teacher must truncate texts alike; the student's max_len is {}, the teacher's {}",
            student.max_len,
            teacher.max_len
        );
    }
    anyhow::ensure!(
        student.tokenizer == teacher.tokenizer,
        "{compares}, so student and teacher must tokenise alike; the student's tokenizer is {}, the teacher's {}",
        student.tokenizer,
        teacher.tokenizer
    );
    Ok(())
}

/// Model outputs computed outside kdx, keyed by example id ([`crate::dataset::Example::id`]):
/// a teacher that is a table, not a network (`logits-file`).
pub trait OutputTable: Send + Sync {
    /// Number of classes of its logits.
    fn classes(&self) -> usize;
    /// Width of its hidden representations (0 when it has none).
    fn hidden_dim(&self) -> usize;
    /// The outputs of these examples, in this order. An id without a row is an error that
    /// names the file, how many ids are missing and a few of them.
    fn lookup(&self, ids: &[&str], what: &str) -> anyhow::Result<Outputs>;
    /// Where the outputs come from (a file name), for logs.
    fn origin(&self) -> String;
}

/// What a model is sized and seeded for.
#[derive(Clone, Debug, Default)]
pub struct ModelSpec {
    /// Number of classes.
    pub classes: usize,
    /// Class names, indexed by output (empty when unknown).
    pub labels: Vec<String>,
    /// The task's languages (routing teachers use them; empty when unknown).
    pub langs: Vec<String>,
    /// Initialisation seed.
    pub seed: u64,
    /// The texts of the training split this model reads, for models that learn a
    /// vocabulary from them (empty when unknown: then they need `tokenizer_file`).
    pub train_texts: std::sync::Arc<Vec<String>>,
    /// Where models may cache what they learn from the data (a vocabulary), if anywhere.
    pub cache_dir: Option<std::path::PathBuf>,
    /// A tokenizer.json to use instead of learning one: an exported model's own.
    pub tokenizer_file: Option<std::path::PathBuf>,
}

impl ModelKind {
    /// Whether [`ModelBuilder::build`] makes a network (weights, gradients).
    pub fn is_network(self) -> bool {
        self != ModelKind::Precomputed
    }
}

impl ModelSpec {
    /// A spec without language names (benchmarks, tests).
    pub fn new(classes: usize, seed: u64) -> ModelSpec {
        ModelSpec { classes, seed, ..Default::default() }
    }
}

/// What a model plugin builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A network ([`ModelBuilder::build`]): a student, or a teacher kdx pre-trains
    /// (`[teacher] train` is then required).
    Network,
    /// A network that comes with trained weights (a pretrained checkpoint): a teacher used
    /// as it is (`[teacher] train` optional: it fine-tunes the teacher first), or a student
    /// that starts from them.
    Pretrained,
    /// A table of outputs computed elsewhere ([`ModelBuilder::build_table`]): only a
    /// teacher, never pre-trained (`[teacher] train` is refused).
    Precomputed,
}

/// A model plugin instance: knows its architecture; sized once the task is known.
pub trait ModelBuilder: Send + Sync {
    /// Creates a freshly initialised network for the spec ([`ModelKind::Network`] plugins).
    fn build(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn Model>>;

    /// Which of [`ModelBuilder::build`] and [`ModelBuilder::build_table`] the plugin
    /// implements; the plan and the engine ask before building.
    fn kind(&self) -> ModelKind {
        ModelKind::Network
    }

    /// The per-layer shape the built network will have, for layered models (transformers):
    /// the plan checks layer-wise losses against it before anything is built.
    fn layer_shape(&self) -> Option<LayerShape> {
        None
    }

    /// The width of the hidden representation the built network will have, when the plan
    /// can know it (a layered model's width by default): losses check it at plan time.
    fn hidden_width(&self) -> Option<usize> {
        self.layer_shape().map(|s| s.width)
    }

    /// The section an exported model card records for this model, from the recipe's
    /// `section`. A card is read back from the run directory, not the recipe's, so a plugin
    /// whose parameters name files returns them resolved to absolute paths.
    fn card_section(&self, section: &toml::Value) -> toml::Value {
        section.clone()
    }

    /// Files outside the run that [`ModelBuilder::build`] reads again when the run's
    /// exported model is loaded (a model directory's configuration and tokenizer; not the
    /// weights the run saves itself), listed whether or not each exists now. The export
    /// records their content hashes and loading refuses the model once one has changed: it
    /// was trained with those files.
    fn inputs(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }

    /// What one example holds while a training step runs (activations and their
    /// gradients, in bytes) and the parameter that sizes it most; `None` when the model
    /// does not estimate it. The plan multiplies it by each of the model's stages' batch
    /// and refuses, at that parameter, a batch that cannot fit in memory.
    fn example_bytes(&self) -> Option<(&'static str, u128)> {
        None
    }

    /// Reads the table of outputs for the spec ([`ModelKind::Precomputed`] plugins).
    fn build_table(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn OutputTable>> {
        let _ = spec;
        anyhow::bail!("this model is a network; it has no table of precomputed outputs")
    }
}

/// This machine's memory in bytes (`MemTotal` of /proc/meminfo), if it can be read.
pub fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 =
        info.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Checks, before anything is allocated, that `bytes` (an estimate of what `what` needs) fits
/// in this machine's memory; the error gives the estimate and the machine's memory. Plugins
/// call it from their builders, so `kdx validate` refuses sizes a run would die on.
pub fn check_memory(what: &str, bytes: u128) -> anyhow::Result<()> {
    let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
    match machine_memory() {
        Some(total) if bytes > total as u128 => Err(anyhow::anyhow!(
            "{what} needs about {:.1} GiB, more than this machine's {:.1} GiB",
            gib(bytes),
            gib(total as u128)
        )),
        _ => Ok(()),
    }
}

/// Copies a teacher's parameters into a student where names and shapes allow
/// (`init = "from-teacher"`): equal shapes are copied whole; a student matrix whose
/// shape is a prefix-slice of the teacher's (fewer rows and/or columns) takes the leading
/// block (the first k hidden units). Anything else is an error naming each tensor and both shapes.
pub fn init_from(student: &mut dyn Model, teacher: &dyn Model) -> anyhow::Result<Vec<String>> {
    let tparams = teacher.params();
    let mut copied = Vec::new();
    let mut problems = Vec::new();
    for sp in student.params_mut() {
        let Some(tp) = tparams.iter().find(|t| t.name == sp.name) else {
            problems.push(format!("`{}` {:?}: the teacher has no tensor of that name", sp.name, sp.shape));
            continue;
        };
        if sp.table && tp.shape.first() != sp.shape.first() {
            problems.push(format!(
                "`{}`: student shape {:?} vs teacher shape {:?}: rows are hashed ids, so the bucket counts must match",
                sp.name, sp.shape, tp.shape
            ));
        } else if tp.shape == sp.shape {
            sp.data.copy_from_slice(&tp.data);
            copied.push(sp.name.clone());
        } else if tp.shape.len() == sp.shape.len() && tp.shape.iter().zip(&sp.shape).all(|(t, s)| s <= t) {
            match sp.shape.len() {
                1 => sp.data.copy_from_slice(&tp.data[..sp.shape[0]]),
                2 => {
                    let (r, c, tc) = (sp.shape[0], sp.shape[1], tp.shape[1]);
                    for i in 0..r {
                        sp.data[i * c..(i + 1) * c].copy_from_slice(&tp.data[i * tc..i * tc + c]);
                    }
                }
                _ => {
                    problems.push(format!("`{}`: student {:?} vs teacher {:?}", sp.name, sp.shape, tp.shape));
                    continue;
                }
            }
            copied.push(format!("{} (leading block)", sp.name));
        } else {
            problems.push(format!(
                "`{}`: student shape {:?} does not fit in teacher shape {:?}",
                sp.name, sp.shape, tp.shape
            ));
        }
    }
    if problems.is_empty() {
        Ok(copied)
    } else {
        anyhow::bail!("init = \"from-teacher\" cannot copy these tensors:\n  {}", problems.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::NgramHasher;

    struct Toy {
        params: Vec<Param>,
        f: NgramHasher,
    }

    impl Model for Toy {
        fn describe(&self) -> String {
            "toy".into()
        }
        fn classes(&self) -> usize {
            2
        }
        fn hidden_dim(&self) -> usize {
            1
        }
        fn featurizer(&self) -> &dyn Featurizer {
            &self.f
        }
        fn forward(&self, _: &TokenRows) -> anyhow::Result<Outputs> {
            Ok(Outputs::default())
        }
        fn forward_backward(
            &mut self,
            _: &TokenRows,
            _: StepCtx,
            _: &mut dyn FnMut(&Outputs) -> anyhow::Result<OutputGrads>,
        ) -> anyhow::Result<Outputs> {
            Ok(Outputs::default())
        }
        fn params(&self) -> Vec<&Param> {
            self.params.iter().collect()
        }
        fn params_mut(&mut self) -> Vec<&mut Param> {
            self.params.iter_mut().collect()
        }
    }

    fn toy(shapes: &[(&str, &[usize], bool)], fill: f32) -> Toy {
        let params = shapes
            .iter()
            .map(|(n, s, table)| {
                let mut p = Param::zeros(*n, s, true);
                p.table = *table;
                p.data.iter_mut().enumerate().for_each(|(i, x)| *x = fill + i as f32);
                p
            })
            .collect();
        Toy { params, f: NgramHasher { n_min: 1, n_max: 1, buckets: 4 } }
    }

    #[test]
    fn init_from_copies_equal_shapes_and_leading_blocks() {
        let teacher = toy(
            &[("emb", &[4, 3], true), ("hidden.0.w", &[3, 4], false), ("hidden.0.b", &[4], false)],
            100.0,
        );
        let mut student =
            toy(&[("emb", &[4, 2], true), ("hidden.0.w", &[2, 2], false), ("hidden.0.b", &[2], false)], 0.0);
        init_from(&mut student, &teacher).unwrap();
        assert_eq!(student.params[0].data, vec![100.0, 101.0, 103.0, 104.0, 106.0, 107.0, 109.0, 110.0]);
        assert_eq!(student.params[1].data, vec![100.0, 101.0, 104.0, 105.0]);
        assert_eq!(student.params[2].data, vec![100.0, 101.0]);
    }

    #[test]
    fn init_from_names_each_tensor_that_does_not_fit() {
        let teacher = toy(&[("emb", &[8, 3], true), ("out.w", &[3, 2], false)], 1.0);
        let mut student =
            toy(&[("emb", &[4, 3], true), ("out.w", &[5, 2], false), ("extra", &[2], false)], 0.0);
        let err = init_from(&mut student, &teacher).unwrap_err().to_string();
        assert!(
            err.contains("`emb`")
                && err.contains("[4, 3]")
                && err.contains("[8, 3]")
                && err.contains("bucket"),
            "{err}"
        );
        assert!(err.contains("`out.w`") && err.contains("[5, 2]") && err.contains("[3, 2]"), "{err}");
        assert!(err.contains("`extra`") && err.contains("no tensor of that name"), "{err}");
    }
}
