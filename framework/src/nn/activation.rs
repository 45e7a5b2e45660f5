//! Non-linearities.

use serde::{Deserialize, Serialize};

/// Non-linearities between hidden layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// max(0, x).
    #[default]
    Relu,
    /// tanh(x).
    Tanh,
    /// GELU, tanh approximation (recipes write `"gelu"`; the transformer's feed-forward
    /// block also has the exact form, `FfnActivation::GeluErf`).
    #[serde(rename = "gelu")]
    GeluTanh,
}
