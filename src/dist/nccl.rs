//! NCCL, the collective engine of multi-GPU training, through cudarc's `nccl` bindings, loaded at
//! run time like cuBLAS: [`probe`] checks that the library loads and is new enough before any
//! other NCCL call (cudarc panics on a missing library), and turns every failure into an error
//! that names the library and how to get it. [`Nccl`] is one rank's communicator; every entry
//! probes first.

use crate::{Error, Result};
use std::sync::OnceLock;

/// The oldest NCCL this build uses (`ncclCommFinalize` needs 2.14; 2.18 for CUDA 13-era fixes), in
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

// ---- the communicator -----------------------------------------------------------------------

use super::comm::{Communicator, PendingCollective};
use super::env::RankInfo;
use super::watchdog::{Completion, Health, WatchTimes, Watchdog};
use crate::device::cuda::{CudaBackend, CudaStorage};
use crate::{DType, Device, Tensor};
use cudarc::nccl::sys;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The blob rank 0 hands out at the rendezvous: `0` + NCCL's 128-byte unique id, or `1` + why
/// rank 0 cannot run NCCL (so that every rank fails at once with that reason instead of
/// waiting for a communicator that will never form).
fn id_blob(id: std::result::Result<[u8; 128], String>) -> Vec<u8> {
    match id {
        Ok(id) => std::iter::once(0u8).chain(id).collect(),
        Err(why) => std::iter::once(1u8).chain(why.into_bytes()).collect(),
    }
}

/// NCCL's unique id for a new communicator (rank 0 makes it). Probes first.
pub fn unique_id() -> Result<[u8; 128]> {
    probe()?;
    let id = cudarc::nccl::result::get_uniqueid()
        .map_err(|e| Error::Msg(format!("ncclGetUniqueId failed: {}", error_string(e.0))))?;
    Ok(id.internal.map(|c| c as u8))
}

