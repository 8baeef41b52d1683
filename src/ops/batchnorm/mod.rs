//! BatchNorm2d over NCHW with PyTorch semantics: per channel c,
//! `y = (x − μ_c)/√(σ²_c + eps) · weight_c + bias_c`.
//!
//! Training: μ and σ² are the batch mean and biased variance over (N, H, W), computed in f64
//! (two passes); the running statistics are updated in place as
//! `rm ← (1−m)·rm + m·μ`, `rv ← (1−m)·rv + m·σ²·n/(n−1)` (unbiased, n = N·H·W), and backward goes
//! through the batch statistics:
//! `dx = w·rstd·(dy − mean(dy) − x̂·mean(dy·x̂))`, `dweight = Σ dy·x̂`, `dbias = Σ dy`
//! (means and sums per channel over (N, H, W), `x̂ = (x − μ)·rstd`, `rstd = 1/√(σ² + eps)`).
//! Eval: μ and σ² are the running statistics, the op is a per-channel affine map, and backward is
//! `dx = w·rstd·dy` with the same weight and bias gradients. Both modes save x, weight, μ, rstd.
//!
//! Activations (x, y, dy, dx) may be f16/bf16 on every device: statistics, running statistics,
//! weight, bias and their gradients stay f32, and y and dx are rounded once to the activations'
//! dtype (kernels: f32 arithmetic; the CPU widens x and dy and computes as for f32). A 16-bit
//! weight and bias (weights kept only in 16 bits) are widened, dw and db rounded back to them.
//!
//! SyncBatchNorm (`Graph::sync_batch_norm`, training only): μ and σ² over every rank's values
//! (per-channel Σx, then Σ(x − μ)², each all-reduced), and dx through Σdy and Σdy·x̂ over every
//! rank; dw and db stay the rank's own sums. On the CPU in f64 ([`sync_stats`]), on Emu/Cuda with
//! the batchnorm kernels and the communicator on the device (`gpu::sync_train_forward`).

pub mod cpu;
pub(crate) mod gpu;

use crate::device::kernel::runs_kernels;
use crate::dist::Communicator;
use crate::graph::{Graph, Op, Param, Var};
use crate::ops::{cpu_input, cpu_input_f32, same_device};
use crate::{bail_shape, DType, Result, Tensor};

const OP: &str = "batch_norm2d";

pub struct BatchNorm2dOp<'m> {
    training: bool,
    /// SyncBatchNorm's group (`Graph::sync_batch_norm`): backward sums over every rank.
    group: Option<&'m dyn Communicator>,
    /// The activations' dtype (x, y), that of dx.
    dtype: DType,
    /// The weight's and bias's dtype, that of dw and db (computed in f32).
    pdtype: DType,
}

/// SyncBatchNorm's statistics (CPU): per-channel Σx over every rank's batch, then Σ(x − μ)²
/// about the global mean (the same two passes as one process; partial sums cross the
/// communicator as f32). Returns (mean, biased var, values per channel over all ranks).
fn sync_stats(
    group: &dyn Communicator,
    x: &[f32],
    c: usize,
    hw: usize,
) -> Result<(Vec<f64>, Vec<f64>, f64)> {
    let reduce = |v: Vec<f64>| -> Result<Vec<f64>> {
        let t = Tensor::from_f32(f32v(&v), &[v.len()]);
        Ok(group
            .all_reduce_sum(&t)?
            .to_vec()
            .iter()
            .map(|&s| s as f64)
            .collect())
    };
    let m = (x.len() / (c * hw).max(1) * hw * group.world_size()) as f64;
    let mean: Vec<f64> = reduce(cpu::sums(x, c, hw))?
        .into_iter()
        .map(|s| s / m)
        .collect();
    let var: Vec<f64> = reduce(cpu::centred_square_sums(x, c, hw, &mean))?
        .into_iter()
        .map(|s| s / m)
        .collect();
    Ok((mean, var, m))
}

