//! One contrastive training step's forward and backward, optionally over micro-batches.
//!
//! Gradient accumulation without a second forward: each micro-batch runs forward once on its own
//! recording graph and keeps it; the features of all micro-batches are joined and the loss is taken
//! over the full batch (so every image still competes against every caption of the batch, unlike
//! plain accumulation of per-micro-batch losses); the loss's gradients with respect to those
//! features are then fed into each micro-batch's graph. The parameter gradients equal the
//! full-batch ones. Memory: the micro-batch graphs are alive together, so pair this with
//! activation checkpointing to bound what they hold.

use crate::loss::contrastive_loss;
use crate::model::Clip;
use crate::ops::layout::concat;
use crate::{bail_shape, Graph, Result, Tensor, Var};

/// What a step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    pub image_to_text_acc: f32,
    pub text_to_image_acc: f32,
}

/// A step's statistics as `[]` tensors on the step's device, not yet read back (the trainer
/// reads them together with the gradient norm in one copy: [`read_scalars`]).
pub struct DeviceStats {
    pub loss: Tensor,
    pub image_to_text_acc: Tensor,
    pub text_to_image_acc: Tensor,
}

/// The values of `[]` (or one-element) tensors that all live on one device, read back to the
/// host in a single copy: joined into one vector on the device first.
pub fn read_scalars(scalars: &[&Tensor]) -> Result<Vec<f32>> {
    let flat: Vec<Tensor> = scalars
        .iter()
        .map(|t| t.reshape([t.numel()]))
        .collect::<Result<_>>()?;
    let refs: Vec<&Tensor> = flat.iter().collect();
    Ok(concat(&refs, 0)?.to_device(crate::Device::Cpu)?.to_vec())
}

/// Forward + backward of the contrastive loss on `images` [N, 3, S, S] and token rows `ids`
/// [N, T] in micro-batches of `micro` pairs (`micro ≥ N`: one pass). Gradients are accumulated
/// into the model's parameters; the optimizer step is the caller's.
pub fn contrastive_forward_backward(
    model: &Clip,
    images: &Tensor,
    ids: &[u32],
    micro: usize,
) -> Result<StepStats> {
    let s = contrastive_forward_backward_deferred(model, images, ids, micro)?;
    let v = read_scalars(&[&s.loss, &s.image_to_text_acc, &s.text_to_image_acc])?;
    Ok(StepStats {
        loss: v[0],
        image_to_text_acc: v[1],
        text_to_image_acc: v[2],
    })
}

/// [`contrastive_forward_backward`] with the statistics left on the device.
pub fn contrastive_forward_backward_deferred(
    model: &Clip,
    images: &Tensor,
    ids: &[u32],
    micro: usize,
) -> Result<DeviceStats> {
    let parts = forward_micro(model, images, ids, micro, None)?;
    let lg = Graph::new();
    let images_f: Vec<&Tensor> = parts.iter().map(|p| p.image.tensor()).collect();
    let texts_f: Vec<&Tensor> = parts.iter().map(|p| p.text.tensor()).collect();
    let img = lg.leaf(concat(&images_f, 0)?);
    let txt = lg.leaf(concat(&texts_f, 0)?);
    let out = contrastive_loss(&lg, &img, &txt, &lg.param(&model.logit_scale))?;
    let stats = DeviceStats {
        loss: out.loss.tensor().clone(),
        image_to_text_acc: out.image_to_text_acc,
        text_to_image_acc: out.text_to_image_acc,
    };
    // the loss scaler's factor (1 without one): the gradients below are that multiple
    let seed = crate::Tensor::full_on(
        model.step_precision.loss_scale,
        out.loss.shape().to_vec(),
        out.loss.tensor().device(),
    )?;
    let grads = lg.backward_with(&out.loss, seed)?;
    let (gi, gt) = (grads.get(&img).cloned(), grads.get(&txt).cloned());
    let (Some(gi), Some(gt)) = (gi, gt) else {
        return Err(crate::Error::Graph(
            "the loss did not reach the features".into(),
        ));
    };
    backward_micro(parts, &gi, &gt)?;
    Ok(stats)
}

