//! Measures `[sweep]` expansion: `RecipeDoc::load` + `expand_sweep` for a sweep
//! of N members, with the wall time of each step and the peak resident memory.
//!
//! ```text
//! cargo run --release -p kdx-recipe --example sweep_scale -- 10000 grid
//! cargo run --release -p kdx-recipe --example sweep_scale -- 10000 line
//! /usr/bin/time -v target/release/examples/sweep_scale 10000 grid
//! ```
//!
//! `grid`: two swept keys whose value counts multiply to N (100 x 100 for
//! 10,000); `line`: one swept key with N values; `keys`: N swept keys of one
//! value each (a single member, with N settings). The recipe extends a base file,
//! so the members carry locations from two files, as real recipes do. Above
//! `MAX_SWEEP_RUNS` only the load is timed.

use std::path::Path;
use std::time::Instant;

use kdx_recipe::{KeyPath, RecipeDoc};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let shape = args.next().unwrap_or_else(|| "grid".into());
    let dir = std::env::temp_dir().join(format!("kdx-sweep-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let base = "[train]\nsteps = 3000\nbatch = 32\noptimizer = { kind = \"adamw\", lr = 3e-3, weight_decay = 0.01 }\n\n\
                [[loss]]\nplugin = \"soft-kl\"\nweight = 0.9\ntemperature = 4.0\n\n\
                [[loss]]\nplugin = \"hard-ce\"\nweight = 0.1\n\n[student]\nhidden = [64, 64]\n";
    std::fs::write(dir.join("base.toml"), base).expect("write base");
    let mut top = String::from("extends = \"base.toml\"\n[train]\nsteps = 5000\n\n[sweep]\n");
    let list = |count: usize, f: &dyn Fn(usize) -> String| (0..count).map(f).collect::<Vec<_>>().join(", ");
    match shape.as_str() {
        // Not a big sweep but a wide one: N keys of one value each, one member.
        "keys" => (0..n).for_each(|i| top.push_str(&format!("\"train.k{i}\" = [{i}]\n"))),
        "line" => {
            top.push_str(&format!("\"train.optimizer.lr\" = [{}]\n", list(n, &|i| format!("{}e-5", i + 1))))
        }
        _ => {
            // Two factors as close to sqrt(n) as divide it.
            let a = (1..=n).take_while(|a| a * a <= n).filter(|a| n % a == 0).last().unwrap_or(1);
            let b = n / a;
            top.push_str(&format!("\"loss.0.temperature\" = [{}]\n", list(a, &|i| format!("{}.5", i + 1))));
            top.push_str(&format!("\"train.optimizer.lr\" = [{}]\n", list(b, &|i| format!("{}e-5", i + 1))));
        }
    }
    let path = dir.join("top.toml");
    std::fs::write(&path, &top).expect("write top");

    let t0 = Instant::now();
    let doc = RecipeDoc::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let t_load = t0.elapsed();
    if n > kdx_recipe::MAX_SWEEP_RUNS {
        // Past the limit only loading can be measured.
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "shape={shape} values={n}: load {:.3} s  peak RSS {}",
            t_load.as_secs_f64(),
            peak_rss().unwrap_or_default()
        );
        return;
    }
    let t1 = Instant::now();
    let runs = doc.expand_sweep().unwrap_or_else(|e| panic!("{e}"));
    let t_expand = t1.elapsed();
    let _ = std::fs::remove_dir_all(&dir);

    // Touch the result so nothing is optimised away, and show that members
    // still locate keys in both files.
    let lr = KeyPath::parse_dotted("train.optimizer.lr").expect("key");
    let kind = KeyPath::parse_dotted("train.optimizer.kind").expect("key");
    let last = runs.last().expect("one run at least");
    println!("shape={shape} members={} (asked {n}) recipe={} bytes", runs.len(), top.len());
    println!("last run: {}  lr at {}  kind at {}", last.name, loc(&last.doc, &lr), loc(&last.doc, &kind));
    println!(
        "load {:.3} s  expand {:.3} s  total {:.3} s  peak RSS {}",
        t_load.as_secs_f64(),
        t_expand.as_secs_f64(),
        (t_load + t_expand).as_secs_f64(),
        peak_rss().unwrap_or_else(|| "unknown".into())
    );
    drop(runs);
    drop(doc);
}

fn loc(doc: &RecipeDoc, key: &KeyPath) -> String {
    doc.locate(key).map_or_else(
        || "?".into(),
        |l| l.to_string().replace(&*std::env::temp_dir().to_string_lossy(), "$TMP"),
    )
}

/// `VmHWM` from `/proc/self/status` (Linux only).
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string(Path::new("/proc/self/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.1} MB", kb / 1024.0))
}
