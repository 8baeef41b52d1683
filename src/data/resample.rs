//! PIL's `Image.resize(size, Image.BICUBIC)` on 8-bit images, reproduced to the byte.
//!
//! The algorithm is Pillow's `ImagingResample` (src/libImaging/Resample.c), re-implemented:
//! - a separable convolution with the bicubic kernel of a = −0.5, support 2 source pixels, widened
//!   by the downscale factor when shrinking (antialiasing);
//! - per output pixel, a window of source pixels `[xmin, xmin + n)` and its weights are worked out
//!   in f64 exactly as Pillow does (same rounding of the window bounds, same order of operations),
//!   normalised to sum 1, then turned into fixed point with 22 fractional bits (rounded half away
//!   from zero);
//! - two passes, each rounding to u8 (clamping to 0..=255): normally horizontal first, over only
//!   the source rows the vertical pass will read, then vertical; but vertical first when the
//!   height shrinks by more than twice as many pixels as the width (Pillow 13 does this; older
//!   Pillow always went horizontal first, so results differ from those versions in that case).
//!   A pass is skipped when its dimension does not change.
//!
//! Around it, what `Image.resize` itself does: the same size returns a copy; palette (and 1-bit)
//! images are resized nearest-neighbour (Pillow's `ImagingScaleAffine`, with its accumulated f64
//! source positions); images with alpha are premultiplied first (`RGBA`→`RGBa`, `LA`→`La`, with
//! Pillow's rounding) and un-premultiplied after.
//!
//! The vertical pass sums a whole row at a time instead of one pixel at a time; the sums are exact
//! integers, so the order does not change any result.

use super::decode::{Image, Mode};
use crate::alloc::{try_filled, try_with_capacity};
use crate::Result;

/// Fractional bits of the fixed-point weights (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Rounding offset added to every sum before the shift.
const HALF: i32 = 1 << (PRECISION_BITS - 1);
/// Support of the bicubic kernel, in source pixels at scale 1.
const SUPPORT: f64 = 2.0;

/// Bicubic convolution kernel with a = −0.5 (Keys' cubic, as Pillow writes it; PyTorch's
/// antialiased bicubic uses the same one, so `model::resize` shares it).
pub(crate) fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The fixed-point weights of one 1-D pass over output pixels `first .. first + n`: output pixel
/// `first + i` reads source pixels `start[i] .. start[i] + len[i]` with weights
/// `k[i * ksize ..][.. len[i]]`. Each output pixel's weights depend only on its own index, so a
/// window of the output is computed exactly as the whole would be.
struct Taps {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    k: Vec<i32>,
}

impl Taps {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for output pixels
    /// `first .. first + n` of an `in_size → out_size` pass.
    fn new(in_size: usize, out_size: usize, first: usize, n: usize) -> Result<Taps> {
        // Pillow takes the box edges as f32; sizes are far below 2^24, so this is exact.
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut start = try_filled(n, 0usize, "resize weights")?;
        let mut len = try_filled(n, 0usize, "resize weights")?;
        let mut k = try_filled(n.saturating_mul(ksize), 0i32, "resize weights")?;
        let mut w = try_filled(ksize, 0f64, "resize weights")?;
        for (i, kk) in k.chunks_exact_mut(ksize).enumerate() {
            let xx = first + i;
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero; `as i64` does the same.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax - xmin;
            let mut ww = 0.0;
            for (x, wx) in w[..n].iter_mut().enumerate() {
                *wx = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
                ww += *wx;
            }
            for (kx, &wx) in kk.iter_mut().zip(&w[..n]) {
                let v = if ww != 0.0 { wx / ww } else { wx };
                let f = v * (1u32 << PRECISION_BITS) as f64;
                *kx = if v < 0.0 {
                    (f - 0.5) as i32
                } else {
                    (f + 0.5) as i32
                };
            }
            start[i] = xmin;
            len[i] = n;
        }
        Ok(Taps {
            ksize,
            start,
            len,
            k,
        })
    }

    fn weights(&self, i: usize) -> (usize, &[i32]) {
        let k = &self.k[i * self.ksize..][..self.len[i]];
        (self.start[i], k)
    }

    fn count(&self) -> usize {
        self.start.len()
    }

    /// The source pixels any output pixel reads: `lo .. hi`.
    fn span(&self) -> (usize, usize) {
        let n = self.count();
        (self.start[0], self.start[n - 1] + self.len[n - 1])
    }
}

/// Pillow's `clip8`: drop the fraction bits, clamp to a byte.
#[inline(always)]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over rows `rows` of `src` (rows of `stride` pixels of `C` bytes each, whose
/// pixel 0 is source column `x0`): one output row of `taps.count()` pixels per row.
fn horizontal<const C: usize>(
    src: &[u8],
    stride: usize,
    x0: usize,
    rows: std::ops::Range<usize>,
    taps: &Taps,
) -> Result<Vec<u8>> {
    let dw = taps.count();
    let mut out = try_filled(rows.len() * dw * C, 0u8, "resize")?;
    for (orow, y) in out.chunks_exact_mut(dw * C).zip(rows) {
        let irow = &src[y * stride * C..][..stride * C];
        for (xx, opx) in orow.chunks_exact_mut(C).enumerate() {
            let (xmin, k) = taps.weights(xx);
            let mut acc = [HALF; C];
            for (px, &kx) in irow[(xmin - x0) * C..].chunks_exact(C).zip(k) {
                for c in 0..C {
                    acc[c] += px[c] as i32 * kx;
                }
            }
            for c in 0..C {
                opx[c] = clip8(acc[c]);
            }
        }
    }
    Ok(out)
}

