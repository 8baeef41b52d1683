//! Embedding lookup (row gather): `out[i] = weight[ids[i]]`. Also serves any "pick rows by index"
//! need, such as taking the EOT token's features in the text tower. Backward scatter-adds rows
//! into a zero gradient in id order (deterministic: no atomics, no thread-dependent order).

pub(crate) mod gpu;

use crate::graph::{Graph, Op, Var};
use crate::ops::cpu_input;
use crate::{bail_shape, Result, Tensor};
use std::sync::Arc;

pub struct EmbeddingOp {
    ids: Arc<Vec<u32>>,
    vocab: usize,
}

/// Rows of `weight` [V, D] picked by `ids` (any shape `ids_shape`); output `ids_shape + [D]`.
pub fn embedding(weight: &Tensor, ids: &[u32], ids_shape: &[usize]) -> Result<Tensor> {
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
    let (v, d) = (weight.shape()[0], weight.shape()[1]);
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= v) {
        bail_shape!(
            "embedding",
            "id {bad} is out of range for a table of {v} rows"
        );
    }
    if crate::device::kernel::runs_kernels(weight.device()) {
        return gpu::forward(weight, ids, ids_shape);
    }
    let w = cpu_input("embedding", weight)?;
    let ws = w.f32s("embedding")?;
    let mut out = Vec::with_capacity(ids.len() * d);
    for &i in ids {
        out.extend_from_slice(&ws[i as usize * d..(i as usize + 1) * d]);
    }
    let mut shape = ids_shape.to_vec();
    shape.push(d);
    Ok(Tensor::from_f32(out, &shape))
}

/// The gradient of the table: `dw[v] = Σ_{k: ids[k] = v} dy[k]`, added in id order.
pub fn embedding_backward(gout: &Tensor, ids: &[u32], vocab: usize) -> Result<Tensor> {
    if crate::device::kernel::runs_kernels(gout.device()) {
        return gpu::backward(gout, ids, vocab);
    }
    let g = cpu_input("embedding backward", gout)?;
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
    Ok(Tensor::from_f32(dw, &[vocab, d]))
}

impl<'m> Graph<'m> {
    /// Rows of `weight` picked by `ids` (shape `ids_shape`).
    pub fn embedding(&self, weight: &Var, ids: &[u32], ids_shape: &[usize]) -> Result<Var> {
        let out = embedding(weight.tensor(), ids, ids_shape)?;
        let op = EmbeddingOp {
            ids: Arc::new(ids.to_vec()),
            vocab: weight.shape()[0],
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
        Ok(vec![Some(embedding_backward(gout, &self.ids, self.vocab)?)])
    }
}
