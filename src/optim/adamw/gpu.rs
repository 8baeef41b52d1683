//! AdamW and gradient-norm clipping on a kernel device (Emu, Cuda): the device state and the
//! launchers of `kernels/adamw.cu`.
//!
//! - The moments of all parameters are one f32 device tensor, `[exp_avg of every slot |
//!   exp_avg_sq of every slot]`, slot i's elements at `offsets[i]` in each half: made once
//!   (zeros by a fill kernel, or one upload of host moments) and read back in one download
//!   (`AdamW::state`).
//! - The launch table — one 64-byte entry per parameter that has a gradient (the addresses of its
//!   value, gradient and moments, numel, first chunk, flags) and the chunk → entry index — is
//!   built on the host and uploaded once, into a buffer made with the state (room for every slot),
//!   as are the norm's per-chunk partials: the optimizer allocates nothing after it is moved
//!   to the device, so its first step allocates what every later step does. Each step collects the current addresses (host
//!   integers; no device access) and rebuilds the table only when one changed. They stay put:
//!   a parameter's gradient keeps its storage across `zero_grad`, and its value is written in
//!   place (src/graph/param.rs); a value that a graph or caller still holds is first copied on
//!   the device (copy-on-write), which moves it and so rebuilds the table.
//! - `clip_grad_norm`: `adamw_grad_sumsq_f32` (f64 partial sums per chunk) then
//!   `adamw_grad_norm_f32` (one block: the norm, returned as a `[]` tensor, and the clip factor,
//!   left in a device buffer). The next `step` passes that buffer's address to `adamw_step_f32`,
//!   which scales the gradients as it reads them; without a clip since the last step it passes
//!   a null pointer (factor 1). No host↔device copy after the first step.

use super::{HostMoments, MomentPrecision, Slot, StepScalars, SCALE_BLOCK};
use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::graph::ValueWrite;
use crate::{DType, Device, Error, Result, Tensor};

const MODULE: &str = "adamw";
/// Elements per chunk: `ADAMW_CHUNK` in kernels/adamw.cu.
pub(crate) const CHUNK: usize = 4096;
/// u64 words per table entry (`AdamWEntry`, 64 bytes).
const ENTRY_WORDS: usize = 8;
/// `ADAMW_DECAY`: the entry's parameter is weight-decayed.
const FLAG_DECAY: u64 = 1;
/// `ADAMW_P_F16`, `ADAMW_P_BF16`: the entry's values are 16-bit (stochastically rounded).
const FLAG_P_F16: u64 = 2;
const FLAG_P_BF16: u64 = 4;

/// Block size of both norm stages and the first stage's grid (`None`: one block per chunk).
/// The norm does not depend on either (tests vary them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct NormLaunch {
    pub threads: u32,
    pub blocks: Option<u32>,
}

impl Default for NormLaunch {
    fn default() -> Self {
        NormLaunch {
            threads: 256,
            blocks: None,
        }
    }
}

pub(super) struct DeviceState {
    device: Device,
    precision: MomentPrecision,
    /// `[2·half]` (at least one element) of the precision's dtype: every slot's exp_avg, then
    /// every slot's exp_avg_sq.
    moments: Tensor,
    offsets: Vec<usize>,
    half: usize,
    /// `F16Scaled`: f32 block scales, slot i's m scales then its v scales from
    /// `scale_offsets[i]`.
    scales: Option<Tensor>,
    scale_offsets: Vec<usize>,
    /// One u64 counter of saturated 16-bit stores (made when any store can saturate: 16-bit
    /// moments or values).
    overflow: Option<DeviceBuf>,
    table: Option<Table>,
    /// The table's words ([`Table`]), sized for every slot having a gradient.
    table_words: DeviceBuf,
    /// One f64 partial sum of squares per chunk (sized for every slot's chunks).
    partials: DeviceBuf,
    /// f32 `[1]`: the clip factor `adamw_grad_norm_f32` wrote, for the next step.
    clip: DeviceBuf,
    /// A clip factor was written since the last step.
    clip_pending: bool,
    /// One f64 word: Σ g² of the last `clip_grad_norm` (written once `clipped`).
    sumsq: DeviceBuf,
    clipped: bool,
}

