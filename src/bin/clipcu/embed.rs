//! `clipcu tokenize` and `clipcu embed` (a contract other tools rely on: keep the flag names).

use clipcu::data::{load_image, Preprocess};
use clipcu::io::safetensors as st;
use clipcu::model::{load_into, weights::config_in, Clip, ClipConfig};
use clipcu::ops::normalize::l2_normalize;
use clipcu::tokenizer::Tokenizer;
use clipcu::{Error, Graph, Result, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// Print a JSON array with one array of context-length ids per text.
    #[arg(long)]
    pub json: bool,
    /// Context length (77 for CLIP).
    #[arg(long, default_value_t = 77)]
    pub context_length: usize,
    /// The texts (one that starts with '-' goes after --: `clipcu tokenize -- -x`).
    #[arg(required = true)]
    pub texts: Vec<String>,
}

pub fn tokenize(a: &TokenizeArgs) -> Result<()> {
    let tok = Tokenizer::clip();
    let rows: Vec<Vec<u32>> = a
        .texts
        .iter()
        .map(|t| tok.tokenize(t, a.context_length))
        .collect();
    if a.json {
        println!("{}", serde_json::to_string(&rows).expect("ids serialise"));
    } else {
        for (t, r) in a.texts.iter().zip(&rows) {
            let used: Vec<String> = r
                .iter()
                .take_while(|&&i| i != 0)
                .map(|i| i.to_string())
                .collect();
            println!("{t}\t{}", used.join(" "));
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// Model config: a shipped name (ViT-B-32, RN50, ...) or a JSON file. Optional when the
    /// weights are a clipcu checkpoint (which carries its config).
    #[arg(long)]
    pub config: Option<String>,
    /// Weights (safetensors, open_clip/OpenAI or Hugging Face names). Without: a seeded random init.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Seed of the random init when no weights are given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// An image file (JPEG, PNG, WebP); repeat for more.
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// A text; repeat for more. A text that starts with '-' goes as --text=-x (or after --).
    #[arg(long = "text", allow_hyphen_values = true)]
    pub texts: Vec<String>,
    /// L2-normalise the embeddings.
    #[arg(long)]
    pub normalize: bool,
    /// Output safetensors file (image_embeds, text_embeds).
    #[arg(long)]
    pub out: PathBuf,
    /// Device: auto, cpu, cuda, cuda:N, emu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

/// The model the flags describe: config from `--config` or the checkpoint, weights or seeded init.
/// The model of `--config`/`--weights` (random init from `seed` without weights), in eval mode,
/// on `device`.
pub fn model_from_flags(
    config: Option<&str>,
    weights: Option<&PathBuf>,
    seed: u64,
    device: clipcu::Device,
) -> Result<Clip> {
    let cfg = match (config, weights) {
        (Some(c), _) => ClipConfig::load(c)?,
        (None, Some(w)) => config_in(w)?.ok_or_else(|| {
            Error::format(w, "has no clipcu config in its metadata: give --config")
        })?,
        (None, None) => {
            return Err(Error::Msg(
                "give --config (a model name or JSON file) or --weights of a clipcu checkpoint"
                    .into(),
            ))
        }
    };
    let mut model = Clip::new(&cfg, seed);
    model.set_training(false);
    if let Some(w) = weights {
        load_into(&model, w)?;
    }
    clipcu::nn::Module::to_device(&model, device)?;
    Ok(model)
}

/// How errors name the model's config: `--config`, or the weights that carry it.
pub fn config_name(config: Option<&str>, weights: Option<&PathBuf>) -> String {
    match (config, weights) {
        (Some(c), _) => c.to_string(),
        (None, Some(w)) => w.display().to_string(),
        (None, None) => "the model config".into(),
    }
}

/// Unnormalised image embeddings of image files, row-major [n, D], in batches.
pub fn encode_image_files(model: &Clip, paths: &[PathBuf], batch_size: usize) -> Result<Vec<f32>> {
    let pre = Preprocess::clip(model.config.vision_cfg.image_size);
    let mut rows = Vec::with_capacity(paths.len() * model.config.embed_dim);
    for chunk in paths.chunks(batch_size.max(1)) {
        let pixels = pre
            .batch_from(chunk.len(), |i| load_image(&chunk[i]))?
            .to_device(model.device())?;
        let g = Graph::inference();
        let feats = model
            .encode_image(&g, &g.constant(pixels))?
            .into_tensor()
            .try_to_vec()?;
        check_rows(&feats, model.config.embed_dim, |i| {
            format!("the embedding of the image {}", chunk[i].display())
        })?;
        rows.extend(feats);
    }
    Ok(rows)
}

/// A non-finite embedding is an error naming its input: written or ranked, it would pass garbage
/// off as a result (NaN similarities sort anywhere). The weights are checked when loaded, so
/// this catches what overflows in the forward pass.
pub fn check_rows(rows: &[f32], dim: usize, what: impl Fn(usize) -> String) -> Result<()> {
    if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
        return Err(Error::Msg(format!(
            "{} is not finite (NaN or infinite values): the model's activations overflowed; \
             the result would be meaningless",
            what(i / dim.max(1))
        )));
    }
    Ok(())
}

/// Unnormalised text embeddings, row-major [n, D], tokenized to the model's context length.
pub fn encode_texts<S: AsRef<str> + Sync>(
    model: &Clip,
    texts: &[S],
    batch_size: usize,
) -> Result<Vec<f32>> {
    let ctx = model.config.text_cfg.context_length;
    let mut rows = Vec::with_capacity(texts.len() * model.config.embed_dim);
    if texts.is_empty() {
        return Ok(rows);
    }
    let ids = Tokenizer::clip().tokenize_batch(texts, ctx);
    for (c, chunk) in ids.chunks(ctx * batch_size.max(1)).enumerate() {
        let g = Graph::inference();
        let feats = model
            .encode_text(&g, chunk, chunk.len() / ctx)?
            .into_tensor()
            .try_to_vec()?;
        check_rows(&feats, model.config.embed_dim, |i| {
            format!(
                "the embedding of the text {:?}",
                texts[c * batch_size.max(1) + i].as_ref()
            )
        })?;
        rows.extend(feats);
    }
    Ok(rows)
}

pub fn embed(a: &EmbedArgs) -> Result<()> {
    let mut inputs: Vec<(&str, PathBuf)> = Vec::new();
    inputs.extend(a.weights.iter().map(|w| ("--weights", w.clone())));
    inputs.extend(a.config.iter().map(|c| ("--config", PathBuf::from(c))));
    inputs.extend(a.images.iter().map(|i| ("--image", i.clone())));
    crate::refuse_output_over_inputs("--out", &a.out, &inputs)?;
    let device = crate::pick_device(&a.device)?;
    let model = model_from_flags(a.config.as_deref(), a.weights.as_ref(), a.seed, device)?;
    let cfg = &model.config;
    if !a.texts.is_empty() {
        cfg.check_tokenizer_vocab(&config_name(a.config.as_deref(), a.weights.as_ref()))?;
    }
    let d = cfg.embed_dim;
    let image_rows = encode_image_files(&model, &a.images, a.batch_size)?;
    let text_rows = encode_texts(&model, &a.texts, a.batch_size)?;
    let mut image_embeds = Tensor::from_vec(image_rows, [a.images.len(), d])?;
    let mut text_embeds = Tensor::from_vec(text_rows, [a.texts.len(), d])?;
    if a.normalize {
        if !a.images.is_empty() {
            image_embeds = l2_normalize(&image_embeds)?;
        }
        if !a.texts.is_empty() {
            text_embeds = l2_normalize(&text_embeds)?;
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("normalized".to_string(), a.normalize.to_string());
    st::save(
        &a.out,
        &[
            ("image_embeds", &image_embeds),
            ("text_embeds", &text_embeds),
        ],
        &meta,
    )?;
    eprintln!(
        "wrote {} ({} image and {} text embeddings of dim {d})",
        a.out.display(),
        a.images.len(),
        a.texts.len()
    );
    Ok(())
}