/// NCCL's text for a result code (only called once the library is known to load).
fn error_string(r: sys::ncclResult_t) -> String {
    let s = std::panic::catch_unwind(|| unsafe {
        let p = sys::ncclGetErrorString(r);
        if p.is_null() {
            None
        } else {
            Some(std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    });
    match s {
        Ok(Some(s)) => format!("{r:?}: {s}"),
        _ => format!("{r:?}"),
    }
}

struct RawComm(sys::ncclComm_t);
// SAFETY: an NCCL communicator may be used from any thread; the rank's thread issues the
// collectives, and the watchdog's thread only asks for the asynchronous error and aborts (what
// PyTorch's watchdog does from its own thread too). After the abort nothing touches it again:
// every call checks the watchdog's failure first, and the watchdog's thread is stopped before
// `Nccl`'s drop aborts.
unsafe impl Send for RawComm {}
unsafe impl Sync for RawComm {}

/// The communicator as the watchdog sees it: its asynchronous error, and the abort (once).
///
/// `calls` is held around every use of the raw communicator — each collective the rank's thread
/// issues (with its `aborted` check), each asynchronous-error query, the abort and the final
/// destroy — because the abort frees the communicator: without the lock the watchdog could free
/// it between the rank's check and its call. A call that never returns (NCCL's queue full
/// behind a hung peer) keeps the lock; the watchdog then gives up the abort after the grace
/// period and `on_stuck` ends the process.
struct NcclHealth {
    comm: RawComm,
    calls: std::sync::Mutex<()>,
    aborted: AtomicBool,
    ctx: Arc<cudarc::driver::CudaContext>,
    grace: Duration,
}

impl NcclHealth {
    /// Abort unless done already; with the call lock, waiting at most `patience` for it.
    fn abort_within(&self, patience: Duration) {
        let start = Instant::now();
        loop {
            let _held = match self.calls.try_lock() {
                Ok(held) => held,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if start.elapsed() < patience => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            if !self.aborted.swap(true, Ordering::SeqCst) {
                unsafe {
                    let _ = sys::ncclCommAbort(self.comm.0);
                }
            }
            return;
        }
    }

    /// Run `f` on the raw communicator with the call lock held; an error once it is aborted.
    fn with_comm<T>(&self, what: &str, f: impl FnOnce(sys::ncclComm_t) -> T) -> Result<T> {
        let _held = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if self.aborted.load(Ordering::SeqCst) {
            return Err(Error::Msg(format!(
                "{what}: the NCCL communicator was aborted after an earlier failure"
            )));
        }
        Ok(f(self.comm.0))
    }
}

impl Health for NcclHealth {
    fn on_thread_start(&self) {
        // set the context current without cudarc's bind_to_thread, which would also take (and
        // so hide from the rank's thread) an error the context has recorded
        if let Err(e) = unsafe { cudarc::driver::result::ctx::set_current(self.ctx.cu_ctx()) } {
            eprintln!("clipcu: the NCCL watchdog could not set the CUDA context current: {e:?}");
        }
    }
    fn async_error(&self) -> Option<String> {
        // the rank's thread is inside an NCCL call: ask at the next poll
        let _held = self.calls.try_lock().ok()?;
        if self.aborted.load(Ordering::SeqCst) {
            return None;
        }
        let mut async_err = sys::ncclResult_t::ncclSuccess;
        let q = unsafe { sys::ncclCommGetAsyncError(self.comm.0, &mut async_err) };
        if q != sys::ncclResult_t::ncclSuccess {
            Some(error_string(q))
        } else if async_err != sys::ncclResult_t::ncclSuccess {
            Some(error_string(async_err))
        } else {
            None
        }
    }
    fn abort(&self) {
        self.abort_within(self.grace);
    }
}

/// A started collective's operand and output, held until the compute stream is ordered after
/// the collective (in `wait`, or here when the pending collective is dropped unwaited).
struct InFlight {
    compute: Arc<cudarc::driver::CudaStream>,
    event: Arc<cudarc::driver::CudaEvent>,
    _operand: Tensor,
    output: Option<Tensor>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let _ = self.compute.wait(&self.event);
    }
}

/// A collective's completion event, for the watchdog.
struct EventDone(Arc<cudarc::driver::CudaEvent>);

impl Completion for EventDone {
    fn is_complete(&self) -> std::result::Result<bool, String> {
        self.0.try_is_complete().map_err(|e| format!("{e:?}"))
    }
}

/// One rank's NCCL communicator on its GPU, implementing [`Communicator`] on Cuda tensors
/// (f32, f16, bf16; a host tensor goes up and its result comes back).
///
/// Streams: every collective runs on the communicator's own stream, `comm_stream` — one stream
/// for all of them, so that NCCL sees them in the order every rank issued them (two streams on
/// one communicator could run two ranks' collectives in different orders and deadlock). Before
/// each, the comm stream waits for the work queued on the compute stream so far (the operands);
/// after it, the compute stream waits for the collective before its next kernel. A started
/// all-reduce (`all_reduce_sum_start`: a data-parallel step's gradient buckets) therefore runs
/// beside the backward kernels queued after it, and its operand is kept alive until `wait`,
/// after which the stream-ordered allocator may reuse its memory (its free is queued on the
/// compute stream behind the wait).
///
/// The host never waits for a collective: the compute stream does (a blocking collective's
/// result is waited for by the next kernel that reads it, a started one's from its `wait` on).
///
/// Faults: the watchdog's thread ([`super::watchdog`]) follows every collective's completion
/// event and `ncclCommGetAsyncError`; an asynchronous error, or no completion within the timeout
/// (a peer died or hangs), aborts the communicator (`ncclCommAbort`, which also ends the stuck
/// kernels) and is the error of every later call, naming this rank, the collective and its
/// sequence number. If the rank's thread has not seen it within a minute, the watchdog prints it
/// and exits the process (one rank per process: the launcher reports it).
pub struct Nccl {
    health: Arc<NcclHealth>,
    /// Stopped (joined) before the drop's abort: `Option` so that `drop` can take it first.
    watchdog: Option<Watchdog>,
    rank: usize,
    world: usize,
    backend: Arc<CudaBackend>,
    comm_stream: Arc<cudarc::driver::CudaStream>,
    /// `--dist-timeout`, also the bound of the drop's wait for the last collectives.
    timeout: Duration,
    seq: AtomicU64,
}

impl Nccl {
    /// This rank's communicator: NCCL probed, rank 0's unique id handed out over the TCP
    /// rendezvous at `MASTER_ADDR:MASTER_PORT` ([`super::rendezvous`]), the GPU `local_rank`
    /// opened, and `ncclCommInitRank` run — each step bounded by `timeout`. Rank 0 sends its
    /// NCCL error, if it has one, to the others, so that every rank fails with it.
    pub fn connect(info: &RankInfo, timeout: Duration) -> Result<Nccl> {
        let deadline = Instant::now() + timeout;
        let blob = if info.rank == 0 {
            let id = unique_id();
            let sent = id_blob(id.as_ref().map(|x| *x).map_err(|e| e.to_string()));
            let blob = super::rendezvous(info, Some(&sent), timeout);
            // rank 0's own NCCL error first (the cause of what the others see), and what the
            // rendezvous found besides
            match (id, blob) {
                (Ok(_), Ok(b)) => b,
                (Err(e), Ok(_)) => return Err(e),
                (Ok(_), Err(r)) => return Err(r),
                (Err(e), Err(r)) => return Err(Error::Msg(format!("{e}; and besides: {r}"))),
            }
        } else {
            super::rendezvous(info, None, timeout)?
        };
        let id: [u8; 128] = match blob.split_first() {
            Some((0, id)) if id.len() == 128 => id.try_into().expect("128 bytes"),
            Some((1, why)) => {
                return Err(Error::Msg(format!(
                    "rank {}: rank 0 cannot run NCCL: {}",
                    info.rank,
                    String::from_utf8_lossy(why)
                )))
            }
            _ => {
                return Err(Error::Msg(format!(
                    "rank {}: the rendezvous at {}:{} gave {} bytes, not NCCL's id: another \
                     program answers on that port?",
                    info.rank,
                    info.master_addr,
                    info.master_port,
                    blob.len()
                )))
            }
        };
        probe()?;
        let backend = CudaBackend::get(info.local_rank)?;
        let (world, rank) = (info.world_size, info.rank);
        let (tx, rx) = std::sync::mpsc::channel();
        let ctx = backend.context().clone();
        // ncclCommInitRank blocks until every rank has called it: on a thread of its own, so
        // that a rank that died after the rendezvous is a timeout, not a hang
        std::thread::Builder::new()
            .name(format!("nccl-init-{rank}"))
            .spawn(move || {
                let r = (|| -> std::result::Result<RawComm, String> {
                    ctx.bind_to_thread().map_err(|e| format!("{e:?}"))?;
                    let id = sys::ncclUniqueId {
                        internal: id.map(|b| b as std::ffi::c_char),
                    };
                    let mut comm = std::mem::MaybeUninit::uninit();
                    unsafe {
                        cudarc::nccl::result::comm_init_rank(
                            comm.as_mut_ptr(),
                            world as i32,
                            id,
                            rank as i32,
                        )
                        .map_err(|e| error_string(e.0))?;
                        Ok(RawComm(comm.assume_init()))
                    }
                })();
                let _ = tx.send(r);
            })
            .map_err(|e| Error::Msg(format!("rank {rank}: cannot start NCCL's init: {e}")))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let comm = match rx.recv_timeout(left.max(Duration::from_secs(1))) {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(Error::Msg(format!(
                    "rank {rank}: ncclCommInitRank ({world} ranks) failed: {e}"
                )))
            }
            Err(_) => {
                return Err(Error::Msg(format!(
                    "rank {rank}: ncclCommInitRank ({world} ranks) did not complete within \
                     {timeout:?}: a rank died or hangs after the rendezvous"
                )))
            }
        };
        let comm_stream = backend
            .context()
            .new_stream()
            .map_err(|e| Error::Msg(format!("rank {rank}: creating NCCL's stream: {e:?}")))?;
        let grace = Duration::from_secs(60);
        let health = Arc::new(NcclHealth {
            comm,
            calls: std::sync::Mutex::new(()),
            aborted: AtomicBool::new(false),
            ctx: backend.context().clone(),
            grace,
        });
        let watchdog = Watchdog::start(
            health.clone(),
            WatchTimes {
                timeout,
                poll: Duration::from_millis(1),
                grace,
            },
            Box::new(|failure: &str| {
                use std::io::Write;
                eprintln!("clipcu: {failure}; the rank could not be stopped otherwise: aborting");
                let _ = std::io::stderr().flush();
                // not `exit`: its teardown would run CUDA's and NCCL's exit handlers while the
                // rank's thread is inside the driver
                std::process::abort();
            }),
        )?;
        Ok(Nccl {
            health,
            watchdog: Some(watchdog),
            rank,
            world,
            backend,
            comm_stream,
            timeout,
            seq: AtomicU64::new(0),
        })
    }

    /// The GPU this rank's tensors live on.
    pub fn device(&self) -> Device {
        Device::Cuda(self.backend.ordinal())
    }

    /// `t` as a contiguous Cuda tensor of this rank's GPU: its storage, element offset, dtype.
    fn operand(&self, name: &str, t: &Tensor) -> Result<(Tensor, sys::ncclDataType_t)> {
        probe()?;
        self.watchdog().check()?;
        if self.health.aborted.load(Ordering::SeqCst) {
            return Err(Error::Msg(format!(
                "rank {}: {name}: the NCCL communicator was aborted after an earlier failure",
                self.rank
            )));
        }
        // host tensors (a few flags and scalars, e.g. `all_ok`) go through the GPU: up here, and
        // the result back down in `result`
        let t = if t.device() == Device::Cpu {
            t.to_device(self.device())?
        } else {
            t.clone()
        };
        if t.device() != self.device() {
            return Err(Error::Msg(format!(
                "rank {}: {name}: the NCCL communicator carries tensors on {} (or the host), \
                 got one on {}",
                self.rank,
                self.device(),
                t.device()
            )));
        }
        let dt = match t.dtype() {
            DType::F32 => sys::ncclDataType_t::ncclFloat32,
            DType::F16 => sys::ncclDataType_t::ncclFloat16,
            DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
        };
        Ok((t.try_contiguous()?, dt))
    }

    /// A collective's result on the device its input came from (the GPU, or the host).
    /// A host result waits for the collective (the copy follows it on the compute stream), so
    /// the watchdog's verdict is known then: a failure is the error, not the aborted values. `on_host`: the operand came from the host, so the result goes back there.
    fn result(&self, on_host: bool, out: Tensor) -> Result<Tensor> {
        if on_host {
            let host = out.to_device(Device::Cpu)?;
            self.watchdog().check()?;
            Ok(host)
        } else {
            Ok(out)
        }
    }

    fn address(t: &Tensor) -> Result<u64> {
        let (s, off) = t
            .cuda_storage()
            .ok_or_else(|| Error::Msg("NCCL: not a Cuda tensor".into()))?;
        Ok(s.address_at(off))
    }

    /// A new Cuda tensor of `shape` and `dtype` for a collective's result.
    fn output(&self, dtype: DType, shape: Vec<usize>) -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_cuda(CudaStorage::uninit(&self.backend, dtype, n)?, &shape)
    }

    fn watchdog(&self) -> &Watchdog {
        self.watchdog
            .as_ref()
            .expect("the watchdog runs until the drop")
    }

    /// Enqueues `call` (a collective) on the comm stream behind the compute stream's queued
    /// work, records its completion event and hands it to the watchdog; an error (the
    /// communicator aborted) if NCCL refuses it or has failed before.
    fn enqueue(
        &self,
        name: &str,
        elements: usize,
        call: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> sys::ncclResult_t,
    ) -> Result<Arc<cudarc::driver::CudaEvent>> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let what = format!(
            "rank {} of {}: NCCL {name} (collective #{seq}, {elements} elements)",
            self.rank, self.world
        );
        self.watchdog().check()?;
        let compute = self.backend.stream();
        self.comm_stream
            .join(compute)
            .map_err(|e| Error::Msg(format!("{what}: ordering it after the compute: {e:?}")))?;
        let stream = self.comm_stream.cu_stream() as sys::cudaStream_t;
        let r = self.health.with_comm(&what, |comm| call(comm, stream))?;
        if r != sys::ncclResult_t::ncclSuccess {
            let failure = format!("{what} failed: {}", error_string(r));
            self.watchdog().fail(failure.clone());
            self.abort();
            return Err(Error::Msg(failure));
        }
        let event = Arc::new(
            self.comm_stream
                .record_event(None)
                .map_err(|e| Error::Msg(format!("{what}: recording its event: {e:?}")))?,
        );
        if let Err(e) = self
            .watchdog()
            .watch(Box::new(EventDone(event.clone())), what)
        {
            // enqueued all the same: nothing the caller frees may be reused before it ends
            let _ = self.after(&event, name);
            return Err(e);
        }
        Ok(event)
    }

    /// Orders the compute stream after a collective's `event` (no host wait).
    fn after(&self, event: &cudarc::driver::CudaEvent, name: &str) -> Result<()> {
        self.backend.stream().wait(event).map_err(|e| {
            Error::Msg(format!(
                "rank {}: ordering the compute after NCCL {name}: {e:?}",
                self.rank
            ))
        })
    }

    /// Enqueues `call` (a collective) with the compute stream ordered after it.
    fn run(
        &self,
        name: &str,
        elements: usize,
        call: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> sys::ncclResult_t,
    ) -> Result<()> {
        let event = self.enqueue(name, elements, call)?;
        self.after(&event, name)
    }

    fn abort(&self) {
        self.health.abort_within(self.health.grace);
    }

    /// Waits (on the host, at most the timeout) for everything queued on the comm stream so far;
    /// whether it all completed without the watchdog seeing a failure.
    fn drain(&self) -> bool {
        let Ok(last) = self.comm_stream.record_event(None) else {
            return false;
        };
        let start = Instant::now();
        loop {
            if self.watchdog().check().is_err() {
                return false;
            }
            match last.try_is_complete() {
                Ok(true) => return true,
                Ok(false) if start.elapsed() < self.timeout => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => return false,
            }
        }
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // A clean end: this rank's last collectives (a follower's final parameter all-gather,
        // a checkpoint's broadcasts, with nothing read back on its host) finish first, and
        // ncclCommFinalize flushes what it still sends to its peers, so that rank 0 is not left
        // waiting for a peer that aborted. After a failure, or when that wait times out: abort
        // (destroy would wait for peers that may be gone). The watchdog's thread stops before
        // either, so nothing touches the communicator after it is freed.
        let clean = self.watchdog.is_some() && self.drain();
        drop(self.watchdog.take());
        let _held = self.health.calls.lock().unwrap_or_else(|p| p.into_inner());
        if self.health.aborted.swap(true, Ordering::SeqCst) {
            return;
        }
        unsafe {
            if clean && sys::ncclCommFinalize(self.health.comm.0) == sys::ncclResult_t::ncclSuccess
            {
                let _ = sys::ncclCommDestroy(self.health.comm.0);
            } else {
                let _ = sys::ncclCommAbort(self.health.comm.0);
            }
        }
    }
}

