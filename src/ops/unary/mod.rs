//! Elementwise functions: exact GELU (erf), QuickGELU `x·σ(1.702x)` (OpenAI CLIP), ReLU, exp,
//! log, sigmoid and scaling by a constant. Each saves what its derivative needs: the input, or the
//! output where the derivative is cheaper from it (exp, sigmoid).
//!
//! f16/bf16 tensors on every device: f32 arithmetic, the result rounded once to the input's
//! dtype (kernels: `kernels/elementwise.cu`'s 16-bit instantiations; the CPU widens, computes
//! and rounds). An input and gradient of different dtypes are an error.

pub mod cpu;
pub(crate) mod gpu;

use crate::device::kernel;
use crate::graph::{Graph, Op, Var};
use crate::ops::{cpu_input_f32, same_device};
use crate::{Result, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryKind {
    Gelu,
    QuickGelu,
    Relu,
    Exp,
    Log,
    Sigmoid,
    Scale(f32),
}

impl UnaryKind {
    fn name(self) -> &'static str {
        match self {
            UnaryKind::Gelu => "gelu",
            UnaryKind::QuickGelu => "quick_gelu",
            UnaryKind::Relu => "relu",
            UnaryKind::Exp => "exp",
            UnaryKind::Log => "log",
            UnaryKind::Sigmoid => "sigmoid",
            UnaryKind::Scale(_) => "scale",
        }
    }
    /// Whether backward needs the output (true) or the input (false).
    fn saves_output(self) -> bool {
        matches!(self, UnaryKind::Exp | UnaryKind::Sigmoid)
    }
}

pub struct UnaryOp {
    kind: UnaryKind,
}

/// `f(x)` elementwise.
pub fn unary(kind: UnaryKind, x: &Tensor) -> Result<Tensor> {
    if kernel::runs_kernels(x.device()) && gpu::has_kernel(kind) {
        return gpu::forward(kind, x);
    }
    // 16-bit x: computed in f32 from the widened values, rounded back to x's dtype
    let dtype = x.dtype();
    let x = cpu_input_f32(kind.name(), x)?;
    cpu::forward(kind, x.f32s(kind.name())?, x.shape()).try_to_dtype(dtype)
}

/// `dx = dy·f'(x)`, the tensor-level form of the rule the graph runs, for the kinds whose
/// derivative is a function of the input (GELU, QuickGELU, ReLU, Log, Scale).
pub fn unary_backward(kind: UnaryKind, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let op = "unary backward";
    same_device(op, &[x, dy])?;
    if x.shape() != dy.shape() {
        crate::bail_shape!(
            op,
            "input {:?} and gradient {:?} differ",
            x.shape(),
            dy.shape()
        );
    }
    if kind.saves_output() {
        return Err(crate::Error::Msg(format!(
            "{}: backward is computed from the output, not the input (use the graph)",
            kind.name()
        )));
    }
    if kernel::runs_kernels(x.device()) && gpu::has_kernel(kind) {
        return gpu::backward(kind, x, dy);
    }
    let dtype = crate::ops::same_dtype(op, &[("input", x), ("gradient", dy)])?;
    let (x, g) = (cpu_input_f32(op, x)?, cpu_input_f32(op, dy)?);
    // Scale's derivative is the constant: it reads no input.
    let saved = match kind {
        UnaryKind::Scale(_) => None,
        _ => Some(x.f32s(op)?),
    };
    cpu::backward(kind, saved, g.f32s(op)?, g.shape()).try_to_dtype(dtype)
}

pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary(UnaryKind::Gelu, x)
}
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    unary(UnaryKind::QuickGelu, x)
}
pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary(UnaryKind::Relu, x)
}
pub fn exp(x: &Tensor) -> Result<Tensor> {
    unary(UnaryKind::Exp, x)
}
pub fn scale(x: &Tensor, c: f32) -> Result<Tensor> {
    unary(UnaryKind::Scale(c), x)
}

impl<'m> Graph<'m> {
    pub fn unary(&self, kind: UnaryKind, x: &Var) -> Result<Var> {
        let out = unary(kind, x.tensor())?;
        let saved = match kind {
            UnaryKind::Scale(_) => vec![],
            k if k.saves_output() => vec![out.clone()],
            _ => vec![x.tensor().clone()],
        };
        Ok(self.record(Op::Unary(UnaryOp { kind }), &[x], saved, out))
    }
    /// Exact GELU, `x·Φ(x)`.
    pub fn gelu(&self, x: &Var) -> Result<Var> {
        self.unary(UnaryKind::Gelu, x)
    }
    /// QuickGELU, `x·σ(1.702·x)`.
    pub fn quick_gelu(&self, x: &Var) -> Result<Var> {
        self.unary(UnaryKind::QuickGelu, x)
    }
    pub fn relu(&self, x: &Var) -> Result<Var> {
        self.unary(UnaryKind::Relu, x)
    }
    pub fn exp(&self, x: &Var) -> Result<Var> {
        self.unary(UnaryKind::Exp, x)
    }
    pub fn log(&self, x: &Var) -> Result<Var> {
        self.unary(UnaryKind::Log, x)
    }
    pub fn sigmoid(&self, x: &Var) -> Result<Var> {
        self.unary(UnaryKind::Sigmoid, x)
    }
    /// `c·x` for a constant `c`.
    pub fn scale(&self, x: &Var, c: f32) -> Result<Var> {
        self.unary(UnaryKind::Scale(c), x)
    }
}

impl UnaryOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        if kernel::runs_kernels(gout.device()) && gpu::has_kernel(self.kind) {
            return Ok(vec![Some(match self.kind {
                UnaryKind::Scale(c) => gpu::scale(gout, c)?,
                k => gpu::backward(k, &saved[0], gout)?,
            })]);
        }
        let op = "unary backward";
        // 16-bit activations: widened, the gradient rounded back to the output gradient's dtype
        let dtype = match saved.first() {
            Some(s) => crate::ops::same_dtype(op, &[("saved", s), ("gradient", gout)])?,
            None => gout.dtype(),
        };
        let g = cpu_input_f32(op, gout)?;
        let gs = g.f32s(op)?;
        let s = saved.first().map(|t| cpu_input_f32(op, t)).transpose()?;
        let s = s.as_ref().map(|t| t.f32s(op)).transpose()?;
        Ok(vec![Some(
            cpu::backward(self.kind, s, gs, gout.shape()).try_to_dtype(dtype)?,
        )])
    }
}
