//! Stochastic rounding of f32 to f16 / bf16: the CPU reference of the helpers in
//! `kernels/common.cuh` (`sr_mix64`, `sr_key`, `sr_bits`, `sround_f16_bits`,
//! `sround_bf16_bits`), computing the same bits for every input.
//!
//! x is rounded to one of its two 16-bit neighbours lo ≤ x ≤ hi, up with probability
//! (x − lo)/(hi − lo), so the stored value is an unbiased estimate of x: a stream of updates each
//! smaller than half an ulp still moves a 16-bit weight by their sum on average, where round to
//! nearest drops every one of them (DESIGN §11; the CLIP paper's 16-bit text-tower weights).
//!
//! The random bits of element `index` of a tensor are `bits(key(step, tensor_id, stream), index)`
//! — splitmix64's output at `key + (index + 1)·γ` — a pure function of those four integers, never
//! of a thread or block id, so Cuda, Emu under any launch geometry and this module agree bit for
//! bit. `stream` separates the arrays of one tensor updated in one step (weights, exp_avg,
//! exp_avg_sq: [`STREAM_PARAM`], [`STREAM_EXP_AVG`], [`STREAM_EXP_AVG_SQ`]) so that their draws
//! are independent.
//!
//! - f16, normal range (|x| ≥ 2⁻¹⁴): the 13 dropped mantissa bits plus 13 random bits, truncated:
//!   up with probability dropped/2¹³ exactly; a carry into the exponent is the right next value.
//! - f16, subnormal range: the step is the subnormal ulp 2⁻²⁴; the 24-bit significand shifted by
//!   126 − e (≥ 14 bits dropped) is rounded with as many random bits, exact up to a 63-bit shift;
//!   below 2⁻⁶³ the result is 0 (a bias under 2⁻³⁹ of the subnormal ulp).
//! - bf16: 16 dropped bits plus 16 random bits (f32 subnormals included: same spacing).
//! - NaN → the canonical 0x7fff (as `__float2half`), ±inf kept; a finite value whose rounding
//!   would leave the finite range saturates at ±65504 (f16) / ±3.3895e38 (bf16) and is counted
//!   as an overflow, which the caller reports.

use crate::{DType, Device, Error, Result, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// The stream of a parameter's own values.
pub const STREAM_PARAM: u32 = 0;
/// The stream of a parameter's `exp_avg` (Adam's m).
pub const STREAM_EXP_AVG: u32 = 1;
/// The stream of a parameter's `exp_avg_sq` (Adam's v).
pub const STREAM_EXP_AVG_SQ: u32 = 2;

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser (`sr_mix64`).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Who draws: the key of a tensor's stream in one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SrSeed {
    pub step: u64,
    pub tensor_id: u32,
    pub stream: u32,
}

impl SrSeed {
    /// `sr_key(step, tensor_id, stream)` (only the low 8 bits of `stream` count).
    pub fn key(&self) -> u64 {
        mix64(
            mix64(self.step.wrapping_add(GAMMA))
                ^ ((self.tensor_id as u64) << 8 | (self.stream & 0xff) as u64),
        )
    }
}

/// The 64 random bits of element `index` under `key` (`sr_bits`).
pub fn bits(key: u64, index: u64) -> u64 {
    mix64(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// f32 → f16 bits rounded stochastically with random bits `r`, and whether it saturated
/// (`sround_f16_bits`).
pub fn f16_bits(x: f32, r: u64) -> (u16, bool) {
    let u = x.to_bits();
    let sign = ((u >> 16) & 0x8000) as u16;
    let a = u & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return (0x7fff, false);
    }
    if a == 0x7f80_0000 {
        return (sign | 0x7c00, false);
    }
    if a >= 0x3880_0000 {
        let q = (a - 0x3800_0000 + (r & 0x1fff) as u32) >> 13;
        if q >= 0x7c00 {
            return (sign | 0x7bff, true);
        }
        return (sign | q as u16, false);
    }
    let e = a >> 23;
    let m = ((a & 0x7f_ffff) | if e != 0 { 0x80_0000 } else { 0 }) as u64;
    let shift = if e != 0 { 126 - e } else { 125 };
    let q = if shift < 64 {
        (m + (r & ((1u64 << shift) - 1))) >> shift
    } else {
        0
    };
    (sign | q as u16, false)
}

/// f32 → bf16 bits rounded stochastically with random bits `r`, and whether it saturated
/// (`sround_bf16_bits`).
pub fn bf16_bits(x: f32, r: u64) -> (u16, bool) {
    let u = x.to_bits();
    let a = u & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return (0x7fff, false);
    }
    if a == 0x7f80_0000 {
        return ((u >> 16) as u16, false);
    }
    let q = (a + (r & 0xffff) as u32) >> 16;
    let sign = ((u >> 16) & 0x8000) as u16;
    if q >= 0x7f80 {
        return (sign | 0x7f7f, true);
    }
    (sign | q as u16, false)
}

