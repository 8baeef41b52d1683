//! Tests of the CUDA-kernel emulator itself (kernels/emu/), through the test-only kernels of
//! kernels/emu/tests/selftest.cu: each part of the execution model against a reference computed
//! here on fresh random data (seeds printed on failure), and each failure mode the emulator exists
//! to catch — deadlock, device assert, a planted missing `__syncthreads` (reverse lane order) and a
//! planted out-of-bounds write (the AddressSanitizer build). Under that build, too, every
//! production kernel family, with its launchers' geometry and buffer sizes.

mod common;

use clipcu::device::emu::{self, EmuArg, EmuOptions};
use clipcu::device::LaunchConfig;
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FWD: EmuOptions = EmuOptions { reverse: false };
const REV: EmuOptions = EmuOptions { reverse: true };

fn cfg(grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid,
        block,
        shared_bytes,
    }
}

fn run(kernel: &str, c: LaunchConfig, args: &[EmuArg], opts: EmuOptions) -> clipcu::Result<()> {
    // SAFETY: every test sizes its buffers for the geometry it launches (see each kernel).
    unsafe { emu::launch_with(kernel, c, args, opts) }
}

fn rng() -> (StdRng, u64) {
    let seed = common::fresh_seed();
    (StdRng::seed_from_u64(seed), seed)
}

/// Integer-valued floats: sums of a few thousand are exact in f32, whatever the order.
fn int_floats(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-1000..=1000) as f32)
        .collect()
}

#[test]
fn registry_lists_production_and_test_kernels() {
    let k = emu::kernels();
    for name in [
        "gelu_fwd_f32",
        "gelu_bwd_f32",
        "emutest_ids",
        "emutest_mma_gemm",
    ] {
        assert!(k.iter().any(|n| n == name), "{name} missing from {k:?}");
    }
}

#[test]
fn launch_geometry_covers_every_thread_once() {
    for (grid, block) in [
        ((3, 2, 2), (5, 3, 2)),
        ((7, 1, 1), (33, 1, 1)),
        ((1, 1, 1), (1024, 1, 1)),
        ((2, 3, 1), (4, 4, 4)),
    ] {
        let blocks = (grid.0 * grid.1 * grid.2) as usize;
        let threads = (block.0 * block.1 * block.2) as usize;
        let mut out = vec![u32::MAX; 12 * blocks * threads];
        run(
            "emutest_ids",
            cfg(grid, block, 0),
            &[EmuArg::slice_mut(&mut out)],
            FWD,
        )
        .unwrap();
        for b in 0..blocks {
            let (bx, by, bz) = (
                b as u32 % grid.0,
                b as u32 / grid.0 % grid.1,
                b as u32 / (grid.0 * grid.1),
            );
            for t in 0..threads {
                let (tx, ty, tz) = (
                    t as u32 % block.0,
                    t as u32 / block.0 % block.1,
                    t as u32 / (block.0 * block.1),
                );
                let want = [
                    tx, ty, tz, bx, by, bz, block.0, block.1, block.2, grid.0, grid.1, grid.2,
                ];
                let at = 12 * (b * threads + t);
                assert_eq!(
                    &out[at..at + 12],
                    &want,
                    "grid {grid:?} block {block:?}: block {b} thread {t}"
                );
            }
        }
    }
}

#[test]
fn block_sum_in_dynamic_shared_memory_equals_cpu_sum() {
    for threads in [1u32, 32, 96, 256, 1000] {
        for opts in [FWD, REV] {
            let (mut r, seed) = rng();
            let n = threads as usize * 3 + r.random_range(0..threads as usize);
            let x = int_floats(&mut r, n);
            let blocks = n.div_ceil(threads as usize);
            let mut out = vec![f32::NAN; blocks];
            run(
                "emutest_block_sum",
                cfg((blocks as u32, 1, 1), (threads, 1, 1), threads * 4),
                &[
                    EmuArg::slice(&x),
                    EmuArg::slice_mut(&mut out),
                    EmuArg::I32(n as i32),
                ],
                opts,
            )
            .unwrap();
            for (b, got) in out.iter().enumerate() {
                let want: f32 = x[b * threads as usize..((b + 1) * threads as usize).min(n)]
                    .iter()
                    .sum();
                assert_eq!(
                    *got, want,
                    "threads {threads} {opts:?} block {b} seed {seed}"
                );
            }
        }
    }
}

#[test]
fn block_sum_with_static_shared_memory_and_shuffles() {
    for opts in [FWD, REV] {
        let (mut r, seed) = rng();
        let n = 256 * 4 + 17;
        let x = int_floats(&mut r, n);
        let mut out = vec![f32::NAN; 5];
        run(
            "emutest_block_sum_static",
            cfg((5, 1, 1), (256, 1, 1), 0),
            &[
                EmuArg::slice(&x),
                EmuArg::slice_mut(&mut out),
                EmuArg::I32(n as i32),
            ],
            opts,
        )
        .unwrap();
        for (b, got) in out.iter().enumerate() {
            let want: f32 = x[b * 256..((b + 1) * 256).min(n)].iter().sum();
            assert_eq!(*got, want, "{opts:?} block {b} seed {seed}");
        }
    }
}

/// Why reverse mode exists: a kernel that forgets the barrier after thread 0 publishes a value
/// in shared memory passes when thread 0 runs first (normal order) and fails in reverse order.
#[test]
fn planted_missing_syncthreads_fails_only_in_reverse_order() {
    let (mut r, seed) = rng();
    let (blocks, threads) = (3u32, 64u32);
    let n = (blocks * threads) as usize - 5;
    let scale: Vec<f32> = (0..blocks).map(|_| r.random_range(0.5..2.0)).collect();
    let x: Vec<f32> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
    let want: Vec<f32> = (0..n).map(|i| scale[i / threads as usize] * x[i]).collect();
    let launch = |sync: i32, opts| {
        let mut out = vec![f32::NAN; n];
        run(
            "emutest_missing_sync",
            cfg((blocks, 1, 1), (threads, 1, 1), 0),
            &[
                EmuArg::slice(&scale),
                EmuArg::slice(&x),
                EmuArg::slice_mut(&mut out),
                EmuArg::I32(n as i32),
                EmuArg::I32(sync),
            ],
            opts,
        )
        .unwrap();
        out
    };
    // The correct kernel passes in both orders.
    assert_eq!(launch(1, FWD), want, "seed {seed}");
    assert_eq!(launch(1, REV), want, "seed {seed}");
    // The planted bug hides in normal order...
    assert_eq!(launch(0, FWD), want, "seed {seed}");
    // ...and shows in reverse order: threads read the poisoned, unpublished scale.
    let bad = launch(0, REV);
    let wrong = bad.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert!(
        wrong > 0,
        "reverse order did not expose the missing barrier (seed {seed})"
    );
    assert!(
        bad.iter().any(|v| v.is_nan()),
        "expected poisoned (NaN) reads, got {bad:?}"
    );
}

#[test]
fn shared_memory_is_poisoned_before_each_block() {
    let (blocks, threads) = (3usize, 64usize);
    let mut dyn_out = vec![0f32; blocks * threads];
    let mut static_out = vec![0f32; blocks * threads];
    run(
        "emutest_poison",
        cfg(
            (blocks as u32, 1, 1),
            (threads as u32, 1, 1),
            threads as u32 * 4,
        ),
        &[
            EmuArg::slice_mut(&mut dyn_out),
            EmuArg::slice_mut(&mut static_out),
        ],
        FWD,
    )
    .unwrap();
    for t in 0..threads {
        assert_eq!(dyn_out[t], 1.0 + t as f32);
        assert_eq!(static_out[t], 2.0 + t as f32);
    }
    // Blocks 1 and 2 never wrote: they read the poison, all-ones bytes (a NaN).
    for v in dyn_out[threads..].iter().chain(&static_out[threads..]) {
        assert_eq!(v.to_bits(), 0xffff_ffff, "unwritten shared memory read {v}");
    }
}

/// The CUDA programming guide's definition of each shuffle, lane by lane; `None` where the
/// source lane is not in the mask (undefined on the GPU; the emulator returns all-ones).
fn shfl_source(op: i32, lane: usize, arg: i32, width: usize) -> usize {
    let base = lane / width * width;
    let a = arg as usize;
    match op {
        0 => base + a % width,
        1 => {
            if lane - base >= a {
                lane - a
            } else {
                lane
            }
        }
        2 => {
            if lane - base + a < width {
                lane + a
            } else {
                lane
            }
        }
        _ => {
            // Later groups are out of reach (own value); earlier ones are not.
            let s = lane ^ a;
            if s >= base + width {
                lane
            } else {
                s
            }
        }
    }
}

