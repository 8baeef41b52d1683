//! 2-D average pooling, NCHW, no padding: `out[n, c, y, x] = mean of x[n, c, y·s .. y·s + k,
//! x·s .. x·s + k]`, output [N, C, OH, OW] with `OH = (H − k)/s + 1` (floor), as PyTorch's
//! `AvgPool2d(k, stride)` (CLIP's ModifiedResNet uses k = stride). Saves nothing; backward
//! spreads each output gradient evenly, `g / k²`, over its window (overlapping windows add).

pub mod cpu;
pub(crate) mod gpu;

use crate::graph::{Graph, Op, Var};
use crate::ops::cpu_input_f32;
use crate::{bail_shape, Result, Tensor};

const OP: &str = "avg_pool2d";

pub struct AvgPool2dOp {
    in_shape: [usize; 4],
    kernel: usize,
    stride: usize,
}

/// Checks the shapes and derives the output size.
fn geom(x: &[usize], kernel: usize, stride: usize) -> Result<cpu::Geom> {
    if x.len() != 4 {
        bail_shape!(OP, "input must be [N, C, H, W], got {x:?}");
    }
    if kernel == 0 || stride == 0 {
        bail_shape!(
            OP,
            "kernel ({kernel}) and stride ({stride}) must be at least 1 (input {x:?})"
        );
    }
    let (h, w) = (x[2], x[3]);
    if h < kernel || w < kernel {
        bail_shape!(
            OP,
            "kernel {kernel}×{kernel} is larger than the input {h}×{w} (input {x:?})"
        );
    }
    Ok(cpu::Geom {
        h,
        w,
        k: kernel,
        s: stride,
        oh: (h - kernel) / stride + 1,
        ow: (w - kernel) / stride + 1,
    })
}

/// Average pooling with a `kernel`×`kernel` window moved by `stride`; see the module doc.
pub fn avg_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let g = geom(x.shape(), kernel, stride)?;
    if crate::device::kernel::runs_kernels(x.device()) {
        return gpu::forward(x, &g);
    }
    let (n, c) = (x.shape()[0], x.shape()[1]);
    // a 16-bit x: widened, averaged in f32, rounded back once
    let dtype = x.dtype();
    let x = cpu_input_f32(OP, x)?;
    Tensor::from_f32(cpu::forward(x.f32s(OP)?, &g), &[n, c, g.oh, g.ow]).try_to_dtype(dtype)
}

/// The input gradient of [`avg_pool2d`] for an input of `in_shape` ([N, C, H, W]).
pub fn avg_pool2d_backward(
    gout: &Tensor,
    in_shape: [usize; 4],
    kernel: usize,
    stride: usize,
) -> Result<Tensor> {
    const BOP: &str = "avg_pool2d backward";
    let g = geom(&in_shape, kernel, stride)?;
    let [n, c, ..] = in_shape;
    if gout.shape() != [n, c, g.oh, g.ow] {
        bail_shape!(
            BOP,
            "output gradient {:?} does not match the output [{n}, {c}, {}, {}]",
            gout.shape(),
            g.oh,
            g.ow
        );
    }
    if crate::device::kernel::runs_kernels(gout.device()) {
        return gpu::backward(gout, &in_shape, &g);
    }
    let dtype = gout.dtype();
    let gout = cpu_input_f32(BOP, gout)?;
    Tensor::from_f32(cpu::backward(gout.f32s(BOP)?, &g), &in_shape).try_to_dtype(dtype)
}

impl<'m> Graph<'m> {
    /// Average pooling (no padding, floor output size); see the module doc.
    pub fn avg_pool2d(&self, x: &Var, kernel: usize, stride: usize) -> Result<Var> {
        let out = avg_pool2d(x.tensor(), kernel, stride)?;
        let s = x.shape();
        let op = AvgPool2dOp {
            in_shape: [s[0], s[1], s[2], s[3]],
            kernel,
            stride,
        };
        Ok(self.record(Op::AvgPool2d(op), &[x], vec![], out))
    }
}

impl AvgPool2dOp {
    pub(crate) fn backward(
        &self,
        _saved: &[Tensor],
        gout: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(avg_pool2d_backward(
            gout,
            self.in_shape,
            self.kernel,
            self.stride,
        )?)])
    }
}
