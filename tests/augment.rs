//! open_clip's training transform (`RandomResizedCrop` + normalise) against torchvision.
//!
//! Fixtures: `tests/fixtures/augment/expected.safetensors` from `tools/make_augment_fixtures.py`
//! (boxes on the seeded images of `tests/fixtures/preprocess/`, and what open_clip's training
//! transform makes of them with that box; torchvision's deterministic fallback boxes). The box
//! sampler's random numbers are ours, so it is checked against the bounds it promises, on fresh
//! random sizes and keys (the seed is printed on failure).

mod common;
use clipcu::data::{load_image, resized_crop, CropBox, Preprocess, RandomResizedCrop};
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<u8> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/augment/expected.safetensors");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn image_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preprocess")
        .join(name)
}

fn i64s(st: &SafeTensors<'_>, key: &str) -> Vec<usize> {
    let t = st.tensor(key).unwrap();
    assert_eq!(t.dtype(), Dtype::I64, "{key}");
    bytemuck::pod_collect_to_vec::<u8, i64>(t.data())
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

#[test]
fn resized_crop_equals_open_clips_training_transform_for_the_same_box() {
    let bytes = fixtures();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut keys: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| n.ends_with("/box"))
        .map(str::to_string)
        .collect();
    keys.sort();
    assert!(keys.len() >= 30, "{keys:?}");
    for key in keys {
        let base = key.strip_suffix("/box").unwrap();
        let file = base.split('/').next().unwrap();
        let v = i64s(&st, &key);
        let (b, size) = (
            CropBox {
                top: v[0],
                left: v[1],
                h: v[2],
                w: v[3],
            },
            v[4],
        );
        let img = load_image(image_path(file)).unwrap();
        let pre = Preprocess::clip(size);
        let rgb = resized_crop(&img, b, size).unwrap();
        let mut got = vec![0f32; 3 * size * size];
        pre.normalize_rgb_into(&rgb, &mut got).unwrap();
        let t = st.tensor(&format!("{base}/tensor")).unwrap();
        assert_eq!(t.shape(), &[3, size, size], "{base}");
        let want: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
        let (n, max) = got
            .iter()
            .zip(&want)
            .fold((0usize, 0f32), |(n, m), (a, b)| {
                (
                    n + (a.to_bits() != b.to_bits()) as usize,
                    m.max((a - b).abs()),
                )
            });
        assert_eq!(
            n, 0,
            "{base} ({b:?} → {size}): {n} values differ in their bits (max {max:e})"
        );
    }
}

#[test]
fn the_fallback_box_is_torchvisions() {
    let bytes = fixtures();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let rrc = RandomResizedCrop::open_clip();
    // scale > 1: no try can fit, so the sampler falls back whatever its random numbers.
    let never_fits = RandomResizedCrop {
        scale: (2.0, 3.0),
        ..rrc
    };
    let mut n = 0;
    for name in st.names() {
        let Some(size) = name.strip_prefix("fallback/") else {
            continue;
        };
        let (w, h) = size.split_once('x').unwrap();
        let (w, h): (usize, usize) = (w.parse().unwrap(), h.parse().unwrap());
        let v = i64s(&st, name);
        let want = CropBox {
            top: v[0],
            left: v[1],
            h: v[2],
            w: v[3],
        };
        assert_eq!(rrc.fallback_box(w, h), want, "{w}x{h}");
        for key in [0, 1, u64::MAX] {
            assert_eq!(never_fits.sample_box(w, h, key), want, "{w}x{h} key {key}");
        }
        n += 1;
    }
    assert!(n >= 10, "{n} fallback cases");
}

