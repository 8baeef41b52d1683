//! Data in: image decoding (JPEG, PNG, WebP) and CLIP's evaluation preprocessing, matching
//! open_clip's PIL + torchvision transform byte for byte; the synthetic captioned dataset.
//!
//! ```no_run
//! use clipcu::data::{load_image, Preprocess};
//! # fn main() -> clipcu::Result<()> {
//! let pre = Preprocess::clip(224);
//! let img = load_image("cat.jpg")?;
//! let x = pre.apply(&img)?; // [3, 224, 224], normalised with OpenAI's mean and std
//! # Ok(()) }
//! ```
//!
//! - [`decode`]: bytes → [`Image`] in the mode PIL would open the file in.
//! - [`resample`]: PIL's antialiased bicubic `Image.resize`, reproduced exactly.
//! - [`preprocess`]: resize short side, center crop, RGB, `ToTensor`, `Normalize`.
//! - [`augment`]: open_clip's training transform, `RandomResizedCrop` keyed per sample.
//! - [`synthetic`]: the embedded synthetic captioned-image dataset (coloured shapes with
//!   attributes, generated on the fly, deterministic by seed, with held-out colour–shape
//!   combinations for zero-shot evaluation).
//! - [`sources`]: WebDataset tar shards (brace patterns), CSV/TSV, ImageFolder trees.
//! - [`loader`]: the multi-threaded training loader: ready batches, deterministic by seed,
//!   resumable from a [`DataPosition`], bad input skipped and counted ([`SkipStats`]).

pub mod augment;
pub mod decode;
pub mod loader;
mod plan;
pub mod preprocess;
pub mod resample;
pub mod sources;
pub mod synthetic;

pub use augment::{resized_crop, CropBox, RandomResizedCrop};
pub use decode::{
    decode_image, decode_image_with, load_image, load_image_with, Image, ImageLimits, Mode,
};
pub use loader::{Batch, DataPosition, Loader, LoaderConfig, Part, SkipKind, SkipStats};
pub use preprocess::{center_crop_offset, resized_size, Preprocess, OPENAI_MEAN, OPENAI_STD};
pub use resample::{resize, resize_window, Window};
pub use sources::{expand_braces, CsvOptions, ImageFolder, Source};
