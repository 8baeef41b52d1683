//! Batched matrix multiply with optional transposes: `C = op(A) · op(B)`, where `op(X)` is `X` or
//! `Xᵀ` of the last two dims. Leading (batch) dims must match, or one side is 2-D and shared by
//! the whole batch (a `Linear` weight). Backward:
//! `dA = dC · op(B)ᵀ`, `dB = op(A)ᵀ · dC` (transposed back when the operand was stored transposed),
//! summed over the batch for a shared operand.
//!
//! Backends: `cpu.rs` (the `gemm` crate) and `gpu.rs` (cuBLAS/cuBLASLt for Cuda tensors, the
//! CPU GEMM on the host storage of Emu tensors).

pub mod cpu;
pub mod gpu;

use crate::device::kernel;
use crate::graph::{Graph, Op, Var};
use crate::ops::{cpu_input, same_device};
use crate::{bail_shape, Result, Tensor};

pub struct MatMulOp {
    ta: bool,
    tb: bool,
}

struct Dims {
    batch: Vec<usize>,
    m: usize,
    n: usize,
    k: usize,
    a_shared: bool,
    b_shared: bool,
}

fn dims(a: &[usize], b: &[usize], ta: bool, tb: bool) -> Result<Dims> {
    const OP: &str = "matmul";
    if a.len() < 2 || b.len() < 2 {
        bail_shape!(OP, "operands need rank ≥ 2, got {a:?} and {b:?}");
    }
    let (ra, ca) = (a[a.len() - 2], a[a.len() - 1]);
    let (rb, cb) = (b[b.len() - 2], b[b.len() - 1]);
    let (m, k) = if ta { (ca, ra) } else { (ra, ca) };
    let (kb, n) = if tb { (cb, rb) } else { (rb, cb) };
    if k != kb {
        bail_shape!(
            OP,
            "inner dims differ: {a:?}{} · {b:?}{} (k {k} vs {kb})",
            if ta { "ᵀ" } else { "" },
            if tb { "ᵀ" } else { "" }
        );
    }
    let (ba, bb) = (&a[..a.len() - 2], &b[..b.len() - 2]);
    let (batch, a_shared, b_shared) = if ba == bb {
        (ba.to_vec(), false, false)
    } else if bb.is_empty() {
        (ba.to_vec(), false, true)
    } else if ba.is_empty() {
        (bb.to_vec(), true, false)
    } else {
        bail_shape!(OP, "batch dims differ: {a:?} vs {b:?}");
    };
    Ok(Dims {
        batch,
        m,
        n,
        k,
        a_shared,
        b_shared,
    })
}

/// `op(a) · op(b)` as a new tensor.
pub fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    same_device("matmul", &[a, b])?;
    let d = dims(a.shape(), b.shape(), ta, tb)?;
    if kernel::runs_kernels(a.device()) {
        return gpu::matmul(a, b, ta, tb, &d, &gpu::GemmOptions::default());
    }
    // 16-bit operands (of one dtype): widened, f32 GEMM, the product rounded back once — as the
    // kernel devices' GEMMs (16-bit operands, f32 accumulation, output in the operands' dtype)
    let dtype = crate::ops::same_dtype("matmul", &[("a", a), ("b", b)])?;
    let (a, b) = (
        crate::ops::cpu_input_f32("matmul", a)?,
        crate::ops::cpu_input_f32("matmul", b)?,
    );
    let nb: usize = d.batch.iter().product();
    let mut out = vec![0f32; nb * d.m * d.n];
    let a_step = if d.a_shared { 0 } else { d.m * d.k };
    let b_step = if d.b_shared { 0 } else { d.k * d.n };
    cpu::sgemm_batched(
        ta,
        tb,
        nb,
        d.m,
        d.n,
        d.k,
        a.f32s("matmul")?,
        a_step,
        b.f32s("matmul")?,
        b_step,
        &mut out,
    );
    let mut shape = d.batch;
    shape.extend([d.m, d.n]);
    Tensor::from_f32(out, &shape).try_to_dtype(dtype)
}

/// Flatten a batched row-major [.., r, c] (not transposed) operand to [batch·r, c].
fn flatten_rows(t: &Tensor) -> Result<Tensor> {
    let c = t.shape()[t.rank() - 1];
    t.reshape(vec![t.numel() / c.max(1), c])
}

impl<'m> Graph<'m> {
    /// `op(a) · op(b)`; see the module doc.
    pub fn matmul(&self, a: &Var, b: &Var, ta: bool, tb: bool) -> Result<Var> {
        let out = matmul(a.tensor(), b.tensor(), ta, tb)?;
        Ok(self.record(
            Op::MatMul(MatMulOp { ta, tb }),
            &[a, b],
            vec![a.tensor().clone(), b.tensor().clone()],
            out,
        ))
    }
}

impl MatMulOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&saved[0], &saved[1]);
        let (ta, tb) = (self.ta, self.tb);
        let d = dims(a.shape(), b.shape(), ta, tb)?;
        let da = if needs[0] {
            let per = if !ta {
                matmul(gout, b, false, !tb)?
            } else {
                matmul(b, gout, tb, true)?
            };
            Some(if d.a_shared {
                sum_leading(&per, a.shape())?
            } else {
                per
            })
        } else {
            None
        };
        let db = if needs[1] {
            Some(if d.b_shared && !ta && !d.batch.is_empty() {
                // Shared weight, untransposed A: fold the batch into the rows of one big GEMM.
                let (a2, g2) = (flatten_rows(a)?, flatten_rows(gout)?);
                if !tb {
                    matmul(&a2, &g2, true, false)?
                } else {
                    matmul(&g2, &a2, true, false)?
                }
            } else {
                let per = if !tb {
                    matmul(a, gout, !ta, false)?
                } else {
                    matmul(gout, a, true, ta)?
                };
                if d.b_shared {
                    sum_leading(&per, b.shape())?
                } else {
                    per
                }
            })
        } else {
            None
        };
        Ok(vec![da, db])
    }
}

