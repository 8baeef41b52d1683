//! One kernel launcher for both kernel devices (DESIGN §3): an op's `gpu.rs` decides the
//! `LaunchConfig` and the argument list once, and [`launch`] runs it on `Device::Emu` (the CPU
//! emulator, host pointers) or `Device::Cuda(i)` (cudarc's launch builder, device pointers) in
//! exactly the same argument order.
//!
//! ```text
//! let x = kernel::f32_input(op, x)?;                  // f32, contiguous, on Emu/Cuda
//! let mut out = DeviceBuf::like(&x)?;                  // Emu: NaN-poisoned; Cuda: uninitialised
//! let n = kernel::i32_len(op, x.numel())?;
//! unsafe { kernel::launch(x.device(), "elementwise", "gelu_fwd_f32",
//!     LaunchConfig::for_elements(n as usize, 256),
//!     &mut [KernelArg::Out(&mut out), KernelArg::In(&x), KernelArg::I32(n)]) }?;
//! out.into_tensor()
//! ```

use crate::device::cuda::{CudaBackend, CudaStorage, DeviceBlock};
use crate::device::{emu, LaunchConfig};
use crate::{DType, Device, Error, Result, Tensor};

/// A buffer a kernel writes (or reads back in a later launch of the same op): f32 (or f16/bf16,
/// for the 16-bit kernels) elements of a shape on one kernel device, i32 elements (indices)
/// uploaded from the host, or 64-bit words (launch tables of addresses, f64 partial sums).
pub struct DeviceBuf {
    device: Device,
    shape: Vec<usize>,
    data: BufData,
    /// Emu: the buffer's block in Emu's accounting allocator (see `device::emu::memory`).
    _lease: Option<emu::memory::Lease>,
}

/// Emu's accounting lease for a buffer of `bytes` bytes (none for other devices).
fn emu_lease(device: Device, bytes: usize) -> Option<emu::memory::Lease> {
    (device == Device::Emu)
        .then(|| emu::memory::lease(bytes))
        .flatten()
}

enum BufData {
    HostF32(Vec<f32>),
    HostF16(Vec<half::f16>),
    HostBF16(Vec<half::bf16>),
    HostI32(Vec<i32>),
    HostU64(Vec<u64>),
    /// A tensor's storage on the GPU (f32, f16 or bf16: the storage knows its dtype).
    Cuda(CudaStorage),
    /// Untyped device memory: i32 (4-byte) or 64-bit (8-byte) elements.
    CudaRaw(DeviceBlock, usize),
}

