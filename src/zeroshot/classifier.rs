//! The zero-shot classifier: one unit text embedding per class, from prompt ensembling.

use super::hash::Hash64;
use super::templates::Templates;
use crate::io::safetensors as st;
use crate::model::Clip;
use crate::nn::Module;
use crate::ops::matmul::matmul;
use crate::tokenizer::Tokenizer;
use crate::{Error, Graph, Result, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// The `format` metadata value of a classifier cache file.
pub const CACHE_FORMAT: &str = "clipcu-zeroshot-classifier/1";
/// The name of the weights tensor in a cache file.
const WEIGHTS: &str = "zeroshot_weights";

/// Class weights `[C, D]`: row `c` is the L2-normalised mean of the L2-normalised text
/// embeddings of class `c`'s prompts (open_clip's `build_zero_shot_classifier`).
#[derive(Clone, Debug)]
pub struct ZeroShotClassifier {
    class_names: Vec<String>,
    weights: Tensor,
    templates_name: String,
    prompts_hash: String,
    model_key: String,
    context_length: usize,
}

/// What [`ZeroShotClassifier::build_cached`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// The cache file matched and was used.
    Loaded,
    /// The classifier was built and written to the cache; `reason` says why the file was not
    /// used ("no cache file", "class names differ", ...).
    Built { reason: String },
    /// The classifier was built, but the cache file could not be written (a read-only folder,
    /// a full disk): `error` says why. The classifier is as good; it is only not cached.
    NotCached { reason: String, error: String },
}

impl ZeroShotClassifier {
    /// Builds the classifier from `class_names` × `templates`: every prompt is tokenized with the
    /// model's context length and encoded (`batch_size` prompts per forward pass), each embedding
    /// is L2-normalised, and a class's embeddings are averaged and renormalised.
    pub fn build(
        model: &Clip,
        class_names: &[String],
        templates: &Templates,
        batch_size: usize,
    ) -> Result<Self> {
        let prompts: Vec<Vec<String>> = class_names.iter().map(|c| templates.fill(c)).collect();
        let mut z = Self::build_from_prompts(model, class_names, &prompts, batch_size)?;
        z.templates_name = templates.name().to_string();
        Ok(z)
    }

    /// The single-template classifier: [`build`](Self::build) with only template
    /// `template_index`.
    pub fn build_single(
        model: &Clip,
        class_names: &[String],
        templates: &Templates,
        template_index: usize,
        batch_size: usize,
    ) -> Result<Self> {
        Self::build(
            model,
            class_names,
            &templates.single(template_index)?,
            batch_size,
        )
    }

    /// The classifier from explicit prompts, `prompts[c]` being class `c`'s (any number ≥ 1 per
    /// class; e.g. `data::synthetic::Task::prompts`). The ensembling is as in
    /// [`build`](Self::build). The model key is a hash of the text tower
    /// ([`text_tower_key`]).
    pub fn build_from_prompts(
        model: &Clip,
        class_names: &[String],
        prompts: &[Vec<String>],
        batch_size: usize,
    ) -> Result<Self> {
        let key = text_tower_key(model);
        Self::build_keyed(model, class_names, prompts, batch_size, key)
    }

    fn build_keyed(
        model: &Clip,
        class_names: &[String],
        prompts: &[Vec<String>],
        batch_size: usize,
        model_key: String,
    ) -> Result<Self> {
        if class_names.is_empty() {
            return Err(Error::Msg("zero-shot classifier: no class names".into()));
        }
        if prompts.len() != class_names.len() {
            return Err(Error::Msg(format!(
                "zero-shot classifier: {} prompt lists for {} classes",
                prompts.len(),
                class_names.len()
            )));
        }
        if let Some(c) = prompts.iter().position(|p| p.is_empty()) {
            return Err(Error::Msg(format!(
                "zero-shot classifier: class {:?} has no prompts",
                class_names[c]
            )));
        }
        let flat: Vec<&str> = prompts.iter().flatten().map(|s| s.as_str()).collect();
        let emb = encode_texts(model, &flat, batch_size)?;
        let d = model.config.embed_dim;
        let mut weights = Vec::with_capacity(class_names.len() * d);
        let mut row = 0;
        for p in prompts {
            let mut acc = vec![0f64; d];
            for e in emb[row * d..(row + p.len()) * d].chunks_exact(d) {
                let inv = 1.0 / norm(e).max(crate::ops::normalize::L2_EPS as f64);
                for (a, &v) in acc.iter_mut().zip(e) {
                    *a += v as f64 * inv;
                }
            }
            row += p.len();
            // the mean, renormalised (the 1/T factor cancels, but keep open_clip's order)
            acc.iter_mut().for_each(|a| *a /= p.len() as f64);
            let n = acc.iter().map(|a| a * a).sum::<f64>().sqrt();
            let inv = 1.0 / n.max(crate::ops::normalize::L2_EPS as f64);
            weights.extend(acc.iter().map(|a| (a * inv) as f32));
        }
        Ok(ZeroShotClassifier {
            class_names: class_names.to_vec(),
            weights: Tensor::from_vec(weights, [class_names.len(), d])?,
            templates_name: "<prompts>".to_string(),
            prompts_hash: prompts_hash(class_names, prompts),
            model_key,
            context_length: model.config.text_cfg.context_length,
        })
    }

