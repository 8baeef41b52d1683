//! The trainer as a user runs it: metrics, checkpoints, the plot, and bit-exact resume.
mod common;
use clipcu::io::safetensors as st;
use clipcu::model::ClipConfig;
use clipcu::train::{DataSpec, RunOptions, TrainConfig, Trainer};
use clipcu::Device;
use std::path::{Path, PathBuf};

fn tiny() -> ClipConfig {
    ClipConfig::from_json(
        r#"{"embed_dim": 16,
            "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 32},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}"#,
        "tiny-train",
    )
    .unwrap()
}

fn config(steps: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        batch_size: 8,
        micro_batch: 0,
        steps,
        lr: 1e-3,
        weight_decay: 0.1,
        warmup: 2,
        constant_lr: false,
        grad_clip: Some(1.0),
        seed,
        checkpointing: false,
        shape_groups: 4, // the grouped stream, as the CLI default trains on
        lock: Default::default(),
        epochs: None,
        augment: false,
        workers: None,
        precision: None,
    }
}

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        checkpoint_every: 2,
        eval_every: 0,
        eval_samples: 16,
        progress: false,
        overwrite: false,
        keep_checkpoints: 3,
        zeroshot: None,
        validation: None,
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "clipcu-trainer-{tag}-{}-{}",
        std::process::id(),
        common::fresh_seed()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn losses(metrics: &Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["loss"].as_f64())
        .collect()
}

