//! Elementwise loops over rayon chunks.

use super::UnaryKind;
use crate::Tensor;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// erf from libm (the GELU derivative's Φ).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    libm::erff(x)
}

/// GELU as `x·Φ(x)` with `Φ(x) = erfc(−x/√2)/2`, accurate to a few 1e-7 relative everywhere,
/// the negative tail included. The textbook `0.5·x·(1 + erf(x/√2))` cancels there: `1 + erf` of
/// an f32 erf near −1 keeps only a few good bits (1e-3 relative error at x = −4, 0 below −5.4),
/// whatever erf's own accuracy. Here erfc of `z = |x|/√2 ≥ 0` is computed directly, as
/// `t·exp(−z² + P(t))`, `t = 1/(1 + z/2)` (Numerical Recipes' `erfcc`, fractional error below
/// 1.2e-7), with `−z² = −x²/2` carried as an exact two-float sum (FMA) into an exp that takes it
/// without rounding, because an ulp of z² ≈ 50 would already be 4e-6 of the result. Then
/// `Φ = erfc/2` for x < 0 and `1 − erfc/2` for x ≥ 0. Branch-free, so loops over it vectorise.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let (erfc_k2, k2) = erfc_parts(x);
    if x < 0.0 {
        x * 0.5 * erfc_k2 * k2
    } else {
        x * (0.5 * erfc_k2).mul_add(-k2, 1.0)
    }
}

/// Φ(x), the standard normal CDF, the same way: `erfc/2` for x < 0, `1 − erfc/2` for x ≥ 0.
#[inline(always)]
pub fn normal_cdf(x: f32) -> f32 {
    let (erfc_k2, k2) = erfc_parts(x);
    if x < 0.0 {
        0.5 * erfc_k2 * k2
    } else {
        (0.5 * erfc_k2).mul_add(-k2, 1.0)
    }
}

/// erfc(|x|/√2) as `(erfc / k2, k2)`, k2 a power of two to be multiplied in last (see [`gelu`]).
#[inline(always)]
#[allow(clippy::excessive_precision)] // the coefficients as published
fn erfc_parts(x: f32) -> (f32, f32) {
    // beyond |x| = 20 erfc(|x|/√2) is below f32's range: clamping changes nothing
    let a = x.abs().min(20.0);
    let z = a * FRAC_1_SQRT_2;
    let t = 1.0 / (0.5f32).mul_add(z, 1.0);
    let mut p = 0.170_872_77f32;
    for c in [
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_68,
        -1.265_512_23,
    ] {
        p = p.mul_add(t, c);
    }
    // −a²/2 = hi + lo exactly
    let m = -0.5 * a;
    let hi = m * a;
    let lo = m.mul_add(a, -hi);
    // erfc = t·exp(−a²/2 + P) = t·e·2^k1·2^k2; the last factor goes last, so that a result
    // near f32's smallest normals is rounded once
    let (e, k1, k2) = exp_sum(hi, lo + p);
    (t * e * k1, k2)
}

/// GELU's derivative times `g`: `g·(Φ(x) + x·φ(x))`, with Φ from [`normal_cdf`] and
/// φ = e^(−x²/2)/√(2π) through the same exact-argument exp, so the loop vectorises (libm's erf
/// and exp would not) and Φ keeps its relative accuracy in the negative tail.
#[inline(always)]
pub fn gelu_derivative(x: f32, g: f32) -> f32 {
    let a = x.abs().min(20.0);
    let m = -0.5 * a;
    let hi = m * a;
    let lo = m.mul_add(a, -hi);
    let (e, k1, k2) = exp_sum(hi, lo);
    let pdf = INV_SQRT_2PI * e * k1 * k2;
    g * x.mul_add(pdf, normal_cdf(x))
}

/// `out[i] = gelu'(x[i])·g[i]`, compiled for AVX-512 or AVX2+FMA when the CPU has them (as
/// [`gelu_slice`]).
fn gelu_grad_slice(x: &[f32], g: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512dq,fma")]
        unsafe fn avx512(x: &[f32], g: &[f32], out: &mut [f32]) {
            for ((o, &v), &g) in out.iter_mut().zip(x).zip(g) {
                *o = gelu_derivative(v, g);
            }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(x: &[f32], g: &[f32], out: &mut [f32]) {
            for ((o, &v), &g) in out.iter_mut().zip(x).zip(g) {
                *o = gelu_derivative(v, g);
            }
        }
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected above.
            return unsafe { avx512(x, g, out) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { avx2(x, g, out) };
        }
    }
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(g) {
        *o = gelu_derivative(v, g);
    }
}