#[test]
fn warp_collectives_match_scalar_reference_with_partial_masks() {
    let (mut r, seed) = rng();
    let skip = 0x5eed_5eed_u32 as i32;
    for round in 0..6 {
        let masks: [u32; 2] = match round {
            0 => [u32::MAX, u32::MAX],
            1 => [0x0000_ffff, 0x5555_5555],
            2 => [1 << r.random_range(0..32), 0xffff_0000],
            _ => {
                let mut m = || (0..32).fold(0u32, |m, b| m | ((r.random_bool(0.7) as u32) << b));
                [m() | 1, m() | 2]
            }
        };
        for op in 0..10 {
            let widths: &[i32] = if op < 4 { &[32, 16, 8, 4, 2, 1] } else { &[32] };
            for &width in widths {
                let input: Vec<i32> = (0..64).map(|_| r.random_range(-1000..1000)).collect();
                let args: Vec<i32> = (0..64)
                    .map(|_| {
                        if op == 0 {
                            r.random_range(0..64)
                        } else {
                            r.random_range(0..32)
                        }
                    })
                    .collect();
                let mut out = vec![0i32; 64];
                run(
                    "emutest_warp",
                    cfg((1, 1, 1), (64, 1, 1), 0),
                    &[
                        EmuArg::slice(&input),
                        EmuArg::slice(&args),
                        EmuArg::slice(&masks),
                        EmuArg::slice_mut(&mut out),
                        EmuArg::I32(op),
                        EmuArg::I32(width),
                        EmuArg::I32(skip),
                    ],
                    if round % 2 == 0 { FWD } else { REV },
                )
                .unwrap();
                for t in 0..64 {
                    let (w, lane, m) = (t / 32, t % 32, masks[t / 32]);
                    let in_mask = |l: usize| m >> l & 1 == 1;
                    let lanes = (0..32).filter(|&l| in_mask(l)).map(|l| input[32 * w + l]);
                    let want = if !in_mask(lane) {
                        skip
                    } else {
                        match op {
                            0..=3 => {
                                let s = shfl_source(op, lane, args[t], width as usize);
                                if in_mask(s) {
                                    input[32 * w + s]
                                } else {
                                    -1
                                }
                            }
                            4 => (0..32)
                                .filter(|&l| in_mask(l) && input[32 * w + l] > 0)
                                .fold(0u32, |b, l| b | 1 << l)
                                as i32,
                            5 => lanes.clone().any(|v| v > 0) as i32,
                            6 => lanes.clone().all(|v| v > 0) as i32,
                            7 => lanes.clone().fold(0i32, |a, v| a.wrapping_add(v)),
                            8 => lanes.clone().min().unwrap(),
                            _ => lanes.clone().max().unwrap(),
                        }
                    };
                    assert_eq!(
                        out[t], want,
                        "op {op} width {width} masks {masks:08x?} thread {t} arg {} seed {seed}",
                        args[t]
                    );
                }
            }
        }
    }
}

#[test]
fn shuffle_moves_64_bit_values_whole() {
    let (mut r, seed) = rng();
    let input: Vec<f64> = (0..32).map(|_| r.random_range(-1e300..1e300)).collect();
    let delta = r.random_range(1..8);
    let mut out = vec![0f64; 32];
    run(
        "emutest_shfl_f64",
        cfg((1, 1, 1), (32, 1, 1), 0),
        &[
            EmuArg::slice(&input),
            EmuArg::slice_mut(&mut out),
            EmuArg::I32(delta as i32),
        ],
        FWD,
    )
    .unwrap();
    for lane in 0..32 {
        let want = if lane + delta < 32 {
            input[lane + delta]
        } else {
            input[lane]
        };
        assert_eq!(
            out[lane].to_bits(),
            want.to_bits(),
            "lane {lane} delta {delta} seed {seed}"
        );
    }
}

#[test]
fn syncthreads_count_and_or() {
    let (mut r, seed) = rng();
    let (blocks, threads) = (4usize, 96usize);
    let mut x: Vec<f32> = (0..blocks * threads)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    x[..threads].iter_mut().for_each(|v| *v = v.abs() + 0.5); // block 0: all positive
    x[threads..2 * threads]
        .iter_mut()
        .for_each(|v| *v = -v.abs() - 0.5); // block 1: none
    let mut out = vec![-7i32; 3 * blocks];
    run(
        "emutest_sync_votes",
        cfg((blocks as u32, 1, 1), (threads as u32, 1, 1), 0),
        &[EmuArg::slice(&x), EmuArg::slice_mut(&mut out)],
        REV,
    )
    .unwrap();
    for b in 0..blocks {
        let pos = x[b * threads..(b + 1) * threads]
            .iter()
            .filter(|v| **v > 0.0)
            .count() as i32;
        let want = [pos, (pos == threads as i32) as i32, (pos > 0) as i32];
        assert_eq!(&out[3 * b..3 * b + 3], &want, "block {b} seed {seed}");
    }
}

#[test]
fn half_and_bf16_conversions_are_bit_exact_with_the_half_crate() {
    let (mut r, seed) = rng();
    // Random bit patterns cover every exponent (subnormals, overflow, NaN); the edges follow.
    let mut x: Vec<f32> = (0..6000).map(|_| f32::from_bits(r.random())).collect();
    // Random values in the f16 range, where rounding decides the last bit.
    x.extend(
        (0..3000).map(|_| r.random_range(-70000.0f32..70000.0) * 2f32.powi(r.random_range(-30..1))),
    );
    let tiny = 2f32.powi(-24);
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65504.0,
        65519.99,
        65520.0,
        -65520.0,
        tiny,
        tiny / 2.0,
        tiny / 2.0 * 1.000_001,
        tiny * 1.5,
        tiny * 2.5,
        2f32.powi(-14),
        2f32.powi(-14) * 0.999_99,
        f32::MAX,
        f32::MIN_POSITIVE,
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        f32::NAN,
    ]);
    let n = x.len();
    let bits: Vec<u16> = (0..n).map(|_| r.random()).collect();
    let (mut h, mut b) = (vec![0u16; n], vec![0u16; n]);
    let (mut hf, mut bf) = (vec![0f32; n], vec![0f32; n]);
    let (mut hsum, mut hprod, mut bsum, mut bprod) =
        (vec![0u16; n], vec![0u16; n], vec![0u16; n], vec![0u16; n]);
    run(
        "emutest_half",
        LaunchConfig::for_elements(n, 128),
        &[
            EmuArg::slice(&x),
            EmuArg::slice(&bits),
            EmuArg::slice_mut(&mut h),
            EmuArg::slice_mut(&mut b),
            EmuArg::slice_mut(&mut hf),
            EmuArg::slice_mut(&mut bf),
            EmuArg::slice_mut(&mut hsum),
            EmuArg::slice_mut(&mut hprod),
            EmuArg::slice_mut(&mut bsum),
            EmuArg::slice_mut(&mut bprod),
            EmuArg::I32(n as i32),
        ],
        FWD,
    )
    .unwrap();
    // NaN payloads differ by design (CUDA makes every NaN 0x7fff): only NaN-ness is compared.
    let f16_nan = |u: u16| u & 0x7c00 == 0x7c00 && u & 0x3ff != 0;
    let bf16_nan = |u: u16| u & 0x7f80 == 0x7f80 && u & 0x7f != 0;
    for i in 0..n {
        let want_h = f16::from_f32(x[i]).to_bits();
        let want_b = bf16::from_f32(x[i]).to_bits();
        if x[i].is_nan() {
            assert!(
                f16_nan(h[i]) && bf16_nan(b[i]),
                "NaN {:#x} → {:#x} / {:#x}",
                x[i].to_bits(),
                h[i],
                b[i]
            );
        } else {
            assert_eq!(
                h[i],
                want_h,
                "f32→f16 of {:e} ({:#010x}) seed {seed}",
                x[i],
                x[i].to_bits()
            );
            assert_eq!(
                b[i],
                want_b,
                "f32→bf16 of {:e} ({:#010x}) seed {seed}",
                x[i],
                x[i].to_bits()
            );
        }
        let (wh, wb) = (
            f16::from_bits(bits[i]).to_f32(),
            bf16::from_bits(bits[i]).to_f32(),
        );
        assert!(
            hf[i].to_bits() == wh.to_bits() || (wh.is_nan() && hf[i].is_nan()),
            "f16 {:#06x} → {}",
            bits[i],
            hf[i]
        );
        assert!(
            bf[i].to_bits() == wb.to_bits() || (wb.is_nan() && bf[i].is_nan()),
            "bf16 {:#06x} → {}",
            bits[i],
            bf[i]
        );
        // __hadd/__hmul against the correctly rounded result (exact in f64, rounded once).
        let j = (i + 1) % n;
        let (a, c) = (
            f16::from_bits(bits[i]).to_f64(),
            f16::from_bits(bits[j]).to_f64(),
        );
        for (got, want) in [
            (hsum[i], f16::from_f64(a + c)),
            (hprod[i], f16::from_f64(a * c)),
        ] {
            let same = if want.is_nan() {
                f16_nan(got)
            } else {
                got == want.to_bits()
            };
            assert!(
                same,
                "f16 op of {:#06x}, {:#06x}: {got:#06x} vs {want:?} seed {seed}",
                bits[i], bits[j]
            );
        }
        let (a, c) = (
            bf16::from_bits(bits[i]).to_f64(),
            bf16::from_bits(bits[j]).to_f64(),
        );
        for (got, want) in [
            (bsum[i], bf16::from_f64(a + c)),
            (bprod[i], bf16::from_f64(a * c)),
        ] {
            let same = if want.is_nan() {
                bf16_nan(got)
            } else {
                got == want.to_bits()
            };
            assert!(
                same,
                "bf16 op of {:#06x}, {:#06x}: {got:#06x} vs {want:?} seed {seed}",
                bits[i], bits[j]
            );
        }
    }
}

/// ldmatrix per the PTX ISA: matrix m's row r comes from the address in lane 8m + r; lane L
/// receives (row L/4, cols 2(L%4), 2(L%4)+1), or with .trans (rows 2(L%4), +1, col L/4).
#[test]
fn ldmatrix_matches_the_ptx_fragment_layout() {
    let (mut r, seed) = rng();
    for num in [1, 2, 4] {
        for trans in [false, true] {
            let stride = [8, 16, 24][r.random_range(0..3)];
            let src: Vec<u16> = (0..32 * 8).map(|_| r.random()).collect();
            let mut rows: Vec<i32> = (0..32).collect();
            for i in (1..32).rev() {
                rows.swap(i, r.random_range(0..=i));
            }
            let sentinel = 0xdead_beef_u32;
            let mut out = vec![sentinel; 128];
            run(
                "emutest_ldmatrix",
                cfg((1, 1, 1), (32, 1, 1), 32 * stride as u32 * 2),
                &[
                    EmuArg::slice(&src),
                    EmuArg::slice(&rows),
                    EmuArg::slice_mut(&mut out),
                    EmuArg::I32(num),
                    EmuArg::I32(trans as i32),
                    EmuArg::I32(stride),
                ],
                FWD,
            )
            .unwrap();
            // Element (row, col) of matrix m: the staged row whose address lane 8m + row gave.
            let elem =
                |m: usize, row: usize, col: usize| src[rows[8 * m + row] as usize * 8 + col] as u32;
            for lane in 0..32 {
                for m in 0..4 {
                    let got = out[4 * lane + m];
                    if m >= num as usize {
                        assert_eq!(got, sentinel);
                        continue;
                    }
                    let (q, p) = (lane / 4, 2 * (lane % 4));
                    let want = if trans {
                        elem(m, p, q) | elem(m, p + 1, q) << 16
                    } else {
                        elem(m, q, p) | elem(m, q, p + 1) << 16
                    };
                    assert_eq!(
                        got, want,
                        "x{num} trans={trans} lane {lane} matrix {m} seed {seed}"
                    );
                }
            }
        }
    }
}

