//! The data-parallel training step (issue 19): every rank holds a replica of the model and of
//! the optimizer, reads its own `n = N / world` pairs of the global batch of N, and after the
//! step holds the same parameters as one process that trained on all N pairs.
//!
//! One step on rank r, as open_clip's `ClipLoss(local_loss=True, gather_with_grad=True)` under
//! DDP computes it:
//!
//! 1. forward its n pairs through its towers (micro-batches as in `step.rs`): features I_r, T_r;
//! 2. all-gather the features of every rank (rank order): I, T [N, D];
//! 3. the loss of its rows against all columns, `Graph::contrastive_local`; the mean over ranks
//!    of these local losses is the full batch's loss L;
//! 4. backward of loss_r / world: gradients for its own rows, for all N gathered columns and for
//!    `logit_scale`; the column gradients are summed over ranks and each rank keeps the slice of
//!    its own samples (reduce-scatter — the backward of gather_with_grad's all-gather), added to
//!    its rows' gradient: now dI_r, dT_r are exactly ∂L/∂I_r, ∂L/∂T_r;
//! 5. backward through its towers, the parameter gradients (and `logit_scale`'s) summed over
//!    ranks in buckets started while that backward runs ([`OverlappedGradientSum`]; the same
//!    sums as [`all_reduce_gradients`] after it): ∂L/∂θ on every rank — or, under ZeRO-1,
//!    reduce-scattered so that each parameter's sum lands on its owner only
//!    ([`reduce_gradients_to_owners`]), which updates it and all-gathers it back.
//!
//! The scaling: open_clip's per-rank loss is the mean over its n rows, and DDP *averages* the
//! ranks' gradients (sum / world). Seeding backward with 1/world and *summing* is the same
//! arithmetic (exact for power-of-two worlds) and keeps one rule for every gradient, the
//! gathered-feature ones included. Since every rank then holds the same full gradient, the
//! global-norm clip and AdamW need no further communication and give the same bits on every
//! rank (the in-process sums are rank-ordered, so every rank receives identical values).
//!
//! BatchNorm (ModifiedResNet): the step runs SyncBatchNorm (`Graph::sync_batch_norm`:
//! statistics over all ranks' samples, so a ResNet equals one process on the combined batch too,
//! when each rank's micro-batch is its whole part) on every device — on Emu/Cuda the partial
//! sums are computed and all-reduced on the device (src/ops/batchnorm/gpu.rs).
//!
//! [`run_ranks`] runs `world` ranks as threads on the in-process communicator; the step itself
//! is generic over [`Communicator`], so NCCL slots in unchanged.

use super::step::{backward_micro, backward_micro_with, forward_micro};
use super::DeviceStats;
use crate::dist::{Communicator, InProcess};
use crate::model::Clip;
use crate::nn::Module;
use crate::ops::layout::concat;
use crate::{Error, Graph, Param, Result, Tensor};
use std::time::Duration;

/// Gradient elements all-reduced together: big enough that a bucket's fixed cost vanishes, small
/// enough that NCCL could overlap one bucket's reduction with the next one's backward (4 Mi
/// elements, 16 MiB of f32, in the range of DDP's default 25 MiB).
pub const BUCKET_ELEMENTS: usize = 1 << 22;

/// The pairs each of `world` ranks reads from a global batch of `global`: an error unless the
/// world divides the batch (every rank must contribute the same number of rows to the gathered
/// features).
pub fn local_batch(global: usize, world: usize) -> Result<usize> {
    if world == 0 {
        return Err(Error::Msg(
            "a world of 0 ranks has no data-parallel step".into(),
        ));
    }
    if !global.is_multiple_of(world) {
        return Err(Error::Msg(format!(
            "--batch-size {global} does not split over {world} ranks: the global batch must be a \
             multiple of the world size (each rank reads batch / world pairs); give a \
             --batch-size that {world} divides, e.g. {}",
            (global / world).max(1) * world
        )));
    }
    Ok(global / world)
}

/// What [`gathered_contrastive_backward`] computes on one rank.
pub struct GatheredLoss {
    /// `[]`: this rank's local loss (the full batch's loss is the mean over ranks).
    pub loss: Tensor,
    /// `[]`: this rank's accuracies (the full batch's are the mean over ranks).
    pub image_to_text_acc: Tensor,
    pub text_to_image_acc: Tensor,
    /// ∂L/∂(this rank's image features) [n, D], L the full batch's loss (on the features'
    /// device; zeros when not asked for).
    pub d_image: Tensor,
    /// ∂L/∂(this rank's text features) [n, D].
    pub d_text: Tensor,
}

