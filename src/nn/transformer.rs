//! The pre-LN transformer of both CLIP towers:
//! `x += attn(ln_1(x)); x += mlp(ln_2(x))`, MLP = c_fc (D→4D) → GELU/QuickGELU → c_proj.
//! Initialisation follows open_clip: attention in-proj std D^-½, out-proj and c_proj
//! D^-½·(2L)^-½, c_fc (2D)^-½, biases 0, LayerNorm 1/0.

use super::{join, Activation, LayerNorm, Linear, Module, MultiheadAttention};
use crate::{Graph, Param, Result, Var};
use rand::Rng;

pub struct Mlp {
    pub c_fc: Linear,
    pub c_proj: Linear,
    pub act: Activation,
}

impl Mlp {
    pub fn forward(&self, g: &Graph<'_>, x: &Var) -> Result<Var> {
        let h = self.c_fc.forward(g, x)?;
        let h = match self.act {
            Activation::Gelu => g.gelu(&h)?,
            Activation::QuickGelu => g.quick_gelu(&h)?,
        };
        self.c_proj.forward(g, &h)
    }
}

pub struct ResidualAttentionBlock {
    pub ln_1: LayerNorm,
    pub attn: MultiheadAttention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl ResidualAttentionBlock {
    pub fn new(
        prefix: &str,
        width: usize,
        heads: usize,
        layers: usize,
        act: Activation,
        rng: &mut impl Rng,
    ) -> Self {
        let attn_std = (width as f32).powf(-0.5);
        let proj_std = attn_std * ((2 * layers) as f32).powf(-0.5);
        let fc_std = ((2 * width) as f32).powf(-0.5);
        ResidualAttentionBlock {
            ln_1: LayerNorm::new(&join(prefix, "ln_1"), width),
            attn: MultiheadAttention::new(
                &join(prefix, "attn"),
                width,
                heads,
                attn_std,
                proj_std,
                rng,
            ),
            ln_2: LayerNorm::new(&join(prefix, "ln_2"), width),
            mlp: Mlp {
                c_fc: Linear::new(
                    &join(prefix, "mlp.c_fc"),
                    width,
                    4 * width,
                    true,
                    fc_std,
                    rng,
                ),
                c_proj: Linear::new(
                    &join(prefix, "mlp.c_proj"),
                    4 * width,
                    width,
                    true,
                    proj_std,
                    rng,
                ),
                act,
            },
        }
    }

    pub fn forward(&self, g: &Graph<'_>, x: &Var, causal: bool) -> Result<Var> {
        let x = g.add(x, &self.attn.forward(g, &self.ln_1.forward(g, x)?, causal)?)?;
        g.add(&x, &self.mlp.forward(g, &self.ln_2.forward(g, &x)?)?)
    }
}

impl Module for ResidualAttentionBlock {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.ln_1.visit_params(f);
        self.attn.visit_params(f);
        self.ln_2.visit_params(f);
        self.mlp.c_fc.visit_params(f);
        self.mlp.c_proj.visit_params(f);
    }
}

/// A stack of residual attention blocks; with `checkpointing`, each block's activations are
/// recomputed in backward instead of held.
pub struct Transformer {
    pub resblocks: Vec<ResidualAttentionBlock>,
    pub checkpointing: bool,
}

impl Transformer {
    /// `prefix` is e.g. `"transformer"` (blocks are `{prefix}.resblocks.{i}`).
    pub fn new(
        prefix: &str,
        width: usize,
        layers: usize,
        heads: usize,
        act: Activation,
        rng: &mut impl Rng,
    ) -> Transformer {
        Transformer {
            resblocks: (0..layers)
                .map(|i| {
                    ResidualAttentionBlock::new(
                        &join(prefix, &format!("resblocks.{i}")),
                        width,
                        heads,
                        layers,
                        act,
                        rng,
                    )
                })
                .collect(),
            checkpointing: false,
        }
    }

    /// x [B, T, D] → [B, T, D].
    pub fn forward<'m>(&'m self, g: &Graph<'m>, x: &Var, causal: bool) -> Result<Var> {
        let mut x = x.clone();
        for block in &self.resblocks {
            x = if self.checkpointing {
                g.checkpoint(&[&x], move |g, xs| block.forward(g, &xs[0], causal))?
            } else {
                block.forward(g, &x, causal)?
            };
        }
        Ok(x)
    }
}

impl Module for Transformer {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        for b in &self.resblocks {
            b.visit_params(f);
        }
    }
}
