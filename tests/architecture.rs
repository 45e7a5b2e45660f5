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
        .args([
            "tree",
            "--offline",
            "-p",
            "kdx-framework",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
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

/// The code of a source file: without its tests (from the first `#[cfg(test)]`) and its
/// comment lines (a doc link names no dependency), line numbers kept.
fn code_of(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines().map(|l| if l.trim_start().starts_with("//") { "" } else { l }).collect::<Vec<_>>().join("\n")
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
        let code = code_of(&text);
        let code = code.as_str();
        for p in &plugins {
            for needle in [
                format!("loss(\"{p}\""),
                format!("sampler(\"{p}\""),
                format!("find(PluginKind::Loss, \"{p}\""),
                format!("\"{p}\", toml"),
            ] {
                assert!(!code.contains(&needle), "{} names the plugin `{p}` ({needle})", f.display());
            }
        }
    }
}

/// The core never prints: a run reports through `event::Observer` only, so the console, the
/// JSON lines of `--events` and `kdx batch` see the same things (ARCHITECTURE.md).
#[test]
fn the_core_never_prints() {
    let mut files = Vec::new();
    rust_files(&root().join("framework/src"), &mut files);
    let printing: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let code = code_of(&std::fs::read_to_string(f).unwrap());
            ["println!(", "eprintln!(", "print!(", "eprint!(", "dbg!("]
                .into_iter()
                .filter(move |m| code.contains(m))
                .map(move |m| format!("{}: {m}", f.display()))
        })
        .collect();
    assert!(printing.is_empty(), "the core prints: {printing:?}");
}

/// Every file kdx writes goes through `kdx_fsio` (an exclusive, unpredictable temporary
/// renamed over a regular file, or a user's output written as `>` would): no other way of
/// creating a file appears outside tests. Locks and the batch log are opened in place on
/// purpose (a lock is never replaced; a log is appended to); they are listed here by file.
#[test]
fn every_file_is_written_through_fsio() {
    const OPENED_IN_PLACE: [(&str, usize); 4] = [
        ("framework/src/engine/mod.rs", 1),     // the run lock
        ("framework/src/engine/teacher.rs", 1), // the teacher cache lock
        ("src/batch/summary.rs", 1),            // the summary lock
        ("src/batch/child.rs", 1),              // batch.log (appended)
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

/// A module of a crate, as its path from the crate root (`["engine", "train"]`).
type Module = Vec<String>;

/// The module a source file is: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `lib.rs` and
/// `main.rs` are the root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut m: Module = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

/// The module paths a piece of Rust source names through `crate::…` or `super::…`, with
/// `use` groups (`crate::a::{b, c::d}`) expanded, relative to module `at`.
fn named_paths(text: &str, at: &Module) -> Vec<Module> {
    fn path_at(s: &str) -> (Vec<String>, &str) {
        let mut segs = Vec::new();
        let mut rest = s;
        loop {
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
            if end == 0 {
                break;
            }
            segs.push(rest[..end].to_string());
            rest = &rest[end..];
            match rest.strip_prefix("::") {
                Some(r) if !r.starts_with('{') => rest = r,
                Some(r) => {
                    rest = r;
                    break;
                }
                None => break,
            }
        }
        (segs, rest)
    }
    fn group(s: &str) -> Vec<&str> {
        // `{a, b::{c, d}, e}` → its top-level entries.
        let (mut depth, mut start, mut out) = (0, 1, Vec::new());
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => {
                    out.push(&s[start..i]);
                    return out;
                }
                '}' => depth -= 1,
                ',' if depth == 1 => {
                    out.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        out
    }
    fn expand(prefix: Module, s: &str, out: &mut Vec<Module>) {
        let (segs, rest) = path_at(s.trim_start());
        let mut p = prefix;
        p.extend(segs.into_iter().filter(|x| x != "self"));
        if rest.starts_with('{') {
            for entry in group(rest) {
                expand(p.clone(), entry, out);
            }
        } else {
            out.push(p);
        }
    }
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices("crate::").chain(text.match_indices("super::")) {
        // A whole word: not `kdx_crate::` or `my_super::`.
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
            continue;
        }
        let mut base = at.clone();
        let mut s = &text[i..];
        if let Some(r) = s.strip_prefix("crate::") {
            base.clear();
            s = r;
        } else {
            // `super` of `a/b.rs` is `a`; of `a/b/mod.rs` (module `a::b`) also `a`.
            while let Some(r) = s.strip_prefix("super::") {
                base.pop();
                s = r;
            }
        }
        expand(base, s, &mut out);
    }
    out
}

/// The module dependency graph of the crate whose sources are under `src`: an edge from a
/// module to each other module its code (tests excluded: everything from the first
/// `#[cfg(test)]`) names. A name resolves to the longest module path it starts with; the
/// crate root, which only declares modules, is left out.
fn module_graph(src: &Path) -> std::collections::BTreeMap<Module, std::collections::BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: std::collections::BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph = std::collections::BTreeMap::new();
    for f in &files {
        let m = module_of(src, f);
        let text = std::fs::read_to_string(f).unwrap();
        let code = code_of(&text);
        let code = code.as_str();
        let mut deps = std::collections::BTreeSet::new();
        // A child module named by its own name (`train::run_stage` in `engine/mod.rs`).
        let children = modules.iter().filter(|c| c.len() == m.len() + 1 && c.starts_with(&m));
        let bytes = code.as_bytes();
        for c in children {
            let named = code.match_indices(&format!("{}::", c[m.len()])).any(|(i, _)| {
                i == 0
                    || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':')
            });
            if named {
                deps.insert(c.clone());
            }
        }
        for p in named_paths(code, &m) {
            let target = (0..=p.len())
                .rev()
                .map(|k| p[..k].to_vec())
                .find(|q| modules.contains(q))
                .unwrap_or_default();
            if !target.is_empty() && target != m {
                deps.insert(target);
            }
        }
        graph.entry(m).or_insert_with(std::collections::BTreeSet::new).extend(deps);
    }
    graph
}

