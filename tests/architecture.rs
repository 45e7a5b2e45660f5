//! The architecture invariants of ARCHITECTURE.md that a test can hold the code to.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The core is a library: no command-line, terminal or plotting crate anywhere in its
/// dependency tree (they belong to the application, the `kdx` package).
#[test]
fn core_has_no_application_dependencies() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", "kdx-framework", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(root())
        .output()
        .expect("running cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains(&"dfdx") && names.contains(&"kdx-sdk"), "unexpected tree:\n{tree}");
    for banned in ["clap", "clap_complete", "plotters", "indicatif", "ctrlc"] {
        assert!(!names.contains(&banned), "kdx-framework depends on {banned}:\n{tree}");
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// No module of the core grows past ~600 lines (its tests included): a module that does is
/// holding more than one job.
#[test]
fn core_modules_stay_small() {
    let mut files = Vec::new();
    rust_files(&root().join("framework/src"), &mut files);
    let big: Vec<String> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > 650)
        .map(|(f, n)| format!("{} ({n} lines)", f.display()))
        .collect();
    assert!(big.is_empty(), "split these: {big:?}");
}

/// The core names no plugin of the plugins crate: it compiles without them, so it must not
/// need them at run time either.
#[test]
fn core_names_no_built_in_plugin() {
    let mut files = Vec::new();
    rust_files(&root().join("framework/src"), &mut files);
    let plugins: Vec<String> = ["dataset", "model", "loss", "sampler"]
        .iter()
        .flat_map(|k| std::fs::read_dir(root().join("plugins/src").join(k)).unwrap())
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().replace('_', "-"))
        .collect();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Tests and documentation may mention plugins; code may not look one up.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for p in &plugins {
            for needle in
                [format!("loss(\"{p}\""), format!("sampler(\"{p}\""), format!("find(PluginKind::Loss, \"{p}\""), format!("\"{p}\", toml")]
            {
                assert!(!code.contains(&needle), "{} names the plugin `{p}` ({needle})", f.display());
            }
        }
    }
}

/// Every file kdx writes goes through `kdx_fsio` (an exclusive, unpredictable temporary
/// renamed over a regular file, or a user's output written as `>` would): no other way of
/// creating a file appears outside tests. Locks and the batch log are opened in place on
/// purpose (a lock is never replaced; a log is appended to); they are listed here by file.
#[test]
fn every_file_is_written_through_fsio() {
    const OPENED_IN_PLACE: [(&str, usize); 3] = [
        ("framework/src/engine/mod.rs", 1),     // the run lock
        ("framework/src/engine/teacher.rs", 1), // the teacher cache lock
        ("src/batch.rs", 2),                    // the summary lock, batch.log (appended)
    ];
    let mut files = Vec::new();
    for dir in ["framework/src", "plugins/src", "src", "corpus/src", "recipe/src", "sdk/src"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut found = Vec::new();
    for f in &files {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue; // a module of unit tests
        }
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests sit at the end of a file, after `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let rel = f.strip_prefix(root()).unwrap().to_string_lossy().into_owned();
        for pattern in ["fs::write(", "File::create(", "copy(", ".create(true)"] {
            let n = code.matches(pattern).count();
            let allowed = OPENED_IN_PLACE.iter().find(|(p, _)| *p == rel).map_or(0, |(_, k)| *k);
            let allowed = if pattern == ".create(true)" { allowed } else { 0 };
            if n > allowed {
                found.push(format!("{rel}: {n} × `{pattern}`"));
            }
        }
    }
    assert!(found.is_empty(), "files written outside kdx_fsio: {found:?}");
}
