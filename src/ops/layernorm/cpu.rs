//! Row-parallel LayerNorm. Statistics in f64 per row (two passes: mean, then centred variance)
//! so that long rows of large values lose nothing; weight/bias gradients are summed over fixed
//! row chunks and then in chunk order, independent of the thread count.

use crate::ops::ROW_CHUNK;
use rayon::prelude::*;

pub fn forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    d: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = x.len() / d.max(1);
    let mut y = vec![0f32; x.len()];
    let mut mean = vec![0f32; rows];
    let mut rstd = vec![0f32; rows];
    y.par_chunks_mut(d.max(1))
        .zip(x.par_chunks(d.max(1)))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((y, x), (m, r))| {
            let mu = x.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = x.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / d as f64;
            let rs = 1.0 / (var + eps as f64).sqrt();
            let (mu, rs) = (mu as f32, rs as f32);
            for i in 0..d {
                y[i] = (x[i] - mu) * rs * w[i] + b[i];
            }
            *m = mu;
            *r = rs;
        });
    (y, mean, rstd)
}

pub fn backward(
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    g: &[f32],
    d: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = x.len() / d.max(1);
    let mut dx = vec![0f32; x.len()];
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(d.max(1) * ROW_CHUNK)
        .enumerate()
        .map(|(c, dxc)| {
            let mut dw = vec![0f32; d];
            let mut db = vec![0f32; d];
            for (j, dxr) in dxc.chunks_mut(d.max(1)).enumerate() {
                let r = c * ROW_CHUNK + j;
                let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
                let (mu, rs) = (mean[r], rstd[r]);
                let (mut sum_g, mut sum_gx) = (0f32, 0f32);
                for i in 0..d {
                    let xhat = (xr[i] - mu) * rs;
                    let gh = gr[i] * w[i];
                    sum_g += gh;
                    sum_gx += gh * xhat;
                    dw[i] += gr[i] * xhat;
                    db[i] += gr[i];
                }
                let (mg, mgx) = (sum_g / d as f32, sum_gx / d as f32);
                for i in 0..d {
                    let xhat = (xr[i] - mu) * rs;
                    dxr[i] = rs * (gr[i] * w[i] - mg - xhat * mgx);
                }
            }
            (dw, db)
        })
        .collect();
    let mut dw = vec![0f32; d];
    let mut db = vec![0f32; d];
    for (pw, pb) in partials {
        for i in 0..d {
            dw[i] += pw[i];
            db[i] += pb[i];
        }
    }
    let _ = rows;
    (dx, dw, db)
}