/// 16-bit bits of random normals in f16 or bf16.
fn half_bits(r: &mut StdRng, n: usize, bf: bool) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let v = clipcu::tensor::normal(r);
            if bf {
                bf16::from_f32(v).to_bits()
            } else {
                f16::from_f32(v).to_bits()
            }
        })
        .collect()
}

fn to_f32(bits: u16, bf: bool) -> f32 {
    if bf {
        bf16::from_bits(bits).to_f32()
    } else {
        f16::from_bits(bits).to_f32()
    }
}

/// D = C + A·B with products of 16-bit values (exact in f32) added in k order: the order the
/// emulator documents, so the comparison is bit-exact.
fn mma_reference(a: &[u16], b: &[u16], c: &[f32], k: usize, bf: bool) -> Vec<f32> {
    let mut d = c.to_vec();
    for row in 0..16 {
        for col in 0..8 {
            let mut acc = c[row * 8 + col];
            for kk in 0..k {
                acc += to_f32(a[row * k + kk], bf) * to_f32(b[kk * 8 + col], bf);
            }
            d[row * 8 + col] = acc;
        }
    }
    d
}

#[test]
fn mma_m16n8k16_matches_scalar_reference() {
    let (mut r, seed) = rng();
    for bf in [false, true] {
        for _ in 0..3 {
            let a = half_bits(&mut r, 256, bf);
            let b = half_bits(&mut r, 128, bf);
            let c: Vec<f32> = (0..128).map(|_| r.random_range(-4.0..4.0)).collect();
            let mut d = vec![f32::NAN; 128];
            run(
                "emutest_mma",
                cfg((1, 1, 1), (32, 1, 1), 0),
                &[
                    EmuArg::slice(&a),
                    EmuArg::slice(&b),
                    EmuArg::slice(&c),
                    EmuArg::slice_mut(&mut d),
                    EmuArg::I32(bf as i32),
                ],
                FWD,
            )
            .unwrap();
            let want = mma_reference(&a, &b, &c, 16, bf);
            for i in 0..128 {
                assert_eq!(
                    d[i].to_bits(),
                    want[i].to_bits(),
                    "bf16={bf} D[{}][{}] seed {seed}",
                    i / 8,
                    i % 8
                );
            }
        }
    }
}

/// ldmatrix + mma together, as a GEMM kernel uses them: A fragments by ldmatrix_x4 from a
/// row-major tile, B fragments by ldmatrix_x2_trans from a row-major k×n tile.
#[test]
fn mma_gemm_through_ldmatrix_matches_scalar_reference() {
    let (mut r, seed) = rng();
    for bf in [false, true] {
        for k in [16usize, 48, 64] {
            let a = half_bits(&mut r, 16 * k, bf);
            let b = half_bits(&mut r, k * 8, bf);
            let mut d = vec![f32::NAN; 128];
            run(
                "emutest_mma_gemm",
                cfg((1, 1, 1), (32, 1, 1), 2 * 16 * 24 * 2),
                &[
                    EmuArg::slice(&a),
                    EmuArg::slice(&b),
                    EmuArg::slice_mut(&mut d),
                    EmuArg::I32(k as i32),
                    EmuArg::I32(bf as i32),
                ],
                REV,
            )
            .unwrap();
            let want = mma_reference(&a, &b, &[0.0; 128], k, bf);
            for i in 0..128 {
                assert_eq!(
                    d[i].to_bits(),
                    want[i].to_bits(),
                    "bf16={bf} K={k} D[{}][{}] seed {seed}",
                    i / 8,
                    i % 8
                );
            }
        }
    }
}

#[test]
fn cp_async_copies_into_shared_memory() {
    let (mut r, seed) = rng();
    let (blocks, threads) = (2usize, 32usize);
    let x: Vec<f32> = (0..blocks * threads * 4).map(|_| r.random()).collect();
    let mut out = vec![f32::NAN; x.len()];
    run(
        "emutest_cp_async",
        cfg(
            (blocks as u32, 1, 1),
            (threads as u32, 1, 1),
            threads as u32 * 16,
        ),
        &[EmuArg::slice(&x), EmuArg::slice_mut(&mut out)],
        REV,
    )
    .unwrap();
    for b in 0..blocks {
        for t in 0..threads {
            for k in 0..4 {
                let want = x[4 * (b * threads + threads - 1 - t) + k];
                assert_eq!(
                    out[4 * (b * threads + t) + k],
                    want,
                    "block {b} thread {t} seed {seed}"
                );
            }
        }
    }
}

#[test]
fn atomics_accumulate_over_the_grid() {
    let (mut r, seed) = rng();
    let n = 250;
    let v: Vec<i32> = (0..n).map(|_| r.random_range(-100_000..100_000)).collect();
    let x: Vec<f32> = int_floats(&mut r, n);
    let (mut count, mut vmax, mut sum) = (vec![0i32], vec![i32::MIN], vec![0f32]);
    run(
        "emutest_atomics",
        LaunchConfig::for_elements(n, 64),
        &[
            EmuArg::slice(&v),
            EmuArg::slice(&x),
            EmuArg::slice_mut(&mut count),
            EmuArg::slice_mut(&mut vmax),
            EmuArg::slice_mut(&mut sum),
            EmuArg::I32(n as i32),
        ],
        FWD,
    )
    .unwrap();
    assert_eq!(
        count[0],
        v.iter().filter(|&&a| a > 0).count() as i32,
        "seed {seed}"
    );
    assert_eq!(vmax[0], *v.iter().max().unwrap(), "seed {seed}");
    assert_eq!(sum[0], x.iter().sum::<f32>(), "seed {seed}");
}

#[test]
fn deadlock_is_an_error_naming_kernel_and_block() {
    let mut out = vec![0f32; 64];
    let e = run(
        "emutest_deadlock",
        cfg((2, 1, 1), (64, 1, 1), 0),
        &[EmuArg::slice_mut(&mut out)],
        FWD,
    )
    .unwrap_err()
    .to_string();
    for part in [
        "emutest_deadlock",
        "block (0,0,0)",
        "deadlock",
        "32 wait at __syncthreads (threads 0..31)",
        "32 have exited (threads 32..63)",
    ] {
        assert!(e.contains(part), "'{part}' missing from: {e}");
    }
    // The emulator is usable again after an aborted launch.
    let mut y = vec![f32::NAN; 3];
    run(
        "gelu_fwd_f32",
        LaunchConfig::for_elements(3, 256),
        &[
            EmuArg::slice_mut(&mut y),
            EmuArg::slice(&[0.0f32, 1.0, -1.0]),
            EmuArg::I32(3),
        ],
        FWD,
    )
    .unwrap();
    assert!(y.iter().all(|v| v.is_finite()));
}

#[test]
fn warp_deadlock_names_the_collective_and_lanes() {
    let mut out = vec![0f32; 32];
    let e = run(
        "emutest_deadlock_warp",
        cfg((1, 1, 1), (32, 1, 1), 0),
        &[EmuArg::slice_mut(&mut out)],
        REV,
    )
    .unwrap_err()
    .to_string();
    for part in [
        "emutest_deadlock_warp",
        "deadlock",
        "lanes 0..15 wait at __shfl_xor_sync",
        "exited (threads 16..31)",
    ] {
        assert!(e.contains(part), "'{part}' missing from: {e}");
    }
}

#[test]
fn device_assert_is_an_error_naming_the_thread() {
    let mut out = vec![0i32; 64];
    let e = run(
        "emutest_trap",
        cfg((1, 1, 1), (64, 1, 1), 0),
        &[EmuArg::slice_mut(&mut out), EmuArg::I32(37)],
        FWD,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("thread (37,0,0)") && e.contains("assertion") && e.contains("selftest.cu"),
        "{e}"
    );
    run(
        "emutest_trap",
        cfg((1, 1, 1), (64, 1, 1), 0),
        &[EmuArg::slice_mut(&mut out), EmuArg::I32(64)],
        FWD,
    )
    .unwrap();
    assert!(out.iter().all(|&v| v == 1));
}

