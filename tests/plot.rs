//! The end-of-training plot (`training.png`) from a metrics file: it decodes, has one panel per
//! evaluation set besides the loss panel, every curve is drawn in its colour inside its panel,
//! and a metrics file with nothing, or with non-finite values, gives a valid plot.

mod common;
use clipcu::train::plot::{
    plot_metrics, plot_size, Metrics, LOSS_RAW, LOSS_SMOOTH, PALETTE, PANEL_H, PANEL_W, VAL_LOSS,
};
use rand::{Rng, SeedableRng};
use std::fmt::Write;
use std::path::Path;

/// A metrics file of `steps` noisy, decreasing losses and evaluations every 10 steps: held-out
/// synthetic, zero-shot on `zs/` and validation on `val.csv`.
fn metrics_text(seed: u64, steps: usize) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut s = String::new();
    for step in 1..=steps {
        let loss = 4.0 * (-(step as f64) / 60.0).exp() + 0.3 * rng.random::<f64>();
        writeln!(s, r#"{{"step":{step},"loss":{loss},"lr":0.001}}"#).unwrap();
        if step % 10 == 0 {
            let a = step as f64 / steps as f64;
            writeln!(s, r#"{{"step":{step},"eval":"zeroshot-heldout","shape_single":{},"shape_ensemble":{},"colour_single":{},"colour_ensemble":{}}}"#, 0.5 * a, 0.6 * a, 0.8 * a, 0.9 * a).unwrap();
            writeln!(s, r#"{{"step":{step},"eval":"zeroshot","data":"zs/","top1":{},"top5":{},"samples":12}}"#, 0.7 * a, a).unwrap();
            writeln!(s, r#"{{"step":{step},"eval":"val","data":"val.csv","val_loss":{},"image_to_text_r1":{},"image_to_text_r5":{},"image_to_text_r10":{},"text_to_image_r1":{},"text_to_image_r5":{},"text_to_image_r10":{},"samples":12}}"#, 3.0 - 2.0 * a, 0.2 * a, 0.5 * a, 0.7 * a, 0.25 * a, 0.55 * a, 0.75 * a).unwrap();
        }
    }
    writeln!(
        s,
        r#"{{"step":{steps},"device":"cpu","peak_device_bytes":0,"device_allocs":0}}"#
    )
    .unwrap();
    s
}

fn render_file(dir: &Path, text: &str) -> image::RgbImage {
    let (m, png) = (dir.join("metrics.jsonl"), dir.join("training.png"));
    std::fs::write(&m, text).unwrap();
    plot_metrics(&m, &png).unwrap();
    image::open(&png).unwrap().to_rgb8()
}

/// Pixels of exactly `colour` inside panel `k` (two panels to a row).
fn count_in_panel(img: &image::RgbImage, k: u32, colour: [u8; 3]) -> usize {
    let (x0, y0) = ((k % 2) * PANEL_W, (k / 2) * PANEL_H);
    let mut n = 0;
    for y in y0..y0 + PANEL_H {
        for x in x0..x0 + PANEL_W {
            n += (img.get_pixel(x, y).0 == colour) as usize;
        }
    }
    n
}

#[test]
fn every_curve_is_drawn_in_its_panel() {
    let seed = common::fresh_seed();
    let dir = tempfile::tempdir().unwrap();
    let text = metrics_text(seed, 200);
    let m = Metrics::parse(&text);
    assert_eq!(m.loss.len(), 200);
    assert_eq!(m.val_loss.len(), 20);
    let titles: Vec<&str> = m.panels.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "held-out synthetic colour–shape combinations",
            "zero-shot on zs/",
            "validation recall on val.csv"
        ]
    );
    let img = render_file(dir.path(), &text);
    assert_eq!(img.dimensions(), plot_size(4));
    assert_eq!(img.dimensions(), (2 * PANEL_W, 2 * PANEL_H));
    for (colour, what) in [
        (LOSS_RAW, "raw loss"),
        (LOSS_SMOOTH, "smoothed loss"),
        (VAL_LOSS, "val loss"),
    ] {
        let n = count_in_panel(&img, 0, colour);
        assert!(
            n > 50,
            "seed {seed}: {what}: {n} pixels of {colour:?} in the loss panel"
        );
    }
    for (k, p) in m.panels.iter().enumerate() {
        for (c, curve) in p.curves.iter().enumerate() {
            assert_eq!(curve.colour, PALETTE[c]);
            let n = count_in_panel(&img, k as u32 + 1, curve.colour);
            assert!(
                n > 50,
                "seed {seed}: {} / {}: {n} pixels",
                p.title,
                curve.label
            );
        }
    }
}

#[test]
fn loss_only_runs_plot_one_row_and_empty_or_non_finite_metrics_give_a_valid_plot() {
    let dir = tempfile::tempdir().unwrap();
    // loss only: one row of two slots (the second empty)
    let mut text = String::new();
    for step in 1..=40 {
        writeln!(
            text,
            r#"{{"step":{step},"loss":{}}}"#,
            3.0 - step as f64 / 20.0
        )
        .unwrap();
    }
    let img = render_file(dir.path(), &text);
    assert_eq!(img.dimensions(), plot_size(1));
    assert_eq!(plot_size(1), (PANEL_W, PANEL_H));
    assert!(count_in_panel(&img, 0, LOSS_SMOOTH) > 50);
    // an empty file, a file of non-JSON lines, a NaN loss (serde_json writes it as null), an
    // infinite one, evaluations with null values, a single step
    for text in [
        String::new(),
        "not json\n{\n".to_string(),
        r#"{"step":1,"loss":null}"#.to_string(),
        "{\"step\":1,\"loss\":2.0}\n{\"step\":2,\"loss\":null}\n{\"step\":3,\"loss\":1e400}\n{\"step\":4,\"loss\":1.5}\n".to_string(),
        "{\"step\":1,\"loss\":2.0}\n{\"step\":1,\"eval\":\"zeroshot\",\"data\":\"z\",\"top1\":null,\"top5\":0.5}\n".to_string(),
        "{\"step\":5,\"loss\":2.0}\n{\"step\":5,\"eval\":\"val\",\"data\":\"v\",\"val_loss\":2.5,\"image_to_text_r1\":0.1}\n".to_string(),
        // every step's loss NaN but a finite validation loss; values too far apart for f64
        "{\"step\":1,\"loss\":null}\n{\"step\":2,\"loss\":null}\n{\"step\":2,\"eval\":\"val\",\"data\":\"v\",\"val_loss\":2.5}\n".to_string(),
        "{\"step\":1,\"loss\":-1.7e308}\n{\"step\":2,\"loss\":1.7e308}\n".to_string(),
        // characters the embedded font lacks, in a data name
        "{\"step\":1,\"loss\":2.0}\n{\"step\":1,\"eval\":\"zeroshot\",\"data\":\"données/日本 🐱\",\"top1\":0.5,\"top5\":0.9}\n".to_string(),
    ] {
        let img = render_file(dir.path(), &text);
        let m = Metrics::parse(&text);
        assert_eq!(img.dimensions(), plot_size(1 + m.panels.len()), "{text:?}");
    }
    // a missing metrics file is an error naming it
    let e = plot_metrics(&dir.path().join("none.jsonl"), &dir.path().join("x.png")).unwrap_err();
    assert!(e.to_string().contains("none.jsonl"), "{e}");
}
