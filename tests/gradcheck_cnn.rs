//! The CNN ops (conv2d, batch_norm2d, avg_pool2d): finite-difference gradient checks on random
//! inputs and odd sizes, forward and full gradients against naive f64 references written here,
//! BatchNorm's running statistics, determinism across thread counts, and shape errors.
mod common;
use clipcu::ops::conv2d::{conv2d, conv2d_bn_eval, BnAffine};
use clipcu::ops::{batchnorm, binary, pool::avg_pool2d, unary};
use clipcu::{Graph, Param, Result, Tensor};
use common::*;

// ---- conv2d -------------------------------------------------------------------------------------

/// (n, c, h, w, o, kh, kw, stride, padding)
type Conv = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

/// Small cases for the finite-difference checks.
const GRAD_CONVS: &[Conv] = &[
    (1, 1, 1, 1, 1, 1, 1, 1, 0),   // 1×1 everything
    (2, 3, 7, 7, 4, 1, 1, 1, 0),   // pointwise, two images in one GEMM group
    (1, 7, 13, 13, 3, 1, 1, 1, 0), // pointwise, single image (no im2col)
    (2, 3, 7, 7, 2, 1, 1, 2, 0),   // 1×1 with stride 2 (through im2col)
    (2, 3, 7, 7, 5, 3, 3, 1, 1),
    (1, 7, 13, 13, 2, 3, 3, 2, 1),
    (1, 3, 1, 1, 2, 3, 3, 1, 1),  // 1×1 map under a padded 3×3 kernel
    (2, 7, 7, 13, 3, 2, 3, 1, 0), // non-square kernel and map
    (1, 3, 13, 7, 2, 2, 3, 3, 3), // stride 3, padding 3: whole output rows read only padding
    (1, 3, 13, 13, 2, 7, 7, 3, 3),
    (2, 1, 7, 7, 3, 7, 7, 2, 3),
    (1, 1, 1, 1, 2, 7, 7, 1, 3), // padding as wide as the kernel's reach
];

/// Larger batches that exercise several GEMM groups, a short last group and several weight
/// gradient slots (checked against the reference, not by finite differences).
const BATCH_CONVS: &[Conv] = &[
    (13, 3, 13, 13, 4, 3, 3, 1, 1), // groups of 6 images: 6 + 6 + 1
    (13, 5, 13, 13, 6, 1, 1, 1, 0), // pointwise, grouped (gathered) columns
    (3, 4, 32, 32, 5, 1, 1, 1, 0),  // pointwise, one image per GEMM
    (10, 2, 32, 32, 3, 3, 3, 1, 1), // one image per group, ten groups over eight slots
    (9, 3, 13, 7, 2, 2, 3, 2, 1),
];

fn conv_inputs(&(n, c, h, w, o, kh, kw, _, _): &Conv) -> (Tensor, Tensor) {
    (randn(&[n, c, h, w]), randn(&[o, c, kh, kw]))
}