/// Checks x [N, C, H, W] against weight and bias [C]; returns (N, C, H·W).
fn check(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<(usize, usize, usize)> {
    same_device(OP, &[x, w, b])?;
    let s = x.shape();
    if s.len() != 4 {
        bail_shape!(OP, "input must be [N, C, H, W], got {s:?}");
    }
    if w.shape() != [s[1]] || b.shape() != [s[1]] {
        bail_shape!(
            OP,
            "weight {:?} and bias {:?} must both be [{}] for input {s:?}",
            w.shape(),
            b.shape(),
            s[1]
        );
    }
    Ok((s[0], s[1], s[2] * s[3]))
}

fn check_running(x: &Tensor, rm: &Tensor, rv: &Tensor) -> Result<()> {
    same_device(OP, &[x, rm, rv])?;
    let c = x.shape()[1];
    if rm.shape() != [c] || rv.shape() != [c] {
        bail_shape!(
            OP,
            "running mean {:?} and running var {:?} must both be [{c}] for input {:?}",
            rm.shape(),
            rv.shape(),
            x.shape()
        );
    }
    Ok(())
}

fn f32v(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Normalises x (f32: a 16-bit input widened) with per-channel `mean` and `rstd` (f64) and
/// applies weight/bias; returns (y rounded to `dtype`, mean, rstd) with the statistics as f32
/// [C] tensors.
fn apply(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    mean: &[f64],
    rstd: &[f64],
    hw: usize,
    dtype: DType,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (wv, bv) = (w.f32s(OP)?, b.f32s(OP)?);
    let scale: Vec<f32> = wv
        .iter()
        .zip(rstd)
        .map(|(&w, &r)| (w as f64 * r) as f32)
        .collect();
    let (mean, rstd) = (f32v(mean), f32v(rstd));
    let y = cpu::normalize(x.f32s(OP)?, &mean, &scale, bv, hw);
    let c = mean.len();
    Ok((
        Tensor::from_f32(y, x.shape()).try_to_dtype(dtype)?,
        Tensor::from_f32(mean, &[c]),
        Tensor::from_f32(rstd, &[c]),
    ))
}

/// Training-mode forward on batch statistics; returns (y, batch mean [C], biased batch variance
/// [C]) and updates nothing.
pub fn batch_norm2d_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (y, mean, var, _) = train_forward(x, weight, bias, eps)?;
    let c = mean.len();
    Ok((
        y,
        Tensor::from_f32(f32v(&mean), &[c]).to_device(x.device())?,
        Tensor::from_f32(f32v(&var), &[c]).to_device(x.device())?,
    ))
}

/// (y, mean, biased var, rstd as f32 tensor) of a training-mode forward.
fn train_forward(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
) -> Result<(Tensor, Vec<f64>, Vec<f64>, Tensor)> {
    let (n, c, hw) = check(x, w, b)?;
    let (w, b) = (&w.try_to_dtype(DType::F32)?, &b.try_to_dtype(DType::F32)?);
    if n * hw < 2 {
        bail_shape!(
            OP,
            "training needs more than one value per channel, got input {:?}",
            x.shape()
        );
    }
    if runs_kernels(x.device()) {
        // statistics in f32 on the device; the host copies (tiny, [C]) feed the running stats
        let (y, mean, var, rstd) = gpu::train_forward(x, w, b, eps)?;
        let f64v = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.try_to_vec()?.iter().map(|&v| v as f64).collect())
        };
        return Ok((y, f64v(&mean)?, f64v(&var)?, rstd));
    }
    let dtype = x.dtype();
    let (x, w, b) = (cpu_input_f32(OP, x)?, cpu_input(OP, w)?, cpu_input(OP, b)?);
    let (mean, var) = cpu::batch_stats(x.f32s(OP)?, c, hw);
    let rstd: Vec<f64> = var.iter().map(|&v| 1.0 / (v + eps as f64).sqrt()).collect();
    let (y, _, rstd_t) = apply(&x, &w, &b, &mean, &rstd, hw, dtype)?;
    Ok((y, mean, var, rstd_t))
}

