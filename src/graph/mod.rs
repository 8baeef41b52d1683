//! The autograd-lite graph.
//!
//! Forward code calls ops on a `Graph` (`g.matmul(&x, &w, false, true)?`); each op computes its
//! output at once and, when recording and any input needs a gradient, pushes one `Node`: the op
//! (an `Op` enum value with its non-tensor arguments), the ids of its inputs, and the tensors its
//! backward rule needs (`saved`). `backward` walks the nodes in reverse, runs one explicit rule per
//! op (`op::backward`), adds input gradients, and drops each node — and with it its saved
//! activations — as soon as its rule has run. Parameter gradients are accumulated in place into
//! the `Param`s.
//!
//! A `Var` holds its value directly, so values that backward does not need are freed by ordinary
//! Rust ownership as forward code drops them; the graph holds only what backward needs. In
//! inference mode (`Graph::inference()`) nothing is recorded at all.
//!
//! Checkpointing (`Graph::checkpoint`) runs a block without recording, saves only its inputs, and
//! re-runs it on a fresh recording graph during backward.

mod checkpoint;
pub(crate) mod op;
mod param;

pub use op::Op;
pub use param::Param;
pub(crate) use param::ValueWrite;

use crate::{Error, Result, Tensor};
use std::cell::RefCell;
use std::collections::HashMap;

pub(crate) type VarId = usize;

/// A value in a computation: its tensor, plus an id when gradients flow to it.
#[derive(Clone, Debug)]
pub struct Var {
    tensor: Tensor,
    id: Option<VarId>,
}

impl Var {
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }
    pub fn into_tensor(self) -> Tensor {
        self.tensor
    }
    pub fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }
    /// Whether backward will compute a gradient for this value.
    pub fn requires_grad(&self) -> bool {
        self.id.is_some()
    }
}

pub(crate) struct Node<'m> {
    pub op: Op<'m>,
    pub inputs: Vec<Option<VarId>>,
    pub out: VarId,
    pub saved: Vec<Tensor>,
}

#[derive(Default)]
struct Tape<'m> {
    nodes: Vec<Node<'m>>,
    next_id: VarId,
    params: Vec<(VarId, Param)>,
    leaves: Vec<VarId>,
}

impl Tape<'_> {
    /// Whether a checkpointed block was recorded (its parameters are not on this tape).
    fn has_checkpoint(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.op, op::Op::Checkpoint(_)))
    }
}

/// Records forward ops for one backward pass (or none, in inference mode). `'m` is the lifetime
/// of what checkpointed closures borrow (usually the model).
pub struct Graph<'m> {
    recording: bool,
    /// Set on the graph that re-runs a checkpointed block in backward.
    recomputing: bool,
    /// Inference-only fast paths allowed (`Graph::inference`); off on the quiet graph of a
    /// checkpointed forward, whose values must be those the recording recomputation gives.
    fast_inference: bool,
    /// SyncBatchNorm ([`Graph::sync_batch_norm`]): the data-parallel group whose ranks'
    /// batches training-mode BatchNorm takes its statistics over. `None`: this batch's own.
    batch_stats_group: Option<&'m dyn crate::dist::Communicator>,
    /// Mixed precision ([`Graph::set_autocast`]): the 16-bit format the layers' storage points
    /// round to (`ops::round`). `None`: f32 throughout.
    autocast: Option<crate::DType>,
    tape: RefCell<Tape<'m>>,
}

/// Gradients of the non-parameter leaves (`Graph::leaf`) after backward.
#[derive(Default, Debug)]
pub struct Grads {
    map: HashMap<VarId, Tensor>,
}

impl Grads {
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        v.id.and_then(|id| self.map.get(&id))
    }
}

impl<'m> Default for Graph<'m> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'m> Graph<'m> {
    /// A recording graph, for training.
    pub fn new() -> Self {
        Graph {
            recording: true,
            recomputing: false,
            fast_inference: false,
            batch_stats_group: None,
            autocast: None,
            tape: RefCell::new(Tape::default()),
        }
    }

    /// A graph that records nothing: ops just compute, through the inference fast paths (fused
    /// attention, cached transposed weights, fused conv + BatchNorm) where a layer has them.
    pub fn inference() -> Self {
        Graph {
            recording: false,
            recomputing: false,
            fast_inference: true,
            batch_stats_group: None,
            autocast: None,
            tape: RefCell::new(Tape::default()),
        }
    }

