//! The collectives a data-parallel step needs, behind one interface with two implementations:
//! NCCL for GPUs (`super::nccl::Nccl`), and [`InProcess`] — ranks as threads of one process — used
//! to test the data-parallel logic on machines without GPUs (Cpu and Emu ranks).
//!
//! Semantics (NCCL's, so the two agree): every rank of the group calls the same collectives in
//! the same order with tensors of the same shape and dtype; `all_reduce_sum` returns Σ over
//! ranks on every rank; `all_gather` concatenates every rank's tensor along axis 0 in rank order;
//! `reduce_scatter_sum` sums the ranks' tensors and returns rank r's r-th slice along axis 0;
//! `broadcast` returns the root's tensor everywhere. Results live on the input's device.
//!
//! Determinism: the in-process sums add the ranks' values in rank order (f64 accumulation,
//! rounded once), so every rank gets the same bits and a rerun gives the same bits. (NCCL's ring
//! order differs; what is shared is that a collective's result is the same on every rank.)

use crate::{DType, Error, Result, Tensor};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A collective started by [`Communicator::all_reduce_sum_start`]: [`PendingCollective::wait`]
/// returns its result.
pub struct PendingCollective<'a> {
    finish: Box<dyn FnOnce() -> Result<Tensor> + 'a>,
}

impl<'a> PendingCollective<'a> {
    /// One finished already (a communicator without asynchronous collectives).
    pub fn done(result: Result<Tensor>) -> PendingCollective<'a> {
        PendingCollective {
            finish: Box::new(move || result),
        }
    }

    /// One whose result `finish` waits for.
    pub fn later(finish: impl FnOnce() -> Result<Tensor> + 'a) -> PendingCollective<'a> {
        PendingCollective {
            finish: Box::new(finish),
        }
    }

    /// Waits for the collective; its result, as the blocking call would have returned it.
    pub fn wait(self) -> Result<Tensor> {
        (self.finish)()
    }
}

/// One rank's handle on its group.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Σ over ranks, on every rank.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Every rank's tensor, concatenated along axis 0 in rank order.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor>;
    /// The sum over ranks, split into `world_size` equal parts along axis 0: this rank's part.
    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// The root rank's tensor, on every rank.
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// [`Communicator::all_reduce_sum`] started without waiting for it, so that the caller can
    /// go on computing (a data-parallel step's gradient buckets while backward runs); the
    /// handle's `wait` returns the sum. It takes its place in the order of this rank's
    /// collectives when started, so every rank must start and call its collectives in the same
    /// order. `t` must not change until then (the caller keeps it). Default: the blocking sum,
    /// done before returning.
    fn all_reduce_sum_start(&self, t: &Tensor) -> Result<PendingCollective<'_>> {
        Ok(PendingCollective::done(self.all_reduce_sum(t)))
    }
    /// The communicator's failure, if an earlier collective failed after its call returned
    /// (NCCL's watchdog found it dead or hung): a caller that read values produced with it
    /// checks this before trusting them. Default: none (every failure is the call's own error).
    fn check(&self) -> Result<()> {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    AllReduce,
    AllGather,
    ReduceScatter,
    Broadcast(usize),
}

/// One rank's deposit: which collective it called, on what shape, with what values.
type Deposit = (Kind, Vec<usize>, Vec<f32>);

/// What ranks exchange in one round.
struct Round {
    generation: u64,
    slots: Vec<Option<Deposit>>,
    /// Ranks that have read the result of the current round.
    readers: usize,
}

struct Shared {
    round: Mutex<Round>,
    cv: Condvar,
    timeout: Duration,
}

/// A group of ranks in one process: [`InProcess::group`] makes `world` handles, one per thread.
///
/// Each handle runs its rank's collectives on a worker thread of its own, one after another in
/// the order the rank called them: a blocking collective waits for its turn and its result, a
/// started one (`all_reduce_sum_start`) is in flight while the rank goes on computing — as
/// NCCL's collectives on their own stream are.
pub struct InProcess {
    endpoint: Endpoint,
    jobs: std::sync::mpsc::Sender<Job>,
}

