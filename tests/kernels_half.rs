//! The f16/bf16 kernels of mixed-precision training (DESIGN §7): GELU forward/backward, the bias
//! add, LayerNorm forward and softmax forward/backward (plain and causal) with 16-bit inputs and
//! outputs and f32 arithmetic, against the CPU reference computed in f32 from the *same rounded
//! inputs*. Fresh random data at sizes that are not multiples of the block or warp sizes; outputs
//! poisoned with 16-bit NaNs on Emu. Emu in normal and reverse lane order; Cuda when present.
//!
//! Tolerance, per element: given identical inputs, the kernel and the reference differ by the
//! kernel's single rounding of each output to the 16-bit format — at most half an ulp,
//! u = 2⁻¹¹ (f16) or 2⁻⁸ (bf16) relative, plus half the smallest subnormal spacing in f16
//! (2⁻²⁵ absolute) — on top of the f32 part: the reordering differences of the f32 tests, which
//! are below 1e-5 of the output's scale. So every element must satisfy
//! |out − ref| ≤ u·|ref| + 2⁻²⁵ (f16) + F32_PART·rms(ref). A kernel that accumulated in 16 bits
//! would fail it on the long rows (each add rounds by u; a 1000-term sum drifts far beyond u), as
//! would any wrong formula, any single element off by more than a rounding (an element perturbed
//! by 10% is 200× f16's u), or an unwritten (NaN) element.

mod common;
use common::half::{check16, rounded};
use common::on_each_kernel_device as on_each;

use clipcu::ops::binary::add;
use clipcu::ops::layernorm::layer_norm;
use clipcu::ops::softmax::{softmax, softmax_backward};
use clipcu::ops::unary::{gelu, unary_backward, UnaryKind};
use clipcu::{DType, Device, Tensor};

const SIZES: [usize; 6] = [1, 7, 50, 77, 197, 1000];

#[test]
fn gelu_and_bias_add_16bit_match_f32_reference() {
    on_each(|device, tag| {
        for dtype in [DType::F16, DType::BF16] {
            for n in SIZES {
                let seed = common::fresh_seed();
                let (x, xf) = rounded(&[n], 2.0, seed, dtype);
                let (dy, dyf) = rounded(&[n], 1.0, seed + 1, dtype);
                let (xd, dyd) = (x.to_device(device).unwrap(), dy.to_device(device).unwrap());
                let out = gelu(&xd).unwrap();
                assert_eq!(out.device(), device);
                check16(
                    &format!("gelu_fwd n={n}"),
                    tag,
                    seed,
                    dtype,
                    &out,
                    &gelu(&xf).unwrap(),
                );
                let dx = unary_backward(UnaryKind::Gelu, &xd, &dyd).unwrap();
                let want = unary_backward(UnaryKind::Gelu, &xf, &dyf).unwrap();
                check16(&format!("gelu_bwd n={n}"), tag, seed, dtype, &dx, &want);
            }
            for (r, d) in [(1, 1), (7, 50), (197, 77), (3, 1000)] {
                let seed = common::fresh_seed();
                let (x, xf) = rounded(&[r, d], 1.0, seed, dtype);
                let (b, bf) = rounded(&[d], 1.0, seed + 1, dtype);
                let (xd, bd) = (x.to_device(device).unwrap(), b.to_device(device).unwrap());
                let want = add(&xf, &bf).unwrap();
                check16(
                    &format!("add_bias_fwd [{r},{d}]"),
                    tag,
                    seed,
                    dtype,
                    &add(&xd, &bd).unwrap(),
                    &want,
                );
                check16(
                    &format!("bias + x [{r},{d}]"),
                    tag,
                    seed,
                    dtype,
                    &add(&bd, &xd).unwrap(),
                    &want,
                );
            }
        }
    });
}

#[test]
fn layernorm_16bit_matches_f32_reference() {
    on_each(|device, tag| {
        for dtype in [DType::F16, DType::BF16] {
            for (r, d) in [(1, 1), (7, 50), (77, 7), (197, 77), (3, 1000)] {
                let seed = common::fresh_seed();
                // an offset mean: LayerNorm must subtract it in f32
                let x = Tensor::randn([r, d], 1.0, seed);
                let x = add(&x, &Tensor::scalar(3.0)).unwrap().to_dtype(dtype);
                let xf = x.to_dtype(DType::F32);
                // the parameters stay f32 (master weights)
                let w = Tensor::randn([d], 1.0, seed + 1);
                let b = Tensor::randn([d], 1.0, seed + 2);
                let dev = |t: &Tensor| t.to_device(device).unwrap();
                let y = layer_norm(&dev(&x), &dev(&w), &dev(&b), 1e-5).unwrap();
                let want = layer_norm(&xf, &w, &b, 1e-5).unwrap();
                check16(
                    &format!("layernorm_fwd [{r},{d}]"),
                    tag,
                    seed,
                    dtype,
                    &y,
                    &want,
                );
            }
        }
    });
}

