//! AdamW (Loshchilov & Hutter) exactly as `torch.optim.AdamW` computes it:
//! `p ← p·(1 − lr·wd)`; `m ← β₁m + (1−β₁)g`; `v ← β₂v + (1−β₂)g²`;
//! `p ← p − (lr/(1−β₁ᵗ))·m / (√v/√(1−β₂ᵗ) + ε)`.
//! Weight decay follows open_clip's groups: none for parameters with fewer than 2 dims, biases,
//! LayerNorm/BatchNorm gains (`ln`/`bn` in the name) and `logit_scale`. Note that this is
//! open_clip_train's actual rule: the 2-D token and positional embeddings *are* decayed (the 1-D
//! class embedding is not); training parity with open_clip depends on it.
//!
//! Where the moments live follows the parameters. On the CPU they are host vectors and the update
//! is the host loop below — the reference. When the parameters live on a kernel device (Emu,
//! Cuda) the moments are device memory and [`AdamW::step`] is one fused multi-tensor kernel
//! launch, [`AdamW::clip_grad_norm`] two more, with nothing copied between host and device
//! after the first step ([`gpu`], `kernels/adamw.cu`); the arithmetic is the same, bit for bit.

pub(super) mod gpu;

use crate::{Device, Error, Param, Result, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// open_clip's defaults for ViTs: lr 5e-4, β (0.9, 0.98), ε 1e-6, weight decay 0.2.
    fn default() -> Self {
        AdamWConfig {
            lr: 5e-4,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.2,
        }
    }
}

/// Whether open_clip decays this parameter.
pub fn decays(name: &str, rank: usize) -> bool {
    !(rank < 2
        || name.contains("bn")
        || name.contains("ln")
        || name.contains("bias")
        || name.contains("logit_scale"))
}

struct Slot {
    param: Param,
    decay: bool,
    /// The host moments (empty while they live on a device: [`AdamW::device`]).
    m: Vec<f32>,
    v: Vec<f32>,
}

pub struct AdamW {
    pub config: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
    /// The moments and the launch table on a kernel device, when the parameters live there.
    device: Option<gpu::DeviceState>,
    norm_launch: gpu::NormLaunch,
}

/// The f32 scalars of step `t` at learning rate `lr`, computed in f64 (as torch computes them
/// from Python floats) and rounded once: shared by the host loop and the kernel, so both compute
/// the same bits.
#[derive(Clone, Copy, Debug)]
struct StepScalars {
    /// `1 − lr·wd` (decayed parameters only)
    decay: f32,
    /// `lr / (1 − β₁ᵗ)`
    step_size: f32,
    /// `√(1 − β₂ᵗ)`
    bc2_sqrt: f32,
    b1: f32,
    b2: f32,
    eps: f32,
}

impl StepScalars {
    fn new(c: &AdamWConfig, step: u64, lr: f64) -> StepScalars {
        let bc1 = 1.0 - c.beta1.powi(step as i32);
        let bc2 = 1.0 - c.beta2.powi(step as i32);
        StepScalars {
            decay: (1.0 - lr * c.weight_decay) as f32,
            step_size: (lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            b1: c.beta1 as f32,
            b2: c.beta2 as f32,
            eps: c.eps as f32,
        }
    }
}

impl AdamW {
    /// Over the trainable parameters in `params` (buffers are skipped). The moments start as zeros
    /// where the parameters are: on a kernel device they are made there (no upload).
    pub fn new(params: &[Param], config: AdamWConfig) -> AdamW {
        let mut opt = Self::new_on_host(params, config);
        if let Ok(d) = opt.params_device() {
            if crate::device::kernel::runs_kernels(d) {
                if let Ok(state) = gpu::DeviceState::zeros(&opt.slots, d) {
                    opt.slots
                        .iter_mut()
                        .for_each(|s| (s.m, s.v) = (Vec::new(), Vec::new()));
                    opt.device = Some(state);
                }
                // else: left on the host; `step` reports the problem when it moves them
            }
        }
        opt
    }

