//! The loss plugin kind.
//!
//! A loss sees plain buffers — student logits and hidden representation, teacher outputs,
//! labels, language ids, per-example weights, the step and per-language statistics — and
//! returns its value and its gradient with respect to the student's outputs. The engine
//! folds that gradient into the model's dfdx tape. Because the boundary is plain data, the
//! same trait serves in-tree plugins and plugins loaded from dynamic libraries, and each
//! loss may use dfdx autodiff internally on its own fresh tensors (see [`autodiff_logits`]).

use crate::dfdx_prelude::*;
use crate::model::{LayerGrads, LayerShape, LayerStates, Param};

/// Everything a loss may read for one batch, and what it returns: the SDK's plain types,
/// shared by in-tree losses and dynamic-library plugins (no conversion at the boundary).
pub use kdx_sdk::{LossInput, LossOutput, Shapes};

/// What a loss reads besides the student's outputs ([`Loss::needs`], returned once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Teacher outputs: the loss is skipped in teacher-free stages (the baseline), and the
    /// engine computes the teacher's outputs for it.
    pub teacher: bool,
    /// Gold labels: refused in tasks where the student may not see them.
    pub labels: bool,
    /// The teacher's hidden representation: the engine then keeps it for every training
    /// example, which costs memory.
    pub teacher_hidden: bool,
    /// Per-layer states ([`LayerStates`]) of the student and, when it needs the teacher, of
    /// the teacher: the loss implements [`Loss::compute_layers`], and the engine runs the
    /// teacher on every batch (its states are too large to cache).
    pub layers: bool,
}

impl Needs {
    /// Gold labels only: a supervised loss.
    pub const LABELS: Needs = Needs { teacher: false, labels: true, teacher_hidden: false, layers: false };
    /// Teacher outputs only: a distillation loss.
    pub const TEACHER: Needs = Needs { teacher: true, labels: false, teacher_hidden: false, layers: false };
}

/// A distillation or supervised objective.
pub trait Loss: Send {
    /// What the loss reads besides the student's outputs; the engine computes, keeps and
    /// checks only what some loss of a stage needs.
    fn needs(&self) -> Needs;
    /// Computes the loss and its gradients.
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput>;
    /// Checks at plan time that the student's and teacher's layers fit the loss (layer
    /// indices in range, equal heads, the same tokenisation); the error says what does not.
    fn check_layers(&self, student: &LayerShape, teacher: &LayerShape) -> anyhow::Result<()> {
        let _ = (student, teacher);
        Ok(())
    }
    /// The layer-wise objective: [`Loss::compute`]'s value and gradients, plus gradients
    /// with respect to the student's layer states.
    fn compute_layers(
        &mut self,
        x: &LossInput,
        student: &LayerStates,
        teacher: Option<&LayerStates>,
    ) -> anyhow::Result<(LossOutput, LayerGrads)> {
        let _ = (x, student, teacher);
        anyhow::bail!("this loss reads no per-layer states")
    }
    /// Checks at plan time that the loss fits both models' widths and layers (`kdx validate`
    /// runs it): a message that starts with a backquoted key (`` `layers`: … ``) is reported
    /// at that key of the `[[loss]]` table, any other at the table. Layer-wise losses also
    /// have [`Loss::check_layers`], called only when both models have layers.
    fn check_shapes(&self, shapes: &Shapes) -> anyhow::Result<()> {
        let _ = shapes;
        Ok(())
    }
    /// Called once at the start of every stage the loss takes part in, before a checkpoint
    /// is restored: create parameters whose shapes depend on the models here (a projection
    /// from the student's hidden width to the teacher's), so a resumed run finds them.
    /// `shapes` holds the classes and both widths (the layer shapes are the plan's, in
    /// [`Loss::check_shapes`]).
    fn prepare(&mut self, shapes: &Shapes) -> anyhow::Result<()> {
        let _ = shapes;
        Ok(())
    }
    /// Named per-language values to report (one per language each): `metrics.csv` gets a
    /// column `<loss>.<name>` per name (the `macro` row holds their mean) and the
    /// `evaluated` event carries the macro values.
    fn language_values(&self) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
        Ok(Vec::new())
    }
    /// The loss's state beyond its parameters (a moving average), saved with every
    /// checkpoint and given back to [`Loss::load_state`] on resume.
    fn save_state(&self) -> anyhow::Result<Vec<u8>> {
        Ok(Vec::new())
    }
    /// Restores what [`Loss::save_state`] returned.
    fn load_state(&mut self, state: &[u8]) -> anyhow::Result<()> {
        let _ = state;
        Ok(())
    }
    /// Trainable parameters the loss owns (e.g. a projection from student to teacher
    /// width). `compute` leaves their gradients in [`Param::grad`]; they train with the
    /// student and are checkpointed with it; `run.csv`'s `student_params` counts the model
    /// alone (the classifier a deployment runs), and the exported model carries a projection.
    fn params(&self) -> Vec<&Param> {
        Vec::new()
    }
    /// The same parameters, mutably, in the same order.
    fn params_mut(&mut self) -> Vec<&mut Param> {
        Vec::new()
    }
    /// Whether the loss fits something to the data before the first step of a fresh stage
    /// ([`Loss::fit`]), e.g. its projection in closed form.
    fn wants_fit(&self) -> bool {
        false
    }
    /// Called once before the first step of a stage that starts fresh (never on resume:
    /// the checkpoint holds the fitted values), after [`Loss::prepare`], with the student's
    /// and the teacher's hidden vectors of up to 4096 training examples (`n × Hₛ`, `n × Hₜ`).
    fn fit(&mut self, student_hidden: &[f32], teacher_hidden: &[f32], n: usize) -> anyhow::Result<()> {
        let _ = (student_hidden, teacher_hidden, n);
        Ok(())
    }
    /// Per-language state to report in `metrics.csv` (e.g. a selective gate), if any.
    fn language_state(&self) -> anyhow::Result<Option<Vec<f32>>> {
        Ok(None)
    }
    /// How the loss maps student hidden representations into the teacher's hidden space
    /// (its learned projection, or the identity when it has none): the student's sentence
    /// embedding is its hidden vector through it. The engine scores translation retrieval
    /// with it and exports it beside the student, so `kdx embed` gives vectors in the
    /// teacher's space. `None` for losses that do not relate the two spaces.
    fn projection(&self) -> Option<&crate::nn::HiddenProjection> {
        None
    }
}

