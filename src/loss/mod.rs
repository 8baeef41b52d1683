//! The contrastive (InfoNCE) loss of CLIP: for N pairs, L2-normalised image features I and text
//! features T, logits `s·I·Tᵀ` with `s = exp(logit_scale)`, and the symmetric cross-entropy
//! `(CE(s·I·Tᵀ, arange) + CE(s·T·Iᵀ, arange)) / 2`: each image must pick its own caption among the
//! batch's N, and each caption its own image.

use crate::device::kernel::runs_kernels;
use crate::{bail_shape, Graph, Result, Tensor, Var};

/// The loss and the batch's retrieval accuracies, all `[]` tensors on the features' device (read
/// them back together, once per step: `train::StepStats`).
pub struct ContrastiveLoss {
    pub loss: Var,
    /// Fraction of images whose highest-scoring caption is their own.
    pub image_to_text_acc: Tensor,
    /// Fraction of captions whose highest-scoring image is their own.
    pub text_to_image_acc: Tensor,
}

/// Row-wise (`transpose`: column-wise) argmax accuracy against the diagonal of square logits
/// [N, N]: a row counts when its diagonal entry is strictly the largest. On Emu/Cuda a kernel
/// (`cross_entropy.cu`'s `diagonal_hits_f32`), so nothing comes back to the host.
fn batch_accuracy(logits: &Tensor, transpose: bool) -> Result<Tensor> {
    if runs_kernels(logits.device()) {
        return crate::ops::cross_entropy::gpu::diagonal_accuracy(logits, transpose);
    }
    let n = logits.shape()[0];
    Ok(Tensor::scalar(diagonal_accuracy(
        &logits.contiguous().to_vec(),
        n,
        transpose,
    )))
}

/// The CPU rule of [`batch_accuracy`] on row-major logits.
fn diagonal_accuracy(logits: &[f32], n: usize, transpose: bool) -> f32 {
    let at = |i: usize, j: usize| {
        if transpose {
            logits[j * n + i]
        } else {
            logits[i * n + j]
        }
    };
    let hits = (0..n)
        .filter(|&i| (0..n).all(|j| j == i || at(i, j) < at(i, i)))
        .count();
    // times 1/n (not ÷ n), as the device's scaled sum computes it, so both give the same bits
    hits as f32 * (1.0 / n.max(1) as f32)
}

/// Symmetric InfoNCE over unnormalised features [N, D] and a scalar `logit_scale` (log of the
/// temperature's inverse, as CLIP stores it): the fused op ([`Graph::contrastive`], which never
/// forms the N×N logits on the CPU; on Emu/Cuda, until their kernels exist, the composed loss).
pub fn contrastive_loss(
    g: &Graph<'_>,
    image_features: &Var,
    text_features: &Var,
    logit_scale: &Var,
) -> Result<ContrastiveLoss> {
    let (loss, image_to_text_acc, text_to_image_acc) =
        g.contrastive(image_features, text_features, logit_scale)?;
    Ok(ContrastiveLoss {
        loss,
        image_to_text_acc,
        text_to_image_acc,
    })
}

/// The same loss composed of ops — normalize, matmul, scale, two cross-entropies over the N×N
/// logits — as open_clip computes it: the reference the fused op is tested against.
pub fn contrastive_loss_composed(
    g: &Graph<'_>,
    image_features: &Var,
    text_features: &Var,
    logit_scale: &Var,
) -> Result<ContrastiveLoss> {
    if image_features.shape().len() != 2 || image_features.shape() != text_features.shape() {
        bail_shape!(
            "contrastive_loss",
            "image features {:?} and text features {:?} must both be [N, D]",
            image_features.shape(),
            text_features.shape()
        );
    }
    if logit_scale.tensor().numel() != 1 {
        bail_shape!(
            "contrastive_loss",
            "logit_scale must be a scalar, got {:?}",
            logit_scale.shape()
        );
    }
    let n = image_features.shape()[0];
    let img = g.l2_normalize(image_features)?;
    let txt = g.l2_normalize(text_features)?;
    let scale = g.exp(logit_scale)?;
    let logits_per_image = g.mul(&g.matmul(&img, &txt, false, true)?, &scale)?;
    let logits_per_text = g.transpose(&logits_per_image, 0, 1)?;
    let labels: Vec<u32> = (0..n as u32).collect();
    let li = g.cross_entropy(&logits_per_image, &labels)?;
    let lt = g.cross_entropy(&logits_per_text, &labels)?;
    let loss = g.scale(&g.add(&li, &lt)?, 0.5)?;
    let logits = logits_per_image.tensor();
    Ok(ContrastiveLoss {
        loss,
        image_to_text_acc: batch_accuracy(logits, false)?,
        text_to_image_acc: batch_accuracy(logits, true)?,
    })
}
