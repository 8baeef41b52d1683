//! The data-parallel step on the in-process communicator (ranks as threads, Cpu ranks) against
//! one process on the combined batch: the reduced feature gradients, the bucketed gradient
//! all-reduce, ten training steps of a tiny ViT CLIP at world sizes 2 and 4, resume of a
//! world-size-2 run at world size 4, and the error for a world size that does not divide the
//! batch. Every test draws fresh random data (the seed is printed).
mod common;

use clipcu::dist::{Communicator, InProcess};
use clipcu::io::safetensors as st;
use clipcu::model::ClipConfig;
use clipcu::train::data_parallel::{
    all_reduce_gradients, gathered_contrastive_backward, run_ranks,
};
use clipcu::train::{DataSpec, RunOptions, TrainConfig, Trainer};
use clipcu::{Device, Graph, Param, Tensor};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

fn tiny_vit() -> ClipConfig {
    ClipConfig::from_json(
        r#"{"embed_dim": 16,
            "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 32},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}"#,
        "tiny-dp",
    )
    .unwrap()
}

fn config(batch: usize, steps: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        batch_size: batch,
        micro_batch: 0,
        steps,
        lr: 1e-3,
        weight_decay: 0.1,
        warmup: 2,
        // the resume test stops at half the steps: a schedule that does not depend on them
        constant_lr: true,
        grad_clip: Some(1.0),
        seed,
        checkpointing: false,
        shape_groups: 4,
        lock: Default::default(),
        epochs: None,
        augment: false,
        workers: Some(1),
        precision: None,
    }
}

/// ‖a − b‖ / ‖b‖ in f64.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite value");
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// A parameter's difference from the reference, ‖a − b‖/‖b‖, with one exception: the key
/// bias of an attention (the key third of `in_proj_bias`; the attention pool's `k_proj.bias`).
/// Adding a vector to every key adds a constant to each softmax row, so that bias has no effect
/// on any output and its true gradient is 0; what it gets is rounding noise (~1e-10), which
/// AdamW normalises into updates that differ between any two summation orders (the ViT's stays
/// within ~3e-7 of its zero init, while the query and value thirds move by 2e-2 and agree to
/// ~1e-6). Its only bound is AdamW's step (about lr per step): measured up to 4.7e-7 apart in
/// the 10-step test, 1.04e-4 through the CLI (lr 1e-3 from the first step). So a key bias is
/// held only to an absolute max |a − b| ≤ 1e-3 (asserted here: it must not run away) and the
/// rest of the tensor compared relatively.
fn param_error(what: &str, name: &str, a: &[f32], b: &[f32]) -> f64 {
    let key = |a: &[f32], b: &[f32]| {
        let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d <= 1e-3, "{what}: the key bias {name} moved {d:e} apart");
    };
    if name.ends_with("k_proj.bias") {
        key(a, b);
        return 0.0;
    }
    if name.ends_with("attn.in_proj_bias") {
        let k = a.len() / 3;
        key(&a[k..2 * k], &b[k..2 * k]);
        return rel(&a[..k], &b[..k]).max(rel(&a[2 * k..], &b[2 * k..]));
    }
    rel(a, b)
}

/// The parameters that start at zero (LayerNorm and attention biases): their values are nothing
/// but the sum of their AdamW updates, and AdamW normalises an element's gradient — so where a
/// gradient is small, its rounding moves the element by more than its share of ‖b‖ (the same
/// holds, less often, for the rows of a text positional embedding that few captions reach).
/// Measured over 70 ViT runs of 10 steps (35 seeds × worlds 2 and 4): single tensors up to
/// 3.96e-5 of their norm (`transformer.resblocks.0.attn.out_proj.bias`, zero-initialised) and
/// 1.68e-5 (`positional_embedding`), the whole model within 1.6e-7; and once, through the CLI on
/// CSV data (seed 8520955247595568292), `visual.transformer.resblocks.0.ln_1.bias` at 1.49e-4
/// with the whole model at 7.9e-8. So the issue's 1e-5 is held over the whole model, each tensor
/// to 1e-4 and each zero-initialised one to 1e-3.
fn zero_init(cfg: &ClipConfig, seed: u64) -> std::collections::HashSet<String> {
    clipcu::model::Clip::new(cfg, seed)
        .named_params()
        .into_iter()
        .filter(|(_, p)| p.value().to_vec().iter().all(|&v| v == 0.0))
        .map(|(n, _)| n)
        .collect()
}

/// Compares `got` against the reference `want` (the same names in the same order): each
/// tensor's [`param_error`] within `limit(name)` (at least 1e-3 for a zero-initialised one),
/// and the whole model (‖Δ‖/‖want‖ over every element) within `global`. Returns the largest
/// per-tensor error and its name; with `DP_REPORT` set, prints every error instead of asserting.
fn compare_params(
    what: &str,
    got: &[(String, Vec<f32>)],
    want: &[(String, Vec<f32>)],
    zero: &std::collections::HashSet<String>,
    limit: &dyn Fn(&str) -> f64,
    global: f64,
) -> (f64, String) {
    let report = std::env::var("DP_REPORT").is_ok();
    assert_eq!(got.len(), want.len(), "{what}: parameter count");
    let mut worst = (0f64, String::new());
    let (mut num, mut den) = (0f64, 0f64);
    for ((n, a), (m, b)) in got.iter().zip(want) {
        assert_eq!(n, m);
        let e = param_error(what, n, a, b);
        let l = if zero.contains(n) {
            limit(n).max(1e-3)
        } else {
            limit(n)
        };
        if report {
            println!("REPORT {what} param {n} {e:.2e}");
        } else {
            assert!(e <= l, "{what}: {n} differs by {e:e} (limit {l:e})");
        }
        if e > worst.0 {
            worst = (e, n.clone());
        }
        if !n.ends_with("in_proj_bias") && !n.ends_with("k_proj.bias") {
            for (x, y) in a.iter().zip(b) {
                num += (*x as f64 - *y as f64).powi(2);
                den += (*y as f64).powi(2);
            }
        }
    }
    let e = (num / den).sqrt();
    println!(
        "{what}: whole model {e:.2e}, largest tensor {:.2e} ({})",
        worst.0, worst.1
    );
    assert!(
        report || e <= global,
        "{what}: the whole model differs by {e:e}"
    );
    worst
}

