//! Resizing a ViT's positional-embedding grid when the image size differs from the checkpoint's,
//! as open_clip's `resize_pos_embed` does: the class token is kept, the grid is resized with
//! PyTorch's antialiased bicubic (`F.interpolate(mode="bicubic", antialias=True,
//! align_corners=False)`), i.e. Keys' cubic with a = −0.5, support widened by the scale when
//! shrinking, weights normalised to sum 1; separable, rows then columns.

use crate::data::resample::bicubic;
use crate::{bail_shape, Result, Tensor};

/// For each output index: (first input index, normalised weights).
fn weights(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = n_in as f64 / n_out as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..n_out)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(n_in);
            let w: Vec<f64> = (lo..hi)
                .map(|j| bicubic((j as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            (
                lo,
                w.into_iter()
                    .map(|v| if total != 0.0 { v / total } else { 0.0 })
                    .collect(),
            )
        })
        .collect()
}

/// `[1 + g·g, C]` → `[1 + new·new, C]`.
pub fn resize_pos_embed(pos: &Tensor, new_grid: usize) -> Result<Tensor> {
    if pos.rank() != 2 || pos.shape()[0] < 2 {
        bail_shape!(
            "resize_pos_embed",
            "expected [1 + grid², width], got {:?}",
            pos.shape()
        );
    }
    let (n, c) = (pos.shape()[0] - 1, pos.shape()[1]);
    let g = (n as f64).sqrt().round() as usize;
    if g * g != n {
        bail_shape!(
            "resize_pos_embed",
            "{n} grid tokens do not form a square grid"
        );
    }
    let v = pos.to_vec();
    let (cls, grid) = v.split_at(c);
    let wr = weights(g, new_grid);
    // rows (height) first: [g, g, C] → [new, g, C]
    let mut tmp = vec![0f64; new_grid * g * c];
    for (oy, (lo, w)) in wr.iter().enumerate() {
        for (k, wk) in w.iter().enumerate() {
            let src = &grid[(lo + k) * g * c..(lo + k + 1) * g * c];
            for (t, s) in tmp[oy * g * c..(oy + 1) * g * c].iter_mut().zip(src) {
                *t += wk * *s as f64;
            }
        }
    }
    // then columns (width): [new, g, C] → [new, new, C]
    let mut out = cls.to_vec();
    out.resize(c + new_grid * new_grid * c, 0.0);
    for oy in 0..new_grid {
        for (ox, (lo, w)) in wr.iter().enumerate() {
            let dst = c + (oy * new_grid + ox) * c;
            for ch in 0..c {
                let s: f64 = w
                    .iter()
                    .enumerate()
                    .map(|(k, wk)| wk * tmp[(oy * g + lo + k) * c + ch])
                    .sum();
                out[dst + ch] = s as f32;
            }
        }
    }
    Tensor::from_vec(out, [1 + new_grid * new_grid, c])
}
