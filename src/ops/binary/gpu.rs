//! Launchers of the add kernels in `kernels/elementwise.cu`, on Emu or Cuda:
//! `add_fwd_<t>(out, a, b, n)` (same shape: the residual add), `add_bias_fwd_f32(out, x, bias, rows, d)` (a
//! trailing-dims operand broadcast over leading rows: a [D] bias over [R, D], a residual…), and
//! `add_bias_fwd_{f16,bf16}` (both operands 16-bit, f32 arithmetic, one rounding: the bias and
//! residual adds of mixed-precision activations), `bias_bwd_<t>(db, g, rows, d)`, the
//! deterministic column sum that is the bias's gradient (f32 sums, db in g's dtype);
//! `{mul,sub,div}_fwd_<t>(out, a, b, n, na, nb)` (each operand the full shape or a trailing-dims
//! block repeated over the rows, on either side) and `div_bwd_b_<t>(out, g, a, b, n, na, nb)`,
//! `<t>` each of f32, f16, bf16 (operands of one dtype; mixed dtypes are an error naming them);
//! `add_inplace_f32(acc, g, n)` and `copy_f32(out, x, n)`, which write into a tensor's own
//! storage (gradient accumulation that keeps its buffer, copy-on-write before an in-place
//! update).
//!
//! Any other numpy broadcast (`[B, 1, D]` over `[B, T, D]`, `[T, 1] ∘ [1, D]`, …) first
//! materialises the operand at the output shape on the device — an `expand` view (stride 0)
//! made contiguous by the strided-copy kernel ([`materialise`]) — and then takes the
//! equal-shapes kernel: one extra pass over the output's size, no host round trip.

use super::BinaryKind;
use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{DType, Error, Result, Tensor};

const THREADS: u32 = 256;
const MODULE: &str = "elementwise";

/// Whether `small` (leading 1s dropped) is a suffix of `big`: then `small` repeats over the
/// `numel(big) / numel(small)` leading rows of `big`.
fn is_row_broadcast(big: &[usize], small: &[usize]) -> bool {
    let trimmed: Vec<usize> = small.iter().copied().skip_while(|&d| d == 1).collect();
    small.len() <= big.len() && big.ends_with(&trimmed)
}

/// `t` as an operand of an elementwise kernel whose output is `shape`: itself when it is the
/// whole shape or a trailing-dims block repeated over rows (the kernels repeat it), otherwise
/// its broadcast to `shape` made on the device (expand + strided copy). `shape` is the
/// broadcast shape of the op, so the expand cannot fail for an operand of the op.
pub(crate) fn materialise(t: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if t.shape() == shape || is_row_broadcast(shape, t.shape()) {
        Ok(t.clone())
    } else {
        t.expand(shape)?.try_contiguous()
    }
}

/// `a + b` with any broadcast: same shapes, one operand a row-broadcast of the other, or else
/// both materialised at the broadcast shape ([`materialise`]). f32, or 16-bit operands of one
/// dtype (the bias-add kernel's f16/bf16 instantiations; equal shapes are a bias of one row).
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = "add";
    let device = kernel::kernel_device(op, &[a, b])?;
    let shape = crate::tensor::broadcast_shape(op, a.shape(), b.shape())?;
    let f32 = a.dtype() == DType::F32 && b.dtype() == DType::F32;
    let (a, b) = if f32 {
        (kernel::f32_input(op, a)?, kernel::f32_input(op, b)?)
    } else {
        (kernel::typed_input(op, a)?, kernel::typed_input(op, b)?)
    };
    if a.shape() == b.shape() && a.dtype() == b.dtype() {
        // the residual add: f32, or both operands one 16-bit dtype
        let n = kernel::i32_len(op, a.numel())?;
        let mut out = DeviceBuf::like(&a)?;
        let name = format!("add_fwd_{}", kernel::dtype_suffix(a.dtype()));
        // SAFETY: all three buffers hold n elements; the kernel touches indices < n.
        unsafe {
            kernel::launch(
                device,
                MODULE,
                &name,
                LaunchConfig::for_elements(n as usize, THREADS),
                &mut [
                    KernelArg::Out(&mut out),
                    KernelArg::In(&a),
                    KernelArg::In(&b),
                    KernelArg::I32(n),
                ],
            )
        }?;
        return out.into_tensor();
    }
    if a.dtype() != b.dtype() {
        return Err(Error::Device {
            op,
            msg: format!(
                "{:?} {} + {:?} {}: kernels add operands of one dtype (or two f32) \
                 (not implemented on device {device} for these operands)",
                a.shape(),
                a.dtype(),
                b.shape(),
                b.dtype()
            ),
        });
    }
    let (x, bias) = if is_row_broadcast(a.shape(), b.shape()) {
        (&a, &b)
    } else if is_row_broadcast(b.shape(), a.shape()) {
        (&b, &a)
    } else {
        // A broadcast the kernels do not repeat: both at the output shape, then equal shapes.
        return add(&materialise(&a, &shape)?, &materialise(&b, &shape)?);
    };
    let d = bias.numel();
    let rows = kernel::rows_of(op, x, d)?;
    let mut out = DeviceBuf::like(x)?;
    let name = format!("add_bias_fwd_{}", kernel::dtype_suffix(x.dtype()));
    // SAFETY: out and x hold rows·d elements, bias d; the kernel touches indices < rows·d.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            LaunchConfig::for_elements(x.numel(), THREADS),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(x),
                KernelArg::In(bias),
                KernelArg::I32(rows as i32),
                KernelArg::I32(d as i32),
            ],
        )
    }?;
    out.into_tensor()
}

