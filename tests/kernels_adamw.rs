//! Kernels of `kernels/adamw.cu` through `AdamW` on a kernel device against the CPU reference
//! (`AdamW` + `clip_grad_norm` on Cpu): the fused multi-tensor step, the fixed-order gradient
//! norm with its clip factor left in device memory, the `logit_scale` clamp; determinism, launch
//! geometry independence, checkpoints across devices, and what an in-place update does to a
//! `Param`. Emu runs each case in normal and reverse lane order; Cuda when a GPU is present
//! (else reported SKIPPED on stderr).
//!
//! Half-precision Adam (`MomentPrecision::F16Scaled`, `Bf16Sr`) and 16-bit weights with
//! stochastic rounding: the kernels bit for bit the CPU reference whatever the block size,
//! checkpoints of the 16-bit moments (and conversion between precisions), 500 steps of a
//! least-squares problem and of a tiny MLP tracking f32 Adam within 1% in loss, and gradients
//! of 1e-6 whose v survives.

mod common;
use common::on_each_kernel_device as on_each;

use clipcu::optim::{
    clamp_in_place, clip_grad_norm, AdamW, AdamWConfig, LrSchedule, MomentPrecision,
};
use clipcu::{DType, Device, Param, Tensor};
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
    make_params_as(device, seed, &[DType::F32; 8])
}

/// The parameters with parameter i stored as `dtypes[i]`.
fn make_params_as(device: Device, seed: u64, dtypes: &[DType; 8]) -> Vec<Param> {
    PARAMS
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let t = Tensor::randn(shape.to_vec(), 0.5, seed.wrapping_add(i as u64));
            Param::new(*name, t.to_dtype(dtypes[i]).to_device(device).unwrap())
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
    train_with(device, seed, config(), &[DType::F32; 8], 256).0
}