impl DeviceBuf {
    /// f32 output of `shape` on `device`: NaN-poisoned host memory on Emu (an element the kernel
    /// does not write fails every comparison), uninitialised device memory on Cuda.
    pub fn f32(device: Device, shape: &[usize]) -> Result<DeviceBuf> {
        DeviceBuf::typed(device, shape, DType::F32)
    }
    /// An output of `dtype` elements: NaN-poisoned on Emu (16-bit NaNs for f16/bf16),
    /// uninitialised on Cuda.
    pub fn typed(device: Device, shape: &[usize], dtype: DType) -> Result<DeviceBuf> {
        let n: usize = shape.iter().product();
        let data = match (device, dtype) {
            (Device::Emu, DType::F32) => BufData::HostF32(vec![f32::NAN; n]),
            (Device::Emu, DType::F16) => BufData::HostF16(vec![half::f16::NAN; n]),
            (Device::Emu, DType::BF16) => BufData::HostBF16(vec![half::bf16::NAN; n]),
            (Device::Cuda(i), _) => {
                BufData::Cuda(CudaStorage::uninit(&CudaBackend::get(i)?, dtype, n)?)
            }
            (Device::Cpu, _) => return Err(not_kernel_device("DeviceBuf", device)),
        };
        Ok(DeviceBuf {
            device,
            shape: shape.to_vec(),
            data,
            _lease: emu_lease(device, n * dtype.size_in_bytes()),
        })
    }
    /// An output with the shape, dtype and device of `t`.
    pub fn like(t: &Tensor) -> Result<DeviceBuf> {
        DeviceBuf::typed(t.device(), t.shape(), t.dtype())
    }
    /// Host i32 values (token ids, indices) made readable by kernels on `device`.
    pub fn from_i32(device: Device, values: &[i32]) -> Result<DeviceBuf> {
        DeviceBuf::upload(device, values, BufData::HostI32)
    }
    /// Host 64-bit words (a launch table of device addresses and sizes) made readable by kernels
    /// on `device`: one upload.
    pub fn from_u64(device: Device, values: &[u64]) -> Result<DeviceBuf> {
        DeviceBuf::upload(device, values, BufData::HostU64)
    }
    /// One upload of `values` (counted): held as `host` on Emu, as raw device memory on Cuda.
    fn upload<T: bytemuck::Pod>(
        device: Device,
        values: &[T],
        host: fn(Vec<T>) -> BufData,
    ) -> Result<DeviceBuf> {
        let bytes = std::mem::size_of_val(values);
        crate::device::transfers::record(
            device,
            crate::device::transfers::Direction::Upload,
            bytes,
        );
        let data = match device {
            Device::Emu => host(values.to_vec()),
            Device::Cuda(i) => BufData::CudaRaw(
                CudaBackend::get(i)?.upload(values)?,
                std::mem::size_of::<T>(),
            ),
            Device::Cpu => return Err(not_kernel_device("DeviceBuf", device)),
        };
        Ok(DeviceBuf {
            device,
            shape: vec![values.len()],
            data,
            _lease: emu_lease(device, bytes),
        })
    }
    /// `n` uninitialised 64-bit words on `device` that kernels write (f64 partial sums): all
    /// bits set on Emu (a NaN as f64), uninitialised on Cuda.
    pub fn words(device: Device, n: usize) -> Result<DeviceBuf> {
        let data = match device {
            Device::Emu => BufData::HostU64(vec![u64::MAX; n]),
            Device::Cuda(i) => BufData::CudaRaw(CudaBackend::get(i)?.alloc(n * 8)?, 8),
            Device::Cpu => return Err(not_kernel_device("DeviceBuf", device)),
        };
        Ok(DeviceBuf {
            device,
            shape: vec![n],
            data,
            _lease: emu_lease(device, n * 8),
        })
    }
    /// Overwrite the first `values.len()` words of a buffer made by [`DeviceBuf::words`] or
    /// [`DeviceBuf::from_u64`] with host values (one upload; the buffer keeps its address).
    pub fn write_u64(&mut self, values: &[u64]) -> Result<()> {
        if values.len() > self.len() {
            return Err(Error::Msg(format!(
                "DeviceBuf::write_u64: {} words into a buffer of {}",
                values.len(),
                self.len()
            )));
        }
        match (&mut self.data, self.device) {
            (BufData::HostU64(v), _) => {
                crate::device::transfers::record(
                    self.device,
                    crate::device::transfers::Direction::Upload,
                    values.len() * 8,
                );
                v[..values.len()].copy_from_slice(values);
                Ok(())
            }
            // `upload_into` counts the copy
            (BufData::CudaRaw(blk, 8), Device::Cuda(i)) => {
                CudaBackend::get(i)?.upload_into(blk.address(), values)
            }
            _ => Err(Error::Msg(
                "DeviceBuf::write_u64: not a buffer of 64-bit words".into(),
            )),
        }
    }
    /// The 64-bit words of a buffer made by [`DeviceBuf::words`] or [`DeviceBuf::from_u64`],
    /// copied to the host (one download).
    pub fn to_host_u64(&self) -> Result<Vec<u64>> {
        match (&self.data, self.device) {
            (BufData::HostU64(v), _) => {
                crate::device::transfers::record(
                    self.device,
                    crate::device::transfers::Direction::Download,
                    v.len() * 8,
                );
                Ok(v.clone())
            }
            // `download` counts the copy
            (BufData::CudaRaw(blk, 8), Device::Cuda(i)) => {
                CudaBackend::get(i)?.download(blk.address(), self.len())
            }
            _ => Err(Error::Msg(
                "DeviceBuf::to_host_u64: not a buffer of 64-bit words".into(),
            )),
        }
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Elements held.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes per element.
    fn elem_bytes(&self) -> usize {
        match &self.data {
            BufData::HostF32(_) | BufData::HostI32(_) => 4,
            BufData::HostU64(_) => 8,
            BufData::CudaRaw(_, bytes) => *bytes,
            BufData::HostF16(_) | BufData::HostBF16(_) => 2,
            BufData::Cuda(s) => s.dtype().size_in_bytes(),
        }
    }
    pub fn device(&self) -> Device {
        self.device
    }
    /// The f32 (f16, bf16) buffer as a contiguous tensor on its device.
    pub fn into_tensor(self) -> Result<Tensor> {
        match self.data {
            BufData::HostF32(v) => Ok(Tensor::from_f32_on(v, &self.shape, self.device)),
            BufData::HostF16(v) => {
                Ok(Tensor::from_f16(v, self.shape.clone())?.on_host_device(self.device))
            }
            BufData::HostBF16(v) => {
                Ok(Tensor::from_bf16(v, self.shape.clone())?.on_host_device(self.device))
            }
            BufData::Cuda(s) => Tensor::from_cuda(s, &self.shape),
            BufData::HostI32(_) | BufData::HostU64(_) | BufData::CudaRaw(..) => Err(Error::Msg(
                "DeviceBuf::into_tensor: an i32 or 64-bit buffer is not a tensor".into(),
            )),
        }
    }
}

/// One kernel parameter, in the kernel's parameter order.
pub enum KernelArg<'a> {
    /// A contiguous f32 tensor on the launch device, read by the kernel (pointer to its first
    /// element).
    In(&'a Tensor),
    /// A buffer the kernel writes.
    Out(&'a mut DeviceBuf),
    /// A buffer the kernel only reads (an earlier stage's output, indices).
    Buf(&'a DeviceBuf),
    /// The whole storage of a tensor of any layout (a view: permuted, narrowed, expanded), read
    /// by the kernel: a pointer to storage element 0. The kernel indexes it with the view's
    /// offset and strides, which the launcher passes as integers and checks against the
    /// storage's length.
    Storage(&'a Tensor),
    I32(i32),
    /// A 64-bit integer (`long long`): element counts, offsets and strides that may pass 2³¹.
    I64(i64),
    U32(u32),
    F32(f32),
    /// A buffer the kernel only reads, from element `.1` on (one upload holding several arrays).
    BufAt(&'a DeviceBuf, usize),
    /// A null pointer (an optional buffer the kernel does without).
    Null,
    F64(f64),
    /// A raw address on the launch device (Emu: a host address), for a kernel that writes a
    /// tensor's storage in place: the caller vouches that it is live, on this device, and
    /// written by no one else (`Tensor::unique_storage_addr`).
    Addr(u64),
}

fn not_kernel_device(op: &'static str, device: Device) -> Error {
    Error::Device {
        op,
        msg: format!("no kernels on device {device} (kernels run on emu and cuda)"),
    }
}

/// Whether `device` runs the CUDA kernels (Emu or Cuda).
pub fn runs_kernels(device: Device) -> bool {
    matches!(device, Device::Emu | Device::Cuda(_))
}

/// The common device of kernel operands: all on one device, and that device runs kernels.
pub fn kernel_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    crate::ops::same_device(op, ts)?;
    let d = ts.first().map(|t| t.device()).unwrap_or(Device::Cpu);
    if !runs_kernels(d) {
        return Err(not_kernel_device(op, d));
    }
    Ok(d)
}

/// A kernel operand of a kernel with 16-bit instantiations: f32, f16 or bf16 on a kernel
/// device, returned contiguous (a view is copied by the strided-copy kernel on its device; the
/// launcher picks the kernel by [`dtype_suffix`]).
pub fn typed_input(op: &'static str, t: &Tensor) -> Result<Tensor> {
    if !runs_kernels(t.device()) {
        return Err(not_kernel_device(op, t.device()));
    }
    t.try_contiguous()
}

/// A kernel operand: checks f32 and a kernel device, and returns a contiguous tensor (a view is
/// copied by the strided-copy kernel on its device).
pub fn f32_input(op: &'static str, t: &Tensor) -> Result<Tensor> {
    if t.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            got: t.dtype(),
            expected: "f32",
        });
    }
    if !runs_kernels(t.device()) {
        return Err(not_kernel_device(op, t.device()));
    }
    t.try_contiguous()
}

/// A size as the kernels' `int`, or a clear error.
pub fn i32_len(op: &'static str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::shape(op, format!("{n} exceeds the kernels' i32 index")))
}

/// Rows of `t` seen as [rows, d] (0 when d is 0), after checking that its length fits the
/// kernels' i32 indices — the preamble of every row-wise launcher.
pub fn rows_of(op: &'static str, t: &Tensor, d: usize) -> Result<usize> {
    i32_len(op, t.numel())?;
    Ok(t.numel().checked_div(d).unwrap_or(0))
}

fn launch_err(kernel: &str, msg: String) -> Error {
    Error::Device {
        op: "kernel launch",
        msg: format!("{kernel}: {msg}"),
    }
}

fn check_operand(kernel: &str, i: usize, device: Device, got: Device) -> Result<()> {
    if got != device {
        return Err(launch_err(
            kernel,
            format!("argument {i} is on {got}, the launch on {device}"),
        ));
    }
    Ok(())
}

/// Whether a kernel's tensor arguments may be of `dtype`: f32 always (statistics and master
/// weights stay f32 in the 16-bit kernels), a 16-bit type when the kernel's name names it as one
/// of its `_`-separated words (`layernorm_fwd_f16`; a cast names two: `cast_f16_to_bf16`).
fn kernel_takes(kernel: &str, dtype: DType) -> bool {
    dtype == DType::F32 || kernel.split('_').any(|w| w == dtype.as_str())
}

/// The name suffix of the kernels instantiated for `dtype`: `f32`, `f16`, `bf16`.
pub fn dtype_suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
    }
}

