//! CLIP tokenizer throughput on 10,000 caption-like texts (about 1 in 8 with non-ASCII text,
//! curly quotes or HTML entities, as in web alt-text). Throughput is in texts per second.
//! - `batch (rayon)`: `tokenize_batch` over all cores, warm word cache (steady state of training);
//! - `one by one`: `tokenize` in a loop on one thread, warm cache;
//! - `batch, cold cache`: `tokenize_batch` after emptying the word cache each iteration.
use clipcu::tokenizer::Tokenizer;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

const N: usize = 10_000;

fn captions(n: usize) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(7);
    let subjects = [
        "dog",
        "cat",
        "woman",
        "man",
        "child",
        "red car",
        "bicycle",
        "plate of pasta",
        "mountain lake",
        "city street",
        "wooden table",
        "old lighthouse",
        "group of friends",
        "golden retriever puppy",
        "vintage camera",
        "bowl of ramen",
        "snowy forest",
        "sailboat",
        "skateboarder",
        "bride",
    ];
    let verbs = [
        "sitting on",
        "running across",
        "standing next to",
        "looking at",
        "lying in",
        "walking along",
        "parked near",
        "floating on",
        "jumping over",
        "covered with",
    ];
    let places = [
        "the beach",
        "a sunny park",
        "the kitchen counter",
        "a busy market",
        "the river bank",
        "an empty road",
        "the living room floor",
        "a field of flowers",
        "the snow",
        "a rooftop at night",
    ];
    let styles = [
        "",
        "Stock photo: ",
        "Close-up of ",
        "HD wallpaper - ",
        "Vintage illustration of ",
        "Photo of ",
    ];
    let extras = [
        "Café de Flore in Paris",
        "naïve art print",
        "“Summer vibes” ☀️",
        "Tom &amp; Jerry",
        "it’s a beautiful day",
        "Zürich Hauptbahnhof",
        "東京タワー at dusk",
        "São Paulo skyline",
        "Ðáñïêâ – 2019",
        "Москва, Красная площадь",
        "100% cotton T-shirt (XL)",
        "🐶🐱 best friends",
    ];
    (0..n)
        .map(|_| {
            let mut s = format!(
                "{}a {} {} {}",
                styles[rng.random_range(0..styles.len())],
                subjects[rng.random_range(0..subjects.len())],
                verbs[rng.random_range(0..verbs.len())],
                places[rng.random_range(0..places.len())],
            );
            if rng.random_range(0..8) == 0 {
                s.push_str(", ");
                s.push_str(extras[rng.random_range(0..extras.len())]);
            }
            if rng.random_range(0..3) == 0 {
                s.push_str(&format!(" {}", 1990 + rng.random_range(0..35)));
            }
            s.push('.');
            s
        })
        .collect()
}

fn tokenizer(c: &mut Criterion) {
    let tok = Tokenizer::clip();
    let texts = captions(N);
    let mut group = c.benchmark_group("tokenizer");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("batch (rayon), 10k captions", |b| {
        b.iter(|| tok.tokenize_batch(&texts, 77))
    });
    group.bench_function("one by one, 10k captions", |b| {
        b.iter(|| {
            texts
                .iter()
                .map(|t| tok.tokenize(t, 77)[1])
                .fold(0u64, |a, x| a + x as u64)
        })
    });
    group.bench_function("batch, cold cache, 10k captions", |b| {
        b.iter_batched(
            || tok.clear_cache(),
            |_| tok.tokenize_batch(&texts, 77),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, tokenizer);
criterion_main!(benches);