/// One pointwise launch of `kernel(dst, src, n)` over n elements.
fn pointwise_into(
    kernel_name: &'static str,
    device: crate::Device,
    dst: KernelArg,
    src: &Tensor,
) -> Result<()> {
    let n = kernel::i32_len(kernel_name, src.numel())?;
    // SAFETY: the callers give dst and src n elements each; the kernel touches indices < n.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            kernel_name,
            LaunchConfig::for_elements(n as usize, THREADS),
            &mut [dst, KernelArg::In(src), KernelArg::I32(n)],
        )
    }
}

/// A copy of the f32 tensor `x` on its device, in storage of its own (`copy_f32`).
pub(crate) fn copy(x: &Tensor) -> Result<Tensor> {
    let x = kernel::f32_input("copy", x)?;
    let mut out = DeviceBuf::like(&x)?;
    pointwise_into("copy_f32", x.device(), KernelArg::Out(&mut out), &x)?;
    out.into_tensor()
}

/// `dst ← x` (`copy_f32`, or `acc += x` with `add_inplace_f32` when `add`) written into `dst`'s
/// own storage, which keeps its address. Only when no other handle shares that storage (see
/// `Tensor::unique_storage_addr`): returns `false` and does nothing otherwise, and for operands
/// of other shapes, dtypes or devices.
pub(crate) fn write_into(dst: &mut Tensor, x: &Tensor, add: bool) -> Result<bool> {
    if dst.shape() != x.shape() || dst.device() != x.device() || x.dtype() != DType::F32 {
        return Ok(false);
    }
    let Some(addr) = dst.unique_storage_addr() else {
        return Ok(false);
    };
    let x = kernel::f32_input("add_assign", x)?;
    let name = if add { "add_inplace_f32" } else { "copy_f32" };
    pointwise_into(name, x.device(), KernelArg::Addr(addr), &x)?;
    Ok(true)
}

/// `g` summed down to `target` when `target` is a row-broadcast of `g`'s shape (a bias's
/// gradient: column sums over the rows). `None` when the reduction is of another kind.
pub(crate) fn sum_rows_to(g: &Tensor, target: &[usize]) -> Result<Option<Tensor>> {
    let op = "sum_to_shape";
    if !is_row_broadcast(g.shape(), target) {
        return Ok(None);
    }
    // g f32, f16 or bf16: f32 sums, db in g's dtype (rounded once)
    let g = kernel::typed_input(op, g)?;
    let d: usize = target.iter().product();
    let rows = kernel::rows_of(op, &g, d)?;
    let mut db = DeviceBuf::typed(g.device(), target, g.dtype())?;
    let name = format!("bias_bwd_{}", kernel::dtype_suffix(g.dtype()));
    let cfg = LaunchConfig {
        grid: (d.div_ceil(32).max(1) as u32, 1, 1),
        block: (32, 8, 1),
        shared_bytes: 0,
    };
    // SAFETY: g holds rows·d elements, db d; the kernel reads rows < rows, columns < d.
    unsafe {
        kernel::launch(
            g.device(),
            MODULE,
            &name,
            cfg,
            &mut [
                KernelArg::Out(&mut db),
                KernelArg::In(&g),
                KernelArg::I32(rows as i32),
                KernelArg::I32(d as i32),
            ],
        )
    }?;
    Ok(Some(db.into_tensor()?))
}

