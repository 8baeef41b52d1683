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

use crate::{Device, Result, Tensor};

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
