//! The device GEMM (`ops::matmul::gpu`: cuBLAS on Cuda, the CPU GEMM on Emu's host storage)
//! against the CPU `matmul` (DESIGN §3, §7): every transpose combination, batched, with a shared
//! 2-D operand on either side, operands given as transposed views (read in place with the flag
//! flipped), `linear`'s fused bias, f16/bf16 operands with f32 or 16-bit output, and the graph's
//! backward (including the batch sum of a shared operand's gradient, a `sum_axis_f32` kernel).
//! Sizes 1, 7, 50, 77 (no multiple of any tile). Emu in normal and reverse lane order (the
//! reductions of the backward are kernels); Cuda when a GPU is present (tolerances there allow
//! TF32 if the backend enables it).

mod common;
use common::{check_kernel_tol, graph_grads, on_each_kernel_device as on_each};

use clipcu::ops::matmul::{gpu::gemm, gpu::GemmOptions, linear, matmul};
use clipcu::{DType, Device, Tensor};

/// f32 on Emu is the same CPU GEMM: 1e-5. On a GPU cuBLAS may use TF32: 3e-4 (DESIGN §7).
fn tol(device: Device) -> f64 {
    if device == Device::Emu {
        1e-5
    } else {
        3e-4
    }
}

fn stored(batch: &[usize], rows: usize, cols: usize, t: bool) -> Vec<usize> {
    let mut s = batch.to_vec();
    s.extend(if t { [cols, rows] } else { [rows, cols] });
    s
}

#[test]
fn matmul_matches_cpu_for_every_layout() {
    on_each(|device, tag| {
        for (m, n, k) in [(1, 1, 1), (7, 50, 77), (77, 7, 50), (50, 77, 7)] {
            for (ba, bb) in [
                (vec![], vec![]),
                (vec![3], vec![3]),
                (vec![2, 3], vec![]),
                (vec![], vec![3]),
            ] {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    let seed = common::fresh_seed();
                    let a = Tensor::randn(stored(&ba, m, k, ta), 1.0, seed);
                    let b = Tensor::randn(stored(&bb, k, n, tb), 1.0, seed + 1);
                    let want = matmul(&a, &b, ta, tb).unwrap();
                    let (ad, bd) = (a.to_device(device).unwrap(), b.to_device(device).unwrap());
                    let out = matmul(&ad, &bd, ta, tb).unwrap();
                    assert_eq!(out.device(), device);
                    let what = format!("matmul {m}x{n}x{k} {ba:?}/{bb:?} ta={ta} tb={tb}");
                    check_kernel_tol(&what, tag, seed, &out, &want, tol(device));
                    // the same product with a transposed *view* of b's storage: read in place
                    let bv = bd.transpose(-1, -2).unwrap();
                    let out = matmul(&ad, &bv, ta, !tb).unwrap();
                    check_kernel_tol(
                        &format!("{what} (view)"),
                        tag,
                        seed,
                        &out,
                        &want,
                        tol(device),
                    );
                }
            }
        }
    });
}

#[test]
fn matmul_backward_matches_cpu() {
    on_each(|device, tag| {
        for (ba, bb, ta, tb) in [
            (vec![3], vec![3], false, true),
            (vec![2, 3], vec![], false, false),
            (vec![2], vec![], true, false),
            (vec![], vec![3], false, true),
            (vec![], vec![3], true, true),
        ] {
            let (m, n, k) = (7, 50, 77);
            let seed = common::fresh_seed();
            let a = Tensor::randn(stored(&ba, m, k, ta), 1.0, seed);
            let b = Tensor::randn(stored(&bb, k, n, tb), 1.0, seed + 1);
            let batch = if ba.is_empty() {
                bb.clone()
            } else {
                ba.clone()
            };
            let dy = Tensor::randn(stored(&batch, m, n, false), 1.0, seed + 2);
            let f = |g: &clipcu::Graph, v: &[clipcu::Var]| g.matmul(&v[0], &v[1], ta, tb);
            let xs = [a, b];
            let (_, grads) = graph_grads(device, &xs, &dy, f);
            let (_, want) = graph_grads(Device::Cpu, &xs, &dy, f);
            for (i, (g, w)) in grads.iter().zip(&want).enumerate() {
                let what = format!("matmul d{i} {ba:?}/{bb:?} ta={ta} tb={tb}");
                check_kernel_tol(&what, tag, seed, g, w, tol(device));
            }
        }
    });
}

