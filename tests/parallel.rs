//! all-MiniLM-L6-v2 made multilingual end to end, small: a `gettext-parallel` recipe with
//! the real teacher (fetched by scripts/fetch-minilm.sh) and an n-gram student, its
//! `retrieval.csv` and `languages.csv`, then `kdx embed` and `kdx eval --parallel` on the run's
//! exported student, whose vectors are in the teacher's space; and the plan-time refusal of
//! a teacher directory that is not there, saying how to fetch it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use kdx_framework::report::{read_csv, LanguageRow, MetricRow, RunRow};
use kdx_framework::retrieval::RetrievalRow;

fn kdx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kdx")).args(args).output().expect("running kdx")
}

/// Six languages in four scripts, 300 training messages each.
fn recipe(dir: &Path, teacher: &Path) -> PathBuf {
    let text = format!(
        r#"[experiment]
name = "parallel"
seed = 11

[data]
plugin = "gettext-parallel"
corpus = "{corpus}"
languages = ["fr", "de", "ru", "ja", "ar", "hi"]
max_train_per_language = 300
dev_fraction = 0.01
test_fraction = 0.02

[teacher]
plugin = "hf-encoder"
path = "{teacher}"

[student]
plugin = "ngram-mlp"
ngrams = [1, 4]
buckets = 32768
dim = 64
hidden = []

[[loss]]
plugin = "hidden-mse"
projection = "always"

[sampler]
plugin = "proportional"

[train]
steps = 800
batch = 128
optimizer = {{ kind = "adam", lr = 3e-3, schedule = "linear" }}
eval_every = 400
"#,
        corpus = common::root().join("data/gettext-corpus.tsv.gz").display(),
        teacher = teacher.display()
    );
    let p = dir.join("parallel.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn minilm_distilled_into_an_ngram_student_retrieves_translations_and_embeds_in_its_space() {
    let minilm = common::minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let r = recipe(tmp.path(), &minilm);
    let out = kdx(&["run", r.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "kdx run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let dir = results.join("parallel/run");

    let rows: Vec<RetrievalRow> = read_csv(&dir.join("retrieval.csv")).unwrap();
    assert!(rows.iter().all(|r| r.set == "test"), "no [retrieval] sets: the test split only");
    let of = |model: &str, lang: &str| rows.iter().find(|r| r.model == model && r.lang == lang).unwrap();
    let langs = ["ar", "de", "fr", "hi", "ja", "ru"];
    for model in ["student", "mixed", "teacher", "untrained"] {
        let got: Vec<&str> = rows.iter().filter(|r| r.model == model).map(|r| r.lang.as_str()).collect();
        assert_eq!(
            got,
            [&langs[..], &["macro"]].concat(),
            "{model}: a row per language (English has nothing to retrieve)"
        );
    }
    let (s, t, u) = (of("student", "macro"), of("teacher", "macro"), of("untrained", "macro"));
    for l in langs {
        let r = of("student", l);
        assert!(
            r.train_pairs == 300 && r.sources > 60,
            "{l}: {} training pairs, {} candidates",
            r.train_pairs,
            r.sources
        );
        // Far above chance (< 0.02) in both directions, in every script.
        assert!(r.to_en > 0.3 && r.from_en > 0.3, "{l}: student {} / {}", r.to_en, r.from_en);
    }
    // Distillation, not the architecture: the student is far above itself untrained and above
    // the English teacher reading the translations (which is hopeless on Devanagari, Arabic
    // and Japanese), and it embeds English close to where the teacher does.
    assert!(
        s.to_en > u.to_en + 0.3 && s.from_en > u.from_en + 0.3,
        "student {} vs untrained {}",
        s.to_en,
        u.to_en
    );
    for l in ["ar", "hi", "ja", "ru"] {
        assert!(
            of("student", l).to_en > of("teacher", l).to_en + 0.2,
            "{l}: student vs teacher on translations"
        );
    }
    // 0.45 when measured: this small student (64 wide, 800 steps) is far from the
    // flagship recipe's; an unrelated vector would be near 0.
    assert!(s.en_cosine.unwrap() > 0.3, "student–teacher cosine on English {:?}", s.en_cosine);
    assert!(s.to_en > t.to_en);

    // The dev curve is the task's: translation → English retrieval on the dev pairs through
    // the projection (among each language's dev messages: fewer candidates than test has),
    // far above the chance of the untrained language-label head, and rising.
    let metrics: Vec<MetricRow> = read_csv(&dir.join("metrics.csv")).unwrap();
    let dev: Vec<&MetricRow> =
        metrics.iter().filter(|m| m.split == "dev" && m.stage == "distill" && m.lang == "macro").collect();
    assert_eq!(dev.iter().map(|m| m.step).collect::<Vec<_>>(), [400, 800]);
    assert!(
        dev.iter().all(|m| m.loss.is_nan() && m.teacher_acc.is_none()),
        "retrieval rows have no cross-entropy"
    );
    assert!(
        dev[1].acc > 0.3 && dev[1].acc >= dev[0].acc - 0.02,
        "dev retrieval {} then {}",
        dev[0].acc,
        dev[1].acc
    );

    // languages.csv and run.csv carry translation → English accuracy: teacher = the teacher
    // on translations, baseline = untrained, agreement = cosine to the teacher on English.
    let lang_rows: Vec<LanguageRow> = read_csv(&dir.join("languages.csv")).unwrap();
    assert_eq!(lang_rows.iter().map(|r| r.lang.as_str()).collect::<Vec<_>>(), langs);
    for r in &lang_rows {
        let st = of("student", &r.lang);
        assert_eq!(
            (r.student_acc, r.teacher_acc, r.agreement),
            (st.to_en, of("teacher", &r.lang).to_en, st.en_cosine.unwrap())
        );
        assert_eq!(r.baseline_acc, Some(of("untrained", &r.lang).to_en));
    }
    let run: RunRow = read_csv(&dir.join("run.csv")).unwrap().remove(0);
    assert_eq!(
        (run.student_macro_acc, run.teacher_macro_acc, run.baseline_macro_acc),
        (s.to_en, t.to_en, Some(u.to_en))
    );
    assert_eq!(run.flags, "", "neither model is at chance");

    // The exported student embeds in the teacher's 384-dimensional space: on English its
    // vectors point where all-MiniLM-L6-v2's do.
    let english = tmp.path().join("english.txt");
    std::fs::write(&english, "Open the file\nSave changes before closing?\nThe printer is out of paper\n")
        .unwrap();
    let vectors = |model: &Path| -> Vec<Vec<f32>> {
        let out = kdx(&["embed", model.to_str().unwrap(), english.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').map(|v| v.parse().unwrap()).collect())
            .collect()
    };
    let (student, teacher) = (vectors(&dir), vectors(&minilm));
    assert_eq!((student.len(), student[0].len(), teacher[0].len()), (3, 384, 384));
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
    };
    let mean = student.iter().zip(&teacher).map(|(a, b)| cos(a, b)).sum::<f32>() / 3.0;
    // 0.49 when measured, as the run's en_cosine; unprojected it would not even be 384 wide.
    assert!(mean > 0.3, "exported student vs teacher on English: cosine {mean}");

    // `kdx eval --parallel` on the run's student scores a user's own pairs the same way.
    let test_pairs: Vec<String> = read_test_pairs(&r);
    let file = tmp.path().join("pairs.tsv");
    std::fs::write(&file, test_pairs.join("\n")).unwrap();
    let out = kdx(&["eval", dir.to_str().unwrap(), "--parallel", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let acc = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap()
            .split_whitespace()
            .nth(4)
            .unwrap()
            .parse()
            .unwrap()
    };
    // The French test pairs, as the run scored them.
    assert!((acc("translation → source") - of("student", "fr").to_en).abs() < 1e-3, "{text}");
    assert!((acc("source → translation") - of("student", "fr").from_en).abs() < 1e-3, "{text}");
}

/// The recipe's French test pairs as `source<TAB>translation` lines, from `kdx examples`.
fn read_test_pairs(recipe: &Path) -> Vec<String> {
    let out = kdx(&["examples", recipe.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (split, lang, src, txt) = (col("split"), col("lang"), col("source"), col("text"));
    lines
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|c| c[split] == "test" && c[lang] == "fr")
        .map(|c| format!("{}\t{}", c[src], c[txt]))
        .collect()
}

#[test]
fn a_missing_teacher_directory_is_refused_at_plan_time_with_how_to_fetch_it() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), &tmp.path().join("models/all-MiniLM-L6-v2"));
    let out = kdx(&["validate", r.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("parallel.toml:") && text.contains("teacher.path"), "located at the key: {text}");
    assert!(
        text.contains("does not exist") && text.contains("scripts/fetch-minilm.sh"),
        "says how to fetch it: {text}"
    );
}
