//! FLOPs of a CLIP from its config alone: what an MFU is computed from.
//!
//! Counted as PyTorch's `FlopCounterMode` counts them (the counter open_clip's profiler uses):
//! 2 FLOPs per multiply-add of every matmul, convolution and attention product (q·kᵀ and P·v),
//! nothing for biases, norms, activations, pooling or softmax. Every product the forward runs is
//! counted the way open_clip's modules run it: the whole 77-token context of the text tower
//! (causal masking does not skip work there), and the attention pool of a ModifiedResNet over all
//! HW+1 tokens although only the first is kept. A training step is [`TRAIN_MULTIPLIER`] × forward
//! (the backward runs two products per forward one: input and weight gradients).
//! `tests/flops.rs` checks every shipped config against tools/make_flops_fixture.py's count.

use super::config::{ClipConfig, VisionConfig, VisionLayers};

/// Forward + backward FLOPs per forward FLOP.
pub const TRAIN_MULTIPLIER: u128 = 3;

/// Forward FLOPs of one sample through each tower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardFlops {
    pub image: u128,
    pub text: u128,
}

impl ForwardFlops {
    /// Forward FLOPs of one image–caption pair.
    pub fn pair(&self) -> u128 {
        self.image + self.text
    }

    /// FLOPs of a training step over `batch` pairs (forward and backward of both towers; the
    /// contrastive loss's 2·N²·D similarity products are left out, as the counter's model count
    /// leaves them out: under 0.1% of ViT-B/32's step at batch 256).
    pub fn train_step(&self, batch: usize) -> u128 {
        TRAIN_MULTIPLIER * self.pair() * batch as u128
    }
}

/// A pre-LN transformer of `layers` blocks on `tokens` tokens of `width`, MLP of `mlp` wide:
/// q, k, v and out projections (4·w² per token), the MLP (2·w·mlp), and attention (2·T²·w for
/// q·kᵀ and as much for P·v).
fn transformer(tokens: u128, width: u128, mlp: u128, layers: u128) -> u128 {
    let per_token = 2 * (4 * width * width + 2 * width * mlp);
    layers * (tokens * per_token + 4 * tokens * tokens * width)
}

/// The MLP width open_clip builds: `int(width * mlp_ratio)`.
fn mlp_width(width: usize, ratio: f64) -> u128 {
    (width as f64 * ratio) as u128
}

/// 2 · output elements · (input channels × kernel area).
fn conv(out_side: u128, c_in: u128, c_out: u128, kernel: u128) -> u128 {
    2 * out_side * out_side * c_out * c_in * kernel * kernel
}

fn vit(v: &VisionConfig, n_layers: usize, embed_dim: u128) -> u128 {
    let (w, p) = (v.width as u128, v.patch_size.unwrap_or(1).max(1) as u128);
    let grid = v.image_size as u128 / p;
    let tokens = grid * grid + 1;
    conv(grid, 3, w, p)
        + transformer(tokens, w, mlp_width(v.width, v.mlp_ratio), n_layers as u128)
        + 2 * w * embed_dim
}

/// ModifiedResNet: the three-conv stem at 1/2 resolution and a 2× average pool; bottlenecks whose
/// 1×1 and 3×3 convolutions run at the input resolution and whose anti-aliased stride (an
/// average pool) comes before the expanding 1×1 and the downsample's 1×1; then attention pooling.
fn resnet(v: &VisionConfig, blocks: &[usize; 4], embed_dim: u128) -> u128 {
    let w = v.width as u128;
    let mut side = v.image_size as u128 / 2;
    let mut flops = conv(side, 3, w / 2, 3) + conv(side, w / 2, w / 2, 3) + conv(side, w / 2, w, 3);
    side /= 2;
    let mut inplanes = w;
    for (i, &n) in blocks.iter().enumerate() {
        let planes = w << i;
        for b in 0..n {
            let stride = if i > 0 && b == 0 { 2 } else { 1 };
            let out_side = side / stride;
            flops += conv(side, inplanes, planes, 1) + conv(side, planes, planes, 3);
            flops += conv(out_side, planes, planes * 4, 1);
            if stride > 1 || inplanes != planes * 4 {
                flops += conv(out_side, inplanes, planes * 4, 1);
            }
            side = out_side;
            inplanes = planes * 4;
        }
    }
    let (c, tokens) = (inplanes, side * side + 1);
    // q, k, v over every token, the two attention products, the output projection to embed_dim
    flops + 2 * tokens * 3 * c * c + 4 * tokens * tokens * c + 2 * tokens * c * embed_dim
}

impl ClipConfig {
    /// Forward FLOPs per sample of each tower (see the module doc for what is counted).
    pub fn forward_flops(&self) -> ForwardFlops {
        let e = self.embed_dim as u128;
        let v = &self.vision_cfg;
        let image = match &v.layers {
            VisionLayers::Vit(n) => vit(v, *n, e),
            VisionLayers::ResNet(blocks) => resnet(v, blocks, e),
        };
        let t = &self.text_cfg;
        let w = t.width as u128;
        let text = transformer(
            t.context_length as u128,
            w,
            mlp_width(t.width, t.mlp_ratio),
            t.layers as u128,
        ) + 2 * w * e;
        ForwardFlops { image, text }
    }
}
