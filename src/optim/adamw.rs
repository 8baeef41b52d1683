//! AdamW (Loshchilov & Hutter) exactly as `torch.optim.AdamW` computes it:
//! `p ← p·(1 − lr·wd)`; `m ← β₁m + (1−β₁)g`; `v ← β₂v + (1−β₂)g²`;
//! `p ← p − (lr/(1−β₁ᵗ))·m / (√v/√(1−β₂ᵗ) + ε)`.
//! Weight decay follows open_clip's groups: none for parameters with fewer than 2 dims, biases,
//! LayerNorm/BatchNorm gains (`ln`/`bn` in the name) and `logit_scale`. Note that this is
//! open_clip_train's actual rule: the 2-D token and positional embeddings *are* decayed (the 1-D
//! class embedding is not); training parity with open_clip depends on it.

use crate::{Error, Param, Result, Tensor};
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
    m: Vec<f32>,
    v: Vec<f32>,
}

pub struct AdamW {
    pub config: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// Over the trainable parameters in `params` (buffers are skipped).
    pub fn new(params: &[Param], config: AdamWConfig) -> AdamW {
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
        }
    }

    /// Where the moments live follows the parameters: the host moments serve Cpu and Emu
    /// parameters alike (Emu memory is host memory).
    pub fn to_device(&mut self, device: crate::Device) -> Result<()> {
        if let crate::Device::Cuda(_) = device {
            return Err(Error::Device {
                op: "AdamW::to_device",
                msg: "the optimizer has no CUDA path in this build".into(),
            });
        }
        Ok(())
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr` from the gradients accumulated in the parameters
    /// (parameters without a gradient are left alone, as PyTorch does), then clears them.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
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

    /// The optimizer state as named tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`, `step`), for
    /// checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::scalar(self.step as f32))];
        for s in &self.slots {
            let shape = s.param.value().shape().to_vec();
            out.push((
                format!("{}.exp_avg", s.param.name()),
                Tensor::from_vec(s.m.clone(), shape.clone()).expect("sized"),
            ));
            out.push((
                format!("{}.exp_avg_sq", s.param.name()),
                Tensor::from_vec(s.v.clone(), shape).expect("sized"),
            ));
        }
        out
    }

    /// Restore what `state` wrote; every slot must be present with its shape.
    pub fn load_state(&mut self, state: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let step = state
            .get("step")
            .ok_or_else(|| Error::Msg("optimizer state lacks `step`".into()))?;
        self.step = step.item()? as u64;
        for s in &mut self.slots {
            for (suffix, dst) in [("exp_avg", &mut s.m), ("exp_avg_sq", &mut s.v)] {
                let key = format!("{}.{suffix}", s.param.name());
                let t = state
                    .get(&key)
                    .ok_or_else(|| Error::Msg(format!("optimizer state lacks `{key}`")))?;
                if t.numel() != dst.len() {
                    return Err(Error::shape(
                        "AdamW::load_state",
                        format!("{key}: {:?} for {} values", t.shape(), dst.len()),
                    ));
                }
                *dst = t.try_to_vec()?;
            }
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
