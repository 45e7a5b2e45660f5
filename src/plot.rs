//! SVG plots of runs, drawn with plotters: learning curves per language, per-language
//! accuracy bars ordered by training-set size, the sampler's distribution over training,
//! translation retrieval per language against training pairs (parallel-data runs), and a
//! sweep's parameters against macro and worst-language accuracy.
//!
//! SVG text is laid out by whatever shows the file, so no font library is needed here; text
//! widths are estimated to keep labels apart.

use std::path::{Path, PathBuf};

use anyhow::Result;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::de::DeserializeOwned;

use kdx_framework::engine::train::SamplingRow;
use kdx_framework::report::{read_csv, LanguageRow, MetricRow};
use kdx_framework::retrieval::RetrievalRow;
use kdx_fsio::write_atomic;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const TEACHER: RGBColor = RGBColor(150, 150, 150);
const STUDENT: RGBColor = RGBColor(31, 119, 180);
const BASELINE: RGBColor = RGBColor(235, 125, 20);
const WORST: RGBColor = RGBColor(200, 40, 40);
const FAINT: RGBColor = RGBColor(225, 225, 225);

/// Width of a plot with `n` languages side by side.
fn width_for(n: usize) -> u32 {
    (130 + 30 * n as u32).clamp(760, 2400)
}

/// The CSV reports of one run (a file that is not there reads as empty).
#[derive(Clone, Debug, Default)]
pub struct RunCsvs {
    /// `metrics.csv`.
    pub metrics: Vec<MetricRow>,
    /// `languages.csv`.
    pub languages: Vec<LanguageRow>,
    /// `sampling.csv`.
    pub sampling: Vec<SamplingRow>,
    /// `retrieval.csv` (parallel-data runs).
    pub retrieval: Vec<RetrievalRow>,
}

impl RunCsvs {
    /// Reads the reports of a run directory.
    pub fn load(dir: &Path) -> Result<RunCsvs> {
        fn opt<T: DeserializeOwned>(p: PathBuf) -> Result<Vec<T>> {
            if p.exists() {
                read_csv(&p)
            } else {
                Ok(Vec::new())
            }
        }
        Ok(RunCsvs {
            metrics: opt(dir.join("metrics.csv"))?,
            languages: opt(dir.join("languages.csv"))?,
            sampling: opt(dir.join("sampling.csv"))?,
            retrieval: opt(dir.join("retrieval.csv"))?,
        })
    }

    /// Languages from most to least training data (or as met in metrics.csv without a
    /// languages.csv).
    fn language_order(&self) -> Vec<String> {
        if !self.languages.is_empty() {
            let mut l: Vec<&LanguageRow> = self.languages.iter().collect();
            l.sort_by(|a, b| b.train_size.cmp(&a.train_size).then(a.lang.cmp(&b.lang)));
            return l.into_iter().map(|r| r.lang.clone()).collect();
        }
        let mut seen: Vec<String> = Vec::new();
        for m in self.metrics.iter().chain(std::iter::empty()) {
            if m.lang != "macro" && !seen.contains(&m.lang) {
                seen.push(m.lang.clone());
            }
        }
        for s in &self.sampling {
            if !seen.contains(&s.lang) {
                seen.push(s.lang.clone());
            }
        }
        seen
    }
}

/// Colour of the language at `rank` of `n` (by training-set size), viridis-like: dark purple
/// for the most data, through teal, to yellow-green for the least.
fn ramp(rank: usize, n: usize) -> RGBColor {
    const STOPS: [(f64, (f64, f64, f64)); 3] =
        [(0.0, (68.0, 1.0, 84.0)), (0.5, (33.0, 145.0, 140.0)), (1.0, (180.0, 222.0, 44.0))];
    let t = if n <= 1 { 0.0 } else { rank as f64 / (n - 1) as f64 };
    let (a, b) = if t <= 0.5 { (STOPS[0], STOPS[1]) } else { (STOPS[1], STOPS[2]) };
    let u = ((t - a.0) / (b.0 - a.0)).clamp(0.0, 1.0);
    let mix = |x: f64, y: f64| (x + (y - x) * u).round() as u8;
    RGBColor(mix(a.1 .0, b.1 .0), mix(a.1 .1, b.1 .1), mix(a.1 .2, b.1 .2))
}

/// Distinct colours for up to ten languages (none of them the teacher's, student's or
/// baseline's colour).
const PALETTE: [RGBColor; 10] = [
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(40, 50, 140),
    RGBColor(0, 128, 128),
    RGBColor(160, 0, 120),
];

/// Colour of the language at `rank` (by training-set size) of `n`: a distinct colour each
/// when there are few languages, else the [`ramp`].
fn lang_color(rank: usize, n: usize) -> RGBColor {
    if n <= PALETTE.len() {
        PALETTE[rank]
    } else {
        ramp(rank, n)
    }
}

/// A text style of `px` pixels (plotters writes `size / 1.24` into the SVG).
fn font(px: f64) -> TextStyle<'static> {
    ("sans-serif", px * 1.24).into_font().color(&BLACK)
}

fn bold(px: f64) -> TextStyle<'static> {
    ("sans-serif", px * 1.24).into_font().style(FontStyle::Bold).color(&BLACK)
}

