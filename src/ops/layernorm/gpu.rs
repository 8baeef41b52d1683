//! Launchers of `kernels/layernorm.cu` on Emu or Cuda. Row kernels: one warp per row, blocks of
//! (32, 8). dw/db: a two-stage fixed-order reduction over row chunks of [`CHUNK`] rows (a
//! constant, so the sums do not depend on the device), no atomics. Activations (x, the residual,
//! y, dy, dx) f32, f16 or bf16 — the kernel instantiation named by their dtype — with the
//! parameters, statistics and dw/db always f32.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{Device, Result, Tensor};

const MODULE: &str = "layernorm";
/// Rows per stage-1 partial of dw/db.
const CHUNK: usize = 256;

fn rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig::warp_per_row(rows)
}

/// `(y, mean, rstd)`; shapes checked by the caller (`w`, `b` are `[d]`).
pub(crate) fn forward(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "layer_norm";
    let device = kernel::kernel_device(op, &[x, w, b])?;
    // x (and y) may be f16/bf16 activations; w, b are the f32 parameters.
    let (x, w, b) = (
        kernel::typed_input(op, x)?,
        kernel::f32_input(op, w)?,
        kernel::f32_input(op, b)?,
    );
    let d = w.numel();
    let rows = kernel::rows_of(op, &x, d)?;
    let mut y = DeviceBuf::like(&x)?;
    let mut mean = DeviceBuf::f32(device, &[rows])?;
    let mut rstd = DeviceBuf::f32(device, &[rows])?;
    let name = format!("layernorm_fwd_{}", kernel::dtype_suffix(x.dtype()));
    // SAFETY: x, y hold rows·d elements, w, b d, mean, rstd rows; warps past `rows` do nothing.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            rows_cfg(rows),
            &mut [
                KernelArg::Out(&mut y),
                KernelArg::Out(&mut mean),
                KernelArg::Out(&mut rstd),
                KernelArg::In(&x),
                KernelArg::In(&w),
                KernelArg::In(&b),
                KernelArg::I32(rows as i32),
                KernelArg::I32(d as i32),
                KernelArg::F32(eps),
            ],
        )
    }?;
    Ok((y.into_tensor()?, mean.into_tensor()?, rstd.into_tensor()?))
}

/// Fused `s = x + r; y = LN(s)`: returns `(y, s, mean, rstd)`.
pub(crate) fn residual_forward(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let op = "layer_norm_residual";
    let device = kernel::kernel_device(op, &[x, r, w, b])?;
    crate::ops::same_dtype(op, &[("input", x), ("residual", r)])?;
    let (x, r, w, b) = (
        kernel::typed_input(op, x)?,
        kernel::typed_input(op, r)?,
        kernel::f32_input(op, w)?,
        kernel::f32_input(op, b)?,
    );
    let d = w.numel();
    let rows = kernel::rows_of(op, &x, d)?;
    let mut y = DeviceBuf::like(&x)?;
    let mut s = DeviceBuf::like(&x)?;
    let mut mean = DeviceBuf::f32(device, &[rows])?;
    let mut rstd = DeviceBuf::f32(device, &[rows])?;
    let name = format!("layernorm_residual_fwd_{}", kernel::dtype_suffix(x.dtype()));
    // SAFETY: as for `forward`, with r and s of rows·d elements.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            rows_cfg(rows),
            &mut [
                KernelArg::Out(&mut y),
                KernelArg::Out(&mut s),
                KernelArg::Out(&mut mean),
                KernelArg::Out(&mut rstd),
                KernelArg::In(&x),
                KernelArg::In(&r),
                KernelArg::In(&w),
                KernelArg::In(&b),
                KernelArg::I32(rows as i32),
                KernelArg::I32(d as i32),
                KernelArg::F32(eps),
            ],
        )
    }?;
    Ok((
        y.into_tensor()?,
        s.into_tensor()?,
        mean.into_tensor()?,
        rstd.into_tensor()?,
    ))
}

/// `(dx, dw, db)` from the saved `x`, `w`, `mean`, `rstd` and the output gradient `dy`.
pub(crate) fn backward(
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "layer_norm backward";
    let device: Device = kernel::kernel_device(op, &[x, w, mean, rstd, dy])?;
    // x and dy are the activations' dtype (f32, f16 or bf16), the rest f32; dx comes back in
    // the activations' dtype, dw and db f32 (the parameters' gradients).
    let t = crate::ops::same_dtype(op, &[("input", x), ("gradient", dy)])?;
    let (x, w, mean, rstd, dy) = (
        kernel::typed_input(op, x)?,
        kernel::f32_input(op, w)?,
        kernel::f32_input(op, mean)?,
        kernel::f32_input(op, rstd)?,
        kernel::typed_input(op, dy)?,
    );
    let suffix = kernel::dtype_suffix(t);
    if dy.shape() != x.shape() {
        crate::bail_shape!(
            op,
            "gradient {:?} does not match input {:?}",
            dy.shape(),
            x.shape()
        );
    }
    let d = w.numel();
    let rows = kernel::rows_of(op, &x, d)?;
    let mut dx = DeviceBuf::like(&x)?;
    // SAFETY: dx, dy, x hold rows·d elements, w d, mean/rstd rows.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &format!("layernorm_bwd_{suffix}"),
            rows_cfg(rows),
            &mut [
                KernelArg::Out(&mut dx),
                KernelArg::In(&dy),
                KernelArg::In(&x),
                KernelArg::In(&w),
                KernelArg::In(&mean),
                KernelArg::In(&rstd),
                KernelArg::I32(rows as i32),
                KernelArg::I32(d as i32),
            ],
        )
    }?;
    let nchunks = rows.div_ceil(CHUNK).max(1);
    let mut dw_part = DeviceBuf::f32(device, &[nchunks, d])?;
    let mut db_part = DeviceBuf::f32(device, &[nchunks, d])?;
    let cfg1 = LaunchConfig {
        grid: (d.div_ceil(32).max(1) as u32, nchunks as u32, 1),
        block: (32, 8, 1),
        shared_bytes: 0,
    };
    // SAFETY: the partials hold nchunks·d elements; block (cx, c) writes row c, columns < d.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &format!("layernorm_bwd_dwdb_{suffix}"),
            cfg1,
            &mut [
                KernelArg::Out(&mut dw_part),
                KernelArg::Out(&mut db_part),
                KernelArg::In(&dy),
                KernelArg::In(&x),
                KernelArg::In(&mean),
                KernelArg::In(&rstd),
                KernelArg::I32(rows as i32),
                KernelArg::I32(d as i32),
                KernelArg::I32(CHUNK as i32),
            ],
        )
    }?;
    let mut dw = DeviceBuf::f32(device, &[d])?;
    let mut db = DeviceBuf::f32(device, &[d])?;
    // SAFETY: dw, db hold d elements, the partials nchunks·d.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            "layernorm_bwd_dwdb_reduce_f32",
            LaunchConfig::for_elements(d, 256),
            &mut [
                KernelArg::Out(&mut dw),
                KernelArg::Out(&mut db),
                KernelArg::Buf(&dw_part),
                KernelArg::Buf(&db_part),
                KernelArg::I32(nchunks as i32),
                KernelArg::I32(d as i32),
            ],
        )
    }?;
    Ok((dx.into_tensor()?, dw.into_tensor()?, db.into_tensor()?))
}
