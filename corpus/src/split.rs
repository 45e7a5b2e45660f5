//! Train/dev/test assignment by a stable hash of the msgid, so every translation of one
//! message lands in the same split: a model never sees in training the message it is tested
//! on, in any language.
//!
//! The hash must give the same value on every machine and every Rust version forever (the
//! snapshot and published results depend on it), which rules out std's `DefaultHasher`.

use serde::{Deserialize, Serialize};

/// FNV-1a, 64-bit (it lives in `kdx-fsio`, with the project's other content hashes, so the
/// framework's n-gram hashing shares it without depending on the corpus).
pub use kdx_fsio::stable_hash64;

/// MurmurHash3's 64-bit finaliser. FNV-1a's top bits barely depend on the last bytes, so two
/// messages that differ only at the end would fall in nearby fractions; this spreads every
/// input bit over every output bit before the value is used as a fraction.
pub(crate) fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Which part of the data a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Used to fit models.
    Train,
    /// Used to choose settings and for evaluation during training.
    Dev,
    /// Held out for the final figures.
    Test,
}

/// The split of a message, from its (cleaned) msgid alone.
///
/// `u = (mix64(stable_hash64(msgid)) >> 11) / 2^53` is a fraction in `[0, 1)`; the message
/// is `Test` when `u < test_frac`, `Dev` when `u < test_frac + dev_frac`, `Train` otherwise.
/// Fractions outside `[0, 1]` (or NaN) are clamped to that range, so no input panics.
pub fn split_of(msgid: &str, dev_frac: f64, test_frac: f64) -> Split {
    let clamp = |f: f64| if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
    let u = (mix64(stable_hash64(msgid.as_bytes())) >> 11) as f64 / (1u64 << 53) as f64;
    let test = clamp(test_frac);
    if u < test {
        Split::Test
    } else if u < test + clamp(dev_frac) {
        Split::Dev
    } else {
        Split::Train
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_test_vectors() {
        assert_eq!(stable_hash64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn splits_are_fixed() {
        // Pinned values: if these change, every published split changes with them.
        // (u values for reference: 0.3276, 0.2345, 0.0564, 0.0028, 0.5115.)
        let expected = [
            ("Open file", Split::Train),
            ("Cannot open file", Split::Dev),
            ("Quit the program", Split::Test),
            ("Read-only file system", Split::Test),
            ("Permission denied", Split::Train),
        ];
        for (msgid, want) in expected {
            assert_eq!(split_of(msgid, 0.2, 0.1), want, "{msgid}");
        }
    }

    #[test]
    fn fractions_are_respected_and_extremes_are_safe() {
        let n = 20_000;
        let mut counts = [0usize; 3];
        for i in 0..n {
            let s = split_of(&format!("message number {i}"), 0.1, 0.2);
            counts[s as usize] += 1;
        }
        let frac = |c: usize| c as f64 / n as f64;
        assert!((frac(counts[1]) - 0.1).abs() < 0.01, "{counts:?}");
        assert!((frac(counts[2]) - 0.2).abs() < 0.01, "{counts:?}");
        assert_eq!(split_of("x", 0.0, 0.0), Split::Train);
        assert_eq!(split_of("x", 0.0, 1.0), Split::Test);
        assert_eq!(split_of("x", f64::NAN, -3.0), Split::Train);
    }

    #[test]
    fn every_translation_of_a_message_shares_its_split() {
        // The split depends on the msgid only: whatever the locale or text, same answer.
        let rows = [
            ("fr", "Open the file", "Ouvrir le fichier"),
            ("de", "Open the file", "Die Datei öffnen"),
            ("ja", "Open the file", "ファイルを開きます"),
        ];
        let splits: Vec<Split> = rows.iter().map(|(_, msgid, _)| split_of(msgid, 0.3, 0.3)).collect();
        assert!(splits.windows(2).all(|w| w[0] == w[1]));
    }
}
