//! Elementwise functions: exact GELU (erf), QuickGELU `x·σ(1.702x)` (OpenAI CLIP), ReLU, exp,
//! log, sigmoid and scaling by a constant. Each saves what its derivative needs: the input, or the
//! output where the derivative is cheaper from it (exp, sigmoid).

pub mod cpu;
pub(crate) mod gpu;

use crate::device::kernel;
use crate::graph::{Graph, Op, Var};
use crate::ops::{cpu_input, same_device};
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
    let x = cpu_input(kind.name(), x)?;
    Ok(cpu::forward(kind, x.f32s(kind.name())?, x.shape()))
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
    let (x, g) = (cpu_input(op, x)?, cpu_input(op, dy)?);
    // Scale's derivative is the constant: it reads no input.
    let saved = match kind {
        UnaryKind::Scale(_) => None,
        _ => Some(x.f32s(op)?),
    };
    Ok(cpu::backward(kind, saved, g.f32s(op)?, g.shape()))
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
        let g = cpu_input("unary backward", gout)?;
        let gs = g.f32s("unary backward")?;
        let s = saved
            .first()
            .map(|t| t.f32s("unary backward"))
            .transpose()?;
        Ok(vec![Some(cpu::backward(self.kind, s, gs, gout.shape()))])
    }
}
