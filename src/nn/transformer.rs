//! The pre-LN transformer of both CLIP towers:
//! `x += attn(ln_1(x)); x += mlp(ln_2(x))`, MLP = c_fc (D→rD) → GELU/QuickGELU → c_proj.
//!
//! Two initialisations, as open_clip does them: the text tower's (`ClipText`: in-proj N(0, D^-½),
//! out-proj and c_proj N(0, D^-½·(2L)^-½), c_fc N(0, (2D)^-½), attention biases 0, MLP biases
//! PyTorch's default), and PyTorch's defaults for the vision tower, which open_clip leaves alone
//! (`TorchDefault`: in-proj xavier-uniform, Linear layers U(±1/√fan_in), attention biases 0).

use super::{join, Activation, Init, LayerNorm, Linear, Module, MultiheadAttention};
use crate::{Graph, Param, Result, Var};
use rand::Rng;

/// Which initialisation the blocks get (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockInit {
    ClipText,
    TorchDefault,
}

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
        // the activation is stored in the autocast format, as the GEMM's output before it
        self.c_proj.forward(g, &g.autocast(&h)?)
    }
}

pub struct ResidualAttentionBlock {
    pub ln_1: LayerNorm,
    pub attn: MultiheadAttention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

/// Shape of a block.
#[derive(Clone, Copy, Debug)]
pub struct BlockDims {
    pub width: usize,
    pub heads: usize,
    /// Hidden width of the MLP.
    pub mlp_width: usize,
    /// Blocks in the stack (scales the projection init).
    pub layers: usize,
}

impl ResidualAttentionBlock {
    pub fn new(
        prefix: &str,
        d: BlockDims,
        act: Activation,
        init: BlockInit,
        rng: &mut impl Rng,
    ) -> Self {
        let (w, h) = (d.width, d.mlp_width);
        let (in_proj, out_proj, fc, proj) = match init {
            BlockInit::ClipText => {
                let attn_std = (w as f32).powf(-0.5);
                let proj_std = attn_std * ((2 * d.layers) as f32).powf(-0.5);
                (
                    Init::Normal(attn_std),
                    Init::Normal(proj_std),
                    Init::Normal(((2 * w) as f32).powf(-0.5)),
                    Init::Normal(proj_std),
                )
            }
            BlockInit::TorchDefault => (
                Init::xavier_uniform(w, 3 * w),
                Init::torch_default(w),
                Init::torch_default(w),
                Init::torch_default(h),
            ),
        };
        ResidualAttentionBlock {
            ln_1: LayerNorm::new(&join(prefix, "ln_1"), w),
            attn: MultiheadAttention::new(
                &join(prefix, "attn"),
                w,
                d.heads,
                in_proj,
                out_proj,
                rng,
            ),
            ln_2: LayerNorm::new(&join(prefix, "ln_2"), w),
            mlp: Mlp {
                c_fc: Linear::new(
                    &join(prefix, "mlp.c_fc"),
                    w,
                    h,
                    fc,
                    Some(Init::torch_default(w)),
                    rng,
                ),
                c_proj: Linear::new(
                    &join(prefix, "mlp.c_proj"),
                    h,
                    w,
                    proj,
                    Some(Init::torch_default(h)),
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
    /// `prefix` is e.g. `"transformer"` (blocks are `{prefix}.resblocks.{i}`); MLP ratio 4.
    pub fn new(
        prefix: &str,
        width: usize,
        layers: usize,
        heads: usize,
        act: Activation,
        init: BlockInit,
        rng: &mut impl Rng,
    ) -> Transformer {
        let dims = BlockDims {
            width,
            heads,
            mlp_width: 4 * width,
            layers,
        };
        Self::with_dims(prefix, dims, act, init, rng)
    }

    pub fn with_dims(
        prefix: &str,
        dims: BlockDims,
        act: Activation,
        init: BlockInit,
        rng: &mut impl Rng,
    ) -> Transformer {
        Transformer {
            resblocks: (0..dims.layers)
                .map(|i| {
                    ResidualAttentionBlock::new(
                        &join(prefix, &format!("resblocks.{i}")),
                        dims,
                        act,
                        init,
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
