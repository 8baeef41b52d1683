//! The caching device allocator. `cudaMalloc`/`cuMemAlloc` are slow (they may synchronise the
//! device) and a training step allocates the same set of activation, gradient and workspace sizes
//! every step, so freed buffers are kept in size-bucketed free lists and handed out again:
//! after the first step, a step with the same shapes makes no real device allocation at all.
//!
//! Policy (kept simple so that its guarantees are easy to state and test):
//! - a request is rounded up to its *size class* ([`size_class`]): 512-byte granularity up to
//!   2 KiB, then four classes per power of two (at most 25% waste), with the step capped at 2 MiB
//!   so large buffers waste at most 2 MiB;
//! - a request is served only from the free list of its own class (last freed first), else by a
//!   real allocation of exactly the class size. Exact-class reuse means that a repeated sequence of
//!   requests reaches a fixed point after its first pass: the cache then holds, per class, the
//!   peak number of blocks of that class alive at once, and no further real allocation happens;
//! - when a real allocation fails for lack of memory, every cached block is released and the
//!   allocation is tried once more;
//! - [`CachingAllocator::empty_cache`] releases all cached blocks.
//!
//! Reuse is safe without events because every kernel, copy and GEMM of a backend runs on its one
//! stream: work queued on a block before it was freed runs before work queued by its next owner.
//!
//! The policy is generic over [`RawAllocator`] so that it is tested on the CPU with a fake device
//! (`tests/cuda_device.rs`); [`CudaRawAlloc`] is the real one.

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Where real device memory comes from.
pub trait RawAllocator: Send + 'static {
    type Buf: Send + 'static;
    /// A buffer of exactly `bytes` bytes.
    fn alloc(&mut self, bytes: usize) -> std::result::Result<Self::Buf, RawAllocError>;
    /// Give the memory back to the device.
    fn free(&mut self, buf: Self::Buf);
    /// The device address of the buffer's first byte.
    fn address(buf: &Self::Buf) -> u64;
}

/// Why a real allocation failed.
#[derive(Debug, Clone)]
pub struct RawAllocError {
    /// The device is out of memory (worth releasing the cache and trying again).
    pub out_of_memory: bool,
    pub msg: String,
}

/// Smallest size class, and the class step below 2 KiB.
pub const MIN_CLASS: usize = 512;
/// Largest step between two size classes.
pub const MAX_STEP: usize = 2 << 20;

/// The size a request of `bytes` bytes is rounded up to (≥ [`MIN_CLASS`], ≤ 25% or 2 MiB more).
pub fn size_class(bytes: usize) -> usize {
    if bytes <= MIN_CLASS {
        return MIN_CLASS;
    }
    // Largest power of two ≤ bytes, a quarter of it as the step, clamped to [512 B, 2 MiB].
    let pow2 = 1usize << (usize::BITS - 1 - bytes.leading_zeros());
    let step = (pow2 / 4).clamp(MIN_CLASS, MAX_STEP);
    bytes.div_ceil(step) * step
}

/// Counters of one allocator. Bytes are size-class bytes unless said otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Held by live blocks.
    pub in_use_bytes: usize,
    /// Asked for by live blocks (before rounding to the class).
    pub requested_bytes: usize,
    /// Held in the free lists, ready for reuse.
    pub cached_bytes: usize,
    /// Highest `in_use_bytes` seen.
    pub peak_in_use_bytes: usize,
    pub live_blocks: usize,
    pub cached_blocks: usize,
    /// Real device allocations made (`cuMemAlloc*` calls that succeeded).
    pub device_allocs: u64,
    /// Real device frees (cache releases).
    pub device_frees: u64,
    /// Requests served from the cache.
    pub cache_hits: u64,
}

impl AllocStats {
    /// Bytes of device memory this allocator holds (in use + cached).
    pub fn reserved_bytes(&self) -> usize {
        self.in_use_bytes + self.cached_bytes
    }
}

struct Pool<R: RawAllocator> {
    raw: R,
    free: BTreeMap<usize, Vec<R::Buf>>,
    stats: AllocStats,
}