/// `train` with another configuration, parameter storage types and step block size; also
/// returns the optimizer's overflow count.
fn train_with(
    device: Device,
    seed: u64,
    config: AdamWConfig,
    dtypes: &[DType; 8],
    threads: u32,
) -> (Run, u64) {
    let params = make_params_as(device, seed, dtypes);
    let mut opt = AdamW::new(&params, config);
    opt.set_step_threads(threads);
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
    let run = Run {
        norms,
        params: params
            .iter()
            .map(|p| p.value().to_device(Device::Cpu).unwrap())
            .collect(),
        state: opt.state().unwrap(),
    };
    (run, opt.overflows().unwrap())
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

// ---- half-precision Adam and 16-bit weights ----------------------------------------------------

const HALF: [MomentPrecision; 2] = [MomentPrecision::F16Scaled, MomentPrecision::Bf16Sr];

fn half_config(moments: MomentPrecision) -> AdamWConfig {
    AdamWConfig {
        moments,
        ..config()
    }
}

/// f32 master weights, and f16 / bf16 weights (stochastically rounded) on some parameters.
const MIXED: [DType; 8] = [
    DType::F16,
    DType::F32,
    DType::BF16,
    DType::F16,
    DType::F32,
    DType::F32, // logit_scale: the clamp is f32
    DType::BF16,
    DType::F16,
];

#[test]
fn half_adam_and_16_bit_weights_match_cpu_bitwise_whatever_the_block_size() {
    let seed = common::fresh_seed();
    for moments in [MomentPrecision::F32, HALF[0], HALF[1]] {
        let cfg = half_config(moments);
        let (cpu, cpu_over) = train_with(Device::Cpu, seed, cfg, &MIXED, 256);
        // the 16-bit parameters stay 16-bit, and moved
        let init = make_params_as(Device::Cpu, seed, &MIXED);
        for ((p, i), d) in cpu.params.iter().zip(&init).zip(MIXED) {
            assert_eq!(p.dtype(), d);
            if d != DType::F32 && p.numel() > 30 {
                assert!(
                    bits(p) != bits(&i.value()),
                    "{moments:?}: a {d:?} weight never moved"
                );
            }
        }
        // the state holds the moments as stored
        for (k, t) in &cpu.state {
            let want = if k.ends_with(".scale") || k == "step" {
                DType::F32
            } else {
                moments.dtype()
            };
            assert_eq!(t.dtype(), want, "{moments:?}: {k}");
        }
        // and it is not f32 Adam rounded at the end: f32 moments give other weights
        on_each(|device, tag| {
            for threads in [256, 96, 32, 1] {
                let what = format!("{tag} {moments:?} threads={threads} seed={seed}");
                let (run, over) = train_with(device, seed, cfg, &MIXED, threads);
                assert_eq!(over, cpu_over, "{what}: overflow count");
                for ((p, c), (name, _)) in run.params.iter().zip(&cpu.params).zip(PARAMS) {
                    assert_eq!(p.dtype(), c.dtype(), "{what}: {name}");
                    assert!(
                        bits(p) == bits(c),
                        "{what}: {name} not bit-identical to cpu"
                    );
                }
                assert_eq!(run.state.len(), cpu.state.len());
                for ((k, t), (kc, c)) in run.state.iter().zip(&cpu.state) {
                    assert_eq!((k, t.dtype()), (kc, c.dtype()), "{what}");
                    assert!(bits(t) == bits(c), "{what}: {k} not bit-identical to cpu");
                }
                if device != Device::Emu {
                    break; // one geometry is enough on a GPU: the emulator proves the rest
                }
            }
        });
    }
}

/// The f32 values of a moment from `state()` (dequantised with its block scales).
fn moment_values(state: &[(String, Tensor)], key: &str) -> Vec<f32> {
    let t = &state.iter().find(|(k, _)| k == key).unwrap().1;
    let mut x = t.to_dtype(DType::F32).to_vec();
    if let Some((_, sc)) = state.iter().find(|(k, _)| *k == format!("{key}.scale")) {
        for (b, s) in x.chunks_mut(256).zip(sc.to_vec()) {
            b.iter_mut().for_each(|x| *x *= s);
        }
    }
    x
}

/// Three steps, a checkpoint, three more after loading it into a fresh optimizer on the other
/// device: bit for bit six uninterrupted CPU steps. And a checkpoint of another precision is
/// converted on load.
#[test]
fn half_moments_round_trip_through_state_and_convert_between_precisions() {
    let seed = common::fresh_seed();
    for moments in HALF {
        let cfg = half_config(moments);
        let six = train_with(Device::Cpu, seed, cfg, &MIXED, 256).0;
        on_each(|device, tag| {
            for (first, second) in [(Device::Cpu, device), (device, Device::Cpu)] {
                let what = format!("{tag} {moments:?} {first} → {second}, seed={seed}");
                let params = make_params_as(first, seed, &MIXED);
                let mut opt = AdamW::new(&params, cfg);
                let run_steps = |params: &[Param], opt: &mut AdamW, d: Device, steps| {
                    for step in steps {
                        for (p, g) in params.iter().zip(grads(seed, step)) {
                            if let Some(g) = g {
                                p.accumulate_grad(g.to_device(d).unwrap()).unwrap();
                            }
                        }
                        if step != 5 {
                            opt.clip_grad_norm(MAX_NORM).unwrap();
                        }
                        opt.step(schedule().lr(step)).unwrap();
                        clamp_in_place(&params[5], 0.0, 100f32.ln()).unwrap();
                    }
                };
                run_steps(&params, &mut opt, first, 0..3);
                let saved = opt.state().unwrap();
                let moved: Vec<Param> = params
                    .iter()
                    .map(|p| Param::new(p.name(), p.value().to_device(second).unwrap()))
                    .collect();
                let mut opt2 = AdamW::new(&moved, cfg);
                opt2.load_state(&state_map(saved)).unwrap();
                run_steps(&moved, &mut opt2, second, 3..STEPS);
                for ((p, c), (name, _)) in moved.iter().zip(&six.params).zip(PARAMS) {
                    let p = p.value().to_device(Device::Cpu).unwrap();
                    assert!(bits(&p) == bits(c), "{what}: {name}");
                }
                for ((k, t), (_, c)) in opt2.state().unwrap().iter().zip(&six.state) {
                    assert!(bits(t) == bits(c), "{what}: {k}");
                }
            }
        });
        // f32 moments into this precision and back: the values survive within its resolution
        let (f32run, _) = train_with(Device::Cpu, seed, config(), &[DType::F32; 8], 256);
        let params = make_params(Device::Cpu, seed);
        let mut opt = AdamW::new(&params, cfg);
        opt.load_state(&state_map(f32run.state.clone())).unwrap();
        let converted = opt.state().unwrap();
        let mut back = AdamW::new(&params, config());
        back.load_state(&state_map(converted.clone())).unwrap();
        let back = back.state().unwrap();
        let tol = if moments == MomentPrecision::F16Scaled {
            1e-3
        } else {
            8e-3
        };
        for (name, _) in PARAMS {
            for sfx in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{name}.{sfx}");
                let want = moment_values(&f32run.state, &key);
                for got in [moment_values(&converted, &key), moment_values(&back, &key)] {
                    let (mut num, mut den) = (0f64, 0f64);
                    for (a, b) in got.iter().zip(&want) {
                        num += (*a as f64 - *b as f64).powi(2);
                        den += (*b as f64).powi(2);
                    }
                    let e = (num / den.max(1e-300)).sqrt();
                    assert!(
                        den == 0.0 || e < tol,
                        "{moments:?} {key}: converted off by {e:.2e}"
                    );
                }
            }
        }
    }
}

