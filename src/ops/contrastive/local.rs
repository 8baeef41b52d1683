//! The contrastive loss of one rank in data parallelism: this rank's n rows against all N
//! gathered columns (open_clip's `ClipLoss(local_loss=True, gather_with_grad=True)`, CLIP's
//! "sharded similarity computation"). With Î_r, T̂_r this rank's unit features, Î, T̂ all N
//! (every rank's, in rank order) and off = rank·n:
//!
//!   A = s·Î_r·T̂ᵀ [n, N] (each local image against every text),  B = s·T̂_r·Îᵀ [n, N]
//!   loss_r = (mean_i (lse_j A_ij − A_i,i+off) + mean_i (lse_j B_ij − B_i,i+off)) / 2
//!
//! so the mean of the ranks' losses is the full batch's loss, and the sum of the ranks'
//! gradients (the local rows' plus the all-reduced column gradients) is `world` times the full
//! batch's gradient — what DDP's averaging then divides out. Backward: dA_ij = g·(P_ij − δ)/2n
//! (row softmax only), d(local rows) = s·dA·T̂, d(columns) = s·dAᵀ·Î_r, likewise for B; and
//! d logit_scale = Σ dA·A + Σ dB·B as Σ P·(S − S_diag). On the CPU the same tiles as cpu.rs; on
//! Emu/Cuda the kernels of `kernels/contrastive.cu` (f32, f16, bf16): per side a rows-only
//! forward, then a row-owner and a column-owner backward pass (`gpu.rs`).

use super::cpu::{row_owner_pass, stats_of, tile, Lse, Online, COLS, ROWS};
use crate::graph::{Graph, Op, Var};
use crate::ops::cpu_input;
use crate::ops::matmul::cpu::sgemm;
use crate::ops::normalize::{l2_normalize_backward, l2_normalize_stats};
use crate::{bail_shape, Error, Result, Tensor};
use rayon::prelude::*;

/// One direction: local unit rows [n, d] against all unit columns [N, d].
struct Side {
    lse: Vec<Lse>,
    diag: Vec<f32>,
    /// Rows whose label entry is strictly the largest (the accuracy's numerator).
    hits: usize,
}

/// Row LSEs and the label entries S_i,i+off of s·rows·colsᵀ.
fn side_forward(
    rows: &[f32],
    cols: &[f32],
    n: usize,
    total: usize,
    d: usize,
    s: f32,
    off: usize,
) -> Side {
    let blocks: Vec<(usize, usize)> = (0..n)
        .step_by(ROWS)
        .map(|i| (i, (i + ROWS).min(n)))
        .collect();
    let per: Vec<(Vec<Online>, Vec<f32>)> = blocks
        .par_iter()
        .map(|&(r0, r1)| {
            let mut stats = vec![Online::EMPTY; r1 - r0];
            let mut diag = vec![0f32; r1 - r0];
            let mut buf = vec![0f32; ROWS * COLS];
            for c0 in (0..total).step_by(COLS) {
                let c1 = (c0 + COLS).min(total);
                let bc = c1 - c0;
                tile(rows, cols, d, s, (r0, r1), (c0, c1), &mut buf);
                for (i, st) in stats.iter_mut().enumerate() {
                    let label = r0 + i + off;
                    let xs = &buf[i * bc..(i + 1) * bc];
                    let k = (c0..c1).contains(&label).then(|| label - c0);
                    if let Some(k) = k {
                        diag[i] = xs[k];
                    }
                    *st = st.merge(stats_of(xs.iter().copied(), k));
                }
            }
            (stats, diag)
        })
        .collect();
    let mut side = Side {
        lse: Vec::with_capacity(n),
        diag: Vec::with_capacity(n),
        hits: 0,
    };
    for (stats, diag) in per {
        side.hits += stats.iter().zip(&diag).filter(|(o, &d)| o.hit(d)).count();
        side.lse.extend(stats.iter().map(|o| o.lse()));
        side.diag.extend(diag);
    }
    side
}

