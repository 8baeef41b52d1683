//! Training: the contrastive step (with gradient accumulation over micro-batches).

mod step;

pub use step::{contrastive_forward_backward, StepStats};
