//! The Cuda device on cudarc 0.19: the probe, one [`CudaBackend`] per GPU (context, stream,
//! kernel modules, caching allocator, cuBLAS/cuBLASLt handles), host↔device copies, GEMMs and
//! event timing.
//!
//! **The probe.** cudarc loads libcuda/libcublas/libcublasLt at run time and *panics* when a
//! library or one of its functions is missing. So before any cudarc call, [`CudaBackend::get`]
//! checks (once per process, here and nowhere else) that the three libraries load and that the
//! driver is new enough, and turns every failure into `Error::BackendUnavailable` saying what is
//! missing and how to get it. It then creates the backend inside `catch_unwind` and runs a tiny
//! self-test (copies, a cuBLAS and a cuBLASLt GEMM, event timing) so that every library function
//! the backend uses is resolved there: a missing symbol becomes an `Err` at start-up instead of a
//! panic later. A failed probe is remembered; the machine does not change under a process.
//!
//! **One stream.** All work of a backend (copies, kernels, GEMMs) is queued on one non-blocking
//! stream with cudarc's per-buffer event tracking off, so ordering is simply stream order; that is
//! also what lets the caching allocator hand a freed block to the next owner without an event.

pub mod alloc;
pub mod gemm;
pub mod staging;

use crate::tensor::CpuStorage;
use crate::{DType, Error, Result};
use alloc::{AllocStats, Block, CachingAllocator, CudaRawAlloc};
use bytemuck::Pod;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream, DriverError};
use gemm::{CublasGemm, GemmArgs, LtHandle, RowMajorGemm};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// The oldest CUDA driver API version this build runs on: its cudarc bindings are CUDA 13.0's and
/// its PTX comes from nvcc 13.0, which drivers older than 580 reject.
pub const MIN_DRIVER_VERSION: i32 = 13000;

/// The oldest cuBLAS / cuBLASLt (`cublasGetVersion` format: major·10000 + minor·100 + patch).
pub const MIN_CUBLAS_VERSION: usize = 130000;

/// The CUDA libraries (libcuda, libcublas, libcublasLt, libnccl, libnvrtc) mapped into this
/// process, as paths, each once, in the order the loader mapped them.
pub fn loaded_cuda_libraries() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    cuda_libraries_in_maps(&maps)
}

/// The CUDA library paths in the text of a `/proc/<pid>/maps` file (see
/// [`loaded_cuda_libraries`]).
pub fn cuda_libraries_in_maps(maps: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
        let file = path.rsplit('/').next().unwrap_or(path);
        let wanted = [
            "libcuda.so",
            "libcublas.so",
            "libcublasLt.so",
            "libnccl.so",
            "libnvrtc.so",
        ]
        .iter()
        .any(|p| file.starts_with(p));
        if wanted && !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
    }
    out
}

/// A device buffer from the backend's caching allocator.
pub type DeviceBlock = Block<CudaRawAlloc>;

/// The PTX modules build.rs embedded (`crate::kernels::MODULES`), as `(module name, PTX text)`;
/// empty when nvcc was not found.
pub fn embedded_ptx() -> Vec<(&'static str, &'static str)> {
    crate::kernels::MODULES
        .iter()
        .map(|m| (m.name, m.ptx))
        .collect()
}

/// Whether build.rs compiled the CUDA kernels into this build.
pub fn kernels_built() -> bool {
    cfg!(clipcu_ptx)
}

/// What to tell a user whose build has no kernels.
pub const NO_KERNELS: &str = "this build has no CUDA kernels (nvcc was not found when it was \
     built): run tools/install-nvcc.sh, then rebuild (cargo build --release)";

/// Facts about one GPU, read at start-up.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_mem: usize,
    /// CUDA driver API version, e.g. 13000 for 13.0.
    pub driver_version: i32,
    /// `cublasLtGetVersion()`, e.g. 130000.
    pub cublaslt_version: usize,
    /// `cublasGetVersion()`, e.g. 130000.
    pub cublas_version: i32,
    /// The CUDA library files this process loaded (from /proc/self/maps), so that a user sees
    /// which libcublas came from where.
    pub libraries: Vec<String>,
    /// How device memory is allocated (stream-ordered pools or plain cuMemAlloc).
    pub alloc_mode: alloc::AllocMode,
    /// Names of the PTX modules loaded.
    pub modules: Vec<String>,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (sm_{}{}, {:.1} GiB), driver CUDA {}.{}, cuBLAS {}, cuBLASLt {}, {} kernel \
             modules, {:?} allocation",
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_mem as f64 / (1u64 << 30) as f64,
            self.driver_version / 1000,
            self.driver_version % 1000 / 10,
            self.cublas_version,
            self.cublaslt_version,
            self.modules.len(),
            self.alloc_mode
        )?;
        if !self.libraries.is_empty() {
            write!(f, "; loaded {}", self.libraries.join(", "))?;
        }
        Ok(())
    }
}

