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

#[test]
fn zeroshot_and_retrieval_commands() {
    let dir = tmpdir();
    let cfg = small_config(&dir);
    for (c, n) in [("red_circle", 3), ("blue_square", 2)] {
        std::fs::create_dir_all(dir.join("folder").join(c)).unwrap();
        for i in 0..n {
            write_png(
                &dir.join("folder").join(c).join(format!("{i}.png")),
                i as u64 + c.len() as u64,
            );
        }
    }
    let cache = dir.join("clf.safetensors");
    let run = || {
        clipcu()
            .args(["zeroshot", "--config"])
            .arg(&cfg)
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
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("zero-shot on 5 images of 2 classes (7 templates)")
            && text.contains("top-1")
            && text.contains("top-5"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("built"));
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

    let csv = dir.join("pairs.csv");
    std::fs::write(&csv, "filepath,title\nfolder/red_circle/0.png,a red circle\nfolder/red_circle/0.png,a round red thing\nfolder/blue_square/1.png,a blue square\n").unwrap();
    let out = clipcu()
        .args(["retrieval", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("retrieval on 2 images and 3 captions")
            && text.contains("recall@1")
            && text.contains("recall@10"),
        "{text}"
    );
    // with 2 images, recall@5 image→text and text→image must be 100%
    let r5 = text.lines().find(|l| l.contains("recall@5")).unwrap();
    assert_eq!(r5.matches("100.00%").count(), 2, "{r5}");

    let out = clipcu()
        .args(["zeroshot", "--config"])
        .arg(&cfg)
        .args(["--data", "/nonexistent/folder"])
        .output()
        .unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("/nonexistent/folder")
    );
    std::fs::remove_dir_all(dir).ok();
}
