//! Storage rounding, the numerics of mixed precision (issue 14) on every device.
//!
//! A 16-bit storage policy (`amp`, `amp_bf16`, `pure_*`) computes in f32 and stores some tensors
//! in f16 or bf16: GEMM and attention inputs and outputs, the activations between them, the
//! weights of the pure policies. What that does to the numbers is one rounding (IEEE
//! round-to-nearest-even) at every place a tensor is stored in 16 bits, and the same rounding of
//! the gradient flowing back into it (the gradient of a 16-bit tensor is a 16-bit tensor). This
//! op is that rounding, on f32 tensors:
//!
//! - [`Graph::round_to`]: `y = rne16(x)`, kept as f32; backward `dx = rne16(dy)`. The gradient
//!   rounds with the same format, so an f16 gradient past 65504 becomes inf — what the dynamic
//!   loss scaler watches for.
//! - [`Graph::autocast`]: `round_to` with the graph's autocast format ([`Graph::set_autocast`]),
//!   or the identity when the graph has none (fp32): what the layers call at their storage
//!   points, so one model code serves every policy.
//! - A parameter whose value is 16-bit (the pure policies) enters the graph widened to f32 by
//!   [`Graph::param`] through the same node: forward exact, backward `rne16(dy)`.
//!
//! Every device computes the same bits: the CPU with the `half` crate's conversions, Emu and Cuda
//! with the cast kernels of `kernels/layout.cu` (f32 → 16 bits → f32, both IEEE RNE). The
//! tensors themselves stay f32 here, so a policy's numbers are reproduced everywhere, the CPU
//! included; storing them in 16 bits on a GPU (half the activation bytes) is the kernels' part.

use crate::graph::{Graph, Op, Var};
use crate::{DType, Param, Result, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// The recorded rounding (backward rounds the gradient to `dtype`, kept f32) or cast (backward
/// casts the gradient back to the input's dtype).
pub struct RoundOp {
    dtype: DType,
    /// A real cast ([`Graph::cast`]): the input's dtype, which the gradient is cast back to.
    cast_from: Option<DType>,
}

/// `x` (any dtype) as f32 values rounded to `dtype`'s nearest (ties to even); f32 for
/// `dtype = F32` (then an exact widening or nothing).
pub fn round_to(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if dtype == DType::F32 || x.dtype() == dtype {
        return x.try_to_dtype(DType::F32);
    }
    if crate::device::kernel::runs_kernels(x.device()) || x.dtype() != DType::F32 {
        return x.try_to_dtype(dtype)?.try_to_dtype(DType::F32);
    }
    let x = crate::ops::cpu_input("round_to", x)?;
    let xs = x.f32s("round_to")?;
    let mut y = vec![0f32; xs.len()];
    let round: fn(f32) -> f32 = match dtype {
        DType::F16 => |v| f16::from_f32(v).to_f32(),
        DType::BF16 => |v| bf16::from_f32(v).to_f32(),
        DType::F32 => unreachable!("returned above"),
    };
    y.par_chunks_mut(1 << 14)
        .zip(xs.par_chunks(1 << 14))
        .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = round(x)));
    Ok(Tensor::from_f32(y, x.shape()))
}

impl RoundOp {
    pub(crate) fn backward(
        &self,
        _saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        Ok(vec![Some(match self.cast_from {
            // the gradient of a 16-bit tensor is 16-bit; its cast back to f32 is exact
            Some(from) => gout.try_to_dtype(self.dtype)?.try_to_dtype(from)?,
            None => round_to(gout, self.dtype)?,
        })])
    }
}

impl<'m> Graph<'m> {
    /// `x` rounded to `dtype` as a 16-bit store would round it (kept f32); backward rounds the
    /// gradient the same way. The identity for `dtype = F32`.
    pub fn round_to(&self, x: &Var, dtype: DType) -> Result<Var> {
        if dtype == DType::F32 && x.tensor().dtype() == DType::F32 {
            return Ok(x.clone());
        }
        let y = round_to(x.tensor(), dtype)?;
        let op = RoundOp {
            dtype,
            cast_from: None,
        };
        Ok(self.record(Op::Round(op), &[x], vec![], y))
    }

