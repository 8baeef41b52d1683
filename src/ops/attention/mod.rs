//! Multi-head scaled dot-product attention on split heads: q [B, H, Tq, Dh], k [B, H, Tk, Dh],
//! v [B, H, Tk, Dv] → [B, H, Tq, Dv], with `P = softmax(q·kᵀ/√Dh)` (optionally causal, Tq = Tk)
//! and `out = P·v`. Saves q, k, v and P. Backward:
//! `dv = Pᵀ·dout`, `dP = dout·vᵀ`, `dS = P∘(dP − rowsum(dP∘P))`, `dq = dS·k/√Dh`, `dk = dSᵀ·q/√Dh`.
//! Every (batch, head) is an independent GEMM problem, batched over B·H. On Emu and Cuda the same
//! steps are device GEMMs, the scale kernel and the softmax kernels (`gpu.rs`).

pub mod fused;
pub(crate) mod gpu;
pub mod packed;

use crate::graph::{Graph, Op, Var};
use crate::ops::matmul::cpu::sgemm_batched;
use crate::ops::softmax::{softmax, softmax_backward_rows};
use crate::ops::unary::scale;
use crate::ops::{cpu_input, same_device};
use crate::{bail_shape, Result, Tensor};

pub struct AttentionOp {
    causal: bool,
}

struct Dims {
    bh: usize,
    tq: usize,
    tk: usize,
    dh: usize,
    dv: usize,
}

fn dims(q: &[usize], k: &[usize], v: &[usize], causal: bool) -> Result<Dims> {
    const OP: &str = "attention";
    if q.len() != 4 || k.len() != 4 || v.len() != 4 {
        bail_shape!(OP, "q, k, v must be [B, H, T, Dh], got {q:?}, {k:?}, {v:?}");
    }
    if q[..2] != k[..2] || k[..2] != v[..2] || q[3] != k[3] || k[2] != v[2] {
        bail_shape!(
            OP,
            "q {q:?}, k {k:?}, v {v:?} do not agree (same B, H; q/k same Dh; k/v same T)"
        );
    }
    if causal && q[2] != k[2] {
        bail_shape!(
            OP,
            "a causal mask needs as many queries as keys, got {} and {}",
            q[2],
            k[2]
        );
    }
    Ok(Dims {
        bh: q[0] * q[1],
        tq: q[2],
        tk: k[2],
        dh: q[3],
        dv: v[3],
    })
}

