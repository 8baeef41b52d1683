//! CPU BatchNorm2d. Work is split into (image, channel) planes of H·W contiguous values; each
//! plane gives f64 partial sums in parallel, and a channel's partials are added in image order, so
//! the statistics do not depend on the thread count. Elementwise passes are plane-parallel.

use rayon::prelude::*;

/// Per-channel Σ over planes of `f(plane_index, plane)`, added in image order. `x` is
/// [N, C, HW]; returns C sums.
fn channel_sums(
    x: &[f32],
    c: usize,
    hw: usize,
    f: impl Fn(usize, &[f32]) -> f64 + Sync,
) -> Vec<f64> {
    let mut sums = vec![0f64; c];
    if x.is_empty() {
        return sums;
    }
    let partials: Vec<f64> = x
        .par_chunks(hw)
        .enumerate()
        .map(|(q, plane)| f(q, plane))
        .collect();
    for (q, v) in partials.into_iter().enumerate() {
        sums[q % c] += v;
    }
    sums
}

/// Batch mean and biased variance per channel (f64, two passes: mean, then centred squares).
pub fn batch_stats(x: &[f32], c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (x.len() / (c * hw).max(1) * hw).max(1) as f64;
    let mean: Vec<f64> = sums(x, c, hw).into_iter().map(|s| s / m).collect();
    let var: Vec<f64> = centred_square_sums(x, c, hw, &mean)
        .into_iter()
        .map(|s| s / m)
        .collect();
    (mean, var)
}

/// Per-channel Σx (f64; SyncBatchNorm all-reduces these).
pub fn sums(x: &[f32], c: usize, hw: usize) -> Vec<f64> {
    channel_sums(x, c, hw, |_, p| p.iter().map(|&v| v as f64).sum())
}

/// Per-channel Σ(x − mean)² (f64).
pub fn centred_square_sums(x: &[f32], c: usize, hw: usize, mean: &[f64]) -> Vec<f64> {
    channel_sums(x, c, hw, |q, p| {
        let mu = mean[q % c];
        p.iter().map(|&v| (v as f64 - mu).powi(2)).sum()
    })
}

/// `y = (x − mean[c])·scale[c] + shift[c]`.
pub fn normalize(x: &[f32], mean: &[f32], scale: &[f32], shift: &[f32], hw: usize) -> Vec<f32> {
    let c = mean.len();
    let mut y = vec![0f32; x.len()];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(q, (yp, xp))| {
            let (mu, k, b) = (mean[q % c], scale[q % c], shift[q % c]);
            for (o, &v) in yp.iter_mut().zip(xp) {
                *o = (v - mu) * k + b;
            }
        });
    y
}

/// Per-channel `(Σ dy, Σ dy·x̂)` with `x̂ = (x − mean)·invstd`, in f64.
pub fn grad_sums(
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    invstd: &[f32],
    hw: usize,
) -> (Vec<f64>, Vec<f64>) {
    let c = mean.len();
    let sum_dy = channel_sums(dy, c, hw, |_, p| p.iter().map(|&v| v as f64).sum());
    let sum_dy_xhat = channel_sums(dy, c, hw, |q, p| {
        let (mu, rs) = (mean[q % c] as f64, invstd[q % c] as f64);
        let xp = &x[q * hw..][..hw];
        p.iter()
            .zip(xp)
            .map(|(&g, &v)| g as f64 * (v as f64 - mu) * rs)
            .sum()
    });
    (sum_dy, sum_dy_xhat)
}

/// `dx = a[c]·dy + b[c] + k[c]·x̂`, `x̂ = (x − mean)·invstd` (the training formula; eval has
/// b = k = 0).
#[allow(clippy::too_many_arguments)]
pub fn input_grad(
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    invstd: &[f32],
    a: &[f32],
    b: &[f32],
    k: &[f32],
    hw: usize,
) -> Vec<f32> {
    let c = mean.len();
    let mut dx = vec![0f32; x.len()];
    if dx.is_empty() {
        return dx;
    }
    dx.par_chunks_mut(hw)
        .zip(x.par_chunks(hw).zip(dy.par_chunks(hw)))
        .enumerate()
        .for_each(|(q, (dp, (xp, gp)))| {
            let i = q % c;
            let (mu, rs, a, b, k) = (mean[i], invstd[i], a[i], b[i], k[i]);
            for ((d, &v), &g) in dp.iter_mut().zip(xp).zip(gp) {
                *d = a * g + b + k * ((v - mu) * rs);
            }
        });
    dx
}
