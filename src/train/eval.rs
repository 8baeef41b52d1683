//! Zero-shot evaluation on the synthetic dataset's held-out split: a classifier from class names ×
//! prompt templates (`zeroshot::ZeroShotClassifier`: the mean of the normalised text embeddings of
//! a class's prompts, renormalised — prompt ensembling) against the normalised image features;
//! top-1 accuracy with one template and with all of them.

use crate::data::synthetic::{Split, Synthetic, Task};
use crate::model::Clip;
use crate::ops::layout::concat;
use crate::ops::normalize::l2_normalize;
use crate::zeroshot::{accuracy, ZeroShotClassifier};
use crate::{Graph, Result, Tensor};

/// Normalised image features [n, D] of held-out samples `0..n` and their labels for `tasks`.
fn held_out(
    model: &Clip,
    data: &Synthetic,
    n: usize,
    tasks: &[Task],
) -> Result<(Tensor, Vec<Vec<usize>>)> {
    let mut feats = Vec::new();
    let mut labels = vec![Vec::with_capacity(n); tasks.len()];
    for start in (0..n).step_by(256) {
        let samples = data.batch(Split::HeldOut, start as u64, 256.min(n - start));
        let images = super::samples_to_tensor(&samples)?.to_device(model.device())?;
        let g = Graph::inference();
        feats.push(l2_normalize(
            &model.encode_image(&g, &g.constant(images))?.into_tensor(),
        )?);
        for (l, t) in labels.iter_mut().zip(tasks) {
            l.extend(samples.iter().map(|s| s.attrs.label(*t)));
        }
    }
    Ok((concat(&feats.iter().collect::<Vec<_>>(), 0)?, labels))
}

/// Top-1 on the held-out split for `task`: (first template only, all templates ensembled).
pub fn zero_shot(model: &Clip, data: &Synthetic, task: Task, n: usize) -> Result<(f32, f32)> {
    let (feats, labels) = held_out(model, data, n, &[task])?;
    let classes: Vec<String> = task.class_names().iter().map(|c| c.to_string()).collect();
    let all: Vec<Vec<String>> = (0..classes.len()).map(|c| task.prompts(c)).collect();
    let first: Vec<Vec<String>> = all.iter().map(|p| p[..1].to_vec()).collect();
    let mut out = [0f32; 2];
    for (o, prompts) in out.iter_mut().zip([&first, &all]) {
        let clf = ZeroShotClassifier::build_from_prompts(model, &classes, prompts, 64)?;
        *o = accuracy(&clf.classify(&feats)?, &labels[0], 1)?;
    }
    Ok((out[0], out[1]))
}
