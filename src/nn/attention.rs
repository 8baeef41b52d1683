//! Multi-head self-attention as `torch.nn.MultiheadAttention` stores it: one packed
//! `in_proj_weight` [3D, D] (q, k, v rows) with `in_proj_bias`, and `out_proj`.

use super::{join, Init, Linear, Module};
use crate::{Graph, Param, Result, Tensor, Var};
use rand::Rng;

pub struct MultiheadAttention {
    pub in_proj_weight: Param,
    pub in_proj_bias: Param,
    pub out_proj: Linear,
    pub heads: usize,
}

impl MultiheadAttention {
    /// Projection weights filled as given; both biases zero (as PyTorch's `_reset_parameters`).
    pub fn new(
        prefix: &str,
        width: usize,
        heads: usize,
        in_proj: Init,
        out_proj: Init,
        rng: &mut impl Rng,
    ) -> MultiheadAttention {
        MultiheadAttention {
            in_proj_weight: in_proj.param(join(prefix, "in_proj_weight"), &[3 * width, width], rng),
            in_proj_bias: Param::new(join(prefix, "in_proj_bias"), Tensor::zeros([3 * width])),
            out_proj: Linear::new(
                &join(prefix, "out_proj"),
                width,
                width,
                out_proj,
                Some(Init::Zeros),
                rng,
            ),
            heads,
        }
    }

    /// x [B, T, D] → [B, T, D]; `causal` for the text tower.
    pub fn forward(&self, g: &Graph<'_>, x: &Var, causal: bool) -> Result<Var> {
        let (b, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let (h, dh) = (self.heads, d / self.heads);
        let x2 = g.reshape(x, [b * t, d])?;
        let qkv = super::linear::project(g, &x2, &self.in_proj_weight, Some(&self.in_proj_bias))?;
        if crate::ops::attention::packed::supported(qkv.tensor(), b, h) {
            // q, k, v read in place and heads written merged (fused kernels on Emu/Cuda,
            // per-head GEMMs on the CPU, training or inference alike), keeping only qkv, the
            // output and the log-sum-exp for backward
            // (under autocast qkv is already rounded, as the in-projection's output, and the
            // attention's output is stored in the autocast format)
            let o = g.autocast(&g.attention_packed(&qkv, b, h, causal)?)?;
            return self.out_proj.forward(g, &g.reshape(&o, [b, t, d])?);
        }
        // [B·T, 3D] → [3, B, H, T, Dh]: split heads
        let qkv = g.permute(&g.reshape(&qkv, [b, t, 3, h, dh])?, &[2, 0, 3, 1, 4])?;
        let split = |i| g.reshape(&g.narrow(&qkv, 0, i, 1)?, [b, h, t, dh]);
        let o = g.autocast(&g.attention(&split(0)?, &split(1)?, &split(2)?, causal)?)?;
        // merge heads: [B, H, T, Dh] → [B, T, D]
        let o = g.reshape(&g.permute(&o, &[0, 2, 1, 3])?, [b, t, d])?;
        self.out_proj.forward(g, &o)
    }
}

impl Module for MultiheadAttention {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.in_proj_weight);
        f(&self.in_proj_bias);
        self.out_proj.visit_params(f);
    }
}
