//! The shipped snapshot (`data/gettext-corpus.tsv.gz`) agrees with its `data/MANIFEST.json`
//! (and `MANIFEST.md`): same rows per locale, same sha256, rows in the documented order.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kdx_corpus::load::{load, read_manifest};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

#[test]
fn snapshot_matches_its_manifest() {
    let snapshot = data_dir().join("gettext-corpus.tsv.gz");
    let manifest = read_manifest(&data_dir().join("MANIFEST.json")).expect("the manifest reads");
    let corpus = load(&snapshot).expect("the shipped snapshot loads");
    let stated: BTreeMap<String, usize> = manifest.locales.iter().map(|(l, c)| (l.clone(), c.rows)).collect();

    let mut actual: BTreeMap<String, usize> = BTreeMap::new();
    for row in &corpus.rows {
        *actual.entry(row.locale.clone()).or_default() += 1;
    }
    assert_eq!(actual, stated, "rows per locale differ from MANIFEST.json");

    fn key(r: &kdx_corpus::load::Row) -> (&str, &str, &str, &str) {
        (&r.locale, &r.domain, &r.msgid, &r.text)
    }
    assert!(
        corpus.rows.windows(2).all(|w| key(&w[0]) < key(&w[1])),
        "rows are not sorted by (locale, domain, msgid, text) without duplicates"
    );

    let bytes = std::fs::read(&snapshot).expect("read snapshot");
    let sha = kdx_fsio::sha256_hex(&bytes);
    assert_eq!((manifest.sha256.as_str(), manifest.bytes), (sha.as_str(), bytes.len() as u64));
    let text = std::fs::read_to_string(data_dir().join("MANIFEST.md")).expect("read MANIFEST.md");
    assert!(text.contains(&format!("sha256: `{sha}`")), "MANIFEST.md does not state sha256 {sha}");
}