/// Direct convolution in f64: (out, dx, dw) for output gradient `gout` (None: forward only).
fn conv_ref(
    x: &Tensor,
    w: &Tensor,
    s: usize,
    p: usize,
    gout: Option<&Tensor>,
) -> (Tensor, Tensor, Tensor) {
    let (xs, ws) = (x.shape().to_vec(), w.shape().to_vec());
    let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (o, kh, kw) = (ws[0], ws[2], ws[3]);
    let (oh, ow) = ((h + 2 * p - kh) / s + 1, (wd + 2 * p - kw) / s + 1);
    let (xv, wv) = (x.to_vec(), w.to_vec());
    let gv = gout.map(|g| g.to_vec());
    let mut out = vec![0f64; n * o * oh * ow];
    let mut dx = vec![0f64; xv.len()];
    let mut dw = vec![0f64; wv.len()];
    for ni in 0..n {
        for oi in 0..o {
            for y in 0..oh {
                for xo in 0..ow {
                    let oidx = ((ni * o + oi) * oh + y) * ow + xo;
                    let g = gv.as_ref().map_or(0.0, |g| g[oidx] as f64);
                    for ci in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let (iy, ix) = (
                                    (y * s + i) as isize - p as isize,
                                    (xo * s + j) as isize - p as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((ni * c + ci) * h + iy as usize) * wd + ix as usize;
                                let wi = ((oi * c + ci) * kh + i) * kw + j;
                                out[oidx] += xv[xi] as f64 * wv[wi] as f64;
                                dx[xi] += g * wv[wi] as f64;
                                dw[wi] += g * xv[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let t = |v: Vec<f64>, shape: Vec<usize>| {
        Tensor::from_vec(v.into_iter().map(|a| a as f32).collect(), shape).unwrap()
    };
    (t(out, vec![n, o, oh, ow]), t(dx, xs), t(dw, ws))
}

#[test]
fn conv2d_gradcheck() {
    for cfg in GRAD_CONVS {
        let (x, w) = conv_inputs(cfg);
        let (s, p) = (cfg.7, cfg.8);
        gradcheck(
            &format!("conv2d {cfg:?}"),
            &[x, w],
            Check::default(),
            |g, v| g.conv2d(&v[0], &v[1], s, p),
        );
    }
}

#[test]
fn conv2d_forward_matches_direct_reference() {
    for cfg in GRAD_CONVS.iter().chain(BATCH_CONVS) {
        let (x, w) = conv_inputs(cfg);
        let out = conv2d(&x, &w, cfg.7, cfg.8).unwrap();
        let (reference, _, _) = conv_ref(&x, &w, cfg.7, cfg.8, None);
        assert_eq!(
            out.shape(),
            reference.shape(),
            "conv2d {cfg:?}: output shape"
        );
        let err = out.rel_err(&reference);
        assert!(err <= 1e-5, "conv2d {cfg:?}: forward rel err {err:.3e}");
    }
}

#[test]
fn conv2d_grads_match_direct_reference() {
    for cfg in GRAD_CONVS.iter().chain(BATCH_CONVS) {
        let (x, w) = conv_inputs(cfg);
        let g = Graph::new();
        let (xv, wv) = (g.leaf(x.clone()), g.leaf(w.clone()));
        let out = g.conv2d(&xv, &wv, cfg.7, cfg.8).unwrap();
        let gout = randn(out.shape());
        let grads = g.backward_with(&out, gout.clone()).unwrap();
        let (_, dx_ref, dw_ref) = conv_ref(&x, &w, cfg.7, cfg.8, Some(&gout));
        let (dx, dw) = (grads.get(&xv).unwrap(), grads.get(&wv).unwrap());
        assert_eq!(dx.shape(), x.shape());
        assert_eq!(dw.shape(), w.shape());
        let (ex, ew) = (dx.rel_err(&dx_ref), dw.rel_err(&dw_ref));
        assert!(
            ex <= 1e-5 && ew <= 1e-5,
            "conv2d {cfg:?}: dx rel err {ex:.3e}, dw rel err {ew:.3e}"
        );
    }
}

/// Forward, dx and dw bit-identical whatever the number of threads.
#[test]
fn conv2d_is_deterministic_across_thread_counts() {
    let run = |threads: usize, x: &Tensor, w: &Tensor, gout: &Tensor, s: usize, p: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let g = Graph::new();
            let (xv, wv) = (g.leaf(x.clone()), g.leaf(w.clone()));
            let out = g.conv2d(&xv, &wv, s, p).unwrap();
            let grads = g.backward_with(&out, gout.clone()).unwrap();
            (
                out.tensor().to_vec(),
                grads.get(&xv).unwrap().to_vec(),
                grads.get(&wv).unwrap().to_vec(),
            )
        })
    };
    for cfg in BATCH_CONVS {
        let (x, w) = conv_inputs(cfg);
        let out_shape = conv2d(&x, &w, cfg.7, cfg.8).unwrap().shape().to_vec();
        let gout = randn(&out_shape);
        let one = run(1, &x, &w, &gout, cfg.7, cfg.8);
        let three = run(3, &x, &w, &gout, cfg.7, cfg.8);
        assert!(
            one == three,
            "conv2d {cfg:?}: results differ between 1 and 3 threads"
        );
    }
}

/// Shapes for the fused inference path: blocks that straddle images (small maps), several blocks
/// per image (large maps), strided and padded kernels.
const FUSED_CONVS: &[Conv] = &[
    (3, 8, 20, 20, 16, 3, 3, 1, 1),
    (16, 8, 7, 7, 12, 1, 1, 1, 0),
    (5, 4, 9, 9, 6, 3, 3, 2, 1),
    (2, 3, 33, 31, 5, 3, 3, 2, 1),
    (1, 6, 40, 40, 7, 1, 1, 1, 0),
];

/// The inference-only `relu?(bn_eval(conv(x)) + residual?)` in one pass against the separate ops
/// (conv2d, eval BatchNorm, add, ReLU), on random weights and running statistics.
#[test]
fn conv2d_bn_eval_matches_the_separate_ops() {
    for cfg in GRAD_CONVS.iter().chain(BATCH_CONVS).chain(FUSED_CONVS) {
        let (x, w) = conv_inputs(cfg);
        let (s, p) = (cfg.7, cfg.8);
        let y = conv2d(&x, &w, s, p).unwrap();
        let o = cfg.4;
        let (bw, bb, rm, rv) = (
            randn(&[o]),
            randn(&[o]),
            randn(&[o]),
            uniform(&[o], 0.5, 2.0),
        );
        let bn_y = batchnorm::batch_norm2d(&y, &bw, &bb, &rm, &rv, EPS).unwrap();
        let (mean, scale, shift) = batchnorm::eval_affine(&bw, &bb, &rm, &rv, EPS).unwrap();
        let affine = BnAffine { mean, scale, shift };
        let residual = randn(y.shape());
        for (with_residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut reference = bn_y.clone();
            if with_residual {
                reference = binary::add(&reference, &residual).unwrap();
            }
            if relu {
                reference = unary::relu(&reference).unwrap();
            }
            let r = with_residual.then_some(&residual);
            let out = conv2d_bn_eval(&x, &w, s, p, &affine, r, relu).unwrap();
            assert_eq!(out.shape(), reference.shape(), "{cfg:?}: shape");
            let err = out.rel_err(&reference);
            assert!(
                err <= 1e-5,
                "conv2d_bn_eval {cfg:?} residual {with_residual} relu {relu}: rel err {err:.3e}"
            );
        }
    }
}

/// The error's message, asserting there is one.
fn err_of<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(
            msg.contains(p),
            "error message {msg:?} should mention {p:?}"
        );
    }
}

#[test]
fn conv2d_shape_errors() {
    let w = randn(&[4, 3, 3, 3]);
    let msg = err_of(conv2d(&randn(&[3, 7, 7]), &w, 1, 1));
    assert_names(&msg, &["conv2d", "[3, 7, 7]"]);
    let msg = err_of(conv2d(&randn(&[1, 3, 7, 7]), &randn(&[4, 3, 3]), 1, 1));
    assert_names(&msg, &["conv2d", "[4, 3, 3]"]);
    let msg = err_of(conv2d(&randn(&[1, 3, 7, 7]), &randn(&[4, 2, 3, 3]), 1, 1));
    assert_names(&msg, &["conv2d", "[1, 3, 7, 7]", "[4, 2, 3, 3]"]);
    let msg = err_of(conv2d(&randn(&[1, 3, 4, 4]), &randn(&[2, 3, 7, 7]), 1, 1));
    assert_names(&msg, &["conv2d", "[1, 3, 4, 4]", "[2, 3, 7, 7]"]);
    let msg = err_of(conv2d(&randn(&[1, 3, 9, 4]), &randn(&[2, 3, 3, 7]), 2, 1));
    assert_names(&msg, &["conv2d", "[1, 3, 9, 4]", "[2, 3, 3, 7]"]);
    let msg = err_of(conv2d(&randn(&[1, 3, 2, 9]), &randn(&[2, 3, 5, 3]), 1, 1));
    assert_names(&msg, &["conv2d", "[1, 3, 2, 9]", "[2, 3, 5, 3]"]);
    let msg = err_of(conv2d(&randn(&[1, 3, 7, 7]), &w, 0, 1));
    assert_names(&msg, &["conv2d", "stride"]);
    // The graph method reports the same errors.
    let g = Graph::new();
    let (x, w) = (g.leaf(randn(&[1, 3, 7, 7])), g.leaf(randn(&[4, 2, 3, 3])));
    assert_names(&err_of(g.conv2d(&x, &w, 1, 0)), &["conv2d", "[4, 2, 3, 3]"]);
}

// ---- batch_norm2d -------------------------------------------------------------------------------

const EPS: f32 = 1e-5;

/// Positive random values in [lo, hi).
fn uniform(shape: &[usize], lo: f32, hi: f32) -> Tensor {
    Tensor::rand_uniform(shape.to_vec(), lo, hi, fresh_seed())
}

/// Random input with per-element offset and scale so channel means are far from 0.
fn shifted(shape: &[usize], shift: f32, scale: f32) -> Tensor {
    let v = randn(shape)
        .to_vec()
        .into_iter()
        .map(|a| a * scale + shift)
        .collect();
    Tensor::from_vec(v, shape.to_vec()).unwrap()
}

/// Per-channel f64 (mean, biased var) of x [N, C, H, W].
fn channel_stats(x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let s = x.shape();
    let (n, c, hw) = (s[0], s[1], s[2] * s[3]);
    let v = x.to_vec();
    let m = (n * hw) as f64;
    let mut mean = vec![0f64; c];
    let mut var = vec![0f64; c];
    for ci in 0..c {
        let vals = || (0..n).flat_map(|ni| v[(ni * c + ci) * hw..][..hw].iter().map(|&a| a as f64));
        mean[ci] = vals().sum::<f64>() / m;
        var[ci] = vals().map(|a| (a - mean[ci]).powi(2)).sum::<f64>() / m;
    }
    (mean, var)
}

/// `(x − mean)/√(var + eps)·w + b` in f64.
fn bn_ref(x: &Tensor, w: &Tensor, b: &Tensor, mean: &[f64], var: &[f64]) -> Tensor {
    let s = x.shape();
    let (c, hw) = (s[1], s[2] * s[3]);
    let (wv, bv) = (w.to_vec(), b.to_vec());
    let y: Vec<f32> = x
        .to_vec()
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let ci = (i / hw) % c;
            ((a as f64 - mean[ci]) / (var[ci] + EPS as f64).sqrt() * wv[ci] as f64 + bv[ci] as f64)
                as f32
        })
        .collect();
    Tensor::from_vec(y, s.to_vec()).unwrap()
}

