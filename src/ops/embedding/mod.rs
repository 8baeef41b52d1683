//! Embedding lookup (row gather): `out[i] = weight[ids[i]]`. Also serves any "pick rows by index"
//! need, such as taking the EOT token's features in the text tower. Backward scatter-adds rows
//! into a zero gradient in id order (deterministic: no atomics, no thread-dependent order).

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
        let g = cpu_input("embedding backward", gout)?;
        let gs = g.f32s("embedding backward")?;
        let d = *gout.shape().last().unwrap_or(&0);
        let mut dw = vec![0f32; self.vocab * d];
        for (k, &i) in self.ids.iter().enumerate() {
            let row = &mut dw[i as usize * d..(i as usize + 1) * d];
            for (r, v) in row.iter_mut().zip(&gs[k * d..(k + 1) * d]) {
                *r += v;
            }
        }
        Ok(vec![Some(Tensor::from_f32(dw, &[self.vocab, d]))])
    }
}