/// Estimated width of `s` in a sans-serif font of `px` pixels.
fn text_width(s: &str, px: f64) -> i32 {
    (s.chars().count() as f64 * px * 0.6).ceil() as i32
}

/// What a legend entry shows.
#[derive(Clone, Copy)]
enum Mark {
    Line(RGBColor, u32),
    Dashed(RGBColor),
    Box(RGBColor),
    Dot(RGBColor),
    Triangle(RGBColor),
    /// Text only.
    Note,
}

/// Where each legend item goes when the legend wraps into rows at this width: the items'
/// (x, y) and the height of the whole header.
fn legend_layout(width: u32, items: &[(String, Mark)]) -> (Vec<(i32, i32)>, u32) {
    let (mut x, mut y) = (14, 42);
    let mut at = Vec::with_capacity(items.len());
    for (label, _) in items {
        let wd = 30 + text_width(label, 12.0) + 18;
        if x > 14 && x + wd > width as i32 - 10 {
            x = 14;
            y += 20;
        }
        at.push((x, y));
        x += wd;
    }
    (at, (y + 16) as u32)
}

/// Draws a title and a legend (wrapped into rows) at the top of `area`; returns the area below.
fn header<'a>(area: &Area<'a>, title: &str, items: &[(String, Mark)]) -> Result<Area<'a>> {
    let (w, _) = area.dim_in_pixel();
    area.draw(&Text::new(title.to_string(), (14, 10), bold(15.0).pos(Pos::new(HPos::Left, VPos::Top))))?;
    let (at, height) = legend_layout(w, items);
    for ((label, mark), &(x, y)) in items.iter().zip(&at) {
        match *mark {
            Mark::Line(c, sw) => {
                area.draw(&PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(sw)))?
            }
            Mark::Dashed(c) => {
                for k in 0..3 {
                    area.draw(&PathElement::new(
                        vec![(x + k * 8, y), (x + k * 8 + 5, y)],
                        c.stroke_width(2),
                    ))?;
                }
            }
            Mark::Box(c) => area.draw(&Rectangle::new([(x + 4, y - 6), (x + 18, y + 6)], c.filled()))?,
            Mark::Dot(c) => area.draw(&Circle::new((x + 11, y), 4, c.filled()))?,
            Mark::Triangle(c) => area.draw(&TriangleMarker::new((x + 11, y), 6, c.filled()))?,
            Mark::Note => {}
        }
        let tx = if matches!(mark, Mark::Note) { x } else { x + 30 };
        area.draw(&Text::new(label.clone(), (tx, y), font(12.0).pos(Pos::new(HPos::Left, VPos::Center))))?;
    }
    let (_, rest) = area.split_vertically(height as i32);
    Ok(rest)
}

/// How tall [`header`] will be for these items at this width.
fn header_height(width: u32, items: &[(String, Mark)]) -> u32 {
    legend_layout(width, items).1
}

fn message(area: &Area, text: &str) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        text.to_string(),
        (w as i32 / 2, h as i32 / 2),
        font(13.0).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    Ok(())
}

fn curve_items(csv: &RunCsvs) -> Vec<(String, Mark)> {
    let order = csv.language_order();
    let mut items = vec![("macro (distilled student)".to_string(), Mark::Line(BLACK, 3))];
    if csv.metrics.iter().any(|m| m.stage == "baseline" && m.split == "dev") {
        items.push(("macro, baseline (no teacher)".into(), Mark::Dashed(BASELINE)));
    }
    if csv.metrics.iter().any(|m| m.stage == "teacher" && m.split == "test" && m.lang == "macro") {
        items.push(("teacher, test macro".into(), Mark::Dashed(TEACHER)));
    }
    if order.len() <= 10 {
        for (i, l) in order.iter().enumerate() {
            items.push((l.clone(), Mark::Line(lang_color(i, order.len()), 2)));
        }
    } else {
        items.push((
            format!(
                "one thin line per language ({}): dark purple = most training data, yellow-green = least",
                order.len()
            ),
            Mark::Line(ramp(order.len() / 2, order.len()), 1),
        ));
    }
    items
}

/// Learning curves: dev accuracy over the distillation steps (fine-tuning appended), per
/// language and macro, with the baseline's macro and the teacher's test macro for reference.
fn draw_curves(area: &Area, title: &str, csv: &RunCsvs) -> Result<()> {
    let area = header(area, title, &curve_items(csv))?;
    let Some(curves) = Curves::of(csv) else {
        return message(
            &area,
            "no dev evaluations of the student (set [train] eval_every to draw learning curves)",
        );
    };
    let mut chart = curves.chart(&area)?;
    curves.draw(&mut chart, &csv.language_order())
}

/// A chart with numeric axes on an SVG area, as the plots here draw them.
type Chart<'a, 'b> = ChartContext<'b, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// What [`draw_curves`] draws, gathered from `metrics.csv`, and the axes' ranges that hold it.
struct Curves<'a> {
    /// The student's dev evaluations (distillation and fine-tuning) with an accuracy.
    student: Vec<&'a MetricRow>,
    /// The last distillation step evaluated: fine-tuning steps are drawn after it.
    distill_end: u64,
    /// Whether a fine-tuning stage follows distillation.
    has_finetune: bool,
    /// The teacher's test macro accuracy, drawn as a level line.
    teacher_test: Option<f64>,
    /// The baseline's dev macro accuracy: (step, accuracy).
    baseline: Vec<(f64, f64)>,
    /// Where the x axis ends.
    x_max: f64,
    /// Where the y axis starts (it ends at 1).
    y_min: f64,
}