/// Cross-entropy with the gold labels, the framework's own supervised objective (teacher
/// pre-training, the baseline, hard-label fine-tuning; the `hard-ce` plugin offers it to
/// recipes):
/// L = (1/B) Σᵢ wᵢ · (−Σ_c qᵢc · log softmax(zᵢ)_c), with q = (1−ε)·onehot(yᵢ) + ε/C
/// (label smoothing ε, 0 by default). z: student logits, w: per-example weights.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CrossEntropy {
    /// Label smoothing ε in [0, 1).
    pub label_smoothing: f32,
}

impl Loss for CrossEntropy {
    fn needs(&self) -> Needs {
        Needs::LABELS
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let labels = x
            .labels
            .ok_or_else(|| anyhow::anyhow!("cross-entropy needs gold labels, and this stage has none"))?;
        let (b, c) = (x.batch, x.classes);
        let eps = self.label_smoothing;
        let mut q = vec![eps / c as f32; b * c];
        for (i, &y) in labels.iter().enumerate() {
            anyhow::ensure!((y as usize) < c, "label {y} of example {i} is out of range ({c} classes)");
            q[i * c + y as usize] += 1.0 - eps;
        }
        let target = tensor2(b, c, &q) * row_weights(b, c, x.weights);
        let (value, grad) = autodiff_logits(b, c, x.student_logits, |z| {
            (z.log_softmax::<Axis<1>>() * target).sum::<(), _>().negate()
        });
        Ok(LossOutput { value, grad_logits: grad, grad_hidden: None })
    }
}

/// The per-example part of a hidden-state loss: from the projected student row `p` and
/// the teacher row `t` (both of the teacher's width) and the example's weight `w` (its
/// weight / B), writes w·∂ℓ/∂p into `dp` and returns w·ℓ.
pub type HiddenCriterion = fn(p: &[f64], t: &[f32], w: f64, dp: &mut [f64]) -> f64;

/// A hidden-state loss over the whole batch at once (a contrastive one compares every
/// student row with every teacher row): from the projected student rows `p` (`B × Hₜ`),
/// the teacher rows `t` and each example's weight / B, writes ∂L/∂p into `dp` and returns L.
pub type BatchCriterion = Box<dyn Fn(&[f64], &[f32], &[f64], usize, &mut [f64]) -> f64 + Send>;

/// What a [`ProjectedHiddenLoss`] computes between the projected student and the teacher.
pub enum Criterion {
    /// A sum of per-example terms.
    Each(HiddenCriterion),
    /// A function of the whole batch.
    Batch(BatchCriterion),
}

