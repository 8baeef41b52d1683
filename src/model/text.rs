//! CLIP's text tower: token + positional embeddings → causal transformer → `ln_final` → the
//! features at each text's end-of-text token (the largest id, so `argmax` of the ids, as in CLIP)
//! → `@ text_projection`.
//!
//! Dynamic truncation: the batch is cut after its last EOT position before the transformer runs.
//! With a causal mask no position attends to anything after itself, so the features at every EOT
//! are exactly those of a full-length run — for a fraction of the work on short captions.

use super::config::ClipConfig;
use crate::nn::{BlockInit, Init, LayerNorm, Module, Transformer};
use crate::{bail_shape, Graph, Param, Result, Var};
use rand::Rng;

pub struct TextTransformer {
    pub token_embedding: Param,
    pub positional_embedding: Param,
    pub transformer: Transformer,
    pub ln_final: LayerNorm,
    pub text_projection: Param,
    pub context_length: usize,
    /// Cut the batch after its last EOT (exact; see the module doc). On by default.
    pub truncate: bool,
}

impl TextTransformer {
    pub fn new(cfg: &ClipConfig, rng: &mut impl Rng) -> TextTransformer {
        let t = &cfg.text_cfg;
        let dims = crate::nn::BlockDims {
            width: t.width,
            heads: t.heads,
            mlp_width: (t.width as f64 * t.mlp_ratio) as usize,
            layers: t.layers,
        };
        TextTransformer {
            token_embedding: Init::Normal(0.02).param(
                "token_embedding.weight".into(),
                &[t.vocab_size, t.width],
                rng,
            ),
            positional_embedding: Init::Normal(0.01).param(
                "positional_embedding".into(),
                &[t.context_length, t.width],
                rng,
            ),
            transformer: Transformer::with_dims(
                "transformer",
                dims,
                cfg.activation(),
                BlockInit::ClipText,
                rng,
            ),
            ln_final: LayerNorm::new("ln_final", t.width),
            text_projection: Init::Normal((t.width as f32).powf(-0.5)).param(
                "text_projection".into(),
                &[t.width, cfg.embed_dim],
                rng,
            ),
            context_length: t.context_length,
            truncate: true,
        }
    }

    /// Token ids [B, T] (row-major, T ≤ context_length, as the tokenizer pads them) → [B, embed_dim].
    pub fn forward<'m>(&'m self, g: &Graph<'m>, ids: &[u32], batch: usize) -> Result<Var> {
        if batch == 0 || !ids.len().is_multiple_of(batch) {
            bail_shape!(
                "encode_text",
                "{} token ids do not split into {batch} rows",
                ids.len()
            );
        }
        let t = ids.len() / batch;
        if t > self.context_length {
            bail_shape!(
                "encode_text",
                "{t} tokens per text exceed the context length {}",
                self.context_length
            );
        }
        // position of the largest id per row (the first one on ties, as torch.argmax)
        let eot: Vec<usize> = ids
            .chunks(t)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
            })
            .collect();
        let len = if self.truncate {
            eot.iter().max().map_or(1, |m| m + 1)
        } else {
            t
        };
        let cut: Vec<u32> = ids
            .chunks(t)
            .flat_map(|row| row[..len].iter().copied())
            .collect();
        let width = self.positional_embedding.value().shape()[1];
        let x = g.embedding(&g.param(&self.token_embedding), &cut, &[batch, len])?;
        let x = g.add(
            &x,
            &g.narrow(&g.param(&self.positional_embedding), 0, 0, len)?,
        )?;
        let x = self.transformer.forward(g, &x, true)?;
        let x = self.ln_final.forward(g, &x)?;
        let rows: Vec<u32> = eot
            .iter()
            .enumerate()
            .map(|(b, &p)| (b * len + p) as u32)
            .collect();
        let pooled = g.embedding(&g.reshape(&x, [batch * len, width])?, &rows, &[batch])?;
        g.autocast_matmul(&pooled, &self.text_projection)
    }
}

impl Module for TextTransformer {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.token_embedding);
        f(&self.positional_embedding);
        self.transformer.visit_params(f);
        self.ln_final.visit_params(f);
        f(&self.text_projection);
    }
}
