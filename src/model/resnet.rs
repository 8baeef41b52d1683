//! CLIP's ModifiedResNet (Radford et al. 2021, §2.4): a ResNet with a 3-conv stem and an average
//! pool instead of a max pool, anti-aliased strided convolutions (an AvgPool before the strided
//! 1×1), and attention pooling in place of global average pooling.
//!
//! stem: conv3×3 s2 (3→w/2), conv3×3 (w/2→w/2), conv3×3 (w/2→w), each BN+ReLU, AvgPool2d(2);
//! four stages of Bottlenecks (planes w, 2w, 4w, 8w; strides 1, 2, 2, 2; expansion 4);
//! AttentionPool2d over the final grid (query = the spatial mean token).

use super::config::ClipConfig;
use crate::nn::{join, BatchNorm2d, Conv2d, Init, Linear, Module};
use crate::ops::{batchnorm, conv2d};
use crate::{Device, Graph, Param, Result, Tensor, Var};
use rand::Rng;

/// conv (no bias) → BatchNorm → optional residual add → optional ReLU.
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

impl ConvBn {
    fn new(
        conv_name: &str,
        bn_name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        rng: &mut impl Rng,
    ) -> ConvBn {
        ConvBn {
            conv: Conv2d::new(conv_name, c_in, c_out, k, 1, k / 2, false, rng),
            bn: BatchNorm2d::new(bn_name, c_out),
        }
    }
    /// `relu?(bn(conv(x)) [+ residual])`. In eval mode with nothing recorded on the CPU, one
    /// fused pass (`ops::conv2d::conv2d_bn_eval`); otherwise the separate ops, with their backward.
    fn forward(&self, g: &Graph<'_>, x: &Var, residual: Option<&Var>, relu: bool) -> Result<Var> {
        let f32_weights = [&self.conv.weight, &self.bn.weight, &self.bn.bias]
            .iter()
            .all(|p| p.value().dtype() == crate::DType::F32);
        if g.fast_inference()
            && !self.bn.training
            && x.tensor().device() == Device::Cpu
            && f32_weights
        {
            let bn = &self.bn;
            let (mean, scale, shift) = batchnorm::eval_affine(
                &bn.weight.value(),
                &bn.bias.value(),
                &bn.running_mean.value(),
                &bn.running_var.value(),
                bn.eps,
            )?;
            let y = conv2d::conv2d_bn_eval(
                x.tensor(),
                &self.conv.weight.value(),
                self.conv.stride,
                self.conv.padding,
                &conv2d::BnAffine { mean, scale, shift },
                residual.map(|r| r.tensor()),
                relu,
            )?;
            return Ok(g.constant(y));
        }
        // Under autocast the trunk's activations are 16-bit, as cuDNN's convolution and
        // BatchNorm store them: BN (statistics in f32) and the residual sum are rounded.
        let mut y = g.autocast(&self.bn.forward(g, &self.conv.forward(g, x)?)?)?;
        if let Some(r) = residual {
            y = g.autocast(&g.add(&y, r)?)?;
        }
        if relu {
            g.relu(&y)
        } else {
            Ok(y)
        }
    }
    pub(crate) fn visit(&self, f: &mut dyn FnMut(&Param)) {
        self.conv.visit_params(f);
        self.bn.visit_params(f);
    }
}

pub struct Bottleneck {
    pub c1: ConvBn,
    pub c2: ConvBn,
    pub c3: ConvBn,
    pub stride: usize,
    /// AvgPool(stride) → 1×1 conv → BN, when the shape changes.
    pub downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn new(
        prefix: &str,
        inplanes: usize,
        planes: usize,
        stride: usize,
        rng: &mut impl Rng,
    ) -> Bottleneck {
        let n = |s: &str| join(prefix, s);
        let c3 = ConvBn::new(&n("conv3"), &n("bn3"), planes, planes * 4, 1, rng);
        // open_clip zeroes bn3's gain so that each residual branch starts as the identity
        c3.bn
            .weight
            .set_value(Tensor::zeros([planes * 4]))
            .expect("same shape");
        Bottleneck {
            c1: ConvBn::new(&n("conv1"), &n("bn1"), inplanes, planes, 1, rng),
            c2: ConvBn::new(&n("conv2"), &n("bn2"), planes, planes, 3, rng),
            c3,
            stride,
            downsample: (stride > 1 || inplanes != planes * 4).then(|| {
                ConvBn::new(
                    &n("downsample.0"),
                    &n("downsample.1"),
                    inplanes,
                    planes * 4,
                    1,
                    rng,
                )
            }),
        }
    }