    /// `x` as a `dtype` tensor (round to nearest when it narrows); backward casts the gradient
    /// back to `x`'s dtype — after rounding it to `dtype`, since the gradient of a `dtype`
    /// tensor is a `dtype` tensor. The identity when `x` is `dtype` already.
    pub fn cast(&self, x: &Var, dtype: DType) -> Result<Var> {
        let from = x.tensor().dtype();
        if from == dtype {
            return Ok(x.clone());
        }
        let y = x.tensor().try_to_dtype(dtype)?;
        let op = RoundOp {
            dtype,
            cast_from: Some(from),
        };
        Ok(self.record(Op::Round(op), &[x], vec![], y))
    }

    /// `a` and `b` in one dtype, as PyTorch promotes them: a 16-bit operand meeting an f32 one
    /// is widened (exactly) through [`Graph::cast`]; f16 meeting bf16 both go to f32.
    pub(crate) fn promote(&self, a: &Var, b: &Var) -> Result<(Var, Var)> {
        let (da, db) = (a.tensor().dtype(), b.tensor().dtype());
        if da == db {
            return Ok((a.clone(), b.clone()));
        }
        Ok((self.cast(a, DType::F32)?, self.cast(b, DType::F32)?))
    }

    /// [`Graph::round_to`] with this graph's autocast format: a layer's storage point (a GEMM's
    /// input or output, an activation between them). The identity without autocast.
    ///
    /// On a kernel device the value becomes a `dtype` tensor ([`Graph::cast`]), so the ops after
    /// it read and store 16 bits (half the activation bytes, the tensor-core GEMMs); on the CPU
    /// it stays an f32 tensor holding the rounded values ([`Graph::round_to`]): the same numbers
    /// up to where the kernels round in between (an op on 16-bit inputs stores a 16-bit output).
    pub fn autocast(&self, x: &Var) -> Result<Var> {
        match self.autocast_dtype() {
            Some(dt) if crate::device::kernel::runs_kernels(x.tensor().device()) => {
                self.cast(x, dt)
            }
            Some(dt) => self.round_to(x, dt),
            None => Ok(x.clone()),
        }
    }

    /// `a·w` as autocast runs a matmul with a parameter: both inputs and the product in the
    /// autocast format; a plain [`Graph::matmul`] without autocast.
    pub fn autocast_matmul(&self, a: &Var, w: &Param) -> Result<Var> {
        let y = self.matmul(&self.autocast(a)?, &self.autocast_param(w)?, false, false)?;
        self.autocast(&y)
    }

    /// A parameter as a layer reads it under autocast: [`Graph::param`] at the autocast format.
    /// On a kernel device the 16-bit copy is the parameter's kept cast ([`Param::value_as`]),
    /// made once per optimizer step, not once per use, or the value itself when it is stored in
    /// that format (the pure policies); its gradient is rounded to the format and handed to the
    /// parameter in f32. On the CPU: [`Graph::autocast`] of the f32 value.
    pub fn autocast_param(&self, p: &Param) -> Result<Var> {
        let Some(dt) = self.autocast_dtype() else {
            return Ok(self.param(p));
        };
        if !crate::device::kernel::runs_kernels(p.value().device()) {
            return self.autocast(&self.param(p));
        }
        let stored = p.value_as(dt)?;
        let raw = self.param_unwidened(p);
        let op = RoundOp {
            dtype: dt,
            cast_from: Some(DType::F32),
        };
        Ok(self.record(Op::Round(op), &[&raw], vec![], stored))
    }

    /// A 16-bit parameter value widened to f32 (exact), its gradient rounded back to the
    /// parameter's format: what [`Graph::param`] records for the pure policies' weights.
    pub(crate) fn widen(&self, x: Var) -> Result<Var> {
        let dtype = x.tensor().dtype();
        if dtype == DType::F32 {
            return Ok(x);
        }
        let y = x.tensor().try_to_dtype(DType::F32)?;
        let op = RoundOp {
            dtype,
            cast_from: None,
        };
        Ok(self.record(Op::Round(op), &[&x], vec![], y))
    }
}
