//! The training data pipeline end to end: a WebDataset shard of 64 JPEGs of ~500×375 px
//! (smooth photo-like content plus noise, quality 90, made in the setup and written to a temp
//! tar) read, decoded, preprocessed to 224×224 and tokenized by the [`Loader`] with 2 workers,
//! batches of 32, looping over the shard. Throughput is in images/s ("elements" = images).
//!
//! Before Criterion's run it prints the process CPU time per image over 10 passes of the shard
//! (user + system, from /proc/self/stat), which says what the pipeline costs whatever else the
//! machine is doing.
use clipcu::data::{Loader, LoaderConfig, Source};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::codecs::jpeg::JpegEncoder;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::{Duration, Instant};

const IMAGES: usize = 64;
const BATCH: usize = 32;
const WORKERS: usize = 2;

fn jpeg(rng: &mut impl Rng, w: u32, h: u32) -> Vec<u8> {
    let f: [f32; 6] = std::array::from_fn(|_| rng.random_range(0.005..0.05));
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v = 128.0
                    + 90.0 * ((x as f32 * f[c]).sin() * (y as f32 * f[c + 3]).cos())
                    + rng.random_range(-12.0..12.0);
                px.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode(&px, w, h, image::ExtendedColorType::Rgb8)
        .expect("encode");
    bytes
}

fn write_shard(path: &std::path::Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("create shard"));
    for i in 0..IMAGES {
        let (w, h) = if i % 2 == 0 { (500, 375) } else { (375, 500) };
        let entries = [
            (format!("{i:09}.jpg"), jpeg(&mut rng, w, h)),
            (
                format!("{i:09}.txt"),
                format!("a photo of sample number {i}, with some texture").into_bytes(),
            ),
        ];
        for (name, data) in entries {
            let mut hd = tar::Header::new_gnu();
            hd.set_size(data.len() as u64);
            hd.set_mode(0o644);
            hd.set_cksum();
            b.append_data(&mut hd, name, data.as_slice())
                .expect("append");
        }
    }
    b.finish().expect("finish shard");
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name and state
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

fn loader(pattern: &str) -> Loader {
    let cfg = LoaderConfig {
        workers: WORKERS,
        prefetch: 2,
        ..LoaderConfig::new(BATCH, 224)
    };
    Loader::new(Source::webdataset(pattern).expect("shard"), cfg, None).expect("loader")
}

fn data_pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let shard = dir.path().join("bench-00000.tar");
    write_shard(&shard);
    let pattern = shard.display().to_string();

    // CPU time per image over 10 passes (after one warm-up pass).
    let mut l = loader(&pattern);
    for _ in 0..IMAGES / BATCH {
        black_box(l.next_batch().expect("batch"));
    }
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let n = 10 * IMAGES;
    for _ in 0..n / BATCH {
        black_box(l.next_batch().expect("batch"));
    }
    let wall = t0.elapsed().as_secs_f64();
    if let (Some(c0), Some(c1)) = (c0, cpu_seconds()) {
        eprintln!(
            "data_pipeline: {n} images in {wall:.2} s = {:.0} images/s wall, {:.2} ms CPU per \
             image ({WORKERS} workers)",
            n as f64 / wall,
            1e3 * (c1 - c0) / n as f64
        );
    }
    drop(l);

    let mut g = c.benchmark_group("data_pipeline");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(IMAGES as u64));
    let mut l = loader(&pattern);
    g.bench_function("webdataset_jpeg500_to_224_2workers", |b| {
        b.iter(|| {
            for _ in 0..IMAGES / BATCH {
                black_box(l.next_batch().expect("batch"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, data_pipeline);
criterion_main!(benches);