/// A safetensors file's tensors as (name, values), sorted by name.
fn file_params(path: &Path) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = st::load(path)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(n, t)| (n, t.to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn params_of(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.model
        .named_params()
        .into_iter()
        .map(|(n, p)| (n, p.value().to_device(Device::Cpu).unwrap().to_vec()))
        .collect()
}

/// A run's (loss, gradient norm before clipping) per step, and its final parameters.
type Run = (Vec<(f32, f64)>, Vec<(String, Vec<f32>)>);

/// `steps` steps of one process on `device`.
fn one_process_on(cfg: &ClipConfig, batch: usize, steps: usize, seed: u64, device: Device) -> Run {
    let mut t = Trainer::new(cfg, config(batch, steps, seed), DataSpec::Synthetic).unwrap();
    t.to_device(device).unwrap();
    let logs = (0..steps)
        .map(|_| {
            let l = t.train_step().unwrap();
            (l.loss, l.grad_norm.unwrap())
        })
        .collect();
    (logs, params_of(&t))
}

/// `steps` steps on `world` ranks with every rank's model on `device`: every rank's (losses,
/// parameters).
fn data_parallel_on(
    cfg: &ClipConfig,
    batch: usize,
    steps: usize,
    seed: u64,
    world: usize,
    device: Device,
) -> Vec<Run> {
    run_ranks(world, TIMEOUT, |comm| {
        let mut t = Trainer::new(cfg, config(batch, steps, seed), DataSpec::Synthetic)?;
        t.to_device(device)?;
        t.set_communicator(Box::new(comm))?;
        let mut logs = Vec::new();
        for _ in 0..steps {
            let l = t.train_step()?;
            logs.push((l.loss, l.grad_norm.unwrap()));
        }
        Ok((logs, params_of(&t)))
    })
    .unwrap()
}

/// A ModifiedResNet CLIP small enough for a test: 64 px images, 2×2 at the last stage (at 32
/// px the attention pool would see one spatial token beside its mean, which is the same
/// token: its query and key gradients are then cancelling sums, 6e-5 apart between the two
/// summation orders).
fn tiny_rn() -> ClipConfig {
    ClipConfig::from_json(
        r#"{"embed_dim": 16,
            "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32, "patch_size": null},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}"#,
        "tiny-dp-rn",
    )
    .unwrap()
}

/// Ten steps of a tiny ViT CLIP at world sizes 2 and 4 give the losses and parameters of one
/// process on the combined batch (the trainer's own one-process step, through the composed loss:
/// an independent path): losses within 1e-5, the whole model within the issue's 1e-5 (typically
/// ~1e-7; one seed in a clean-clone CI run reached 1.3e-6 after the CPU attention became the
/// packed path, so the earlier 1e-6 was too tight to hold), each tensor within
/// 1e-4 ([`zero_init`] says why not 1e-5), gradient norms within 1e-4; every rank ends with the
/// same bits.
#[test]
fn vit_data_parallel_equals_one_process_on_the_combined_batch() {
    let tol = Tolerance {
        loss: 1e-5,
        norm: 1e-4,
        param: |_| 1e-4,
        global: 1e-5,
    };
    equals_one_process("ViT", &tiny_vit(), 10, tol);
}

/// The same for a tiny ModifiedResNet CLIP, whose BatchNorms take their statistics over all
/// ranks (SyncBatchNorm), the running statistics (buffers) compared too.
///
/// One step's gradients are those of one process within 1e-5 (the tower's BatchNorm gains and
/// biases 3e-5; measured over 12 seeds × worlds 2 and 4: ≤ 1.2e-5 for the stem BN's bias, ≤ 6e-6
/// for everything else): the check that fails without SyncBatchNorm. Ten steps are held far
/// looser — the issue's 1e-5 is NOT met there — as tests/train_device.rs holds the ResNet on
/// Emu against the CPU: the tower's ReLUs feed BatchNorms, and when rounding (here: the order
/// of the sums over ranks) puts an activation on the other side of a kink, that step's gradient
/// changes by a discrete amount and the trajectories drift apart; and every conv feeding a
/// BatchNorm is scale-invariant, its gradient a sum of cancelling terms. Measured over the same
/// 24 runs: losses within 3.4e-5 up to step 4 and 3.6e-3 by step 8 (the median run ~1e-6),
/// gradient norms 2e-2, the tower's conv/BN tensors 0.16 of their own norm (BN biases start at
/// zero: nothing but their changes), everything else 4.5e-3. Held to 1e-2, 1e-1, 0.5, 3e-2.
#[test]
fn resnet_data_parallel_with_sync_batch_norm_equals_one_process() {
    one_step_gradients_equal("ResNet", &tiny_rn());
    let drift = Tolerance {
        loss: 1e-2,
        norm: 1e-1,
        param: |n| {
            let tower = n.starts_with("visual.") && !n.starts_with("visual.attnpool");
            if tower {
                0.5
            } else {
                3e-2
            }
        },
        global: 1e-1,
    };
    equals_one_process("ResNet", &tiny_rn(), 10, drift);
}

/// SyncBatchNorm on kernel devices: the tiny ModifiedResNet on 2 Emu ranks (statistics'
/// partial sums computed, all-reduced and applied on the device) equals one Emu process on the
/// combined batch, one step's gradients and 3 steps' losses and parameters.
///
/// One step: the loss, the text tower's and the attention pool's gradients within the Cpu
/// ranks' bounds above (1e-5); the vision tower's conv and BatchNorm gradients within 5e-2.
/// They usually meet the Cpu bounds too (≤ 4.4e-6 on 14 of 15 seeds), but the device's f32
/// statistics differ between one process and the ranks by more f32 roundings than the CPU's
/// f64 ones (gpu.rs), so a ReLU kink is crossed more often than on Cpu ranks: seed
/// 1451716058596440697 crosses one after layer2.0 — every gradient upstream of it off by up to
/// 1.7e-2, layer3/4 and everything after within 2e-6. Without the backward all-reduce the stem
/// conv's gradient is off by ~0.5 and without the forward one the loss by ~5e-2 (both checked),
/// so 5e-2 still fails a broken SyncBatchNorm.
///
/// Three steps, before the ReLU-kink drift of the Cpu test above has set in: measured over 15
/// seeds, losses ≤ 5.9e-7, gradient norms ≤ 4.6e-6, the tower's tensors ≤ 1.5e-4, everything
/// else ≤ 6e-5; held to the bounds tests/train_device.rs gives the ResNet on Emu against the
/// CPU for a crossed kink (losses 1e-3, norms 1e-2), the tower 5e-2, the rest and the whole
/// model 1e-3. (A missing forward all-reduce puts step 1's loss 0.33 off; a missing backward
/// one moved the norm only 1.9e-3, which the one-step check above catches instead.)
#[test]
fn resnet_on_emu_ranks_with_sync_batch_norm_equals_one_emu_process() {
    one_step_gradients_equal_on("ResNet", &tiny_rn(), Device::Emu, &[2], Some(5e-2));
    let early = Tolerance {
        loss: 1e-3,
        norm: 1e-2,
        param: |n| {
            let tower = n.starts_with("visual.") && !n.starts_with("visual.attnpool");
            if tower {
                5e-2
            } else {
                1e-3
            }
        },
        global: 1e-3,
    };
    equals_one_process_on("ResNet", &tiny_rn(), 3, early, Device::Emu, &[2]);
}

/// (y, dx, dw, db, running mean, running var) of one training-mode BatchNorm2d on each of 2
/// ranks with SyncBatchNorm on `device`, rank r's input `x` rows r·n.. (as `dtype`).
fn sync_bn_ranks(
    device: Device,
    dtype: clipcu::DType,
    x: &Tensor,
    dy: &Tensor,
    w: &Tensor,
    b: &Tensor,
) -> Vec<[Vec<f32>; 6]> {
    let n = x.shape()[0] / 2;
    let c = w.numel();
    run_ranks(2, TIMEOUT, |comm| {
        let r = comm.rank();
        let to =
            |t: &Tensor| -> clipcu::Result<Tensor> { t.try_to_dtype(dtype)?.to_device(device) };
        let part = |t: &Tensor| -> clipcu::Result<Tensor> {
            to(&t.narrow(0, r * n, n)?.try_contiguous()?)
        };
        let rm = Param::buffer(
            "rm",
            Tensor::from_vec(vec![0.25; c], [c])?.to_device(device)?,
        );
        let rv = Param::buffer(
            "rv",
            Tensor::from_vec(vec![1.5; c], [c])?.to_device(device)?,
        );
        let mut g = Graph::new();
        g.sync_batch_norm(&comm);
        let (xv, wv, bv) = (
            g.leaf(part(x)?),
            g.leaf(w.to_device(device)?),
            g.leaf(b.to_device(device)?),
        );
        let y = g.batch_norm2d(&xv, &wv, &bv, &rm, &rv, true, 0.1, 1e-5)?;
        assert_eq!(y.tensor().device(), device);
        assert_eq!(y.tensor().dtype(), dtype);
        let gr = g.backward_with(&y, part(dy)?)?;
        let v = |t: &Tensor| t.try_to_vec();
        Ok([
            v(y.tensor())?,
            v(gr.get(&xv).expect("dx"))?,
            v(gr.get(&wv).expect("dw"))?,
            v(gr.get(&bv).expect("db"))?,
            v(&rm.value())?,
            v(&rv.value())?,
        ])
    })
    .unwrap()
}

/// The synced statistics on Emu ranks against the CPU SyncBatchNorm (Cpu ranks), for f32, f16
/// and bf16 activations, on fresh random data whose two halves have different means and
/// scales (so each rank's own statistics would be far from the synced ones — checked: rank 0's
/// own half on one CPU process gives another running mean): y and dx of every rank, the
/// running statistics (the same on both ranks), and each rank's own dw, db. f32: 1e-5 (f32
/// device sums against the CPU's f64 ones, gpu.rs); 16-bit y and dx: 1e-2 (an f32 difference
/// may flip one rounding of the 16-bit output).
#[test]
fn sync_batch_norm_statistics_on_emu_ranks_equal_the_cpu_sync_batch_norm() {
    use clipcu::DType;
    let seed = common::fresh_seed();
    let (n, c, h, w) = (2, 3, 5, 7);
    let half = [n, c, h, w];
    // rank 1's half: another mean and scale
    let x0 = Tensor::randn(half, 1.0, seed);
    let x1: Vec<f32> = Tensor::randn(half, 2.5, seed + 1)
        .to_vec()
        .iter()
        .map(|v| v + 1.5)
        .collect();
    let x = Tensor::from_vec([x0.to_vec(), x1].concat(), [2 * n, c, h, w]).unwrap();
    let dy = Tensor::randn([2 * n, c, h, w], 1.0, seed + 2);
    let wt = Tensor::rand_uniform([c], 0.5, 1.5, seed + 3);
    let bt = Tensor::randn([c], 0.5, seed + 4);
    let names = ["y", "dx", "dw", "db", "running mean", "running var"];
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let cpu = sync_bn_ranks(Device::Cpu, dtype, &x, &dy, &wt, &bt);
        let emu = sync_bn_ranks(Device::Emu, dtype, &x, &dy, &wt, &bt);
        for r in 0..2 {
            for (k, name) in names.iter().enumerate() {
                let tol = if dtype != DType::F32 && k < 2 {
                    1e-2
                } else {
                    1e-5
                };
                let e = rel(&emu[r][k], &cpu[r][k]);
                let what = format!("{dtype}, rank {r}, seed {seed}: {name}");
                println!("{what}: {e:.2e}");
                assert!(e <= tol, "{what}: Emu ranks vs the CPU SyncBatchNorm {e:e}");
            }
        }
        for k in 4..6 {
            assert_eq!(
                emu[0][k], emu[1][k],
                "{dtype}: the ranks' {} differ",
                names[k]
            );
        }
    }
    // the synced running mean is not rank 0's own: one CPU process on its half alone
    let own = {
        let rm = Param::buffer("rm", Tensor::from_vec(vec![0.25; c], [c]).unwrap());
        let rv = Param::buffer("rv", Tensor::from_vec(vec![1.5; c], [c]).unwrap());
        let g = Graph::new();
        let (xv, wv, bv) = (g.leaf(x0), g.leaf(wt.clone()), g.leaf(bt.clone()));
        g.batch_norm2d(&xv, &wv, &bv, &rm, &rv, true, 0.1, 1e-5)
            .unwrap();
        rm.value().to_vec()
    };
    let synced = &sync_bn_ranks(Device::Emu, DType::F32, &x, &dy, &wt, &bt)[0][4];
    let e = rel(&own, synced);
    assert!(
        e > 1e-2,
        "seed {seed}: rank 0's own running mean is the synced one ({e:e})"
    );
}

