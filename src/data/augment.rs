//! open_clip's training transform (`image_transform(size, is_train=True)` with its defaults):
//!
//! ```text
//! RandomResizedCrop(size, scale=(0.9, 1.0), ratio=(3/4, 4/3), interpolation=BICUBIC)
//! convert("RGB")
//! ToTensor
//! Normalize(mean, std)
//! ```
//!
//! The crop box is chosen as torchvision's `RandomResizedCrop.get_params` chooses it: up to ten
//! tries of an area drawn uniformly from `scale · (W · H)` and an aspect ratio drawn
//! log-uniformly from `ratio`, `w = round(sqrt(area · r))`, `h = round(sqrt(area / r))` (Python's
//! round, half to even), the first that fits inside the image placed uniformly at random; when
//! none fits, the central crop of the whole image clamped to the ratio bounds. Only the random
//! numbers differ: they come from splitmix64 keyed by the caller (the loader keys each sample by
//! seed, epoch and the sample's place in the epoch), so a resumed run crops exactly as the
//! uninterrupted one and every epoch crops anew.
//!
//! The box is then cropped and resized to `size × size` with PIL's antialiased bicubic
//! ([`resize`](super::resample::resize), the resampler of the evaluation transform), as
//! `torchvision.transforms.functional.resized_crop` does on a PIL image, converted to RGB and
//! normalised exactly as [`Preprocess`] does.

use super::decode::{Image, Mode};
use super::preprocess::Preprocess;
use super::resample::{resize, resize_window, Window};
use super::synthetic::splitmix64;
use crate::{Error, Result};

/// A crop box in pixels, as torchvision's `get_params` returns it: `(top, left, h, w)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub h: usize,
    pub w: usize,
}

/// The random-resized-crop settings: the crop's area as a fraction of the image's, and its
/// aspect ratio (width / height) bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomResizedCrop {
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
}

/// splitmix64 as a stream: the random numbers of one crop.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.0)
    }
    /// Uniform in `[lo, hi)` (torch's `uniform_`: `lo + (hi − lo) · u`).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        lo + (hi - lo) * u
    }
    /// Uniform in `0..n` (`n ≥ 1`), by multiply-shift.
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
}

/// Python's `int(round(x))` for x ≥ 0: half to even.
fn py_round(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

impl RandomResizedCrop {
    /// open_clip's training defaults: `scale = (0.9, 1.0)`, `ratio = (3/4, 4/3)`.
    pub fn open_clip() -> RandomResizedCrop {
        RandomResizedCrop {
            scale: (0.9, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }

    /// Refuses bounds torchvision would warn about or that cannot make a box.
    pub fn validate(&self) -> Result<()> {
        let (s0, s1) = self.scale;
        let (r0, r1) = self.ratio;
        if !(s0.is_finite() && s1.is_finite() && s0 > 0.0 && s0 <= s1) {
            return Err(Error::Msg(format!(
                "RandomResizedCrop: scale {:?} must be finite, > 0 and increasing",
                self.scale
            )));
        }
        if !(r0.is_finite() && r1.is_finite() && r0 > 0.0 && r0 <= r1) {
            return Err(Error::Msg(format!(
                "RandomResizedCrop: ratio {:?} must be finite, > 0 and increasing",
                self.ratio
            )));
        }
        Ok(())
    }

    /// The crop box of a `width × height` image for the random stream keyed by `key`
    /// (torchvision's `get_params`; see the module docs). Both sides must be at least 1.
    pub fn sample_box(&self, width: usize, height: usize, key: u64) -> CropBox {
        let mut rng = Rng(splitmix64(key));
        let area = (width * height) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.uniform(self.scale.0, self.scale.1);
            let aspect = rng.uniform(lr0, lr1).exp();
            let w = py_round((target_area * aspect).sqrt());
            let h = py_round((target_area / aspect).sqrt());
            if 0 < w && w <= width && 0 < h && h <= height {
                let top = rng.below(height - h + 1);
                let left = rng.below(width - w + 1);
                return CropBox { top, left, h, w };
            }
        }
        self.fallback_box(width, height)
    }

    /// torchvision's fallback: the central crop, the whole image clamped to the ratio bounds.
    pub fn fallback_box(&self, width: usize, height: usize) -> CropBox {
        let in_ratio = width as f64 / height as f64;
        let (rmin, rmax) = (
            self.ratio.0.min(self.ratio.1),
            self.ratio.0.max(self.ratio.1),
        );
        let (w, h) = if in_ratio < rmin {
            (width, py_round(width as f64 / rmin))
        } else if in_ratio > rmax {
            (py_round(height as f64 * rmax), height)
        } else {
            (width, height)
        };
        // At least one pixel, never more than the image (a 1-pixel-wide strip rounds to 1).
        let (w, h) = (w.clamp(1, width), h.clamp(1, height));
        CropBox {
            top: (height - h) / 2,
            left: (width - w) / 2,
            h,
            w,
        }
    }

    /// The training transform of one image (box from `key`), written into `out`
    /// (`3 · S · S` values, CHW) with `pre`'s size, mean and std.
    pub fn apply_into(
        &self,
        pre: &Preprocess,
        img: &Image,
        key: u64,
        out: &mut [f32],
    ) -> Result<()> {
        if img.width() == 0 || img.height() == 0 {
            return Err(Error::Msg("RandomResizedCrop: the image is empty".into()));
        }
        let b = self.sample_box(img.width(), img.height(), key);
        let rgb = resized_crop(img, b, pre.image_size)?;
        pre.normalize_rgb_into(&rgb, out)
    }
}

/// `torchvision.transforms.functional.resized_crop(img, top, left, h, w, [size, size], BICUBIC)`
/// on a PIL image, then `convert("RGB")`: crop the box, resize it to `size × size` with PIL's
/// bicubic. The box must lie inside the image.
pub fn resized_crop(img: &Image, b: CropBox, size: usize) -> Result<Image> {
    if size == 0 {
        return Err(Error::Msg("resized_crop: size is 0".into()));
    }
    let win = Window {
        left: b.left,
        top: b.top,
        w: b.w,
        h: b.h,
    };
    // A window at the image's own size is Pillow's crop (a copy of the box).
    let crop = resize_window(img, img.width(), img.height(), win)?;
    let out = resize(&crop, size, size)?;
    Ok(if out.mode() == Mode::Rgb {
        out
    } else {
        out.to_rgb()
    })
}