const BN_SHAPES: &[[usize; 4]] = &[[2, 3, 3, 3], [1, 5, 1, 7], [3, 1, 2, 2], [4, 2, 1, 1]];

#[test]
fn batch_norm2d_gradcheck_training() {
    for s in BN_SHAPES {
        let c = s[1];
        let (rm, rv) = (
            Param::buffer("rm", Tensor::zeros([c])),
            Param::buffer("rv", Tensor::ones([c])),
        );
        let xs = [shifted(s, 1.5, 2.0), uniform(&[c], 0.5, 1.5), randn(&[c])];
        let opts = Check {
            h: 5e-3,
            ..Check::default()
        };
        gradcheck(&format!("batch_norm2d train {s:?}"), &xs, opts, |g, v| {
            g.batch_norm2d(&v[0], &v[1], &v[2], &rm, &rv, true, 0.1, EPS)
        });
    }
}

#[test]
fn batch_norm2d_gradcheck_eval() {
    for s in BN_SHAPES {
        let c = s[1];
        let (rm, rv) = (
            Param::buffer("rm", randn(&[c])),
            Param::buffer("rv", uniform(&[c], 0.5, 2.0)),
        );
        let xs = [randn(s), randn(&[c]), randn(&[c])];
        gradcheck(
            &format!("batch_norm2d eval {s:?}"),
            &xs,
            Check::default(),
            |g, v| g.batch_norm2d(&v[0], &v[1], &v[2], &rm, &rv, false, 0.1, EPS),
        );
    }
}

