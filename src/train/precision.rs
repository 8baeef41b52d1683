//! The `--precision` policies (open_clip's names), what each stores in 16 bits, and the dynamic
//! loss scaler of the f16 ones.
//!
//! | policy      | weights (master)  | activations, GEMM/attention in/out | Adam moments   | loss scaling |
//! |-------------|-------------------|------------------------------------|----------------|--------------|
//! | `fp32`      | f32               | f32                                | f32            | none         |
//! | `tf32`      | f32               | f32 (GEMMs on TF32 tensor cores)   | f32            | none         |
//! | `amp`       | f32               | f16                                | f32            | dynamic      |
//! | `amp_bf16`  | f32               | bf16                               | f32            | none         |
//! | `pure_fp16` | f16, SR updates   | f16                                | f16 scaled     | dynamic      |
//! | `pure_bf16` | bf16, SR updates  | bf16                               | f16 scaled     | none         |
//!
//! Under every policy LayerNorm, softmax and BatchNorm statistics, the residual stream, the loss
//! and `logit_scale` stay f32 (as PyTorch's autocast keeps them); the 16-bit activations are
//! those autocast stores in 16 bits: the inputs and outputs of the GEMMs, convolutions and
//! attention and the activations between them ([`crate::Graph::set_autocast`], `ops::round`).
//! The pure policies keep every trainable parameter but `logit_scale` in 16 bits only, updated by
//! AdamW with stochastic rounding (`optim::sround`), and Adam's moments in f16 with per-block
//! scales ([`MomentPrecision::half_default`]); their gradients are f32 buffers holding values
//! rounded to the weights' format. Unlike open_clip's `pure_*`, which casts the whole model and
//! so also runs LayerNorm and the residual stream in 16 bits and rounds its updates to nearest,
//! this is the CLIP paper's recipe.
//!
//! f16's range is why the f16 policies scale the loss (torch's `GradScaler` rule): the loss's
//! gradient is multiplied by a power of two (2¹⁶ to start) so that small gradients survive their
//! 16-bit rounding; the gradients are unscaled with the clip (`AdamW::unscale_clip_grad_norm`);
//! a step whose gradient overflowed (non-finite norm) is skipped and the scale halved, and after
//! 2,000 clean steps in a row the scale doubles. bf16 has f32's range and needs none.

use crate::optim::MomentPrecision;
use crate::{DType, Error, Result};
use serde::{Deserialize, Serialize};

/// open_clip's `--precision` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    Tf32,
    Amp,
    AmpBf16,
    PureFp16,
    PureBf16,
}

impl Precision {
    pub const ALL: [Precision; 6] = [
        Precision::Fp32,
        Precision::Tf32,
        Precision::Amp,
        Precision::AmpBf16,
        Precision::PureFp16,
        Precision::PureBf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Amp => "amp",
            Precision::AmpBf16 => "amp_bf16",
            Precision::PureFp16 => "pure_fp16",
            Precision::PureBf16 => "pure_bf16",
        }
    }

    /// The 16-bit format of the activations and GEMM inputs (the graphs' autocast), if any.
    pub fn autocast(self) -> Option<DType> {
        match self {
            Precision::Fp32 | Precision::Tf32 => None,
            Precision::Amp | Precision::PureFp16 => Some(DType::F16),
            Precision::AmpBf16 | Precision::PureBf16 => Some(DType::BF16),
        }
    }

    /// How the trainable weights (but `logit_scale`) are stored: 16 bits under `pure_*`.
    pub fn weights(self) -> DType {
        match self {
            Precision::PureFp16 => DType::F16,
            Precision::PureBf16 => DType::BF16,
            _ => DType::F32,
        }
    }

    /// How Adam's moments are stored: 16 bits under `pure_*`.
    pub fn moments(self) -> MomentPrecision {
        match self {
            Precision::PureFp16 | Precision::PureBf16 => MomentPrecision::half_default(),
            _ => MomentPrecision::F32,
        }
    }

    /// Whether the loss is scaled dynamically (the f16 policies).
    pub fn loss_scaling(self) -> bool {
        self.autocast() == Some(DType::F16)
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Precision> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Precision::ALL.iter().map(|p| p.name()).collect();
                Error::Msg(format!(
                    "unknown precision `{s}`: expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// torch's `GradScaler` defaults.
pub const INITIAL_LOSS_SCALE: f32 = 65536.0;
pub const GROWTH_INTERVAL: u32 = 2000;

/// The dynamic loss scale of the f16 policies (see the module doc). Saved in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The factor the loss's gradient is multiplied by: a power of two.
    pub scale: f32,
    /// Clean steps since the last change of scale.
    pub clean_steps: u32,
    /// Steps skipped for an overflowed gradient, over the run.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: INITIAL_LOSS_SCALE,
            clean_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    /// After a step's gradients: `finite` says whether their norm was. Returns whether the
    /// update is to be applied (false: skip it).
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale = (self.scale * 0.5).max(f32::MIN_POSITIVE);
            self.clean_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.clean_steps += 1;
        if self.clean_steps >= GROWTH_INTERVAL {
            // f16's largest power of two; a larger scale overflows every gradient
            self.scale = (self.scale * 2.0).min(32768.0 * 65536.0);
            self.clean_steps = 0;
        }
        true
    }
}