    fn new_on_host(params: &[Param], config: AdamWConfig) -> AdamW {
        let slots = params
            .iter()
            .filter(|p| p.requires_grad())
            .map(|p| {
                let n = p.value().numel();
                Slot {
                    decay: decays(p.name(), p.value().rank()),
                    param: p.clone(),
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            })
            .collect();
        AdamW {
            config,
            slots,
            step: 0,
            device: None,
            norm_launch: gpu::NormLaunch::default(),
        }
    }

    /// Move the moments to `device` (one copy of all of them; nothing when they are there). The
    /// step moves them by itself to wherever the parameters are, so this only chooses when that
    /// copy happens (`Trainer::to_device` calls it with the model's move).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        if self.moments_device() == device {
            return Ok(());
        }
        device.ensure_available()?;
        if let Some(state) = self.device.take() {
            let (m, v) = match state.download(&self.slots) {
                Ok(mv) => mv,
                Err(e) => {
                    self.device = Some(state);
                    return Err(e);
                }
            };
            for (s, (m, v)) in self.slots.iter_mut().zip(m.into_iter().zip(v)) {
                (s.m, s.v) = (m, v);
            }
        }
        if crate::device::kernel::runs_kernels(device) {
            let state = gpu::DeviceState::upload(&self.slots, device)?;
            self.slots
                .iter_mut()
                .for_each(|s| (s.m, s.v) = (Vec::new(), Vec::new()));
            self.device = Some(state);
        }
        Ok(())
    }

    /// Where the moments are.
    pub fn moments_device(&self) -> Device {
        self.device.as_ref().map_or(Device::Cpu, |d| d.device())
    }

    /// The one device of the trainable parameters (Cpu when there are none).
    fn params_device(&self) -> Result<Device> {
        let mut devices = self.slots.iter().map(|s| s.param.value().device());
        let first = devices.next().unwrap_or(Device::Cpu);
        match devices.find(|&d| d != first) {
            None => Ok(first),
            Some(other) => Err(Error::Device {
                op: "AdamW::step",
                msg: format!(
                    "the parameters are on {first} and {other}: move the model to one device"
                ),
            }),
        }
    }

