//! The vision transformer (Dosovitskiy et al.; CLIP's image tower).
//!
//! patches (conv1, no bias) → prepend `class_embedding` → `+ positional_embedding` → `ln_pre` →
//! transformer → `ln_post` on the class token → `@ proj`.

use super::config::ClipConfig;
use crate::nn::{join, BlockDims, BlockInit, Conv2d, Init, LayerNorm, Module, Transformer};
use crate::{Graph, Param, Result, Var};
use rand::Rng;

pub struct VisionTransformer {
    pub conv1: Conv2d,
    pub class_embedding: Param,
    pub positional_embedding: Param,
    pub ln_pre: LayerNorm,
    pub transformer: Transformer,
    pub ln_post: LayerNorm,
    pub proj: Param,
    pub patch_size: usize,
}

impl VisionTransformer {
    pub fn new(
        prefix: &str,
        cfg: &ClipConfig,
        layers: usize,
        rng: &mut impl Rng,
    ) -> VisionTransformer {
        let v = &cfg.vision_cfg;
        let (width, patch) = (
            v.width,
            v.patch_size.expect("validated: ViT has a patch size"),
        );
        let grid = v.image_size / patch;
        let scale = Init::Normal((width as f32).powf(-0.5));
        let dims = BlockDims {
            width,
            heads: width / v.head_width,
            mlp_width: (width as f64 * v.mlp_ratio) as usize,
            layers,
        };
        VisionTransformer {
            conv1: Conv2d::new(
                &join(prefix, "conv1"),
                3,
                width,
                patch,
                patch,
                0,
                false,
                rng,
            ),
            class_embedding: scale.param(join(prefix, "class_embedding"), &[width], rng),
            positional_embedding: scale.param(
                join(prefix, "positional_embedding"),
                &[grid * grid + 1, width],
                rng,
            ),
            ln_pre: LayerNorm::new(&join(prefix, "ln_pre"), width),
            transformer: Transformer::with_dims(
                &join(prefix, "transformer"),
                dims,
                cfg.activation(),
                BlockInit::TorchDefault,
                rng,
            ),
            ln_post: LayerNorm::new(&join(prefix, "ln_post"), width),
            proj: scale.param(join(prefix, "proj"), &[width, cfg.embed_dim], rng),
            patch_size: patch,
        }
    }

    /// images [B, 3, H, W] → features [B, embed_dim].
    pub fn forward<'m>(&'m self, g: &Graph<'m>, images: &Var) -> Result<Var> {
        let x = self.conv1.forward(g, images)?; // [B, W, gh, gw]
        let (b, w, gh, gw) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let x = g.permute(&g.reshape(&x, [b, w, gh * gw])?, &[0, 2, 1])?; // [B, gh·gw, W]
        let cls = g.broadcast_to(
            &g.reshape(&g.param(&self.class_embedding), [1, 1, w])?,
            &[b, 1, w],
        )?;
        let x = g.concat(&[&cls, &x], 1)?;
        let x = g.add(&x, &g.param(&self.positional_embedding))?;
        let x = self.ln_pre.forward(g, &x)?;
        let x = self.transformer.forward(g, &x, false)?;
        let cls = g.reshape(&g.narrow(&x, 1, 0, 1)?, [b, w])?;
        let cls = self.ln_post.forward(g, &cls)?;
        g.autocast_matmul(&cls, &self.proj)
    }
}

impl Module for VisionTransformer {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.conv1.visit_params(f);
        f(&self.class_embedding);
        f(&self.positional_embedding);
        self.ln_pre.visit_params(f);
        self.transformer.visit_params(f);
        self.ln_post.visit_params(f);
        f(&self.proj);
    }
}