/// x rounded stochastically to f16 with random bits `r` (saturating; see [`f16_bits`]).
pub fn round_f16(x: f32, r: u64) -> f16 {
    f16::from_bits(f16_bits(x, r).0)
}

/// x rounded stochastically to bf16 with random bits `r` (saturating; see [`bf16_bits`]).
pub fn round_bf16(x: f32, r: u64) -> bf16 {
    bf16::from_bits(bf16_bits(x, r).0)
}

/// The f32 values `xs` as `dtype` bits (F16 or BF16), element i rounded with
/// `bits(seed.key(), i)`; returns the bits and the number of saturated elements.
pub fn round_slice(xs: &[f32], dtype: DType, seed: SrSeed) -> Result<(Vec<u16>, u64)> {
    let f = match dtype {
        DType::F16 => f16_bits,
        DType::BF16 => bf16_bits,
        DType::F32 => {
            return Err(Error::Msg(
                "stochastic rounding: the target must be f16 or bf16".into(),
            ))
        }
    };
    let key = seed.key();
    let (out, over): (Vec<u16>, Vec<bool>) = xs
        .par_iter()
        .enumerate()
        .map(|(i, &x)| f(x, bits(key, i as u64)))
        .unzip();
    Ok((out, over.iter().filter(|&&o| o).count() as u64))
}

/// `x` (f32, any device) converted to `dtype` (F16 or BF16) with stochastic rounding, element i
/// (row-major) drawing `bits(seed.key(), i)`, on x's device: the host loop on the CPU (the
/// reference), `cast_sr_f32_to_<dtype>` (kernels/layout.cu) on Emu and Cuda. Returns the
/// tensor and how many elements saturated (read back from the device: one small download).
pub fn to_dtype_stochastic(x: &Tensor, dtype: DType, seed: SrSeed) -> Result<(Tensor, u64)> {
    to_dtype_stochastic_with_launch(x, dtype, seed, None)
}

/// [`to_dtype_stochastic`] with the kernel's launch geometry chosen: `(threads, blocks)` of its
/// grid-stride loop (ignored on the CPU). For tests: the bits do not depend on it.
pub fn to_dtype_stochastic_with_launch(
    x: &Tensor,
    dtype: DType,
    seed: SrSeed,
    launch: Option<(u32, u32)>,
) -> Result<(Tensor, u64)> {
    if x.dtype() != DType::F32 {
        return Err(Error::DType {
            op: "to_dtype_stochastic",
            got: x.dtype(),
            expected: "f32",
        });
    }
    if crate::device::kernel::runs_kernels(x.device()) {
        return crate::ops::layout::gpu::cast_stochastic(x, dtype, seed, launch);
    }
    debug_assert_eq!(x.device(), Device::Cpu);
    let xs = x.try_to_vec()?;
    let (b, over) = round_slice(&xs, dtype, seed)?;
    let shape = x.shape().to_vec();
    let t = match dtype {
        DType::F16 => Tensor::from_f16(b.into_iter().map(f16::from_bits).collect(), shape)?,
        _ => Tensor::from_bf16(b.into_iter().map(bf16::from_bits).collect(), shape)?,
    };
    Ok((t, over))
}
