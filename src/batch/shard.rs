//! `--shard K/N`: a share of a batch, by run hash, so that the shards are disjoint and whole.

use anyhow::Result;

use super::discover::sha_hex;

/// A share of a batch: the runs whose hash is `index` modulo `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// K, in `0..count`.
    pub index: u64,
    /// N, at least 1.
    pub count: u64,
}

impl Shard {
    /// Parses `K/N`.
    pub fn parse(s: &str) -> Result<Shard> {
        let (k, n) =
            s.split_once('/').ok_or_else(|| anyhow::anyhow!("expected K/N (e.g. 0/4), found `{s}`"))?;
        let index: u64 = k.trim().parse().map_err(|_| anyhow::anyhow!("`{k}` is not a shard number"))?;
        let count: u64 = n.trim().parse().map_err(|_| anyhow::anyhow!("`{n}` is not a shard count"))?;
        if count == 0 {
            return Err(anyhow::anyhow!("the shard count must be at least 1"));
        }
        if index >= count {
            return Err(anyhow::anyhow!(
                "shard {index} of {count} does not exist: shards are numbered 0 to {}",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether a run with this hash belongs to the shard.
    pub fn contains(&self, hash: &str) -> bool {
        hash_mod(hash, self.count) == self.index
    }
}

/// `hash` (hex) as a number, modulo `n`; other strings are hashed first.
pub fn hash_mod(hash: &str, n: u64) -> u64 {
    let hex = if !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        hash.to_string()
    } else {
        sha_hex(hash)
    };
    hex.bytes().fold(0u64, |r, b| (r * 16 + (b as char).to_digit(16).unwrap_or(0) as u64) % n)
}
