//! `Device::Emu`: runs the CUDA kernels of `kernels/*.cu` on the CPU through the emulator in
//! `kernels/emu/` (compiled into this crate by build.rs). Emu tensors live in host memory, so a
//! kernel argument that is a device pointer on Cuda is a host pointer here.
//!
//! A launch runs the grid's blocks one after another, each thread a fiber; `__syncthreads` and
//! warp collectives are real barriers, shared memory is poisoned before each block, and a kernel
//! that deadlocks, traps or is launched with the wrong arguments returns `Err` naming the kernel
//! and block. [`EmuOptions::reverse`] runs every barrier phase in reverse thread order, which turns
//! a missing `__syncthreads` between a write by a low thread and a read by a high one into wrong
//! output. See docs/gpu.md.
//!
//! ```
//! use clipcu::device::{emu, LaunchConfig};
//! let x: Vec<f32> = (0..100).map(|i| i as f32 / 10.0 - 5.0).collect();
//! let mut y = vec![f32::NAN; 100];
//! let cfg = LaunchConfig::for_elements(100, 256);
//! // SAFETY: both buffers hold the 100 elements the kernel touches.
//! unsafe {
//!     emu::launch("gelu_fwd_f32", cfg, &[emu::EmuArg::slice_mut(&mut y), emu::EmuArg::slice(&x), emu::EmuArg::I32(100)])
//! }
//! .unwrap();
//! assert!(y.iter().all(|v| v.is_finite()));
//! ```

use crate::device::LaunchConfig;
use crate::{Error, Result};
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::OnceLock;

/// One kernel argument, by value: pointers are host addresses of Emu (host) memory.
#[derive(Debug, Clone, Copy)]
pub enum EmuArg {
    Ptr(*mut c_void),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
}

impl EmuArg {
    /// The address of a slice the kernel only reads.
    pub fn slice<T>(s: &[T]) -> EmuArg {
        EmuArg::Ptr(s.as_ptr() as *mut c_void)
    }
    /// The address of a slice the kernel writes.
    pub fn slice_mut<T>(s: &mut [T]) -> EmuArg {
        EmuArg::Ptr(s.as_mut_ptr() as *mut c_void)
    }
    /// (kind, size) as the runtime's ParamDesc spells them (kernels/emu/emu.h).
    fn desc(&self) -> (u32, u32) {
        match self {
            EmuArg::Ptr(_) => (0, 8),
            EmuArg::I32(_) => (1, 4),
            EmuArg::I64(_) => (1, 8),
            EmuArg::U32(_) => (2, 4),
            EmuArg::U64(_) => (2, 8),
            EmuArg::F32(_) => (3, 4),
            EmuArg::F64(_) => (3, 8),
        }
    }
    fn value_ptr(&self) -> *const c_void {
        match self {
            EmuArg::Ptr(p) => p as *const *mut c_void as *const c_void,
            EmuArg::I32(v) => v as *const i32 as *const c_void,
            EmuArg::I64(v) => v as *const i64 as *const c_void,
            EmuArg::U32(v) => v as *const u32 as *const c_void,
            EmuArg::U64(v) => v as *const u64 as *const c_void,
            EmuArg::F32(v) => v as *const f32 as *const c_void,
            EmuArg::F64(v) => v as *const f64 as *const c_void,
        }
    }
}

/// How the emulator schedules threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmuOptions {
    /// Run each barrier phase from the last thread of the block to the first.
    pub reverse: bool,
}

impl EmuOptions {
    /// The defaults of this process: `CLIPCU_EMU_REVERSE=1` in the environment turns on reverse
    /// order for every launch that does not choose (e.g. a whole test run).
    /// [`with_reverse`] overrides it for the calling thread.
    pub fn from_env() -> EmuOptions {
        if let Some(reverse) = REVERSE_OVERRIDE.with(|c| c.get()) {
            return EmuOptions { reverse };
        }
        static REVERSE: OnceLock<bool> = OnceLock::new();
        let reverse = *REVERSE.get_or_init(|| {
            std::env::var("CLIPCU_EMU_REVERSE").is_ok_and(|v| !v.is_empty() && v != "0")
        });
        EmuOptions { reverse }
    }
}

thread_local! {
    static REVERSE_OVERRIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every emulator launch of this thread in reverse lane order (`reverse = true`)
/// or forced normal order, whatever the environment says — for tests that go through
/// tensor-level ops and want both schedules. Restores the previous setting afterwards.
pub fn with_reverse<T>(reverse: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            REVERSE_OVERRIDE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(REVERSE_OVERRIDE.with(|c| c.replace(Some(reverse))));
    f()
}

#[repr(C)]
struct RawArg {
    kind: u32,
    size: u32,
    value: *const c_void,
}

extern "C" {
    fn clipcu_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: usize,
        args: *const RawArg,
        nargs: usize,
        flags: u32,
        err: *mut c_char,
        err_cap: usize,
    ) -> i32;
    fn clipcu_emu_kernel_count() -> usize;
    fn clipcu_emu_kernel_name(i: usize) -> *const c_char;
}

