//! Embedding lookup (row gather): `out[i] = weight[ids[i]]`. Also serves any "pick rows by index"
//! need, such as taking the EOT token's features in the text tower. Backward scatter-adds rows
//! into a zero gradient in id order (deterministic: no atomics, no thread-dependent order).
//!
//! Tables f32, f16 or bf16 (a 16-bit cast of the weights, or 16-bit activations when picking
//! rows) on every device; the output is the table's dtype, and the gradient too, summed in f32
//! (a 16-bit gradient into an f32 table stays f32).

pub(crate) mod gpu;

use crate::graph::{Graph, Op, Var};
use crate::ops::cpu_input_f32;
use crate::{bail_shape, DType, Result, Tensor};
use std::sync::Arc;

pub struct EmbeddingOp {
    ids: Arc<Vec<u32>>,
    vocab: usize,
    /// On Emu/Cuda: the ids and their CSR index, uploaded once in forward for backward too.
    device_index: Option<gpu::DeviceIndex>,
    /// The table's dtype, that of its gradient.
    dtype: DType,
}

/// The checks of a lookup: a [V, D] table, ids filling `ids_shape`, every id < V.
fn check(weight: &Tensor, ids: &[u32], ids_shape: &[usize]) -> Result<()> {
    if weight.rank() != 2 {
        bail_shape!(
            "embedding",
            "weight must be [vocab, dim], got {:?}",
            weight.shape()
        );
    }
    if ids.len() != ids_shape.iter().product::<usize>() {
        bail_shape!(
            "embedding",
            "{} ids do not fill shape {ids_shape:?}",
            ids.len()
        );
    }
    let v = weight.shape()[0];
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= v) {
        bail_shape!(
            "embedding",
            "id {bad} is out of range for a table of {v} rows"
        );
    }
    Ok(())
}

/// Rows of `weight` [V, D] picked by `ids` (any shape `ids_shape`); output `ids_shape + [D]`.
pub fn embedding(weight: &Tensor, ids: &[u32], ids_shape: &[usize]) -> Result<Tensor> {
    check(weight, ids, ids_shape)?;
    let (v, d) = (weight.shape()[0], weight.shape()[1]);
    if crate::device::kernel::runs_kernels(weight.device()) {
        let index = gpu::DeviceIndex::upload(weight.device(), ids, v)?;
        return gpu::forward(weight, &index, ids_shape);
    }
    // a 16-bit table: widened (exactly) and the gathered rows narrowed back (exactly)
    let w = cpu_input_f32("embedding", weight)?;
    let ws = w.f32s("embedding")?;
    let mut out = Vec::with_capacity(ids.len() * d);
    for &i in ids {
        out.extend_from_slice(&ws[i as usize * d..(i as usize + 1) * d]);
    }
    let mut shape = ids_shape.to_vec();
    shape.push(d);
    Tensor::from_f32(out, &shape).try_to_dtype(weight.dtype())
}

/// The gradient of the table: `dw[v] = Σ_{k: ids[k] = v} dy[k]`, added in id order (in f32),
/// in the gradient's dtype.
pub fn embedding_backward(gout: &Tensor, ids: &[u32], vocab: usize) -> Result<Tensor> {
    embedding_backward_as(gout, ids, vocab, gout.dtype())
}

/// [`embedding_backward`] with dw in `dtype`, the table's: `gout`'s dtype, or f32 for a 16-bit
/// gradient into an f32 table (summed in f32 either way, a 16-bit dw rounded once).
pub fn embedding_backward_as(
    gout: &Tensor,
    ids: &[u32],
    vocab: usize,
    dtype: DType,
) -> Result<Tensor> {
    if gout.dtype() != dtype && dtype != DType::F32 {
        bail_shape!(
            "embedding backward",
            "a {} gradient {:?} for a {dtype} table: the gradient must be the table's dtype (or 16-bit into an f32 table)",
            gout.dtype(),
            gout.shape()
        );
    }
    if crate::device::kernel::runs_kernels(gout.device()) {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            bail_shape!(
                "embedding backward",
                "id {bad} is out of range for a table of {vocab} rows"
            );
        }
        let index = gpu::DeviceIndex::upload(gout.device(), ids, vocab)?;
        return gpu::backward(gout, &index, dtype);
    }
    let g = cpu_input_f32("embedding backward", gout)?;
    let gs = g.f32s("embedding backward")?;
    let d = *gout.shape().last().unwrap_or(&0);
    if gs.len() != ids.len() * d {
        bail_shape!(
            "embedding backward",
            "gradient {:?} does not match {} ids",
            gout.shape(),
            ids.len()
        );
    }
    let mut dw = vec![0f32; vocab * d];
    for (k, &i) in ids.iter().enumerate() {
        let row = &mut dw[i as usize * d..(i as usize + 1) * d];
        for (r, v) in row.iter_mut().zip(&gs[k * d..(k + 1) * d]) {
            *r += v;
        }
    }
    Tensor::from_f32(dw, &[vocab, d]).try_to_dtype(dtype)
}

impl<'m> Graph<'m> {
    /// Rows of `weight` picked by `ids` (shape `ids_shape`).
    pub fn embedding(&self, weight: &Var, ids: &[u32], ids_shape: &[usize]) -> Result<Var> {
        let w = weight.tensor();
        let (out, device_index) = if crate::device::kernel::runs_kernels(w.device()) {
            check(w, ids, ids_shape)?;
            let index = gpu::DeviceIndex::upload(w.device(), ids, w.shape()[0])?;
            (gpu::forward(w, &index, ids_shape)?, Some(index))
        } else {
            (embedding(w, ids, ids_shape)?, None)
        };
        let op = EmbeddingOp {
            ids: Arc::new(ids.to_vec()),
            vocab: w.shape()[0],
            device_index,
            dtype: w.dtype(),
        };
        Ok(self.record(Op::Embedding(op), &[weight], vec![], out))
    }
}

impl EmbeddingOp {
    pub(crate) fn backward(
        &self,
        _saved: &[Tensor],
        gout: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        if let Some(index) = self
            .device_index
            .as_ref()
            .filter(|i| i.device() == gout.device())
        {
            return Ok(vec![Some(gpu::backward(gout, index, self.dtype)?)]);
        }
        Ok(vec![Some(embedding_backward_as(
            gout, &self.ids, self.vocab, self.dtype,
        )?)])
    }
}
