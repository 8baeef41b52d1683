//! Image decoding and CLIP preprocessing against PIL / torchvision / open_clip.
//!
//! Fixtures: `tests/fixtures/preprocess/` from `tools/make_preprocess_fixtures.py` (seeded images in
//! every PIL mode, and what PIL and open_clip make of them). Resizing and cropping must give PIL's
//! bytes exactly, the full transform open_clip's f32 values exactly; lossy decoders are compared
//! separately (they are different libraries). Errors on bad files must name the file. Tests that
//! build their own images use fresh random data and print the seed.

use clipcu::data::{
    center_crop_offset, decode_image, load_image, resize, resized_size, Image, Mode, Preprocess,
    OPENAI_MEAN, OPENAI_STD,
};
use clipcu::Error;
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

struct Fixtures {
    bytes: Vec<u8>,
}

impl Fixtures {
    fn load() -> Fixtures {
        let path = fixture_dir().join("expected.safetensors");
        Fixtures {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
    /// Names of the stored tensors whose last path part starts with `prefix`, sorted.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .st()
            .names()
            .into_iter()
            .filter(|n| n.rsplit('/').next().unwrap().starts_with(prefix))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }
    fn u8s(&self, key: &str) -> (Vec<usize>, Vec<u8>) {
        let st = self.st();
        let t = st.tensor(key).unwrap();
        assert_eq!(t.dtype(), Dtype::U8, "{key}");
        (t.shape().to_vec(), t.data().to_vec())
    }
    fn f32s(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let st = self.st();
        let t = st.tensor(key).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{key}");
        (t.shape().to_vec(), bytemuck::pod_collect_to_vec(t.data()))
    }
}

fn file_of(key: &str) -> &str {
    key.split('/').next().unwrap()
}

fn is_lossy(file: &str) -> bool {
    file.ends_with(".jpg") || file.starts_with("photo_") && file.ends_with(".webp")
}

/// The image a test starts from: our decode of the file, or — for lossy formats, whose decoders
/// differ — PIL's decoded pixels, so that preprocessing is compared on the same input.
fn input_image(fx: &Fixtures, file: &str) -> Image {
    if is_lossy(file) {
        let (shape, data) = fx.u8s(&format!("{file}/decoded"));
        let mode = match shape.get(2) {
            None => Mode::L,
            Some(3) => Mode::Rgb,
            Some(c) => panic!("{file}: {c} channels"),
        };
        Image::new(shape[1], shape[0], mode, data).unwrap()
    } else {
        load_image(fixture_dir().join(file)).unwrap()
    }
}

/// (max |a − b|, how many differ) over two byte slices.
fn u8_diff(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0, 0), |(m, n), (&x, &y)| {
        let d = x.abs_diff(y);
        (m.max(d), n + (d != 0) as usize)
    })
}

fn seed() -> u64 {
    let s: u64 = rand::rng().random();
    eprintln!("seed {s}");
    s
}

fn random_image(rng: &mut impl Rng, w: usize, h: usize, mode: Mode) -> Image {
    let data = (0..w * h * mode.channels()).map(|_| rng.random()).collect();
    Image::new(w, h, mode, data).unwrap()
}

// ---- decoding -------------------------------------------------------------------------------

#[test]
fn files_open_in_pils_modes() {
    let want = [
        ("rgb_97x61.png", Mode::Rgb),
        ("rgba_120x90.png", Mode::Rgba),
        ("la_70x100.png", Mode::La),
        ("gray_80x60.png", Mode::L),
        ("palette_90x70.png", Mode::Palette),
        ("bilevel_45x33.png", Mode::Palette),
        ("rgbtrns_40x50.png", Mode::Rgb),
        ("rgb16_40x30.png", Mode::Rgb),
        ("photo_128x96.jpg", Mode::Rgb),
        ("gray_120x80.jpg", Mode::L),
        ("photo_120x80.webp", Mode::Rgb),
        ("lossless_rgba_60x80.webp", Mode::Rgba),
    ];
    for (file, mode) in want {
        let img = load_image(fixture_dir().join(file)).unwrap();
        assert_eq!(img.mode(), mode, "{file}");
    }
}