/// Vertical pass: `src` has rows of `stride` bytes whose row 0 is source row `first`; each
/// output row is `row_len` bytes from byte `col0` of the rows output row `yy` reads
/// (`taps.weights(yy)`).
fn vertical(
    src: &[u8],
    stride: usize,
    col0: usize,
    row_len: usize,
    first: usize,
    taps: &Taps,
) -> Result<Vec<u8>> {
    let dh = taps.count();
    let mut out = try_filled(dh * row_len, 0u8, "resize")?;
    let mut acc = try_filled(row_len, 0i32, "resize")?;
    for (yy, orow) in out.chunks_exact_mut(row_len).enumerate() {
        let (ymin, k) = taps.weights(yy);
        acc.fill(HALF);
        for (i, &ky) in k.iter().enumerate() {
            let irow = &src[(ymin + i - first) * stride + col0..][..row_len];
            for (a, &p) in acc.iter_mut().zip(irow) {
                *a += p as i32 * ky;
            }
        }
        for (o, &a) in orow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    Ok(out)
}

/// Whether Pillow runs the vertical pass first: when the height shrinks by more than twice as
/// many pixels as the width does. This is Pillow 13.0's choice (python-pillow/Pillow#9549), pinned
/// down by probing ~950 size pairs, ties included, against it; older Pillow always went
/// horizontal first.
fn vertical_first(sw: usize, sh: usize, dw: usize, dh: usize) -> bool {
    dw != sw && dh < sh && (sh - dh) as i64 > 2 * (sw as i64 - dw as i64)
}

/// A rectangle of an image: `w × h` pixels from column `left`, row `top`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub left: usize,
    pub top: usize,
    pub w: usize,
    pub h: usize,
}

/// Window `win` of Pillow's two-pass resample of an image with `C` bytes per pixel to
/// `dw × dh`: the same passes in the same order, computed only for the output pixels in the
/// window (and only over the source pixels they read).
fn resample<const C: usize>(
    src: &[u8],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    win: Window,
) -> Result<Vec<u8>> {
    let xt = (dw != sw)
        .then(|| Taps::new(sw, dw, win.left, win.w))
        .transpose()?;
    let yt = (dh != sh)
        .then(|| Taps::new(sh, dh, win.top, win.h))
        .transpose()?;
    if let (Some(xt), Some(yt)) = (&xt, &yt) {
        if vertical_first(sw, sh, dw, dh) {
            // Vertical over the source columns the horizontal pass reads, then horizontal.
            let (x0, x1) = xt.span();
            let tmp = vertical(src, sw * C, x0 * C, (x1 - x0) * C, 0, yt)?;
            return horizontal::<C>(&tmp, x1 - x0, x0, 0..win.h, xt);
        }
    }
    // Horizontal first, over only the source rows the vertical pass reads.
    let (y0, y1) = match &yt {
        Some(t) => t.span(),
        None => (win.top, win.top + win.h),
    };
    let tmp = match &xt {
        Some(t) => horizontal::<C>(src, sw, 0, y0..y1, t)?,
        None => {
            let mut v = try_with_capacity((y1 - y0) * win.w * C, "resize")?;
            for y in y0..y1 {
                v.extend_from_slice(&src[(y * sw + win.left) * C..][..win.w * C]);
            }
            v
        }
    };
    match &yt {
        Some(t) => vertical(&tmp, win.w * C, 0, win.w * C, y0, t),
        None => Ok(tmp),
    }
}

/// Pillow's nearest-neighbour scaling (`ImagingScaleAffine`), window `win` of it: source position
/// of output pixel `x` is `⌊a/2 + x·a⌋` with `a = in/out`, accumulated in f64 as Pillow does
/// (so the positions before the window are still summed, but not stored); pixels that land
/// outside the source are 0.
fn nearest(img: &Image, dw: usize, dh: usize, win: Window) -> Result<Vec<u8>> {
    let c = img.mode().channels();
    let (sw, sh) = (img.width(), img.height());
    let coords = |n_in: usize, n_out: usize, first: usize, n: usize| -> Vec<Option<usize>> {
        let a = n_in as f64 / n_out as f64;
        let mut pos = a * 0.5;
        for _ in 0..first {
            pos += a;
        }
        (0..n)
            .map(|_| {
                let i = if pos < 0.0 { None } else { Some(pos as usize) };
                pos += a;
                i.filter(|&i| i < n_in)
            })
            .collect()
    };
    let xs = coords(sw, dw, win.left, win.w);
    let ys = coords(sh, dh, win.top, win.h);
    let mut out = try_filled(win.w * win.h * c, 0u8, "resize")?;
    for (orow, y) in out.chunks_exact_mut(win.w * c).zip(ys) {
        let Some(y) = y else { continue };
        let irow = &img.data()[y * sw * c..][..sw * c];
        for (opx, x) in orow.chunks_exact_mut(c).zip(&xs) {
            if let Some(x) = *x {
                opx.copy_from_slice(&irow[x * c..][..c]);
            }
        }
    }
    Ok(out)
}

