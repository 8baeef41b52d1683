//! Hostile input (issue 16): tiny files that declare huge images, configs without bounds, a
//! loader fed mostly bad samples, one enormous caption word, a weights folder that cannot be
//! written. Each is an error naming what is wrong, or a counted skip — never a panic (exit 101)
//! or an allocation abort (134). The image-bomb tests run in a child process whose address space
//! is capped at 1 GiB, so they also show that memory stays bounded.
mod common;
use clipcu::data::{
    decode_image, decode_image_with, resize, resize_window, Image, ImageLimits, Loader,
    LoaderConfig, Mode, Preprocess, Source, Window,
};
use clipcu::model::ClipConfig;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The address-space cap of the bounded children, in KiB (`ulimit -v`).
const LIMIT_KIB: u64 = 1 << 20;

/// Runs `cmd` with its address space capped at [`LIMIT_KIB`] (via `sh -c 'ulimit -v'`).
fn bounded(cmd: &Path, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -v {LIMIT_KIB} && exec \"$0\" \"$@\""))
        .arg(cmd)
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Reruns the test `name` of this binary in a child under the memory cap; true when this is the
/// child (which then does the work).
fn in_bounded_child(name: &str) -> bool {
    if std::env::var("CLIPCU_BOUNDED_CHILD").as_deref() == Ok(name) {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let o = bounded(
        &exe,
        &[
            name.as_ref(),
            "--exact".as_ref(),
            "--nocapture".as_ref(),
            "--test-threads=1".as_ref(),
        ],
        &[("CLIPCU_BOUNDED_CHILD", name)],
    );
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "bounded child failed ({}):\n{out}",
        o.status
    );
    // the child really ran the test (a filter that matched nothing would also exit 0)
    assert!(out.contains("1 passed"), "{out}");
    false
}

/// A PNG of `w × h` RGB pixels, all one colour: a few hundred bytes for a 100000×1 image.
fn png_bytes(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn clipcu() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clipcu"))
}

/// A small ViT config with CLIP's full vocabulary, written to `dir`.
fn small_config(dir: &Path) -> PathBuf {
    let mut cfg = ClipConfig::load("tiny-vit").unwrap();
    cfg.text_cfg.vocab_size = 49408;
    cfg.text_cfg.context_length = 77;
    let p = dir.join("small.json");
    std::fs::write(&p, cfg.to_json()).unwrap();
    p
}

fn never_crashed(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !matches!(o.status.code(), Some(101) | Some(134) | None),
        "crashed ({}): {err}",
        o.status
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

// ---- class 1: image bombs -------------------------------------------------------------------

#[test]
fn image_bombs_are_refused_by_dimensions_before_decoding() {
    if !in_bounded_child("image_bombs_are_refused_by_dimensions_before_decoding") {
        return;
    }
    let wide = png_bytes(100_000, 1, [10, 20, 30]);
    let wider = png_bytes(4_000_000, 1, [10, 20, 30]);
    assert!(
        wide.len() < 2000 && wider.len() < 100_000,
        "{}",
        wider.len()
    );
    let e = decode_image(&wide, "wide.png").unwrap_err().to_string();
    assert!(
        e.contains("wide.png") && e.contains("100000x1") && e.contains("--max-image-side"),
        "{e}"
    );
    let e = decode_image(&png_bytes(20_000, 2, [0; 3]), "thin.png")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("thin.png") && e.contains("--max-image-aspect"),
        "{e}"
    );
    let e = decode_image(&wider, "wider.png").unwrap_err().to_string();
    assert!(e.contains("wider.png") && e.contains("width"), "{e}");
    // each limit on its own
    let ok = png_bytes(300, 200, [1, 2, 3]);
    let lim = ImageLimits::default();
    assert!(decode_image_with(&ok, "ok.png", &lim).is_ok());
    for (l, what) in [
        (
            ImageLimits {
                max_width: 299,
                ..lim
            },
            "width",
        ),
        (
            ImageLimits {
                max_height: 199,
                ..lim
            },
            "height",
        ),
        (
            ImageLimits {
                max_pixels: 59_999,
                ..lim
            },
            "--max-image-pixels",
        ),
        (
            ImageLimits {
                max_aspect: 1,
                ..lim
            },
            "aspect",
        ),
    ] {
        let e = decode_image_with(&ok, "ok.png", &l)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ok.png") && e.contains(what), "{what}: {e}");
    }
}

