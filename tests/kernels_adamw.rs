//! Kernels of `kernels/adamw.cu` through `AdamW` on a kernel device against the CPU reference
//! (`AdamW` + `clip_grad_norm` on Cpu): the fused multi-tensor step, the fixed-order gradient
//! norm with its clip factor left in device memory, the `logit_scale` clamp; determinism, launch
//! geometry independence, checkpoints across devices, and what an in-place update does to a
//! `Param`. Emu runs each case in normal and reverse lane order; Cuda when a GPU is present
//! (else reported SKIPPED on stderr).

mod common;
use common::on_each_kernel_device as on_each;

use clipcu::optim::{clamp_in_place, clip_grad_norm, AdamW, AdamWConfig, LrSchedule};
use clipcu::{Device, Param, Tensor};
use std::collections::HashMap;

const STEPS: usize = 8;
const MAX_NORM: f64 = 5.0;

/// Names (which decide weight decay, `adamw::decays`) and shapes: 2-D decayed tensors of sizes
/// that are not multiples of 256 or of the 4096-element chunk (one spans two chunks), 1-D
/// no-decay biases and gains (one over two chunks), the one-element `logit_scale`, and
/// `frozen.weight`, which never gets a gradient.
const PARAMS: [(&str, &[usize]); 8] = [
    ("proj.weight", &[37, 50]),
    ("proj.bias", &[37]),
    ("fc.weight", &[3, 1500]),
    ("fc.bias", &[9000]),
    ("ln.weight", &[7]),
    ("logit_scale", &[]),
    ("head.weight", &[64, 33]),
    ("frozen.weight", &[5, 6]),
];

fn schedule() -> LrSchedule {
    LrSchedule::Cosine {
        base: 2e-2,
        warmup: 2,
        total: STEPS,
    }
}

fn config() -> AdamWConfig {
    AdamWConfig {
        lr: 2e-2,
        weight_decay: 0.2,
        ..AdamWConfig::default()
    }
}

fn make_params(device: Device, seed: u64) -> Vec<Param> {
    PARAMS
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let t = Tensor::randn(shape.to_vec(), 0.5, seed.wrapping_add(i as u64));
            Param::new(*name, t.to_device(device).unwrap())
        })
        .collect()
}

/// Gradient `i` of step `step`: large on even steps (their norm, ≈ 160, is clipped to
/// MAX_NORM), small on odd ones (≈ 0.16: not clipped). `frozen.weight` gets none.
fn grads(seed: u64, step: usize) -> Vec<Option<Tensor>> {
    let std = if step.is_multiple_of(2) { 1.0 } else { 1e-3 };
    PARAMS
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            (*name != "frozen.weight").then(|| {
                let s = common::splitmix64(seed ^ ((step as u64) << 32) ^ i as u64);
                Tensor::randn(shape.to_vec(), std, s)
            })
        })
        .collect()
}

struct Run {
    /// per step: the norm before clipping (None on the steps that do not clip)
    norms: Vec<Option<f64>>,
    params: Vec<Tensor>,
    /// `state()`: step, then exp_avg and exp_avg_sq per parameter, on the host
    state: Vec<(String, Tensor)>,
}