impl Communicator for Nccl {
    fn check(&self) -> Result<()> {
        self.watchdog().check()
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, input: &Tensor) -> Result<Tensor> {
        self.all_reduce_sum_start(input)?.wait()
    }
    fn all_reduce_sum_start(&self, input: &Tensor) -> Result<PendingCollective<'_>> {
        let (t, dt) = self.operand("all_reduce", input)?;
        let out = self.output(t.dtype(), t.shape().to_vec())?;
        let (src, dst, n) = (Self::address(&t)?, Self::address(&out)?, t.numel());
        let event = self.enqueue("all_reduce", n, |comm, s| unsafe {
            sys::ncclAllReduce(
                src as _,
                dst as _,
                n,
                dt,
                sys::ncclRedOp_t::ncclSum,
                comm,
                s,
            )
        })?;
        let on_host = input.device() == Device::Cpu;
        // dropped unwaited (an error in backward), the guard still orders the compute stream
        // after the all-reduce before the operand and the output can be freed and reused
        let mut guard = InFlight {
            compute: self.backend.stream().clone(),
            event: event.clone(),
            _operand: t,
            output: Some(out),
        };
        Ok(PendingCollective::later(move || {
            self.after(&event, "all_reduce")?;
            let out = guard.output.take().expect("the output until the wait");
            drop(guard);
            self.watchdog().check()?;
            self.result(on_host, out)
        }))
    }
    fn all_gather(&self, input: &Tensor) -> Result<Tensor> {
        if input.rank() == 0 {
            return Err(Error::Msg("all_gather: a 0-d tensor has no axis 0".into()));
        }
        let (t, dt) = self.operand("all_gather", input)?;
        let mut shape = t.shape().to_vec();
        shape[0] *= self.world;
        let out = self.output(t.dtype(), shape)?;
        let (src, dst, n) = (Self::address(&t)?, Self::address(&out)?, t.numel());
        self.run("all_gather", n, |comm, s| unsafe {
            sys::ncclAllGather(src as _, dst as _, n, dt, comm, s)
        })?;
        self.result(input.device() == Device::Cpu, out)
    }
    fn reduce_scatter_sum(&self, input: &Tensor) -> Result<Tensor> {
        if input.rank() == 0 || !input.shape()[0].is_multiple_of(self.world) {
            return Err(Error::Msg(format!(
                "reduce_scatter: axis 0 of {:?} does not split into {} equal parts",
                input.shape(),
                self.world
            )));
        }
        let (t, dt) = self.operand("reduce_scatter", input)?;
        let mut shape = t.shape().to_vec();
        shape[0] /= self.world;
        let out = self.output(t.dtype(), shape)?;
        let (src, dst, n) = (Self::address(&t)?, Self::address(&out)?, out.numel());
        self.run("reduce_scatter", n, |comm, s| unsafe {
            sys::ncclReduceScatter(
                src as _,
                dst as _,
                n,
                dt,
                sys::ncclRedOp_t::ncclSum,
                comm,
                s,
            )
        })?;
        self.result(input.device() == Device::Cpu, out)
    }
    fn broadcast(&self, input: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world {
            return Err(Error::Msg(format!(
                "broadcast: root {root} is not a rank of a world of {}",
                self.world
            )));
        }
        let (t, dt) = self.operand("broadcast", input)?;
        let out = self.output(t.dtype(), t.shape().to_vec())?;
        let (src, dst, n) = (Self::address(&t)?, Self::address(&out)?, t.numel());
        self.run("broadcast", n, |comm, s| unsafe {
            sys::ncclBroadcast(src as _, dst as _, n, dt, root as i32, comm, s)
        })?;
        self.result(input.device() == Device::Cpu, out)
    }
}
