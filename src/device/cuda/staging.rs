//! Batch uploads on a copy stream from page-locked host memory, double-buffered (issue 11): the
//! upload of step k+1's batch runs while step k computes.
//!
//! Two slots, used in turn. Each holds a page-locked (write-combined) host buffer, a device
//! buffer of its own, and two events:
//! - `copied`, recorded on the copy stream after the slot's copy: the host may overwrite the
//!   page-locked buffer only once it has passed (the DMA reads it asynchronously), and the
//!   compute stream waits on it before the first kernel that reads the batch ([`Staged::ready`]);
//! - `released`, recorded on the compute stream when the step that used the slot's batch has
//!   been queued (`release`): the next copy into the slot's device buffer waits on it, so it
//!   cannot overwrite a batch a queued kernel still reads.
//!
//! The timeline with batches k (slot a) and k+1 (slot b):
//! ```text
//! host:    [stage k+1 → b] ... readback k ... [take k+1: compute waits copied_b] ...
//! copy:        [wait released_b (step k-1)] [H→D k+1 into b] [record copied_b]
//! compute: [step k reads a ..........................] [release a] [step k+1 reads b ...]
//! ```
//! The device buffers are not returned to the caching allocator between steps (its reuse rule,
//! one stream ordered by itself, does not cover a second stream). A slot whose buffer is still
//! shared (a caller kept the batch tensor) gets a fresh one, after the copy stream has waited for
//! all compute work queued so far (the fresh block's last owner may still be in use there).

use super::{driver_err, CudaBackend, CudaStorage};
use crate::device::transfers::{self, Direction};
use crate::{DType, Device, Error, Result, Tensor};
use cudarc::driver::{CudaEvent, CudaStream, PinnedHostSlice};
use std::sync::Arc;

struct Slot {
    /// Page-locked host memory, grown to the largest batch seen.
    pinned: Option<PinnedHostSlice<f32>>,
    /// The slot's device batch; this handle plus the trainer's while a step uses it.
    buffer: Option<Tensor>,
    copied: Arc<CudaEvent>,
    /// A copy was recorded in `copied` (an event never recorded has nothing to wait for).
    copy_recorded: bool,
    /// Compute work that read `buffer`, queued up to `release`; `None` when not released.
    released: Option<CudaEvent>,
}

/// The copy stream and its two slots for one GPU.
pub struct CopyStage {
    backend: Arc<CudaBackend>,
    copy_stream: Arc<CudaStream>,
    slots: [Slot; 2],
    next: usize,
}

/// A batch whose copy has been queued; [`Staged::ready`] orders the compute stream after it.
pub struct StagedCuda {
    pub tensor: Tensor,
    copied: Arc<CudaEvent>,
    backend: Arc<CudaBackend>,
}

impl StagedCuda {
    /// Make the compute stream wait for the copy (queued; the host does not wait).
    pub fn ready(self) -> Result<Tensor> {
        self.backend
            .stream()
            .wait(&self.copied)
            .map_err(|e| driver_err("stage batch", e))?;
        Ok(self.tensor)
    }
}

impl CopyStage {
    pub fn new(ordinal: usize) -> Result<CopyStage> {
        let backend = CudaBackend::get(ordinal)?;
        let ctx = backend.context();
        let copy_stream = ctx.new_stream().map_err(|e| driver_err("stage batch", e))?;
        let slot = || -> Result<Slot> {
            Ok(Slot {
                pinned: None,
                buffer: None,
                copied: Arc::new(
                    ctx.new_event(None)
                        .map_err(|e| driver_err("stage batch", e))?,
                ),
                copy_recorded: false,
                released: None,
            })
        };
        Ok(CopyStage {
            slots: [slot()?, slot()?],
            backend,
            copy_stream,
            next: 0,
        })
    }

