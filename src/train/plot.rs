//! The end-of-training plot: loss per step (left) and zero-shot accuracy per evaluation (right),
//! drawn straight into a PNG with the `image` crate and an 8×8 bitmap font — no plotting stack.

use crate::{Error, Result};
use font8x8::legacy::BASIC_LEGACY;
use image::{Rgb, RgbImage};
use std::path::Path;

/// (legend, colour, points) of one curve.
type Series<'a> = (&'a str, Rgb<u8>, &'a [(f64, f64)]);

const W: u32 = 960;
const H: u32 = 400;
const PANEL: u32 = 460;
const MARGIN: u32 = 48;

fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, color: Rgb<u8>) {
    for (i, ch) in s.chars().enumerate() {
        let Some(glyph) = BASIC_LEGACY.get(ch as usize) else {
            continue;
        };
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let (px, py) = (x + i as u32 * 8 + col, y + row as u32);
                    if px < img.width() && py < img.height() {
                        img.put_pixel(px, py, color);
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f32, f32), (x1, y1): (f32, f32), color: Rgb<u8>) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f32 / n as f32;
        let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// One panel: series of (x, y) points scaled into the panel at horizontal offset `ox`.
fn panel(
    img: &mut RgbImage,
    ox: u32,
    title: &str,
    series: &[Series<'_>],
    y_range: Option<(f64, f64)>,
) {
    let black = Rgb([0, 0, 0]);
    let (x0, y0, x1, y1) = (ox + MARGIN, MARGIN / 2 + 12, ox + PANEL, H - MARGIN);
    line(img, (x0 as f32, y1 as f32), (x1 as f32, y1 as f32), black);
    line(img, (x0 as f32, y0 as f32), (x0 as f32, y1 as f32), black);
    text(img, x0, 6, title, black);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .filter(|p| p.1.is_finite())
        .collect();
    if pts.is_empty() {
        return;
    }
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (ymin, ymax) = y_range.unwrap_or_else(|| {
        pts.iter()
            .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)))
    });
    let (xspan, yspan) = ((xmax - xmin).max(1e-9), (ymax - ymin).max(1e-9));
    let sx = |x: f64| x0 as f32 + ((x - xmin) / xspan) as f32 * (x1 - x0) as f32;
    let sy = |y: f64| y1 as f32 - ((y - ymin) / yspan) as f32 * (y1 - y0) as f32;
    text(img, ox + 2, y0, &format!("{ymax:.2}"), black);
    text(img, ox + 2, y1 - 8, &format!("{ymin:.2}"), black);
    text(img, x0, y1 + 6, &format!("{xmin:.0}"), black);
    let label = format!("{xmax:.0}");
    text(img, x1 - 8 * label.len() as u32, y1 + 6, &label, black);
    text(img, (x0 + x1) / 2 - 16, y1 + 20, "step", black);
    for (k, (name, color, s)) in series.iter().enumerate() {
        for w in s.windows(2) {
            line(
                img,
                (sx(w[0].0), sy(w[0].1)),
                (sx(w[1].0), sy(w[1].1)),
                *color,
            );
        }
        if s.len() == 1 {
            let (x, y) = (sx(s[0].0), sy(s[0].1));
            for d in -2i32..=2 {
                line(
                    img,
                    (x - 2.0, y + d as f32),
                    (x + 2.0, y + d as f32),
                    *color,
                );
            }
        }
        text(img, x1 - 200, y0 + 4 + 12 * k as u32, name, *color);
    }
}

/// Write the two-panel plot to `path` (a PNG).
pub fn plot_training(
    path: &Path,
    loss: &[(f64, f64)],
    accuracy: &[(&str, Vec<(f64, f64)>)],
) -> Result<()> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    panel(
        &mut img,
        0,
        "contrastive loss",
        &[("loss", Rgb([31, 119, 180]), loss)],
        None,
    );
    let colors = [
        Rgb([214, 39, 40]),
        Rgb([44, 160, 44]),
        Rgb([148, 103, 189]),
        Rgb([255, 127, 14]),
        Rgb([23, 190, 207]),
        Rgb([140, 86, 75]),
        Rgb([227, 119, 194]),
    ];
    let series: Vec<Series<'_>> = accuracy
        .iter()
        .enumerate()
        .map(|(i, (n, s))| (*n, colors[i % colors.len()], s.as_slice()))
        .collect();
    panel(
        &mut img,
        PANEL + 20,
        "evaluations (accuracy, recall)",
        &series,
        Some((0.0, 1.0)),
    );
    let tmp = path.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| Error::format(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
