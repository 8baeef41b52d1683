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

// ---- runs: classes 3, 4, 5, 7 and divergence -----------------------------------------------

/// The trainer tests' tiny CLIP (16 px ViT, one layer per tower, CLIP's vocabulary), written to
/// `dir`: a step takes milliseconds, a checkpoint about 19 MB.
fn run_config(dir: &Path) -> PathBuf {
    let p = dir.join("run.json");
    std::fs::write(
        &p,
        r#"{"embed_dim": 16,
            "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 32},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}"#,
    )
    .unwrap();
    p
}

/// `clipcu train` on the tiny config into `out` with `extra`, and, where `extra` does not set
/// them: CPU, batch 8, warmup 2, no evaluation.
fn train_cmd(cfg: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(clipcu());
    c.args(["train", "--config"]).arg(cfg).arg("--out").arg(out);
    for (flag, value) in [
        ("--device", "cpu"),
        ("--batch-size", "8"),
        ("--warmup", "2"),
        ("--eval-every", "0"),
    ] {
        if !extra.contains(&flag) {
            c.args([flag, value]);
        }
    }
    c.args(extra);
    c
}

/// Exit 1 with every one of `needles` in stderr; returns stderr.
fn fails_with(o: &Output, needles: &[&str]) -> String {
    let err = never_crashed(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    err
}

fn succeeds(o: &Output) -> String {
    let err = never_crashed(o);
    assert!(o.status.success(), "{err}");
    err
}

/// The names of `dir`'s entries, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The (step, loss) lines of a metrics file, in file order.
fn step_losses(metrics: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect()
}

/// Every tensor of a safetensors file as bits, by name.
fn tensor_bits(path: &Path) -> Vec<(String, Vec<u32>)> {
    let mut v: Vec<(String, Vec<u32>)> = clipcu::io::load(path)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(n, t)| (n, t.to_vec().iter().map(|x| x.to_bits()).collect()))
        .collect();
    v.sort();
    v
}

fn all_finite(path: &Path) -> bool {
    clipcu::io::load(path)
        .unwrap()
        .tensors
        .iter()
        .all(|(_, t)| t.value_stats().unwrap().non_finite == 0)
}

