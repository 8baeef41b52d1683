//! Launchers of `kernels/layout.cu` on Emu or Cuda (one thread per output element, blocks of
//! 256): concat (one launch per part into a NaN-poisoned output that the parts tile exactly),
//! a narrowed slice made contiguous, narrow's gradient (the slice padded with zeros), and the
//! swap of the two leading dims of `[A, B, C]`. Shapes are checked by the callers.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::ops::reduce::split3;
use crate::{Result, Tensor};

const MODULE: &str = "layout";
const THREADS: u32 = 256;

fn i(v: usize) -> KernelArg<'static> {
    KernelArg::I32(v as i32)
}

/// `parts` joined along `axis` into `out_shape`.
pub(crate) fn concat(parts: &[&Tensor], axis: usize, out_shape: &[usize]) -> Result<Tensor> {
    let op = "concat";
    let device = kernel::kernel_device(op, parts)?;
    let (outer, total, inner) = split3(out_shape, axis);
    kernel::i32_len(op, outer * total * inner)?;
    let mut out = DeviceBuf::f32(device, out_shape)?;
    let mut start = 0;
    for p in parts {
        let p = kernel::f32_input(op, p)?;
        let len = p.shape()[axis];
        // SAFETY: the part holds outer·len·inner elements, out outer·total·inner, and
        // start + len ≤ total, so every index formed is in range.
        unsafe {
            kernel::launch(
                device,
                MODULE,
                "concat_fwd_f32",
                LaunchConfig::for_elements(p.numel(), THREADS),
                &mut [
                    KernelArg::Out(&mut out),
                    KernelArg::In(&p),
                    i(outer),
                    i(len),
                    i(inner),
                    i(total),
                    i(start),
                ],
            )
        }?;
        start += len;
    }
    out.into_tensor()
}

/// `x.narrow(axis, start, len)` as a new contiguous tensor.
pub(crate) fn narrow(x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    let op = "narrow";
    let x = kernel::f32_input(op, x)?;
    let (outer, full, inner) = split3(x.shape(), axis);
    kernel::i32_len(op, x.numel())?;
    let mut shape = x.shape().to_vec();
    shape[axis] = len;
    let mut out = DeviceBuf::f32(x.device(), &shape)?;
    // SAFETY: out holds outer·len·inner elements, x outer·full·inner, start + len ≤ full.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            "narrow_fwd_f32",
            LaunchConfig::for_elements(outer * len * inner, THREADS),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&x),
                i(outer),
                i(full),
                i(len),
                i(inner),
                i(start),
            ],
        )
    }?;
    out.into_tensor()
}

/// Zeros of `shape` with `g` written at `start..start + len` along `axis`.
pub(crate) fn narrow_backward(
    g: &Tensor,
    shape: &[usize],
    axis: usize,
    start: usize,
) -> Result<Tensor> {
    let op = "narrow backward";
    let g = kernel::f32_input(op, g)?;
    let (outer, full, inner) = split3(shape, axis);
    let len = g.shape()[axis];
    kernel::i32_len(op, outer * full * inner)?;
    let mut dx = DeviceBuf::f32(g.device(), shape)?;
    // SAFETY: dx holds outer·full·inner elements, g outer·len·inner, start + len ≤ full.
    unsafe {
        kernel::launch(
            g.device(),
            MODULE,
            "narrow_bwd_f32",
            LaunchConfig::for_elements(outer * full * inner, THREADS),
            &mut [
                KernelArg::Out(&mut dx),
                KernelArg::In(&g),
                i(outer),
                i(full),
                i(len),
                i(inner),
                i(start),
            ],
        )
    }?;
    dx.into_tensor()
}

/// `x` seen as `[a, b, c]` (its element count must be a·b·c) → `[b, a, c]`.
pub(crate) fn transpose01(x: &Tensor, a: usize, b: usize, c: usize) -> Result<Tensor> {
    let op = "transpose01";
    let x = kernel::f32_input(op, x)?;
    if x.numel() != a * b * c {
        crate::bail_shape!(op, "{:?} is not [{a}, {b}, {c}]", x.shape());
    }
    kernel::i32_len(op, x.numel())?;
    let mut out = DeviceBuf::f32(x.device(), &[b, a, c])?;
    // SAFETY: both buffers hold a·b·c elements; indices stay below that.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            "transpose01_f32",
            LaunchConfig::for_elements(x.numel(), THREADS),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&x),
                i(a),
                i(b),
                i(c),
            ],
        )
    }?;
    out.into_tensor()
}