// ---- the probe ------------------------------------------------------------------------------

/// Run `f`, turning a cudarc panic into an `Err` naming `what`.
fn catch<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        format!(
            "{what}: cudarc panicked ({msg}); a CUDA library or one of its functions is \
             missing or older than CUDA 13.0"
        )
    })
}

/// Library presence and the driver version, checked once per process before any other cudarc
/// call. `Ok(driver version)` or the reason the Cuda device cannot work here.
fn probe_libraries() -> std::result::Result<i32, String> {
    static PROBE: OnceLock<std::result::Result<i32, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // `is_culib_present` only tries to dlopen the candidate names; it does not panic, but
            // it is cheap to be sure.
            let present = |f: unsafe fn() -> bool| catch("probe", || unsafe { f() }) == Ok(true);
            if !present(cudarc::driver::sys::is_culib_present) {
                return Err(
                    "the NVIDIA driver library (libcuda.so.1) was not found: this \
                            machine has no NVIDIA driver, or the library is not on the loader \
                            path (LD_LIBRARY_PATH). The cpu device works without it"
                        .into(),
                );
            }
            let mut version = 0;
            let r = catch("cuDriverGetVersion", || unsafe {
                sys::cuDriverGetVersion(&mut version)
            })?;
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(format!(
                    "libcuda was found but cuDriverGetVersion failed: {r:?}"
                ));
            }
            if version < MIN_DRIVER_VERSION {
                return Err(format!(
                    "the NVIDIA driver supports CUDA {}.{}, this build needs CUDA 13.0 or newer \
                     (driver 580+): update the driver",
                    version / 1000,
                    version % 1000 / 10
                ));
            }
            if !present(cudarc::cublas::sys::is_culib_present) {
                return Err(missing_blas("cuBLAS", "libcublas.so.13"));
            }
            if !present(cudarc::cublaslt::sys::is_culib_present) {
                return Err(missing_blas("cuBLASLt", "libcublasLt.so.13"));
            }
            Ok(version)
        })
        .clone()
}

