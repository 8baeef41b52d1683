//! Softmax over the last dim, optionally causal: for a [.., T, T] score tensor, row i only sees
//! columns j ≤ i (the text tower's mask); masked entries are exactly 0. Saves the output y;
//! backward is `dx = y·(dy − Σ dy·y)`, which is 0 on masked entries because y is.

pub(crate) mod gpu;

use crate::graph::{Graph, Op, Var};
use crate::ops::cpu_input_f32;
use crate::{bail_shape, Result, Tensor};
use rayon::prelude::*;

pub struct SoftmaxOp {}

/// Number of visible columns in row `r` of a softmax over rows of length `n`.
#[inline]
fn visible(r: usize, n: usize, causal: bool) -> usize {
    if causal {
        (r % n) + 1
    } else {
        n
    }
}

pub fn softmax(x: &Tensor, causal: bool) -> Result<Tensor> {
    let Some(&n) = x.shape().last() else {
        bail_shape!("softmax", "input must have at least one dim");
    };
    if causal && (x.rank() < 2 || x.shape()[x.rank() - 2] != n) {
        bail_shape!(
            "softmax",
            "a causal mask needs square [.., T, T] scores, got {:?}",
            x.shape()
        );
    }
    if crate::device::kernel::runs_kernels(x.device()) {
        return gpu::forward(x, causal);
    }
    // a 16-bit x: widened, y rounded back once
    let dtype = x.dtype();
    let x = cpu_input_f32("softmax", x)?;
    let xs = x.f32s("softmax")?;
    let mut y = vec![0f32; xs.len()];
    y.par_chunks_mut(n.max(1))
        .zip(xs.par_chunks(n.max(1)))
        .enumerate()
        .for_each(|(r, (y, x))| {
            let v = visible(r, n, causal);
            let m = x[..v].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut s = 0f32;
            for i in 0..v {
                y[i] = (x[i] - m).exp();
                s += y[i];
            }
            let inv = 1.0 / s;
            y[..v].iter_mut().for_each(|e| *e *= inv);
        });
    Tensor::from_f32(y, x.shape()).try_to_dtype(dtype)
}

/// `dx = y·(dy − Σ dy·y)` row by row (shared with the attention op).
pub(crate) fn softmax_backward_rows(y: &[f32], g: &[f32], dx: &mut [f32], n: usize) {
    dx.par_chunks_mut(n.max(1))
        .zip(y.par_chunks(n.max(1)).zip(g.par_chunks(n.max(1))))
        .for_each(|(dx, (y, g))| {
            let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
            for i in 0..n {
                dx[i] = y[i] * (g[i] - dot);
            }
        });
}

/// Softmax backward from the output: `dx = y·(dy − Σ dy·y)` per row of the last dim.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    crate::ops::same_device("softmax backward", &[y, dy])?;
    if crate::device::kernel::runs_kernels(y.device()) {
        return gpu::backward(y, dy);
    }
    let n = *y.shape().last().unwrap_or(&1);
    let dtype = crate::ops::same_dtype("softmax backward", &[("output", y), ("gradient", dy)])?;
    let (y, g) = (
        cpu_input_f32("softmax backward", y)?,
        cpu_input_f32("softmax backward", dy)?,
    );
    if y.shape() != g.shape() {
        bail_shape!(
            "softmax backward",
            "gradient {:?} does not match output {:?}",
            g.shape(),
            y.shape()
        );
    }
    let mut dx = vec![0f32; y.numel()];
    softmax_backward_rows(
        y.f32s("softmax backward")?,
        g.f32s("softmax backward")?,
        &mut dx,
        n,
    );
    Tensor::from_f32(dx, y.shape()).try_to_dtype(dtype)
}

impl<'m> Graph<'m> {
    /// Softmax over the last dim; `causal` masks columns after the row index.
    pub fn softmax(&self, x: &Var, causal: bool) -> Result<Var> {
        let y = softmax(x.tensor(), causal)?;
        Ok(self.record(Op::Softmax(SoftmaxOp {}), &[x], vec![y.clone()], y))
    }
}

impl SoftmaxOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(softmax_backward(&saved[0], gout)?)])
    }
}
