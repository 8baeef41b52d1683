//! Launchers of `kernels/layout.cu` on Emu or Cuda (one thread per output element, blocks of
//! 256): concat (one launch per part into a NaN-poisoned output that the parts tile exactly),
//! a narrowed slice made contiguous, narrow's gradient (the slice padded with zeros), and the
//! swap of the two leading dims of `[A, B, C]`. Shapes are checked by the callers.
//!
//! Also the layout changes of [`Tensor::try_contiguous`] and [`Tensor::try_to_dtype`] on Emu and
//! Cuda: [`strided_copy`] (any view of ≤ 6 dims after merging, f32/f16/bf16, on the view's own
//! storage) and [`cast`] (f32 ↔ f16, f32 ↔ bf16, f16 ↔ bf16). Both take 64-bit sizes and run a
//! grid-stride loop over at most [`MAX_BLOCKS`] blocks of 256.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::ops::reduce::split3;
use crate::{DType, Error, Result, Tensor};

const MODULE: &str = "layout";
const THREADS: u32 = 256;

fn i(v: usize) -> KernelArg<'static> {
    KernelArg::I32(v as i32)
}

/// `parts` joined along `axis` into `out_shape`.
pub(crate) fn concat(parts: &[&Tensor], axis: usize, out_shape: &[usize]) -> Result<Tensor> {
    let op = "concat";
    let device = kernel::kernel_device(op, parts)?;
    let (outer, total, inner) = split3(out_shape, axis);
    kernel::i32_len(op, outer * total * inner)?;
    // parts of one dtype (f32, f16 or bf16), the output in it
    let named: Vec<(&str, &Tensor)> = parts.iter().map(|&p| ("part", p)).collect();
    let dtype = crate::ops::same_dtype(op, &named)?;
    let mut out = DeviceBuf::typed(device, out_shape, dtype)?;
    let name = format!("concat_fwd_{}", kernel::dtype_suffix(dtype));
    let mut start = 0;
    for p in parts {
        let p = kernel::typed_input(op, p)?;
        let len = p.shape()[axis];
        // SAFETY: the part holds outer·len·inner elements, out outer·total·inner, and
        // start + len ≤ total, so every index formed is in range.
        unsafe {
            kernel::launch(
                device,
                MODULE,
                &name,
                LaunchConfig::for_elements(p.numel(), THREADS),
                &mut [
                    KernelArg::Out(&mut out),
                    KernelArg::In(&p),
                    i(outer),
                    i(len),
                    i(inner),
                    i(total),
                    i(start),
                ],
            )
        }?;
        start += len;
    }
    out.into_tensor()
}

/// `x.narrow(axis, start, len)` as a new contiguous tensor.
pub(crate) fn narrow(x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    let op = "narrow";
    let x = kernel::typed_input(op, x)?;
    let (outer, full, inner) = split3(x.shape(), axis);
    kernel::i32_len(op, x.numel())?;
    let mut shape = x.shape().to_vec();
    shape[axis] = len;
    let mut out = DeviceBuf::typed(x.device(), &shape, x.dtype())?;
    // SAFETY: out holds outer·len·inner elements, x outer·full·inner, start + len ≤ full.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            &format!("narrow_fwd_{}", kernel::dtype_suffix(x.dtype())),
            LaunchConfig::for_elements(outer * len * inner, THREADS),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&x),
                i(outer),
                i(full),
                i(len),
                i(inner),
                i(start),
            ],
        )
    }?;
    out.into_tensor()
}

/// Zeros of `shape` with `g` written at `start..start + len` along `axis`.
pub(crate) fn narrow_backward(
    g: &Tensor,
    shape: &[usize],
    axis: usize,
    start: usize,
) -> Result<Tensor> {
    let op = "narrow backward";
    let g = kernel::typed_input(op, g)?;
    let (outer, full, inner) = split3(shape, axis);
    let len = g.shape()[axis];
    kernel::i32_len(op, outer * full * inner)?;
    let mut dx = DeviceBuf::typed(g.device(), shape, g.dtype())?;
    // SAFETY: dx holds outer·full·inner elements, g outer·len·inner, start + len ≤ full.
    unsafe {
        kernel::launch(
            g.device(),
            MODULE,
            &format!("narrow_bwd_{}", kernel::dtype_suffix(g.dtype())),
            LaunchConfig::for_elements(outer * full * inner, THREADS),
            &mut [
                KernelArg::Out(&mut dx),
                KernelArg::In(&g),
                i(outer),
                i(full),
                i(len),
                i(inner),
                i(start),
            ],
        )
    }?;
    dx.into_tensor()
}

