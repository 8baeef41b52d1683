//! Zero-shot evaluation on the synthetic dataset's held-out split: a classifier from class names ×
//! prompt templates (`zeroshot::ZeroShotClassifier`: the mean of the normalised text embeddings of
//! a class's prompts, renormalised — prompt ensembling) against the normalised image features;
//! top-1 accuracy with one template and with all of them. And the evaluations on a user's data
//! while training: [`ZeroShotSet`] (an ImageFolder) and [`ValidationSet`] (held-out pairs).

use crate::data::synthetic::{Split, Synthetic, Task};
use crate::data::{CsvOptions, ImageFolder, Loader, LoaderConfig, Source};
use crate::model::Clip;
use crate::ops::layout::concat;
use crate::ops::normalize::l2_normalize;
use crate::zeroshot::{accuracies, accuracy, retrieval_recall, Templates, ZeroShotClassifier};
use crate::{Error, Graph, Result, Tensor};
use std::path::Path;

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

/// Zero-shot top-1/top-5 on a user's ImageFolder, evaluated during training
/// (`clipcu train --zeroshot-data`): the classifier is rebuilt from the text tower at every
/// evaluation (it changes as the model trains); every image is classified (open_clip's
/// `zero_shot_eval`), read in file order with the exact evaluation transform; unreadable images
/// are skipped and counted.
#[derive(Clone, Debug)]
pub struct ZeroShotSet {
    /// The folder as given (the `data` of its metrics lines).
    pub name: String,
    folder: std::sync::Arc<ImageFolder>,
    /// Display names of the classes, in the folder's class order.
    pub classes: Vec<String>,
    templates: Templates,
}

/// One zero-shot evaluation of a [`ZeroShotSet`].
#[derive(Clone, Debug, PartialEq)]
pub struct ZeroShotResult {
    pub top1: f32,
    pub top5: f32,
    /// Images classified (unreadable ones skipped).
    pub samples: usize,
}

impl ZeroShotSet {
    /// `templates`: `openai`, `simple` or a file (`Templates::parse`); `classnames`: a file of
    /// display names, one per line in the order of the sorted class folders, or `folder<TAB>name`
    /// lines for some of them (default: the folder name with `_` as a space).
    pub fn open(folder: &str, templates: &str, classnames: Option<&Path>) -> Result<ZeroShotSet> {
        let f = ImageFolder::open(folder)?;
        if f.samples.is_empty() {
            return Err(Error::format(
                Path::new(folder),
                format!(
                    "--zeroshot-data has no images in its {} class folders (nothing to evaluate)",
                    f.classes.len()
                ),
            ));
        }
        let mut classes: Vec<String> = f.classes.iter().map(|c| c.replace('_', " ")).collect();
        if let Some(path) = classnames {
            classes = read_class_names(path, &f.classes, classes)?;
        }
        Ok(ZeroShotSet {
            name: folder.to_string(),
            templates: Templates::parse(templates)?,
            folder: std::sync::Arc::new(f),
            classes,
        })
    }

    pub fn len(&self) -> usize {
        self.folder.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.folder.samples.is_empty()
    }

    /// Classifies every image with `model` (wherever it lives; BatchNorm as the model is set:
    /// the trainer switches it to eval mode first), `batch` images per forward pass.
    pub fn evaluate(&self, model: &Clip, batch: usize, workers: usize) -> Result<ZeroShotResult> {
        let clf = ZeroShotClassifier::build(model, &self.classes, &self.templates, batch)?;
        let k5 = 5.min(self.classes.len());
        let (mut hits1, mut hits5, mut n) = (0f64, 0f64, 0usize);
        let mut loader = eval_loader(
            Source::ImageFolder(std::sync::Arc::clone(&self.folder)),
            model,
            batch,
            workers,
        )?;
        while let Some(b) = loader.next_batch()? {
            let feats = image_features(model, b.images)?;
            let labels: Vec<usize> = b.labels.iter().map(|&l| l as usize).collect();
            let acc = accuracies(&clf.classify(&feats)?, &labels, &[1, k5])?;
            hits1 += acc[0] as f64 * labels.len() as f64;
            hits5 += acc[1] as f64 * labels.len() as f64;
            n += labels.len();
        }
        if n == 0 {
            return Err(Error::format(
                Path::new(&self.name),
                "--zeroshot-data: none of its images could be read (see the skips named above)",
            ));
        }
        Ok(ZeroShotResult {
            top1: (hits1 / n as f64) as f32,
            top5: (hits5 / n as f64) as f32,
            samples: n,
        })
    }
}