    /// A graph that records nothing and computes exactly as a recording graph does (no inference
    /// fast paths, whose rounding differs): the forward of a checkpointed block, whose output must
    /// equal what its recomputation in backward feeds the gradients.
    pub(crate) fn quiet() -> Self {
        Graph {
            recording: false,
            recomputing: false,
            fast_inference: false,
            batch_stats_group: None,
            autocast: None,
            tape: RefCell::new(Tape::default()),
        }
    }

    /// SyncBatchNorm: training-mode BatchNorm on this graph normalises by the statistics of the
    /// whole data-parallel batch — every rank of `group` (per-channel sums all-reduced in
    /// forward, the two gradient sums in backward) — as one process on the combined batch
    /// does. Every rank must run the same BatchNorms in the same order. On every device (Emu
    /// and Cuda: the sums computed and all-reduced on the device).
    pub fn sync_batch_norm(&mut self, group: &'m dyn crate::dist::Communicator) {
        self.batch_stats_group = Some(group);
    }

    /// Mixed precision on this graph: the layers round their GEMM/attention inputs and
    /// outputs and the activations between them to `dtype` (f16 or bf16), and the gradients
    /// flowing back through those points likewise (`ops::round`); LayerNorm, softmax and
    /// BatchNorm statistics, the residual stream, the loss and `logit_scale` stay f32, as under
    /// PyTorch's autocast. `None` or `Some(F32)`: f32 throughout.
    pub fn set_autocast(&mut self, dtype: Option<crate::DType>) {
        self.autocast = dtype.filter(|&d| d != crate::DType::F32);
    }

    /// The autocast format, if any ([`Graph::set_autocast`]).
    pub fn autocast_dtype(&self) -> Option<crate::DType> {
        self.autocast
    }

    /// The SyncBatchNorm group, if any.
    pub(crate) fn batch_stats_group(&self) -> Option<&'m dyn crate::dist::Communicator> {
        self.batch_stats_group
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Whether layers may take their inference-only fast paths (see [`Graph::inference`]).
    pub fn fast_inference(&self) -> bool {
        self.fast_inference
    }

    /// True while a checkpointed block is being re-run in backward. Ops with side effects
    /// (BatchNorm's running statistics) skip them then, so a step applies them once.
    pub fn is_recomputing(&self) -> bool {
        self.recomputing
    }

    fn new_id(&self) -> VarId {
        let mut t = self.tape.borrow_mut();
        t.next_id += 1;
        t.next_id - 1
    }

    /// A value that needs no gradient (data, labels, masks).
    pub fn constant(&self, t: Tensor) -> Var {
        Var {
            tensor: t,
            id: None,
        }
    }

    /// A value whose gradient backward returns in `Grads` (inputs of a gradient check, cached
    /// features whose gradients are needed).
    pub fn leaf(&self, t: Tensor) -> Var {
        if !self.recording {
            return self.constant(t);
        }
        let id = self.new_id();
        self.tape.borrow_mut().leaves.push(id);
        Var {
            tensor: t,
            id: Some(id),
        }
    }

    /// A model parameter: its gradient is accumulated into the `Param` by backward.
    /// A 16-bit value (the pure precision policies' weights) enters widened to f32, its gradient
    /// rounded to the parameter's format on the way back (`ops::round`).
    pub fn param(&self, p: &Param) -> Var {
        let v = self.param_unwidened(p);
        if !v.requires_grad() || v.tensor.dtype() == crate::DType::F32 {
            return match v.tensor.dtype() {
                crate::DType::F32 => v,
                // a failed widening (device lost) surfaces at the op that reads it
                _ => self.constant(v.tensor.try_to_dtype(crate::DType::F32).unwrap_or(v.tensor)),
            };
        }
        let widened = self.widen(v.clone());
        // same: the op reading the 16-bit value reports the device's error
        widened.unwrap_or(v)
    }

    /// [`Graph::param`] with the value as stored (16-bit under the pure policies): for a node
    /// that reads it in its own format (`Graph::autocast_param`).
    pub(crate) fn param_unwidened(&self, p: &Param) -> Var {
        let value = p.value();
        if !self.recording || !p.requires_grad() {
            return self.constant(value);
        }
        let id = self.new_id();
        self.tape.borrow_mut().params.push((id, p.clone()));
        Var {
            tensor: value,
            id: Some(id),
        }
    }

