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
