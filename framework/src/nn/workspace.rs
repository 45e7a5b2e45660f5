//! A pool of activation buffers reused from step to step.
//!
//! A transformer step needs a few dozen buffers of up to tens of megabytes. Allocated fresh
//! each step, the allocator hands large ones back to the kernel and every page faults in
//! again on first touch (a third of `kdx embed`'s time was system time). The model keeps
//! the buffers of the last pass here and takes them again, so after the first step of a
//! given size nothing is allocated.

use std::sync::Mutex;

/// Buffers kept for reuse. Cloning gives an empty pool (buffers are scratch, not state).
#[derive(Default, Debug)]
pub struct Workspace {
    free: Mutex<Vec<Vec<f32>>>,
}

/// At most this many idle buffers are kept (the largest), bounding what an idle model holds.
const KEEP: usize = 96;

impl Clone for Workspace {
    fn clone(&self) -> Workspace {
        Workspace::default()
    }
}

impl Workspace {
    /// A zeroed buffer of `len` numbers: the smallest kept one that is large enough, or a
    /// new one. When none is large enough, the largest kept one is dropped: it is the stale
    /// version of this very request from a smaller pass (a batch of shorter texts), and
    /// keeping it would let the pool grow with every new size it meets — by the number of
    /// buffers, not their bytes — when a long stream (`kdx embed` of a large file) sees many.
    /// So the pool holds about one pass's buffers, of the largest pass seen.
    pub fn take(&self, len: usize) -> Vec<f32> {
        let found = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if best.is_none() {
                if let Some(i) = free.iter().enumerate().max_by_key(|(_, b)| b.capacity()).map(|(i, _)| i) {
                    free.swap_remove(i);
                }
            }
            best.map(|i| free.swap_remove(i))
        };
        match found {
            Some(mut b) => {
                b.clear();
                b.resize(len, 0.0);
                b
            }
            None => vec![0.0; len],
        }
    }

    /// Hands a buffer back for a later [`Workspace::take`].
    pub fn give(&self, b: Vec<f32>) {
        if b.capacity() == 0 {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push(b);
        if free.len() > KEEP {
            // Drop the smallest: the large ones are the expensive ones to fault in again.
            if let Some(i) = free.iter().enumerate().min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i) {
                free.swap_remove(i);
            }
        }
    }

    /// Hands back every buffer of `bs`.
    pub fn give_all(&self, bs: impl IntoIterator<Item = Vec<f32>>) {
        bs.into_iter().for_each(|b| self.give(b));
    }

    /// Numbers held by idle buffers (for tests and memory reports).
    pub fn held(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).iter().map(Vec::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_zeroed() {
        let ws = Workspace::default();
        let mut a = ws.take(1000);
        a.fill(3.0);
        let ptr = a.as_ptr();
        ws.give(a);
        let b = ws.take(800);
        assert_eq!(b.as_ptr(), ptr, "the kept buffer serves a smaller request");
        assert!(b.iter().all(|&x| x == 0.0) && b.len() == 800);
        let c = ws.take(800);
        assert_ne!(c.as_ptr(), ptr, "a buffer in use is not handed out twice");
    }

    #[test]
    fn passes_of_growing_sizes_keep_about_one_pass_of_buffers() {
        // Passes of three buffers each, every pass a little larger than the last (batches of
        // longer and longer texts): the pool holds one pass's worth, not every size it met.
        let ws = Workspace::default();
        for n in 1..200usize {
            let pass: Vec<Vec<f32>> = [n * 10, n * 40, n * 10].iter().map(|&len| ws.take(len)).collect();
            ws.give_all(pass);
        }
        assert!(ws.held() <= 3 * 199 * 40, "{} numbers held", ws.held());
        assert_eq!(ws.free.lock().unwrap().len(), 3);
    }
}