/// A loss between the student's hidden representation, through a learned projection
/// ([`crate::nn::HiddenProjection`]), and the teacher's: what `hidden-mse` and
/// `cosine-embedding` share. Each supplies its [`HiddenCriterion`]; the projection is
/// created on first need (or in [`Loss::prepare`]), trains with the student, and maps
/// student states into the teacher's space for translation retrieval ([`Loss::embed`]).
/// The gradient reaches the student through its hidden representation only.
pub struct ProjectedHiddenLoss {
    /// The plugin's name, for errors.
    pub name: &'static str,
    /// When to project.
    pub mode: crate::nn::ProjectionMode,
    /// Seed of the projection's initialisation.
    pub seed: u64,
    /// The projection, once the widths are known.
    pub proj: crate::nn::HiddenProjection,
    /// The loss between projected student and teacher.
    pub criterion: Criterion,
    /// How the projection starts.
    pub init: ProjectionInit,
}

/// How a learned projection between hidden spaces starts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectionInit {
    /// Random (±1/√Hₛ), from the loss's seed.
    #[default]
    Random,
    /// The ridge least-squares map from the student's hidden vectors to the teacher's on
    /// 4096 training examples, before the first step: a pretrained student trains from the
    /// best linear reading of its own space rather than a random one.
    LeastSquares,
}

impl ProjectedHiddenLoss {
    /// A loss without a projection yet, which starts at random.
    pub fn new(
        name: &'static str,
        mode: crate::nn::ProjectionMode,
        seed: u64,
        criterion: HiddenCriterion,
    ) -> Self {
        Self::with_criterion(name, mode, seed, Criterion::Each(criterion))
    }

    /// A loss with this criterion, without a projection yet, which starts at random.
    pub fn with_criterion(
        name: &'static str,
        mode: crate::nn::ProjectionMode,
        seed: u64,
        criterion: Criterion,
    ) -> Self {
        ProjectedHiddenLoss {
            name,
            mode,
            seed,
            proj: Default::default(),
            criterion,
            init: ProjectionInit::Random,
        }
    }

    /// A loss of the whole batch ([`Criterion::Batch`]), without a projection yet.
    pub fn over_batch(
        name: &'static str,
        mode: crate::nn::ProjectionMode,
        seed: u64,
        criterion: BatchCriterion,
    ) -> Self {
        Self::with_criterion(name, mode, seed, Criterion::Batch(criterion))
    }

    /// The same, with the projection started as `init` says.
    pub fn with_init(mut self, init: ProjectionInit) -> Self {
        self.init = init;
        self
    }
}

impl Loss for ProjectedHiddenLoss {
    fn needs(&self) -> Needs {
        Needs { teacher_hidden: true, ..Needs::TEACHER }
    }
    fn prepare(&mut self, shapes: &Shapes) -> anyhow::Result<()> {
        if let (Some(hs), Some(ht)) = (shapes.student_hidden_dim, shapes.teacher_hidden_dim) {
            self.proj.ensure(self.mode, self.seed, hs, ht, self.name)?;
        }
        Ok(())
    }
    fn params(&self) -> Vec<&Param> {
        self.proj.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.proj.params_mut()
    }
    fn projection(&self) -> Option<&crate::nn::HiddenProjection> {
        Some(&self.proj)
    }
    fn wants_fit(&self) -> bool {
        self.init == ProjectionInit::LeastSquares
    }
    fn fit(&mut self, student_hidden: &[f32], teacher_hidden: &[f32], n: usize) -> anyhow::Result<()> {
        // A small ridge: the fit is the projection's start, not its last word.
        const RIDGE: f64 = 1e-3;
        self.proj.fit_least_squares(student_hidden, teacher_hidden, n, RIDGE)
    }
    fn compute(&mut self, x: &LossInput) -> anyhow::Result<LossOutput> {
        let th = x
            .teacher_hidden
            .ok_or_else(|| anyhow::anyhow!("{} needs the teacher's hidden representation", self.name))?;
        let (b, hs, ht) = (x.batch, x.student_hidden_dim, x.teacher_hidden_dim);
        let project = self.proj.ensure(self.mode, self.seed, hs, ht, self.name)?;
        // P = hₛ W + b (or hₛ), dP = ∂L/∂P.
        let p = self.proj.forward(project, x.student_hidden, b, hs, ht);
        let mut dp = vec![0f64; b * ht];
        let w: Vec<f64> = x.weights.iter().map(|&w| w as f64 / b as f64).collect();
        let value = match &self.criterion {
            Criterion::Each(f) => (0..b)
                .map(|i| {
                    let rows = i * ht..(i + 1) * ht;
                    f(&p[rows.clone()], &th[rows.clone()], w[i], &mut dp[rows])
                })
                .sum::<f64>(),
            Criterion::Batch(f) => f(&p, th, &w, ht, &mut dp),
        };
        let grad_hidden = self.proj.backward(project, x.student_hidden, &dp, b, hs, ht);
        Ok(LossOutput {
            value: value as f32,
            grad_logits: vec![0.0; b * x.classes],
            grad_hidden: Some(grad_hidden),
        })
    }
}

