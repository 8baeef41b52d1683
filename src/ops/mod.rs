//! Ops, one folder per family: `mod.rs` holds the shape rules, the tensor-level function that picks
//! the backend, the `Graph` method that records the node, and the backward rule; `cpu.rs` holds the
//! CPU code (the reference every other backend is tested against). Tensor-level functions take and
//! return `Tensor`s; `Graph` methods take and return `Var`s.

pub mod attention;
pub mod batchnorm;
pub mod binary;
pub mod contrastive;
pub mod conv2d;
pub mod cross_entropy;
pub mod embedding;
pub mod layernorm;
pub mod layout;
pub mod matmul;
pub mod normalize;
pub mod pool;
pub mod reduce;
pub mod round;
pub mod softmax;
pub mod unary;

use crate::{DType, Device, Result, Tensor};

/// An output buffer that parallel tasks fill in disjoint parts (the fused inference kernels:
/// each task owns its own block of elements), shared as a raw pointer.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(*mut f32);
// SAFETY: users hand each task a disjoint set of elements; nothing reads what another task writes.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub(crate) fn new(out: &mut Vec<f32>) -> OutPtr {
        OutPtr(out.as_mut_ptr())
    }
    /// The address of element `i` (not dereferenced here).
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// The contiguous f32 data of a CPU tensor, or the op's error for other devices/dtypes.
pub(crate) fn cpu_input(op: &'static str, t: &Tensor) -> Result<Tensor> {
    match t.device() {
        Device::Cpu => {
            let c = t.try_contiguous()?;
            c.f32s(op)?;
            Ok(c)
        }
        _ => Err(crate::graph::unsupported_device(op, t)),
    }
}

/// A CPU operand of an op that computes in f32 whatever its operands' storage: contiguous f32
/// data, a 16-bit tensor widened first (exactly: every f16/bf16 value is an f32). The CPU half
/// of the mixed-precision ops, which then round their activation outputs back to the input's
/// dtype once ([`Tensor::try_to_dtype`], round to nearest even), as the 16-bit kernels store
/// them: the same op name works with 16-bit activations on every device.
pub(crate) fn cpu_input_f32(op: &'static str, t: &Tensor) -> Result<Tensor> {
    match t.device() {
        Device::Cpu => cpu_input(op, &t.try_to_dtype(DType::F32)?),
        _ => Err(crate::graph::unsupported_device(op, t)),
    }
}

/// The one dtype of operands that must share it (an activation and its gradient, the two sides
/// of a residual add), or an error naming the op and every operand's shape and dtype.
pub(crate) fn same_dtype(op: &'static str, ts: &[(&str, &Tensor)]) -> Result<DType> {
    let dtype = ts.first().map(|(_, t)| t.dtype()).unwrap_or(DType::F32);
    if ts.iter().any(|(_, t)| t.dtype() != dtype) {
        let all: Vec<String> = ts
            .iter()
            .map(|(name, t)| format!("{name} {:?} {}", t.shape(), t.dtype()))
            .collect();
        return Err(crate::Error::shape(
            op,
            format!(
                "operands of mixed dtypes ({}): they must share one",
                all.join(", ")
            ),
        ));
    }
    Ok(dtype)
}

/// All operands on one device.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    if let Some(first) = ts.first() {
        for t in ts {
            if t.device() != first.device() {
                return Err(crate::Error::Device {
                    op,
                    msg: format!(
                        "operands on different devices ({} and {})",
                        first.device(),
                        t.device()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Rows processed per rayon task in row-wise kernels: fixed (not thread-count dependent), so
/// chunked reductions add in the same order on every machine.
pub(crate) const ROW_CHUNK: usize = 64;