/// zune-jpeg and image-webp against PIL's libjpeg-turbo and libwebp, on the decoded pixels and
/// after resize + crop. Lossy WebP decodes identically. JPEG does not: the IDCTs round differently
/// (±1–2 levels on ~1% of values) and zune-jpeg upsamples 4:2:0 chroma in two rounded steps where
/// libjpeg-turbo's "fancy" upsampling rounds once (up to 4 levels, about a quarter of the values).
#[test]
fn lossy_decoders_are_close_to_pils() {
    let fx = Fixtures::load();
    let pre = Preprocess::clip(64);
    let keys = fx.keys("decoded");
    assert_eq!(keys.len(), 5, "{keys:?}");
    for key in keys {
        let file = file_of(&key);
        let (_, pil) = fx.u8s(&key);
        let ours = load_image(fixture_dir().join(file)).unwrap();
        let (max, n) = u8_diff(ours.data(), &pil);
        let mean = ours
            .data()
            .iter()
            .zip(&pil)
            .map(|(&a, &b)| a.abs_diff(b) as f64)
            .sum::<f64>()
            / pil.len() as f64;
        let (_, pil_crop) = fx.u8s(&format!("{file}/crop64"));
        let (cmax, cn) = u8_diff(pre.resize_crop(&ours).unwrap().data(), &pil_crop);
        let msg = format!(
            "{file}: decoded: max diff {max}, {n} of {} differ, mean {mean:.4}; \
             after resize+crop: max {cmax}, {cn} of {} differ",
            pil.len(),
            pil_crop.len()
        );
        eprintln!("{msg}");
        if file.ends_with(".webp") {
            assert_eq!((max, cmax), (0, 0), "{msg}");
        } else {
            assert!(max <= 4 && mean < 0.5 && cmax <= 4, "{msg}");
        }
    }
}

// ---- resizing and cropping against PIL --------------------------------------------------------

#[test]
fn resize_equals_pil_bytes() {
    let fx = Fixtures::load();
    let keys = fx.keys("resize_");
    assert!(keys.len() >= 10, "{keys:?}");
    for key in keys {
        let file = file_of(&key);
        let (shape, pil) = fx.u8s(&key);
        let img = input_image(&fx, file);
        let ours = resize(&img, shape[1], shape[0]).unwrap().to_rgb();
        let (max, n) = u8_diff(ours.data(), &pil);
        assert_eq!(
            (max, n),
            (0, 0),
            "{key}: max diff {max}, {n} of {} bytes differ",
            pil.len()
        );
    }
}

#[test]
fn resize_crop_equals_torchvision_on_pil() {
    let fx = Fixtures::load();
    let pre = Preprocess::clip(64);
    let keys = fx.keys("crop64");
    assert!(keys.len() >= 20);
    for key in keys {
        let file = file_of(&key);
        let (_, pil) = fx.u8s(&key);
        let ours = pre.resize_crop(&input_image(&fx, file)).unwrap();
        assert_eq!(ours.mode(), Mode::Rgb);
        let (max, n) = u8_diff(ours.data(), &pil);
        assert_eq!(
            (max, n),
            (0, 0),
            "{key}: max diff {max}, {n} of {} bytes differ",
            pil.len()
        );
    }
}

#[test]
fn transform_equals_open_clip() {
    let fx = Fixtures::load();
    let keys = fx.keys("tensor");
    assert!(keys.len() >= 24, "{keys:?}");
    for key in keys {
        let file = file_of(&key);
        let (shape, want) = fx.f32s(&key);
        let pre = Preprocess::clip(shape[1]);
        let got = pre.apply(&input_image(&fx, file)).unwrap();
        assert_eq!(got.shape(), &shape[..], "{key}");
        let got = got.to_vec();
        let (max, n) = got.iter().zip(&want).fold((0f32, 0), |(m, n), (a, b)| {
            (
                (a - b).abs().max(m),
                n + (a.to_bits() != b.to_bits()) as usize,
            )
        });
        assert!(
            max <= 1e-6,
            "{key}: max |diff| {max:e}, {n} of {} values differ",
            want.len()
        );
        assert_eq!(n, 0, "{key}: {n} values differ in their bits (max {max:e})");
    }
}

// ---- crop offsets, normalisation, batches (fresh random data) --------------------------------

#[test]
fn crop_offsets_round_half_to_even() {
    // (len, crop) → Python's int(round((len - crop) / 2.0))
    for (len, crop, want) in [
        (64, 64, 0),
        (65, 64, 0), // 0.5 → 0
        (66, 64, 1),
        (67, 64, 2),   // 1.5 → 2
        (69, 64, 2),   // 2.5 → 2
        (73, 64, 4),   // 4.5 → 4
        (127, 64, 32), // 31.5 → 32
        (225, 224, 0),
        (298, 224, 37),
    ] {
        assert_eq!(center_crop_offset(len, crop), want, "({len} - {crop}) / 2");
    }
    // torchvision's output size: int(size * long / short), short side = size
    assert_eq!(resized_size(97, 61, 224), (356, 224));
    assert_eq!(resized_size(61, 97, 224), (224, 356));
    assert_eq!(resized_size(500, 375, 224), (298, 224));
    assert_eq!(resized_size(1, 1, 224), (224, 224));
    assert_eq!(resized_size(300, 224, 224), (300, 224));
}