#[test]
fn batch_norm2d_training_output_and_running_stats() {
    let s = [3, 4, 5, 3];
    let c = s[1];
    let n = (s[0] * s[2] * s[3]) as f64;
    let (rm0, rv0) = (randn(&[c]), uniform(&[c], 0.5, 2.0));
    let (rm, rv) = (
        Param::buffer("rm", rm0.clone()),
        Param::buffer("rv", rv0.clone()),
    );
    let (mut rm_ref, mut rv_ref): (Vec<f64>, Vec<f64>) = (
        rm0.to_vec().iter().map(|&a| a as f64).collect(),
        rv0.to_vec().iter().map(|&a| a as f64).collect(),
    );
    // Two steps with different momenta, the second on a graph that records nothing.
    for (step, momentum) in [(0, 0.1f32), (1, 0.3f32)] {
        let (x, w, b) = (shifted(&s, 3.0, 2.0), randn(&[c]), randn(&[c]));
        let g = if step == 0 {
            Graph::new()
        } else {
            Graph::inference()
        };
        let (xv, wv, bv) = (g.leaf(x.clone()), g.leaf(w.clone()), g.leaf(b.clone()));
        let y = g
            .batch_norm2d(&xv, &wv, &bv, &rm, &rv, true, momentum, EPS)
            .unwrap();
        let (mean, var) = channel_stats(&x);
        let err = y.tensor().rel_err(&bn_ref(&x, &w, &b, &mean, &var));
        assert!(err <= 1e-5, "training output rel err {err:.3e}");
        let m = momentum as f64;
        for ci in 0..c {
            rm_ref[ci] = (1.0 - m) * rm_ref[ci] + m * mean[ci];
            rv_ref[ci] = (1.0 - m) * rv_ref[ci] + m * var[ci] * n / (n - 1.0);
        }
        let t =
            |v: &[f64]| Tensor::from_vec(v.iter().map(|&a| a as f32).collect(), vec![c]).unwrap();
        let (em, ev) = (
            rm.value().rel_err(&t(&rm_ref)),
            rv.value().rel_err(&t(&rv_ref)),
        );
        assert!(
            em <= 1e-6 && ev <= 1e-6,
            "step {step}: running mean rel err {em:.3e}, running var rel err {ev:.3e}"
        );
        // The tensor-level training forward gives the same output and batch statistics.
        let (y2, bm, bvar) = batchnorm::batch_norm2d_train(&x, &w, &b, EPS).unwrap();
        assert_eq!(y2.to_vec(), y.tensor().to_vec());
        assert!(bm.rel_err(&t(&mean)) <= 1e-6 && bvar.rel_err(&t(&var)) <= 1e-6);
    }
}