/// One forward/backward: every rank's parameter gradients after the data-parallel step equal
/// those of one process on the combined batch (random images and token rows), each tensor
/// within 1e-5 of its norm — except the key biases, whose true gradient is 0 ([`param_error`]):
/// theirs is rounding noise, held to 1e-5 of the largest gradient element of the model.
fn one_step_gradients_equal(model: &str, cfg: &ClipConfig) {
    one_step_gradients_equal_on(model, cfg, Device::Cpu, &[2, 4], None);
}

/// [`one_step_gradients_equal`] with the model, the images and every rank on `device` (the
/// reference: one process on that device); with `kink`, the ResNet tower's conv and BatchNorm
/// gradients (not the attention pool's) are held to it instead.
fn one_step_gradients_equal_on(
    model: &str,
    cfg: &ClipConfig,
    device: Device,
    worlds: &[usize],
    kink: Option<f64>,
) {
    use clipcu::model::Clip;
    use clipcu::nn::Module;
    use clipcu::train::data_parallel::{data_parallel_forward_backward, GradientSum};
    let seed = common::fresh_seed();
    let (batch, size, ctx) = (8, cfg.vision_cfg.image_size, cfg.text_cfg.context_length);
    let (images, ids) = common::train_batch(seed % 1000, batch, size, ctx);
    let images = images.to_device(device).unwrap();
    let on_device = |m: Clip| -> Clip {
        m.to_device(device).unwrap();
        m
    };
    let grads = |m: &Clip| -> Vec<(String, Vec<f32>)> {
        m.named_params()
            .into_iter()
            .filter(|(_, p)| p.requires_grad())
            .map(|(n, p)| (n, p.grad().expect("a gradient").to_vec()))
            .collect()
    };
    let reference = on_device(Clip::new(cfg, seed));
    let full =
        clipcu::train::contrastive_forward_backward(&reference, &images, &ids, batch).unwrap();
    let want = grads(&reference);
    for &world in worlds {
        let n = batch / world;
        let ranks = run_ranks(world, TIMEOUT, |comm| {
            let r = comm.rank();
            let m = on_device(Clip::new(cfg, seed));
            let imgs = images.narrow(0, r * n, n)?.try_contiguous()?;
            let s = data_parallel_forward_backward(
                &m,
                &imgs,
                &ids[r * n * ctx..(r + 1) * n * ctx],
                n,
                &comm,
                GradientSum::Everywhere,
            )?;
            Ok((s.loss.item()?, grads(&m)))
        })
        .unwrap();
        let what = format!("{model}, one step, {device} world {world}, seed {seed}");
        let e = ((ranks[0].0 - full.loss) / full.loss).abs();
        assert!(
            e <= 1e-5,
            "{what}: loss {} vs {} ({e:e})",
            ranks[0].0,
            full.loss
        );
        let scale = want
            .iter()
            .flat_map(|(_, g)| g.iter())
            .fold(0f32, |m, x| m.max(x.abs())) as f64;
        let noise = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) as f64 / scale
        };
        let mut worst = (0f64, String::new());
        for ((name, got), (_, w)) in ranks[0].1.iter().zip(&want) {
            let e = if name.ends_with("k_proj.bias") {
                noise(got, w)
            } else if name.ends_with("in_proj_bias") {
                let k = w.len() / 3;
                let qv = rel(&got[..k], &w[..k]).max(rel(&got[2 * k..], &w[2 * k..]));
                qv.max(noise(&got[k..2 * k], &w[k..2 * k]))
            } else {
                rel(got, w)
            };
            // the tower's BatchNorm gains and biases: sums of cancelling terms (each feeds a
            // ReLU → conv → BatchNorm that is nearly invariant to it), measured up to 1.2e-5
            let bn = name.starts_with("visual.") && name.contains(".bn");
            let tower = name.starts_with("visual.") && !name.starts_with("visual.attnpool");
            let limit = match kink {
                Some(k) if tower => k,
                _ if bn => 3e-5,
                _ => 1e-5,
            };
            if std::env::var("DP_REPORT").is_ok() {
                println!("REPORT {what} grad {name} {e:.2e}");
            } else {
                assert!(
                    e <= limit,
                    "{what}: the gradient of {name} differs by {e:e}"
                );
            }
            if e > worst.0 {
                worst = (e, name.clone());
            }
        }
        println!(
            "{what}: largest gradient difference {:.2e} ({})",
            worst.0, worst.1
        );
        for (r, g) in ranks.iter().enumerate().skip(1) {
            assert!(
                g.1 == ranks[0].1,
                "{what}: rank {r}'s gradients differ from rank 0's"
            );
        }
    }
}

/// How far a data-parallel run may be from one process (relative; module doc of each test).
struct Tolerance {
    loss: f32,
    norm: f64,
    /// Per tensor (zero-initialised ones: at least 1e-4, [`zero_init`]).
    param: fn(&str) -> f64,
    /// The whole model.
    global: f64,
}

fn equals_one_process(model: &str, cfg: &ClipConfig, steps: usize, tol: Tolerance) {
    equals_one_process_on(model, cfg, steps, tol, Device::Cpu, &[2, 4]);
}

/// [`equals_one_process`] with one process and every rank on `device`.
fn equals_one_process_on(
    model: &str,
    cfg: &ClipConfig,
    steps: usize,
    tol: Tolerance,
    device: Device,
    worlds: &[usize],
) {
    let seed = common::fresh_seed();
    let batch = 8;
    let (ref_losses, ref_params) = one_process_on(cfg, batch, steps, seed, device);
    let zero = zero_init(cfg, seed);
    for &world in worlds {
        let started = Instant::now();
        let ranks = data_parallel_on(cfg, batch, steps, seed, world, device);
        let what = format!("{model}, {steps} steps, {device} world {world}, seed {seed}");
        println!("{what}: {steps} steps in {:.2?}", started.elapsed());
        let (losses, params) = &ranks[0];
        // the loss, and the global gradient norm: AdamW hides a gradient's scale, the norm
        // does not (a DP step that summed without the 1/world would double it)
        let report = std::env::var("DP_REPORT").is_ok();
        for (s, ((a, ga), (b, gb))) in losses.iter().zip(&ref_losses).enumerate() {
            let (e, en) = (((a - b) / b).abs(), ((ga - gb) / gb).abs());
            if report {
                println!("REPORT {what} step {s} loss {e:.2e} norm {en:.2e}");
                continue;
            }
            assert!(
                e <= tol.loss,
                "{what}: step {} loss {a} vs {b} (rel {e:e})",
                s + 1
            );
            assert!(
                en <= tol.norm,
                "{what}: step {} gradient norm {ga} vs {gb} (rel {en:e})",
                s + 1
            );
        }
        compare_params(&what, params, &ref_params, &zero, &tol.param, tol.global);
        // the replicas stay equal: same bits on every rank
        for (r, (l, p)) in ranks.iter().enumerate().skip(1) {
            assert_eq!(l, losses, "{what}: rank {r}'s losses");
            assert!(
                p == params,
                "{what}: rank {r}'s parameters differ from rank 0's"
            );
        }
        // and training moved them: the comparison is not between two copies of the init
        let init = Trainer::new(cfg, config(batch, steps, seed), DataSpec::Synthetic).unwrap();
        let moved = params_of(&init)
            .iter()
            .zip(params)
            .map(|((_, a), (_, b))| rel(a, b))
            .fold(0f64, f64::max);
        assert!(
            moved > 1e-3,
            "{what}: the parameters barely moved ({moved:e})"
        );
    }
}

/// Rows `r·n..(r+1)·n` of a [N, D] tensor.
fn rows_of(t: &Tensor, r: usize, n: usize) -> Tensor {
    let d = t.shape()[1];
    Tensor::from_vec(t.to_vec()[r * n * d..(r + 1) * n * d].to_vec(), vec![n, d]).unwrap()
}