/// Where an evaluation of the student goes along the x axis: fine-tuning steps continue
/// after the last distillation step `distill_end`.
fn curve_x(distill_end: u64, m: &MetricRow) -> f64 {
    (if m.stage == "finetune" { distill_end + m.step } else { m.step }) as f64
}

impl<'a> Curves<'a> {
    /// The curves of a run; `None` when the student was never evaluated on dev.
    fn of(csv: &'a RunCsvs) -> Option<Curves<'a>> {
        let dev: Vec<&MetricRow> =
            csv.metrics.iter().filter(|m| m.split == "dev" && m.acc.is_finite()).collect();
        let distill_end = dev.iter().filter(|m| m.stage == "distill").map(|m| m.step).max().unwrap_or(0);
        let student: Vec<&MetricRow> =
            dev.iter().copied().filter(|m| m.stage == "distill" || m.stage == "finetune").collect();
        if student.is_empty() {
            return None;
        }
        let has_finetune = student.iter().any(|m| m.stage == "finetune");
        let teacher_test = csv
            .metrics
            .iter()
            .find(|m| m.stage == "teacher" && m.split == "test" && m.lang == "macro")
            .map(|m| m.acc);
        let baseline: Vec<(f64, f64)> = dev
            .iter()
            .filter(|m| m.stage == "baseline" && m.lang == "macro")
            .map(|m| (m.step as f64, m.acc))
            .collect();
        let x_max = student
            .iter()
            .map(|m| curve_x(distill_end, m))
            .chain(baseline.iter().map(|p| p.0))
            .fold(1.0, f64::max);
        let y_min_data = student
            .iter()
            .map(|m| m.acc)
            .chain(baseline.iter().map(|p| p.1))
            .chain(teacher_test)
            .fold(1.0, f64::min);
        let y_min = ((y_min_data - 0.02) * 10.0).floor().clamp(0.0, 9.0) / 10.0;
        Some(Curves { student, distill_end, has_finetune, teacher_test, baseline, x_max, y_min })
    }

    /// Where an evaluation of the student goes along the x axis ([`curve_x`]).
    fn x(&self, m: &MetricRow) -> f64 {
        curve_x(self.distill_end, m)
    }

    /// The axes and their mesh: steps along x, dev accuracy along y.
    fn chart<'v, 'b>(&self, area: &'b Area<'v>) -> Result<Chart<'v, 'b>> {
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .margin_right(24)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..self.x_max, self.y_min..1.0)?;
        chart
            .configure_mesh()
            .light_line_style(FAINT.mix(0.6))
            .bold_line_style(FAINT)
            .x_desc(if self.has_finetune {
                "training step (distillation, then fine-tuning)"
            } else {
                "distillation step"
            })
            .y_desc("dev accuracy")
            .label_style(font(12.0))
            .axis_desc_style(font(13.0))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .draw()?;
        Ok(chart)
    }

    /// The curves, bottom to top: the teacher's level, one line per language (in `order`),
    /// the baseline's macro, then the student's macro over everything.
    fn draw(&self, chart: &mut Chart, order: &[String]) -> Result<()> {
        if let Some(t) = self.teacher_test {
            chart.draw_series(DashedLineSeries::new(
                vec![(0.0, t), (self.x_max, t)],
                6,
                4,
                TEACHER.stroke_width(2),
            ))?;
        }
        let thin = if order.len() <= 10 { 2 } else { 1 };
        for (i, lang) in order.iter().enumerate() {
            let pts: Vec<(f64, f64)> =
                self.student.iter().filter(|m| &m.lang == lang).map(|m| (self.x(m), m.acc)).collect();
            let c = lang_color(i, order.len());
            chart.draw_series(LineSeries::new(pts.clone(), c.mix(0.85).stroke_width(thin)))?;
            if pts.len() == 1 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
            }
        }
        if self.baseline.len() > 1 {
            chart.draw_series(DashedLineSeries::new(
                self.baseline.clone(),
                7,
                4,
                BASELINE.stroke_width(2),
            ))?;
        }
        chart.draw_series(self.baseline.iter().map(|&p| Circle::new(p, 3, BASELINE.filled())))?;
        let macro_pts: Vec<(f64, f64)> =
            self.student.iter().filter(|m| m.lang == "macro").map(|m| (self.x(m), m.acc)).collect();
        chart.draw_series(LineSeries::new(macro_pts.clone(), BLACK.stroke_width(3)))?;
        chart.draw_series(macro_pts.iter().map(|&p| Circle::new(p, 3, BLACK.filled())))?;
        Ok(())
    }
}