#[test]
fn without_limits_an_extreme_image_still_preprocesses_in_bounded_memory() {
    // A 100000×1 image resizes (short side to 224) to 22,400,000×224 pixels, 15 GB: only the
    // center crop is computed, so under a 1 GiB cap it works, and gives the crop's pixels.
    if !in_bounded_child("without_limits_an_extreme_image_still_preprocesses_in_bounded_memory") {
        return;
    }
    for (w, size) in [(100_000u32, 224usize), (4_000_000, 16)] {
        let bytes = png_bytes(w, 1, [200, 100, 50]);
        let img = decode_image_with(&bytes, "x.png", &ImageLimits::none()).unwrap();
        let rgb = Preprocess::clip(size).resize_crop(&img).unwrap();
        assert_eq!((rgb.width(), rgb.height()), (size, size));
        // a constant image stays constant through the bicubic resize
        assert!(rgb.data().chunks(3).all(|p| p == [200, 100, 50]), "{w}");
    }
}

#[test]
fn image_bombs_through_the_loader_are_counted_skips() {
    if !in_bounded_child("image_bombs_through_the_loader_are_counted_skips") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::from("filepath,title\n");
    for (name, bytes) in [
        ("bomb.png", png_bytes(100_000, 1, [0, 0, 0])),
        ("good.png", png_bytes(20, 10, [9, 9, 9])),
        ("bigger-bomb.png", png_bytes(4_000_000, 1, [0, 0, 0])),
    ] {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        rows += &format!("{name},a photo of {name}\n");
    }
    std::fs::write(dir.path().join("d.csv"), rows).unwrap();
    let src = Source::csv(dir.path().join("d.csv"), &Default::default()).unwrap();
    let cfg = LoaderConfig {
        epochs: Some(1),
        workers: 1,
        ..LoaderConfig::new(4, 16)
    };
    let mut loader = Loader::new(src, cfg, None).unwrap();
    let b = loader.next_batch().unwrap().unwrap();
    assert_eq!(b.captions, ["a photo of good.png"]);
    assert_eq!(loader.skips().corrupt_image, 2);
}

#[test]
fn image_bombs_through_the_cli_exit_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, png_bytes(100_000, 1, [0, 0, 0])).unwrap();
    let out = dir.path().join("e.safetensors");
    let embed = |image: &Path, extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["embed".as_ref(), "--config".as_ref()];
        args.push(cfg.as_os_str());
        args.extend([
            std::ffi::OsStr::new("--image"),
            image.as_os_str(),
            std::ffi::OsStr::new("--out"),
        ]);
        args.push(out.as_os_str());
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        bounded(&clipcu(), &args, &[])
    };
    let o = embed(&bomb, &[]);
    let err = never_crashed(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&*bomb.to_string_lossy()) && err.contains("100000x1"),
        "{err}"
    );
    assert!(!out.exists());
    // the limits are options: a 300×10 image passes by default and not at --max-image-aspect 20
    let wide = dir.path().join("wide.png");
    std::fs::write(&wide, png_bytes(300, 10, [0, 0, 0])).unwrap();
    let o = embed(&wide, &[]);
    assert!(o.status.success(), "{}", never_crashed(&o));
    let o = embed(&wide, &["--max-image-aspect", "20"]);
    let err = never_crashed(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("wide.png") && err.contains("--max-image-aspect"),
        "{err}"
    );

    // zero-shot skips it, names it and counts it; training skips and counts it
    for c in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join("folder").join(c)).unwrap();
        std::fs::write(
            dir.path().join("folder").join(c).join("ok.png"),
            png_bytes(40, 30, [c.len() as u8 * 90, 0, 0]),
        )
        .unwrap();
    }
    let folder_bomb = dir.path().join("folder/a/bomb.png");
    std::fs::write(&folder_bomb, png_bytes(4_000_000, 1, [0, 0, 0])).unwrap();
    let folder = dir.path().join("folder");
    let o = bounded(
        &clipcu(),
        &[
            "zeroshot".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "--data".as_ref(),
            folder.as_os_str(),
            "--templates".as_ref(),
            "simple".as_ref(),
            "--cache".as_ref(),
            dir.path().join("c.safetensors").as_os_str(),
        ],
        &[],
    );
    let err = never_crashed(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&*folder_bomb.to_string_lossy()), "{err}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 unreadable skipped"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    std::fs::write(
        dir.path().join("d.csv"),
        "filepath,title\nfolder/a/ok.png,red\nbomb.png,bomb\nfolder/b/ok.png,dark\n",
    )
    .unwrap();
    let csv = dir.path().join("d.csv");
    let run = dir.path().join("run");
    let o = bounded(
        &clipcu(),
        &[
            "train".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "--data".as_ref(),
            csv.as_os_str(),
            "--steps".as_ref(),
            "1".as_ref(),
            "--batch-size".as_ref(),
            "2".as_ref(),
            "--device".as_ref(),
            "cpu".as_ref(),
            "--eval-samples".as_ref(),
            "16".as_ref(),
            "--out".as_ref(),
            run.as_os_str(),
        ],
        &[],
    );
    let err = never_crashed(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("skipping corrupt image") && err.contains("bomb.png"),
        "{err}"
    );
}

