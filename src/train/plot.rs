//! The end-of-training plot, `training.png`, drawn with `plotters` from a run's `metrics.jsonl`
//! (so a resumed run plots its whole history):
//!
//! - panel 0, **contrastive loss**: the loss of every step, faint, with an exponential moving
//!   average over it (debiased, its window about a thirtieth of the run), and the validation
//!   loss of `--val-data` as points when there is one;
//! - one **accuracy panel per evaluation set**, in the order they first appear in the metrics:
//!   the synthetic held-out split (shape and colour top-1), each `--zeroshot-data` set (top-1,
//!   top-5), each `--val-data` set (recall@1 and @5 both ways), on a 0–100% axis.
//!
//! Panels are [`PANEL_W`] × [`PANEL_H`] pixels, two to a row ([`plot_size`]); every axis has
//! ticks with values and a label, every panel a legend. Text uses the DejaVu Sans subset embedded
//! from `assets/fonts/` (no system fonts are looked up). Non-finite values (a diverged step's
//! loss, written as `null`) are left out; a panel with nothing finite to show says so.

use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;

/// Width of one panel, in pixels.
pub const PANEL_W: u32 = 640;
/// Height of one panel, in pixels.
pub const PANEL_H: u32 = 420;
/// Panels per row.
pub const COLUMNS: u32 = 2;

/// The per-step loss (faint).
pub const LOSS_RAW: [u8; 3] = [166, 206, 227];
/// The smoothed loss over it.
pub const LOSS_SMOOTH: [u8; 3] = [31, 119, 180];
/// Validation-loss points.
pub const VAL_LOSS: [u8; 3] = [255, 127, 14];
/// The curves of an accuracy panel take these colours in order.
pub const PALETTE: [[u8; 3]; 6] = [
    [214, 39, 40],
    [44, 160, 44],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-plot.ttf");
const FAMILY: &str = "sans-serif";

/// The size of a plot of `panels` panels: two to a row.
pub fn plot_size(panels: usize) -> (u32, u32) {
    let n = panels.max(1) as u32;
    (PANEL_W * n.min(COLUMNS), PANEL_H * n.div_ceil(COLUMNS))
}

/// One curve: its legend, colour, points (step, value), and whether it is drawn as points.
#[derive(Clone, Debug)]
pub struct Curve {
    pub label: String,
    pub colour: [u8; 3],
    pub points: Vec<(f64, f64)>,
    pub dots: bool,
}

/// One accuracy panel: a title and its curves (values in 0..=1).
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub curves: Vec<Curve>,
}

/// What the plot shows, read from a metrics file ([`Metrics::read`]).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// (step, loss) of every step (non-finite values kept: they are left out when drawn).
    pub loss: Vec<(f64, f64)>,
    /// (step, validation loss) of every validation.
    pub val_loss: Vec<(f64, f64)>,
    /// The accuracy panels.
    pub panels: Vec<Panel>,
}

/// (legend, key) of the curves of each evaluation kind.
fn curves_of(kind: &str) -> Option<(&'static str, &'static [(&'static str, &'static str)])> {
    Some(match kind {
        "zeroshot-heldout" => (
            "held-out synthetic colour–shape combinations",
            &[
                ("shape, 1 template", "shape_single"),
                ("shape, ensembled", "shape_ensemble"),
                ("colour, 1 template", "colour_single"),
                ("colour, ensembled", "colour_ensemble"),
            ],
        ),
        "zeroshot" => ("zero-shot", &[("top-1", "top1"), ("top-5", "top5")]),
        "val" => (
            "validation recall",
            &[
                ("R@1 image→text", "image_to_text_r1"),
                ("R@1 text→image", "text_to_image_r1"),
                ("R@5 image→text", "image_to_text_r5"),
                ("R@5 text→image", "text_to_image_r5"),
            ],
        ),
        _ => return None,
    })
}