/// `x` seen as `[a, b, c]` (its element count must be a·b·c) → `[b, a, c]`.
pub(crate) fn transpose01(x: &Tensor, a: usize, b: usize, c: usize) -> Result<Tensor> {
    let op = "transpose01";
    let x = kernel::typed_input(op, x)?;
    if x.numel() != a * b * c {
        crate::bail_shape!(op, "{:?} is not [{a}, {b}, {c}]", x.shape());
    }
    kernel::i32_len(op, x.numel())?;
    let mut out = DeviceBuf::typed(x.device(), &[b, a, c], x.dtype())?;
    // SAFETY: both buffers hold a·b·c elements; indices stay below that.
    unsafe {
        kernel::launch(
            x.device(),
            MODULE,
            &format!("transpose01_{}", kernel::dtype_suffix(x.dtype())),
            LaunchConfig::for_elements(x.numel(), THREADS),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&x),
                i(a),
                i(b),
                i(c),
            ],
        )
    }?;
    out.into_tensor()
}

/// The most blocks a grid-stride launch uses: 4096 × 256 = 1 M threads, several waves on any
/// current GPU (an H200 keeps 132 × 2048 threads resident), so the cap costs no bandwidth and
/// the grid never meets the 2³¹ − 1 limit whatever n is.
pub const MAX_BLOCKS: usize = 4096;

/// Dims the strided-copy kernel takes (`strided_copy_*`'s d0..d5, s0..s5).
pub const MAX_COPY_RANK: usize = 6;

/// A 1-D grid-stride launch over `n` elements.
fn grid_stride(n: usize) -> LaunchConfig {
    LaunchConfig::for_elements(n.min(MAX_BLOCKS * THREADS as usize), THREADS)
}

fn i64_arg(op: &'static str, v: usize) -> Result<KernelArg<'static>> {
    i64::try_from(v)
        .map(KernelArg::I64)
        .map_err(|_| Error::shape(op, format!("{v} exceeds the kernels' 64-bit index")))
}

/// (sizes, strides) of the view `shape`/`strides` with size-1 dims dropped and every pair of
/// adjacent dims that walks one run of memory (outer stride = inner stride × inner size)
/// merged; outermost first. The same elements in the same row-major order, in fewer dims —
/// fewer 64-bit divisions per element in the kernel. A broadcast pair (both strides 0) merges
/// too. Empty for a view of one element.
pub(crate) fn merged_dims(shape: &[usize], strides: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let (mut d, mut s): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    for (&n, &st) in shape.iter().zip(strides) {
        if n == 1 {
            continue;
        }
        match (d.last_mut(), s.last_mut()) {
            (Some(pd), Some(ps)) if *ps == st * n => {
                *pd *= n;
                *ps = st;
            }
            _ => {
                d.push(n);
                s.push(st);
            }
        }
    }
    (d, s)
}

/// `x` (any view on Emu or Cuda, f32/f16/bf16) copied to a fresh row-major tensor of its shape,
/// dtype and device by `strided_copy_<dtype>`, reading the view's own storage at its offset and
/// strides. An `Err` when the view's dims do not merge to [`MAX_COPY_RANK`] or fewer.
pub(crate) fn strided_copy(x: &Tensor) -> Result<Tensor> {
    let op = "contiguous";
    let device = kernel::kernel_device(op, &[x])?;
    let kernel_name = format!("strided_copy_{}", kernel::dtype_suffix(x.dtype()));
    let (dims, strides) = merged_dims(x.shape(), x.strides());
    if dims.len() > MAX_COPY_RANK {
        return Err(Error::shape(
            op,
            format!(
                "{kernel_name}: a rank-{} view {:?} with strides {:?} is rank {} after merging \
                 adjacent dims; the strided-copy kernel takes rank ≤ {MAX_COPY_RANK}",
                x.rank(),
                x.shape(),
                x.strides(),
                dims.len()
            ),
        ));
    }
    let mut out = DeviceBuf::typed(device, x.shape(), x.dtype())?;
    let n = x.numel();
    if n == 0 {
        return out.into_tensor();
    }
    // The launch's promise: the furthest element the view reaches is inside its storage.
    let last = dims
        .iter()
        .zip(&strides)
        .try_fold(x.offset(), |acc, (&d, &st)| {
            (d - 1).checked_mul(st).and_then(|e| acc.checked_add(e))
        });
    if last.is_none_or(|l| l >= x.storage_len()) {
        crate::bail_shape!(
            op,
            "the view {:?} strides {:?} at offset {} reaches past its storage of {} elements",
            x.shape(),
            x.strides(),
            x.offset(),
            x.storage_len()
        );
    }
    // Innermost first, padded to the kernel's six (padding is never read: k < rank).
    let mut args = vec![
        KernelArg::Out(&mut out),
        KernelArg::Storage(x),
        i64_arg(op, n)?,
        i64_arg(op, x.offset())?,
        KernelArg::I32(dims.len() as i32),
    ];
    for k in 0..MAX_COPY_RANK {
        args.push(i64_arg(op, dims.iter().rev().nth(k).copied().unwrap_or(1))?);
    }
    for k in 0..MAX_COPY_RANK {
        args.push(i64_arg(
            op,
            strides.iter().rev().nth(k).copied().unwrap_or(0),
        )?);
    }
    // SAFETY: out holds n elements and the loop writes out[i] for i < n only; every read
    // in[offset + Σ idx_k·s_k] is at most `last`, checked above to be inside x's storage.
    unsafe { kernel::launch(device, MODULE, &kernel_name, grid_stride(n), &mut args) }?;
    drop(args);
    out.into_tensor()
}

/// Contiguous `x` on Emu or Cuda converted to `dtype` by `cast_<from>_to_<to>` (round to nearest
/// even into 16 bits; `x` itself when it already is `dtype`).
pub(crate) fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let op = "to_dtype";
    let device = kernel::kernel_device(op, &[x])?;
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    let name = format!(
        "cast_{}_to_{}",
        kernel::dtype_suffix(x.dtype()),
        kernel::dtype_suffix(dtype)
    );
    let mut out = DeviceBuf::typed(device, x.shape(), dtype)?;
    let n = x.numel();
    if n == 0 {
        return out.into_tensor();
    }
    // SAFETY: x (contiguous, checked by the launch) and out hold n elements; indices < n.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            grid_stride(n),
            &mut [KernelArg::Out(&mut out), KernelArg::In(x), i64_arg(op, n)?],
        )
    }?;
    out.into_tensor()
}

