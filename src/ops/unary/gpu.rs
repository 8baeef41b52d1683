//! Launchers of the pointwise kernels in `kernels/elementwise.cu` (one thread per element,
//! blocks of 256), on Emu or Cuda through [`crate::device::kernel::launch`].
//!
//! `<k>_fwd_f32(out, x, n)` for gelu, quick_gelu, relu, exp, log, sigmoid;
//! `scale_fwd_f32(out, x, c, n)`; `<k>_bwd_f32(dx, s, dy, n)` where `s` is what the graph saved:
//! the input x for gelu, quick_gelu, relu and log, the output y for exp and sigmoid (scale's
//! backward is scale). Every kernel also in f16/bf16 (`<k>_{fwd,bwd}_{f16,bf16}`, output in the
//! input's dtype, f32 arithmetic, one rounding): the activations of a mixed-precision model.

use super::UnaryKind;
use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{Result, Tensor};

const THREADS: u32 = 256;
const MODULE: &str = "elementwise";

/// Whether `kind` has kernels (forward and backward): every kind does.
pub(crate) fn has_kernel(_kind: UnaryKind) -> bool {
    true
}

fn kernel_stem(kind: UnaryKind) -> &'static str {
    match kind {
        UnaryKind::Gelu => "gelu",
        UnaryKind::QuickGelu => "quick_gelu",
        UnaryKind::Relu => "relu",
        UnaryKind::Exp => "exp",
        UnaryKind::Log => "log",
        UnaryKind::Sigmoid => "sigmoid",
        UnaryKind::Scale(_) => "scale",
    }
}

/// `out = f(x)` elementwise, in x's dtype (f32, f16 or bf16).
pub(crate) fn forward(kind: UnaryKind, x: &Tensor) -> Result<Tensor> {
    let op = kind.name();
    if let UnaryKind::Scale(c) = kind {
        return scale(x, c);
    }
    let x = kernel::typed_input(op, x)?;
    let n = kernel::i32_len(op, x.numel())?;
    let mut out = DeviceBuf::like(&x)?;
    let cfg = LaunchConfig::for_elements(n as usize, THREADS);
    let name = format!(
        "{}_fwd_{}",
        kernel_stem(kind),
        kernel::dtype_suffix(x.dtype())
    );
    // SAFETY: `out` and `x` hold n elements of x's dtype; the kernel touches indices < n.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            &name,
            cfg,
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&x),
                KernelArg::I32(n),
            ],
        )
    }?;
    out.into_tensor()
}

/// A tensor of `shape` on `device` with every element `value`, made by a kernel.
pub(crate) fn fill(device: crate::Device, shape: &[usize], value: f32) -> Result<Tensor> {
    let op = "fill";
    let n = kernel::i32_len(op, shape.iter().product())?;
    let mut out = DeviceBuf::f32(device, shape)?;
    // SAFETY: `out` holds n elements; the kernel touches indices < n.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            "fill_f32",
            LaunchConfig::for_elements(n as usize, THREADS),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::F32(value),
                KernelArg::I32(n),
            ],
        )
    }?;
    out.into_tensor()
}

/// `c·x`, in x's dtype.
pub(crate) fn scale(x: &Tensor, c: f32) -> Result<Tensor> {
    let op = "scale";
    let x = kernel::typed_input(op, x)?;
    let n = kernel::i32_len(op, x.numel())?;
    let mut out = DeviceBuf::like(&x)?;
    let name = format!("scale_fwd_{}", kernel::dtype_suffix(x.dtype()));
    // SAFETY: `out` and `x` hold n elements of x's dtype; the kernel touches indices < n.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            &name,
            LaunchConfig::for_elements(n as usize, THREADS),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&x),
                KernelArg::F32(c),
                KernelArg::I32(n),
            ],
        )
    }?;
    out.into_tensor()
}

/// `dx = dy·f'(x)` from the saved tensor `x` — the input, or the output y for exp and sigmoid
/// (shapes, dtypes and devices checked here too): x and dy of one dtype, dx in it.
pub(crate) fn backward(kind: UnaryKind, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let op = "unary backward";
    if let UnaryKind::Scale(c) = kind {
        return scale(dy, c);
    }
    kernel::kernel_device(op, &[x, dy])?;
    crate::ops::same_dtype(op, &[("saved", x), ("gradient", dy)])?;
    let (x, dy) = (kernel::typed_input(op, x)?, kernel::typed_input(op, dy)?);
    if x.shape() != dy.shape() {
        crate::bail_shape!(
            op,
            "gradient {:?} does not match input {:?}",
            dy.shape(),
            x.shape()
        );
    }
    let n = kernel::i32_len(op, x.numel())?;
    let name = format!(
        "{}_bwd_{}",
        kernel_stem(kind),
        kernel::dtype_suffix(x.dtype())
    );
    let mut dx = DeviceBuf::like(&x)?;
    // SAFETY: all three buffers hold n elements of one dtype; the kernel touches indices < n.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            &name,
            LaunchConfig::for_elements(n as usize, THREADS),
            &mut [
                KernelArg::Out(&mut dx),
                KernelArg::In(&x),
                KernelArg::In(&dy),
                KernelArg::I32(n),
            ],
        )
    }?;
    dx.into_tensor()
}
