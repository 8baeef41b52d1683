//! Decoding image files (JPEG, PNG, WebP) into an [`Image`]: 8-bit pixels in the mode PIL would
//! open the file in, because that mode decides how open_clip's transform treats the pixels (PIL
//! premultiplies alpha before resampling LA/RGBA images, and resizes palette and 1-bit images
//! nearest-neighbour).
//!
//! What PIL does and we do alike, per source:
//! - PNG: the colour type in the header gives the mode — grey → `L`, grey+alpha → `La`, RGB →
//!   `Rgb`, RGBA → `Rgba`, palette (and 1-bit grey, PIL's mode "1") → `Palette`. A `tRNS`
//!   transparency chunk does not add an alpha channel (PIL keeps it as `info["transparency"]`,
//!   which `convert("RGB")` ignores). 16-bit RGB, RGBA and grey+alpha keep the high byte of each
//!   sample, as PIL's unpackers do.
//! - JPEG: grey → `L`, colour → `Rgb`. The EXIF orientation is not applied (PIL's `Image.open`
//!   does not apply it either). A stream that ends before its end-of-image marker is an error, as
//!   in PIL ("image file is truncated"); zune-jpeg alone would pad it with grey.
//! - WebP: `Rgb`, or `Rgba` when the file has alpha.
//!
//! Where we differ from PIL (documented, not fixed):
//! - 16-bit grey PNGs: PIL opens them as mode "I;16" and `convert("RGB")` *clips* each sample to
//!   255, which turns most such images white; we keep the high byte (like every other 16-bit
//!   case).
//! - CMYK/YCCK JPEGs: PIL resizes in CMYK and converts afterwards; the decoder here converts to RGB
//!   first.
//! - JPEG pixels: zune-jpeg here, libjpeg-turbo in PIL. The IDCTs round differently (±1–2 levels
//!   on ~1% of values) and zune-jpeg upsamples 4:2:0 chroma in two rounded steps where
//!   libjpeg-turbo rounds once (up to 4 levels on about a quarter of the values). Lossy WebP
//!   (image-webp vs libwebp) decodes identically on our fixtures. `tests/preprocess.rs` measures
//!   both.

use crate::{Error, Result};
use image::{DynamicImage, ImageFormat};
use std::path::Path;

/// How the pixels of an [`Image`] are laid out, and how PIL would treat them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One grey byte per pixel (PIL "L").
    L,
    /// Grey and alpha (PIL "LA"): resized with premultiplied alpha.
    La,
    /// Red, green, blue (PIL "RGB").
    Rgb,
    /// Red, green, blue, alpha (PIL "RGBA"): resized with premultiplied alpha.
    Rgba,
    /// A palette or 1-bit image expanded to red, green, blue. PIL keeps such images in mode "P" or
    /// "1", which `Image.resize` always resizes nearest-neighbour.
    Palette,
}

impl Mode {
    /// Bytes per pixel.
    pub fn channels(self) -> usize {
        match self {
            Mode::L => 1,
            Mode::La => 2,
            Mode::Rgb | Mode::Palette => 3,
            Mode::Rgba => 4,
        }
    }

    /// Whether the last channel is alpha.
    pub fn has_alpha(self) -> bool {
        matches!(self, Mode::La | Mode::Rgba)
    }
}

/// An 8-bit image: `height` rows of `width` pixels of [`Mode::channels`] bytes each, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    width: usize,
    height: usize,
    mode: Mode,
    data: Vec<u8>,
}

impl AsRef<Image> for Image {
    fn as_ref(&self) -> &Image {
        self
    }
}

