//! Helpers of the 16-bit kernel tests (tests/kernels_half*.rs): inputs rounded to the 16-bit
//! format, and the per-element bound of a 16-bit output against the f32 reference computed from
//! the same rounded inputs (tests/kernels_half.rs's header derives it).
#![allow(dead_code)]

use clipcu::{DType, Device, Tensor};

/// Half an ulp of the format, relative.
pub fn unit(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        DType::F32 => 2f64.powi(-24),
    }
}

/// A fresh random tensor rounded to `dtype`, and the same rounded values in f32.
pub fn rounded(shape: &[usize], std: f32, seed: u64, dtype: DType) -> (Tensor, Tensor) {
    let h = Tensor::randn(shape.to_vec(), std, seed).to_dtype(dtype);
    let f = h.to_dtype(DType::F32);
    (h, f)
}

/// The f32 reordering part of the bound, relative to the reference's rms (see the header).
pub const F32_PART: f64 = 1e-5;

/// Every element of the 16-bit `out` against the f32 `reference` within the header's bound.
pub fn check16(what: &str, tag: &str, seed: u64, dtype: DType, out: &Tensor, reference: &Tensor) {
    check16_tol(what, tag, seed, dtype, out, reference, F32_PART)
}

/// [`check16`] with another f32 part (relative to the reference's rms), for a kernel whose f32
/// instantiation is itself held to a looser bound against the CPU (the caller says why).
pub fn check16_tol(
    what: &str,
    tag: &str,
    seed: u64,
    dtype: DType,
    out: &Tensor,
    reference: &Tensor,
    f32_part: f64,
) {
    assert_eq!(out.dtype(), dtype, "{what} on {tag}: output dtype");
    assert_eq!(out.shape(), reference.shape(), "{what} on {tag}: shape");
    let got = out
        .to_device(Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .to_vec();
    let want = reference.to_vec();
    let rms =
        (want.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / want.len().max(1) as f64).sqrt();
    let subnormal = if dtype == DType::F16 {
        2f64.powi(-25)
    } else {
        0.0
    };
    let u = unit(dtype);
    for (i, (&o, &r)) in got.iter().zip(&want).enumerate() {
        let bound = u * (r as f64).abs() + subnormal + f32_part * rms;
        let diff = (o as f64 - r as f64).abs();
        // `!(<=)`: a NaN fails
        assert!(
            diff <= bound,
            "{what} {dtype} on {tag}, seed={seed}: element {i} is {o}, reference {r} (|Δ| {diff:.3e} > bound {bound:.3e})"
        );
    }
}