impl<R: RawAllocator> Pool<R> {
    fn release_cache(&mut self) -> usize {
        let mut released = 0;
        for (class, bufs) in std::mem::take(&mut self.free) {
            for buf in bufs {
                self.raw.free(buf);
                released += class;
                self.stats.device_frees += 1;
            }
        }
        self.stats.cached_bytes = 0;
        self.stats.cached_blocks = 0;
        released
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while the lock was held cannot leave the pool half-updated in a way that matters
    // more than losing the device memory, so a poisoned lock is used as is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A size-bucketed caching allocator (cheap to clone: clones share one pool).
pub struct CachingAllocator<R: RawAllocator> {
    pool: Arc<Mutex<Pool<R>>>,
}

impl<R: RawAllocator> Clone for CachingAllocator<R> {
    fn clone(&self) -> Self {
        CachingAllocator {
            pool: self.pool.clone(),
        }
    }
}

impl<R: RawAllocator> CachingAllocator<R> {
    pub fn new(raw: R) -> Self {
        CachingAllocator {
            pool: Arc::new(Mutex::new(Pool {
                raw,
                free: BTreeMap::new(),
                stats: AllocStats::default(),
            })),
        }
    }

    /// A block of at least `bytes` bytes (its contents are whatever the last owner left).
    pub fn alloc(&self, bytes: usize) -> Result<Block<R>> {
        let class = size_class(bytes);
        let mut p = lock(&self.pool);
        let cached = p.free.get_mut(&class).and_then(|v| v.pop());
        let buf = match cached {
            Some(buf) => {
                p.stats.cache_hits += 1;
                p.stats.cached_bytes -= class;
                p.stats.cached_blocks -= 1;
                buf
            }
            None => {
                let first = p.raw.alloc(class);
                let buf = match first {
                    Ok(buf) => buf,
                    Err(e) if e.out_of_memory && p.stats.cached_blocks > 0 => {
                        p.release_cache();
                        p.raw
                            .alloc(class)
                            .map_err(|e| oom_error(bytes, class, &p, e))?
                    }
                    Err(e) => return Err(oom_error(bytes, class, &p, e)),
                };
                p.stats.device_allocs += 1;
                trace_alloc(class);
                buf
            }
        };
        p.stats.in_use_bytes += class;
        p.stats.requested_bytes += bytes;
        p.stats.live_blocks += 1;
        p.stats.peak_in_use_bytes = p.stats.peak_in_use_bytes.max(p.stats.in_use_bytes);
        let address = R::address(&buf);
        Ok(Block {
            buf: Some(buf),
            class,
            bytes,
            address,
            pool: self.pool.clone(),
        })
    }

    pub fn stats(&self) -> AllocStats {
        lock(&self.pool).stats
    }

    /// Give every cached (free) block back to the device; returns the bytes released.
    pub fn empty_cache(&self) -> usize {
        lock(&self.pool).release_cache()
    }

    /// Run `f` on the raw allocator (tests inspect their fake device with it).
    pub fn with_raw<T>(&self, f: impl FnOnce(&mut R) -> T) -> T {
        f(&mut lock(&self.pool).raw)
    }
}

/// `CLIPCU_TRACE_ALLOCS=1` prints a backtrace per real device allocation (Cuda and Emu alike), to
/// find what keeps a step from reaching the allocator's steady state.
fn trace_alloc(class: usize) {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *TRACE.get_or_init(|| std::env::var("CLIPCU_TRACE_ALLOCS").is_ok_and(|v| v == "1")) {
        eprintln!(
            "clipcu: device allocation of {class} bytes\n{}",
            std::backtrace::Backtrace::force_capture()
        );
    }
}

fn oom_error<R: RawAllocator>(bytes: usize, class: usize, p: &Pool<R>, e: RawAllocError) -> Error {
    let s = &p.stats;
    Error::Device {
        op: "device alloc",
        msg: format!(
            "{} allocating {bytes} bytes (size class {class}): {} in use by {} blocks, {} cached \
             (released and retried when out of memory): {}",
            if e.out_of_memory {
                "out of device memory"
            } else {
                "device allocation failed"
            },
            s.in_use_bytes,
            s.live_blocks,
            s.cached_bytes,
            e.msg
        ),
    }
}

/// A device buffer from a [`CachingAllocator`]; dropping it returns it to the free list of its
/// size class (the device memory stays allocated).
pub struct Block<R: RawAllocator> {
    buf: Option<R::Buf>,
    class: usize,
    bytes: usize,
    address: u64,
    pool: Arc<Mutex<Pool<R>>>,
}

impl<R: RawAllocator> Block<R> {
    /// Device address of the first byte.
    pub fn address(&self) -> u64 {
        self.address
    }
    /// Bytes asked for.
    pub fn len(&self) -> usize {
        self.bytes
    }
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
    /// Bytes actually held (the size class).
    pub fn capacity(&self) -> usize {
        self.class
    }
}

impl<R: RawAllocator> Drop for Block<R> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut p = lock(&self.pool);
            p.stats.in_use_bytes -= self.class;
            p.stats.requested_bytes -= self.bytes;
            p.stats.live_blocks -= 1;
            p.stats.cached_bytes += self.class;
            p.stats.cached_blocks += 1;
            p.free.entry(self.class).or_default().push(buf);
        }
    }
}

impl<R: RawAllocator> std::fmt::Debug for Block<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Block({:#x}, {} of {} bytes)",
            self.address, self.bytes, self.class
        )
    }
}

/// How real device memory is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocMode {
    /// `cuMemAllocAsync` / `cuMemFreeAsync` on the backend's stream (stream-ordered pools).
    Async,
    /// `cuMemAlloc` / `cuMemFree` (the stream is synchronised before a free).
    Sync,
}

/// The environment switch that forces an allocation mode.
pub const ALLOC_ENV: &str = "CLIPCU_CUDA_ALLOC";

