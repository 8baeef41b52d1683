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
    device: crate::Device,
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
            device,
            MODULE,
            "reduce_sum_f32",
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

/// `scale·Σ x` (or `scale·Σ x²`) over all elements, as a `[]` tensor on x's device.
pub(crate) fn sum_all(x: &Tensor, square: bool, scale: f32) -> Result<Tensor> {
    let op = "sum";
    let x = kernel::f32_input(op, x)?;
    let n = x.numel();
    kernel::i32_len(op, n)?;
    let device = x.device();
    let nparts = n.div_ceil(CHUNK).max(1);
    let mut part = DeviceBuf::f32(device, &[nparts])?;
    one_stage(&mut part, KernelArg::In(&x), device, n, CHUNK, square, 1.0)?;
    let mut out = DeviceBuf::f32(device, &[])?;
    one_stage(
        &mut out,
        KernelArg::Buf(&part),
        device,
        nparts,
        nparts,
        false,
        scale,
    )?;
    out.into_tensor()
}