#[test]
fn softmax_16bit_fwd_bwd_match_f32_reference() {
    on_each(|device, tag| {
        for dtype in [DType::F16, DType::BF16] {
            for (shape, causal) in [
                (vec![1, 1], false),
                (vec![7, 50], false),
                (vec![3, 77, 77], true),
                (vec![2, 197], false),
                (vec![2, 1000], false),
                (vec![50, 50], true),
            ] {
                let seed = common::fresh_seed();
                let (x, xf) = rounded(&shape, 3.0, seed, dtype);
                let y = softmax(&x.to_device(device).unwrap(), causal).unwrap();
                let want = softmax(&xf, causal).unwrap();
                let what = format!("softmax {shape:?} causal={causal}");
                check16(&format!("{what} fwd"), tag, seed, dtype, &y, &want);
                // backward from the kernel's own (rounded) output, as the graph saves it; the
                // reference uses the same rounded y
                let (dy, dyf) = rounded(&shape, 1.0, seed + 1, dtype);
                let dx = softmax_backward(&y, &dy.to_device(device).unwrap()).unwrap();
                let want = softmax_backward(
                    &y.to_dtype(DType::F32).to_device(Device::Cpu).unwrap(),
                    &dyf,
                )
                .unwrap();
                check16(&format!("{what} bwd"), tag, seed, dtype, &dx, &want);
            }
        }
    });
}

#[test]
fn mixed_dtypes_are_clear_errors() {
    let x = Tensor::randn([7, 50], 1.0, 1)
        .to_dtype(DType::F16)
        .to_device(Device::Emu)
        .unwrap();
    let b = Tensor::randn([50], 1.0, 2)
        .to_dtype(DType::BF16)
        .to_device(Device::Emu)
        .unwrap();
    let e = add(&x, &b).unwrap_err().to_string();
    assert!(
        e.contains("f16") && e.contains("bf16") && e.contains("[7, 50]"),
        "{e}"
    );
    let y = softmax(&x, false).unwrap();
    let e = softmax_backward(&y, &x.to_dtype(DType::F32))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("softmax backward") && e.contains("f16") && e.contains("f32"),
        "{e}"
    );
}

#[test]
fn l2_normalize_16bit_matches_f32_reference() {
    use clipcu::ops::normalize::{l2_normalize_backward, l2_normalize_stats};
    on_each(|device, tag| {
        for dtype in [DType::F16, DType::BF16] {
            for (r, d) in [(1, 1), (7, 50), (77, 64), (3, 1000)] {
                let seed = common::fresh_seed();
                let (x, xf) = rounded(&[r, d], 1.0, seed, dtype);
                let (dy, dyf) = rounded(&[r, d], 1.0, seed + 1, dtype);
                let dev = |t: &Tensor| t.to_device(device).unwrap();
                let (y, norm) = l2_normalize_stats(&dev(&x)).unwrap();
                let (yf, normf) = l2_normalize_stats(&xf).unwrap();
                check16(&format!("l2norm_fwd [{r},{d}]"), tag, seed, dtype, &y, &yf);
                // the norm stays f32: only the f32 part of the bound
                let got = norm.to_device(Device::Cpu).unwrap();
                assert_eq!(got.dtype(), DType::F32, "{tag}: norm dtype");
                common::check_kernel(
                    &format!("l2norm_fwd {dtype} norm [{r},{d}]"),
                    tag,
                    seed,
                    &got,
                    &normf,
                );
                // backward from the rounded y the forward stored, as the graph saves it
                let yr = y.to_device(Device::Cpu).unwrap().to_dtype(DType::F32);
                let dx = l2_normalize_backward(&y, &norm, &dev(&dy)).unwrap();
                let want = l2_normalize_backward(&yr, &normf, &dyf).unwrap();
                check16(
                    &format!("l2norm_bwd [{r},{d}]"),
                    tag,
                    seed,
                    dtype,
                    &dx,
                    &want,
                );
            }
        }
    });
}
