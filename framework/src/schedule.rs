//! Schedules for scalar knobs over a stage: loss weights, temperatures.
//!
//! In a recipe a schedule is either a number (constant) or a table:
//! `weight = { kind = "linear", start = 0.0, end = 1.0 }`,
//! `{ kind = "cosine", start, end }`, `{ kind = "step", start, factor = 0.5, every = 1000 }`,
//! `{ kind = "warmup", end = 1.0, steps = 500 }` (linear from `start` to `end` over `steps`,
//! then constant).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A scalar that may change with the step.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Schedule {
    /// The same value at every step.
    Constant(f32),
    /// A value that follows a curve over the stage.
    Curve(Curve),
}

// Hand-written so errors say what is accepted (serde's untagged enums only say "data did
// not match any variant") and errors inside a curve table keep their key path.
impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Schedule;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a number or a schedule table such as { kind = \"linear\", start = 0.0, end = 1.0 }",
                )
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Schedule, E> {
                Ok(Schedule::Constant(v as f32))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Schedule, E> {
                Ok(Schedule::Constant(v as f32))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Schedule, E> {
                Ok(Schedule::Constant(v as f32))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Schedule, A::Error> {
                Curve::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Schedule::Curve)
            }
        }
        d.deserialize_any(V)
    }
}

/// The curve of a non-constant schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Curve {
    /// "linear", "cosine", "step" or "warmup".
    pub kind: CurveKind,
    /// Value at step 0.
    #[serde(default)]
    pub start: f32,
    /// Value at the last step (linear, cosine) or after the warm-up (warmup).
    #[serde(default)]
    pub end: f32,
    /// Warm-up length in steps (warmup).
    #[serde(default)]
    pub steps: u64,
    /// Multiply by `factor` every `every` steps (step).
    #[serde(default = "half")]
    pub factor: f32,
    /// Period of a step schedule.
    #[serde(default = "thousand")]
    pub every: u64,
}

fn half() -> f32 {
    0.5
}
fn thousand() -> u64 {
    1000
}

/// Curve shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CurveKind {
    /// Linear from `start` to `end` over the stage.
    Linear,
    /// Half-cosine from `start` to `end` over the stage.
    Cosine,
    /// `start × factor^(step / every)`.
    Step,
    /// Linear from `start` to `end` over `steps`, then `end`.
    Warmup,
}

impl Schedule {
    /// Whether it can weight a loss: every value it takes is finite and not negative. A
    /// weight of 0 switches the term off (the engine does not compute it, so an ablation is
    /// exact); a warm-up from 0 starts it off. The error says why not.
    pub fn check_weight(&self) -> anyhow::Result<()> {
        let non_negative = |what: &str, v: f32| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "a loss weight must be a number of at least 0 (0 switches the term off); `{what}` is {v}"
                ))
            }
        };
        match self {
            Schedule::Constant(v) if v.is_finite() && *v >= 0.0 => Ok(()),
            Schedule::Constant(v) => Err(anyhow::anyhow!(
                "a loss weight must be a number of at least 0 (0 switches the term off), found {v}"
            )),
            Schedule::Curve(c) => {
                non_negative("start", c.start)?;
                match c.kind {
                    CurveKind::Step => non_negative("factor", c.factor),
                    _ => non_negative("end", c.end),
                }
            }
        }
    }

    /// Whether the value stays finite and positive at every step of any stage (what a
    /// temperature needs): a constant > 0, a curve whose ends are > 0, a step schedule
    /// whose start and factor are > 0.
    pub fn stays_positive(&self) -> bool {
        let ok = |v: f32| v.is_finite() && v > 0.0;
        match self {
            Schedule::Constant(v) => ok(*v),
            Schedule::Curve(c) if c.kind == CurveKind::Step => ok(c.start) && ok(c.factor),
            Schedule::Curve(c) => ok(c.start) && ok(c.end),
        }
    }

    /// The value at `step` (0-based) of a stage of `total` steps.
    pub fn at(&self, step: u64, total: u64) -> f32 {
        match self {
            Schedule::Constant(v) => *v,
            Schedule::Curve(c) => {
                let t = if total <= 1 { 1.0 } else { (step as f32 / (total - 1) as f32).clamp(0.0, 1.0) };
                match c.kind {
                    CurveKind::Linear => c.start + (c.end - c.start) * t,
                    CurveKind::Cosine => {
                        c.end + (c.start - c.end) * 0.5 * (1.0 + (std::f32::consts::PI * t).cos())
                    }
                    CurveKind::Step => c.start * c.factor.powi((step / c.every.max(1)) as i32),
                    CurveKind::Warmup => {
                        if step >= c.steps {
                            c.end
                        } else {
                            c.start + (c.end - c.start) * step as f32 / c.steps.max(1) as f32
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(kind: CurveKind) -> Curve {
        Curve { kind, start: 1.0, end: 0.0, steps: 10, factor: 0.5, every: 5 }
    }

    #[test]
    fn schedules_follow_their_formulas() {
        assert_eq!(Schedule::Constant(0.3).at(7, 10), 0.3);
        let lin = Schedule::Curve(curve(CurveKind::Linear));
        assert_eq!(lin.at(0, 11), 1.0);
        assert!((lin.at(5, 11) - 0.5).abs() < 1e-6);
        assert_eq!(lin.at(10, 11), 0.0);
        let cos = Schedule::Curve(curve(CurveKind::Cosine));
        assert!((cos.at(5, 11) - 0.5).abs() < 1e-6);
        assert!((cos.at(0, 11) - 1.0).abs() < 1e-6);
        let step = Schedule::Curve(curve(CurveKind::Step));
        assert_eq!(step.at(4, 100), 1.0);
        assert_eq!(step.at(5, 100), 0.5);
        assert_eq!(step.at(12, 100), 0.25);
        let mut w = curve(CurveKind::Warmup);
        w.start = 0.0;
        w.end = 2.0;
        let w = Schedule::Curve(w);
        assert_eq!(w.at(5, 100), 1.0);
        assert_eq!(w.at(50, 100), 2.0);
    }

    #[test]
    fn parses_number_or_table() {
        let s: Schedule = toml::from_str::<toml::Table>("w = 0.5").unwrap()["w"].clone().try_into().unwrap();
        assert_eq!(s, Schedule::Constant(0.5));
        let s: Schedule = toml::from_str::<toml::Table>("w = { kind = \"linear\", start = 0.0, end = 1.0 }")
            .unwrap()["w"]
            .clone()
            .try_into()
            .unwrap();
        assert!(matches!(s, Schedule::Curve(Curve { kind: CurveKind::Linear, .. })));
    }
}
