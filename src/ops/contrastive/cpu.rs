//! The fused contrastive loss on the CPU: tiles of S = s·ÎT̂ᵀ, never the N×N matrix (see mod.rs
//! for the algebra). Row blocks of `ROWS` run in parallel (rayon); each walks every column tile
//! of `COLS`, computing the tile with the CPU GEMM (one thread per block), updating its rows'
//! online (max, Σexp) and writing, per column, the block's partial (max, Σexp) of that column.
//! The column partials are then merged over the row blocks in block order, so the result does
//! not depend on scheduling: bitwise-deterministic. Backward recomputes the tiles twice: in row
//! blocks for dÎ (each block owns its rows), in column blocks for dT̂ (each owns its columns).
//!
//! Tiles of 256 × 256: at N = 4096, D = 512 on 2 cores the fused op then matches the composed
//! loss's time (64 × 256 took 1.4–2× longer: the GEMM packing of small tiles; docs/perf.md).
//!
//! Numerics: a tile's Σexp is taken against the tile's own max, in f64, and merged with the
//! running pair as (M, l₁·e^(m₁−M) + l₂·e^(m₂−M)); every exp has a non-positive argument, so
//! nothing overflows whatever the scale. Extra memory: a tile (ROWS·COLS f32) per running block,
//! and per row block a 16-byte (max, Σ, max off the diagonal) per column: N/ROWS·16·N bytes,
//! N²/16 = 16 MB at N = 16,384 — against the composed loss's 2·N²·4 = 2 GB of logits alone.

use super::Saved;
use crate::ops::matmul::cpu::sgemm;
use rayon::prelude::*;

/// Rows per parallel block (and per tile).
pub(super) const ROWS: usize = 256;
/// Columns per tile.
pub(super) const COLS: usize = 256;

/// The larger of two values, NaN if either is: an entry that is NaN makes its row and column
/// misses (no diagonal is "strictly the largest" beside it), as the composed loss counts them.
fn max_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// (max, Σexp against the max, max off the diagonal) of a row or column, merged in order.
#[derive(Clone, Copy)]
pub(super) struct Online {
    max: f32,
    sum: f64,
    other: f32,
}

impl Online {
    pub(super) const EMPTY: Online = Online {
        max: f32::NEG_INFINITY,
        sum: 0.0,
        other: f32::NEG_INFINITY,
    };
    pub(super) fn merge(self, b: Online) -> Online {
        let max = self.max.max(b.max);
        let part = |o: Online| {
            if o.sum == 0.0 {
                0.0
            } else {
                o.sum * ((o.max - max) as f64).exp()
            }
        };
        Online {
            max,
            sum: part(self) + part(b),
            other: max_nan(self.other, b.other),
        }
    }
    /// The log-sum-exp as (max, log Σ e^(x − max)): kept apart, since the loss r − S_ii and the
    /// softmax e^(S − r) would otherwise lose r's rounding (|r|·2⁻²⁴, large beside a small loss)
    /// — (S − max) is exact when the two are close, and log Σ ∈ [0, log N] is small.
    /// Whether the label entry `diag` is strictly the largest of its row (or column): a hit of
    /// the accuracies.
    pub(super) fn hit(self, diag: f32) -> bool {
        diag > self.other
    }
    pub(super) fn lse(self) -> Lse {
        Lse {
            max: self.max,
            log_sum: self.sum.ln() as f32,
        }
    }
}

/// A row's or column's log-sum-exp, max + log_sum.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Lse {
    pub max: f32,
    pub log_sum: f32,
}

impl Lse {
    /// e^(x − lse), the softmax entry of x.
    pub(super) fn softmax(self, x: f32) -> f32 {
        ((x - self.max) - self.log_sum).exp()
    }
    /// e^(x − lse) − 1, accurate when the softmax entry is near 1.
    pub(super) fn softmax_minus_one(self, x: f32) -> f32 {
        ((x - self.max) - self.log_sum).exp_m1()
    }
}

