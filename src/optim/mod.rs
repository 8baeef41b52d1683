//! Optimisation: AdamW with decoupled weight decay and open_clip's parameter groups, learning-rate
//! schedules, gradient-norm clipping, stochastic rounding to 16 bits ([`sround`]).

mod adamw;
mod schedule;
pub mod sround;

use adamw::gpu::clamp_in_place as clamp_on_device;
pub use adamw::{
    clip_grad_norm, decays, unscale_clip_grad_norm, AdamW, AdamWConfig, MomentPrecision,
    SCALE_BLOCK,
};
pub use schedule::LrSchedule;

use crate::{Param, Result, Tensor};

/// Clamp a one-element parameter to `[lo, hi]` in place (CLIP's `logit_scale` after each step).
/// On a kernel device one kernel clamps the value in its own storage (nothing is read back;
/// copy-on-write first when anything else holds the value, see `Param`); on the CPU as before.
pub fn clamp_in_place(p: &Param, lo: f32, hi: f32) -> Result<()> {
    if crate::device::kernel::runs_kernels(p.value().device()) {
        return clamp_on_device(p, lo, hi);
    }
    let v = p.value();
    let s = v.item()?;
    p.set_value(
        Tensor::scalar(s.clamp(lo, hi))
            .reshape(v.shape().to_vec())?
            .to_device(v.device())?,
    )
}