/// The cycles of a module graph, each as the modules along it (`a → b → a`); one per
/// strongly connected component of more than one module.
fn cycles(graph: &std::collections::BTreeMap<Module, std::collections::BTreeSet<Module>>) -> Vec<String> {
    let name = |m: &Module| if m.is_empty() { "crate".to_string() } else { m.join("::") };
    let mut found = Vec::new();
    let mut reported = std::collections::BTreeSet::new();
    for start in graph.keys() {
        if reported.contains(start) {
            continue;
        }
        // Breadth-first from `start`'s successors back to `start`: the shortest cycle.
        let mut prev: std::collections::BTreeMap<&Module, &Module> = std::collections::BTreeMap::new();
        let mut queue: std::collections::VecDeque<&Module> = std::collections::VecDeque::new();
        for n in &graph[start] {
            prev.entry(n).or_insert(start);
            queue.push_back(n);
        }
        while let Some(n) = queue.pop_front() {
            if n == start {
                let mut path = vec![start];
                let mut at = prev[start];
                while at != start {
                    path.push(at);
                    at = prev[at];
                }
                path.push(start);
                path.reverse();
                reported.extend(path.iter().map(|m| (*m).clone()));
                found.push(path.iter().map(|m| name(m)).collect::<Vec<_>>().join(" → "));
                break;
            }
            for next in graph.get(n).into_iter().flatten() {
                if !prev.contains_key(next) {
                    prev.insert(next, n);
                    queue.push_back(next);
                }
            }
        }
    }
    found
}

/// No import circle between the modules of any crate of the workspace: a module's
/// dependencies point one way (shared types live low, in modules such as `engine::inputs`),
/// so each module can be read knowing only those below it.
#[test]
fn no_module_imports_in_a_circle() {
    let mut all = Vec::new();
    for src in ["framework/src", "plugins/src", "corpus/src", "recipe/src", "sdk/src", "fsio/src", "src"] {
        for c in cycles(&module_graph(&root().join(src))) {
            all.push(format!("{src}: {c}"));
        }
    }
    assert!(all.is_empty(), "import cycles:\n{}", all.join("\n"));
}

/// The cycle check sees a cycle: a crate of three modules where `a` uses `b`, `b::c` uses
/// `super::super::a`, through a `use` group.
#[test]
fn the_cycle_check_finds_a_planted_cycle() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::{b::c::Thing, b};\n").unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub mod c;\n").unwrap();
    std::fs::write(
        src.join("b/c.rs"),
        "pub struct Thing;\nfn f() { super::super::a::g(); }\n#[cfg(test)]\nuse crate::a;\n",
    )
    .unwrap();
    let found = cycles(&module_graph(src));
    assert_eq!(found, vec!["a → b::c → a".to_string()]);
    // A parent that uses its child by name, and the child that reaches back for an item of
    // the parent's: a cycle too (shared items belong in a module below both).
    std::fs::write(src.join("b/mod.rs"), "pub mod c;\npub struct Shared;\nfn f() { c::g(); }\n").unwrap();
    std::fs::write(src.join("b/c.rs"), "use super::Shared;\npub fn g() {}\n").unwrap();
    std::fs::write(src.join("a.rs"), "").unwrap();
    assert_eq!(cycles(&module_graph(src)), vec!["b → b::c → b".to_string()]);
    // Without the reach back, no cycle (a comment or a test module's `use` is not counted).
    std::fs::write(
        src.join("b/c.rs"),
        "// see super::Shared\npub fn g() {}\n#[cfg(test)]\nuse super::Shared;\n",
    )
    .unwrap();
    assert!(cycles(&module_graph(src)).is_empty());
}