/// Contiguous f32 `x` on Emu or Cuda converted to f16/bf16 with stochastic rounding by
/// `cast_sr_f32_to_<dtype>` (element i draws `sround::bits(seed.key(), i)`), and the number of
/// elements that saturated. `launch`: (threads, blocks) of the grid-stride loop instead of the
/// default (tests: the result does not depend on it).
pub(crate) fn cast_stochastic(
    x: &Tensor,
    dtype: DType,
    seed: crate::optim::sround::SrSeed,
    launch: Option<(u32, u32)>,
) -> Result<(Tensor, u64)> {
    let op = "to_dtype_stochastic";
    let device = kernel::kernel_device(op, &[x])?;
    let x = kernel::f32_input(op, x)?;
    if dtype == DType::F32 {
        return Err(Error::Msg(format!("{op}: the target must be f16 or bf16")));
    }
    let name = format!("cast_sr_f32_to_{}", kernel::dtype_suffix(dtype));
    let mut out = DeviceBuf::typed(device, x.shape(), dtype)?;
    let n = x.numel();
    if n == 0 {
        return Ok((out.into_tensor()?, 0));
    }
    let cfg = match launch {
        None => grid_stride(n),
        Some((threads, blocks)) => {
            if !(1..=1024).contains(&threads) || blocks == 0 {
                return Err(Error::Msg(format!("{op}: bad launch {launch:?}")));
            }
            LaunchConfig {
                grid: (blocks, 1, 1),
                block: (threads, 1, 1),
                shared_bytes: 0,
            }
        }
    };
    let mut overflow = DeviceBuf::from_u64(device, &[0])?;
    // SAFETY: x (contiguous, checked by the launch) and out hold n elements, indices < n;
    // overflow is one 64-bit counter.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            cfg,
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&x),
                i64_arg(op, n)?,
                KernelArg::I64(seed.step as i64),
                KernelArg::U32(seed.tensor_id),
                KernelArg::U32(seed.stream),
                KernelArg::Out(&mut overflow),
            ],
        )
    }?;
    let over = overflow.to_host_u64()?[0];
    Ok((out.into_tensor()?, over))
}

#[cfg(test)]
mod tests {
    use crate::{Device, Tensor};
    use half::f16;

    /// Through `try_contiguous` on Emu: a view at an offset past 2³¹ of a storage of 2³¹ + 2¹⁰
    /// f16 elements (calloc'd: only the pages written take memory) — the launcher's 64-bit
    /// arguments and bounds check, which tests/kernels_layout.rs cannot reach without copying
    /// the whole storage to Emu (it tests the kernel's 64-bit strides by a raw launch).
    #[test]
    fn a_view_past_2_pow_31_is_copied_on_emu() {
        let len = (1usize << 31) + 1024;
        let mut bits: Vec<u16> = vec![0; len];
        let start = (1usize << 31) + 5;
        for (i, b) in bits[start..start + 60].iter_mut().enumerate() {
            *b = f16::from_f32(i as f32 * 0.25 - 3.0).to_bits();
        }
        let host = Tensor::from_f16(bytemuck::allocation::cast_vec(bits), [len]).unwrap();
        let emu = host.clone().on_host_device(Device::Emu); // the same storage
        let view = |t: &Tensor| {
            let v = t.narrow(0, start, 60).unwrap().reshape([6, 10]).unwrap();
            v.transpose(0, 1).unwrap()
        };
        let out = view(&emu).try_contiguous().unwrap();
        assert_eq!((out.device(), out.shape()), (Device::Emu, &[10, 6][..]));
        assert_eq!(out.to_le_bytes(), view(&host).contiguous().to_le_bytes());
    }
}
