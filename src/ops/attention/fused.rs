//! Self-attention on the CPU straight from the packed projection, forward and backward: q, k, v
//! are read in place from `qkv` [B·T, 3·D] (row `b·T + t`, columns `s·D + h·Dh ..`, as
//! `split_qkv_heads` defines them), each head's output is written straight into its columns of
//! the merged `[B·T, D]` rows, and the backward writes dqkv in qkv's layout — so the head split
//! and merge copies of the recorded path disappear, and only qkv, the output and the per-row
//! log-sum-exp are kept for backward (as the fused kernels of `kernels/attention.cu` keep them).
//! Per (batch, head), one rayon task each, with the T×T scores in a thread-local buffer that
//! stays in cache:
//!
//! ```text
//! forward:  S = q·kᵀ/√Dh (one GEMM on strided operands, the scale folded in); a row softmax
//!           (causal rows see columns ≤ their own); lse = max + log Σ; out = P·v
//! backward: P = e^(S − lse) recomputed; dv = Pᵀ·dout; dP = dout·vᵀ; dS = P∘(dP − Σ P∘dP);
//!           dq = dS·k/√Dh; dk = dSᵀ·q/√Dh
//! ```
//!
//! The arithmetic per element is the recorded path's (its softmax and softmax backward).

use crate::ops::matmul::cpu::gemm_raw;
use crate::ops::OutPtr;
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// The T×T scores (then probabilities) of the current head.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Backward's dP and dS of the current head, T×T each.
    static GRADS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn ensure(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

/// `S = scale·q·kᵀ` for head `hi` of the batch rows `rows` (T rows of 3·D) into `s` (T×T).
fn scores(s: &mut [f32], rows: &[f32], t: usize, d: usize, dh: usize, hi: usize, scale: f32) {
    let (q, k) = (&rows[hi * dh..], &rows[d + hi * dh..]);
    // SAFETY: q, k rows are 3·D apart with Dh columns each inside `rows`; s is t×t.
    unsafe {
        gemm_raw(
            t,
            t,
            dh,
            s.as_mut_ptr(),
            t,
            q.as_ptr(),
            (3 * d, 1),
            k.as_ptr(),
            (1, 3 * d),
            scale,
        )
    };
}

/// (out [B·T, H·Dh], lse [B·H·T]) of `qkv` [B·T, 3·H·Dh]; see the module doc.
pub fn forward(
    qkv: &[f32],
    b: usize,
    t: usize,
    h: usize,
    dh: usize,
    causal: bool,
) -> (Vec<f32>, Vec<f32>) {
    let d = h * dh;
    let len = b * t * d;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let mut lse = vec![0f32; b * h * t];
    if len == 0 {
        return (out, lse);
    }
    let dst = OutPtr::new(&mut out);
    let scale = 1.0 / (dh as f32).sqrt();
    lse.par_chunks_mut(t).enumerate().for_each(|(bh, lse)| {
        let (bi, hi) = (bh / h, bh % h);
        let rows = &qkv[bi * t * 3 * d..][..t * 3 * d];
        SCORES.with_borrow_mut(|s| {
            let s = ensure(s, t * t);
            scores(s, rows, t, d, dh, hi, scale);
            for (r, row) in s.chunks_mut(t).enumerate() {
                let vis = if causal { r + 1 } else { t };
                let m = row[..vis].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut sum = 0f32;
                for e in &mut row[..vis] {
                    *e = (*e - m).exp();
                    sum += *e;
                }
                let inv = 1.0 / sum;
                row[..vis].iter_mut().for_each(|e| *e *= inv);
                row[vis..].fill(0.0);
                lse[r] = m + sum.ln();
            }
            // SAFETY: this task's output is rows bi·T.., columns hi·Dh.. (Dh wide, D apart).
            unsafe {
                gemm_raw(
                    t,
                    dh,
                    t,
                    dst.at(bi * t * d + hi * dh),
                    d,
                    s.as_ptr(),
                    (t, 1),
                    rows[2 * d + hi * dh..].as_ptr(),
                    (3 * d, 1),
                    1.0,
                )
            };
        });
    });
    // SAFETY: the B·H tasks wrote every (row, head column) of the output once.
    unsafe { out.set_len(len) };
    (out, lse)
}

/// dqkv [B·T, 3·H·Dh] from `qkv`, the forward's `lse` and the output gradient `dout`
/// [B·T, H·Dh]; see the module doc.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    qkv: &[f32],
    lse: &[f32],
    dout: &[f32],
    b: usize,
    t: usize,
    h: usize,
    dh: usize,
    causal: bool,
) -> Vec<f32> {
    let d = h * dh;
    let len = b * t * 3 * d;
    let mut dqkv: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return dqkv;
    }
    let dst = OutPtr::new(&mut dqkv);
    let scale = 1.0 / (dh as f32).sqrt();
    (0..b * h).into_par_iter().for_each(|bh| {
        let (bi, hi) = (bh / h, bh % h);
        let rows = &qkv[bi * t * 3 * d..][..t * 3 * d];
        let g = &dout[bi * t * d + hi * dh..];
        let lse = &lse[bh * t..][..t];
        let base = bi * t * 3 * d;
        SCORES.with_borrow_mut(|p| {
            GRADS.with_borrow_mut(|(dp, ds)| {
                let (p, dp, ds) = (ensure(p, t * t), ensure(dp, t * t), ensure(ds, t * t));
                scores(p, rows, t, d, dh, hi, scale);
                for (r, row) in p.chunks_mut(t).enumerate() {
                    let vis = if causal { r + 1 } else { t };
                    row[..vis].iter_mut().for_each(|e| *e = (*e - lse[r]).exp());
                    row[vis..].fill(0.0);
                }
                // SAFETY (all three GEMMs into dqkv): this task owns rows bi·T.. of the q, k and
                // v columns of head hi (Dh wide, 3·D apart); the operands lie inside `rows`,
                // `dout` (rows D apart) and the task's T×T buffers.
                unsafe {
                    // dv = Pᵀ·dout
                    gemm_raw(
                        t,
                        dh,
                        t,
                        dst.at(base + 2 * d + hi * dh),
                        3 * d,
                        p.as_ptr(),
                        (1, t),
                        g.as_ptr(),
                        (d, 1),
                        1.0,
                    );
                    // dP = dout·vᵀ
                    gemm_raw(
                        t,
                        t,
                        dh,
                        dp.as_mut_ptr(),
                        t,
                        g.as_ptr(),
                        (d, 1),
                        rows[2 * d + hi * dh..].as_ptr(),
                        (1, 3 * d),
                        1.0,
                    );
                }
                // dS = P∘(dP − Σ P∘dP), the softmax backward of the recorded path
                for ((ds, p), dp) in ds.chunks_mut(t).zip(p.chunks(t)).zip(dp.chunks(t)) {
                    let dot: f32 = p.iter().zip(dp.iter()).map(|(a, b)| a * b).sum();
                    for i in 0..t {
                        ds[i] = p[i] * (dp[i] - dot);
                    }
                }
                unsafe {
                    // dq = dS·k/√Dh
                    gemm_raw(
                        t,
                        dh,
                        t,
                        dst.at(base + hi * dh),
                        3 * d,
                        ds.as_ptr(),
                        (t, 1),
                        rows[d + hi * dh..].as_ptr(),
                        (3 * d, 1),
                        scale,
                    );
                    // dk = dSᵀ·q/√Dh
                    gemm_raw(
                        t,
                        dh,
                        t,
                        dst.at(base + d + hi * dh),
                        3 * d,
                        ds.as_ptr(),
                        (1, t),
                        rows[hi * dh..].as_ptr(),
                        (3 * d, 1),
                        scale,
                    );
                }
            });
        });
    });
    // SAFETY: the B·H tasks wrote every (row, q/k/v head column) of dqkv once.
    unsafe { dqkv.set_len(len) };
    dqkv
}