fn bar_items(csv: &RunCsvs) -> Vec<(String, Mark)> {
    let mut items = vec![
        ("teacher".to_string(), Mark::Box(TEACHER)),
        ("distilled student".to_string(), Mark::Box(STUDENT)),
    ];
    if csv.languages.iter().any(|l| l.baseline_acc.is_some()) {
        items.push(("baseline (same student, no teacher)".into(), Mark::Box(BASELINE)));
    }
    items.push((
        "languages from most to least training data (training examples in brackets)".into(),
        Mark::Note,
    ));
    items
}

fn bar_labels(csv: &RunCsvs) -> Vec<(String, String)> {
    let mut l: Vec<&LanguageRow> = csv.languages.iter().collect();
    l.sort_by(|a, b| b.train_size.cmp(&a.train_size).then(a.lang.cmp(&b.lang)));
    l.iter().map(|r| (r.lang.clone(), format!("{} ({})", r.lang, r.train_size))).collect()
}

fn bar_label_area(csv: &RunCsvs) -> u32 {
    bar_labels(csv).iter().map(|(_, s)| text_width(s, 12.0)).max().unwrap_or(0) as u32 + 20
}

/// Per-language test accuracy of teacher, student and baseline, languages ordered by
/// training-set size so the imbalance shows.
fn draw_language_bars(area: &Area, title: &str, csv: &RunCsvs) -> Result<()> {
    let area = header(area, title, &bar_items(csv))?;
    let labels = bar_labels(csv);
    if labels.is_empty() {
        return message(&area, "no languages.csv: the run did not finish");
    }
    let has_baseline = csv.languages.iter().any(|l| l.baseline_acc.is_some());
    let n = labels.len();
    let mut chart = ChartBuilder::on(&area)
        .margin(12)
        .margin_right(24)
        .x_label_area_size(bar_label_area(csv))
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..n as f64, 0f64..1.0)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .light_line_style(FAINT.mix(0.6))
        .bold_line_style(FAINT)
        .y_desc("test accuracy")
        .label_style(font(12.0))
        .axis_desc_style(font(13.0))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()?;
    let m = if has_baseline { 3 } else { 2 };
    let w = 0.8 / m as f64;
    for (i, (lang, _)) in labels.iter().enumerate() {
        let Some(r) = csv.languages.iter().find(|r| &r.lang == lang) else { continue };
        let mut vals = vec![(r.teacher_acc, TEACHER), (r.student_acc, STUDENT)];
        if let Some(b) = r.baseline_acc {
            vals.push((b, BASELINE));
        }
        for (k, (v, c)) in vals.into_iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let x0 = i as f64 + 0.1 + k as f64 * w;
            chart
                .draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x0 + w * 0.92, v)], c.filled())))?;
        }
    }
    // Labels under the groups, read bottom to top.
    let base = area.get_base_pixel();
    for (i, (_, text)) in labels.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        let style = ("sans-serif", 12.0 * 1.24)
            .into_font()
            .transform(FontTransform::Rotate270)
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
        area.draw(&Text::new(text.clone(), (px - base.0, py - base.1 + 8), style))?;
    }
    Ok(())
}

fn sampling_items() -> Vec<(String, Mark)> {
    vec![(
        "share of each batch drawn from each language, stacked from most (bottom) to least training data"
            .to_string(),
        Mark::Note,
    )]
}

/// The sampler's distribution over languages during distillation, as stacked bands.
fn draw_sampling(area: &Area, title: &str, csv: &RunCsvs) -> Result<()> {
    let area = header(area, title, &sampling_items())?;
    let Some(bands) = Bands::of(csv) else {
        return message(&area, "no sampling.csv rows for the distillation stage");
    };
    let mut chart = bands.chart(&area)?;
    bands.draw(&mut chart)?;
    bands.name(&area, &chart)
}

/// What [`draw_sampling`] draws: the distillation stage's distribution over languages at
/// each step where it was set, held until the next.
struct Bands {
    /// The languages, most training data first (the bottom band).
    order: Vec<String>,
    /// The steps at which the distribution was set, ascending.
    steps: Vec<u64>,
    /// Where the last distribution ends: the end of distillation.
    end: u64,
    /// `dist[t][l]`: probability of language `l` from `steps[t]` to the next change.
    dist: Vec<Vec<f64>>,
}

impl Bands {
    /// The bands of a run; `None` when `sampling.csv` has no distillation rows.
    fn of(csv: &RunCsvs) -> Option<Bands> {
        let rows: Vec<&SamplingRow> = csv.sampling.iter().filter(|s| s.stage == "distill").collect();
        if rows.is_empty() {
            return None;
        }
        let order = csv.language_order();
        let mut steps: Vec<u64> = rows.iter().map(|r| r.step).collect();
        steps.sort_unstable();
        steps.dedup();
        let end = csv
            .metrics
            .iter()
            .filter(|m| m.stage == "distill")
            .map(|m| m.step)
            .max()
            .unwrap_or(0)
            .max(steps.last().copied().unwrap_or(0) + 1);
        let dist: Vec<Vec<f64>> = steps
            .iter()
            .map(|&s| {
                order
                    .iter()
                    .map(|l| rows.iter().find(|r| r.step == s && &r.lang == l).map_or(0.0, |r| r.probability))
                    .collect()
            })
            .collect();
        Some(Bands { order, steps, end, dist })
    }

