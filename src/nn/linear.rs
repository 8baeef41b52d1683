//! `y = x·Wᵀ + b` over the last dim, with W [out, in] as PyTorch stores it.

use super::{join, Init, Module};
use crate::{Device, Graph, Param, Result, Var};
use rand::Rng;

pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
}

impl Linear {
    /// Weight [d_out, d_in] and optional bias [d_out], filled as given.
    pub fn new(
        prefix: &str,
        d_in: usize,
        d_out: usize,
        weight: Init,
        bias: Option<Init>,
        rng: &mut impl Rng,
    ) -> Linear {
        Linear {
            weight: weight.param(join(prefix, "weight"), &[d_out, d_in], rng),
            bias: bias.map(|b| b.param(join(prefix, "bias"), &[d_out], rng)),
        }
    }

    /// PyTorch's `nn.Linear` initialisation: weight and bias U(±1/√d_in).
    pub fn torch_default(
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        rng: &mut impl Rng,
    ) -> Linear {
        let init = Init::torch_default(d_in);
        Self::new(prefix, d_in, d_out, init, bias.then_some(init), rng)
    }

    pub fn forward(&self, g: &Graph<'_>, x: &Var) -> Result<Var> {
        let shape = x.shape().to_vec();
        let d_in = *shape.last().unwrap_or(&0);
        let rows = x.tensor().numel() / d_in.max(1);
        let x2 = g.reshape(x, [rows, d_in])?;
        let y = project(g, &x2, &self.weight, self.bias.as_ref())?;
        let mut out_shape = shape;
        *out_shape.last_mut().expect("rank ≥ 1") = self.weight.value().shape()[0];
        g.reshape(&y, out_shape)
    }
}

impl Module for Linear {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.weight);
        if let Some(b) = &self.bias {
            f(b);
        }
    }
}

/// `x·Wᵀ + b` for x [rows, in] and the parameters W [out, in], b [out]: the recorded `linear` op,
/// or, on a CPU graph that records nothing, the same product from W's cached transpose
/// (`Param::transposed`), which spares the GEMM a repacking of W on every call.
///
/// Under autocast ([`Graph::set_autocast`]) x, W and b are rounded to the 16-bit format as the
/// GEMM reads them, and so is the product as it is stored.
pub(crate) fn project(g: &Graph<'_>, x: &Var, weight: &Param, bias: Option<&Param>) -> Result<Var> {
    let f32_weights = weight.value().dtype() == crate::DType::F32
        && bias.is_none_or(|b| b.value().dtype() == crate::DType::F32);
    if g.fast_inference() && x.tensor().device() == Device::Cpu && f32_weights {
        let b = bias.map(|b| b.value());
        let y = crate::ops::matmul::linear_wt(x.tensor(), &weight.transposed()?, b.as_ref())?;
        return Ok(g.constant(y));
    }
    let b = bias.map(|b| g.autocast_param(b)).transpose()?;
    let y = g.linear(&g.autocast(x)?, &g.autocast_param(weight)?, b.as_ref())?;
    g.autocast(&y)
}
