//! Mean cross-entropy of logits [N, C] against integer targets: `mean_i(logsumexp(z_i) − z_i[t_i])`.
//! Saves the softmax probabilities; backward is `(p − onehot(t)) · dL / N`. On Emu and Cuda:
//! `gpu.rs` (`kernels/cross_entropy.cu`). Logits f32, f16 or bf16 on every device: the loss and
//! the saved probabilities f32, the logits' gradient in their dtype (rounded once).

pub(crate) mod gpu;

use crate::graph::{Graph, Op, Var};
use crate::ops::cpu_input_f32;
use crate::{bail_shape, DType, Result, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

pub struct CrossEntropyOp {
    targets: Arc<Vec<u32>>,
    /// The logits' dtype, that of their gradient.
    dtype: DType,
}

/// Returns (mean loss, probabilities).
fn forward(logits: &Tensor, targets: &[u32]) -> Result<(Tensor, Tensor)> {
    if logits.rank() != 2 {
        bail_shape!(
            "cross_entropy",
            "logits must be [N, C], got {:?}",
            logits.shape()
        );
    }
    let (n, c) = (logits.shape()[0], logits.shape()[1]);
    if targets.len() != n {
        bail_shape!(
            "cross_entropy",
            "{} targets for {n} rows of logits",
            targets.len()
        );
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= c) {
        bail_shape!(
            "cross_entropy",
            "target {t} is out of range for {c} classes"
        );
    }
    if crate::device::kernel::runs_kernels(logits.device()) {
        return gpu::forward(logits, targets);
    }
    // 16-bit logits: widened (exactly); loss and probabilities f32, as the kernels
    let z = cpu_input_f32("cross_entropy", logits)?;
    let zs = z.f32s("cross_entropy")?;
    let mut p = vec![0f32; n * c];
    let losses: Vec<f64> = p
        .par_chunks_mut(c.max(1))
        .zip(zs.par_chunks(c.max(1)))
        .zip(targets.par_iter())
        .map(|((p, z), &t)| {
            let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let s: f64 = z.iter().map(|&v| ((v - m) as f64).exp()).sum();
            let lse = m as f64 + s.ln();
            for (p, &v) in p.iter_mut().zip(z) {
                *p = (((v - m) as f64).exp() / s) as f32;
            }
            lse - z[t as usize] as f64
        })
        .collect();
    let loss = losses.iter().sum::<f64>() / n.max(1) as f64;
    Ok((
        Tensor::from_f32(vec![loss as f32], &[]),
        Tensor::from_f32(p, &[n, c]),
    ))
}

pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    Ok(forward(logits, targets)?.0)
}

impl<'m> Graph<'m> {
    /// Mean cross-entropy of `logits` [N, C] against class indices `targets` [N].
    pub fn cross_entropy(&self, logits: &Var, targets: &[u32]) -> Result<Var> {
        let (loss, p) = forward(logits.tensor(), targets)?;
        let op = CrossEntropyOp {
            targets: Arc::new(targets.to_vec()),
            dtype: logits.tensor().dtype(),
        };
        Ok(self.record(Op::CrossEntropy(op), &[logits], vec![p], loss))
    }
}

impl CrossEntropyOp {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let p = &saved[0];
        if crate::device::kernel::runs_kernels(p.device()) {
            return Ok(vec![Some(gpu::backward(
                p,
                &self.targets,
                gout,
                self.dtype,
            )?)]);
        }
        let (n, c) = (p.shape()[0], p.shape()[1]);
        let scale = gout.item()? / n.max(1) as f32;
        let mut dz = p.f32s("cross_entropy backward")?.to_vec();
        for (row, &t) in dz.chunks_mut(c.max(1)).zip(self.targets.iter()) {
            row[t as usize] -= 1.0;
            row.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(vec![Some(
            Tensor::from_f32(dz, &[n, c]).try_to_dtype(self.dtype)?,
        )])
    }
}
