//! Launchers of the full reductions in `kernels/reduce.cu` on Emu or Cuda: a fixed-order
//! two-stage sum (stage 1: blocks of 256 threads over chunks of [`CHUNK`] elements → partials;
//! stage 2: one block over the partials). The chunk is a constant, so results never depend on
//! the device or scheduling; no atomics.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{Result, Tensor};

const MODULE: &str = "reduce";
/// Elements per stage-1 block.
const CHUNK: usize = 4096;

fn one_stage(
    out: &mut DeviceBuf,
    x: KernelArg,
    dtype: crate::DType,
    n: usize,
    chunk: usize,
    square: bool,
    scale: f32,
) -> Result<()> {
    let blocks = n.div_ceil(chunk.max(1)).max(1);
    let cfg = LaunchConfig {
        grid: (blocks as u32, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    // SAFETY: x holds n elements and out `blocks`; block c reads [c·chunk, min(n, (c+1)·chunk)).
    unsafe {
        kernel::launch(
            out.device(),
            MODULE,
            &format!("reduce_sum_{}", kernel::dtype_suffix(dtype)),
            cfg,
            &mut [
                KernelArg::Out(out),
                x,
                KernelArg::I32(n as i32),
                KernelArg::I32(chunk.max(1) as i32),
                KernelArg::I32(square as i32),
                KernelArg::F32(scale),
            ],
        )
    }
}

/// `scale·Σ x` (or `scale·Σ x²`) over all elements, as an f32 `[]` tensor on x's device (x f32,
/// f16 or bf16, summed in f32).
pub(crate) fn sum_all(x: &Tensor, square: bool, scale: f32) -> Result<Tensor> {
    let op = "sum";
    let x = kernel::typed_input(op, x)?;
    let n = x.numel();
    kernel::i32_len(op, n)?;
    let device = x.device();
    let nparts = n.div_ceil(CHUNK).max(1);
    let mut part = DeviceBuf::f32(device, &[nparts])?;
    one_stage(
        &mut part,
        KernelArg::In(&x),
        x.dtype(),
        n,
        CHUNK,
        square,
        1.0,
    )?;
    let mut out = DeviceBuf::f32(device, &[])?;
    one_stage(
        &mut out,
        KernelArg::Buf(&part),
        crate::DType::F32,
        nparts,
        nparts,
        false,
        scale,
    )?;
    out.into_tensor()
}

/// `[outer, len, inner]` sizes of a launch around one axis, checked against the kernels' `int`.
fn axis_args(
    op: &'static str,
    outer: usize,
    len: usize,
    inner: usize,
) -> Result<[KernelArg<'static>; 3]> {
    kernel::i32_len(op, outer.saturating_mul(len).saturating_mul(inner.max(1)))?;
    Ok([
        KernelArg::I32(outer as i32),
        KernelArg::I32(len as i32),
        KernelArg::I32(inner as i32),
    ])
}

/// Sum (or mean) over the middle axis of `x` seen as `[outer, len, inner]`, in the CPU's order;
/// the output has `out_shape` (`outer·inner` elements).
pub(crate) fn sum_axis(
    x: &Tensor,
    (outer, len, inner): (usize, usize, usize),
    mean: bool,
    out_shape: &[usize],
) -> Result<Tensor> {
    let op = if mean { "mean" } else { "sum" };
    let x = kernel::typed_input(op, x)?;
    let [o, l, i] = axis_args(op, outer, len, inner)?;
    let mut out = DeviceBuf::typed(x.device(), out_shape, x.dtype())?;
    // SAFETY: x holds outer·len·inner elements and out outer·inner; thread i < outer·inner reads
    // x[o·len·inner + l·inner + e] for l < len.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            &format!("sum_axis_{}", kernel::dtype_suffix(x.dtype())),
            LaunchConfig::for_elements(outer * inner, 256),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&x),
                o,
                l,
                i,
                KernelArg::I32(mean as i32),
                KernelArg::F32(1.0 / len.max(1) as f32),
            ],
        )
    }?;
    out.into_tensor()
}

/// `scale·g` repeated `len` times along the middle axis of `[outer, len, inner]` = `out_shape`.
pub(crate) fn expand_axis(
    g: &Tensor,
    (outer, len, inner): (usize, usize, usize),
    scale: f32,
    out_shape: &[usize],
) -> Result<Tensor> {
    let op = "reduce backward";
    let g = kernel::typed_input(op, g)?;
    if g.numel() != outer * inner {
        crate::bail_shape!(
            op,
            "gradient {:?} does not have the {outer}×{inner} elements of {out_shape:?} without its axis",
            g.shape()
        );
    }
    let [o, l, i] = axis_args(op, outer, len, inner)?;
    let mut out = DeviceBuf::typed(g.device(), out_shape, g.dtype())?;
    // SAFETY: out holds outer·len·inner elements and g outer·inner; indices stay below those.
    unsafe {
        kernel::launch(
            g.device(),
            MODULE,
            &format!("expand_axis_{}", kernel::dtype_suffix(g.dtype())),
            LaunchConfig::for_elements(outer * len * inner, 256),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&g),
                o,
                l,
                i,
                KernelArg::F32(scale),
            ],
        )
    }?;
    out.into_tensor()
}