fn params(path: &Path) -> Vec<(String, Vec<u32>)> {
    st::load(path)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(n, t)| (n, t.to_vec().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

/// k steps on `first`, a checkpoint, the rest resumed on `second`, against 2k straight on
/// `second`: (straight losses, resumed losses, straight checkpoint, resumed checkpoint).
fn straight_and_resumed(
    seed: u64,
    first: Device,
    second: Device,
) -> (Vec<f64>, Vec<f64>, PathBuf, PathBuf) {
    let (k, total) = (3, 6);
    let straight = tmpdir("straight");
    let mut t = Trainer::new(&tiny(), config(total, seed), DataSpec::Synthetic).unwrap();
    t.to_device(second).unwrap();
    t.run(&opts(&straight)).unwrap();

    let split = tmpdir("split");
    let mut t = Trainer::new(&tiny(), config(k, seed), DataSpec::Synthetic).unwrap();
    t.to_device(first).unwrap();
    t.run(&opts(&split)).unwrap();
    // a new process would do this: read the checkpoint, continue to the full length
    let mut t = Trainer::resume(
        &split.join("checkpoint.safetensors"),
        config(total, seed),
        DataSpec::Synthetic,
    )
    .unwrap();
    assert_eq!(t.step, k);
    t.to_device(second).unwrap();
    t.run(&opts(&split)).unwrap();
    let (a, b) = (
        losses(&straight.join("metrics.jsonl")),
        losses(&split.join("metrics.jsonl")),
    );
    assert_eq!(a.len(), total);
    (
        a,
        b,
        straight.join("checkpoint.safetensors"),
        split.join("checkpoint.safetensors"),
    )
}

#[test]
fn resume_is_bit_exact() {
    // on the CPU, and on Emu (every op through the kernel launchers)
    for device in [Device::Cpu, Device::Emu] {
        let seed = common::fresh_seed() % 1000;
        let (a, b, straight, split) = straight_and_resumed(seed, device, device);
        assert_eq!(
            a, b,
            "losses differ between a straight and a resumed run on {device} (seed {seed})"
        );
        assert_eq!(
            params(&straight),
            params(&split),
            "final parameters and optimizer state differ on {device} (seed {seed})"
        );
        for d in [straight, split] {
            std::fs::remove_dir_all(d.parent().unwrap()).ok();
        }
    }
}

#[test]
fn a_checkpoint_taken_with_the_next_batch_fetched_ahead_resumes_at_that_batch() {
    // On Emu the trainer fetches (and uploads) step k+1's batch while step k computes; a
    // checkpoint between them must record the data position before that batch, so that the
    // resumed run trains on it: bit-exact against the straight run.
    let seed = common::fresh_seed() % 1000;
    let (k, total) = (3, 6);
    let straight = tmpdir("ahead-straight");
    let mut t = Trainer::new(&tiny(), config(total, seed), DataSpec::Synthetic).unwrap();
    t.to_device(Device::Emu).unwrap();
    t.run(&opts(&straight)).unwrap();

    let split = tmpdir("ahead-split");
    let mut t = Trainer::new(&tiny(), config(total, seed), DataSpec::Synthetic).unwrap();
    t.to_device(Device::Emu).unwrap();
    let mut first = Vec::new();
    for _ in 0..k {
        first.push(t.train_step().unwrap().loss);
    }
    assert!(
        t.has_batch_ahead(),
        "step {k} of {total}: no batch fetched ahead"
    );
    let ckpt = split.join("checkpoint.safetensors");
    t.save_checkpoint(&ckpt).unwrap();
    drop(t);
    let mut t = Trainer::resume(&ckpt, config(total, seed), DataSpec::Synthetic).unwrap();
    t.to_device(Device::Emu).unwrap();
    let mut rest = Vec::new();
    while t.step < total {
        rest.push(t.train_step().unwrap().loss);
    }
    assert!(!t.has_batch_ahead(), "a batch fetched past the last step");
    t.save_checkpoint(&ckpt).unwrap();
    first.extend(rest);
    // metrics.jsonl holds each f32 loss in its shortest form: exact as f32
    let straight_losses: Vec<f32> = losses(&straight.join("metrics.jsonl"))
        .iter()
        .map(|&l| l as f32)
        .collect();
    assert_eq!(
        straight_losses, first,
        "seed {seed}: the resumed run's losses"
    );
    assert_eq!(
        params(&straight.join("checkpoint.safetensors")),
        params(&ckpt),
        "seed {seed}: final parameters and optimizer state"
    );
    for d in [straight, split] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn a_checkpoint_written_on_cpu_resumes_on_emu() {
    let seed = common::fresh_seed() % 1000;
    let (a, b, straight, split) = straight_and_resumed(seed, Device::Cpu, Device::Emu);
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            ((x - y) / x).abs() < 1e-4,
            "step {step}: {x} straight on emu vs {y} resumed from cpu (seed {seed})"
        );
    }
    let (p, q) = (st::load(&straight).unwrap(), st::load(&split).unwrap());
    for (n, t) in &p.tensors {
        if n.contains("in_proj_bias") {
            continue; // the zero-gradient key third: see tests/train_device.rs
        }
        let err = q.get(n).unwrap().rel_err(t);
        assert!(err < 1e-4, "{n}: {err:.2e} (seed {seed})");
    }
    for d in [straight, split] {
        std::fs::remove_dir_all(d.parent().unwrap()).ok();
    }
}

#[test]
fn a_run_writes_metrics_checkpoints_model_and_plot() {
    let out = tmpdir("files");
    let mut t = Trainer::new(&tiny(), config(4, 1), DataSpec::Synthetic).unwrap();
    let mut o = opts(&out);
    o.eval_every = 2;
    let last = t.run(&o).unwrap();
    let (single, ens) = last.heldout_shape.expect("an evaluation at the end");
    assert!((0.0..=1.0).contains(&single) && (0.0..=1.0).contains(&ens));
    let l = losses(&out.join("metrics.jsonl"));
    assert_eq!(l.len(), 4);
    assert!(l.iter().all(|v| v.is_finite() && *v > 0.0));
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("zeroshot-heldout"))
            .count(),
        2
    );
    // the model file loads on its own (config in its metadata) and the checkpoint is a training one
    let m = clipcu::model::load_clip(out.join("model.safetensors"), None).unwrap();
    assert_eq!(m.config, tiny());
    let ck = st::load(out.join("checkpoint.safetensors")).unwrap();
    assert_eq!(
        ck.metadata.get("clipcu.step").map(String::as_str),
        Some("4")
    );
    assert!(ck.tensors.iter().any(|(n, _)| n.starts_with("optim.")));
    let png = std::fs::read(out.join("training.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // no temporary files left behind by the atomic writes
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // a second fresh run into the same folder is refused: it would destroy the first
    let mut again = Trainer::new(&tiny(), config(3, 2), DataSpec::Synthetic).unwrap();
    o.eval_every = 0;
    let e = again.run(&o).unwrap_err().to_string();
    assert!(
        e.contains("already holds a run") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(losses(&out.join("metrics.jsonl")).len(), 4);
    // with `overwrite` it replaces the metrics instead of appending to them
    o.overwrite = true;
    again.run(&o).unwrap();
    let l2 = losses(&out.join("metrics.jsonl"));
    assert_eq!(l2.len(), 3, "metrics of the earlier run left in the file");
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn resume_from_a_non_checkpoint_is_a_clear_error() {
    let out = tmpdir("bad");
    let p = out.join("model.safetensors");
    clipcu::model::save_clip(
        &clipcu::model::Clip::new(&tiny(), 0),
        &p,
        &Default::default(),
    )
    .unwrap();
    let e = Trainer::resume(&p, config(2, 0), DataSpec::Synthetic)
        .err()
        .expect("not a training checkpoint")
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("clipcu.train"),
        "{e}"
    );
    std::fs::remove_dir_all(out).ok();
}

/// A WebDataset shard of `n` PNG samples (random pixels) with captions, plus the given extra
/// entries, written with the `tar` crate.
fn shard(path: &Path, n: usize, seed: u64, extra: &[(&str, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    for i in 0..n {
        let img = image::RgbImage::from_fn(20, 20, |x, y| {
            let v = common::splitmix64(seed ^ (i as u64) << 16 ^ (x as u64) << 8 ^ y as u64);
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        });
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        add(&format!("{i:05}.png"), &png);
        add(
            &format!("{i:05}.txt"),
            format!("a photo of thing number {i}").as_bytes(),
        );
    }
    for (name, data) in extra {
        add(name, data);
    }
    b.finish().unwrap();
}

#[test]
fn training_on_shards_skips_and_counts_bad_samples() {
    let dir = tmpdir("shards");
    let seed = common::fresh_seed();
    shard(
        &dir.join("00000.tar"),
        10,
        seed,
        &[
            ("bad.jpg", b"\xff\xd8\xff\xe0 not really a jpeg".to_vec()),
            ("bad.txt", b"a broken image".to_vec()),
            ("empty.png", vec![0u8; 3]),
            ("empty.txt", b"   ".to_vec()),
        ],
    );
    shard(&dir.join("00001.tar"), 10, seed ^ 1, &[]);
    // a truncated shard: cut in the middle of an entry
    let full = std::fs::read(dir.join("00001.tar")).unwrap();
    std::fs::write(dir.join("00001.tar"), &full[..full.len() / 2 + 100]).unwrap();
    let pattern = format!("{}/{{00000..00001}}.tar", dir.display());
    let cfg = config(4, 3);
    let mut t = Trainer::new(&tiny(), cfg, DataSpec::Files(pattern)).unwrap();
    let mut o = opts(&dir.join("run"));
    o.eval_every = 0;
    t.run(&o).unwrap();
    assert_eq!(t.step, 4, "the run completes");
    // The stream loops over the two shards, so each bad entry is counted each time it comes round.
    // Good samples per epoch, from the bytes written: shard 0's 10, and the samples of shard 1
    // whose image and caption entries end within the cut (tar: 512-byte header, data padded to
    // 512; entries in (png, txt) order).
    let cut = full.len() / 2 + 100;
    let mut ends = Vec::new();
    let mut offset = 0usize;
    while offset + 512 <= full.len() {
        let header = &full[offset..offset + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let size_field = std::str::from_utf8(&header[124..136]).unwrap();
        let len =
            usize::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .unwrap();
        ends.push(offset + 512 + len);
        offset += 512 + len.div_ceil(512) * 512;
    }
    assert_eq!(ends.len(), 20);
    let readable = (0..10)
        .take_while(|&i| ends[2 * i] <= cut && ends[2 * i + 1] <= cut)
        .count();
    let per_epoch = 10 + readable;
    let consumed = t.step * t.config.batch_size;
    // the epochs wholly passed before the last consumed sample, and at most one more
    let lo = ((consumed - 1) / per_epoch) as u64;
    let skips = t.data.skips().unwrap();
    for (kind, n) in [
        ("corrupt image", skips.corrupt_image),
        ("empty caption", skips.empty_caption),
        ("truncated shard", skips.truncated_shard),
    ] {
        assert!(
            (lo..=lo + 1).contains(&n) && n >= 1,
            "{kind}: {n} skips after {consumed} samples of {per_epoch} a pass ({skips:?})"
        );
    }
    assert_eq!(skips.missing_image + skips.unreadable_shard, 0, "{skips:?}");
    // Exactly the counts of a loader over the same shards, config and batches (its counting is
    // pinned by tests/loader.rs): the trainer neither loses nor double-counts skips (prefetched
    // batches it did not consume are not counted).
    let mut lc = clipcu::data::LoaderConfig::new(t.config.batch_size, 16);
    lc.context_length = 32;
    lc.seed = t.config.seed;
    lc.drop_last = true;
    let source =
        clipcu::data::Source::webdataset(&format!("{}/{{00000..00001}}.tar", dir.display()))
            .unwrap();
    let mut oracle = clipcu::data::Loader::new(source, lc, None).unwrap();
    for _ in 0..4 {
        oracle.next_batch().unwrap().unwrap();
    }
    assert_eq!(skips, oracle.skips());
    assert_eq!(losses(&dir.join("run/metrics.jsonl")).len(), 4);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_augmented_run_on_files_resumes_bit_exact_and_trains_on_other_crops() {
    let dir = tmpdir("augment");
    let seed = common::fresh_seed();
    shard(&dir.join("00000.tar"), 11, seed, &[]);
    let data = DataSpec::Files(format!("{}/00000.tar", dir.display()));
    let cfg = |steps, augment| TrainConfig {
        augment,
        shape_groups: 0,
        ..config(steps, 5)
    };
    let run = |name: &str, steps, augment| {
        let mut t = Trainer::new(&tiny(), cfg(steps, augment), data.clone()).unwrap();
        t.run(&opts(&dir.join(name))).unwrap();
        losses(&dir.join(name).join("metrics.jsonl"))
    };
    // 5 steps of 8 over 11 samples: the stream crosses into epochs 2, 3 and 4
    let straight = run("straight", 5, true);
    run("split", 2, true);
    let mut t = Trainer::resume(
        &dir.join("split/checkpoint.safetensors"),
        cfg(5, false), // the checkpoint's transform holds
        data.clone(),
    )
    .unwrap();
    assert!(t.config.augment);
    t.run(&opts(&dir.join("split"))).unwrap();
    let resumed = losses(&dir.join("split/metrics.jsonl"));
    assert_eq!(straight, resumed, "seed {seed}");
    assert_eq!(
        params(&dir.join("straight/checkpoint.safetensors")),
        params(&dir.join("split/checkpoint.safetensors")),
        "seed {seed}"
    );
    let plain = run("plain", 5, false);
    assert_eq!(plain.len(), 5);
    assert_ne!(plain, straight, "seed {seed}: the crops changed no loss");
    std::fs::remove_dir_all(dir).ok();
}
