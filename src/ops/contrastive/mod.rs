//! CLIP's contrastive loss as one fused op: norms, similarities and both softmaxes in tiles,
//! never the N×N logits (issue 12). For unnormalised image features I and text features T
//! [N, D] and `logit_scale` (s = exp(logit_scale)):
//!
//!   Î, T̂ = I/‖I‖, T/‖T‖ (row-wise, as F.normalize)      S_ij = s·Î_i·T̂_j
//!   r_i = log Σ_j e^S_ij (each image's row)             c_j = log Σ_i e^S_ij (each text's column)
//!   loss = (mean_i(r_i − S_ii) + mean_j(c_j − S_jj)) / 2
//!   accuracies: the fraction of rows (columns) whose diagonal entry is strictly the largest
//!
//! Backward, with the upstream gradient g:
//!
//!   dS_ij = g·(e^(S_ij − r_i) + e^(S_ij − c_j) − 2δ_ij) / (2N)
//!   dÎ_i = s·Σ_j dS_ij T̂_j      dT̂_j = s·Σ_i dS_ij Î_i      d logit_scale = Σ_ij dS_ij·S_ij
//!
//! then the L2-normalisation backward of each side. Saved for backward: Î, T̂ (the inputs'
//! size), the two norms and the two LSE vectors — O(N·D + N), against the composed loss's two
//! N×N logits and softmaxes ([`crate::loss::contrastive_loss`], which stays as the reference).
//!
//! For data parallelism, [`Graph::contrastive_local`] (`local.rs`): one rank's rows against all
//! gathered columns, open_clip's `local_loss=True, gather_with_grad=True`, on every device.
//!
//! Backends: the CPU (`cpu.rs`, blocked and rayon-parallel) and Emu/Cuda (`gpu.rs`,
//! `kernels/contrastive.cu`: f32 tiles on FMA, f16/bf16 tiles on the tensor cores with f32
//! accumulation). 16-bit features on the CPU are widened to f32 and their gradients rounded back.

mod cpu;
pub(crate) mod gpu;
mod local;
pub use local::ContrastiveLocalOp;

use crate::device::kernel::runs_kernels;
use crate::graph::{Graph, Op, Var};
use crate::ops::cpu_input;
use crate::ops::normalize::{l2_normalize_backward, l2_normalize_stats};
use crate::{bail_shape, DType, Error, Result, Tensor};

/// What the CPU's backward needs besides Î and T̂ (host vectors).
#[derive(Clone)]
pub(crate) struct Saved {
    n: usize,
    d: usize,
    scale: f32,
    row_lse: Vec<cpu::Lse>,
    col_lse: Vec<cpu::Lse>,
    /// S_ii.
    diag: Vec<f32>,
}

/// The op's node: saved = [Î, T̂, ‖I‖, ‖T‖] and, on a kernel device, [logit_scale, row_max,
/// row_lsum, col_max, col_lsum, diag] (device tensors; the CPU keeps those in `host`).
pub struct ContrastiveOp {
    host: Option<Saved>,
    /// `logit_scale`'s shape (`[]` or `[1]`), for its gradient.
    scale_shape: Vec<usize>,
    /// The features' dtype, that of their gradients.
    dtype: DType,
}

/// The fused loss's forward outputs.
pub struct ContrastiveOutput {
    /// `[]`: the symmetric cross-entropy.
    pub loss: Tensor,
    /// `[]`: fraction of images whose own caption scores highest.
    pub image_to_text_acc: Tensor,
    /// `[]`: fraction of captions whose own image scores highest.
    pub text_to_image_acc: Tensor,
}

fn check(img: &Tensor, txt: &Tensor, logit_scale: &Tensor) -> Result<(usize, usize)> {
    let op = "contrastive";
    if img.shape().len() != 2 || img.shape() != txt.shape() {
        bail_shape!(
            op,
            "image features {:?} and text features {:?} must both be [N, D]",
            img.shape(),
            txt.shape()
        );
    }
    if img.shape()[0] == 0 || img.shape()[1] == 0 {
        bail_shape!(
            op,
            "features {:?}: an empty batch (N = 0) or empty features (D = 0) have no loss",
            img.shape()
        );
    }
    if img.dtype() != txt.dtype() {
        bail_shape!(
            op,
            "image features {:?} are {} and text features {:?} {}: both must have one dtype",
            img.shape(),
            img.dtype(),
            txt.shape(),
            txt.dtype()
        );
    }
    if logit_scale.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            got: logit_scale.dtype(),
            expected: "f32 (logit_scale stays f32 under every precision)",
        });
    }
    if logit_scale.numel() != 1 {
        bail_shape!(
            op,
            "logit_scale must be a scalar, got {:?}",
            logit_scale.shape()
        );
    }
    crate::ops::same_device(op, &[img, txt, logit_scale])?;
    Ok((img.shape()[0], img.shape()[1]))
}

