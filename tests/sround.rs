//! Stochastic rounding to f16 / bf16 (`kernels/common.cuh`'s `sround_*`, the CPU reference
//! `clipcu::optim::sround`, the `cast_sr_f32_to_*` kernels behind `to_dtype_stochastic`):
//! unbiased for normals, f16 subnormals and values near the f16 maximum; the same bits on the
//! CPU and on every kernel device whatever the launch geometry (Emu in normal and reverse lane
//! order; Cuda when present, else reported SKIPPED); saturation counted; and what it is for —
//! 10⁴ updates of 10⁻⁴·|w| move 16-bit weights by their sum, where round to nearest never moves
//! them. Fresh random data and seeds on every run (CLIPCU_TEST_SEED replays one).

mod common;
use common::on_each_kernel_device as on_each;

use clipcu::optim::sround::{self, SrSeed};
use clipcu::{DType, Device, Tensor};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};

const N: u64 = 100_000;

fn to_f32(dtype: DType, b: u16) -> f32 {
    match dtype {
        DType::F16 => f16::from_bits(b).to_f32(),
        _ => bf16::from_bits(b).to_f32(),
    }
}

fn round_bits(dtype: DType, x: f32, r: u64) -> (u16, bool) {
    match dtype {
        DType::F16 => sround::f16_bits(x, r),
        _ => sround::bf16_bits(x, r),
    }
}

/// The two neighbours lo ≤ x ≤ hi of x in `dtype`, found without the code under test: round to
/// nearest (the `half` crate), then step one ulp by bit arithmetic on the magnitude.
fn neighbours(dtype: DType, x: f32) -> (f64, f64) {
    let (near, near_bits) = match dtype {
        DType::F16 => (f16::from_f32(x).to_f32(), f16::from_f32(x).to_bits()),
        _ => (bf16::from_f32(x).to_f32(), bf16::from_f32(x).to_bits()),
    };
    if near == x {
        return (x as f64, x as f64);
    }
    // the magnitude one step towards x (x is finite and inside the range here)
    // (sign-magnitude: +1 on the bits is one ulp away from zero for either sign)
    let towards = if near.abs() < x.abs() {
        near_bits + 1
    } else {
        near_bits - 1
    };
    let (a, b) = (near as f64, to_f32(dtype, towards) as f64);
    (a.min(b), a.max(b))
}

/// x rounded N times (element i of one seed's stream draws the bits of index i): every result is
/// one of x's neighbours, and the mean is within 4σ of x, σ the standard deviation of the mean
/// of N draws that round up with probability (x − lo)/(hi − lo).
fn check_unbiased(dtype: DType, x: f32, seed: u64) {
    let (lo, hi) = neighbours(dtype, x);
    let key = SrSeed {
        step: seed,
        tensor_id: 3,
        stream: sround::STREAM_PARAM,
    }
    .key();
    let mut sum = 0f64;
    for i in 0..N {
        let (b, over) = round_bits(dtype, x, sround::bits(key, i));
        assert!(!over, "{dtype:?} {x:e}: no overflow expected");
        let y = to_f32(dtype, b) as f64;
        assert!(
            y == lo || y == hi,
            "{dtype:?} x={x:e} (seed {seed}): {y:e} is neither neighbour {lo:e} nor {hi:e}"
        );
        sum += y;
    }
    let mean = sum / N as f64;
    let x64 = x as f64;
    if lo == hi {
        assert_eq!(mean, x64, "{dtype:?}: a representable value is kept");
        return;
    }
    let p = (x64 - lo) / (hi - lo);
    let sigma = (hi - lo) * (p * (1.0 - p) / N as f64).sqrt();
    let dev = (mean - x64).abs();
    assert!(
        dev <= 4.0 * sigma,
        "{dtype:?} x={x:e} (seed {seed}): mean {mean:e} is {:.1}σ off (σ={sigma:e}, p={p:.4})",
        dev / sigma
    );
}

#[test]
fn stochastic_rounding_is_unbiased_for_normals_subnormals_and_near_the_maximum() {
    let seed = common::fresh_seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sign = || if rng.random::<bool>() { 1.0f32 } else { -1.0 };
    let mut cases: Vec<(DType, f32, &str)> = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 1);
    for _ in 0..4 {
        // f16 normals of assorted exponents, f16 subnormals (above and below half the smallest
        // one, 2^-25), values just under 65504
        let e = rng.random_range(-14..15);
        cases.push((
            DType::F16,
            sign() * rng.random_range(1.0f32..2.0) * 2f32.powi(e),
            "normal",
        ));
        cases.push((
            DType::F16,
            sign() * rng.random_range(6.0e-8f32..6.1e-5),
            "subnormal",
        ));
        cases.push((
            DType::F16,
            sign() * rng.random_range(1e-9f32..3e-8),
            "tiny subnormal",
        ));
        cases.push((
            DType::F16,
            sign() * rng.random_range(60000.0f32..65504.0),
            "near max",
        ));
        let e = rng.random_range(-120..120);
        cases.push((
            DType::BF16,
            sign() * rng.random_range(1.0f32..2.0) * 2f32.powi(e),
            "normal",
        ));
        cases.push((
            DType::BF16,
            sign() * rng.random_range(1e-40f32..1e-38),
            "f32 subnormal",
        ));
        cases.push((
            DType::BF16,
            sign() * rng.random_range(3.0e38f32..3.38e38),
            "near max",
        ));
    }
    for (dtype, x, what) in cases {
        // a value whose rounding is trivial tests nothing: all of these have two neighbours
        let (lo, hi) = neighbours(dtype, x);
        assert!(
            lo < hi,
            "{dtype:?} {what} {x:e}: representable (seed {seed})"
        );
        check_unbiased(dtype, x, seed);
    }
}