/// Whether `b` is one of the ten tries' boxes: within the scale and ratio bounds up to the
/// rounding of each side to whole pixels (w = round(√(a·r)), h = round(√(a/r))).
fn within_bounds(rrc: &RandomResizedCrop, b: CropBox, width: usize, height: usize) -> bool {
    let area = (width * height) as f64;
    let (w, h) = (b.w as f64, b.h as f64);
    (w - 0.5) * (h - 0.5) <= rrc.scale.1 * area
        && (w + 0.5) * (h + 0.5) >= rrc.scale.0 * area
        && (w - 0.5) / (h + 0.5) <= rrc.ratio.1
        && (w + 0.5) / (h - 0.5).max(1e-9) >= rrc.ratio.0
}

#[test]
fn sampled_boxes_lie_inside_the_image_and_within_the_scale_and_ratio_bounds() {
    let seed = common::fresh_seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rrc = RandomResizedCrop::open_clip();
    let wide = RandomResizedCrop {
        scale: (0.08, 1.0),
        ..rrc
    };
    let (mut tries, mut fallbacks) = (0, 0);
    for _ in 0..3000 {
        let (width, height) = if rng.random_bool(0.3) {
            (rng.random_range(1..12), rng.random_range(1..12))
        } else {
            (rng.random_range(1..700), rng.random_range(1..700))
        };
        for r in [&rrc, &wide] {
            let key = rng.random::<u64>();
            let b = r.sample_box(width, height, key);
            let msg = format!("seed {seed}: {width}x{height} key {key} {r:?} → {b:?}");
            assert!(b.w >= 1 && b.h >= 1, "{msg}");
            assert!(b.left + b.w <= width && b.top + b.h <= height, "{msg}");
            assert_eq!(
                b,
                r.sample_box(width, height, key),
                "{msg}: not deterministic"
            );
            let is_try = within_bounds(r, b, width, height);
            if !is_try {
                assert_eq!(
                    b,
                    r.fallback_box(width, height),
                    "{msg}: neither a try nor the fallback"
                );
            }
            // With the wide scale a try nearly always fits on an image of moderate aspect.
            let moderate = width.min(height) >= 50 && width.max(height) <= 3 * width.min(height);
            if std::ptr::eq(r, &wide) && moderate {
                if is_try {
                    tries += 1;
                } else {
                    fallbacks += 1;
                }
            }
        }
    }
    assert!(
        tries > 100 && tries > 20 * fallbacks,
        "seed {seed}: {tries} tries, {fallbacks} fallbacks"
    );
    // open_clip's bounds on a large image: at least 90% of the area (less a pixel's rounding),
    // and the boxes move about (a different crop per key).
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let b = rrc.sample_box(640, 480, rng.random());
        assert!(
            b.w * b.h >= (0.9 * 640.0 * 480.0) as usize - 640 - 480,
            "{b:?}"
        );
        seen.insert(b);
    }
    assert!(
        seen.len() > 100,
        "seed {seed}: only {} distinct boxes",
        seen.len()
    );
}

#[test]
fn the_transform_is_the_sampled_box_resized_and_normalised() {
    let seed = common::fresh_seed();
    let rrc = RandomResizedCrop::open_clip();
    let img = load_image(image_path("rgba_120x90.png")).unwrap();
    let pre = Preprocess::clip(24);
    let mut got = vec![0f32; 3 * 24 * 24];
    rrc.apply_into(&pre, &img, seed, &mut got).unwrap();
    let b = rrc.sample_box(120, 90, seed);
    let mut want = vec![0f32; 3 * 24 * 24];
    pre.normalize_rgb_into(&resized_crop(&img, b, 24).unwrap(), &mut want)
        .unwrap();
    assert!(got == want, "seed {seed}");
    // a wrong output size and bad bounds are errors, not panics
    assert!(rrc.apply_into(&pre, &img, seed, &mut got[1..]).is_err());
    for bad in [
        RandomResizedCrop {
            scale: (1.0, 0.5),
            ..rrc
        },
        RandomResizedCrop {
            ratio: (0.0, 1.0),
            ..rrc
        },
        RandomResizedCrop {
            scale: (f64::NAN, 1.0),
            ..rrc
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    assert!(rrc.validate().is_ok());
}