    /// Wrap an op's output, recording a node when any input needs a gradient.
    pub(crate) fn record(
        &self,
        op: Op<'m>,
        inputs: &[&Var],
        saved: Vec<Tensor>,
        out: Tensor,
    ) -> Var {
        if !self.recording || inputs.iter().all(|v| v.id.is_none()) {
            return Var {
                tensor: out,
                id: None,
            };
        }
        self.push_node(op, inputs, saved, out)
    }

    /// Append a node unconditionally and return its output with a fresh id.
    pub(crate) fn push_node(
        &self,
        op: Op<'m>,
        inputs: &[&Var],
        saved: Vec<Tensor>,
        out: Tensor,
    ) -> Var {
        let id = self.new_id();
        self.tape.borrow_mut().nodes.push(Node {
            op,
            inputs: inputs.iter().map(|v| v.id).collect(),
            out: id,
            saved,
        });
        Var {
            tensor: out,
            id: Some(id),
        }
    }

    /// Bytes of activations held by the graph for backward: saved tensors, each storage counted
    /// once, not counting parameter values (the model holds those anyway).
    pub fn saved_bytes(&self) -> usize {
        let tape = self.tape.borrow();
        let mut seen: std::collections::HashSet<usize> = tape
            .params
            .iter()
            .map(|(_, p)| p.value().storage_id())
            .collect();
        let mut bytes = 0;
        for n in &tape.nodes {
            for t in &n.saved {
                if seen.insert(t.storage_id()) {
                    bytes += t.storage_bytes();
                }
            }
        }
        bytes
    }

    /// The parameters recorded so far (each once, in first-use order): all those whose
    /// gradients this graph's backward will add to — or `None` when a checkpointed block was
    /// recorded, whose parameters only its recomputation in backward records.
    pub fn recorded_params(&self) -> Option<Vec<Param>> {
        let tape = self.tape.borrow();
        if tape.has_checkpoint() {
            return None;
        }
        let mut out: Vec<Param> = Vec::new();
        for (_, p) in &tape.params {
            if !out.iter().any(|q| q.ptr_eq(p)) {
                out.push(p.clone());
            }
        }
        Some(out)
    }

    /// Number of recorded nodes.
    pub fn num_nodes(&self) -> usize {
        self.tape.borrow().nodes.len()
    }

    /// Backward from a scalar loss (seed 1).
    pub fn backward(&self, loss: &Var) -> Result<Grads> {
        if loss.tensor.numel() != 1 {
            return Err(Error::Graph(format!(
                "backward needs a scalar loss, got shape {:?} (use backward_with for a seed)",
                loss.shape()
            )));
        }
        let seed = Tensor::full_on(1.0, loss.shape().to_vec(), loss.tensor().device())?;
        self.backward_with(loss, seed)
    }

    /// Backward from any value with an explicit output gradient `seed` of the same shape.
    /// Consumes the recorded tape: a second call is an error.
    pub fn backward_with(&self, root: &Var, seed: Tensor) -> Result<Grads> {
        self.backward_multi(&[(root, seed)])
    }

    /// Backward from several values at once (e.g. the image and text features of one
    /// micro-batch), each with its output gradient; contributions add up.
    pub fn backward_multi(&self, roots: &[(&Var, Tensor)]) -> Result<Grads> {
        self.backward_multi_with(roots, &mut |_| Ok(()))
    }