/// The exchange of one rank (what the worker thread needs).
#[derive(Clone)]
struct Endpoint {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

/// Every rank's (shape, values) of one collective, in rank order.
type Exchanged = Result<Vec<(Vec<usize>, Vec<f32>)>>;

/// A collective for the worker: its kind, this rank's shape and values, where to answer.
type Job = (
    Kind,
    Vec<usize>,
    Vec<f32>,
    std::sync::mpsc::Sender<Exchanged>,
);

impl InProcess {
    /// `world` handles sharing one group; a collective waits at most `timeout` for the others.
    pub fn group(world: usize, timeout: Duration) -> Vec<InProcess> {
        let shared = Arc::new(Shared {
            round: Mutex::new(Round {
                generation: 0,
                slots: vec![None; world],
                readers: 0,
            }),
            cv: Condvar::new(),
            timeout,
        });
        (0..world)
            .map(|rank| {
                let endpoint = Endpoint {
                    rank,
                    world,
                    shared: shared.clone(),
                };
                let (jobs, queue) = std::sync::mpsc::channel::<Job>();
                let worker = endpoint.clone();
                // ends when the handle (the queue's sender) is dropped; one that cannot start
                // drops the queue with it, and the rank's first collective says so
                let _ = std::thread::Builder::new()
                    .name(format!("rank-{rank}-comm"))
                    .spawn(move || {
                        for (kind, shape, values, answer) in queue {
                            let _ = answer.send(worker.exchange(kind, shape, values));
                        }
                    });
                InProcess { endpoint, jobs }
            })
            .collect()
    }

    /// Queues this rank's part of a collective on its worker; the receiver gets every rank's
    /// values once all have called it. 16-bit tensors travel widened (exact) and come back in
    /// their own dtype.
    fn start(&self, kind: Kind, t: &Tensor) -> Result<std::sync::mpsc::Receiver<Exchanged>> {
        let values = t
            .to_device(crate::Device::Cpu)?
            .try_to_dtype(DType::F32)?
            .to_vec();
        let (answer, result) = std::sync::mpsc::channel();
        self.jobs
            .send((kind, t.shape().to_vec(), values, answer))
            .map_err(|_| self.worker_gone())?;
        Ok(result)
    }

    fn worker_gone(&self) -> Error {
        Error::Msg(format!(
            "rank {}: the in-process communicator's thread is gone (it could not start, or \
             it ended)",
            self.endpoint.rank
        ))
    }

    /// [`InProcess::start`], then its result.
    fn exchange(&self, kind: Kind, t: &Tensor) -> Exchanged {
        self.start(kind, t)?
            .recv()
            .map_err(|_| self.worker_gone())?
    }
}

impl Endpoint {
    /// Deposits this rank's values, waits for every rank's, and returns all of them in rank
    /// order (after checking that every rank called the same collective on the same shape).
    fn exchange(&self, kind: Kind, shape: Vec<usize>, values: Vec<f32>) -> Exchanged {
        let name = match kind {
            Kind::AllReduce => "all_reduce",
            Kind::AllGather => "all_gather",
            Kind::ReduceScatter => "reduce_scatter",
            Kind::Broadcast(_) => "broadcast",
        };
        let deadline = Instant::now() + self.shared.timeout;
        let mut r = self.shared.round.lock().unwrap_or_else(|p| p.into_inner());
        // a previous round still being read: wait until it is cleared
        while r.slots[self.rank].is_some() {
            r = self.wait(r, deadline, name)?;
        }
        let generation = r.generation;
        r.slots[self.rank] = Some((kind, shape, values));
        self.shared.cv.notify_all();
        while r.generation == generation && r.slots.iter().any(Option::is_none) {
            r = self.wait(r, deadline, name)?;
        }
        let all: Vec<Deposit> = r
            .slots
            .iter()
            .map(|s| s.clone().expect("every rank deposited"))
            .collect();
        r.readers += 1;
        if r.readers == self.world {
            // the last reader opens the next round
            r.slots.iter_mut().for_each(|s| *s = None);
            r.readers = 0;
            r.generation += 1;
            self.shared.cv.notify_all();
        }
        drop(r);
        let (k0, s0) = (all[0].0, &all[0].1);
        for (q, (k, s, _)) in all.iter().enumerate() {
            if *k != k0 || s != s0 {
                return Err(Error::Msg(format!(
                    "collectives out of step: rank 0 called {k0:?} on {s0:?}, rank {q} called \
                     {k:?} on {s:?}"
                )));
            }
        }
        Ok(all.into_iter().map(|(_, s, v)| (s, v)).collect())
    }