/// The uploaded launch table and the addresses it was built from.
struct Table {
    /// The moments' address, then (value, gradient) addresses per slot, (0, 0) for a slot
    /// without a gradient.
    key: Vec<u64>,
    /// In `table_words`: `entries` entries of ENTRY_WORDS words, then the chunk → entry index as
    /// u32 pairs.
    entries: usize,
    chunks: usize,
}

/// A slot with a gradient, held for one launch: its gradient (kept alive) and its value's write
/// lock.
struct Held<'s> {
    slot: usize,
    /// The value's dtype (f32, or 16-bit: stochastically rounded).
    dtype: DType,
    grad: Tensor,
    _value: ValueWrite<'s>,
}

fn layout(slots: &[Slot]) -> (Vec<usize>, usize) {
    let mut offsets = Vec::with_capacity(slots.len());
    let mut half = 0;
    for s in slots {
        offsets.push(half);
        half += s.param.value().numel();
    }
    (offsets, half)
}

/// Offsets of each slot's block scales (2 per block of 256) and their total.
fn scale_layout(slots: &[Slot]) -> (Vec<usize>, usize) {
    let mut offsets = Vec::with_capacity(slots.len());
    let mut total = 0;
    for s in slots {
        offsets.push(total);
        total += 2 * s.param.value().numel().div_ceil(SCALE_BLOCK);
    }
    (offsets, total)
}

impl DeviceState {
    fn with_moments(
        slots: &[Slot],
        device: Device,
        precision: MomentPrecision,
        moments: Tensor,
        scales: Option<Tensor>,
    ) -> Result<DeviceState> {
        // One write lock per parameter is held during a launch: a parameter listed twice would
        // wait for itself.
        for (i, a) in slots.iter().enumerate() {
            if let Some(b) = slots[..i].iter().find(|b| b.param.ptr_eq(&a.param)) {
                return Err(Error::Msg(format!(
                    "AdamW on {device}: parameter {} is listed twice",
                    b.param.name()
                )));
            }
        }
        let (offsets, half) = layout(slots);
        let all_chunks: usize = slots
            .iter()
            .map(|s| s.param.value().numel().div_ceil(CHUNK))
            .sum();
        let table_capacity = (slots.len() * ENTRY_WORDS + all_chunks.div_ceil(2)).max(1);
        let saturates = precision != MomentPrecision::F32
            || slots.iter().any(|s| s.param.value().dtype() != DType::F32);
        Ok(DeviceState {
            table_words: DeviceBuf::words(device, table_capacity)?,
            partials: DeviceBuf::words(device, all_chunks.max(1))?,
            device,
            precision,
            moments,
            offsets,
            half,
            scales,
            scale_offsets: scale_layout(slots).0,
            overflow: if saturates {
                Some(DeviceBuf::from_u64(device, &[0])?)
            } else {
                None
            },
            table: None,
            clip: DeviceBuf::f32(device, &[1])?,
            clip_pending: false,
            sumsq: DeviceBuf::words(device, 1)?,
            clipped: false,
        })
    }

    /// Zero moments made on `device` by a kernel (no upload; a cast kernel for 16-bit ones).
    pub(super) fn zeros(
        slots: &[Slot],
        device: Device,
        precision: MomentPrecision,
    ) -> Result<DeviceState> {
        let half = layout(slots).1;
        let moments =
            Tensor::full_on(0.0, [(2 * half).max(1)], device)?.try_to_dtype(precision.dtype())?;
        let scales = match precision {
            MomentPrecision::F16Scaled => Some(Tensor::full_on(
                1.0,
                [scale_layout(slots).1.max(1)],
                device,
            )?),
            _ => None,
        };
        Self::with_moments(slots, device, precision, moments, scales)
    }

