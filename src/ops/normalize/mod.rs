//! L2 normalisation over the last dim, as `torch.nn.functional.normalize`: `y = x / max(‖x‖, eps)`.
//! Backward (when ‖x‖ > eps): `dx = (dy − y·(y·dy)) / ‖x‖`; below eps the map is `x/eps`, linear.

pub(crate) mod gpu;

use crate::graph::{Graph, Op, Var};
use crate::ops::{cpu_input, cpu_input_f32};
use crate::{bail_shape, Result, Tensor};
use rayon::prelude::*;

/// F.normalize's default epsilon.
pub const L2_EPS: f32 = 1e-12;

pub struct L2NormalizeOp {}

/// Returns (y, per-row norm).
pub fn l2_normalize_stats(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let Some(&d) = x.shape().last() else {
        bail_shape!("l2_normalize", "input must have at least one dim");
    };
    if crate::device::kernel::runs_kernels(x.device()) {
        return gpu::forward(x, L2_EPS);
    }
    // a 16-bit x: widened, y rounded back once (the norms stay f32)
    let dtype = x.dtype();
    let x = cpu_input_f32("l2_normalize", x)?;
    let xs = x.f32s("l2_normalize")?;
    let rows = xs.len() / d.max(1);
    let mut y = vec![0f32; xs.len()];
    let mut norms = vec![0f32; rows];
    y.par_chunks_mut(d.max(1))
        .zip(xs.par_chunks(d.max(1)))
        .zip(norms.par_iter_mut())
        .for_each(|((y, x), n)| {
            let norm = x
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt() as f32;
            let inv = 1.0 / norm.max(L2_EPS);
            for (y, x) in y.iter_mut().zip(x) {
                *y = x * inv;
            }
            *n = norm;
        });
    Ok((
        Tensor::from_f32(y, x.shape()).try_to_dtype(dtype)?,
        Tensor::from_f32(norms, &[rows]),
    ))
}

pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    Ok(l2_normalize_stats(x)?.0)
}

/// L2 normalize backward from the saved output `y` and row norms.
pub fn l2_normalize_backward(y: &Tensor, norms: &Tensor, gout: &Tensor) -> Result<Tensor> {
    crate::ops::same_device("l2_normalize backward", &[y, norms, gout])?;
    if crate::device::kernel::runs_kernels(y.device()) {
        return gpu::backward(y, norms, gout, L2_EPS);
    }
    if y.shape() != gout.shape() {
        bail_shape!(
            "l2_normalize backward",
            "gradient {:?} does not match output {:?}",
            gout.shape(),
            y.shape()
        );
    }
    let dtype = crate::ops::same_dtype(
        "l2_normalize backward",
        &[("output", y), ("gradient", gout)],
    )?;
    let (y_t, norms_t) = (
        cpu_input_f32("l2_normalize backward", y)?,
        cpu_input("l2_normalize backward", norms)?,
    );
    let (y, norms) = (
        y_t.f32s("l2_normalize backward")?,
        norms_t.f32s("l2_normalize backward")?,
    );
    let g = cpu_input_f32("l2_normalize backward", gout)?;
    let gs = g.f32s("l2_normalize backward")?;
    let d = *y_t.shape().last().unwrap_or(&1);
    let mut dx = vec![0f32; y.len()];
    dx.par_chunks_mut(d.max(1)).enumerate().for_each(|(r, dx)| {
        let (yr, gr, n) = (&y[r * d..(r + 1) * d], &gs[r * d..(r + 1) * d], norms[r]);
        if n > L2_EPS {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for i in 0..d {
                dx[i] = (gr[i] - yr[i] * dot) / n;
            }
        } else {
            for i in 0..d {
                dx[i] = gr[i] / L2_EPS;
            }
        }
    });
    Tensor::from_f32(dx, y_t.shape()).try_to_dtype(dtype)
}

impl<'m> Graph<'m> {
    /// Unit L2 norm along the last dim.
    pub fn l2_normalize(&self, x: &Var) -> Result<Var> {
        let (y, norms) = l2_normalize_stats(x.tensor())?;
        Ok(self.record(
            Op::L2Normalize(L2NormalizeOp {}),
            &[x],
            vec![y.clone(), norms],
            y,
        ))
    }
}

impl L2NormalizeOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(l2_normalize_backward(
            &saved[0], &saved[1], gout,
        )?)])
    }
}
