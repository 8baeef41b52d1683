//! Inference-only self-attention straight from the packed projection: q, k, v are read in place
//! from `qkv` [B·T, 3·D] (row `b·T + t`, columns `s·D + h·Dh ..`, as `split_qkv_heads` defines
//! them) and each head's output is written straight into its columns of the merged `[B·T, D]`
//! rows, so the head split and merge copies of the recorded path disappear. Per (batch, head):
//! `S = q·kᵀ/√Dh` (one GEMM on strided operands, the scale folded in), a row softmax (causal rows
//! see columns ≤ their own, as `softmax`), `out = P·v` (a second GEMM). The (batch, head) pairs
//! run in parallel, one thread each; the arithmetic per element is that of the recorded path.

use crate::ops::matmul::cpu::gemm_raw;
use crate::ops::OutPtr;
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// The T×T scores of the current head.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Attention of `qkv` [B·T, 3·H·Dh] → [B·T, H·Dh]; see the module doc.
pub fn forward(qkv: &[f32], b: usize, t: usize, h: usize, dh: usize, causal: bool) -> Vec<f32> {
    let d = h * dh;
    let len = b * t * d;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let dst = OutPtr::new(&mut out);
    let scale = 1.0 / (dh as f32).sqrt();
    (0..b * h).into_par_iter().for_each(|bh| {
        let (bi, hi) = (bh / h, bh % h);
        let rows = &qkv[bi * t * 3 * d..][..t * 3 * d];
        let (q, k, v) = (
            &rows[hi * dh..],
            &rows[d + hi * dh..],
            &rows[2 * d + hi * dh..],
        );
        SCORES.with_borrow_mut(|s| {
            if s.len() < t * t {
                s.resize(t * t, 0.0);
            }
            let s = &mut s[..t * t];
            // SAFETY: q, k, v rows are 3·D apart with Dh columns each inside `rows`; s is t×t.
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
                    v.as_ptr(),
                    (3 * d, 1),
                    1.0,
                )
            };
        });
    });
    // SAFETY: the B·H tasks wrote every (row, head column) of the output once.
    unsafe { out.set_len(len) };
    out
}