/// Forward: the outputs, and what backward needs (module doc).
fn forward(
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
) -> Result<(ContrastiveOutput, Vec<Tensor>, Option<Saved>)> {
    let op = "contrastive";
    let (n, d) = check(img, txt, logit_scale)?;
    if runs_kernels(img.device()) {
        let (ni, norm_i) = l2_normalize_stats(img)?;
        let (nt, norm_t) = l2_normalize_stats(txt)?;
        let f = gpu::forward(&ni, &nt, logit_scale)?;
        let out = ContrastiveOutput {
            loss: f.loss,
            image_to_text_acc: f.i2t,
            text_to_image_acc: f.t2i,
        };
        let mut saved = vec![ni, nt, norm_i, norm_t, logit_scale.clone()];
        saved.extend(f.stats);
        return Ok((out, saved, None));
    }
    // The CPU op computes in f32: 16-bit features are widened (exactly) first, and their
    // gradients rounded back to the features' dtype in backward.
    let (img, txt) = (
        cpu_input(op, &img.try_to_dtype(DType::F32)?)?,
        cpu_input(op, &txt.try_to_dtype(DType::F32)?)?,
    );
    let ls = cpu_input(op, logit_scale)?.f32s(op)?[0];
    let (ni, norm_i) = l2_normalize_stats(&img)?;
    let (nt, norm_t) = l2_normalize_stats(&txt)?;
    let scale = ls.exp();
    let (row_lse, col_lse, diag, row_hits, col_hits) =
        cpu::forward(ni.f32s(op)?, nt.f32s(op)?, n, d, scale);
    let total: f64 = row_lse
        .iter()
        .zip(&diag)
        .chain(col_lse.iter().zip(&diag))
        .map(|(l, &dg)| (l.max - dg) as f64 + l.log_sum as f64)
        .sum();
    let loss = (total / (2 * n) as f64) as f32;
    let inv = 1.0 / n as f32; // times 1/n, as the composed path's accuracies
    let out = ContrastiveOutput {
        loss: Tensor::scalar(loss),
        image_to_text_acc: Tensor::scalar(row_hits as f32 * inv),
        text_to_image_acc: Tensor::scalar(col_hits as f32 * inv),
    };
    let saved = Saved {
        n,
        d,
        scale,
        row_lse,
        col_lse,
        diag,
    };
    Ok((out, vec![ni, nt, norm_i, norm_t], Some(saved)))
}

/// The fused loss on tensors (no graph): loss and both accuracies, on the features' device.
pub fn contrastive(img: &Tensor, txt: &Tensor, logit_scale: &Tensor) -> Result<ContrastiveOutput> {
    Ok(forward(img, txt, logit_scale)?.0)
}

impl<'m> Graph<'m> {
    /// CLIP's symmetric contrastive loss of unnormalised features [N, D] at `logit_scale`, fused
    /// (module doc): the loss as a `[]` Var, and the batch accuracies.
    pub fn contrastive(
        &self,
        img: &Var,
        txt: &Var,
        logit_scale: &Var,
    ) -> Result<(Var, Tensor, Tensor)> {
        let (out, saved_tensors, host) = forward(img.tensor(), txt.tensor(), logit_scale.tensor())?;
        let loss = self.record(
            Op::Contrastive(ContrastiveOp {
                host,
                scale_shape: logit_scale.shape().to_vec(),
                dtype: img.tensor().dtype(),
            }),
            &[img, txt, logit_scale],
            saved_tensors,
            out.loss,
        );
        Ok((loss, out.image_to_text_acc, out.text_to_image_acc))
    }
}

impl ContrastiveOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let op = "contrastive backward";
        // input i's gradient, computed only when it is wanted
        let need = |i: usize, t: &dyn Fn() -> Result<Tensor>| -> Result<Option<Tensor>> {
            needs[i].then(t).transpose()
        };
        let (di, dt, dlog) = match (&self.host, saved) {
            (Some(host), [ni, nt, norm_i, norm_t]) => {
                // the CPU's dÎ, dT̂, then the normalisation backward, in f32
                let g = cpu_input(op, gout)?.f32s(op)?[0];
                let (di, dt, dlog) = cpu::backward(host, ni.f32s(op)?, nt.f32s(op)?, g);
                let back = |y: &Tensor, norm: &Tensor, dy: Vec<f32>| {
                    l2_normalize_backward(y, norm, &Tensor::from_f32(dy, y.shape()))?
                        .try_to_dtype(self.dtype)
                };
                (
                    need(0, &|| back(ni, norm_i, di.clone()))?,
                    need(1, &|| back(nt, norm_t, dt.clone()))?,
                    Tensor::scalar(dlog),
                )
            }
            (None, [ni, nt, norm_i, norm_t, ls, row_max, row_lsum, col_max, col_lsum, diag]) => {
                // the kernels fold the normalisation backward in
                let n = ni.shape()[0];
                let rows = Some((row_max, row_lsum, diag));
                let cols = Some((col_max, col_lsum, diag));
                let (di, dlog) =
                    gpu::backward_pass(ni, nt, norm_i, rows, cols, ls, gout, n, 0, true)?;
                let dt = if needs[1] {
                    let t = gpu::backward_pass(nt, ni, norm_t, cols, rows, ls, gout, n, 0, false);
                    Some(t?.0)
                } else {
                    None
                };
                let dlog = dlog.ok_or_else(|| Error::Msg(format!("{op}: no d logit_scale")))?;
                (needs[0].then_some(di), dt, dlog)
            }
            _ => {
                return Err(Error::Msg(format!(
                    "{op}: {} saved tensors do not match the forward",
                    saved.len()
                )))
            }
        };
        Ok(vec![
            di,
            dt,
            if needs[2] {
                Some(dlog.reshape(self.scale_shape.clone())?)
            } else {
                None
            },
        ])
    }
}
