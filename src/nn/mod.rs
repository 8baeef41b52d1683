//! Layers built from ops: each holds its `Param`s (named with open_clip's keys) and has a
//! `forward(&Graph, &Var)`. `Module` lets optimizers and checkpoint code visit the parameters.

mod attention;
mod conv;
mod linear;
mod norm;
mod transformer;

pub use attention::MultiheadAttention;
pub use conv::{BatchNorm2d, Conv2d};
pub use linear::Linear;
pub use norm::LayerNorm;
pub use transformer::{Mlp, ResidualAttentionBlock, Transformer};

use crate::{Param, Tensor};
use rand::Rng;

/// Something that owns parameters.
pub trait Module {
    /// Call `f` on every parameter and buffer, in a fixed order.
    fn visit_params(&self, f: &mut dyn FnMut(&Param));

    /// All parameters and buffers, in `visit_params` order.
    fn parameters(&self) -> Vec<Param> {
        let mut out = Vec::new();
        self.visit_params(&mut |p| out.push(p.clone()));
        out
    }

    /// Number of trainable scalars.
    fn num_trainable(&self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |p| {
            if p.requires_grad() {
                n += p.value().numel()
            }
        });
        n
    }
}

/// The MLP activation. OpenAI's checkpoints use QuickGELU; open_clip's plain configs exact GELU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    QuickGelu,
}

/// `"{prefix}.{name}"`, or `name` when the prefix is empty.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A parameter drawn from N(0, std²).
pub(crate) fn normal_param(name: String, shape: &[usize], std: f32, rng: &mut impl Rng) -> Param {
    Param::new(name, Tensor::randn_with(shape.to_vec(), std, rng))
}
