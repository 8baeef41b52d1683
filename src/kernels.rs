//! The PTX that `build.rs` compiled from `kernels/*.cu` (nvcc, `compute_80`), embedded in the
//! binary, and the `ptxas -v` resource report of every kernel. Nothing here loads or launches: the
//! Cuda device loads these modules; the emulator (`device::emu`) runs the same sources compiled
//! as C++ and needs none of this.
//!
//! Without nvcc at build time (`cfg(clipcu_ptx)` unset) `MODULES` is empty and
//! [`missing_reason`] says how to get kernels.

/// One `kernels/<name>.cu` compiled to PTX.
#[derive(Debug, Clone, Copy)]
pub struct PtxModule {
    /// The file stem, e.g. `elementwise`.
    pub name: &'static str,
    /// PTX text for `compute_80` (JIT-compiled by the driver for the card at load time).
    pub ptx: &'static str,
    /// The `extern "C"` kernels the module defines.
    pub kernels: &'static [&'static str],
}

include!(concat!(env!("OUT_DIR"), "/kernels_gen.rs"));

/// The virtual architecture the PTX targets.
pub const PTX_ARCH: &str = "compute_80";

/// Whether this build embeds PTX (nvcc was found at build time).
pub const fn has_ptx() -> bool {
    cfg!(clipcu_ptx)
}

/// The module that defines `kernel`.
pub fn module_of(kernel: &str) -> Option<&'static PtxModule> {
    MODULES.iter().find(|m| m.kernels.contains(&kernel))
}

/// Why there is no PTX, or `None` when there is.
pub fn missing_reason() -> Option<&'static str> {
    (!has_ptx()).then_some(
        "this build has no PTX: nvcc was not found when it was built (run tools/install-nvcc.sh, \
         or set NVCC or CUDA_HOME, then rebuild)",
    )
}
