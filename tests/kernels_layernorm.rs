//! Kernels of `kernels/layernorm.cu` against the CPU reference (DESIGN §7): forward (y and the
//! saved mean/rstd), the fused residual-add forward, and backward (dx, and dw/db through the
//! deterministic two-stage reduction). Emu runs each case in normal and reverse lane order; Cuda
//! when a GPU is present (else reported SKIPPED on stderr).

mod common;
#[allow(unused_imports)]
use common::{check_kernel as check, kernel_runs as runs, on_each_kernel_device as on_each};

use clipcu::ops::layernorm::{layer_norm_backward, layer_norm_residual, layer_norm_stats};
use clipcu::{Device, Graph, Tensor};

/// (rows, d): partial warps (d < 32, d not a multiple of 32), partial 8-row blocks, and more
/// rows than one 256-row dw/db chunk.
const SHAPES: [(usize, usize); 7] = [
    (1, 1),
    (1, 7),
    (7, 50),
    (77, 77),
    (50, 197),
    (600, 33),
    (3, 1000),
];

/// Inputs with a non-zero mean per row (offset 3) so that the centring matters.
fn inputs(r: usize, d: usize, seed: u64) -> (Tensor, Tensor, Tensor) {
    let v: Vec<f32> = Tensor::randn([r, d], 1.5, seed)
        .to_vec()
        .iter()
        .map(|a| a + 3.0)
        .collect();
    let x = Tensor::from_vec(v, [r, d]).unwrap();
    let w = Tensor::randn([d], 1.0, seed + 1);
    let b = Tensor::randn([d], 1.0, seed + 2);
    (x, w, b)
}

#[test]
fn layernorm_fwd_matches_cpu() {
    on_each(|device, tag| {
        for (r, d) in SHAPES {
            let seed = common::fresh_seed();
            let (x, w, b) = inputs(r, d, seed);
            let (y, m, s) = layer_norm_stats(&x, &w, &b, 1e-5).unwrap();
            let to = |t: &Tensor| t.to_device(device).unwrap();
            let (yd, md, sd) = layer_norm_stats(&to(&x), &to(&w), &to(&b), 1e-5).unwrap();
            assert_eq!(yd.device(), device);
            check(
                &format!("layernorm_fwd_f32 y [{r},{d}]"),
                tag,
                seed,
                &yd,
                &y,
            );
            check(
                &format!("layernorm_fwd_f32 mean [{r},{d}]"),
                tag,
                seed,
                &md,
                &m,
            );
            // d = 1: variance 0, rstd = 1/√eps is large but exact enough.
            check(
                &format!("layernorm_fwd_f32 rstd [{r},{d}]"),
                tag,
                seed,
                &sd,
                &s,
            );
        }
    });
}

#[test]
fn layernorm_residual_fwd_matches_cpu() {
    on_each(|device, tag| {
        for (r, d) in SHAPES {
            let seed = common::fresh_seed();
            let (x, w, b) = inputs(r, d, seed);
            let res = Tensor::randn([r, d], 1.0, seed + 7);
            let (y, s, m, rs) = layer_norm_residual(&x, &res, &w, &b, 1e-5).unwrap();
            let to = |t: &Tensor| t.to_device(device).unwrap();
            let (yd, sd, md, rsd) =
                layer_norm_residual(&to(&x), &to(&res), &to(&w), &to(&b), 1e-5).unwrap();
            check(
                &format!("layernorm_residual_fwd_f32 y [{r},{d}]"),
                tag,
                seed,
                &yd,
                &y,
            );
            check(
                &format!("layernorm_residual_fwd_f32 x+r [{r},{d}]"),
                tag,
                seed,
                &sd,
                &s,
            );
            check(
                &format!("layernorm_residual_fwd_f32 mean [{r},{d}]"),
                tag,
                seed,
                &md,
                &m,
            );
            check(
                &format!("layernorm_residual_fwd_f32 rstd [{r},{d}]"),
                tag,
                seed,
                &rsd,
                &rs,
            );
        }
    });
}

#[test]
fn layernorm_bwd_matches_cpu_and_is_deterministic() {
    on_each(|device, tag| {
        for (r, d) in SHAPES {
            if d == 1 {
                continue; // dx is identically 0 there: a relative error is meaningless
            }
            let seed = common::fresh_seed();
            let (x, w, b) = inputs(r, d, seed);
            let dy = Tensor::randn([r, d], 1.0, seed + 9);
            let (_, m, s) = layer_norm_stats(&x, &w, &b, 1e-5).unwrap();
            let (dx, dw, db) = layer_norm_backward(&x, &w, &m, &s, &dy).unwrap();
            let to = |t: &Tensor| t.to_device(device).unwrap();
            let args = (to(&x), to(&w), to(&m), to(&s), to(&dy));
            let (dxd, dwd, dbd) =
                layer_norm_backward(&args.0, &args.1, &args.2, &args.3, &args.4).unwrap();
            // dx is a difference of nearly equal terms: compare at 1e-4 relative (f32 rounding
            // of the row means is amplified by rstd).
            let err = dxd.rel_err(&dx);
            assert!(
                err < 1e-4,
                "layernorm_bwd_f32 dx [{r},{d}] on {tag}, seed={seed}: rel err {err}"
            );
            check(
                &format!("layernorm_bwd_dwdb dw [{r},{d}]"),
                tag,
                seed,
                &dwd,
                &dw,
            );
            check(
                &format!("layernorm_bwd_dwdb db [{r},{d}]"),
                tag,
                seed,
                &dbd,
                &db,
            );
            let (dx2, dw2, db2) =
                layer_norm_backward(&args.0, &args.1, &args.2, &args.3, &args.4).unwrap();
            assert_eq!(dx2.to_vec(), dxd.to_vec(), "dx not deterministic on {tag}");
            assert_eq!(dw2.to_vec(), dwd.to_vec(), "dw not deterministic on {tag}");
            assert_eq!(db2.to_vec(), dbd.to_vec(), "db not deterministic on {tag}");
        }
    });
}

#[test]
fn graph_layernorm_backward_runs_on_kernels() {
    on_each(|device, tag| {
        let seed = common::fresh_seed();
        let (x, w, b) = inputs(77, 50, seed);
        let gy = Tensor::randn([77, 50], 1.0, seed + 3);
        let grads = |dev: Device| {
            let g = Graph::new();
            let to = |t: &Tensor| t.to_device(dev).unwrap();
            let (xv, wv, bv) = (g.leaf(to(&x)), g.leaf(to(&w)), g.leaf(to(&b)));
            let y = g.layer_norm(&xv, &wv, &bv, 1e-5).unwrap();
            let gr = g.backward_with(&y, to(&gy)).unwrap();
            [&xv, &wv, &bv].map(|v| gr.get(v).unwrap().clone())
        };
        let got = grads(device);
        let want = grads(Device::Cpu);
        assert_eq!(got[0].device(), device);
        assert!(
            got[0].rel_err(&want[0]) < 1e-4,
            "graph dx on {tag}, seed={seed}"
        );
        check("graph dw", tag, seed, &got[1], &want[1]);
        check("graph db", tag, seed, &got[2], &want[2]);
    });
}
