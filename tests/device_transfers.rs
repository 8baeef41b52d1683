//! A whole training step on a kernel device — forward, backward, loss and accuracies, clipping,
//! the fused AdamW update and the `logit_scale` clamp — touches the host exactly twice: the
//! batch goes up, the step's statistics come back (DESIGN §10). Counted by
//! `device::transfers`: on Emu every host
//! read or write of device memory is counted as the copy it would be on a GPU; on cuda:0 (when
//! present) the backend's copies themselves. And from the second step on, a step allocates no
//! device memory (the caching allocator's counters; Emu runs the same policy over an accounting
//! allocator). One test per process keeps the global counters to this test alone.
mod common;
use clipcu::device::transfers::{self, TransferStats};
use clipcu::model::ClipConfig;
use clipcu::train::{DataSpec, TrainConfig, Trainer};
use clipcu::Device;
use std::time::Instant;

fn step_transfers(device: Device, name: &str, micro: usize) {
    let cfg = ClipConfig::load(name).unwrap();
    let batch = 8;
    let config = TrainConfig {
        batch_size: batch,
        micro_batch: micro,
        steps: 10,
        lr: 1e-3,
        weight_decay: 0.2,
        warmup: 2,
        constant_lr: false,
        grad_clip: Some(1.0),
        seed: 3,
        checkpointing: false,
        shape_groups: 0,
        lock: Default::default(),
        epochs: None,
        augment: false,
        workers: None,
        precision: None,
    };
    let mut t = Trainer::new(&cfg, config, DataSpec::Synthetic).unwrap();
    t.to_device(device).unwrap();
    let (s, ctx) = (cfg.vision_cfg.image_size, cfg.text_cfg.context_length);
    let micro_batches = if micro == 0 { 1 } else { batch.div_ceil(micro) };
    let mb = if micro == 0 { batch } else { micro };
    // Steady state: after the first step (which sets up optimizer state and fills the caching
    // allocator's free lists), a whole step of the same shapes allocates no device memory.
    let mut allocs_after_first = None;
    for step in 0..4u64 {
        let (images, ids) = common::train_batch(step, batch, s, ctx);
        t.train_step_on(&images, &ids, Instant::now()).unwrap();
        let allocs = device.memory_stats().unwrap().unwrap().device_allocs;
        match allocs_after_first {
            None => allocs_after_first = Some(allocs),
            Some(first) => assert_eq!(
                allocs, first,
                "{name} on {device}, micro {micro}: step {step} made new device allocations"
            ),
        }
    }
    // The copies of whole steps (`train_step_on`, the trainer's own step).
    for step in 4..7u64 {
        let (images, ids) = common::train_batch(step, batch, s, ctx);
        let before = transfers::stats(device);
        t.train_step_on(&images, &ids, Instant::now()).unwrap();
        let d = transfers::stats(device) - before;
        // Up: the images once; per micro-batch, two index uploads of the text tower, each the
        // ids with their CSR index for backward (i32: n ids, rows + 1 offsets, n positions): the
        // token ids (the full context: fixed shapes on the device) into the vocabulary, and the
        // EOT positions into the micro-batch's ctx·mb token rows.
        // Down: one vector of the step's statistics (loss, 2 accuracies, logit scale, and the
        // gradient norm before clipping).
        let mut upload_bytes = (images.numel() * 4) as u64;
        for rows in ids.chunks(mb * ctx) {
            // on a kernel device the text tower runs the full context (fixed shapes)
            let len = ctx;
            let m = rows.len() / ctx;
            let index = |n: usize, table_rows: usize| (4 * (2 * n + table_rows + 1)) as u64;
            upload_bytes += index(m * len, cfg.text_cfg.vocab_size) + index(m, m * len);
        }
        let want = TransferStats {
            uploads: 1 + 2 * micro_batches as u64,
            upload_bytes,
            downloads: 1,
            download_bytes: 5 * 4,
        };
        assert_eq!(d, want, "{name} on {device}, micro {micro}, step {step}");
    }
    // A checkpoint downloads each parameter once and the moments in one copy (checked for
    // divergence on those same host copies), and uploads nothing.
    let path = std::env::temp_dir().join(format!(
        "clipcu-transfers-{}-{name}-{micro}.safetensors",
        std::process::id()
    ));
    let before = transfers::stats(device);
    t.save_checkpoint(&path).unwrap();
    let d = transfers::stats(device) - before;
    std::fs::remove_file(&path).ok();
    let params = clipcu::nn::Module::parameters(&t.model).len() as u64;
    assert_eq!(
        (d.uploads, d.downloads),
        (0, params + 1),
        "{name} on {device}: a checkpoint's copies"
    );
}

#[test]
fn a_step_on_emu_uploads_its_batch_reads_back_its_statistics_and_allocates_nothing() {
    // Emu, and cuda:0 when present (where the counters are the backend's real copies)
    for device in common::model_devices() {
        step_transfers(device, "tiny-vit", 0);
        step_transfers(device, "tiny-rn", 0);
        step_transfers(device, "tiny-vit", 4);
    }
}
