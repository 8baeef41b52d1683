//! CLIP: an image tower (ViT or ModifiedResNet), a text tower, and a learned temperature
//! `logit_scale` (initialised to ln(1/0.07)). `encode_image`/`encode_text` return unnormalised
//! features, as open_clip's do.

use super::config::{ClipConfig, VisionLayers};
use super::resnet::ModifiedResNet;
use super::text::TextTransformer;
use super::vit::VisionTransformer;
use crate::nn::Module;
use crate::{Graph, Param, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

#[allow(clippy::large_enum_variant)] // one per model; boxing buys nothing
pub enum VisionTower {
    Vit(VisionTransformer),
    ResNet(ModifiedResNet),
}

pub struct Clip {
    pub config: ClipConfig,
    pub visual: VisionTower,
    pub text: TextTransformer,
    pub logit_scale: Param,
    /// The training step's mixed precision, set by the trainer from its `--precision`
    /// (`train::Precision`): the autocast format of the step's recording graphs
    /// ([`Graph::set_autocast`]; inference graphs stay f32) and the loss scale its backward is
    /// seeded with (1 without a scaler).
    pub step_precision: StepPrecision,
}

/// See [`Clip::step_precision`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepPrecision {
    pub autocast: Option<crate::DType>,
    pub loss_scale: f32,
}

impl Default for StepPrecision {
    fn default() -> Self {
        StepPrecision {
            autocast: None,
            loss_scale: 1.0,
        }
    }
}

impl Clip {
    /// A freshly initialised model (open_clip's scheme), deterministic in `seed`.
    pub fn new(config: &ClipConfig, seed: u64) -> Clip {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Self::with_rng(config, &mut rng)
    }

    pub fn with_rng(config: &ClipConfig, rng: &mut impl Rng) -> Clip {
        let visual = match config.vision_cfg.layers {
            VisionLayers::Vit(layers) => {
                VisionTower::Vit(VisionTransformer::new("visual", config, layers, rng))
            }
            VisionLayers::ResNet(blocks) => {
                VisionTower::ResNet(ModifiedResNet::new("visual", config, blocks, rng))
            }
        };
        Clip {
            config: config.clone(),
            visual,
            text: TextTransformer::new(config, rng),
            logit_scale: Param::new("logit_scale", Tensor::scalar((1.0f32 / 0.07).ln())),
            step_precision: StepPrecision::default(),
        }
    }

    /// Preprocessed images [B, 3, S, S] → [B, embed_dim].
    pub fn encode_image<'m>(&'m self, g: &Graph<'m>, images: &Var) -> Result<Var> {
        match &self.visual {
            VisionTower::Vit(v) => v.forward(g, images),
            VisionTower::ResNet(r) => r.forward(g, images),
        }
    }

    /// Token ids [B, T] (row-major) → [B, embed_dim].
    pub fn encode_text<'m>(&'m self, g: &Graph<'m>, ids: &[u32], batch: usize) -> Result<Var> {
        self.text.forward(g, ids, batch)
    }

    /// BatchNorm mode of a ResNet image tower (no effect on a ViT).
    pub fn set_training(&mut self, training: bool) {
        if let VisionTower::ResNet(r) = &mut self.visual {
            r.set_training(training);
        }
    }

    /// Activation checkpointing of every transformer block in both towers.
    pub fn set_checkpointing(&mut self, on: bool) {
        if let VisionTower::Vit(v) = &mut self.visual {
            v.transformer.checkpointing = on;
        }
        self.text.transformer.checkpointing = on;
    }

    /// The device the model's parameters live on (`Module::to_device` moves them all).
    pub fn device(&self) -> crate::Device {
        self.logit_scale.value().device()
    }

    /// Parameters and buffers with their open_clip names.
    pub fn named_params(&self) -> Vec<(String, Param)> {
        self.parameters()
            .into_iter()
            .map(|p| (p.name().to_string(), p))
            .collect()
    }
}

impl Module for Clip {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        match &self.visual {
            VisionTower::Vit(v) => v.visit_params(f),
            VisionTower::ResNet(r) => r.visit_params(f),
        }
        self.text.visit_params(f);
        f(&self.logit_scale);
    }
}