fn missing_blas(lib: &str, file: &str) -> String {
    format!(
        "the GPU driver is present but {lib} ({file}) was not found on the loader path: install \
         the CUDA 13 toolkit's {lib}, or add the folder holding {file} to LD_LIBRARY_PATH (for \
         example the lib/ folder of the nvidia cuBLAS wheel that PyTorch installs)"
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn driver_err(op: &'static str, e: DriverError) -> Error {
    Error::Device {
        op,
        msg: format!("CUDA driver error {e:?}"),
    }
}

// ---- the backend ----------------------------------------------------------------------------

/// One GPU: created on first use by [`CudaBackend::get`], then shared by every tensor on it.
pub struct CudaBackend {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: Mutex<cudarc::cublas::CudaBlas>,
    lt: Mutex<LtHandle>,
    lt_workspace: DeviceBlock,
    alloc: CachingAllocator<CudaRawAlloc>,
    modules: HashMap<String, Arc<CudaModule>>,
    functions: Mutex<HashMap<(String, String), CudaFunction>>,
    tf32: AtomicBool,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend(cuda:{}: {})", self.info.ordinal, self.info)
    }
}

type Registry = Mutex<HashMap<usize, std::result::Result<Arc<CudaBackend>, String>>>;

impl CudaBackend {
    /// The backend of GPU `ordinal`, created (probe, context, modules, self-test) on first call.
    /// Every failure is `Error::BackendUnavailable` with the reason; none panics.
    pub fn get(ordinal: usize) -> Result<Arc<CudaBackend>> {
        static BACKENDS: OnceLock<Registry> = OnceLock::new();
        let mut map = lock(BACKENDS.get_or_init(Default::default));
        map.entry(ordinal)
            .or_insert_with(|| CudaBackend::create(ordinal).map(Arc::new))
            .clone()
            .map_err(|reason| Error::BackendUnavailable {
                device: format!("cuda:{ordinal}"),
                reason,
            })
    }

    fn create(ordinal: usize) -> std::result::Result<CudaBackend, String> {
        let driver_version = probe_libraries()?;
        let what = format!("initialising cuda:{ordinal}");
        let backend = catch(&what, || CudaBackend::init(ordinal, driver_version))??;
        // On failure the backend is dropped inside the closure too: cudarc's handle destructors
        // unwrap their status.
        catch("the start-up self-test", move || {
            backend.self_test().map(|()| backend)
        })?
        .map_err(|e| format!("the start-up self-test failed: {e}"))
    }

    fn init(ordinal: usize, driver_version: i32) -> std::result::Result<CudaBackend, String> {
        let count = CudaContext::device_count()
            .map_err(|e| format!("the driver found no usable GPU ({e:?}); check nvidia-smi"))?;
        if ordinal >= count.max(0) as usize {
            return Err(format!(
                "this machine has {count} CUDA device(s), so there is no cuda:{ordinal}"
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("creating the context: {e:?}"))?;
        // One stream, ordered by itself: no per-buffer events (see the module doc). Must come
        // before the stream and the first allocation.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("creating the stream: {e:?}"))?;
        let blas = cudarc::cublas::CudaBlas::new(stream.clone())
            .map_err(|e| format!("creating the cuBLAS handle: {e:?}"))?;
        let lt = LtHandle::new().map_err(|e| format!("creating the cuBLASLt handle: {e}"))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| format!("reading the compute capability: {e:?}"))?;
        let alloc =
            CachingAllocator::new(CudaRawAlloc::new(stream.clone()).map_err(|e| e.to_string())?);
        // cuBLASLt workspace as NVIDIA recommends: 32 MiB on Hopper, 4 MiB before.
        let ws = if cc.0 >= 9 { 32 << 20 } else { 4 << 20 };
        let lt_workspace = alloc
            .alloc(ws)
            .map_err(|e| format!("allocating the cuBLASLt workspace: {e}"))?;
        let modules = load_modules(&ctx, &embedded_ptx())?;
        // The GEMM paths use cuBLAS 13's API (and its fixes for sm_90 epilogues); an older
        // library found first on the loader path is refused by name, not used.
        let cublaslt_version = unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() };
        let mut cublas_version = 0;
        unsafe { cudarc::cublas::sys::cublasGetVersion_v2(*blas.handle(), &mut cublas_version) }
            .result()
            .map_err(|e| format!("cublasGetVersion: {e:?}"))?;
        let libs = loaded_cuda_libraries().join(", ");
        if cublas_version < MIN_CUBLAS_VERSION as i32 || cublaslt_version < MIN_CUBLAS_VERSION {
            return Err(format!(
                "cuBLAS {cublas_version} / cuBLASLt {cublaslt_version} were loaded ({libs}); \
                 this build needs version 13 (130000) or newer: put CUDA 13's libcublas.so.13 \
                 and libcublasLt.so.13 first on LD_LIBRARY_PATH"
            ));
        }
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().unwrap_or_else(|e| format!("unknown ({e:?})")),
            compute_capability: cc,
            total_mem: ctx.total_mem().unwrap_or(0),
            driver_version,
            cublaslt_version,
            cublas_version,
            libraries: loaded_cuda_libraries(),
            alloc_mode: alloc.with_raw(|r| r.mode),
            modules: {
                let mut m: Vec<String> = modules.keys().cloned().collect();
                m.sort();
                m
            },
        };
        Ok(CudaBackend {
            info,
            ctx,
            stream,
            blas: Mutex::new(blas),
            lt: Mutex::new(lt),
            lt_workspace,
            alloc,
            modules,
            functions: Mutex::new(HashMap::new()),
            tf32: AtomicBool::new(false),
        })
    }

    /// A 2×2 product through cuBLAS and cuBLASLt with host copies and event timing: resolves
    /// every library function the backend uses and checks the answer.
    fn self_test(&self) -> Result<()> {
        let a = [1f32, 2., 3., 4.];
        let b = [5f32, 6., 7., 8.];
        let want = [19f32, 22., 43., 50.];
        let (da, db) = (self.upload(&a)?, self.upload(&b)?);
        let dc = self.alloc(16)?;
        let plan = gemm::plan(&RowMajorGemm {
            ta: false,
            tb: false,
            batch: 1,
            m: 2,
            n: 2,
            k: 2,
            a_shared: false,
            b_shared: false,
        })?;
        let args = GemmArgs {
            a: da.address(),
            b: db.address(),
            c: dc.address(),
            input: DType::F32,
            output: DType::F32,
            tf32: false,
        };
        for lt in [false, true] {
            self.memset_zero(dc.address(), 16)?;
            // SAFETY: the three blocks hold 2×2 f32 matrices.
            let ((), _ms) = self.time_ms(|| unsafe {
                if lt {
                    self.gemm_lt(&plan, &args, None)
                } else {
                    self.gemm(&plan, &args)
                }
            })?;
            let got: Vec<f32> = self.download(dc.address(), 4)?;
            if got != want {
                return Err(Error::Device {
                    op: "self-test",
                    msg: format!(
                        "{} gave {got:?} for [[1,2],[3,4]]·[[5,6],[7,8]], expected {want:?}",
                        if lt { "cuBLASLt" } else { "cuBLAS" }
                    ),
                });
            }
        }
        Ok(())
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }
    pub fn ordinal(&self) -> usize {
        self.info.ordinal
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream all of this backend's work goes on (launch kernels with
    /// `stream().launch_builder(&f)`).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("cuda", e))
    }
    /// Wait for all queued work; reports errors of earlier asynchronous work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_err("synchronize", e))
    }

    // ---- kernels ------------------------------------------------------------------------------

    /// A loaded PTX module by name.
    pub fn module(&self, name: &str) -> Option<&Arc<CudaModule>> {
        self.modules.get(name)
    }

    /// Kernel `kernel` of module `module` (looked up once, then cached).
    pub fn function(&self, module: &str, kernel: &str) -> Result<CudaFunction> {
        let key = (module.to_string(), kernel.to_string());
        if let Some(f) = lock(&self.functions).get(&key) {
            return Ok(f.clone());
        }
        let m = self.module(module).ok_or_else(|| Error::Device {
            op: "cuda kernel",
            msg: if kernels_built() {
                format!("no PTX module '{module}' in this build")
            } else {
                NO_KERNELS.to_string()
            },
        })?;
        let f = m.load_function(kernel).map_err(|e| Error::Device {
            op: "cuda kernel",
            msg: format!("kernel {kernel} not found in module {module}: {e:?}"),
        })?;
        lock(&self.functions).insert(key, f.clone());
        Ok(f)
    }

    // ---- memory -------------------------------------------------------------------------------

    /// An uninitialised device buffer of at least `bytes` bytes from the caching allocator.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBlock> {
        self.bind()?;
        self.alloc.alloc(bytes)
    }
    pub fn memory_stats(&self) -> AllocStats {
        self.alloc.stats()
    }
    /// Release every cached (free) device block; returns the bytes released.
    pub fn empty_cache(&self) -> usize {
        if self.bind().is_err() {
            return 0;
        }
        self.alloc.empty_cache()
    }

    /// A new device buffer holding `host`.
    pub fn upload<T: Pod>(&self, host: &[T]) -> Result<DeviceBlock> {
        let block = self.alloc(std::mem::size_of_val(host))?;
        crate::device::transfers::record(
            crate::Device::Cuda(self.info.ordinal),
            crate::device::transfers::Direction::Upload,
            std::mem::size_of_val(host),
        );
        if !host.is_empty() {
            // SAFETY: the block holds at least size_of_val(host) bytes. A copy from pageable
            // memory returns once the data is staged, so `host` may be dropped after it.
            unsafe {
                cudarc::driver::result::memcpy_htod_async(
                    block.address(),
                    host,
                    self.stream.cu_stream(),
                )
            }
            .map_err(|e| driver_err("to_device", e))?;
        }
        Ok(block)
    }

    /// Copy `host` to device address `addr` (queued on the stream; counted as an upload). The
    /// caller vouches that `addr` holds at least `size_of_val(host)` bytes.
    pub(crate) fn upload_into<T: Pod>(&self, addr: u64, host: &[T]) -> Result<()> {
        crate::device::transfers::record(
            crate::Device::Cuda(self.info.ordinal),
            crate::device::transfers::Direction::Upload,
            std::mem::size_of_val(host),
        );
        if host.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller vouches for the destination's size. A copy from pageable memory
        // returns once the data is staged, so `host` may be dropped after it.
        unsafe { cudarc::driver::result::memcpy_htod_async(addr, host, self.stream.cu_stream()) }
            .map_err(|e| driver_err("to_device", e))
    }

    /// `n` elements of `T` from device address `addr` (waits for queued work first).
    pub fn download<T: Pod>(&self, addr: u64, n: usize) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); n];
        crate::device::transfers::record(
            crate::Device::Cuda(self.info.ordinal),
            crate::device::transfers::Direction::Download,
            std::mem::size_of_val(&out[..]),
        );
        if n > 0 {
            self.bind()?;
            // SAFETY: the caller vouches that addr holds n elements of T.
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(
                    &mut out[..],
                    addr,
                    self.stream.cu_stream(),
                )
            }
            .map_err(|e| driver_err("to_device", e))?;
        }
        self.synchronize()?;
        Ok(out)
    }

    /// Fill `bytes` bytes at `addr` with zeros (queued on the stream).
    pub fn memset_zero(&self, addr: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller vouches that addr holds `bytes` bytes.
        unsafe { cudarc::driver::result::memset_d8_async(addr, 0, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_err("memset", e))
    }

    // ---- GEMM ---------------------------------------------------------------------------------

    /// Allow TF32 tensor-core math in f32 GEMMs (off by default: f32 results then match the
    /// CPU to ≈1e-6; with TF32 to ≈3e-4).
    pub fn set_tf32(&self, on: bool) {
        self.tf32.store(on, Ordering::Relaxed);
    }
    pub fn tf32(&self) -> bool {
        self.tf32.load(Ordering::Relaxed)
    }

    fn zero_fill(&self, plan: &CublasGemm, args: &GemmArgs) -> Result<()> {
        let elems = plan.m as usize * plan.n as usize * plan.batch as usize;
        self.memset_zero(args.c, elems * args.output.size_in_bytes())
    }

    /// Queue `C = op(A)·op(B)` (row-major, see [`gemm`]) through cuBLAS on the stream.
    ///
    /// # Safety
    /// `args.a`, `args.b`, `args.c` must address device buffers of this backend holding the
    /// operands the plan describes, in `args.input` / `args.output`.
    pub unsafe fn gemm(&self, plan: &CublasGemm, args: &GemmArgs) -> Result<()> {
        if plan.is_zero_fill() {
            return self.zero_fill(plan, args);
        }
        self.bind()?;
        let blas = lock(&self.blas);
        plan.run_cublas(*blas.handle(), args)
    }

    /// As [`CudaBackend::gemm`] through cuBLASLt, with an optional bias (one value per output
    /// column, in the output dtype) added in the epilogue.
    ///
    /// # Safety
    /// As [`CudaBackend::gemm`]; `bias` must address `n` elements of `args.output`.
    pub unsafe fn gemm_lt(
        &self,
        plan: &CublasGemm,
        args: &GemmArgs,
        bias: Option<u64>,
    ) -> Result<()> {
        if plan.is_zero_fill() {
            if bias.is_some() {
                return Err(Error::Device {
                    op: "gemm",
                    msg: "a bias epilogue with k = 0 is not supported".into(),
                });
            }
            return self.zero_fill(plan, args);
        }
        self.bind()?;
        let lt = lock(&self.lt);
        plan.run_lt(
            &lt,
            args,
            bias,
            (self.lt_workspace.address(), self.lt_workspace.capacity()),
            self.stream.cu_stream(),
        )
    }

    // ---- timing -------------------------------------------------------------------------------

    /// Run `f` (which queues work on this backend's stream) between two CUDA events and return
    /// its result with the GPU time between them in milliseconds. Waits for the work to finish.
    pub fn time_ms<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, f32)> {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let ev = || {
            self.ctx
                .new_event(flags)
                .map_err(|e| driver_err("event", e))
        };
        let (start, end) = (ev()?, ev()?);
        start
            .record(&self.stream)
            .map_err(|e| driver_err("event", e))?;
        let out = f()?;
        end.record(&self.stream)
            .map_err(|e| driver_err("event", e))?;
        let ms = start.elapsed_ms(&end).map_err(|e| driver_err("event", e))?;
        Ok((out, ms))
    }
}

