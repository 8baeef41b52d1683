//! Image decoding and CLIP preprocessing to 224×224: ~500 px JPEGs (made in memory with the
//! `image` crate's encoder: smooth photo-like content plus noise, quality 90, 4:2:0), decoded and
//! transformed one after another on one thread, then as a rayon batch. Throughput is in images/s
//! ("elements" = images).
use clipcu::data::{decode_image, Image, Preprocess};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::codecs::jpeg::JpegEncoder;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Duration;

const SIZES: [(u32, u32); 8] = [
    (500, 375),
    (375, 500),
    (512, 512),
    (640, 427),
    (427, 640),
    (500, 333),
    (480, 480),
    (600, 400),
];

fn jpegs() -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut out = Vec::new();
    for round in 0..2 {
        for &(w, h) in &SIZES {
            let f: [f32; 6] = std::array::from_fn(|_| rng.random_range(0.005..0.05));
            let mut px = Vec::with_capacity((w * h * 3) as usize);
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let v = 128.0
                            + 90.0
                                * ((x as f32 * f[c] + round as f32).sin()
                                    * (y as f32 * f[c + 3]).cos())
                            + rng.random_range(-12.0..12.0);
                        px.push(v.clamp(0.0, 255.0) as u8);
                    }
                }
            }
            let mut bytes = Vec::new();
            JpegEncoder::new_with_quality(&mut bytes, 90)
                .encode(&px, w, h, image::ExtendedColorType::Rgb8)
                .expect("encode");
            out.push(bytes);
        }
    }
    out
}

fn preprocess(c: &mut Criterion) {
    let files = jpegs();
    let n = files.len();
    let pre = Preprocess::clip(224);
    let decoded: Vec<Image> = files
        .iter()
        .map(|b| decode_image(b, "bench.jpg").expect("decode"))
        .collect();

    let mut group = c.benchmark_group("preprocess_224");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("decode 1 thread", |b| {
        b.iter(|| {
            for f in &files {
                black_box(decode_image(f, "bench.jpg").expect("decode"));
            }
        })
    });
    group.bench_function("resize+crop+normalize 1 thread", |b| {
        b.iter(|| {
            for img in &decoded {
                black_box(pre.apply(img).expect("apply"));
            }
        })
    });
    group.bench_function("decode+preprocess 1 thread", |b| {
        b.iter(|| {
            for f in &files {
                let img = decode_image(f, "bench.jpg").expect("decode");
                black_box(pre.apply(&img).expect("apply"));
            }
        })
    });
    group.bench_function(
        format!(
            "decode+preprocess batch, rayon {} threads",
            rayon::current_num_threads()
        ),
        |b| {
            b.iter(|| {
                black_box(
                    pre.batch_from(n, |i| decode_image(&files[i], "bench.jpg"))
                        .expect("batch"),
                )
            })
        },
    );
    group.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
