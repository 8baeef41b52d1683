//! Learning-rate schedules as open_clip's training loop applies them, per step (0-based):
//! linear warmup `base·(step+1)/warmup`, then cosine to zero or constant.

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// Warmup, then `0.5·(1 + cos(π·e/E))·base` with e steps past warmup of E = total − warmup.
    Cosine {
        base: f64,
        warmup: usize,
        total: usize,
    },
    /// Warmup, then `base`.
    Constant { base: f64, warmup: usize },
}

impl LrSchedule {
    pub fn lr(&self, step: usize) -> f64 {
        match *self {
            LrSchedule::Cosine {
                base,
                warmup,
                total,
            } => {
                if step < warmup {
                    base * (step + 1) as f64 / warmup as f64
                } else {
                    let e = (step - warmup) as f64;
                    let es = total.saturating_sub(warmup).max(1) as f64;
                    0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base
                }
            }
            LrSchedule::Constant { base, warmup } => {
                if step < warmup {
                    base * (step + 1) as f64 / warmup as f64
                } else {
                    base
                }
            }
        }
    }
}