/// Each rank's feature gradients after the column-gradient reduction are the rows of the full
/// batch's feature gradients (the composed loss on all N features in one graph), and the
/// ranks' logit-scale gradients and losses add up to the full batch's.
#[test]
fn reduced_column_gradients_equal_the_full_batch_feature_gradients() {
    let seed = common::fresh_seed();
    for (world, n, d) in [(2usize, 5usize, 24usize), (4, 3, 16), (3, 4, 8)] {
        let total = world * n;
        let img = Tensor::randn([total, d], 1.0, seed ^ (world as u64 * 7 + 1));
        let txt = Tensor::randn([total, d], 1.0, seed ^ (world as u64 * 7 + 2));
        let ls = Tensor::scalar(2.0 + (seed % 100) as f32 / 100.0);
        // the reference: one graph over the whole batch
        let g = Graph::new();
        let (vi, vt, vs) = (g.leaf(img.clone()), g.leaf(txt.clone()), g.leaf(ls.clone()));
        let out = clipcu::loss::contrastive_loss(&g, &vi, &vt, &vs).unwrap();
        let full_loss = out.loss.tensor().item().unwrap();
        let grads = g.backward(&out.loss).unwrap();
        let (di, dt) = (
            grads.get(&vi).unwrap().to_vec(),
            grads.get(&vt).unwrap().to_vec(),
        );
        let dls = grads.get(&vs).unwrap().item().unwrap();
        let ranks = run_ranks(world, TIMEOUT, |comm| {
            let r = comm.rank();
            let p = Param::new("logit_scale", ls.clone());
            let out = gathered_contrastive_backward(
                &comm,
                &rows_of(&img, r, n),
                &rows_of(&txt, r, n),
                &p,
                true,
                true,
                1.0,
            )?;
            Ok((
                out.loss.item()?,
                out.d_image.to_vec(),
                out.d_text.to_vec(),
                p.grad().unwrap().item()?,
            ))
        })
        .unwrap();
        let what = format!("world {world}, n {n}, D {d}, seed {seed}");
        let joined = |k: usize| -> Vec<f32> {
            ranks
                .iter()
                .flat_map(|r| if k == 0 { r.1.clone() } else { r.2.clone() })
                .collect()
        };
        let (ei, et) = (rel(&joined(0), &di), rel(&joined(1), &dt));
        println!("{what}: feature gradients rel {ei:.2e} / {et:.2e}");
        assert!(
            ei <= 1e-5 && et <= 1e-5,
            "{what}: images {ei:e}, texts {et:e}"
        );
        let loss = ranks.iter().map(|r| r.0 as f64).sum::<f64>() / world as f64;
        assert!(
            (loss - full_loss as f64).abs() <= 1e-5 * full_loss.abs() as f64,
            "{what}: mean loss {loss} vs {full_loss}"
        );
        let dl: f64 = ranks.iter().map(|r| r.3 as f64).sum();
        assert!(
            (dl - dls as f64).abs() <= 1e-5 * (dls.abs() as f64) + 1e-6,
            "{what}: d logit_scale {dl} vs {dls}"
        );
    }
}

/// On Emu ranks the gathered loss runs on the kernels and stays on the device: the reduced
/// feature gradients equal the full batch's (the composed CPU loss on all N features, an
/// independent path), at world sizes 2 and 4, and every result is an Emu tensor.
#[test]
fn the_gathered_loss_runs_on_the_ranks_kernel_device() {
    let seed = common::fresh_seed();
    let emu = Device::Emu;
    for (world, n, d) in [(2usize, 6usize, 24usize), (4, 3, 16)] {
        let total = world * n;
        let img = Tensor::randn([total, d], 1.0, seed ^ (world as u64 * 11 + 1));
        let txt = Tensor::randn([total, d], 1.0, seed ^ (world as u64 * 11 + 2));
        let ls = Tensor::scalar(2.0 + (seed % 100) as f32 / 100.0);
        let g = Graph::new();
        let (vi, vt, vs) = (g.leaf(img.clone()), g.leaf(txt.clone()), g.leaf(ls.clone()));
        let out = clipcu::loss::contrastive_loss(&g, &vi, &vt, &vs).unwrap();
        let full_loss = out.loss.tensor().item().unwrap();
        let grads = g.backward(&out.loss).unwrap();
        let (di, dt) = (
            grads.get(&vi).unwrap().to_vec(),
            grads.get(&vt).unwrap().to_vec(),
        );
        let dls = grads.get(&vs).unwrap().item().unwrap();
        let ranks = run_ranks(world, TIMEOUT, |comm| {
            let r = comm.rank();
            let p = Param::new("logit_scale", ls.to_device(emu)?);
            let out = gathered_contrastive_backward(
                &comm,
                &rows_of(&img, r, n).to_device(emu)?,
                &rows_of(&txt, r, n).to_device(emu)?,
                &p,
                true,
                true,
                1.0,
            )?;
            let grad = p.grad().unwrap();
            for (what, t) in [
                ("loss", &out.loss),
                ("accuracy", &out.image_to_text_acc),
                ("d_image", &out.d_image),
                ("d_text", &out.d_text),
                ("d logit_scale", &grad),
            ] {
                assert_eq!(t.device(), emu, "world {world}: the {what} left the device");
            }
            let host = |t: &Tensor| t.to_device(Device::Cpu).map(|t| t.to_vec());
            Ok((
                host(&out.loss)?[0],
                host(&out.d_image)?,
                host(&out.d_text)?,
                host(&grad)?[0],
            ))
        })
        .unwrap();
        let what = format!("Emu ranks, world {world}, n {n}, D {d}, seed {seed}");
        let joined = |k: usize| -> Vec<f32> {
            ranks
                .iter()
                .flat_map(|r| if k == 0 { r.1.clone() } else { r.2.clone() })
                .collect()
        };
        let (ei, et) = (rel(&joined(0), &di), rel(&joined(1), &dt));
        println!("{what}: feature gradients rel {ei:.2e} / {et:.2e}");
        assert!(
            ei <= 1e-5 && et <= 1e-5,
            "{what}: images {ei:e}, texts {et:e}"
        );
        let loss = ranks.iter().map(|r| r.0 as f64).sum::<f64>() / world as f64;
        assert!(
            (loss - full_loss as f64).abs() <= 1e-5 * full_loss.abs() as f64,
            "{what}: mean loss {loss} vs {full_loss}"
        );
        let dl: f64 = ranks.iter().map(|r| r.3 as f64).sum();
        assert!(
            (dl - dls as f64).abs() <= 1e-5 * (dls.abs() as f64) + 1e-6,
            "{what}: d logit_scale {dl} vs {dls}"
        );
    }
}

/// Training on Emu ranks (world 2; the model, the gathered loss and AdamW on the device)
/// equals one Emu process on the combined batch within the ViT's bounds above, and Cpu ranks
/// within the bound tests/train_device.rs holds Emu to against the CPU (1e-4).
#[test]
fn emu_ranks_train_as_one_emu_process_and_as_cpu_ranks() {
    let seed = common::fresh_seed();
    let (cfg, batch, steps, world) = (tiny_vit(), 8, 4, 2);
    let zero = zero_init(&cfg, seed);
    let emu = data_parallel_on(&cfg, batch, steps, seed, world, Device::Emu);
    let one = one_process_on(&cfg, batch, steps, seed, Device::Emu);
    let cpu = data_parallel_on(&cfg, batch, steps, seed, world, Device::Cpu);
    for (what, reference, loss_tol, tensor_tol, global) in [
        ("one Emu process", &one, 1e-5, 1e-4, 1e-5),
        ("Cpu ranks", &cpu[0], 1e-4, 1e-4, 1e-4),
    ] {
        let what = format!("Emu ranks (world {world}) against {what}, seed {seed}");
        for (s, ((a, ga), (b, gb))) in emu[0].0.iter().zip(&reference.0).enumerate() {
            let (e, en) = (((a - b) / b).abs(), ((ga - gb) / gb).abs());
            assert!(
                e <= loss_tol,
                "{what}: step {} loss {a} vs {b} ({e:e})",
                s + 1
            );
            assert!(
                en <= 1e-4,
                "{what}: step {} norm {ga} vs {gb} ({en:e})",
                s + 1
            );
        }
        compare_params(
            &what,
            &emu[0].1,
            &reference.1,
            &zero,
            &|_| tensor_tol,
            global,
        );
    }
    assert!(
        emu[1] == emu[0],
        "seed {seed}: the Emu ranks' replicas differ"
    );
    let init =
        params_of(&Trainer::new(&cfg, config(batch, steps, seed), DataSpec::Synthetic).unwrap());
    let moved = init
        .iter()
        .zip(&emu[0].1)
        .map(|((_, a), (_, b))| rel(a, b))
        .fold(0f64, f64::max);
    assert!(
        moved > 1e-3,
        "seed {seed}: the parameters barely moved ({moved:e})"
    );
}

