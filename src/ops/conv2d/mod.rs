//! 2-D convolution, NCHW, no bias (CLIP's convs have none; add one with a broadcasting `add`):
//! `out[n, o, y, x] = Σ_{c, i, j} w[o, c, i, j] · x[n, c, y·s + i − p, x·s + j − p]`, with zeros
//! outside the input. x [N, C, H, W], w [O, C, kh, kw] (any kernel size), out [N, O, OH, OW] with
//! `OH = (H + 2p − kh)/s + 1` and `OW = (W + 2p − kw)/s + 1` (floor), as PyTorch's `Conv2d`.
//!
//! How: im2col + GEMM. With K = C·kh·kw and P = OH·OW, the columns of an image are col [K, P]
//! and its output is `W[O, K] · col`; images are grouped so that one GEMM covers several small
//! maps (`cpu.rs`). A 1×1, stride-1, unpadded conv skips im2col: the image is its own col.
//! Saves x and w (col is rebuilt in backward rather than held). Backward:
//! `dcol = Wᵀ · dOut` then col2im (scatter-add) for dx; `dW = Σ_n dOut_n · col_nᵀ`, summed in an
//! order fixed by the shape alone, so results do not depend on the thread count.
//! On Emu and Cuda the same algorithm runs as kernels (`kernels/conv2d.cu`) around one device
//! GEMM per pass over the whole batch; see `gpu.rs`.

pub mod cpu;
pub mod fused;
pub(crate) mod gpu;

use crate::graph::{Graph, Op, Var};
use crate::ops::{cpu_input, cpu_input_f32, same_device};
use crate::{bail_shape, Result, Tensor};
use cpu::Geom;

const OP: &str = "conv2d";

pub struct Conv2dOp {
    stride: usize,
    padding: usize,
}

/// Checks the shapes of a convolution and derives its output size.
fn geom(x: &[usize], w: &[usize], stride: usize, padding: usize) -> Result<Geom> {
    if x.len() != 4 {
        bail_shape!(OP, "input must be [N, C, H, W], got {x:?} (weight {w:?})");
    }
    if w.len() != 4 {
        bail_shape!(OP, "weight must be [O, C, kh, kw], got {w:?} (input {x:?})");
    }
    let (n, c, h, wd) = (x[0], x[1], x[2], x[3]);
    let (o, cw, kh, kw) = (w[0], w[1], w[2], w[3]);
    if c != cw {
        bail_shape!(
            OP,
            "input {x:?} has {c} channels but weight {w:?} expects {cw}"
        );
    }
    if stride == 0 {
        bail_shape!(OP, "stride must be at least 1 (input {x:?}, weight {w:?})");
    }
    if c == 0 || h == 0 || wd == 0 || kh == 0 || kw == 0 {
        bail_shape!(
            OP,
            "channels, spatial size and kernel must be non-empty (input {x:?}, weight {w:?})"
        );
    }
    if h + 2 * padding < kh || wd + 2 * padding < kw {
        bail_shape!(
            OP,
            "kernel {kh}×{kw} is larger than the padded input {}×{} (input {x:?}, weight {w:?}, padding {padding})",
            h + 2 * padding,
            wd + 2 * padding
        );
    }
    Ok(Geom {
        n,
        c,
        h,
        w: wd,
        o,
        kh,
        kw,
        stride,
        pad: padding,
        oh: (h + 2 * padding - kh) / stride + 1,
        ow: (wd + 2 * padding - kw) / stride + 1,
    })
}

/// The column matrix of conv2d: `x [N, C, H, W]` → `col [C·kh·kw, N·OH·OW]`, row
/// `(c·kh + ki)·kw + kj`, column `j·OH·OW + oy·OW + ox` holding `x[j, c, oy·s + ki − p, ox·s + kj − p]`
/// (0 in the padding). `W [O, C·kh·kw] · col` is the convolution of the whole batch.
pub fn im2col(x: &Tensor, kh: usize, kw: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let c = x.shape().get(1).copied().unwrap_or(0);
    let g = geom(x.shape(), &[1, c, kh, kw], stride, padding)?;
    if crate::device::kernel::runs_kernels(x.device()) {
        return gpu::im2col(x, &g);
    }
    let dtype = x.dtype();
    let x = cpu_input_f32("im2col", x)?;
    let mut col = vec![0f32; g.k() * g.n * g.p()];
    cpu::im2col(x.f32s("im2col")?, g.n, &g, &mut col);
    Tensor::from_f32(col, &[g.k(), g.n * g.p()]).try_to_dtype(dtype)
}

/// The adjoint of [`im2col`] (the input gradient): `dcol [C·kh·kw, N·OH·OW]` → `dx` of
/// `in_shape = [N, C, H, W]`, overlapping taps added.
pub fn col2im(
    dcol: &Tensor,
    in_shape: [usize; 4],
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let g = geom(&in_shape, &[1, in_shape[1], kh, kw], stride, padding)?;
    if dcol.shape() != [g.k(), g.n * g.p()] {
        bail_shape!(
            "col2im",
            "columns {:?} do not match [{}, {}] for input {in_shape:?}",
            dcol.shape(),
            g.k(),
            g.n * g.p()
        );
    }
    if crate::device::kernel::runs_kernels(dcol.device()) {
        return gpu::col2im(dcol, &g);
    }
    let dtype = dcol.dtype();
    let d = cpu_input_f32("col2im", dcol)?;
    let mut dx = vec![0f32; g.n * g.c * g.h * g.w];
    cpu::col2im(d.f32s("col2im")?, g.n, &g, &mut dx);
    Tensor::from_f32(dx, &in_shape).try_to_dtype(dtype)
}

