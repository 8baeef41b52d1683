//! Sums and means over one axis or over everything, and `sum_to_shape` (the reduction that
//! broadcasting backward needs). Reductions add in a fixed order that does not depend on the
//! number of threads, so results are reproducible.

pub(crate) mod gpu;

use crate::graph::{Graph, Op, Var};
use crate::tensor::{broadcast_shape, broadcast_strides, for_each_offset, resolve_axis};
use crate::{Error, Result, Tensor};
use rayon::prelude::*;

pub struct ReduceOp {
    in_shape: Vec<usize>,
    /// `None` reduces everything to a scalar.
    axis: Option<usize>,
    mean: bool,
    /// The input's dtype, that of its gradient (a full sum's output is f32 whatever it is).
    dtype: crate::DType,
}

/// Sum over `axis` (removed from the shape), or over everything when `axis` is `None` (shape `[]`).
pub fn sum(x: &Tensor, axis: Option<isize>) -> Result<Tensor> {
    reduce(x, axis, false)
}

/// Mean over `axis`, or over everything.
pub fn mean(x: &Tensor, axis: Option<isize>) -> Result<Tensor> {
    reduce(x, axis, true)
}

fn reduce(x: &Tensor, axis: Option<isize>, mean: bool) -> Result<Tensor> {
    let op = if mean { "mean" } else { "sum" };
    if axis.is_none() && crate::device::kernel::runs_kernels(x.device()) {
        let scale = if mean {
            1.0 / x.numel().max(1) as f32
        } else {
            1.0
        };
        return gpu::sum_all(x, false, scale);
    }
    if let (Some(a), true) = (axis, crate::device::kernel::runs_kernels(x.device())) {
        let ax = resolve_axis(op, a, x.rank())?;
        let mut shape = x.shape().to_vec();
        shape.remove(ax);
        return gpu::sum_axis(x, split3(x.shape(), ax), mean, &shape);
    }
    // a 16-bit x: widened; a one-axis sum is rounded back to x's dtype (the full sum, a scalar
    // — a loss, a norm — stays f32 on every device, as the kernels')
    let dtype = x.dtype();
    let x = crate::ops::cpu_input_f32(op, x)?;
    let xs = x.f32s(op)?;
    match axis {
        None => {
            // Fixed chunks summed in f64, then combined in order.
            let total: f64 = xs
                .par_chunks(1 << 14)
                .map(|c| c.iter().map(|&v| v as f64).sum::<f64>())
                .collect::<Vec<_>>()
                .iter()
                .sum();
            let n = xs.len().max(1) as f64;
            Ok(Tensor::from_f32(
                vec![(if mean { total / n } else { total }) as f32],
                &[],
            ))
        }
        Some(a) => {
            let ax = resolve_axis(op, a, x.rank())?;
            let (outer, len, inner) = split3(x.shape(), ax);
            let mut out = vec![0f32; outer * inner];
            let scale = if mean { 1.0 / len.max(1) as f32 } else { 1.0 };
            out.par_chunks_mut(inner.max(1))
                .enumerate()
                .for_each(|(o, row)| {
                    for l in 0..len {
                        let src = &xs[(o * len + l) * inner..(o * len + l + 1) * inner];
                        for (r, s) in row.iter_mut().zip(src) {
                            *r += s;
                        }
                    }
                    if mean {
                        row.iter_mut().for_each(|r| *r *= scale);
                    }
                });
            let mut shape = x.shape().to_vec();
            shape.remove(ax);
            Tensor::from_f32(out, &shape).try_to_dtype(dtype)
        }
    }
}

