//! Kernels of `kernels/layout.cu` and the one-axis reductions of `kernels/reduce.cu` against the
//! CPU reference (DESIGN §7): concat along every axis (its gradient: contiguous slices), narrow's
//! gradient (the slice padded with zeros), sum and mean over one axis and their gradient (the
//! broadcast back), and the [A, B, C] → [B, A, C] transpose through conv2d's layout; the strided
//! copy behind `try_contiguous` of any view (rank 1–6 after merging, permuted, transposed,
//! narrowed at an offset, expanded with stride 0; f32/f16/bf16) and the dtype casts behind
//! `try_to_dtype`. All are copies or in-order sums (a cast is one rounding, as the `half` crate
//! does it), so they must match the CPU bit for bit. Fresh random data at sizes that are not
//! multiples of the 256-thread blocks; outputs NaN-poisoned on Emu, so an element no thread
//! writes fails. Emu in normal and reverse lane order; Cuda when a GPU is present.

mod common;
use common::{graph_grads, on_each_kernel_device as on_each};

use clipcu::device::{emu, LaunchConfig};
use clipcu::ops::layout::concat;
use clipcu::ops::reduce::{mean, sum};
use clipcu::{DType, Device, Tensor};
use half::{bf16, f16};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Bit-for-bit equality of two tensors' elements (any dtype), with shape and dtype.
fn bitwise(what: &str, tag: &str, seed: u64, out: &Tensor, reference: &Tensor) {
    assert_eq!(out.shape(), reference.shape(), "{what} on {tag}");
    assert_eq!(out.dtype(), reference.dtype(), "{what} on {tag}");
    let (a, b) = (out.to_le_bytes(), reference.to_le_bytes());
    if a != b {
        let (x, y) = (out.to_vec(), reference.to_vec());
        let bad: Vec<(usize, f32, f32)> = x
            .iter()
            .zip(&y)
            .enumerate()
            .filter(|(_, (p, q))| p.to_bits() != q.to_bits())
            .map(|(i, (p, q))| (i, *p, *q))
            .take(6)
            .collect();
        panic!("{what} on {tag}, seed={seed}: differs (index, got, want): {bad:?}");
    }
}

fn exact(what: &str, tag: &str, seed: u64, out: &Tensor, reference: &Tensor) {
    assert_eq!(out.shape(), reference.shape(), "{what} on {tag}");
    assert_eq!(
        out.to_vec(),
        reference.to_vec(),
        "{what} on {tag}, seed={seed}"
    );
}

#[test]
fn concat_and_its_gradient_match_cpu() {
    on_each(|device, tag| {
        // (outer shape, sizes along the axis) for each axis of a rank-3 tensor
        for (a, b, c) in [(1, 1, 1), (2, 7, 50), (3, 77, 5), (1, 197, 7)] {
            for axis in 0..3 {
                let seed = common::fresh_seed();
                let mut parts = Vec::new();
                for (i, len) in [1usize, 7, 3].into_iter().enumerate() {
                    let mut s = [a, b, c];
                    s[axis] = len;
                    parts.push(Tensor::randn(s.to_vec(), 1.0, seed + i as u64));
                }
                let refs: Vec<&Tensor> = parts.iter().collect();
                let want = concat(&refs, axis as isize).unwrap();
                let dy = Tensor::randn(want.shape().to_vec(), 1.0, seed + 9);
                let f = |g: &clipcu::Graph, v: &[clipcu::Var]| {
                    g.concat(&v.iter().collect::<Vec<_>>(), axis as isize)
                };
                let (out, grads) = graph_grads(device, &parts, &dy, f);
                let (_, want_grads) = graph_grads(Device::Cpu, &parts, &dy, f);
                let what = format!("concat_fwd_f32 [{a},{b},{c}] axis {axis}");
                exact(&what, tag, seed, &out, &want);
                for (i, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
                    exact(
                        &format!("narrow_fwd_f32 part {i} of {what}"),
                        tag,
                        seed,
                        g,
                        w,
                    );
                }
            }
        }
    });
}

