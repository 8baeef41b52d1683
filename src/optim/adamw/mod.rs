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
//!
//! 16-bit storage (DESIGN §11), the arithmetic unchanged and f32 on every device:
//! - [`MomentPrecision`] (`AdamWConfig::moments`): m and v in f32 (the default), in f16 with one
//!   f32 power-of-two scale per block of 256 elements chosen each step from the block's largest
//!   magnitude ([`MomentPrecision::F16Scaled`]), or in bf16 with stochastic rounding
//!   ([`MomentPrecision::Bf16Sr`]). The host loop below is the reference of the kernels'
//!   16-bit paths too, bit for bit (same scales, the same random bits: [`super::sround`]).
//! - A parameter whose value is f16 or bf16 is updated in 16 bits: the new weight computed in
//!   f32 and stored with stochastic rounding (its gradient is f32). Saturations are counted
//!   ([`AdamW::overflows`]).

pub(super) mod gpu;

use super::sround::{self, SrSeed};
use crate::{DType, Device, Error, Param, Result, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// How Adam's moments are stored (the update is computed in f32 whatever the storage).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MomentPrecision {
    /// f32, as torch (8 bytes per parameter).
    #[default]
    F32,
    /// f16 with one f32 scale per block of [`SCALE_BLOCK`] elements and moment, a power of two
    /// chosen each step so that the block's largest magnitude lands in [2¹⁴, 2¹⁵) (4 bytes per
    /// parameter + 8 per 256).
    F16Scaled,
    /// bf16 with stochastic rounding (4 bytes per parameter).
    Bf16Sr,
}

impl MomentPrecision {
    /// The 16-bit storage to use when moments must be 16-bit (pure_fp16 / pure_bf16), chosen by
    /// measurement (kernels/adamw.cu's top comment gives the numbers).
    pub fn half_default() -> MomentPrecision {
        MomentPrecision::F16Scaled
    }
    /// The moments' element type.
    pub fn dtype(self) -> DType {
        match self {
            MomentPrecision::F32 => DType::F32,
            MomentPrecision::F16Scaled => DType::F16,
            MomentPrecision::Bf16Sr => DType::BF16,
        }
    }
}

/// Elements per moment scale block of [`MomentPrecision::F16Scaled`] (`ADAMW_SCALE_BLOCK`).
pub const SCALE_BLOCK: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// How m and v are stored (f32 by default).
    pub moments: MomentPrecision,
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
            moments: MomentPrecision::F32,
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
    /// The tensor id of the stochastic rounding's random bits (sr_key's): the slot's index in
    /// the optimizer, or in the unsharded optimizer for a ZeRO-1 shard ([`AdamW::new_shard`]),
    /// so that a weight's rounding never depends on how the parameters were sharded.
    id: u32,
    /// The host moments (empty while they live on a device: [`AdamW::device`]).
    m: Vec<f32>,
    v: Vec<f32>,
    /// The host moments as 16-bit bits under [`MomentPrecision::F16Scaled`] / `Bf16Sr` (then
    /// `m`, `v` are empty), and the f16 scales: m's blocks, then v's.
    m16: Vec<u16>,
    v16: Vec<u16>,
    scales: Vec<f32>,
}

/// One slot's moments on the host, as stored (see [`Slot`]).
#[derive(Clone, Debug, Default)]
pub(super) struct HostMoments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub m16: Vec<u16>,
    pub v16: Vec<u16>,
    pub scales: Vec<f32>,
}

impl HostMoments {
    /// Zero moments of `n` elements (scales 1).
    fn zeros(n: usize, precision: MomentPrecision) -> HostMoments {
        match precision {
            MomentPrecision::F32 => HostMoments {
                m: vec![0.0; n],
                v: vec![0.0; n],
                ..Default::default()
            },
            MomentPrecision::F16Scaled => HostMoments {
                m16: vec![0; n],
                v16: vec![0; n],
                scales: vec![1.0; 2 * n.div_ceil(SCALE_BLOCK)],
                ..Default::default()
            },
            MomentPrecision::Bf16Sr => HostMoments {
                m16: vec![0; n],
                v16: vec![0; n],
                ..Default::default()
            },
        }
    }
}

