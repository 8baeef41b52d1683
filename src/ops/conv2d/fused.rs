//! Inference-only convolution with an epilogue: eval-mode BatchNorm (running statistics), an
//! optional residual and an optional ReLU applied to each output block as soon as its GEMM is done:
//!
//! `out[n, o, p] = relu?((conv(x, w)[n, o, p] − mean[o])·scale[o] + shift[o] + residual?[n, o, p])`
//!
//! — the arithmetic of the separate ops (`batch_norm2d` in eval mode computes exactly
//! `(y − mean)·scale + shift`), in one pass instead of four, with no intermediate tensors.
//!
//! How: the batch's output columns (N·OH·OW, image after image) are cut into blocks of a few
//! hundred columns. A task builds its block's im2col columns (across image boundaries when maps
//! are small) in a per-thread scratch buffer, runs one single-threaded GEMM `W[O, K] · col` into a
//! second scratch block, and writes the epilogue of that block into the output while both are
//! still in cache. Tasks run in parallel; every output element comes from one GEMM, so the thread
//! count changes no number.

use super::cpu::{valid_range, Geom};
use crate::ops::matmul::cpu::sgemm_strided;
use crate::ops::OutPtr;
use rayon::prelude::*;
use std::cell::RefCell;

/// Aim for about this many columns per block (a multiple of the GEMM micro-kernel's 64 rows).
const BLOCK_COLS: usize = 256;

/// What happens to each GEMM output value, per output channel `o`.
pub struct Epilogue<'a> {
    pub mean: &'a [f32],
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    /// Added after the affine map: [N, O, OH, OW], the shape of the output.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

thread_local! {
    /// (im2col block, GEMM output block) scratch, reused across calls on this thread.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// im2col of output columns `q0..q0 + nb` of the whole batch (column `q` is image `q / P`,
/// position `q % P`) into `col` [K, nb]; every element is written.
fn im2col_block(x: &[f32], g: &Geom, q0: usize, nb: usize, col: &mut [f32]) {
    let (p, hw, ow, s, pad) = (g.p(), g.h * g.w, g.ow, g.stride, g.pad);
    for c in 0..g.c {
        for ki in 0..g.kh {
            let (ylo, yhi) = valid_range(ki, pad, s, g.h, g.oh);
            for kj in 0..g.kw {
                let (xlo, xhi) = valid_range(kj, pad, s, g.w, ow);
                let row = &mut col[((c * g.kh + ki) * g.kw + kj) * nb..][..nb];
                // walk the block one output row (a run of ≤ OW columns) at a time
                let mut q = q0;
                while q < q0 + nb {
                    let (img, pos) = (q / p, q % p);
                    let (oy, ox0) = (pos / ow, pos % ow);
                    let ox1 = ow.min(ox0 + (q0 + nb - q));
                    let dst = &mut row[q - q0..][..ox1 - ox0];
                    if oy < ylo || oy >= yhi {
                        dst.fill(0.0);
                    } else {
                        // valid taps of this run: ox in lo..hi
                        let lo = xlo.clamp(ox0, ox1);
                        let hi = xhi.clamp(lo, ox1);
                        dst[..lo - ox0].fill(0.0);
                        dst[hi - ox0..].fill(0.0);
                        if lo < hi {
                            let src = &x[(img * g.c + c) * hw + (oy * s + ki - pad) * g.w..][..g.w];
                            let x0 = lo * s + kj - pad;
                            let d = &mut dst[lo - ox0..hi - ox0];
                            if s == 1 {
                                d.copy_from_slice(&src[x0..x0 + d.len()]);
                            } else {
                                for (t, d) in d.iter_mut().enumerate() {
                                    *d = src[x0 + t * s];
                                }
                            }
                        }
                    }
                    q += ox1 - ox0;
                }
            }
        }
    }
}

/// The (first column, columns) of each task's block, in multiples of 64 columns (the GEMM
/// micro-kernel's width) wherever the shape allows. A pointwise conv on large maps cuts each
/// image's OH·OW columns, so that a block can be read in place; otherwise blocks run over the
/// batch's columns and may straddle images. At least two blocks per thread when there are enough
/// columns.
fn blocks(g: &Geom) -> Vec<(usize, usize)> {
    let (n, p) = (g.n, g.p());
    let min_blocks = 2 * rayon::current_num_threads();
    let cut = |total: usize, base: usize, want: usize| {
        let nb = total.div_ceil(want).next_multiple_of(64).min(BLOCK_COLS);
        (0..total)
            .step_by(nb)
            .map(move |c| (base + c, nb.min(total - c)))
    };
    if g.pointwise() && p >= BLOCK_COLS {
        let want = min_blocks.div_ceil(n);
        (0..n).flat_map(|i| cut(p, i * p, want)).collect()
    } else {
        cut(n * p, 0, min_blocks).collect()
    }
}

/// The fused forward: x [N, C, H, W], w [O, K] → [N, O, OH, OW]; see the module doc.
pub fn forward(x: &[f32], w: &[f32], g: &Geom, epi: &Epilogue) -> Vec<f32> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let len = g.n * p * o;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let dst = OutPtr::new(&mut out);
    blocks(g).into_par_iter().for_each(|(q0, cols)| {
        SCRATCH.with_borrow_mut(|(col, acc)| {
            if acc.len() < o * cols {
                acc.resize(o * cols, 0.0);
            }
            let acc = &mut acc[..o * cols];
            let (img, pos) = (q0 / p, q0 % p);
            if g.pointwise() && pos + cols <= p {
                // a pointwise conv reads its block of columns straight from the image
                let x_img = &x[img * g.c * p + pos..];
                sgemm_strided(o, cols, k, w, k, x_img, p, acc, cols);
            } else {
                if col.len() < k * cols {
                    col.resize(k * cols, 0.0);
                }
                let col = &mut col[..k * cols];
                im2col_block(x, g, q0, cols, col);
                sgemm_strided(o, cols, k, w, k, col, cols, acc, cols);
            }
            epilogue(acc, g, q0, cols, epi, dst);
        });
    });
    // SAFETY: the blocks cover all N·OH·OW columns of every one of the O rows of each image,
    // so each of the `len` elements was written exactly once above.
    unsafe { out.set_len(len) };
    out
}