    /// Where language `l`'s band lies at step index `t`: the languages below it stacked.
    fn bounds(&self, t: usize, l: usize) -> (f64, f64) {
        let lo: f64 = self.dist[t][..l].iter().sum();
        (lo, lo + self.dist[t][l])
    }

    /// The axes (steps along x, stacked probability along y), with room on the right for the
    /// languages' names.
    fn chart<'v, 'b>(&self, area: &'b Area<'v>) -> Result<Chart<'v, 'b>> {
        let label_w = self.order.iter().map(|l| text_width(l, 11.0)).max().unwrap_or(0) as u32 + 16;
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .margin_right(label_w + 8)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..self.end as f64, 0f64..1.0)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("distillation step")
            .y_desc("sampling probability (stacked)")
            .label_style(font(12.0))
            .axis_desc_style(font(13.0))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .draw()?;
        Ok(chart)
    }

    /// One filled band per language, as a step function over the steps.
    fn draw(&self, chart: &mut Chart) -> Result<()> {
        let steps = &self.steps;
        for l in 0..self.order.len() {
            let mut upper = Vec::new();
            let mut lower = Vec::new();
            for t in 0..steps.len() {
                let x0 = steps[t] as f64;
                let x1 = steps.get(t + 1).copied().unwrap_or(self.end) as f64;
                let (lo, hi) = self.bounds(t, l);
                upper.push((x0, hi));
                upper.push((x1, hi));
                lower.push((x0, lo));
                lower.push((x1, lo));
            }
            lower.reverse();
            upper.extend(lower);
            let c = lang_color(l, self.order.len()).mix(0.85);
            chart.draw_series(std::iter::once(Polygon::new(upper.clone(), c.filled())))?;
            // A white edge keeps neighbouring bands apart.
            upper.push(upper[0]);
            chart.draw_series(std::iter::once(PathElement::new(upper, WHITE.stroke_width(1))))?;
        }
        Ok(())
    }

    /// Names beside the bands at the end of training, where there is room for them.
    fn name(&self, area: &Area, chart: &Chart) -> Result<()> {
        let end = self.end;
        let base = area.get_base_pixel();
        let last = self.steps.len() - 1;
        let mut prev_y = i32::MIN;
        for (l, name) in self.order.iter().enumerate() {
            let (lo, hi) = self.bounds(last, l);
            let (px, py) = chart.backend_coord(&(end as f64, (lo + hi) / 2.0));
            let (_, py_lo) = chart.backend_coord(&(end as f64, lo));
            let (_, py_hi) = chart.backend_coord(&(end as f64, hi));
            let tall_enough = py_lo - py_hi >= 4;
            if tall_enough && (prev_y == i32::MIN || prev_y - py >= 12) {
                area.draw(&Text::new(
                    name.clone(),
                    (px - base.0 + 6, py - base.1),
                    font(11.0).pos(Pos::new(HPos::Left, VPos::Center)),
                ))?;
                prev_y = py;
            }
        }
        Ok(())
    }
}

fn retrieval_items() -> Vec<(String, Mark)> {
    vec![
        ("distilled student (both sides)".to_string(), Mark::Dot(STUDENT)),
        ("teacher reading the translations".into(), Mark::Box(TEACHER)),
        ("untrained student".into(), Mark::Triangle(BASELINE)),
        (
            "one point per language; translation → English accuracy@1 among its test messages".into(),
            Mark::Note,
        ),
    ]
}

/// Translation → English retrieval accuracy per language against the language's training
/// pairs (log scale when they span a decade): where distillation pays, and whether
/// the languages with little data keep up.
fn draw_retrieval(area: &Area, title: &str, csv: &RunCsvs) -> Result<()> {
    let area = header(area, title, &retrieval_items())?;
    let rows: Vec<&RetrievalRow> =
        csv.retrieval.iter().filter(|r| r.set == "test" && r.lang != "macro").collect();
    if rows.is_empty() {
        return message(&area, "no retrieval.csv: not a parallel-data run with an embedding loss");
    }
    let lo = rows.iter().map(|r| r.train_pairs.max(1)).min().unwrap_or(1) as f64;
    let hi = rows.iter().map(|r| r.train_pairs.max(1)).max().unwrap_or(1) as f64;
    let (x0, x1) = (lo / 1.25, hi * 1.25);
    let mut chart = ChartBuilder::on(&area)
        .margin(12)
        .margin_right(40)
        .x_label_area_size(42)
        .y_label_area_size(56)
        .build_cartesian_2d((x0..x1).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .light_line_style(FAINT.mix(0.6))
        .bold_line_style(FAINT)
        .x_desc("training pairs of the language (log scale)")
        .y_desc("translation → English accuracy@1")
        .label_style(font(12.0))
        .axis_desc_style(font(13.0))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()?;
    let at = |model: &'static str| {
        rows.iter().filter(move |r| r.model == model).map(|r| (r.train_pairs.max(1) as f64, r.to_en))
    };
    chart.draw_series(at("untrained").map(|p| TriangleMarker::new(p, 5, BASELINE.mix(0.8).filled())))?;
    chart
        .draw_series(at("teacher").map(|(x, y)| {
            Rectangle::new([(x / 1.02, y - 0.008), (x * 1.02, y + 0.008)], TEACHER.filled())
        }))?;
    chart.draw_series(at("student").map(|p| Circle::new(p, 4, STUDENT.filled())))?;
    chart.draw_series(rows.iter().filter(|r| r.model == "student").map(|r| {
        Text::new(
            r.lang.clone(),
            (r.train_pairs.max(1) as f64 * 1.04, r.to_en),
            font(10.0).pos(Pos::new(HPos::Left, VPos::Center)),
        )
    }))?;
    Ok(())
}

