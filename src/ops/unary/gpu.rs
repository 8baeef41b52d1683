//! Launchers of the elementwise kernels in `kernels/elementwise.cu`, shared by the Cuda and Emu
//! devices: the launch geometry and argument order are decided here once.
//!
//! `gelu_fwd_f32(out, x, n)`, `gelu_bwd_f32(dx, x, dy, n)`: one thread per element, blocks of
//! 256. Outputs on Emu start as NaN, so an element the grid fails to cover can never pass a test.

use crate::device::{emu, LaunchConfig};
use crate::{DType, Device, Error, Result, Tensor};

const THREADS: u32 = 256;

/// Checks an f32 operand and returns its element count as the kernels' `int n`.
fn elems(op: &'static str, t: &Tensor) -> Result<i32> {
    if t.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            got: t.dtype(),
            expected: "f32",
        });
    }
    i32::try_from(t.numel()).map_err(|_| {
        Error::shape(
            op,
            format!("{} elements exceed the kernel's i32 index", t.numel()),
        )
    })
}

fn unsupported(op: &'static str, device: Device) -> Error {
    Error::Device {
        op,
        msg: format!("no {op} kernel launcher for device {device} yet"),
    }
}

/// `out[i] = gelu(x[i])`.
pub(crate) fn gelu_fwd(x: &Tensor) -> Result<Tensor> {
    let op = "gelu";
    let n = elems(op, x)?;
    let cfg = LaunchConfig::for_elements(n as usize, THREADS);
    match x.device() {
        Device::Emu => {
            let x = x.contiguous();
            let xs = x.f32s(op)?;
            let mut out = vec![f32::NAN; xs.len()];
            // SAFETY: `out` and `xs` hold n elements, the kernel touches indices < n.
            unsafe {
                emu::launch(
                    "gelu_fwd_f32",
                    cfg,
                    &[
                        emu::EmuArg::slice_mut(&mut out),
                        emu::EmuArg::slice(xs),
                        emu::EmuArg::I32(n),
                    ],
                )?;
            }
            Ok(Tensor::from_f32_on(out, x.shape(), Device::Emu))
        }
        d => Err(unsupported(op, d)),
    }
}

/// `dx[i] = dy[i]·gelu'(x[i])`.
pub(crate) fn gelu_bwd(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let op = "gelu backward";
    let n = elems(op, x)?;
    if dy.shape() != x.shape() {
        crate::bail_shape!(
            op,
            "gradient {:?} does not match input {:?}",
            dy.shape(),
            x.shape()
        );
    }
    elems(op, dy)?;
    let cfg = LaunchConfig::for_elements(n as usize, THREADS);
    match (x.device(), dy.device()) {
        (Device::Emu, Device::Emu) => {
            let (x, dy) = (x.contiguous(), dy.contiguous());
            let (xs, gs) = (x.f32s(op)?, dy.f32s(op)?);
            let mut dx = vec![f32::NAN; xs.len()];
            // SAFETY: all three buffers hold n elements, the kernel touches indices < n.
            unsafe {
                emu::launch(
                    "gelu_bwd_f32",
                    cfg,
                    &[
                        emu::EmuArg::slice_mut(&mut dx),
                        emu::EmuArg::slice(xs),
                        emu::EmuArg::slice(gs),
                        emu::EmuArg::I32(n),
                    ],
                )?;
            }
            Ok(Tensor::from_f32_on(dx, x.shape(), Device::Emu))
        }
        (a, b) if a != b => Err(Error::Device {
            op,
            msg: format!("operands on different devices ({a} and {b})"),
        }),
        (d, _) => Err(unsupported(op, d)),
    }
}