fn check_dtype(kernel: &str, i: usize, got: DType) -> Result<()> {
    if !kernel_takes(kernel, got) {
        let takes: Vec<&str> = [DType::F32, DType::F16, DType::BF16]
            .into_iter()
            .filter(|&d| kernel_takes(kernel, d))
            .map(DType::as_str)
            .collect();
        return Err(launch_err(
            kernel,
            format!(
                "argument {i} is {got}, the kernel takes {}",
                takes.join(" or ")
            ),
        ));
    }
    Ok(())
}

fn check_tensor(kernel: &str, i: usize, device: Device, t: &Tensor) -> Result<()> {
    check_operand(kernel, i, device, t.device())?;
    check_dtype(kernel, i, t.dtype())?;
    if !t.is_contiguous() {
        return Err(launch_err(
            kernel,
            format!(
                "argument {i} must be a contiguous tensor ({:?} view)",
                t.shape()
            ),
        ));
    }
    Ok(())
}

fn check_buf(kernel: &str, i: usize, device: Device, b: &DeviceBuf) -> Result<()> {
    check_operand(kernel, i, device, b.device)?;
    match &b.data {
        BufData::HostF16(_) => check_dtype(kernel, i, DType::F16),
        BufData::HostBF16(_) => check_dtype(kernel, i, DType::BF16),
        BufData::Cuda(s) => check_dtype(kernel, i, s.dtype()),
        _ => Ok(()),
    }
}

