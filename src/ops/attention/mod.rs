//! Multi-head scaled dot-product attention on split heads: q [B, H, Tq, Dh], k [B, H, Tk, Dh],
//! v [B, H, Tk, Dv] → [B, H, Tq, Dv], with `P = softmax(q·kᵀ/√Dh)` (optionally causal, Tq = Tk)
//! and `out = P·v`. Saves q, k, v and P. Backward:
//! `dv = Pᵀ·dout`, `dP = dout·vᵀ`, `dS = P∘(dP − rowsum(dP∘P))`, `dq = dS·k/√Dh`, `dk = dSᵀ·q/√Dh`.
//! Every (batch, head) is an independent GEMM problem, batched over B·H.

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
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    Ok(forward(q, k, v, causal)?.0)
}

impl<'m> Graph<'m> {
    /// Scaled dot-product attention over split heads; see the module doc.
    pub fn attention(&self, q: &Var, k: &Var, v: &Var, causal: bool) -> Result<Var> {
        let (out, p) = forward(q.tensor(), k.tensor(), v.tensor(), causal)?;
        let saved = vec![
            q.tensor().contiguous(),
            k.tensor().contiguous(),
            v.tensor().contiguous(),
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