#[test]
fn bad_launches_are_errors_not_crashes() {
    let mut y = vec![0f32; 4];
    let x = [0f32; 4];
    let ok_args = [EmuArg::slice_mut(&mut y), EmuArg::slice(&x), EmuArg::I32(4)];
    let one = cfg((1, 1, 1), (32, 1, 1), 0);
    let cases: Vec<(&str, LaunchConfig, Vec<EmuArg>, &str)> = vec![
        (
            "no_such_kernel",
            one,
            ok_args.to_vec(),
            "no kernel named 'no_such_kernel'",
        ),
        (
            "gelu_fwd_f32",
            one,
            ok_args[..2].to_vec(),
            "takes 3 arguments, got 2",
        ),
        (
            "gelu_fwd_f32",
            one,
            vec![ok_args[0], ok_args[1], EmuArg::F32(4.0)],
            "argument 2: expected i32 (4 bytes), got f32",
        ),
        (
            "gelu_fwd_f32",
            one,
            vec![ok_args[0], ok_args[1], EmuArg::U32(4)],
            "expected i32 (4 bytes), got u32",
        ),
        (
            "gelu_fwd_f32",
            one,
            vec![ok_args[0], EmuArg::I64(0), ok_args[2]],
            "argument 1: expected pointer",
        ),
        (
            "gelu_fwd_f32",
            cfg((1, 1, 1), (0, 1, 1), 0),
            ok_args.to_vec(),
            "must not be empty",
        ),
        (
            "gelu_fwd_f32",
            cfg((0, 1, 1), (32, 1, 1), 0),
            ok_args.to_vec(),
            "must not be empty",
        ),
        (
            "gelu_fwd_f32",
            cfg((1, 1, 1), (2048, 1, 1), 0),
            ok_args.to_vec(),
            "exceeds CUDA's limits",
        ),
        (
            "gelu_fwd_f32",
            cfg((1, 1, 1), (32, 1, 1), 300 << 10),
            ok_args.to_vec(),
            "227 KiB",
        ),
        ("gelu\0", one, ok_args.to_vec(), "bad kernel name"),
    ];
    for (name, c, args, want) in cases {
        let e = run(name, c, &args, FWD).unwrap_err().to_string();
        assert!(e.contains(want), "{name} {c:?}: '{want}' missing from: {e}");
    }
}

// ---- the AddressSanitizer build ---------------------------------------------------------------

/// Builds (once per test process, and only when a source changed since the cached binary in the
/// test scratch folder) the ASan variant of the emulator: the same generated wrappers, runtime
/// and kernels compiled with -fsanitize=address, plus the launcher kernels/emu/asan_main.cpp.
fn asan_runner() -> std::path::PathBuf {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(build_asan_runner).clone()
}

fn build_asan_runner() -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gen = Path::new(env!("CLIPCU_EMU_GEN_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emu_asan");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(gen)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
        .collect();
    sources.sort();
    sources.push(root.join("kernels/emu/emu.cpp"));
    sources.push(root.join("kernels/emu/emu_warp.cpp"));
    sources.push(root.join("kernels/emu/asan_main.cpp"));
    let mut inputs = sources.clone();
    for dir in [
        "kernels",
        "kernels/emu",
        "kernels/emu/tests",
        "kernels/emu/include",
    ] {
        inputs.extend(
            std::fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file()),
        );
    }
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest = inputs.iter().filter_map(|p| mtime(p)).max();
    if mtime(&exe).is_some() && mtime(&exe) >= newest {
        return exe;
    }
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let tmp = exe.with_extension("tmp");
    let out = Command::new(&cxx)
        .args([
            "-std=c++17",
            "-O1",
            "-g",
            "-fsanitize=address",
            "-fno-omit-frame-pointer",
            "-fno-strict-aliasing",
        ])
        .args(["-Wno-unknown-pragmas", "-Wno-unused-parameter"])
        .arg("-I")
        .arg(root.join("kernels/emu"))
        .arg("-I")
        .arg(root.join("kernels/emu/include"))
        .arg("-I")
        .arg(root.join("kernels"))
        .args(&sources)
        .arg("-o")
        .arg(&tmp)
        .output()
        .unwrap_or_else(|e| panic!("could not run {cxx}: {e}"));
    assert!(
        out.status.success(),
        "building the ASan emulator with {cxx} failed (it needs libasan: on Debian \
         `apt-get install libasan8`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &exe).unwrap();
    exe
}

fn asan_run(exe: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(exe)
        .args(args)
        // Fiber stacks live for the process: not leaks worth reporting.
        .env("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn sanitizer_build_catches_a_planted_out_of_bounds_write() {
    let exe = asan_runner();
    // 200 floats, 256 threads: in bounds without the planted bug...
    let (ok, log) = asan_run(
        &exe,
        &[
            "emutest_oob_write",
            "1,1,1",
            "256,1,1",
            "0",
            "f32buf:200",
            "i32:200",
            "i32:0",
        ],
    );
    assert!(
        ok && log.contains("ok"),
        "clean launch failed under ASan:\n{log}"
    );
    // ...and the write to out[200] is caught.
    let (ok, log) = asan_run(
        &exe,
        &[
            "emutest_oob_write",
            "1,1,1",
            "256,1,1",
            "0",
            "f32buf:200",
            "i32:200",
            "i32:1",
        ],
    );
    assert!(
        !ok,
        "the planted out-of-bounds write went unnoticed:\n{log}"
    );
    assert!(
        log.contains("AddressSanitizer: heap-buffer-overflow") && log.contains("WRITE of size 4"),
        "{log}"
    );
    assert!(
        log.contains("emutest_oob_write"),
        "the report should name the kernel:\n{log}"
    );
}

/// The barrier-heavy and warp-collective selftest kernel with dynamic shared memory (an
/// exact-size malloc in emu.cpp; the production kernels launch with none): fiber switches and
/// shared memory under ASan.
#[test]
fn sanitizer_build_runs_dynamic_shared_memory_cleanly() {
    let exe = asan_runner();
    for reverse in [false, true] {
        let mut args = vec!["emutest_block_sum", "3,1,1", "96,1,1", "384"];
        if reverse {
            args.push("--reverse");
        }
        args.extend(["f32buf:250", "f32buf:3", "i32:250"]);
        let (ok, log) = asan_run(&exe, &args);
        assert!(ok && log.lines().any(|l| l == "ok"), "{args:?}:\n{log}");
    }
}

// ---- every production kernel family under ASan ------------------------------------------------
//
// Out-of-bounds accesses are what the emulator cannot otherwise see: its buffers are Rust Vecs
// with neighbours on the heap, so a kernel that reads or writes one element past a row or a
// buffer usually runs on. Here every production kernel runs in the ASan build, in lane order and
// reversed, at small awkward sizes (rows not a multiple of a block's 8 warps, widths not of 32,
// element counts not of 256, empty tensors where the launcher still launches), with exactly the
// grid, block, shared memory and buffer sizes of its Rust launcher. Each family's helper below
// mirrors one launcher file (named in its comment); the geometry comes from the same
// `LaunchConfig` constructors the launchers call, or from a copy of their formula.

/// One launch of the ASan runner: a kernel, the geometry its launcher computes, and one argument
/// per kernel parameter in asan_main.cpp's grammar (buffers of exactly the launcher's sizes).
struct AsanLaunch {
    kernel: String,
    cfg: LaunchConfig,
    args: Vec<String>,
}

impl AsanLaunch {
    fn argv(&self, reverse: bool) -> Vec<String> {
        let (g, b) = (self.cfg.grid, self.cfg.block);
        let mut v = vec![
            self.kernel.clone(),
            format!("{},{},{}", g.0, g.1, g.2),
            format!("{},{},{}", b.0, b.1, b.2),
            self.cfg.shared_bytes.to_string(),
        ];
        if reverse {
            v.push("--reverse".into());
        }
        v.extend(self.args.iter().cloned());
        v
    }
}

fn launch_of(kernel: impl Into<String>, cfg: LaunchConfig, args: Vec<String>) -> AsanLaunch {
    AsanLaunch {
        kernel: kernel.into(),
        cfg,
        args,
    }
}

/// A buffer of `n` elements of the kernel's storage type `t` ("f32", "f16", "bf16").
fn tbuf(t: &str, n: usize) -> String {
    format!("{t}buf:{n}")
}
fn fbuf(n: usize) -> String {
    tbuf("f32", n)
}
/// `n` in-range indices below `m` (MOD−1 first, see asan_main.cpp).
fn ibuf(n: usize, m: usize) -> String {
    format!("i32buf:{n}:{m}")
}
fn ilist(v: &[i32]) -> String {
    let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("i32list:{}", s.join(","))
}
fn int(v: usize) -> String {
    format!("i32:{v}")
}
fn flt(v: f32) -> String {
    format!("f32:{v:e}")
}
fn long(v: i64) -> String {
    format!("i64:{v}")
}

const DTYPES: [&str; 3] = ["f32", "f16", "bf16"];

/// elementwise.cu, pointwise activations: mirrors src/ops/unary/gpu.rs (`forward`, `backward`,
/// `scale`, `gelu_typed`): `LaunchConfig::for_elements(n, THREADS = 256)`, every buffer n long.
fn asan_unary() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    for n in [0, 1, 7, 197, 300] {
        let cfg = LaunchConfig::for_elements(n, 256);
        for t in DTYPES {
            let b = || tbuf(t, n);
            for k in ["gelu", "quick_gelu", "relu", "exp", "log", "sigmoid"] {
                v.push(launch_of(
                    format!("{k}_fwd_{t}"),
                    cfg,
                    vec![b(), b(), int(n)],
                ));
                let bwd = vec![b(), b(), b(), int(n)];
                v.push(launch_of(format!("{k}_bwd_{t}"), cfg, bwd));
            }
            let scale = vec![b(), b(), flt(0.5), int(n)];
            v.push(launch_of(format!("scale_fwd_{t}"), cfg, scale));
        }
        v.push(launch_of("fill_f32", cfg, vec![fbuf(n), flt(1.0), int(n)]));
    }
    v
}

/// The bias gradient's geometry: mirrors `sum_rows_to` in src/ops/binary/gpu.rs.
fn bias_bwd_cfg(d: usize) -> LaunchConfig {
    cfg((d.div_ceil(32).max(1) as u32, 1, 1), (32, 8, 1), 0)
}

