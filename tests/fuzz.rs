//! Seeded mutation fuzzing of everything kdx reads back: the artefacts of a real small run
//! (sealed checkpoints, the teacher cache and its outputs, feature caches, exported model
//! cards and weights), recipes and TSV data. Every mutated input must give an error or a
//! valid result — never a panic (and never an abort: sizes are checked before allocation).
//!
//! CI runs a short loop. The long one, with the number of cases it tried printed:
//!
//! ```sh
//! KDX_FUZZ_CASES=20000 cargo test --release --test fuzz -- --nocapture
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use kdx_framework::features::TokenRows;
use kdx_framework::registry::{build_standalone, Instance, PluginKind};
use kdx_plugins as _;

mod common;
use common::{good_recipe, root};

/// xorshift64*: seeded, so a failing case is reproduced by its number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random damage: truncate, flip bytes, delete or duplicate a range, insert junk, or
/// (in text) replace a number by a very large, negative, zero or non-numeric one.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    let n = b.len().max(1);
    match rng.below(7) {
        0 => b.truncate(rng.below(n)),
        1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(n);
                if i < b.len() {
                    b[i] ^= 1 << rng.below(8);
                }
            }
        }
        2 => {
            let (i, len) = (rng.below(n), 1 + rng.below(64));
            b.drain(i.min(b.len())..(i + len).min(b.len()));
        }
        3 => {
            let (i, len) = (rng.below(n), 1 + rng.below(64));
            let piece = b[i.min(b.len())..(i + len).min(b.len())].to_vec();
            let at = rng.below(n).min(b.len());
            b.splice(at..at, piece);
        }
        4 => {
            let at = rng.below(n).min(b.len());
            let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            b.splice(at..at, junk);
        }
        _ => {
            // A number of the text: its digits replaced.
            let digits: Vec<usize> = (0..b.len())
                .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()))
                .collect();
            if let Some(&start) = digits.get(rng.below(digits.len())) {
                let end = (start..b.len()).find(|&i| !b[i].is_ascii_digit()).unwrap_or(b.len());
                let choices = [
                    "0",
                    "-1",
                    "99999999999999999999",
                    "4294967296",
                    "1e308",
                    "nan",
                    "18446744073709551615",
                    "3",
                ];
                b.splice(start..end, choices[rng.below(choices.len())].bytes());
            }
        }
    }
    b
}

static CASES: AtomicUsize = AtomicUsize::new(0);

/// Writes each mutation of `original` to `path` and calls `read`; a panic fails the test
/// with the case's seed.
fn fuzz(what: &str, path: &Path, original: &[u8], cases: usize, seed: u64, read: &dyn Fn(&Path)) {
    let mut rng = Rng(seed);
    for case in 0..cases {
        let bytes = mutate(&mut rng, original);
        std::fs::write(path, &bytes).unwrap();
        CASES.fetch_add(1, Ordering::Relaxed);
        if catch_unwind(AssertUnwindSafe(|| read(path))).is_err() {
            std::fs::write(path, original).unwrap();
            panic!("{what}: case {case} (seed {seed}) panicked; its input is {} bytes", bytes.len());
        }
    }
    std::fs::write(path, original).unwrap();
}

fn find(dir: &Path, pred: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            find(&p, pred, out);
        } else if pred(&p) {
            out.push(p);
        }
    }
}

