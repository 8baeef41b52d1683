//! Training: the contrastive step (with gradient accumulation over micro-batches), the trainer
//! (schedule, metrics, checkpoints, resume, evaluation, plot) and zero-shot evaluation on the
//! synthetic held-out split; the data-parallel step (`data_parallel`).

pub mod data_parallel;
pub mod eval;
pub mod plot;
pub mod precision;
mod step;
mod trainer;

pub use precision::{LossScaler, Precision};
pub use step::{
    contrastive_forward_backward, contrastive_forward_backward_deferred, read_scalars, DeviceStats,
    StepStats,
};
pub use trainer::{
    existing_run, numbered_checkpoint, numbered_checkpoints, steps_for_epochs, zero1_owners,
    DataSpec, DataStream, RunOptions, RunSummary, StepLog, SyntheticStream, TrainConfig, Trainer,
    EXPLODED,
};

use crate::data::synthetic::Sample;
use crate::data::{OPENAI_MEAN, OPENAI_STD};
use crate::{bail_shape, Result, Tensor};
use image::RgbImage;

/// The images of synthetic samples as a normalised batch ([`images_to_tensor`]).
pub fn samples_to_tensor(samples: &[Sample]) -> Result<Tensor> {
    images_to_tensor(&samples.iter().map(|s| &s.image).collect::<Vec<_>>())
}

/// Rendered RGB images of one size → a normalised batch [N, 3, S, S] (CLIP's mean/std; no resize).
pub fn images_to_tensor(images: &[&RgbImage]) -> Result<Tensor> {
    let Some(first) = images.first() else {
        bail_shape!("images_to_tensor", "no images");
    };
    let (w, h) = first.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; images.len() * 3 * plane];
    for (img, dst) in images.iter().zip(out.chunks_mut(3 * plane)) {
        if img.dimensions() != (w, h) {
            bail_shape!(
                "images_to_tensor",
                "image {:?} in a batch of {:?}",
                img.dimensions(),
                (w, h)
            );
        }
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                dst[c * plane + i] = (px[c] as f32 / 255.0 - OPENAI_MEAN[c]) / OPENAI_STD[c];
            }
        }
    }
    Tensor::from_vec(out, [images.len(), 3, h as usize, w as usize])
}
