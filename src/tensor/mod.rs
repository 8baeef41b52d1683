//! `Tensor`: an immutable, reference-counted n-d array with a shape, strides (so `permute`,
//! `narrow`, `transpose` and `expand` are free views), a dtype and a device. Ops read contiguous
//! data; call `try_contiguous()` (a no-op when already contiguous) before taking a slice.
//!
//! Storage is shared through an `Arc`; writes go through copy-on-write (`f32s_mut`), so a tensor
//! that the autograd graph saved is never changed under it.
//!
//! A Cuda tensor's storage is device memory ([`CudaStorage`]); move data with
//! [`Tensor::to_device`]. On the kernel devices (Emu, Cuda) every layout change is a kernel on
//! the tensor's own storage (DESIGN §10): [`Tensor::try_contiguous`] of a view is the strided
//! copy of `kernels/layout.cu`, [`Tensor::try_to_dtype`] its cast kernels — no host round trip.
//! They return `Err` when a launch fails; `contiguous()` and `to_dtype()` are their infallible
//! wrappers for host code and tests, which panic only if a device fails. Library code that may
//! run on a device uses the `try_` forms. Reading a device view to the host (`to_device(Cpu)`,
//! `try_to_vec`) copies it contiguous on the device first, then downloads just its elements.

mod dtype;
mod shape;

pub use dtype::DType;
pub use shape::{broadcast_shape, broadcast_strides, contiguous_strides, resolve_axis, Shape};

use crate::device::cuda::{CudaBackend, CudaStorage};
use crate::device::transfers::{self, Direction};
use crate::{Device, Error, Result};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// What [`Tensor::value_stats`] finds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ValueStats {
    /// Elements that are NaN or ±inf.
    pub non_finite: usize,
    /// The largest |x| of the finite elements.
    pub max_abs: f32,
}

/// Host memory in one of the supported element types.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl CpuStorage {
    pub(crate) fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
        }
    }
    pub(crate) fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
        }
    }
}

/// Where the bytes live. `Emu` keeps host memory because the emulator runs kernels on the CPU.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
    device: Device,
    /// Emu only: the storage's block in Emu's accounting allocator (`device::emu::memory`),
    /// shared by every view of the storage, returned when the last one drops.
    emu_lease: Option<Arc<crate::device::emu::memory::Lease>>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, {})",
            self.shape,
            self.dtype(),
            self.device
        )
    }
}

impl Tensor {
    // ---- construction -------------------------------------------------------------------------

    fn from_storage(storage: CpuStorage, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(storage.len(), shape.iter().product::<usize>());
        Tensor {
            strides: contiguous_strides(&shape),
            storage: Arc::new(Storage::Cpu(storage)),
            shape,
            offset: 0,
            device: Device::Cpu,
            emu_lease: None,
        }
    }

    /// This tensor, with fresh host storage, labelled as living on `device` (Cpu or Emu); an Emu
    /// storage takes its lease of Emu's accounting allocator.
    fn placed(mut self, device: Device) -> Tensor {
        debug_assert!(!matches!(device, Device::Cuda(_)));
        self.device = device;
        self.emu_lease = if device == Device::Emu {
            crate::device::emu::memory::lease(self.storage_bytes()).map(Arc::new)
        } else {
            None
        };
        self
    }

