//! Per-language example queues: the order in which a stage sees each language's examples.

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::seed::mix;

/// Per-language example queues: each language's examples are drawn without replacement
/// and reshuffled at every pass.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Queues {
    /// Example indices per language (in original order; shuffled per pass on the fly).
    #[serde(skip)]
    members: Vec<Vec<usize>>,
    /// Position in the current pass, per language.
    pub cursor: Vec<usize>,
    /// Passes completed, per language.
    pub pass: Vec<u64>,
    #[serde(skip)]
    order: Vec<Vec<usize>>,
    #[serde(skip)]
    seed: u64,
}

impl Queues {
    /// Queues over `langs` (the language of each example) for `n_langs` languages.
    pub fn new(langs: &[u32], n_langs: usize, allowed: Option<&[bool]>, seed: u64) -> Queues {
        let mut members = vec![Vec::new(); n_langs];
        for (i, &l) in langs.iter().enumerate() {
            if allowed.is_none_or(|a| a[l as usize]) {
                members[l as usize].push(i);
            }
        }
        let mut q = Queues {
            cursor: vec![0; n_langs],
            pass: vec![0; n_langs],
            order: vec![Vec::new(); n_langs],
            members,
            seed,
        };
        for l in 0..n_langs {
            q.reshuffle(l);
        }
        q
    }

    fn reshuffle(&mut self, l: usize) {
        let mut o = self.members[l].clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(&[self.seed, l as u64, self.pass[l]]));
        o.shuffle(&mut rng);
        self.order[l] = o;
    }

    /// Restores cursors and passes (from a checkpoint); refuses ones of another shape.
    pub fn restore(&mut self, cursor: Vec<usize>, pass: Vec<u64>) -> Result<()> {
        let n = self.members.len();
        anyhow::ensure!(
            cursor.len() == n && pass.len() == n,
            "the example queues hold {} cursors and {} passes for {n} languages",
            cursor.len(),
            pass.len()
        );
        for (l, &c) in cursor.iter().enumerate() {
            anyhow::ensure!(
                c <= self.members[l].len(),
                "queue cursor {c} of language {l} is past its {} examples",
                self.members[l].len()
            );
        }
        self.cursor = cursor;
        self.pass = pass;
        for l in 0..n {
            self.reshuffle(l);
        }
        Ok(())
    }

    /// Number of examples of each language.
    pub fn sizes(&self) -> Vec<usize> {
        self.members.iter().map(Vec::len).collect()
    }

    /// The next example of language `l`.
    pub fn next(&mut self, l: usize) -> usize {
        if self.cursor[l] >= self.order[l].len() {
            self.pass[l] += 1;
            self.cursor[l] = 0;
            self.reshuffle(l);
        }
        let i = self.order[l][self.cursor[l]];
        self.cursor[l] += 1;
        i
    }
}
