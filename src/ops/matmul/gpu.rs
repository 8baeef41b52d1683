//! The kernel-device path of `matmul`. On Cuda: one cuBLAS (or cuBLASLt) call per product,
//! through the row-major ↔ column-major mapping of `device::cuda::gemm`. On Emu (DESIGN §3: the
//! kernels emulated, the GEMMs by the CPU GEMM): the same call resolved the same way — operands,
//! transpose flags, dtype rules, bias — and then run by `cpu::sgemm_batched` on the Emu tensors'
//! host storage. Inputs f32, f16 or bf16 (both the same), f32 accumulation, output in the input
//! dtype unless asked otherwise (Emu widens 16-bit operands to f32, which is exact, and rounds the
//! f32 result once, as cuBLAS's f32-accumulating GEMMs do).
//!
//! Operands are read in place when contiguous, and also when they are a transposed view of
//! contiguous storage (`x.transpose(-1, -2)`): the view's storage is then the other layout of the
//! same matrix and only the transpose flag flips. Other views are made contiguous first.

use super::{dims, Dims};
use crate::device::cuda::gemm::{self, GemmArgs, RowMajorGemm};
use crate::device::cuda::CudaStorage;
use crate::{DType, Device, Error, Result, Tensor};

/// What a device GEMM may do beyond `op(a)·op(b)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GemmOptions<'a> {
    /// Output dtype: f32 or the input dtype (the default).
    pub out_dtype: Option<DType>,
    /// A 1-D bias of `n` entries (in the output dtype, on the same GPU) added to every output row
    /// in the cuBLASLt epilogue. Implies `lt`.
    pub bias: Option<&'a Tensor>,
    /// Use cuBLASLt instead of cuBLAS.
    pub lt: bool,
}

/// `op(a)·op(b)` (+ bias) on the GPU both operands are on.
pub fn gemm(a: &Tensor, b: &Tensor, ta: bool, tb: bool, opts: &GemmOptions) -> Result<Tensor> {
    crate::ops::same_device("matmul", &[a, b])?;
    let d = dims(a.shape(), b.shape(), ta, tb)?;
    matmul(a, b, ta, tb, &d, opts)
}

/// The stored operand to hand to cuBLAS and its effective transpose flag.
fn operand(t: &Tensor, trans: bool) -> Result<(Tensor, bool)> {
    if t.is_contiguous() {
        return Ok((t.clone(), trans));
    }
    let swapped = t.transpose(-1, -2)?;
    if swapped.is_contiguous() {
        return Ok((swapped, !trans));
    }
    Ok((t.try_contiguous()?, trans))
}

fn on_gpu_err(what: &str, t: &Tensor) -> Error {
    Error::Device {
        op: "matmul",
        msg: format!("{what} is on {}, expected a CUDA device", t.device()),
    }
}