impl Image {
    /// An image from its pixel bytes; errors when the size is zero or `data` does not hold
    /// `width × height` pixels of `mode`.
    pub fn new(width: usize, height: usize, mode: Mode, data: Vec<u8>) -> Result<Image> {
        if width == 0 || height == 0 {
            return Err(Error::Msg(format!(
                "Image::new: size {width}x{height} is empty"
            )));
        }
        let want = width
            .checked_mul(height)
            .and_then(|n| n.checked_mul(mode.channels()));
        if want != Some(data.len()) {
            return Err(Error::Msg(format!(
                "Image::new: {} bytes do not hold a {width}x{height} {mode:?} image",
                data.len()
            )));
        }
        Ok(Image {
            width,
            height,
            mode,
            data,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }
    pub fn height(&self) -> usize {
        self.height
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// The pixel bytes, row-major, [`Mode::channels`] per pixel.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// PIL's `convert("RGB")`: grey is repeated into the three channels, alpha is dropped (not
    /// composited onto a background), palette images are already RGB.
    pub fn to_rgb(&self) -> Image {
        let data = match self.mode {
            Mode::Rgb | Mode::Palette => self.data.clone(),
            Mode::L => self.data.iter().flat_map(|&v| [v, v, v]).collect(),
            Mode::La => self
                .data
                .chunks_exact(2)
                .flat_map(|p| [p[0], p[0], p[0]])
                .collect(),
            Mode::Rgba => self
                .data
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        };
        Image {
            width: self.width,
            height: self.height,
            mode: Mode::Rgb,
            data,
        }
    }
}

/// Bounds on the images clipcu agrees to decode, checked against the dimensions a file declares
/// before any pixel memory is allocated. A few hundred bytes of PNG can declare 100000×1 or
/// 30000×30000 pixels; without these bounds the decode (or the resize after it) would try to
/// allocate gigabytes. An image outside them is an error naming the file and the limit (the
/// training loader skips and counts it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageLimits {
    /// Widest image accepted, in pixels.
    pub max_width: u32,
    /// Tallest image accepted, in pixels.
    pub max_height: u32,
    /// Most pixels (width × height) accepted.
    pub max_pixels: u64,
    /// Largest ratio of the long side to the short side accepted, `long ≤ max_aspect · short`
    /// (CLIP's center crop of a 100:1 image keeps 1% of it).
    pub max_aspect: u32,
}

static PROCESS_LIMITS: std::sync::RwLock<ImageLimits> =
    std::sync::RwLock::new(ImageLimits::DEFAULT);

impl Default for ImageLimits {
    /// 32768 px per side, 89,478,485 pixels (PIL's `MAX_IMAGE_PIXELS`, its decompression-bomb
    /// threshold: about 256 MiB of RGB), aspect ratio 50:1.
    fn default() -> Self {
        ImageLimits::DEFAULT
    }
}

impl ImageLimits {
    /// The built-in bounds (see [`Default`]).
    pub const DEFAULT: ImageLimits = ImageLimits {
        max_width: 32768,
        max_height: 32768,
        max_pixels: 89_478_485,
        max_aspect: 50,
    };

    /// No bounds of our own (the decoder's memory limit still applies); the resize after the
    /// decode only computes the pixels the center crop keeps, so the work stays bounded by the
    /// decoded image and the output size.
    pub fn none() -> Self {
        ImageLimits {
            max_width: u32::MAX,
            max_height: u32::MAX,
            max_pixels: u64::MAX,
            max_aspect: u32::MAX,
        }
    }

    /// The limits [`decode_image`], [`load_image`] and [`LoaderConfig::new`] use: the
    /// [`Default`] unless [`set_process_default`](Self::set_process_default) changed them (the
    /// CLI's `--max-image-side`, `--max-image-pixels` and `--max-image-aspect` do).
    ///
    /// [`LoaderConfig::new`]: crate::data::LoaderConfig::new
    pub fn process_default() -> ImageLimits {
        *PROCESS_LIMITS
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the limits [`process_default`](Self::process_default) returns from now on.
    pub fn set_process_default(limits: ImageLimits) {
        *PROCESS_LIMITS
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }

    /// Why a `width × height` image is refused, or `Ok`.
    pub fn check(&self, width: u32, height: u32) -> std::result::Result<(), String> {
        let (w, h) = (width as u64, height as u64);
        if w == 0 || h == 0 {
            return Err(format!("the image declares an empty size {w}x{h}"));
        }
        if width > self.max_width {
            return Err(format!(
                "{w}x{h} pixels: the width is over the limit of {} (--max-image-side)",
                self.max_width
            ));
        }
        if height > self.max_height {
            return Err(format!(
                "{w}x{h} pixels: the height is over the limit of {} (--max-image-side)",
                self.max_height
            ));
        }
        if w * h > self.max_pixels {
            return Err(format!(
                "{w}x{h} pixels: {} pixels are over the limit of {} (--max-image-pixels)",
                w * h,
                self.max_pixels
            ));
        }
        let (long, short) = (w.max(h), w.min(h));
        if long > self.max_aspect as u64 * short {
            return Err(format!(
                "{w}x{h} pixels: the aspect ratio {:.0}:1 is over the limit of {}:1 (--max-image-aspect)",
                long as f64 / short as f64,
                self.max_aspect
            ));
        }
        Ok(())
    }
}

/// Reads and decodes an image file within [`ImageLimits::process_default`]; see
/// [`decode_image`].
pub fn load_image(path: impl AsRef<Path>) -> Result<Image> {
    load_image_with(path, &ImageLimits::process_default())
}

/// Reads and decodes an image file within `limits`; see [`decode_image_with`].
pub fn load_image_with(path: impl AsRef<Path>, limits: &ImageLimits) -> Result<Image> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image_with(&bytes, &path.display().to_string(), limits)
}

/// Decodes a JPEG, PNG or WebP image held in memory, within [`ImageLimits::process_default`].
/// `name`
/// (a file name or URL) is only used in error messages: data that is corrupt, truncated, of
/// another format, not an image at all or too large gives an [`Error::Format`] naming it and what
/// went wrong.
pub fn decode_image(bytes: &[u8], name: &str) -> Result<Image> {
    decode_image_with(bytes, name, &ImageLimits::process_default())
}

/// [`decode_image`] within `limits`: the dimensions the file declares are checked before any
/// pixel memory is allocated.
pub fn decode_image_with(bytes: &[u8], name: &str, limits: &ImageLimits) -> Result<Image> {
    let format = image::guess_format(bytes).map_err(|_| {
        Error::format(
            name,
            "not a recognised image (expected JPEG, PNG or WebP data)",
        )
    })?;
    if !matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP
    ) {
        return Err(Error::format(
            name,
            format!("{format:?} images are not supported (JPEG, PNG and WebP are)"),
        ));
    }
    if format == ImageFormat::Jpeg {
        // zune-jpeg pads a truncated stream with grey; PIL refuses it ("image file is truncated").
        jpeg_complete(bytes).map_err(|msg| Error::format(name, msg))?;
    }
    // The decoders are fuzzed and return errors on bad data; a panic would still be a bug in a
    // dependency, so it becomes an error here rather than taking a data-loader thread down.
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (w, h) = std::panic::catch_unwind(|| reader().into_dimensions())
        .map_err(|_| Error::format(name, format!("the {format:?} decoder panicked")))?
        .map_err(|e| Error::format(name, format!("cannot decode {format:?}: {e}")))?;
    limits
        .check(w, h)
        .map_err(|msg| Error::format(name, format!("image refused: {msg}")))?;
    let decoded = std::panic::catch_unwind(|| {
        let mut r = reader();
        let mut l = image::Limits::default(); // its memory limit (512 MiB) stays
        l.max_image_width = Some(limits.max_width);
        l.max_image_height = Some(limits.max_height);
        r.limits(l);
        r.decode()
    })
    .map_err(|_| Error::format(name, format!("the {format:?} decoder panicked")))?
    .map_err(|e| Error::format(name, format!("cannot decode {format:?}: {e}")))?;
    let png_color = match format {
        ImageFormat::Png => png_color_type(bytes),
        _ => None,
    };
    from_dynamic(decoded, png_color).map_err(|msg| Error::format(name, msg))
}

/// Checks that a JPEG stream reaches its end-of-image marker, walking the marker segments (so an
/// EXIF thumbnail's own markers are skipped) and the entropy-coded data of every scan. Stray bytes
/// between segments are skipped as libjpeg does; anything after the end-of-image marker is
/// ignored.
fn jpeg_complete(b: &[u8]) -> std::result::Result<(), &'static str> {
    const TRUNCATED: &str = "truncated JPEG (the data ends before the end-of-image marker)";
    // The index of the next 0xFF at or after `from`.
    let next_ff = |from: usize| {
        b.get(from..)
            .and_then(|rest| rest.iter().position(|&x| x == 0xFF))
            .map(|k| from + k)
            .ok_or(TRUNCATED)
    };
    let mut i = 2; // past SOI
    loop {
        // Next marker: skip stray bytes, then 0xFF fill bytes.
        i = next_ff(i)?;
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let marker = *b.get(i).ok_or(TRUNCATED)?;
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // Markers without a payload (0x00 is a stuffed byte outside a scan: skip it too).
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            _ => {
                let len = b.get(i..i + 2).ok_or(TRUNCATED)?;
                let len = u16::from_be_bytes([len[0], len[1]]) as usize;
                if len < 2 {
                    return Err("corrupt JPEG (a marker segment is shorter than its header)");
                }
                i += len;
                if marker == 0xDA {
                    // Entropy-coded data runs to the next marker that is neither a stuffed 0xFF00
                    // nor a restart marker.
                    loop {
                        i = next_ff(i)?;
                        match *b.get(i + 1).ok_or(TRUNCATED)? {
                            0x00 | 0xD0..=0xD7 => i += 2,
                            _ => break,
                        }
                    }
                }
            }
        }
    }
}

