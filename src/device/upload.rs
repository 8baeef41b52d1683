//! Uploading training batches ahead of the step that uses them (issue 11): on Cuda from
//! page-locked host memory on a copy stream, double-buffered, ordered by events
//! ([`cuda::staging`](super::cuda::staging)), so that step k+1's upload overlaps step k's compute;
//! on Emu a plain copy (the host is the device); on the CPU the tensor as it is.
//!
//! Use: `let staged = up.upload(&host_batch)?` as soon as the batch exists (while the device
//! computes the current step), `let batch = staged.ready()?` when its step starts, and
//! `up.release(&batch)?` once every kernel that reads it has been queued.

use super::cuda::staging::{CopyStage, StagedCuda};
use crate::{Device, Result, Tensor};

/// A batch on its way to the device.
pub enum Staged {
    /// Already there (Cpu, Emu).
    Ready(Tensor),
    /// Queued on a copy stream.
    Cuda(StagedCuda),
}

impl Staged {
    /// The batch, with later device work ordered after its copy (no host wait).
    pub fn ready(self) -> Result<Tensor> {
        match self {
            Staged::Ready(t) => Ok(t),
            Staged::Cuda(s) => s.ready(),
        }
    }
}

/// The batch uploader of one device.
pub struct BatchUploader {
    device: Device,
    cuda: Option<CopyStage>,
}

impl BatchUploader {
    pub fn new(device: Device) -> Result<BatchUploader> {
        let cuda = match device {
            Device::Cuda(i) => Some(CopyStage::new(i)?),
            Device::Cpu | Device::Emu => None,
        };
        Ok(BatchUploader { device, cuda })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Start moving the host tensor `t` (f32) to the device.
    pub fn upload(&mut self, t: &Tensor) -> Result<Staged> {
        match &mut self.cuda {
            Some(stage) => Ok(Staged::Cuda(stage.upload(t)?)),
            None => Ok(Staged::Ready(t.to_device(self.device)?)),
        }
    }

    /// Every kernel that reads `batch` has been queued: its buffer may be refilled after them.
    pub fn release(&mut self, batch: &Tensor) -> Result<()> {
        match &mut self.cuda {
            Some(stage) => stage.release(batch),
            None => Ok(()),
        }
    }
}