#[test]
fn narrow_gradient_matches_cpu() {
    on_each(|device, tag| {
        for (shape, axis, start, len) in [
            (vec![1], 0, 0, 1),
            (vec![77, 50], 0, 3, 7),
            (vec![2, 197, 7], 1, 0, 1),
            (vec![3, 5, 1000], 2, 999, 1),
            (vec![7, 50], 1, 10, 40),
        ] {
            let seed = common::fresh_seed();
            let x = Tensor::randn(shape.clone(), 1.0, seed);
            let mut oshape = shape.clone();
            oshape[axis] = len;
            let dy = Tensor::randn(oshape, 1.0, seed + 1);
            let f =
                |g: &clipcu::Graph, v: &[clipcu::Var]| g.narrow(&v[0], axis as isize, start, len);
            let (_, dx) = graph_grads(device, std::slice::from_ref(&x), &dy, f);
            let (_, want) = graph_grads(Device::Cpu, std::slice::from_ref(&x), &dy, f);
            exact(
                &format!("narrow_bwd_f32 {shape:?} axis {axis} {start}+{len}"),
                tag,
                seed,
                &dx[0],
                &want[0],
            );
        }
    });
}

#[test]
fn axis_sums_and_means_match_cpu() {
    on_each(|device, tag| {
        for shape in [
            vec![1],
            vec![7, 50],
            vec![3, 77, 5],
            vec![1000, 3],
            vec![2, 197, 1, 7],
        ] {
            for axis in 0..shape.len() {
                for is_mean in [false, true] {
                    let seed = common::fresh_seed();
                    let x = Tensor::randn(shape.clone(), 1.0, seed);
                    let f = |g: &clipcu::Graph, v: &[clipcu::Var]| {
                        if is_mean {
                            g.mean(&v[0], Some(axis as isize))
                        } else {
                            g.sum(&v[0], Some(axis as isize))
                        }
                    };
                    let want = if is_mean {
                        mean(&x, Some(axis as isize))
                    } else {
                        sum(&x, Some(axis as isize))
                    }
                    .unwrap();
                    let dy = Tensor::randn(want.shape().to_vec(), 1.0, seed + 1);
                    let (out, dx) = graph_grads(device, std::slice::from_ref(&x), &dy, f);
                    let (_, want_dx) = graph_grads(Device::Cpu, std::slice::from_ref(&x), &dy, f);
                    let what = format!("{shape:?} axis {axis} mean={is_mean}");
                    exact(&format!("sum_axis_f32 {what}"), tag, seed, &out, &want);
                    exact(
                        &format!("expand_axis_f32 {what}"),
                        tag,
                        seed,
                        &dx[0],
                        &want_dx[0],
                    );
                }
            }
        }
    });
}