    /// The launch geometry of the gradient norm's kernels on a kernel device: `threads` per block
    /// (both stages; default 256) and the first stage's grid (`None`: one block per chunk). For
    /// tests — the norm is bitwise the same for every choice (kernels/adamw.cu).
    pub fn set_norm_launch(&mut self, threads: u32, blocks: Option<u32>) {
        self.norm_launch = gpu::NormLaunch { threads, blocks };
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr` from the gradients accumulated in the parameters
    /// (parameters without a gradient are left alone, as PyTorch does), then clears them. On a
    /// kernel device the gradients are those scaled by the factor of the last
    /// [`AdamW::clip_grad_norm`] since the previous step, if any.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let device = self.params_device()?;
        self.to_device(device)?;
        if let Some(state) = self.device.as_mut() {
            let sc = StepScalars::new(&self.config, self.step + 1, lr);
            state.step(&self.slots, &sc)?;
            self.step += 1;
            for s in &self.slots {
                s.param.zero_grad();
            }
            return Ok(());
        }
        self.step += 1;
        let c = self.config;
        let StepScalars {
            decay: _,
            step_size,
            bc2_sqrt,
            b1,
            b2,
            eps,
        } = StepScalars::new(&c, self.step, lr);
        for s in &mut self.slots {
            let Some(g) = s.param.grad() else { continue };
            let p_shape = s.param.value().shape().to_vec();
            if g.shape() != p_shape {
                return Err(Error::shape(
                    "AdamW::step",
                    format!(
                        "{}: gradient {:?} for a parameter {:?}",
                        s.param.name(),
                        g.shape(),
                        p_shape
                    ),
                ));
            }
            let g = g.try_contiguous()?;
            let gs = g.f32s("AdamW::step")?;
            let decay = if s.decay {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            let (m, v) = (&mut s.m, &mut s.v);
            s.param.update(|p| {
                let ps = p.f32s_mut("AdamW::step")?;
                ps.par_chunks_mut(4096)
                    .zip(m.par_chunks_mut(4096))
                    .zip(v.par_chunks_mut(4096).zip(gs.par_chunks(4096)))
                    .for_each(|((p, m), (v, g))| {
                        for i in 0..p.len() {
                            p[i] *= decay;
                            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                            let denom = v[i].sqrt() / bc2_sqrt + eps;
                            p[i] -= step_size * m[i] / denom;
                        }
                    });
                Ok(())
            })?;
            s.param.zero_grad();
        }
        Ok(())
    }

    /// Clip the gradients to a global L2 norm of at most `max_norm` (torch's
    /// `clip_grad_norm_` rule, as [`clip_grad_norm`]) and return the norm before clipping as a
    /// `[]` tensor on the parameters' device, not read back (the trainer reads it with the loss).
    /// On the CPU it is [`clip_grad_norm`] over the optimizer's parameters. On a kernel device the
    /// gradients are not rewritten: the factor stays in device memory and the next
    /// [`AdamW::step`] applies it, so call this right before `step`, as one calls torch's.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<Tensor> {
        let device = self.params_device()?;
        self.to_device(device)?;
        match self.device.as_mut() {
            Some(state) => state.clip_grad_norm(&self.slots, max_norm, self.norm_launch),
            None => {
                let params: Vec<Param> = self.slots.iter().map(|s| s.param.clone()).collect();
                Tensor::scalar(clip_grad_norm(&params, max_norm)? as f32).to_device(device)
            }
        }
    }

    /// The sum of squares of the gradients that the last [`AdamW::clip_grad_norm`] on a kernel
    /// device computed, in f64 (one small download; for diagnostics and tests of its bitwise
    /// reproducibility — the norm itself is f32). `None` on the CPU and before the first clip.
    pub fn last_grad_sumsq(&self) -> Result<Option<f64>> {
        match &self.device {
            Some(state) => state.last_grad_sumsq(),
            None => Ok(None),
        }
    }

    /// The optimizer state as named host tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`,
    /// `step`), for checkpoints: the same on every device, so a checkpoint written on one loads
    /// on any other. Moments on a device come back in one download (an error if the device
    /// fails during it).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let device_moments = match &self.device {
            Some(d) => Some(d.download(&self.slots)?),
            None => None,
        };
        let mut out = vec![("step".to_string(), Tensor::scalar(self.step as f32))];
        for (i, s) in self.slots.iter().enumerate() {
            let shape = s.param.value().shape().to_vec();
            let (m, v) = match &device_moments {
                Some((m, v)) => (m[i].clone(), v[i].clone()),
                None => (s.m.clone(), s.v.clone()),
            };
            out.push((
                format!("{}.exp_avg", s.param.name()),
                Tensor::from_vec(m, shape.clone())?,
            ));
            out.push((
                format!("{}.exp_avg_sq", s.param.name()),
                Tensor::from_vec(v, shape)?,
            ));
        }
        Ok(out)
    }

    /// Restore what `state` wrote (on any device); every slot must be present with its shape.
    /// Moments on a device go up in one upload.
    pub fn load_state(&mut self, state: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let step = state
            .get("step")
            .ok_or_else(|| Error::Msg("optimizer state lacks `step`".into()))?;
        let mut loaded = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let n = s.param.value().numel();
            let mut mv = [Vec::new(), Vec::new()];
            for (suffix, dst) in ["exp_avg", "exp_avg_sq"].into_iter().zip(&mut mv) {
                let key = format!("{}.{suffix}", s.param.name());
                let t = state
                    .get(&key)
                    .ok_or_else(|| Error::Msg(format!("optimizer state lacks `{key}`")))?;
                if t.numel() != n {
                    return Err(Error::shape(
                        "AdamW::load_state",
                        format!("{key}: {:?} for {n} values", t.shape()),
                    ));
                }
                *dst = t.try_to_vec()?;
            }
            loaded.push(mv);
        }
        self.step = step.item()? as u64;
        for (s, [m, v]) in self.slots.iter_mut().zip(loaded) {
            (s.m, s.v) = (m, v);
        }
        if let Some(d) = self.device.take() {
            // the host vectors hold the loaded moments now: send them to where the old ones were
            self.to_device(d.device())?;
        }
        Ok(())
    }
}

/// Scale all gradients so that their global L2 norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1). Returns the
/// norm before clipping.
pub fn clip_grad_norm(params: &[Param], max_norm: f64) -> Result<f64> {
    let grads: Vec<(Param, Tensor)> = params
        .iter()
        .filter_map(|p| p.grad().map(|g| (p.clone(), g)))
        .collect();
    let norm =
        crate::ops::reduce::global_l2_norm(&grads.iter().map(|(_, g)| g).collect::<Vec<_>>())?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (p, g) in grads {
            p.zero_grad();
            p.accumulate_grad(crate::ops::unary::scale(&g, coef as f32)?)?;
        }
    }
    Ok(norm)
}