/// Pillow's `MULDIV255(v, a)`: v·a/255 rounded, in integers.
#[inline]
fn muldiv255(v: u8, a: u8) -> u8 {
    let t = v as u32 * a as u32 + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// `RGBA`→`RGBa` / `LA`→`La`: colour channels times alpha/255.
fn premultiply(data: &mut [u8], c: usize) {
    for px in data.chunks_exact_mut(c) {
        let a = px[c - 1];
        for v in &mut px[..c - 1] {
            *v = muldiv255(*v, a);
        }
    }
}

/// `RGBa`→`RGBA` / `La`→`LA`: colour channels times 255/alpha, truncated and clamped; alpha 0 and
/// 255 leave the colour as it is.
fn unpremultiply(data: &mut [u8], c: usize) {
    for px in data.chunks_exact_mut(c) {
        let a = px[c - 1] as u32;
        if a != 0 && a != 255 {
            for v in &mut px[..c - 1] {
                *v = (255 * *v as u32 / a).min(255) as u8;
            }
        }
    }
}

/// PIL's `img.resize((width, height), Image.BICUBIC)`, in the image's own mode (see the module
/// docs for what happens per mode).
pub fn resize(img: &Image, width: usize, height: usize) -> Result<Image> {
    let win = Window {
        left: 0,
        top: 0,
        w: width,
        h: height,
    };
    resize_window(img, width, height, win)
}

/// Window `win` of `resize(img, width, height)`, equal to it pixel for pixel, with work and
/// memory bounded by the window and the source (never by `width × height`): what CLIP's
/// resize-then-center-crop needs, where the resized image of a 100000×1 file would be
/// 22,400,000×224 pixels.
pub fn resize_window(img: &Image, width: usize, height: usize, win: Window) -> Result<Image> {
    if width == 0 || height == 0 {
        return Err(crate::Error::Msg(format!(
            "resize: target size {width}x{height} is empty"
        )));
    }
    if win.w == 0
        || win.h == 0
        || win.left.checked_add(win.w).is_none_or(|r| r > width)
        || win.top.checked_add(win.h).is_none_or(|b| b > height)
    {
        return Err(crate::Error::Msg(format!(
            "resize: window {win:?} is not inside the {width}x{height} output"
        )));
    }
    let (sw, sh, mode) = (img.width(), img.height(), img.mode());
    if (sw, sh) == (width, height) {
        // Pillow returns a copy: the window of the source itself.
        let c = mode.channels();
        let mut data = try_with_capacity(win.w * win.h * c, "resize")?;
        for y in win.top..win.top + win.h {
            data.extend_from_slice(&img.data()[(y * sw + win.left) * c..][..win.w * c]);
        }
        return Image::new(win.w, win.h, mode, data);
    }
    let data = match mode {
        Mode::Palette => nearest(img, width, height, win)?,
        Mode::L => resample::<1>(img.data(), sw, sh, width, height, win)?,
        Mode::Rgb => resample::<3>(img.data(), sw, sh, width, height, win)?,
        Mode::La | Mode::Rgba => {
            let c = mode.channels();
            let mut pre = try_with_capacity(img.data().len(), "resize")?;
            pre.extend_from_slice(img.data());
            premultiply(&mut pre, c);
            let mut out = if c == 2 {
                resample::<2>(&pre, sw, sh, width, height, win)?
            } else {
                resample::<4>(&pre, sw, sh, width, height, win)?
            };
            unpremultiply(&mut out, c);
            out
        }
    };
    Image::new(win.w, win.h, mode, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_cover_the_source() {
        for (i, o) in [
            (1, 224),
            (61, 224),
            (97, 356),
            (500, 224),
            (225, 224),
            (7, 3),
        ] {
            let t = Taps::new(i, o, 0, o).unwrap();
            for j in 0..o {
                let (s, k) = t.weights(j);
                assert!(s + k.len() <= i && !k.is_empty(), "{i}->{o} pixel {j}");
                let sum: i64 = k.iter().map(|&v| v as i64).sum();
                // each weight is rounded on its own: the sum is 2^22 within one unit per tap
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}"
                );
            }
        }
    }

    #[test]
    fn premultiply_round_trip_is_pillows() {
        assert_eq!(muldiv255(255, 255), 255);
        assert_eq!(muldiv255(200, 0), 0);
        assert_eq!(muldiv255(255, 128), 128);
        let mut px = [200u8, 10, 0, 128];
        premultiply(&mut px, 4);
        assert_eq!(px, [100, 5, 0, 128]);
        unpremultiply(&mut px, 4);
        assert_eq!(px, [199, 9, 0, 128]);
    }
}
