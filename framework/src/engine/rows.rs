//! Per-row arithmetic on a batch: the prediction and the cross-entropy of each row of logits
//! (for the training statistics and the metrics alike), rows gathered by index, and the
//! running per-language losses a batch feeds.

use crate::sampler::LangStat;

/// Cross-entropy of each row of `logits` against `target`.
pub fn row_ce(logits: &[f32], classes: usize, target: impl Fn(usize) -> usize) -> Vec<f64> {
    logits
        .chunks(classes)
        .enumerate()
        .map(|(i, z)| kdx_sdk::math::log_sum_exp(z, 1.0) - z[target(i)] as f64)
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

pub(super) fn gather_rows(m: &[f32], width: usize, idx: &[usize]) -> Vec<f32> {
    let mut v = Vec::with_capacity(idx.len() * width);
    for &i in idx {
        v.extend_from_slice(&m[i * width..(i + 1) * width]);
    }
    v
}

const EMA: f64 = 0.02;

/// Updates the running per-language losses with this batch's examples.
pub(super) fn update_stats(
    stats: &mut [LangStat],
    logits: &[f32],
    classes: usize,
    labels: &[u32],
    teacher: Option<&[f32]>,
    langs: &[u32],
    labels_visible: bool,
) {
    let target: Vec<usize> = if labels_visible || teacher.is_none() {
        labels.iter().map(|&l| l as usize).collect()
    } else {
        argmax_rows(teacher.unwrap_or_default(), classes)
    };
    let s_ce = row_ce(logits, classes, |i| target[i]);
    let t_ce = teacher.map(|t| row_ce(t, classes, |i| target[i]));
    for (i, &l) in langs.iter().enumerate() {
        let st = &mut stats[l as usize];
        let first = st.drawn == 0;
        let a = if first { 1.0 } else { EMA };
        st.student_loss += a * (s_ce[i] - st.student_loss);
        if let Some(t) = &t_ce {
            st.teacher_loss += a * (t[i] - st.teacher_loss);
        }
        st.drawn += 1;
    }
}
