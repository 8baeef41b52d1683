//! Data-parallel foundations without a GPU: ranks from torchrun's and SLURM's variables, SLURM
//! host lists, the in-process communicator against sums computed here, and the TCP rendezvous
//! between threads (including the error naming the ranks that never came).
mod common;

use clipcu::dist::{first_host, rendezvous, Communicator, InProcess, RankInfo};
use clipcu::Tensor;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::Duration;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

#[test]
fn ranks_from_torchrun_and_slurm() {
    assert_eq!(RankInfo::from_env(env(&[])).unwrap(), None);
    let t = RankInfo::from_env(env(&[
        ("RANK", "3"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "10.0.0.7"),
        ("MASTER_PORT", "1234"),
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "16"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        (
            t.rank,
            t.world_size,
            t.local_rank,
            t.master_addr.as_str(),
            t.master_port,
            t.launcher
        ),
        (3, 8, 1, "10.0.0.7", 1234, "torchrun"),
        "torchrun's variables win over SLURM's"
    );
    let s = RankInfo::from_env(env(&[
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "16"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_JOB_NODELIST", "gpu-[017-020,033],login1"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        (
            s.rank,
            s.world_size,
            s.local_rank,
            s.master_addr.as_str(),
            s.master_port,
            s.launcher
        ),
        (5, 16, 1, "gpu-017", 29500, "slurm")
    );
    for (bad, needle) in [
        (
            vec![("RANK", "x"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
            "RANK=\"x\"",
        ),
        (
            vec![("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
            "rank 2 of a world of 2",
        ),
        (vec![("RANK", "0"), ("WORLD_SIZE", "2")], "MASTER_ADDR"),
        (
            vec![
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "70000"),
            ],
            "MASTER_PORT",
        ),
        (
            vec![("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")],
            "SLURM_JOB_NODELIST",
        ),
    ] {
        let e = RankInfo::from_env(env(&bad)).unwrap_err().to_string();
        assert!(e.contains(needle), "{bad:?}: {e}");
    }
}

#[test]
fn first_host_of_slurm_host_lists() {
    for (list, host) in [
        ("node01", "node01"),
        ("a,b,c", "a"),
        ("node[01-04,07],gpu5", "node01"),
        ("n[3-5]", "n3"),
        ("rack1-n[001-010]", "rack1-n001"),
        ("r[2-3]n[07-09]", "r2n07"),
        (" host7 ", "host7"),
    ] {
        assert_eq!(first_host(list).unwrap(), host, "{list}");
    }
    for bad in ["", "node[", "node[]", "node[a-b]", "x]"] {
        let e = first_host(bad).unwrap_err().to_string();
        assert!(e.contains("SLURM_JOB_NODELIST"), "{bad:?}: {e}");
    }
}

/// Every rank runs the same sequence of collectives on its own random data in its own thread;
/// the results are checked against sums and concatenations made here from all ranks' data.
#[test]
fn in_process_collectives_equal_sums_made_here() {
    let seed = common::fresh_seed();
    for world in [1usize, 2, 3, 4] {
        let shape = [world * 2, 5];
        let data: Vec<Vec<Tensor>> = (0..world)
            .map(|r| {
                (0..4)
                    .map(|i| Tensor::randn(shape, 1.0, seed ^ ((r * 16 + i) as u64)))
                    .collect()
            })
            .collect();
        let comms = InProcess::group(world, Duration::from_secs(30));
        let results: Vec<Vec<Tensor>> = std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .zip(&data)
                .map(|(c, d)| {
                    s.spawn(move || {
                        vec![
                            c.all_reduce_sum(&d[0]).unwrap(),
                            c.all_gather(&d[1]).unwrap(),
                            c.reduce_scatter_sum(&d[2]).unwrap(),
                            c.broadcast(&d[3], world - 1).unwrap(),
                            // a second round of the same collective
                            c.all_reduce_sum(&d[1]).unwrap(),
                        ]
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let sum = |i: usize| -> Vec<f64> {
            let mut acc = vec![0f64; 2 * world * 5];
            for d in &data {
                for (a, v) in acc.iter_mut().zip(d[i].to_vec()) {
                    *a += v as f64;
                }
            }
            acc
        };
        let close = |got: &[f32], want: &[f64], what: &str| {
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{what}: {g} vs {w}"
                );
            }
        };
        let gathered: Vec<f32> = data.iter().flat_map(|d| d[1].to_vec()).collect();
        for (rank, r) in results.iter().enumerate() {
            let what = format!("world {world} rank {rank}");
            close(&r[0].to_vec(), &sum(0), &format!("{what} all_reduce"));
            assert_eq!(r[1].shape(), [2 * world * world, 5]);
            assert_eq!(r[1].to_vec(), gathered, "{what} all_gather");
            let part = sum(2)[rank * 10..(rank + 1) * 10].to_vec();
            assert_eq!(r[2].shape(), [2, 5]);
            close(&r[2].to_vec(), &part, &format!("{what} reduce_scatter"));
            assert_eq!(
                r[3].to_vec(),
                data[world - 1][3].to_vec(),
                "{what} broadcast"
            );
            close(
                &r[4].to_vec(),
                &sum(1),
                &format!("{what} second all_reduce"),
            );
            // every rank holds the same bits
            assert_eq!(
                r[0].to_vec(),
                results[0][0].to_vec(),
                "{what}: bits differ from rank 0"
            );
        }
    }
}

#[test]
fn in_process_mismatch_and_missing_ranks_are_errors() {
    let comms = InProcess::group(2, Duration::from_secs(10));
    let errs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    let t = Tensor::zeros([c.rank() + 1, 3]);
                    c.all_reduce_sum(&t).unwrap_err().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in &errs {
        assert!(
            e.contains("out of step") && e.contains("[1, 3]") && e.contains("[2, 3]"),
            "{e}"
        );
    }
    // rank 1 never calls: rank 0's collective times out naming it
    let mut comms = InProcess::group(2, Duration::from_millis(200));
    let _idle = comms.pop().unwrap();
    let e = comms[0]
        .all_gather(&Tensor::zeros([2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[1]") && e.contains("never arrived"), "{e}");
}

fn free_port(rng: &mut impl Rng) -> u16 {
    loop {
        let p = rng.random_range(20000..60000);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn info(rank: usize, world: usize, port: u16) -> RankInfo {
    RankInfo {
        rank,
        world_size: world,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        launcher: "torchrun",
    }
}

#[test]
fn rendezvous_hands_rank_zeros_blob_to_everyone() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(common::fresh_seed());
    let blob: Vec<u8> = (0..128).map(|_| rng.random()).collect();
    let world = 4;
    let port = free_port(&mut rng);
    let got: Vec<Vec<u8>> = std::thread::scope(|s| {
        // ranks 3, 2, 1 start before rank 0: they retry until it listens
        let hs: Vec<_> = (0..world)
            .rev()
            .map(|r| {
                let blob = blob.clone();
                s.spawn(move || {
                    if r == 0 {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    let mine = (r == 0).then_some(blob.as_slice());
                    rendezvous(&info(r, world, port), mine, Duration::from_secs(20)).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for g in got {
        assert_eq!(g, blob);
    }
}

#[test]
fn rendezvous_names_the_ranks_that_never_arrived() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(common::fresh_seed());
    let port = free_port(&mut rng);
    let e = std::thread::scope(|s| {
        let r1 = s.spawn(move || rendezvous(&info(1, 3, port), None, Duration::from_secs(3)));
        let e = rendezvous(&info(0, 3, port), Some(b"id"), Duration::from_millis(800))
            .unwrap_err()
            .to_string();
        let _ = r1.join();
        e
    });
    assert!(e.contains("[2]") && e.contains("never arrived"), "{e}");
    // a rank whose rank 0 never comes
    let port = free_port(&mut rng);
    let e = rendezvous(&info(2, 3, port), None, Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rank 2") && e.contains("did not answer"), "{e}");
}

/// Without libnccl (this machine, CI) the probe is an error naming the library and where to get
/// it, never a panic; with it, a version no older than the minimum.
#[test]
fn nccl_probe_is_an_error_naming_the_library_or_a_new_enough_version() {
    use clipcu::dist::nccl::{probe, version_string, MIN_NCCL_VERSION};
    assert_eq!(version_string(22703), "2.27.3");
    match probe() {
        Ok(v) => assert!(v >= MIN_NCCL_VERSION, "{v}"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("libnccl") && e.contains("nvidia-nccl"), "{e}");
        }
    }
}

// ---- real processes on 127.0.0.1: `clipcu train` as a launcher's ranks ----------------------

/// Whether NCCL loads here (then the NCCL-missing checks do not apply and are reported skipped).
fn nccl_present() -> bool {
    clipcu::dist::nccl::probe().is_ok()
}

/// `clipcu train --device cuda` as one rank of a torchrun-style job (its variables set), tiny
/// and short; `timeout` seconds for the rendezvous and every collective.
fn rank_process(rank: usize, world: usize, port: u16, timeout: u64) -> std::process::Child {
    let out = std::env::temp_dir().join(format!(
        "clipcu-dist-{}-{port}-{rank}-{world}",
        std::process::id()
    ));
    std::process::Command::new(env!("CARGO_BIN_EXE_clipcu"))
        .args([
            "train",
            "--device",
            "cuda",
            "--steps",
            "1",
            "--batch-size",
            "12",
        ])
        .args(["--eval-every", "0", "--dist-timeout", &timeout.to_string()])
        .arg("--out")
        .arg(out)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", "0")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a rank process, at most `limit` (then kills it and fails: a hang); its stderr.
fn finish(mut child: std::process::Child, limit: Duration, what: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "{what}: succeeded\n{err}");
            return err;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rendezvous errors between real processes, each within its timeout (2 s) and with an error
/// that says what went wrong: a rank that never arrives, a rank given the wrong port, and
/// ranks launched with different world sizes. (Without NCCL, rank 0's error also names it.)
#[test]
fn rendezvous_errors_between_processes_are_clear_and_timely() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(common::fresh_seed());
    let limit = Duration::from_secs(15);
    // rank 1 of 2 never starts
    let port = free_port(&mut rng);
    let e = finish(rank_process(0, 2, port, 2), limit, "rank 0 alone");
    assert!(e.contains("[1]") && e.contains("never arrived"), "{e}");
    // rank 1 dials another port: rank 0 misses it, and it finds no rank 0
    let (port, wrong) = (free_port(&mut rng), free_port(&mut rng));
    let r0 = rank_process(0, 2, port, 2);
    let r1 = rank_process(1, 2, wrong, 2);
    let (e0, e1) = (
        finish(r0, limit, "rank 0"),
        finish(r1, limit, "rank 1, wrong port"),
    );
    assert!(e0.contains("[1]") && e0.contains("never arrived"), "{e0}");
    assert!(
        e1.contains("rank 1") && e1.contains("did not answer") && e1.contains(&wrong.to_string()),
        "{e1}"
    );
    // world sizes 2 and 3
    let port = free_port(&mut rng);
    let r0 = rank_process(0, 2, port, 3);
    let r1 = rank_process(1, 3, port, 3);
    let (e0, e1) = (
        finish(r0, limit, "rank 0 of 2"),
        finish(r1, limit, "rank 1 of 3"),
    );
    assert!(
        e0.contains("3 ranks") && e0.contains("rank 0 says 2") && e0.contains("inconsistently"),
        "{e0}"
    );
    assert!(
        e1.contains("rank 1: rank 0 refused this rank") && e1.contains("inconsistently"),
        "{e1}"
    );
}

/// `clipcu train --nproc-per-node 2 --device cuda` spawns two rank processes that meet at the
/// rendezvous and reach NCCL: without libnccl every rank exits with the clear NCCL error (rank
/// 0's own, the other's "rank 0 cannot run NCCL"), promptly, and the launcher fails with the
/// first failing rank's error.
#[test]
fn spawned_ranks_meet_and_fail_clearly_without_nccl() {
    if nccl_present() {
        eprintln!("SKIPPED: libnccl loads here; the NCCL-missing path cannot be shown");
        return;
    }
    let out = std::env::temp_dir().join(format!("clipcu-dist-spawn-{}", std::process::id()));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_clipcu"))
        .args(["train", "--device", "cuda", "--nproc-per-node", "2"])
        .args(["--steps", "1", "--batch-size", "4", "--eval-every", "0"])
        .args(["--dist-timeout", "20", "--out"])
        .arg(&out)
        .env_remove("MASTER_PORT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let e = finish(child, Duration::from_secs(40), "the launcher");
    for r in 0..2 {
        let line = e
            .lines()
            .find(|l| l.starts_with(&format!("[rank {r}] error:")))
            .unwrap_or_else(|| panic!("rank {r} reported no error:\n{e}"));
        assert!(
            line.contains("libnccl") && line.contains("nvidia-nccl"),
            "{line}"
        );
    }
    assert!(
        e.contains("[rank 1] error: rank 1: rank 0 cannot run NCCL"),
        "rank 1 learnt it from rank 0 at the rendezvous:\n{e}"
    );
    let last = e.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: rank") && last.contains("of 2 failed") && last.contains("libnccl"),
        "{e}"
    );
    assert!(!out.join("checkpoint.safetensors").exists());
}

/// Every entry of the NCCL communicator probes first: without libnccl, connecting (any world
/// size, rank 0 making the id) and asking for an id are the probe's error, never a panic.
#[test]
fn nccl_communicator_entries_are_the_probe_error_without_the_library() {
    if nccl_present() {
        eprintln!("SKIPPED: libnccl loads here");
        return;
    }
    let e = clipcu::dist::nccl::unique_id().unwrap_err().to_string();
    assert!(e.contains("libnccl") && e.contains("nvidia-nccl"), "{e}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(common::fresh_seed());
    let one = info(0, 1, free_port(&mut rng));
    let e = clipcu::dist::nccl::Nccl::connect(&one, Duration::from_secs(2))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("libnccl"), "{e}");
}

/// The watchdog's logic with flags for a collective's completion and the communicator's health
/// (what NCCL's events and `ncclCommGetAsyncError` are on a GPU): completed collectives leave
/// its queue with no failure; one that never completes fails after the timeout, an asynchronous
/// error or a device error at once — each naming the collective, aborting the communicator
/// exactly once and making every later `watch` and `check` that error; and when the rank's
/// thread does not see a failure within the grace period, `on_stuck` runs with it.
#[test]
fn the_watchdog_fails_a_stuck_or_broken_collective_once_and_for_all() {
    use clipcu::dist::watchdog::{Completion, Health, WatchTimes, Watchdog};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    struct Flag(Arc<AtomicBool>, Option<String>);
    impl Completion for Flag {
        fn is_complete(&self) -> Result<bool, String> {
            match &self.1 {
                Some(e) => Err(e.clone()),
                None => Ok(self.0.load(Ordering::SeqCst)),
            }
        }
    }
    #[derive(Default)]
    struct Comm {
        error: Mutex<Option<String>>,
        aborts: AtomicUsize,
    }
    impl Health for Comm {
        fn async_error(&self) -> Option<String> {
            self.error.lock().unwrap().clone()
        }
        fn abort(&self) {
            self.aborts.fetch_add(1, Ordering::SeqCst);
        }
    }
    let times = |timeout_ms: u64, grace_ms: u64| WatchTimes {
        timeout: Duration::from_millis(timeout_ms),
        poll: Duration::from_millis(1),
        grace: Duration::from_millis(grace_ms),
    };
    let wait_until = |what: &str, f: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: never happened"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let stuck_calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let start = |comm: &Arc<Comm>, t: WatchTimes| {
        let calls = stuck_calls.clone();
        Watchdog::start(
            comm.clone(),
            t,
            Box::new(move |f: &str| calls.lock().unwrap().push(f.to_string())),
        )
        .unwrap()
    };

    // completed collectives leave the queue; nothing fails
    let comm = Arc::new(Comm::default());
    let w = start(&comm, times(10_000, 10_000));
    let flags: Vec<Arc<AtomicBool>> = (0..5).map(|_| Arc::new(AtomicBool::new(false))).collect();
    for (i, f) in flags.iter().enumerate() {
        w.watch(Box::new(Flag(f.clone(), None)), format!("all_reduce #{i}"))
            .unwrap();
    }
    assert_eq!(w.in_flight(), 5);
    flags.iter().for_each(|f| f.store(true, Ordering::SeqCst));
    wait_until("the queue drains", &|| w.in_flight() == 0);
    assert!(w.check().is_ok());
    // a failure the rank's thread met itself is every later call's error too
    w.fail("rank 0 of 2: NCCL broadcast (collective #5, 3 elements) failed: invalid usage".into());
    let e = w.check().unwrap_err().to_string();
    assert!(
        e.contains("collective #5") && e.contains("invalid usage"),
        "{e}"
    );
    assert!(w
        .watch(Box::new(Flag(flags[0].clone(), None)), "later".into())
        .is_err());
    drop(w);
    assert_eq!(comm.aborts.load(Ordering::SeqCst), 0);

    // a hung collective: the timeout; an asynchronous error; a device error
    for (case, timeout_ms) in [("hang", 50), ("async", 60_000), ("device", 60_000)] {
        let comm = Arc::new(Comm::default());
        let w = start(&comm, times(timeout_ms, 60_000));
        let done = Arc::new(AtomicBool::new(false));
        let device_error = (case == "device").then(|| "CUDA_ERROR_LAUNCH_FAILED".to_string());
        w.watch(
            Box::new(Flag(done.clone(), device_error)),
            "rank 1 of 2: NCCL all_gather (collective #7, 64 elements)".into(),
        )
        .unwrap();
        if case == "async" {
            *comm.error.lock().unwrap() = Some("ncclRemoteError".into());
        }
        wait_until(case, &|| w.check().is_err());
        let e = w.check().unwrap_err().to_string();
        assert!(e.contains("NCCL all_gather (collective #7"), "{case}: {e}");
        let expected = match case {
            "hang" => "did not complete within 50ms",
            "async" => "failed asynchronously (ncclRemoteError)",
            _ => "CUDA error CUDA_ERROR_LAUNCH_FAILED",
        };
        assert!(e.contains(expected), "{case}: {e}");
        let later = w
            .watch(Box::new(Flag(done.clone(), None)), "later".into())
            .unwrap_err()
            .to_string();
        assert_eq!(later, e, "{case}: a later collective");
        assert_eq!(w.in_flight(), 0, "{case}: the queue after the failure");
        drop(w);
        assert_eq!(comm.aborts.load(Ordering::SeqCst), 1, "{case}: aborts");
    }
    assert!(
        stuck_calls.lock().unwrap().is_empty(),
        "on_stuck ran though the failure was seen"
    );

    // nobody looks: after the grace period, on_stuck gets the failure
    let comm = Arc::new(Comm::default());
    let w = start(&comm, times(20, 100));
    w.watch(
        Box::new(Flag(Arc::new(AtomicBool::new(false)), None)),
        "rank 0 of 2: NCCL all_reduce (collective #3, 8 elements)".into(),
    )
    .unwrap();
    wait_until("on_stuck", &|| !stuck_calls.lock().unwrap().is_empty());
    let calls = stuck_calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].contains("NCCL all_reduce (collective #3")
            && calls[0].contains("did not complete")
    );
    drop(w);
    assert_eq!(comm.aborts.load(Ordering::SeqCst), 1);
}
