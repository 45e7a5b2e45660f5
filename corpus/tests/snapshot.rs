//! The shipped snapshot (`data/gettext-corpus.tsv.gz`) agrees with its `data/MANIFEST.md`:
//! same rows per locale, same sha256, rows in the documented order.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kdx_corpus::load::{load, read_manifest_counts};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

#[test]
fn snapshot_matches_its_manifest() {
    let snapshot = data_dir().join("gettext-corpus.tsv.gz");
    let manifest = data_dir().join("MANIFEST.md");
    let corpus = load(&snapshot).expect("the shipped snapshot loads");
    let stated = read_manifest_counts(&manifest).expect("the manifest has a per-locale table");

    let mut actual: BTreeMap<String, usize> = BTreeMap::new();
    for row in &corpus.rows {
        *actual.entry(row.locale.clone()).or_default() += 1;
    }
    assert_eq!(actual, stated, "rows per locale differ from MANIFEST.md");

    fn key(r: &kdx_corpus::load::Row) -> (&str, &str, &str, &str) {
        (&r.locale, &r.domain, &r.msgid, &r.text)
    }
    assert!(
        corpus.rows.windows(2).all(|w| key(&w[0]) < key(&w[1])),
        "rows are not sorted by (locale, domain, msgid, text) without duplicates"
    );

    let bytes = std::fs::read(&snapshot).expect("read snapshot");
    let sha = kdx_fsio::sha256_hex(&bytes);
    let text = std::fs::read_to_string(&manifest).expect("read manifest");
    assert!(text.contains(&format!("sha256: `{sha}`")), "MANIFEST.md does not state sha256 {sha}");
}