/// `conv2d(x, w)` with the given stride and zero padding (same on both axes); see the module doc.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    same_device(OP, &[x, w])?;
    let g = geom(x.shape(), w.shape(), stride, padding)?;
    // x and w f32, or both one 16-bit dtype (the output in it)
    let dtype = crate::ops::same_dtype(OP, &[("input", x), ("weight", w)])?;
    if crate::device::kernel::runs_kernels(x.device()) {
        crate::device::kernel::i32_len(OP, x.numel().max(g.k() * g.n * g.p()))?;
        return gpu::forward(x, w, &g);
    }
    let (x, w) = (cpu_input_f32(OP, x)?, cpu_input_f32(OP, w)?);
    let out = cpu::forward(x.f32s(OP)?, w.f32s(OP)?, &g);
    Tensor::from_f32(out, &[g.n, g.o, g.oh, g.ow]).try_to_dtype(dtype)
}

/// Eval-mode BatchNorm statistics as an affine map per output channel (see
/// [`crate::ops::batchnorm::eval_affine`]).
pub struct BnAffine {
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

/// Inference only, CPU: `relu?(bn(conv2d(x, w)) [+ residual])` with BatchNorm in eval mode, in one
/// pass (`fused.rs`); the same arithmetic as the separate ops. No graph node: callers use it only
/// when nothing is recorded.
pub fn conv2d_bn_eval(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    bn: &BnAffine,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    same_device(OP, &[x, w])?;
    let g = geom(x.shape(), w.shape(), stride, padding)?;
    let out_shape = [g.n, g.o, g.oh, g.ow];
    if [&bn.mean, &bn.scale, &bn.shift]
        .iter()
        .any(|v| v.len() != g.o)
    {
        bail_shape!(OP, "BatchNorm statistics must have {} channels", g.o);
    }
    let residual = match residual {
        Some(r) if r.shape() != out_shape => {
            bail_shape!(
                OP,
                "residual {:?} does not match the output {out_shape:?}",
                r.shape()
            )
        }
        Some(r) => Some(cpu_input(OP, r)?),
        None => None,
    };
    let (x, w) = (cpu_input(OP, x)?, cpu_input(OP, w)?);
    let epi = fused::Epilogue {
        mean: &bn.mean,
        scale: &bn.scale,
        shift: &bn.shift,
        residual: residual.as_ref().map(|r| r.f32s(OP)).transpose()?,
        relu,
    };
    let out = fused::forward(x.f32s(OP)?, w.f32s(OP)?, &g, &epi);
    Ok(Tensor::from_f32(out, &out_shape))
}

impl<'m> Graph<'m> {
    /// 2-D convolution of x [N, C, H, W] with w [O, C, kh, kw], no bias; see the module doc.
    pub fn conv2d(&self, x: &Var, w: &Var, stride: usize, padding: usize) -> Result<Var> {
        let out = conv2d(x.tensor(), w.tensor(), stride, padding)?;
        let saved = vec![x.tensor().clone(), w.tensor().clone()];
        Ok(self.record(
            Op::Conv2d(Conv2dOp { stride, padding }),
            &[x, w],
            saved,
            out,
        ))
    }
}

impl Conv2dOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        const BOP: &str = "conv2d backward";
        let (x, w) = (&saved[0], &saved[1]);
        let g = geom(x.shape(), w.shape(), self.stride, self.padding)?;
        if gout.shape() != [g.n, g.o, g.oh, g.ow] {
            bail_shape!(
                BOP,
                "output gradient {:?} does not match the output [{}, {}, {}, {}]",
                gout.shape(),
                g.n,
                g.o,
                g.oh,
                g.ow
            );
        }
        let dtype =
            crate::ops::same_dtype(BOP, &[("input", x), ("weight", w), ("gradient", gout)])?;
        if crate::device::kernel::runs_kernels(gout.device()) {
            let (dx, dw) = gpu::backward(x, w, gout, &g, (needs[0], needs[1]))?;
            return Ok(vec![dx, dw]);
        }
        // 16-bit operands: widened, f32 arithmetic, the gradients rounded back once
        let gout = cpu_input_f32(BOP, gout)?;
        let dx = if needs[0] {
            let w = cpu_input_f32(BOP, w)?;
            let dx = cpu::backward_x(gout.f32s(BOP)?, w.f32s(BOP)?, &g);
            Some(Tensor::from_f32(dx, x.shape()).try_to_dtype(dtype)?)
        } else {
            None
        };
        let dw = if needs[1] {
            let x = cpu_input_f32(BOP, x)?;
            let dw = cpu::backward_w(x.f32s(BOP)?, gout.f32s(BOP)?, &g);
            Some(Tensor::from_f32(dw, w.shape()).try_to_dtype(dtype)?)
        } else {
            None
        };
        Ok(vec![dx, dw])
    }
}