/// Runs `kernel` of PTX module `module` (the `kernels/<module>.cu` file stem) with `cfg` on
/// `device`. Every tensor/buffer argument must be on `device`; `In` tensors must be contiguous,
/// and every tensor or buffer f32 or a 16-bit type the kernel's name names.
///
/// # Safety
/// Like a CUDA launch: with this configuration the kernel must only touch elements inside the
/// buffers it is given (the launcher sizes them).
pub unsafe fn launch(
    device: Device,
    module: &str,
    kernel: &str,
    cfg: LaunchConfig,
    args: &mut [KernelArg],
) -> Result<()> {
    for (i, a) in args.iter().enumerate() {
        match a {
            KernelArg::In(t) => check_tensor(kernel, i, device, t)?,
            KernelArg::Out(b) => check_buf(kernel, i, device, b)?,
            KernelArg::Buf(b) => check_buf(kernel, i, device, b)?,
            KernelArg::BufAt(b, at) => {
                check_buf(kernel, i, device, b)?;
                if *at > b.len() {
                    return Err(launch_err(
                        kernel,
                        format!("argument {i}: offset {at} past a buffer of {}", b.len()),
                    ));
                }
            }
            KernelArg::Storage(t) => {
                check_operand(kernel, i, device, t.device())?;
                check_dtype(kernel, i, t.dtype())?;
            }
            _ => {}
        }
    }
    match device {
        Device::Emu => {
            let mut raw = Vec::with_capacity(args.len());
            for a in args.iter_mut() {
                raw.push(match a {
                    KernelArg::In(t) => emu::EmuArg::Ptr(t.host_ptr("kernel launch")?),
                    KernelArg::Out(b) => match &mut b.data {
                        BufData::HostF32(v) => emu::EmuArg::slice_mut(v),
                        BufData::HostF16(v) => emu::EmuArg::slice_mut(v),
                        BufData::HostBF16(v) => emu::EmuArg::slice_mut(v),
                        BufData::HostI32(v) => emu::EmuArg::slice_mut(v),
                        BufData::HostU64(v) => emu::EmuArg::slice_mut(v),
                        _ => unreachable!("an Emu buffer holds host memory"),
                    },
                    KernelArg::Buf(b) => match &b.data {
                        BufData::HostF32(v) => emu::EmuArg::slice(v),
                        BufData::HostF16(v) => emu::EmuArg::slice(v),
                        BufData::HostBF16(v) => emu::EmuArg::slice(v),
                        BufData::HostI32(v) => emu::EmuArg::slice(v),
                        BufData::HostU64(v) => emu::EmuArg::slice(v),
                        _ => unreachable!("an Emu buffer holds host memory"),
                    },
                    KernelArg::Storage(t) => emu::EmuArg::Ptr(t.host_storage_ptr("kernel launch")?),
                    KernelArg::I32(v) => emu::EmuArg::I32(*v),
                    KernelArg::I64(v) => emu::EmuArg::I64(*v),
                    KernelArg::U32(v) => emu::EmuArg::U32(*v),
                    KernelArg::F32(v) => emu::EmuArg::F32(*v),
                    KernelArg::Null => emu::EmuArg::Ptr(std::ptr::null_mut()),
                    KernelArg::F64(v) => emu::EmuArg::F64(*v),
                    KernelArg::Addr(a) => emu::EmuArg::Ptr(*a as usize as *mut std::ffi::c_void),
                    KernelArg::BufAt(b, at) => match &b.data {
                        BufData::HostF32(v) => emu::EmuArg::slice(&v[*at..]),
                        BufData::HostF16(v) => emu::EmuArg::slice(&v[*at..]),
                        BufData::HostBF16(v) => emu::EmuArg::slice(&v[*at..]),
                        BufData::HostI32(v) => emu::EmuArg::slice(&v[*at..]),
                        BufData::HostU64(v) => emu::EmuArg::slice(&v[*at..]),
                        _ => unreachable!("an Emu buffer holds host memory"),
                    },
                });
            }
            // SAFETY: the pointers come from live buffers borrowed by `args` for the call; the
            // bounds are the caller's promise.
            unsafe { emu::launch(kernel, cfg, &raw) }
        }
        Device::Cuda(i) => unsafe { launch_cuda(i, module, kernel, cfg, args) },
        Device::Cpu => Err(not_kernel_device("kernel launch", device)),
    }
}

