//! Launchers of `kernels/normalize.cu` on Emu or Cuda: one warp per row
//! ([`LaunchConfig::warp_per_row`]). `l2norm_fwd_f32(y, norm, x, rows, d, eps)`,
//! `l2norm_bwd_f32(dx, y, norm, dy, rows, d, eps)`; also `_f16` / `_bf16` (y, dy, dx in the
//! input's dtype, the norm and the arithmetic f32) for mixed precision.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{Result, Tensor};

const MODULE: &str = "normalize";

/// `(y, norm)`: `y = x / max(‖x‖, eps)` per row of the last dim, and the row norms.
pub(crate) fn forward(x: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let op = "l2_normalize";
    let x = kernel::typed_input(op, x)?;
    let d = *x.shape().last().unwrap_or(&1);
    let rows = kernel::rows_of(op, &x, d)?;
    let mut y = DeviceBuf::like(&x)?;
    let mut norm = DeviceBuf::f32(x.device(), &[rows])?;
    let name = format!("l2norm_fwd_{}", kernel::dtype_suffix(x.dtype()));
    // SAFETY: x and y hold rows·d elements, norm rows.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            &name,
            LaunchConfig::warp_per_row(rows),
            &mut [
                KernelArg::Out(&mut y),
                KernelArg::Out(&mut norm),
                KernelArg::In(&x),
                KernelArg::I32(rows as i32),
                KernelArg::I32(d as i32),
                KernelArg::F32(eps),
            ],
        )
    }?;
    Ok((y.into_tensor()?, norm.into_tensor()?))
}

/// `dx` from the saved `y`, the row norms and `dy`.
pub(crate) fn backward(y: &Tensor, norm: &Tensor, dy: &Tensor, eps: f32) -> Result<Tensor> {
    let op = "l2_normalize backward";
    let device = kernel::kernel_device(op, &[y, norm, dy])?;
    let (y, norm, dy) = (
        kernel::typed_input(op, y)?,
        kernel::f32_input(op, norm)?,
        kernel::typed_input(op, dy)?,
    );
    if y.shape() != dy.shape() || y.dtype() != dy.dtype() {
        crate::bail_shape!(
            op,
            "gradient {:?} {} does not match output {:?} {}",
            dy.shape(),
            dy.dtype(),
            y.shape(),
            y.dtype()
        );
    }
    let name = format!("l2norm_bwd_{}", kernel::dtype_suffix(y.dtype()));
    let d = *y.shape().last().unwrap_or(&1);
    let rows = kernel::rows_of(op, &y, d)?;
    let mut dx = DeviceBuf::like(&y)?;
    // SAFETY: y, dy, dx hold rows·d elements, norm rows.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            LaunchConfig::warp_per_row(rows),
            &mut [
                KernelArg::Out(&mut dx),
                KernelArg::In(&y),
                KernelArg::In(&norm),
                KernelArg::In(&dy),
                KernelArg::I32(rows as i32),
                KernelArg::I32(d as i32),
                KernelArg::F32(eps),
            ],
        )
    }?;
    dx.into_tensor()
}