impl AllocMode {
    /// The mode `CLIPCU_CUDA_ALLOC` asks for: `async`, `sync`, or unset/`auto` (`None`: async
    /// where the device reports memory pools, falling back to sync, see [`CudaRawAlloc`]).
    pub fn from_env_value(value: Option<&str>) -> Result<Option<AllocMode>> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => Ok(None),
            Some("async") => Ok(Some(AllocMode::Async)),
            Some("sync") => Ok(Some(AllocMode::Sync)),
            Some(other) => Err(Error::Msg(format!(
                "{ALLOC_ENV}={other}: expected async, sync or auto"
            ))),
        }
    }

    /// The mode to retry with after an allocation in `self` failed with `error`: a forced mode
    /// never changes; async falls back to sync on anything but out-of-memory (sandboxed drivers
    /// report memory pools that `cuMemAllocAsync` then refuses, e.g. CUDA_ERROR_NOT_SUPPORTED).
    pub fn fallback(self, forced: bool, error: &RawAllocError) -> Option<AllocMode> {
        (self == AllocMode::Async && !forced && !error.out_of_memory).then_some(AllocMode::Sync)
    }
}

/// Real device memory from the driver, stream-ordered (`cuMemAllocAsync` on the backend's stream)
/// or plain (`cuMemAlloc`). The mode starts as `CLIPCU_CUDA_ALLOC` says, else async when the
/// device reports memory pools; an async failure other than out-of-memory switches the allocator
/// to sync for the rest of the process (said once on stderr) and retries. Each buffer remembers
/// how it was made and is freed the same way.
pub struct CudaRawAlloc {
    pub(crate) stream: Arc<cudarc::driver::CudaStream>,
    pub(crate) mode: AllocMode,
    /// Whether the mode came from the environment (then it never falls back).
    pub(crate) forced: bool,
}

impl CudaRawAlloc {
    /// The allocator of `stream`'s device, in the mode the environment and the device imply.
    pub fn new(stream: Arc<cudarc::driver::CudaStream>) -> Result<CudaRawAlloc> {
        let env = std::env::var(ALLOC_ENV).ok();
        let forced = AllocMode::from_env_value(env.as_deref())?;
        let pools = stream.context().has_async_alloc();
        Ok(CudaRawAlloc {
            stream,
            mode: forced.unwrap_or(if pools {
                AllocMode::Async
            } else {
                AllocMode::Sync
            }),
            forced: forced.is_some(),
        })
    }

    fn raw_alloc(&self, mode: AllocMode, bytes: usize) -> std::result::Result<u64, RawAllocError> {
        use cudarc::driver::result;
        let r = self
            .stream
            .context()
            .bind_to_thread()
            .and_then(|()| unsafe {
                // SAFETY: the memory is uninitialised; every user writes a block before reading it.
                match mode {
                    AllocMode::Async => result::malloc_async(self.stream.cu_stream(), bytes.max(1)),
                    AllocMode::Sync => result::malloc_sync(bytes.max(1)),
                }
            });
        r.map_err(|e| RawAllocError {
            out_of_memory: e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
            msg: format!(
                "{e:?} ({})",
                if mode == AllocMode::Async {
                    "cuMemAllocAsync"
                } else {
                    "cuMemAlloc"
                }
            ),
        })
    }
}

/// A device buffer of [`CudaRawAlloc`]: its address, and how to free it.
pub struct CudaRawBuf {
    ptr: u64,
    mode: AllocMode,
    stream: Arc<cudarc::driver::CudaStream>,
}

impl Drop for CudaRawBuf {
    fn drop(&mut self) {
        use cudarc::driver::result;
        let ctx = self.stream.context();
        // Errors here cannot be returned; the context records them for its next checked call.
        if ctx.bind_to_thread().is_err() {
            return;
        }
        // SAFETY: `ptr` came from the matching allocation call and is freed once. A stream-ordered
        // free runs after the work queued on the block; a plain free needs that work done first.
        unsafe {
            match self.mode {
                AllocMode::Async => {
                    let _ = result::free_async(self.ptr, self.stream.cu_stream());
                }
                AllocMode::Sync => {
                    let _ = self.stream.synchronize();
                    let _ = result::free_sync(self.ptr);
                }
            }
        }
    }
}

impl RawAllocator for CudaRawAlloc {
    type Buf = CudaRawBuf;

    fn alloc(&mut self, bytes: usize) -> std::result::Result<Self::Buf, RawAllocError> {
        let ptr = match self.raw_alloc(self.mode, bytes) {
            Ok(p) => p,
            Err(e) => match self.mode.fallback(self.forced, &e) {
                Some(next) => {
                    let p = self.raw_alloc(next, bytes)?;
                    eprintln!(
                        "clipcu: stream-ordered allocation failed ({}); using cuMemAlloc from now \
                         on (set {ALLOC_ENV}=sync to start so, or async to refuse the fallback)",
                        e.msg
                    );
                    self.mode = next;
                    p
                }
                None => return Err(e),
            },
        };
        Ok(CudaRawBuf {
            ptr,
            mode: self.mode,
            stream: self.stream.clone(),
        })
    }

    fn free(&mut self, buf: Self::Buf) {
        drop(buf);
    }

    fn address(buf: &Self::Buf) -> u64 {
        buf.ptr
    }
}
