//! Conv2d (NCHW, optional bias) and BatchNorm2d (running statistics as buffers), as PyTorch names
//! their parameters (`weight`, `bias`, `running_mean`, `running_var`).

use super::{join, Module};
use crate::{Graph, Param, Result, Tensor, Var};
use rand::Rng;

pub struct Conv2d {
    pub weight: Param,
    pub bias: Option<Param>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    /// Weight [out, in, k, k] drawn as PyTorch's default, U(−1/√fan_in, 1/√fan_in).
    pub fn new(
        prefix: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        rng: &mut impl Rng,
    ) -> Conv2d {
        let bound = 1.0 / ((c_in * kernel * kernel) as f32).sqrt();
        let shape = [c_out, c_in, kernel, kernel];
        let w: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Conv2d {
            weight: Param::new(
                join(prefix, "weight"),
                Tensor::from_vec(w, shape).expect("sized above"),
            ),
            bias: bias.then(|| Param::new(join(prefix, "bias"), Tensor::zeros([c_out]))),
            stride,
            padding,
        }
    }

    /// x [N, C, H, W] → [N, O, OH, OW]. Under autocast x, the weight and the bias are rounded
    /// to the 16-bit format as the convolution reads them, and so is its output.
    pub fn forward(&self, g: &Graph<'_>, x: &Var) -> Result<Var> {
        let w = g.autocast_param(&self.weight)?;
        let y = g.conv2d(&g.autocast(x)?, &w, self.stride, self.padding)?;
        let y = match &self.bias {
            None => y,
            Some(b) => {
                let c = b.value().numel();
                g.add(&y, &g.reshape(&g.autocast_param(b)?, [c, 1, 1])?)?
            }
        };
        g.autocast(&y)
    }
}

impl Module for Conv2d {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.weight);
        if let Some(b) = &self.bias {
            f(b);
        }
    }
}

pub struct BatchNorm2d {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Param,
    pub running_var: Param,
    pub momentum: f32,
    pub eps: f32,
    /// Batch statistics (and running-stat updates) when true; running statistics when false.
    pub training: bool,
    /// Always running statistics, whatever `training` says (LiT's `freeze_bn_stats` for a
    /// locked tower: `ModifiedResNet::lock`).
    pub frozen: bool,
}

impl BatchNorm2d {
    pub fn new(prefix: &str, channels: usize) -> BatchNorm2d {
        BatchNorm2d {
            weight: Param::new(join(prefix, "weight"), Tensor::ones([channels])),
            bias: Param::new(join(prefix, "bias"), Tensor::zeros([channels])),
            running_mean: Param::buffer(join(prefix, "running_mean"), Tensor::zeros([channels])),
            running_var: Param::buffer(join(prefix, "running_var"), Tensor::ones([channels])),
            momentum: 0.1,
            eps: 1e-5,
            training: true,
            frozen: false,
        }
    }

    pub fn forward(&self, g: &Graph<'_>, x: &Var) -> Result<Var> {
        g.batch_norm2d(
            x,
            &g.param(&self.weight),
            &g.param(&self.bias),
            &self.running_mean,
            &self.running_var,
            self.training && !self.frozen,
            self.momentum,
            self.eps,
        )
    }
}

impl Module for BatchNorm2d {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.weight);
        f(&self.bias);
        f(&self.running_mean);
        f(&self.running_var);
    }
}