    /// The slots' host moments sent to `device` in one upload (two with scales).
    pub(super) fn upload(
        slots: &[Slot],
        device: Device,
        precision: MomentPrecision,
    ) -> Result<DeviceState> {
        let half = layout(slots).1;
        let len = (2 * half).max(1);
        let bad = || Error::Msg("AdamW: host moments do not match the parameters".into());
        let moments = if precision == MomentPrecision::F32 {
            let mut host = Vec::with_capacity(len);
            slots.iter().for_each(|s| host.extend_from_slice(&s.m));
            slots.iter().for_each(|s| host.extend_from_slice(&s.v));
            if host.len() != 2 * half {
                return Err(bad());
            }
            host.resize(len, 0.0);
            Tensor::from_vec(host, [len])?
        } else {
            let mut host: Vec<u16> = Vec::with_capacity(len);
            slots.iter().for_each(|s| host.extend_from_slice(&s.m16));
            slots.iter().for_each(|s| host.extend_from_slice(&s.v16));
            if host.len() != 2 * half {
                return Err(bad());
            }
            host.resize(len, 0);
            if precision == MomentPrecision::F16Scaled {
                Tensor::from_f16(host.into_iter().map(half::f16::from_bits).collect(), [len])?
            } else {
                Tensor::from_bf16(host.into_iter().map(half::bf16::from_bits).collect(), [len])?
            }
        }
        .to_device(device)?;
        let scales = match precision {
            MomentPrecision::F16Scaled => {
                let mut host: Vec<f32> = slots
                    .iter()
                    .flat_map(|s| s.scales.iter().copied())
                    .collect();
                if host.len() != scale_layout(slots).1 {
                    return Err(bad());
                }
                if host.is_empty() {
                    host.push(1.0);
                }
                let n = host.len();
                Some(Tensor::from_vec(host, [n])?.to_device(device)?)
            }
            _ => None,
        };
        Self::with_moments(slots, device, precision, moments, scales)
    }

    /// Saturated 16-bit stores counted on the device so far (one small download; 0 when
    /// nothing can saturate).
    pub(super) fn overflows(&self) -> Result<u64> {
        match &self.overflow {
            Some(b) => Ok(b.to_host_u64()?[0]),
            None => Ok(0),
        }
    }

    pub(super) fn device(&self) -> Device {
        self.device
    }

    /// Every slot's moments on the host as stored (one download, two with scales), and the
    /// device's overflow count.
    pub(super) fn download(&self, slots: &[Slot]) -> Result<(Vec<HostMoments>, u64)> {
        let host = self.moments.to_device(Device::Cpu)?;
        let scales = match &self.scales {
            Some(t) => t.to_device(Device::Cpu)?.to_vec(),
            None => Vec::new(),
        };
        let (f32s, bits) = if self.precision == MomentPrecision::F32 {
            (host.to_vec(), Vec::new())
        } else {
            (Vec::new(), super::bits16(&host))
        };
        let mut out = Vec::with_capacity(slots.len());
        for (i, (s, &o)) in slots.iter().zip(&self.offsets).enumerate() {
            let n = s.param.value().numel();
            let (a, b) = (o..o + n, self.half + o..self.half + o + n);
            out.push(if self.precision == MomentPrecision::F32 {
                HostMoments {
                    m: f32s[a].to_vec(),
                    v: f32s[b].to_vec(),
                    ..Default::default()
                }
            } else {
                let so = self.scale_offsets[i];
                let ns = if self.scales.is_some() {
                    2 * n.div_ceil(SCALE_BLOCK)
                } else {
                    0
                };
                HostMoments {
                    m16: bits[a].to_vec(),
                    v16: bits[b].to_vec(),
                    scales: scales.get(so..so + ns).unwrap_or(&[]).to_vec(),
                    ..Default::default()
                }
            });
        }
        Ok((out, self.overflows()?))
    }