/// dS·s of a tile of rows [r0, r1) × columns [c0, c1) (in place over S); Σ P·(S − S_diag).
fn side_grad(
    buf: &mut [f32],
    rows: (usize, usize),
    cols: (usize, usize),
    side: &Side,
    off: usize,
    k: f32,
    s: f32,
) -> f64 {
    let bc = cols.1 - cols.0;
    let mut dlog = 0f64;
    for i in 0..rows.1 - rows.0 {
        let (gi, lse) = (rows.0 + i, side.lse[rows.0 + i]);
        for j in 0..bc {
            let x = buf[i * bc + j];
            let p = if cols.0 + j == gi + off {
                lse.softmax_minus_one(x)
            } else {
                let p = lse.softmax(x);
                dlog += p as f64 * (x - side.diag[gi]) as f64;
                p
            };
            buf[i * bc + j] = p * k * s;
        }
    }
    dlog
}

/// (d rows [n, d], d columns [N, d], Σ P·(S − S_diag)) of one direction, for dS scaled by k.
#[allow(clippy::too_many_arguments)]
fn side_backward(
    rows: &[f32],
    cols: &[f32],
    side: &Side,
    n: usize,
    total: usize,
    d: usize,
    s: f32,
    off: usize,
    k: f32,
) -> (Vec<f32>, Vec<f32>, f64) {
    let (drows, dlog) = row_owner_pass(rows, cols, (n, total, d), s, |buf, r, c| {
        side_grad(buf, r, c, side, off, k, s)
    });
    // columns: each block owns COLS-wide column ranges; dS tiles recomputed row-major
    // (rows × its columns) and applied transposed: d cols[c, :] += Σ_i dS[i][c] · rows[i, :]
    let mut dcols = vec![0f32; total * d];
    dcols
        .par_chunks_mut(COLS * d)
        .enumerate()
        .for_each(|(b, out)| {
            let (c0, c1) = (b * COLS, (b * COLS + COLS).min(total));
            let mut buf = vec![0f32; ROWS * COLS];
            for r0 in (0..n).step_by(ROWS) {
                let r1 = (r0 + ROWS).min(n);
                tile(rows, cols, d, s, (r0, r1), (c0, c1), &mut buf);
                side_grad(&mut buf, (r0, r1), (c0, c1), side, off, k, s);
                // out[bc, d] += dSᵀ[bc, br] · rows[br, d]
                sgemm(
                    true,
                    false,
                    c1 - c0,
                    d,
                    r1 - r0,
                    &buf,
                    &rows[r0 * d..r1 * d],
                    out,
                    true,
                    1,
                );
            }
        });
    (drows, dcols, dlog)
}

/// What backward needs beyond the saved unit features.
struct LocalSaved {
    n: usize,
    total: usize,
    d: usize,
    scale: f32,
    off: usize,
    image_rows: Side,
    text_rows: Side,
}

/// The node: saved = [Î_r, T̂_r, Î, T̂, ‖I_r‖, ‖T_r‖, ‖I‖, ‖T‖] and, on a kernel device,
/// [logit_scale, then per side (images, texts as rows) max, log Σ and label entries].
pub struct ContrastiveLocalOp {
    /// The CPU's host statistics; `None` on a kernel device (they are saved tensors there).
    saved: Option<LocalSaved>,
    n: usize,
    off: usize,
    scale_shape: Vec<usize>,
}

impl<'m> Graph<'m> {
    /// The contrastive loss of rank `rank`: its n image and text features against all N =
    /// world·n gathered ones (module doc), `[]`. Inputs in the order (local images, local
    /// texts, all images, all texts, logit_scale); the all-feature inputs include this rank's
    /// own rows at rank·n, and get their own gradients (the multi-GPU step reduces those).
    pub fn contrastive_local(
        &self,
        img_local: &Var,
        txt_local: &Var,
        img_all: &Var,
        txt_all: &Var,
        logit_scale: &Var,
        rank: usize,
    ) -> Result<Var> {
        let (loss, _, _) = self.contrastive_local_with_accuracy(
            img_local,
            txt_local,
            img_all,
            txt_all,
            logit_scale,
            rank,
        )?;
        Ok(loss)
    }