/// Load every embedded PTX module, so a PTX the driver rejects is reported at start-up with the
/// driver's JIT log.
pub fn load_modules(
    ctx: &Arc<CudaContext>,
    ptx: &[(&str, &str)],
) -> std::result::Result<HashMap<String, Arc<CudaModule>>, String> {
    let mut modules = HashMap::new();
    for &(name, src) in ptx {
        if src.contains('\0') {
            return Err(format!("PTX module '{name}' contains a NUL byte"));
        }
        let m = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(src))
            .map_err(|e| {
                format!(
                    "the driver rejected PTX module '{name}': {e:?}{}. PTX from an nvcc newer \
                     than the driver is the usual cause (this build expects nvcc 13.0 for \
                     driver 580+): run tools/install-nvcc.sh and rebuild",
                    jit_log(ctx, src)
                )
            })?;
        modules.insert(name.to_string(), m);
    }
    Ok(modules)
}

/// Load `src` again with an error-log buffer, to say why the driver rejected it.
fn jit_log(ctx: &Arc<CudaContext>, src: &str) -> String {
    use std::ffi::{c_void, CString};
    let (Ok(()), Ok(c)) = (ctx.bind_to_thread(), CString::new(src)) else {
        return String::new();
    };
    let mut buf = vec![0u8; 16 << 10];
    let mut opts = [
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    let mut vals: [*mut c_void; 2] = [buf.as_mut_ptr() as *mut c_void, buf.len() as *mut c_void];
    let mut module = std::ptr::null_mut();
    // SAFETY: the options point at a live buffer of the size given; the module is unloaded.
    let r = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            c.as_ptr() as *const c_void,
            2,
            opts.as_mut_ptr(),
            vals.as_mut_ptr(),
        )
    };
    if r == sys::CUresult::CUDA_SUCCESS {
        unsafe { sys::cuModuleUnload(module) };
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let log = String::from_utf8_lossy(&buf[..end]);
    if log.trim().is_empty() {
        String::new()
    } else {
        format!(" (JIT log: {})", log.trim())
    }
}

