//! `clipcu zeroshot`: zero-shot classification of an ImageFolder (one sub-folder per class; the
//! folder names are the class names) with a classifier from class names × prompt templates,
//! cached beside the weights and reused while nothing changed.

use crate::embed::model_from_flags;
use clipcu::data::{load_image, Preprocess};
use clipcu::ops::normalize::l2_normalize;
use clipcu::zeroshot::{accuracies, CacheOutcome, Templates, ZeroShotClassifier};
use clipcu::{Error, Graph, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ZeroShotArgs {
    /// Model weights (a clipcu checkpoint, or open_clip/HF weights with --config).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Model config when the weights do not carry one.
    #[arg(long)]
    pub config: Option<String>,
    /// An ImageFolder: one sub-folder of images per class.
    #[arg(long)]
    pub data: PathBuf,
    /// Prompt templates: openai (80), simple (7) or a file with one `{}` template per line.
    #[arg(long, default_value = "openai")]
    pub templates: String,
    /// Where to cache the classifier (default: beside the weights).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Device: auto, cpu, cuda, cuda:N, emu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// (class names, [(image path, class index)]) of an ImageFolder, sorted.
fn image_folder(root: &Path) -> Result<(Vec<String>, Vec<(PathBuf, usize)>)> {
    let read = |p: &Path| std::fs::read_dir(p).map_err(|e| Error::io(p, e));
    let mut classes: Vec<PathBuf> = read(root)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(Error::format(
            root,
            "an ImageFolder needs one sub-folder per class; found none",
        ));
    }
    let mut items = Vec::new();
    for (i, c) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = read(c)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                    ["jpg", "jpeg", "png", "webp"].contains(&x.to_ascii_lowercase().as_str())
                })
            })
            .collect();
        files.sort();
        items.extend(files.into_iter().map(|f| (f, i)));
    }
    let names = classes
        .iter()
        .map(|c| {
            c.file_name()
                .map(|n| n.to_string_lossy().replace('_', " "))
                .unwrap_or_default()
        })
        .collect();
    Ok((names, items))
}

pub fn zeroshot(a: &ZeroShotArgs) -> Result<()> {
    crate::pick_device(&a.device)?;
    let model = model_from_flags(a.config.as_deref(), a.weights.as_ref(), 0)?;
    let (classes, items) = image_folder(&a.data)?;
    let templates = Templates::parse(&a.templates)?;
    let cache = a.cache.clone().unwrap_or_else(|| {
        let base = a
            .weights
            .clone()
            .unwrap_or_else(|| PathBuf::from("random-init"));
        base.with_extension(format!(
            "zeroshot-{}-{}.safetensors",
            templates.name(),
            templates.hash()
        ))
    });
    let (clf, outcome) =
        ZeroShotClassifier::build_cached(&model, &classes, &templates, &cache, None, a.batch_size)?;
    match outcome {
        CacheOutcome::Loaded => eprintln!("classifier: loaded {}", cache.display()),
        CacheOutcome::Built { .. } => eprintln!(
            "classifier: built from {} classes × {} templates, cached in {}",
            classes.len(),
            templates.len(),
            cache.display()
        ),
    }
    let pre = Preprocess::clip(model.config.vision_cfg.image_size);
    let (mut hits1, mut hits5, mut n, mut skipped) = (0f64, 0f64, 0usize, 0usize);
    for chunk in items.chunks(a.batch_size.max(1)) {
        // a file that fails to decode is skipped and counted, the evaluation goes on
        let ok: Vec<&(PathBuf, usize)> = chunk
            .iter()
            .filter(|(p, _)| load_image(p).map_err(|e| eprintln!("skipped: {e}")).is_ok())
            .collect();
        skipped += chunk.len() - ok.len();
        if ok.is_empty() {
            continue;
        }
        let pixels = pre.batch_from(ok.len(), |i| load_image(&ok[i].0))?;
        let g = Graph::inference();
        let feats = l2_normalize(&model.encode_image(&g, &g.constant(pixels))?.into_tensor())?;
        let logits = clf.classify(&feats)?;
        let labels: Vec<usize> = ok.iter().map(|(_, c)| *c).collect();
        let acc = accuracies(&logits, &labels, &[1, 5.min(classes.len())])?;
        hits1 += acc[0] as f64 * ok.len() as f64;
        hits5 += acc[1] as f64 * ok.len() as f64;
        n += ok.len();
    }
    println!(
        "zero-shot on {} images of {} classes ({} templates{}):",
        n,
        classes.len(),
        templates.len(),
        if skipped > 0 {
            format!(", {skipped} unreadable skipped")
        } else {
            String::new()
        }
    );
    println!("  top-1 {:.2}%", 100.0 * hits1 / n.max(1) as f64);
    println!("  top-5 {:.2}%", 100.0 * hits5 / n.max(1) as f64);
    Ok(())
}