/// Steps 2–4 of the module doc on this rank's features `image`, `text` [n, D]: gather, the local
/// loss, its backward seeded with `loss_scale`/world (`loss_scale`: the f16 precisions' loss
/// scaler's factor, 1 otherwise), and the column gradients reduced to their owners.
/// `logit_scale` receives this rank's share of ∂L/∂logit_scale (the sum over ranks is the full
/// gradient). `need_image` / `need_text` false (a locked tower) skips that side's reduction;
/// every rank must pass the same flags, since they decide which collectives run.
pub fn gathered_contrastive_backward(
    comm: &dyn Communicator,
    image: &Tensor,
    text: &Tensor,
    logit_scale: &Param,
    need_image: bool,
    need_text: bool,
    loss_scale: f32,
) -> Result<GatheredLoss> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let device = image.device();
    // Everything stays on the features' device: the gathered features, the local loss (its
    // kernels on Emu/Cuda), its backward and the reduced column gradients. Only the
    // communicator's transport may pass through the host (the in-process one does).
    if logit_scale.value().device() != device || text.device() != device {
        return Err(Error::Msg(format!(
            "the data-parallel loss: image features on {device}, text features on {}, \
             logit_scale on {}: all must be on one device",
            text.device(),
            logit_scale.value().device()
        )));
    }
    let (ia, ta) = (comm.all_gather(image)?, comm.all_gather(text)?);
    let lg = Graph::new();
    let (vil, vtl, via, vta) = (
        lg.leaf(image.clone()),
        lg.leaf(text.clone()),
        lg.leaf(ia),
        lg.leaf(ta),
    );
    let vs = lg.leaf(logit_scale.value());
    let (loss, i2t, t2i) = lg.contrastive_local_with_accuracy(&vil, &vtl, &via, &vta, &vs, rank)?;
    // (the scale is a power of two: the seed is as exact as 1/world)
    let seed = Tensor::full_on(loss_scale / world as f32, loss.shape().to_vec(), device)?;
    let grads = lg.backward_with(&loss, seed)?;
    let grad = |v: &crate::Var| -> Result<Tensor> {
        grads
            .get(v)
            .cloned()
            .ok_or_else(|| Error::Graph("the local loss did not reach its inputs".into()))
    };
    if logit_scale.requires_grad() {
        logit_scale.accumulate_grad(grad(&vs)?)?;
    }
    let side = |need: bool, local: &crate::Var, all: &crate::Var| -> Result<Tensor> {
        if !need {
            return Tensor::full_on(0.0, local.shape().to_vec(), device);
        }
        // the backward of the all-gather: every rank's gradients for my samples, summed
        let mine = comm.reduce_scatter_sum(&grad(all)?)?;
        let mut d = grad(local)?;
        crate::ops::binary::add_assign(&mut d, &mine)?;
        Ok(d)
    };
    let d_image = side(need_image, &vil, &via)?;
    let d_text = side(need_text, &vtl, &vta)?;
    Ok(GatheredLoss {
        loss: loss.tensor().clone(),
        image_to_text_acc: i2t,
        text_to_image_acc: t2i,
        d_image,
        d_text,
    })
}

/// `parts` flattened and joined in order into one `[Σ numel]` tensor (one part: itself,
/// flattened, no copy when contiguous).
fn join(parts: &[&Tensor]) -> Result<Tensor> {
    let mut flat: Vec<Tensor> = parts
        .iter()
        .map(|t| t.try_contiguous()?.reshape([t.numel()]))
        .collect::<Result<_>>()?;
    if flat.len() == 1 {
        return Ok(flat.swap_remove(0));
    }
    concat(&flat.iter().collect::<Vec<_>>(), 0)
}

/// [`join`]'s inverse: consecutive pieces of the flat `t`, one per shape, as contiguous tensors.
fn split<'s>(t: &Tensor, shapes: impl IntoIterator<Item = &'s [usize]>) -> Result<Vec<Tensor>> {
    let mut off = 0;
    shapes
        .into_iter()
        .map(|shape| {
            let k: usize = shape.iter().product();
            let part = t
                .narrow(0, off, k)?
                .try_contiguous()?
                .reshape(shape.to_vec());
            off += k;
            part
        })
        .collect()
}

