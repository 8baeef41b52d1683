//! NCCL, the collective engine of multi-GPU training, through cudarc's `nccl` bindings, loaded at
//! run time like cuBLAS: [`probe`] checks that the library loads and is new enough before any
//! other NCCL call (cudarc panics on a missing library), and turns every failure into an error
//! that names the library and how to get it.

use crate::{Error, Result};
use std::sync::OnceLock;

/// The oldest NCCL this build uses (2.18: `ncclCommInitRankConfig`, CUDA 13-era fixes), in
/// NCCL's `major·10000 + minor·100 + patch` form.
pub const MIN_NCCL_VERSION: i32 = 21800;

/// How to get NCCL, for the error messages.
const HOW: &str = "install NVIDIA's NCCL (libnccl.so.2), or put the lib/ folder of the \
    nvidia-nccl-cu13 wheel that PyTorch installs (site-packages/nvidia/nccl/lib) on \
    LD_LIBRARY_PATH";

/// `NCCL_VERSION` as `major.minor.patch`.
pub fn version_string(v: i32) -> String {
    format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
}

/// The loaded NCCL's version, or why multi-GPU training cannot run here. Checked once per
/// process; never panics.
pub fn probe() -> Result<i32> {
    static PROBE: OnceLock<std::result::Result<i32, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let present =
                std::panic::catch_unwind(|| unsafe { cudarc::nccl::sys::is_culib_present() });
            if !matches!(present, Ok(true)) {
                return Err(format!(
                    "NCCL was not found on the loader path (libnccl.so.2): multi-GPU training \
                     needs it; {HOW}"
                ));
            }
            let mut v = 0;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
                cudarc::nccl::sys::ncclGetVersion(&mut v)
            }));
            match r {
                Ok(cudarc::nccl::sys::ncclResult_t::ncclSuccess) => {}
                Ok(e) => return Err(format!("libnccl loaded but ncclGetVersion failed: {e:?}")),
                Err(_) => {
                    return Err(format!(
                        "libnccl loaded but has no ncclGetVersion: not a usable NCCL; {HOW}"
                    ))
                }
            }
            if v < MIN_NCCL_VERSION {
                return Err(format!(
                    "NCCL {} was loaded; multi-GPU training needs {} or newer: {HOW}",
                    version_string(v),
                    version_string(MIN_NCCL_VERSION)
                ));
            }
            Ok(v)
        })
        .clone()
        .map_err(|reason| Error::BackendUnavailable {
            device: "nccl".into(),
            reason,
        })
}
