//! `kdx report`: compares finished runs — a table per run and per language (teacher, student,
//! baseline, KD gain) in the terminal or as CSV, and SVG plots of each run and of each sweep.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::plot::{self, RunCsvs, SweepPoint};
use kdx_framework::event::RunStatus;
use kdx_framework::report::{read_csv, RunRow};

/// Arguments of `kdx report`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Run directories, or results roots to search for runs.
    #[arg(default_value = "results")]
    pub paths: Vec<PathBuf>,
    /// Print one CSV row per run and language (and `macro`) instead of the table.
    #[arg(long)]
    pub csv: bool,
    /// Write the SVG plots here (default: `report/` in the results root).
    #[arg(long, conflicts_with = "no_plots")]
    pub plots: Option<PathBuf>,
    /// Write no plots.
    #[arg(long)]
    pub no_plots: bool,
    /// In the table across seeds, also average the student's accuracy over this many
    /// languages with the least training data (the low-resource end).
    #[arg(long, default_value_t = 10)]
    pub smallest: usize,
}

/// A run found on disk.
pub struct FoundRun {
    /// Its directory.
    pub dir: PathBuf,
    /// Its `run.csv` row.
    pub row: RunRow,
    /// Its other reports.
    pub csv: RunCsvs,
}

/// Run directories (those holding a `run.csv`) at or under `paths`, sorted.
pub fn find_runs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        anyhow::ensure!(p.exists(), "{}: no such file or directory", p.display());
        let mut stack = vec![p.clone()];
        while let Some(d) = stack.pop() {
            if d.join("run.csv").is_file() {
                out.push(d);
                continue;
            }
            if !d.is_dir() {
                continue;
            }
            for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
                let path = e?.path();
                // `.cache` holds teachers and features, not runs.
                if path.is_dir() && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                    stack.push(path);
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn load(dir: &Path) -> Result<FoundRun> {
    let row = read_csv::<RunRow>(&dir.join("run.csv"))?
        .pop()
        .with_context(|| format!("{}: empty run.csv", dir.display()))?;
    let csv = RunCsvs::load(dir)?;
    Ok(FoundRun { dir: dir.to_path_buf(), row, csv })
}

fn f4(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite()).map_or("-".into(), |v| format!("{v:.4}"))
}

fn gain(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite()).map_or("-".into(), |v| format!("{v:+.4}"))
}

fn params(n: usize) -> String {
    match n {
        0 => "-".into(),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.0}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Mean student accuracy over the `n` languages of a run with the least training data
/// (ties by name); `None` without a languages.csv.
pub fn smallest_mean(run: &FoundRun, n: usize) -> Option<f64> {
    let mut l: Vec<&kdx_framework::report::LanguageRow> = run.csv.languages.iter().collect();
    l.sort_by(|a, b| a.train_size.cmp(&b.train_size).then(a.lang.cmp(&b.lang)));
    let l = &l[..n.min(l.len())];
    (!l.is_empty()).then(|| l.iter().map(|r| r.student_acc).sum::<f64>() / l.len() as f64)
}

/// Mean and sample standard deviation (0 for a single value).
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, var.sqrt())
}

/// Finished runs that differ only in their `seed` setting, grouped by experiment and the
/// other settings (in the order met); groups of one are left out.
pub fn seed_groups(runs: &[FoundRun]) -> Vec<(String, Vec<&FoundRun>)> {
    let mut groups: Vec<(String, Vec<&FoundRun>)> = Vec::new();
    for r in runs.iter().filter(|r| r.row.status == RunStatus::Ok) {
        let settings = plot::settings_of(&r.row.run);
        if !settings.iter().any(|(k, _)| k == "seed") {
            continue;
        }
        let rest: Vec<String> =
            settings.iter().filter(|(k, _)| k != "seed").map(|(k, v)| format!("{k}={v}")).collect();
        let key =
            format!("{}/{}", r.row.experiment, if rest.is_empty() { "*".into() } else { rest.join(",") });
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(r),
            None => groups.push((key, vec![r])),
        }
    }
    groups.retain(|(_, g)| g.len() > 1);
    groups
}

