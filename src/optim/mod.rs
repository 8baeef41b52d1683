//! Optimisation: AdamW with decoupled weight decay and open_clip's parameter groups, learning-rate
//! schedules, gradient-norm clipping.

mod adamw;
mod schedule;

pub use adamw::{clip_grad_norm, decays, AdamW, AdamWConfig};
pub use schedule::LrSchedule;