    /// Queue the copy of the host f32 tensor `t` into the next slot.
    pub fn upload(&mut self, t: &Tensor) -> Result<StagedCuda> {
        let op = "stage batch";
        if t.dtype() != DType::F32 || t.device() != Device::Cpu {
            return Err(Error::Msg(format!(
                "{op}: expected an f32 host tensor, got {:?} on {}",
                t.dtype(),
                t.device()
            )));
        }
        let host = t.try_contiguous()?;
        let values = host.f32s(op)?;
        let n = values.len();
        let stream = self.backend.stream().clone();
        let err = |e| driver_err(op, e);
        let slot = &mut self.slots[self.next];
        self.next = 1 - self.next;

        // 1. The host may refill the page-locked buffer once the slot's last copy has read it.
        if slot.copy_recorded {
            slot.copied.synchronize().map_err(err)?;
        }
        if slot.pinned.as_ref().is_none_or(|p| p.len() < n) {
            slot.pinned = None; // freed (after its copies) before the larger one is made
                                // SAFETY: the memory is written below before any copy reads it.
            slot.pinned =
                Some(unsafe { self.backend.context().alloc_pinned::<f32>(n.max(1)) }.map_err(err)?);
        }
        let pinned = slot.pinned.as_mut().expect("allocated above");
        pinned.as_mut_slice().map_err(err)?[..n].copy_from_slice(values);

        // 2. The device buffer: the slot's own, once the compute work that read it has passed on
        // the copy stream; or a fresh block, after all compute work queued so far.
        let reusable = slot.released.is_some()
            && slot
                .buffer
                .as_mut()
                .is_some_and(|b| b.shape() == t.shape() && b.unique_storage_addr().is_some());
        if reusable {
            let released = slot.released.take().expect("checked");
            self.copy_stream.wait(&released).map_err(err)?;
        } else {
            slot.buffer = None;
            slot.released = None;
            let storage = CudaStorage::uninit(&self.backend, DType::F32, n)?;
            slot.buffer = Some(Tensor::from_cuda(storage, t.shape())?);
            self.copy_stream.join(&stream).map_err(err)?;
        }
        let buffer = slot.buffer.as_mut().expect("set above");
        let dst = buffer
            .unique_storage_addr()
            .ok_or_else(|| Error::Msg(format!("{op}: the slot's buffer is shared")))?;

        // 3. The copy, and its event.
        transfers::record(
            Device::Cuda(self.backend.ordinal()),
            Direction::Upload,
            n * 4,
        );
        if n > 0 {
            let src = &pinned.as_slice().map_err(err)?[..n];
            // SAFETY: `dst` holds n f32 (the buffer has the batch's shape); `src` is page-locked
            // memory that stays untouched until `copied` has passed (step 1 of the next upload
            // into this slot, or the slot's drop, which waits for the copy stream).
            unsafe {
                cudarc::driver::result::memcpy_htod_async(dst, src, self.copy_stream.cu_stream())
            }
            .map_err(err)?;
        }
        slot.copied.record(&self.copy_stream).map_err(err)?;
        slot.copy_recorded = true;
        Ok(StagedCuda {
            tensor: buffer.clone(),
            copied: slot.copied.clone(),
            backend: self.backend.clone(),
        })
    }

    /// Every kernel that reads `batch` (a tensor [`CopyStage::upload`] returned) has been queued
    /// on the compute stream: its slot may be refilled once they have run.
    pub fn release(&mut self, batch: &Tensor) -> Result<()> {
        let stream = self.backend.stream().clone();
        for slot in &mut self.slots {
            if slot
                .buffer
                .as_ref()
                .is_some_and(|b| b.storage_id() == batch.storage_id())
            {
                slot.released = Some(
                    stream
                        .record_event(None)
                        .map_err(|e| driver_err("stage batch", e))?,
                );
            }
        }
        Ok(())
    }
}

impl Drop for CopyStage {
    fn drop(&mut self) {
        // The page-locked buffers must outlive the copies that read them.
        let _ = self.copy_stream.synchronize();
    }
}