/// The table across seeds: per group, student macro accuracy and the mean over the
/// `smallest` languages with the least training data, as mean ± sd over the seeds.
pub fn seed_table(runs: &[FoundRun], smallest: usize) -> String {
    let groups = seed_groups(runs);
    if groups.is_empty() {
        return String::new();
    }
    let w = groups.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(5).max(5);
    let low = format!("smallest {smallest}");
    let mut s = format!(
        "\nAcross seeds (mean ± sd over runs that differ only in seed; {low} = the student's mean over the {smallest} languages with the least training data)\n  {:<w$} {:>5} {:>17} {:>17}\n",
        "runs", "seeds", "student macro", low
    );
    for (key, g) in &groups {
        let (m, sd) = mean_sd(&g.iter().map(|r| r.row.student_macro_acc).collect::<Vec<_>>());
        let lows: Vec<f64> = g.iter().filter_map(|r| smallest_mean(r, smallest)).collect();
        let (lm, lsd) = mean_sd(&lows);
        let cell = |m: f64, sd: f64| format!("{m:.4} ± {sd:.4}");
        s.push_str(&format!(
            "  {key:<w$} {:>5} {:>17} {:>17}\n",
            g.len(),
            cell(m, sd),
            if lows.len() == g.len() { cell(lm, lsd) } else { "-".into() }
        ));
    }
    s
}

/// The comparison as text: one line per run, then a table per run and language.
pub fn table(runs: &[FoundRun]) -> String {
    let mut s = String::new();
    let name = |r: &FoundRun| format!("{}/{}", r.row.experiment, r.row.run);
    let w = runs.iter().map(|r| name(r).chars().count()).max().unwrap_or(3).max(3);
    s.push_str(&format!(
        "{:<w$}  {:<11} {:>8} {:>8} {:>8} {:>8}  {:<20} {:>8} {:>8}\n",
        "run", "status", "teacher", "student", "baseline", "KD gain", "worst language", "compr.", "wall"
    ));
    for r in runs {
        let x = &r.row;
        if x.status != RunStatus::Ok {
            let err: String = x.error.lines().next().unwrap_or_default().chars().take(110).collect();
            s.push_str(&format!("{:<w$}  {:<11} {err}\n", name(r), x.status));
            continue;
        }
        s.push_str(&format!(
            "{:<w$}  {:<11} {:>8} {:>8} {:>8} {:>8}  {:<20} {:>7.1}× {:>7.1}s\n",
            name(r),
            x.status,
            f4(Some(x.teacher_macro_acc)),
            f4(Some(x.student_macro_acc)),
            f4(x.baseline_macro_acc),
            gain(x.kd_gain),
            format!("{} {:.4}", x.worst_lang, x.worst_acc),
            x.compression,
            x.wall_s
        ));
    }
    for r in runs.iter().filter(|r| !r.csv.languages.is_empty()) {
        let x = &r.row;
        s.push_str(&format!(
            "\n{} — teacher {} → student {} parameters ({:.1}×); test accuracy per language, most training data first\n",
            name(r),
            params(x.teacher_params),
            params(x.student_params),
            x.compression
        ));
        let lw = r.csv.languages.iter().map(|l| l.lang.chars().count()).max().unwrap_or(4).max(5);
        s.push_str(&format!(
            "  {:<lw$} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "lang", "train", "teacher", "student", "baseline", "KD gain"
        ));
        let mut langs: Vec<_> = r.csv.languages.iter().collect();
        langs.sort_by(|a, b| b.train_size.cmp(&a.train_size).then(a.lang.cmp(&b.lang)));
        for l in langs {
            s.push_str(&format!(
                "  {:<lw$} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                l.lang,
                l.train_size,
                f4(Some(l.teacher_acc)),
                f4(Some(l.student_acc)),
                f4(l.baseline_acc),
                gain(l.kd_gain)
            ));
        }
        s.push_str(&format!(
            "  {:<lw$} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "macro",
            "",
            f4(Some(x.teacher_macro_acc)),
            f4(Some(x.student_macro_acc)),
            f4(x.baseline_macro_acc),
            gain(x.kd_gain)
        ));
    }
    s
}