    fn forward(&self, g: &Graph<'_>, x: &Var) -> Result<Var> {
        let mut out = self.c1.forward(g, x, None, true)?;
        out = self.c2.forward(g, &out, None, true)?;
        if self.stride > 1 {
            out = g.autocast(&g.avg_pool2d(&out, self.stride, self.stride)?)?;
        }
        let identity = match &self.downsample {
            None => x.clone(),
            Some(d) => {
                let pooled = if self.stride > 1 {
                    g.autocast(&g.avg_pool2d(x, self.stride, self.stride)?)?
                } else {
                    x.clone()
                };
                d.forward(g, &pooled, None, false)?
            }
        };
        // relu(bn3(conv3(out)) + identity)
        self.c3.forward(g, &out, Some(&identity), true)
    }

    pub(crate) fn visit(&self, f: &mut dyn FnMut(&Param)) {
        self.c1.visit(f);
        self.c2.visit(f);
        self.c3.visit(f);
        if let Some(d) = &self.downsample {
            d.visit(f);
        }
    }
}

/// Multi-head attention of the spatial-mean token over [mean; grid] tokens, with separate q/k/v
/// projections, then `c_proj` to the output dim.
pub struct AttentionPool2d {
    pub positional_embedding: Param,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub c_proj: Linear,
    pub heads: usize,
}

impl AttentionPool2d {
    fn new(
        prefix: &str,
        spacial_dim: usize,
        embed_dim: usize,
        heads: usize,
        output_dim: usize,
        rng: &mut impl Rng,
    ) -> AttentionPool2d {
        let n = |s: &str| join(prefix, s);
        let std = Init::Normal((embed_dim as f32).powf(-0.5));
        let bias = Some(Init::torch_default(embed_dim));
        AttentionPool2d {
            positional_embedding: std.param(
                n("positional_embedding"),
                &[spacial_dim * spacial_dim + 1, embed_dim],
                rng,
            ),
            q_proj: Linear::new(&n("q_proj"), embed_dim, embed_dim, std, bias, rng),
            k_proj: Linear::new(&n("k_proj"), embed_dim, embed_dim, std, bias, rng),
            v_proj: Linear::new(&n("v_proj"), embed_dim, embed_dim, std, bias, rng),
            c_proj: Linear::new(&n("c_proj"), embed_dim, output_dim, std, bias, rng),
            heads,
        }
    }

    /// x [N, C, H, W] → [N, output_dim].
    fn forward(&self, g: &Graph<'_>, x: &Var) -> Result<Var> {
        let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let (heads, dh, l) = (self.heads, c / self.heads, h * w + 1);
        let x = g.permute(&g.reshape(x, [n, c, h * w])?, &[0, 2, 1])?; // [N, HW, C]
        let mean = g.reshape(&g.autocast(&g.mean(&x, Some(1))?)?, [n, 1, c])?;
        let x = g.add(
            &g.concat(&[&mean, &x], 1)?,
            &g.param(&self.positional_embedding),
        )?; // [N, L, C]
        let split =
            |t: &Var, len: usize| g.permute(&g.reshape(t, [n, len, heads, dh])?, &[0, 2, 1, 3]);
        let q = split(&self.q_proj.forward(g, &g.narrow(&x, 1, 0, 1)?)?, 1)?;
        let k = split(&self.k_proj.forward(g, &x)?, l)?;
        let v = split(&self.v_proj.forward(g, &x)?, l)?;
        let o = g.autocast(&g.attention(&q, &k, &v, false)?)?; // [N, heads, 1, dh]
        self.c_proj.forward(g, &g.reshape(&o, [n, c])?)
    }