/// Runs `kernel` with `cfg` on the emulator with the options of [`EmuOptions::from_env`].
///
/// # Safety
/// Like a CUDA launch: every pointer argument must be valid for all the reads and writes the
/// kernel makes with this configuration, and not be aliased by Rust references while it runs.
pub unsafe fn launch(kernel: &str, cfg: LaunchConfig, args: &[EmuArg]) -> Result<()> {
    launch_with(kernel, cfg, args, EmuOptions::from_env())
}

/// [`launch`] with explicit options.
///
/// # Safety
/// As for [`launch`].
pub unsafe fn launch_with(
    kernel: &str,
    cfg: LaunchConfig,
    args: &[EmuArg],
    opts: EmuOptions,
) -> Result<()> {
    let err = |msg: String| Error::Device {
        op: "emu launch",
        msg,
    };
    let name = CString::new(kernel).map_err(|_| err(format!("bad kernel name {kernel:?}")))?;
    let raw: Vec<RawArg> = args
        .iter()
        .map(|a| {
            let (kind, size) = a.desc();
            RawArg {
                kind,
                size,
                value: a.value_ptr(),
            }
        })
        .collect();
    let grid = [cfg.grid.0, cfg.grid.1, cfg.grid.2];
    let block = [cfg.block.0, cfg.block.1, cfg.block.2];
    let mut msg = vec![0u8; 4096];
    // SAFETY: the runtime reads `raw` (whose value pointers point into `args`, alive for the
    // call), the name and the dims, and writes at most `msg.len()` bytes of message; the pointer
    // arguments themselves are the caller's promise.
    let rc = unsafe {
        clipcu_emu_launch(
            name.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            cfg.shared_bytes as usize,
            raw.as_ptr(),
            raw.len(),
            opts.reverse as u32,
            msg.as_mut_ptr() as *mut c_char,
            msg.len(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let text = CStr::from_bytes_until_nul(&msg)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown emulator error".into());
    Err(err(text))
}

/// Names of every kernel the emulator can launch (production and test kernels).
pub fn kernels() -> Vec<String> {
    // SAFETY: the registry is a static, null-terminated table of static C strings.
    unsafe {
        (0..clipcu_emu_kernel_count())
            .filter_map(|i| {
                let p = clipcu_emu_kernel_name(i);
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            })
            .collect()
    }
}

/// Device-memory accounting of Emu, whose buffers are host `Vec`s: every Emu tensor storage holds
/// a lease from a [`CachingAllocator`](crate::device::cuda::alloc::CachingAllocator) run over
/// a raw allocator that hands out addresses but no memory. The policy is exactly Cuda's, so its
/// counters (real allocations, peak bytes in use, cache hits) say what a GPU would have done —
/// in particular that a training step with the same shapes allocates nothing after the first.
pub mod memory {
    use crate::device::cuda::alloc::{
        AllocStats, Block, CachingAllocator, RawAllocError, RawAllocator,
    };
    use std::sync::OnceLock;

    /// Addresses without memory.
    pub struct AccountingRaw {
        next: u64,
    }

    impl RawAllocator for AccountingRaw {
        type Buf = u64;
        fn alloc(&mut self, bytes: usize) -> std::result::Result<u64, RawAllocError> {
            let a = self.next;
            self.next += bytes.max(1) as u64;
            Ok(a)
        }
        fn free(&mut self, _buf: u64) {}
        fn address(buf: &u64) -> u64 {
            *buf
        }
    }

    /// What an Emu storage holds while it lives (its block returns to the pool on drop).
    pub type Lease = Block<AccountingRaw>;

    fn pool() -> &'static CachingAllocator<AccountingRaw> {
        static POOL: OnceLock<CachingAllocator<AccountingRaw>> = OnceLock::new();
        POOL.get_or_init(|| CachingAllocator::new(AccountingRaw { next: 1 << 20 }))
    }

    /// A lease of `bytes` bytes (never fails: there is no memory behind it to run out of).
    pub(crate) fn lease(bytes: usize) -> Option<Lease> {
        pool().alloc(bytes).ok()
    }

    /// The counters of Emu's (accounting) allocator.
    pub fn stats() -> AllocStats {
        pool().stats()
    }
}
