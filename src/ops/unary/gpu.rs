//! Launchers of the pointwise kernels in `kernels/elementwise.cu` (one thread per element,
//! blocks of 256), on Emu or Cuda through [`crate::device::kernel::launch`].
//!
//! `<k>_fwd_f32(out, x, n)` for gelu, quick_gelu, relu, exp, log, sigmoid;
//! `scale_fwd_f32(out, x, c, n)`; `<k>_bwd_f32(dx, s, dy, n)` where `s` is what the graph saved:
//! the input x for gelu, quick_gelu, relu and log, the output y for exp and sigmoid (scale's
//! backward is scale). GELU also in f16/bf16 (`gelu_{fwd,bwd}_{f16,bf16}`, output in the input's
//! dtype, f32 arithmetic): the activation of a mixed-precision MLP.

use super::UnaryKind;
use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{Device, Error, Result, Tensor};

const THREADS: u32 = 256;
const MODULE: &str = "elementwise";

/// Whether `kind` has kernels (forward and input-based backward).
pub(crate) fn has_kernel(kind: UnaryKind) -> bool {
    matches!(
        kind,
        UnaryKind::Gelu
            | UnaryKind::QuickGelu
            | UnaryKind::Relu
            | UnaryKind::Exp
            | UnaryKind::Log
            | UnaryKind::Sigmoid
            | UnaryKind::Scale(_)
    )
}

fn no_kernel(op: &'static str, kind: UnaryKind, device: Device) -> Error {
    Error::Device {
        op,
        msg: format!(
            "no {} kernel (not implemented on device {device})",
            kind.name()
        ),
    }
}

/// `out = f(x)` elementwise.
pub(crate) fn forward(kind: UnaryKind, x: &Tensor) -> Result<Tensor> {
    let op = "unary";
    if kind == UnaryKind::Gelu {
        return gelu_typed(x, None);
    }
    let x = kernel::f32_input(op, x)?;
    let n = kernel::i32_len(op, x.numel())?;
    let mut out = DeviceBuf::like(&x)?;
    let cfg = LaunchConfig::for_elements(n as usize, THREADS);
    let name = match kind {
        UnaryKind::QuickGelu => "quick_gelu_fwd_f32",
        UnaryKind::Relu => "relu_fwd_f32",
        UnaryKind::Exp => "exp_fwd_f32",
        UnaryKind::Log => "log_fwd_f32",
        UnaryKind::Sigmoid => "sigmoid_fwd_f32",
        UnaryKind::Scale(c) => return scale(&x, c),
        UnaryKind::Gelu => unreachable!("GELU is launched by gelu_typed above"),
    };
    // SAFETY: `out` and `x` hold n elements; the kernel touches indices < n.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            name,
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

/// `c·x`.
pub(crate) fn scale(x: &Tensor, c: f32) -> Result<Tensor> {
    let op = "scale";
    let x = kernel::f32_input(op, x)?;
    let n = kernel::i32_len(op, x.numel())?;
    let mut out = DeviceBuf::like(&x)?;
    // SAFETY: `out` and `x` hold n elements; the kernel touches indices < n.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            "scale_fwd_f32",
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
/// (shapes and devices checked here too).
pub(crate) fn backward(kind: UnaryKind, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let op = "unary backward";
    if let UnaryKind::Scale(c) = kind {
        return scale(dy, c);
    }
    kernel::kernel_device(op, &[x, dy])?;
    if kind == UnaryKind::Gelu {
        return gelu_typed(x, Some(dy));
    }
    let (x, dy) = (kernel::f32_input(op, x)?, kernel::f32_input(op, dy)?);
    if x.shape() != dy.shape() {
        crate::bail_shape!(
            op,
            "gradient {:?} does not match input {:?}",
            dy.shape(),
            x.shape()
        );
    }
    let n = kernel::i32_len(op, x.numel())?;
    let name = match kind {
        UnaryKind::QuickGelu => "quick_gelu_bwd_f32",
        UnaryKind::Relu => "relu_bwd_f32",
        UnaryKind::Exp => "exp_bwd_f32",
        UnaryKind::Log => "log_bwd_f32",
        UnaryKind::Sigmoid => "sigmoid_bwd_f32",
        k => return Err(no_kernel(op, k, x.device())),
    };
    let mut dx = DeviceBuf::like(&x)?;
    // SAFETY: all three buffers hold n elements; the kernel touches indices < n.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            name,
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

/// Exact GELU forward (`dy = None`) or backward on f32, f16 or bf16 (all operands one dtype).
fn gelu_typed(x: &Tensor, dy: Option<&Tensor>) -> Result<Tensor> {
    let op = if dy.is_some() {
        "gelu backward"
    } else {
        "gelu"
    };
    let x = kernel::typed_input(op, x)?;
    let dy = dy.map(|t| kernel::typed_input(op, t)).transpose()?;
    if let Some(dy) = &dy {
        if dy.shape() != x.shape() || dy.dtype() != x.dtype() {
            crate::bail_shape!(
                op,
                "gradient {:?} {} does not match input {:?} {}",
                dy.shape(),
                dy.dtype(),
                x.shape(),
                x.dtype()
            );
        }
    }
    let n = kernel::i32_len(op, x.numel())?;
    let mut out = DeviceBuf::like(&x)?;
    let suffix = kernel::dtype_suffix(x.dtype());
    let cfg = LaunchConfig::for_elements(n as usize, THREADS);
    // SAFETY: out, x (and dy) hold n elements of the kernel's type; indices < n.
    unsafe {
        match &dy {
            None => kernel::launch(
                x.device(),
                MODULE,
                &format!("gelu_fwd_{suffix}"),
                cfg,
                &mut [
                    KernelArg::Out(&mut out),
                    KernelArg::In(&x),
                    KernelArg::I32(n),
                ],
            ),
            Some(dy) => kernel::launch(
                x.device(),
                MODULE,
                &format!("gelu_bwd_{suffix}"),
                cfg,
                &mut [
                    KernelArg::Out(&mut out),
                    KernelArg::In(&x),
                    KernelArg::In(dy),
                    KernelArg::I32(n),
                ],
            ),
        }
    }?;
    out.into_tensor()
}
