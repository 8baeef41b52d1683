//! Host↔device copy accounting, per kernel device (Emu and each Cuda ordinal), so that a test can
//! hold a training step to exactly its batch uploads and its one stats readback (DESIGN §10).
//!
//! What counts: on Cuda, every copy through `CudaBackend::upload`/`download` (the only copy
//! paths of the backend). On Emu, whose memory *is* host memory, the same events at the tensor
//! level: a tensor moved between Cpu and Emu, index buffers made readable by Emu kernels, and any
//! host code reading or writing an Emu tensor's elements (`Tensor::f32s`/`f32s_mut`/`to_vec`/
//! `to_le_bytes`) — on a GPU each of those would be a copy across the bus. The emulated device's
//! own work (kernels, the GEMMs that stand in for cuBLAS) reads host memory directly and is not
//! counted.
//!
//! Counters are process-wide atomics: a test that checks them should run alone in its process
//! (its own test binary) or take deltas around code no other thread is running on that device.
//! `CLIPCU_TRACE_TRANSFERS=1` prints where each copy comes from (a backtrace per copy), to find
//! an unwanted one.

use crate::Device;
use std::sync::atomic::{AtomicU64, Ordering};

/// Copies made so far on one device (monotonic; take differences).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Host → device copies and their bytes.
    pub uploads: u64,
    pub upload_bytes: u64,
    /// Device → host copies and their bytes.
    pub downloads: u64,
    pub download_bytes: u64,
}

impl std::ops::Sub for TransferStats {
    type Output = TransferStats;
    fn sub(self, earlier: TransferStats) -> TransferStats {
        TransferStats {
            uploads: self.uploads - earlier.uploads,
            upload_bytes: self.upload_bytes - earlier.upload_bytes,
            downloads: self.downloads - earlier.downloads,
            download_bytes: self.download_bytes - earlier.download_bytes,
        }
    }
}

/// Direction of a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Upload,
    Download,
}

const SLOTS: usize = 17; // Emu, then cuda:0..15
static COUNTERS: [[AtomicU64; 4]; SLOTS] = [const { [const { AtomicU64::new(0) }; 4] }; SLOTS];

fn slot(device: Device) -> Option<usize> {
    match device {
        Device::Cpu => None,
        Device::Emu => Some(0),
        Device::Cuda(i) => Some(1 + i.min(SLOTS - 2)),
    }
}

/// Count one copy of `bytes` bytes to or from `device` (no-op for Cpu).
pub fn record(device: Device, direction: Direction, bytes: usize) {
    let Some(s) = slot(device) else { return };
    let base = match direction {
        Direction::Upload => 0,
        Direction::Download => 2,
    };
    COUNTERS[s][base].fetch_add(1, Ordering::Relaxed);
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *TRACE.get_or_init(|| std::env::var("CLIPCU_TRACE_TRANSFERS").is_ok_and(|v| v == "1")) {
        eprintln!(
            "transfer: {direction:?} {bytes} bytes on {device}\n{}",
            std::backtrace::Backtrace::force_capture()
        );
    }
    COUNTERS[s][base + 1].fetch_add(bytes as u64, Ordering::Relaxed);
}

/// The copies counted so far on `device` (all zeros for Cpu).
pub fn stats(device: Device) -> TransferStats {
    let Some(s) = slot(device) else {
        return TransferStats::default();
    };
    let c = &COUNTERS[s];
    TransferStats {
        uploads: c[0].load(Ordering::Relaxed),
        upload_bytes: c[1].load(Ordering::Relaxed),
        downloads: c[2].load(Ordering::Relaxed),
        download_bytes: c[3].load(Ordering::Relaxed),
    }
}