    /// Loads the classifier from `cache_path` if the file is there and its metadata matches
    /// (class names, prompts — i.e. templates —, context length and model key), else builds it
    /// and writes the cache atomically (creating the parent directory). `key` identifies the
    /// model (e.g. a checkpoint path and step); `None` hashes the text tower's config and
    /// weights ([`text_tower_key`]). A corrupt cache file is rebuilt, not an error.
    pub fn build_cached(
        model: &Clip,
        class_names: &[String],
        templates: &Templates,
        cache_path: impl AsRef<Path>,
        key: Option<&str>,
        batch_size: usize,
    ) -> Result<(Self, CacheOutcome)> {
        let cache_path = cache_path.as_ref();
        let model_key = match key {
            Some(k) => format!("key:{k}"),
            None => text_tower_key(model),
        };
        let prompts: Vec<Vec<String>> = class_names.iter().map(|c| templates.fill(c)).collect();
        let want_hash = prompts_hash(class_names, &prompts);
        let ctx = model.config.text_cfg.context_length;
        let reason = if cache_path.exists() {
            match Self::load(cache_path) {
                Err(e) => format!("unreadable cache ({e})"),
                Ok(z) if z.class_names != class_names => "class names differ".to_string(),
                Ok(z) if z.prompts_hash != want_hash => "templates differ".to_string(),
                Ok(z) if z.model_key != model_key => "model key differs".to_string(),
                Ok(z) if z.context_length != ctx => "context length differs".to_string(),
                Ok(z) if z.embed_dim() != model.config.embed_dim => {
                    "embedding dim differs".to_string()
                }
                Ok(z) => return Ok((z, CacheOutcome::Loaded)),
            }
        } else {
            "no cache file".to_string()
        };
        let mut z = Self::build_keyed(model, class_names, &prompts, batch_size, model_key)?;
        z.templates_name = templates.name().to_string();
        // The cache is an optimisation: failing to write it is reported, not fatal.
        let saved = match cache_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e)),
            None => Ok(()),
        }
        .and_then(|()| z.save(cache_path));
        match saved {
            Ok(()) => Ok((z, CacheOutcome::Built { reason })),
            Err(e) => Ok((
                z,
                CacheOutcome::NotCached {
                    reason,
                    error: e.to_string(),
                },
            )),
        }
    }

    /// Writes the weights and metadata as safetensors (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), CACHE_FORMAT.to_string());
        meta.insert(
            "class_names".to_string(),
            serde_json::to_string(&self.class_names).expect("strings serialise"),
        );
        meta.insert("templates".to_string(), self.templates_name.clone());
        meta.insert("prompts_hash".to_string(), self.prompts_hash.clone());
        meta.insert("model_key".to_string(), self.model_key.clone());
        meta.insert(
            "context_length".to_string(),
            self.context_length.to_string(),
        );
        st::save(path, &[(WEIGHTS, &self.weights)], &meta)
    }

    /// Reads a file written by [`save`](Self::save).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = st::load(path)?;
        let bad = |msg: String| Error::format(path, msg);
        let get = |k: &str| {
            f.metadata
                .get(k)
                .cloned()
                .ok_or_else(|| bad(format!("metadata has no {k:?}")))
        };
        let format = get("format")?;
        if format != CACHE_FORMAT {
            return Err(bad(format!("format {format:?}, expected {CACHE_FORMAT:?}")));
        }
        let class_names: Vec<String> = serde_json::from_str(&get("class_names")?)
            .map_err(|e| bad(format!("class_names: {e}")))?;
        let context_length = get("context_length")?
            .parse()
            .map_err(|e| bad(format!("context_length: {e}")))?;
        let weights = f
            .get(WEIGHTS)
            .ok_or_else(|| bad(format!("no tensor {WEIGHTS:?}")))?
            .try_to_dtype(crate::DType::F32)?;
        if weights.rank() != 2 || weights.shape()[0] != class_names.len() {
            return Err(bad(format!(
                "weights of shape {:?} for {} classes",
                weights.shape(),
                class_names.len()
            )));
        }
        Ok(ZeroShotClassifier {
            class_names,
            weights,
            templates_name: get("templates")?,
            prompts_hash: get("prompts_hash")?,
            model_key: get("model_key")?,
            context_length,
        })
    }

    /// Logits `[N, C]`: cosine similarities `image_features · weightsᵀ` (unscaled; multiply by
    /// `exp(logit_scale)` for CLIP's softmax temperature). `image_features` `[N, D]` should be
    /// L2-normalised (`ops::normalize::l2_normalize`); top-k accuracy does not depend on it.
    /// Computed on the features' device.
    pub fn classify(&self, image_features: &Tensor) -> Result<Tensor> {
        let w = self.weights.to_device(image_features.device())?;
        matmul(image_features, &w, false, true)
    }

    /// Class weights `[C, D]` (unit rows), on the CPU.
    pub fn weights(&self) -> &Tensor {
        &self.weights
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    pub fn embed_dim(&self) -> usize {
        self.weights.shape()[1]
    }

    /// The templates' name ("openai", a file path, ...), or `"<prompts>"`.
    pub fn templates_name(&self) -> &str {
        &self.templates_name
    }

    /// The model identity the classifier was built for (see [`build_cached`](Self::build_cached)).
    pub fn model_key(&self) -> &str {
        &self.model_key
    }
}

