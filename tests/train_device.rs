//! Training on a kernel device: the trainer's whole step (forward, backward, loss and accuracies,
//! global-norm clipping, AdamW, the logit_scale clamp) on `Device::Emu` — every op through the
//! kernel launchers that Cuda runs — and on cuda:0 when there is one (tools/gpu-check.sh) equals
//! the Cpu reference run step for step: tiny ViT and tiny ModifiedResNet CLIPs, 20 steps at batch
//! 16, AdamW with weight decay, warmup + cosine, clipping that clips; plain, in micro-batches, and
//! with activation checkpointing.
mod common;
use clipcu::model::ClipConfig;
use clipcu::train::{DataSpec, TrainConfig, Trainer};
use clipcu::{Device, Tensor};
use std::collections::BTreeMap;
use std::time::Instant;

const STEPS: usize = 20;
const BATCH: usize = 16;
/// Below most steps' gradient norms on these random batches (asserted), so that clipping acts.
const CLIP: f64 = 0.5;

fn config(micro_batch: usize, checkpointing: bool) -> TrainConfig {
    TrainConfig {
        batch_size: BATCH,
        micro_batch,
        steps: STEPS,
        lr: 2e-4,
        weight_decay: 0.2,
        warmup: 3,
        constant_lr: false,
        grad_clip: Some(CLIP),
        seed: 0,
        checkpointing,
        shape_groups: 0,
    }
}

struct Run {
    losses: Vec<f32>,
    norms: Vec<f64>,
    accs: Vec<(f32, f32)>,
    /// parameters and buffers, then `optim.*` moments, all on the host
    state: BTreeMap<String, Tensor>,
}

fn train(name: &str, device: Device, seed: u64, micro: usize, checkpointing: bool) -> Run {
    let cfg = ClipConfig::load(name).unwrap();
    let mut tc = config(micro, checkpointing);
    tc.seed = seed;
    let mut t = Trainer::new(&cfg, tc, DataSpec::Synthetic).unwrap();
    t.to_device(device).unwrap();
    let (s, ctx) = (cfg.vision_cfg.image_size, cfg.text_cfg.context_length);
    let mut run = Run {
        losses: vec![],
        norms: vec![],
        accs: vec![],
        state: BTreeMap::new(),
    };
    for step in 0..STEPS {
        let (images, ids) =
            common::train_batch(seed.wrapping_add(step as u64) % 4096, BATCH, s, ctx);
        let log = t
            .train_step_on(&images, &ids, Instant::now())
            .unwrap_or_else(|e| panic!("{name} on {device}, step {step}: {e}"));
        run.losses.push(log.loss);
        run.norms
            .push(log.grad_norm.expect("clipping reports the norm"));
        run.accs.push((log.i2t_acc, log.t2i_acc));
    }
    for (n, p) in t.model.named_params() {
        let v = p.value();
        assert_eq!(v.device(), device, "{n} left {device}");
        run.state.insert(n, v.to_device(Device::Cpu).unwrap());
    }
    for (n, v) in t.opt.state() {
        run.state
            .insert(format!("optim.{n}"), v.to_device(Device::Cpu).unwrap());
    }
    run
}

/// Every step's loss within 1e-4 relative, every parameter, buffer and AdamW moment within 1e-4
/// (‖Δ‖/‖ref‖; the key biases, whose true gradient is zero, against the norm of the whole
/// tensor they belong to — see tests/models_emu.rs).
fn assert_same_run(what: &str, emu: &Run, cpu: &Run) {
    for (step, (e, c)) in emu.losses.iter().zip(&cpu.losses).enumerate() {
        let rel = ((e - c) / c).abs();
        assert!(
            rel < 1e-4,
            "{what} step {step}: loss {e} vs cpu {c} (rel {rel:.2e})"
        );
    }
    // The gradient norm is held to 1e-3: the two devices' rounding can put an activation on
    // the other side of a ReLU's kink, which changes that step's gradient by a discrete amount
    // (seen: single steps at 6e-5…3e-4 while the losses stay within ~5e-7).
    for (step, (e, c)) in emu.norms.iter().zip(&cpu.norms).enumerate() {
        let rel = ((e - c) / c).abs();
        assert!(rel < 1e-3, "{what} step {step}: grad norm {e} vs cpu {c}");
    }
    let clipped = cpu.norms.iter().filter(|&&n| n > CLIP).count();
    assert!(clipped >= STEPS / 2, "{what}: only {clipped} steps clipped");
    assert_eq!(emu.accs, cpu.accs, "{what}: batch accuracies");
    assert_eq!(
        emu.state.keys().collect::<Vec<_>>(),
        cpu.state.keys().collect::<Vec<_>>()
    );
    let mut worst = (0f64, String::new());
    for (k, c) in &cpu.state {
        let e = &emu.state[k];
        let err = if k.contains("in_proj_bias") || k.contains("k_proj.bias") {
            // rounding noise on a zero true gradient, normalised by Adam: bounded by lr per step
            let d: f64 = e
                .to_vec()
                .iter()
                .zip(c.to_vec())
                .map(|(a, b)| (*a as f64 - b as f64).abs())
                .fold(0.0, f64::max);
            assert!(d <= STEPS as f64 * 2e-4, "{what} {k}: moved {d} apart");
            continue;
        } else {
            e.rel_err(c)
        };
        // The AdamW moments of BatchNorm gains and biases: a BN whose output passes a ReLU and a
        // conv into the next BN is invariant to scaling its (gain, bias) together, so their
        // gradients are small sums of large, cancelling terms, and a ReLU kink crossed on one
        // device only (see the norm above) moves them by a large fraction: up to 4e-3 relative
        // noise in the moments was measured over seeds, while the parameters themselves agree to
        // 1e-5. Held to 1e-2 by name; everything else to 1e-4.
        let tol = if k.starts_with("optim.") && k.contains(".bn") {
            1e-2
        } else {
            1e-4
        };
        assert!(err < tol, "{what} {k}: off by {err:.2e} (tol {tol:.0e})");
        if err > worst.0 {
            worst = (err, k.clone());
        }
    }
    println!(
        "{what}: {} tensors within 1e-4, worst {:.2e} ({}); losses {:.4} → {:.4}",
        cpu.state.len(),
        worst.0,
        worst.1,
        cpu.losses[0],
        cpu.losses[STEPS - 1]
    );
}

/// The run on every model device (Emu; cuda:0 when present, f32 GEMMs without TF32) against
/// the Cpu run.
fn emu_equals_cpu(name: &str, micro: usize, checkpointing: bool) {
    let seed = common::fresh_seed() % 1000;
    let cpu = train(name, Device::Cpu, seed, micro, checkpointing);
    for device in common::model_devices() {
        let what =
            format!("{name} on {device} micro {micro} checkpointing {checkpointing} seed {seed}");
        let run = train(name, device, seed, micro, checkpointing);
        assert_same_run(&what, &run, &cpu);
    }
}

#[test]
fn tiny_vit_trains_on_emu_as_on_cpu() {
    emu_equals_cpu("tiny-vit", 0, false);
}

#[test]
fn tiny_resnet_trains_on_emu_as_on_cpu() {
    emu_equals_cpu("tiny-rn", 0, false);
}

#[test]
fn micro_batches_and_checkpointing_train_on_emu_as_on_cpu() {
    emu_equals_cpu("tiny-vit", 4, true);
    emu_equals_cpu("tiny-rn", 8, false);
}
