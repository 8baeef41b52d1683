//! Launchers of the head layout kernels in `kernels/reduce.cu` on Emu or Cuda (one thread per
//! element, blocks of 256): `head_split_fwd_f32` / `head_split_bwd_f32`, see [`super::split_heads`].

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{Result, Tensor};

const MODULE: &str = "reduce";

/// `(B, T, H, Dh, S)` → one launch of `kernel` reading `x` into an output of `out_shape`.
fn launch(kernel_name: &str, x: &Tensor, out_shape: &[usize], dims: [usize; 5]) -> Result<Tensor> {
    let op = "split_heads";
    let x = kernel::f32_input(op, x)?;
    let n = kernel::i32_len(op, x.numel())? as usize;
    let mut out = DeviceBuf::f32(x.device(), out_shape)?;
    let [b, t, h, dh, s] = dims;
    // SAFETY: both sides hold S·B·H·T·Dh elements (checked by the callers), indices < that.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            kernel_name,
            LaunchConfig::for_elements(n, 256),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&x),
                KernelArg::I32(b as i32),
                KernelArg::I32(t as i32),
                KernelArg::I32(h as i32),
                KernelArg::I32(dh as i32),
                KernelArg::I32(s as i32),
            ],
        )
    }?;
    out.into_tensor()
}

/// `[B·T, S·D]` → `[S, B, H, T, Dh]`.
pub(crate) fn split(x: &Tensor, dims: [usize; 5]) -> Result<Tensor> {
    let [b, t, h, dh, s] = dims;
    launch("head_split_fwd_f32", x, &[s, b, h, t, dh], dims)
}

/// `[S, B, H, T, Dh]` → `[B·T, S·D]`.
pub(crate) fn unsplit(x: &Tensor, dims: [usize; 5]) -> Result<Tensor> {
    let [b, t, h, dh, s] = dims;
    launch("head_split_bwd_f32", x, &[b * t, s * h * dh], dims)
}