    /// A CPU f32 tensor owning `data`; errors when `data.len()` is not the product of `shape`.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::shape(
                "Tensor::from_vec",
                format!(
                    "{} values do not fill shape {shape} ({} elements)",
                    data.len(),
                    shape.numel()
                ),
            ));
        }
        Ok(Self::from_storage(CpuStorage::F32(data), shape.0))
    }

    /// Internal constructor for op outputs whose length is known to match.
    pub(crate) fn from_f32(data: Vec<f32>, shape: &[usize]) -> Tensor {
        assert_eq!(
            data.len(),
            shape.iter().product::<usize>(),
            "op output size"
        );
        Self::from_storage(CpuStorage::F32(data), shape.to_vec())
    }

    /// Internal constructor for outputs of kernels run on a host-memory device (Cpu, Emu).
    pub(crate) fn from_f32_on(data: Vec<f32>, shape: &[usize], device: Device) -> Tensor {
        Self::from_f32(data, shape).placed(device)
    }

    pub fn from_f16(data: Vec<f16>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::shape(
                "Tensor::from_f16",
                format!("{} values for shape {shape}", data.len()),
            ));
        }
        Ok(Self::from_storage(CpuStorage::F16(data), shape.0))
    }

    pub fn from_bf16(data: Vec<bf16>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::shape(
                "Tensor::from_bf16",
                format!("{} values for shape {shape}", data.len()),
            ));
        }
        Ok(Self::from_storage(CpuStorage::BF16(data), shape.0))
    }

    /// Build from raw little-endian bytes of `dtype` (safetensors payloads).
    pub fn from_le_bytes(bytes: &[u8], dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if bytes.len() != shape.numel() * dtype.size_in_bytes() {
            return Err(Error::shape(
                "Tensor::from_le_bytes",
                format!("{} bytes do not hold {dtype} shape {shape}", bytes.len()),
            ));
        }
        let storage = match dtype {
            DType::F32 => CpuStorage::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => CpuStorage::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => CpuStorage::BF16(bytemuck::pod_collect_to_vec(bytes)),
        };
        Ok(Self::from_storage(storage, shape.0))
    }

    pub fn full(value: f32, shape: impl Into<Shape>) -> Tensor {
        let shape = shape.into();
        Self::from_storage(CpuStorage::F32(vec![value; shape.numel()]), shape.0)
    }

    /// An f32 tensor of `value` on `device`: on Emu and Cuda made there by a kernel (no upload).
    pub fn full_on(value: f32, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape: Shape = shape.into();
        if crate::device::kernel::runs_kernels(device) {
            return crate::ops::unary::gpu::fill(device, shape.dims(), value);
        }
        Ok(Tensor::full(value, shape))
    }

    pub fn zeros(shape: impl Into<Shape>) -> Tensor {
        Self::full(0.0, shape)
    }

    pub fn ones(shape: impl Into<Shape>) -> Tensor {
        Self::full(1.0, shape)
    }

    pub fn scalar(value: f32) -> Tensor {
        Self::full(value, Shape(vec![]))
    }

    /// Normal(0, std²) values from a seeded generator (Box–Muller).
    pub fn randn(shape: impl Into<Shape>, std: f32, seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Self::randn_with(shape, std, &mut rng)
    }

    pub fn randn_with(shape: impl Into<Shape>, std: f32, rng: &mut impl Rng) -> Tensor {
        let shape = shape.into();
        let data = (0..shape.numel()).map(|_| normal(rng) * std).collect();
        Self::from_storage(CpuStorage::F32(data), shape.0)
    }

    /// Uniform values in `[lo, hi)` from a seeded generator.
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f32, hi: f32, seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let shape = shape.into();
        let data = (0..shape.numel())
            .map(|_| rng.random_range(lo..hi))
            .collect();
        Self::from_storage(CpuStorage::F32(data), shape.0)
    }

    // ---- metadata -----------------------------------------------------------------------------

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dims(&self) -> Shape {
        Shape(self.shape.clone())
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }
    pub fn device(&self) -> Device {
        self.device
    }
    /// Row-major dense: elements are `numel` consecutive storage slots from the offset. Strides
    /// of size-1 dims do not matter.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 {
                if s != expected {
                    return false;
                }
                expected *= d;
            }
        }
        true
    }
    /// Bytes of the underlying storage (shared by all views of it).
    pub fn storage_bytes(&self) -> usize {
        match &*self.storage {
            Storage::Cpu(s) => s.len() * s.dtype().size_in_bytes(),
            Storage::Cuda(s) => s.len() * s.dtype().size_in_bytes(),
        }
    }
    /// Identity of the underlying storage, to count shared buffers once.
    pub fn storage_id(&self) -> usize {
        Arc::as_ptr(&self.storage) as *const u8 as usize
    }
    /// Size of dim `axis` (negative counts from the end).
    pub fn dim(&self, axis: isize) -> Result<usize> {
        Ok(self.shape[resolve_axis("Tensor::dim", axis, self.rank())?])
    }

    // ---- data access --------------------------------------------------------------------------

    /// The elements of a contiguous CPU f32 tensor. `op` names the caller in the error.
    pub fn f32s(&self, op: &'static str) -> Result<&[f32]> {
        if !self.is_contiguous() {
            return Err(Error::shape(
                op,
                "expected a contiguous tensor (call .try_contiguous())",
            ));
        }
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => {
                self.meter(Direction::Download);
                Ok(&v[self.offset..self.offset + self.numel()])
            }
            Storage::Cpu(_) => Err(Error::DType {
                op,
                got: self.dtype(),
                expected: "f32 on the CPU backend (convert with to_dtype(DType::F32))",
            }),
            Storage::Cuda(_) => Err(self.on_device_error(op)),
        }
    }

    /// The elements of a contiguous f32 tensor in host memory (Cpu or Emu) for the emulated
    /// device's own work — the GEMMs that stand in for cuBLAS on Emu — which, unlike host code
    /// reading an Emu tensor ([`Tensor::f32s`]), is not a host↔device copy and is not counted.
    pub(crate) fn device_side_f32s(&self, op: &'static str) -> Result<&[f32]> {
        if !self.is_contiguous() {
            return Err(Error::shape(
                op,
                "expected a contiguous tensor (call .contiguous())",
            ));
        }
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(&v[self.offset..self.offset + self.numel()]),
            _ => Err(Error::DType {
                op,
                got: self.dtype(),
                expected: "f32 in host memory",
            }),
        }
    }

    /// Counts host code touching this tensor's elements as a copy when it lives on Emu (see
    /// `device::transfers`); nothing for Cpu tensors.
    fn meter(&self, direction: Direction) {
        if self.device == Device::Emu {
            transfers::record(
                self.device,
                direction,
                self.numel() * self.dtype().size_in_bytes(),
            );
        }
    }

    /// The address of this contiguous host tensor's first element, whatever its dtype (for
    /// kernel launches on Emu, whose memory is the host's).
    pub(crate) fn host_ptr(&self, op: &'static str) -> Result<*mut std::ffi::c_void> {
        if !self.is_contiguous() {
            return Err(Error::shape(
                op,
                "expected a contiguous tensor (call .try_contiguous())",
            ));
        }
        let o = self.offset;
        Ok(match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => v[o..].as_ptr() as *mut std::ffi::c_void,
            Storage::Cpu(CpuStorage::F16(v)) => v[o..].as_ptr() as *mut std::ffi::c_void,
            Storage::Cpu(CpuStorage::BF16(v)) => v[o..].as_ptr() as *mut std::ffi::c_void,
            Storage::Cuda(_) => return Err(self.on_device_error(op)),
        })
    }

    /// The device address of this contiguous Emu or Cuda tensor's first element, for a kernel
    /// that only reads it through a launch table (Emu: a host address).
    pub(crate) fn device_addr(&self, op: &'static str) -> Result<u64> {
        match (&*self.storage, self.device) {
            (Storage::Cuda(s), _) if self.is_contiguous() => Ok(s.address_at(self.offset)),
            (Storage::Cpu(_), Device::Emu) => Ok(self.host_ptr(op)? as usize as u64),
            (Storage::Cuda(_), _) => Err(Error::shape(
                op,
                "expected a contiguous tensor (call .contiguous())",
            )),
            (Storage::Cpu(_), d) => Err(Error::Device {
                op,
                msg: format!("a tensor on {d} has no device address (kernels run on emu and cuda)"),
            }),
        }
    }

    /// The device address of this f32 Emu or Cuda tensor's storage when a kernel may write it in
    /// place: when this handle is the only owner of the whole storage (no clone — a graph's saved
    /// value, a caller's copy of a parameter — and no view shares it). `None` otherwise, and for
    /// other dtypes and host tensors.
    pub(crate) fn unique_storage_addr(&mut self) -> Option<u64> {
        if self.dtype() != DType::F32
            || !crate::device::kernel::runs_kernels(self.device)
            || !self.is_contiguous()
            || self.offset != 0
            || self.storage_len() != self.numel()
        {
            return None;
        }
        match Arc::get_mut(&mut self.storage)? {
            Storage::Cuda(s) => Some(s.address()),
            Storage::Cpu(CpuStorage::F32(v)) => Some(v.as_mut_ptr() as usize as u64),
            Storage::Cpu(_) => None,
        }
    }

    /// The device address of this f32 Emu or Cuda tensor's storage for a kernel that writes it in
    /// place. When the storage is shared or this is a view, it is first copied on the device into
    /// storage of its own (copy-on-write, the rule [`Tensor::f32s_mut`] follows on the host), so
    /// no other handle ever sees the write; the copy gives the tensor a new address.
    pub(crate) fn in_place_addr(&mut self, op: &'static str) -> Result<u64> {
        if let Some(a) = self.unique_storage_addr() {
            return Ok(a);
        }
        if self.dtype() != DType::F32 {
            return Err(Error::DType {
                op,
                got: self.dtype(),
                expected: "f32",
            });
        }
        *self = crate::ops::binary::gpu::copy(self)?;
        self.unique_storage_addr().ok_or_else(|| Error::Device {
            op,
            msg: "a fresh device copy is not uniquely owned".into(),
        })
    }

    /// [`Tensor::in_place_addr`] for an f32, f16 or bf16 tensor (the 16-bit weights the optimizer
    /// updates in place): the same copy-on-write rule, the copy made by the strided-copy kernel.
    pub(crate) fn in_place_addr_any_dtype(&mut self, op: &'static str) -> Result<u64> {
        if self.dtype() == DType::F32 {
            return self.in_place_addr(op);
        }
        let unique = |t: &mut Tensor| -> Option<u64> {
            if !crate::device::kernel::runs_kernels(t.device)
                || !t.is_contiguous()
                || t.offset != 0
                || t.storage_len() != t.numel()
            {
                return None;
            }
            match Arc::get_mut(&mut t.storage)? {
                Storage::Cuda(s) => Some(s.address()),
                Storage::Cpu(CpuStorage::F16(v)) => Some(v.as_mut_ptr() as usize as u64),
                Storage::Cpu(CpuStorage::BF16(v)) => Some(v.as_mut_ptr() as usize as u64),
                Storage::Cpu(CpuStorage::F32(_)) => None,
            }
        };
        if let Some(a) = unique(self) {
            return Ok(a);
        }
        *self = crate::ops::layout::gpu::strided_copy(self)?;
        unique(self).ok_or_else(|| Error::Device {
            op,
            msg: "a fresh device copy is not uniquely owned".into(),
        })
    }

    /// The address of element 0 of this host tensor's storage, whatever its layout (for the
    /// strided-copy kernel on Emu, which indexes the storage with the view's offset and strides).
    pub(crate) fn host_storage_ptr(&self, op: &'static str) -> Result<*mut std::ffi::c_void> {
        Ok(match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => v.as_ptr() as *mut std::ffi::c_void,
            Storage::Cpu(CpuStorage::F16(v)) => v.as_ptr() as *mut std::ffi::c_void,
            Storage::Cpu(CpuStorage::BF16(v)) => v.as_ptr() as *mut std::ffi::c_void,
            Storage::Cuda(_) => return Err(self.on_device_error(op)),
        })
    }

    /// Element offset of this view in its storage.
    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    /// This host tensor relabelled as living on `device` (Cpu or Emu: both keep host memory).
    pub(crate) fn on_host_device(self, device: Device) -> Tensor {
        debug_assert!(
            matches!(*self.storage, Storage::Cpu(_)) && !matches!(device, Device::Cuda(_))
        );
        self.placed(device)
    }

    fn on_device_error(&self, op: &'static str) -> Error {
        Error::Device {
            op,
            msg: format!(
                "the data is in {} memory; copy it to the host with to_device(Device::Cpu)",
                self.device
            ),
        }
    }

    /// The device storage of a Cuda tensor and the element offset of this view in it (for
    /// kernel launchers); `None` for host tensors.
    pub fn cuda_storage(&self) -> Option<(&CudaStorage, usize)> {
        match &*self.storage {
            Storage::Cuda(s) => Some((s, self.offset)),
            Storage::Cpu(_) => None,
        }
    }

    /// A contiguous Cuda tensor of `shape` owning `storage` (for op outputs).
    pub fn from_cuda(storage: CudaStorage, shape: &[usize]) -> Result<Tensor> {
        if storage.len() != shape.iter().product::<usize>() {
            return Err(Error::shape(
                "Tensor::from_cuda",
                format!("{} elements do not fill shape {shape:?}", storage.len()),
            ));
        }
        Ok(Tensor {
            device: Device::Cuda(storage.backend().ordinal()),
            storage: Arc::new(Storage::Cuda(storage)),
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
            emu_lease: None,
        })
    }

    /// Mutable elements, copying the storage first if it is shared or this is a view.
    pub fn f32s_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        if self.dtype() != DType::F32 {
            return Err(Error::DType {
                op,
                got: self.dtype(),
                expected: "f32",
            });
        }
        if let Storage::Cuda(_) = &*self.storage {
            return Err(self.on_device_error(op));
        }
        if !self.is_contiguous()
            || self.offset != 0
            || self.storage_len() != self.numel()
            || Arc::get_mut(&mut self.storage).is_none()
        {
            // Shared or a view: write to a fresh copy (copy-on-write). Host code writing host
            // memory (Cpu, or Emu's), so a host gather.
            *self = self.host_gather();
        }
        // host code rewriting an Emu tensor: its data comes to the host and goes back
        self.meter(Direction::Download);
        self.meter(Direction::Upload);
        match Arc::get_mut(&mut self.storage) {
            Some(Storage::Cpu(CpuStorage::F32(v))) => Ok(&mut v[..]),
            _ => unreachable!("a fresh f32 host copy is unique"),
        }
    }

    /// Elements of the underlying storage (shared by all views of it).
    pub(crate) fn storage_len(&self) -> usize {
        match &*self.storage {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    /// For the infallible readers of a Cuda tensor: [`Tensor::cuda_to_host`], panicking only when
    /// the device fails.
    fn host_copy(&self, op: &str) -> Tensor {
        self.cuda_to_host().unwrap_or_else(|e| {
            panic!(
                "{op}: copying a {} tensor to the host failed: {e}",
                self.device
            )
        })
    }

    /// A Cuda tensor's elements as a contiguous host tensor (device Cpu): a view is first made
    /// contiguous on the device by the strided-copy kernel, then only its elements are
    /// downloaded. Only a build without kernels (no PTX) downloads a view's whole storage and
    /// gathers it on the host. Host tensors are returned as they are.
    fn cuda_to_host(&self) -> Result<Tensor> {
        let Storage::Cuda(s) = &*self.storage else {
            return Ok(self.clone());
        };
        if self.is_contiguous() {
            return Ok(Self::from_storage(
                s.download(self.offset, self.numel())?,
                self.shape.clone(),
            ));
        }
        if crate::device::cuda::kernels_built() {
            return self.try_contiguous()?.cuda_to_host();
        }
        let mut t = Self::from_storage(s.download(0, s.len())?, vec![s.len()]);
        t.shape = self.shape.clone();
        t.strides = self.strides.clone();
        t.offset = self.offset;
        Ok(t.host_gather())
    }

    /// A host tensor on `device` (Cpu or Emu) copied to a new Cuda tensor (a view is gathered
    /// on the host first, so only its elements cross).
    fn host_to_cuda(&self, backend: &Arc<CudaBackend>) -> Result<Tensor> {
        let t = if self.is_contiguous() {
            self.clone()
        } else {
            self.host_gather()
        };
        let Storage::Cpu(s) = &*t.storage else {
            unreachable!("host_to_cuda is called on host tensors")
        };
        let storage = CudaStorage::upload(backend, s, t.offset, t.numel())?;
        Tensor::from_cuda(storage, &t.shape)
    }

    /// All elements as f32 in row-major order, whatever the dtype, layout or device (a device
    /// view is made contiguous on the device, then downloaded). `Err` only when a device fails.
    pub fn try_to_vec(&self) -> Result<Vec<f32>> {
        if let Storage::Cuda(_) = &*self.storage {
            return self.cuda_to_host()?.try_to_vec();
        }
        let t = self.try_contiguous()?;
        let n = t.numel();
        let o = t.offset;
        let Storage::Cpu(s) = &*t.storage else {
            unreachable!("host storage")
        };
        t.meter(Direction::Download);
        // Widening f16/bf16 to f32 is exact, so the host does it for every device.
        Ok(match s {
            CpuStorage::F32(v) => v[o..o + n].to_vec(),
            CpuStorage::F16(v) => v[o..o + n].iter().map(|x| x.to_f32()).collect(),
            CpuStorage::BF16(v) => v[o..o + n].iter().map(|x| x.to_f32()).collect(),
        })
    }

    /// How many elements are NaN or ±inf, and the largest magnitude of the finite ones (0 for
    /// an empty tensor): the check behind "non-finite weights" errors. A contiguous f32 host
    /// tensor is read in place; any other is converted (a device tensor downloaded) first.
    pub fn value_stats(&self) -> Result<ValueStats> {
        use rayon::prelude::*;
        let scan = |v: &[f32]| {
            v.par_chunks(1 << 16)
                .map(|c| {
                    c.iter().fold(ValueStats::default(), |mut s, &x| {
                        if x.is_finite() {
                            s.max_abs = s.max_abs.max(x.abs());
                        } else {
                            s.non_finite += 1;
                        }
                        s
                    })
                })
                .reduce(ValueStats::default, |a, b| ValueStats {
                    non_finite: a.non_finite + b.non_finite,
                    max_abs: a.max_abs.max(b.max_abs),
                })
        };
        if self.device == Device::Cpu && self.is_contiguous() {
            if let Storage::Cpu(CpuStorage::F32(v)) = &*self.storage {
                return Ok(scan(&v[self.offset..self.offset + self.numel()]));
            }
        }
        Ok(scan(&self.try_to_vec()?))
    }

    /// [`Tensor::try_to_vec`] for host code and tests: panics only if a device fails.
    pub fn to_vec(&self) -> Vec<f32> {
        self.try_to_vec()
            .unwrap_or_else(|e| panic!("to_vec of a {} tensor: {e}", self.device))
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "Tensor::item",
                format!("expected one element, shape is {:?}", self.shape),
            ));
        }
        Ok(self.try_to_vec()?[0])
    }

    /// Raw little-endian bytes of the contiguous data (for safetensors).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        if let Storage::Cuda(_) = &*self.storage {
            return self.host_copy("to_le_bytes").to_le_bytes();
        }
        let t = self.contiguous();
        let n = t.numel();
        t.meter(Direction::Download);
        match &*t.storage {
            Storage::Cuda(_) => unreachable!("host tensor"),
            Storage::Cpu(CpuStorage::F32(v)) => {
                bytemuck::cast_slice(&v[t.offset..t.offset + n]).to_vec()
            }
            Storage::Cpu(CpuStorage::F16(v)) => {
                bytemuck::cast_slice(&v[t.offset..t.offset + n]).to_vec()
            }
            Storage::Cpu(CpuStorage::BF16(v)) => {
                bytemuck::cast_slice(&v[t.offset..t.offset + n]).to_vec()
            }
        }
    }

    // ---- layout -------------------------------------------------------------------------------

    /// This tensor with row-major contiguous storage, same dtype and device (shares storage when
    /// already contiguous). On Emu and Cuda a view is copied by the strided-copy kernel on its
    /// own storage (`kernels/layout.cu`; views whose dims do not merge to rank ≤ 6 are an `Err`);
    /// on the CPU it is gathered on the host.
    pub fn try_contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        if crate::device::kernel::runs_kernels(self.device) {
            return crate::ops::layout::gpu::strided_copy(self);
        }
        Ok(self.host_gather())
    }

    /// [`Tensor::try_contiguous`] for host code and tests. Panics only if a device fails (a
    /// launch error, or a device view of more than 6 unmergeable dims): library code on paths a
    /// device tensor can reach uses `try_contiguous()?`.
    pub fn contiguous(&self) -> Tensor {
        self.try_contiguous()
            .unwrap_or_else(|e| panic!("contiguous of a {} tensor: {e}", self.device))
    }

    /// A row-major copy of a tensor in host memory (Cpu, or Emu's host-side storage for host
    /// code such as `f32s_mut`), same device label.
    fn host_gather(&self) -> Tensor {
        fn gather<T: Copy>(v: &[T], t: &Tensor) -> Vec<T> {
            let mut out = Vec::with_capacity(t.numel());
            for_each_offset(&t.shape, &t.strides, t.offset, |o| out.push(v[o]));
            out
        }
        let storage = match &*self.storage {
            Storage::Cuda(_) => unreachable!("host_gather is called on host storage"),
            Storage::Cpu(CpuStorage::F32(v)) => CpuStorage::F32(gather(v, self)),
            Storage::Cpu(CpuStorage::F16(v)) => CpuStorage::F16(gather(v, self)),
            Storage::Cpu(CpuStorage::BF16(v)) => CpuStorage::BF16(gather(v, self)),
        };
        Self::from_storage(storage, self.shape.clone()).placed(self.device)
    }

    /// Same elements, new shape (all dims explicit). A view when contiguous, a copy otherwise.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {:?} ({} elements) to {shape}",
                    self.shape,
                    self.numel()
                ),
            ));
        }
        let mut t = self.try_contiguous()?;
        t.strides = contiguous_strides(&shape.0);
        t.shape = shape.0;
        Ok(t)
    }

    /// A view with dims reordered: output dim i is input dim `axes[i]`.
    pub fn permute(&self, axes: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        if axes.len() != self.rank()
            || axes
                .iter()
                .any(|&a| a >= self.rank() || std::mem::replace(&mut seen[a], true))
        {
            return Err(Error::shape(
                "permute",
                format!(
                    "{axes:?} is not a permutation of the dims of {:?}",
                    self.shape
                ),
            ));
        }
        let mut t = self.clone();
        t.shape = axes.iter().map(|&a| self.shape[a]).collect();
        t.strides = axes.iter().map(|&a| self.strides[a]).collect();
        Ok(t)
    }

    /// A view with two dims swapped.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let a = resolve_axis("transpose", a, self.rank())?;
        let b = resolve_axis("transpose", b, self.rank())?;
        let mut axes: Vec<usize> = (0..self.rank()).collect();
        axes.swap(a, b);
        self.permute(&axes)
    }

    /// A view of this tensor repeated to `shape` by numpy broadcasting (no copy): dims are
    /// aligned at the end, a dim of size 1 (or a missing leading dim) is stretched with stride 0,
    /// every other dim must match. `try_contiguous()` of the result materialises the repeat.
    pub fn expand(&self, shape: &[usize]) -> Result<Tensor> {
        let bad = || {
            Error::shape(
                "expand",
                format!("{:?} does not broadcast to {shape:?}", self.shape),
            )
        };
        if shape.len() < self.rank() {
            return Err(bad());
        }
        let pad = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (i, &d) in shape.iter().enumerate().skip(pad) {
            let (own, st) = (self.shape[i - pad], self.strides[i - pad]);
            strides[i] = match own {
                _ if own == d => st,
                1 => 0,
                _ => return Err(bad()),
            };
        }
        let mut t = self.clone();
        t.shape = shape.to_vec();
        t.strides = strides;
        Ok(t)
    }

    /// A view of `len` entries of dim `axis` starting at `start`.
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Tensor> {
        let ax = resolve_axis("narrow", axis, self.rank())?;
        if start
            .checked_add(len)
            .is_none_or(|end| end > self.shape[ax])
        {
            return Err(Error::shape(
                "narrow",
                format!(
                    "{len} entries from {start} exceed dim {ax} (size {}) of {:?}",
                    self.shape[ax], self.shape
                ),
            ));
        }
        let mut t = self.clone();
        t.offset += start * self.strides[ax];
        t.shape[ax] = len;
        Ok(t)
    }

    // ---- conversion ---------------------------------------------------------------------------

    /// This tensor converted to `dtype`, as a contiguous tensor on the same device (this tensor
    /// itself, view or not, when it already is `dtype`):
    /// f32 → f16/bf16 rounds to nearest even (overflow to ±inf), widening is exact, f16 ↔ bf16
    /// goes through f32. On Emu and Cuda a cast kernel does it (`kernels/layout.cu`; a view is
    /// made contiguous by the strided copy first), on the CPU the `half` crate — the same bits
    /// for every non-NaN value.
    pub fn try_to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        if crate::device::kernel::runs_kernels(self.device) {
            return crate::ops::layout::gpu::cast(&self.try_contiguous()?, dtype);
        }
        let t = self.try_contiguous()?;
        let n = t.numel();
        let o = t.offset;
        let Storage::Cpu(s) = &*t.storage else {
            unreachable!("Cpu tensors have host storage")
        };
        let f: Vec<f32> = match s {
            CpuStorage::F32(v) => v[o..o + n].to_vec(),
            CpuStorage::F16(v) => v[o..o + n].iter().map(|x| x.to_f32()).collect(),
            CpuStorage::BF16(v) => v[o..o + n].iter().map(|x| x.to_f32()).collect(),
        };
        let storage = match dtype {
            DType::F32 => CpuStorage::F32(f),
            DType::F16 => CpuStorage::F16(f.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => CpuStorage::BF16(f.iter().map(|&x| bf16::from_f32(x)).collect()),
        };
        Ok(Self::from_storage(storage, t.shape.clone()).placed(self.device))
    }

    /// [`Tensor::try_to_dtype`] for host code and tests. Panics only if a device fails: library
    /// code on paths a device tensor can reach uses `try_to_dtype(..)?`.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        self.try_to_dtype(dtype)
            .unwrap_or_else(|e| panic!("to_dtype of a {} tensor: {e}", self.device))
    }

    /// A contiguous copy on `device`, same dtype. Host-memory devices (Cpu, Emu) share the data
    /// layout; copies to and from a GPU go through the CUDA backend (an `Err`, never a panic,
    /// when it is unavailable).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device {
            return Ok(self.clone());
        }
        device.ensure_available()?;
        let host = match (&*self.storage, device) {
            (Storage::Cpu(_), Device::Cuda(i)) => return self.host_to_cuda(&CudaBackend::get(i)?),
            (Storage::Cpu(_), _) => {
                // Cpu ↔ Emu: a fresh copy of just the view's elements. An Emu view is made
                // contiguous by the device (the strided copy) before it crosses, as on Cuda.
                let t = self.try_contiguous()?;
                if t.storage_id() == self.storage_id() {
                    t.host_gather()
                } else {
                    t
                }
            }
            // GPU → host, or GPU → another GPU through the host.
            (Storage::Cuda(_), _) => self.cuda_to_host()?,
        };
        match device {
            Device::Cpu | Device::Emu => {
                let t = host.placed(device);
                // Cpu ↔ Emu: one copy across the (emulated) bus, counted on the Emu side
                match (self.device, device) {
                    (Device::Cpu, Device::Emu) => t.meter(Direction::Upload),
                    (Device::Emu, _) => self.meter(Direction::Download),
                    _ => {}
                }
                Ok(t)
            }
            Device::Cuda(i) => host.host_to_cuda(&CudaBackend::get(i)?),
        }
    }

    // ---- comparison helpers (tests, benches) --------------------------------------------------

    /// ‖self − reference‖₂ / ‖reference‖₂ accumulated in f64; NaN anywhere gives NaN (never passes).
    pub fn rel_err(&self, reference: &Tensor) -> f64 {
        let a = self.to_vec();
        let b = reference.to_vec();
        if a.len() != b.len() {
            return f64::INFINITY;
        }
        let (mut num, mut den) = (0f64, 0f64);
        for (x, y) in a.iter().zip(&b) {
            let d = *x as f64 - *y as f64;
            num += d * d;
            den += (*y as f64) * (*y as f64);
        }
        if den == 0.0 {
            num.sqrt()
        } else {
            (num / den).sqrt()
        }
    }
}

/// Visit the storage offset of every element of a strided view in row-major order.
pub(crate) fn for_each_offset(
    shape: &[usize],
    strides: &[usize],
    offset: usize,
    mut f: impl FnMut(usize),
) {
    let n: usize = shape.iter().product();
    if n == 0 {
        return;
    }
    let rank = shape.len();
    if rank == 0 {
        f(offset);
        return;
    }
    let mut idx = vec![0usize; rank];
    let mut off = offset;
    let last = rank - 1;
    loop {
        // Inner dim as a tight loop.
        let (len, st) = (shape[last], strides[last]);
        for i in 0..len {
            f(off + i * st);
        }
        // Carry into the outer dims.
        let mut d = last;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            off += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= strides[d] * shape[d];
            idx[d] = 0;
        }
    }
}

/// One standard-normal sample (Ziggurat, `rand_distr`).
pub fn normal(rng: &mut impl Rng) -> f32 {
    rng.sample(rand_distr::StandardNormal)
}
