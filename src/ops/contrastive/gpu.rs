//! Launchers of `kernels/contrastive.cu` on Emu or Cuda, f32, f16 or bf16 features (the kernel
//! named by [`kernel::dtype_suffix`]; statistics, the loss and d logit_scale are f32 whatever the
//! features' type): the forward pass over the tiles (`contrastive_fwd_*`, then
//! `contrastive_cols_f32` and `contrastive_loss_f32`), and the two backward passes
//! (`contrastive_bwd_*` with the roles of the two sides swapped, the normalisation backward
//! folded in, and `contrastive_dlogit_f32`). Inputs are the unit rows (normalize.cu runs first,
//! in the features' dtype); nothing is read back to the host.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::ops::normalize::L2_EPS;
use crate::{Result, Tensor};

const MODULE: &str = "contrastive";
const TILE: usize = 32;
/// Row groups per stripe at most (the stripe's row triples: 16 bytes of shared memory per row).
const MAX_GROUPS: usize = 64;

fn tile_block(blocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (blocks as u32, 1, 1),
        block: (TILE as u32, 8, 1),
        shared_bytes: 0,
    }
}

/// Row groups (of 32) per forward stripe: few enough stripes that their column partials (12
/// bytes per stripe and column) stay within the features' own size (n·d·4), many enough to fill
/// a GPU when n allows.
fn groups_per_stripe(n: usize, d: usize) -> usize {
    let groups = n.div_ceil(TILE);
    let max_stripes = (d / 3).clamp(1, 264);
    groups.div_ceil(max_stripes).clamp(1, MAX_GROUPS)
}

/// What the forward leaves on the device: the outputs and what backward needs.
pub(super) struct Forward {
    pub loss: Tensor,
    pub i2t: Tensor,
    pub t2i: Tensor,
    /// [row_max, row_lsum, col_max, col_lsum, diag], each [n].
    pub stats: Vec<Tensor>,
}

pub(super) fn forward(img: &Tensor, txt: &Tensor, logit_scale: &Tensor) -> Result<Forward> {
    let op = "contrastive";
    let device = kernel::kernel_device(op, &[img, txt, logit_scale])?;
    let (img, txt, ls) = (
        kernel::typed_input(op, img)?,
        kernel::typed_input(op, txt)?,
        kernel::f32_input(op, logit_scale)?,
    );
    let name = format!("contrastive_fwd_{}", kernel::dtype_suffix(img.dtype()));
    let (n, d) = (img.shape()[0], img.shape()[1]);
    let (ni, di) = (kernel::i32_len(op, n)?, kernel::i32_len(op, d)?);
    let q = groups_per_stripe(n, d);
    let stripes = n.div_ceil(TILE * q);
    let buf = |len: usize| DeviceBuf::f32(device, &[len]);
    let (mut row_max, mut row_lsum, mut row_other, mut diag) = (buf(n)?, buf(n)?, buf(n)?, buf(n)?);
    let (mut part_max, mut part_sum, mut part_other) =
        (buf(stripes * n)?, buf(stripes * n)?, buf(stripes * n)?);
    let mut cfg = tile_block(stripes);
    cfg.shared_bytes = (4 * TILE * q * 4) as u32;
    // SAFETY: img and txt hold n·d elements of the kernel's type, logit_scale one f32; the row
    // outputs hold n, the partials stripes·n, and the dynamic shared memory 4·32·q floats.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            cfg,
            &mut [
                KernelArg::Out(&mut row_max),
                KernelArg::Out(&mut row_lsum),
                KernelArg::Out(&mut row_other),
                KernelArg::Out(&mut diag),
                KernelArg::Out(&mut part_max),
                KernelArg::Out(&mut part_sum),
                KernelArg::Out(&mut part_other),
                KernelArg::In(&img),
                KernelArg::In(&txt),
                KernelArg::In(&ls),
                KernelArg::I32(ni),
                KernelArg::I32(di),
                KernelArg::I32(q as i32),
            ],
        )
    }?;
    let (mut col_max, mut col_lsum, mut col_other) = (buf(n)?, buf(n)?, buf(n)?);
    // SAFETY: the partials hold stripes·n, the column outputs n.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            "contrastive_cols_f32",
            LaunchConfig::for_elements(n, 256),
            &mut [
                KernelArg::Out(&mut col_max),
                KernelArg::Out(&mut col_lsum),
                KernelArg::Out(&mut col_other),
                KernelArg::Buf(&part_max),
                KernelArg::Buf(&part_sum),
                KernelArg::Buf(&part_other),
                KernelArg::I32(stripes as i32),
                KernelArg::I32(ni),
            ],
        )
    }?;
    let (mut loss, mut i2t, mut t2i) = (
        DeviceBuf::f32(device, &[])?,
        DeviceBuf::f32(device, &[])?,
        DeviceBuf::f32(device, &[])?,
    );
    // SAFETY: one block reads the n-element statistics and writes three scalars.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            "contrastive_loss_f32",
            LaunchConfig {
                grid: (1, 1, 1),
                block: (256, 1, 1),
                shared_bytes: 0,
            },
            &mut [
                KernelArg::Out(&mut loss),
                KernelArg::Out(&mut i2t),
                KernelArg::Out(&mut t2i),
                KernelArg::Buf(&row_max),
                KernelArg::Buf(&row_lsum),
                KernelArg::Buf(&row_other),
                KernelArg::Buf(&col_max),
                KernelArg::Buf(&col_lsum),
                KernelArg::Buf(&col_other),
                KernelArg::Buf(&diag),
                KernelArg::I32(ni),
            ],
        )
    }?;
    Ok(Forward {
        loss: loss.into_tensor()?,
        i2t: i2t.into_tensor()?,
        t2i: t2i.into_tensor()?,
        stats: vec![
            row_max.into_tensor()?,
            row_lsum.into_tensor()?,
            col_max.into_tensor()?,
            col_lsum.into_tensor()?,
            diag.into_tensor()?,
        ],
    })
}