impl Slot {
    fn take_host(&mut self) -> HostMoments {
        HostMoments {
            m: std::mem::take(&mut self.m),
            v: std::mem::take(&mut self.v),
            m16: std::mem::take(&mut self.m16),
            v16: std::mem::take(&mut self.v16),
            scales: std::mem::take(&mut self.scales),
        }
    }
    fn set_host(&mut self, h: HostMoments) {
        (self.m, self.v, self.m16, self.v16, self.scales) = (h.m, h.v, h.m16, h.v16, h.scales);
    }
    fn host(&self) -> HostMoments {
        HostMoments {
            m: self.m.clone(),
            v: self.v.clone(),
            m16: self.m16.clone(),
            v16: self.v16.clone(),
            scales: self.scales.clone(),
        }
    }
}

/// The f16 block scale of a block whose largest magnitude is `amax` (`f16_block_scale`): the
/// power of two 2^k with amax·2⁻ᵏ in [2¹⁴, 2¹⁵), k ≥ −126; 1 for 0, inf, NaN.
pub(super) fn f16_block_scale(amax: f32) -> f32 {
    let b = amax.to_bits();
    if amax.is_nan() || amax <= 0.0 || b >= 0x7f80_0000 {
        return 1.0;
    }
    let k = ((b >> 23) as i32 - 127 - 14).max(-126);
    f32::from_bits(((k + 127) as u32) << 23)
}

/// 1 / a block scale, exact (`f16_block_inv`).
fn f16_block_inv(scale: f32) -> f32 {
    f32::from_bits((254 - (scale.to_bits() >> 23)) << 23)
}

/// f32 moments of a block quantised to f16 with the block's scale (what a step stores).
fn quantize_f16_block(x: &[f32], q: &mut [u16]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = f16_block_scale(amax);
    let inv = f16_block_inv(scale);
    for (q, x) in q.iter_mut().zip(x) {
        *q = f16::from_f32(x * inv).to_bits();
    }
    scale
}

