//! Seeded parameter initialisation, shared by every layer.

use rand::Rng;

use crate::param::Param;

/// Initialises a parameter uniformly in ±`bound` from a seeded RNG.
pub fn init_uniform(p: &mut Param, bound: f32, rng: &mut impl Rng) {
    for x in &mut p.data {
        *x = rng.gen_range(-bound..=bound);
    }
}