/// Gradients of 1e-6 (v ≈ 2e-14 after one step: below f16's smallest subnormal, 6e-8): the
/// stored v is non-zero everywhere and close to f32 Adam's.
#[test]
fn tiny_gradients_do_not_flush_v_to_zero() {
    let seed = common::fresh_seed();
    let n = 1500;
    let run = |device: Device, moments| {
        let p = Param::new(
            "w.weight",
            Tensor::randn([n], 1.0, seed).to_device(device).unwrap(),
        );
        let mut opt = AdamW::new(
            std::slice::from_ref(&p),
            AdamWConfig {
                moments,
                ..config()
            },
        );
        for step in 0..10 {
            let g = Tensor::randn([n], 1e-6, common::splitmix64(seed ^ step));
            p.accumulate_grad(g.to_device(device).unwrap()).unwrap();
            opt.step(1e-3).unwrap();
        }
        let state = opt.state().unwrap();
        (
            moment_values(&state, "w.weight.exp_avg"),
            moment_values(&state, "w.weight.exp_avg_sq"),
        )
    };
    let (m32, v32) = run(Device::Cpu, MomentPrecision::F32);
    // the case is real: plain f16 would flush every v (and most m) to zero
    assert!(v32.iter().all(|&v| half::f16::from_f32(v).to_f32() == 0.0));
    for moments in HALF {
        let (m, v) = run(Device::Cpu, moments);
        assert!(
            v.iter().all(|&v| v > 0.0),
            "{moments:?}: a v flushed to zero (seed {seed})"
        );
        let rel = |a: &[f32], b: &[f32]| {
            let num: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                .sum();
            let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
            (num / den).sqrt()
        };
        let (em, ev) = (rel(&m, &m32), rel(&v, &v32));
        println!("{moments:?}: m within {em:.2e}, v within {ev:.2e} of f32 Adam's");
        assert!(
            em < 1e-2 && ev < 1e-2,
            "{moments:?}: m {em:.2e}, v {ev:.2e} (seed {seed})"
        );
        on_each(|device, tag| {
            let (md, vd) = run(device, moments);
            assert!(
                md.iter().zip(&m).all(|(a, b)| a.to_bits() == b.to_bits())
                    && vd.iter().zip(&v).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{tag} {moments:?}: not the cpu's bits (seed {seed})"
            );
        });
    }
}