/// PNG colour type and bit depth from the IHDR chunk (which the PNG standard puts first).
fn png_color_type(bytes: &[u8]) -> Option<(u8, u8)> {
    if bytes.len() >= 26 && &bytes[12..16] == b"IHDR" {
        Some((bytes[25], bytes[24]))
    } else {
        None
    }
}

/// The decoded pixels in the mode PIL would use (see the module docs).
fn from_dynamic(img: DynamicImage, png: Option<(u8, u8)>) -> std::result::Result<Image, String> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (mode, data) = match img {
        DynamicImage::ImageLuma8(b) => (Mode::L, b.into_raw()),
        DynamicImage::ImageLumaA8(b) => (Mode::La, b.into_raw()),
        DynamicImage::ImageRgb8(b) => (Mode::Rgb, b.into_raw()),
        DynamicImage::ImageRgba8(b) => (Mode::Rgba, b.into_raw()),
        DynamicImage::ImageLuma16(b) => (Mode::L, high_bytes(b.as_raw())),
        DynamicImage::ImageLumaA16(b) => (Mode::La, high_bytes(b.as_raw())),
        DynamicImage::ImageRgb16(b) => (Mode::Rgb, high_bytes(b.as_raw())),
        DynamicImage::ImageRgba16(b) => (Mode::Rgba, high_bytes(b.as_raw())),
        other => {
            let has_alpha = other.color().has_alpha();
            if has_alpha {
                (Mode::Rgba, other.to_rgba8().into_raw())
            } else {
                (Mode::Rgb, other.to_rgb8().into_raw())
            }
        }
    };
    let img = Image::new(w, h, mode, data).map_err(|e| e.to_string())?;
    // A PNG's own colour type wins over what the decoder expanded it to.
    let img = match png {
        // Grey, or grey with a tRNS chunk (expanded to grey+alpha by the decoder).
        Some((0, depth)) => {
            let l = match img.mode {
                Mode::L => img,
                Mode::La => keep_channels(&img, Mode::L, &[0]),
                _ => img, // not produced by the PNG decoder for grey files
            };
            if depth == 1 {
                // PIL mode "1": nearest-neighbour resize, then 0/255 grey in RGB.
                retag(l.to_rgb(), Mode::Palette)
            } else {
                l
            }
        }
        // RGB, possibly with a tRNS chunk.
        Some((2, _)) if img.mode == Mode::Rgba => keep_channels(&img, Mode::Rgb, &[0, 1, 2]),
        // Palette, possibly with tRNS.
        Some((3, _)) => retag(
            match img.mode {
                Mode::Rgba => keep_channels(&img, Mode::Rgb, &[0, 1, 2]),
                _ => img.to_rgb(),
            },
            Mode::Palette,
        ),
        _ => img,
    };
    Ok(img)
}

/// The high byte of each 16-bit sample (PIL's `;16B` unpackers do the same).
fn high_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().map(|&s| (s >> 8) as u8).collect()
}

fn keep_channels(img: &Image, mode: Mode, keep: &[usize]) -> Image {
    let c = img.mode.channels();
    let data = img
        .data
        .chunks_exact(c)
        .flat_map(|p| keep.iter().map(move |&i| p[i]))
        .collect();
    Image {
        width: img.width,
        height: img.height,
        mode,
        data,
    }
}

fn retag(mut img: Image, mode: Mode) -> Image {
    debug_assert_eq!(img.mode.channels(), mode.channels());
    img.mode = mode;
    img
}