/// The tile S[i0.., j0..] (rows × cols, row-major) of s·ÎT̂ᵀ: GEMM of the rows, times s.
pub(super) fn tile(
    img: &[f32],
    txt: &[f32],
    d: usize,
    s: f32,
    rows: (usize, usize),
    cols: (usize, usize),
    out: &mut [f32],
) {
    let (m, n) = (rows.1 - rows.0, cols.1 - cols.0);
    sgemm(
        false,
        true,
        m,
        n,
        d,
        &img[rows.0 * d..rows.1 * d],
        &txt[cols.0 * d..cols.1 * d],
        &mut out[..m * n],
        false,
        1,
    );
    for v in &mut out[..m * n] {
        *v *= s;
    }
}

/// The online statistics of `xs` (one row or column of a tile), the entry at `diag` (if inside)
/// excluded from `other`.
pub(super) fn stats_of(xs: impl Iterator<Item = f32> + Clone, diag: Option<usize>) -> Online {
    let max = xs.clone().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    let mut other = f32::NEG_INFINITY;
    for (k, x) in xs.enumerate() {
        sum += ((x - max) as f64).exp();
        if Some(k) != diag {
            other = max_nan(other, x);
        }
    }
    Online { max, sum, other }
}

/// Forward from unit rows: (row LSE, column LSE, diagonal, row hits, column hits).
pub(super) fn forward(
    img: &[f32],
    txt: &[f32],
    n: usize,
    d: usize,
    s: f32,
) -> (Vec<Lse>, Vec<Lse>, Vec<f32>, usize, usize) {
    let blocks: Vec<(usize, usize)> = (0..n)
        .step_by(ROWS)
        .map(|i| (i, (i + ROWS).min(n)))
        .collect();
    // per row block: its rows' stats and diagonal, and its partial of every column
    let per_block: Vec<(Vec<Online>, Vec<f32>, Vec<Online>)> = blocks
        .par_iter()
        .map(|&(r0, r1)| {
            let br = r1 - r0;
            let mut rows = vec![Online::EMPTY; br];
            let mut diag = vec![0f32; br];
            let mut cols = vec![Online::EMPTY; n];
            let mut buf = vec![0f32; ROWS * COLS];
            for c0 in (0..n).step_by(COLS) {
                let c1 = (c0 + COLS).min(n);
                let bc = c1 - c0;
                tile(img, txt, d, s, (r0, r1), (c0, c1), &mut buf);
                for (i, row) in rows.iter_mut().enumerate() {
                    let gi = r0 + i;
                    let xs = &buf[i * bc..(i + 1) * bc];
                    let dk = (c0..c1).contains(&gi).then(|| gi - c0);
                    if let Some(k) = dk {
                        diag[i] = xs[k];
                    }
                    *row = row.merge(stats_of(xs.iter().copied(), dk));
                }
                for (k, col) in cols[c0..c1].iter_mut().enumerate() {
                    let gj = c0 + k;
                    let xs = (0..br).map(|i| buf[i * bc + k]);
                    let di = (r0..r1).contains(&gj).then(|| gj - r0);
                    *col = stats_of(xs, di);
                }
            }
            (rows, diag, cols)
        })
        .collect();
    let mut row_lse = Vec::with_capacity(n);
    let mut diag = Vec::with_capacity(n);
    let mut row_hits = 0;
    for (rows, dg, _) in &per_block {
        for (r, &dv) in rows.iter().zip(dg) {
            row_lse.push(r.lse());
            diag.push(dv);
            row_hits += (dv > r.other) as usize;
        }
    }
    let mut col_lse = vec![Lse::default(); n];
    let mut col_hits = 0;
    col_lse.par_iter_mut().enumerate().for_each(|(j, out)| {
        let merged = per_block
            .iter()
            .fold(Online::EMPTY, |a, (_, _, cols)| a.merge(cols[j]));
        *out = merged.lse();
    });
    for j in 0..n {
        let other = per_block.iter().fold(f32::NEG_INFINITY, |a, (_, _, cols)| {
            max_nan(a, cols[j].other)
        });
        col_hits += (diag[j] > other) as usize;
    }
    (row_lse, col_lse, diag, row_hits, col_hits)
}