/// Sum a [batch.., r, c] tensor over its batch dims to `target` = [r, c], in batch order (a sum
/// over the leading axis of [batch, r·c], which has a kernel on Emu and Cuda).
fn sum_leading(t: &Tensor, target: &[usize]) -> Result<Tensor> {
    let inner: usize = target.iter().product();
    let rows = t.numel() / inner.max(1);
    crate::ops::reduce::sum(&t.reshape([rows, inner])?, Some(0))?.reshape(target.to_vec())
}

/// `y = x·Wᵀ + b` fused: the output starts as the broadcast bias and the GEMM accumulates onto it,
/// saving a pass over the output. x [rows, in], W [out, in], b [out].
pub struct LinearOp {
    has_bias: bool,
}

pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    if x.rank() != 2 || w.rank() != 2 || x.shape()[1] != w.shape()[1] {
        bail_shape!(
            OP,
            "expected x [rows, in] and W [out, in], got {:?} and {:?}",
            x.shape(),
            w.shape()
        );
    }
    let (rows, d_in, d_out) = (x.shape()[0], x.shape()[1], w.shape()[0]);
    if let Some(b) = b {
        if b.shape() != [d_out] {
            bail_shape!(
                OP,
                "bias {:?} must be [{d_out}] for W {:?}",
                b.shape(),
                w.shape()
            );
        }
        same_device(OP, &[x, w, b])?;
    }
    same_device(OP, &[x, w])?;
    if kernel::runs_kernels(x.device()) {
        // cuBLASLt's bias epilogue on Cuda; the CPU GEMM plus the same bias on Emu.
        let d = dims(x.shape(), w.shape(), false, true)?;
        let opts = gpu::GemmOptions {
            bias: b,
            ..Default::default()
        };
        return gpu::matmul(x, w, false, true, &d, &opts);
    }
    cpu_linear(x, w, true, b, [rows, d_in, d_out])
}

/// `x·op(w) + b` on the CPU for [`linear`] (`w` [out, in], `w_transposed`) and [`linear_wt`]
/// (`w` = Wᵀ [in, out]): the bias is written into every output row, then the GEMM accumulates.
fn cpu_linear(
    x: &Tensor,
    w: &Tensor,
    w_transposed: bool,
    b: Option<&Tensor>,
    [rows, d_in, d_out]: [usize; 3],
) -> Result<Tensor> {
    const OP: &str = "linear";
    let (x, w) = (cpu_input(OP, x)?, cpu_input(OP, w)?);
    let mut out = vec![0f32; rows * d_out];
    if let Some(b) = b {
        let b = cpu_input(OP, b)?;
        let bs = b.f32s(OP)?;
        for row in out.chunks_mut(d_out.max(1)) {
            row.copy_from_slice(bs);
        }
    }
    cpu::sgemm(
        false,
        w_transposed,
        rows,
        d_out,
        d_in,
        x.f32s(OP)?,
        w.f32s(OP)?,
        &mut out,
        b.is_some(),
        rayon::current_num_threads(),
    );
    Ok(Tensor::from_f32(out, &[rows, d_out]))
}

/// Inference: the product of [`linear`] from the weight stored transposed, `wt = Wᵀ` [in, out]
/// (see `Param::transposed`): a plain row-major GEMM, which the CPU GEMM runs without repacking
/// the weight on every call. CPU only; no graph node.
pub fn linear_wt(x: &Tensor, wt: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    if x.rank() != 2 || wt.rank() != 2 || x.shape()[1] != wt.shape()[0] {
        bail_shape!(
            OP,
            "expected x [rows, in] and Wᵀ [in, out], got {:?} and {:?}",
            x.shape(),
            wt.shape()
        );
    }
    let (rows, d_in, d_out) = (x.shape()[0], x.shape()[1], wt.shape()[1]);
    if let Some(b) = b {
        if b.shape() != [d_out] {
            bail_shape!(OP, "bias {:?} must be [{d_out}]", b.shape());
        }
    }
    cpu_linear(x, wt, false, b, [rows, d_in, d_out])
}

impl<'m> Graph<'m> {
    /// `x·Wᵀ + b` for x [rows, in], W [out, in], b [out] (PyTorch's `F.linear`).
    pub fn linear(&self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        let out = linear(x.tensor(), w.tensor(), b.map(|b| b.tensor()))?;
        let saved = vec![x.tensor().clone(), w.tensor().clone()];
        let op = Op::Linear(LinearOp {
            has_bias: b.is_some(),
        });
        Ok(match b {
            Some(b) => self.record(op, &[x, w, b], saved, out),
            None => self.record(op, &[x, w], saved, out),
        })
    }
}

impl LinearOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, w) = (&saved[0], &saved[1]);
        let mut grads = vec![
            needs[0]
                .then(|| matmul(gout, w, false, false))
                .transpose()?,
            needs[1].then(|| matmul(gout, x, true, false)).transpose()?,
        ];
        if self.has_bias {
            let d_out = w.shape()[0];
            grads.push(
                needs[2]
                    .then(|| crate::ops::reduce::sum_to_shape(gout, &[d_out]))
                    .transpose()?,
            );
        }
        Ok(grads)
    }
}