    pub(crate) fn visit(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.positional_embedding);
        for l in [&self.q_proj, &self.k_proj, &self.v_proj, &self.c_proj] {
            l.visit_params(f);
        }
    }
}

pub struct ModifiedResNet {
    pub stem: [ConvBn; 3],
    pub layers: [Vec<Bottleneck>; 4],
    pub attnpool: AttentionPool2d,
}

impl ModifiedResNet {
    pub fn new(
        prefix: &str,
        cfg: &ClipConfig,
        blocks: [usize; 4],
        rng: &mut impl Rng,
    ) -> ModifiedResNet {
        let v = &cfg.vision_cfg;
        let w = v.width;
        let n = |s: &str| join(prefix, s);
        let stem = [
            ConvBn {
                conv: Conv2d::new(&n("conv1"), 3, w / 2, 3, 2, 1, false, rng),
                bn: BatchNorm2d::new(&n("bn1"), w / 2),
            },
            ConvBn::new(&n("conv2"), &n("bn2"), w / 2, w / 2, 3, rng),
            ConvBn::new(&n("conv3"), &n("bn3"), w / 2, w, 3, rng),
        ];
        let mut inplanes = w;
        let mut stage = |i: usize,
                         planes: usize,
                         count: usize,
                         stride: usize,
                         rng: &mut dyn rand::RngCore|
         -> Vec<Bottleneck> {
            let mut rng = rng;
            let mut out = Vec::with_capacity(count);
            for j in 0..count {
                let s = if j == 0 { stride } else { 1 };
                out.push(Bottleneck::new(
                    &n(&format!("layer{i}.{j}")),
                    inplanes,
                    planes,
                    s,
                    &mut rng,
                ));
                inplanes = planes * 4;
            }
            out
        };
        let layers = [
            stage(1, w, blocks[0], 1, rng),
            stage(2, w * 2, blocks[1], 2, rng),
            stage(3, w * 4, blocks[2], 2, rng),
            stage(4, w * 8, blocks[3], 2, rng),
        ];
        let embed = w * 32;
        ModifiedResNet {
            stem,
            layers,
            attnpool: AttentionPool2d::new(
                &n("attnpool"),
                v.image_size / 32,
                embed,
                embed / v.head_width,
                cfg.embed_dim,
                rng,
            ),
        }
    }

    /// BatchNorm mode: batch statistics (training) or running statistics (eval).
    pub fn set_training(&mut self, training: bool) {
        for c in &mut self.stem {
            c.bn.training = training;
        }
        for b in self.layers.iter_mut().flatten() {
            for c in [&mut b.c1, &mut b.c2, &mut b.c3] {
                c.bn.training = training;
            }
            if let Some(d) = &mut b.downsample {
                d.bn.training = training;
            }
        }
    }

    /// Freeze the BatchNorm statistics of the first `groups` of [stem, layer1, …, layer4]
    /// (`model::lock`): they normalise with their running statistics, in training too, and no
    /// longer update them.
    pub fn freeze_bn_stats(&mut self, groups: usize) {
        if groups > 0 {
            self.stem.iter_mut().for_each(|c| c.bn.frozen = true);
        }
        for layer in self.layers.iter_mut().take(groups.saturating_sub(1)) {
            for b in layer {
                for c in [&mut b.c1, &mut b.c2, &mut b.c3] {
                    c.bn.frozen = true;
                }
                if let Some(d) = &mut b.downsample {
                    d.bn.frozen = true;
                }
            }
        }
    }

    /// images [B, 3, H, W] → features [B, embed_dim].
    pub fn forward<'m>(&'m self, g: &Graph<'m>, images: &Var) -> Result<Var> {
        let mut x = images.clone();
        for c in &self.stem {
            x = c.forward(g, &x, None, true)?;
        }
        x = g.autocast(&g.avg_pool2d(&x, 2, 2)?)?;
        for block in self.layers.iter().flatten() {
            x = block.forward(g, &x)?;
        }
        self.attnpool.forward(g, &x)
    }
}

impl Module for ModifiedResNet {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        for c in &self.stem {
            c.visit(f);
        }
        for b in self.layers.iter().flatten() {
            b.visit(f);
        }
        self.attnpool.visit(f);
    }
}