/// The global L2 norm `√(Σ_t Σ_i t_i²)` of a list of tensors (the gradient norm of clipping).
/// On Emu/Cuda each tensor's sum of squares is a two-stage fixed-order kernel reduction; the
/// per-tensor sums are then added in list order in f64 on the host, as the CPU path does.
pub fn global_l2_norm(ts: &[&Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for t in ts {
        total += if crate::device::kernel::runs_kernels(t.device()) {
            gpu::sum_all(t, true, 1.0)?.try_to_vec()?[0] as f64
        } else {
            t.try_to_vec()?
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
        };
    }
    Ok(total.sqrt())
}

/// (product of dims before `ax`, dim `ax`, product of dims after `ax`).
pub(crate) fn split3(shape: &[usize], ax: usize) -> (usize, usize, usize) {
    (
        shape[..ax].iter().product(),
        shape[ax],
        shape[ax + 1..].iter().product(),
    )
}

/// Sum `t` down to `target`, a shape that broadcasts to `t`'s shape (the gradient of a broadcast).
pub fn sum_to_shape(t: &Tensor, target: &[usize]) -> Result<Tensor> {
    if t.shape() == target {
        return Ok(t.clone());
    }
    let bs = broadcast_shape("sum_to_shape", target, t.shape())?;
    if bs != t.shape() {
        return Err(Error::shape(
            "sum_to_shape",
            format!("{target:?} does not broadcast to {:?}", t.shape()),
        ));
    }
    if crate::device::kernel::runs_kernels(t.device()) {
        if let Some(r) = crate::ops::binary::gpu::sum_rows_to(t, target)? {
            return Ok(r);
        }
        // Any other broadcast (`[B, 1, D]` from `[B, T, D]`, …): one axis sum per stretched
        // dim, innermost first, each keeping the dim as 1. The order of additions differs from
        // the CPU's single row-major pass below (same sum, other rounding). A 16-bit gradient is
        // widened first and the result rounded back once, not after every axis.
        let pad = t.rank() - target.len();
        let dtype = t.dtype();
        let mut acc = t.try_to_dtype(crate::DType::F32)?;
        for ax in (0..t.rank()).rev() {
            let own = if ax < pad { 1 } else { target[ax - pad] };
            if own == 1 && t.shape()[ax] != 1 {
                let mut kept = acc.shape().to_vec();
                kept[ax] = 1;
                acc = sum(&acc, Some(ax as isize))?.reshape(kept)?;
            }
        }
        return acc.reshape(target.to_vec())?.try_to_dtype(dtype);
    }
    // a 16-bit gradient: summed in f32, the result rounded back once to its dtype
    let dtype = t.dtype();
    let t = crate::ops::cpu_input_f32("sum_to_shape", t)?;
    let ts = t.f32s("sum_to_shape")?;
    let n: usize = target.iter().product();
    let trimmed: Vec<usize> = target.iter().copied().skip_while(|&d| d == 1).collect();
    let shape = t.shape();
    let mut out = vec![0f32; n];
    if trimmed.len() <= shape.len() && shape[shape.len() - trimmed.len()..] == trimmed[..] {
        // target repeats along leading dims (bias, scalar): row sums over fixed row chunks.
        let rows = ts.len() / n.max(1);
        let chunk_rows = crate::ops::ROW_CHUNK;
        let partials: Vec<Vec<f32>> = (0..rows.div_ceil(chunk_rows))
            .into_par_iter()
            .map(|c| {
                let mut acc = vec![0f32; n];
                for r in c * chunk_rows..((c + 1) * chunk_rows).min(rows) {
                    for (a, v) in acc.iter_mut().zip(&ts[r * n..(r + 1) * n]) {
                        *a += v;
                    }
                }
                acc
            })
            .collect();
        for p in partials {
            for (o, v) in out.iter_mut().zip(p) {
                *o += v;
            }
        }
    } else {
        let strides = broadcast_strides(target, shape);
        let mut i = 0;
        for_each_offset(shape, &strides, 0, |o| {
            out[o] += ts[i];
            i += 1;
        });
    }
    Tensor::from_f32(out, target).try_to_dtype(dtype)
}

/// Repeat `g` (shape of `in_shape` with `axis` removed) along `axis`, times `scale`.
fn expand_axis(g: &Tensor, in_shape: &[usize], axis: usize, scale: f32) -> Result<Tensor> {
    if crate::device::kernel::runs_kernels(g.device()) {
        return gpu::expand_axis(g, split3(in_shape, axis), scale, in_shape);
    }
    let dtype = g.dtype();
    let g = crate::ops::cpu_input_f32("reduce backward", g)?;
    let gs = g.f32s("reduce backward")?;
    let (outer, len, inner) = split3(in_shape, axis);
    let mut out = vec![0f32; outer * len * inner];
    out.par_chunks_mut((len * inner).max(1))
        .enumerate()
        .for_each(|(o, block)| {
            for row in block.chunks_mut(inner.max(1)) {
                for (r, v) in row.iter_mut().zip(&gs[o * inner..(o + 1) * inner]) {
                    *r = v * scale;
                }
            }
        });
    Tensor::from_f32(out, in_shape).try_to_dtype(dtype)
}

impl<'m> Graph<'m> {
    /// Sum over `axis` (negative counts from the end), or everything with `None`.
    pub fn sum(&self, x: &Var, axis: Option<isize>) -> Result<Var> {
        self.reduce(x, axis, false)
    }
    /// Mean over `axis`, or everything with `None`.
    pub fn mean(&self, x: &Var, axis: Option<isize>) -> Result<Var> {
        self.reduce(x, axis, true)
    }
    fn reduce(&self, x: &Var, axis: Option<isize>, mean: bool) -> Result<Var> {
        let out = reduce(x.tensor(), axis, mean)?;
        let axis = axis
            .map(|a| resolve_axis("reduce", a, x.tensor().rank()))
            .transpose()?;
        let op = ReduceOp {
            in_shape: x.shape().to_vec(),
            axis,
            mean,
            dtype: x.tensor().dtype(),
        };
        Ok(self.record(Op::Reduce(op), &[x], vec![], out))
    }
}

impl ReduceOp {
    pub(crate) fn backward(
        &self,
        _saved: &[Tensor],
        gout: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let g = match self.axis {
            None => {
                let n = self.in_shape.iter().product::<usize>();
                let v = gout.item()?
                    * if self.mean {
                        1.0 / n.max(1) as f32
                    } else {
                        1.0
                    };
                Tensor::full(v, self.in_shape.clone())
                    .try_to_dtype(self.dtype)?
                    .to_device(gout.device())?
            }
            Some(ax) => {
                let scale = if self.mean {
                    1.0 / self.in_shape[ax].max(1) as f32
                } else {
                    1.0
                };
                expand_axis(gout, &self.in_shape, ax, scale)?
            }
        };
        Ok(vec![Some(g)])
    }
}
