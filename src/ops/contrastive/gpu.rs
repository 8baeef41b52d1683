//! Launchers of `kernels/contrastive.cu` on Emu or Cuda, f32, f16 or bf16 features (the kernel
//! named by [`kernel::dtype_suffix`]; statistics, the loss and d logit_scale are f32 whatever the
//! features' type): the forward pass over the tiles (`contrastive_fwd_*`, then
//! `contrastive_cols_f32` and `contrastive_loss_f32`), and the two backward passes
//! (`contrastive_bwd_*` with the roles of the two sides swapped, the normalisation backward
//! folded in, and `contrastive_dlogit_f32`). Inputs are the unit rows (normalize.cu runs first,
//! in the features' dtype); nothing is read back to the host. The local form (one rank's rows
//! against all gathered columns, `local.rs`) runs the same kernels: [`forward_local`] and
//! [`backward_pass`] with one softmax term per pass.

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

/// One forward pass's per-row statistics of A·Bᵀ: max, log Σ e^(x − max), the best entry other
/// than the label, the label entry; and with columns, the stripes' column partials.
struct RowPass {
    max: DeviceBuf,
    lsum: DeviceBuf,
    other: DeviceBuf,
    diag: DeviceBuf,
    /// (part_max, part_sum, part_other, stripes) when the columns were asked for.
    cols: Option<(DeviceBuf, DeviceBuf, DeviceBuf, usize)>,
}

/// `contrastive_fwd_*` over A [na, d] against B [nb, d] (row i's label at column i + off).
fn row_pass(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    ls: &Tensor,
    off: usize,
    want_cols: bool,
) -> Result<RowPass> {
    let device = a.device();
    let (na, nb, d) = (a.shape()[0], b.shape()[0], a.shape()[1]);
    let (ni, nbi, di) = (
        kernel::i32_len(op, na)?,
        kernel::i32_len(op, nb)?,
        kernel::i32_len(op, d)?,
    );
    kernel::i32_len(op, na.max(nb) * d)?;
    let q = groups_per_stripe(na, d);
    let stripes = na.div_ceil(TILE * q);
    let buf = |len: usize| DeviceBuf::f32(device, &[len]);
    let (mut max, mut lsum, mut other, mut diag) = (buf(na)?, buf(na)?, buf(na)?, buf(na)?);
    let part = if want_cols { stripes * nb } else { 1 };
    let (mut pm, mut ps, mut po) = (buf(part)?, buf(part)?, buf(part)?);
    let mut cfg = tile_block(stripes);
    cfg.shared_bytes = (4 * TILE * q * 4) as u32;
    let name = format!("contrastive_fwd_{}", kernel::dtype_suffix(a.dtype()));
    // SAFETY: a holds na·d and b nb·d elements of the kernel's type, ls one f32; the row
    // outputs hold na, the partials stripes·nb (written only with want_cols; else 1), and the
    // dynamic shared memory 4·32·q floats.
    unsafe {
        kernel::launch(
            device,
            MODULE,
            &name,
            cfg,
            &mut [
                KernelArg::Out(&mut max),
                KernelArg::Out(&mut lsum),
                KernelArg::Out(&mut other),
                KernelArg::Out(&mut diag),
                KernelArg::Out(&mut pm),
                KernelArg::Out(&mut ps),
                KernelArg::Out(&mut po),
                KernelArg::In(a),
                KernelArg::In(b),
                KernelArg::In(ls),
                KernelArg::I32(ni),
                KernelArg::I32(nbi),
                KernelArg::I32(kernel::i32_len(op, off)?),
                KernelArg::I32(want_cols as i32),
                KernelArg::I32(di),
                KernelArg::I32(q as i32),
            ],
        )
    }?;
    Ok(RowPass {
        max,
        lsum,
        other,
        diag,
        cols: want_cols.then_some((pm, ps, po, stripes)),
    })
}