/// elementwise.cu, binary ops: mirrors src/ops/binary/gpu.rs (`add`, `sum_rows_to`, `binary`,
/// `div_grad_b`) on x [rows, d] with a [d] (or [] scalar) operand on either side.
fn asan_binary() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    for (rows, d) in [(0, 5), (7, 50), (13, 33)] {
        let n = rows * d;
        let cfg = LaunchConfig::for_elements(n, 256);
        for t in DTYPES {
            let args = vec![tbuf(t, n), tbuf(t, n), tbuf(t, n), int(n)];
            v.push(launch_of(format!("add_fwd_{t}"), cfg, args));
        }
        // `write_into`: a gradient added or copied into its own storage
        for k in ["add_inplace_f32", "copy_f32"] {
            v.push(launch_of(k, cfg, vec![fbuf(n), fbuf(n), int(n)]));
        }
        for t in DTYPES {
            let args = vec![tbuf(t, n), tbuf(t, n), tbuf(t, d), int(rows), int(d)];
            v.push(launch_of(format!("add_bias_fwd_{t}"), cfg, args));
            let args = vec![tbuf(t, d), tbuf(t, n), int(rows), int(d)];
            v.push(launch_of(format!("bias_bwd_{t}"), bias_bwd_cfg(d), args));
            // Each operand the full shape (n) or a repeated trailing block ([d], or a [] scalar).
            for (na, nb) in [(n, n), (n, d), (d, n), (n, 1), (1, n)] {
                for k in ["mul", "sub", "div"] {
                    let args = vec![
                        tbuf(t, n),
                        tbuf(t, na),
                        tbuf(t, nb),
                        int(n),
                        int(na),
                        int(nb),
                    ];
                    v.push(launch_of(format!("{k}_fwd_{t}"), cfg, args));
                }
                let args = vec![
                    tbuf(t, n),
                    tbuf(t, n),
                    tbuf(t, na),
                    tbuf(t, nb),
                    int(n),
                    int(na),
                    int(nb),
                ];
                v.push(launch_of(format!("div_bwd_b_{t}"), cfg, args));
            }
        }
    }
    v
}

/// layernorm.cu: mirrors src/ops/layernorm/gpu.rs — row kernels on `warp_per_row(rows)` (its
/// `rows_cfg`), dw/db stage 1 on grid (ceil(d / 32), nchunks) of (32, 8) with CHUNK = 256 rows,
/// stage 2 on `for_elements(d, 256)`. 300 rows make two chunks, the second partial.
fn asan_layernorm() -> Vec<AsanLaunch> {
    const CHUNK: usize = 256;
    let mut v = Vec::new();
    for (rows, d) in [(0, 50), (7, 50), (300, 77)] {
        let n = rows * d;
        let rcfg = LaunchConfig::warp_per_row(rows);
        for t in DTYPES {
            let args = vec![
                tbuf(t, n),
                fbuf(rows),
                fbuf(rows),
                tbuf(t, n),
                fbuf(d),
                fbuf(d),
                int(rows),
                int(d),
                flt(1e-5),
            ];
            v.push(launch_of(format!("layernorm_fwd_{t}"), rcfg, args));
        }
        let nchunks = rows.div_ceil(CHUNK).max(1);
        let cfg1 = cfg(
            (d.div_ceil(32).max(1) as u32, nchunks as u32, 1),
            (32, 8, 1),
            0,
        );
        for t in DTYPES {
            let args = vec![
                tbuf(t, n),
                tbuf(t, n),
                fbuf(rows),
                fbuf(rows),
                tbuf(t, n),
                tbuf(t, n),
                fbuf(d),
                fbuf(d),
                int(rows),
                int(d),
                flt(1e-5),
            ];
            v.push(launch_of(format!("layernorm_residual_fwd_{t}"), rcfg, args));
            let args = vec![
                tbuf(t, n),
                tbuf(t, n),
                tbuf(t, n),
                fbuf(d),
                fbuf(rows),
                fbuf(rows),
                int(rows),
                int(d),
            ];
            v.push(launch_of(format!("layernorm_bwd_{t}"), rcfg, args));
            let args = vec![
                fbuf(nchunks * d),
                fbuf(nchunks * d),
                tbuf(t, n),
                tbuf(t, n),
                fbuf(rows),
                fbuf(rows),
                int(rows),
                int(d),
                int(CHUNK),
            ];
            v.push(launch_of(format!("layernorm_bwd_dwdb_{t}"), cfg1, args));
        }
        let args = vec![
            fbuf(d),
            fbuf(d),
            fbuf(nchunks * d),
            fbuf(nchunks * d),
            int(nchunks),
            int(d),
        ];
        let cfg2 = LaunchConfig::for_elements(d, 256);
        v.push(launch_of("layernorm_bwd_dwdb_reduce_f32", cfg2, args));
    }
    v
}

/// softmax.cu: mirrors src/ops/softmax/gpu.rs — `warp_per_row(rows)`, rows·n elements; the
/// causal case on [3, 37, 37] scores.
fn asan_softmax() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    for (rows, n, causal) in [(0, 5, 0), (7, 50, 0), (13, 77, 0), (3 * 37, 37, 1)] {
        let c = LaunchConfig::warp_per_row(rows);
        for t in DTYPES {
            let e = rows * n;
            let fwd = vec![tbuf(t, e), tbuf(t, e), int(rows), int(n), int(causal)];
            v.push(launch_of(format!("softmax_fwd_{t}"), c, fwd));
            let bwd = vec![tbuf(t, e), tbuf(t, e), tbuf(t, e), int(rows), int(n)];
            v.push(launch_of(format!("softmax_bwd_{t}"), c, bwd));
        }
    }
    v
}

/// normalize.cu: mirrors src/ops/normalize/gpu.rs — `warp_per_row(rows)`, [rows, d] and the
/// [rows] norms.
fn asan_normalize() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    for (rows, d) in [(0, 5), (7, 50), (13, 77)] {
        let (c, e) = (LaunchConfig::warp_per_row(rows), rows * d);
        for t in DTYPES {
            let fwd = vec![
                tbuf(t, e),
                fbuf(rows),
                tbuf(t, e),
                int(rows),
                int(d),
                flt(1e-12),
            ];
            v.push(launch_of(format!("l2norm_fwd_{t}"), c, fwd));
            let bwd = vec![
                tbuf(t, e),
                tbuf(t, e),
                fbuf(rows),
                tbuf(t, e),
                int(rows),
                int(d),
                flt(1e-12),
            ];
            v.push(launch_of(format!("l2norm_bwd_{t}"), c, bwd));
        }
    }
    v
}

/// One stage of the full sum: mirrors `one_stage` in src/ops/reduce/gpu.rs (grid ceil(n / chunk)
/// of 256 threads over n elements); `out` is the size `sum_all` gives its output (nparts, then 1).
fn reduce_stage(
    t: &str,
    out: usize,
    n: usize,
    chunk: usize,
    square: bool,
    scale: f32,
) -> AsanLaunch {
    let blocks = n.div_ceil(chunk.max(1)).max(1);
    assert_eq!(
        out, blocks,
        "sum_all sizes the output one partial per block"
    );
    let args = vec![
        fbuf(out),
        tbuf(t, n),
        int(n),
        int(chunk.max(1)),
        int(square as usize),
        flt(scale),
    ];
    launch_of(
        format!("reduce_sum_{t}"),
        cfg((blocks as u32, 1, 1), (256, 1, 1), 0),
        args,
    )
}

/// reduce.cu: mirrors src/ops/reduce/gpu.rs (`sum_all`: CHUNK = 4096, stage 2 over the
/// partials; `sum_axis`, `expand_axis`: `for_elements`) and the head layout launches of
/// src/ops/attention/gpu.rs (`launch`: `for_elements(S·B·H·T·Dh, 256)`, both sides that long).
fn asan_reduce() -> Vec<AsanLaunch> {
    const CHUNK: usize = 4096;
    let mut v = Vec::new();
    for (n, square) in [(0usize, false), (5, true), (9000, false)] {
        let nparts = n.div_ceil(CHUNK).max(1);
        // stage 1 on the input's dtype, stage 2 on the f32 partials
        for t in DTYPES {
            v.push(reduce_stage(t, nparts, n, CHUNK, square, 1.0));
        }
        v.push(reduce_stage("f32", 1, nparts, nparts, false, 0.25));
    }
    for t in DTYPES {
        for (outer, len, inner) in [(3, 7, 50), (1, 77, 1), (5, 1, 13), (2, 0, 3)] {
            let (o, l, i) = (int(outer), int(len), int(inner));
            let args = vec![
                tbuf(t, outer * inner),
                tbuf(t, outer * len * inner),
                o.clone(),
                l.clone(),
                i.clone(),
                int(1),
                flt(1.0 / len.max(1) as f32),
            ];
            let c = LaunchConfig::for_elements(outer * inner, 256);
            v.push(launch_of(format!("sum_axis_{t}"), c, args));
            let args = vec![
                tbuf(t, outer * len * inner),
                tbuf(t, outer * inner),
                o,
                l,
                i,
                flt(0.5),
            ];
            let c = LaunchConfig::for_elements(outer * len * inner, 256);
            v.push(launch_of(format!("expand_axis_{t}"), c, args));
        }
    }
    for ty in DTYPES {
        for [b, t, h, dh, s] in [[2, 7, 3, 5, 3], [3, 5, 2, 4, 1], [1, 77, 1, 33, 3]] {
            let n = s * b * h * t * dh;
            let c = LaunchConfig::for_elements(n, 256);
            for k in ["head_split_fwd", "head_split_bwd"] {
                let args = vec![
                    tbuf(ty, n),
                    tbuf(ty, n),
                    int(b),
                    int(t),
                    int(h),
                    int(dh),
                    int(s),
                ];
                v.push(launch_of(format!("{k}_{ty}"), c, args));
            }
        }
    }
    v
}