#[test]
fn mutated_artefacts_give_errors_never_panics() {
    let cases: usize = std::env::var("KDX_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(150);
    // Keep the default hook's messages out of the log: panics are counted, not printed.
    std::panic::set_hook(Box::new(|_| {}));
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let recipe = tmp.path().join("fuzz.toml");
    let text = good_recipe("batch-good");
    std::fs::write(&recipe, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(["run", recipe.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = results.join("batch-good/run");

    // Sealed files: checkpoints, the teacher cache and its outputs.
    let mut sealed = Vec::new();
    find(&run.join("checkpoints"), &|p| p.extension().is_some_and(|e| e == "safetensors"), &mut sealed);
    find(&results.join(".cache"), &|p| p.extension().is_some_and(|e| e == "safetensors"), &mut sealed);
    assert!(sealed.len() >= 4, "{sealed:?}");
    for (i, p) in sealed.iter().enumerate() {
        let original = std::fs::read(p).unwrap();
        fuzz("sealed file", p, &original, cases, 11 + i as u64, &|p| {
            let _ = kdx_framework::store::read_sealed(p);
        });
    }

    // Feature caches.
    let mut bags = Vec::new();
    find(&results.join(".cache/features"), &|p| p.extension().is_some_and(|e| e == "bags"), &mut bags);
    let original = std::fs::read(&bags[0]).unwrap();
    fuzz("feature cache", &bags[0], &original, cases, 23, &|p| {
        let _ = TokenRows::from_bytes(&std::fs::read(p).unwrap());
    });

    // The exported student: its card and its weights; a model that loads must predict.
    let sample = TokenRows { offsets: vec![0, 2, 3], ids: vec![1, 2, 3], langs: vec![0, 1] };
    let load = |_: &Path| {
        if let Ok((model, _)) = kdx_framework::export::load(&run.join("student")) {
            let _ = model.forward(&sample);
        }
    };
    for (ext, seed) in [("json", 31), ("safetensors", 37)] {
        let p = run.join(format!("student.{ext}"));
        let original = std::fs::read(&p).unwrap();
        fuzz("model card", &p, &original, cases, seed, &load);
    }

    // The recipe, planned as `kdx validate` plans it.
    fuzz("recipe", &recipe, text.as_bytes(), cases, 41, &|p| {
        let _ = kdx_framework::plan::load_plans(p);
    });

    // TSV data, loaded by the `tsv` dataset.
    let tsv = tmp.path().join("data.tsv");
    let original = std::fs::read(root().join("tests/data/tiny-lid.tsv")).unwrap();
    fuzz("tsv data", &tsv, &original, cases, 43, &|p| {
        let mut params = toml::Table::new();
        params.insert("train".into(), toml::Value::String(p.display().to_string()));
        if let Ok(Instance::Dataset(d)) = build_standalone(PluginKind::Dataset, "tsv", params, "fuzz") {
            let _ = d.load().map(|t| t.validate());
        }
    });
    let _ = std::panic::take_hook();
    eprintln!("fuzz: {} cases tried, no panic", CASES.load(Ordering::Relaxed));
}

/// The hostile places a shared machine has, each against a real run: a results file, a run
/// directory, an experiment directory or `checkpoints` that is a symbolic link someone
/// planted to a file or folder outside. kdx refuses each, naming the link, and what the link
/// points to is left as it was. (Temporary names, device and FIFO outputs: the `kdx-fsio`
/// unit tests; endless lines: `tests/faults.rs`; huge declared sizes: `tests/hf_exactness.rs`;
/// signals: `tests/faults.rs`. docs/guarantees.md lists them.)
#[test]
fn planted_links_in_the_results_directory_are_refused_and_their_targets_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let recipe = tmp.path().join("links.toml");
    std::fs::write(&recipe, good_recipe("links")).unwrap();
    let kdx = |extra: &[&str]| {
        let mut args =
            vec!["run", recipe.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet"];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_kdx")).args(&args).output().unwrap()
    };
    let out = kdx(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = results.join("links/run");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("run/checkpoints")).unwrap();
    std::fs::write(outside.join("victim.csv"), "precious").unwrap();
    std::fs::write(outside.join("run/checkpoints/keep.txt"), "precious").unwrap();
    let untouched = || {
        assert_eq!(std::fs::read(outside.join("victim.csv")).unwrap(), b"precious");
        assert_eq!(std::fs::read(outside.join("run/checkpoints/keep.txt")).unwrap(), b"precious");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 2, "nothing new outside");
    };
    let refused = |what: &str, link: &Path| {
        let out = kdx(&[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: the run was not refused");
        assert!(err.contains(&link.display().to_string()) && err.contains("symbolic link"), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        untouched();
    };
    // A report file that is a link to someone's file.
    let metrics = run.join("metrics.csv");
    std::fs::remove_file(&metrics).unwrap();
    std::os::unix::fs::symlink(outside.join("victim.csv"), &metrics).unwrap();
    refused("metrics.csv", &metrics);
    std::fs::remove_file(&metrics).unwrap();
    // `checkpoints`, the run directory and the experiment directory as links to a folder
    // outside (whose checkpoints a run would clear).
    let checkpoints = run.join("checkpoints");
    std::fs::remove_dir_all(&checkpoints).unwrap();
    std::os::unix::fs::symlink(outside.join("run/checkpoints"), &checkpoints).unwrap();
    refused("checkpoints", &checkpoints);
    std::fs::remove_file(&checkpoints).unwrap();
    let moved = tmp.path().join("moved");
    std::fs::rename(&run, &moved).unwrap();
    std::os::unix::fs::symlink(outside.join("run"), &run).unwrap();
    refused("run directory", &run);
    std::fs::remove_file(&run).unwrap();
    std::fs::rename(&moved, &run).unwrap();
    let experiment = results.join("links");
    std::fs::rename(&experiment, &moved).unwrap();
    std::os::unix::fs::symlink(&outside, &experiment).unwrap();
    refused("experiment directory", &experiment);
    std::fs::remove_file(&experiment).unwrap();
    std::fs::rename(&moved, &experiment).unwrap();
    // Without the links, the same run goes through again.
    let out = kdx(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
