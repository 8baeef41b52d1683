//! Launchers of `kernels/conv2d.cu` on Emu or Cuda (one thread per element, blocks of 256):
//! im2col of a whole batch into `col [C·kh·kw, N·OH·OW]` and its adjoint col2im (a gather); and
//! the convolution built from them with the device GEMM (cuBLAS on Cuda, the CPU GEMM on Emu):
//!
//! ```text
//! forward:  col = im2col(x) [K, N·P];  Y = W[O, K]·col [O, N·P];  out = transpose01(Y) [N, O, P]
//! backward: dY = transpose01(dOut) [O, N·P];  dW = dY·colᵀ [O, K] (col rebuilt from x);
//!           dx = col2im(Wᵀ·dY)
//! ```
//!
//! One GEMM covers the whole batch (N·P columns) rather than one per image; the transposes
//! between the GEMM's [O, N, P] and NCHW are `kernels/layout.cu`. x and w f32, or both f16 or
//! both bf16 (16-bit im2col/col2im and transposes; the GEMM's 16-bit operands accumulate in f32),
//! the output and gradients in their dtype.

use super::cpu::Geom;
use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{DType, Result, Tensor};

const MODULE: &str = "conv2d";

/// One launch of `<stem>_<dtype>(out, src, dims…)`: `out` of `out_shape` in `dtype`.
fn run(stem: &str, src: &Tensor, out_shape: &[usize], dtype: DType, g: &Geom) -> Result<Tensor> {
    let op = "im2col";
    let total: usize = out_shape.iter().product();
    kernel::i32_len(op, total.max(src.numel()))?;
    let mut out = DeviceBuf::typed(src.device(), out_shape, dtype)?;
    let name = format!("{stem}_{}", kernel::dtype_suffix(dtype));
    let i = |v: usize| KernelArg::I32(v as i32);
    // SAFETY: x holds N·C·H·W elements and col K·N·P; every index formed is in range (the
    // padding taps are tested before reading).
    unsafe {
        kernel::launch(
            src.device(),
            MODULE,
            &name,
            LaunchConfig::for_elements(total, 256),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(src),
                i(g.n),
                i(g.c),
                i(g.h),
                i(g.w),
                i(g.kh),
                i(g.kw),
                i(g.stride),
                i(g.pad),
                i(g.oh),
                i(g.ow),
            ],
        )
    }?;
    out.into_tensor()
}

/// col in x's dtype (a copy).
pub(crate) fn im2col(x: &Tensor, g: &Geom) -> Result<Tensor> {
    let x = kernel::typed_input("im2col", x)?;
    run("im2col_fwd", &x, &[g.k(), g.n * g.p()], x.dtype(), g)
}

/// dx in `dtype` from the columns' gradient; the kernels read f32 columns (a 16-bit `dcol` is
/// widened first, exactly), so that the conv's own backward hands its GEMM's f32 sums over
/// unrounded ([`backward`]).
pub(crate) fn col2im_to(dcol: &Tensor, g: &Geom, dtype: DType) -> Result<Tensor> {
    let dcol = kernel::typed_input("col2im", &dcol.try_to_dtype(DType::F32)?)?;
    run("col2im_bwd", &dcol, &[g.n, g.c, g.h, g.w], dtype, g)
}

/// dx in dcol's dtype.
pub(crate) fn col2im(dcol: &Tensor, g: &Geom) -> Result<Tensor> {
    col2im_to(dcol, g, dcol.dtype())
}

/// `conv2d(x, w)` on a kernel device; `g` from the caller's shape checks.
pub(crate) fn forward(x: &Tensor, w: &Tensor, g: &Geom) -> Result<Tensor> {
    let col = im2col(x, g)?;
    let w2 = w.reshape([g.o, g.k()])?;
    let y = crate::ops::matmul::matmul(&w2, &col, false, false)?; // [O, N·P]
    crate::ops::layout::gpu::transpose01(&y, g.o, g.n, g.p())?.reshape([g.n, g.o, g.oh, g.ow])
}

/// (dx, dw) of `conv2d(x, w)` from the output gradient, each only when asked for.
pub(crate) fn backward(
    x: &Tensor,
    w: &Tensor,
    gout: &Tensor,
    g: &Geom,
    needs: (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    use crate::ops::matmul::matmul;
    let dy =
        crate::ops::layout::gpu::transpose01(gout, g.n, g.o, g.p())?.reshape([g.o, g.n * g.p()])?;
    let w2 = w.reshape([g.o, g.k()])?;
    let dx = if needs.0 {
        // [K, N·P], f32 whatever the operands (16-bit operands accumulate in f32): col2im sums
        // these and rounds dx once
        let opts = crate::ops::matmul::gpu::GemmOptions {
            out_dtype: Some(DType::F32),
            ..Default::default()
        };
        let dcol = crate::ops::matmul::gpu::gemm(&w2, &dy, true, false, &opts)?;
        Some(col2im_to(&dcol, g, gout.dtype())?)
    } else {
        None
    };
    let dw = if needs.1 {
        let col = im2col(x, g)?;
        Some(matmul(&dy, &col, false, true)?.reshape(w.shape().to_vec())?)
    } else {
        None
    };
    Ok((dx, dw))
}
