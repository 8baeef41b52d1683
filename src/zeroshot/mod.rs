//! Zero-shot transfer: classification with prompt-ensembled text classifiers, and image↔text
//! retrieval recall.
//!
//! - [`Templates`]: prompt templates with `{}` for the class name — OpenAI's 80 ImageNet ones
//!   ([`Templates::openai`]), open_clip's 7 "simple" ones ([`Templates::simple`]), or a file
//!   ([`Templates::from_file`]; one per line, `#` comments and blank lines skipped).
//! - [`ZeroShotClassifier`]: for each class, every prompt is encoded by the text tower, each
//!   embedding L2-normalised, the class's embeddings averaged and the mean renormalised
//!   (open_clip's prompt ensembling); weights `[C, D]` with unit rows. It can be cached on disk
//!   as safetensors ([`ZeroShotClassifier::build_cached`]), keyed by the class names, the
//!   prompts, the context length and a model identity.
//! - [`accuracy`]: top-k accuracy of logits, ties counted against the model.
//! - [`retrieval_recall`]: recall@k in both directions on a paired set.
//!
//! ```no_run
//! use clipcu::model::{Clip, ClipConfig};
//! use clipcu::ops::normalize::l2_normalize;
//! use clipcu::zeroshot::{accuracy, Templates, ZeroShotClassifier};
//! # fn main() -> clipcu::Result<()> {
//! let model = Clip::new(&ClipConfig::load("ViT-B-32")?, 0);
//! let classes: Vec<String> = ["cat", "dog"].iter().map(|s| s.to_string()).collect();
//! let zs = ZeroShotClassifier::build(&model, &classes, &Templates::openai(), 256)?;
//! # let image_features = clipcu::Tensor::zeros([4, 512]);
//! // image_features: [N, D] from Clip::encode_image
//! let logits = zs.classify(&l2_normalize(&image_features)?)?;
//! let top1 = accuracy(&logits, &[0, 1, 1, 0], 1)?;
//! # Ok(()) }
//! ```

mod classifier;
mod hash;
mod retrieval;
mod templates;

pub use classifier::{
    accuracies, accuracy, encode_texts, text_tower_key, CacheOutcome, ZeroShotClassifier,
    CACHE_FORMAT,
};
pub use retrieval::{retrieval_recall, RetrievalReport};
pub use templates::{Templates, PLACEHOLDER};