    /// The slots with a gradient, held for a launch, and the table for their current
    /// addresses (rebuilt and uploaded only when one changed).
    fn prepare<'s>(&mut self, slots: &'s [Slot], op: &'static str) -> Result<Vec<Held<'s>>> {
        let mut held = Vec::new();
        let mut key = Vec::with_capacity(1 + 2 * slots.len());
        key.push(self.moments.in_place_addr_any_dtype(op)?);
        for (i, s) in slots.iter().enumerate() {
            let Some(g) = s.param.grad() else {
                key.extend([0, 0]);
                continue;
            };
            let mut value = s.param.write_in_place();
            let (p_shape, p_device) = (value.tensor().shape().to_vec(), value.tensor().device());
            if g.shape() != p_shape {
                return Err(Error::shape(
                    op,
                    format!(
                        "{}: gradient {:?} for a parameter {:?}",
                        s.param.name(),
                        g.shape(),
                        p_shape
                    ),
                ));
            }
            if p_device != self.device || g.device() != self.device {
                return Err(Error::Device {
                    op,
                    msg: format!(
                        "{}: value on {p_device}, gradient on {}, the moments on {}",
                        s.param.name(),
                        g.device(),
                        self.device
                    ),
                });
            }
            let grad = kernel::f32_input(op, &g)?;
            key.extend([value.in_place_addr_any_dtype(op)?, grad.device_addr(op)?]);
            held.push(Held {
                slot: i,
                dtype: value.tensor().dtype(),
                grad,
                _value: value,
            });
        }
        if self.table.as_ref().map(|t| &t.key) != Some(&key) {
            self.table = None;
            let scales = match self.scales.as_mut() {
                Some(t) => Some(t.in_place_addr(op)?),
                None => None,
            };
            self.table = Some(build_table(
                &mut self.table_words,
                &self.offsets,
                self.half,
                self.precision.dtype().size_in_bytes() as u64,
                scales.map(|a| (a, &self.scale_offsets[..])),
                slots,
                &held,
                key,
            )?);
        }
        Ok(held)
    }

    /// Σ g² of the last `clip_grad_norm` in f64 (one download), `None` before the first.
    pub(super) fn last_grad_sumsq(&self) -> Result<Option<f64>> {
        if !self.clipped {
            return Ok(None);
        }
        Ok(Some(f64::from_bits(self.sumsq.to_host_u64()?[0])))
    }

    /// One AdamW update of every slot with a gradient: one launch.
    pub(super) fn step(
        &mut self,
        slots: &[Slot],
        sc: &StepScalars,
        step: u64,
        threads: u32,
    ) -> Result<()> {
        if !(1..=1024).contains(&threads) {
            return Err(Error::Msg(format!("AdamW::step: bad block size {threads}")));
        }
        let held = self.prepare(slots, "AdamW::step")?;
        let t = self.table.as_ref().expect("prepared");
        if t.chunks > 0 {
            let clip = if self.clip_pending {
                KernelArg::Buf(&self.clip)
            } else {
                KernelArg::Null
            };
            let cfg = LaunchConfig {
                grid: (t.chunks as u32, 1, 1),
                block: (threads, 1, 1),
                shared_bytes: 0,
            };
            let name = match self.precision {
                MomentPrecision::F32 => "adamw_step_f32",
                MomentPrecision::F16Scaled => "adamw_step_f16s",
                MomentPrecision::Bf16Sr => "adamw_step_bf16sr",
            };
            let overflow = match self.overflow.as_mut() {
                Some(b) => KernelArg::Out(b),
                None => KernelArg::Null,
            };
            // SAFETY: the table's entries address live storage of their numel elements (the
            // gradients and the values' write locks are held in `held` until after the launch,
            // the moments and scales are ours), and block c touches only chunk c of its entry
            // (and that chunk's block scales); the overflow counter takes integer atomics.
            unsafe {
                kernel::launch(
                    self.device,
                    MODULE,
                    name,
                    cfg,
                    &mut [
                        KernelArg::Buf(&self.table_words),
                        KernelArg::BufAt(&self.table_words, t.entries * ENTRY_WORDS),
                        clip,
                        KernelArg::F32(sc.decay),
                        KernelArg::F32(sc.step_size),
                        KernelArg::F32(sc.bc2_sqrt),
                        KernelArg::F32(sc.b1),
                        KernelArg::F32(sc.b2),
                        KernelArg::F32(sc.eps),
                        KernelArg::I64(step as i64),
                        overflow,
                    ],
                )
            }?;
        }
        self.clip_pending = false;
        drop(held);
        Ok(())
    }

    /// Drop a pending clip factor (a skipped step: its gradients are discarded).
    pub(super) fn discard_clip(&mut self) {
        self.clip_pending = false;
    }

