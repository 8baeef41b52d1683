//! Zero-shot evaluation on the synthetic dataset's held-out split: a classifier from class names ×
//! prompt templates (the mean of the normalised text embeddings of a class's prompts,
//! renormalised — prompt ensembling), against the normalised image features; top-1 accuracy with
//! one template and with all of them.

use crate::data::synthetic::{Split, Synthetic, Task};
use crate::model::Clip;
use crate::ops::normalize::l2_normalize;
use crate::tokenizer::Tokenizer;
use crate::{Graph, Result};

/// Text embeddings of `prompts` (normalised rows).
fn text_embeddings(model: &Clip, prompts: &[String]) -> Result<Vec<Vec<f32>>> {
    let ctx = model.config.text_cfg.context_length;
    let ids = Tokenizer::clip().tokenize_batch(prompts, ctx);
    let g = Graph::inference();
    let e = l2_normalize(&model.encode_text(&g, &ids, prompts.len())?.into_tensor())?;
    let d = e.shape()[1];
    Ok(e.to_vec().chunks(d).map(|r| r.to_vec()).collect())
}

/// Class weights [C, D]: per class, the renormalised mean of its prompts' normalised embeddings;
/// `single` keeps only each class's first prompt.
pub fn classifier(model: &Clip, task: Task, single: bool) -> Result<Vec<Vec<f32>>> {
    let mut weights = Vec::new();
    for c in 0..task.class_names().len() {
        let mut prompts = task.prompts(c);
        if single {
            prompts.truncate(1);
        }
        let embs = text_embeddings(model, &prompts)?;
        let d = embs[0].len();
        let mut mean = vec![0f32; d];
        for e in &embs {
            for (m, v) in mean.iter_mut().zip(e) {
                *m += v / embs.len() as f32;
            }
        }
        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        weights.push(mean.iter().map(|v| v / norm).collect());
    }
    Ok(weights)
}

/// Normalised image features of held-out samples `0..n` (rendered at the model's image size).
pub fn held_out_features(
    model: &Clip,
    data: &Synthetic,
    n: usize,
    batch: usize,
) -> Result<(Vec<Vec<f32>>, Vec<crate::data::synthetic::Attributes>)> {
    let mut feats = Vec::with_capacity(n);
    let mut attrs = Vec::with_capacity(n);
    for start in (0..n).step_by(batch.max(1)) {
        let len = batch.min(n - start);
        let samples = data.batch(Split::HeldOut, start as u64, len);
        let images = super::images_to_tensor(
            samples
                .iter()
                .map(|s| &s.image)
                .collect::<Vec<_>>()
                .as_slice(),
        )?;
        let g = Graph::inference();
        let f = l2_normalize(&model.encode_image(&g, &g.constant(images))?.into_tensor())?;
        let d = f.shape()[1];
        feats.extend(f.to_vec().chunks(d).map(|r| r.to_vec()));
        attrs.extend(samples.iter().map(|s| s.attrs));
    }
    Ok((feats, attrs))
}

/// Top-1 accuracy of `weights` on `features` for `task`.
pub fn top1(
    weights: &[Vec<f32>],
    features: &[Vec<f32>],
    attrs: &[crate::data::synthetic::Attributes],
    task: Task,
) -> f32 {
    let mut hits = 0;
    for (f, a) in features.iter().zip(attrs) {
        let scores: Vec<f32> = weights
            .iter()
            .map(|w| w.iter().zip(f).map(|(x, y)| x * y).sum())
            .collect();
        let best = scores
            .iter()
            .enumerate()
            .fold(0, |b, (i, &s)| if s > scores[b] { i } else { b });
        if best == a.label(task) {
            hits += 1;
        }
    }
    hits as f32 / features.len().max(1) as f32
}

/// Zero-shot accuracy on the held-out split for `task`: (single template, ensembled).
pub fn zero_shot(model: &Clip, data: &Synthetic, task: Task, n: usize) -> Result<(f32, f32)> {
    let (feats, attrs) = held_out_features(model, data, n, 256)?;
    let single = classifier(model, task, true)?;
    let ensemble = classifier(model, task, false)?;
    Ok((
        top1(&single, &feats, &attrs, task),
        top1(&ensemble, &feats, &attrs, task),
    ))
}