    fn wait<'a>(
        &self,
        r: std::sync::MutexGuard<'a, Round>,
        deadline: Instant,
        name: &str,
    ) -> Result<std::sync::MutexGuard<'a, Round>> {
        let left = deadline.saturating_duration_since(Instant::now());
        let (r, timed_out) = self
            .shared
            .cv
            .wait_timeout(r, left)
            .map(|(g, t)| (g, t.timed_out()))
            .unwrap_or_else(|p| {
                let (g, t) = p.into_inner();
                (g, t.timed_out())
            });
        if timed_out && Instant::now() >= deadline {
            let missing: Vec<usize> = (0..self.world).filter(|&q| r.slots[q].is_none()).collect();
            return Err(Error::Msg(format!(
                "rank {}: {name} waited {:?} and rank(s) {missing:?} never arrived",
                self.rank, self.shared.timeout
            )));
        }
        Ok(r)
    }
}

impl InProcess {
    fn sum(all: &[(Vec<usize>, Vec<f32>)]) -> Vec<f32> {
        let n = all[0].1.len();
        (0..n)
            .map(|i| all.iter().map(|(_, v)| v[i] as f64).sum::<f64>() as f32)
            .collect()
    }
}

/// `values` as a tensor of `shape` on `like`'s device (the in-process transport goes through
/// host memory; NCCL's results are device tensors from the start).
fn on_device_of(like: &Tensor, values: Vec<f32>, shape: Vec<usize>) -> Result<Tensor> {
    Tensor::from_vec(values, shape)?
        .try_to_dtype(like.dtype())?
        .to_device(like.device())
}

impl Communicator for InProcess {
    fn rank(&self) -> usize {
        self.endpoint.rank
    }
    fn world_size(&self) -> usize {
        self.endpoint.world
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.all_reduce_sum_start(t)?.wait()
    }
    fn all_reduce_sum_start(&self, t: &Tensor) -> Result<PendingCollective<'_>> {
        let result = self.start(Kind::AllReduce, t)?;
        let like = t.clone();
        Ok(PendingCollective::later(move || {
            let all = result.recv().map_err(|_| self.worker_gone())??;
            on_device_of(&like, Self::sum(&all), like.shape().to_vec())
        }))
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        if t.rank() == 0 {
            return Err(Error::Msg("all_gather: a 0-d tensor has no axis 0".into()));
        }
        let all = self.exchange(Kind::AllGather, t)?;
        let mut shape = t.shape().to_vec();
        shape[0] *= self.endpoint.world;
        on_device_of(t, all.into_iter().flat_map(|(_, v)| v).collect(), shape)
    }
    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor> {
        if t.rank() == 0 || !t.shape()[0].is_multiple_of(self.endpoint.world) {
            return Err(Error::Msg(format!(
                "reduce_scatter: axis 0 of {:?} does not split into {} equal parts",
                t.shape(),
                self.endpoint.world
            )));
        }
        let all = self.exchange(Kind::ReduceScatter, t)?;
        let sum = Self::sum(&all);
        let part = sum.len() / self.endpoint.world;
        let mut shape = t.shape().to_vec();
        shape[0] /= self.endpoint.world;
        on_device_of(
            t,
            sum[self.endpoint.rank * part..(self.endpoint.rank + 1) * part].to_vec(),
            shape,
        )
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.endpoint.world {
            return Err(Error::Msg(format!(
                "broadcast: root {root} is not a rank of a world of {}",
                self.endpoint.world
            )));
        }
        let mut all = self.exchange(Kind::Broadcast(root), t)?;
        let (shape, v) = all.swap_remove(root);
        on_device_of(t, v, shape)
    }
}