pub(super) fn matmul(
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    d: &Dims,
    opts: &GemmOptions,
) -> Result<Tensor> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op: "matmul",
            got: b.dtype(),
            expected: "the dtype of the other operand",
        });
    }
    let input = a.dtype();
    let output = opts.out_dtype.unwrap_or(input);
    gemm::check_dtypes(input, output)?;
    let (a, ta) = operand(a, ta)?;
    let (b, tb) = operand(b, tb)?;
    if a.device() == Device::Emu {
        return emu_matmul(&a, &b, ta, tb, d, output, opts.bias);
    }
    let (sa, oa) = a.cuda_storage().ok_or_else(|| on_gpu_err("a", &a))?;
    let (sb, ob) = b.cuda_storage().ok_or_else(|| on_gpu_err("b", &b))?;
    let backend = sa.backend().clone();

    let batch: usize = d.batch.iter().product();
    let plan = gemm::plan(&RowMajorGemm {
        ta,
        tb,
        batch,
        m: d.m,
        n: d.n,
        k: d.k,
        a_shared: d.a_shared,
        b_shared: d.b_shared,
    })?;
    let out = CudaStorage::uninit(&backend, output, batch * d.m * d.n)?;
    let args = GemmArgs {
        a: sa.address_at(oa),
        b: sb.address_at(ob),
        c: out.address(),
        input,
        output,
        tf32: backend.tf32(),
    };
    let bias = match opts.bias {
        None => None,
        Some(bias) => {
            let bias = checked_bias(bias, d, output, a.device())?;
            let (s, o) = bias
                .cuda_storage()
                .ok_or_else(|| on_gpu_err("bias", &bias))?;
            Some((bias.clone(), s.address_at(o)))
        }
    };
    // SAFETY: the addresses point into live device buffers holding the operands the plan
    // describes (contiguous, checked dtypes and shapes); `a`, `b` and `bias` stay alive until the
    // call is queued, and the stream orders any later reuse of their blocks after it.
    // A bias the epilogue cannot read (a view at an odd offset) is added after a plain GEMM.
    // cuBLASLt finding no algorithm for the operands' real alignment (gemm.rs tells it) is not
    // an error either: the product goes to cuBLAS, which takes any element-aligned operand.
    let (epilogue_bias, mut late_bias) = match bias {
        Some((t, addr)) if !gemm::lt_bias_aligned(addr) => (None, Some(t)),
        other => (other, None),
    };
    unsafe {
        if late_bias.is_some() || !(opts.lt || epilogue_bias.is_some()) {
            backend.gemm(&plan, &args)?;
        } else if backend
            .gemm_lt(&plan, &args, epilogue_bias.as_ref().map(|b| b.1))
            .is_err()
        {
            backend.gemm(&plan, &args)?;
            late_bias = epilogue_bias.map(|b| b.0);
        }
    }
    let mut shape = d.batch.clone();
    shape.extend([d.m, d.n]);
    let out = Tensor::from_cuda(out, &shape)?;
    match late_bias {
        Some(b) => crate::ops::binary::add(&out, &b),
        None => Ok(out),
    }
}

/// The bias of a GEMM: `[n]` in the output dtype on the operands' device, contiguous.
fn checked_bias(bias: &Tensor, d: &Dims, output: DType, device: Device) -> Result<Tensor> {
    let bias = bias.try_contiguous()?;
    if bias.shape() != [d.n] || bias.dtype() != output || bias.device() != device {
        return Err(Error::shape(
            "matmul",
            format!(
                "bias must be [{}] {output} on {device}, got {:?} {} on {}",
                d.n,
                bias.shape(),
                bias.dtype(),
                bias.device()
            ),
        ));
    }
    Ok(bias)
}

/// The Emu GEMM: `op(a)·op(b)` (+ bias) by the CPU GEMM on host storage, for operands already
/// resolved by [`operand`] (contiguous, flags possibly flipped). f32 accumulation; the result
/// is rounded once to `output`.
fn emu_matmul(
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    d: &Dims,
    output: DType,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let op = "matmul";
    let bias = bias
        .map(|t| checked_bias(t, d, output, Device::Emu))
        .transpose()?;
    // Widening f16/bf16 to f32 is exact; f32 operands are shared, not copied.
    let (a, b) = (a.try_to_dtype(DType::F32)?, b.try_to_dtype(DType::F32)?);
    let batch: usize = d.batch.iter().product();
    let mut out = vec![0f32; batch * d.m * d.n];
    super::cpu::sgemm_batched(
        ta,
        tb,
        batch,
        d.m,
        d.n,
        d.k,
        a.device_side_f32s(op)?,
        if d.a_shared { 0 } else { d.m * d.k },
        b.device_side_f32s(op)?,
        if d.b_shared { 0 } else { d.k * d.n },
        &mut out,
    );
    if let Some(bias) = bias {
        // cuBLASLt's bias epilogue: added to the f32 accumulator, before the output rounding.
        let bias = bias.try_to_dtype(DType::F32)?;
        let bs = bias.device_side_f32s(op)?;
        for row in out.chunks_mut(d.n.max(1)) {
            for (o, b) in row.iter_mut().zip(bs) {
                *o += b;
            }
        }
    }
    let mut shape = d.batch.clone();
    shape.extend([d.m, d.n]);
    Tensor::from_f32_on(out, &shape, Device::Emu).try_to_dtype(output)
}