impl Metrics {
    /// Reads `metrics.jsonl`: `loss` lines, and the evaluation lines (`"eval"`: `zeroshot-heldout`,
    /// `zeroshot`, `val`), one panel per (kind, `data`). Lines that are not JSON are skipped.
    pub fn read(path: &Path) -> Result<Metrics> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(Metrics::parse(&text))
    }

    /// [`read`](Self::read) on the file's text.
    pub fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        // (kind, data) of each panel, parallel to m.panels
        let mut keys: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(step) = v["step"].as_f64() else {
                continue;
            };
            let num = |k: &str| {
                let x = &v[k];
                // serde_json writes a non-finite f32 as null: keep it as NaN (a gap)
                x.as_f64().or(x.is_null().then_some(f64::NAN))
            };
            let Some(kind) = v["eval"].as_str() else {
                if v.get("loss").is_some() {
                    m.loss.push((step, num("loss").unwrap_or(f64::NAN)));
                }
                continue;
            };
            if kind == "val" {
                if let Some(l) = v["val_loss"].as_f64() {
                    m.val_loss.push((step, l));
                }
            }
            let Some((title, curves)) = curves_of(kind) else {
                continue;
            };
            let data = v["data"].as_str().unwrap_or("").to_string();
            let key = (kind.to_string(), data.clone());
            let i = match keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    keys.push(key);
                    m.panels.push(Panel {
                        title: if data.is_empty() {
                            title.to_string()
                        } else {
                            format!("{title} on {data}")
                        },
                        curves: curves
                            .iter()
                            .enumerate()
                            .map(|(c, (label, _))| Curve {
                                label: label.to_string(),
                                colour: PALETTE[c % PALETTE.len()],
                                points: Vec::new(),
                                dots: false,
                            })
                            .collect(),
                    });
                    m.panels.len() - 1
                }
            };
            for (c, (_, k)) in curves.iter().enumerate() {
                if let Some(a) = v[*k].as_f64() {
                    m.panels[i].curves[c].points.push((step, a));
                }
            }
        }
        for p in &mut m.panels {
            p.curves.retain(|c| !c.points.is_empty());
        }
        m
    }
}

/// The debiased exponential moving average of `points` (non-finite values skipped), with a
/// window of about a thirtieth of the points (none below 30 points… up to β = 0.98).
pub fn smooth(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let n = points.iter().filter(|p| p.1.is_finite()).count();
    let beta = (1.0 - 30.0 / n.max(1) as f64).clamp(0.0, 0.98);
    let (mut s, mut w) = (0.0, 0.0);
    let mut out = Vec::with_capacity(n);
    for &(x, y) in points.iter().filter(|p| p.1.is_finite()) {
        s = beta * s + (1.0 - beta) * y;
        w = beta * w + (1.0 - beta);
        out.push((x, s / w));
    }
    out
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Msg(format!("training plot: {e}"))
}

fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(err("the embedded font does not load"))
    }
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// The finite points of `curves`' bounding box, widened to a non-empty range.
fn bounds<'a>(curves: impl Iterator<Item = &'a (f64, f64)>) -> Option<((f64, f64), (f64, f64))> {
    let mut b: Option<((f64, f64), (f64, f64))> = None;
    for &(x, y) in curves.filter(|p| p.0.is_finite() && p.1.is_finite()) {
        b = Some(match b {
            None => ((x, x), (y, y)),
            Some(((x0, x1), (y0, y1))) => ((x0.min(x), x1.max(x)), (y0.min(y), y1.max(y))),
        });
    }
    // a range too wide for f64 (values near ±1e308) cannot be drawn either
    b.filter(|((x0, x1), (y0, y1))| (x1 - x0).is_finite() && (y1 - y0).is_finite())
        .map(|((x0, x1), (y0, y1))| {
            let (x0, x1) = if x1 > x0 {
                (x0, x1)
            } else {
                (x0 - 1.0, x1 + 1.0)
            };
            let pad = if y1 > y0 {
                0.05 * (y1 - y0)
            } else {
                0.5f64.max(y0.abs() * 0.1)
            };
            ((x0, x1), (y0 - pad, y1 + pad))
        })
}

