//! Layer normalisation's parameters (the arithmetic is dfdx's `normalize`).

use crate::param::Param;

/// Layer norm parameters (gain and bias over the feature axis).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Gain, initialised to one.
    pub gain: Param,
    /// Bias, initialised to zero.
    pub bias: Param,
}

crate::module!(LayerNorm { gain, bias });

impl LayerNorm {
    /// Gain one and bias zero over `width` features, named `{name}.gain` and `{name}.bias`.
    pub fn new(name: &str, width: usize) -> LayerNorm {
        let mut gain = Param::zeros(format!("{name}.gain"), &[width], false);
        gain.data.fill(1.0);
        LayerNorm { gain, bias: Param::zeros(format!("{name}.bias"), &[width], false) }
    }
}