    /// The global L2 norm of the slots' gradients as a `[]` tensor; the factor
    /// `min(1, max_norm / (norm + 1e-6))` stays in device memory for the next step.
    pub(super) fn clip_grad_norm(
        &mut self,
        slots: &[Slot],
        max_norm: f64,
        inv_grad_scale: f64,
        launch: NormLaunch,
    ) -> Result<Tensor> {
        let op = "clip_grad_norm";
        if !(1..=1024).contains(&launch.threads) || launch.blocks == Some(0) {
            return Err(Error::Msg(format!("{op}: bad launch {launch:?}")));
        }
        let held = self.prepare(slots, op)?;
        let DeviceState {
            device,
            table,
            table_words,
            partials,
            clip,
            sumsq,
            ..
        } = self;
        let t = table.as_ref().expect("prepared");
        let block = (launch.threads, 1, 1);
        let grid = launch.blocks.unwrap_or(t.chunks.max(1) as u32);
        // SAFETY: as in `step`; block b writes partials[c] for its chunks c < chunks.
        unsafe {
            kernel::launch(
                *device,
                MODULE,
                "adamw_grad_sumsq_f32",
                LaunchConfig {
                    grid: (grid, 1, 1),
                    block,
                    shared_bytes: 0,
                },
                &mut [
                    KernelArg::Out(partials),
                    KernelArg::Buf(table_words),
                    KernelArg::BufAt(table_words, t.entries * ENTRY_WORDS),
                    KernelArg::I32(t.chunks as i32),
                ],
            )
        }?;
        let mut norm = DeviceBuf::f32(*device, &[])?;
        // SAFETY: one block reads the `chunks` partials and writes one norm and one factor.
        unsafe {
            kernel::launch(
                *device,
                MODULE,
                "adamw_grad_norm_f32",
                LaunchConfig {
                    grid: (1, 1, 1),
                    block,
                    shared_bytes: 0,
                },
                &mut [
                    KernelArg::Out(&mut norm),
                    KernelArg::Out(clip),
                    KernelArg::Out(sumsq),
                    KernelArg::Buf(partials),
                    KernelArg::I32(t.chunks as i32),
                    KernelArg::F64(max_norm),
                    KernelArg::F64(inv_grad_scale),
                ],
            )
        }?;
        self.clip_pending = true;
        self.clipped = true;
        drop(held);
        norm.into_tensor()
    }

    /// ZeRO-1, first half of the clip: Σ g² over the slots' gradients (this rank's shard) as a
    /// `[1]` f32 tensor on the device, for the communicator to sum over the ranks. The same two
    /// reduction kernels as [`DeviceState::clip_grad_norm`] (so the same bits for the shard),
    /// the second with no clip (its factor is discarded), then one cast to f32.
    pub(super) fn shard_grad_sumsq(
        &mut self,
        slots: &[Slot],
        launch: NormLaunch,
    ) -> Result<Tensor> {
        self.clip_grad_norm(slots, f64::INFINITY, 1.0, launch)?;
        self.clip_pending = false;
        let mut out = DeviceBuf::f32(self.device, &[1])?;
        // SAFETY: one thread reads the f64 word `sumsq` and writes one f32.
        unsafe {
            kernel::launch(
                self.device,
                MODULE,
                "adamw_sumsq_as_f32",
                LaunchConfig {
                    grid: (1, 1, 1),
                    block: (1, 1, 1),
                    shared_bytes: 0,
                },
                &mut [KernelArg::Out(&mut out), KernelArg::Buf(&self.sumsq)],
            )
        }?;
        out.into_tensor()
    }

