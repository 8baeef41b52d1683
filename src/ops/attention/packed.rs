//! Self-attention straight from the packed in-projection as one graph op, on every device:
//! fused kernels for forward and for backward on Emu and Cuda (`kernels/attention.cu`: f32 on
//! FMA, f16/bf16 on the tensor cores; issue 13), and on the CPU the same shape (`fused.rs`: per
//! (batch, head) GEMMs on strided operands with the scores in cache):
//!
//! ```text
//! qkv [B·T, 3·H·dh] ──▶ out [B·T, H·dh] (heads merged) and lse [B, H, T] (f32)
//! saved for backward: qkv, out, lse — never the B·H·T×T probabilities
//! ```
//!
//! q, k and v are read in place through their columns (row `b·T + t`; columns `h·dh ..`,
//! `D + h·dh ..`, `2D + h·dh ..`, as [`super::split_qkv_heads`] defines them); the backward
//! writes dqkv in the same layout. `out` equals `merge_heads(attention(split_qkv_heads(qkv)))`,
//! the composed path, which stays the reference. The kernels take head dims up to 64
//! ([`MAX_HEAD_DIM`]; the CPU any); anything else is a clear error, so a caller can fall back to
//! the composed path ([`supported`]).

use crate::device::kernel::{self, runs_kernels, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::graph::{Graph, Op, Var};
use crate::ops::cpu_input;
use crate::{bail_shape, Error, Result, Tensor};

const MODULE: &str = "attention";
/// Rows a block owns: 32 for the f32 kernels (FMA, a warp per 8 rows), 64 for the f16/bf16
/// kernels (tensor cores, a warp per 16 rows: the m of mma.m16n8k16).
fn tile(dtype: crate::DType) -> usize {
    match dtype {
        crate::DType::F32 => 32,
        _ => 64,
    }
}
/// The largest head dim the fused kernels take (two features per lane of a warp).
pub const MAX_HEAD_DIM: usize = 64;

pub struct PackedAttentionOp {
    b: usize,
    h: usize,
    causal: bool,
}

/// (B, T, H, dh) of `qkv` [B·T, 3·H·dh] for `b` batches of `h` heads, or an error naming the op,
/// the shape and what is supported.
fn dims(op: &'static str, qkv: &Tensor, b: usize, h: usize) -> Result<[usize; 4]> {
    let on_kernels = runs_kernels(qkv.device());
    let s = qkv.shape();
    if s.len() != 2
        || b == 0
        || h == 0
        || !s[0].is_multiple_of(b)
        || !s[1].is_multiple_of(3 * h)
        || s[1] == 0
    {
        bail_shape!(
            op,
            "expected qkv [B·T, 3·H·dh] with B = {b}, H = {h}, got {s:?}"
        );
    }
    let (t, dh) = (s[0] / b, s[1] / (3 * h));
    if on_kernels {
        if dh > MAX_HEAD_DIM {
            bail_shape!(
                op,
                "head dim {dh} (qkv {s:?}, {h} heads): the fused attention kernels take head dims up to {MAX_HEAD_DIM}"
            );
        }
        kernel::i32_len(op, qkv.numel())?;
    }
    Ok([b, t, h, dh])
}

/// Whether [`Graph::attention_packed`] takes `qkv` of `b` batches and `h` heads (on a kernel
/// device: a head dim the kernels take; on the CPU: f32): the test
/// [`crate::nn::MultiheadAttention`] makes before choosing this path.
pub fn supported(qkv: &Tensor, b: usize, h: usize) -> bool {
    let device_ok = match qkv.device() {
        crate::Device::Cpu => qkv.dtype() == crate::DType::F32,
        d => runs_kernels(d),
    };
    device_ok && dims("attention_packed", qkv, b, h).is_ok()
}

fn grid(t: usize, bh: usize, dtype: crate::DType) -> LaunchConfig {
    LaunchConfig {
        grid: (t.div_ceil(tile(dtype)).max(1) as u32, bh as u32, 1),
        block: (32, 4, 1),
        shared_bytes: 0,
    }
}

/// (out [B·T, H·dh], lse [B·H·T]) of `qkv` on its kernel device.
pub fn forward(qkv: &Tensor, b: usize, h: usize, causal: bool) -> Result<(Tensor, Tensor)> {
    let op = "attention_packed";
    let [b, t, h, dh] = dims(op, qkv, b, h)?;
    if !runs_kernels(qkv.device()) {
        let qkv = cpu_input(op, qkv)?;
        let (out, lse) = super::fused::forward(qkv.f32s(op)?, b, t, h, dh, causal);
        return Ok((
            Tensor::from_f32(out, &[b * t, h * dh]),
            Tensor::from_f32(lse, &[b * h * t]),
        ));
    }
    let qkv = kernel::typed_input(op, qkv)?;
    let mut out = DeviceBuf::typed(qkv.device(), &[b * t, h * dh], qkv.dtype())?;
    let mut lse = DeviceBuf::f32(qkv.device(), &[b * h * t])?;
    let name = format!("attn_fwd_{}", kernel::dtype_suffix(qkv.dtype()));
    // SAFETY: qkv holds B·T·3·H·dh elements, out B·T·H·dh, lse B·H·T; the grid covers the
    // query tiles of every (batch, head) and each block writes only its own rows.
    unsafe {
        kernel::launch(
            qkv.device(),
            MODULE,
            &name,
            grid(t, b * h, qkv.dtype()),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::Out(&mut lse),
                KernelArg::In(&qkv),
                KernelArg::I32(t as i32),
                KernelArg::I32(h as i32),
                KernelArg::I32(dh as i32),
                KernelArg::I32(causal as i32),
                KernelArg::F32(1.0 / (dh as f32).sqrt()),
            ],
        )
    }?;
    Ok((out.into_tensor()?, lse.into_tensor()?))
}

