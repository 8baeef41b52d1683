//! Launchers of `kernels/softmax.cu` on Emu or Cuda: one warp per row
//! ([`LaunchConfig::warp_per_row`]). `softmax_fwd_f32(y, x, rows, n, causal)`,
//! `softmax_bwd_f32(dx, y, dy, rows, n)`; also `_f16` / `_bf16` (output in the input's dtype, f32
//! arithmetic) for mixed precision.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::Result;
use crate::Tensor;

const MODULE: &str = "softmax";

/// Softmax over the last dim (shape checks, incl. the causal square, by the caller).
pub(crate) fn forward(x: &Tensor, causal: bool) -> Result<Tensor> {
    let op = "softmax";
    let x = kernel::typed_input(op, x)?;
    let n = *x.shape().last().unwrap_or(&1);
    let rows = kernel::rows_of(op, &x, n)?;
    let mut y = DeviceBuf::like(&x)?;
    let name = format!("softmax_fwd_{}", kernel::dtype_suffix(x.dtype()));
    // SAFETY: x and y hold rows·n elements; warps past `rows` do nothing.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            &name,
            LaunchConfig::warp_per_row(rows),
            &mut [
                KernelArg::Out(&mut y),
                KernelArg::In(&x),
                KernelArg::I32(rows as i32),
                KernelArg::I32(n as i32),
                KernelArg::I32(causal as i32),
            ],
        )
    }?;
    y.into_tensor()
}

/// `dx = y·(dy − Σ dy·y)` per row, from the saved output `y`.
pub(crate) fn backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let op = "softmax backward";
    let device = kernel::kernel_device(op, &[y, dy])?;
    let (y, dy) = (kernel::typed_input(op, y)?, kernel::typed_input(op, dy)?);
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
    let n = *y.shape().last().unwrap_or(&1);
    let rows = kernel::rows_of(op, &y, n)?;
    let mut dx = DeviceBuf::like(&y)?;
    let name = format!("softmax_bwd_{}", kernel::dtype_suffix(y.dtype()));
    // SAFETY: all three buffers hold rows·n elements.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            LaunchConfig::warp_per_row(rows),
            &mut [
                KernelArg::Out(&mut dx),
                KernelArg::In(&y),
                KernelArg::In(&dy),
                KernelArg::I32(rows as i32),
                KernelArg::I32(n as i32),
            ],
        )
    }?;
    dx.into_tensor()
}
