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
use clipcu::{Graph, Param, Tensor};
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

/// The difference of parameter `name` between `a` and the reference `b`, asserted ≤ 1e-5
/// (‖a − b‖/‖b‖), returned. One exception, measured apart: the key third of an attention's
/// `in_proj_bias`. Adding a vector to every key adds a constant to each softmax row, so that
/// bias has no effect on any output and its true gradient is 0; what it gets is rounding noise
/// (~1e-10), which AdamW normalises into updates that differ between any two summation orders.
/// Both stay near 0 (2.8e-7 after 10 steps here, while the query and value thirds move by 2e-2
/// and agree to ~1e-6): the key bias must stay below 1e-5 in both, and is not compared
/// relatively.
fn param_error(what: &str, name: &str, a: &[f32], b: &[f32]) -> f64 {
    if name.ends_with("attn.in_proj_bias") {
        let k = a.len() / 3;
        let e = rel(&a[..k], &b[..k]).max(rel(&a[2 * k..], &b[2 * k..]));
        assert!(
            e <= 1e-5,
            "{what}: {name} (query/value thirds) differs by {e:e}"
        );
        let key = a[k..2 * k]
            .iter()
            .chain(&b[k..2 * k])
            .fold(0f32, |m, x| m.max(x.abs()));
        assert!(key <= 1e-5, "{what}: {name}'s key bias reached {key:e}");
        return e;
    }
    let e = rel(a, b);
    assert!(e <= 1e-5, "{what}: parameter {name} differs by {e:e}");
    e
}

fn params_of(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.model
        .named_params()
        .into_iter()
        .map(|(n, p)| (n, p.value().to_vec()))
        .collect()
}

/// A run's (loss, gradient norm before clipping) per step, and its final parameters.
type Run = (Vec<(f32, f64)>, Vec<(String, Vec<f32>)>);

/// `steps` steps of one process on global batches of `batch`.
fn one_process(cfg: &ClipConfig, batch: usize, steps: usize, seed: u64) -> Run {
    let mut t = Trainer::new(cfg, config(batch, steps, seed), DataSpec::Synthetic).unwrap();
    let logs = (0..steps)
        .map(|_| {
            let l = t.train_step().unwrap();
            (l.loss, l.grad_norm.unwrap())
        })
        .collect();
    (logs, params_of(&t))
}

/// The same on `world` ranks: every rank's (losses, parameters).
fn data_parallel(
    cfg: &ClipConfig,
    batch: usize,
    steps: usize,
    seed: u64,
    world: usize,
) -> Vec<Run> {
    run_ranks(world, TIMEOUT, |comm| {
        let mut t = Trainer::new(cfg, config(batch, steps, seed), DataSpec::Synthetic)?;
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

/// Ten steps of a tiny ViT CLIP at world sizes 2 and 4 give the losses and parameters of one
/// process on the combined batch (the trainer's own one-process step, through the composed loss:
/// an independent path), within 1e-5; every rank ends with the same bits.
#[test]
fn vit_data_parallel_equals_one_process_on_the_combined_batch() {
    let seed = common::fresh_seed();
    let (batch, steps) = (8, 10);
    let cfg = tiny_vit();
    let (ref_losses, ref_params) = one_process(&cfg, batch, steps, seed);
    for world in [2, 4] {
        let started = Instant::now();
        let ranks = data_parallel(&cfg, batch, steps, seed, world);
        let what = format!("world {world}, seed {seed}");
        println!("{what}: {steps} steps in {:.2?}", started.elapsed());
        let (losses, params) = &ranks[0];
        // the loss, and the global gradient norm: AdamW hides a gradient's scale, the norm
        // does not (a DP step that summed without the 1/world would double it). The norm
        // within 1e-4: a gradient moves more than the weights it comes from (their ~1e-6
        // rounding drift over 10 steps showed up as up to 1.3e-5 in the norm at step 10).
        for (s, ((a, ga), (b, gb))) in losses.iter().zip(&ref_losses).enumerate() {
            let e = ((a - b) / b).abs();
            assert!(
                e <= 1e-5,
                "{what}: step {} loss {a} vs {b} (rel {e:e})",
                s + 1
            );
            let e = ((ga - gb) / gb).abs();
            assert!(
                e <= 1e-4,
                "{what}: step {} gradient norm {ga} vs {gb} (rel {e:e})",
                s + 1
            );
        }
        let mut worst = (0f64, String::new());
        for ((n, a), (m, b)) in params.iter().zip(&ref_params) {
            assert_eq!(n, m);
            let e = param_error(&what, n, a, b);
            if e > worst.0 {
                worst = (e, n.clone());
            }
        }
        println!(
            "{what}: largest parameter difference {:.2e} ({})",
            worst.0, worst.1
        );
        // the replicas stay equal: same bits on every rank
        for (r, (l, p)) in ranks.iter().enumerate().skip(1) {
            assert_eq!(l, losses, "{what}: rank {r}'s losses");
            assert!(
                p == params,
                "{what}: rank {r}'s parameters differ from rank 0's"
            );
        }
        // and training moved them: the comparison is not between two copies of the init
        let init = Trainer::new(&cfg, config(batch, steps, seed), DataSpec::Synthetic).unwrap();
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

fn data_position(checkpoint: &Path) -> u64 {
    let f = st::load(checkpoint).unwrap();
    let v: serde_json::Value = serde_json::from_str(&f.metadata["clipcu.data"]).unwrap();
    v["next_index"].as_u64().unwrap()
}

/// `Trainer::run` on `world` ranks into `out`, fresh or resumed from `resume`.
fn run_group(world: usize, steps: usize, seed: u64, out: &Path, resume: Option<&Path>) {
    run_ranks(world, TIMEOUT, |comm| {
        let cfg = config(8, steps, seed);
        let mut t = match resume {
            Some(p) => Trainer::resume(p, cfg, DataSpec::Synthetic)?,
            None => Trainer::new(&tiny_vit(), cfg, DataSpec::Synthetic)?,
        };
        t.set_communicator(Box::new(comm))?;
        t.run(&opts(out))?;
        Ok(())
    })
    .unwrap();
}

/// A world-size-2 run stopped at step 3 and resumed at world size 4 continues the same data
/// order (the checkpoint holds the global position) and matches the uninterrupted world-size-2
/// run: losses of all 6 steps and the final parameters within 1e-5. Only rank 0 writes.
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
    let load = |p: &Path| -> std::collections::HashMap<String, Tensor> {
        st::load(p).unwrap().tensors.into_iter().collect()
    };
    let (pa, pb) = (
        load(&straight.join("model.safetensors")),
        load(&split.join("model.safetensors")),
    );
    assert!(!pa.is_empty());
    for (name, t) in &pa {
        param_error(
            &format!("seed {seed}"),
            name,
            &pb[name].to_vec(),
            &t.to_vec(),
        );
    }
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