/// Evaluates a scalar function of the student logits with dfdx autodiff: `f` receives the
/// logits as a traced `B × C` tensor and returns a traced scalar. Returns value and gradient.
pub fn autodiff_logits(
    batch: usize,
    classes: usize,
    logits: &[f32],
    f: impl FnOnce(Traced2) -> Traced0,
) -> (f32, Vec<f32>) {
    let dev = device();
    let z: T2 = dev.tensor_from_vec(logits.to_vec(), (batch, classes));
    let out = f(z.leaky_trace());
    let value = out.array();
    let grads = out.backward();
    (value, grads.get(&z).as_vec())
}

/// A constant `B × C` tensor from a slice.
pub fn tensor2(rows: usize, cols: usize, data: &[f32]) -> T2 {
    device().tensor_from_vec(data.to_vec(), (rows, cols))
}

/// A `B × C` tensor holding each example's weight divided by `B`, in every column: multiply
/// per-example-per-class terms by it and sum to get the weighted batch mean.
pub fn row_weights(batch: usize, classes: usize, weights: &[f32]) -> T2 {
    let mut v = Vec::with_capacity(batch * classes);
    for &w in weights {
        v.extend(std::iter::repeat_n(w / batch as f32, classes));
    }
    tensor2(batch, classes, &v)
}

/// Softmax of `z / t` per row, and its log, computed in f64 on the host by the SDK's
/// [`kdx_sdk::math::log_softmax`] and rounded to f32: used for teacher targets (constants),
/// where exact zeros must not produce NaN (0 · log 0 is taken as 0).
pub fn softmax_rows(z: &[f32], classes: usize, t: f32) -> (Vec<f32>, Vec<f32>) {
    let mut p = Vec::with_capacity(z.len());
    let mut lp = Vec::with_capacity(z.len());
    for row in z.chunks(classes) {
        for l in kdx_sdk::math::log_softmax(row, t as f64) {
            lp.push(l as f32);
            p.push(l.exp() as f32);
        }
    }
    (p, lp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ProjectionMode;
    use crate::testing::{gradient_check, SampleBatch};

    /// w · Σ (p − t): the simplest criterion, to exercise the shared plumbing.
    fn difference(p: &[f64], t: &[f32], w: f64, dp: &mut [f64]) -> f64 {
        dp.iter_mut().for_each(|d| *d = w);
        w * p.iter().zip(t).map(|(a, &b)| a - b as f64).sum::<f64>()
    }

    #[test]
    fn projected_hidden_loss_creates_its_projection_on_first_need() {
        let s = SampleBatch::random(4, 3, 5, 2.0, 6);
        // Different widths: the teacher is 3 wide, the student 5.
        let th: Vec<f32> = s.teacher_hidden[..4 * 3].to_vec();
        let x = LossInput { teacher_hidden: Some(&th), teacher_hidden_dim: 3, ..s.input(0, 1) };
        let mut l = ProjectedHiddenLoss::new("test", ProjectionMode::Auto, 3, difference);
        assert!(l.params().is_empty(), "no projection before the first batch");
        let err = gradient_check(&mut l, &x, 1e-2).unwrap();
        assert!(err < 1e-2, "relative error {err}");
        let names: Vec<_> = l.params().iter().map(|p| (p.name.clone(), p.shape.clone())).collect();
        assert_eq!(names, vec![("proj.w".to_string(), vec![5, 3]), ("proj.b".to_string(), vec![3])]);
        assert_eq!(
            l.projection().map(|p| p.apply(&s.student_hidden[..5], 1, 5).len()),
            Some(3),
            "embeds into the teacher's width"
        );
        for (mode, n) in [(ProjectionMode::Never, 0), (ProjectionMode::Always, 2)] {
            let mut l = ProjectedHiddenLoss::new("test", mode, 3, difference);
            l.compute(&s.input(0, 1)).unwrap();
            assert_eq!(l.params().len(), n, "{mode:?}");
        }
        let err =
            ProjectedHiddenLoss::new("test", ProjectionMode::Never, 3, difference).compute(&x).unwrap_err();
        assert!(err.to_string().contains("test with projection = \"never\" needs equal widths"), "{err}");
        // The same seed, the same projection.
        let (mut a, mut b) = (
            ProjectedHiddenLoss::new("test", ProjectionMode::Always, 3, difference),
            ProjectedHiddenLoss::new("test", ProjectionMode::Always, 3, difference),
        );
        a.compute(&s.input(0, 1)).unwrap();
        b.compute(&s.input(0, 1)).unwrap();
        assert_eq!(a.params()[0].data, b.params()[0].data);
    }
}
