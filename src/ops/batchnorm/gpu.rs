//! Launchers of `kernels/batchnorm.cu` on Emu or Cuda: per-channel reductions with one block of
//! 256 threads per channel (fixed order, no atomics), elementwise kernels with one thread per
//! element. Activations (x, y, dy, dx) f32, f16 or bf16 — the kernels named by their dtype —
//! with the statistics, weight, bias and their gradients f32.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::dist::Communicator;
use crate::{Result, Tensor};

const MODULE: &str = "batchnorm";

fn per_channel(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (c.max(1) as u32, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    }
}

fn dims(x: &Tensor) -> (usize, usize, usize) {
    let s = x.shape();
    (s[0], s[1], s[2] * s[3])
}

/// `y = (x − mean)·rstd·w + b` per channel.
pub(crate) fn apply(
    x: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    w: &Tensor,
    b: &Tensor,
) -> Result<Tensor> {
    let op = "batch_norm2d";
    let device = kernel::kernel_device(op, &[x, mean, rstd, w, b])?;
    let x = kernel::typed_input(op, x)?;
    let [mean, rstd, w, b] = [mean, rstd, w, b].map(|t| kernel::f32_input(op, t));
    let (mean, rstd, w, b) = (mean?, rstd?, w?, b?);
    let (_, c, hw) = dims(&x);
    let total = kernel::i32_len(op, x.numel())?;
    let mut y = DeviceBuf::like(&x)?;
    let name = format!("batchnorm_apply_{}", kernel::dtype_suffix(x.dtype()));
    // SAFETY: x, y hold total elements; the [C] operands are indexed by (i / hw) % c < c.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            LaunchConfig::for_elements(x.numel(), 256),
            &mut [
                KernelArg::Out(&mut y),
                KernelArg::In(&x),
                KernelArg::In(&mean),
                KernelArg::In(&rstd),
                KernelArg::In(&w),
                KernelArg::In(&b),
                KernelArg::I32(c as i32),
                KernelArg::I32(hw as i32),
                KernelArg::I32(total),
            ],
        )
    }?;
    y.into_tensor()
}

/// Training forward: `(y, batch mean, biased batch var, rstd)`, statistics `[C]` on x's device.
pub(crate) fn train_forward(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let op = "batch_norm2d";
    let xc = kernel::typed_input(op, x)?;
    let (n, c, hw) = dims(&xc);
    kernel::i32_len(op, xc.numel())?;
    let device = xc.device();
    let mut mean = DeviceBuf::f32(device, &[c])?;
    let mut var = DeviceBuf::f32(device, &[c])?;
    let mut rstd = DeviceBuf::f32(device, &[c])?;
    // SAFETY: x holds n·c·hw elements, the statistics c; block ch touches channel ch only.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &format!("batchnorm_stats_{}", kernel::dtype_suffix(xc.dtype())),
            per_channel(c),
            &mut [
                KernelArg::Out(&mut mean),
                KernelArg::Out(&mut var),
                KernelArg::Out(&mut rstd),
                KernelArg::In(&xc),
                KernelArg::I32(n as i32),
                KernelArg::I32(c as i32),
                KernelArg::I32(hw as i32),
                KernelArg::F32(eps),
            ],
        )
    }?;
    let (mean, var, rstd) = (mean.into_tensor()?, var.into_tensor()?, rstd.into_tensor()?);
    let y = apply(&xc, &mean, &rstd, w, b)?;
    Ok((y, mean, var, rstd))
}

/// One per-channel launch (grid C, block 256) of `name` with `args`.
///
/// # Safety
/// As `kernel::launch`: `args` must be the kernel's, x holding n·c·hw elements and every [C]
/// operand c (block ch reads and writes channel ch only).
unsafe fn per_channel_launch(
    device: crate::Device,
    name: &str,
    c: usize,
    args: &mut [KernelArg],
) -> Result<()> {
    // SAFETY: the caller's contract.
    unsafe { kernel::launch(device, MODULE, name, per_channel(c), args) }
}