/// Draws one panel: `curves` in order (later ones on top), axes over `x` × `y`.
fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_desc: &str,
    curves: &[Curve],
    y_range: Option<(f64, f64)>,
    percent: bool,
    legend_at: SeriesLabelPosition,
) -> Result<()> {
    let Some((x, y)) = bounds(curves.iter().flat_map(|c| c.points.iter())) else {
        // nothing finite to show: the title and a note, no axes
        area.draw(&Text::new(
            title.to_string(),
            (16, 12),
            (FAMILY, 18).into_font().color(&BLACK),
        ))
        .map_err(err)?;
        area.draw(&Text::new(
            "no finite values to plot".to_string(),
            (16, (PANEL_H / 2) as i32),
            (FAMILY, 16).into_font().color(&BLACK),
        ))
        .map_err(err)?;
        return Ok(());
    };
    let y = y_range.unwrap_or(y);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(err)?;
    // Decimals enough to tell ticks about a tenth of the range apart; steps are whole numbers,
    // so no more x ticks than there are steps.
    let decimals = |lo: f64, hi: f64| (-((hi - lo) / 8.0).log10().floor()).clamp(0.0, 6.0) as usize;
    let (dx, dy) = (decimals(x.0, x.1), decimals(y.0, y.1));
    let x_ticks = ((x.1 - x.0).floor() as usize + 1).clamp(2, 8);
    let pct = |v: &f64| format!("{:.0}%", 100.0 * v);
    let plain = move |v: &f64| format!("{v:.dy$}");
    let step_label = move |v: &f64| {
        if dx == 0 || *v == v.round() {
            format!("{v:.0}")
        } else {
            format!("{v:.dx$}")
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("step")
        .y_desc(y_desc)
        .x_labels(x_ticks)
        .y_labels(8)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .x_label_formatter(&step_label);
    if percent {
        mesh.y_label_formatter(&pct);
    } else {
        mesh.y_label_formatter(&plain);
    }
    mesh.draw().map_err(err)?;
    for c in curves {
        let colour = rgb(c.colour);
        let finite: Vec<(f64, f64)> = c
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        if finite.is_empty() {
            continue; // nothing of this curve to draw (the panel has other curves' points)
        }
        // the faint per-step loss is a thin line, every other curve a thicker one
        let width = if c.colour == LOSS_RAW { 1 } else { 2 };
        let series = if c.dots || finite.len() == 1 {
            chart
                .draw_series(PointSeries::of_element(
                    finite,
                    4,
                    colour.filled(),
                    &|p, s, st| Circle::new(p, s, st),
                ))
                .map_err(err)?
        } else {
            // a gap where a value is not finite: one line per finite run
            let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for p in &c.points {
                if p.1.is_finite() {
                    runs.last_mut().unwrap().push(*p);
                } else if !runs.last().unwrap().is_empty() {
                    runs.push(Vec::new());
                }
            }
            let mut last = None;
            for run in runs.into_iter().filter(|r| !r.is_empty()) {
                // a lone finite value between gaps is a dot; the few evaluations of a run are
                // marked on their line
                let marked = c.colour != LOSS_RAW && c.colour != LOSS_SMOOTH && finite.len() <= 40;
                let size = if run.len() == 1 || marked { 3 } else { 0 };
                last = Some(
                    chart
                        .draw_series(
                            LineSeries::new(run, colour.stroke_width(width)).point_size(size),
                        )
                        .map_err(err)?,
                );
            }
            last.expect("a finite point")
        };
        series.label(c.label.clone()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3))
        });
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .position(legend_at)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Renders `m` into an RGB image of [`plot_size`]`(1 + m.panels.len())`.
pub fn render(m: &Metrics) -> Result<image::RgbImage> {
    register_font()?;
    let (w, h) = plot_size(1 + m.panels.len());
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let rows = h / PANEL_H;
        let areas = root.split_evenly((rows as usize, COLUMNS.min(w / PANEL_W) as usize));
        let mut loss = vec![Curve {
            label: "loss per step".into(),
            colour: LOSS_RAW,
            points: m.loss.clone(),
            dots: false,
        }];
        if m.loss.iter().filter(|p| p.1.is_finite()).count() > 2 {
            loss.push(Curve {
                label: "smoothed (EMA)".into(),
                colour: LOSS_SMOOTH,
                points: smooth(&m.loss),
                dots: false,
            });
        }
        if !m.val_loss.is_empty() {
            loss.push(Curve {
                label: "validation loss".into(),
                colour: VAL_LOSS,
                points: m.val_loss.clone(),
                dots: true,
            });
        }
        // The loss falls and accuracies rise: their legends go where the curves are not.
        let (upper_right, upper_left) = (
            SeriesLabelPosition::UpperRight,
            SeriesLabelPosition::UpperLeft,
        );
        draw_panel(
            &areas[0],
            "contrastive loss",
            "loss",
            &loss,
            None,
            false,
            upper_right,
        )?;
        for (p, area) in m.panels.iter().zip(&areas[1..]) {
            let y = Some((0.0, 1.02));
            draw_panel(
                area,
                &p.title,
                "accuracy",
                &p.curves,
                y,
                true,
                upper_left.clone(),
            )?;
        }
        root.present().map_err(err)?;
    }
    image::RgbImage::from_raw(w, h, buf).ok_or_else(|| err("buffer size"))
}

/// The plot of the metrics file `metrics`, written to `png` (atomically: a temporary file
/// renamed into place).
pub fn plot_metrics(metrics: &Path, png: &Path) -> Result<()> {
    let img = render(&Metrics::read(metrics)?)?;
    let tmp = png.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| Error::format(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, png).map_err(|e| Error::io(png, e))
}