/// Replaces each parameter's gradient with its summed piece.
fn set_grads(params: impl IntoIterator<Item = Param>, sums: Vec<Tensor>) -> Result<()> {
    for (p, g) in params.into_iter().zip(sums) {
        p.zero_grad();
        p.accumulate_grad(g)?;
    }
    Ok(())
}

/// Sums the gradients of the trainable `params` over ranks, in place, `bucket` elements at a
/// time (parameters in the given order, each bucket one all-reduce of their gradients joined,
/// all of one dtype; a parameter larger than a bucket is a bucket of its own). Every rank must
/// hold gradients for the same parameters (the same model, the same locks). Nothing to do in a
/// world of one.
pub fn all_reduce_gradients(
    params: &[Param],
    comm: &dyn Communicator,
    bucket: usize,
) -> Result<()> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    let with: Vec<(&Param, Tensor)> = params
        .iter()
        .filter(|p| p.requires_grad())
        .filter_map(|p| p.grad().map(|g| (p, g)))
        .collect();
    let mut i = 0;
    while i < with.len() {
        let (mut j, mut elements) = (i, 0);
        // a bucket joins gradients of one dtype (16-bit weights' beside f32 ones travel apart)
        while j < with.len()
            && (j == i
                || (elements + with[j].1.numel() <= bucket
                    && with[j].1.dtype() == with[i].1.dtype()))
        {
            elements += with[j].1.numel();
            j += 1;
        }
        let bucket = &with[i..j];
        let joined = join(&bucket.iter().map(|(_, g)| g).collect::<Vec<_>>())?;
        let sum = comm.all_reduce_sum(&joined)?.to_device(joined.device())?;
        let sums = split(&sum, bucket.iter().map(|(_, g)| g.shape()))?;
        set_grads(bucket.iter().map(|(p, _)| (*p).clone()), sums)?;
        i = j;
    }
    Ok(())
}

/// The bucketed all-reduce of [`all_reduce_gradients`] overlapped with backward, as DDP does it:
/// the trainable parameters are cut into buckets of about `bucket` elements in *reverse*
/// parameter order (backward completes the last layers' gradients first); when every gradient
/// of the next bucket is complete (`ready`, called by `Graph::backward_multi_with`), its
/// all-reduce is started (`Communicator::all_reduce_sum_start`) and backward goes on while it
/// runs (NCCL: on the communicator's stream beside the backward kernels; in-process: on the
/// rank's communicator thread). Buckets start strictly in order, so every rank issues the same
/// collectives in the same order (the SyncBatchNorm collectives of backward included: backward
/// runs the same graph on every rank). [`OverlappedGradientSum::finish`] starts whatever is
/// left, waits for every bucket and writes the sums back. Each element's sum is the same as
/// [`all_reduce_gradients`]'s (a bucket's grouping changes no element's sum over ranks), and a
/// bucket joins gradients of one dtype.
pub struct OverlappedGradientSum<'c> {
    comm: &'c dyn Communicator,
    /// In start order.
    buckets: Vec<Vec<Param>>,
    /// Per bucket: its parameters whose gradients are not complete yet.
    waiting: Vec<usize>,
    /// The next bucket to start.
    next: usize,
    in_flight: Vec<InFlight<'c>>,
}

/// One started all-reduce: the parameters whose gradients it joined (shapes as they were), its
/// operand (kept unchanged until the wait) and the pending sum.
struct InFlight<'c> {
    grads: Vec<(Param, Vec<usize>)>,
    operand: Tensor,
    sum: crate::dist::PendingCollective<'c>,
}

impl<'c> OverlappedGradientSum<'c> {
    /// Buckets over the trainable `params` (each rank must pass the same list).
    pub fn new(params: &[Param], comm: &'c dyn Communicator, bucket: usize) -> Self {
        let mut buckets: Vec<Vec<Param>> = Vec::new();
        let mut elements = 0;
        for p in params.iter().rev().filter(|p| p.requires_grad()) {
            let n = p.value().numel();
            match buckets.last_mut() {
                Some(b) if elements + n <= bucket => b.push(p.clone()),
                _ => {
                    buckets.push(vec![p.clone()]);
                    elements = 0;
                }
            }
            elements += n;
        }
        let waiting = buckets.iter().map(Vec::len).collect();
        OverlappedGradientSum {
            comm,
            buckets,
            waiting,
            next: 0,
            in_flight: Vec::new(),
        }
    }