#[test]
fn linear_with_bias_and_its_backward_match_cpu() {
    on_each(|device, tag| {
        for (rows, d_in, d_out) in [(1, 1, 1), (7, 50, 77), (197, 7, 50)] {
            let seed = common::fresh_seed();
            let x = Tensor::randn([rows, d_in], 1.0, seed);
            let w = Tensor::randn([d_out, d_in], 1.0, seed + 1);
            let b = Tensor::randn([d_out], 1.0, seed + 2);
            let want = linear(&x, &w, Some(&b)).unwrap();
            let dy = Tensor::randn([rows, d_out], 1.0, seed + 3);
            let f = |g: &clipcu::Graph, v: &[clipcu::Var]| g.linear(&v[0], &v[1], Some(&v[2]));
            let xs = [x, w, b];
            let (out, grads) = graph_grads(device, &xs, &dy, f);
            let (_, want_grads) = graph_grads(Device::Cpu, &xs, &dy, f);
            let what = format!("linear [{rows},{d_in}]→{d_out}");
            check_kernel_tol(&what, tag, seed, &out, &want, tol(device));
            for (i, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
                check_kernel_tol(&format!("{what} d{i}"), tag, seed, g, w, tol(device));
            }
        }
    });
}

#[test]
fn half_operands_accumulate_in_f32() {
    // f16/bf16 operands are exact in f32, so the reference is the CPU product of the rounded
    // operands; the only further error is the output rounding (2⁻¹¹ f16, 2⁻⁸ bf16 relative) when
    // the output is 16-bit, and none (Emu) when it is f32.
    on_each(|device, tag| {
        for dtype in [DType::F16, DType::BF16] {
            for out_dtype in [DType::F32, dtype] {
                let seed = common::fresh_seed();
                let (m, n, k) = (7, 50, 77);
                let a = Tensor::randn([3, m, k], 1.0, seed).to_dtype(dtype);
                let b = Tensor::randn([n, k], 1.0, seed + 1).to_dtype(dtype);
                let bias = Tensor::randn([n], 1.0, seed + 2).to_dtype(out_dtype);
                let want = clipcu::ops::binary::add(
                    &matmul(
                        &a.to_dtype(DType::F32),
                        &b.to_dtype(DType::F32),
                        false,
                        true,
                    )
                    .unwrap(),
                    &bias.to_dtype(DType::F32),
                )
                .unwrap();
                let (ad, bd, biasd) = (
                    a.to_device(device).unwrap(),
                    b.to_device(device).unwrap(),
                    bias.to_device(device).unwrap(),
                );
                let opts = GemmOptions {
                    out_dtype: Some(out_dtype),
                    bias: Some(&biasd),
                    ..Default::default()
                };
                let out = gemm(&ad, &bd, false, true, &opts).unwrap();
                assert_eq!(out.dtype(), out_dtype);
                let t = match out_dtype {
                    DType::F16 => 1e-3,
                    DType::BF16 => 8e-3,
                    _ => tol(device),
                };
                let what = format!("gemm {dtype}→{out_dtype} + bias");
                check_kernel_tol(&what, tag, seed, &out, &want, t);
            }
        }
    });
}

#[test]
fn bad_operands_are_clear_errors() {
    let a = Tensor::randn([3, 4], 1.0, 1)
        .to_device(Device::Emu)
        .unwrap();
    let b = Tensor::randn([5, 6], 1.0, 2)
        .to_device(Device::Emu)
        .unwrap();
    let e = matmul(&a, &b, false, false).unwrap_err().to_string();
    assert!(
        e.contains("matmul") && e.contains("[3, 4]") && e.contains("[5, 6]"),
        "{e}"
    );
    let e = matmul(&a, &b.to_device(Device::Cpu).unwrap(), false, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("different devices"), "{e}");
    let bias = Tensor::randn([7], 1.0, 3).to_device(Device::Emu).unwrap();
    let w = Tensor::randn([5, 4], 1.0, 4)
        .to_device(Device::Emu)
        .unwrap();
    let e = linear(&a, &w, Some(&bias)).unwrap_err().to_string();
    assert!(e.contains("linear") && e.contains("[7]"), "{e}");
}