/// A problem for 500 Adam steps: parameters, and the loss and gradients at given values
/// (computed on the host in f64, independently of the optimizer).
trait Problem {
    fn shapes(&self) -> Vec<(&'static str, Vec<usize>)>;
    fn init(&self) -> Vec<Vec<f32>>;
    fn loss_grad(&self, p: &[Vec<f32>]) -> (f64, Vec<Vec<f32>>);
}

/// min ‖X·Wᵀ − Y‖² / N over W [32, 64], Y = X·W*ᵀ + noise (so the optimum is not 0).
struct LeastSquares {
    x: Vec<f64>,
    y: Vec<f64>,
}
const LS_N: usize = 256;
const LS_I: usize = 64;
const LS_O: usize = 32;

impl LeastSquares {
    fn new(seed: u64) -> LeastSquares {
        let x: Vec<f64> = Tensor::randn([LS_N * LS_I], 1.0, seed)
            .to_vec()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let w: Vec<f32> = Tensor::randn([LS_O * LS_I], 0.3, seed ^ 7).to_vec();
        let noise = Tensor::randn([LS_N * LS_O], 0.1, seed ^ 9).to_vec();
        let mut y = vec![0f64; LS_N * LS_O];
        for n in 0..LS_N {
            for o in 0..LS_O {
                let dot: f64 = (0..LS_I)
                    .map(|i| x[n * LS_I + i] * w[o * LS_I + i] as f64)
                    .sum();
                y[n * LS_O + o] = dot + noise[n * LS_O + o] as f64;
            }
        }
        LeastSquares { x, y }
    }
}

impl Problem for LeastSquares {
    fn shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        vec![("ls.weight", vec![LS_O, LS_I])]
    }
    fn init(&self) -> Vec<Vec<f32>> {
        vec![vec![0.0; LS_O * LS_I]]
    }
    fn loss_grad(&self, p: &[Vec<f32>]) -> (f64, Vec<Vec<f32>>) {
        let w = &p[0];
        let mut g = vec![0f64; LS_O * LS_I];
        let mut loss = 0f64;
        for n in 0..LS_N {
            let xr = &self.x[n * LS_I..(n + 1) * LS_I];
            for o in 0..LS_O {
                let wr = &w[o * LS_I..(o + 1) * LS_I];
                let r: f64 = xr.iter().zip(wr).map(|(a, b)| a * *b as f64).sum::<f64>()
                    - self.y[n * LS_O + o];
                loss += r * r;
                for i in 0..LS_I {
                    g[o * LS_I + i] += 2.0 * r * xr[i];
                }
            }
        }
        let k = LS_N as f64;
        (loss / k, vec![g.iter().map(|v| (v / k) as f32).collect()])
    }
}

/// A tiny MLP 16 → 32 (tanh) → 4 regressing a random teacher MLP's outputs (MSE).
struct Mlp {
    x: Vec<f64>,
    y: Vec<f64>,
    seed: u64,
}
const MLP_N: usize = 128;
const MLP_I: usize = 16;
const MLP_H: usize = 32;
const MLP_O: usize = 4;

impl Mlp {
    fn new(seed: u64) -> Mlp {
        let x: Vec<f64> = Tensor::randn([MLP_N * MLP_I], 1.0, seed)
            .to_vec()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let teacher = Mlp {
            x: x.clone(),
            y: Vec::new(),
            seed: seed ^ 0x55,
        };
        let tp = teacher.init();
        let y = teacher.forward(&tp).0;
        Mlp { x, y, seed }
    }
    /// Outputs [N, O] and hidden activations [N, H].
    fn forward(&self, p: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
        let (w1, b1, w2, b2) = (&p[0], &p[1], &p[2], &p[3]);
        let mut h = vec![0f64; MLP_N * MLP_H];
        let mut out = vec![0f64; MLP_N * MLP_O];
        for n in 0..MLP_N {
            for j in 0..MLP_H {
                let z: f64 = (0..MLP_I)
                    .map(|i| self.x[n * MLP_I + i] * w1[j * MLP_I + i] as f64)
                    .sum::<f64>()
                    + b1[j] as f64;
                h[n * MLP_H + j] = z.tanh();
            }
            for o in 0..MLP_O {
                out[n * MLP_O + o] = (0..MLP_H)
                    .map(|j| h[n * MLP_H + j] * w2[o * MLP_H + j] as f64)
                    .sum::<f64>()
                    + b2[o] as f64;
            }
        }
        (out, h)
    }
}