    /// [`Graph::contrastive_local`] and this rank's accuracies as `[]` tensors: the fraction of
    /// its images whose own caption scores highest among all N captions, and of its captions
    /// whose own image does (the full batch's accuracies are the mean over ranks).
    pub fn contrastive_local_with_accuracy(
        &self,
        img_local: &Var,
        txt_local: &Var,
        img_all: &Var,
        txt_all: &Var,
        logit_scale: &Var,
        rank: usize,
    ) -> Result<(Var, Tensor, Tensor)> {
        let op = "contrastive_local";
        let (il, tl, ia, ta) = (
            img_local.tensor(),
            txt_local.tensor(),
            img_all.tensor(),
            txt_all.tensor(),
        );
        if il.shape().len() != 2
            || il.shape() != tl.shape()
            || ia.shape() != ta.shape()
            || ia.shape().len() != 2
            || ia.shape()[1] != il.shape()[1]
        {
            bail_shape!(
                op,
                "local features {:?} / {:?} must be [n, D] and all features {:?} / {:?} [N, D]",
                il.shape(),
                tl.shape(),
                ia.shape(),
                ta.shape()
            );
        }
        let (n, d, total) = (il.shape()[0], il.shape()[1], ia.shape()[0]);
        if n == 0 || d == 0 || (rank + 1) * n > total {
            bail_shape!(
                op,
                "rank {rank}'s {n} rows at {} do not lie within the {total} gathered rows (D {d})",
                rank * n
            );
        }
        if logit_scale.tensor().numel() != 1 {
            bail_shape!(
                op,
                "logit_scale must be a scalar, got {:?}",
                logit_scale.shape()
            );
        }
        let off = rank * n;
        if [tl, ia, ta].iter().any(|t| t.dtype() != il.dtype()) {
            bail_shape!(
                op,
                "features are {}, {}, {}, {}: all four must have one dtype",
                il.dtype(),
                tl.dtype(),
                ia.dtype(),
                ta.dtype()
            );
        }
        crate::ops::same_device(op, &[il, tl, ia, ta, logit_scale.tensor()])?;
        // the unit rows, on the features' device (the CPU's checks its inputs are f32)
        let ((nil, norm_il), (ntl, norm_tl)) = (l2_normalize_stats(il)?, l2_normalize_stats(tl)?);
        let ((nia, norm_ia), (nta, norm_ta)) = (l2_normalize_stats(ia)?, l2_normalize_stats(ta)?);
        if crate::device::kernel::runs_kernels(il.device()) {
            let ls = logit_scale.tensor().clone();
            let (loss, i2t, t2i, stats) =
                super::gpu::forward_local(&nil, &ntl, &nia, &nta, &ls, off)?;
            let mut saved = vec![nil, ntl, nia, nta, norm_il, norm_tl, norm_ia, norm_ta, ls];
            saved.extend(stats);
            let loss = self.record(
                Op::ContrastiveLocal(ContrastiveLocalOp {
                    saved: None,
                    n,
                    off,
                    scale_shape: logit_scale.shape().to_vec(),
                }),
                &[img_local, txt_local, img_all, txt_all, logit_scale],
                saved,
                loss,
            );
            return Ok((loss, i2t, t2i));
        }
        let scale = cpu_input(op, logit_scale.tensor())?.f32s(op)?[0].exp();
        let image_rows = side_forward(nil.f32s(op)?, nta.f32s(op)?, n, total, d, scale, off);
        let text_rows = side_forward(ntl.f32s(op)?, nia.f32s(op)?, n, total, d, scale, off);
        let sum: f64 = [&image_rows, &text_rows]
            .iter()
            .flat_map(|s| s.lse.iter().zip(&s.diag))
            .map(|(l, &dg)| (l.max - dg) as f64 + l.log_sum as f64)
            .sum();
        let loss = Tensor::scalar((sum / (2 * n) as f64) as f32);
        let inv = 1.0 / n as f32;
        let i2t = Tensor::scalar(image_rows.hits as f32 * inv);
        let t2i = Tensor::scalar(text_rows.hits as f32 * inv);
        let saved = LocalSaved {
            n,
            total,
            d,
            scale,
            off,
            image_rows,
            text_rows,
        };
        let loss = self.record(
            Op::ContrastiveLocal(ContrastiveLocalOp {
                saved: Some(saved),
                n,
                off,
                scale_shape: logit_scale.shape().to_vec(),
            }),
            &[img_local, txt_local, img_all, txt_all, logit_scale],
            vec![nil, ntl, nia, nta, norm_il, norm_tl, norm_ia, norm_ta],
            loss,
        );
        Ok((loss, i2t, t2i))
    }
}