    /// Right before the last backward: every parameter it will not touch (not in `read`) is
    /// complete. `None`: unknown (a checkpointed graph records its blocks' parameters only
    /// during backward), so nothing is taken as complete before [`Self::finish`].
    pub fn before_last(&mut self, read: Option<&[Param]>) -> Result<()> {
        let Some(read) = read else {
            return Ok(());
        };
        let done: Vec<Param> = self
            .buckets
            .iter()
            .flatten()
            .filter(|p| !read.iter().any(|q| q.ptr_eq(p)))
            .cloned()
            .collect();
        for p in &done {
            self.ready(p)?;
        }
        Ok(())
    }

    /// Buckets whose all-reduce has started so far (of [`Self::buckets`]).
    pub fn started(&self) -> usize {
        self.next
    }

    /// The number of buckets.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// `p`'s gradient is complete: start every bucket that is complete now, in order.
    pub fn ready(&mut self, p: &Param) -> Result<()> {
        let Some(b) = self
            .buckets
            .iter()
            .position(|b| b.iter().any(|q| q.ptr_eq(p)))
        else {
            return Ok(()); // not a trainable parameter of this model
        };
        self.waiting[b] = self.waiting[b].saturating_sub(1);
        while self.next < self.buckets.len() && self.waiting[self.next] == 0 {
            self.start(self.next)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Starts bucket `b`'s all-reduce(s): its gradients joined, one per run of equal dtype.
    fn start(&mut self, b: usize) -> Result<()> {
        let with: Vec<(Param, Tensor)> = self.buckets[b]
            .iter()
            .filter_map(|p| p.grad().map(|g| (p.clone(), g)))
            .collect();
        let mut i = 0;
        while i < with.len() {
            let mut j = i + 1;
            while j < with.len() && with[j].1.dtype() == with[i].1.dtype() {
                j += 1;
            }
            let joined = join(&with[i..j].iter().map(|(_, g)| g).collect::<Vec<_>>())?;
            let sum = self.comm.all_reduce_sum_start(&joined)?;
            self.in_flight.push(InFlight {
                grads: with[i..j]
                    .iter()
                    .map(|(p, g)| (p.clone(), g.shape().to_vec()))
                    .collect(),
                operand: joined,
                sum,
            });
            i = j;
        }
        Ok(())
    }

    /// Starts the buckets not started yet (parameters no backward reached), waits for every
    /// bucket in start order and puts the sums in the parameters' gradients.
    pub fn finish(mut self) -> Result<()> {
        for b in self.next..self.buckets.len() {
            self.start(b)?;
        }
        for f in self.in_flight {
            let device = f.operand.device();
            let sum = f.sum.wait()?.to_device(device)?;
            let sums = split(&sum, f.grads.iter().map(|(_, shape)| shape.as_slice()))?;
            set_grads(f.grads.into_iter().map(|(p, _)| p), sums)?;
        }
        Ok(())
    }
}

/// A parameter, its ZeRO-1 owner, and one tensor of it (its gradient or its value).
type Owned<'p> = (&'p Param, usize, Tensor);

/// ZeRO-1's shards of one dtype: each rank's items in parameter order, and the longest shard's
/// total length (every shard is zero-padded to it).
struct Shards<'i, 'p> {
    dtype: crate::DType,
    per_rank: Vec<Vec<&'i Owned<'p>>>,
    longest: usize,
}

/// `items` cut into ZeRO-1 shards, one set per dtype (in first-seen order), over `world` ranks.
fn shards<'i, 'p>(items: &'i [Owned<'p>], world: usize) -> Vec<Shards<'i, 'p>> {
    let mut dtypes: Vec<crate::DType> = Vec::new();
    for (_, _, t) in items {
        if !dtypes.contains(&t.dtype()) {
            dtypes.push(t.dtype());
        }
    }
    dtypes
        .into_iter()
        .map(|dtype| {
            let per_rank: Vec<Vec<&Owned>> = (0..world)
                .map(|r| {
                    items
                        .iter()
                        .filter(|(_, o, t)| *o == r && t.dtype() == dtype)
                        .collect()
                })
                .collect();
            let longest = per_rank
                .iter()
                .map(|s| s.iter().map(|(_, _, t)| t.numel()).sum::<usize>())
                .max()
                .unwrap_or(0);
            Shards {
                dtype,
                per_rank,
                longest,
            }
        })
        .collect()
}

