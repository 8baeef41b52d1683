//! The `clipcu` command line as scripts use it: `tokenize --json` and `embed`.
mod common;
use clipcu::io::safetensors as st;
use clipcu::model::{load_into, Clip, ClipConfig};
use clipcu::tokenizer::Tokenizer;
use clipcu::Graph;
use std::path::PathBuf;
use std::process::Command;

fn clipcu() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clipcu"))
}

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "clipcu-cli-{}-{}",
        std::process::id(),
        common::fresh_seed()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

#[test]
fn tokenize_json_prints_context_length_rows() {
    let texts = ["a photo of a cat", "Ünïcödé &amp; emoji 🐈", ""];
    let out = clipcu()
        .arg("tokenize")
        .arg("--json")
        .args(texts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    let tok = Tokenizer::clip();
    assert_eq!(rows.len(), 3);
    for (t, r) in texts.iter().zip(&rows) {
        assert_eq!(r.len(), 77);
        assert_eq!(*r, tok.tokenize(t, 77), "{t}");
    }
}

#[test]
fn embed_writes_what_the_library_computes() {
    let dir = tmpdir();
    // a small config with CLIP's full vocabulary, given by path, with a random (seeded) init
    let mut cfg = ClipConfig::load("tiny-vit").unwrap();
    cfg.text_cfg.vocab_size = 49408;
    cfg.text_cfg.context_length = 77;
    let cfg_path = dir.join("small.json");
    std::fs::write(&cfg_path, cfg.to_json()).unwrap();
    let out = dir.join("e.safetensors");
    let texts = ["a red circle", "two blue stars on a white background"];
    let images = [fixture("photo-80x60.png"), fixture("photo-50x70.jpg")];
    let status = clipcu()
        .args(["embed", "--config"])
        .arg(&cfg_path)
        .args(["--seed", "7", "--image"])
        .arg(&images[0])
        .arg("--image")
        .arg(&images[1])
        .args(["--text", texts[0], "--text", texts[1], "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let f = st::load(&out).unwrap();
    let model = Clip::new(&cfg, 7);
    let g = Graph::inference();
    let ids = Tokenizer::clip().tokenize_batch(&texts, 77);
    let want_t = model.encode_text(&g, &ids, 2).unwrap().into_tensor();
    let pre = clipcu::data::Preprocess::clip(32);
    let imgs: Vec<_> = images
        .iter()
        .map(|p| clipcu::data::load_image(p).unwrap())
        .collect();
    let want_i = model
        .encode_image(&g, &g.constant(pre.batch(&imgs).unwrap()))
        .unwrap()
        .into_tensor();
    assert_eq!(f.get("text_embeds").unwrap().shape(), [2, 32]);
    assert_eq!(f.get("image_embeds").unwrap().shape(), [2, 32]);
    assert!(f.get("text_embeds").unwrap().rel_err(&want_t) < 1e-6);
    assert!(f.get("image_embeds").unwrap().rel_err(&want_i) < 1e-6);

    // with open_clip weights and --normalize: unit rows equal to the normalised library output
    let status = clipcu()
        .args(["embed", "--config", "tiny-vit", "--weights"])
        .arg(fixture("tiny-vit.safetensors"))
        .arg("--image")
        .arg(&images[0])
        .args(["--normalize", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let f = st::load(&out).unwrap();
    let m = Clip::new(&ClipConfig::load("tiny-vit").unwrap(), 0);
    load_into(&m, fixture("tiny-vit.safetensors")).unwrap();
    let g = Graph::inference();
    let e = m
        .encode_image(&g, &g.constant(pre.batch(&imgs[..1]).unwrap()))
        .unwrap()
        .into_tensor();
    let want = clipcu::ops::normalize::l2_normalize(&e).unwrap();
    assert!(f.get("image_embeds").unwrap().rel_err(&want) < 1e-6);
    assert_eq!(f.get("text_embeds").unwrap().shape(), [0, 32]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn embed_errors_name_what_is_wrong() {
    let dir = tmpdir();
    let out = clipcu()
        .args([
            "embed",
            "--config",
            "tiny-vit",
            "--image",
            "/nonexistent/cat.png",
            "--out",
        ])
        .arg(dir.join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cat.png"));
    let out = clipcu()
        .args(["embed", "--out"])
        .arg(dir.join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    std::fs::remove_dir_all(dir).ok();
}

/// A small config with CLIP's full vocabulary (random init), written to `dir`.
fn small_config(dir: &std::path::Path) -> PathBuf {
    let mut cfg = ClipConfig::load("tiny-vit").unwrap();
    cfg.text_cfg.vocab_size = 49408;
    cfg.text_cfg.context_length = 77;
    let p = dir.join("small.json");
    std::fs::write(&p, cfg.to_json()).unwrap();
    p
}

fn write_png(path: &std::path::Path, seed: u64) {
    let img = image::RgbImage::from_fn(40, 30, |x, y| {
        let v = common::splitmix64(seed ^ ((x as u64) << 8) ^ y as u64);
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    img.save(path).unwrap();
}

/// The value printed after `label` on the line that contains it ("top-1 12.34%" → "12.34").
fn printed_percent<'a>(line: &'a str, label: &str) -> &'a str {
    let rest = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("{label} in {line}"))
        + label.len()..];
    rest.trim_start().split('%').next().unwrap().trim()
}

#[test]
fn zeroshot_and_retrieval_commands() {
    let dir = tmpdir();
    let cfg_path = small_config(&dir);
    // 7 classes, 23 images: top-5 of 7 is not 100% by construction
    let classes = [
        ("red_circle", 4),
        ("blue_square", 3),
        ("green_star", 3),
        ("yellow_triangle", 3),
        ("purple_ring", 3),
        ("orange_arrow", 3),
        ("white_diamond", 4),
    ];
    for (c, n) in classes {
        std::fs::create_dir_all(dir.join("folder").join(c)).unwrap();
        for i in 0..n {
            write_png(
                &dir.join("folder").join(c).join(format!("{i}.png")),
                i as u64 * 131 + c.len() as u64 * 7 + c.as_bytes()[0] as u64,
            );
        }
    }
    let cache = dir.join("clf.safetensors");
    let run = || {
        clipcu()
            .args(["zeroshot", "--config"])
            .arg(&cfg_path)
            .arg("--data")
            .arg(dir.join("folder"))
            .args(["--templates", "simple", "--cache"])
            .arg(&cache)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("zero-shot on 23 images of 7 classes (7 templates)"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("built"));

    // The same evaluation through the library: the CLI's model (config, seed 0, eval mode), the
    // folder's classes, every image classified; top-k counted here, not by the library's helper.
    let cfg = ClipConfig::load(cfg_path.to_str().unwrap()).unwrap();
    let mut model = Clip::new(&cfg, 0);
    model.set_training(false);
    let folder = clipcu::data::ImageFolder::open(dir.join("folder")).unwrap();
    let names: Vec<String> = folder.classes.iter().map(|c| c.replace('_', " ")).collect();
    let clf = clipcu::zeroshot::ZeroShotClassifier::build(
        &model,
        &names,
        &clipcu::zeroshot::Templates::simple(),
        64,
    )
    .unwrap();
    let pre = clipcu::data::Preprocess::clip(cfg.vision_cfg.image_size);
    let imgs: Vec<_> = folder
        .samples
        .iter()
        .map(|(p, _)| clipcu::data::load_image(p).unwrap())
        .collect();
    let g = Graph::inference();
    let feats = model
        .encode_image(&g, &g.constant(pre.batch(&imgs).unwrap()))
        .unwrap()
        .into_tensor();
    let feats = clipcu::ops::normalize::l2_normalize(&feats).unwrap();
    let logits = clf.classify(&feats).unwrap().to_vec();
    let k = names.len();
    let (mut top1, mut top5) = (0, 0);
    for (row, (_, label)) in logits.chunks(k).zip(&folder.samples) {
        // rank of the true class: classes scoring at least as high (ties count against it)
        let rank = (0..k)
            .filter(|&c| c != *label && row[c] >= row[*label])
            .count();
        top1 += (rank < 1) as usize;
        top5 += (rank < 5) as usize;
    }
    let n = folder.samples.len() as f64;
    let line = |label: &str| text.lines().find(|l| l.contains(label)).unwrap();
    assert_eq!(
        printed_percent(line("top-1"), "top-1"),
        format!("{:.2}", 100.0 * top1 as f64 / n),
        "{text}"
    );
    assert_eq!(
        printed_percent(line("top-5"), "top-5"),
        format!("{:.2}", 100.0 * top5 as f64 / n),
        "{text}"
    );
    assert!(
        top5 < 23,
        "top-5 of 7 classes at 100% would not test the count"
    );
    println!("{text}");

    let again = run();
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("loaded"),
        "the cached classifier is reused"
    );
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        text,
        "same numbers from the cache"
    );

    // Retrieval: the 23 images, 30 captions (7 images with two), recall@1/5/10 both ways computed
    // here from the library's embeddings.
    let mut csv = String::from("filepath,title\n");
    let mut text_to_image = Vec::new();
    let colours = [
        "red", "blue", "green", "yellow", "purple", "orange", "white",
    ];
    for (i, (p, c)) in folder.samples.iter().enumerate() {
        let rel = p.strip_prefix(&dir).unwrap().display().to_string();
        let captions = if i % 3 == 0 { 2 } else { 1 };
        for j in 0..captions {
            csv += &format!("{rel},a {} thing number {i} take {j}\n", colours[*c]);
            text_to_image.push(i);
        }
    }
    let csv_path = dir.join("pairs.csv");
    std::fs::write(&csv_path, &csv).unwrap();
    let out = clipcu()
        .args(["retrieval", "--config"])
        .arg(&cfg_path)
        .arg("--data")
        .arg(&csv_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let m = text_to_image.len();
    assert!(
        text.contains(&format!("retrieval on 23 images and {m} captions")),
        "{text}"
    );
    let captions: Vec<String> = csv
        .lines()
        .skip(1)
        .map(|l| l.split_once(',').unwrap().1.to_string())
        .collect();
    let ids = Tokenizer::clip().tokenize_batch(&captions, cfg.text_cfg.context_length);
    let txt = model.encode_text(&g, &ids, m).unwrap().into_tensor();
    let (img, txt) = (
        feats.to_vec(),
        clipcu::ops::normalize::l2_normalize(&txt).unwrap().to_vec(),
    );
    println!("{text}");
    let d = cfg.embed_dim;
    let sim = |i: usize, t: usize| -> f32 { (0..d).map(|e| img[i * d + e] * txt[t * d + e]).sum() };
    for k in [1usize, 5, 10] {
        // image → text: the best of the image's captions against every other caption
        let mut i2t = 0;
        for i in 0..23 {
            let own: Vec<usize> = (0..m).filter(|&t| text_to_image[t] == i).collect();
            let best = own.iter().map(|&t| sim(i, t)).fold(f32::MIN, f32::max);
            let rank = (0..m)
                .filter(|&t| text_to_image[t] != i && sim(i, t) >= best)
                .count();
            i2t += (rank < k) as usize;
        }
        // text → image: the caption's image against every other image
        let mut t2i = 0;
        for (t, &i) in text_to_image.iter().enumerate() {
            let rank = (0..23)
                .filter(|&j| j != i && sim(j, t) >= sim(i, t))
                .count();
            t2i += (rank < k) as usize;
        }
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("recall@{k} ")))
            .unwrap_or_else(|| panic!("recall@{k} in {text}"));
        assert_eq!(
            printed_percent(line, "image→text"),
            format!("{:.2}", 100.0 * i2t as f64 / 23.0),
            "recall@{k} image→text: {line}"
        );
        assert_eq!(
            printed_percent(line, "text→image"),
            format!("{:.2}", 100.0 * t2i as f64 / m as f64),
            "recall@{k} text→image: {line}"
        );
    }

    let out = clipcu()
        .args(["zeroshot", "--config"])
        .arg(&cfg_path)
        .args(["--data", "/nonexistent/folder"])
        .output()
        .unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("/nonexistent/folder")
    );
    std::fs::remove_dir_all(dir).ok();
}

/// `metrics.jsonl`'s per-step losses and its evaluation lines.
fn metrics(path: &std::path::Path) -> (Vec<f64>, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let losses = lines.iter().filter_map(|v| v["loss"].as_f64()).collect();
    let evals = lines
        .into_iter()
        .filter(|v| v["eval"].is_string())
        .collect();
    (losses, evals)
}

#[test]
fn train_on_emu_writes_what_the_cpu_run_writes() {
    let dir = tmpdir();
    let cfg = small_config(&dir);
    let run = |device: &str| {
        let out = dir.join(device);
        let o = clipcu()
            .args(["train", "--config"])
            .arg(&cfg)
            .args(["--device", device, "--steps", "30", "--batch-size", "8"])
            .args(["--grad-clip", "1.0", "--warmup", "5", "--lr", "5e-4"])
            .args([
                "--eval-every",
                "30",
                "--eval-samples",
                "32",
                "--checkpoint-every",
                "10",
            ])
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "train --device {device}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for f in [
            "metrics.jsonl",
            "checkpoint.safetensors",
            "model.safetensors",
            "training.png",
        ] {
            assert!(out.join(f).is_file(), "{device}: {f} missing");
        }
        (metrics(&out.join("metrics.jsonl")), out)
    };
    let ((cpu_losses, cpu_evals), cpu_dir) = run("cpu");
    let ((emu_losses, emu_evals), emu_dir) = run("emu");
    assert_eq!(cpu_losses.len(), 30);
    assert_eq!(emu_losses.len(), 30);
    for (step, (e, c)) in emu_losses.iter().zip(&cpu_losses).enumerate() {
        assert!(
            ((e - c) / c).abs() < 1e-4,
            "step {step}: emu loss {e} vs cpu {c}"
        );
    }
    // the held-out zero-shot evaluation ran on the device too, on the same model
    assert_eq!(emu_evals.len(), 1);
    assert_eq!(cpu_evals.len(), 1);
    for key in [
        "shape_single",
        "shape_ensemble",
        "colour_single",
        "colour_ensemble",
    ] {
        let (e, c) = (emu_evals[0][key].as_f64(), cpu_evals[0][key].as_f64());
        assert!(
            e.is_some() && (e.unwrap() - c.unwrap()).abs() <= 1.0 / 32.0 + 1e-9,
            "{key}: {e:?} vs {c:?}"
        );
    }
    // the saved models hold the same weights (within the run's agreement)
    let (a, b) = (
        st::load(cpu_dir.join("model.safetensors")).unwrap(),
        st::load(emu_dir.join("model.safetensors")).unwrap(),
    );
    let names =
        |f: &st::SafeTensorsFile| f.tensors.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    for (n, t) in &a.tensors {
        if n.contains("in_proj_bias") {
            continue; // the zero-gradient key third: see tests/train_device.rs
        }
        let err = b.get(n).unwrap().rel_err(t);
        assert!(err < 1e-4, "{n}: {err:.2e}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn train_on_a_missing_gpu_says_what_is_missing() {
    let dir = tmpdir();
    let o = clipcu()
        .args(["train", "--config"])
        .arg(small_config(&dir))
        .args(["--device", "cuda", "--steps", "2", "--out"])
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    if clipcu::Device::Cuda(0).ensure_available().is_ok() {
        return; // a GPU machine: nothing is missing
    }
    assert_eq!(o.status.code(), Some(1), "{err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or("");
    assert!(
        line.contains("cuda") && (line.contains("libcuda") || line.contains("driver")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn embed_and_zeroshot_on_emu_equal_the_cpu() {
    let dir = tmpdir();
    let cfg = small_config(&dir);
    let images = [fixture("photo-80x60.png"), fixture("photo-50x70.jpg")];
    let embed = |device: &str| {
        let out = dir.join(format!("{device}.safetensors"));
        let o = clipcu()
            .args(["embed", "--config"])
            .arg(&cfg)
            .args(["--seed", "3", "--device", device, "--image"])
            .arg(&images[0])
            .arg("--image")
            .arg(&images[1])
            .args(["--text", "a red circle", "--text", "two stars", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        st::load(&out).unwrap()
    };
    let (cpu, emu) = (embed("cpu"), embed("emu"));
    for k in ["image_embeds", "text_embeds"] {
        let err = emu.get(k).unwrap().rel_err(cpu.get(k).unwrap());
        assert!(err < 1e-5, "{k}: {err:.2e}");
    }
    for c in ["red_circle", "blue_square", "green_star"] {
        std::fs::create_dir_all(dir.join("folder").join(c)).unwrap();
        for i in 0..3 {
            write_png(
                &dir.join("folder").join(c).join(format!("{i}.png")),
                i * 7 + c.len() as u64,
            );
        }
    }
    let zeroshot = |device: &str| {
        let o = clipcu()
            .args(["zeroshot", "--config"])
            .arg(&cfg)
            .arg("--data")
            .arg(dir.join("folder"))
            .args(["--templates", "simple", "--device", device, "--cache"])
            .arg(dir.join(format!("clf-{device}.safetensors")))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert_eq!(zeroshot("emu"), zeroshot("cpu"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_sizes_and_template_paths_are_errors_or_work_never_panics() {
    let dir = tmpdir();
    // a zero width is an error naming the option (it used to panic in the CPU GEMM)
    let o = clipcu()
        .args(["demo", "--width", "0", "--steps", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--width") && !err.contains("panicked"),
        "{err}"
    );
    // a template file given by a path with folders in it (the classifier cache used to be named
    // from the whole path: a panic on the separators)
    std::fs::create_dir_all(dir.join("tpl")).unwrap();
    std::fs::write(
        dir.join("tpl/my templates.txt"),
        "a photo of a {}.\nart of a {}.\n",
    )
    .unwrap();
    for c in ["red_circle", "blue_square"] {
        std::fs::create_dir_all(dir.join("folder").join(c)).unwrap();
        write_png(&dir.join("folder").join(c).join("0.png"), c.len() as u64);
    }
    let o = clipcu()
        .current_dir(&dir)
        .args(["zeroshot", "--config"])
        .arg(small_config(&dir))
        .args(["--data", "folder", "--templates", "tpl/my templates.txt"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(2 templates)"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let caches: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("zeroshot-"))
        .collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    assert!(caches[0].contains("zeroshot-my_templates-"), "{caches:?}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_small_image_size_trains_on_files_and_is_an_error_for_the_synthetic_data() {
    // image_size 8 is below the synthetic scenes' minimum: training on a CSV works (the
    // held-out synthetic evaluation is skipped, said once), training on the synthetic data is an
    // error naming image_size — neither panics (both used to).
    let dir = tmpdir();
    let mut cfg = ClipConfig::load("tiny-vit").unwrap();
    cfg.vision_cfg.image_size = 8;
    cfg.vision_cfg.patch_size = Some(4);
    cfg.text_cfg.vocab_size = 49408;
    let cfg_path = dir.join("is8.json");
    std::fs::write(&cfg_path, cfg.to_json()).unwrap();
    write_png(&dir.join("a.png"), 1);
    write_png(&dir.join("b.png"), 2);
    std::fs::write(
        dir.join("d.csv"),
        "filepath,title\na.png,a red thing\nb.png,a blue thing\na.png,red again\nb.png,blue again\n",
    )
    .unwrap();
    let train = |out: &str, extra: &[&str]| {
        clipcu()
            .args(["train", "--config"])
            .arg(&cfg_path)
            .args([
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--device",
                "cpu",
                "--out",
            ])
            .arg(dir.join(out))
            .args(extra)
            .output()
            .unwrap()
    };
    let o = train("files", &["--data", dir.join("d.csv").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        err.matches("the synthetic shape evaluation is not run")
            .count(),
        1,
        "{err}"
    );
    let o = train("synthetic", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("image_size 8") && !err.contains("panicked"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_text_that_starts_with_a_dash_is_a_text() {
    let dir = tmpdir();
    let o = clipcu()
        .args(["embed", "--config"])
        .arg(small_config(&dir))
        .args(["--text", "-x marks the spot", "--out"])
        .arg(dir.join("e.safetensors"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = st::load(dir.join("e.safetensors")).unwrap();
    assert_eq!(f.get("text_embeds").unwrap().shape()[0], 1);
    std::fs::remove_dir_all(dir).ok();
}

/// A reader that closes the pipe early (`clipcu kernels | grep -q PTX`, `| head`) ends the
/// process quietly by SIGPIPE, as it ends `cat` — not with a panic (exit 101) on the failed write.
/// Here the read end is closed before the child is spawned, so its first line meets it (closing
/// it after the spawn raced the child: on a loaded machine its whole output, < 64 KiB, could fit
/// the pipe's buffer first and the process would exit 0).
#[test]
#[cfg(unix)]
fn a_closed_stdout_ends_the_process_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = clipcu()
        .arg("kernels")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "clipcu kernels panicked: {stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "status {:?}, stderr {stderr}",
        out.status
    );
}

#[test]
fn train_on_a_csv_evaluates_zero_shot_and_validation_on_the_users_data() {
    let dir = tmpdir();
    let cfg_path = small_config(&dir);
    let classes = ["cat", "dog", "fox"];
    let mut csv = String::from("filepath,title\n");
    for (c, class) in classes.iter().enumerate() {
        std::fs::create_dir_all(dir.join("zs").join(class)).unwrap();
        for i in 0..4 {
            let rel = format!("zs/{class}/{i}.png");
            write_png(&dir.join(&rel), (c * 10 + i) as u64);
            csv += &format!("{rel},a photo of a {class}, picture {i}\n");
        }
    }
    std::fs::write(dir.join("train.csv"), &csv).unwrap();
    std::fs::write(dir.join("val.csv"), &csv).unwrap();
    std::fs::write(dir.join("names.txt"), "cat\tsmall cat\n").unwrap();
    let run = |out: &str, extra: &[&str]| {
        let o = clipcu()
            .args(["train", "--config"])
            .arg(&cfg_path)
            .args([
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--eval-every",
                "2",
                "--device",
                "cpu",
            ])
            .args(["--data", dir.join("train.csv").to_str().unwrap(), "--out"])
            .arg(dir.join(out))
            .args(extra)
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "{out}\n{err}");
        (out.into_owned(), err.into_owned())
    };
    let (out, err) = run(
        "with",
        &[
            "--zeroshot-data",
            dir.join("zs").to_str().unwrap(),
            "--zeroshot-templates",
            "simple",
            "--zeroshot-classnames",
            dir.join("names.txt").to_str().unwrap(),
            "--val-data",
            dir.join("val.csv").to_str().unwrap(),
        ],
    );
    assert!(
        !out.contains("shape task") && !err.contains("held-out zero-shot"),
        "{out}{err}"
    );
    assert!(
        out.contains("zero-shot on") && out.contains("recall@10"),
        "{out}"
    );
    let (losses, evals) = metrics(&dir.join("with/metrics.jsonl"));
    assert_eq!(losses.len(), 6, "2 epochs × ⌊12 / 4⌋ steps");
    let zs: Vec<_> = evals.iter().filter(|v| v["eval"] == "zeroshot").collect();
    let val: Vec<_> = evals.iter().filter(|v| v["eval"] == "val").collect();
    assert_eq!((zs.len(), val.len()), (3, 3), "{evals:?}");
    for z in &zs {
        let (t1, t5) = (z["top1"].as_f64().unwrap(), z["top5"].as_f64().unwrap());
        assert!(
            (0.0..=1.0).contains(&t1) && t5 == 1.0 && z["samples"] == 12,
            "{z}"
        );
    }
    for v in &val {
        assert!(
            v["val_loss"].as_f64().unwrap().is_finite() && v["samples"] == 12,
            "{v}"
        );
        let r1 = v["image_to_text_r1"].as_f64().unwrap();
        let r10 = v["image_to_text_r10"].as_f64().unwrap();
        assert!(r1 <= r10 && r10 <= 1.0 && r1 >= 0.0, "{v}");
    }
    // without --zeroshot-data: no synthetic shape line, said once why
    let (out, err) = run("without", &[]);
    assert!(!out.contains("shape task"), "{out}");
    assert_eq!(
        err.matches("the synthetic shape evaluation is not run")
            .count(),
        1,
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn fine_tune_flags_are_checked_before_training() {
    let dir = tmpdir();
    let cfg_path = small_config(&dir);
    let o = clipcu()
        .args(["train", "--config"])
        .arg(&cfg_path)
        .args(["--lock-image-unlocked-groups", "1", "--out"])
        .arg(dir.join("r"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("add --lock-image"),
        "{err}"
    );
    let o = clipcu()
        .args(["train", "--epochs", "2", "--out"])
        .arg(dir.join("r2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("synthetic dataset is infinite"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn pretrained_with_lock_image_keeps_the_image_tower_of_the_file() {
    let dir = tmpdir();
    let cfg_path = small_config(&dir);
    let train = |out: &str, extra: &[&str]| {
        let o = clipcu()
            .args([
                "train",
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--eval-every",
                "0",
            ])
            .args(["--device", "cpu", "--out"])
            .arg(dir.join(out))
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    train("base", &["--config", cfg_path.to_str().unwrap()]);
    let pre = dir.join("base/model.safetensors");
    train(
        "tuned",
        &[
            "--pretrained",
            pre.to_str().unwrap(),
            "--lock-image",
            "--seed",
            "5",
        ],
    );
    let (a, b) = (
        clipcu::io::safetensors::load(&pre).unwrap(),
        clipcu::io::safetensors::load(dir.join("tuned/model.safetensors")).unwrap(),
    );
    let bits = |t: &clipcu::Tensor| t.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let (mut same, mut changed) = (0, 0);
    for (n, t) in &a.tensors {
        let u = b.get(n).unwrap();
        if n.starts_with("visual.") {
            assert_eq!(bits(t), bits(u), "{n} changed under --lock-image");
            same += 1;
        } else if bits(t) != bits(u) {
            changed += 1;
        }
    }
    assert!(
        same > 10 && changed > 10,
        "{same} image tensors kept, {changed} others changed"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn train_on_files_augments_unless_no_augment_and_a_resume_keeps_the_checkpoints_setting() {
    let dir = tmpdir();
    let mut cfg = ClipConfig::load("tiny-vit").unwrap();
    cfg.vision_cfg.image_size = 8;
    cfg.vision_cfg.patch_size = Some(4);
    cfg.text_cfg.vocab_size = 49408;
    let cfg_path = dir.join("is8.json");
    std::fs::write(&cfg_path, cfg.to_json()).unwrap();
    write_png(&dir.join("a.png"), 1);
    write_png(&dir.join("b.png"), 2);
    std::fs::write(
        dir.join("d.csv"),
        "filepath,title\na.png,a red thing\nb.png,a blue thing\na.png,red again\nb.png,blue again\n",
    )
    .unwrap();
    let train = |out: &str, steps: &str, extra: &[&str]| {
        let o = clipcu()
            .args(["train", "--config"])
            .arg(&cfg_path)
            .args(["--steps", steps, "--batch-size", "2", "--device", "cpu"])
            .args(["--data", dir.join("d.csv").to_str().unwrap(), "--out"])
            .arg(dir.join(out))
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        err
    };
    let recorded = |out: &str| {
        let f = st::load(dir.join(out).join("checkpoint.safetensors")).unwrap();
        let t: serde_json::Value = serde_json::from_str(&f.metadata["clipcu.train"]).unwrap();
        t["augment"].as_bool().unwrap()
    };
    let err = train("aug", "2", &[]);
    assert!(err.contains("RandomResizedCrop"), "{err}");
    assert!(recorded("aug"));
    let err = train("plain", "2", &["--no-augment"]);
    assert!(err.contains("no augmentation"), "{err}");
    assert!(!recorded("plain"));
    // a resume keeps the checkpoint's transform, whatever this command line says
    let err = train("aug", "3", &["--resume", "--no-augment"]);
    assert!(err.contains("--no-augment is ignored"), "{err}");
    assert!(recorded("aug"));
    let err = train("plain", "3", &["--resume"]);
    assert!(err.contains("no augmentation"), "{err}");
    assert!(!recorded("plain"));
    std::fs::remove_dir_all(dir).ok();
}
