//! CLIP models, each file reading like its paper: `vit.rs` (ViT), `resnet.rs` (ModifiedResNet with
//! attention pooling), `text.rs` (the text transformer), `clip.rs` (both towers and the
//! temperature), `config.rs` (open_clip JSON configs), `weights.rs` (safetensors with open_clip,
//! OpenAI and Hugging Face key names), `convert.rs` + `hf.rs` (weights written back in open_clip,
//! Hugging Face or clipcu form), `inspect.rs` (what a weights file is: `clipcu info --weights`).

pub mod clip;
pub mod config;
pub mod convert;
pub mod flops;
pub mod hf;
pub mod inspect;
pub mod lock;
pub mod resize;
pub mod resnet;
pub mod text;
pub mod vit;
pub mod weights;

pub use clip::{Clip, StepPrecision, VisionTower};
pub use config::{ClipConfig, TextConfig, VisionConfig, VisionLayers};
pub use flops::ForwardFlops;
pub use lock::Locking;
pub use weights::{load_clip, load_into, save_clip};