/// An error unless `owner` gives each of `params` a rank of the world.
fn check_owners(params: &[Param], owner: &[usize], world: usize) -> Result<()> {
    if params.len() != owner.len() || owner.iter().any(|&o| o >= world) {
        return Err(Error::Msg(format!(
            "ZeRO-1: {} owners for {} parameters in a world of {world}",
            owner.len(),
            params.len()
        )));
    }
    Ok(())
}

/// ZeRO-1's gradient sum: each trainable parameter's gradient summed over ranks lands on its
/// owner only (`owner[i]` for `params[i]`: contiguous runs in parameter order, as
/// `train::zero1_owners` makes them); the other ranks' copies are dropped. One reduce-scatter
/// per bucket instead of an all-reduce: half the bytes of an all-reduce (ring all-reduce is a
/// reduce-scatter then an all-gather, and ZeRO-1's own all-gather of the updated parameters
/// takes the second half's place).
///
/// The layout: rank r's shard is its parameters' gradients flattened and joined in order,
/// zero-padded to the longest shard's length L. Bucket k joins, for every rank in rank order,
/// elements k·c .. (k+1)·c of that rank's shard, with c = `bucket` / world (at most L); the
/// reduce-scatter then hands each rank the summed piece of its own shard. Gradients of another
/// dtype (16-bit weights' gradients beside f32 ones) form their own shards and buckets. The
/// sums are the all-reduce's (the in-process communicator adds each element over the ranks in
/// rank order either way), so each owner's gradients are bitwise those of
/// [`all_reduce_gradients`].
pub fn reduce_gradients_to_owners(
    params: &[Param],
    owner: &[usize],
    comm: &dyn Communicator,
    bucket: usize,
) -> Result<()> {
    let (rank, world) = (comm.rank(), comm.world_size());
    check_owners(params, owner, world)?;
    if world == 1 {
        return Ok(());
    }
    let with: Vec<Owned> = params
        .iter()
        .zip(owner)
        .filter(|(p, _)| p.requires_grad())
        .filter_map(|(p, &o)| p.grad().map(|g| (p, o, g)))
        .collect();
    for Shards {
        dtype,
        per_rank: shards,
        longest,
    } in shards(&with, world)
    {
        if longest == 0 {
            continue;
        }
        let device = with[0].2.device();
        let piece = (bucket / world).clamp(1, longest);
        let mut mine: Vec<Tensor> = Vec::new();
        let mut start = 0;
        while start < longest {
            let len = piece.min(longest - start);
            let parts: Vec<Tensor> = shards
                .iter()
                .map(|s| {
                    let grads: Vec<&Tensor> = s.iter().map(|(_, _, g)| g).collect();
                    flat_range(&grads, start, len, dtype, device)
                })
                .collect::<Result<_>>()?;
            let joined = join(&parts.iter().collect::<Vec<_>>())?;
            mine.push(comm.reduce_scatter_sum(&joined)?.to_device(device)?);
            start += len;
        }
        let mine = join(&mine.iter().collect::<Vec<_>>())?;
        let sums = split(&mine, shards[rank].iter().map(|(_, _, g)| g.shape()))?;
        set_grads(shards[rank].iter().map(|(p, _, _)| (*p).clone()), sums)?;
    }
    // the other ranks' parameters: their owners hold the sums now
    for (p, o, _) in &with {
        if *o != rank {
            p.zero_grad();
        }
    }
    Ok(())
}

/// Elements `start .. start + len` of `grads` flattened and joined in order, zero-padded past
/// their end: a `[len]` tensor of `dtype` on `device`.
fn flat_range(
    grads: &[&Tensor],
    start: usize,
    len: usize,
    dtype: crate::DType,
    device: crate::Device,
) -> Result<Tensor> {
    let mut pieces: Vec<Tensor> = Vec::new();
    let (mut at, end) = (0usize, start + len);
    for g in grads {
        let (lo, hi) = (at, at + g.numel());
        at = hi;
        if hi <= start || lo >= end {
            continue;
        }
        let (a, b) = (start.max(lo) - lo, end.min(hi) - lo);
        pieces.push(
            g.try_contiguous()?
                .reshape([g.numel()])?
                .narrow(0, a, b - a)?
                .try_contiguous()?,
        );
    }
    let filled: usize = pieces.iter().map(Tensor::numel).sum();
    if filled < len {
        pieces.push(Tensor::full_on(0.0, [len - filled], device)?.try_to_dtype(dtype)?);
    }
    join(&pieces.iter().collect::<Vec<_>>())
}