pub struct AdamW {
    pub config: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
    /// The moments and the launch table on a kernel device, when the parameters live there.
    device: Option<gpu::DeviceState>,
    norm_launch: gpu::NormLaunch,
    /// Saturations of 16-bit stores counted by host steps (a device counts its own).
    host_overflows: u64,
    /// Threads per block of the device step (256; tests vary it).
    step_threads: u32,
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
                if let Ok(state) = gpu::DeviceState::zeros(&opt.slots, d, config.moments) {
                    opt.slots.iter_mut().for_each(|s| drop(s.take_host()));
                    opt.device = Some(state);
                }
                // else: left on the host; `step` reports the problem when it moves them
            }
        }
        opt
    }

    /// A ZeRO-1 shard's optimizer: over `params[i]` for each `i` in `shard` (indices into the
    /// whole list, ascending), each slot's stochastic-rounding tensor id being that index — the
    /// id it has in `AdamW::new(params, …)` when every one of `params` is trainable, so a
    /// sharded run rounds its 16-bit weights with the unsharded run's bits.
    pub fn new_shard(params: &[Param], shard: &[usize], config: AdamWConfig) -> Result<AdamW> {
        if let Some(&i) = shard.iter().find(|&&i| i >= params.len()) {
            return Err(Error::Msg(format!(
                "AdamW::new_shard: index {i} of {} parameters",
                params.len()
            )));
        }
        let mine: Vec<Param> = shard.iter().map(|&i| params[i].clone()).collect();
        if mine.iter().any(|p| !p.requires_grad()) {
            return Err(Error::Msg(
                "AdamW::new_shard: a shard of trainable parameters only".into(),
            ));
        }
        let mut opt = Self::new(&mine, config);
        for (s, &i) in opt.slots.iter_mut().zip(shard) {
            s.id = i as u32;
        }
        Ok(opt)
    }

    fn new_on_host(params: &[Param], config: AdamWConfig) -> AdamW {
        let slots = params
            .iter()
            .filter(|p| p.requires_grad())
            .enumerate()
            .map(|(id, p)| {
                let n = p.value().numel();
                let mut s = Slot {
                    id: id as u32,
                    decay: decays(p.name(), p.value().rank()),
                    param: p.clone(),
                    m: Vec::new(),
                    v: Vec::new(),
                    m16: Vec::new(),
                    v16: Vec::new(),
                    scales: Vec::new(),
                };
                s.set_host(HostMoments::zeros(n, config.moments));
                s
            })
            .collect();
        AdamW {
            config,
            slots,
            step: 0,
            device: None,
            norm_launch: gpu::NormLaunch::default(),
            host_overflows: 0,
            step_threads: 256,
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
            let (hosts, over) = match state.download(&self.slots) {
                Ok(h) => h,
                Err(e) => {
                    self.device = Some(state);
                    return Err(e);
                }
            };
            for (s, h) in self.slots.iter_mut().zip(hosts) {
                s.set_host(h);
            }
            self.host_overflows += over;
        }
        if crate::device::kernel::runs_kernels(device) {
            let state = gpu::DeviceState::upload(&self.slots, device, self.config.moments)?;
            self.slots.iter_mut().for_each(|s| drop(s.take_host()));
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

    /// Threads per block of the step kernel on a kernel device (default 256). For tests — the
    /// update is bitwise the same for every block size (kernels/adamw.cu).
    pub fn set_step_threads(&mut self, threads: u32) {
        self.step_threads = threads;
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
            state.step(&self.slots, &sc, self.step + 1, self.step_threads)?;
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
        for s in self.slots.iter_mut() {
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
            if c.moments != MomentPrecision::F32 || s.param.value().dtype() != DType::F32 {
                let sc = StepScalars::new(&c, self.step, lr);
                let tensor_id = s.id;
                self.host_overflows +=
                    host_step_16(s, gs, &sc, decay, c.moments, self.step, tensor_id)?;
                s.param.zero_grad();
                continue;
            }
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
        self.unscale_clip_grad_norm(max_norm, 1.0)
    }

    /// [`AdamW::clip_grad_norm`] of gradients that are `1 / inv_grad_scale` times the true ones
    /// (a loss scaler's, `inv_grad_scale` a power of two): the norm returned and the clip are the
    /// true gradients', and the gradients the step uses are unscaled as well as clipped (on a
    /// kernel device by the same pending factor, no extra pass). `max_norm = ∞` only unscales.
    /// A non-finite norm means an overflowed gradient: skip the step ([`AdamW::skip_step`]).
    pub fn unscale_clip_grad_norm(&mut self, max_norm: f64, inv_grad_scale: f64) -> Result<Tensor> {
        let device = self.params_device()?;
        self.to_device(device)?;
        match self.device.as_mut() {
            Some(state) => {
                state.clip_grad_norm(&self.slots, max_norm, inv_grad_scale, self.norm_launch)
            }
            None => {
                let params: Vec<Param> = self.slots.iter().map(|s| s.param.clone()).collect();
                let norm = unscale_clip_grad_norm(&params, max_norm, inv_grad_scale)?;
                Tensor::scalar(norm as f32).to_device(device)
            }
        }
    }

    /// ZeRO-1's [`AdamW::unscale_clip_grad_norm`]: this optimizer holds one rank's shard of the
    /// parameters and their gradients, so the clip's Σ g² is this shard's, summed over the
    /// ranks by `sum_over_ranks` (an all-reduce of a `[1]` f32 tensor; it receives it on the
    /// parameters' device, or the CPU for a rank that owns nothing, and may return it anywhere).
    /// The norm returned and the factor are then the global ones, the same on every rank, and
    /// on a kernel device the factor waits in device memory for the next step as after
    /// `clip_grad_norm`. Every rank must call it (it is a collective). The shard's Σ travels as
    /// f32: each shard's rounding and each f32 addition over the ranks cost ≤ 2^-24 of Σ, half
    /// that of the norm (which is then rounded to f32 as a one-process clip rounds it), and the
    /// result has the same bits on every rank.
    pub fn sharded_unscale_clip_grad_norm(
        &mut self,
        max_norm: f64,
        inv_grad_scale: f64,
        sum_over_ranks: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let device = self.params_device()?;
        self.to_device(device)?;
        match self.device.as_mut() {
            Some(state) => {
                let mine = state.shard_grad_sumsq(&self.slots, self.norm_launch)?;
                let all = sum_over_ranks(&mine)?.to_device(device)?;
                state.clip_from_sumsq(&all, max_norm, inv_grad_scale)
            }
            None => {
                let grads: Vec<(Param, Tensor)> = self
                    .slots
                    .iter()
                    .filter_map(|s| s.param.grad().map(|g| (s.param.clone(), g)))
                    .collect();
                let norm = crate::ops::reduce::global_l2_norm(
                    &grads.iter().map(|(_, g)| g).collect::<Vec<_>>(),
                )?;
                let mine = Tensor::from_vec(vec![(norm * norm) as f32], [1])?;
                let all = sum_over_ranks(&mine)?.to_device(Device::Cpu)?.item()? as f64;
                let (norm, factor) = norm_and_clip(all.sqrt(), max_norm, inv_grad_scale);
                if factor != 1.0 {
                    for (p, g) in grads {
                        p.zero_grad();
                        p.accumulate_grad(crate::ops::unary::scale(&g, factor as f32)?)?;
                    }
                }
                Tensor::scalar(norm as f32).to_device(device)
            }
        }
    }

    /// Discard the accumulated gradients without an update (a loss scaler's skipped step: a
    /// gradient overflowed). The step count, and so the bias corrections and the stochastic
    /// rounding's bits, stay where they were, as torch's `GradScaler` leaves the optimizer.
    pub fn skip_step(&mut self) {
        if let Some(state) = self.device.as_mut() {
            state.discard_clip();
        }
        for s in &self.slots {
            s.param.zero_grad();
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

    /// Finite values that 16-bit stores (stochastically rounded weights, bf16 moments) saturated
    /// at the format's largest finite value, over all steps so far (on a device: one small
    /// download). 0 with f32 weights and moments.
    pub fn overflows(&self) -> Result<u64> {
        let dev = match &self.device {
            Some(d) => d.overflows()?,
            None => 0,
        };
        Ok(self.host_overflows + dev)
    }

    /// The optimizer state as named host tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`,
    /// `step`), for checkpoints: the same on every device, so a checkpoint written on one loads
    /// on any other. The moments as stored: f32; f16 plus `{name}.exp_avg.scale` and
    /// `{name}.exp_avg_sq.scale` (f32, one per block of 256) under `F16Scaled`; bf16 under
    /// `Bf16Sr`. Moments on a device come back in one download (an error if the device fails
    /// during it).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let device_moments = match &self.device {
            Some(d) => Some(d.download(&self.slots)?.0),
            None => None,
        };
        let mut out = vec![("step".to_string(), Tensor::scalar(self.step as f32))];
        for (i, s) in self.slots.iter().enumerate() {
            let shape = s.param.value().shape().to_vec();
            let h = match &device_moments {
                Some(hs) => hs[i].clone(),
                None => s.host(),
            };
            let name = s.param.name();
            let nblk = h.scales.len() / 2;
            let (m, v) = match self.config.moments {
                MomentPrecision::F32 => (
                    Tensor::from_vec(h.m, shape.clone())?,
                    Tensor::from_vec(h.v, shape)?,
                ),
                MomentPrecision::F16Scaled => {
                    let t = |b: Vec<u16>| {
                        Tensor::from_f16(b.into_iter().map(f16::from_bits).collect(), shape.clone())
                    };
                    (t(h.m16)?, t(h.v16)?)
                }
                MomentPrecision::Bf16Sr => {
                    let t = |b: Vec<u16>| {
                        Tensor::from_bf16(
                            b.into_iter().map(bf16::from_bits).collect(),
                            shape.clone(),
                        )
                    };
                    (t(h.m16)?, t(h.v16)?)
                }
            };
            out.push((format!("{name}.exp_avg"), m));
            out.push((format!("{name}.exp_avg_sq"), v));
            if self.config.moments == MomentPrecision::F16Scaled {
                out.push((
                    format!("{name}.exp_avg.scale"),
                    Tensor::from_vec(h.scales[..nblk].to_vec(), [nblk])?,
                ));
                out.push((
                    format!("{name}.exp_avg_sq.scale"),
                    Tensor::from_vec(h.scales[nblk..].to_vec(), [nblk])?,
                ));
            }
        }
        Ok(out)
    }

    /// Restore what `state` wrote (on any device); every slot must be present with its shape.
    /// Moments stored as this optimizer stores them are taken bit for bit; others (a checkpoint
    /// of another [`MomentPrecision`]) are converted: dequantised to f32 and stored as this
    /// optimizer stores them (round to nearest; new block scales). Moments on a device go up in
    /// one upload.
    pub fn load_state(&mut self, state: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let step = state
            .get("step")
            .ok_or_else(|| Error::Msg("optimizer state lacks `step`".into()))?;
        let mut loaded = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let n = s.param.value().numel();
            let mut mv = Vec::new();
            for suffix in ["exp_avg", "exp_avg_sq"] {
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
                let scale = state.get(&format!("{key}.scale"));
                if let Some(sc) = scale {
                    if sc.numel() != n.div_ceil(SCALE_BLOCK) {
                        return Err(Error::shape(
                            "AdamW::load_state",
                            format!("{key}.scale: {:?} for {n} values", sc.shape()),
                        ));
                    }
                }
                mv.push((t.clone(), scale.cloned()));
            }
            loaded.push(loaded_moments(self.config.moments, &mv[0], &mv[1])?);
        }
        self.step = step.item()? as u64;
        for (s, h) in self.slots.iter_mut().zip(loaded) {
            s.set_host(h);
        }
        if let Some(d) = self.device.take() {
            // the host vectors hold the loaded moments now: send them to where the old ones were
            self.to_device(d.device())?;
        }
        Ok(())
    }
}

/// The bits of a contiguous host 16-bit tensor.
fn bits16(t: &Tensor) -> Vec<u16> {
    t.to_le_bytes()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// A loaded moment pair (tensor, optional per-block scales) as `precision` stores it.
fn loaded_moments(
    precision: MomentPrecision,
    m: &(Tensor, Option<Tensor>),
    v: &(Tensor, Option<Tensor>),
) -> Result<HostMoments> {
    let host = |t: &Tensor| t.to_device(Device::Cpu)?.try_contiguous();
    // exactly as stored: take the bits
    let exact = |(t, sc): &(Tensor, Option<Tensor>)| {
        t.dtype() == precision.dtype() && sc.is_some() == (precision == MomentPrecision::F16Scaled)
    };
    if precision != MomentPrecision::F32 && exact(m) && exact(v) {
        let mut scales = Vec::new();
        for (_, sc) in [m, v] {
            if let Some(sc) = sc {
                scales.extend(host(sc)?.try_to_dtype(DType::F32)?.try_to_vec()?);
            }
        }
        return Ok(HostMoments {
            m16: bits16(&host(&m.0)?),
            v16: bits16(&host(&v.0)?),
            scales,
            ..Default::default()
        });
    }
    // otherwise through f32 values
    let values = |(t, sc): &(Tensor, Option<Tensor>)| -> Result<Vec<f32>> {
        let mut x = host(t)?.try_to_dtype(DType::F32)?.try_to_vec()?;
        if let Some(sc) = sc {
            let sc = host(sc)?.try_to_dtype(DType::F32)?.try_to_vec()?;
            for (b, s) in x.chunks_mut(SCALE_BLOCK).zip(sc) {
                b.iter_mut().for_each(|x| *x *= s);
            }
        }
        Ok(x)
    };
    let (mf, vf) = (values(m)?, values(v)?);
    Ok(match precision {
        MomentPrecision::F32 => HostMoments {
            m: mf,
            v: vf,
            ..Default::default()
        },
        MomentPrecision::Bf16Sr => HostMoments {
            m16: mf.iter().map(|&x| bf16::from_f32(x).to_bits()).collect(),
            v16: vf.iter().map(|&x| bf16::from_f32(x).to_bits()).collect(),
            ..Default::default()
        },
        MomentPrecision::F16Scaled => {
            let n = mf.len();
            let (mut m16, mut v16) = (vec![0u16; n], vec![0u16; n]);
            let mut scales = Vec::with_capacity(2 * n.div_ceil(SCALE_BLOCK));
            for (x, q) in [(&mf, &mut m16), (&vf, &mut v16)] {
                for (xb, qb) in x.chunks(SCALE_BLOCK).zip(q.chunks_mut(SCALE_BLOCK)) {
                    scales.push(quantize_f16_block(xb, qb));
                }
            }
            HostMoments {
                m16,
                v16,
                scales,
                ..Default::default()
            }
        }
    })
}

/// One element's update in f32, in torch's order (`adamw_element` in kernels/adamw.cu): m and v
/// updated, the new weight returned. Rust never contracts `a * b + c` into an FMA, so this is
/// the kernel's explicitly rounded sequence.
#[inline(always)]
fn adam_element(g: f32, p: f32, m: &mut f32, v: &mut f32, d: f32, s: &StepScalars) -> f32 {
    let pi = p * d;
    *m = s.b1 * *m + (1.0 - s.b1) * g;
    *v = s.b2 * *v + (1.0 - s.b2) * g * g;
    let denom = v.sqrt() / s.bc2_sqrt + s.eps;
    pi - s.step_size * *m / denom
}

/// The host step of one slot with 16-bit moments and/or a 16-bit weight (the reference of the
/// kernels' 16-bit paths): per block of 256 elements, the moments loaded (dequantised), the
/// update in f32, the moments stored as `precision` stores them, the weight stored in its own
/// dtype (stochastic rounding for 16 bits). Returns the number of saturated stores.
fn host_step_16(
    s: &mut Slot,
    g: &[f32],
    sc: &StepScalars,
    decay: f32,
    precision: MomentPrecision,
    step: u64,
    tensor_id: u32,
) -> Result<u64> {
    const B: usize = SCALE_BLOCK;
    let value = s.param.value();
    let p_dtype = value.dtype();
    let p: Vec<f32> = value.try_to_dtype(DType::F32)?.try_to_vec()?;
    drop(value);
    let n = p.len();
    let seed = |stream| {
        SrSeed {
            step,
            tensor_id,
            stream,
        }
        .key()
    };
    let (km, kv) = (
        seed(sround::STREAM_EXP_AVG),
        seed(sround::STREAM_EXP_AVG_SQ),
    );
    let mut pn = vec![0f32; n];
    let mut over = 0u64;
    match precision {
        MomentPrecision::F32 => {
            pn.par_chunks_mut(B)
                .zip(p.par_chunks(B).zip(g.par_chunks(B)))
                .zip(s.m.par_chunks_mut(B).zip(s.v.par_chunks_mut(B)))
                .for_each(|((pn, (p, g)), (m, v))| {
                    for j in 0..pn.len() {
                        pn[j] = adam_element(g[j], p[j], &mut m[j], &mut v[j], decay, sc);
                    }
                });
        }
        MomentPrecision::Bf16Sr => {
            over += pn
                .par_chunks_mut(B)
                .zip(p.par_chunks(B).zip(g.par_chunks(B)))
                .zip(s.m16.par_chunks_mut(B).zip(s.v16.par_chunks_mut(B)))
                .enumerate()
                .map(|(b, ((pn, (p, g)), (m, v)))| {
                    let mut over = 0u64;
                    for j in 0..pn.len() {
                        let i = (b * B + j) as u64;
                        let (mut mi, mut vi) = (
                            bf16::from_bits(m[j]).to_f32(),
                            bf16::from_bits(v[j]).to_f32(),
                        );
                        pn[j] = adam_element(g[j], p[j], &mut mi, &mut vi, decay, sc);
                        let (mb, mo) = sround::bf16_bits(mi, sround::bits(km, i));
                        let (vb, vo) = sround::bf16_bits(vi, sround::bits(kv, i));
                        (m[j], v[j]) = (mb, vb);
                        over += mo as u64 + vo as u64;
                    }
                    over
                })
                .sum::<u64>();
        }
        MomentPrecision::F16Scaled => {
            let nblk = n.div_ceil(B);
            let (ms, vs) = s.scales.split_at_mut(nblk);
            pn.par_chunks_mut(B)
                .zip(p.par_chunks(B).zip(g.par_chunks(B)))
                .zip(s.m16.par_chunks_mut(B).zip(s.v16.par_chunks_mut(B)))
                .zip(ms.par_iter_mut().zip(vs.par_iter_mut()))
                .for_each(|(((pn, (p, g)), (m, v)), (msc, vsc))| {
                    let (mut mf, mut vf) = ([0f32; B], [0f32; B]);
                    for j in 0..pn.len() {
                        // exact: the scales are powers of two
                        let (mut mi, mut vi) = (
                            f16::from_bits(m[j]).to_f32() * *msc,
                            f16::from_bits(v[j]).to_f32() * *vsc,
                        );
                        pn[j] = adam_element(g[j], p[j], &mut mi, &mut vi, decay, sc);
                        (mf[j], vf[j]) = (mi, vi);
                    }
                    *msc = quantize_f16_block(&mf[..pn.len()], m);
                    *vsc = quantize_f16_block(&vf[..pn.len()], v);
                });
        }
    }
    let new = match p_dtype {
        DType::F32 => Tensor::from_vec(pn, s.param.value().shape().to_vec())?,
        dtype => {
            let (b, o) = sround::round_slice(
                &pn,
                dtype,
                SrSeed {
                    step,
                    tensor_id,
                    stream: sround::STREAM_PARAM,
                },
            )?;
            over += o;
            let shape = s.param.value().shape().to_vec();
            match dtype {
                DType::F16 => Tensor::from_f16(b.into_iter().map(f16::from_bits).collect(), shape)?,
                _ => Tensor::from_bf16(b.into_iter().map(bf16::from_bits).collect(), shape)?,
            }
        }
    };
    s.param.update(|t| {
        *t = new;
        Ok(())
    })?;
    Ok(over)
}

/// Scale all gradients so that their global L2 norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1). Returns the
/// norm before clipping.
pub fn clip_grad_norm(params: &[Param], max_norm: f64) -> Result<f64> {
    unscale_clip_grad_norm(params, max_norm, 1.0)
}

/// [`clip_grad_norm`] of gradients that are `1 / inv_grad_scale` times the true ones (a loss
/// scaler's; a power of two): the norm and the clip are the true gradients', and the gradients
/// are left unscaled and clipped, by one factor — the arithmetic of the kernels
/// (`adamw_grad_norm_f32`), so every device computes the same bits.
pub fn unscale_clip_grad_norm(params: &[Param], max_norm: f64, inv_grad_scale: f64) -> Result<f64> {
    let grads: Vec<(Param, Tensor)> = params
        .iter()
        .filter_map(|p| p.grad().map(|g| (p.clone(), g)))
        .collect();
    let norm =
        crate::ops::reduce::global_l2_norm(&grads.iter().map(|(_, g)| g).collect::<Vec<_>>())?;
    let (norm, factor) = norm_and_clip(norm, max_norm, inv_grad_scale);
    if factor != 1.0 {
        for (p, g) in grads {
            p.zero_grad();
            p.accumulate_grad(crate::ops::unary::scale(&g, factor as f32)?)?;
        }
    }
    Ok(norm)
}

/// The norm and the clip factor from √Σ g² of (scaled) gradients: torch's `clip_grad_norm_`
/// rule on the true gradients, the factor also unscaling — the arithmetic of the kernels'
/// `norm_and_clip` (kernels/adamw.cu), in f64.
fn norm_and_clip(root_sum_sq: f64, max_norm: f64, inv_grad_scale: f64) -> (f64, f64) {
    let norm = root_sum_sq * inv_grad_scale;
    let coef = max_norm / (norm + 1e-6);
    (norm, if coef < 1.0 { coef } else { 1.0 } * inv_grad_scale)
}
