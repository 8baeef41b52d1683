//! LayerNorm with gain and bias (eps 1e-5, as CLIP).

use super::{join, Module};
use crate::{Graph, Param, Result, Tensor, Var};

pub struct LayerNorm {
    pub weight: Param,
    pub bias: Param,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(prefix: &str, d: usize) -> LayerNorm {
        LayerNorm {
            weight: Param::new(join(prefix, "weight"), Tensor::ones([d])),
            bias: Param::new(join(prefix, "bias"), Tensor::zeros([d])),
            eps: 1e-5,
        }
    }

    pub fn forward(&self, g: &Graph<'_>, x: &Var) -> Result<Var> {
        g.layer_norm(x, &g.param(&self.weight), &g.param(&self.bias), self.eps)
    }
}

impl Module for LayerNorm {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.weight);
        f(&self.bias);
    }
}
