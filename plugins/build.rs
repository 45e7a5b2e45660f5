//! Generates the module list of the built-in plugins from the files under `src/<kind>/`,
//! so that adding a plugin is adding one file: no `mod` line to edit anywhere.

use std::fmt::Write;

fn main() {
    let mut out = String::new();
    for kind in ["dataset", "model", "loss", "sampler"] {
        let dir = format!("src/{kind}");
        println!("cargo:rerun-if-changed={dir}");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".rs"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let _ = writeln!(out, "/// Built-in {kind} plugins, one file each.\npub mod {kind} {{");
        for f in files {
            let stem = f.trim_end_matches(".rs");
            let path = format!("{}/{dir}/{f}", std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
            let _ = writeln!(out, "    #[path = {path:?}]\n    pub mod {stem};");
        }
        let _ = writeln!(out, "}}");
    }
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap_or_default()).join("plugins.rs");
    std::fs::write(dest, out).expect("writing the generated plugin list");
}