/// Top-`k` accuracy of `logits` `[N, C]` against `labels` (one per row, each `< C`).
///
/// Ties are counted against the model: row `i` is a hit only if fewer than `k` *other* classes
/// have a logit `>=` the true class's, i.e. the true class is strictly inside the top `k` however
/// the ties are broken (so a constant row is never a top-1 hit). A NaN true logit is a miss and a
/// NaN elsewhere ranks above the true class. `k >= C` makes every non-NaN row a hit; `N = 0`
/// gives 0.
pub fn accuracy(logits: &Tensor, labels: &[usize], k: usize) -> Result<f32> {
    Ok(accuracies(logits, labels, &[k])?[0])
}

/// [`accuracy`] for several `k` at once (one pass over the logits).
pub fn accuracies(logits: &Tensor, labels: &[usize], ks: &[usize]) -> Result<Vec<f32>> {
    if logits.rank() != 2 {
        crate::bail_shape!(
            "accuracy",
            "logits must be [N, C], got {:?}",
            logits.shape()
        );
    }
    let (n, c) = (logits.shape()[0], logits.shape()[1]);
    if labels.len() != n {
        crate::bail_shape!("accuracy", "{} labels for {n} rows of logits", labels.len());
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= c) {
        crate::bail_shape!("accuracy", "label {bad} out of range for {c} classes");
    }
    let v = logits.to_vec();
    let mut hits = vec![0usize; ks.len()];
    for (row, &y) in v.chunks_exact(c.max(1)).zip(labels) {
        if let Some(rank) = pessimistic_rank(row, |j| j == y, row[y]) {
            for (h, &k) in hits.iter_mut().zip(ks) {
                *h += (rank < k) as usize;
            }
        }
    }
    Ok(hits
        .iter()
        .map(|&h| if n == 0 { 0.0 } else { h as f32 / n as f32 })
        .collect())
}

/// How many entries `j` not in the positive set rank at or above `score` (ties and NaN count as
/// above); `None` when `score` is NaN.
pub(crate) fn pessimistic_rank(
    row: &[f32],
    positive: impl Fn(usize) -> bool,
    score: f32,
) -> Option<usize> {
    if score.is_nan() {
        return None;
    }
    Some(
        row.iter()
            .enumerate()
            .filter(|&(j, &s)| !positive(j) && (s >= score || s.is_nan()))
            .count(),
    )
}

/// Text embeddings `[texts.len() · D]` (row-major, unnormalised) of `texts`, `batch_size` per
/// forward pass.
pub fn encode_texts(model: &Clip, texts: &[&str], batch_size: usize) -> Result<Vec<f32>> {
    let ctx = model.config.text_cfg.context_length;
    let ids = Tokenizer::clip().tokenize_batch(texts, ctx);
    let vocab = model.config.text_cfg.vocab_size;
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::Msg(format!(
            "token id {bad} is outside the model's vocabulary of {vocab} (CLIP's tokenizer needs \
             vocab_size 49408)"
        )));
    }
    let mut out = Vec::with_capacity(texts.len() * model.config.embed_dim);
    for chunk in ids.chunks(ctx * batch_size.max(1)) {
        let g = Graph::inference();
        out.extend(
            model
                .encode_text(&g, chunk, chunk.len() / ctx)?
                .into_tensor()
                .to_vec(),
        );
    }
    Ok(out)
}

fn norm(x: &[f32]) -> f64 {
    x.iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt()
}

fn prompts_hash(class_names: &[String], prompts: &[Vec<String>]) -> String {
    let mut h = Hash64::new();
    h.word(class_names.len() as u64);
    for (c, p) in class_names.iter().zip(prompts) {
        h.str(c);
        h.word(p.len() as u64);
        p.iter().for_each(|s| h.str(s));
    }
    h.hex()
}

/// A model identity for the cache: `"text:"` + a hash of the text tower's config (with
/// `embed_dim` and the activation) and of every text parameter's name, shape, dtype and bytes.
/// Reads all text weights once (a few hundred MB for ViT-B sizes; well under a second).
pub fn text_tower_key(model: &Clip) -> String {
    let mut h = Hash64::new();
    h.str(&serde_json::to_string(&model.config.text_cfg).expect("config serialises"));
    h.word(model.config.embed_dim as u64);
    h.word(model.config.quick_gelu as u64);
    model.text.visit_params(&mut |p| {
        let v = p.value();
        h.str(p.name());
        h.word(v.rank() as u64);
        v.shape().iter().for_each(|&s| h.word(s as u64));
        h.str(&format!("{:?}", v.dtype()));
        h.bytes(&v.to_le_bytes());
    });
    format!("text:{}", h.hex())
}