/// dS of a tile from S (in place): g·(e^(S−r_i) + e^(S−c_j) − 2δ_ij)/(2N); returns the tile's
/// part of Σ dS·S (f64) when `want_dlog`.
fn grad_tile(
    buf: &mut [f32],
    rows: (usize, usize),
    cols: (usize, usize),
    saved: &Saved,
    g: f32,
    want_dlog: bool,
) -> f64 {
    let (bc, n) = (cols.1 - cols.0, saved.n);
    let k = g / (2 * n) as f32;
    let mut dlog = 0f64;
    for i in 0..rows.1 - rows.0 {
        let gi = rows.0 + i;
        for j in 0..bc {
            let gj = cols.0 + j;
            let x = buf[i * bc + j];
            let (r, c) = (saved.row_lse[gi], saved.col_lse[gj]);
            // on the diagonal P − 1 as expm1: a confident pair has P ≈ 1, and P − 1 in f32
            // would keep only the rounding of P
            let p = if gi == gj {
                r.softmax_minus_one(x) + c.softmax_minus_one(x)
            } else {
                r.softmax(x) + c.softmax(x)
            };
            // Σ dS·S, as Σ P^row·(S − S_ii) + Σ P^col·(S − S_jj) (each softmax sums to 1 along
            // its row or column, so the δ terms drop out): terms of one sign, no cancellation
            if want_dlog && gi != gj {
                let (pr, pc) = (r.softmax(x) as f64, c.softmax(x) as f64);
                dlog += pr * (x - saved.diag[gi]) as f64 + pc * (x - saved.diag[gj]) as f64;
            }
            buf[i * bc + j] = p * k;
        }
    }
    dlog * k as f64
}

/// The row-owner pass of a backward: for every block of `ROWS` rows (in parallel), every tile of
/// s·rows·colsᵀ recomputed, turned into its gradient in place by `grad` (which returns its part
/// of a sum, e.g. d logit_scale's), and multiplied into the block's own rows of d rows
/// (`d rows[br, d] += dS[br, bc] · cols[bc, d]`). Returns d rows [n_rows, d] and the sum.
pub(super) fn row_owner_pass(
    rows: &[f32],
    cols: &[f32],
    (n_rows, n_cols, d): (usize, usize, usize),
    s: f32,
    grad: impl Fn(&mut [f32], (usize, usize), (usize, usize)) -> f64 + Sync,
) -> (Vec<f32>, f64) {
    let mut drows = vec![0f32; n_rows * d];
    let parts: Vec<f64> = drows
        .par_chunks_mut(ROWS * d)
        .enumerate()
        .map(|(b, out)| {
            let (r0, r1) = (b * ROWS, (b * ROWS + ROWS).min(n_rows));
            let mut buf = vec![0f32; ROWS * COLS];
            let mut part = 0f64;
            for c0 in (0..n_cols).step_by(COLS) {
                let c1 = (c0 + COLS).min(n_cols);
                tile(rows, cols, d, s, (r0, r1), (c0, c1), &mut buf);
                part += grad(&mut buf, (r0, r1), (c0, c1));
                let cs = &cols[c0 * d..c1 * d];
                sgemm(false, false, r1 - r0, d, c1 - c0, &buf, cs, out, true, 1);
            }
            part
        })
        .collect();
    (drows, parts.iter().sum())
}

/// Backward from the saved unit rows and LSEs: (dÎ, dT̂, d logit_scale) for the upstream `g`.
pub(super) fn backward(
    saved: &Saved,
    img: &[f32],
    txt: &[f32],
    g: f32,
) -> (Vec<f32>, Vec<f32>, f32) {
    let (n, d, s) = (saved.n, saved.d, saved.scale);
    // rows: dÎ_i = s·Σ_j dS_ij T̂_j (each block owns its rows), and the blocks' Σ dS·S
    let (mut dimg, dlog) = row_owner_pass(img, txt, (n, n, d), s, |buf, rows, cols| {
        grad_tile(buf, rows, cols, saved, g, true)
    });
    // columns: dT̂_j = s·Σ_i dS_ij Î_i (each block owns its columns); tiles recomputed as rows
    // of Sᵀ = s·T̂Îᵀ, so dS comes out transposed: the roles of the LSEs swap.
    let swapped = Saved {
        row_lse: saved.col_lse.clone(),
        col_lse: saved.row_lse.clone(),
        diag: saved.diag.clone(),
        ..*saved
    };
    let (mut dtxt, _) = row_owner_pass(txt, img, (n, n, d), s, |buf, rows, cols| {
        grad_tile(buf, rows, cols, &swapped, g, false)
    });
    for v in dimg.iter_mut().chain(dtxt.iter_mut()) {
        *v *= s;
    }
    (dimg, dtxt, dlog as f32)
}