/// f64 reference of crop + ToTensor + Normalize from our resize, for random images of random
/// sizes and modes: checks the crop offsets, the channel order and CHW layout, grey expansion
/// and alpha dropping, independently of the f32 arithmetic.
#[test]
fn transform_matches_an_f64_reference_on_random_images() {
    let s = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    for case in 0..40 {
        let mode = [Mode::L, Mode::La, Mode::Rgb, Mode::Rgba, Mode::Palette][case % 5];
        let (w, h) = (rng.random_range(1..120), rng.random_range(1..120));
        let size = rng.random_range(1..48);
        let img = random_image(&mut rng, w, h, mode);
        let pre = Preprocess::clip(size);
        let got = pre.apply(&img).unwrap().to_vec();

        let (rw, rh) = resized_size(w, h, size);
        let resized = resize(&img, rw, rh).unwrap();
        let (top, left) = (
            ((rh - size) as f64 / 2.0).round_ties_even() as usize,
            ((rw - size) as f64 / 2.0).round_ties_even() as usize,
        );
        let ch = mode.channels();
        for c in 0..3 {
            for y in 0..size {
                for x in 0..size {
                    let px = &resized.data()[((top + y) * rw + left + x) * ch..][..ch];
                    let v = match mode {
                        Mode::L | Mode::La => px[0],
                        _ => px[c],
                    } as f64;
                    let want = (v / 255.0 - OPENAI_MEAN[c] as f64) / OPENAI_STD[c] as f64;
                    let g = got[(c * size + y) * size + x] as f64;
                    assert!(
                        (g - want).abs() <= 1e-6,
                        "seed {s} case {case} ({w}x{h} {mode:?} → {size}): [{c},{y},{x}] {g} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn constant_images_stay_constant_and_same_size_is_a_copy() {
    let s = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    for _ in 0..20 {
        let (w, h) = (rng.random_range(1..200), rng.random_range(1..200));
        let (dw, dh) = (rng.random_range(1..200), rng.random_range(1..200));
        let v: [u8; 3] = rng.random();
        let img = Image::new(w, h, Mode::Rgb, v.repeat(w * h)).unwrap();
        let out = resize(&img, dw, dh).unwrap();
        assert!(
            out.data().chunks_exact(3).all(|p| p == v),
            "seed {s}: {w}x{h} → {dw}x{dh} of {v:?}"
        );
        let img = random_image(&mut rng, w, h, Mode::Rgba);
        assert_eq!(resize(&img, w, h).unwrap(), img);
    }
}

#[test]
fn batch_stacks_single_transforms() {
    let s = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    let imgs: Vec<Image> = (0..7)
        .map(|i| {
            let mode = [Mode::Rgb, Mode::L, Mode::Rgba][i % 3];
            let (w, h) = (rng.random_range(1..90), rng.random_range(1..90));
            random_image(&mut rng, w, h, mode)
        })
        .collect();
    let pre = Preprocess::clip(40);
    let batch = pre.batch(&imgs).unwrap();
    assert_eq!(batch.shape(), &[7, 3, 40, 40]);
    let all = batch.to_vec();
    for (i, img) in imgs.iter().enumerate() {
        let one = pre.apply(img).unwrap().to_vec();
        assert_eq!(
            &all[i * one.len()..][..one.len()],
            &one[..],
            "seed {s}: image {i}"
        );
    }
    // `batch_from` decodes on the workers and reports the first failure by index
    let files = ["rgb_97x61.png", "gray_80x60.png", "palette_90x70.png"];
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(fixture_dir().join(f)).unwrap())
        .collect();
    let t = pre
        .batch_from(3, |i| decode_image(&bytes[i], files[i]))
        .unwrap();
    assert_eq!(t.shape(), &[3, 3, 40, 40]);
    let err = pre
        .batch_from(3, |i| {
            decode_image(if i == 0 { &bytes[0] } else { b"junk" }, files[i])
        })
        .unwrap_err();
    assert!(err.to_string().contains("gray_80x60.png"), "{err}");
    assert!(Preprocess::clip(0).apply(&imgs[0]).is_err());
}

// ---- formats and bad files -------------------------------------------------------------------

fn encode_png<P: image::PixelWithColorType<Subpixel = S>, S: image::Primitive>(
    img: &image::ImageBuffer<P, Vec<S>>,
) -> Vec<u8>
where
    [S]: image::EncodableLayout,
{
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// 16-bit PNGs keep the high byte of each sample (PIL does the same for RGB/RGBA/LA; for 16-bit
/// grey PIL clips to 255 instead — a documented difference).
#[test]
fn sixteen_bit_pngs_keep_the_high_byte() {
    let s = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    let (w, h) = (13u32, 9u32);
    let grey: Vec<u16> = (0..w * h).map(|_| rng.random()).collect();
    let png = encode_png(
        &image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w, h, grey.clone()).unwrap(),
    );
    let img = decode_image(&png, "grey16.png").unwrap();
    assert_eq!(img.mode(), Mode::L);
    let want: Vec<u8> = grey.iter().map(|&v| (v >> 8) as u8).collect();
    assert_eq!(img.data(), &want[..], "seed {s}");
    let la: Vec<u16> = (0..w * h * 2).map(|_| rng.random()).collect();
    let png = encode_png(
        &image::ImageBuffer::<image::LumaA<u16>, _>::from_raw(w, h, la.clone()).unwrap(),
    );
    let img = decode_image(&png, "la16.png").unwrap();
    assert_eq!(img.mode(), Mode::La);
    let want: Vec<u8> = la.iter().map(|&v| (v >> 8) as u8).collect();
    assert_eq!(img.data(), &want[..], "seed {s}");
}

fn assert_format_error(r: clipcu::Result<Image>, name: &str, what: &str) {
    match r {
        Err(e @ Error::Format { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(name), "error does not name {name}: {msg}");
            assert!(
                msg.contains(what),
                "error for {name} does not say {what:?}: {msg}"
            );
        }
        other => panic!("{name}: expected a format error, got {other:?}"),
    }
}

/// A 2x2 24-bit BMP, written by hand (the BMP decoder is not compiled in).
fn tiny_bmp() -> Vec<u8> {
    let row = [0u8, 0, 255, 255, 255, 255, 0, 0]; // 2 BGR pixels + 2 bytes of padding
    let mut b = Vec::new();
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&(54u32 + 16).to_le_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&2i32.to_le_bytes());
    b.extend_from_slice(&2i32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    b.extend_from_slice(&row);
    b.extend_from_slice(&row);
    b
}

#[test]
fn bad_and_unsupported_files_are_errors_naming_the_file() {
    let s = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    let jpeg = std::fs::read(fixture_dir().join("photo_128x96.jpg")).unwrap();
    let png = std::fs::read(fixture_dir().join("rgb_97x61.png")).unwrap();
    let webp = std::fs::read(fixture_dir().join("photo_120x80.webp")).unwrap();

    assert_format_error(
        decode_image(&jpeg[..jpeg.len() / 2], "half.jpg"),
        "half.jpg",
        "truncated JPEG",
    );
    // an APP segment holding an end-of-image marker (as EXIF thumbnails do) does not hide the
    // truncation; junk after a complete stream is ignored, as PIL does
    let mut thumb = jpeg[..2].to_vec();
    thumb.extend_from_slice(&[0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD8, 0xFF, 0xD9]);
    thumb.extend_from_slice(&jpeg[2..]);
    assert!(decode_image(&thumb, "thumb.jpg").is_ok());
    assert_format_error(
        decode_image(&thumb[..thumb.len() - 200], "thumb_cut.jpg"),
        "thumb_cut.jpg",
        "truncated JPEG",
    );
    let mut junk = jpeg.clone();
    junk.extend_from_slice(b"trailing bytes");
    assert_eq!(
        decode_image(&junk, "junk.jpg").unwrap(),
        decode_image(&jpeg, "photo.jpg").unwrap()
    );
    assert_format_error(
        decode_image(&png[..png.len() / 2], "half.png"),
        "half.png",
        "Png",
    );
    assert_format_error(
        decode_image(&webp[..webp.len() / 2], "half.webp"),
        "half.webp",
        "WebP",
    );
    let noise: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    assert_format_error(
        decode_image(&noise, "noise.bin"),
        "noise.bin",
        "not a recognised image",
    );
    // right signature, garbage after it
    for (sig, name) in [
        (&png[..8], "sig.png"),
        (&jpeg[..3], "sig.jpg"),
        (&webp[..12], "sig.webp"),
    ] {
        let mut b = sig.to_vec();
        b.extend_from_slice(&noise);
        assert_format_error(decode_image(&b, name), name, "");
    }
    assert_format_error(
        decode_image(&[], "empty.png"),
        "empty.png",
        "not a recognised",
    );
    assert_format_error(
        decode_image(&tiny_bmp(), "tiny.bmp"),
        "tiny.bmp",
        "Bmp images are not supported",
    );
    assert_format_error(
        decode_image(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "one.gif"),
        "one.gif",
        "Gif images are not supported",
    );

    // through the file system: a text file renamed .png, a missing file
    let dir = std::env::temp_dir().join(format!("clipcu-prep-{}-{s:016x}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let notes = dir.join("notes.png");
    std::fs::write(&notes, "these are my notes, not a picture\n").unwrap();
    let r = load_image(&notes);
    let missing = load_image(dir.join("missing.jpg"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_format_error(r, &notes.display().to_string(), "not a recognised image");
    match missing {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("missing.jpg"), "{e}"),
        other => panic!("missing file: {other:?}"),
    }
}
