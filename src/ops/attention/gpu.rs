//! Attention on Emu or Cuda. The head layout kernels of `kernels/reduce.cu` (one thread per
//! element, blocks of 256; f32, f16 or bf16 copies): `head_split_{fwd,bwd}_<dtype>`, see
//! [`super::split_qkv_heads`]. And scaled dot-product attention composed from batched device
//! GEMMs (cuBLAS on Cuda, the CPU GEMM on Emu) and the kernels of `elementwise.cu` (scale) and
//! `softmax.cu` (the causal mask is the softmax kernel's), every (batch, head) one problem of the
//! batch:
//!
//! ```text
//! forward:  S = q·kᵀ;  P = softmax(S/√Dh);  out = P·v
//! backward: dv = Pᵀ·dout;  dP = dout·vᵀ;  dS = P∘(dP − rowsum(dP∘P));  dq = (dS·k)/√Dh;
//!           dk = (dSᵀ·q)/√Dh
//! ```
//!
//! Not fused (no flash attention): S and P are materialised, [B·H, Tq, Tk] each, which for CLIP's
//! sequence lengths (50–257 image tokens, 77 text tokens) is small beside the activations.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{Result, Tensor};

const MODULE: &str = "reduce";

/// `(B, T, H, Dh, S)` → one launch of `kernel` reading `x` into an output of `out_shape`.
fn launch(stem: &str, x: &Tensor, out_shape: &[usize], dims: [usize; 5]) -> Result<Tensor> {
    let op = "split_heads";
    let x = kernel::typed_input(op, x)?;
    let n = kernel::i32_len(op, x.numel())? as usize;
    let mut out = DeviceBuf::typed(x.device(), out_shape, x.dtype())?;
    let kernel_name = format!("{stem}_{}", kernel::dtype_suffix(x.dtype()));
    let [b, t, h, dh, s] = dims;
    // SAFETY: both sides hold S·B·H·T·Dh elements (checked by the callers), indices < that.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            &kernel_name,
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
    launch("head_split_fwd", x, &[s, b, h, t, dh], dims)
}

/// `[S, B, H, T, Dh]` → `[B·T, S·D]`.
pub(crate) fn unsplit(x: &Tensor, dims: [usize; 5]) -> Result<Tensor> {
    let [b, t, h, dh, s] = dims;
    launch("head_split_bwd", x, &[b * t, s * h * dh], dims)
}

/// (out `[B, H, Tq, Dv]`, P `[B·H, Tq, Tk]`) for q, k, v as `[B·H, T, D]` (shapes checked by the
/// caller); `out_shape` is the 4-D output shape.
pub(crate) fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    out_shape: &[usize],
) -> Result<(Tensor, Tensor)> {
    use crate::ops::matmul::matmul;
    let inv = 1.0 / (q.shape()[2] as f32).sqrt();
    let s = crate::ops::unary::scale(&matmul(q, k, false, true)?, inv)?;
    let p = crate::ops::softmax::softmax(&s, causal)?;
    drop(s);
    let out = matmul(&p, v, false, false)?.reshape(out_shape.to_vec())?;
    Ok((out, p))
}

/// (dq, dk, dv) as `[B·H, T, D]` from q, k, v, P and dout in the same 3-D layout; each only when
/// `needs` asks for it.
pub(crate) fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &Tensor,
    dout: &Tensor,
    needs: &[bool],
) -> Result<[Option<Tensor>; 3]> {
    use crate::ops::matmul::matmul;
    use crate::ops::unary::scale;
    let inv = 1.0 / (q.shape()[2] as f32).sqrt();
    let dv = needs[2].then(|| matmul(p, dout, true, false)).transpose()?;
    if !needs[0] && !needs[1] {
        return Ok([None, None, dv]);
    }
    let dp = matmul(dout, v, false, true)?;
    let ds = crate::ops::softmax::softmax_backward(p, &dp)?;
    drop(dp);
    let dq = needs[0]
        .then(|| scale(&matmul(&ds, k, false, false)?, inv))
        .transpose()?;
    let dk = needs[1]
        .then(|| scale(&matmul(&ds, q, true, false)?, inv))
        .transpose()?;
    Ok([dq, dk, dv])
}