/// The operands of `a ∘ b` as the repeating kernels take them, with the broadcast output shape
/// and each operand's repeat length (`n` for the full shape, the block size for a trailing-dims
/// operand): an operand of any other broadcast is materialised at the output shape first.
struct Repeat {
    shape: Vec<usize>,
    a: Tensor,
    b: Tensor,
    n: i32,
    na: i32,
    nb: i32,
}

fn repeat_lens(op: &'static str, a: &Tensor, b: &Tensor) -> Result<Repeat> {
    let shape = crate::tensor::broadcast_shape(op, a.shape(), b.shape())?;
    let n = kernel::i32_len(op, shape.iter().product())?;
    let (a, b) = (materialise(a, &shape)?, materialise(b, &shape)?);
    // a trailing-dims block divides n, so its length fits the kernels' i32 too
    let (na, nb) = (a.numel() as i32, b.numel() as i32);
    Ok(Repeat {
        shape,
        a,
        b,
        n,
        na,
        nb,
    })
}

/// `a ∘ b` for mul, sub and div (add has its own kernels, [`add`]).
pub(crate) fn binary(kind: BinaryKind, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = kind.name();
    let device = kernel::kernel_device(op, &[a, b])?;
    let dtype = crate::ops::same_dtype(op, &[("a", a), ("b", b)])?;
    let (a, b) = (kernel::typed_input(op, a)?, kernel::typed_input(op, b)?);
    let Repeat {
        shape,
        a,
        b,
        n,
        na,
        nb,
    } = repeat_lens(op, &a, &b)?;
    let stem = match kind {
        BinaryKind::Mul => "mul",
        BinaryKind::Sub => "sub",
        BinaryKind::Div => "div",
        BinaryKind::Add => return add(&a, &b),
    };
    let name = format!("{stem}_fwd_{}", kernel::dtype_suffix(dtype));
    let mut out = DeviceBuf::typed(device, &shape, dtype)?;
    // SAFETY: out holds n elements, a na and b nb, and the kernel reads a[i mod na], b[i mod nb].
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            LaunchConfig::for_elements(n as usize, THREADS),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&a),
                KernelArg::In(&b),
                KernelArg::I32(n),
                KernelArg::I32(na),
                KernelArg::I32(nb),
            ],
        )
    }?;
    out.into_tensor()
}

/// `g·(−a/b²)` at the broadcast shape of `a / b` (= g's shape): the divisor's gradient before it
/// is summed down to b's shape.
pub(crate) fn div_grad_b(g: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = "div backward";
    let device = kernel::kernel_device(op, &[g, a, b])?;
    let dtype = crate::ops::same_dtype(op, &[("gradient", g), ("a", a), ("b", b)])?;
    let (g, a, b) = (
        kernel::typed_input(op, g)?,
        kernel::typed_input(op, a)?,
        kernel::typed_input(op, b)?,
    );
    let Repeat {
        shape,
        a,
        b,
        n,
        na,
        nb,
    } = repeat_lens(op, &a, &b)?;
    if g.shape() != shape.as_slice() {
        crate::bail_shape!(
            op,
            "gradient {:?} does not match the output {shape:?} of {:?} / {:?}",
            g.shape(),
            a.shape(),
            b.shape()
        );
    }
    let mut out = DeviceBuf::like(&g)?;
    // SAFETY: out and g hold n elements, a na and b nb; reads are a[i mod na], b[i mod nb].
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &format!("div_bwd_b_{}", kernel::dtype_suffix(dtype)),
            LaunchConfig::for_elements(n as usize, THREADS),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&g),
                KernelArg::In(&a),
                KernelArg::In(&b),
                KernelArg::I32(n),
                KernelArg::I32(na),
                KernelArg::I32(nb),
            ],
        )
    }?;
    out.into_tensor()
}