/// cross_entropy.cu: mirrors src/ops/cross_entropy/gpu.rs — `warp_per_row(n)`, logits and
/// probabilities [n, c], n targets < c (the largest first), a one-element dloss.
fn asan_cross_entropy() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    for (n, c) in [(0, 5), (7, 50), (13, 77), (40, 3)] {
        let cf = LaunchConfig::warp_per_row(n);
        for t in DTYPES {
            let fwd = vec![
                fbuf(n),
                fbuf(n * c),
                tbuf(t, n * c),
                ibuf(n, c),
                int(n),
                int(c),
            ];
            v.push(launch_of(format!("cross_entropy_fwd_{t}"), cf, fwd));
            let bwd = vec![
                tbuf(t, n * c),
                fbuf(n * c),
                ibuf(n, c),
                fbuf(1),
                int(n),
                int(c),
            ];
            v.push(launch_of(format!("cross_entropy_bwd_{t}"), cf, bwd));
        }
        // the contrastive accuracies over square logits [n, n], both directions
        if c == 50 || n == 0 {
            for transpose in [0, 1] {
                let hits = vec![fbuf(n), fbuf(n * n), int(n), int(transpose)];
                v.push(launch_of("diagonal_hits_f32", cf, hits));
            }
        }
    }
    v
}

/// contrastive.cu: mirrors src/ops/contrastive/gpu.rs — the forward stripes (q row groups of 32
/// per block, dynamic shared memory 4·32·q floats), the column merge over `for_elements(n, 256)`,
/// the one-block loss; backward's row-owner blocks with and without the d logit_scale partials,
/// and the one-thread partial sum. Batches of 1, 7 and 70 rows (one, part of one, several
/// tiles), features of 5, 40 and 33 (part of a chunk, more than one).
fn asan_contrastive() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    for (n, d, q) in [(1usize, 5usize, 1usize), (7, 40, 1), (70, 33, 2)] {
        let stripes = n.div_ceil(32 * q);
        let mut fwd = vec![fbuf(n), fbuf(n), fbuf(n), fbuf(n)];
        fwd.extend([fbuf(stripes * n), fbuf(stripes * n), fbuf(stripes * n)]);
        // the full loss (nb = n, off 0, columns); the local form's rows-only pass below
        fwd.extend([
            fbuf(n * d),
            fbuf(n * d),
            fbuf(1),
            int(n),
            int(n),
            int(0),
            int(1),
            int(d),
            int(q),
        ]);
        let stripe_cfg = cfg((stripes as u32, 1, 1), (32, 8, 1), (4 * 32 * q * 4) as u32);
        for t in DTYPES {
            let mut fwd = fwd.clone();
            fwd[7] = tbuf(t, n * d);
            fwd[8] = tbuf(t, n * d);
            v.push(launch_of(format!("contrastive_fwd_{t}"), stripe_cfg, fwd));
        }
        // rows against 3n columns, labels at column i + n, no column partials (one float each)
        let mut local = vec![
            fbuf(n),
            fbuf(n),
            fbuf(n),
            fbuf(n),
            fbuf(1),
            fbuf(1),
            fbuf(1),
        ];
        local.extend([
            fbuf(n * d),
            fbuf(3 * n * d),
            fbuf(1),
            int(n),
            int(3 * n),
            int(n),
            int(0),
            int(d),
            int(q),
        ]);
        v.push(launch_of("contrastive_fwd_f32", stripe_cfg, local));
        let mut cols = vec![fbuf(n), fbuf(n), fbuf(n)];
        cols.extend([fbuf(stripes * n), fbuf(stripes * n), fbuf(stripes * n)]);
        cols.extend([int(stripes), int(n)]);
        v.push(launch_of(
            "contrastive_cols_f32",
            LaunchConfig::for_elements(n, 256),
            cols,
        ));
        let mut loss = vec![fbuf(1), fbuf(1), fbuf(1)];
        loss.extend((0..8).map(|_| fbuf(n)));
        loss.push(int(n));
        v.push(launch_of(
            "contrastive_loss_f32",
            cfg((1, 1, 1), (256, 1, 1), 0),
            loss,
        ));
        let blocks = n.div_ceil(32);
        for (want, t) in [(1, "f32"), (0, "f32"), (1, "f16"), (1, "bf16")] {
            // dA, the f32 accumulator dÂ, the partials, A, B, A's norms, then the statistics
            let mut bwd = vec![
                tbuf(t, n * d),
                fbuf(n * d),
                format!("f64buf:{blocks}"),
                tbuf(t, n * d),
                tbuf(t, n * d),
                fbuf(n),
            ];
            bwd.extend((0..6).map(|_| fbuf(n)));
            bwd.extend([fbuf(1), fbuf(1), int(n), int(n), int(n), int(0), int(3)]);
            bwd.extend([int(d), int(want), flt(1e-12)]);
            let tiles = cfg((blocks as u32, 1, 1), (32, 8, 1), 0);
            v.push(launch_of(format!("contrastive_bwd_{t}"), tiles, bwd));
        }
        // the local form's column-owner pass: 2n columns against n rows, labels at −n (j = i − n),
        // only B's statistics (A's stand-ins are never read)
        let cblocks = (2 * n).div_ceil(32);
        let mut colpass = vec![
            fbuf(2 * n * d),
            fbuf(2 * n * d),
            format!("f64buf:{cblocks}"),
        ];
        colpass.extend([fbuf(2 * n * d), fbuf(n * d), fbuf(2 * n)]);
        colpass.extend([
            fbuf(2 * n),
            fbuf(2 * n),
            fbuf(n),
            fbuf(n),
            fbuf(2 * n),
            fbuf(n),
        ]);
        colpass.extend([fbuf(1), fbuf(1), int(2 * n), int(n), int(n)]);
        colpass.push(format!("i32:{}", -(n as i64)));
        colpass.extend([int(2), int(d), int(0), flt(1e-12)]);
        let tiles = cfg((cblocks as u32, 1, 1), (32, 8, 1), 0);
        v.push(launch_of("contrastive_bwd_f32", tiles, colpass));
        let dlogit = vec![
            fbuf(1),
            format!("f64buf:{blocks}"),
            fbuf(1),
            int(blocks),
            int(n),
        ];
        v.push(launch_of(
            "contrastive_dlogit_f32",
            cfg((1, 1, 1), (32, 1, 1), 0),
            dlogit,
        ));
    }
    v
}

/// attention.cu: mirrors src/ops/attention/packed.rs — grid (⌈T/32⌉ f32, ⌈T/64⌉ 16-bit, B·H) of (32, 4) over the
/// packed qkv [B·T, 3·H·dh], the merged output and the [B·H·T] lse; the backward's row dot
/// (`warp_per_row(B·T·H)`) and the key- and query-tile owners. T of 1, 7 (part of a tile) and 40
/// (two tiles, the second partial), head dims 16, 24 and 64, plain and causal.
fn asan_attention() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    for (b, h, t, dh, causal) in [
        (1usize, 1usize, 1usize, 64usize, 0usize),
        (2, 1, 7, 24, 1),
        (1, 2, 40, 16, 1),
        (1, 1, 40, 64, 0),
    ] {
        let (rows, d) = (b * t, h * dh);
        let scale = 1.0 / (dh as f32).sqrt();
        for ty in DTYPES {
            // f32 blocks own 32 rows, the tensor-core (16-bit) blocks 64
            let rows_per_block = if ty == "f32" { 32 } else { 64 };
            let g = cfg(
                (t.div_ceil(rows_per_block) as u32, (b * h) as u32, 1),
                (32, 4, 1),
                0,
            );
            let fwd = vec![
                tbuf(ty, rows * d),
                fbuf(b * h * t),
                tbuf(ty, rows * 3 * d),
                int(t),
                int(h),
                int(dh),
                int(causal),
                flt(scale),
            ];
            v.push(launch_of(format!("attn_fwd_{ty}"), g, fwd));
            let dot = vec![
                fbuf(b * h * t),
                tbuf(ty, rows * d),
                tbuf(ty, rows * d),
                int(rows),
                int(t),
                int(h),
                int(dh),
            ];
            v.push(launch_of(
                format!("attn_bwd_dot_{ty}"),
                LaunchConfig::warp_per_row(rows * h),
                dot,
            ));
            for k in ["attn_bwd_dkv", "attn_bwd_dq"] {
                let bwd = vec![
                    tbuf(ty, rows * 3 * d),
                    tbuf(ty, rows * 3 * d),
                    tbuf(ty, rows * d),
                    fbuf(b * h * t),
                    fbuf(b * h * t),
                    int(t),
                    int(h),
                    int(dh),
                    int(causal),
                    flt(scale),
                ];
                v.push(launch_of(format!("{k}_{ty}"), g, bwd));
            }
        }
    }
    v
}