/// Renders into an SVG string and writes it atomically.
fn svg_file(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area<'_>) -> Result<()>) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    write_atomic(path, svg.as_bytes())
}

const CURVES_H: u32 = 380;
const SAMPLING_H: u32 = 340;
const BARS_H: u32 = 330;
const RETRIEVAL_H: u32 = 420;

fn curves_height(w: u32, csv: &RunCsvs) -> u32 {
    CURVES_H + header_height(w, &curve_items(csv))
}
fn bars_height(w: u32, csv: &RunCsvs) -> u32 {
    BARS_H + bar_label_area(csv) + header_height(w, &bar_items(csv))
}
fn sampling_height(w: u32) -> u32 {
    SAMPLING_H + header_height(w, &sampling_items())
}

fn retrieval_height(w: u32) -> u32 {
    RETRIEVAL_H + header_height(w, &retrieval_items())
}

/// `retrieval.svg`: translation retrieval per language against training pairs.
pub fn write_retrieval(path: &Path, title: &str, csv: &RunCsvs) -> Result<()> {
    let w = width_for(csv.languages.len()).min(1200);
    svg_file(path, (w, retrieval_height(w)), |a| draw_retrieval(a, title, csv))
}

/// `curves.svg`: learning curves of a run.
pub fn write_curves(path: &Path, title: &str, csv: &RunCsvs) -> Result<()> {
    let w = width_for(csv.languages.len()).min(1200);
    svg_file(path, (w, curves_height(w, csv)), |a| draw_curves(a, title, csv))
}

/// `languages.svg`: per-language accuracy bars of a run.
pub fn write_language_bars(path: &Path, title: &str, csv: &RunCsvs) -> Result<()> {
    let w = width_for(csv.languages.len());
    svg_file(path, (w, bars_height(w, csv)), |a| draw_language_bars(a, title, csv))
}

/// `sampling.svg`: the sampler's distribution over a run's distillation.
pub fn write_sampling(path: &Path, title: &str, csv: &RunCsvs) -> Result<()> {
    let w = width_for(csv.languages.len()).min(1200);
    svg_file(path, (w, sampling_height(w)), |a| draw_sampling(a, title, csv))
}

/// Writes `run.svg` into a run directory: learning curves, per-language bars and the sampler's
/// distribution, one above the other. Called at the end of every `kdx run`.
pub fn write_run_plot(dir: &Path) -> Result<PathBuf> {
    let csv = RunCsvs::load(dir)?;
    let name = |p: Option<&Path>| {
        p.and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    };
    let title = format!("{}/{}", name(dir.parent()), name(Some(dir)));
    let w = width_for(csv.languages.len());
    let (h1, h2, h3) = (curves_height(w, &csv), bars_height(w, &csv), sampling_height(w));
    let h4 = if csv.retrieval.is_empty() { 0 } else { retrieval_height(w) };
    let out = dir.join("run.svg");
    svg_file(&out, (w, h1 + h2 + h3 + h4), |root| {
        let (a, rest) = root.split_vertically(h1);
        let (b, rest) = rest.split_vertically(h2);
        let (c, d) = rest.split_vertically(h3);
        draw_curves(&a, &format!("{title}: learning curves"), &csv)?;
        draw_language_bars(&b, &format!("{title}: test accuracy per language"), &csv)?;
        draw_sampling(&c, &format!("{title}: language sampling during distillation"), &csv)?;
        if h4 > 0 {
            draw_retrieval(&d, &format!("{title}: translation retrieval per language"), &csv)?;
        }
        Ok(())
    })?;
    Ok(out)
}

/// One run of a sweep, for [`write_sweep`].
#[derive(Clone, Debug)]
pub struct SweepPoint {
    /// Run name.
    pub run: String,
    /// The swept settings of the run (parameter, value), in sweep order.
    pub settings: Vec<(String, String)>,
    /// Student macro accuracy (test).
    pub macro_acc: f64,
    /// Student accuracy on its worst language (test).
    pub worst_acc: f64,
    /// That language.
    pub worst_lang: String,
}

/// The swept settings a run name encodes (`temperature=4,lr=0.003` → two pairs). A swept
/// table (`sampler=plugin-temperature+tau-5`) reads `temperature tau=5`.
pub fn settings_of(run: &str) -> Vec<(String, String)> {
    run.split(',').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_string(), table_value(v))).collect()
}