/// ZeRO-1's second collective: after each owner updated its parameters, every rank receives
/// every parameter's new value from its owner — the same shard layout as
/// [`reduce_gradients_to_owners`] (each rank's values flattened and joined, zero-padded to the
/// longest shard, per value dtype so that 16-bit weights travel as stored), all-gathered `bucket`
/// elements at a time. The owners' own values are left as they are.
pub fn all_gather_parameters(
    params: &[Param],
    owner: &[usize],
    comm: &dyn Communicator,
    bucket: usize,
) -> Result<()> {
    let (rank, world) = (comm.rank(), comm.world_size());
    check_owners(params, owner, world)?;
    if world == 1 {
        return Ok(());
    }
    let values: Vec<Owned> = params
        .iter()
        .zip(owner)
        .map(|(p, &o)| (p, o, p.value()))
        .collect();
    for Shards {
        dtype,
        per_rank: shards,
        longest,
    } in shards(&values, world)
    {
        if longest == 0 {
            continue;
        }
        let device = values[0].2.device();
        let piece = (bucket / world).clamp(1, longest);
        let own: Vec<&Tensor> = shards[rank].iter().map(|(_, _, v)| v).collect();
        // every rank's pieces, in bucket order
        let mut gathered: Vec<Vec<Tensor>> = vec![Vec::new(); world];
        let mut start = 0;
        while start < longest {
            let len = piece.min(longest - start);
            let all = comm
                .all_gather(&flat_range(&own, start, len, dtype, device)?)?
                .to_device(device)?;
            for (r, g) in gathered.iter_mut().enumerate() {
                g.push(all.narrow(0, r * len, len)?.try_contiguous()?);
            }
            start += len;
        }
        for (r, pieces) in gathered.into_iter().enumerate() {
            if r == rank {
                continue;
            }
            let flat = join(&pieces.iter().collect::<Vec<_>>())?;
            let values = split(&flat, shards[r].iter().map(|(_, _, v)| v.shape()))?;
            for ((p, _, _), v) in shards[r].iter().zip(values) {
                p.set_value(v)?;
            }
        }
    }
    Ok(())
}

/// How [`data_parallel_forward_backward`] sums the parameter gradients over ranks.
#[derive(Clone, Copy)]
pub enum GradientSum<'a> {
    /// Every rank receives every summed gradient ([`all_reduce_gradients`]).
    Everywhere,
    /// ZeRO-1: each parameter's summed gradient lands on its owner only
    /// ([`reduce_gradients_to_owners`]).
    ToOwners {
        params: &'a [Param],
        owner: &'a [usize],
    },
}