/// (loss, hits of the rows, hits of the columns) from the two directions' statistics.
fn loss_of(
    device: crate::Device,
    rows: [&DeviceBuf; 3],
    cols: [&DeviceBuf; 3],
    diags: [&DeviceBuf; 2],
    n: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
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
                KernelArg::Buf(rows[0]),
                KernelArg::Buf(rows[1]),
                KernelArg::Buf(rows[2]),
                KernelArg::Buf(cols[0]),
                KernelArg::Buf(cols[1]),
                KernelArg::Buf(cols[2]),
                KernelArg::Buf(diags[0]),
                KernelArg::Buf(diags[1]),
                KernelArg::I32(kernel::i32_len("contrastive", n)?),
            ],
        )
    }?;
    Ok((loss.into_tensor()?, i2t.into_tensor()?, t2i.into_tensor()?))
}

fn inputs(
    op: &'static str,
    features: &[&Tensor],
    logit_scale: &Tensor,
) -> Result<(Vec<Tensor>, Tensor)> {
    let mut all: Vec<&Tensor> = features.to_vec();
    all.push(logit_scale);
    kernel::kernel_device(op, &all)?;
    let f = features
        .iter()
        .map(|t| kernel::typed_input(op, t))
        .collect::<Result<Vec<_>>>()?;
    Ok((f, kernel::f32_input(op, logit_scale)?))
}

pub(super) fn forward(img: &Tensor, txt: &Tensor, logit_scale: &Tensor) -> Result<Forward> {
    let op = "contrastive";
    let (f, ls) = inputs(op, &[img, txt], logit_scale)?;
    let (img, txt) = (&f[0], &f[1]);
    let device = img.device();
    let n = img.shape()[0];
    let rows = row_pass(op, img, txt, &ls, 0, true)?;
    let Some((pm, ps, po, stripes)) = &rows.cols else {
        return Err(crate::Error::Msg(format!(
            "{op}: the forward pass left no column partials"
        )));
    };
    let buf = |len: usize| DeviceBuf::f32(device, &[len]);
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
                KernelArg::Buf(pm),
                KernelArg::Buf(ps),
                KernelArg::Buf(po),
                KernelArg::I32(*stripes as i32),
                KernelArg::I32(kernel::i32_len(op, n)?),
            ],
        )
    }?;
    let (loss, i2t, t2i) = loss_of(
        device,
        [&rows.max, &rows.lsum, &rows.other],
        [&col_max, &col_lsum, &col_other],
        [&rows.diag, &rows.diag],
        n,
    )?;
    Ok(Forward {
        loss,
        i2t,
        t2i,
        stats: vec![
            rows.max.into_tensor()?,
            rows.lsum.into_tensor()?,
            col_max.into_tensor()?,
            col_lsum.into_tensor()?,
            rows.diag.into_tensor()?,
        ],
    })
}

/// The local form's forward on unit features: this rank's rows `il`, `tl` [n, d] against all
/// `ia`, `ta` [N, d], labels at column i + off. Returns the loss, the fractions of local images
/// and texts whose own pair scores highest, and, for backward, [image rows' max, log Σ, label
/// entries, text rows' max, log Σ, label entries], each [n].
pub(super) fn forward_local(
    il: &Tensor,
    tl: &Tensor,
    ia: &Tensor,
    ta: &Tensor,
    logit_scale: &Tensor,
    off: usize,
) -> Result<(Tensor, Tensor, Tensor, Vec<Tensor>)> {
    let op = "contrastive_local";
    let (f, ls) = inputs(op, &[il, tl, ia, ta], logit_scale)?;
    let img_rows = row_pass(op, &f[0], &f[3], &ls, off, false)?;
    let txt_rows = row_pass(op, &f[1], &f[2], &ls, off, false)?;
    let (loss, i2t, t2i) = loss_of(
        f[0].device(),
        [&img_rows.max, &img_rows.lsum, &img_rows.other],
        [&txt_rows.max, &txt_rows.lsum, &txt_rows.other],
        [&img_rows.diag, &txt_rows.diag],
        f[0].shape()[0],
    )?;
    let mut stats = Vec::with_capacity(6);
    for side in [img_rows, txt_rows] {
        stats.push(side.max.into_tensor()?);
        stats.push(side.lsum.into_tensor()?);
        stats.push(side.diag.into_tensor()?);
    }
    Ok((loss, i2t, t2i, stats))
}

