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
pub use transformer::{BlockDims, BlockInit, Mlp, ResidualAttentionBlock, Transformer};

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

    /// Moves every parameter and buffer to `device` (each value copied there; gradients
    /// cleared, since they would be on the old device). The first failing copy is the `Err`.
    fn to_device(&self, device: crate::Device) -> crate::Result<()> {
        let mut result = Ok(());
        self.visit_params(&mut |p| {
            if result.is_ok() {
                result = p.to_device(device);
            }
        });
        result
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
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// How a parameter is filled at construction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// N(0, std²)
    Normal(f32),
    /// U(−bound, bound)
    Uniform(f32),
}

impl Init {
    /// PyTorch's default for Linear/Conv weights and biases (kaiming-uniform with a = √5):
    /// U(±1/√fan_in).
    pub fn torch_default(fan_in: usize) -> Init {
        Init::Uniform(1.0 / (fan_in.max(1) as f32).sqrt())
    }

    /// Xavier-uniform: U(±√(6/(fan_in + fan_out))) (PyTorch's MultiheadAttention in-projection).
    pub fn xavier_uniform(fan_in: usize, fan_out: usize) -> Init {
        Init::Uniform((6.0 / (fan_in + fan_out).max(1) as f32).sqrt())
    }

    pub fn tensor(self, shape: &[usize], rng: &mut impl Rng) -> Tensor {
        match self {
            Init::Zeros => Tensor::zeros(shape.to_vec()),
            Init::Ones => Tensor::ones(shape.to_vec()),
            Init::Normal(std) => Tensor::randn_with(shape.to_vec(), std, rng),
            Init::Uniform(b) => {
                let n = shape.iter().product::<usize>();
                let v = (0..n)
                    .map(|_| {
                        if b > 0.0 {
                            rng.random_range(-b..b)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Tensor::from_vec(v, shape.to_vec()).expect("sized above")
            }
        }
    }

    pub fn param(self, name: String, shape: &[usize], rng: &mut impl Rng) -> Param {
        Param::new(name, self.tensor(shape, rng))
    }
}