impl ContrastiveLocalOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let op = "contrastive_local backward";
        let Some(sv) = &self.saved else {
            return self.backward_kernels(saved, gout, needs);
        };
        let [nil, ntl, nia, nta, norm_il, norm_tl, norm_ia, norm_ta] = saved else {
            return Err(Error::Msg(format!("{op}: expected 8 saved tensors")));
        };
        let g = cpu_input(op, gout)?.f32s(op)?[0];
        let k = g / (2 * sv.n) as f32;
        let s = sv.scale;
        fn f(t: &Tensor) -> Result<&[f32]> {
            t.f32s("contrastive_local backward")
        }
        // images as rows (against all texts), texts as rows (against all images)
        let (d_il, d_ta, dl_a) = side_backward(
            f(nil)?,
            f(nta)?,
            &sv.image_rows,
            sv.n,
            sv.total,
            sv.d,
            s,
            sv.off,
            k,
        );
        let (d_tl, d_ia, dl_b) = side_backward(
            f(ntl)?,
            f(nia)?,
            &sv.text_rows,
            sv.n,
            sv.total,
            sv.d,
            s,
            sv.off,
            k,
        );
        let (local, all) = ([sv.n, sv.d], [sv.total, sv.d]);
        let back = |need: bool,
                    y: &Tensor,
                    norm: &Tensor,
                    dy: Vec<f32>,
                    shape: [usize; 2]|
         -> Result<Option<Tensor>> {
            if !need {
                return Ok(None);
            }
            Ok(Some(l2_normalize_backward(
                y,
                norm,
                &Tensor::from_f32(dy, &shape),
            )?))
        };
        Ok(vec![
            back(needs[0], nil, norm_il, d_il, local)?,
            back(needs[1], ntl, norm_tl, d_tl, local)?,
            back(needs[2], nia, norm_ia, d_ia, all)?,
            back(needs[3], nta, norm_ta, d_ta, all)?,
            if needs[4] {
                Some(
                    Tensor::scalar(((dl_a + dl_b) * k as f64) as f32)
                        .reshape(self.scale_shape.clone())?,
                )
            } else {
                None
            },
        ])
    }

    /// Emu/Cuda: per side (images, then texts as rows) a row-owner pass for the local rows and a
    /// column-owner pass for all N columns (labels at −off seen from the columns), the
    /// normalisation backward folded into each; d logit_scale from the row passes.
    fn backward_kernels(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        use super::gpu::backward_pass;
        let op = "contrastive_local backward";
        let [nil, ntl, nia, nta, norm_il, norm_tl, norm_ia, norm_ta, ls, im, il, idg, tm, tl, tdg] =
            saved
        else {
            return Err(Error::Msg(format!("{op}: expected 15 saved tensors")));
        };
        let (n, off) = (self.n, self.off as i64);
        let (img, txt) = (Some((im, il, idg)), Some((tm, tl, tdg)));
        let (d_il, dl_a) = backward_pass(nil, nta, norm_il, img, None, ls, gout, n, off, true)?;
        let (d_tl, dl_b) = backward_pass(ntl, nia, norm_tl, txt, None, ls, gout, n, off, true)?;
        let cols = |need: bool, a, b, norm, side| -> Result<Option<Tensor>> {
            need.then(|| Ok(backward_pass(a, b, norm, None, side, ls, gout, n, -off, false)?.0))
                .transpose()
        };
        let d_ia = cols(needs[2], nia, ntl, norm_ia, txt)?;
        let d_ta = cols(needs[3], nta, nil, norm_ta, img)?;
        let dlog = match (dl_a, dl_b) {
            (Some(a), Some(b)) => crate::ops::binary::add(&a, &b)?,
            _ => return Err(Error::Msg(format!("{op}: no d logit_scale"))),
        };
        Ok(vec![
            needs[0].then_some(d_il),
            needs[1].then_some(d_tl),
            d_ia,
            d_ta,
            if needs[4] {
                Some(dlog.reshape(self.scale_shape.clone())?)
            } else {
                None
            },
        ])
    }
}