#[test]
fn batch_norm2d_eval_is_affine_with_running_stats() {
    let s = [2, 5, 3, 7];
    let c = s[1];
    let (rm0, rv0) = (randn(&[c]), uniform(&[c], 0.5, 2.0));
    let (rm, rv) = (
        Param::buffer("rm", rm0.clone()),
        Param::buffer("rv", rv0.clone()),
    );
    let (x, w, b) = (shifted(&s, 1.0, 2.0), randn(&[c]), randn(&[c]));
    let g = Graph::new();
    let (xv, wv, bv) = (g.leaf(x.clone()), g.leaf(w.clone()), g.leaf(b.clone()));
    let y = g
        .batch_norm2d(&xv, &wv, &bv, &rm, &rv, false, 0.1, EPS)
        .unwrap();
    let to64 = |t: &Tensor| t.to_vec().iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let reference = bn_ref(&x, &w, &b, &to64(&rm0), &to64(&rv0));
    let err = y.tensor().rel_err(&reference);
    assert!(err <= 1e-6, "eval output rel err {err:.3e}");
    assert_eq!(
        rm.value().to_vec(),
        rm0.to_vec(),
        "eval must not change the running mean"
    );
    assert_eq!(
        rv.value().to_vec(),
        rv0.to_vec(),
        "eval must not change the running var"
    );
    let y2 = batchnorm::batch_norm2d(&x, &w, &b, &rm0, &rv0, EPS).unwrap();
    assert_eq!(
        y2.to_vec(),
        y.tensor().to_vec(),
        "tensor-level inference and graph eval differ"
    );
}

#[test]
fn batch_norm2d_shape_errors() {
    let (rm, rv) = (
        Param::buffer("rm", Tensor::zeros([3])),
        Param::buffer("rv", Tensor::ones([3])),
    );
    let g = Graph::new();
    let (w, b) = (g.leaf(randn(&[3])), g.leaf(randn(&[3])));
    let bn = |x: &[usize], w: &clipcu::Var, training| {
        let x = g.leaf(randn(x));
        err_of(g.batch_norm2d(&x, w, &b, &rm, &rv, training, 0.1, EPS))
    };
    assert_names(&bn(&[2, 3, 5], &w, true), &["batch_norm2d", "[2, 3, 5]"]);
    let w4 = g.leaf(randn(&[4]));
    assert_names(
        &bn(&[2, 3, 5, 5], &w4, false),
        &["batch_norm2d", "[4]", "[2, 3, 5, 5]"],
    );
    assert_names(
        &bn(&[1, 3, 1, 1], &w, true),
        &["batch_norm2d", "[1, 3, 1, 1]"],
    );
    let (rm4, rv4) = (
        Param::buffer("rm", Tensor::zeros([4])),
        Param::buffer("rv", Tensor::ones([4])),
    );
    let x = g.leaf(randn(&[2, 3, 5, 5]));
    assert_names(
        &err_of(g.batch_norm2d(&x, &w, &b, &rm4, &rv4, true, 0.1, EPS)),
        &["batch_norm2d", "[4]", "[2, 3, 5, 5]"],
    );
    assert_eq!(
        rm4.value().to_vec(),
        vec![0.0; 4],
        "a failed call must not touch the running stats"
    );
    let msg = err_of(batchnorm::batch_norm2d(
        &randn(&[2, 3, 5, 5]),
        &randn(&[3]),
        &randn(&[3]),
        &randn(&[2]),
        &randn(&[3]),
        EPS,
    ));
    assert_names(&msg, &["batch_norm2d", "[2]"]);
}