/// Eval-mode forward with the running statistics; returns (y, mean, rstd).
fn eval_forward(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    rm: &Tensor,
    rv: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (_, _, hw) = check(x, w, b)?;
    check_running(x, rm, rv)?;
    let (w, b) = (&w.try_to_dtype(DType::F32)?, &b.try_to_dtype(DType::F32)?);
    if runs_kernels(x.device()) {
        // rstd from the running variance as the CPU computes it (f64), then the apply kernel
        let c = rv.numel();
        let rstd: Vec<f32> = running_rstd(&rv.try_to_vec()?, eps)
            .iter()
            .map(|&r| r as f32)
            .collect();
        let rstd = Tensor::from_f32(rstd, &[c]).to_device(x.device())?;
        let mean = rm.try_contiguous()?;
        let y = gpu::apply(x, &mean, &rstd, w, b)?;
        return Ok((y, mean, rstd));
    }
    let dtype = x.dtype();
    let (x, w, b) = (cpu_input_f32(OP, x)?, cpu_input(OP, w)?, cpu_input(OP, b)?);
    let (rm, rv) = (cpu_input(OP, rm)?, cpu_input(OP, rv)?);
    let mean: Vec<f64> = rm.f32s(OP)?.iter().map(|&v| v as f64).collect();
    let rstd = running_rstd(rv.f32s(OP)?, eps);
    apply(&x, &w, &b, &mean, &rstd, hw, dtype)
}

/// `1/√(running var + eps)` per channel, in f64: what eval mode normalises by, on every device
/// and in the fused inference path.
fn running_rstd(running_var: &[f32], eps: f32) -> Vec<f64> {
    running_var
        .iter()
        .map(|&v| 1.0 / (v as f64 + eps as f64).sqrt())
        .collect()
}

/// Eval-mode BatchNorm as the per-channel affine map `y = (x − mean)·scale + shift` that
/// [`batch_norm2d`] applies on the CPU: (mean, scale = weight·rstd, shift = bias), all [C] (CPU
/// tensors). For fused consumers such as `conv2d::conv2d_bn_eval`.
pub fn eval_affine(
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let c = weight.numel();
    for t in [bias, running_mean, running_var] {
        if t.shape() != [c] || weight.shape() != [c] {
            bail_shape!(
                OP,
                "weight {:?}, bias {:?}, running mean {:?} and var {:?} must all be [C]",
                weight.shape(),
                bias.shape(),
                running_mean.shape(),
                running_var.shape()
            );
        }
    }
    let (w, b) = (cpu_input(OP, weight)?, cpu_input(OP, bias)?);
    let (rm, rv) = (cpu_input(OP, running_mean)?, cpu_input(OP, running_var)?);
    let rstd = running_rstd(rv.f32s(OP)?, eps);
    let scale = w
        .f32s(OP)?
        .iter()
        .zip(&rstd)
        .map(|(&w, &r)| (w as f64 * r) as f32)
        .collect();
    Ok((rm.f32s(OP)?.to_vec(), scale, b.f32s(OP)?.to_vec()))
}

/// Inference BatchNorm2d: normalise with the running statistics, then weight and bias.
pub fn batch_norm2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    Ok(eval_forward(x, weight, bias, running_mean, running_var, eps)?.0)
}

