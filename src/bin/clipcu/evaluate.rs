//! `clipcu zeroshot`: zero-shot classification of an ImageFolder (one sub-folder per class; the
//! folder names are the class names) with a classifier from class names × prompt templates,
//! cached beside the weights and reused while nothing changed; `clipcu retrieval`: recall@1/5/10
//! in both directions on a paired CSV (an image may have several captions).

use crate::embed::{config_name, encode_image_files, encode_texts, model_from_flags};
use clipcu::data::sources::read_csv;
use clipcu::data::{load_image, CsvOptions, ImageFolder, Preprocess};
use clipcu::model::Clip;
use clipcu::ops::normalize::l2_normalize;
use clipcu::zeroshot::{accuracies, retrieval_recall, CacheOutcome, Templates, ZeroShotClassifier};
use clipcu::{Graph, Result, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// The model to evaluate (`--weights`, `--config`), shared by `zeroshot` and `retrieval`.
#[derive(clap::Args)]
pub struct ModelFlags {
    /// Model weights (a clipcu checkpoint, or open_clip/HF weights with --config).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Model config when the weights do not carry one.
    #[arg(long)]
    pub config: Option<String>,
}

impl ModelFlags {
    /// The model, which must take CLIP's tokenizer's ids (both commands encode text).
    fn load(&self, device: clipcu::Device) -> Result<Clip> {
        let model = model_from_flags(self.config.as_deref(), self.weights.as_ref(), 0, device)?;
        model
            .config
            .check_tokenizer_vocab(&config_name(self.config.as_deref(), self.weights.as_ref()))?;
        Ok(model)
    }
}

#[derive(clap::Args)]
pub struct ZeroShotArgs {
    #[command(flatten)]
    pub model: ModelFlags,
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

pub fn zeroshot(a: &ZeroShotArgs) -> Result<()> {
    let folder = ImageFolder::open(&a.data)?;
    if let Some(cache) = &a.cache {
        let mut inputs: Vec<(&str, PathBuf)> = Vec::new();
        inputs.extend(a.model.weights.iter().map(|w| ("--weights", w.clone())));
        inputs.extend(
            a.model
                .config
                .iter()
                .map(|c| ("--config", PathBuf::from(c))),
        );
        inputs.push(("--templates", PathBuf::from(&a.templates)));
        inputs.extend(
            folder
                .samples
                .iter()
                .map(|(p, _)| ("an image of --data", p.clone())),
        );
        crate::refuse_output_over_inputs("--cache", cache, &inputs)?;
    }
    let device = crate::pick_device(&a.device)?;
    let model = a.model.load(device)?;
    let classes: Vec<String> = folder.classes.iter().map(|c| c.replace('_', " ")).collect();
    let items = folder.samples;
    if items.is_empty() {
        return Err(clipcu::Error::format(
            &a.data,
            format!(
                "has no images in its {} class folders (nothing to evaluate)",
                classes.len()
            ),
        ));
    }
    let templates = Templates::parse(&a.templates)?;
    let cache = a.cache.clone().unwrap_or_else(|| {
        let base = a
            .model
            .weights
            .clone()
            .unwrap_or_else(|| PathBuf::from("random-init"));
        base.with_extension(format!(
            "zeroshot-{}-{}.safetensors",
            templates.file_tag(),
            templates.hash()
        ))
    });
    let (clf, outcome) =
        ZeroShotClassifier::build_cached(&model, &classes, &templates, &cache, None, a.batch_size)?;
    let loaded = matches!(outcome, CacheOutcome::Loaded);
    match outcome {
        CacheOutcome::Loaded => eprintln!("classifier: loaded {}", cache.display()),
        CacheOutcome::Built { .. } => eprintln!(
            "classifier: built from {} classes × {} templates, cached in {}",
            classes.len(),
            templates.len(),
            cache.display()
        ),
        CacheOutcome::NotCached { error, .. } => eprintln!(
            "warning: classifier built from {} classes × {} templates but not cached ({error}); \
             going on without the cache",
            classes.len(),
            templates.len(),
        ),
    }
    if clf.weights().value_stats()?.non_finite > 0 {
        return Err(clipcu::Error::Msg(format!(
            "the zero-shot classifier (text embeddings of {} classes × {} templates{}) is not \
             finite: the model's text tower overflowed; accuracies from it would be meaningless",
            classes.len(),
            templates.len(),
            if loaded {
                format!(", loaded from {}", cache.display())
            } else {
                String::new()
            }
        )));
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
        let pixels = pre
            .batch_from(ok.len(), |i| load_image(&ok[i].0))?
            .to_device(device)?;
        let g = Graph::inference();
        let feats = l2_normalize(&model.encode_image(&g, &g.constant(pixels))?.into_tensor())?;
        crate::embed::check_rows(&feats.try_to_vec()?, model.config.embed_dim, |i| {
            format!("the embedding of the image {}", ok[i].0.display())
        })?;
        let logits = clf.classify(&feats)?;
        let labels: Vec<usize> = ok.iter().map(|(_, c)| *c).collect();
        let acc = accuracies(&logits, &labels, &[1, 5.min(classes.len())])?;
        hits1 += acc[0] as f64 * ok.len() as f64;
        hits5 += acc[1] as f64 * ok.len() as f64;
        n += ok.len();
    }
    if n == 0 {
        // Nothing was evaluated: an accuracy of 0 would be no result passed off as one.
        return Err(clipcu::Error::format(
            &a.data,
            format!(
                "none of its {skipped} images could be read (each is named above as skipped): \
                 there is nothing to evaluate"
            ),
        ));
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
    println!("  top-1 {:.2}%", 100.0 * hits1 / n as f64);
    println!("  top-5 {:.2}%", 100.0 * hits5 / n as f64);
    Ok(())
}

#[derive(clap::Args)]
pub struct RetrievalArgs {
    #[command(flatten)]
    pub model: ModelFlags,
    /// A CSV/TSV of (image path, caption) pairs; rows sharing an image path are one image.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "filepath")]
    pub image_column: String,
    #[arg(long, default_value = "title")]
    pub caption_column: String,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Device: auto, cpu, cuda, cuda:N, emu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn retrieval(a: &RetrievalArgs) -> Result<()> {
    let device = crate::pick_device(&a.device)?;
    let model = a.model.load(device)?;
    let opts = CsvOptions {
        image_key: a.image_column.clone(),
        caption_key: a.caption_column.clone(),
        ..CsvOptions::default()
    };
    let rows = read_csv(&a.data, &opts)?;
    let mut images: Vec<PathBuf> = Vec::new();
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    let text_to_image: Vec<usize> = rows
        .iter()
        .map(|r| {
            *index.entry(r.image.clone()).or_insert_with(|| {
                images.push(r.image.clone());
                images.len() - 1
            })
        })
        .collect();
    let img_feats = encode_image_files(&model, &images, a.batch_size)?;
    let captions: Vec<&str> = rows.iter().map(|r| r.caption.as_str()).collect();
    let txt_feats = encode_texts(&model, &captions, a.batch_size)?;
    let d = model.config.embed_dim;
    let report = retrieval_recall(
        &Tensor::from_vec(img_feats, [images.len(), d])?,
        &Tensor::from_vec(txt_feats, [rows.len(), d])?,
        &text_to_image,
        &[1, 5, 10],
    )?;
    println!(
        "retrieval on {} images and {} captions:",
        images.len(),
        rows.len()
    );
    for ((k, i2t), (_, t2i)) in report.image_to_text.iter().zip(&report.text_to_image) {
        println!(
            "  recall@{k:<2}  image→text {:>6.2}%   text→image {:>6.2}%",
            100.0 * i2t,
            100.0 * t2i
        );
    }
    Ok(())
}