fn table_value(v: &str) -> String {
    if !v.contains('+') && !v.starts_with("plugin-") {
        return v.to_string();
    }
    let mut head = String::new();
    let mut rest = Vec::new();
    for part in v.split('+') {
        match part.split_once('-') {
            Some(("plugin", name)) => head = name.to_string(),
            Some((k, x)) => rest.push(format!("{k}={x}")),
            None => rest.push(part.to_string()),
        }
    }
    if head.is_empty() {
        rest.join(" ")
    } else {
        std::iter::once(head).chain(rest).collect::<Vec<_>>().join(" ")
    }
}

/// `sweep.svg`: one panel per swept parameter, its values along x, each run's macro and
/// worst-language accuracy as points and their means over the other parameters as lines.
pub fn write_sweep(path: &Path, title: &str, points: &[SweepPoint]) -> Result<()> {
    let (params, values) = swept_values(points);
    anyhow::ensure!(!params.is_empty(), "no swept parameters in the run names");
    let items = vec![
        ("student macro accuracy (test)".to_string(), Mark::Dot(STUDENT)),
        ("worst-language accuracy (test)".to_string(), Mark::Triangle(WORST)),
        (
            if params.len() > 1 {
                "lines: means over the other swept parameters"
            } else {
                "lines join the runs"
            }
            .to_string(),
            Mark::Line(BLACK, 1),
        ),
    ];
    // Wide enough for the values to sit side by side, up to a limit (then they are turned).
    let w = values
        .iter()
        .map(|v| {
            120 + v.len() as u32
                * (v.iter().map(|s| text_width(s, 12.0)).max().unwrap_or(0) as u32 + 24).max(90)
        })
        .max()
        .unwrap_or(760)
        .clamp(760, 2000);
    let axes: Vec<SweepAxis> = values.iter().map(|v| SweepAxis::new(w, v)).collect();
    let head = header_height(w, &items);
    let panel_h: Vec<u32> = axes.iter().map(|a| 300 + a.label_area()).collect();
    let finite: Vec<f64> =
        points.iter().flat_map(|p| [p.macro_acc, p.worst_acc]).filter(|x| x.is_finite()).collect();
    let lo = finite.iter().cloned().fold(1.0, f64::min);
    let hi = finite.iter().cloned().fold(0.0, f64::max);
    let y_lo = ((lo - 0.03) * 20.0).floor().max(0.0) / 20.0;
    let y_hi = (((hi + 0.03) * 20.0).ceil() / 20.0).min(1.0).max(y_lo + 0.05);
    svg_file(path, (w, head + panel_h.iter().sum::<u32>()), |root| {
        let mut rest = header(root, title, &items)?;
        for (pi, k) in params.iter().enumerate() {
            let (panel, below) = rest.split_vertically(panel_h[pi]);
            rest = below;
            draw_sweep_panel(&panel, k, &axes[pi], points, (y_lo, y_hi))?;
        }
        Ok(())
    })
}

/// The swept parameters, in order of first appearance, and each one's values (numeric ones
/// in numeric order).
fn swept_values(points: &[SweepPoint]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut params: Vec<String> = Vec::new();
    for p in points {
        for (k, _) in &p.settings {
            if !params.contains(k) {
                params.push(k.clone());
            }
        }
    }
    let values = params
        .iter()
        .map(|k| {
            let mut v: Vec<String> = Vec::new();
            for p in points {
                if let Some((_, x)) = p.settings.iter().find(|(kk, _)| kk == k) {
                    if !v.contains(x) {
                        v.push(x.clone());
                    }
                }
            }
            if v.iter().all(|x| x.parse::<f64>().is_ok()) {
                v.sort_by(|a, b| a.parse::<f64>().unwrap_or(0.0).total_cmp(&b.parse::<f64>().unwrap_or(0.0)));
            }
            v
        })
        .collect();
    (params, values)
}

/// One swept parameter's x axis: its values, and whether their labels must be turned to fit.
struct SweepAxis<'v> {
    vals: &'v [String],
    rotate: bool,
}

impl<'v> SweepAxis<'v> {
    fn new(width: u32, vals: &'v [String]) -> SweepAxis<'v> {
        let slot = (width as i32 - 120) / vals.len().max(1) as i32;
        SweepAxis { vals, rotate: vals.iter().any(|s| text_width(s, 12.0) > slot - 8) }
    }

    /// Height of the label area below the panel.
    fn label_area(&self) -> u32 {
        match self.rotate {
            true => self.vals.iter().map(|s| text_width(s, 12.0)).max().unwrap_or(0) as u32 + 44,
            false => 48,
        }
    }

    /// Which of the values a run gives parameter `k`, if it sets it.
    fn index_of(&self, k: &str, p: &SweepPoint) -> Option<usize> {
        p.settings.iter().find(|(kk, _)| kk == k).and_then(|(_, v)| self.vals.iter().position(|x| x == v))
    }

    /// The panel's axes and mesh: one slot per value along x (labelled by
    /// [`SweepAxis::draw_labels`]), test accuracy over `y` along y.
    fn chart<'a, 'b>(&self, panel: &'b Area<'a>, k: &str, y: (f64, f64)) -> Result<Chart<'a, 'b>> {
        let mut chart = ChartBuilder::on(panel)
            .margin(12)
            .margin_right(24)
            .x_label_area_size(self.label_area())
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5f64..self.vals.len() as f64 - 0.5, y.0..y.1)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .light_line_style(FAINT.mix(0.6))
            .bold_line_style(FAINT)
            .x_desc(k)
            .y_desc("test accuracy")
            .label_style(font(12.0))
            .axis_desc_style(font(13.0))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .draw()?;
        Ok(chart)
    }