/// A softmax term of the backward: the (max, log Σ, label entries) of one side's rows.
pub(super) type Lse<'a> = (&'a Tensor, &'a Tensor, &'a Tensor);

/// One backward pass: the gradient of the unnormalised rows behind the unit rows A [na, d], in
/// A's dtype — dÂ = s·dS·B through the normalisation backward (`a_norm`: ‖·‖ of those rows) —
/// where dS has P^row (`rows`: A's row statistics) and/or P^col (`cols`: B's row statistics),
/// labels at column i + off (negative: the column-owner pass of the local form), divided by 2·kn.
/// With `want_dlog`, d logit_scale as a `[]` tensor (this pass's terms of Σ dS·S).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_pass(
    a: &Tensor,
    b: &Tensor,
    a_norm: &Tensor,
    rows: Option<Lse>,
    cols: Option<Lse>,
    logit_scale: &Tensor,
    dloss: &Tensor,
    kn: usize,
    off: i64,
    want_dlog: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let op = "contrastive backward";
    let mut all = vec![a, b, a_norm, logit_scale, dloss];
    for (m, l, dg) in rows.iter().chain(cols.iter()) {
        all.extend([*m, *l, *dg]);
    }
    let device = kernel::kernel_device(op, &all)?;
    let input = |t: &Tensor| kernel::f32_input(op, t);
    let (a, b) = (kernel::typed_input(op, a)?, kernel::typed_input(op, b)?);
    let (an, ls, g) = (input(a_norm)?, input(logit_scale)?, input(dloss)?);
    // an absent term's statistics are never read: any f32 buffer stands in
    let lse = |t: Option<Lse>| -> Result<[Tensor; 3]> {
        match t {
            Some((m, l, dg)) => Ok([input(m)?, input(l)?, input(dg)?]),
            None => Ok([an.clone(), an.clone(), an.clone()]),
        }
    };
    let (terms, [am, al, ad], [bm, bl, bd]) = (
        rows.is_some() as i32 | (cols.is_some() as i32) << 1,
        lse(rows)?,
        lse(cols)?,
    );
    let (na, nb, d) = (a.shape()[0], b.shape()[0], a.shape()[1]);
    let off = i32::try_from(off)
        .map_err(|_| crate::Error::shape(op, format!("label offset {off} exceeds i32")))?;
    let blocks = na.div_ceil(TILE);
    let mut da = DeviceBuf::like(&a)?;
    let mut dacc = DeviceBuf::f32(device, &[na, d])?;
    let mut parts = DeviceBuf::words(device, blocks.max(1))?;
    let name = format!("contrastive_bwd_{}", kernel::dtype_suffix(a.dtype()));
    // SAFETY: a and da hold na·d elements of the kernel's type, b nb·d, dacc na·d f32; the norms
    // and A's statistics na, B's nb (absent ones are never read); parts one f64 per block.
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
                KernelArg::In(&ad),
                KernelArg::In(&bd),
                KernelArg::In(&ls),
                KernelArg::In(&g),
                KernelArg::I32(kernel::i32_len(op, na)?),
                KernelArg::I32(kernel::i32_len(op, nb)?),
                KernelArg::I32(kernel::i32_len(op, kn)?),
                KernelArg::I32(off),
                KernelArg::I32(terms),
                KernelArg::I32(kernel::i32_len(op, d)?),
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
                    KernelArg::I32(kernel::i32_len(op, kn)?),
                ],
            )
        }?;
        Some(out.into_tensor()?)
    } else {
        None
    };
    Ok((da.into_tensor()?, dlogit))
}