impl Problem for Mlp {
    fn shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        vec![
            ("fc1.weight", vec![MLP_H, MLP_I]),
            ("fc1.bias", vec![MLP_H]),
            ("fc2.weight", vec![MLP_O, MLP_H]),
            ("fc2.bias", vec![MLP_O]),
        ]
    }
    fn init(&self) -> Vec<Vec<f32>> {
        self.shapes()
            .iter()
            .enumerate()
            .map(|(i, (_, s))| {
                let fan_in = if s.len() == 2 { s[1] } else { 4 };
                Tensor::randn(
                    s.clone(),
                    1.0 / (fan_in as f32).sqrt(),
                    self.seed.wrapping_add(i as u64),
                )
                .to_vec()
            })
            .collect()
    }
    fn loss_grad(&self, p: &[Vec<f32>]) -> (f64, Vec<Vec<f32>>) {
        let (out, h) = self.forward(p);
        let w2 = &p[2];
        let k = (MLP_N * MLP_O) as f64;
        let mut g = [
            vec![0f64; MLP_H * MLP_I],
            vec![0f64; MLP_H],
            vec![0f64; MLP_O * MLP_H],
            vec![0f64; MLP_O],
        ];
        let mut loss = 0f64;
        for n in 0..MLP_N {
            let mut dh = [0f64; MLP_H];
            for o in 0..MLP_O {
                let r = out[n * MLP_O + o] - self.y[n * MLP_O + o];
                loss += r * r;
                let d = 2.0 * r / k;
                g[3][o] += d;
                for j in 0..MLP_H {
                    g[2][o * MLP_H + j] += d * h[n * MLP_H + j];
                    dh[j] += d * w2[o * MLP_H + j] as f64;
                }
            }
            for j in 0..MLP_H {
                let dz = dh[j] * (1.0 - h[n * MLP_H + j].powi(2));
                g[1][j] += dz;
                for i in 0..MLP_I {
                    g[0][j * MLP_I + i] += dz * self.x[n * MLP_I + i];
                }
            }
        }
        (
            loss / k,
            g.iter()
                .map(|v| v.iter().map(|&x| x as f32).collect())
                .collect(),
        )
    }
}

/// 500 AdamW steps (lr 1e-2, cosine from step 50, no clipping) on `device`; the loss every 10
/// steps and the final weights (f32 values).
fn adam_on(
    problem: &dyn Problem,
    device: Device,
    moments: MomentPrecision,
    weights: DType,
) -> (Vec<f64>, Vec<Vec<f32>>) {
    let steps = 500;
    let sched = LrSchedule::Cosine {
        base: 1e-2,
        warmup: 50,
        total: steps,
    };
    let params: Vec<Param> = problem
        .shapes()
        .into_iter()
        .zip(problem.init())
        .map(|((name, shape), v)| {
            let t = Tensor::from_vec(v, shape).unwrap().to_dtype(weights);
            Param::new(name, t.to_device(device).unwrap())
        })
        .collect();
    let mut opt = AdamW::new(
        &params,
        AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.0,
            moments,
            ..AdamWConfig::default()
        },
    );
    let values = |params: &[Param]| -> Vec<Vec<f32>> {
        params
            .iter()
            .map(|p| {
                p.value()
                    .to_dtype(DType::F32)
                    .to_device(Device::Cpu)
                    .unwrap()
                    .to_vec()
            })
            .collect()
    };
    let mut losses = Vec::new();
    for step in 0..steps {
        let (loss, g) = problem.loss_grad(&values(&params));
        if step % 10 == 0 {
            losses.push(loss);
        }
        for ((p, g), (_, shape)) in params.iter().zip(g).zip(problem.shapes()) {
            p.accumulate_grad(
                Tensor::from_vec(g, shape)
                    .unwrap()
                    .to_device(device)
                    .unwrap(),
            )
            .unwrap();
        }
        opt.step(sched.lr(step)).unwrap();
    }
    let w = values(&params);
    losses.push(problem.loss_grad(&w).0);
    (losses, w)
}