impl<'m> Graph<'m> {
    /// BatchNorm2d (PyTorch semantics; see the module doc). In training mode the running
    /// statistics are updated in place — whether or not this graph records — as PyTorch does for
    /// a module in `train()` mode; in eval mode they are only read.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm2d(
        &self,
        x: &Var,
        weight: &Var,
        bias: &Var,
        running_mean: &Param,
        running_var: &Param,
        training: bool,
        momentum: f32,
        eps: f32,
    ) -> Result<Var> {
        // 16-bit weight and bias (weights kept only in 16 bits): widened exactly for the f32
        // arithmetic, their gradients rounded back in backward
        let pdtype = weight.tensor().dtype();
        let (w32, b32) = (
            weight.tensor().try_to_dtype(DType::F32)?,
            bias.tensor().try_to_dtype(DType::F32)?,
        );
        let (xt, wt, bt) = (x.tensor(), &w32, &b32);
        let (rm, rv) = (running_mean.value(), running_var.value());
        let group = self.batch_stats_group().filter(|_| training);
        let (y, mean, rstd) = if training && runs_kernels(xt.device()) {
            check(xt, wt, bt)?;
            check_running(xt, &rm, &rv)?;
            let (_, c, hw) = check(xt, wt, bt)?;
            let n = xt.shape()[0] * hw;
            if n < 2 {
                bail_shape!(
                    OP,
                    "training needs more than one value per channel, got input {:?}",
                    xt.shape()
                );
            }
            // Statistics and the running update stay on the device (f32 arithmetic; the CPU
            // folds them in f64): rm ← (1 − m)·rm + m·mean, rv ← (1 − m)·rv + m·var·n/(n − 1),
            // with SyncBatchNorm's statistics and n those of every rank's values.
            let (y, mean, var, rstd, n) = match group {
                Some(g) => gpu::sync_train_forward(xt, wt, bt, eps, g)?,
                None => {
                    let (y, mean, var, rstd) = gpu::train_forward(xt, wt, bt, eps)?;
                    (y, mean, var, rstd, n as f64)
                }
            };
            if !self.is_recomputing() {
                use crate::ops::{binary::add, unary::scale};
                let m = momentum;
                let unbias = (n / (n - 1.0)) as f32;
                let new_rm = add(&scale(&rm, 1.0 - m)?, &scale(&mean, m)?)?;
                let new_rv = add(&scale(&rv, 1.0 - m)?, &scale(&var, m * unbias)?)?;
                running_mean.set_value(new_rm.reshape([c])?)?;
                running_var.set_value(new_rv.reshape([c])?)?;
            }
            (y, mean, rstd)
        } else if training {
            check(xt, wt, bt)?;
            check_running(xt, &rm, &rv)?;
            let s = xt.shape();
            let (y, mean, var, rstd, n) = match self.batch_stats_group() {
                Some(group) => {
                    let (x, w, b) = (
                        cpu_input_f32(OP, xt)?,
                        cpu_input(OP, wt)?,
                        cpu_input(OP, bt)?,
                    );
                    let hw = s[2] * s[3];
                    let (mean, var, n) = sync_stats(group, x.f32s(OP)?, s[1], hw)?;
                    let rstd: Vec<f64> =
                        var.iter().map(|&v| 1.0 / (v + eps as f64).sqrt()).collect();
                    let (y, _, rstd_t) = apply(&x, &w, &b, &mean, &rstd, hw, xt.dtype())?;
                    (y, mean, var, rstd_t, n)
                }
                None => {
                    let (y, mean, var, rstd) = train_forward(xt, wt, bt, eps)?;
                    (y, mean, var, rstd, (s[0] * s[2] * s[3]) as f64)
                }
            };
            let m = momentum as f64;
            let (rm, rv) = (
                cpu_input(OP, &rm.to_device(crate::Device::Cpu)?)?,
                cpu_input(OP, &rv.to_device(crate::Device::Cpu)?)?,
            );
            let new_rm: Vec<f32> = rm
                .f32s(OP)?
                .iter()
                .zip(&mean)
                .map(|(&r, &mu)| ((1.0 - m) * r as f64 + m * mu) as f32)
                .collect();
            let new_rv: Vec<f32> = rv
                .f32s(OP)?
                .iter()
                .zip(&var)
                .map(|(&r, &v)| ((1.0 - m) * r as f64 + m * v * n / (n - 1.0)) as f32)
                .collect();
            let c = mean.len();
            // A checkpointed block runs twice (forward, then recompute in backward): the
            // statistics of one training step must be folded in once.
            let dev = xt.device();
            if !self.is_recomputing() {
                running_mean.set_value(Tensor::from_f32(new_rm, &[c]).to_device(dev)?)?;
                running_var.set_value(Tensor::from_f32(new_rv, &[c]).to_device(dev)?)?;
            }
            (y, Tensor::from_f32(f32v(&mean), &[c]).to_device(dev)?, rstd)
        } else {
            eval_forward(xt, wt, bt, &rm, &rv, eps)?
        };
        let saved = if runs_kernels(xt.device()) {
            vec![xt.try_contiguous()?, wt.try_contiguous()?, mean, rstd]
        } else {
            // a 16-bit x saved widened (exactly), dx rounded back in backward
            vec![cpu_input_f32(OP, xt)?, cpu_input(OP, wt)?, mean, rstd]
        };
        let dtype = xt.dtype();
        Ok(self.record(
            Op::BatchNorm2d(BatchNorm2dOp {
                training,
                group,
                dtype,
                pdtype,
            }),
            &[x, weight, bias],
            saved,
            y,
        ))
    }
}