/// One data-parallel forward + backward (the module doc) on this rank's pairs: `images`
/// [n, 3, S, S] and token rows `ids` [n, T], in micro-batches of `micro`. Afterwards every
/// rank's parameters hold ∂L/∂θ of the full batch's loss (under [`GradientSum::ToOwners`]:
/// those each rank owns); the statistics are the full batch's (means over ranks). The
/// optimizer step is the caller's.
pub fn data_parallel_forward_backward(
    model: &Clip,
    images: &Tensor,
    ids: &[u32],
    micro: usize,
    comm: &dyn Communicator,
    sum: GradientSum<'_>,
) -> Result<DeviceStats> {
    // SyncBatchNorm on every device (a ViT has no BatchNorm: nothing changes)
    let parts = forward_micro(model, images, ids, micro, Some(comm))?;
    let join = |f: &dyn Fn(&super::step::Micro) -> Tensor| -> Result<Tensor> {
        let ts: Vec<Tensor> = parts.iter().map(f).collect();
        let refs: Vec<&Tensor> = ts.iter().collect();
        concat(&refs, 0)
    };
    let image = join(&|p| p.image.tensor().clone())?;
    let text = join(&|p| p.text.tensor().clone())?;
    let need_image = parts.iter().any(|p| p.image.requires_grad());
    let need_text = parts.iter().any(|p| p.text.requires_grad());
    let g = gathered_contrastive_backward(
        comm,
        &image,
        &text,
        &model.logit_scale,
        need_image,
        need_text,
        model.step_precision.loss_scale,
    )?;
    match sum {
        // the buckets' all-reduces start during the last micro-batch's backward
        GradientSum::Everywhere if comm.world_size() > 1 => {
            let overlap = std::cell::RefCell::new(OverlappedGradientSum::new(
                &model.parameters(),
                comm,
                BUCKET_ELEMENTS,
            ));
            backward_micro_with(
                parts,
                &g.d_image,
                &g.d_text,
                &mut |read| overlap.borrow_mut().before_last(read),
                &mut |p| overlap.borrow_mut().ready(p),
            )?;
            overlap.into_inner().finish()?;
        }
        GradientSum::Everywhere => backward_micro(parts, &g.d_image, &g.d_text)?,
        GradientSum::ToOwners { params, owner } => {
            backward_micro(parts, &g.d_image, &g.d_text)?;
            reduce_gradients_to_owners(params, owner, comm, BUCKET_ELEMENTS)?
        }
    }
    // the full batch's statistics: means of the ranks' (equal row counts), summed on the
    // device and read back by the caller with the step's other scalars
    let one = |t: &Tensor| t.reshape([1]);
    let local = concat(
        &[
            &one(&g.loss)?,
            &one(&g.image_to_text_acc)?,
            &one(&g.text_to_image_acc)?,
        ],
        0,
    )?;
    let mean = crate::ops::unary::scale(
        &comm.all_reduce_sum(&local)?,
        1.0 / comm.world_size() as f32,
    )?;
    let at = |i: usize| -> Result<Tensor> { mean.narrow(0, i, 1)?.try_contiguous()?.reshape([]) };
    Ok(DeviceStats {
        loss: at(0)?,
        image_to_text_acc: at(1)?,
        text_to_image_acc: at(2)?,
    })
}

/// Runs `f` on `world` ranks, each a thread with its handle on one in-process group whose
/// collectives wait at most `timeout`; returns every rank's result in rank order. When ranks
/// fail, the error is the first rank's that is not a timeout waiting for a failed rank (the
/// cause, not its echo), prefixed with the rank.
pub fn run_ranks<T: Send>(
    world: usize,
    timeout: Duration,
    f: impl Fn(InProcess) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    if world == 0 {
        return Err(Error::Msg(
            "--nproc-per-node 0: give at least 1 rank".into(),
        ));
    }
    let comms = InProcess::group(world, timeout);
    let results: Vec<Result<T>> = std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(r, c)| {
                std::thread::Builder::new()
                    .name(format!("rank-{r}"))
                    .spawn_scoped(s, move || f(c))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(r, h)| match h {
                Err(e) => Err(Error::Msg(format!("rank {r}: could not start: {e}"))),
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(Error::Msg(format!("rank {r} panicked")))),
            })
            .collect()
    });
    let mut errors: Vec<(usize, Error)> = Vec::new();
    let mut ok = Vec::with_capacity(world);
    for (r, res) in results.into_iter().enumerate() {
        match res {
            Ok(v) => ok.push(v),
            Err(e) => errors.push((r, e)),
        }
    }
    if errors.is_empty() {
        return Ok(ok);
    }
    let echo = |e: &Error| {
        let e = e.to_string();
        e.contains("never arrived") || e.contains(FAILED_TO_START)
    };
    let pick = errors.iter().position(|(_, e)| !echo(e)).unwrap_or(0);
    let (r, e) = errors.swap_remove(pick);
    Err(Error::Msg(format!("rank {r} of {world}: {e}")))
}

/// What [`all_ok`] says on the ranks that did start (an echo of another rank's error).
const FAILED_TO_START: &str = "ranks failed to start";

/// Whether every rank succeeded at something (e.g. building its trainer): an error on every
/// rank when one did not, so that the others stop at once instead of waiting for it in the
/// step's first collective until the timeout.
pub fn all_ok(comm: &dyn Communicator, ok: bool) -> Result<()> {
    let n = comm
        .all_reduce_sum(&Tensor::scalar(if ok { 1.0 } else { 0.0 }).reshape([1])?)?
        .item()?;
    if (n as usize) < comm.world_size() {
        return Err(Error::Msg(format!(
            "{} of {} {FAILED_TO_START}",
            comm.world_size() - n as usize,
            comm.world_size()
        )));
    }
    Ok(())
}
