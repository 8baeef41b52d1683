//! Launchers of `kernels/conv2d.cu` on Emu or Cuda (one thread per element, blocks of 256):
//! im2col of a whole batch into `col [C·kh·kw, N·OH·OW]` and its adjoint col2im (a gather).

use super::cpu::Geom;
use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{Result, Tensor};

const MODULE: &str = "conv2d";

fn run(name: &str, src: &Tensor, out_shape: &[usize], g: &Geom) -> Result<Tensor> {
    let op = "im2col";
    let src = kernel::f32_input(op, src)?;
    let total: usize = out_shape.iter().product();
    kernel::i32_len(op, total.max(src.numel()))?;
    let mut out = DeviceBuf::f32(src.device(), out_shape)?;
    let i = |v: usize| KernelArg::I32(v as i32);
    // SAFETY: x holds N·C·H·W elements and col K·N·P; every index formed is in range (the
    // padding taps are tested before reading).
    unsafe {
        kernel::launch(
            src.device(),
            MODULE,
            name,
            LaunchConfig::for_elements(total, 256),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&src),
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

pub(crate) fn im2col(x: &Tensor, g: &Geom) -> Result<Tensor> {
    run("im2col_fwd_f32", x, &[g.k(), g.n * g.p()], g)
}

pub(crate) fn col2im(dcol: &Tensor, g: &Geom) -> Result<Tensor> {
    run("col2im_bwd_f32", dcol, &[g.n, g.c, g.h, g.w], g)
}