/// One view of a fresh base tensor: (name, base shape, how the view is made).
type View = (&'static str, Vec<usize>, fn(&Tensor) -> Tensor);

/// Views of rank 1..6 (and a rank-7 one whose dims merge) by permute, transpose, narrow (so a
/// non-zero offset) and expand (stride 0), alone and combined; none a multiple of 256 elements.
fn views() -> Vec<View> {
    vec![
        (
            "expand [1] of an offset slice → [777] (stride 0)",
            vec![5],
            |t| t.narrow(0, 2, 1).unwrap().expand(&[777]).unwrap(),
        ),
        (
            "column 1 of [300, 3]: stride 3, offset 1",
            vec![300, 3],
            |t| t.narrow(1, 1, 1).unwrap().transpose(0, 1).unwrap(),
        ),
        ("transpose of [77, 50]", vec![77, 50], |t| {
            t.transpose(0, 1).unwrap()
        }),
        (
            "narrow both dims of [77, 50], then transpose",
            vec![77, 50],
            |t| {
                let v = t.narrow(0, 3, 70).unwrap().narrow(1, 5, 41).unwrap();
                v.transpose(0, 1).unwrap()
            },
        ),
        (
            "narrow the rows of [7, 50] (offset, row stride 50)",
            vec![7, 50],
            |t| t.narrow(1, 9, 33).unwrap(),
        ),
        (
            "permute [2, 0, 1] of [7, 50, 13], narrowed",
            vec![7, 50, 13],
            |t| t.permute(&[2, 0, 1]).unwrap().narrow(1, 2, 3).unwrap(),
        ),
        (
            "expand [7, 1, 13] → [7, 37, 13], narrowed",
            vec![7, 1, 13],
            |t| t.expand(&[7, 37, 13]).unwrap().narrow(2, 1, 11).unwrap(),
        ),
        (
            "expand [13] → [3, 5, 13] (a bias over rows), transposed",
            vec![13],
            |t| t.expand(&[3, 5, 13]).unwrap().transpose(0, 2).unwrap(),
        ),
        (
            "permute [3, 1, 0, 2] of a narrowed [3, 5, 7, 11]",
            vec![3, 5, 7, 11],
            |t| {
                let v = t.narrow(2, 1, 5).unwrap();
                v.permute(&[3, 1, 0, 2]).unwrap()
            },
        ),
        (
            "q of the qkv split: [2, 9, 3, 4, 5] permuted, one slice",
            vec![2, 9, 3, 4, 5],
            |t| {
                let v = t.permute(&[2, 0, 3, 1, 4]).unwrap();
                v.narrow(0, 1, 1).unwrap()
            },
        ),
        (
            "permute [4, 2, 0, 3, 1] of [3, 4, 5, 6, 7], narrowed",
            vec![3, 4, 5, 6, 7],
            |t| {
                t.permute(&[4, 2, 0, 3, 1])
                    .unwrap()
                    .narrow(0, 2, 4)
                    .unwrap()
            },
        ),
        (
            "permute [5, 3, 1, 0, 4, 2] of a narrowed [2, 3, 4, 5, 6, 7]",
            vec![2, 3, 4, 5, 6, 7],
            |t| {
                let v = t.narrow(2, 1, 2).unwrap();
                v.permute(&[5, 3, 1, 0, 4, 2]).unwrap()
            },
        ),
        (
            "expand [2, 1, 3, 1, 5, 7] → [2, 4, 3, 6, 5, 7], permuted",
            vec![2, 1, 3, 1, 5, 7],
            |t| {
                let v = t.expand(&[2, 4, 3, 6, 5, 7]).unwrap();
                v.permute(&[1, 0, 3, 2, 5, 4]).unwrap()
            },
        ),
        (
            "rank 7 whose dims merge: transpose(0, 1) of [2, 3, 2, 3, 2, 3, 5]",
            vec![2, 3, 2, 3, 2, 3, 5],
            |t| t.transpose(0, 1).unwrap(),
        ),
    ]
}

#[test]
fn strided_copy_matches_the_cpu_gather_bit_for_bit() {
    on_each(|device, tag| {
        for (name, base_shape, view) in views() {
            for dtype in DTYPES {
                let seed = common::fresh_seed();
                let base = Tensor::randn(base_shape.clone(), 1.0, seed).to_dtype(dtype);
                let want = view(&base).contiguous();
                let v = view(&base.to_device(device).unwrap());
                assert!(!v.is_contiguous(), "{name}: the case must be a view");
                let out = v
                    .try_contiguous()
                    .unwrap_or_else(|e| panic!("{name} on {tag}: {e}"));
                assert_eq!(out.device(), device, "{name}: output device");
                assert!(out.is_contiguous(), "{name}: output layout");
                let what = format!("strided_copy_{dtype} {name} {:?}", v.shape());
                bitwise(&what, tag, seed, &out, &want);
                // reshape and a device → host read of the view take the same copy
                let flat = v.reshape([v.numel()]).unwrap();
                assert_eq!(flat.device(), device);
                bitwise(
                    &format!("{what} via reshape"),
                    tag,
                    seed,
                    &flat,
                    &want.reshape([want.numel()]).unwrap(),
                );
                let host = v.to_device(Device::Cpu).unwrap();
                bitwise(&format!("{what} to the host"), tag, seed, &host, &want);
            }
        }
    });
}

#[test]
fn a_view_of_more_than_six_unmergeable_dims_is_a_clear_error() {
    on_each(|device, tag| {
        let base = Tensor::randn([2, 3, 2, 3, 2, 3, 2], 1.0, common::fresh_seed());
        // reversed dims: no two neighbours walk one run of memory, so rank 7 stays rank 7
        let axes = [6, 5, 4, 3, 2, 1, 0];
        let want = base.permute(&axes).unwrap().contiguous(); // any rank on the CPU
        assert_eq!(want.rank(), 7);
        let v = base.to_device(device).unwrap().permute(&axes).unwrap();
        let e = v.try_contiguous().unwrap_err().to_string();
        assert!(
            e.contains("contiguous") && e.contains("rank-7") && e.contains("rank ≤ 6"),
            "{tag}: {e}"
        );
        // the ops that need it fail the same way, with an Err, not a panic
        let e = clipcu::ops::unary::relu(&v).unwrap_err().to_string();
        assert!(e.contains("rank-7"), "{tag}: {e}");
    });
}

#[test]
fn grid_stride_loops_cover_more_elements_than_threads() {
    // The launchers cap the grid at 4096 blocks; here two blocks of 256 threads copy and cast
    // 3001 elements, so every thread runs the loop body up to six times.
    let seed = common::fresh_seed();
    let x = Tensor::randn([23, 131], 1.0, seed);
    let xs = x.to_vec();
    let want = x.transpose(0, 1).unwrap().contiguous().to_vec();
    let cfg = LaunchConfig {
        grid: (2, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    let n = 23 * 131;
    for reverse in [false, true] {
        let mut out = vec![f32::NAN; n];
        // [131, 23] view of [23, 131]: dims innermost first (23, stride 131), (131, stride 1)
        let mut args = vec![
            emu::EmuArg::slice_mut(&mut out),
            emu::EmuArg::slice(&xs),
            emu::EmuArg::I64(n as i64),
            emu::EmuArg::I64(0),
            emu::EmuArg::I32(2),
        ];
        args.extend([23, 131, 1, 1, 1, 1].map(emu::EmuArg::I64));
        args.extend([131, 1, 0, 0, 0, 0].map(emu::EmuArg::I64));
        let opts = emu::EmuOptions { reverse };
        // SAFETY: out holds n elements, xs 23·131; the view reads indices < 23·131.
        unsafe { emu::launch_with("strided_copy_f32", cfg, &args, opts) }.unwrap();
        assert_eq!(
            out, want,
            "strided_copy_f32 grid-stride, reverse={reverse}, seed={seed}"
        );
        let mut half = vec![f16::NAN; n];
        let args = [
            emu::EmuArg::slice_mut(&mut half),
            emu::EmuArg::slice(&xs),
            emu::EmuArg::I64(n as i64),
        ];
        // SAFETY: both buffers hold n elements.
        unsafe { emu::launch_with("cast_f32_to_f16", cfg, &args, opts) }.unwrap();
        let want_half: Vec<f16> = xs.iter().map(|&v| f16::from_f32(v)).collect();
        assert_eq!(
            half, want_half,
            "cast_f32_to_f16 grid-stride, reverse={reverse}, seed={seed}"
        );
    }
}

#[test]
fn strided_copy_indexes_past_2_pow_31_in_64_bits() {
    // A storage of 2³¹ + 2¹⁰ f16 elements (4 GiB of address space; calloc'd, so only the pages
    // the test touches take memory), read by the kernel directly: an offset and a stride past
    // 2³¹, where i32 index arithmetic would wrap and read before the buffer.
    let len = (1usize << 31) + 1024;
    let mut storage: Vec<u16> = vec![0; len];
    let big = (1i64 << 31) + 17;
    let cases: [(i64, [i64; 3], [i64; 3]); 2] = [
        // offset past 2³¹: a [5, 4] block with row stride 7 (innermost first: 4 × 1, 5 × 7)
        ((1 << 31) + 3, [4, 5, 1], [1, 7, 0]),
        // a stride past 2³¹: [2, 3, 4] with strides [2³¹ + 17, 1, 3] from offset 2
        (2, [4, 3, 2], [3, 1, big]),
    ];
    let mut rng = common::fresh_seed();
    for (offset, d, s) in cases {
        // random values at exactly the positions the view reads
        let n = (d[0] * d[1] * d[2]) as usize;
        let mut want = Vec::with_capacity(n);
        for i in 0..n as i64 {
            let (i0, i1, i2) = (i % d[0], (i / d[0]) % d[1], i / (d[0] * d[1]));
            let at = (offset + i0 * s[0] + i1 * s[1] + i2 * s[2]) as usize;
            rng = common::splitmix64(rng);
            let v = f16::from_f32((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5);
            storage[at] = v.to_bits();
            want.push(v);
        }
        let mut out = vec![f16::NAN; n];
        let mut args = vec![
            emu::EmuArg::slice_mut(&mut out),
            emu::EmuArg::slice(&storage),
            emu::EmuArg::I64(n as i64),
            emu::EmuArg::I64(offset),
            emu::EmuArg::I32(3),
        ];
        args.extend([d[0], d[1], d[2], 1, 1, 1].map(emu::EmuArg::I64));
        args.extend([s[0], s[1], s[2], 0, 0, 0].map(emu::EmuArg::I64));
        // SAFETY: out holds n elements; every index the view reads is < len (checked above by
        // the writes into storage).
        unsafe {
            emu::launch(
                "strided_copy_f16",
                LaunchConfig::for_elements(n, 256),
                &args,
            )
        }
        .unwrap();
        assert_eq!(out, want, "offset {offset}, sizes {d:?}, strides {s:?}");
    }
}

/// Values that test the rounding of every cast: random normals at several scales, then signed
/// zeros, infinities, the f16 overflow edge (65504 stays, 65520 rounds to inf), f16 subnormals
/// and the values below them, ties to even in f16 (1 + 2⁻¹¹, 1 + 3·2⁻¹¹) and in bf16 (1 + 2⁻⁸,
/// 1 + 3·2⁻⁸), and a value past the f16 range that bf16 keeps.
fn cast_inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut v: Vec<f32> = Tensor::randn([n], 1.0, seed).to_vec();
    for (i, x) in v.iter_mut().enumerate() {
        *x *= [1.0, 1e-3, 1e3, 3e-6][i % 4];
    }
    let p = |e: i32| 2f32.powi(e);
    v.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65504.0,
        65519.0,
        65520.0,
        -65520.0,
        p(-24),
        p(-25),
        3.0 * p(-25),
        p(-26),
        1.0 + p(-11),
        1.0 + 3.0 * p(-11),
        1.0 + p(-8),
        1.0 + 3.0 * p(-8),
        -(1.0 + 3.0 * p(-8)),
        1e38,
        f32::MIN_POSITIVE,
        1e-40,
    ]);
    v
}

#[test]
fn casts_match_the_cpu_to_dtype_bit_for_bit() {
    on_each(|device, tag| {
        for n in [1, 7, 1000] {
            let seed = common::fresh_seed();
            let x = Tensor::from_vec(cast_inputs(n, seed), [n + 20]).unwrap();
            for from in DTYPES {
                let src = x.to_dtype(from);
                let dev = src.to_device(device).unwrap();
                for to in DTYPES {
                    let out = dev.try_to_dtype(to).unwrap();
                    assert_eq!(
                        (out.device(), out.dtype()),
                        (device, to),
                        "{from} → {to} on {tag}"
                    );
                    let what = format!("cast_{from}_to_{to} n={}", n + 20);
                    bitwise(&what, tag, seed, &out, &src.to_dtype(to));
                }
                // a view is made contiguous on the device, then cast
                let base = Tensor::from_vec(cast_inputs(10 * n, seed), [10, n + 2])
                    .unwrap()
                    .to_dtype(from);
                let view = |t: &Tensor| t.narrow(1, 1, n).unwrap().transpose(0, 1).unwrap();
                let dview = view(&base.to_device(device).unwrap());
                for to in DTYPES {
                    let out = dview.try_to_dtype(to).unwrap();
                    assert_eq!((out.device(), out.dtype()), (device, to));
                    let what = format!("cast of a [{n}, 10] view {from} → {to}");
                    bitwise(&what, tag, seed, &out, &view(&base).to_dtype(to));
                }
            }
        }
    });
}

#[test]
fn casts_keep_nan_a_nan() {
    // CUDA writes the canonical 16-bit NaN where the `half` crate keeps payload bits: the one
    // place the bits may differ, so NaN-ness is what is checked.
    on_each(|device, tag| {
        let x = Tensor::from_vec(vec![f32::NAN, -f32::NAN, 1.0], [3]).unwrap();
        for from in DTYPES {
            for to in DTYPES {
                let out = x
                    .to_dtype(from)
                    .to_device(device)
                    .unwrap()
                    .try_to_dtype(to)
                    .unwrap();
                let v = out.to_vec();
                assert!(
                    v[0].is_nan() && v[1].is_nan() && v[2] == 1.0,
                    "{from} → {to} on {tag}: {v:?}"
                );
            }
        }
    });
}

#[test]
fn the_16_bit_types_survive_a_device_round_trip_of_views() {
    // bf16 and f16 storage through a permuted view on the device and back: the same bits as the
    // CPU's view (the storage types are opaque to the copy).
    on_each(|device, tag| {
        let seed = common::fresh_seed();
        let h: Vec<f16> = (0..5 * 6 * 7)
            .map(|i| f16::from_f32(i as f32 * 0.37 - 20.0))
            .collect();
        let b: Vec<bf16> = h
            .iter()
            .map(|v| bf16::from_f32(v.to_f32() * 1e20))
            .collect();
        for t in [
            Tensor::from_f16(h, [5, 6, 7]).unwrap(),
            Tensor::from_bf16(b, [5, 6, 7]).unwrap(),
        ] {
            let v = |t: &Tensor| t.narrow(1, 2, 3).unwrap().permute(&[2, 0, 1]).unwrap();
            let out = v(&t.to_device(device).unwrap()).try_contiguous().unwrap();
            bitwise(
                &format!("{} view", t.dtype()),
                tag,
                seed,
                &out,
                &v(&t).contiguous(),
            );
        }
    });
}
