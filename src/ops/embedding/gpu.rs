//! Launchers of `kernels/embedding.cu` on Emu or Cuda. Forward: a row gather, one thread per
//! output element. Backward: deterministic per-vocab-row ownership over a CSR index of the ids
//! built here on the host by counting sort (`off[V + 1]`, `pos[N]`, positions ascending), so each
//! `dw` row is summed in id order by one block — no float atomics, bit-identical to the CPU.
//! Tables (and outputs) f32, f16 or bf16; dw in the table's dtype, summed in f32.
//!
//! The ids and their CSR index travel together: one upload per lookup ([`DeviceIndex`], built in
//! forward and kept by the graph op for backward), the only host→device copy an embedding makes.

use crate::device::kernel::{self, DeviceBuf, KernelArg};
use crate::device::LaunchConfig;
use crate::{DType, Error, Result, Tensor};

const MODULE: &str = "embedding";

fn ids_i32(op: &'static str, ids: &[u32]) -> Result<Vec<i32>> {
    ids.iter()
        .map(|&i| i32::try_from(i).map_err(|_| Error::shape(op, format!("id {i} exceeds i32"))))
        .collect()
}

/// The ids of a lookup and their CSR index over `vocab` rows in one device buffer:
/// `[ids (n) | off (vocab + 1) | pos (n)]`, uploaded once.
pub(crate) struct DeviceIndex {
    buf: DeviceBuf,
    n: usize,
    vocab: usize,
}

impl DeviceIndex {
    pub(crate) fn upload(device: crate::Device, ids: &[u32], vocab: usize) -> Result<DeviceIndex> {
        let op = "embedding";
        let (off, pos) = csr(ids, vocab);
        let mut all = ids_i32(op, ids)?;
        all.extend_from_slice(&off);
        all.extend_from_slice(&pos);
        Ok(DeviceIndex {
            buf: DeviceBuf::from_i32(device, &all)?,
            n: ids.len(),
            vocab,
        })
    }
    pub(crate) fn device(&self) -> crate::Device {
        self.buf.device()
    }
}

/// `out[k] = weight[ids[k]]`; ids already range-checked; output shape `ids_shape + [D]`.
pub(crate) fn forward(weight: &Tensor, index: &DeviceIndex, ids_shape: &[usize]) -> Result<Tensor> {
    let op = "embedding";
    let w = kernel::typed_input(op, weight)?;
    let d = w.shape()[1];
    let n = index.n;
    kernel::i32_len(op, n * d)?;
    let mut shape = ids_shape.to_vec();
    shape.push(d);
    let mut out = DeviceBuf::typed(w.device(), &shape, w.dtype())?;
    let name = format!("embedding_fwd_{}", kernel::dtype_suffix(w.dtype()));
    // SAFETY: out holds n·d elements, ids n (each < V), w V·d.
    unsafe {
        kernel::launch(
            w.device(),
            MODULE,
            &name,
            LaunchConfig::for_elements(n * d, 256),
            &mut [
                KernelArg::Out(&mut out),
                KernelArg::In(&w),
                KernelArg::BufAt(&index.buf, 0),
                KernelArg::I32(n as i32),
                KernelArg::I32(d as i32),
            ],
        )
    }?;
    out.into_tensor()
}

/// The CSR index of `ids` over `vocab` rows: (`off`, `pos`), positions of each id ascending.
pub(crate) fn csr(ids: &[u32], vocab: usize) -> (Vec<i32>, Vec<i32>) {
    let mut off = vec![0i32; vocab + 1];
    for &i in ids {
        off[i as usize + 1] += 1;
    }
    for v in 0..vocab {
        off[v + 1] += off[v];
    }
    let mut next = off.clone();
    let mut pos = vec![0i32; ids.len()];
    for (k, &i) in ids.iter().enumerate() {
        pos[next[i as usize] as usize] = k as i32;
        next[i as usize] += 1;
    }
    (off, pos)
}

/// `dw [vocab, D]` in `dtype` (the table's) from `dy [.., D]` (one row per id of `index`): dy
/// of the table's dtype, or a 16-bit dy into an f32 table's gradient.
pub(crate) fn backward(dy: &Tensor, index: &DeviceIndex, dtype: DType) -> Result<Tensor> {
    let op = "embedding backward";
    let dy = kernel::typed_input(op, dy)?;
    let name = match (dy.dtype(), dtype) {
        (g, w) if g == w => format!("embedding_bwd_{}", kernel::dtype_suffix(g)),
        (g, DType::F32) => format!("embedding_bwd_{}_f32", kernel::dtype_suffix(g)),
        (g, w) => {
            return Err(Error::shape(
                op,
                format!("a {g} gradient {:?} for a {w} table: the gradient must be the table's dtype (or 16-bit into an f32 table)", dy.shape()),
            ))
        }
    };
    let (n, vocab) = (index.n, index.vocab);
    let d = *dy.shape().last().unwrap_or(&0);
    if dy.numel() != n * d {
        crate::bail_shape!(op, "gradient {:?} does not match {n} ids", dy.shape());
    }
    kernel::i32_len(op, (vocab * d).max(n * d))?;
    let mut dw = DeviceBuf::typed(dy.device(), &[vocab, d], dtype)?;
    let cfg = LaunchConfig {
        grid: (vocab.max(1) as u32, d.div_ceil(128).max(1) as u32, 1),
        block: (128, 1, 1),
        shared_bytes: 0,
    };
    if vocab == 0 || d == 0 {
        return dw.into_tensor();
    }
    // SAFETY: dw holds V·d elements, off V+1, pos n (each < n), dy n·d.
    unsafe {
        kernel::launch(
            dy.device(),
            MODULE,
            &name,
            cfg,
            &mut [
                KernelArg::Out(&mut dw),
                KernelArg::In(&dy),
                KernelArg::BufAt(&index.buf, n),
                KernelArg::BufAt(&index.buf, n + vocab + 1),
                KernelArg::I32(d as i32),
            ],
        )
    }?;
    dw.into_tensor()
}
