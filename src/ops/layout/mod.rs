//! Layout ops: reshape, permute, concat and narrow (slice). Reshape, permute and narrow return
//! views (no copy) where they can; their backward rules are the inverse layout change. On Emu and
//! Cuda, concat, narrow's gradient and the slices of concat's gradient are kernels (`gpu.rs`), and
//! so is every copy of a view to contiguous memory (`Tensor::try_contiguous`: the strided copy,
//! behind reshape of a view and permute's backward) and every dtype cast (`Tensor::try_to_dtype`).

pub(crate) mod gpu;

use crate::graph::{Graph, Op, Var};
use crate::ops::cpu_input_f32;
use crate::ops::reduce::split3;
use crate::tensor::resolve_axis;
use crate::{bail_shape, Result, Shape, Tensor};

pub enum LayoutOp {
    Reshape {
        in_shape: Vec<usize>,
    },
    Permute {
        axes: Vec<usize>,
    },
    Concat {
        axis: usize,
        sizes: Vec<usize>,
    },
    Narrow {
        in_shape: Vec<usize>,
        axis: usize,
        start: usize,
    },
}

/// Join tensors along `axis`; all other dims must agree.
pub fn concat(xs: &[&Tensor], axis: isize) -> Result<Tensor> {
    let Some(first) = xs.first() else {
        bail_shape!("concat", "needs at least one tensor");
    };
    let ax = resolve_axis("concat", axis, first.rank())?;
    for x in xs {
        let same = x.rank() == first.rank()
            && (0..x.rank()).all(|d| d == ax || x.shape()[d] == first.shape()[d]);
        if !same {
            bail_shape!(
                "concat",
                "shapes {:?} and {:?} differ outside axis {ax}",
                first.shape(),
                x.shape()
            );
        }
    }
    let mut shape = first.shape().to_vec();
    shape[ax] = xs.iter().map(|x| x.shape()[ax]).sum();
    if crate::device::kernel::runs_kernels(first.device()) {
        return gpu::concat(xs, ax, &shape);
    }
    // 16-bit parts (of one dtype): widened and the result narrowed back, both exact (a copy)
    let named: Vec<(&str, &Tensor)> = xs.iter().map(|&x| ("part", x)).collect();
    let dtype = crate::ops::same_dtype("concat", &named)?;
    let parts: Vec<Tensor> = xs
        .iter()
        .map(|x| cpu_input_f32("concat", x))
        .collect::<Result<_>>()?;
    let total: usize = parts.iter().map(|p| p.shape()[ax]).sum();
    let (outer, _, inner) = split3(first.shape(), ax);
    let mut out = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for p in &parts {
            let len = p.shape()[ax] * inner;
            out.extend_from_slice(&p.f32s("concat")?[o * len..(o + 1) * len]);
        }
    }
    debug_assert_eq!(shape[ax], total);
    Tensor::from_f32(out, &shape).try_to_dtype(dtype)
}

/// Zeros of `shape` with `g` written at `start..start+len` along `axis` (the gradient of narrow).
fn pad_axis(g: &Tensor, shape: &[usize], axis: usize, start: usize) -> Result<Tensor> {
    if crate::device::kernel::runs_kernels(g.device()) {
        return gpu::narrow_backward(g, shape, axis, start);
    }
    let dtype = g.dtype();
    let g = cpu_input_f32("narrow backward", g)?;
    let gs = g.f32s("narrow backward")?;
    let (outer, full, inner) = split3(shape, axis);
    let len = g.shape()[axis];
    let mut out = vec![0f32; outer * full * inner];
    for o in 0..outer {
        let dst = (o * full + start) * inner;
        out[dst..dst + len * inner].copy_from_slice(&gs[o * len * inner..(o + 1) * len * inner]);
    }
    Tensor::from_f32(out, shape).try_to_dtype(dtype)
}

impl<'m> Graph<'m> {
    pub fn reshape(&self, x: &Var, shape: impl Into<Shape>) -> Result<Var> {
        let out = x.tensor().reshape(shape)?;
        let op = LayoutOp::Reshape {
            in_shape: x.shape().to_vec(),
        };
        Ok(self.record(Op::Layout(op), &[x], vec![], out))
    }
    /// Output dim i is input dim `axes[i]` (a view).
    pub fn permute(&self, x: &Var, axes: &[usize]) -> Result<Var> {
        let out = x.tensor().permute(axes)?;
        let op = LayoutOp::Permute {
            axes: axes.to_vec(),
        };
        Ok(self.record(Op::Layout(op), &[x], vec![], out))
    }
    /// Swap two dims (a view).
    pub fn transpose(&self, x: &Var, a: isize, b: isize) -> Result<Var> {
        let r = x.tensor().rank();
        let (a, b) = (
            resolve_axis("transpose", a, r)?,
            resolve_axis("transpose", b, r)?,
        );
        let mut axes: Vec<usize> = (0..r).collect();
        axes.swap(a, b);
        self.permute(x, &axes)
    }
    pub fn concat(&self, xs: &[&Var], axis: isize) -> Result<Var> {
        // mixed dtypes (a 16-bit activation beside an f32 parameter): all widened to f32
        let promoted: Vec<Var>;
        let xs: &[&Var] = if xs
            .iter()
            .any(|v| v.tensor().dtype() != xs[0].tensor().dtype())
        {
            promoted = xs
                .iter()
                .map(|v| self.cast(v, crate::DType::F32))
                .collect::<Result<_>>()?;
            &promoted.iter().collect::<Vec<_>>()
        } else {
            xs
        };
        let ts: Vec<&Tensor> = xs.iter().map(|v| v.tensor()).collect();
        let out = concat(&ts, axis)?;
        let ax = resolve_axis("concat", axis, out.rank())?;
        let op = LayoutOp::Concat {
            axis: ax,
            sizes: xs.iter().map(|v| v.shape()[ax]).collect(),
        };
        Ok(self.record(Op::Layout(op), xs, vec![], out))
    }
    /// `len` entries of `axis` from `start` (a view).
    pub fn narrow(&self, x: &Var, axis: isize, start: usize, len: usize) -> Result<Var> {
        let out = x.tensor().narrow(axis, start, len)?;
        let ax = resolve_axis("narrow", axis, x.tensor().rank())?;
        let op = LayoutOp::Narrow {
            in_shape: x.shape().to_vec(),
            axis: ax,
            start,
        };
        Ok(self.record(Op::Layout(op), &[x], vec![], out))
    }
}

impl LayoutOp {
    pub(crate) fn backward(
        &self,
        _saved: &[Tensor],
        gout: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(match self {
            LayoutOp::Reshape { in_shape } => vec![Some(gout.reshape(in_shape.clone())?)],
            LayoutOp::Permute { axes } => {
                let mut inv = vec![0; axes.len()];
                for (i, &a) in axes.iter().enumerate() {
                    inv[a] = i;
                }
                vec![Some(gout.permute(&inv)?.try_contiguous()?)]
            }
            LayoutOp::Concat { axis, sizes } => {
                let mut start = 0;
                let mut gs = Vec::with_capacity(sizes.len());
                let on_kernels = crate::device::kernel::runs_kernels(gout.device());
                for &s in sizes {
                    gs.push(Some(if on_kernels {
                        gpu::narrow(gout, *axis, start, s)?
                    } else {
                        gout.narrow(*axis as isize, start, s)?.try_contiguous()?
                    }));
                    start += s;
                }
                gs
            }
            LayoutOp::Narrow {
                in_shape,
                axis,
                start,
            } => vec![Some(pad_axis(gout, in_shape, *axis, *start)?)],
        })
    }
}
