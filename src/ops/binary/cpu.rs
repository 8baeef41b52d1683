//! Broadcasting elementwise loops. Fast paths: equal shapes (a zip) and an operand that repeats
//! along the leading dims (bias, scalar: index `i % len`); anything else walks broadcast strides.

use crate::tensor::{broadcast_shape, broadcast_strides, for_each_offset};
use crate::{Result, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// Does an operand of shape `src` repeat as a block along the leading dims of `out`?
/// (e.g. [D] or [1, T, D] inside [B, T, D]).
fn is_trailing_block(src: &[usize], out: &[usize]) -> bool {
    let s: Vec<usize> = src.iter().copied().skip_while(|&d| d == 1).collect();
    s.len() <= out.len() && out[out.len() - s.len()..] == s[..]
}

/// Offsets into an operand's data for every element of the broadcast output, row-major.
fn gather_index(src: &[usize], out: &[usize]) -> Vec<usize> {
    let strides = broadcast_strides(src, out);
    let mut idx = Vec::with_capacity(out.iter().product());
    for_each_offset(out, &strides, 0, |o| idx.push(o));
    idx
}

pub fn broadcast_map(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Tensor> {
    let shape = broadcast_shape(op, a.shape(), b.shape())?;
    let (xa, xb) = (a.f32s(op)?, b.f32s(op)?);
    let n: usize = shape.iter().product();
    let mut out = vec![0f32; n];
    if a.shape() == b.shape() {
        out.par_chunks_mut(CHUNK)
            .zip(xa.par_chunks(CHUNK).zip(xb.par_chunks(CHUNK)))
            .for_each(|(o, (x, y))| {
                for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
                    *o = f(*x, *y);
                }
            });
    } else if a.shape() == &shape[..] && is_trailing_block(b.shape(), &shape) {
        repeat_map(&mut out, xa, xb, &f);
    } else if b.shape() == &shape[..] && is_trailing_block(a.shape(), &shape) {
        repeat_map(&mut out, xb, xa, |y, x| f(x, y));
    } else {
        let (ia, ib) = (
            gather_index(a.shape(), &shape),
            gather_index(b.shape(), &shape),
        );
        for (i, o) in out.iter_mut().enumerate() {
            *o = f(xa[ia[i]], xb[ib[i]]);
        }
    }
    Ok(Tensor::from_f32(out, &shape))
}

/// `out[i] = f(full[i], block[i % block.len()])`, in chunks that hold whole blocks.
fn repeat_map(out: &mut [f32], full: &[f32], block: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    let nb = block.len().max(1);
    let chunk = nb * CHUNK.div_ceil(nb);
    out.par_chunks_mut(chunk)
        .zip(full.par_chunks(chunk))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(nb).zip(x.chunks(nb)) {
                for ((o, x), y) in o.iter_mut().zip(x).zip(block) {
                    *o = f(*x, *y);
                }
            }
        });
}

pub fn zip_in_place(dst: &mut [f32], src: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, s) in d.iter_mut().zip(s) {
                *d = f(*d, *s);
            }
        });
}
