//! The fused embedding bag over hashed ids, with a touched-rows backward.
//!
//! Row gather + mean in one pass, spread over the batch with rayon. The backward produces
//! gradients for the touched rows only ([`Grad::Rows`]): dfdx's generic gather would
//! materialise a dense gradient of the whole table every step, which dominated the step
//! time when measured.

use rand::Rng;
use rayon::prelude::*;

use super::init::init_uniform;
use crate::features::TokenRows;
use crate::param::{Grad, Param, RowGrad};

/// An embedding bag: each example is the mean of the table rows of its ids (the zero vector
/// for an empty bag).
#[derive(Clone, Debug)]
pub struct EmbeddingBag {
    /// `rows × dim` table.
    pub table: Param,
    /// Scratch: the slot of each row touched in the current batch (`u32::MAX` = none).
    slot: Vec<u32>,
}

impl EmbeddingBag {
    /// A table of `rows × dim`, initialised uniformly in ±1/dim as fastText does (small
    /// initial bag means keep the first steps stable).
    pub fn new(name: &str, rows: usize, dim: usize, rng: &mut impl Rng) -> EmbeddingBag {
        let mut table = Param::zeros(name, &[rows, dim], false);
        table.table = true;
        init_uniform(&mut table, 1.0 / dim as f32, rng);
        EmbeddingBag { table, slot: Vec::new() }
    }

    /// Width of a row.
    pub fn dim(&self) -> usize {
        self.table.shape[1]
    }

    /// `B × dim` bag means; an error (not a panic) for an id outside the table, which only
    /// damaged input can hold.
    pub fn forward(&self, x: &TokenRows) -> anyhow::Result<Vec<f32>> {
        let rows = self.table.shape[0];
        if let Some(bad) = x.ids.iter().find(|&&id| id as usize >= rows) {
            anyhow::bail!(
                "feature id {bad} is outside the embedding table of {rows} rows (damaged features?)"
            );
        }
        let d = self.dim();
        let table = &self.table.data;
        let mut out = vec![0f32; x.len() * d];
        out.par_chunks_mut(d).enumerate().with_min_len(16).for_each(|(i, row)| {
            let ids = x.bag(i);
            if ids.is_empty() {
                return;
            }
            for &id in ids {
                let r = &table[id as usize * d..(id as usize + 1) * d];
                row.iter_mut().zip(r).for_each(|(o, v)| *o += v);
            }
            let inv = 1.0 / ids.len() as f32;
            row.iter_mut().for_each(|o| *o *= inv);
        });
        Ok(out)
    }

    /// Back-propagates `dout` (`B × dim`) into a touched-rows gradient in `table.grad`.
    pub fn backward(&mut self, x: &TokenRows, dout: &[f32]) {
        let d = self.dim();
        let rows_total = self.table.shape[0];
        if self.slot.len() != rows_total {
            self.slot = vec![u32::MAX; rows_total];
        }
        let mut rows: Vec<u32> = Vec::new();
        let mut values: Vec<f32> = Vec::new();
        for i in 0..x.len() {
            let ids = x.bag(i);
            if ids.is_empty() {
                continue;
            }
            let inv = 1.0 / ids.len() as f32;
            let g = &dout[i * d..(i + 1) * d];
            for &id in ids {
                let s = &mut self.slot[id as usize];
                if *s == u32::MAX {
                    *s = rows.len() as u32;
                    rows.push(id);
                    values.extend(std::iter::repeat_n(0.0, d));
                }
                let k = *s as usize;
                values[k * d..(k + 1) * d].iter_mut().zip(g).for_each(|(a, b)| *a += b * inv);
            }
        }
        for &r in &rows {
            self.slot[r as usize] = u32::MAX;
        }
        // Unique by construction (the slot map), in range because every id indexed the table above.
        self.table.grad = Grad::Rows(
            RowGrad::new(rows, values, rows_total, d).expect("touched rows are unique and in range"),
        );
    }
}
