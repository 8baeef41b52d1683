//! `y = x·Wᵀ + b` over the last dim, with W [out, in] as PyTorch stores it.

use super::{join, normal_param, Module};
use crate::{Graph, Param, Result, Tensor, Var};
use rand::Rng;

pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
}

impl Linear {
    /// Weight N(0, std²), bias zero (when `bias`).
    pub fn new(
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        std: f32,
        rng: &mut impl Rng,
    ) -> Linear {
        Linear {
            weight: normal_param(join(prefix, "weight"), &[d_out, d_in], std, rng),
            bias: bias.then(|| Param::new(join(prefix, "bias"), Tensor::zeros([d_out]))),
        }
    }

    pub fn forward(&self, g: &Graph<'_>, x: &Var) -> Result<Var> {
        let shape = x.shape().to_vec();
        let d_in = *shape.last().unwrap_or(&0);
        let rows = x.tensor().numel() / d_in.max(1);
        let x2 = g.reshape(x, [rows, d_in])?;
        let mut y = g.matmul(&x2, &g.param(&self.weight), false, true)?;
        if let Some(b) = &self.bias {
            y = g.add(&y, &g.param(b))?;
        }
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