/// Values of every kind SR meets: normals of many exponents, f16 subnormals and values below
/// its smallest one, values past both maxima (saturated and counted), ±0, ±inf, NaN, f32
/// subnormals.
fn mixed_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let s = if rng.random::<bool>() { 1.0 } else { -1.0 };
            s * match i % 10 {
                0..=3 => rng.random_range(1.0f32..2.0) * 2f32.powi(rng.random_range(-30..30)),
                4 => rng.random_range(0.0f32..6.2e-5),
                5 => rng.random_range(0.0f32..1e-7) * 2f32.powi(-rng.random_range(0..40)),
                6 => rng.random_range(65000.0f32..66000.0),
                7 => rng.random_range(3.38e38f32..f32::MAX),
                8 => rng.random_range(0.0f32..1.2e-38),
                _ => [0.0, f32::INFINITY, f32::NAN, 65504.0, 65520.0][rng.random_range(0..5)],
            }
        })
        .collect()
}

fn tensor_bits(t: &Tensor) -> Vec<u16> {
    t.to_le_bytes()
        .chunks(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[test]
fn cpu_and_kernel_devices_round_the_same_bits_whatever_the_launch() {
    let seed = common::fresh_seed();
    let n = 3001;
    let xs = Tensor::from_vec(mixed_values(n, seed), [n]).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let sr = SrSeed {
            step: seed >> 8,
            tensor_id: (seed & 0xffff) as u32,
            stream: sround::STREAM_EXP_AVG,
        };
        let (cpu, cpu_over) = sround::to_dtype_stochastic(&xs, dtype, sr).unwrap();
        assert_eq!(cpu.dtype(), dtype);
        let cpu_bits = tensor_bits(&cpu);
        // the reference's own invariants: a finite value past the largest finite saturates
        // when it rounds up, always when it is past the next step (f16: 65536; bf16: none, the
        // next step is 2^128), never when it is within range; never an inf from a finite value
        let (max, next) = match dtype {
            DType::F16 => (65504.0, 65536.0),
            _ => (bf16::MAX.to_f32(), f32::INFINITY),
        };
        let count = |lim: f32| {
            xs.to_vec()
                .iter()
                .filter(|x| x.is_finite() && x.abs() >= lim)
                .count() as u64
        };
        let (at_least, at_most) = (count(next), count(max));
        assert!(
            (at_least..=at_most).contains(&cpu_over) && cpu_over > 0,
            "{dtype:?} seed {seed}: {cpu_over} saturated, expected {at_least}..={at_most}"
        );
        for (x, b) in xs.to_vec().iter().zip(&cpu_bits) {
            let y = to_f32(dtype, *b);
            if x.is_nan() {
                assert!(y.is_nan());
            } else {
                assert_eq!(y.is_infinite(), x.is_infinite(), "{dtype:?} {x:e} → {y:e}");
            }
        }
        // another step, tensor or stream draws other bits
        for other in [
            SrSeed {
                step: sr.step + 1,
                ..sr
            },
            SrSeed {
                tensor_id: sr.tensor_id + 1,
                ..sr
            },
            SrSeed {
                stream: sround::STREAM_EXP_AVG_SQ,
                ..sr
            },
        ] {
            let b = tensor_bits(&sround::to_dtype_stochastic(&xs, dtype, other).unwrap().0);
            let differ = b.iter().zip(&cpu_bits).filter(|(a, b)| a != b).count();
            assert!(differ > n / 20, "{dtype:?} {other:?}: only {differ} differ");
        }
        on_each(|device, tag| {
            let x = xs.to_device(device).unwrap();
            for launch in [
                None,
                Some((256, 1)),
                Some((32, 7)),
                Some((1, 3)),
                Some((96, 40)),
                Some((1024, 2)),
            ] {
                let (t, over) =
                    sround::to_dtype_stochastic_with_launch(&x, dtype, sr, launch).unwrap();
                assert_eq!((t.device(), t.dtype()), (device, dtype));
                let b = tensor_bits(&t.to_device(Device::Cpu).unwrap());
                let differ = b.iter().zip(&cpu_bits).filter(|(a, b)| a != b).count();
                assert!(
                    differ == 0,
                    "{tag} {dtype:?} launch {launch:?} seed {seed}: {differ} elements differ from cpu"
                );
                assert_eq!(over, cpu_over, "{tag} {dtype:?} {launch:?}: overflow count");
            }
        });
    }
}

/// `steps` updates w ← sr(w + δ) (or round to nearest when `seed` is None), δ = 1e-4·|w₀| per
/// element, on the CPU reference; returns the final values.
fn accumulate(dtype: DType, w0: &[f32], steps: u64, seed: Option<u64>) -> Vec<f32> {
    let mut w: Vec<f32> = w0.to_vec();
    let delta: Vec<f32> = w0.iter().map(|x| 1e-4 * x.abs()).collect();
    for step in 0..steps {
        let sum: Vec<f32> = w.iter().zip(&delta).map(|(w, d)| w + d).collect();
        w = match seed {
            Some(s) => {
                let sr = SrSeed {
                    step: s.wrapping_add(step),
                    tensor_id: 0,
                    stream: sround::STREAM_PARAM,
                };
                let (b, over) = sround::round_slice(&sum, dtype, sr).unwrap();
                assert_eq!(over, 0);
                b.iter().map(|&b| to_f32(dtype, b)).collect()
            }
            None => sum
                .iter()
                .map(|&x| match dtype {
                    DType::F16 => f16::from_f32(x).to_f32(),
                    _ => bf16::from_f32(x).to_f32(),
                })
                .collect(),
        };
    }
    w
}

#[test]
fn ten_thousand_small_updates_move_16_bit_weights_with_sr_and_not_with_round_to_nearest() {
    let seed = common::fresh_seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for dtype in [DType::F16, DType::BF16] {
        // weights already in 16 bits, |w| in [0.25, 4): each update is under half an ulp
        let w0: Vec<f32> = (0..1000)
            .map(|_| {
                let s = if rng.random::<bool>() { 1.0 } else { -1.0 };
                let x = s * rng.random_range(0.25f32..4.0);
                to_f32(dtype, round_bits(dtype, x, 0).0)
            })
            .collect();
        let nearest = accumulate(dtype, &w0, 10_000, None);
        assert!(
            nearest
                .iter()
                .zip(&w0)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{dtype:?}: round to nearest moved a weight"
        );
        // E[w] = w₀ + 10⁴·10⁻⁴·|w₀|: each weight moves by |w₀| on average
        let sr = accumulate(dtype, &w0, 10_000, Some(seed));
        let moved: Vec<f64> = sr
            .iter()
            .zip(&w0)
            .map(|(w, w0)| (*w as f64 - *w0 as f64) / w0.abs() as f64)
            .collect();
        let mean = moved.iter().sum::<f64>() / moved.len() as f64;
        // each weight's noise: ≤ ½ ulp·√10⁴ ≈ 4% (f16) / 30% (bf16) of |w|; over 1000 weights
        // the mean's σ is ≤ 0.15% / 1%
        let tol = if dtype == DType::F16 { 0.01 } else { 0.05 };
        assert!(
            (mean - 1.0).abs() < tol,
            "{dtype:?} seed {seed}: weights moved by {mean:.4}·|w₀| on average, expected 1"
        );
        assert!(
            moved.iter().all(|m| *m > 0.3 && *m < 1.7),
            "{dtype:?} seed {seed}"
        );
    }
}

/// The same accumulation through the kernels on every kernel device (fewer weights and steps:
/// each update is three launches under the emulator), bit for bit the CPU reference's.
#[test]
fn small_updates_accumulate_the_same_on_kernel_devices() {
    let seed = common::fresh_seed();
    let w0: Vec<f32> = (0..300)
        .map(|i| {
            f16::from_f32((1.0 + (i as f32) / 97.0) * if i % 2 == 0 { 1.0 } else { -1.0 }).to_f32()
        })
        .collect();
    let steps = 200;
    let cpu = accumulate(DType::F16, &w0, steps, Some(seed));
    assert!(cpu.iter().zip(&w0).any(|(a, b)| a != b), "moved");
    on_each(|device, tag| {
        let delta: Vec<f32> = w0.iter().map(|x| 1e-4 * x.abs()).collect();
        let delta = Tensor::from_vec(delta, [w0.len()])
            .unwrap()
            .to_device(device)
            .unwrap();
        let mut w = Tensor::from_vec(w0.clone(), [w0.len()])
            .unwrap()
            .to_dtype(DType::F16)
            .to_device(device)
            .unwrap();
        for step in 0..steps {
            let sum = clipcu::ops::binary::add(&w.to_dtype(DType::F32), &delta).unwrap();
            let sr = SrSeed {
                step: seed.wrapping_add(step),
                tensor_id: 0,
                stream: sround::STREAM_PARAM,
            };
            w = sround::to_dtype_stochastic(&sum, DType::F16, sr).unwrap().0;
        }
        let got = w
            .to_dtype(DType::F32)
            .to_device(Device::Cpu)
            .unwrap()
            .to_vec();
        assert!(
            got.iter()
                .zip(&cpu)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{tag} seed {seed}: not the cpu's bits"
        );
    });
}