/// Returns (out, P).
fn forward(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<(Tensor, Tensor)> {
    same_device("attention", &[q, k, v])?;
    let d = dims(q.shape(), k.shape(), v.shape(), causal)?;
    if crate::device::kernel::runs_kernels(q.device()) {
        let sh = q.shape();
        return gpu::forward(
            &q.reshape([d.bh, d.tq, d.dh])?,
            &k.reshape([d.bh, d.tk, d.dh])?,
            &v.reshape([d.bh, d.tk, d.dv])?,
            causal,
            &[sh[0], sh[1], d.tq, d.dv],
        );
    }
    let (q, k, v) = (
        cpu_input("attention", q)?,
        cpu_input("attention", k)?,
        cpu_input("attention", v)?,
    );
    let mut s = vec![0f32; d.bh * d.tq * d.tk];
    sgemm_batched(
        false,
        true,
        d.bh,
        d.tq,
        d.tk,
        d.dh,
        q.f32s("attention")?,
        d.tq * d.dh,
        k.f32s("attention")?,
        d.tk * d.dh,
        &mut s,
    );
    let inv = 1.0 / (d.dh as f32).sqrt();
    s.iter_mut().for_each(|x| *x *= inv);
    let p = softmax(&Tensor::from_f32(s, &[d.bh, d.tq, d.tk]), causal)?;
    let mut out = vec![0f32; d.bh * d.tq * d.dv];
    sgemm_batched(
        false,
        false,
        d.bh,
        d.tq,
        d.dv,
        d.tk,
        p.f32s("attention")?,
        d.tq * d.tk,
        v.f32s("attention")?,
        d.tk * d.dv,
        &mut out,
    );
    let sh = q.shape();
    Ok((Tensor::from_f32(out, &[sh[0], sh[1], d.tq, d.dv]), p))
}

/// `softmax(q·kᵀ/√Dh [+ causal mask])·v`.
/// Checks `x` is `[B·T, S·H·Dh]` and returns `[B, T, H, Dh, S]`.
fn head_dims(op: &'static str, x: &Tensor, b: usize, h: usize, s: usize) -> Result<[usize; 5]> {
    if x.rank() != 2
        || b == 0
        || h == 0
        || !x.shape()[0].is_multiple_of(b)
        || !x.shape()[1].is_multiple_of(s * h)
    {
        bail_shape!(
            op,
            "expected [B·T, {s}·H·Dh] with B = {b}, H = {h}, got {:?}",
            x.shape()
        );
    }
    Ok([b, x.shape()[0] / b, h, x.shape()[1] / (s * h), s])
}

/// The fused qkv projection `[B·T, 3·D]` split into heads `[3, B, H, T, Dh]` (D = H·Dh):
/// `out[s, b, h, t, e] = qkv[b·T + t, s·D + h·Dh + e]`; `out.narrow(0, s, 1)` is q, k or v.
pub fn split_qkv_heads(qkv: &Tensor, b: usize, h: usize) -> Result<Tensor> {
    let dims = head_dims("split_qkv_heads", qkv, b, h, 3)?;
    if crate::device::kernel::runs_kernels(qkv.device()) {
        return gpu::split(qkv, dims);
    }
    let [b, t, h, dh, s] = dims;
    qkv.reshape([b, t, s, h, dh])?
        .permute(&[2, 0, 3, 1, 4])?
        .try_contiguous()
}

/// The backward of [`split_qkv_heads`]: `[3, B, H, T, Dh]` → `[B·T, 3·D]`.
pub fn split_qkv_heads_backward(d: &Tensor) -> Result<Tensor> {
    let op = "split_qkv_heads backward";
    if d.rank() != 5 || d.shape()[0] != 3 {
        bail_shape!(op, "expected [3, B, H, T, Dh], got {:?}", d.shape());
    }
    let (b, h, t, dh) = (d.shape()[1], d.shape()[2], d.shape()[3], d.shape()[4]);
    if crate::device::kernel::runs_kernels(d.device()) {
        return gpu::unsplit(d, [b, t, h, dh, 3]);
    }
    d.permute(&[1, 3, 0, 2, 4])?
        .try_contiguous()?
        .reshape([b * t, 3 * h * dh])
}

/// Attention output heads `[B, H, T, Dh]` merged back to rows `[B·T, H·Dh]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    if x.rank() != 4 {
        bail_shape!("merge_heads", "expected [B, H, T, Dh], got {:?}", x.shape());
    }
    let (b, h, t, dh) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    if crate::device::kernel::runs_kernels(x.device()) {
        // the merge is the backward of a one-tensor split (S = 1)
        return gpu::unsplit(x, [b, t, h, dh, 1]);
    }
    x.permute(&[0, 2, 1, 3])?
        .try_contiguous()?
        .reshape([b * t, h * dh])
}

/// The backward of [`merge_heads`]: `[B·T, H·Dh]` → `[B, H, T, Dh]`.
pub fn merge_heads_backward(g: &Tensor, b: usize, h: usize) -> Result<Tensor> {
    let [b, t, h, dh, s] = head_dims("merge_heads backward", g, b, h, 1)?;
    if crate::device::kernel::runs_kernels(g.device()) {
        return gpu::split(g, [b, t, h, dh, s]).and_then(|o| o.reshape([b, h, t, dh]));
    }
    g.reshape([b, t, h, dh])?
        .permute(&[0, 2, 1, 3])?
        .try_contiguous()
}

/// Inference only, CPU: self-attention of the packed projection `qkv` [B·T, 3·H·Dh] with heads
/// merged, `[B·T, H·Dh]` — what `merge_heads(attention(split_qkv_heads(qkv)))` computes, without
/// the split and merge copies (`fused.rs`). No graph node.
pub fn attention_qkv(qkv: &Tensor, b: usize, h: usize, causal: bool) -> Result<Tensor> {
    let [b, t, h, dh, _] = head_dims("attention_qkv", qkv, b, h, 3)?;
    let qkv = cpu_input("attention_qkv", qkv)?;
    let (out, _) = fused::forward(qkv.f32s("attention_qkv")?, b, t, h, dh, causal);
    Ok(Tensor::from_f32(out, &[b * t, h * dh]))
}

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    Ok(forward(q, k, v, causal)?.0)
}