/// Display names from `path` for the classes `folders` (see [`ZeroShotSet::open`]).
fn read_class_names(
    path: &Path,
    folders: &[String],
    mut names: Vec<String>,
) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.iter().all(|l| l.contains('\t')) {
        for (i, l) in lines.iter().enumerate() {
            let Some((folder, name)) = l.split_once('\t') else {
                continue; // (every line has a tab: checked above)
            };
            let Some(c) = folders.iter().position(|f| f == folder) else {
                return Err(Error::format(
                    path,
                    format!(
                        "line {}: `{folder}` is not a class folder of --zeroshot-data (its \
                         classes: {})",
                        i + 1,
                        folders.join(", ")
                    ),
                ));
            };
            names[c] = name.trim().to_string();
        }
    } else if lines.len() == folders.len() {
        names = lines.iter().map(|l| l.trim().to_string()).collect();
    } else {
        return Err(Error::format(
            path,
            format!(
                "--zeroshot-classnames has {} names for the {} class folders of --zeroshot-data: \
                 give one per line in the folders' sorted order ({}), or `folder<TAB>name` lines",
                lines.len(),
                folders.len(),
                folders.join(", ")
            ),
        ));
    }
    Ok(names)
}

/// Validation on held-out pairs during training (`clipcu train --val-data`), as open_clip's
/// `evaluate`: the contrastive loss per batch of `batch` pairs (in file order), averaged over
/// the pairs (a last batch of one pair, whose loss is 0 by construction, is left out of it), and
/// image↔text recall@1/5/10 over the whole set, each pair's caption the one right answer of its
/// image. Unreadable samples are skipped and counted.
#[derive(Clone, Debug)]
pub struct ValidationSet {
    /// The data as given (the `data` of its metrics lines).
    pub name: String,
    source: Source,
}

/// One evaluation of a [`ValidationSet`].
#[derive(Clone, Debug, PartialEq)]
pub struct ValidationResult {
    pub loss: f32,
    /// Recall@1, 5, 10, image→text.
    pub image_to_text: [f32; 3],
    /// Recall@1, 5, 10, text→image.
    pub text_to_image: [f32; 3],
    pub samples: usize,
}

impl ValidationSet {
    /// A CSV/TSV (by extension) or WebDataset shards (a path or brace pattern).
    pub fn open(data: &str) -> Result<ValidationSet> {
        Ok(ValidationSet {
            name: data.to_string(),
            source: files_source(data)?,
        })
    }

    pub fn evaluate(&self, model: &Clip, batch: usize, workers: usize) -> Result<ValidationResult> {
        let mut loader = eval_loader(self.source.clone(), model, batch, workers)?;
        let (mut img, mut txt) = (Vec::new(), Vec::new());
        let (mut loss_sum, mut loss_pairs) = (0f64, 0usize);
        let scale = model.logit_scale.value();
        while let Some(b) = loader.next_batch()? {
            let n = b.len();
            let i = image_features(model, b.images)?;
            let g = Graph::inference();
            let t = l2_normalize(&model.encode_text(&g, &b.ids, n)?.into_tensor())?;
            if n >= 2 {
                let out = crate::loss::contrastive_loss(
                    &g,
                    &g.constant(i.clone()),
                    &g.constant(t.clone()),
                    &g.constant(scale.clone()),
                )?;
                let l = out.loss.tensor().to_device(crate::Device::Cpu)?.to_vec()[0];
                loss_sum += l as f64 * n as f64;
                loss_pairs += n;
            }
            img.push(i.to_device(crate::Device::Cpu)?);
            txt.push(t.to_device(crate::Device::Cpu)?);
        }
        let samples: usize = img.iter().map(|t| t.shape()[0]).sum();
        if samples < 2 {
            return Err(Error::format(
                Path::new(&self.name),
                format!(
                    "--val-data: {samples} readable pairs; validation needs at least 2 (see the \
                     skips named above)"
                ),
            ));
        }
        let img = concat(&img.iter().collect::<Vec<_>>(), 0)?;
        let txt = concat(&txt.iter().collect::<Vec<_>>(), 0)?;
        let pairs: Vec<usize> = (0..samples).collect();
        let r = retrieval_recall(&img, &txt, &pairs, &[1, 5, 10])?;
        let at = |v: &[(usize, f32)]| [v[0].1, v[1].1, v[2].1];
        Ok(ValidationResult {
            loss: (loss_sum / loss_pairs as f64) as f32,
            image_to_text: at(&r.image_to_text),
            text_to_image: at(&r.text_to_image),
            samples,
        })
    }
}

/// A CSV/TSV (by extension) or WebDataset shards: the sources `--data` and `--val-data` take.
pub fn files_source(data: &str) -> Result<Source> {
    if data.ends_with(".csv") || data.ends_with(".tsv") {
        Source::csv(data, &CsvOptions::default())
    } else {
        Source::webdataset(data)
    }
}

/// One pass over `source` in file order, with the model's image size and context length.
fn eval_loader(source: Source, model: &Clip, batch: usize, workers: usize) -> Result<Loader> {
    let mut lc = LoaderConfig::new(batch.max(1), model.config.vision_cfg.image_size);
    lc.context_length = model.config.text_cfg.context_length;
    lc.shuffle = false;
    lc.epochs = Some(1);
    lc.workers = workers;
    Loader::new(source, lc, None)
}

/// L2-normalised image features of a preprocessed batch, computed where the model lives.
fn image_features(model: &Clip, images: Tensor) -> Result<Tensor> {
    let g = Graph::inference();
    let x = g.constant(images.to_device(model.device())?);
    l2_normalize(&model.encode_image(&g, &x)?.into_tensor())
}
