//! Elementwise loops over rayon chunks.

use super::UnaryKind;
use crate::Tensor;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[inline]
fn apply(kind: UnaryKind, x: f32) -> f32 {
    match kind {
        UnaryKind::Gelu => 0.5 * x * (1.0 + libm::erff(x * FRAC_1_SQRT_2)),
        UnaryKind::QuickGelu => x * sigmoid(1.702 * x),
        UnaryKind::Relu => x.max(0.0),
        UnaryKind::Exp => x.exp(),
        UnaryKind::Log => x.ln(),
        UnaryKind::Sigmoid => sigmoid(x),
        UnaryKind::Scale(c) => c * x,
    }
}

/// Derivative times the incoming gradient; `s` is the saved input or output (see `saves_output`).
#[inline]
fn derivative(kind: UnaryKind, s: f32, g: f32) -> f32 {
    match kind {
        UnaryKind::Gelu => {
            let cdf = 0.5 * (1.0 + libm::erff(s * FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * (-0.5 * s * s).exp();
            g * (cdf + s * pdf)
        }
        UnaryKind::QuickGelu => {
            let sg = sigmoid(1.702 * s);
            g * (sg + 1.702 * s * sg * (1.0 - sg))
        }
        UnaryKind::Relu => {
            if s > 0.0 {
                g
            } else {
                0.0
            }
        }
        UnaryKind::Exp => g * s,
        UnaryKind::Log => g / s,
        UnaryKind::Sigmoid => g * s * (1.0 - s),
        UnaryKind::Scale(c) => g * c,
    }
}

pub fn forward(kind: UnaryKind, x: &[f32], shape: &[usize]) -> Tensor {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, x) in o.iter_mut().zip(x) {
                *o = apply(kind, *x);
            }
        });
    Tensor::from_f32(out, shape)
}

pub fn backward(kind: UnaryKind, saved: Option<&[f32]>, g: &[f32], shape: &[usize]) -> Tensor {
    let mut out = vec![0f32; g.len()];
    match saved {
        Some(s) => out
            .par_chunks_mut(CHUNK)
            .zip(s.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(o, (s, g))| {
                for ((o, s), g) in o.iter_mut().zip(s).zip(g) {
                    *o = derivative(kind, *s, *g);
                }
            }),
        None => out
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(o, g)| {
                for (o, g) in o.iter_mut().zip(g) {
                    *o = derivative(kind, 0.0, *g);
                }
            }),
    }
    Tensor::from_f32(out, shape)
}
