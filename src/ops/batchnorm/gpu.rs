//! Launchers of `kernels/batchnorm.cu` on Emu or Cuda: per-channel reductions with one block of
//! 256 threads per channel (fixed order, no atomics), elementwise kernels with one thread per
//! element. Activations (x, y, dy, dx) f32, f16 or bf16 — the kernels named by their dtype —
//! with the statistics, weight, bias and their gradients f32.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{Result, Tensor};

const MODULE: &str = "batchnorm";

fn per_channel(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (c.max(1) as u32, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    }
}

fn dims(x: &Tensor) -> (usize, usize, usize) {
    let s = x.shape();
    (s[0], s[1], s[2] * s[3])
}

/// `y = (x − mean)·rstd·w + b` per channel.
pub(crate) fn apply(
    x: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    w: &Tensor,
    b: &Tensor,
) -> Result<Tensor> {
    let op = "batch_norm2d";
    let device = kernel::kernel_device(op, &[x, mean, rstd, w, b])?;
    let x = kernel::typed_input(op, x)?;
    let [mean, rstd, w, b] = [mean, rstd, w, b].map(|t| kernel::f32_input(op, t));
    let (mean, rstd, w, b) = (mean?, rstd?, w?, b?);
    let (_, c, hw) = dims(&x);
    let total = kernel::i32_len(op, x.numel())?;
    let mut y = DeviceBuf::like(&x)?;
    let name = format!("batchnorm_apply_{}", kernel::dtype_suffix(x.dtype()));
    // SAFETY: x, y hold total elements; the [C] operands are indexed by (i / hw) % c < c.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            LaunchConfig::for_elements(x.numel(), 256),
            &mut [
                KernelArg::Out(&mut y),
                KernelArg::In(&x),
                KernelArg::In(&mean),
                KernelArg::In(&rstd),
                KernelArg::In(&w),
                KernelArg::In(&b),
                KernelArg::I32(c as i32),
                KernelArg::I32(hw as i32),
                KernelArg::I32(total),
            ],
        )
    }?;
    y.into_tensor()
}

/// Training forward: `(y, batch mean, biased batch var, rstd)`, statistics `[C]` on x's device.
pub(crate) fn train_forward(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let op = "batch_norm2d";
    let xc = kernel::typed_input(op, x)?;
    let (n, c, hw) = dims(&xc);
    kernel::i32_len(op, xc.numel())?;
    let device = xc.device();
    let mut mean = DeviceBuf::f32(device, &[c])?;
    let mut var = DeviceBuf::f32(device, &[c])?;
    let mut rstd = DeviceBuf::f32(device, &[c])?;
    // SAFETY: x holds n·c·hw elements, the statistics c; block ch touches channel ch only.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &format!("batchnorm_stats_{}", kernel::dtype_suffix(xc.dtype())),
            per_channel(c),
            &mut [
                KernelArg::Out(&mut mean),
                KernelArg::Out(&mut var),
                KernelArg::Out(&mut rstd),
                KernelArg::In(&xc),
                KernelArg::I32(n as i32),
                KernelArg::I32(c as i32),
                KernelArg::I32(hw as i32),
                KernelArg::F32(eps),
            ],
        )
    }?;
    let (mean, var, rstd) = (mean.into_tensor()?, var.into_tensor()?, rstd.into_tensor()?);
    let y = apply(&xc, &mean, &rstd, w, b)?;
    Ok((y, mean, var, rstd))
}

/// `(dx, dw, db)`; `training` selects the batch-statistics formula for dx.
pub(crate) fn backward(
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    training: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "batch_norm2d backward";
    let device = kernel::kernel_device(op, &[x, w, mean, rstd, dy])?;
    let t = crate::ops::same_dtype(op, &[("input", x), ("gradient", dy)])?;
    let (x, dy) = (kernel::typed_input(op, x)?, kernel::typed_input(op, dy)?);
    let [w, mean, rstd] = [w, mean, rstd].map(|t| kernel::f32_input(op, t));
    let (w, mean, rstd) = (w?, mean?, rstd?);
    let suffix = kernel::dtype_suffix(t);
    let (n, c, hw) = dims(&x);
    let total = kernel::i32_len(op, x.numel())?;
    let mut sum_dy = DeviceBuf::f32(device, &[c])?;
    let mut sum_dyx = DeviceBuf::f32(device, &[c])?;
    // SAFETY: dy, x hold n·c·hw elements, the [C] buffers c; block ch touches channel ch only.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &format!("batchnorm_bwd_sums_{suffix}"),
            per_channel(c),
            &mut [
                KernelArg::Out(&mut sum_dy),
                KernelArg::Out(&mut sum_dyx),
                KernelArg::In(&dy),
                KernelArg::In(&x),
                KernelArg::In(&mean),
                KernelArg::In(&rstd),
                KernelArg::I32(n as i32),
                KernelArg::I32(c as i32),
                KernelArg::I32(hw as i32),
            ],
        )
    }?;
    let mut dx = DeviceBuf::like(&x)?;
    // SAFETY: as above; elementwise over total elements.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &format!("batchnorm_bwd_dx_{suffix}"),
            LaunchConfig::for_elements(x.numel(), 256),
            &mut [
                KernelArg::Out(&mut dx),
                KernelArg::In(&dy),
                KernelArg::In(&x),
                KernelArg::In(&mean),
                KernelArg::In(&rstd),
                KernelArg::In(&w),
                KernelArg::Buf(&sum_dy),
                KernelArg::Buf(&sum_dyx),
                KernelArg::I32(c as i32),
                KernelArg::I32(hw as i32),
                KernelArg::I32(total),
                KernelArg::F32(1.0 / (n * hw).max(1) as f32),
                KernelArg::I32(training as i32),
            ],
        )
    }?;
    Ok((
        dx.into_tensor()?,
        sum_dyx.into_tensor()?,
        sum_dy.into_tensor()?,
    ))
}
