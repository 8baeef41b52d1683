//! Kernels of `kernels/batchnorm.cu` against the CPU reference (DESIGN §7), through the graph op
//! a model uses: training forward (batch statistics, running-statistics update), eval forward
//! (running statistics), and backward in both modes (dx, dw, db). Emu runs each case in normal
//! and reverse lane order; Cuda when a GPU is present (else reported SKIPPED on stderr).

mod common;
#[allow(unused_imports)]
use common::kernel_runs as runs;

use clipcu::device::emu;
use clipcu::graph::Param;
use clipcu::{Device, Graph, Tensor};

/// (y, dx, dw, db, running mean, running var) of one BatchNorm2d step on `device`.
fn step(
    device: Device,
    training: bool,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    dy: &Tensor,
    seed: u64,
) -> [Vec<f32>; 6] {
    let c = w.numel();
    let to = |t: &Tensor| t.to_device(device).unwrap();
    let rm = Param::buffer("rm", to(&Tensor::randn([c], 0.5, seed + 10)));
    let rv_host: Vec<f32> = Tensor::rand_uniform([c], 0.5, 2.0, seed + 11).to_vec();
    let rv = Param::buffer("rv", to(&Tensor::from_vec(rv_host, [c]).unwrap()));
    let g = Graph::new();
    let (xv, wv, bv) = (g.leaf(to(x)), g.leaf(to(w)), g.leaf(to(b)));
    let y = g
        .batch_norm2d(&xv, &wv, &bv, &rm, &rv, training, 0.1, 1e-5)
        .unwrap();
    assert_eq!(y.tensor().device(), device);
    let gr = g.backward_with(&y, to(dy)).unwrap();
    [
        y.tensor().to_vec(),
        gr.get(&xv).unwrap().to_vec(),
        gr.get(&wv).unwrap().to_vec(),
        gr.get(&bv).unwrap().to_vec(),
        rm.value().to_vec(),
        rv.value().to_vec(),
    ]
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    if a.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    (num / den.max(1e-300)).sqrt()
}

#[test]
fn batchnorm_train_and_eval_match_cpu() {
    for (device, reverse) in runs() {
        let tag = format!("{device}{}", if reverse { " (reverse)" } else { "" });
        emu::with_reverse(reverse, || {
            // (N, C, H, W): channel sizes below, at and above one 256-thread block
            for (n, c, h, w) in [
                (5, 1, 1, 1),
                (1, 3, 7, 7),
                (2, 5, 14, 14),
                (4, 7, 9, 11),
                (3, 2, 10, 10),
            ] {
                for training in [true, false] {
                    let seed = common::fresh_seed();
                    let v: Vec<f32> = Tensor::randn([n, c, h, w], 1.5, seed)
                        .to_vec()
                        .iter()
                        .map(|a| a + 2.0)
                        .collect();
                    let x = Tensor::from_vec(v, [n, c, h, w]).unwrap();
                    let wt = Tensor::randn([c], 1.0, seed + 1);
                    let bt = Tensor::randn([c], 1.0, seed + 2);
                    let dy = Tensor::randn([n, c, h, w], 1.0, seed + 3);
                    let got = step(device, training, &x, &wt, &bt, &dy, seed);
                    let want = step(Device::Cpu, training, &x, &wt, &bt, &dy, seed);
                    let what =
                        format!("[{n},{c},{h},{w}] training={training} on {tag}, seed={seed}");
                    // dx in training mode is a difference of nearly equal terms, and dw = Σ dy·x̂
                    // over as few as 5 values per channel cancels too; the kernel's statistics are
                    // f32 where the CPU's are f64: 1e-4 for both (3e-5 seen on fresh seeds)
                    for (i, (name, tol)) in [
                        ("y", 1e-5),
                        ("dx", 1e-4),
                        ("dw", 1e-4),
                        ("db", 1e-5),
                        ("running mean", 1e-5),
                        ("running var", 1e-5),
                    ]
                    .iter()
                    .enumerate()
                    {
                        let err = rel(&got[i], &want[i]);
                        assert!(err < *tol, "batchnorm {name} {what}: rel err {err}");
                    }
                }
            }
        });
    }
}

/// SyncBatchNorm's kernels (`batchnorm_sums`, `batchnorm_centred_sums`,
/// `batchnorm_finish_stats`, the backward sums all-reduced before dx) on a group of one rank
/// give the bits of the one-process kernels: the same per-channel loops and f32 divisions, and
/// the in-process all-reduce of one rank is exact. f32, f16 and bf16 activations, channels
/// below and above one 256-thread block, both lane orders on Emu (Cuda when present).
#[test]
fn sync_batchnorm_on_one_rank_is_bit_identical_to_batchnorm() {
    use clipcu::dist::InProcess;
    use clipcu::DType;
    for (device, reverse) in runs() {
        emu::with_reverse(reverse, || {
            for (n, c, h, w) in [(1, 3, 7, 7), (4, 7, 9, 11)] {
                for dtype in [DType::F32, DType::F16, DType::BF16] {
                    let seed = common::fresh_seed();
                    let shape = [n, c, h, w];
                    let to = |t: &Tensor| t.try_to_dtype(dtype).unwrap().to_device(device).unwrap();
                    let x: Vec<f32> = Tensor::randn(shape, 1.5, seed)
                        .to_vec()
                        .iter()
                        .map(|a| a + 2.0)
                        .collect();
                    let x = to(&Tensor::from_vec(x, shape).unwrap());
                    let dy = to(&Tensor::randn(shape, 1.0, seed + 3));
                    let wt = Tensor::randn([c], 1.0, seed + 1).to_device(device).unwrap();
                    let bt = Tensor::randn([c], 1.0, seed + 2).to_device(device).unwrap();
                    let one = InProcess::group(1, std::time::Duration::from_secs(10));
                    let run = |sync: bool| -> Vec<Vec<f32>> {
                        let rm = Param::buffer(
                            "rm",
                            Tensor::randn([c], 0.5, seed + 10)
                                .to_device(device)
                                .unwrap(),
                        );
                        let rv = Param::buffer(
                            "rv",
                            Tensor::rand_uniform([c], 0.5, 2.0, seed + 11)
                                .to_device(device)
                                .unwrap(),
                        );
                        let mut g = Graph::new();
                        if sync {
                            g.sync_batch_norm(&one[0]);
                        }
                        let (xv, wv, bv) =
                            (g.leaf(x.clone()), g.leaf(wt.clone()), g.leaf(bt.clone()));
                        let y = g
                            .batch_norm2d(&xv, &wv, &bv, &rm, &rv, true, 0.1, 1e-5)
                            .unwrap();
                        let gr = g.backward_with(&y, dy.clone()).unwrap();
                        vec![
                            y.tensor().to_vec(),
                            gr.get(&xv).unwrap().to_vec(),
                            gr.get(&wv).unwrap().to_vec(),
                            gr.get(&bv).unwrap().to_vec(),
                            rm.value().to_vec(),
                            rv.value().to_vec(),
                        ]
                    };
                    let (synced, plain) = (run(true), run(false));
                    for (k, name) in ["y", "dx", "dw", "db", "running mean", "running var"]
                        .iter()
                        .enumerate()
                    {
                        assert!(
                            synced[k].iter().all(|v| v.is_finite()),
                            "{device} {dtype} {shape:?} seed {seed}: {name} not finite"
                        );
                        assert_eq!(
                            synced[k],
                            plain[k],
                            "{device}{} {dtype} {shape:?} seed {seed}: {name}",
                            if reverse { " (reverse)" } else { "" }
                        );
                    }
                }
            }
        });
    }
}
