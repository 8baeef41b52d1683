//! Kernel regression tests: each CUDA kernel against the CPU reference (DESIGN §7) on fresh
//! random data, through the same tensor-level call a model makes. They run on every device that
//! can run kernels here: always the emulator (`Device::Emu`), and Cuda when a GPU and the CUDA
//! backend are present — otherwise Cuda is reported as skipped, never as passed.
//!
//! Outputs start poisoned (NaN) on Emu, so an element the launch geometry misses fails; and
//! `rel_err` is NaN when any element is NaN, which never passes a `<` comparison.

mod common;

use clipcu::ops::unary::{gelu, unary_backward, UnaryKind};
use clipcu::{Device, Tensor};

/// Sizes from DESIGN's kernel checklist: 1 and odd sizes (partial blocks), 77 (text context),
/// 197 (ViT-B/16 tokens), and more than one 256-thread block.
const SIZES: [usize; 6] = [1, 7, 50, 77, 197, 1000];
/// f32 tolerance (DESIGN §7): ‖out − ref‖ / ‖ref‖.
const TOL_F32: f64 = 1e-5;

#[test]
fn gelu_fwd_matches_cpu() {
    common::on_each_kernel_device(|device, tag| {
        for n in SIZES {
            let seed = common::fresh_seed();
            // std 2: both tails of the erf and the region near 0 are exercised.
            let x = Tensor::randn([n], 2.0, seed);
            let reference = gelu(&x).unwrap();
            let out = gelu(&x.to_device(device).unwrap()).unwrap();
            assert_eq!(out.device(), device);
            assert_eq!(out.shape(), &[n]);
            let err = out.rel_err(&reference);
            assert!(
                err < TOL_F32,
                "gelu_fwd_f32 on {tag}, n={n}, seed={seed}: rel err {err}"
            );
        }
    });
}

#[test]
fn gelu_bwd_matches_cpu() {
    common::on_each_kernel_device(|device, tag| {
        for n in SIZES {
            let seed = common::fresh_seed();
            let x = Tensor::randn([n], 2.0, seed);
            let dy = Tensor::randn([n], 1.0, seed ^ 0x9e37_79b9);
            let reference = unary_backward(UnaryKind::Gelu, &x, &dy).unwrap();
            let (xd, dyd) = (x.to_device(device).unwrap(), dy.to_device(device).unwrap());
            let out = unary_backward(UnaryKind::Gelu, &xd, &dyd).unwrap();
            assert_eq!(out.device(), device);
            // Per element: gelu'(x) = Φ(x) + x·φ(x) is a difference of terms of size ~0.5 near
            // its zero at x ≈ −0.75, where the result's relative error is rounding noise (n = 1
            // failed a 1e-5 relative check once in ~40 seeds); so 1e-5 of the result plus
            // 2e-6 of the terms, times |dy|.
            let (o, r, xv, dv) = (out.to_vec(), reference.to_vec(), x.to_vec(), dy.to_vec());
            for i in 0..n {
                let xi = xv[i] as f64;
                let phi = (-0.5 * xi * xi).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let terms = 1.0 + xi.abs() * phi; // Φ(x) ≤ 1
                let bound = TOL_F32 * (r[i] as f64).abs() + 2e-6 * terms * (dv[i] as f64).abs();
                let diff = (o[i] as f64 - r[i] as f64).abs();
                assert!(
                    diff <= bound,
                    "gelu_bwd_f32 on {tag}, n={n}, seed={seed}: element {i} (x {xi}) is {}, reference {} (|Δ| {diff:.2e} > {bound:.2e})",
                    o[i],
                    r[i]
                );
            }
        }
    });
}

#[test]
fn gelu_keeps_shape_of_nd_and_strided_inputs() {
    common::on_each_kernel_device(|device, tag| {
        let seed = common::fresh_seed();
        let x = Tensor::randn([3, 5, 7], 1.5, seed);
        let t = x.transpose(0, 2).unwrap(); // a non-contiguous view
        let reference = gelu(&t).unwrap();
        let out = gelu(&t.to_device(device).unwrap()).unwrap();
        assert_eq!(out.shape(), &[7, 5, 3]);
        let err = out.rel_err(&reference);
        assert!(err < TOL_F32, "{tag}, seed={seed}: rel err {err}");
    });
}

#[test]
fn ops_without_kernels_say_so_on_emu() {
    // exp and mul have kernels now (tests/kernels_elementwise.rs), and so has a reduction to a
    // shape that is not a trailing block of rows (a row sum [4, 3] → [4, 1], by axis sums); the
    // fused inference attention is CPU-only and says so.
    let x = Tensor::randn([4, 3], 1.0, 1)
        .to_device(Device::Emu)
        .unwrap();
    assert_eq!(clipcu::ops::unary::exp(&x).unwrap().device(), Device::Emu);
    let s = clipcu::ops::reduce::sum_to_shape(&x, &[4, 1]).unwrap();
    assert_eq!(s.device(), Device::Emu);
    let want = clipcu::ops::reduce::sum_to_shape(&x.to_device(Device::Cpu).unwrap(), &[4, 1]);
    assert!(s.rel_err(&want.unwrap()) < 1e-6);
    let qkv = Tensor::randn([6, 3 * 64], 1.0, 2)
        .to_device(Device::Emu)
        .unwrap();
    let e = clipcu::ops::attention::attention_qkv(&qkv, 2, 1, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not implemented on device emu"), "{e}");
}

#[test]
fn gelu_backward_rejects_mismatched_operands() {
    let x = Tensor::randn([4], 1.0, 1).to_device(Device::Emu).unwrap();
    let dy = Tensor::randn([5], 1.0, 2).to_device(Device::Emu).unwrap();
    assert!(unary_backward(UnaryKind::Gelu, &x, &dy).is_err());
    let cpu = Tensor::randn([4], 1.0, 2);
    let e = unary_backward(UnaryKind::Gelu, &x, &cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("different devices"), "{e}");
}