/// STEPS AdamW steps on `device`: every step but step 5 clips first (step 5 runs without a
/// clip factor), then the lr schedule's step, then the logit_scale clamp.
fn train(device: Device, seed: u64) -> Run {
    let params = make_params(device, seed);
    let mut opt = AdamW::new(&params, config());
    assert_eq!(opt.moments_device(), device);
    let mut norms = Vec::new();
    for step in 0..STEPS {
        for (p, g) in params.iter().zip(grads(seed, step)) {
            if let Some(g) = g {
                p.accumulate_grad(g.to_device(device).unwrap()).unwrap();
            }
        }
        let norm = (step != 5).then(|| {
            if device == Device::Cpu {
                clip_grad_norm(&params, MAX_NORM).unwrap()
            } else {
                let n = opt.clip_grad_norm(MAX_NORM).unwrap();
                assert_eq!((n.device(), n.shape()), (device, &[] as &[usize]));
                n.item().unwrap() as f64
            }
        });
        norms.push(norm);
        opt.step(schedule().lr(step)).unwrap();
        clamp_in_place(&params[5], 0.0, 100f32.ln()).unwrap();
        assert!(params.iter().all(|p| p.grad().is_none()), "step clears");
    }
    Run {
        norms,
        params: params
            .iter()
            .map(|p| p.value().to_device(Device::Cpu).unwrap())
            .collect(),
        state: opt.state().unwrap(),
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec().iter().map(|v| v.to_bits()).collect()
}

/// Largest ‖Δ‖/‖ref‖ over the parameters and both moments (asserted < 1e-6 each) and the
/// largest relative difference of a norm (< 1e-6).
fn compare(what: &str, run: &Run, cpu: &Run) -> (f64, f64) {
    let mut worst = 0f64;
    for ((p, r), (name, _)) in run.params.iter().zip(&cpu.params).zip(PARAMS) {
        let e = p.rel_err(r);
        assert!(e < 1e-6, "{what}: {name} off by {e:.2e}");
        worst = worst.max(e);
    }
    assert_eq!(run.state.len(), cpu.state.len());
    for ((k, t), (kc, c)) in run.state.iter().zip(&cpu.state) {
        assert_eq!(k, kc);
        assert_eq!(t.device(), Device::Cpu, "{what}: state() is on the host");
        let e = t.rel_err(c);
        assert!(e < 1e-6, "{what}: {k} off by {e:.2e}");
        worst = worst.max(e);
    }
    let mut worst_norm = 0f64;
    for (step, (n, c)) in run.norms.iter().zip(&cpu.norms).enumerate() {
        match (n, c) {
            (Some(n), Some(c)) => {
                // against the reference's f64 norm rounded to f32, as a `[]` tensor holds it
                let c = &(*c as f32 as f64);
                let e = ((n - c) / c).abs();
                assert!(e < 1e-6, "{what} step {step}: norm {n} vs cpu {c}");
                worst_norm = worst_norm.max(e);
            }
            (None, None) => {}
            _ => panic!("{what} step {step}: clipped on one side only"),
        }
    }
    (worst, worst_norm)
}

#[test]
fn adamw_with_clipping_matches_cpu_on_every_kernel_device() {
    let seed = common::fresh_seed();
    let cpu = train(Device::Cpu, seed);
    // the case exercises both branches of clipping, and decay on some parameters only
    let clipped = cpu
        .norms
        .iter()
        .flatten()
        .filter(|&&n| n > MAX_NORM)
        .count();
    let unclipped = cpu
        .norms
        .iter()
        .flatten()
        .filter(|&&n| n <= MAX_NORM)
        .count();
    assert!(
        clipped >= 3 && unclipped >= 2,
        "seed {seed}: {:?}",
        cpu.norms
    );
    let init = make_params(Device::Cpu, seed);
    let frozen = 7;
    on_each(|device, tag| {
        let what = format!("{tag}, seed={seed}");
        let run = train(device, seed);
        let (worst, worst_norm) = compare(&what, &run, &cpu);
        println!(
            "{what}: params and moments within {worst:.2e} of cpu, norms within {worst_norm:.2e}"
        );
        // no gradient: the value and its moments untouched
        assert!(
            bits(&run.params[frozen]) == bits(&init[frozen].value()),
            "{what}"
        );
        for (k, t) in &run.state {
            if k.starts_with("frozen.") {
                assert!(t.to_vec().iter().all(|&v| v == 0.0), "{what}: {k}");
            }
        }
        // the clamp held: logit_scale ≤ ln 100 (the large early steps push it past on some seeds)
        let s = run.params[5].item().unwrap();
        assert!((0.0..=100f32.ln()).contains(&s), "{what}: logit_scale {s}");
        // the emulator has no FMA contraction and the kernel rounds every operation explicitly,
        // in the reference's order: the same bits as the CPU
        if device == Device::Emu {
            for ((p, c), (name, _)) in run.params.iter().zip(&cpu.params).zip(PARAMS) {
                assert!(
                    bits(p) == bits(c),
                    "{what}: {name} not bit-identical to cpu"
                );
            }
            for ((k, t), (_, c)) in run.state.iter().zip(&cpu.state) {
                assert!(bits(t) == bits(c), "{what}: {k} not bit-identical to cpu");
            }
        }
    });
}

#[test]
fn two_runs_on_a_kernel_device_are_bitwise_equal() {
    on_each(|device, tag| {
        let seed = common::fresh_seed();
        let (a, b) = (train(device, seed), train(device, seed));
        assert_eq!(a.norms, b.norms, "{tag}, seed={seed}");
        for (x, y) in a.params.iter().zip(&b.params) {
            assert!(bits(x) == bits(y), "{tag}, seed={seed}");
        }
        for ((k, x), (_, y)) in a.state.iter().zip(&b.state) {
            assert!(bits(x) == bits(y), "{tag}, seed={seed}: {k}");
        }
    });
}

#[test]
fn the_norm_does_not_depend_on_the_launch_geometry() {
    on_each(|device, tag| {
        let seed = common::fresh_seed();
        let params = make_params(device, seed);
        for (p, g) in params.iter().zip(grads(seed, 0)) {
            if let Some(g) = g {
                p.accumulate_grad(g.to_device(device).unwrap()).unwrap();
            }
        }
        let reference = clip_grad_norm(
            &params
                .iter()
                .map(|p| {
                    let q = Param::new(p.name(), p.value().to_device(Device::Cpu).unwrap());
                    if let Some(g) = p.grad() {
                        q.accumulate_grad(g.to_device(Device::Cpu).unwrap())
                            .unwrap();
                    }
                    q
                })
                .collect::<Vec<_>>(),
            MAX_NORM,
        )
        .unwrap();
        let mut opt = AdamW::new(&params, config());
        let mut norms = Vec::new();
        // 10 chunks over 7 gradients; block sizes that do and do not divide the 256 logical lanes
        for (threads, blocks) in [
            (256, None),
            (32, None),
            (64, Some(1)),
            (128, Some(4)),
            (96, Some(2)),
            (512, Some(7)),
            (1, Some(3)),
        ] {
            opt.set_norm_launch(threads, blocks);
            let n = opt.clip_grad_norm(MAX_NORM).unwrap().item().unwrap();
            // the f32 norm would hide a difference in f64 rounding: compare Σ g² in f64
            let sumsq = opt.last_grad_sumsq().unwrap().unwrap();
            norms.push((threads, blocks, n.to_bits(), sumsq.to_bits()));
        }
        assert!(
            norms.iter().all(|n| (n.2, n.3) == (norms[0].2, norms[0].3)),
            "{tag}, seed={seed}: {norms:?}"
        );
        let n = f32::from_bits(norms[0].2) as f64;
        assert!(
            ((n - reference) / reference).abs() < 1e-6,
            "{tag}: {n} vs {reference}"
        );
        let sumsq = f64::from_bits(norms[0].3);
        let rel = (sumsq - reference * reference).abs() / (reference * reference);
        assert!(
            rel < 1e-12,
            "{tag}: Σg² {sumsq} vs cpu {} ({rel:.1e})",
            reference * reference
        );
        // the factor went to device memory, the gradients were not rewritten
        let g = params[0].grad().unwrap().to_device(Device::Cpu).unwrap();
        assert!(
            bits(&g) == bits(grads(seed, 0)[0].as_ref().unwrap()),
            "{tag}"
        );
    });
}

fn state_map(state: Vec<(String, Tensor)>) -> HashMap<String, Tensor> {
    state.into_iter().collect()
}

/// Three steps on one device, checkpoint (`state`), three more on another after `load_state`:
/// equal to six steps on the CPU, both ways round.
#[test]
fn moments_round_trip_through_state_between_cpu_and_kernel_devices() {
    on_each(|device, tag| {
        let seed = common::fresh_seed();
        let cpu = train(Device::Cpu, seed);
        for (first, second) in [(Device::Cpu, device), (device, Device::Cpu)] {
            let what = format!("{tag} {first} → {second}, seed={seed}");
            let params = make_params(first, seed);
            let mut opt = AdamW::new(&params, config());
            let mut norms = Vec::new();
            let mut run_steps = |params: &[Param], opt: &mut AdamW, d: Device, steps| {
                for step in steps {
                    for (p, g) in params.iter().zip(grads(seed, step)) {
                        if let Some(g) = g {
                            p.accumulate_grad(g.to_device(d).unwrap()).unwrap();
                        }
                    }
                    if step != 5 {
                        let n = opt.clip_grad_norm(MAX_NORM).unwrap();
                        norms.push(Some(n.item().unwrap() as f64));
                    } else {
                        norms.push(None);
                    }
                    opt.step(schedule().lr(step)).unwrap();
                    clamp_in_place(&params[5], 0.0, 100f32.ln()).unwrap();
                }
            };
            run_steps(&params, &mut opt, first, 0..3);
            let saved = opt.state().unwrap();
            assert!(saved.iter().all(|(_, t)| t.device() == Device::Cpu));
            // a fresh optimizer on the other device, as a resumed run builds it
            let moved: Vec<Param> = params
                .iter()
                .map(|p| Param::new(p.name(), p.value().to_device(second).unwrap()))
                .collect();
            let mut opt2 = AdamW::new(&moved, config());
            opt2.load_state(&state_map(saved)).unwrap();
            assert_eq!((opt2.steps(), opt2.moments_device()), (3, second));
            run_steps(&moved, &mut opt2, second, 3..STEPS);
            let run = Run {
                norms,
                params: moved
                    .iter()
                    .map(|p| p.value().to_device(Device::Cpu).unwrap())
                    .collect(),
                state: opt2.state().unwrap(),
            };
            let (worst, _) = compare(&what, &run, &cpu);
            println!("{what}: within {worst:.2e} of an uninterrupted cpu run");
        }
        // and the optimizer itself moved between devices mid-run (Trainer::to_device)
        let params = make_params(Device::Cpu, seed);
        let mut opt = AdamW::new(&params, config());
        opt.to_device(device).unwrap();
        assert_eq!(opt.moments_device(), device);
        let round = state_map(opt.state().unwrap());
        opt.to_device(Device::Cpu).unwrap();
        for (k, t) in &round {
            if k != "step" {
                assert!(t.to_vec().iter().all(|&v| v == 0.0), "{tag}: {k}");
            }
        }
    });
}

/// The in-place update and `Param`: a value handle held across the step keeps the old values
/// (copy-on-write), the parameter gets the new ones, and the cached transpose follows; the
/// gradient keeps its storage from one step to the next.
#[test]
fn in_place_updates_respect_held_values_and_the_cached_transpose() {
    on_each(|device, tag| {
        let seed = common::fresh_seed();
        let p = Param::new(
            "w.weight",
            Tensor::randn([13, 21], 1.0, seed)
                .to_device(device)
                .unwrap(),
        );
        let before = p.value().to_device(Device::Cpu).unwrap();
        let mut opt = AdamW::new(std::slice::from_ref(&p), config());
        let mut grad_storage = None;
        for step in 0..3 {
            let g = Tensor::randn([13, 21], 1.0, seed ^ (step + 1))
                .to_device(device)
                .unwrap();
            p.accumulate_grad(g).unwrap();
            let g2 = Tensor::randn([13, 21], 1.0, seed ^ (step + 100))
                .to_device(device)
                .unwrap();
            p.accumulate_grad(g2).unwrap(); // a second contribution: added in place
            let id = p.grad().unwrap().storage_id();
            if let Some(prev) = grad_storage {
                assert_eq!(id, prev, "{tag} step {step}: the gradient moved");
            }
            grad_storage = Some(id);
            let held = p.value(); // e.g. a graph's saved input
            let held_bits = bits(&held);
            let t_before = p.transposed().unwrap();
            opt.clip_grad_norm(1.0).unwrap();
            opt.step(1e-2).unwrap();
            assert!(
                bits(&held) == held_bits,
                "{tag} step {step}: a held value changed"
            );
            assert!(
                bits(&p.value()) != held_bits,
                "{tag} step {step}: not updated"
            );
            let t_after = p.transposed().unwrap();
            assert!(
                bits(&t_after) == bits(&p.value().transpose(0, 1).unwrap().contiguous()),
                "{tag} step {step}: stale transpose"
            );
            assert!(bits(&t_before) != bits(&t_after), "{tag}");
        }
        assert!(bits(&before) != bits(&p.value()));
        // the clamp writes in place too, and leaves a held value alone
        let s = Param::new(
            "logit_scale",
            Tensor::scalar(7.5).to_device(device).unwrap(),
        );
        let held = s.value();
        clamp_in_place(&s, 0.0, 100f32.ln()).unwrap();
        assert_eq!(s.value().item().unwrap(), 100f32.ln(), "{tag}");
        assert_eq!(held.item().unwrap(), 7.5, "{tag}");
        let s2 = Param::new(
            "logit_scale",
            Tensor::scalar(f32::NAN).to_device(device).unwrap(),
        );
        clamp_in_place(&s2, 0.0, 1.0).unwrap();
        assert!(
            s2.value().item().unwrap().is_nan(),
            "{tag}: NaN kept, as f32::clamp"
        );
    });
}