/// The bucketed all-reduce sums every parameter's gradient over ranks, whatever the bucket
/// size (one element, a few parameters, everything at once), and leaves the others alone.
#[test]
fn bucketed_gradient_all_reduce_equals_sums_made_here() {
    let seed = common::fresh_seed();
    let world = 3;
    let shapes: [&[usize]; 4] = [&[5, 3], &[7], &[2, 2, 2], &[1]];
    let grad =
        |r: usize, i: usize| Tensor::randn(shapes[i].to_vec(), 1.0, seed ^ ((r * 16 + i) as u64));
    for bucket in [1, 9, 20, 1 << 20] {
        let got = run_ranks(world, TIMEOUT, |comm| {
            let params: Vec<Param> = (0..shapes.len())
                .map(|i| Param::new(format!("p{i}"), Tensor::zeros(shapes[i].to_vec())))
                .collect();
            for (i, p) in params.iter().enumerate() {
                // the third parameter has no gradient anywhere: untouched
                if i != 2 {
                    p.accumulate_grad(grad(comm.rank(), i))?;
                }
            }
            all_reduce_gradients(&params, &comm, bucket)?;
            Ok(params
                .iter()
                .map(|p| p.grad().map(|g| g.to_vec()))
                .collect::<Vec<_>>())
        })
        .unwrap();
        for (r, g) in got.iter().enumerate() {
            for (i, gi) in g.iter().enumerate() {
                if i == 2 {
                    assert!(gi.is_none(), "bucket {bucket}: p2 got a gradient");
                    continue;
                }
                let want: Vec<f32> = (0..shapes[i].iter().product::<usize>())
                    .map(|k| {
                        (0..world)
                            .map(|q| grad(q, i).to_vec()[k] as f64)
                            .sum::<f64>() as f32
                    })
                    .collect();
                assert_eq!(
                    gi.as_ref().unwrap(),
                    &want,
                    "bucket {bucket}, rank {r}, p{i}"
                );
            }
        }
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "clipcu-dp-{tag}-{}-{}",
        std::process::id(),
        common::fresh_seed()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(out: &Path) -> RunOptions {
    let mut o = RunOptions::new(out);
    o.checkpoint_every = 3;
    o.eval_every = 0;
    o
}

fn losses(metrics: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect()
}

fn grad_norms(metrics: &Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["grad_norm"].as_f64())
        .collect()
}

fn data_position(checkpoint: &Path) -> u64 {
    let f = st::load(checkpoint).unwrap();
    let v: serde_json::Value = serde_json::from_str(&f.metadata["clipcu.data"]).unwrap();
    v["next_index"].as_u64().unwrap()
}

/// `Trainer::run` on `world` ranks into `out`, fresh or resumed from `resume`.
fn run_group(world: usize, steps: usize, seed: u64, out: &Path, resume: Option<&Path>) {
    run_group_with(world, steps, seed, out, resume, false)
}

/// [`run_group`], with ZeRO-1 when `zero1`.
fn run_group_with(
    world: usize,
    steps: usize,
    seed: u64,
    out: &Path,
    resume: Option<&Path>,
    zero1: bool,
) {
    run_group_config(
        world,
        config(8, steps, seed),
        out,
        resume,
        zero1,
        Device::Cpu,
    )
}

/// `Trainer::run` on `world` ranks of `device` under `cfg` into `out`, fresh or resumed from
/// `resume`, with ZeRO-1 when `zero1`.
fn run_group_config(
    world: usize,
    cfg: TrainConfig,
    out: &Path,
    resume: Option<&Path>,
    zero1: bool,
    device: Device,
) {
    run_ranks(world, TIMEOUT, |comm| {
        let mut t = match resume {
            Some(p) => Trainer::resume(p, cfg.clone(), DataSpec::Synthetic)?,
            None => Trainer::new(&tiny_vit(), cfg.clone(), DataSpec::Synthetic)?,
        };
        t.to_device(device)?;
        t.set_communicator(Box::new(comm))?;
        if zero1 {
            t.set_zero1()?;
        }
        t.run(&opts(out))?;
        Ok(())
    })
    .unwrap();
}

/// Every tensor of two safetensors files, bit for bit (names sorted).
fn same_bits(a: &Path, b: &Path, what: &str) {
    let (x, y) = (file_params(a), file_params(b));
    assert_eq!(x.len(), y.len(), "{what}: tensor count");
    for ((n, u), (m, v)) in x.iter().zip(&y) {
        assert_eq!(n, m, "{what}");
        let bits = |t: &[f32]| t.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(bits(u) == bits(v), "{what}: {n} differs");
    }
}

/// ZeRO-1 on the in-process communicator equals the unsharded data-parallel run at world sizes
/// 2 and 4. Each owner's reduce-scattered gradient is bitwise the all-reduce's and its AdamW
/// update the same arithmetic; what differs is the clip's global norm, whose Σ g² travels
/// between ranks as f32 (world·2^-25 of the norm), so the clip factor may move by an f32 ulp. Hence:
/// without clipping, losses, parameters and the checkpoint (its moments gathered from their
/// owners, so the unsharded checkpoint) bit for bit; with clipping at 1.0 (active on these
/// runs: the gradient norms are above it on most steps), losses within 1e-6 and the checkpoint within 1e-6
/// over the whole model. A ZeRO-1 checkpoint of 2 ranks resumes unsharded on 4 and with ZeRO-1
/// on 4, both as the straight run.
#[test]
fn zero1_equals_the_unsharded_run_and_its_checkpoints_resume_anywhere() {
    let seed = common::fresh_seed();
    for (world, clip) in [(2, None), (4, None), (2, Some(1.0)), (4, Some(1.0))] {
        let (plain, zero) = (tmpdir("plain"), tmpdir("zero1"));
        let mut cfg = config(8, 6, seed);
        cfg.grad_clip = clip;
        run_group_config(world, cfg.clone(), &plain, None, false, Device::Cpu);
        run_group_config(world, cfg, &zero, None, true, Device::Cpu);
        let what = format!("world {world}, clip {clip:?}, seed {seed}");
        let (a, b) = (
            losses(&plain.join("metrics.jsonl")),
            losses(&zero.join("metrics.jsonl")),
        );
        let ckpt = |d: &Path| file_params(&d.join("checkpoint.safetensors"));
        if clip.is_none() {
            assert_eq!(a, b, "{what}: losses");
            same_bits(
                &plain.join("checkpoint.safetensors"),
                &zero.join("checkpoint.safetensors"),
                &format!("{what}: checkpoint (parameters and gathered moments)"),
            );
            same_bits(
                &plain.join("model.safetensors"),
                &zero.join("model.safetensors"),
                &format!("{what}: model"),
            );
        } else {
            assert_eq!(a[0], b[0], "{what}: step 1 (before any update)");
            for ((s, x), (_, y)) in a.iter().zip(&b) {
                assert!(((x - y) / x).abs() <= 1e-6, "{what}: step {s}: {x} vs {y}");
            }
            // the clip must act on most steps for this comparison to test it (the last steps
            // of a run may fall under the threshold: one seed ended at 0.84)
            let norms = grad_norms(&plain.join("metrics.jsonl"));
            let clipped = norms.iter().filter(|&&n| n > 1.0).count();
            assert!(
                2 * clipped >= norms.len(),
                "{what}: the clip acts on {clipped} of {} steps: {norms:?}",
                norms.len()
            );
            let (x, y) = (ckpt(&zero), ckpt(&plain));
            compare_params(&what, &x, &y, &Default::default(), &|_| 1e-5, 1e-6);
        }
        let ckpt = ckpt(&zero);
        let moments = ckpt
            .iter()
            .filter(|(n, _)| n.ends_with(".exp_avg_sq"))
            .count();
        assert!(moments > 10, "{what}: {moments} moments in the checkpoint");
        assert!(
            ckpt.iter()
                .filter(|(n, _)| n.ends_with(".exp_avg_sq"))
                .all(|(_, v)| v.iter().any(|&x| x > 0.0)),
            "{what}: a gathered moment is all zeros (not its owner's)"
        );
        for d in [plain, zero] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    // 3 steps with ZeRO-1 on 2 ranks, then resumed on 4 ranks with and without it
    let straight = tmpdir("z-straight");
    run_group_with(2, 6, seed, &straight, None, false);
    for zero_after in [false, true] {
        let split = tmpdir("z-split");
        run_group_with(2, 3, seed, &split, None, true);
        let ckpt = split.join("checkpoint.safetensors");
        run_group_with(4, 6, seed, &split, Some(&ckpt), zero_after);
        let (a, b) = (
            losses(&straight.join("metrics.jsonl")),
            losses(&split.join("metrics.jsonl")),
        );
        assert_eq!(a.len(), b.len());
        for ((s, x), (_, y)) in a.iter().zip(&b) {
            assert!(
                ((x - y) / x).abs() <= 1e-5,
                "seed {seed}, resumed with zero1 {zero_after}: step {s}: {x} vs {y}"
            );
        }
        let zero = zero_init(&tiny_vit(), seed);
        compare_params(
            &format!("ZeRO-1 resume 2 → 4 (zero1 after: {zero_after}), seed {seed}"),
            &file_params(&split.join("model.safetensors")),
            &file_params(&straight.join("model.safetensors")),
            &zero,
            &|_| 1e-4,
            1e-5,
        );
        let _ = std::fs::remove_dir_all(split);
    }
    let _ = std::fs::remove_dir_all(straight);
}

/// The bucketed all-reduce overlapped with backward (`OverlappedGradientSum`, what the
/// data-parallel step runs) gives every rank the same sums as the all-reduce after backward,
/// bit for bit, on Cpu and Emu ranks, for buckets of one parameter's size to everything: buckets
/// start while backward still runs (some before the last parameter completes) and in the same
/// order on every rank; with checkpointing (its blocks' parameters unknown to the tape until
/// backward) they all start at the end, with the same sums.
#[test]
fn gradient_buckets_overlapped_with_backward_equal_the_all_reduce_after_it() {
    use clipcu::nn::{Activation, BlockInit, Module, Transformer};
    use clipcu::train::data_parallel::OverlappedGradientSum;
    use rand::SeedableRng;
    let seed = common::fresh_seed();
    let world = 2;
    let model = |checkpointing: bool, device: Device| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut m = Transformer::new(
            "t",
            16,
            3,
            2,
            Activation::Gelu,
            BlockInit::ClipText,
            &mut rng,
        );
        m.checkpointing = checkpointing;
        m.to_device(device).unwrap();
        m
    };
    for device in [Device::Cpu, Device::Emu] {
        for checkpointing in [false, true] {
            for bucket in [256, 2000, 1 << 22] {
                let what = format!(
                    "{device}, checkpointing {checkpointing}, bucket {bucket}, seed {seed}"
                );
                let ranks = run_ranks(world, TIMEOUT, |comm| {
                    let r = comm.rank() as u64;
                    let x = Tensor::randn([2, 5, 16], 1.0, seed ^ (10 + r)).to_device(device)?;
                    let dy = Tensor::randn([2, 5, 16], 1.0, seed ^ (20 + r)).to_device(device)?;
                    let backward = |m: &Transformer,
                                    ready: &mut dyn FnMut(&Param) -> clipcu::Result<()>|
                     -> clipcu::Result<()> {
                        let g = Graph::new();
                        let xv = g.leaf(x.clone());
                        let y = m.forward(&g, &xv, false)?;
                        g.backward_multi_with(&[(&y, dy.clone())], ready)?;
                        Ok(())
                    };
                    // after backward
                    let plain = model(checkpointing, device);
                    backward(&plain, &mut |_| Ok(()))?;
                    all_reduce_gradients(&plain.parameters(), &comm, bucket)?;
                    // during backward
                    let overlapped = model(checkpointing, device);
                    let params = overlapped.parameters();
                    let mut sum = OverlappedGradientSum::new(&params, &comm, bucket);
                    let g = Graph::new();
                    let xv = g.leaf(x.clone());
                    let y = overlapped.forward(&g, &xv, false)?;
                    sum.before_last(g.recorded_params().as_deref())?;
                    let mut started_at_ready = Vec::new();
                    g.backward_multi_with(&[(&y, dy.clone())], &mut |p| {
                        started_at_ready.push(sum.started());
                        sum.ready(p)
                    })?;
                    let buckets = sum.buckets();
                    sum.finish()?;
                    let bits = |m: &Transformer| -> Vec<Vec<u32>> {
                        m.parameters()
                            .iter()
                            .map(|p| {
                                let g = p.grad().unwrap().to_device(Device::Cpu).unwrap();
                                g.to_vec().iter().map(|v| v.to_bits()).collect()
                            })
                            .collect()
                    };
                    Ok((bits(&plain), bits(&overlapped), started_at_ready, buckets))
                })
                .unwrap();
                for (r, (plain, overlapped, started, buckets)) in ranks.iter().enumerate() {
                    assert!(plain == overlapped, "{what}: rank {r}: sums differ");
                    if checkpointing {
                        assert!(started.is_empty(), "{what}: {started:?}");
                    } else if *buckets > 1 {
                        // when the last parameter completed, earlier buckets were in flight
                        assert!(
                            started.last().is_some_and(|&s| s > 0),
                            "{what}: rank {r}: nothing started during backward ({started:?} of {buckets})"
                        );
                    }
                }
                assert_eq!(ranks[0].0, ranks[1].0, "{what}: ranks differ");
            }
        }
    }
}

/// ZeRO-1's two collectives, against sums and values made here, on Cpu and Emu ranks, for
/// bucket sizes from one element to everything, over f32 and bf16 tensors mixed: the gradient
/// reduce-scatter gives each owner its parameters' sums bitwise equal to the bucketed
/// all-reduce's, drops the other ranks' copies and leaves a parameter without a gradient alone;
/// the all-gather gives every rank each parameter's value from its owner, bit for bit and in
/// its own dtype.
#[test]
fn zero1_gradient_reduce_scatter_and_parameter_all_gather() {
    use clipcu::train::data_parallel::{all_gather_parameters, reduce_gradients_to_owners};
    use clipcu::DType;
    let seed = common::fresh_seed();
    let world = 3;
    let shapes: [&[usize]; 7] = [&[5, 3], &[7], &[2, 2, 2], &[1], &[4, 4], &[9], &[3]];
    let dtypes = [
        DType::F32,
        DType::BF16,
        DType::F32,
        DType::F32,
        DType::BF16,
        DType::F32,
        DType::F32,
    ];
    let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let owner = clipcu::train::zero1_owners(&sizes, world);
    assert!((0..world).all(|r| owner.contains(&r)), "{owner:?}");
    let value = |tag: u64, i: usize| {
        Tensor::randn(shapes[i].to_vec(), 1.0, seed ^ tag ^ (i as u64) << 8).to_dtype(dtypes[i])
    };
    let grad = |r: usize, i: usize| value(1 + r as u64, i);
    for device in [Device::Cpu, Device::Emu] {
        for bucket in [1, 7, 20, 1 << 20] {
            let what = format!("{device}, bucket {bucket}, owners {owner:?}, seed {seed}");
            let make = |rank: usize| -> Vec<Param> {
                (0..shapes.len())
                    .map(|i| {
                        let v = value(100 + rank as u64, i).to_device(device).unwrap();
                        let p = Param::new(format!("p{i}"), v);
                        // the third parameter has no gradient anywhere: untouched
                        if i != 2 {
                            p.accumulate_grad(grad(rank, i).to_device(device).unwrap())
                                .unwrap();
                        }
                        p
                    })
                    .collect()
            };
            let host = |t: Tensor| {
                let t = t.to_device(Device::Cpu).unwrap();
                (
                    t.dtype(),
                    t.to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                )
            };
            let got = run_ranks(world, TIMEOUT, |comm| {
                let (plain, zero) = (make(comm.rank()), make(comm.rank()));
                all_reduce_gradients(&plain, &comm, bucket)?;
                reduce_gradients_to_owners(&zero, &owner, &comm, bucket)?;
                let grads: Vec<_> = (0..shapes.len())
                    .map(|i| (plain[i].grad().map(host), zero[i].grad().map(host)))
                    .collect();
                all_gather_parameters(&zero, &owner, &comm, bucket)?;
                let values: Vec<_> = zero.iter().map(|p| host(p.value())).collect();
                Ok((grads, values))
            })
            .unwrap();
            for (r, (grads, values)) in got.iter().enumerate() {
                for (i, (all_reduced, to_owner)) in grads.iter().enumerate() {
                    if i == 2 || owner[i] != r {
                        assert!(to_owner.is_none(), "{what}: rank {r} kept p{i}'s gradient");
                        continue;
                    }
                    assert_eq!(to_owner, all_reduced, "{what}: rank {r}, p{i}");
                    // the sum made here: f64 over the ranks in rank order, rounded to f32 and then
                    // to the gradient's dtype (as the 16-bit ones travel widened)
                    let sum: Vec<f32> = (0..sizes[i])
                        .map(|k| {
                            (0..world)
                                .map(|q| grad(q, i).to_vec()[k] as f64)
                                .sum::<f64>() as f32
                        })
                        .collect();
                    let sum = Tensor::from_vec(sum, shapes[i].to_vec())
                        .unwrap()
                        .to_dtype(dtypes[i]);
                    assert_eq!(
                        to_owner,
                        &Some(host(sum)),
                        "{what}: rank {r}, p{i} vs the sum made here"
                    );
                    assert_eq!(
                        to_owner.as_ref().unwrap().0,
                        dtypes[i],
                        "{what}: p{i} dtype"
                    );
                }
                for (i, v) in values.iter().enumerate() {
                    let want = host(value(100 + owner[i] as u64, i));
                    assert_eq!(v, &want, "{what}: rank {r} holds p{i} unlike its owner");
                }
            }
        }
    }
}

/// ZeRO-1's clip on Cpu and Emu ranks: each rank's optimizer holds its shard of the parameters
/// and their gradients only (as after the reduce-scatter); the norm it returns is the global
/// one — within (1 + world/2)·2^-24 of `optim::unscale_clip_grad_norm` over all the gradients at once, the
/// same bits on every rank — and the update it makes is the unsharded optimizer's (within an
/// f32 ulp of the clip factor, 1e-6 relative), with a loss scaler's unscaling; an inf in one
/// rank's shard makes every rank's norm non-finite (all skip the step together).
#[test]
fn zero1_clip_takes_the_global_norm_on_every_rank() {
    use clipcu::optim::{AdamW, AdamWConfig};
    let seed = common::fresh_seed();
    let world = 2;
    let shapes: [&[usize]; 5] = [&[6, 5], &[11], &[3, 3], &[1], &[8]];
    let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let owner = clipcu::train::zero1_owners(&sizes, world);
    let inv_scale = 1.0 / 1024.0;
    let init = |i: usize| Tensor::randn(shapes[i].to_vec(), 1.0, seed ^ (i as u64) << 4);
    let grad = |i: usize| {
        clipcu::ops::unary::scale(
            &Tensor::randn(shapes[i].to_vec(), 3.0, seed ^ 77 ^ i as u64),
            1024.0,
        )
        .unwrap()
    };
    for device in [Device::Cpu, Device::Emu] {
        for poison in [false, true] {
            let make = || -> Vec<Param> {
                (0..shapes.len())
                    .map(|i| Param::new(format!("p{i}.weight"), init(i).to_device(device).unwrap()))
                    .collect()
            };
            let config = AdamWConfig::default();
            // the reference: every gradient in one unsharded optimizer
            let full = make();
            for (i, p) in full.iter().enumerate() {
                p.accumulate_grad(grad(i).to_device(device).unwrap())
                    .unwrap();
            }
            let want = clipcu::optim::unscale_clip_grad_norm(
                &full
                    .iter()
                    .map(|p| {
                        let q = Param::new(
                            p.name().to_string(),
                            p.value().to_device(Device::Cpu).unwrap(),
                        );
                        q.accumulate_grad(p.grad().unwrap().to_device(Device::Cpu).unwrap())
                            .unwrap();
                        q
                    })
                    .collect::<Vec<_>>(),
                1.0,
                inv_scale,
            )
            .unwrap();
            let mut unsharded = AdamW::new(&full, config);
            unsharded.unscale_clip_grad_norm(1.0, inv_scale).unwrap();
            unsharded.step(1e-2).unwrap();
            let got = run_ranks(world, TIMEOUT, |comm| {
                let ps = make();
                let mine: Vec<usize> = (0..ps.len()).filter(|&i| owner[i] == comm.rank()).collect();
                for &i in &mine {
                    let mut g = grad(i);
                    if poison && comm.rank() == 1 && i == mine[0] {
                        g = clipcu::ops::unary::scale(&g, f32::INFINITY)?;
                    }
                    ps[i].accumulate_grad(g.to_device(device)?)?;
                }
                let mut opt = AdamW::new_shard(&ps, &mine, config)?;
                let sum = |t: &Tensor| comm.all_reduce_sum(&t.to_device(device)?);
                let norm = opt
                    .sharded_unscale_clip_grad_norm(1.0, inv_scale, &sum)?
                    .to_device(Device::Cpu)?
                    .item()?;
                if norm.is_finite() {
                    opt.step(1e-2)?;
                }
                let values: Vec<Vec<f32>> = mine
                    .iter()
                    .map(|&i| ps[i].value().to_device(Device::Cpu).unwrap().to_vec())
                    .collect();
                Ok((norm, mine, values))
            })
            .unwrap();
            let what = format!("{device}, poisoned {poison}, seed {seed}");
            assert_eq!(
                got[0].0.to_bits(),
                got[1].0.to_bits(),
                "{what}: norms differ by rank"
            );
            if poison {
                assert!(
                    !got[0].0.is_finite(),
                    "{what}: an inf gradient gave norm {}",
                    got[0].0
                );
                continue;
            }
            // with u = 2^-24 (f32's half ulp): each shard's Σ g² rounded to f32 (≤ u of the
            // whole Σ together) and summed over the ranks in f32 (world − 1 additions, ≤ u
            // each) is within world·u of the exact Σ, so its square root is within world·u/2,
            // and the norm's own rounding to f32 adds u: (1 + world/2)·u in all (1.03·u seen)
            let bound = (1.0 + world as f64 / 2.0) * 2f64.powi(-24);
            assert!(
                ((got[0].0 as f64 - want) / want).abs() <= bound,
                "{what}: norm {} vs {want}",
                got[0].0
            );
            assert!(want > 1.0, "{what}: the clip does not act (norm {want})");
            for (_, mine, values) in &got {
                for (&i, v) in mine.iter().zip(values) {
                    let w = full[i].value().to_device(Device::Cpu).unwrap().to_vec();
                    assert!(
                        rel(v, &w) <= 1e-6,
                        "{what}: p{i} {:e} from the unsharded step",
                        rel(v, &w)
                    );
                    assert!(
                        rel(&init(i).to_vec(), &w) > 1e-4,
                        "{what}: p{i} did not move"
                    );
                }
            }
        }
    }
}

/// ZeRO-1 on Emu ranks under fp32, amp (f16, loss scaler) and pure_bf16 (16-bit weights updated
/// with stochastic rounding, f16 moments with block scales): without clipping the sharded run is
/// the unsharded one bit for bit — the owner's gradients are the all-reduce's, the scaler's
/// unscaling factor is exact, and each weight's rounding bits come from its index in the
/// unsharded optimizer, however the parameters are sharded — at world sizes 2 and 3.
#[test]
fn zero1_on_emu_ranks_is_the_unsharded_run_under_every_precision() {
    use clipcu::train::Precision;
    let seed = common::fresh_seed();
    for (precision, world) in [
        (Precision::Fp32, 2),
        (Precision::Amp, 2),
        (Precision::PureBf16, 2),
        (Precision::PureBf16, 3),
    ] {
        let what = format!("{precision:?}, world {world}, seed {seed}");
        let run = |zero1: bool| {
            run_ranks(world, TIMEOUT, |comm| {
                let mut cfg = config(6, 3, seed);
                cfg.grad_clip = None;
                cfg.precision = Some(precision);
                let mut t = Trainer::new(&tiny_vit(), cfg, DataSpec::Synthetic)?;
                if let Some(s) = t.scaler.as_mut() {
                    s.scale = 1024.0;
                }
                t.to_device(Device::Emu)?;
                t.set_communicator(Box::new(comm))?;
                if zero1 {
                    t.set_zero1()?;
                }
                let state = |t: &Trainer| -> Vec<(String, Vec<u32>)> {
                    t.model
                        .named_params()
                        .into_iter()
                        .map(|(n, p)| {
                            let v = p.value().to_device(Device::Cpu).unwrap();
                            (n, v.to_vec().iter().map(|x| x.to_bits()).collect())
                        })
                        .collect()
                };
                let before = state(&t);
                let mut logs = Vec::new();
                for _ in 0..3 {
                    let l = t.train_step()?;
                    logs.push((l.loss.to_bits(), l.skipped));
                }
                let after = state(&t);
                let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                Ok((logs, after, moved))
            })
            .unwrap()
        };
        let (plain, zero) = (run(false), run(true));
        assert!(
            plain[0].0.iter().all(|(_, skipped)| !skipped),
            "{what}: a skipped step"
        );
        for r in 0..world {
            assert_eq!(plain[r].0, zero[r].0, "{what}: rank {r}: losses");
            for ((n, a), (_, b)) in plain[r].1.iter().zip(&zero[r].1) {
                assert!(
                    a == b,
                    "{what}: rank {r}: {n} differs from the unsharded run"
                );
            }
        }
        let tensors = plain[0].1.len();
        assert!(
            plain[0].2 * 2 > tensors,
            "{what}: {} of {tensors} tensors moved",
            plain[0].2
        );
    }
}

/// The shards: contiguous, every parameter owned once, every rank some when there are enough
/// parameters, and sizes near the mean; ZeRO-1 without ranks is a clear error.
#[test]
fn zero1_shards_and_its_errors() {
    use clipcu::train::zero1_owners;
    let seed = common::fresh_seed();
    let sizes: Vec<usize> = (0..40)
        .map(|i| 1 + (common::splitmix64(seed ^ i) % 5000) as usize)
        .collect();
    let total: usize = sizes.iter().sum();
    for world in [1, 2, 3, 4, 8] {
        let o = zero1_owners(&sizes, world);
        assert_eq!(o.len(), sizes.len());
        assert!(o.windows(2).all(|w| w[0] <= w[1]), "contiguous: {o:?}");
        assert!(o.iter().all(|&r| r < world));
        for r in 0..world {
            let mine: usize = sizes
                .iter()
                .zip(&o)
                .filter(|(_, &q)| q == r)
                .map(|(n, _)| n)
                .sum();
            // within one largest parameter of the even share
            assert!(
                (mine as i64 - (total / world) as i64).unsigned_abs() as usize <= 5000,
                "world {world}: rank {r} owns {mine} of {total}"
            );
        }
    }
    // each rank keeps only its share of the moments, and together they are all of them
    let full = Trainer::new(&tiny_vit(), config(8, 1, 1), DataSpec::Synthetic)
        .unwrap()
        .opt
        .state()
        .unwrap()
        .len();
    let kept = run_ranks(2, TIMEOUT, |comm| {
        let mut t = Trainer::new(&tiny_vit(), config(8, 1, 1), DataSpec::Synthetic)?;
        t.set_communicator(Box::new(comm))?;
        t.set_zero1()?;
        assert!(t.zero1());
        Ok(t.opt.state()?.len() - 1) // less `step`
    })
    .unwrap();
    assert!(
        kept.iter().all(|&k| k > 0 && k < full - 1),
        "{kept:?} of {full}"
    );
    assert_eq!(kept.iter().sum::<usize>(), full - 1, "{kept:?} of {full}");
    let mut t = Trainer::new(&tiny_vit(), config(8, 1, 1), DataSpec::Synthetic).unwrap();
    let e = t.set_zero1().unwrap_err().to_string();
    assert!(
        e.contains("--zero1") && e.contains("--nproc-per-node"),
        "{e}"
    );
    assert!(!t.zero1());
}

/// A world-size-2 run stopped at step 3 and resumed at world size 4 continues the same data
/// order (the checkpoint holds the global position) and matches the uninterrupted world-size-2
/// run: losses of all 6 steps, and the final weights within 1e-5 over the whole model (1e-4
/// per tensor). Only rank 0 writes.
#[test]
fn resume_at_another_world_size_continues_the_same_data_order() {
    let seed = common::fresh_seed();
    let straight = tmpdir("straight");
    run_group(2, 6, seed, &straight, None);
    let split = tmpdir("split");
    run_group(2, 3, seed, &split, None);
    let ckpt = split.join("checkpoint.safetensors");
    assert_eq!(
        data_position(&ckpt),
        3 * 8,
        "the position after 3 global batches"
    );
    run_group(4, 6, seed, &split, Some(&ckpt));
    assert_eq!(data_position(&ckpt), 6 * 8);
    let (a, b) = (
        losses(&straight.join("metrics.jsonl")),
        losses(&split.join("metrics.jsonl")),
    );
    assert_eq!(a.len(), 6, "{a:?}");
    assert_eq!(
        a.iter().map(|x| x.0).collect::<Vec<_>>(),
        b.iter().map(|x| x.0).collect::<Vec<_>>(),
        "every step logged once, by rank 0 only"
    );
    for ((s, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            ((x - y) / x).abs() <= 1e-5,
            "seed {seed}: step {s}: uninterrupted loss {x}, resumed {y}"
        );
    }
    let (pa, pb) = (
        file_params(&straight.join("model.safetensors")),
        file_params(&split.join("model.safetensors")),
    );
    assert!(!pa.is_empty());
    let zero = zero_init(&tiny_vit(), seed);
    compare_params(
        &format!("resume, seed {seed}"),
        &pb,
        &pa,
        &zero,
        &|_| 1e-4,
        1e-5,
    );
    // a resumed run that read other samples would be far off: the check can fail
    let shifted = tmpdir("shifted");
    run_group(2, 3, seed ^ 1, &shifted, None);
    let c = losses(&shifted.join("metrics.jsonl"));
    assert!(
        c.iter()
            .zip(&a)
            .any(|((_, x), (_, y))| ((x - y) / y).abs() > 1e-4),
        "another seed's data gave the same losses"
    );
    for d in [straight, split, shifted] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_world_size_that_does_not_divide_the_batch_is_an_error() {
    let mut t = Trainer::new(&tiny_vit(), config(6, 1, 1), DataSpec::Synthetic).unwrap();
    let mut comms = InProcess::group(4, Duration::from_secs(1));
    let e = t
        .set_communicator(Box::new(comms.remove(0)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--batch-size 6") && e.contains("4 ranks"), "{e}");
    assert_eq!(t.world_size(), 1, "the trainer stays a single process");
}

fn clipcu() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_clipcu"))
}

fn write_png(path: &Path, seed: u64) {
    let img = image::RgbImage::from_fn(40, 30, |x, y| {
        let v = common::splitmix64(seed ^ ((x as u64) << 8) ^ y as u64);
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    img.save(path).unwrap();
}

/// `clipcu train --nproc-per-node` as a user runs it, on the synthetic stream, on a CSV and on
/// WebDataset shards (each rank reads and decodes only its part of the global batch,
/// augmented): 4 steps on one process against 2 steps on 2 ranks resumed to 4 steps on 4 ranks
/// — the same losses and final weights within 1e-5 over the whole model (1e-4 per tensor).
#[test]
fn clipcu_train_on_ranks_equals_one_process_on_synthetic_csv_and_webdataset_data() {
    let seed = common::fresh_seed();
    let dir = tmpdir("cli");
    let cfg = dir.join("tiny.json");
    std::fs::write(&cfg, tiny_vit().to_json()).unwrap();
    let words = [
        "red", "blue", "cat", "dog", "square", "round", "small", "large",
    ];
    let mut csv = String::from("filepath,title\n");
    for i in 0..16u64 {
        let rel = format!("{i}.png");
        write_png(&dir.join(&rel), seed ^ i);
        let w = |k: u64| words[(common::splitmix64(seed ^ (i * 8 + k)) % 8) as usize];
        csv += &format!("{rel},a {} {} {}\n", w(0), w(1), w(2));
    }
    let csv_path = dir.join("train.csv");
    std::fs::write(&csv_path, csv).unwrap();
    // the same pairs as WebDataset shards of uneven sizes (9 and 7 samples)
    for (s, keys) in [(0, 0..9u64), (1, 9..16)] {
        let mut b =
            tar::Builder::new(std::fs::File::create(dir.join(format!("s{s}.tar"))).unwrap());
        for i in keys {
            let png = std::fs::read(dir.join(format!("{i}.png"))).unwrap();
            let w = |k: u64| words[(common::splitmix64(seed ^ (i * 8 + k)) % 8) as usize];
            let txt = format!("a {} {} {}", w(0), w(1), w(2)).into_bytes();
            for (ext, data) in [("png", png), ("txt", txt)] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, format!("k{i:03}.{ext}"), data.as_slice())
                    .unwrap();
            }
        }
        b.finish().unwrap();
    }
    let shards = format!("{}/s{{0..1}}.tar", dir.display());
    let run = |out: &str, ranks: usize, steps: usize, extra: &[&str]| {
        let o = clipcu()
            .arg("train")
            .arg("--config")
            .arg(&cfg)
            .args(["--device", "cpu", "--batch-size", "8", "--eval-every", "0"])
            .args(["--checkpoint-every", "2", "--constant-lr", "--warmup", "1"])
            .args(["--workers", "1", "--seed", &(seed % 1000).to_string()])
            .args(["--steps", &steps.to_string()])
            .args(["--nproc-per-node", &ranks.to_string(), "--out"])
            .arg(dir.join(out))
            .args(extra)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let csv_arg = ["--data", csv_path.to_str().unwrap()];
    let wds_arg = ["--data", shards.as_str()];
    for (data, extra) in [
        ("synthetic", &[][..]),
        ("csv", &csv_arg[..]),
        ("webdataset", &wds_arg[..]),
    ] {
        let (one, ranks) = (format!("one-{data}"), format!("ranks-{data}"));
        run(&one, 1, 4, extra);
        run(&ranks, 2, 2, extra);
        run(&ranks, 4, 4, &[extra, &["--resume"]].concat());
        let (a, b) = (
            losses(&dir.join(&one).join("metrics.jsonl")),
            losses(&dir.join(&ranks).join("metrics.jsonl")),
        );
        assert_eq!(a.len(), 4, "{data}: {a:?}");
        assert_eq!(a.len(), b.len(), "{data}: {b:?}");
        for ((s, x), (t, y)) in a.iter().zip(&b) {
            assert_eq!(s, t);
            assert!(
                ((x - y) / x).abs() <= 1e-5,
                "{data}, seed {seed}: step {s}: one process {x}, ranks {y}"
            );
        }
        let (pa, pb) = (
            file_params(&dir.join(&one).join("model.safetensors")),
            file_params(&dir.join(&ranks).join("model.safetensors")),
        );
        let zero = zero_init(&tiny_vit(), seed % 1000);
        let what = format!("clipcu train, {data}, seed {seed}");
        compare_params(&what, &pb, &pa, &zero, &|_| 1e-4, 1e-5);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `clipcu train --zero1` through the CLI: on 2 thread ranks the same losses as without it
/// (exactly); without ranks, an error naming the flag.
#[test]
fn clipcu_train_zero1_flag() {
    let seed = common::fresh_seed() % 1000;
    let dir = tmpdir("cli-zero1");
    let cfg = dir.join("tiny.json");
    std::fs::write(&cfg, tiny_vit().to_json()).unwrap();
    let run = |out: &str, extra: &[&str]| {
        clipcu()
            .arg("train")
            .arg("--config")
            .arg(&cfg)
            .args(["--device", "cpu", "--batch-size", "8", "--eval-every", "0"])
            .args([
                "--steps",
                "3",
                "--workers",
                "1",
                "--seed",
                &seed.to_string(),
            ])
            .arg("--out")
            .arg(dir.join(out))
            .args(extra)
            .output()
            .unwrap()
    };
    for (out, extra) in [
        ("plain", &["--nproc-per-node", "2"][..]),
        ("zero1", &["--nproc-per-node", "2", "--zero1"][..]),
    ] {
        let o = run(out, extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        losses(&dir.join("plain").join("metrics.jsonl")),
        losses(&dir.join("zero1").join("metrics.jsonl"))
    );
    let o = run("alone", &["--zero1"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("--zero1") && e.contains("--nproc-per-node"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
