//! LayerNorm over the last dim: `y = (x − μ)·rstd·w + b`, `rstd = 1/√(σ² + eps)` with the biased
//! variance (PyTorch's). Saves x, w and the per-row μ and rstd; backward is the standard
//! `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))` with `ĝ = dy·w`, and `dw = Σ dy·x̂`, `db = Σ dy` over rows.
//!
//! Activations may be f16/bf16 on every device (the parameters w, b and the statistics stay f32):
//! the kernels compute in f32 and round y / dx once; the CPU widens x (and dy), computes in f32
//! and rounds y / dx back to the activations' dtype. x and dy of different dtypes are an error.
//! 16-bit w, b (pure 16-bit weights) are widened first and dw, db rounded back to their dtype.

pub mod cpu;
pub(crate) mod gpu;

use crate::graph::{Graph, Op, Var};
use crate::ops::{cpu_input, cpu_input_f32, same_device};
use crate::{bail_shape, Result, Tensor};

pub struct LayerNormOp {
    eps: f32,
}

fn check(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<usize> {
    same_device("layer_norm", &[x, w, b])?;
    let Some(&d) = x.shape().last() else {
        bail_shape!(
            "layer_norm",
            "input must have at least one dim, got a scalar"
        );
    };
    if w.shape() != [d] || b.shape() != [d] {
        bail_shape!(
            "layer_norm",
            "weight {:?} and bias {:?} must both be [{d}] for input {:?}",
            w.shape(),
            b.shape(),
            x.shape()
        );
    }
    Ok(d)
}

/// A parameter as the kernels and the CPU code take it: f32 (a 16-bit gain or bias — weights
/// kept only in 16 bits — widened exactly, a [D] cast on its device).
fn widened(p: &Tensor) -> Result<Tensor> {
    p.try_to_dtype(crate::DType::F32)
}

/// LayerNorm forward; returns (y, mean, rstd) with one mean/rstd per row.
pub fn layer_norm_stats(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let d = check(x, w, b)?;
    let (w, b) = (&widened(w)?, &widened(b)?);
    if crate::device::kernel::runs_kernels(x.device()) {
        return gpu::forward(x, w, b, eps);
    }
    // 16-bit activations: computed in f32 from the widened x, y rounded back to x's dtype
    let dtype = x.dtype();
    let (x, w, b) = (
        cpu_input_f32("layer_norm", x)?,
        cpu_input("layer_norm", w)?,
        cpu_input("layer_norm", b)?,
    );
    let rows = x.numel() / d.max(1);
    let (y, mean, rstd) = cpu::forward(
        x.f32s("layer_norm")?,
        w.f32s("layer_norm")?,
        b.f32s("layer_norm")?,
        d,
        eps,
    );
    Ok((
        Tensor::from_f32(y, x.shape()).try_to_dtype(dtype)?,
        Tensor::from_f32(mean, &[rows]),
        Tensor::from_f32(rstd, &[rows]),
    ))
}

pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(layer_norm_stats(x, w, b, eps)?.0)
}

/// Residual add fused with the LayerNorm that follows it: `s = x + r`, `y = LN(s)`; returns
/// `(y, s, mean, rstd)` (one kernel on Emu/Cuda, the add then the LayerNorm on the CPU).
pub fn layer_norm_residual(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    check(x, w, b)?;
    same_device("layer_norm_residual", &[x, r])?;
    if x.shape() != r.shape() {
        bail_shape!(
            "layer_norm_residual",
            "input {:?} and residual {:?} differ",
            x.shape(),
            r.shape()
        );
    }
    if crate::device::kernel::runs_kernels(x.device()) {
        let (w, b) = (&widened(w)?, &widened(b)?);
        return gpu::residual_forward(x, r, w, b, eps);
    }
    let s = crate::ops::binary::add(x, r)?;
    let (y, mean, rstd) = layer_norm_stats(&s, w, b, eps)?;
    Ok((y, s, mean, rstd))
}

/// LayerNorm backward from the saved statistics: `(dx, dw, db)`.
pub fn layer_norm_backward(
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    same_device("layer_norm backward", &[x, w, mean, rstd, dy])?;
    // 16-bit parameters: used widened, their gradients (f32 sums) rounded back once
    let pdtype = w.dtype();
    let w = &widened(w)?;
    if crate::device::kernel::runs_kernels(x.device()) {
        let (dx, dw, db) = gpu::backward(x, w, mean, rstd, dy)?;
        return Ok((dx, dw.try_to_dtype(pdtype)?, db.try_to_dtype(pdtype)?));
    }
    let op = "layer_norm backward";
    // 16-bit x and dy: widened, dx rounded back to their dtype; dw, db stay f32
    let dtype = crate::ops::same_dtype(op, &[("input", x), ("gradient", dy)])?;
    let (x, w, mean, rstd, g) = (
        cpu_input_f32(op, x)?,
        cpu_input(op, w)?,
        cpu_input(op, mean)?,
        cpu_input(op, rstd)?,
        cpu_input_f32(op, dy)?,
    );
    let d = w.numel();
    let (dx, dw, db) = cpu::backward(
        x.f32s(op)?,
        w.f32s(op)?,
        mean.f32s(op)?,
        rstd.f32s(op)?,
        g.f32s(op)?,
        d,
    );
    Ok((
        Tensor::from_f32(dx, x.shape()).try_to_dtype(dtype)?,
        Tensor::from_f32(dw, &[d]).try_to_dtype(pdtype)?,
        Tensor::from_f32(db, &[d]).try_to_dtype(pdtype)?,
    ))
}

impl<'m> Graph<'m> {
    /// LayerNorm over the last dim with gain `w` and bias `b`.
    pub fn layer_norm(&self, x: &Var, w: &Var, b: &Var, eps: f32) -> Result<Var> {
        let (y, mean, rstd) = layer_norm_stats(x.tensor(), w.tensor(), b.tensor(), eps)?;
        let saved = vec![x.tensor().clone(), w.tensor().clone(), mean, rstd];
        Ok(self.record(Op::LayerNorm(LayerNormOp { eps }), &[x, w, b], saved, y))
    }
}

impl LayerNormOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let _ = self.eps; // rstd already holds it
        let (x, w, mean, rstd) = (&saved[0], &saved[1], &saved[2], &saved[3]);
        let (dx, dw, db) = layer_norm_backward(x, w, mean, rstd, gout)?;
        Ok(vec![
            needs[0].then_some(dx),
            needs[1].then_some(dw),
            needs[2].then_some(db),
        ])
    }
}