    /// ZeRO-1, second half: the norm (a `[]` tensor) and the pending clip factor from Σ g² of
    /// every rank's shard (`sum_sq`, `[1]` f32 on the device), exactly as `clip_grad_norm`
    /// derives them from its own sum.
    pub(super) fn clip_from_sumsq(
        &mut self,
        sum_sq: &Tensor,
        max_norm: f64,
        inv_grad_scale: f64,
    ) -> Result<Tensor> {
        let op = "clip_from_sumsq";
        if sum_sq.numel() != 1 || sum_sq.device() != self.device {
            return Err(Error::Msg(format!(
                "{op}: Σ g² must be one f32 on {}, got {:?} on {}",
                self.device,
                sum_sq.shape(),
                sum_sq.device()
            )));
        }
        let sum_sq = kernel::f32_input(op, sum_sq)?;
        let mut norm = DeviceBuf::f32(self.device, &[])?;
        // SAFETY: one thread reads one f32 and writes the norm and the factor.
        unsafe {
            kernel::launch(
                self.device,
                MODULE,
                "adamw_clip_from_sumsq_f32",
                LaunchConfig {
                    grid: (1, 1, 1),
                    block: (1, 1, 1),
                    shared_bytes: 0,
                },
                &mut [
                    KernelArg::Out(&mut norm),
                    KernelArg::Out(&mut self.clip),
                    KernelArg::In(&sum_sq),
                    KernelArg::F64(max_norm),
                    KernelArg::F64(inv_grad_scale),
                ],
            )
        }?;
        self.clip_pending = true;
        norm.into_tensor()
    }
}

/// Clamp the f32 value of `p` on a kernel device to `[lo, hi]` in place (`clamp_inplace_f32`).
pub(crate) fn clamp_in_place(p: &crate::Param, lo: f32, hi: f32) -> Result<()> {
    let op = "clamp_in_place";
    let mut value = p.write_in_place();
    let device = value.tensor().device();
    let n = kernel::i32_len(op, value.tensor().numel())?;
    let addr = value.in_place_addr(op)?;
    // SAFETY: addr is the parameter's own storage of n f32 elements, locked by `value`.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            "clamp_inplace_f32",
            LaunchConfig::for_elements(n as usize, 256),
            &mut [
                KernelArg::Addr(addr),
                KernelArg::F32(lo),
                KernelArg::F32(hi),
                KernelArg::I32(n),
            ],
        )
    }
}

/// The launch table of the slots in `held`, written into `words_buf` (one upload): moments of
/// `elem` bytes, and with `scales` (address, per-slot offsets) each entry's block scales.
#[allow(clippy::too_many_arguments)]
fn build_table(
    words_buf: &mut DeviceBuf,
    offsets: &[usize],
    half: usize,
    elem: u64,
    scales: Option<(u64, &[usize])>,
    slots: &[Slot],
    held: &[Held],
    key: Vec<u64>,
) -> Result<Table> {
    let moments = key[0];
    let mut words = Vec::with_capacity(held.len() * ENTRY_WORDS);
    let mut chunk_entry: Vec<u32> = Vec::new();
    for (e, h) in held.iter().enumerate() {
        let n = h.grad.numel();
        let off = offsets[h.slot] as u64;
        let first = chunk_entry.len() as u64;
        chunk_entry.extend(std::iter::repeat_n(e as u32, n.div_ceil(CHUNK)));
        let mut flags = if slots[h.slot].decay { FLAG_DECAY } else { 0 };
        flags |= match h.dtype {
            DType::F16 => FLAG_P_F16,
            DType::BF16 => FLAG_P_BF16,
            DType::F32 => 0,
        };
        let reserved = scales.map_or(0, |(a, so)| a + 4 * so[h.slot] as u64);
        words.extend([
            key[1 + 2 * h.slot],
            key[2 + 2 * h.slot],
            moments + elem * off,
            moments + elem * (half as u64 + off),
            n as u64,
            first,
            flags | (slots[h.slot].id as u64) << 32,
            reserved,
        ]);
    }
    let chunks = chunk_entry.len();
    kernel::i32_len("AdamW", chunks)?;
    if chunk_entry.len() % 2 == 1 {
        chunk_entry.push(0);
    }
    words.extend(
        chunk_entry
            .chunks(2)
            .map(|p| p[0] as u64 | (p[1] as u64) << 32),
    );
    if words.is_empty() {
        words.push(0); // no zero-byte device buffers
    }
    words_buf.write_u64(&words)?;
    Ok(Table {
        key,
        entries: held.len(),
        chunks,
    })
}
