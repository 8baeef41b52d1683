//! Launchers of `kernels/cross_entropy.cu` on Emu or Cuda, one warp per row
//! ([`LaunchConfig::warp_per_row`]): `cross_entropy_fwd_f32(loss, probs, logits, targets, rows, c)`
//! writes each row's loss and softmax (logits f32, f16 or bf16: `_f16`, `_bf16` kernels; loss
//! and probabilities always f32, the logits' gradient in their dtype); the mean over rows is the fixed-order two-stage sum of
//! `reduce.cu`. `cross_entropy_bwd_f32(dlogits, probs, targets, dloss, rows, c)` reads the output
//! gradient from device memory. Targets (checked `< c` by the caller) travel as i32, or not at all
//! when they are `0..N` (null: row r's target is r). `diagonal_hits_f32` + the fixed-order sum
//! give the contrastive loss's batch accuracies on the device.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{Result, Tensor};

const MODULE: &str = "cross_entropy";

/// The targets as a device buffer, or `None` when they are `0..N` (the contrastive loss's
/// labels: the kernels then take row r's target to be r, and nothing is uploaded).
fn targets_buf(device: crate::Device, targets: &[u32]) -> Result<Option<DeviceBuf>> {
    if targets.iter().enumerate().all(|(i, &t)| t as usize == i) {
        return Ok(None);
    }
    let t: Vec<i32> = targets.iter().map(|&t| t as i32).collect();
    DeviceBuf::from_i32(device, &t).map(Some)
}

fn targets_arg(t: &Option<DeviceBuf>) -> KernelArg<'_> {
    t.as_ref().map_or(KernelArg::Null, KernelArg::Buf)
}

/// (mean loss `[]`, probabilities `[N, C]`) of logits `[N, C]` (shapes checked by the caller).
pub(crate) fn forward(logits: &Tensor, targets: &[u32]) -> Result<(Tensor, Tensor)> {
    let op = "cross_entropy";
    let z = kernel::typed_input(op, logits)?;
    let (n, c) = (z.shape()[0], z.shape()[1]);
    kernel::i32_len(op, z.numel())?;
    let device = z.device();
    let t = targets_buf(device, targets)?;
    let mut loss = DeviceBuf::f32(device, &[n])?;
    let mut probs = DeviceBuf::f32(device, &[n, c])?;
    let name = format!("cross_entropy_fwd_{}", kernel::dtype_suffix(z.dtype()));
    // SAFETY: logits and probs hold n·c elements, loss and targets n, and targets are < c.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            LaunchConfig::warp_per_row(n),
            &mut [
                KernelArg::Out(&mut loss),
                KernelArg::Out(&mut probs),
                KernelArg::In(&z),
                targets_arg(&t),
                KernelArg::I32(n as i32),
                KernelArg::I32(c as i32),
            ],
        )
    }?;
    let mean =
        crate::ops::reduce::gpu::sum_all(&loss.into_tensor()?, false, 1.0 / n.max(1) as f32)?;
    Ok((mean, probs.into_tensor()?))
}

/// `dz = (p − onehot(t))·dL/N` in `dtype` (the logits') from the saved f32 probabilities and
/// the `[]` output gradient.
pub(crate) fn backward(
    probs: &Tensor,
    targets: &[u32],
    dloss: &Tensor,
    dtype: crate::DType,
) -> Result<Tensor> {
    let op = "cross_entropy backward";
    let device = kernel::kernel_device(op, &[probs, dloss])?;
    let (p, dl) = (kernel::f32_input(op, probs)?, kernel::f32_input(op, dloss)?);
    if dl.numel() != 1 {
        crate::bail_shape!(
            op,
            "the loss gradient must be a scalar, got {:?}",
            dl.shape()
        );
    }
    let (n, c) = (p.shape()[0], p.shape()[1]);
    let t = targets_buf(device, targets)?;
    let mut dz = DeviceBuf::typed(device, p.shape(), dtype)?;
    let name = format!("cross_entropy_bwd_{}", kernel::dtype_suffix(dtype));
    // SAFETY: probs and dz hold n·c elements, targets n (each < c), dloss one.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            LaunchConfig::warp_per_row(n),
            &mut [
                KernelArg::Out(&mut dz),
                KernelArg::In(&p),
                targets_arg(&t),
                KernelArg::In(&dl),
                KernelArg::I32(n as i32),
                KernelArg::I32(c as i32),
            ],
        )
    }?;
    dz.into_tensor()
}

/// The fraction of rows (`transpose`: columns) of square logits `[N, N]` whose diagonal entry
/// is strictly the largest, as a `[]` tensor on the logits' device (no host round trip).
pub(crate) fn diagonal_accuracy(logits: &Tensor, transpose: bool) -> Result<Tensor> {
    let op = "contrastive accuracy";
    let z = kernel::f32_input(op, logits)?;
    let n = z.shape()[0];
    kernel::i32_len(op, z.numel())?;
    let device = z.device();
    let mut hits = DeviceBuf::f32(device, &[n])?;
    // SAFETY: logits hold n·n elements and hits n; warp i reads row/column i only.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            "diagonal_hits_f32",
            LaunchConfig::warp_per_row(n),
            &mut [
                KernelArg::Out(&mut hits),
                KernelArg::In(&z),
                KernelArg::I32(n as i32),
                KernelArg::I32(transpose as i32),
            ],
        )
    }?;
    crate::ops::reduce::gpu::sum_all(&hits.into_tensor()?, false, 1.0 / n.max(1) as f32)
}