/// One micro-batch's recording graph and its features, kept alive until its backward.
pub(super) struct Micro<'m> {
    graph: Graph<'m>,
    pub(super) image: Var,
    pub(super) text: Var,
}

/// The forward of `images` [N, 3, S, S] and token rows `ids` [N, T] in micro-batches of
/// `micro` pairs, each on its own recording graph; with `sync_bn`, BatchNorm statistics over
/// every rank of that group (SyncBatchNorm).
pub(super) fn forward_micro<'m>(
    model: &'m Clip,
    images: &Tensor,
    ids: &[u32],
    micro: usize,
    sync_bn: Option<&'m dyn crate::dist::Communicator>,
) -> Result<Vec<Micro<'m>>> {
    let n = images.shape()[0];
    if n == 0 || !ids.len().is_multiple_of(n) {
        bail_shape!("train step", "{} token ids for {n} images", ids.len());
    }
    let t = ids.len() / n;
    let micro = micro.clamp(1, n);
    let mut parts = Vec::new();
    for start in (0..n).step_by(micro) {
        let len = micro.min(n - start);
        let mut graph = Graph::new();
        graph.set_autocast(model.step_precision.autocast);
        if let Some(group) = sync_bn {
            graph.sync_batch_norm(group);
        }
        let imgs = graph.constant(images.narrow(0, start, len)?.try_contiguous()?);
        let image = model.encode_image(&graph, &imgs)?;
        let text = model.encode_text(&graph, &ids[start * t..(start + len) * t], len)?;
        parts.push(Micro { graph, image, text });
    }
    Ok(parts)
}

/// Feeds the gradients `gi`, `gt` of the joined features [N, D] (micro-batches in order) into
/// each micro-batch's graph; parameter gradients accumulate in the parameters.
pub(super) fn backward_micro(parts: Vec<Micro<'_>>, gi: &Tensor, gt: &Tensor) -> Result<()> {
    backward_micro_with(parts, gi, gt, &mut |_| Ok(()), &mut |_| Ok(()))
}

/// [`backward_micro`] that tells when each parameter's gradient is complete: `before_last(read)`
/// right before the last micro-batch's backward, with the parameters its graph records (empty
/// when it has nothing to backpropagate; `None` when it cannot tell, under checkpointing) —
/// every other parameter's gradient is complete then — and `ready(p)` during that backward as
/// each of `read` completes (`Graph::backward_multi_with`).
pub(super) fn backward_micro_with(
    parts: Vec<Micro<'_>>,
    gi: &Tensor,
    gt: &Tensor,
    before_last: &mut dyn FnMut(Option<&[crate::Param]>) -> Result<()>,
    ready: &mut dyn FnMut(&crate::Param) -> Result<()>,
) -> Result<()> {
    let mut start = 0;
    let last = parts.len().saturating_sub(1);
    for (k, p) in parts.into_iter().enumerate() {
        let len = p.image.shape()[0];
        // A locked tower's features depend on no trainable weight: nothing to backpropagate.
        let mut seeds = Vec::with_capacity(2);
        for (f, g) in [(&p.image, gi), (&p.text, gt)] {
            if f.requires_grad() {
                seeds.push((f, g.narrow(0, start, len)?.try_contiguous()?));
            }
        }
        if k < last {
            if !seeds.is_empty() {
                p.graph.backward_multi(&seeds)?;
            }
        } else if seeds.is_empty() {
            before_last(Some(&[]))?;
        } else {
            before_last(p.graph.recorded_params().as_deref())?;
            p.graph.backward_multi_with(&seeds, ready)?;
        }
        start += len;
    }
    Ok(())
}