/// One row of `kdx report --csv`.
#[derive(serde::Serialize)]
struct CsvRow<'a> {
    experiment: &'a str,
    run: &'a str,
    status: &'a str,
    lang: &'a str,
    train_size: Option<usize>,
    teacher_acc: Option<f64>,
    student_acc: Option<f64>,
    baseline_acc: Option<f64>,
    kd_gain: Option<f64>,
}

/// The comparison as CSV: a row per run and language, and a `macro` row per run.
pub fn csv(runs: &[FoundRun]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in runs {
        let x = &r.row;
        for l in &r.csv.languages {
            w.serialize(CsvRow {
                experiment: &x.experiment,
                run: &x.run,
                status: x.status.as_str(),
                lang: &l.lang,
                train_size: Some(l.train_size),
                teacher_acc: Some(l.teacher_acc),
                student_acc: Some(l.student_acc),
                baseline_acc: l.baseline_acc,
                kd_gain: l.kd_gain,
            })?;
        }
        let ok = x.status == RunStatus::Ok;
        w.serialize(CsvRow {
            experiment: &x.experiment,
            run: &x.run,
            status: x.status.as_str(),
            lang: "macro",
            train_size: None,
            teacher_acc: ok.then_some(x.teacher_macro_acc),
            student_acc: ok.then_some(x.student_macro_acc),
            baseline_acc: x.baseline_macro_acc.filter(|_| ok),
            kd_gain: x.kd_gain.filter(|_| ok),
        })?;
    }
    Ok(String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?)?)
}

