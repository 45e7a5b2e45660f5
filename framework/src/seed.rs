//! Seeds: every random choice of a run derives from the recipe's seed mixed with where it is
//! made (stage, step, purpose), so a resumed run replays an uninterrupted one exactly.

/// Mixes integers into one well-spread 64-bit seed (splitmix64 steps).
pub fn mix(parts: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        h ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(h << 6).wrapping_add(h >> 2);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

/// What a run's models are built with, mixed after the run seed: the teacher
/// ([`crate::plan::Plan::teacher_seed`]) and the student — the distilled one, its baseline and
/// the untrained reference are built alike, so they start from the same weights.
pub mod build {
    /// The teacher's build.
    pub const TEACHER: u64 = 1;
    /// The student's build.
    pub const STUDENT: u64 = 2;
}

/// The random streams of one training step, mixed after (stage seed, stage salt, step).
pub mod step {
    /// The languages and examples of the step's batch.
    pub const BATCH: u64 = 1;
    /// What the losses and the model draw in the step (dropout, negatives).
    pub const COMPUTE: u64 = 2;
}