    /// Lines through the means, at each value of `k`, of the runs' macro and worst-language
    /// accuracies (the runs differ in the other parameters).
    fn draw_means(&self, chart: &mut Chart, k: &str, points: &[SweepPoint]) -> Result<()> {
        let mut mean_macro = Vec::new();
        let mut mean_worst = Vec::new();
        for (xi, _) in self.vals.iter().enumerate() {
            let here: Vec<&SweepPoint> = points.iter().filter(|p| self.index_of(k, p) == Some(xi)).collect();
            let mean = |f: &dyn Fn(&SweepPoint) -> f64| {
                let v: Vec<f64> = here.iter().map(|p| f(p)).filter(|x| x.is_finite()).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            if let Some(m) = mean(&|p| p.macro_acc) {
                mean_macro.push((xi as f64 - 0.06, m));
            }
            if let Some(m) = mean(&|p| p.worst_acc) {
                mean_worst.push((xi as f64 + 0.06, m));
            }
        }
        chart.draw_series(LineSeries::new(mean_macro, STUDENT.stroke_width(2)))?;
        chart.draw_series(LineSeries::new(mean_worst, WORST.stroke_width(2)))?;
        Ok(())
    }

    /// Each run at its value of `k`: a dot (macro) and a triangle (worst language, named
    /// beside it, never on top of another name).
    fn draw_runs(&self, chart: &mut Chart, k: &str, points: &[SweepPoint]) -> Result<()> {
        let mut named: Vec<(usize, i32)> = Vec::new();
        for p in points {
            let Some(xi) = self.index_of(k, p) else { continue };
            if p.worst_acc.is_finite() && !p.worst_lang.is_empty() {
                let py = chart.backend_coord(&(xi as f64, p.worst_acc)).1;
                let clash = named.iter().any(|&(x, y)| x == xi && (y - py).abs() < 12);
                if !clash {
                    named.push((xi, py));
                    chart.draw_series(std::iter::once(Text::new(
                        p.worst_lang.clone(),
                        (xi as f64 + 0.11, p.worst_acc),
                        font(11.0).color(&WORST).pos(Pos::new(HPos::Left, VPos::Center)),
                    )))?;
                }
            }
            if p.macro_acc.is_finite() {
                chart.draw_series(std::iter::once(Circle::new(
                    (xi as f64 - 0.06, p.macro_acc),
                    5,
                    STUDENT.filled(),
                )))?;
            }
            if p.worst_acc.is_finite() {
                chart.draw_series(std::iter::once(TriangleMarker::new(
                    (xi as f64 + 0.06, p.worst_acc),
                    6,
                    WORST.filled(),
                )))?;
            }
        }
        Ok(())
    }

    /// The values under their slots (below the axis at `y0`), turned when they do not fit.
    fn draw_labels(&self, panel: &Area, chart: &Chart, y0: f64) -> Result<()> {
        let base = panel.get_base_pixel();
        for (xi, v) in self.vals.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(xi as f64, y0));
            let style = if self.rotate {
                ("sans-serif", 12.0 * 1.24)
                    .into_font()
                    .transform(FontTransform::Rotate270)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Right, VPos::Center))
            } else {
                font(12.0).pos(Pos::new(HPos::Center, VPos::Top))
            };
            panel.draw(&Text::new(v.clone(), (px - base.0, py - base.1 + 8), style))?;
        }
        Ok(())
    }
}

/// One panel of the sweep plot: test accuracy against the values of parameter `k`, each run
/// a dot (macro) and a triangle (worst language, named), lines through the means.
fn draw_sweep_panel(
    panel: &Area,
    k: &str,
    axis: &SweepAxis,
    points: &[SweepPoint],
    y: (f64, f64),
) -> Result<()> {
    let mut chart = axis.chart(panel, k, y)?;
    axis.draw_means(&mut chart, k, points)?;
    axis.draw_runs(&mut chart, k, points)?;
    axis.draw_labels(panel, &chart, y.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_give_their_settings() {
        assert_eq!(
            settings_of("temperature=4,lr=0.003"),
            vec![("temperature".to_string(), "4".to_string()), ("lr".to_string(), "0.003".to_string())]
        );
        assert_eq!(settings_of("sampler=plugin-temperature+tau-5,seed=2")[0].1, "temperature tau=5");
        assert_eq!(
            settings_of("sampler=eta-1+every-50+plugin-teacher-gap")[0].1,
            "teacher-gap eta=1 every=50"
        );
        assert!(settings_of("run").is_empty());
    }

    #[test]
    fn the_colour_ramp_goes_from_dark_to_light() {
        let RGBColor(r0, g0, b0) = ramp(0, 5);
        let RGBColor(r1, g1, b1) = ramp(4, 5);
        assert!((r0 as u32 + g0 as u32 + b0 as u32) < (r1 as u32 + g1 as u32 + b1 as u32));
        assert_eq!(ramp(0, 1), ramp(0, 1));
    }
}