#[test]
fn class3_a_run_or_an_input_is_never_overwritten_without_asking() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_config(dir.path());
    let run = dir.path().join("run");
    succeeds(
        &train_cmd(&cfg, &run, &["--steps", "3", "--checkpoint-every", "1"])
            .output()
            .unwrap(),
    );
    let before: Vec<(String, Vec<u8>)> = names(&run)
        .into_iter()
        .map(|n| (n.clone(), std::fs::read(run.join(&n)).unwrap()))
        .collect();
    // a fresh run into it is refused, and nothing in the folder changes
    let o = train_cmd(&cfg, &run, &["--steps", "2"]).output().unwrap();
    fails_with(
        &o,
        &[
            "already holds a run",
            "checkpoint.safetensors",
            "--overwrite",
            "--resume",
        ],
    );
    for (n, bytes) in &before {
        assert_eq!(&std::fs::read(run.join(n)).unwrap(), bytes, "{n} changed");
    }
    // --overwrite replaces the whole run: no checkpoint of the old one is left to mix in
    succeeds(
        &train_cmd(&cfg, &run, &["--steps", "2", "--overwrite"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        names(&run),
        [
            "checkpoint-2.safetensors",
            "checkpoint.safetensors",
            "metrics.jsonl",
            "model.safetensors",
            "training.png"
        ]
    );
    assert_eq!(step_losses(&run.join("metrics.jsonl")).len(), 2);

    // outputs that are inputs of the same command, however spelled
    let weights = run.join("model.safetensors");
    let model_bytes = std::fs::read(&weights).unwrap();
    std::os::unix::fs::symlink(&weights, dir.path().join("alias.safetensors")).unwrap();
    let img = dir.path().join("a.png");
    std::fs::write(&img, png_bytes(20, 20, [200, 10, 10])).unwrap();
    let spelled = run.join("..").join("run").join("model.safetensors");
    for out in [
        weights.clone(),
        spelled,
        dir.path().join("alias.safetensors"),
    ] {
        let o = Command::new(clipcu())
            .args(["embed", "--weights"])
            .arg(&weights)
            .args(["--text", "a cat", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        fails_with(
            &o,
            &["--out", "same file as --weights", "model.safetensors"],
        );
    }
    let o = Command::new(clipcu())
        .args(["embed", "--weights"])
        .arg(&weights)
        .arg("--image")
        .arg(&img)
        .arg("--out")
        .arg(&img)
        .output()
        .unwrap();
    fails_with(&o, &["same file as --image", "a.png"]);
    let folder = dir.path().join("folder");
    for c in ["red", "blue"] {
        std::fs::create_dir_all(folder.join(c)).unwrap();
        std::fs::write(folder.join(c).join("0.png"), png_bytes(20, 20, [9, 9, 9])).unwrap();
    }
    for (cache, needle) in [
        (weights.clone(), "same file as --weights"),
        (folder.join("red").join("0.png"), "an image of --data"),
    ] {
        let o = Command::new(clipcu())
            .args(["zeroshot", "--weights"])
            .arg(&weights)
            .arg("--data")
            .arg(&folder)
            .args(["--templates", "simple", "--cache"])
            .arg(&cache)
            .output()
            .unwrap();
        fails_with(&o, &["--cache", needle]);
    }
    assert_eq!(std::fs::read(&weights).unwrap(), model_bytes);
    // --config pointing at a file the run writes
    let o = train_cmd(
        &run.join("metrics.jsonl"),
        &run,
        &["--steps", "2", "--overwrite"],
    )
    .output()
    .unwrap();
    fails_with(&o, &["same file as --config", "metrics.jsonl"]);
    assert_eq!(step_losses(&run.join("metrics.jsonl")).len(), 2);
}

/// A copy of the safetensors file `src` at `dst` with `edit` applied to the tensor `name`.
fn edited_weights(src: &Path, dst: &Path, name: &str, edit: impl Fn(&mut [f32])) {
    let f = clipcu::io::load(src).unwrap();
    let tensors: Vec<(String, clipcu::Tensor)> = f
        .tensors
        .into_iter()
        .map(|(n, t)| {
            if n == name {
                let mut v = t.to_vec();
                edit(&mut v);
                (n, clipcu::Tensor::from_vec(v, t.shape().to_vec()).unwrap())
            } else {
                (n, t)
            }
        })
        .collect();
    let refs: Vec<(&str, &clipcu::Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    clipcu::io::save(dst, &refs, &f.metadata).unwrap();
}

#[test]
fn class4_garbage_is_an_error_not_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_config(dir.path());
    let run = dir.path().join("run");
    succeeds(&train_cmd(&cfg, &run, &["--steps", "2"]).output().unwrap());
    let img = dir.path().join("a.png");
    std::fs::write(&img, png_bytes(20, 20, [200, 10, 10])).unwrap();
    let embed = |weights: &Path| {
        Command::new(clipcu())
            .args(["embed", "--weights"])
            .arg(weights)
            .arg("--image")
            .arg(&img)
            .args(["--text", "a red square", "--out"])
            .arg(dir.path().join("e.safetensors"))
            .output()
            .unwrap()
    };
    succeeds(&embed(&run.join("model.safetensors")));

    // a NaN weight: refused when loaded, naming the tensor (CLI and library)
    let nan = dir.path().join("nan.safetensors");
    edited_weights(
        &run.join("model.safetensors"),
        &nan,
        "ln_final.weight",
        |v| v[3] = f32::NAN,
    );
    let _ = std::fs::remove_file(dir.path().join("e.safetensors"));
    fails_with(
        &embed(&nan),
        &["nan.safetensors", "ln_final.weight", "non-finite"],
    );
    assert!(
        !dir.path().join("e.safetensors").exists(),
        "NaN embeddings written"
    );
    let Err(e) = clipcu::model::load_clip(&nan, None) else {
        panic!("NaN weights loaded")
    };
    let e = e.to_string();
    assert!(
        e.contains("ln_final.weight") && e.contains("1 of its"),
        "{e}"
    );
    // an infinite optimizer moment in a checkpoint: resume names it
    let ck = dir.path().join("ck.safetensors");
    let moment = clipcu::io::load(run.join("checkpoint.safetensors"))
        .unwrap()
        .tensors
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| n.starts_with("optim."))
        .unwrap();
    edited_weights(&run.join("checkpoint.safetensors"), &ck, &moment, |v| {
        v[0] = f32::INFINITY
    });
    let o = train_cmd(&cfg, &run, &["--steps", "4", "--resume"])
        .arg(&ck)
        .output()
        .unwrap();
    // (into the folder of another run: refused before the checkpoint is read)
    fails_with(&o, &["--resume", "another folder", "mix the two runs"]);
    let o = train_cmd(
        &cfg,
        &dir.path().join("elsewhere"),
        &["--steps", "4", "--resume"],
    )
    .arg(&ck)
    .output()
    .unwrap();
    fails_with(&o, &[moment.as_str(), "non-finite"]);

    // finite weights whose forward overflows: the embedding is refused, not written
    let huge = dir.path().join("huge.safetensors");
    edited_weights(&run.join("model.safetensors"), &huge, "visual.proj", |v| {
        v.iter_mut().for_each(|x| *x = 3e38)
    });
    fails_with(
        &embed(&huge),
        &["embedding of the image", "a.png", "not finite"],
    );
    assert!(!dir.path().join("e.safetensors").exists());

    // zero-shot on a folder none of whose images can be read: an error, not 0.00%
    let folder = dir.path().join("folder");
    for c in ["red", "blue"] {
        std::fs::create_dir_all(folder.join(c)).unwrap();
        std::fs::write(folder.join(c).join("0.png"), b"not a png").unwrap();
    }
    let zeroshot = || {
        Command::new(clipcu())
            .args(["zeroshot", "--weights"])
            .arg(run.join("model.safetensors"))
            .arg("--data")
            .arg(&folder)
            .args(["--templates", "simple"])
            .output()
            .unwrap()
    };
    let o = zeroshot();
    fails_with(
        &o,
        &["folder", "none of its 2 images", "nothing to evaluate"],
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("top-1"));
    // one readable image: evaluated, the other skipped and counted
    std::fs::write(
        folder.join("red").join("0.png"),
        png_bytes(20, 20, [200, 9, 9]),
    )
    .unwrap();
    let o = zeroshot();
    succeeds(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("on 1 images") && out.contains("1 unreadable skipped"),
        "{out}"
    );
}

#[test]
fn class4_a_nan_loss_names_the_step_and_the_non_finite_weight() {
    use clipcu::train::{DataSpec, TrainConfig, Trainer};
    let cfg = ClipConfig::from_json(
        &std::fs::read_to_string(run_config(tempfile::tempdir().unwrap().path())).unwrap(),
        "run.json",
    )
    .unwrap();
    for device in [clipcu::Device::Cpu, clipcu::Device::Emu] {
        let tc = TrainConfig {
            batch_size: 8,
            micro_batch: 0,
            steps: 4,
            lr: 1e-3,
            weight_decay: 0.1,
            warmup: 2,
            constant_lr: false,
            grad_clip: None,
            seed: 3,
            checkpointing: false,
            shape_groups: 0,
            lock: Default::default(),
            epochs: None,
            augment: false,
            workers: None,
            precision: None,
        };
        let mut t = Trainer::new(&cfg, tc, DataSpec::Synthetic).unwrap();
        t.to_device(device).unwrap();
        t.train_step().unwrap();
        // a weight turned NaN on the device after step 1 (as an unchecked update would)
        let (name, p) = t
            .model
            .named_params()
            .into_iter()
            .find(|(n, _)| n == "ln_final.bias")
            .unwrap();
        let nan = clipcu::Tensor::full(f32::NAN, p.value().shape().to_vec());
        p.set_value(nan.to_device(device).unwrap()).unwrap();
        let e = t.train_step().unwrap_err().to_string();
        assert!(
            e.contains("step 2:")
                && e.contains("not applied")
                && e.contains("already non-finite")
                && e.contains(&name),
            "{device}: {e}"
        );
        assert_eq!(t.step, 1, "{device}: the failed step counted");
        // the checkpoint of such a state is refused before anything is written
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("c.safetensors");
        let e = t.save_checkpoint(&ck).unwrap_err().to_string();
        assert!(
            e.contains(&name) && e.contains("no checkpoint was written"),
            "{e}"
        );
        assert!(!ck.exists());
    }
}

#[test]
fn class5_options_that_make_no_sense_are_errors_or_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_config(dir.path());
    let fresh = dir.path().join("fresh");
    for (args, needle) in [
        (&["--steps", "3", "--batch-size", "1"][..], "--batch-size 1"),
        (&["--steps", "3", "--lr", "nan"], "--lr NaN"),
        (&["--steps", "3", "--lr", "inf"], "--lr inf"),
        (&["--steps", "3", "--lr=-1"], "--lr -1"),
        (&["--steps", "3", "--wd", "nan"], "--wd NaN"),
        (&["--steps", "3", "--grad-clip", "nan"], "--grad-clip NaN"),
        (&["--steps", "3", "--grad-clip", "0"], "--grad-clip 0"),
        (
            &["--steps", "3", "--eval-every", "2", "--eval-samples", "0"],
            "--eval-samples 0",
        ),
        (&["--steps", "0"], "--steps 0"),
    ] {
        let mut c = Command::new(clipcu());
        c.args(["train", "--config"])
            .arg(&cfg)
            .args(["--device", "cpu", "--out"])
            .arg(&fresh)
            .args(args);
        fails_with(&c.output().unwrap(), &[needle]);
        assert!(!fresh.exists(), "{args:?}: refused, yet wrote {fresh:?}");
    }

    // a batch larger than a finite dataset
    for (i, rgb) in [[200, 9, 9], [9, 200, 9], [9, 9, 200]].iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.png")), png_bytes(20, 20, *rgb)).unwrap();
    }
    let csv = dir.path().join("d.csv");
    std::fs::write(
        &csv,
        "filepath,title\n0.png,a red square\n1.png,a green square\n2.png,a blue square\n",
    )
    .unwrap();
    let on_csv = dir.path().join("csv-run");
    let o = train_cmd(
        &cfg,
        &on_csv,
        &["--steps", "2", "--data", csv.to_str().unwrap()],
    )
    .output()
    .unwrap();
    fails_with(
        &o,
        &["--batch-size 8", "3 samples", "d.csv", "false negative"],
    );
    succeeds(
        &train_cmd(
            &cfg,
            &on_csv,
            &[
                "--steps",
                "2",
                "--batch-size",
                "3",
                "--data",
                csv.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap(),
    );
    // resuming on other files: said, and it goes on
    let moved = dir.path().join("moved.csv");
    std::fs::copy(&csv, &moved).unwrap();
    let o = train_cmd(
        &cfg,
        &on_csv,
        &[
            "--steps",
            "3",
            "--batch-size",
            "3",
            "--resume",
            "--data",
            moved.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let err = succeeds(&o);
    assert!(
        err.contains("warning") && err.contains("moved.csv") && err.contains("d.csv"),
        "{err}"
    );

    // on resume: another model config, or nothing left to train
    let run = dir.path().join("run");
    succeeds(&train_cmd(&cfg, &run, &["--steps", "2"]).output().unwrap());
    let mut c = Command::new(clipcu());
    c.args([
        "train", "--config", "ViT-B-32", "--resume", "--steps", "4", "--out",
    ])
    .arg(&run);
    fails_with(&c.output().unwrap(), &["--config ViT-B-32", "checkpoint"]);
    let o = train_cmd(&cfg, &run, &["--steps", "2", "--resume"])
        .output()
        .unwrap();
    fails_with(
        &o,
        &["at step 2", "--steps is 2", "nothing is left to train"],
    );
    // the same config as the checkpoint's is fine
    succeeds(
        &train_cmd(&cfg, &run, &["--steps", "3", "--resume"])
            .output()
            .unwrap(),
    );

    // a checkpoint of an image-only config (vocab 1000) is refused on resume as on a fresh run
    let mut tiny = ClipConfig::load("tiny-vit").unwrap();
    tiny.vision_cfg.image_size = 16;
    let tc = clipcu::train::TrainConfig {
        batch_size: 8,
        micro_batch: 0,
        steps: 4,
        lr: 1e-3,
        weight_decay: 0.1,
        warmup: 2,
        constant_lr: false,
        grad_clip: None,
        seed: 0,
        checkpointing: false,
        shape_groups: 0,
        lock: Default::default(),
        epochs: None,
        augment: false,
        workers: None,
        precision: None,
    };
    let mut t = clipcu::train::Trainer::new(&tiny, tc, clipcu::train::DataSpec::Synthetic).unwrap();
    t.step = 1;
    let small_vocab = dir.path().join("v1000.safetensors");
    t.save_checkpoint(&small_vocab).unwrap();
    let o = train_cmd(&cfg, &dir.path().join("v"), &["--steps", "4", "--resume"])
        .arg(&small_vocab)
        .output()
        .unwrap();
    fails_with(&o, &["v1000.safetensors", "text_cfg.vocab_size"]);
}

/// The temporary files of atomic writes in `dir` (`.<name>.tmp.<pid>.<n>`).
fn temp_files(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with('.') && n.contains(".tmp."))
        .collect()
}

#[test]
fn class7_killed_runs_resume_to_the_uninterrupted_result() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_config(dir.path());
    let steps = "12";
    let common = [
        "--steps",
        steps,
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "2",
    ];
    let reference = dir.path().join("reference");
    succeeds(&train_cmd(&cfg, &reference, &common).output().unwrap());

    let run = dir.path().join("run");
    // How each attempt is killed: after `n` metrics lines; once there are `n` lines, as soon as
    // this attempt writes a checkpoint (its temporary file, named with the pid, exists); or
    // after a delay.
    enum Kill {
        AfterLines(usize),
        MidCheckpoint(usize),
        After(Duration),
    }
    let plan = [
        Kill::After(Duration::from_millis(30)), // most likely before the first checkpoint
        Kill::AfterLines(3),
        Kill::MidCheckpoint(0),
        Kill::After(Duration::from_millis(300)),
        Kill::MidCheckpoint(7),
        Kill::AfterLines(9),
        Kill::MidCheckpoint(10),
    ];
    let mut left_a_temp = 0;
    let started = Instant::now();
    for kill in &plan {
        let resumable = run.join("checkpoint.safetensors").exists();
        let mut cmd = train_cmd(&cfg, &run, &common);
        cmd.arg(if resumable { "--resume" } else { "--overwrite" });
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        // this child's checkpoint being written (the temporary name has the writer's pid)
        let mine = format!(".checkpoint.safetensors.tmp.{}.", child.id());
        loop {
            if child.try_wait().unwrap().is_some() {
                break; // finished before the moment came: fine, the next attempt resumes
            }
            let lines = std::fs::read_to_string(run.join("metrics.jsonl"))
                .map(|t| t.lines().count())
                .unwrap_or(0);
            let writing = || temp_files(&run).iter().any(|n| n.starts_with(&mine));
            // (every attempt is killed by step 11 at the latest, so that the last start has
            // steps left to do)
            let now = lines >= 11
                || match kill {
                    Kill::After(d) => t0.elapsed() >= *d,
                    Kill::AfterLines(n) => lines >= *n,
                    Kill::MidCheckpoint(n) => lines >= *n && run.is_dir() && writing(),
                };
            if now {
                child.kill().unwrap(); // SIGKILL
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child.wait().unwrap();
        let temps = if run.is_dir() {
            temp_files(&run)
        } else {
            vec![]
        };
        left_a_temp += usize::from(temps.iter().any(|n| n.starts_with(&mine)));
        eprintln!(
            "attempt ({}): killed after {} metrics lines, leaving {temps:?}",
            if resumable { "--resume" } else { "fresh" },
            std::fs::read_to_string(run.join("metrics.jsonl"))
                .map(|t| t.lines().count())
                .unwrap_or(0)
        );
        // whatever the kill left, every checkpoint on disk is whole
        if run.join("checkpoint.safetensors").exists() {
            clipcu::io::load(run.join("checkpoint.safetensors")).unwrap();
        }
    }
    assert!(left_a_temp > 0, "no kill landed mid-checkpoint");
    // the last start: resume to the end, removing what the last kill left
    let leftovers = temp_files(&run);
    let at = clipcu::io::load(run.join("checkpoint.safetensors"))
        .unwrap()
        .metadata["clipcu.step"]
        .clone();
    if at != steps {
        let o = train_cmd(&cfg, &run, &common)
            .arg("--resume")
            .output()
            .unwrap();
        let err = succeeds(&o);
        for f in &leftovers {
            assert!(err.contains("removed") && err.contains(f.as_str()), "{err}");
        }
        assert!(temp_files(&run).is_empty(), "{:?}", names(&run));
    } // (else a killed attempt finished the run after all: a stalled test thread)
      // each step exactly once, with the uninterrupted run's loss
    let want = step_losses(&reference.join("metrics.jsonl"));
    let got = step_losses(&run.join("metrics.jsonl"));
    assert_eq!(want.len(), 12);
    assert_eq!(got, want, "metrics.jsonl");
    // bit-identical weights and optimizer state
    for f in ["model.safetensors", "checkpoint.safetensors"] {
        assert!(
            tensor_bits(&run.join(f)) == tensor_bits(&reference.join(f)),
            "{f} differs from the uninterrupted run"
        );
    }
    // the newest two numbered checkpoints are kept, as in the uninterrupted run (one whose
    // link a kill prevented can be missing: a resumed run does not write it again)
    let numbered = |d: &Path| -> Vec<String> {
        names(d)
            .into_iter()
            .filter(|n| n.starts_with("checkpoint-"))
            .collect()
    };
    let (got, want) = (numbered(&run), numbered(&reference));
    assert_eq!(
        want,
        ["checkpoint-11.safetensors", "checkpoint-12.safetensors"]
    );
    assert!(
        got.iter().all(|n| want.contains(n)) && got.contains(&want[1]),
        "{got:?}"
    );
    eprintln!("kill-and-resume: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn divergence_stops_the_run_and_the_kept_checkpoints_resume() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_config(dir.path());
    // from the first step: stopped before anything but its metrics file is written
    let fresh = dir.path().join("fresh");
    let o = train_cmd(
        &cfg,
        &fresh,
        &["--steps", "4", "--lr", "1e6", "--warmup", "0"],
    )
    .output()
    .unwrap();
    fails_with(&o, &["step 1:", "exploded", "no checkpoint was written"]);
    assert_eq!(names(&fresh), ["metrics.jsonl"]);
    assert!(step_losses(&fresh.join("metrics.jsonl")).is_empty());
    for device in ["cpu", "emu"] {
        let run = dir.path().join(device);
        let every = ["--checkpoint-every", "1", "--device", device];
        succeeds(
            &train_cmd(&cfg, &run, &[&["--steps", "3"][..], &every].concat())
                .output()
                .unwrap(),
        );
        // the learning rate blows up from step 4 on
        let o = train_cmd(
            &cfg,
            &run,
            &[&["--steps", "8", "--resume", "--lr", "1e6"][..], &every].concat(),
        )
        .output()
        .unwrap();
        let err = fails_with(&o, &["step 4:", "exploded", "learning rate", "--lr"]);
        assert!(err.contains("checkpoint-3.safetensors"), "{device}: {err}");
        // no checkpoint of the diverged step was written; its metrics line (the loss it
        // computed, before its update) is there on a kernel device, where the update is checked
        // at the checkpoint, not on the CPU, where it is checked before the line is written
        let metrics = run.join("metrics.jsonl");
        let steps: Vec<u64> = step_losses(&metrics).iter().map(|(s, _)| *s).collect();
        let want: &[u64] = if device == "cpu" {
            &[1, 2, 3]
        } else {
            &[1, 2, 3, 4]
        };
        assert_eq!(steps, want, "{device}");
        let kept = [
            "checkpoint-1.safetensors",
            "checkpoint-2.safetensors",
            "checkpoint-3.safetensors",
            "checkpoint.safetensors",
        ];
        for k in kept {
            assert!(
                all_finite(&run.join(k)),
                "{device}: {k} holds non-finite values"
            );
        }
        let ck = clipcu::io::load(run.join("checkpoint.safetensors")).unwrap();
        assert_eq!(ck.metadata["clipcu.step"], "3");
        // resuming from the last good one (with a sane learning rate) works; the defaults keep
        // three numbered checkpoints
        succeeds(
            &train_cmd(
                &cfg,
                &run,
                &[&["--steps", "6", "--resume"][..], &every].concat(),
            )
            .output()
            .unwrap(),
        );
        let steps: Vec<u64> = step_losses(&metrics).iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [1, 2, 3, 4, 5, 6], "{device}");
        let numbered: Vec<String> = names(&run)
            .into_iter()
            .filter(|n| n.starts_with("checkpoint-"))
            .collect();
        assert_eq!(
            numbered,
            [
                "checkpoint-4.safetensors",
                "checkpoint-5.safetensors",
                "checkpoint-6.safetensors"
            ]
        );
        // an earlier kept checkpoint resumes too
        succeeds(
            &train_cmd(
                &cfg,
                &run,
                &[&["--steps", "6"][..], &every, &["--resume"]].concat(),
            )
            .arg(run.join("checkpoint-5.safetensors"))
            .output()
            .unwrap(),
        );
        assert_eq!(step_losses(&metrics).len(), 6);
    }
}
