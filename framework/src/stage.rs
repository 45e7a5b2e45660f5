//! The stages of a run, as one type: their names in reports and their random-seed salts.

use serde::{Deserialize, Serialize};

/// A training stage of a run, in the order the engine runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The teacher's pre-training on hard labels (skipped when it comes from the cache).
    Teacher,
    /// Distillation of the student with the recipe's losses and sampler.
    Distill,
    /// The optional fine-tuning of the distilled student (`[finetune]`).
    Finetune,
    /// The same student trained on hard labels without a teacher, for the KD-gain column.
    Baseline,
}

impl Stage {
    /// Every stage, in run order.
    pub const ALL: [Stage; 4] = [Stage::Teacher, Stage::Distill, Stage::Finetune, Stage::Baseline];

    /// The name used in reports (`metrics.csv`, `sampling.csv`), checkpoints and events.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Teacher => "teacher",
            Stage::Distill => "distill",
            Stage::Finetune => "finetune",
            Stage::Baseline => "baseline",
        }
    }

    /// The stage with this [`Stage::name`].
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Salt of the stage's example order and per-step randomness (batch draws, dropout).
    ///
    /// Fixed numbers, so renaming a stage changes no random draw. They equal what earlier
    /// versions derived from the stage's name, so runs reproduce across the change (a test
    /// keeps that derivation to prove it).
    pub fn salt(self) -> u64 {
        match self {
            Stage::Teacher => 0xca0b_211f_3f10_a83a,
            Stage::Distill => 0xa346_6e75_f59f_82d4,
            Stage::Finetune => 0xc459_13f4_b59a_c1e3,
            Stage::Baseline => 0xb848_8928_60b7_f22c,
        }
    }

    /// Tag mixed with the run seed to seed the stage. The baseline shares the distillation
    /// stage's, so both draw the same batches in the same order: the KD gain then measures
    /// the teacher, not a different sample.
    pub fn seed_tag(self) -> u64 {
        match self {
            Stage::Teacher => 11,
            Stage::Distill | Stage::Baseline => 12,
            Stage::Finetune => 14,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::mix;

    /// How the salts were derived from the names before they became constants.
    fn name_salt(name: &str) -> u64 {
        mix(&[name.len() as u64, name.bytes().fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64))])
    }

    #[test]
    fn salts_are_the_earlier_name_derived_ones() {
        for s in Stage::ALL {
            assert_eq!(s.salt(), name_salt(s.name()), "{s}");
            assert_eq!(Stage::from_name(s.name()), Some(s));
        }
        assert_eq!(Stage::from_name("fine-tune"), None);
    }

    #[test]
    fn serialises_as_its_name() {
        for s in Stage::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.name()));
        }
    }
}