/// SyncBatchNorm's training forward on a kernel device: the statistics of every rank's values
/// of `group`, all on the device — this rank's Σx per channel, all-reduced; μ = Σx/m (m = the
/// values per channel over all ranks) and this rank's Σ(x − μ)², all-reduced; σ² = Σ/m, rstd —
/// then y with them. Returns `(y, mean, biased var, rstd, m)`.
///
/// Arithmetic: as one process's `stats` kernel (f32 sums in the same per-channel block order,
/// μ and σ² by the same f32 division), except that each sum is this rank's partial plus the
/// others' (the in-process communicator adds them in f64 and rounds once; NCCL in f32). The CPU
/// SyncBatchNorm accumulates in f64 and crosses the communicator in f32: against it an f32
/// sum over m values is off by ≲ √m·2⁻²⁴ relative typically (m·2⁻²⁴ at worst), so μ and σ²
/// agree to ~1e-6 relative for the m ≲ 10⁴ of the tests (σ² also inherits μ's error squared,
/// negligible), which is what tests/data_parallel.rs holds them to (relative to the
/// statistics' norms).
pub(crate) fn sync_train_forward(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
    group: &dyn Communicator,
) -> Result<(Tensor, Tensor, Tensor, Tensor, f64)> {
    let op = "batch_norm2d";
    let xc = kernel::typed_input(op, x)?;
    let (n, c, hw) = dims(&xc);
    kernel::i32_len(op, xc.numel())?;
    let device = xc.device();
    let suffix = kernel::dtype_suffix(xc.dtype());
    let m_all = (n * hw * group.world_size()) as f64;
    let mut sum = DeviceBuf::f32(device, &[c])?;
    // SAFETY: x holds n·c·hw elements, the [C] operands c, in the kernel's argument order.
    unsafe {
        per_channel_launch(
            device,
            &format!("batchnorm_sums_{suffix}"),
            c,
            &mut [
                KernelArg::Out(&mut sum),
                KernelArg::In(&xc),
                KernelArg::I32(n as i32),
                KernelArg::I32(c as i32),
                KernelArg::I32(hw as i32),
            ],
        )
    }?;
    let sum = kernel::f32_input(op, &group.all_reduce_sum(&sum.into_tensor()?)?)?;
    let mut mean = DeviceBuf::f32(device, &[c])?;
    let mut sq = DeviceBuf::f32(device, &[c])?;
    // SAFETY: x holds n·c·hw elements, the [C] operands c, in the kernel's argument order.
    unsafe {
        per_channel_launch(
            device,
            &format!("batchnorm_centred_sums_{suffix}"),
            c,
            &mut [
                KernelArg::Out(&mut mean),
                KernelArg::Out(&mut sq),
                KernelArg::In(&xc),
                KernelArg::In(&sum),
                KernelArg::F32(m_all as f32),
                KernelArg::I32(n as i32),
                KernelArg::I32(c as i32),
                KernelArg::I32(hw as i32),
            ],
        )
    }?;
    let sq = kernel::f32_input(op, &group.all_reduce_sum(&sq.into_tensor()?)?)?;
    let mut var = DeviceBuf::f32(device, &[c])?;
    let mut rstd = DeviceBuf::f32(device, &[c])?;
    // SAFETY: the [C] buffers hold c elements; thread ch < c touches element ch only.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            "batchnorm_finish_stats_f32",
            LaunchConfig::for_elements(c, 256),
            &mut [
                KernelArg::Out(&mut var),
                KernelArg::Out(&mut rstd),
                KernelArg::In(&sq),
                KernelArg::F32(m_all as f32),
                KernelArg::F32(eps),
                KernelArg::I32(c as i32),
            ],
        )
    }?;
    let (mean, var, rstd) = (mean.into_tensor()?, var.into_tensor()?, rstd.into_tensor()?);
    let y = apply(&xc, &mean, &rstd, w, b)?;
    Ok((y, mean, var, rstd, m_all))
}

/// `(dx, dw, db)`; `training` selects the batch-statistics formula for dx. With SyncBatchNorm's
/// `group` (training only) dx uses Σdy and Σdy·x̂ over every rank's values (all-reduced on the
/// device) and their count; dw and db stay this rank's sums, as on the CPU (the step
/// all-reduces parameter gradients afterwards).
pub(crate) fn backward(
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    training: bool,
    group: Option<&dyn Communicator>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "batch_norm2d backward";
    let device = kernel::kernel_device(op, &[x, w, mean, rstd, dy])?;
    let t = crate::ops::same_dtype(op, &[("input", x), ("gradient", dy)])?;
    let (x, dy) = (kernel::typed_input(op, x)?, kernel::typed_input(op, dy)?);
    let [w, mean, rstd] = [w, mean, rstd].map(|t| kernel::f32_input(op, t));
    let (w, mean, rstd) = (w?, mean?, rstd?);
    let suffix = kernel::dtype_suffix(t);
    let (n, c, hw) = dims(&x);
    let total = kernel::i32_len(op, x.numel())?;
    let mut sum_dy = DeviceBuf::f32(device, &[c])?;
    let mut sum_dyx = DeviceBuf::f32(device, &[c])?;
    // SAFETY: x holds n·c·hw elements, the [C] operands c, in the kernel's argument order.
    unsafe {
        per_channel_launch(
            device,
            &format!("batchnorm_bwd_sums_{suffix}"),
            c,
            &mut [
                KernelArg::Out(&mut sum_dy),
                KernelArg::Out(&mut sum_dyx),
                KernelArg::In(&dy),
                KernelArg::In(&x),
                KernelArg::In(&mean),
                KernelArg::In(&rstd),
                KernelArg::I32(n as i32),
                KernelArg::I32(c as i32),
                KernelArg::I32(hw as i32),
            ],
        )
    }?;
    let (sum_dy, sum_dyx) = (sum_dy.into_tensor()?, sum_dyx.into_tensor()?);
    let group = group.filter(|_| training);
    let (g_dy, g_dyx, m) = match group {
        Some(g) => {
            // one collective for both sums, as the CPU SyncBatchNorm does ([Σdy; Σdy·x̂])
            let both = g.all_reduce_sum(&crate::ops::layout::concat(&[&sum_dy, &sum_dyx], 0)?)?;
            let part = |k: usize| -> Result<Tensor> {
                kernel::f32_input(op, &both.narrow(0, k * c, c)?.try_contiguous()?)
            };
            (part(0)?, part(1)?, n * hw * g.world_size())
        }
        None => (sum_dy.clone(), sum_dyx.clone(), n * hw),
    };
    let mut dx = DeviceBuf::like(&x)?;
    // SAFETY: as above; elementwise over total elements.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &format!("batchnorm_bwd_dx_{suffix}"),
            LaunchConfig::for_elements(x.numel(), 256),
            &mut [
                KernelArg::Out(&mut dx),
                KernelArg::In(&dy),
                KernelArg::In(&x),
                KernelArg::In(&mean),
                KernelArg::In(&rstd),
                KernelArg::In(&w),
                KernelArg::In(&g_dy),
                KernelArg::In(&g_dyx),
                KernelArg::I32(c as i32),
                KernelArg::I32(hw as i32),
                KernelArg::I32(total),
                KernelArg::F32(1.0 / m.max(1) as f32),
                KernelArg::I32(training as i32),
            ],
        )
    }?;
    Ok((dx.into_tensor()?, sum_dyx, sum_dy))
}