/// layout.cu: mirrors src/ops/layout/gpu.rs — one `for_elements(part, 256)` launch per part of a
/// concat into the whole [outer, total, inner] output, narrow / its gradient over the output
/// elements, transpose01 over a·b·c.
fn asan_layout() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    for t in DTYPES {
        for (outer, lens, inner) in [
            (2, vec![3, 5, 1], 7),
            (1, vec![2, 0, 5], 11),
            (4, vec![1, 1], 1),
        ] {
            let total: usize = lens.iter().sum();
            let mut start = 0;
            for len in lens {
                let part = outer * len * inner;
                let args = vec![
                    tbuf(t, outer * total * inner),
                    tbuf(t, part),
                    int(outer),
                    int(len),
                    int(inner),
                    int(total),
                    int(start),
                ];
                v.push(launch_of(
                    format!("concat_fwd_{t}"),
                    LaunchConfig::for_elements(part, 256),
                    args,
                ));
                start += len;
            }
        }
        for (outer, full, inner, start, len) in [(2, 9, 7, 0, 3), (2, 9, 7, 6, 3), (3, 5, 1, 4, 1)]
        {
            let (small, big) = (outer * len * inner, outer * full * inner);
            let dims = [outer, full, len, inner, start].map(int);
            let mut fwd = vec![tbuf(t, small), tbuf(t, big)];
            fwd.extend(dims.iter().cloned());
            v.push(launch_of(
                format!("narrow_fwd_{t}"),
                LaunchConfig::for_elements(small, 256),
                fwd,
            ));
            let mut bwd = vec![tbuf(t, big), tbuf(t, small)];
            bwd.extend(dims.iter().cloned());
            v.push(launch_of(
                format!("narrow_bwd_{t}"),
                LaunchConfig::for_elements(big, 256),
                bwd,
            ));
        }
        for (a, b, c) in [(3, 7, 50), (5, 2, 1), (7, 3, 13)] {
            let n = a * b * c;
            let args = vec![tbuf(t, n), tbuf(t, n), int(a), int(b), int(c)];
            v.push(launch_of(
                format!("transpose01_{t}"),
                LaunchConfig::for_elements(n, 256),
                args,
            ));
        }
    }
    // strided_copy (mirrors `strided_copy` in src/ops/layout/gpu.rs: grid_stride(n), the view's
    // whole storage in, merged dims outermost first, unused dims 1 with stride 0): a permuted
    // [5, 7, 3] view of a 105-element storage, and a narrowed, expanded one at an offset.
    let grid_stride = |n: usize| LaunchConfig::for_elements(n.min(4096 * 256), 256);
    for t in DTYPES {
        for (storage, offset, dims, strides) in [
            (105usize, 0i64, vec![3i64, 7, 5], vec![1i64, 3, 21]),
            (300, 17, vec![4, 6, 9], vec![0, 40, 3]),
        ] {
            let n: i64 = dims.iter().product();
            let mut args = vec![
                tbuf(t, n as usize),
                tbuf(t, storage),
                long(n),
                long(offset),
                int(dims.len()),
            ];
            for k in 0..6 {
                args.push(long(*dims.get(k).unwrap_or(&1)));
            }
            for k in 0..6 {
                args.push(long(*strides.get(k).unwrap_or(&0)));
            }
            v.push(launch_of(
                format!("strided_copy_{t}"),
                grid_stride(n as usize),
                args,
            ));
        }
    }
    // casts (mirrors `cast`): every pair of storage types, n elements each
    for (from, to) in [
        ("f32", "f16"),
        ("f32", "bf16"),
        ("f16", "f32"),
        ("bf16", "f32"),
        ("f16", "bf16"),
        ("bf16", "f16"),
    ] {
        for n in [1usize, 1000] {
            let args = vec![tbuf(to, n), tbuf(from, n), long(n as i64)];
            v.push(launch_of(
                format!("cast_{from}_to_{to}"),
                grid_stride(n),
                args,
            ));
        }
    }
    // stochastic-rounding casts (mirrors `cast_stochastic`): the default grid and geometries
    // the tests pass (a block that does not divide n, a single thread)
    for to in ["f16", "bf16"] {
        for (n, cfg) in [
            (1000usize, grid_stride(1000)),
            (1000, LaunchConfig::for_elements(96 * 3, 96)),
            (7, LaunchConfig::for_elements(1, 1)),
        ] {
            let args = vec![
                tbuf(to, n),
                fbuf(n),
                long(n as i64),
                long(5),
                "u32:3".to_string(),
                "u32:1".to_string(),
                "u64zeros:1".to_string(),
            ];
            v.push(launch_of(format!("cast_sr_f32_to_{to}"), cfg, args));
        }
    }
    v
}

/// The CSR index of `ids` over `vocab` rows: mirrors `csr` in src/ops/embedding/gpu.rs.
fn embedding_csr(ids: &[i32], vocab: usize) -> (Vec<i32>, Vec<i32>) {
    let mut off = vec![0i32; vocab + 1];
    for &i in ids {
        off[i as usize + 1] += 1;
    }
    for r in 0..vocab {
        off[r + 1] += off[r];
    }
    let mut next = off.clone();
    let mut pos = vec![0i32; ids.len()];
    for (k, &i) in ids.iter().enumerate() {
        pos[next[i as usize] as usize] = k as i32;
        next[i as usize] += 1;
    }
    (off, pos)
}

/// embedding.cu: mirrors src/ops/embedding/gpu.rs — forward `for_elements(n·d, 256)` over a
/// [V, d] table; backward grid (V, ceil(d / 128)) of 128 over the CSR index (off V+1, pos n).
/// The ids include V − 1 and leave some rows absent (empty CSR ranges).
fn asan_embedding() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    for (vocab, n, d) in [
        (11usize, 13usize, 50usize),
        (5, 7, 130),
        (3, 1, 1),
        (4, 0, 3),
    ] {
        let ids: Vec<i32> = (0..n)
            .map(|k| (vocab - 1 - (k * k) % vocab) as i32)
            .collect();
        let (off, pos) = embedding_csr(&ids, vocab);
        let c_bwd = cfg(
            (vocab.max(1) as u32, d.div_ceil(128).max(1) as u32, 1),
            (128, 1, 1),
            0,
        );
        for t in DTYPES {
            let fwd = vec![
                tbuf(t, n * d),
                tbuf(t, vocab * d),
                ilist(&ids),
                int(n),
                int(d),
            ];
            let c = LaunchConfig::for_elements(n * d, 256);
            v.push(launch_of(format!("embedding_fwd_{t}"), c, fwd));
            // dw in the table's dtype; a 16-bit dy also into an f32 table (`_<t>_f32`)
            for (w, name) in [
                (t, format!("embedding_bwd_{t}")),
                ("f32", format!("embedding_bwd_{t}_f32")),
            ] {
                if t == "f32" && name.ends_with("_f32_f32") {
                    continue;
                }
                let bwd = vec![
                    tbuf(w, vocab * d),
                    tbuf(t, n * d),
                    ilist(&off),
                    ilist(&pos),
                    int(d),
                ];
                v.push(launch_of(name, c_bwd, bwd));
            }
        }
    }
    v
}

/// batchnorm.cu: mirrors src/ops/batchnorm/gpu.rs — per-channel kernels on grid (C) of 256
/// (its `per_channel`), elementwise ones on `for_elements(N·C·H·W, 256)`; a channel of 189
/// elements (fewer than the block) and one of 646 (more).
fn asan_batchnorm() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    for (n, c, h, w) in [(3, 5, 7, 9), (2, 3, 17, 19), (1, 1, 1, 1)] {
        let (hw, total) = (h * w, n * c * h * w);
        let per_channel = cfg((c.max(1) as u32, 1, 1), (256, 1, 1), 0);
        let elems = LaunchConfig::for_elements(total, 256);
        let finish = vec![
            fbuf(c),
            fbuf(c),
            fbuf(c),
            flt((2 * n * hw) as f32),
            flt(1e-5),
            int(c),
        ];
        v.push(launch_of(
            "batchnorm_finish_stats_f32",
            LaunchConfig::for_elements(c, 256),
            finish,
        ));
        for t in DTYPES {
            let stats = vec![
                fbuf(c),
                fbuf(c),
                fbuf(c),
                tbuf(t, total),
                int(n),
                int(c),
                int(hw),
                flt(1e-5),
            ];
            v.push(launch_of(
                format!("batchnorm_stats_{t}"),
                per_channel,
                stats,
            ));
            // SyncBatchNorm's statistics in steps (gpu.rs `sync_train_forward`)
            let sums = vec![fbuf(c), tbuf(t, total), int(n), int(c), int(hw)];
            v.push(launch_of(format!("batchnorm_sums_{t}"), per_channel, sums));
            let centred = vec![
                fbuf(c),
                fbuf(c),
                tbuf(t, total),
                fbuf(c),
                flt((2 * n * hw) as f32),
                int(n),
                int(c),
                int(hw),
            ];
            v.push(launch_of(
                format!("batchnorm_centred_sums_{t}"),
                per_channel,
                centred,
            ));
            let apply = vec![
                tbuf(t, total),
                tbuf(t, total),
                fbuf(c),
                fbuf(c),
                fbuf(c),
                fbuf(c),
                int(c),
                int(hw),
                int(total),
            ];
            v.push(launch_of(format!("batchnorm_apply_{t}"), elems, apply));
            let sums = vec![
                fbuf(c),
                fbuf(c),
                tbuf(t, total),
                tbuf(t, total),
                fbuf(c),
                fbuf(c),
                int(n),
                int(c),
                int(hw),
            ];
            v.push(launch_of(
                format!("batchnorm_bwd_sums_{t}"),
                per_channel,
                sums,
            ));
            for training in [0, 1] {
                let dx = vec![
                    tbuf(t, total),
                    tbuf(t, total),
                    tbuf(t, total),
                    fbuf(c),
                    fbuf(c),
                    fbuf(c),
                    fbuf(c),
                    fbuf(c),
                    int(c),
                    int(hw),
                    int(total),
                    flt(1.0 / (n * hw).max(1) as f32),
                    int(training),
                ];
                v.push(launch_of(format!("batchnorm_bwd_dx_{t}"), elems, dx));
            }
        }
    }
    v
}

/// conv2d.cu: mirrors `run` in src/ops/conv2d/gpu.rs (`for_elements(output, 256)`; col is
/// [C·kh·kw, N·OH·OW]) with the output size of src/ops/conv2d/mod.rs's `geom`.
fn asan_conv2d() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    // (n, c, h, w, kh, kw, stride, pad)
    for (n, c, h, w, kh, kw, s, pad) in [
        (2, 3, 7, 9, 3, 3, 2, 1),
        (1, 2, 5, 6, 2, 3, 1, 0),
        (1, 3, 8, 8, 3, 3, 3, 2),
        (2, 1, 4, 4, 4, 4, 4, 0),
    ] {
        let (oh, ow) = ((h + 2 * pad - kh) / s + 1, (w + 2 * pad - kw) / s + 1);
        let (x, col) = (n * c * h * w, c * kh * kw * n * oh * ow);
        let dims = [n, c, h, w, kh, kw, s, pad, oh, ow].map(int);
        for t in DTYPES {
            let mut fwd = vec![tbuf(t, col), tbuf(t, x)];
            fwd.extend(dims.iter().cloned());
            v.push(launch_of(
                format!("im2col_fwd_{t}"),
                LaunchConfig::for_elements(col, 256),
                fwd,
            ));
            let mut bwd = vec![tbuf(t, x), fbuf(col)];
            bwd.extend(dims.iter().cloned());
            v.push(launch_of(
                format!("col2im_bwd_{t}"),
                LaunchConfig::for_elements(x, 256),
                bwd,
            ));
        }
    }
    v
}

