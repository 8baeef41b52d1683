//! open_clip's evaluation transform for CLIP (`image_transform(size, is_train=False)`):
//!
//! ```text
//! Resize(size, BICUBIC)   short side → size, long side → int(size · long / short) (torchvision);
//!                         no-op when the size already matches; PIL's resize otherwise
//! CenterCrop(size)        offsets int(round((h − size) / 2)) — Python's round, half to even
//! convert("RGB")          grey repeated, alpha dropped
//! ToTensor                u8 → f32, / 255, HWC → CHW
//! Normalize(mean, std)    (x − mean) / std per channel, in f32
//! ```
//!
//! Every step is done as torchvision/PIL do it, with the same f32 operations in the same order,
//! so the output is bit-identical to open_clip's wherever the decoded pixels are.

use super::decode::{Image, Mode};
use super::resample::{resize_window, Window};
use crate::{Error, Result, Tensor};
use rayon::prelude::*;

/// OpenAI CLIP's per-channel mean (open_clip's `OPENAI_DATASET_MEAN`), rounded to f32 from the
/// Python doubles as `torch.as_tensor` does.
pub const OPENAI_MEAN: [f32; 3] = [
    0.48145466f64 as f32,
    0.4578275f64 as f32,
    0.40821073f64 as f32,
];
/// OpenAI CLIP's per-channel standard deviation (open_clip's `OPENAI_DATASET_STD`).
pub const OPENAI_STD: [f32; 3] = [
    0.26862954f64 as f32,
    0.26130258f64 as f32,
    0.27577711f64 as f32,
];

/// The evaluation-time image transform: resize, center crop, RGB, scale and normalise.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Side of the square output, in pixels.
    pub image_size: usize,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after the mean.
    pub std: [f32; 3],
}

/// torchvision's `Resize(size)` output size for an `width × height` image: the short side becomes
/// `size`, the long side `int(size · long / short)` (computed in f64 and truncated, as Python does).
pub fn resized_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's `CenterCrop` offset along one axis: `int(round((len − crop) / 2.0))`, with
/// Python's round (half to even). `len` must be at least `crop`.
pub fn center_crop_offset(len: usize, crop: usize) -> usize {
    ((len - crop) as f64 / 2.0).round_ties_even() as usize
}

impl Preprocess {
    /// CLIP's transform at `image_size` with OpenAI's mean and std.
    pub fn clip(image_size: usize) -> Preprocess {
        Preprocess {
            image_size,
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
        }
    }

    fn check(&self) -> Result<()> {
        if self.image_size == 0 {
            return Err(Error::Msg("Preprocess: image_size is 0".into()));
        }
        Ok(())
    }

    /// The pixel part of the transform: resize, center crop and convert to RGB, giving the
    /// `image_size × image_size` RGB image that `ToTensor` would see.
    pub fn resize_crop(&self, img: &Image) -> Result<Image> {
        self.check()?;
        let s = self.image_size;
        let (w, h) = resized_size(img.width(), img.height(), s);
        // Only the pixels the crop keeps are resized: the same values as resizing the whole
        // image and cropping, with work bounded by the output (a 100000×1 image would resize
        // to 22,400,000×224 at 224 px).
        let win = Window {
            left: center_crop_offset(w, s),
            top: center_crop_offset(h, s),
            w: s,
            h: s,
        };
        let cropped = resize_window(img, w, h, win)?;
        // Crop first, then convert: both are per pixel, so the order does not matter, and the
        // crop is the smaller image.
        Ok(if cropped.mode() == Mode::Rgb {
            cropped
        } else {
            cropped.to_rgb()
        })
    }

    /// Writes the `[3, S, S]` normalised f32 tensor of an `S × S` RGB image into `out`:
    /// `(v / 255 − mean) / std`, each operation in f32 as torchvision's `ToTensor` and `Normalize`.
    fn normalize_into(&self, rgb: &Image, out: &mut [f32]) {
        let plane = self.image_size * self.image_size;
        debug_assert_eq!(rgb.mode(), Mode::Rgb);
        debug_assert_eq!(out.len(), 3 * plane);
        for (c, dst) in out.chunks_exact_mut(plane).enumerate() {
            let (m, s) = (self.mean[c], self.std[c]);
            for (o, px) in dst.iter_mut().zip(rgb.data().chunks_exact(3)) {
                *o = (px[c] as f32 / 255.0 - m) / s;
            }
        }
    }

    /// The transform of one image, written into `out` (`3 · S · S` values, CHW).
    pub fn apply_into(&self, img: &Image, out: &mut [f32]) -> Result<()> {
        self.check_out(out)?;
        let rgb = self.resize_crop(img)?;
        self.normalize_into(&rgb, out);
        Ok(())
    }

    fn check_out(&self, out: &[f32]) -> Result<()> {
        let s = self.image_size;
        if out.len() != 3 * s * s {
            return Err(Error::shape(
                "Preprocess::apply_into",
                format!("output holds {} values, expected [3, {s}, {s}]", out.len()),
            ));
        }
        Ok(())
    }

    /// `ToTensor` + `Normalize` of an `S × S` RGB image (the last steps of the evaluation and
    /// the training transform alike), written into `out` (`3 · S · S` values, CHW).
    pub fn normalize_rgb_into(&self, rgb: &Image, out: &mut [f32]) -> Result<()> {
        self.check_out(out)?;
        let s = self.image_size;
        if rgb.mode() != Mode::Rgb || rgb.width() != s || rgb.height() != s {
            return Err(Error::shape(
                "Preprocess::normalize_rgb_into",
                format!(
                    "a {}x{} {:?} image, expected {s}x{s} RGB",
                    rgb.width(),
                    rgb.height(),
                    rgb.mode()
                ),
            ));
        }
        self.normalize_into(rgb, out);
        Ok(())
    }

    /// The transform of one image: a `[3, S, S]` f32 tensor.
    pub fn apply(&self, img: &Image) -> Result<Tensor> {
        self.check()?;
        let s = self.image_size;
        let mut out = crate::alloc::try_filled(3 * s * s, 0f32, "image")?;
        self.apply_into(img, &mut out)?;
        Tensor::from_vec(out, [3, s, s])
    }

    /// The transform of a batch: `[N, 3, S, S]`, images processed in parallel (rayon).
    pub fn batch<I: AsRef<Image> + Sync>(&self, imgs: &[I]) -> Result<Tensor> {
        self.batch_from(imgs.len(), |i| Ok(imgs[i].as_ref()))
    }

    /// Like [`batch`](Self::batch), with image `i` produced by `make(i)` on the worker that
    /// transforms it — so decoding (`|i| decode_image(&files[i], &names[i])`) runs in parallel
    /// too and no decoded image outlives its transform. The first error (in index order) is
    /// returned.
    pub fn batch_from<B, F>(&self, n: usize, make: F) -> Result<Tensor>
    where
        B: AsRef<Image>,
        F: Fn(usize) -> Result<B> + Sync,
    {
        self.check()?;
        let s = self.image_size;
        let per = 3 * s * s;
        let mut out = crate::alloc::try_filled(n.saturating_mul(per), 0f32, "image batch")?;
        let errors: Vec<(usize, Error)> = out
            .par_chunks_mut(per)
            .enumerate()
            .filter_map(|(i, dst)| {
                make(i)
                    .and_then(|img| self.apply_into(img.as_ref(), dst))
                    .err()
                    .map(|e| (i, e))
            })
            .collect();
        if let Some((_, e)) = errors.into_iter().min_by_key(|(i, _)| *i) {
            return Err(e);
        }
        Tensor::from_vec(out, [n, 3, s, s])
    }
}