/// The gradient of the unnormalised rows behind A: dÂ = s·dS·B through the normalisation
/// backward (`a_norm`: ‖·‖ of those rows), in A's dtype. `a_lse`: the (max, log Σ) of A's rows,
/// `b_lse`: B's rows', the other direction. With `want_dlog`, d logit_scale as a `[]` tensor.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_side(
    a: &Tensor,
    b: &Tensor,
    a_norm: &Tensor,
    a_lse: (&Tensor, &Tensor),
    b_lse: (&Tensor, &Tensor),
    diag: &Tensor,
    logit_scale: &Tensor,
    dloss: &Tensor,
    want_dlog: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let op = "contrastive backward";
    let device = kernel::kernel_device(
        op,
        &[
            a,
            b,
            a_norm,
            a_lse.0,
            a_lse.1,
            b_lse.0,
            b_lse.1,
            diag,
            logit_scale,
            dloss,
        ],
    )?;
    let input = |t: &Tensor| kernel::f32_input(op, t);
    let (a, b) = (kernel::typed_input(op, a)?, kernel::typed_input(op, b)?);
    let (an, am, al, bm, bl, dg, ls, g) = (
        input(a_norm)?,
        input(a_lse.0)?,
        input(a_lse.1)?,
        input(b_lse.0)?,
        input(b_lse.1)?,
        input(diag)?,
        input(logit_scale)?,
        input(dloss)?,
    );
    let (n, d) = (a.shape()[0], a.shape()[1]);
    let (ni, di) = (kernel::i32_len(op, n)?, kernel::i32_len(op, d)?);
    let blocks = n.div_ceil(TILE);
    let mut da = DeviceBuf::like(&a)?;
    let mut dacc = DeviceBuf::f32(device, &[n, d])?;
    let mut parts = DeviceBuf::words(device, blocks.max(1))?;
    let name = format!("contrastive_bwd_{}", kernel::dtype_suffix(a.dtype()));
    // SAFETY: a, b, da hold n·d elements of the kernel's type, dacc n·d f32; the norms and
    // statistics n; parts one f64 per block.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            tile_block(blocks),
            &mut [
                KernelArg::Out(&mut da),
                KernelArg::Out(&mut dacc),
                KernelArg::Out(&mut parts),
                KernelArg::In(&a),
                KernelArg::In(&b),
                KernelArg::In(&an),
                KernelArg::In(&am),
                KernelArg::In(&al),
                KernelArg::In(&bm),
                KernelArg::In(&bl),
                KernelArg::In(&dg),
                KernelArg::In(&ls),
                KernelArg::In(&g),
                KernelArg::I32(ni),
                KernelArg::I32(di),
                KernelArg::I32(want_dlog as i32),
                KernelArg::F32(L2_EPS),
            ],
        )
    }?;
    let dlogit = if want_dlog {
        let mut out = DeviceBuf::f32(device, &[])?;
        // SAFETY: one thread reads `blocks` partials and writes one scalar.
        unsafe {
            kernel::launch(
                device,
                MODULE,
                "contrastive_dlogit_f32",
                LaunchConfig {
                    grid: (1, 1, 1),
                    block: (32, 1, 1),
                    shared_bytes: 0,
                },
                &mut [
                    KernelArg::Out(&mut out),
                    KernelArg::Buf(&parts),
                    KernelArg::In(&g),
                    KernelArg::I32(blocks as i32),
                    KernelArg::I32(ni),
                ],
            )
        }?;
        Some(out.into_tensor()?)
    } else {
        None
    };
    Ok((da.into_tensor()?, dlogit))
}