/// pool.cu: mirrors `run` in src/ops/pool/gpu.rs (`for_elements(output, 256)` over N·C planes)
/// with the output size of src/ops/pool/mod.rs's `geom`; windows that leave a ragged edge.
fn asan_pool() -> Vec<AsanLaunch> {
    let mut v = Vec::new();
    for (n, c, h, w, k, s) in [(2, 3, 7, 9, 3, 2), (1, 2, 5, 5, 2, 1), (1, 1, 6, 7, 3, 3)] {
        let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
        let planes = n * c;
        let (x, y) = (planes * h * w, planes * oh * ow);
        let dims = [planes, h, w, k, s, oh, ow].map(int);
        for t in DTYPES {
            let mut fwd = vec![tbuf(t, y), tbuf(t, x)];
            fwd.extend(dims.iter().cloned());
            v.push(launch_of(
                format!("avgpool_fwd_{t}"),
                LaunchConfig::for_elements(y, 256),
                fwd,
            ));
            let mut bwd = vec![tbuf(t, x), tbuf(t, y)];
            bwd.extend(dims.iter().cloned());
            v.push(launch_of(
                format!("avgpool_bwd_{t}"),
                LaunchConfig::for_elements(x, 256),
                bwd,
            ));
        }
    }
    v
}

/// adamw.cu: mirrors src/optim/adamw/gpu.rs — the table of one entry per gradient in chunks of
/// CHUNK = 4096 (tensors of 0, 1, 7, 300 and 4097 elements: an empty one, partial chunks, one
/// over two chunks); `step` on grid (chunks) of 256, with the clip factor and without (null);
/// the norm's stage 1 on one block per chunk (`NormLaunch::default`) and on other geometries
/// (the launch knob `set_norm_launch`), stage 2 on one block; `clamp_in_place` on
/// `for_elements(n, 256)`; the 16-bit steps (`adamw_step_f16s`, `adamw_step_bf16sr`) on tables
/// of 16-bit moments (and block scales) with f32, f16 and bf16 values.
fn asan_adamw() -> Vec<AsanLaunch> {
    const CHUNK: usize = 4096;
    let mut v = Vec::new();
    for sizes in [vec![1usize], vec![7, 0, 4097, 300, 1]] {
        let chunks: usize = sizes.iter().map(|n| n.div_ceil(CHUNK)).sum();
        let list: Vec<String> = sizes.iter().map(|n| n.to_string()).collect();
        let table = || format!("adamwtable:{CHUNK}:{}", list.join(","));
        for clip in [fbuf(1), "null".to_string()] {
            let mut args = vec![table(), "adamwchunks".to_string(), clip];
            args.extend([0.999f32, 1e-3, 0.3, 0.9, 0.98, 1e-6].map(flt));
            args.extend([long(3), "null".to_string()]);
            v.push(launch_of(
                "adamw_step_f32",
                cfg((chunks as u32, 1, 1), (256, 1, 1), 0),
                args,
            ));
        }
        // 16-bit moments (f16 with block scales, bf16) and f32/f16/bf16 values, with the
        // overflow counter, on the default block and on blocks that do not divide 256
        for (kernel, mom) in [("adamw_step_f16s", "f16s"), ("adamw_step_bf16sr", "bf16")] {
            for block in [256, 96, 32] {
                let mut args = vec![
                    format!("adamwtable16:{CHUNK}:{mom}:{}", list.join(",")),
                    "adamwchunks".to_string(),
                    "null".to_string(),
                ];
                args.extend([0.999f32, 1e-3, 0.3, 0.9, 0.98, 1e-6].map(flt));
                args.extend([long(3), "u64zeros:1".to_string()]);
                v.push(launch_of(
                    kernel,
                    cfg((chunks as u32, 1, 1), (block, 1, 1), 0),
                    args,
                ));
            }
        }
        for (grid, block) in [(chunks as u32, 256), (1, 32), (3, 96)] {
            let args = vec![
                format!("f64buf:{}", chunks.max(1)),
                table(),
                "adamwchunks".to_string(),
                int(chunks),
            ];
            v.push(launch_of(
                "adamw_grad_sumsq_f32",
                cfg((grid, 1, 1), (block, 1, 1), 0),
                args,
            ));
        }
        for block in [256, 32] {
            let args = vec![
                fbuf(1),
                fbuf(1),
                "f64buf:1".to_string(),
                format!("f64buf:{}", chunks.max(1)),
                int(chunks),
                "f64:1.0".to_string(),
                // the loss scaler's inverse scale (a power of two)
                "f64:0.0009765625".to_string(),
            ];
            v.push(launch_of(
                "adamw_grad_norm_f32",
                cfg((1, 1, 1), (block, 1, 1), 0),
                args,
            ));
        }
    }
    // ZeRO-1's clip over sharded gradients: one thread each
    v.push(launch_of(
        "adamw_sumsq_as_f32",
        cfg((1, 1, 1), (1, 1, 1), 0),
        vec![fbuf(1), "f64buf:1".to_string()],
    ));
    v.push(launch_of(
        "adamw_clip_from_sumsq_f32",
        cfg((1, 1, 1), (1, 1, 1), 0),
        vec![
            fbuf(1),
            fbuf(1),
            fbuf(1),
            "f64:1.0".to_string(),
            "f64:0.0009765625".to_string(),
        ],
    ));
    for n in [1, 300] {
        let args = vec![fbuf(n), flt(0.0), flt(4.6), int(n)];
        v.push(launch_of(
            "clamp_inplace_f32",
            LaunchConfig::for_elements(n, 256),
            args,
        ));
    }
    v
}

/// (kernel file, its launches) for every production kernel family.
type AsanFamily = (&'static str, fn() -> Vec<AsanLaunch>);

/// Every family's launches, by kernels/ file.
const ASAN_FAMILIES: [AsanFamily; 15] = [
    ("elementwise (unary)", asan_unary),
    ("elementwise (binary)", asan_binary),
    ("layernorm", asan_layernorm),
    ("softmax", asan_softmax),
    ("normalize", asan_normalize),
    ("reduce", asan_reduce),
    ("cross_entropy", asan_cross_entropy),
    ("contrastive", asan_contrastive),
    ("attention", asan_attention),
    ("layout", asan_layout),
    ("embedding", asan_embedding),
    ("batchnorm", asan_batchnorm),
    ("conv2d", asan_conv2d),
    ("pool", asan_pool),
    ("adamw", asan_adamw),
];

/// Runs a family's launches under ASan, in lane order and reversed: all of one order in one
/// process (launches separated by `--`, each with fresh exact-size buffers), and when that fails
/// each launch on its own, so the failure names every failing command line with its report.
/// Returns the failure report, if any.
fn asan_family(family: &str, launches: fn() -> Vec<AsanLaunch>) -> Option<String> {
    let exe = asan_runner();
    let launches = launches();
    if launches.is_empty() {
        return Some(format!("{family}: no launches"));
    }
    let passed = |argv: &[String]| {
        let (ok, log) = asan_run(&exe, &argv.iter().map(String::as_str).collect::<Vec<_>>());
        (ok && log.lines().any(|line| line == "ok"), log)
    };
    for reverse in [false, true] {
        let mut batch = Vec::new();
        for l in &launches {
            if !batch.is_empty() {
                batch.push("--".to_string());
            }
            batch.extend(l.argv(reverse));
        }
        let (ok, batch_log) = passed(&batch);
        if ok {
            continue;
        }
        let failures: Vec<String> = launches
            .iter()
            .map(|l| l.argv(reverse))
            .filter_map(|argv| {
                let (ok, log) = passed(&argv);
                (!ok).then(|| format!("emu_asan {}\n{log}", argv.join(" ")))
            })
            .collect();
        let order = if reverse { " (reverse lane order)" } else { "" };
        return Some(if failures.is_empty() {
            format!("{family}{order}: the launches pass one by one but not in one process:\n{batch_log}")
        } else {
            format!(
                "{family}{order}: {} of {} launches failed under ASan:\n{}",
                failures.len(),
                launches.len(),
                failures.join("\n")
            )
        });
    }
    None
}

/// Every family of ASAN_FAMILIES (so every production kernel, see the next test) under ASan,
/// the families in parallel; fails with the report of each failing family.
#[test]
fn sanitizer_build_runs_every_production_kernel_cleanly() {
    let failures: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = ASAN_FAMILIES
            .iter()
            .map(|&(family, launches)| scope.spawn(move || asan_family(family, launches)))
            .collect();
        runs.into_iter().filter_map(|r| r.join().unwrap()).collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} kernel families fail under ASan:\n{}",
        failures.len(),
        ASAN_FAMILIES.len(),
        failures.join("\n")
    );
}

/// The families above launch every production kernel the emulator registers (all but the
/// `emutest_` kernels of kernels/emu/tests/): a new kernel must join a family to pass.
#[test]
fn sanitizer_families_cover_every_production_kernel() {
    let mut covered = std::collections::BTreeSet::new();
    for (_, launches) in ASAN_FAMILIES {
        covered.extend(launches().into_iter().map(|l| l.kernel));
    }
    let production: std::collections::BTreeSet<String> = emu::kernels()
        .into_iter()
        .filter(|k| !k.starts_with("emutest_"))
        .collect();
    let missing: Vec<_> = production.difference(&covered).collect();
    let unknown: Vec<_> = covered.difference(&production).collect();
    assert!(
        missing.is_empty(),
        "production kernels never launched under ASan: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "ASan launches of kernels the emulator does not register: {unknown:?}"
    );
    assert!(production.len() >= 62, "{production:?}");
}
