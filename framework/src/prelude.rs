//! What a plugin author needs, in one `use kdx_framework::prelude::*;`: the four plugin
//! traits and their data types, the build context and diagnostics, the registration
//! macros, and the helpers a loss uses (dfdx autodiff on logits, a gradient check).

pub use crate::dataset::{file_fingerprint, Dataset, Example, Task};
pub use crate::features::{Featurizer, TokenRows};
pub use crate::loss::{
    autodiff_logits, row_weights, softmax_rows, tensor2, Loss, LossInput, LossOutput, Needs,
};
pub use crate::model::{
    Grad, Model, ModelBuilder, ModelKind, ModelSpec, OutputGrads, OutputTable, Outputs, Param, RowGrad,
    StepCtx,
};
pub use crate::registry::BuildCtx;
pub use crate::sampler::{normalise, LangStat, Sampler, SamplerCtx};
pub use crate::schedule::Schedule;
pub use crate::testing::{gradient_check, SampleBatch};
pub use crate::{register_dataset, register_loss, register_model, register_sampler, register_sdk_loss};
pub use kdx_recipe::Diagnostic;