    /// [`Graph::backward_multi`] that calls `ready(p)` for each parameter `p` on this graph's
    /// tape as soon as this backward has added everything it will add to `p`'s gradient (its
    /// last reader, in backward order, has run; its gradient is in `p.grad()` from then on,
    /// `None` if nothing reached it), once per parameter — so that a data-parallel step can
    /// start reducing a bucket of gradients while the rest of backward still runs. The
    /// parameters a checkpointed block reads are recorded by its recomputation, not on this
    /// tape: `ready` is never called for them (their gradients are complete when this returns),
    /// and a graph holding such a block calls it for its tape's parameters at the end only
    /// ([`Graph::recorded_params`] is then `None`).
    pub fn backward_multi_with(
        &self,
        roots: &[(&Var, Tensor)],
        ready: &mut dyn FnMut(&Param) -> Result<()>,
    ) -> Result<Grads> {
        let mut seeds = Vec::with_capacity(roots.len());
        for (root, seed) in roots {
            if seed.shape() != root.shape() {
                return Err(Error::Graph(format!(
                    "seed gradient {:?} does not match the root value {:?}",
                    seed.shape(),
                    root.shape()
                )));
            }
            let Some(id) = root.id else {
                return Err(Error::Graph(
                    "backward from a value that does not depend on any parameter or leaf".into(),
                ));
            };
            seeds.push((id, seed.clone()));
        }
        let tape = std::mem::take(&mut *self.tape.borrow_mut());
        if tape.nodes.is_empty() && tape.params.is_empty() && tape.leaves.is_empty() {
            return Err(Error::Graph(
                "nothing recorded (backward already ran?)".into(),
            ));
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; tape.next_id];
        for (id, seed) in seeds {
            match grads[id].as_mut() {
                None => grads[id] = Some(seed),
                Some(acc) => crate::ops::binary::add_assign(acc, &seed)?,
            }
        }
        // Each parameter (a Param may sit on the tape under several ids, one per `param` call)
        // is complete after the earliest node that reads any of its ids has run backward.
        let checkpointed = tape.has_checkpoint();
        let mut groups: Vec<(Param, Vec<VarId>)> = Vec::new();
        for (id, p) in &tape.params {
            match groups.iter_mut().find(|(q, _)| q.ptr_eq(p)) {
                Some((_, ids)) => ids.push(*id),
                None => groups.push((p.clone(), vec![*id])),
            }
        }
        let mut group_of: Vec<Option<usize>> = vec![None; tape.next_id];
        for (g, (_, ids)) in groups.iter().enumerate() {
            ids.iter().for_each(|&id| group_of[id] = Some(g));
        }
        // complete_after[k]: the groups whose earliest reader is node k
        let mut complete_after: Vec<Vec<usize>> = vec![Vec::new(); tape.nodes.len()];
        if !checkpointed {
            let mut first_reader: Vec<Option<usize>> = vec![None; groups.len()];
            for (k, n) in tape.nodes.iter().enumerate() {
                for g in n.inputs.iter().flatten().filter_map(|&id| group_of[id]) {
                    first_reader[g].get_or_insert(k);
                }
            }
            for (g, k) in first_reader.iter().enumerate() {
                if let Some(k) = k {
                    complete_after[*k].push(g);
                }
            }
        }
        let mut done = vec![false; groups.len()];
        let mut complete = |g: usize, grads: &mut Vec<Option<Tensor>>| -> Result<()> {
            let (p, ids) = &groups[g];
            for &id in ids {
                if let Some(t) = grads[id].take() {
                    p.accumulate_grad(t)?;
                }
            }
            ready(p)
        };
        let mut nodes = tape.nodes;
        while let Some(node) = nodes.pop() {
            let k = nodes.len();
            // no gradient reaching a node: dropping it frees its saved tensors
            if let Some(gout) = grads[node.out].take() {
                let needs: Vec<bool> = node.inputs.iter().map(|i| i.is_some()).collect();
                let gins = op::backward(&node.op, &node.saved, &gout, &needs)?;
                let inputs = node.inputs;
                drop(node.saved); // activations go as soon as their rule has used them
                drop(gout);
                for (inp, gin) in inputs.into_iter().zip(gins) {
                    if let (Some(id), Some(g)) = (inp, gin) {
                        match grads[id].as_mut() {
                            None => grads[id] = Some(g),
                            Some(acc) => crate::ops::binary::add_assign(acc, &g)?,
                        }
                    }
                }
            }
            for &g in &complete_after[k] {
                complete(g, &mut grads)?;
                done[g] = true;
            }
        }
        // parameters read by no node that ran (or all of them, under checkpointing)
        for (g, d) in done.iter_mut().enumerate() {
            if !*d {
                complete(g, &mut grads)?;
                *d = true;
            }
        }
        let mut out = Grads::default();
        for id in tape.leaves {
            if let Some(g) = grads[id].take() {
                out.map.insert(id, g);
            }
        }
        Ok(out)
    }
}

/// The error for an op that has no implementation on a tensor's device yet.
pub(crate) fn unsupported_device(op: &'static str, t: &Tensor) -> Error {
    Error::Device {
        op,
        msg: format!(
            "not implemented on device {} (this build runs it on cpu)",
            t.device()
        ),
    }
}