/// dqkv [B·T, 3·H·dh] from the forward's qkv, out and lse and the output gradient `dout`.
pub fn backward(
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    b: usize,
    h: usize,
    causal: bool,
) -> Result<Tensor> {
    let op = "attention_packed backward";
    let [b, t, h, dh] = dims(op, qkv, b, h)?;
    if !runs_kernels(qkv.device()) {
        crate::ops::same_device(op, &[qkv, out, lse, dout])?;
        let (qkv, lse, dout) = (
            cpu_input(op, qkv)?,
            cpu_input(op, lse)?,
            cpu_input(op, dout)?,
        );
        if dout.shape() != [b * t, h * dh] || lse.numel() != b * h * t {
            bail_shape!(
                op,
                "gradient {:?} and lse {:?} do not match qkv {:?} ({h} heads)",
                dout.shape(),
                lse.shape(),
                qkv.shape()
            );
        }
        let dqkv = super::fused::backward(
            qkv.f32s(op)?,
            lse.f32s(op)?,
            dout.f32s(op)?,
            b,
            t,
            h,
            dh,
            causal,
        );
        return Ok(Tensor::from_f32(dqkv, qkv.shape()));
    }
    let device = kernel::kernel_device(op, &[qkv, out, lse, dout])?;
    let (qkv, out, dout) = (
        kernel::typed_input(op, qkv)?,
        kernel::typed_input(op, out)?,
        kernel::typed_input(op, dout)?,
    );
    let lse = kernel::f32_input(op, lse)?;
    if dout.shape() != out.shape() || dout.dtype() != out.dtype() || out.dtype() != qkv.dtype() {
        bail_shape!(
            op,
            "gradient {:?} {} does not match the output {:?} {} of qkv {:?} {}",
            dout.shape(),
            dout.dtype(),
            out.shape(),
            out.dtype(),
            qkv.shape(),
            qkv.dtype()
        );
    }
    let sfx = kernel::dtype_suffix(qkv.dtype());
    let mut dsum = DeviceBuf::f32(device, &[b * h * t])?;
    // SAFETY: dout and out hold B·T·H·dh elements, dsum B·H·T; one warp per (row, head).
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &format!("attn_bwd_dot_{sfx}"),
            LaunchConfig::warp_per_row(b * t * h),
            &mut [
                KernelArg::Out(&mut dsum),
                KernelArg::In(&dout),
                KernelArg::In(&out),
                KernelArg::I32((b * t) as i32),
                KernelArg::I32(t as i32),
                KernelArg::I32(h as i32),
                KernelArg::I32(dh as i32),
            ],
        )
    }?;
    let mut dqkv = DeviceBuf::like(&qkv)?;
    let scale = 1.0 / (dh as f32).sqrt();
    for kernel_name in ["attn_bwd_dkv", "attn_bwd_dq"] {
        // SAFETY: qkv and dqkv hold B·T·3·H·dh elements, dout B·T·H·dh, lse and dsum B·H·T.
        // The dkv blocks write the k and v columns of their key rows, the dq blocks the q
        // columns of their query rows: together every element of dqkv, each once.
        unsafe {
            kernel::launch(
                device,
                MODULE,
                &format!("{kernel_name}_{sfx}"),
                grid(t, b * h, qkv.dtype()),
                &mut [
                    KernelArg::Out(&mut dqkv),
                    KernelArg::In(&qkv),
                    KernelArg::In(&dout),
                    KernelArg::In(&lse),
                    KernelArg::Buf(&dsum),
                    KernelArg::I32(t as i32),
                    KernelArg::I32(h as i32),
                    KernelArg::I32(dh as i32),
                    KernelArg::I32(causal as i32),
                    KernelArg::F32(scale),
                ],
            )
        }?;
    }
    dqkv.into_tensor()
}

impl<'m> Graph<'m> {
    /// Self-attention of the packed projection `qkv` [B·T, 3·H·dh] (`b` batches, `h` heads,
    /// causal for the text tower) with heads merged, [B·T, H·dh]: fused kernels on Emu and Cuda,
    /// per-head GEMMs on the CPU, keeping only qkv, the output and the per-row log-sum-exp for
    /// backward (module doc).
    pub fn attention_packed(&self, qkv: &Var, b: usize, h: usize, causal: bool) -> Result<Var> {
        let qkv_t = qkv.tensor().try_contiguous()?;
        let (out, lse) = forward(&qkv_t, b, h, causal)?;
        Ok(self.record(
            Op::PackedAttention(PackedAttentionOp { b, h, causal }),
            &[qkv],
            vec![qkv_t, out.clone(), lse],
            out,
        ))
    }
}

impl PackedAttentionOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let [qkv, out, lse] = saved else {
            return Err(Error::Msg(format!(
                "attention_packed backward: {} saved tensors, expected qkv, out, lse",
                saved.len()
            )));
        };
        Ok(vec![Some(backward(
            qkv,
            out,
            lse,
            gout,
            self.b,
            self.h,
            self.causal,
        )?)])
    }
}
