//! The recorded op: one variant per op family, each carrying the non-tensor arguments its backward
//! rule needs, and the single `match` that dispatches backward. The rules themselves live beside
//! their forward code in `ops/<family>/mod.rs`.

use super::checkpoint::Checkpoint;
use crate::ops::{
    attention::packed::PackedAttentionOp, attention::AttentionOp, batchnorm::BatchNorm2dOp,
    binary::BinaryOp, contrastive::ContrastiveLocalOp, contrastive::ContrastiveOp,
    conv2d::Conv2dOp, cross_entropy::CrossEntropyOp, embedding::EmbeddingOp,
    layernorm::LayerNormOp, layout::LayoutOp, matmul::LinearOp, matmul::MatMulOp,
    normalize::L2NormalizeOp, pool::AvgPool2dOp, reduce::ReduceOp, round::RoundOp,
    softmax::SoftmaxOp, unary::UnaryOp,
};
use crate::{Result, Tensor};

pub enum Op<'m> {
    MatMul(MatMulOp),
    Linear(LinearOp),
    Binary(BinaryOp),
    Unary(UnaryOp),
    LayerNorm(LayerNormOp),
    Softmax(SoftmaxOp),
    Embedding(EmbeddingOp),
    Layout(LayoutOp),
    Conv2d(Conv2dOp),
    BatchNorm2d(BatchNorm2dOp<'m>),
    AvgPool2d(AvgPool2dOp),
    Reduce(ReduceOp),
    Round(RoundOp),
    L2Normalize(L2NormalizeOp),
    CrossEntropy(CrossEntropyOp),
    Contrastive(ContrastiveOp),
    ContrastiveLocal(ContrastiveLocalOp),
    Attention(AttentionOp),
    PackedAttention(PackedAttentionOp),
    Checkpoint(Checkpoint<'m>),
}

/// Gradients of the inputs of one node, given the gradient of its output. `needs[i]` says whether
/// input i wants a gradient; a rule may skip the work for the others (returning `None`).
pub(crate) fn backward(
    op: &Op<'_>,
    saved: &[Tensor],
    gout: &Tensor,
    needs: &[bool],
) -> Result<Vec<Option<Tensor>>> {
    match op {
        Op::MatMul(o) => o.backward(saved, gout, needs),
        Op::Linear(o) => o.backward(saved, gout, needs),
        Op::Binary(o) => o.backward(saved, gout, needs),
        Op::Unary(o) => o.backward(saved, gout, needs),
        Op::LayerNorm(o) => o.backward(saved, gout, needs),
        Op::Softmax(o) => o.backward(saved, gout, needs),
        Op::Embedding(o) => o.backward(saved, gout, needs),
        Op::Layout(o) => o.backward(saved, gout, needs),
        Op::Conv2d(o) => o.backward(saved, gout, needs),
        Op::BatchNorm2d(o) => o.backward(saved, gout, needs),
        Op::AvgPool2d(o) => o.backward(saved, gout, needs),
        Op::Reduce(o) => o.backward(saved, gout, needs),
        Op::Round(o) => o.backward(saved, gout, needs),
        Op::L2Normalize(o) => o.backward(saved, gout, needs),
        Op::CrossEntropy(o) => o.backward(saved, gout, needs),
        Op::Contrastive(o) => o.backward(saved, gout, needs),
        Op::ContrastiveLocal(o) => o.backward(saved, gout, needs),
        Op::Attention(o) => o.backward(saved, gout, needs),
        Op::PackedAttention(o) => o.backward(saved, gout, needs),
        Op::Checkpoint(o) => o.backward(saved, gout, needs),
    }
}
