//! Devices: `Cpu` (always there; the f32 reference), `Cuda(ordinal)` (cuBLAS + our kernels, when the
//! CUDA backend is built and a GPU is present) and `Emu` (the same launchers as Cuda, kernels run by
//! the CPU emulator of the CUDA execution model). Availability is checked here, once, and absence is
//! an `Err` that says what is missing — never a panic.

pub mod cuda;
pub mod emu;
pub mod kernel;
mod launch;
pub mod transfers;
pub mod upload;

pub use launch::LaunchConfig;

use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
    Emu,
}

impl Device {
    /// Ok when this device can run ops in this build on this machine.
    pub fn ensure_available(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            // The real probe (libraries, driver version, the GPU, a self-test); see device/cuda.rs.
            Device::Cuda(i) => cuda::CudaBackend::get(i).map(|_| ()),
            // The emulator is always built (build.rs compiles kernels/*.cu with g++).
            Device::Emu => Ok(()),
        }
    }

    /// The best available device and a sentence saying why it was chosen: cuda:0 when the
    /// probe finds a working GPU *and* this build has the CUDA kernels, else cpu.
    pub fn auto() -> (Device, String) {
        match cuda::CudaBackend::get(0) {
            Ok(_) if !cuda::kernels_built() => (
                Device::Cpu,
                format!("cpu (cuda:0 has a GPU, but {})", cuda::NO_KERNELS),
            ),
            Ok(b) => (
                Device::Cuda(0),
                format!("cuda:0 ({}; kernels built)", b.info()),
            ),
            Err(e) => (Device::Cpu, format!("cpu ({e})")),
        }
    }

    /// Wait until the work queued on this device is done (Cuda: its stream; Cpu and Emu run
    /// synchronously) — for host timers around device work, which must include it.
    pub fn synchronize(self) -> Result<()> {
        match self {
            Device::Cuda(i) => cuda::CudaBackend::get(i)?.synchronize(),
            Device::Cpu | Device::Emu => Ok(()),
        }
    }

    /// The counters of this device's caching allocator (Cuda's, or Emu's accounting one, which
    /// runs the same policy); `None` for Cpu.
    pub fn memory_stats(self) -> Result<Option<cuda::alloc::AllocStats>> {
        Ok(match self {
            Device::Cuda(i) => Some(cuda::CudaBackend::get(i)?.memory_stats()),
            Device::Emu => Some(emu::memory::stats()),
            Device::Cpu => None,
        })
    }

    /// Threads the CPU backend uses (rayon's pool).
    pub fn cpu_threads() -> usize {
        rayon::current_num_threads()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::Emu => f.write_str("emu"),
        }
    }
}

/// Parses `cpu`, `cuda`, `cuda:N`, `emu`. (`auto` is resolved by the caller with `Device::auto`.)
impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "emu" => Ok(Device::Emu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => {
                if let Some(n) = s.strip_prefix("cuda:") {
                    if let Ok(i) = n.parse() {
                        return Ok(Device::Cuda(i));
                    }
                }
                Err(Error::Msg(format!(
                    "unknown device '{s}': expected cpu, cuda, cuda:N, emu or auto"
                )))
            }
        }
    }
}
