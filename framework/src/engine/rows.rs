//! Per-row arithmetic on a batch of logits: the prediction and the cross-entropy of each
//! row, for the training statistics and the metrics alike.

/// Cross-entropy of each row of `logits` against `target`.
pub fn row_ce(logits: &[f32], classes: usize, target: impl Fn(usize) -> usize) -> Vec<f64> {
    logits
        .chunks(classes)
        .enumerate()
        .map(|(i, z)| {
            let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = m + z.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            lse - z[target(i)] as f64
        })
        .collect()
}

/// Index of the largest entry of each row.
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|z| {
            z.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
        })
        .collect()
}