/// Writes the plots of `runs` under `out`: `<experiment>/<run>/{curves,languages,sampling}.svg`
/// per finished run (and `retrieval.svg` for a parallel-data run) and `<experiment>/sweep.svg` per experiment with several swept runs.
/// Returns the files written.
pub fn write_plots(runs: &[FoundRun], out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut sweeps: BTreeMap<&str, Vec<SweepPoint>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.row.status == RunStatus::Ok) {
        let x = &r.row;
        let dir = out.join(&x.experiment).join(&x.run);
        let title = format!("{}/{}", x.experiment, x.run);
        let files = [
            (
                dir.join("curves.svg"),
                plot::write_curves as fn(&Path, &str, &RunCsvs) -> Result<()>,
                "learning curves",
            ),
            (dir.join("languages.svg"), plot::write_language_bars, "test accuracy per language"),
            (dir.join("sampling.svg"), plot::write_sampling, "language sampling during distillation"),
        ];
        let retrieval = (
            dir.join("retrieval.svg"),
            plot::write_retrieval as fn(&Path, &str, &RunCsvs) -> Result<()>,
            "translation retrieval per language",
        );
        let has_retrieval = !r.csv.retrieval.is_empty();
        for (path, f, what) in files.into_iter().chain(has_retrieval.then_some(retrieval)) {
            f(&path, &format!("{title}: {what}"), &r.csv)
                .with_context(|| format!("plotting {}", path.display()))?;
            written.push(path);
        }
        let settings = plot::settings_of(&x.run);
        if !settings.is_empty() {
            sweeps.entry(x.experiment.as_str()).or_default().push(SweepPoint {
                run: x.run.clone(),
                settings,
                macro_acc: x.student_macro_acc,
                worst_acc: x.worst_acc,
                worst_lang: x.worst_lang.clone(),
            });
        }
    }
    // Categorical values (a swept sampler) read best in sweep order, which the batch summary
    // keeps; runs not in it come after, by name.
    let mut order: BTreeMap<(String, String), usize> = BTreeMap::new();
    let roots: std::collections::BTreeSet<PathBuf> =
        runs.iter().filter_map(|r| r.dir.parent().and_then(Path::parent).map(Path::to_path_buf)).collect();
    for root in roots {
        for row in crate::batch::read_summary(&root).unwrap_or_default() {
            let n = order.len();
            order.entry((row.experiment, row.run)).or_insert(n);
        }
    }
    for (exp, points) in sweeps.iter_mut() {
        points.sort_by_key(|p| {
            (order.get(&(exp.to_string(), p.run.clone())).copied().unwrap_or(usize::MAX), p.run.clone())
        });
    }
    for (exp, points) in sweeps.iter().filter(|(_, p)| p.len() > 1) {
        let path = out.join(exp).join("sweep.svg");
        plot::write_sweep(&path, &format!("{exp}: swept parameters against student accuracy"), points)
            .with_context(|| format!("plotting {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `kdx report`.
pub fn run(args: &ReportArgs) -> Result<ExitCode> {
    let dirs = find_runs(&args.paths)?;
    anyhow::ensure!(
        !dirs.is_empty(),
        "no runs under {} (a run directory holds a run.csv)",
        args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    let runs: Vec<FoundRun> = dirs.iter().map(|d| load(d)).collect::<Result<_>>()?;
    if args.csv {
        print!("{}", csv(&runs)?);
    } else {
        print!("{}", table(&runs));
        print!("{}", seed_table(&runs, args.smallest));
    }
    if !args.no_plots {
        let out = match &args.plots {
            Some(p) => p.clone(),
            None => {
                // The results root: the path given, or above the run directory given.
                let first = &args.paths[0];
                let root = if first.join("run.csv").is_file() {
                    first.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
                } else {
                    first.clone()
                };
                root.join("report")
            }
        };
        let written = write_plots(&runs, &out)?;
        eprintln!("kdx report: {} plot(s) written under {}", written.len(), out.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdx_framework::report::LanguageRow;

    fn run(name: &str, macro_acc: f64, langs: &[(&str, usize, f64)]) -> FoundRun {
        let languages = langs
            .iter()
            .map(|&(lang, train_size, student_acc)| LanguageRow {
                lang: lang.into(),
                train_size,
                test_size: 10,
                sampled: 0,
                teacher_acc: 1.0,
                student_acc,
                baseline_acc: None,
                kd_gain: None,
                agreement: f64::NAN,
            })
            .collect();
        FoundRun {
            dir: PathBuf::from(name),
            row: RunRow {
                experiment: "x".into(),
                run: name.into(),
                status: RunStatus::Ok,
                student_macro_acc: macro_acc,
                ..Default::default()
            },
            csv: RunCsvs { languages, ..Default::default() },
        }
    }

    #[test]
    fn seeds_are_averaged_per_setting_with_the_smallest_languages() {
        let langs = |a: f64| vec![("big", 1000, 0.9), ("mid", 100, a), ("tiny", 10, a / 2.0)];
        let runs = vec![
            run("sampler=p,seed=1", 0.8, &langs(0.6)),
            run("sampler=p,seed=2", 0.6, &langs(0.4)),
            run("sampler=t,seed=1", 0.7, &langs(0.8)),
            run("sampler=t,seed=2", 0.7, &langs(0.8)),
            run("sampler=u", 0.5, &langs(0.1)),
        ];
        let groups = seed_groups(&runs);
        let keys: Vec<(&str, usize)> = groups.iter().map(|(k, g)| (k.as_str(), g.len())).collect();
        assert_eq!(
            keys,
            [("x/sampler=p", 2), ("x/sampler=t", 2)],
            "a run without a seed setting is in no group"
        );
        // Smallest two of the first run: mid 0.6 and tiny 0.3.
        assert!((smallest_mean(&runs[0], 2).unwrap() - 0.45).abs() < 1e-12);
        let t = seed_table(&runs, 2);
        let lines: Vec<String> =
            t.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        // p: macro 0.7 ± 0.1414, smallest-2 means 0.45 and 0.30 → 0.375 ± 0.1061.
        assert!(lines.contains(&"x/sampler=p 2 0.7000 ± 0.1414 0.3750 ± 0.1061".to_string()), "{t}");
        assert!(lines.contains(&"x/sampler=t 2 0.7000 ± 0.0000 0.6000 ± 0.0000".to_string()), "{t}");
    }
}