/// A random `w × h` image of `mode`.
fn random_image(r: &mut impl Rng, w: usize, h: usize, mode: Mode) -> Image {
    let data = (0..w * h * mode.channels()).map(|_| r.random()).collect();
    Image::new(w, h, mode, data).unwrap()
}

#[test]
fn a_resized_window_equals_the_crop_of_the_whole_resize() {
    let seed = common::fresh_seed();
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let modes = [Mode::L, Mode::La, Mode::Rgb, Mode::Rgba, Mode::Palette];
    for case in 0..60 {
        let mode = modes[case % modes.len()];
        let (sw, sh) = (r.random_range(1..40), r.random_range(1..40));
        // up and down in each direction, same size in one of them, vertical-first cases
        let pick = |r: &mut rand::rngs::StdRng, s: usize| match r.random_range(0..4) {
            0 => s,
            1 => r.random_range(1..=s),
            _ => r.random_range(1..3 * s + 2),
        };
        let (dw, dh) = (pick(&mut r, sw), pick(&mut r, sh));
        let img = random_image(&mut r, sw, sh, mode);
        let full = resize(&img, dw, dh).unwrap();
        let (w, h) = (r.random_range(1..=dw), r.random_range(1..=dh));
        let win = Window {
            left: r.random_range(0..=dw - w),
            top: r.random_range(0..=dh - h),
            w,
            h,
        };
        let got = resize_window(&img, dw, dh, win).unwrap();
        let c = mode.channels();
        let want: Vec<u8> = full
            .data()
            .chunks(dw * c)
            .skip(win.top)
            .take(h)
            .flat_map(|row| row[win.left * c..][..w * c].to_vec())
            .collect();
        assert_eq!(
            got.data(),
            &want[..],
            "seed {seed} case {case}: {mode:?} {sw}x{sh} -> {dw}x{dh} {win:?}"
        );
    }
    // a window outside the output is an error, not a panic
    let img = random_image(&mut r, 4, 4, Mode::Rgb);
    let outside = Window {
        left: 3,
        top: 0,
        w: 2,
        h: 1,
    };
    assert!(resize_window(&img, 4, 8, outside).is_err());
}

// ---- class 8: the loader's whole-epoch guard, long words, a read-only weights folder --------

#[test]
fn bad_samples_across_an_epoch_boundary_are_not_a_hopeless_source() {
    // One good row of five: between the good sample of one epoch (at p) and of the next (at q)
    // lie 4 - p + q bad ones, more than an epoch's 5 items whenever q > p + 1 — which the old
    // item-counting guard took for "no usable sample in a whole epoch".
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::from("filepath,title\n");
    std::fs::write(dir.path().join("good.png"), png_bytes(8, 8, [5, 5, 5])).unwrap();
    rows += "good.png,the good one\n";
    for i in 0..4 {
        std::fs::write(dir.path().join(format!("{i}.png")), b"not an image").unwrap();
        rows += &format!("{i}.png,bad {i}\n");
    }
    std::fs::write(dir.path().join("d.csv"), rows).unwrap();
    let src = Source::csv(dir.path().join("d.csv"), &Default::default()).unwrap();
    let cfg = LoaderConfig {
        epochs: None,
        workers: 1,
        seed: 3,
        ..LoaderConfig::new(1, 8)
    };
    let mut loader = Loader::new(src, cfg, None).unwrap();
    let mut positions = Vec::new();
    for _ in 0..12 {
        let b = loader.next_batch().unwrap().unwrap();
        assert_eq!(b.captions, ["the good one"]);
        positions.push(b.position);
    }
    // one good sample per epoch, and the case the guard got wrong did happen here
    assert!(positions.windows(2).all(|w| w[1].epoch == w[0].epoch + 1));
    assert!(
        positions.windows(2).any(|w| w[1].sample > w[0].sample + 1),
        "{positions:?}"
    );
    // every bad item up to the last good one, once per epoch: 4 per epoch, less those after
    // the last good one
    assert_eq!(
        loader.skips().corrupt_image,
        4 * 11 + (positions[11].sample - 1)
    );
    // a source whose samples are all bad still stops, after one epoch's worth of skips
    let all_bad = dir.path().join("bad.csv");
    std::fs::write(&all_bad, "filepath,title\n0.png,a\n1.png,b\n2.png,c\n").unwrap();
    let cfg = LoaderConfig {
        epochs: None,
        workers: 1,
        ..LoaderConfig::new(2, 8)
    };
    let src = Source::csv(&all_bad, &Default::default()).unwrap();
    let mut loader = Loader::new(src, cfg, None).unwrap();
    let e = loader.next_batch().unwrap_err().to_string();
    assert!(e.contains("no usable sample in a whole epoch"), "{e}");
    assert!(loader.skips().corrupt_image <= 7, "{:?}", loader.skips());
}