impl<'m> Graph<'m> {
    /// Scaled dot-product attention over split heads; see the module doc.
    pub fn attention(&self, q: &Var, k: &Var, v: &Var, causal: bool) -> Result<Var> {
        let (out, p) = forward(q.tensor(), k.tensor(), v.tensor(), causal)?;
        let saved = vec![
            q.tensor().try_contiguous()?,
            k.tensor().try_contiguous()?,
            v.tensor().try_contiguous()?,
            p,
        ];
        Ok(self.record(
            Op::Attention(AttentionOp { causal }),
            &[q, k, v],
            saved,
            out,
        ))
    }
}

impl AttentionOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (q, k, v, p) = (&saved[0], &saved[1], &saved[2], &saved[3]);
        let d = dims(q.shape(), k.shape(), v.shape(), self.causal)?;
        if crate::device::kernel::runs_kernels(gout.device()) {
            let r3 = |t: &Tensor, rows: usize, cols: usize| t.reshape([d.bh, rows, cols]);
            let grads = gpu::backward(
                &r3(q, d.tq, d.dh)?,
                &r3(k, d.tk, d.dh)?,
                &r3(v, d.tk, d.dv)?,
                p,
                &r3(&gout.try_contiguous()?, d.tq, d.dv)?,
                needs,
            )?;
            let shapes = [q.shape(), k.shape(), v.shape()];
            return grads
                .into_iter()
                .zip(shapes)
                .map(|(g, s)| g.map(|g| g.reshape(s.to_vec())).transpose())
                .collect();
        }
        let g = cpu_input("attention backward", gout)?;
        let (qs, ks, vs, ps, gs) = (
            q.f32s("attention")?,
            k.f32s("attention")?,
            v.f32s("attention")?,
            p.f32s("attention")?,
            g.f32s("attention")?,
        );
        let inv = 1.0 / (d.dh as f32).sqrt();
        let dv = if needs[2] {
            let mut dv = vec![0f32; d.bh * d.tk * d.dv];
            sgemm_batched(
                true,
                false,
                d.bh,
                d.tk,
                d.dv,
                d.tq,
                ps,
                d.tq * d.tk,
                gs,
                d.tq * d.dv,
                &mut dv,
            );
            Some(Tensor::from_f32(dv, v.shape()))
        } else {
            None
        };
        if !needs[0] && !needs[1] {
            return Ok(vec![None, None, dv]);
        }
        let mut dp = vec![0f32; d.bh * d.tq * d.tk];
        sgemm_batched(
            false,
            true,
            d.bh,
            d.tq,
            d.tk,
            d.dv,
            gs,
            d.tq * d.dv,
            vs,
            d.tk * d.dv,
            &mut dp,
        );
        let mut ds = vec![0f32; dp.len()];
        softmax_backward_rows(ps, &dp, &mut ds, d.tk);
        drop(dp);
        let dq = if needs[0] {
            let mut dq = vec![0f32; d.bh * d.tq * d.dh];
            sgemm_batched(
                false,
                false,
                d.bh,
                d.tq,
                d.dh,
                d.tk,
                &ds,
                d.tq * d.tk,
                ks,
                d.tk * d.dh,
                &mut dq,
            );
            Some(scale(&Tensor::from_f32(dq, q.shape()), inv)?)
        } else {
            None
        };
        let dk = if needs[1] {
            let mut dk = vec![0f32; d.bh * d.tk * d.dh];
            sgemm_batched(
                true,
                false,
                d.bh,
                d.tk,
                d.dh,
                d.tq,
                &ds,
                d.tq * d.tk,
                qs,
                d.tq * d.dh,
                &mut dk,
            );
            Some(scale(&Tensor::from_f32(dk, k.shape()), inv)?)
        } else {
            None
        };
        Ok(vec![dq, dk, dv])
    }
}
