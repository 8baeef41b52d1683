//! Elementwise add, sub, mul and div with numpy broadcasting (a bias `[D]` over `[B, T, D]`, a
//! scalar over anything). Backward multiplies by the local derivative and sums the gradient back
//! down to each operand's shape over the stretched dims.
//!
//! Operands f32, or both f16 or both bf16 (the residual and bias adds of 16-bit activations),
//! on every device: f32 arithmetic, the result rounded once to the operands' dtype (the CPU
//! widens, computes and rounds; the kernels are `kernels/elementwise.cu`'s 16-bit
//! instantiations). Operands of different dtypes are an error naming both.

pub mod cpu;
pub(crate) mod gpu;

use crate::device::kernel;
use crate::graph::{Graph, Op, Var};
use crate::ops::reduce::sum_to_shape;
use crate::ops::{cpu_input, cpu_input_f32, same_device};
use crate::{Error, Result, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryKind {
    fn name(self) -> &'static str {
        match self {
            BinaryKind::Add => "add",
            BinaryKind::Sub => "sub",
            BinaryKind::Mul => "mul",
            BinaryKind::Div => "div",
        }
    }
}

pub struct BinaryOp {
    kind: BinaryKind,
    a_shape: Vec<usize>,
    b_shape: Vec<usize>,
}

/// `a ∘ b` with broadcasting.
pub fn binary(kind: BinaryKind, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = kind.name();
    same_device(op, &[a, b])?;
    if kernel::runs_kernels(a.device()) {
        return match kind {
            BinaryKind::Add => gpu::add(a, b),
            _ => gpu::binary(kind, a, b),
        };
    }
    // 16-bit operands (of one dtype): widened, computed in f32, the result rounded back once
    let dtype = crate::ops::same_dtype(op, &[("a", a), ("b", b)])?;
    let (a, b) = (cpu_input_f32(op, a)?, cpu_input_f32(op, b)?);
    match kind {
        BinaryKind::Add => cpu::broadcast_map(op, &a, &b, |x, y| x + y),
        BinaryKind::Sub => cpu::broadcast_map(op, &a, &b, |x, y| x - y),
        BinaryKind::Mul => cpu::broadcast_map(op, &a, &b, |x, y| x * y),
        BinaryKind::Div => cpu::broadcast_map(op, &a, &b, |x, y| x / y),
    }?
    .try_to_dtype(dtype)
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryKind::Add, a, b)
}
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryKind::Sub, a, b)
}
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryKind::Mul, a, b)
}
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryKind::Div, a, b)
}

/// `acc += g` in place (same shape); copies `acc` first only if its storage is shared.
pub fn add_assign(acc: &mut Tensor, g: &Tensor) -> Result<()> {
    if acc.shape() != g.shape() {
        return Err(Error::shape(
            "add_assign",
            format!("{:?} += {:?}", acc.shape(), g.shape()),
        ));
    }
    if kernel::runs_kernels(acc.device()) {
        // In place when `acc` owns its storage (a parameter's gradient keeps its address across
        // micro-batches and steps); out of place, the old buffer left to its other holders,
        // when anything else shares it.
        if !gpu::write_into(acc, g, true)? {
            *acc = gpu::add(acc, g)?;
        }
        return Ok(());
    }
    let g = cpu_input("add_assign", g)?;
    let gs = g.f32s("add_assign")?;
    let dst = acc.f32s_mut("add_assign")?;
    cpu::zip_in_place(dst, gs, |x, y| x + y);
    Ok(())
}

impl<'m> Graph<'m> {
    fn binary(&self, kind: BinaryKind, a: &Var, b: &Var) -> Result<Var> {
        // a 16-bit activation meeting an f32 one (the residual stream, an f32 parameter) is
        // widened first, as PyTorch's type promotion does
        let (a, b) = &self.promote(a, b)?;
        let out = binary(kind, a.tensor(), b.tensor())?;
        let saved = match kind {
            BinaryKind::Add | BinaryKind::Sub => vec![],
            BinaryKind::Mul | BinaryKind::Div => vec![a.tensor().clone(), b.tensor().clone()],
        };
        let op = BinaryOp {
            kind,
            a_shape: a.shape().to_vec(),
            b_shape: b.shape().to_vec(),
        };
        Ok(self.record(Op::Binary(op), &[a, b], saved, out))
    }
    /// `a + b`, broadcasting.
    pub fn add(&self, a: &Var, b: &Var) -> Result<Var> {
        self.binary(BinaryKind::Add, a, b)
    }
    /// `a − b`, broadcasting.
    pub fn sub(&self, a: &Var, b: &Var) -> Result<Var> {
        self.binary(BinaryKind::Sub, a, b)
    }
    /// `a · b` elementwise, broadcasting.
    pub fn mul(&self, a: &Var, b: &Var) -> Result<Var> {
        self.binary(BinaryKind::Mul, a, b)
    }
    /// `a / b` elementwise, broadcasting.
    pub fn div(&self, a: &Var, b: &Var) -> Result<Var> {
        self.binary(BinaryKind::Div, a, b)
    }
}

impl BinaryOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (ga, gb) = match self.kind {
            BinaryKind::Add => (Some(gout.clone()), Some(gout.clone())),
            BinaryKind::Sub => (
                Some(gout.clone()),
                needs[1]
                    .then(|| crate::ops::unary::scale(gout, -1.0))
                    .transpose()?,
            ),
            BinaryKind::Mul => (
                needs[0].then(|| mul(gout, &saved[1])).transpose()?,
                needs[1].then(|| mul(gout, &saved[0])).transpose()?,
            ),
            BinaryKind::Div => {
                let (a, b) = (&saved[0], &saved[1]);
                let ga = needs[0].then(|| div(gout, b)).transpose()?;
                // d(a/b)/db = −a/b²
                let gb = if needs[1] && kernel::runs_kernels(gout.device()) {
                    Some(gpu::div_grad_b(gout, a, b)?)
                } else if needs[1] {
                    // in f32, rounded once to the gradient's dtype (as the kernel)
                    let op = "div backward";
                    let dtype =
                        crate::ops::same_dtype(op, &[("gradient", gout), ("a", a), ("b", b)])?;
                    let t = cpu::broadcast_map(
                        op,
                        &cpu_input_f32(op, a)?,
                        &cpu_input_f32(op, b)?,
                        |x, y| -x / (y * y),
                    )?;
                    Some(mul(&cpu_input_f32(op, gout)?, &t)?.try_to_dtype(dtype)?)
                } else {
                    None
                };
                (ga, gb)
            }
        };
        let ga = if needs[0] {
            ga.map(|g| sum_to_shape(&g, &self.a_shape)).transpose()?
        } else {
            None
        };
        let gb = if needs[1] {
            gb.map(|g| sum_to_shape(&g, &self.b_shape)).transpose()?
        } else {
            None
        };
        Ok(vec![ga, gb])
    }
}

impl<'m> Graph<'m> {
    /// `x` repeated to `shape` by broadcasting (an add of zeros, so its gradient is the sum over
    /// the repeated dims).
    pub fn broadcast_to(&self, x: &Var, shape: &[usize]) -> Result<Var> {
        let zeros = self.constant(Tensor::full_on(0.0, shape.to_vec(), x.tensor().device())?);
        let y = self.add(&zeros, x)?;
        if y.shape() != shape {
            return Err(Error::shape(
                "broadcast_to",
                format!("{:?} does not broadcast to {shape:?}", x.shape()),
            ));
        }
        Ok(y)
    }
}