#[test]
fn a_megabyte_word_tokenizes_and_normal_words_are_unchanged() {
    let tok = clipcu::tokenizer::Tokenizer::clip();
    // one 1 MB word (the reference BPE loop is quadratic in it: 28 s; the heap merge is not)
    let word: String = (0..1 << 20)
        .map(|i| (b'a' + (common::splitmix64(i) % 26) as u8) as char)
        .collect();
    let row = tok.tokenize(&word, 77);
    assert_eq!(row.len(), 77);
    assert_eq!(row[0], clipcu::tokenizer::Tokenizer::SOT);
    assert_eq!(row[76], clipcu::tokenizer::Tokenizer::EOT);
    assert!(row[1..76].iter().all(|&id| id != 0));
    // the ids decode back to the start of the word
    let text = tok.decode(&row[1..76]);
    assert!(word.starts_with(text.trim_end()), "{text}");
    let ids = tok.encode(&word);
    assert_eq!(tok.decode(&ids).trim_end(), word);
    // a long word equals its pieces where BPE cannot merge across them: a space between
    // copies gives the same ids per copy
    let w = "antidisestablishmentarianism";
    let one = tok.encode(w);
    let many = tok.encode(&[w; 50].join(" "));
    assert_eq!(many, one.repeat(50));
}

// ---- class 2: configs without upper bounds ----------------------------------------------------

/// `tiny-vit` (or `tiny-rn`) as JSON with `edit` applied to it.
fn edited(base: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&ClipConfig::load(base).unwrap().to_json()).unwrap();
    edit(&mut v);
    v.to_string()
}

fn config_error(json: &str) -> String {
    ClipConfig::from_json(json, "my.json")
        .expect_err("refused")
        .to_string()
}

#[test]
fn configs_without_bounds_are_errors_naming_the_field() {
    // a billion-wide ViT: the bytes it needs, and the fields that size it
    let e = config_error(&edited("tiny-vit", |v| {
        v["vision_cfg"]["width"] = 1_000_000_000u64.into();
        v["vision_cfg"]["head_width"] = 64.into();
    }));
    assert!(
        e.contains("my.json") && e.contains("vision_cfg.width") && e.contains("bytes"),
        "{e}"
    );
    // near 2^63: a bound on the field (it used to panic with "capacity overflow")
    let e = config_error(&edited("tiny-vit", |v| {
        v["text_cfg"]["width"] = (1u64 << 62).into();
    }));
    assert!(e.contains("`text_cfg.width`") && e.contains("limit"), "{e}");
    // 10,000 layers of 512: refused before anything grows
    let e = config_error(&edited("tiny-vit", |v| {
        v["text_cfg"]["layers"] = 10_000.into();
        v["text_cfg"]["width"] = 4096.into();
        v["text_cfg"]["heads"] = 8.into();
    }));
    assert!(e.contains("text_cfg.layers") && e.contains("bytes"), "{e}");
    // the memory check on its own, with a given amount of memory
    let cfg = ClipConfig::load("ViT-B-32").unwrap();
    let n = cfg.parameter_count();
    assert!((150_000_000..155_000_000).contains(&n), "{n}"); // ViT-B/32: 151.3 M
    assert!(cfg.check_memory("ViT-B-32", 4 * n as u64).is_ok());
    let e = cfg
        .check_memory("ViT-B-32", 4 * n as u64 - 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("{} bytes", 4 * n)), "{e}");
    let rn = ClipConfig::load("RN50").unwrap().parameter_count();
    assert!((101_000_000..104_000_000).contains(&rn), "{rn}"); // RN50: 102.0 M
}

