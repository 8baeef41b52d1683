//! `Param`: a named, shared, mutable tensor owned by a model — a trainable weight (with a gradient
//! accumulated in place by backward) or a buffer such as BatchNorm's running statistics.
//!
//! On a kernel device (Emu, Cuda) the value and the gradient keep their storage from step to step,
//! which is what lets the optimizer upload its launch table of addresses once
//! (src/optim/adamw/gpu.rs):
//! - the gradient: `zero_grad` keeps the buffer (nothing is downloaded, nothing zeroed), and the
//!   next first `accumulate_grad` copies into it; later contributions are added in place;
//! - the value: an optimizer writes it in place through [`Param::write_in_place`]. The rule is
//!   the host's copy-on-write (`Param::update`, `Tensor::f32s_mut`): a tensor handle that anyone
//!   else holds — a live graph's saved input, a caller's `value()` — is never changed under them;
//!   the storage is then copied on the device first (and the parameter gets a new address, so a
//!   table built from the old one is rebuilt). Drop graphs and clones before the step to avoid
//!   that copy.

use crate::{Error, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};

#[derive(Clone)]
pub struct Param(Arc<ParamInner>);

struct ParamInner {
    name: String,
    /// Trainable (false for buffers, and for weights a fine-tune locks: `set_requires_grad`).
    requires_grad: AtomicBool,
    value: RwLock<Tensor>,
    grad: RwLock<Option<Tensor>>,
    /// On a kernel device, the gradient storage that `zero_grad` set aside: the next first
    /// contribution is copied into it, so the gradient keeps its address across steps.
    spare_grad: RwLock<Option<Tensor>>,
    /// The contiguous transpose of a 2-D value, made on first request and dropped whenever the
    /// value changes (`transposed`).
    transposed: RwLock<Option<Tensor>>,
    /// The value cast to a 16-bit format (mixed precision's weight copy, [`Param::value_as`]),
    /// made on first request after each change of the value, dropped with it: so a step casts
    /// each f32 master weight once, however often it is used; the copy lives from the step's
    /// first forward use to the optimizer's write (2 bytes per parameter within a step).
    cast: RwLock<Option<Tensor>>,
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Param({}, {:?})", self.0.name, self.value().shape())
    }
}

