//! Launchers of `kernels/pool.cu` on Emu or Cuda: one thread per output (forward) or input
//! (backward, a gather over the covering windows — deterministic, no atomics), blocks of 256;
//! f32, f16 or bf16 (the output in the input's dtype).

use super::cpu::Geom;
use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{Result, Tensor};

const MODULE: &str = "pool";

fn run(stem: &str, src: &Tensor, out_shape: &[usize], planes: usize, g: &Geom) -> Result<Tensor> {
    let op = "avg_pool2d";
    let src = kernel::typed_input(op, src)?;
    let mut out = DeviceBuf::typed(src.device(), out_shape, src.dtype())?;
    let name = format!("{stem}_{}", kernel::dtype_suffix(src.dtype()));
    let n: usize = out_shape.iter().product();
    kernel::i32_len(op, n.max(src.numel()))?;
    let i = |v: usize| KernelArg::I32(v as i32);
    // SAFETY: src holds planes·H·W (forward) or planes·OH·OW (backward) elements, out the other;
    // every index the kernel forms is inside its plane.
    unsafe {
        kernel::launch(
            src.device(),
            MODULE,
            &name,
            LaunchConfig::for_elements(n, 256),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&src),
                i(planes),
                i(g.h),
                i(g.w),
                i(g.k),
                i(g.s),
                i(g.oh),
                i(g.ow),
            ],
        )
    }?;
    out.into_tensor()
}

pub(crate) fn forward(x: &Tensor, g: &Geom) -> Result<Tensor> {
    let (n, c) = (x.shape()[0], x.shape()[1]);
    run("avgpool_fwd", x, &[n, c, g.oh, g.ow], n * c, g)
}

pub(crate) fn backward(gout: &Tensor, in_shape: &[usize; 4], g: &Geom) -> Result<Tensor> {
    run("avgpool_bwd", gout, in_shape, in_shape[0] * in_shape[1], g)
}
