//! Activation checkpointing: run a block without recording and keep only its inputs; in backward,
//! run it again on a fresh recording graph and backpropagate through that. The recomputation uses
//! the same ops on the same inputs, so values — and therefore gradients — are bit-identical to an
//! un-checkpointed run; only the memory held between forward and backward changes.

use super::{Graph, Op, Var};
use crate::{Result, Tensor};

type BlockFn<'m> = Box<dyn Fn(&Graph<'m>, &[Var]) -> Result<Var> + 'm>;

pub struct Checkpoint<'m> {
    block: BlockFn<'m>,
    /// The forward graph's autocast format, which the recomputation must round with too.
    autocast: Option<crate::DType>,
}

impl<'m> Graph<'m> {
    /// `block(g, inputs)` with only `inputs` saved for backward. The block may use parameters
    /// (through `g.param`); their gradients are accumulated when the block is recomputed.
    pub fn checkpoint(
        &self,
        inputs: &[&Var],
        block: impl Fn(&Graph<'m>, &[Var]) -> Result<Var> + 'm,
    ) -> Result<Var> {
        if !self.is_recording() {
            let xs: Vec<Var> = inputs.iter().map(|v| (*v).clone()).collect();
            return block(self, &xs);
        }
        let mut quiet = Graph::quiet();
        quiet.set_autocast(self.autocast_dtype());
        let xs: Vec<Var> = inputs
            .iter()
            .map(|v| quiet.constant(v.tensor().clone()))
            .collect();
        let out = block(&quiet, &xs)?.into_tensor();
        let saved = inputs.iter().map(|v| v.tensor().clone()).collect();
        // The block always gets a node: even with constant inputs its parameters need gradients.
        Ok(self.push_node(
            Op::Checkpoint(Checkpoint {
                block: Box::new(block),
                autocast: self.autocast_dtype(),
            }),
            inputs,
            saved,
            out,
        ))
    }
}

impl<'m> Checkpoint<'m> {
    pub(crate) fn backward(
        &self,
        saved: &[Tensor],
        gout: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let mut g: Graph<'m> = Graph::new();
        g.recomputing = true;
        g.set_autocast(self.autocast);
        let xs: Vec<Var> = saved
            .iter()
            .zip(needs)
            .map(|(t, &need)| {
                if need {
                    g.leaf(t.clone())
                } else {
                    g.constant(t.clone())
                }
            })
            .collect();
        let out = (self.block)(&g, &xs)?;
        if !out.requires_grad() {
            return Ok(vec![None; saved.len()]);
        }
        let grads = g.backward_with(&out, gout.clone())?;
        Ok(xs.iter().map(|x| grads.get(x).cloned()).collect())
    }
}