/// Writes the epilogue of GEMM block `acc` [O, cols] (columns `q0..` of the batch) into `dst`.
fn epilogue(acc: &[f32], g: &Geom, q0: usize, cols: usize, epi: &Epilogue, dst: OutPtr) {
    let p = g.p();
    let mut q = q0;
    while q < q0 + cols {
        // one run of columns inside one image
        let (img, pos) = (q / p, q % p);
        let run = (p - pos).min(q0 + cols - q);
        for o in 0..g.o {
            let src = &acc[o * cols + (q - q0)..][..run];
            let at = (img * g.o + o) * p + pos;
            // `at..at + run` is inside the output and belongs to this block alone (affine_run writes it)
            let out = dst.at(at);
            let (mu, sc, sh) = (epi.mean[o], epi.scale[o], epi.shift[o]);
            let res = epi.residual.map(|r| &r[at..at + run]);
            match (res, epi.relu) {
                (None, false) => affine_run::<false>(src, out, mu, sc, sh, None),
                (None, true) => affine_run::<true>(src, out, mu, sc, sh, None),
                (Some(r), false) => affine_run::<false>(src, out, mu, sc, sh, Some(r)),
                (Some(r), true) => affine_run::<true>(src, out, mu, sc, sh, Some(r)),
            }
        }
        q += run;
    }
}

/// `out[t] = relu?((src[t] − mu)·sc + sh + res?[t])` for one run; `out` is written, never read.
#[inline(always)]
fn affine_run<const RELU: bool>(
    src: &[f32],
    out: *mut f32,
    mu: f32,
    sc: f32,
    sh: f32,
    res: Option<&[f32]>,
) {
    let finish = |y: f32| if RELU { y.max(0.0) } else { y };
    match res {
        // SAFETY (both arms): the caller owns `out[..src.len()]`.
        None => {
            for (t, &v) in src.iter().enumerate() {
                unsafe { out.add(t).write(finish((v - mu) * sc + sh)) };
            }
        }
        Some(r) => {
            for (t, (&v, &r)) in src.iter().zip(r).enumerate() {
                unsafe { out.add(t).write(finish((v - mu) * sc + sh + r)) };
            }
        }
    }
}