// ---- tensor storage -------------------------------------------------------------------------

/// The device memory of a Cuda tensor: a block of `len` elements of `dtype`.
pub struct CudaStorage {
    block: DeviceBlock,
    dtype: DType,
    len: usize,
    backend: Arc<CudaBackend>,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage(cuda:{}, {} × {}, {:?})",
            self.backend.ordinal(),
            self.len,
            self.dtype,
            self.block
        )
    }
}

impl CudaStorage {
    /// Uninitialised storage for `len` elements of `dtype` (every kernel writes its output).
    pub fn uninit(backend: &Arc<CudaBackend>, dtype: DType, len: usize) -> Result<CudaStorage> {
        Ok(CudaStorage {
            block: backend.alloc(len * dtype.size_in_bytes())?,
            dtype,
            len,
            backend: backend.clone(),
        })
    }

    /// Copy `n` elements of host storage, starting at element `offset`, to the device.
    pub fn upload(
        backend: &Arc<CudaBackend>,
        host: &CpuStorage,
        offset: usize,
        n: usize,
    ) -> Result<CudaStorage> {
        let block = match host {
            CpuStorage::F32(v) => backend.upload(&v[offset..offset + n])?,
            CpuStorage::F16(v) => backend.upload(&v[offset..offset + n])?,
            CpuStorage::BF16(v) => backend.upload(&v[offset..offset + n])?,
        };
        Ok(CudaStorage {
            block,
            dtype: host.dtype(),
            len: n,
            backend: backend.clone(),
        })
    }

    /// Copy `n` elements starting at element `offset` to the host.
    pub fn download(&self, offset: usize, n: usize) -> Result<CpuStorage> {
        if offset + n > self.len {
            return Err(Error::Device {
                op: "to_device",
                msg: format!(
                    "elements {offset}..{} are outside a buffer of {}",
                    offset + n,
                    self.len
                ),
            });
        }
        let addr = self.address_at(offset);
        Ok(match self.dtype {
            DType::F32 => CpuStorage::F32(self.backend.download(addr, n)?),
            DType::F16 => CpuStorage::F16(self.backend.download(addr, n)?),
            DType::BF16 => CpuStorage::BF16(self.backend.download(addr, n)?),
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Elements held.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn backend(&self) -> &Arc<CudaBackend> {
        &self.backend
    }
    /// Device address of element 0.
    pub fn address(&self) -> u64 {
        self.block.address()
    }
    /// Device address of element `offset`.
    pub fn address_at(&self, offset: usize) -> u64 {
        self.block.address() + (offset * self.dtype.size_in_bytes()) as u64
    }
}