/// `exp(hi + lo)` for |lo| ≲ 2, without rounding `hi + lo` first (Cody–Waite reduction by ln 2,
/// a degree-7 polynomial on |r| ≤ ln2/2), as `e·f1·f2` with two power-of-two factors (so that
/// tiny results underflow gradually, once, where the caller multiplies the last factor in).
/// Accurate to about 1 ulp for `hi` in [−250, 80].
#[inline(always)]
fn exp_sum(hi: f32, lo: f32) -> (f32, f32, f32) {
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375: 8 significant bits, k·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let k = ((hi + lo) * std::f32::consts::LOG2_E).round();
    let r = (k.mul_add(-LN2_HI, hi) + lo) - k * LN2_LO;
    let mut e = 1.0 / 5040.0f32;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0f32,
    ] {
        e = e.mul_add(r, c);
    }
    let k = k.max(-252.0) as i32;
    let pow2 = |n: i32| f32::from_bits(((n + 127) as u32) << 23);
    (e, pow2(k - k / 2), pow2(k / 2))
}

/// `out[i] = gelu(x[i])`, compiled for AVX-512 or AVX2+FMA when the CPU has them (the crate is
/// built for baseline x86-64, where `mul_add` would be a library call).
fn gelu_slice(x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512dq,fma")]
        unsafe fn avx512(x: &[f32], out: &mut [f32]) {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = gelu(v);
            }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(x: &[f32], out: &mut [f32]) {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = gelu(v);
            }
        }
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected above.
            return unsafe { avx512(x, out) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { avx2(x, out) };
        }
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = gelu(v);
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[inline(always)]
fn apply(kind: UnaryKind, x: f32) -> f32 {
    match kind {
        UnaryKind::Gelu => gelu(x),
        UnaryKind::QuickGelu => x * sigmoid(1.702 * x),
        UnaryKind::Relu => x.max(0.0),
        UnaryKind::Exp => x.exp(),
        UnaryKind::Log => x.ln(),
        UnaryKind::Sigmoid => sigmoid(x),
        UnaryKind::Scale(c) => c * x,
    }
}

/// Derivative times the incoming gradient; `s` is the saved input or output (see `saves_output`).
#[inline(always)]
fn derivative(kind: UnaryKind, s: f32, g: f32) -> f32 {
    match kind {
        UnaryKind::Gelu => gelu_derivative(s, g),
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

/// `out[i] = f(x[i])` over rayon chunks; generic so that each kind gets its own vectorised loop.
fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, x) in o.iter_mut().zip(x) {
                *o = f(*x);
            }
        });
    out
}

/// `out[i] = f(s[i], g[i])` over rayon chunks.
fn map2(s: &[f32], g: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; g.len()];
    out.par_chunks_mut(CHUNK)
        .zip(s.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(o, (s, g))| {
            for ((o, s), g) in o.iter_mut().zip(s).zip(g) {
                *o = f(*s, *g);
            }
        });
    out
}

pub fn forward(kind: UnaryKind, x: &[f32], shape: &[usize]) -> Tensor {
    // One monomorphised loop per kind (a `match` inside the loop would block vectorisation).
    let out = match kind {
        UnaryKind::Gelu => {
            let mut out = vec![0f32; x.len()];
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(o, x)| gelu_slice(x, o));
            out
        }
        UnaryKind::QuickGelu => map(x, |v| apply(UnaryKind::QuickGelu, v)),
        UnaryKind::Relu => map(x, |v| apply(UnaryKind::Relu, v)),
        UnaryKind::Exp => map(x, |v| apply(UnaryKind::Exp, v)),
        UnaryKind::Log => map(x, |v| apply(UnaryKind::Log, v)),
        UnaryKind::Sigmoid => map(x, |v| apply(UnaryKind::Sigmoid, v)),
        UnaryKind::Scale(c) => map(x, |v| c * v),
    };
    Tensor::from_f32(out, shape)
}

pub fn backward(kind: UnaryKind, saved: Option<&[f32]>, g: &[f32], shape: &[usize]) -> Tensor {
    let out = match (kind, saved) {
        (UnaryKind::Scale(c), _) => map(g, |v| c * v),
        (_, None) => map(g, |v| derivative(kind, 0.0, v)),
        (UnaryKind::Gelu, Some(s)) => {
            let mut out = vec![0f32; g.len()];
            out.par_chunks_mut(CHUNK)
                .zip(s.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|(o, (s, g))| gelu_grad_slice(s, g, o));
            out
        }
        (UnaryKind::QuickGelu, Some(s)) => {
            map2(s, g, |s, g| derivative(UnaryKind::QuickGelu, s, g))
        }
        (UnaryKind::Relu, Some(s)) => map2(s, g, |s, g| derivative(UnaryKind::Relu, s, g)),
        (k, Some(s)) => map2(s, g, |s, g| derivative(k, s, g)),
    };
    Tensor::from_f32(out, shape)
}