// ---- avg_pool2d ---------------------------------------------------------------------------------

/// (n, c, h, w, kernel, stride)
const POOLS: &[(usize, usize, usize, usize, usize, usize)] = &[
    (2, 3, 7, 7, 2, 2), // 7×7 → 3×3, last row and column unused
    (1, 2, 9, 9, 3, 3),
    (2, 3, 13, 7, 3, 3), // 13×7 → 4×2
    (1, 2, 7, 7, 3, 2),  // overlapping windows
    (1, 3, 1, 1, 1, 1),
    (3, 1, 2, 5, 2, 2),
];

/// Naive average pooling in f64: (out, dx) for output gradient `gout`.
fn pool_ref(x: &Tensor, k: usize, s: usize, gout: Option<&Tensor>) -> (Tensor, Tensor) {
    let sh = x.shape().to_vec();
    let (planes, h, w) = (sh[0] * sh[1], sh[2], sh[3]);
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let xv = x.to_vec();
    let gv = gout.map(|g| g.to_vec());
    let mut out = vec![0f64; planes * oh * ow];
    let mut dx = vec![0f64; xv.len()];
    for q in 0..planes {
        for y in 0..oh {
            for xo in 0..ow {
                let oi = (q * oh + y) * ow + xo;
                for i in 0..k {
                    for j in 0..k {
                        let xi = (q * h + y * s + i) * w + xo * s + j;
                        out[oi] += xv[xi] as f64 / (k * k) as f64;
                        dx[xi] += gv.as_ref().map_or(0.0, |g| g[oi] as f64) / (k * k) as f64;
                    }
                }
            }
        }
    }
    let t = |v: Vec<f64>, shape: Vec<usize>| {
        Tensor::from_vec(v.into_iter().map(|a| a as f32).collect(), shape).unwrap()
    };
    (t(out, vec![sh[0], sh[1], oh, ow]), t(dx, sh))
}

#[test]
fn avg_pool2d_gradcheck() {
    for &(n, c, h, w, k, s) in POOLS {
        gradcheck(
            &format!("avg_pool2d {:?} k{k} s{s}", [n, c, h, w]),
            &[randn(&[n, c, h, w])],
            Check::default(),
            |g, v| g.avg_pool2d(&v[0], k, s),
        );
    }
}

#[test]
fn avg_pool2d_matches_reference() {
    for &(n, c, h, w, k, s) in POOLS {
        let x = randn(&[n, c, h, w]);
        let g = Graph::new();
        let xv = g.leaf(x.clone());
        let out = g.avg_pool2d(&xv, k, s).unwrap();
        let gout = randn(out.shape());
        let grads = g.backward_with(&out, gout.clone()).unwrap();
        let (out_ref, dx_ref) = pool_ref(&x, k, s, Some(&gout));
        assert_eq!(
            out.shape(),
            out_ref.shape(),
            "avg_pool2d {:?} k{k} s{s}: output shape",
            [n, c, h, w]
        );
        let (eo, ex) = (
            out.tensor().rel_err(&out_ref),
            grads.get(&xv).unwrap().rel_err(&dx_ref),
        );
        assert!(
            eo <= 1e-6 && ex <= 1e-6,
            "avg_pool2d {:?} k{k} s{s}: out rel err {eo:.3e}, dx rel err {ex:.3e}",
            [n, c, h, w]
        );
        assert_eq!(
            avg_pool2d(&x, k, s).unwrap().to_vec(),
            out.tensor().to_vec()
        );
    }
}

#[test]
fn avg_pool2d_shape_errors() {
    assert_names(
        &err_of(avg_pool2d(&randn(&[3, 7, 7]), 2, 2)),
        &["avg_pool2d", "[3, 7, 7]"],
    );
    assert_names(
        &err_of(avg_pool2d(&randn(&[1, 3, 7, 2]), 3, 3)),
        &["avg_pool2d", "[1, 3, 7, 2]"],
    );
    assert_names(
        &err_of(avg_pool2d(&randn(&[1, 3, 7, 7]), 0, 1)),
        &["avg_pool2d", "kernel"],
    );
    assert_names(
        &err_of(avg_pool2d(&randn(&[1, 3, 7, 7]), 2, 0)),
        &["avg_pool2d", "stride"],
    );
}
