//! Fine-tuning as open_clip users do it: start from saved weights, lock towers (open_clip's
//! groups), train for epochs of finite data with a bit-exact resume.
mod common;
use clipcu::io::safetensors as st;
use clipcu::model::{load_clip, save_clip, Clip, ClipConfig, Locking};
use clipcu::nn::Module;
use clipcu::train::{steps_for_epochs, DataSpec, TrainConfig, Trainer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn tiny_vit() -> ClipConfig {
    ClipConfig::from_json(
        r#"{"embed_dim": 16,
            "vision_cfg": {"image_size": 16, "layers": 3, "width": 32, "patch_size": 8, "head_width": 32},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 3}}"#,
        "tiny-finetune",
    )
    .unwrap()
}

fn tiny_rn() -> ClipConfig {
    let mut c = ClipConfig::load("tiny-rn").unwrap();
    c.text_cfg.vocab_size = 49408;
    c.text_cfg.context_length = 32;
    c
}

fn config(steps: usize, lock: Locking) -> TrainConfig {
    TrainConfig {
        batch_size: 8,
        micro_batch: 0,
        steps,
        lr: 1e-3,
        weight_decay: 0.1,
        warmup: 1,
        constant_lr: false,
        grad_clip: Some(1.0),
        seed: common::fresh_seed(),
        checkpointing: false,
        shape_groups: 0,
        lock,
        epochs: None,
        augment: false,
        workers: Some(1),
        precision: None,
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "clipcu-finetune-{tag}-{}-{}",
        std::process::id(),
        common::fresh_seed()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every parameter and buffer's bits, by name.
fn bits(model: &Clip) -> BTreeMap<String, Vec<u32>> {
    model
        .named_params()
        .into_iter()
        .map(|(n, p)| (n, p.value().to_vec().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

/// A "pretrained" file (a model of another seed, saved as `clipcu train` saves models), a
/// fine-tune from it with `lock`, `steps` steps; the names whose bits changed, and the trainer.
fn fine_tune(cfg: &ClipConfig, lock: Locking, steps: usize) -> (Vec<String>, Trainer) {
    let dir = tmpdir("pre");
    let pre = dir.join("pretrained.safetensors");
    save_clip(
        &Clip::new(cfg, common::fresh_seed()),
        &pre,
        &BTreeMap::new(),
    )
    .unwrap();
    let model = load_clip(&pre, None).unwrap();
    let before = bits(&model);
    let mut t = Trainer::fine_tune(model, config(steps, lock), DataSpec::Synthetic).unwrap();
    for _ in 0..steps {
        t.train_step().unwrap();
    }
    let after = bits(&t.model);
    let changed = before
        .iter()
        .filter(|(n, b)| after[*n] != **b)
        .map(|(n, _)| n.clone())
        .collect();
    std::fs::remove_dir_all(dir).ok();
    (changed, t)
}

fn visual(changed: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = changed
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("visual."))
        .collect();
    v.sort();
    v
}

#[test]
fn lock_image_leaves_the_image_tower_bitwise_and_trains_the_rest() {
    let lock = Locking {
        image: true,
        ..Locking::default()
    };
    let (changed, t) = fine_tune(&tiny_vit(), lock, 5);
    assert!(visual(&changed).is_empty(), "{changed:?}");
    let text: Vec<_> = changed
        .iter()
        .filter(|n| !n.starts_with("visual."))
        .collect();
    assert!(
        text.len() > 10 && changed.contains(&"logit_scale".to_string()),
        "{changed:?}"
    );
    // no optimizer state and no gradient for a locked parameter
    let state = t.opt.state().unwrap();
    assert!(
        state.iter().all(|(n, _)| !n.contains("visual.")),
        "optimizer state of the image tower"
    );
    assert!(state.iter().any(|(n, _)| n.contains("text_projection")));
    for (n, p) in t.model.named_params() {
        if n.starts_with("visual.") {
            assert!(
                p.grad().is_none() && !p.requires_grad(),
                "{n} has a gradient"
            );
        }
    }
}

#[test]
fn unlocked_groups_are_open_clips_last_groups() {
    let g = |n| Locking {
        image: true,
        image_unlocked_groups: n,
        ..Locking::default()
    };
    let (changed, _) = fine_tune(&tiny_vit(), g(1), 4);
    assert_eq!(visual(&changed), ["visual.proj"]);
    let (changed, _) = fine_tune(&tiny_vit(), g(2), 4);
    let v = visual(&changed);
    assert!(
        v.contains(&"visual.proj") && v.contains(&"visual.ln_post.weight"),
        "{v:?}"
    );
    assert!(
        v.iter().all(|n| *n == "visual.proj"
            || n.starts_with("visual.ln_post.")
            || n.starts_with("visual.transformer.resblocks.2.")),
        "{v:?}"
    );
    assert!(v.len() >= 8, "the last block trains: {v:?}");
    // too many groups is an error naming the option
    let e = Trainer::fine_tune(
        Clip::new(&tiny_vit(), 1),
        config(1, g(7)),
        DataSpec::Synthetic,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("--lock-image-unlocked-groups 7") && e.contains("5 groups"),
        "{e}"
    );
}

#[test]
fn lock_text_with_one_unlocked_layer_trains_only_the_text_projection() {
    let lock = Locking {
        text: true,
        text_unlocked_layers: 1,
        ..Locking::default()
    };
    let (changed, _) = fine_tune(&tiny_vit(), lock, 4);
    let text: Vec<&String> = changed
        .iter()
        .filter(|n| !n.starts_with("visual.") && *n != "logit_scale")
        .collect();
    assert_eq!(text, ["text_projection"]);
    assert!(visual(&changed).len() > 10);
}

#[test]
fn a_locked_resnet_updates_bn_statistics_unless_they_are_frozen() {
    let lock = |freeze| Locking {
        image: true,
        image_freeze_bn_stats: freeze,
        ..Locking::default()
    };
    let (changed, _) = fine_tune(&tiny_rn(), lock(false), 2);
    let v = visual(&changed);
    assert!(
        !v.is_empty() && v.iter().all(|n| n.contains("running_")),
        "{v:?}"
    );
    let (changed, _) = fine_tune(&tiny_rn(), lock(true), 2);
    assert!(visual(&changed).is_empty(), "{changed:?}");
}

#[test]
fn lock_options_without_their_lock_are_refused() {
    let l = Locking {
        image_unlocked_groups: 1,
        ..Locking::default()
    };
    let e = l.validate().unwrap_err().to_string();
    assert!(
        e.contains("--lock-image-unlocked-groups") && e.contains("add --lock-image"),
        "{e}"
    );
}

fn write_csv(dir: &Path, rows: usize) -> PathBuf {
    let mut csv = String::from("filepath,title\n");
    for i in 0..rows {
        let seed = common::fresh_seed() ^ i as u64;
        let img = image::RgbImage::from_fn(20, 18, |x, y| {
            let v = common::splitmix64(seed ^ ((x as u64) << 8) ^ y as u64);
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        });
        img.save(dir.join(format!("{i}.png"))).unwrap();
        csv += &format!(
            "{i}.png,picture number {i} in {} tones\n",
            ["red", "blue", "grey"][i % 3]
        );
    }
    let p = dir.join("pairs.csv");
    std::fs::write(&p, csv).unwrap();
    p
}

#[test]
fn epochs_count_steps_and_a_resume_in_epoch_two_is_bit_exact() {
    let dir = tmpdir("epochs");
    let csv = write_csv(&dir, 100);
    let data = DataSpec::Files(csv.display().to_string());
    let steps = steps_for_epochs(&data, 2, 16).unwrap();
    assert_eq!(steps, 2 * (100 / 16));
    assert!(steps_for_epochs(&DataSpec::Synthetic, 2, 16).is_err());
    let mut cfg = config(steps, Locking::default());
    cfg.batch_size = 16;
    cfg.epochs = Some(2);
    let mut t = Trainer::new(&tiny_vit(), cfg.clone(), data.clone()).unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        losses.push(t.train_step().unwrap().loss);
    }
    let straight_losses = losses;
    let straight = bits(&t.model);
    // 9 steps (144 samples: epoch 2, sample 44), a checkpoint, resumed to the end
    let mut a = Trainer::new(&tiny_vit(), cfg.clone(), data.clone()).unwrap();
    let mut resumed_losses = Vec::new();
    for _ in 0..9 {
        resumed_losses.push(a.train_step().unwrap().loss);
    }
    let ck = dir.join("ck.safetensors");
    a.save_checkpoint(&ck).unwrap();
    drop(a);
    let pos: serde_json::Value =
        serde_json::from_str(&st::load(&ck).unwrap().metadata["clipcu.data"]).unwrap();
    assert_eq!(pos["position"]["epoch"], 1, "{pos}");
    assert_eq!(pos["position"]["sample"], 44, "{pos}");
    let mut b = Trainer::resume(&ck, cfg, data).unwrap();
    assert_eq!(b.data.epoch(), Some(1));
    for _ in 9..steps {
        resumed_losses.push(b.train_step().unwrap().loss);
    }
    assert_eq!(straight_losses, resumed_losses);
    assert!(straight == bits(&b.model), "resumed parameters differ");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_locked_run_resumes_with_its_locks_and_refuses_others() {
    let dir = tmpdir("lockresume");
    let lock = Locking {
        image: true,
        ..Locking::default()
    };
    let mut t = Trainer::new(&tiny_vit(), config(4, lock), DataSpec::Synthetic).unwrap();
    let seed = t.config.seed;
    t.train_step().unwrap();
    let ck = dir.join("ck.safetensors");
    t.save_checkpoint(&ck).unwrap();
    let mut same = config(4, Locking::default());
    same.seed = seed;
    let r = Trainer::resume(&ck, same.clone(), DataSpec::Synthetic).unwrap();
    assert_eq!(r.config.lock, lock);
    assert!(r.model.num_trainable() < t.model.parameters().iter().map(|p| p.value().numel()).sum());
    let mut other = same;
    other.lock = Locking {
        text: true,
        ..Locking::default()
    };
    let e = Trainer::resume(&ck, other, DataSpec::Synthetic)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("keeps its checkpoint's locks"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}
