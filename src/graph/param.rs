//! `Param`: a named, shared, mutable tensor owned by a model — a trainable weight (with a gradient
//! accumulated in place by backward) or a buffer such as BatchNorm's running statistics.

use crate::{Error, Result, Tensor};
use std::sync::{Arc, RwLock};

#[derive(Clone)]
pub struct Param(Arc<ParamInner>);

struct ParamInner {
    name: String,
    requires_grad: bool,
    value: RwLock<Tensor>,
    grad: RwLock<Option<Tensor>>,
    /// The contiguous transpose of a 2-D value, made on first request and dropped whenever the
    /// value changes (`transposed`).
    transposed: RwLock<Option<Tensor>>,
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
            requires_grad,
            value: RwLock::new(value),
            grad: RwLock::new(None),
            transposed: RwLock::new(None),
        }))
    }
    pub fn name(&self) -> &str {
        &self.0.name
    }
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
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
        *self.0.transposed.write().expect("param lock") = None;
        Ok(())
    }
    /// Move the value to `device` (a copy; nothing when it is there already) and drop the
    /// gradient.
    pub fn to_device(&self, device: crate::Device) -> Result<()> {
        let moved = self.value().to_device(device)?;
        *self.0.value.write().expect("param lock") = moved;
        *self.0.transposed.write().expect("param lock") = None;
        self.zero_grad();
        Ok(())
    }

    /// Change the value in place (no copy when nothing else holds its storage, as after a
    /// step's graph is dropped); `f` must keep the shape.
    pub fn update<R>(&self, f: impl FnOnce(&mut Tensor) -> Result<R>) -> Result<R> {
        let mut v = self.0.value.write().expect("param lock");
        let shape = v.shape().to_vec();
        *self.0.transposed.write().expect("param lock") = None;
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
    pub fn zero_grad(&self) {
        *self.0.grad.write().expect("param lock") = None;
    }
    /// `grad += g` in place (the first contribution is stored as is).
    pub fn accumulate_grad(&self, g: Tensor) -> Result<()> {
        let mut slot = self.0.grad.write().expect("param lock");
        match slot.as_mut() {
            None => *slot = Some(g),
            Some(acc) => crate::ops::binary::add_assign(acc, &g)?,
        }
        Ok(())
    }
    /// Same parameter object (not just equal values).
    pub fn ptr_eq(&self, other: &Param) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