impl BatchNorm2dOp<'_> {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        const BOP: &str = "batch_norm2d backward";
        let (x, w, mean, rstd) = (&saved[0], &saved[1], &saved[2], &saved[3]);
        if gout.shape() != x.shape() {
            bail_shape!(
                BOP,
                "output gradient {:?} does not match the input {:?}",
                gout.shape(),
                x.shape()
            );
        }
        if runs_kernels(gout.device()) {
            // SyncBatchNorm: Σdy and Σdy·x̂ all-reduced for dx only when dx is wanted (every
            // rank of the group records the same graph, so all of them skip it together)
            let group = self.group.filter(|_| needs[0]);
            let (dx, dw, db) = gpu::backward(x, w, mean, rstd, gout, self.training, group)?;
            return Ok(vec![
                needs[0].then_some(dx),
                needs[1].then(|| dw.try_to_dtype(self.pdtype)).transpose()?,
                needs[2].then(|| db.try_to_dtype(self.pdtype)).transpose()?,
            ]);
        }
        if gout.dtype() != self.dtype {
            bail_shape!(
                BOP,
                "output gradient {:?} is {}, the input {}: they must share one dtype",
                gout.shape(),
                gout.dtype(),
                self.dtype
            );
        }
        let s = x.shape();
        let (c, hw) = (s[1], s[2] * s[3]);
        let mut m = (s[0] * hw) as f64;
        let g = cpu_input_f32(BOP, gout)?;
        let (xs, gs, ms, rs, ws) = (
            x.f32s(BOP)?,
            g.f32s(BOP)?,
            mean.f32s(BOP)?,
            rstd.f32s(BOP)?,
            w.f32s(BOP)?,
        );
        let want_sums = needs[1] || needs[2] || (needs[0] && self.training);
        let (sum_dy, sum_dy_xhat) = if want_sums {
            cpu::grad_sums(xs, gs, ms, rs, hw)
        } else {
            (vec![0.0; c], vec![0.0; c])
        };
        // SyncBatchNorm: the input gradient goes through the statistics of all ranks' values,
        // so it needs Σdy and Σdy·x̂ over all of them; the weight and bias gradients stay this
        // rank's sums (the step all-reduces parameter gradients afterwards).
        let (g_dy, g_dy_xhat) = match self.group.filter(|_| needs[0] && self.training) {
            Some(group) => {
                let both: Vec<f64> = sum_dy.iter().chain(&sum_dy_xhat).copied().collect();
                let t = Tensor::from_f32(f32v(&both), &[2 * c]);
                let r: Vec<f64> = group
                    .all_reduce_sum(&t)?
                    .to_vec()
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                m *= group.world_size() as f64;
                (r[..c].to_vec(), r[c..].to_vec())
            }
            None => (sum_dy.clone(), sum_dy_xhat.clone()),
        };
        let dx = if needs[0] {
            let a: Vec<f64> = ws
                .iter()
                .zip(rs)
                .map(|(&w, &r)| w as f64 * r as f64)
                .collect();
            let (b, k): (Vec<f32>, Vec<f32>) = if self.training {
                (0..c)
                    .map(|i| {
                        (
                            (-a[i] * g_dy[i] / m) as f32,
                            (-a[i] * g_dy_xhat[i] / m) as f32,
                        )
                    })
                    .unzip()
            } else {
                (vec![0.0; c], vec![0.0; c])
            };
            Some(
                Tensor::from_f32(cpu::input_grad(xs, gs, ms, rs, &f32v(&a), &b, &k, hw), s)
                    .try_to_dtype(self.dtype)?,
            )
        } else {
            None
        };
        Ok(vec![
            dx,
            needs[1]
                .then(|| Tensor::from_f32(f32v(&sum_dy_xhat), &[c]).try_to_dtype(self.pdtype))
                .transpose()?,
            needs[2]
                .then(|| Tensor::from_f32(f32v(&sum_dy), &[c]).try_to_dtype(self.pdtype))
                .transpose()?,
        ])
    }
}