enum CudaVal {
    Ptr(u64),
    I32(i32),
    I64(i64),
    U32(u32),
    F32(f32),
    F64(f64),
}

unsafe fn launch_cuda(
    ordinal: usize,
    module: &str,
    kernel: &str,
    cfg: LaunchConfig,
    args: &[KernelArg],
) -> Result<()> {
    use cudarc::driver::PushKernelArg;
    if cfg.shared_bytes > 48 * 1024 {
        // Above 48 KiB the kernel needs cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE); no launcher
        // asks for that much yet.
        return Err(launch_err(
            kernel,
            format!(
                "{} bytes of dynamic shared memory exceed 48 KiB",
                cfg.shared_bytes
            ),
        ));
    }
    let backend = CudaBackend::get(ordinal)?;
    let f = backend.function(module, kernel)?;
    let buf_addr = |b: &DeviceBuf| match &b.data {
        BufData::Cuda(s) => s.address(),
        BufData::CudaRaw(blk, _) => blk.address(),
        _ => unreachable!("a Cuda buffer holds device memory"),
    };
    let mut vals = Vec::with_capacity(args.len());
    for a in args {
        vals.push(match a {
            KernelArg::In(t) => {
                let (s, off) = t.cuda_storage().ok_or_else(|| {
                    launch_err(kernel, "a Cuda tensor without device storage".into())
                })?;
                CudaVal::Ptr(s.address_at(off))
            }
            KernelArg::Storage(t) => {
                let (s, _) = t.cuda_storage().ok_or_else(|| {
                    launch_err(kernel, "a Cuda tensor without device storage".into())
                })?;
                CudaVal::Ptr(s.address())
            }
            KernelArg::Out(b) => CudaVal::Ptr(buf_addr(b)),
            KernelArg::Buf(b) => CudaVal::Ptr(buf_addr(b)),
            KernelArg::I32(v) => CudaVal::I32(*v),
            KernelArg::I64(v) => CudaVal::I64(*v),
            KernelArg::U32(v) => CudaVal::U32(*v),
            KernelArg::F32(v) => CudaVal::F32(*v),
            KernelArg::Null => CudaVal::Ptr(0),
            KernelArg::F64(v) => CudaVal::F64(*v),
            KernelArg::Addr(a) => CudaVal::Ptr(*a),
            KernelArg::BufAt(b, at) => CudaVal::Ptr(buf_addr(b) + (*at * b.elem_bytes()) as u64),
        });
    }
    let stream = backend.stream();
    let mut builder = stream.launch_builder(&f);
    for v in &vals {
        match v {
            CudaVal::Ptr(p) => builder.arg(p),
            CudaVal::I32(x) => builder.arg(x),
            CudaVal::I64(x) => builder.arg(x),
            CudaVal::U32(x) => builder.arg(x),
            CudaVal::F32(x) => builder.arg(x),
            CudaVal::F64(x) => builder.arg(x),
        };
    }
    let c = cudarc::driver::LaunchConfig {
        grid_dim: cfg.grid,
        block_dim: cfg.block,
        shared_mem_bytes: cfg.shared_bytes,
    };
    // SAFETY: argument kinds and order mirror the kernel signature (the same list the emulator
    // checks by kind); the bounds are the caller's promise.
    unsafe { builder.launch(c) }
        .map(|_| ())
        .map_err(|e| crate::device::cuda::driver_err("kernel launch", e))
}
