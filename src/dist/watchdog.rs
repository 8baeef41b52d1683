//! The communicator's watchdog: a thread that follows every collective enqueued on the GPU until
//! it completes, so that the host never waits for one itself (it runs ahead and queues the next
//! kernels) and a dead or hung peer still ends the run within `--dist-timeout` — PyTorch's
//! ProcessGroupNCCL watchdog, on clipcu's terms.
//!
//! The rank's thread hands each collective over with [`Watchdog::watch`]: a completion to poll
//! (a CUDA event recorded after it) and its name. The watchdog polls the oldest one (they
//! complete in order: one stream) and, between polls, the communicator's asynchronous error
//! (`ncclCommGetAsyncError`). On an error, or when the oldest has not completed within the
//! timeout, it records the failure — naming the rank, the collective and its sequence number —
//! and aborts the communicator (`ncclCommAbort`), which ends the stuck NCCL kernels so that
//! whatever the rank's thread waits for (a read-back of the step's scalars) returns. Every later
//! call, and [`Watchdog::check`], is then that error. Should the rank's thread still not have
//! seen it after a grace period (a wait that the abort did not end), `on_stuck` runs: for NCCL,
//! print the failure and exit the process, as the launcher expects of a failed rank.
//!
//! Generic over [`Completion`] and [`Health`], so that its logic is tested without a GPU
//! (tests/dist.rs drives it with flags).

use crate::{Error, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Whether a watched collective has completed (`Err`: the device reported an error).
pub trait Completion: Send {
    fn is_complete(&self) -> std::result::Result<bool, String>;
}

/// The communicator as the watchdog sees it.
pub trait Health: Send + Sync {
    /// Called once on the watchdog's thread before anything else (bind the CUDA context).
    fn on_thread_start(&self) {}
    /// An asynchronous error of the communicator, if it has one.
    fn async_error(&self) -> Option<String>;
    /// Abort the communicator (called once, from the watchdog's thread). It may give up (a call
    /// of the rank's thread holds the communicator and does not return): `on_stuck` follows
    /// after the grace period then.
    fn abort(&self);
}

struct Watched {
    done: Box<dyn Completion>,
    what: String,
    since: Instant,
}

struct Shared {
    queue: Mutex<VecDeque<Watched>>,
    cv: Condvar,
    failure: Mutex<Option<String>>,
    /// The rank's thread has been told of the failure (a call returned it).
    seen: AtomicBool,
    stop: AtomicBool,
}

/// One communicator's watchdog thread; stops (and joins it) when dropped.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// How the watchdog polls and how long it waits.
#[derive(Clone, Copy, Debug)]
pub struct WatchTimes {
    /// A collective not complete this long after it was enqueued is a failure (`--dist-timeout`).
    pub timeout: Duration,
    /// Between polls of the oldest collective.
    pub poll: Duration,
    /// After a failure, how long the rank's thread has to see it before `on_stuck` runs.
    pub grace: Duration,
}

impl Watchdog {
    /// Starts the thread. `on_stuck(failure)` runs on it when the rank's thread has not seen a
    /// failure within `times.grace`.
    pub fn start(
        health: Arc<dyn Health>,
        times: WatchTimes,
        on_stuck: Box<dyn Fn(&str) + Send>,
    ) -> Result<Watchdog> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
            failure: Mutex::new(None),
            seen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("comm-watchdog".into())
            .spawn(move || watch_loop(&s, health.as_ref(), times, on_stuck))
            .map_err(|e| Error::Msg(format!("cannot start the communicator's watchdog: {e}")))?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Follow a collective just enqueued: `done` tells when it completed, `what` names it in a
    /// failure. An error (and nothing watched) when the communicator has already failed.
    pub fn watch(&self, done: Box<dyn Completion>, what: String) -> Result<()> {
        self.check()?;
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back(Watched {
            done,
            what,
            since: Instant::now(),
        });
        self.shared.cv.notify_all();
        Ok(())
    }

    /// Record a failure the rank's thread met itself (NCCL refused a call), unless one is
    /// recorded already: every later call and `check` is then that error.
    pub fn fail(&self, failure: String) {
        let mut f = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(failure);
        }
        self.shared.seen.store(true, Ordering::SeqCst);
    }

    /// The communicator's failure, if it has failed.
    pub fn check(&self) -> Result<()> {
        let f = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match f.as_ref() {
            None => Ok(()),
            Some(msg) => {
                self.shared.seen.store(true, Ordering::SeqCst);
                Err(Error::Msg(msg.clone()))
            }
        }
    }

    /// Collectives still watched (enqueued, not seen complete).
    pub fn in_flight(&self) -> usize {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch_loop(
    s: &Shared,
    health: &dyn Health,
    times: WatchTimes,
    on_stuck: Box<dyn Fn(&str) + Send>,
) {
    health.on_thread_start();
    loop {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
        let Some(front) = q.front() else {
            // nothing in flight: sleep until a collective is watched (or we are stopped)
            let _ =
                s.cv.wait_timeout(q, times.poll.max(Duration::from_millis(1)) * 100);
            continue;
        };
        let failure = match front.done.is_complete() {
            Ok(true) => {
                q.pop_front();
                continue;
            }
            Err(e) => Some(format!("{}: CUDA error {e}", front.what)),
            Ok(false) => match health.async_error() {
                Some(e) => Some(format!(
                    "{} failed asynchronously ({e}): a peer rank died or its network failed; \
                     the communicator was aborted",
                    front.what
                )),
                None if front.since.elapsed() > times.timeout => Some(format!(
                    "{} did not complete within {:?} (--dist-timeout): a peer rank died or \
                     hangs; the communicator was aborted",
                    front.what, times.timeout
                )),
                None => None,
            },
        };
        let Some(failure) = failure else {
            drop(q);
            std::thread::sleep(times.poll);
            continue;
        };
        // Record the failure before aborting, so that whatever the abort releases sees it.
        q.clear();
        drop(q);
        let failure = {
            let mut f = s.failure.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert(failure).clone()
        };
        health.abort();
        let failed_at = Instant::now();
        while failed_at.elapsed() < times.grace {
            if s.seen.load(Ordering::SeqCst) || s.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(times.poll.max(Duration::from_millis(1)));
        }
        on_stuck(&failure);
        return;
    }
}
