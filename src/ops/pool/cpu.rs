//! CPU average pooling: one rayon task per (image, channel) plane; each window is summed in a
//! fixed order, so results do not depend on the thread count.

use rayon::prelude::*;

/// Pooling geometry of one plane: input H×W, window k, stride s, output OH×OW.
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub s: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Forward over `planes` = N·C planes: x [planes, H, W] → out [planes, OH, OW].
pub fn forward(x: &[f32], g: &Geom) -> Vec<f32> {
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let mut out = vec![0f32; x.len() / hw.max(1) * ohw];
    if out.is_empty() {
        return out;
    }
    let inv = 1.0 / (g.k * g.k) as f32;
    out.par_chunks_mut(ohw)
        .zip(x.par_chunks(hw))
        .for_each(|(o, plane)| {
            for (oy, orow) in o.chunks_mut(g.ow).enumerate() {
                for ky in 0..g.k {
                    let src = &plane[(oy * g.s + ky) * g.w..][..g.w];
                    for (ox, acc) in orow.iter_mut().enumerate() {
                        *acc += src[ox * g.s..ox * g.s + g.k].iter().sum::<f32>();
                    }
                }
                orow.iter_mut().for_each(|v| *v *= inv);
            }
        });
    out
}

/// Backward: each output gradient is spread evenly (÷ k²) over its window.
pub fn backward(gout: &[f32], g: &Geom) -> Vec<f32> {
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let mut dx = vec![0f32; gout.len() / ohw.max(1) * hw];
    if dx.is_empty() {
        return dx;
    }
    let inv = 1.0 / (g.k * g.k) as f32;
    dx.par_chunks_mut(hw)
        .zip(gout.par_chunks(ohw))
        .for_each(|(plane, go)| {
            for (oy, grow) in go.chunks(g.ow).enumerate() {
                for ky in 0..g.k {
                    let dst = &mut plane[(oy * g.s + ky) * g.w..][..g.w];
                    for (ox, &gv) in grow.iter().enumerate() {
                        let v = gv * inv;
                        dst[ox * g.s..ox * g.s + g.k]
                            .iter_mut()
                            .for_each(|d| *d += v);
                    }
                }
            }
        });
    dx
}