/// Half Adam against f32 Adam over 500 steps: the loss within 1% all along (every 10 steps
/// and at the end) for the default 16-bit moments, and the kernel devices bit for bit the CPU. Also measured and printed (only
/// asserted to train): 16-bit weights with stochastic rounding on top.
fn half_adam_tracks_f32(name: &str, problem: &dyn Problem, devices: bool) {
    let (ref_losses, _) = adam_on(problem, Device::Cpu, MomentPrecision::F32, DType::F32);
    let (first, last) = (ref_losses[0], *ref_losses.last().unwrap());
    assert!(
        last < 0.2 * first,
        "{name}: f32 Adam did not train ({first:.3e} → {last:.3e})"
    );
    for moments in HALF {
        let (losses, w) = adam_on(problem, Device::Cpu, moments, DType::F32);
        let worst = losses
            .iter()
            .zip(&ref_losses)
            .map(|(a, b)| ((a - b) / b).abs())
            .fold(0f64, f64::max);
        let final_rel = (losses.last().unwrap() - last) / last;
        println!(
            "{name} {moments:?}: loss {:.6e} vs f32 {last:.6e} at step 500 ({:+.3}%), worst {:.3}% over the run",
            losses.last().unwrap(),
            100.0 * final_rel,
            100.0 * worst
        );
        // the default 16-bit moments (f16 with block scales) within 1%; bf16 with stochastic
        // rounding is measured and held to 15% only: its 8-bit mantissa makes m noisy, and on
        // the MLP it ends up to 5.6% off f32 (12 seeds; kernels/adamw.cu's top comment: why
        // f16 scaled is the default)
        let tol = if moments == MomentPrecision::half_default() {
            0.01
        } else {
            0.15
        };
        assert!(
            worst < tol,
            "{name} {moments:?}: {:.3}% off f32 Adam's loss (tolerance {}%)",
            100.0 * worst,
            100.0 * tol
        );
        for weights in [DType::F16, DType::BF16] {
            let (l16, _) = adam_on(problem, Device::Cpu, moments, weights);
            let rel = (l16.last().unwrap() - last) / last;
            println!(
                "{name} {moments:?} + {weights:?} weights (SR): loss {:.6e} ({:+.3}%)",
                l16.last().unwrap(),
                100.0 * rel
            );
            // bf16 weights (8 bits) cannot resolve the last digits of a small loss (+3…19% on
            // the MLP): only that it trains to within twice f32's loss is asserted
            assert!(
                l16.last().unwrap().is_finite() && rel < 1.0,
                "{name} {moments:?} {weights:?}: {rel}"
            );
        }
        if devices {
            on_each(|device, tag| {
                let (dl, dw) = adam_on(problem, device, moments, DType::F32);
                assert!(
                    dl.iter()
                        .zip(&losses)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{tag} {name} {moments:?}: losses"
                );
                for (a, b) in dw.iter().zip(&w) {
                    assert!(
                        a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{tag} {name} {moments:?}: weights"
                    );
                }
            });
        }
    }
}

#[test]
fn half_adam_tracks_f32_adam_on_least_squares() {
    let seed = common::fresh_seed();
    half_adam_tracks_f32(
        &format!("least squares (seed {seed})"),
        &LeastSquares::new(seed),
        true,
    );
}

#[test]
fn half_adam_tracks_f32_adam_on_a_tiny_mlp() {
    let seed = common::fresh_seed();
    half_adam_tracks_f32(&format!("tiny MLP (seed {seed})"), &Mlp::new(seed), false);
}
