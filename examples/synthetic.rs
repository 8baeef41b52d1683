//! The synthetic dataset, looked at and timed.
//!
//!     cargo run --release --example synthetic -- grid docs/synthetic-samples.png
//!     cargo run --release --example synthetic -- sheet /tmp/sheet.png 32
//!     cargo run --release --example synthetic -- bench
//!
//! `grid` writes 16 samples (12 training, 4 held-out in a yellow frame), each at 64 px and at
//! 32 px (both shown 2× with nearest-neighbour), with its caption underneath.
//! `sheet` draws every shape in every size (solid and checkered) at one image size, zoomed.
//! `bench` times rendering one sample on one thread (64 and 32 px) and a batch of 256 on rayon.

use clipcu::data::synthetic::{Sample, Split, Synthetic, SyntheticConfig};
use font8x8::legacy::BASIC_LEGACY;
use image::{Rgb, RgbImage};
use std::time::Instant;

const SEED: u64 = 2024;
const CAPTION_CHARS: usize = 24;
const CAPTION_LINES: usize = 5;

fn blit_2x(dst: &mut RgbImage, src: &RgbImage, x0: u32, y0: u32) {
    for (x, y, p) in src.enumerate_pixels() {
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            dst.put_pixel(x0 + 2 * x + dx, y0 + 2 * y + dy, *p);
        }
    }
}

fn text(dst: &mut RgbImage, s: &str, x0: u32, y0: u32, colour: Rgb<u8>) {
    for (k, ch) in s.chars().enumerate() {
        let glyph = BASIC_LEGACY[(ch as usize).min(127)];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    dst.put_pixel(x0 + 8 * k as u32 + col, y0 + row as u32, colour);
                }
            }
        }
    }
}

/// Greedy word wrap to `width` characters.
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for w in s.split_whitespace() {
        let last = lines.last_mut().unwrap();
        if !last.is_empty() && last.len() + 1 + w.len() > width {
            lines.push(w.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(w);
        }
    }
    lines
}

fn grid(path: &str) {
    let big = Synthetic::new(SyntheticConfig {
        seed: SEED,
        image_size: 64,
    });
    let small = Synthetic::new(SyntheticConfig {
        seed: SEED,
        image_size: 32,
    });
    let picks: Vec<(Split, u64)> = (0..12)
        .map(|i| (Split::Train, i))
        .chain((0..4).map(|i| (Split::HeldOut, i)))
        .collect();
    let (cell_w, cell_h, pad) = (200u32, 128 + 9 * CAPTION_LINES as u32 + 6, 6u32);
    let mut canvas = RgbImage::from_pixel(4 * cell_w + pad, 4 * cell_h + pad, Rgb([36, 36, 36]));
    for (k, &(split, index)) in picks.iter().enumerate() {
        let (x0, y0) = (pad + (k as u32 % 4) * cell_w, pad + (k as u32 / 4) * cell_h);
        let (a, b): (Sample, Sample) = (big.sample(split, index), small.sample(split, index));
        assert_eq!(
            a.caption, b.caption,
            "the recipe does not depend on the image size"
        );
        if split == Split::HeldOut {
            for x in x0 - 3..x0 + 128 + 3 {
                for y in y0 - 3..y0 + 128 + 3 {
                    canvas.put_pixel(x, y, Rgb([250, 210, 0]));
                }
            }
        }
        blit_2x(&mut canvas, &a.image, x0, y0);
        blit_2x(&mut canvas, &b.image, x0 + 128 + 4, y0);
        for (l, line) in wrap(&a.caption, CAPTION_CHARS)
            .iter()
            .take(CAPTION_LINES)
            .enumerate()
        {
            text(
                &mut canvas,
                line,
                x0,
                y0 + 132 + 9 * l as u32,
                Rgb([230, 230, 230]),
            );
        }
        println!("{split:?} {index}: {}", a.caption);
    }
    canvas.save(path).expect("write the PNG");
    println!("wrote {path}");
    for seed in [0, SEED] {
        let held = Synthetic::new(SyntheticConfig {
            seed,
            image_size: 64,
        })
        .held_out_combos();
        let names: Vec<String> = held
            .iter()
            .map(|(s, c)| format!("{} {}", c.name(), s.name()))
            .collect();
        println!("held out with seed {seed}: {}", names.join(", "));
    }
}

/// Every shape (rows) in each size and texture (columns) at `size` px, scaled `zoom`×.
fn sheet(path: &str, size: u32, zoom: u32) {
    use clipcu::data::synthetic::{Attributes, Background, Colour, Shape, Size, Texture};
    let data = Synthetic::new(SyntheticConfig {
        seed: SEED,
        image_size: size,
    });
    let cols: Vec<(Size, Texture)> = Size::ALL
        .iter()
        .flat_map(|&s| [Texture::Solid, Texture::Checkered].map(|t| (s, t)))
        .collect();
    let cell = size * zoom + 2;
    let mut canvas = RgbImage::from_pixel(
        cols.len() as u32 * cell,
        Shape::ALL.len() as u32 * cell,
        Rgb([0, 0, 0]),
    );
    for (r, &shape) in Shape::ALL.iter().enumerate() {
        for (c, &(sz, texture)) in cols.iter().enumerate() {
            let attrs = Attributes {
                shape,
                colour: Colour::ALL[(r + c) % Colour::ALL.len()],
                size: sz,
                count: 1,
                position: Some(clipcu::data::synthetic::Position::Center),
                background: Background::Gray,
                texture,
            };
            let (img, _) = data.render(&attrs, (r * 31 + c) as u64);
            for (x, y, p) in img.enumerate_pixels() {
                for dy in 0..zoom {
                    for dx in 0..zoom {
                        canvas.put_pixel(
                            c as u32 * cell + x * zoom + dx,
                            r as u32 * cell + y * zoom + dy,
                            *p,
                        );
                    }
                }
            }
        }
    }
    canvas.save(path).expect("write the PNG");
    println!("wrote {path}");
}

fn bench() {
    for size in [64, 32] {
        let data = Synthetic::new(SyntheticConfig {
            seed: 1,
            image_size: size,
        });
        let n = 20_000u64;
        let mut sink = 0u64;
        let t = Instant::now();
        for i in 0..n {
            let s = data.sample(Split::Train, i);
            sink += s.image.as_raw()[0] as u64 + s.caption.len() as u64;
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{size}x{size}: {us:.1} µs per sample (render + caption, one thread) [{sink}]");
        let t = Instant::now();
        for i in 0..n {
            let r = data.recipe(Split::Train, i);
            sink += data.caption(&r.attrs, r.template, r.caption_seed).len() as u64;
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{size}x{size}: {us:.1} µs of that for the recipe and caption");
        let t = Instant::now();
        let reps = 20;
        for r in 0..reps {
            let b = data.batch(Split::Train, r * 256, 256);
            sink += b.len() as u64;
            std::hint::black_box(sink);
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!(
            "{size}x{size}: {ms:.2} ms per batch of 256 on {} rayon threads",
            rayon::current_num_threads()
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("grid") => grid(args.get(1).map_or("docs/synthetic-samples.png", |s| s)),
        Some("sheet") => {
            let size = args.get(2).map_or(32, |s| s.parse().expect("image size"));
            sheet(args.get(1).map_or("sheet.png", |s| s), size, 128 / size);
        }
        Some("bench") => bench(),
        _ => eprintln!("usage: synthetic grid [OUT.png] | sheet [OUT.png] [SIZE] | bench"),
    }
}