#[test]
fn a_zero_mlp_ratio_an_empty_resnet_stage_and_unknown_keys_are_errors() {
    for (section, r) in [
        ("vision_cfg", 0.0),
        ("text_cfg", -1.0),
        ("vision_cfg", 1e-9),
    ] {
        let e = config_error(&edited("tiny-vit", |v| v[section]["mlp_ratio"] = r.into()));
        assert!(e.contains(&format!("{section}.mlp_ratio")), "{e}");
    }
    let e = config_error(&edited("tiny-rn", |v| {
        v["vision_cfg"]["layers"] = serde_json::json!([1, 1, 0, 1])
    }));
    assert!(e.contains("vision_cfg.layers[2] is 0"), "{e}");
    let e = config_error(&edited("tiny-vit", |v| {
        v["vision_cfg"]["widht"] = 64.into()
    }));
    assert!(e.contains("unknown key `vision_cfg.widht`"), "{e}");
    let e = config_error(&edited("tiny-vit", |v| v["embed_dims"] = 64.into()));
    assert!(e.contains("unknown key `embed_dims`"), "{e}");
    // every shipped config still loads, and keys refused by name are still refused by name
    for name in ClipConfig::builtin_names() {
        ClipConfig::load(name).unwrap();
    }
    let e = config_error(&edited("tiny-vit", |v| {
        v["vision_cfg"]["ls_init_value"] = 0.1.into()
    }));
    assert!(
        e.contains("ls_init_value") && e.contains("not supported"),
        "{e}"
    );
}

#[test]
fn the_image_only_tiny_configs_are_refused_where_text_is_tokenized() {
    let tiny = ClipConfig::load("tiny-vit").unwrap();
    let e = tiny
        .check_tokenizer_vocab("tiny-vit")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tiny-vit") && e.contains("vocab_size") && e.contains("49408"),
        "{e}"
    );
    assert!(ClipConfig::load("synthetic-rn")
        .unwrap()
        .check_tokenizer_vocab("synthetic-rn")
        .is_ok());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.safetensors");
    for args in [
        &["embed", "--config", "tiny-rn", "--text", "a cat", "--out"][..],
        &["train", "--config", "tiny-vit", "--steps", "1", "--out"][..],
    ] {
        let o = Command::new(clipcu())
            .args(args)
            .arg(&out)
            .output()
            .unwrap();
        let err = never_crashed(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("text_cfg.vocab_size"), "{err}");
    }
    // an unbounded config given to the CLI: exit 1 naming the file and field
    let big = dir.path().join("big.json");
    std::fs::write(
        &big,
        edited("tiny-vit", |v| {
            v["vision_cfg"]["width"] = 1_000_000_000u64.into()
        }),
    )
    .unwrap();
    let o = Command::new(clipcu())
        .args(["embed", "--config"])
        .arg(&big)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = never_crashed(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("big.json") && err.contains("vision_cfg.width"),
        "{err}"
    );
}

#[test]
fn a_classifier_cache_that_cannot_be_written_is_a_warning() {
    // (the tests may run as root, which writes into read-only folders: a path under a regular
    // file cannot be created by anyone)
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let cache = blocker.join("cache.safetensors");
    let mut cfg = ClipConfig::load("tiny-vit").unwrap();
    cfg.text_cfg.vocab_size = 49408;
    let model = clipcu::model::Clip::new(&cfg, 1);
    let classes: Vec<String> = ["cat", "dog"].iter().map(|s| s.to_string()).collect();
    let t = clipcu::zeroshot::Templates::simple();
    let (z, out) =
        clipcu::zeroshot::ZeroShotClassifier::build_cached(&model, &classes, &t, &cache, None, 8)
            .unwrap();
    let clipcu::zeroshot::CacheOutcome::NotCached { error, .. } = out else {
        panic!("{out:?}")
    };
    assert!(error.contains("a-file"), "{error}");
    let plain = dir.path().join("ok.safetensors");
    let (want, _) =
        clipcu::zeroshot::ZeroShotClassifier::build_cached(&model, &classes, &t, &plain, None, 8)
            .unwrap();
    assert_eq!(z.weights().to_vec(), want.weights().to_vec());

    // the command warns and evaluates
    for c in ["cat", "dog"] {
        std::fs::create_dir_all(dir.path().join("folder").join(c)).unwrap();
        std::fs::write(
            dir.path().join("folder").join(c).join("0.png"),
            png_bytes(20, 20, [c.len() as u8 * 40, 9, 9]),
        )
        .unwrap();
    }
    let o = Command::new(clipcu())
        .args(["zeroshot", "--config"])
        .arg(small_config(dir.path()))
        .arg("--data")
        .arg(dir.path().join("folder"))
        .args(["--templates", "simple", "--cache"])
        .arg(&cache)
        .output()
        .unwrap();
    let err = never_crashed(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("not cached"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("top-1"));
}