impl Param {
    /// A trainable parameter.
    pub fn new(name: impl Into<String>, value: Tensor) -> Param {
        Self::build(name.into(), value, true)
    }
    /// A buffer: saved with the model, never given a gradient.
    pub fn buffer(name: impl Into<String>, value: Tensor) -> Param {
        Self::build(name.into(), value, false)
    }
    fn build(name: String, value: Tensor, requires_grad: bool) -> Param {
        Param(Arc::new(ParamInner {
            name,
            requires_grad: AtomicBool::new(requires_grad),
            value: RwLock::new(value),
            grad: RwLock::new(None),
            spare_grad: RwLock::new(None),
            transposed: RwLock::new(None),
            cast: RwLock::new(None),
        }))
    }
    pub fn name(&self) -> &str {
        &self.0.name
    }
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }
    /// Lock (`false`) or unlock a weight: a locked one enters graphs as a constant, so backward
    /// computes nothing for it (nor for anything that depends only on locked weights), and an
    /// optimizer made afterwards keeps no state for it. Set it before building the optimizer.
    pub fn set_requires_grad(&self, on: bool) {
        self.0.requires_grad.store(on, Ordering::Relaxed);
    }
    /// The current value (a cheap shared handle).
    pub fn value(&self) -> Tensor {
        self.0.value.read().expect("param lock").clone()
    }
    /// Replace the value; the shape and the device must stay the same (a value from another
    /// device would silently move this one parameter: use [`Param::to_device`]).
    pub fn set_value(&self, value: Tensor) -> Result<()> {
        let mut v = self.0.value.write().expect("param lock");
        if v.device() != value.device() {
            return Err(Error::Device {
                op: "Param::set_value",
                msg: format!(
                    "{}: a value on {} for a parameter on {} (move it with to_device first)",
                    self.0.name,
                    value.device(),
                    v.device()
                ),
            });
        }
        if v.shape() != value.shape() {
            return Err(Error::shape(
                "Param::set_value",
                format!(
                    "{}: new value {:?} does not match shape {:?}",
                    self.0.name,
                    value.shape(),
                    v.shape()
                ),
            ));
        }
        *v = value;
        self.drop_derived();
        Ok(())
    }
    /// Move the value to `device` (a copy; nothing when it is there already) and drop the
    /// gradient.
    pub fn to_device(&self, device: crate::Device) -> Result<()> {
        let moved = self.value().to_device(device)?;
        *self.0.value.write().expect("param lock") = moved;
        self.drop_derived();
        self.zero_grad();
        *self.0.spare_grad.write().expect("param lock") = None;
        Ok(())
    }

    /// Exclusive access to the value for a kernel that updates its device storage in place (an
    /// optimizer step, the `logit_scale` clamp): holds the value's write lock until dropped (no
    /// one reads a half-updated value or clones it meanwhile) and drops the cached transpose. See
    /// the module notes for the copy-on-write rule [`ValueWrite::in_place_addr`] applies.
    pub(crate) fn write_in_place(&self) -> ValueWrite<'_> {
        let value = self.0.value.write().expect("param lock");
        self.drop_derived();
        ValueWrite { value }
    }

    /// Change the value in place (no copy when nothing else holds its storage, as after a
    /// step's graph is dropped); `f` must keep the shape.
    pub fn update<R>(&self, f: impl FnOnce(&mut Tensor) -> Result<R>) -> Result<R> {
        let mut v = self.0.value.write().expect("param lock");
        let shape = v.shape().to_vec();
        self.drop_derived();
        let r = f(&mut v)?;
        if v.shape() != shape {
            return Err(Error::shape(
                "Param::update",
                format!(
                    "{}: shape changed from {shape:?} to {:?}",
                    self.0.name,
                    v.shape()
                ),
            ));
        }
        Ok(r)
    }

    /// The caches derived from the value (transpose, cast), dropped whenever it changes.
    fn drop_derived(&self) {
        *self.0.transposed.write().expect("param lock") = None;
        *self.0.cast.write().expect("param lock") = None;
    }

    /// The value as a `dtype` tensor: the value itself when it is one, otherwise its cast (round
    /// to nearest), made once per change of the value and kept (see `ParamInner::cast`).
    pub fn value_as(&self, dtype: crate::DType) -> Result<Tensor> {
        let v = self.value();
        if v.dtype() == dtype {
            return Ok(v);
        }
        if let Some(t) = self.0.cast.read().expect("param lock").as_ref() {
            if t.dtype() == dtype && t.device() == v.device() {
                return Ok(t.clone());
            }
        }
        let t = v.try_to_dtype(dtype)?;
        *self.0.cast.write().expect("param lock") = Some(t.clone());
        Ok(t)
    }

    /// The value of a 2-D parameter transposed, contiguous: `W` [out, in] as `Wᵀ` [in, out], the
    /// layout the CPU GEMM reads without repacking (inference projections use it). Made once
    /// and kept until the value changes, so it costs the memory of a second copy meanwhile.
    pub fn transposed(&self) -> Result<Tensor> {
        let v = self.0.value.read().expect("param lock");
        if let Some(t) = self.0.transposed.read().expect("param lock").as_ref() {
            return Ok(t.clone());
        }
        if v.rank() != 2 {
            return Err(Error::shape(
                "Param::transposed",
                format!("{}: {:?} is not 2-D", self.0.name, v.shape()),
            ));
        }
        let t = v.transpose(0, 1)?.try_contiguous()?;
        *self.0.transposed.write().expect("param lock") = Some(t.clone());
        Ok(t)
    }

    /// The gradient accumulated since the last `zero_grad`.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.read().expect("param lock").clone()
    }
    /// Clear the gradient (`grad()` is `None` after). On a kernel device its storage is kept
    /// for the next step's gradient, with no copy and no kernel.
    pub fn zero_grad(&self) {
        let g = self.0.grad.write().expect("param lock").take();
        if let Some(g) = g.filter(|g| crate::device::kernel::runs_kernels(g.device())) {
            *self.0.spare_grad.write().expect("param lock") = Some(g);
        }
    }
    /// On a kernel device, give this parameter gradient storage of its own now (zeros of the
    /// value's shape, kept as the storage the next gradient is written into), as every step after
    /// the first finds it. A trainer does this before its first step so that the first step
    /// allocates exactly what every later one does: without it the first step adopts its
    /// gradients from the backward's temporaries, the second holds them from its start, and the
    /// caching allocator needs more blocks in the second step than the first. Nothing on the CPU.
    pub fn reserve_grad(&self) -> Result<()> {
        let v = self.value();
        if !crate::device::kernel::runs_kernels(v.device())
            || self.0.grad.read().expect("param lock").is_some()
        {
            return Ok(());
        }
        let mut spare = self.0.spare_grad.write().expect("param lock");
        if spare.as_ref().is_none_or(|g| g.shape() != v.shape()) {
            *spare = Some(Tensor::full_on(0.0, v.shape().to_vec(), v.device())?);
        }
        Ok(())
    }
    /// `grad += g` in place (the first contribution is stored as is — on a kernel device copied
    /// into the storage `zero_grad` kept, when nothing else holds that).
    pub fn accumulate_grad(&self, g: Tensor) -> Result<()> {
        let mut slot = self.0.grad.write().expect("param lock");
        match slot.as_mut() {
            None => {
                let spare = self.0.spare_grad.write().expect("param lock").take();
                *slot = Some(match spare {
                    Some(mut buf) if buf.shape() == g.shape() => {
                        if crate::ops::binary::gpu::write_into(&mut buf, &g, false)? {
                            buf
                        } else {
                            g
                        }
                    }
                    _ => g,
                });
            }
            Some(acc) => crate::ops::binary::add_assign(acc, &g)?,
        }
        Ok(())
    }
    /// Same parameter object (not just equal values).
    pub fn ptr_eq(&self, other: &Param) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A parameter's value held for an in-place device update ([`Param::write_in_place`]).
pub(crate) struct ValueWrite<'a> {
    value: RwLockWriteGuard<'a, Tensor>,
}

impl ValueWrite<'_> {
    pub(crate) fn tensor(&self) -> &Tensor {
        &self.value
    }
    /// The device address a kernel may write the value at. When anything else holds the value's
    /// storage it is first copied on the device (copy-on-write): the parameter then owns fresh
    /// storage at a new address and the other holders keep the old value.
    pub(crate) fn in_place_addr(&mut self, op: &'static str) -> Result<u64> {
        self.value.in_place_addr(op)
    }
    /// [`ValueWrite::in_place_addr`] for a value that may also be f16 or bf16.
    pub(crate) fn in_place_addr_any_dtype(&mut self, op: &'static str) -> Result<u64> {
        self.value.in_place_addr_any_dtype(op)
    }
}
