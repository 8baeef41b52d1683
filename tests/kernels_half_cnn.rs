//! The f16/bf16 kernels of the convolutional tower and of the layout ops (issue 14 item 2):
//! BatchNorm2d (training and eval, forward and backward), AvgPool2d, im2col/col2im and the
//! conv2d built on them, and concat/narrow and their gradients. Each on Emu (normal and reverse
//! lane order; Cuda when present) *and* on the CPU, both given the same 16-bit tensors, against
//! the f32 CPU reference computed from the same rounded values, with tests/kernels_half.rs's
//! per-element bound (`check16`: half an ulp of the output format for its one rounding, plus
//! half f16's smallest subnormal, plus an f32 part for reordered sums, 1e-5·rms(ref) unless
//! said otherwise). Copies (im2col, concat, narrow) must be bit-exact.

mod common;
use common::half::{check16, check16_tol, rounded};
use common::on_each_kernel_device as on_each;

use clipcu::graph::Param;
use clipcu::ops::conv2d::{col2im, im2col};
use clipcu::ops::pool::{avg_pool2d, avg_pool2d_backward};
use clipcu::{DType, Device, Graph, Tensor};

const HALVES: [DType; 2] = [DType::F16, DType::BF16];

fn host(t: &Tensor) -> Tensor {
    t.to_device(Device::Cpu).unwrap()
}

fn bits_equal(what: &str, tag: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dtype(), want.dtype(), "{what} on {tag}: dtype");
    assert_eq!(got.shape(), want.shape(), "{what} on {tag}: shape");
    let (g, w) = (host(got).to_dtype(DType::F32), want.to_dtype(DType::F32));
    assert_eq!(
        g.to_vec(),
        w.to_vec(),
        "{what} on {tag}: a copy must be exact"
    );
}

/// (y, dx, dw, db, running mean, running var) of one BatchNorm2d step through the graph.
fn bn_step(
    device: Device,
    training: bool,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    dy: &Tensor,
    seed: u64,
) -> [Tensor; 6] {
    let c = w.numel();
    let to = |t: &Tensor| t.to_device(device).unwrap();
    let rm = Param::buffer("rm", to(&Tensor::randn([c], 0.5, seed + 10)));
    let rv = Param::buffer("rv", to(&Tensor::rand_uniform([c], 0.5, 2.0, seed + 11)));
    let g = Graph::new();
    let (xv, wv, bv) = (g.leaf(to(x)), g.leaf(to(w)), g.leaf(to(b)));
    let y = g
        .batch_norm2d(&xv, &wv, &bv, &rm, &rv, training, 0.1, 1e-5)
        .unwrap();
    assert_eq!(y.tensor().device(), device);
    let gr = g.backward_with(&y, to(dy)).unwrap();
    [
        host(y.tensor()),
        host(gr.get(&xv).unwrap()),
        host(gr.get(&wv).unwrap()),
        host(gr.get(&bv).unwrap()),
        host(&rm.value()),
        host(&rv.value()),
    ]
}

#[test]
fn batchnorm_16bit_matches_f32_reference() {
    on_each(|device, tag| {
        for dtype in HALVES {
            // channels of 49, 392 and 396 values: below and above one 256-thread block
            for (n, c, h, w) in [(1, 3, 7, 7), (2, 5, 14, 14), (4, 7, 9, 11)] {
                for training in [true, false] {
                    let seed = common::fresh_seed();
                    let v: Vec<f32> = Tensor::randn([n, c, h, w], 1.5, seed)
                        .to_vec()
                        .iter()
                        .map(|a| a + 2.0)
                        .collect();
                    let x = Tensor::from_vec(v, [n, c, h, w]).unwrap().to_dtype(dtype);
                    let xf = x.to_dtype(DType::F32);
                    let (dy, dyf) = rounded(&[n, c, h, w], 1.0, seed + 3, dtype);
                    let wt = Tensor::randn([c], 1.0, seed + 1);
                    let bt = Tensor::randn([c], 1.0, seed + 2);
                    let want = bn_step(Device::Cpu, training, &xf, &wt, &bt, &dyf, seed);
                    for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                        let got = bn_step(on, training, &x, &wt, &bt, &dy, seed);
                        let what =
                            format!("batchnorm {dtype} [{n},{c},{h},{w}] training={training}");
                        check16(&format!("{what} y"), t, seed, dtype, &got[0], &want[0]);
                        // dx at the f32 kernel's own bound against the CPU (tests/
                        // kernels_batchnorm.rs: 1e-4, a difference of nearly equal terms, with
                        // the kernel's statistics f32 where the CPU's are f64)
                        check16_tol(
                            &format!("{what} dx"),
                            t,
                            seed,
                            dtype,
                            &got[1],
                            &want[1],
                            1e-4,
                        );
                        // the parameters' gradients and the running statistics stay f32, at the
                        // f32 kernels' bounds (dw = Σ dy·x̂ cancels: 1e-4)
                        for (i, name, tol) in [
                            (2, "dw", 1e-4),
                            (3, "db", 1e-5),
                            (4, "running mean", 1e-5),
                            (5, "running var", 1e-5),
                        ] {
                            assert_eq!(got[i].dtype(), DType::F32, "{what} {name} dtype on {t}");
                            common::check_kernel_tol(
                                &format!("{what} {name}"),
                                t,
                                seed,
                                &got[i],
                                &want[i],
                                tol,
                            );
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn avgpool_16bit_fwd_bwd_match_f32_reference() {
    on_each(|device, tag| {
        for dtype in HALVES {
            // overlapping windows (k > s) and a ragged edge, k = s as in ModifiedResNet
            for (n, c, h, w, k, s) in [(2, 3, 7, 9, 3, 2), (1, 2, 5, 5, 2, 1), (1, 5, 14, 14, 2, 2)]
            {
                let seed = common::fresh_seed();
                let (x, xf) = rounded(&[n, c, h, w], 1.0, seed, dtype);
                let want = avg_pool2d(&xf, k, s).unwrap();
                let (dy, dyf) = rounded(want.shape(), 1.0, seed + 1, dtype);
                let want_dx = avg_pool2d_backward(&dyf, [n, c, h, w], k, s).unwrap();
                for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                    let to = |t: &Tensor| t.to_device(on).unwrap();
                    let what = format!("avgpool [{n},{c},{h},{w}] k={k} s={s}");
                    let y = avg_pool2d(&to(&x), k, s).unwrap();
                    check16(&format!("{what} fwd"), t, seed, dtype, &y, &want);
                    let dx = avg_pool2d_backward(&to(&dy), [n, c, h, w], k, s).unwrap();
                    check16(&format!("{what} bwd"), t, seed, dtype, &dx, &want_dx);
                }
            }
        }
    });
}

/// im2col is a copy; col2im sums up to kh·kw column entries in f32 and rounds once; the conv
/// (im2col, one GEMM with f32 accumulation rounded once, a transpose) and its gradients
/// through the graph: dx from the GEMM's unrounded f32 columns (one rounding in col2im), dw one
/// GEMM rounding.
#[test]
fn conv2d_16bit_fwd_bwd_match_f32_reference() {
    on_each(|device, tag| {
        for dtype in HALVES {
            // (x shape, w shape, stride, pad)
            for (xs, ws, s, p) in [
                ([2, 3, 7, 9], [4, 3, 3, 3], 2, 1),
                ([1, 2, 5, 6], [3, 2, 2, 3], 1, 0),
                ([2, 1, 4, 4], [2, 1, 4, 4], 4, 0),
                ([2, 8, 5, 5], [6, 8, 1, 1], 1, 0),
            ] {
                let seed = common::fresh_seed();
                let (x, xf) = rounded(&xs, 1.0, seed, dtype);
                let (w, wf) = rounded(&ws, 0.5, seed + 1, dtype);
                let (kh, kw) = (ws[2], ws[3]);
                let col_ref = im2col(&xf, kh, kw, s, p).unwrap();
                let (dcol, dcolf) = rounded(col_ref.shape(), 1.0, seed + 2, dtype);
                let dx_ref = col2im(&dcolf, xs, kh, kw, s, p).unwrap();
                let f = |g: &Graph, v: &[clipcu::Var]| g.conv2d(&v[0], &v[1], s, p);
                let (out_ref, _) = common::graph_grads(
                    Device::Cpu,
                    &[xf.clone(), wf.clone()],
                    &Tensor::zeros(out_shape(&xs, &ws, s, p)),
                    f,
                );
                let (dy, dyf) = rounded(out_ref.shape(), 1.0, seed + 3, dtype);
                let (_, grads_ref) = common::graph_grads(Device::Cpu, &[xf, wf], &dyf, f);
                for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                    let to = |t: &Tensor| t.to_device(on).unwrap();
                    let what = format!("conv2d x{xs:?} w{ws:?} s={s} p={p}");
                    let col = im2col(&to(&x), kh, kw, s, p).unwrap();
                    bits_equal(&format!("{what} im2col"), t, &col, &col_ref.to_dtype(dtype));
                    let dx = col2im(&to(&dcol), xs, kh, kw, s, p).unwrap();
                    check16(&format!("{what} col2im"), t, seed, dtype, &dx, &dx_ref);
                    let (out, grads) = common::graph_grads(on, &[x.clone(), w.clone()], &dy, f);
                    check16(&format!("{what} fwd"), t, seed, dtype, &out, &out_ref);
                    check16(
                        &format!("{what} dx"),
                        t,
                        seed,
                        dtype,
                        &grads[0],
                        &grads_ref[0],
                    );
                    check16(
                        &format!("{what} dw"),
                        t,
                        seed,
                        dtype,
                        &grads[1],
                        &grads_ref[1],
                    );
                }
            }
        }
    });
}

fn out_shape(xs: &[usize; 4], ws: &[usize; 4], s: usize, p: usize) -> Vec<usize> {
    let (oh, ow) = (
        (xs[2] + 2 * p - ws[2]) / s + 1,
        (xs[3] + 2 * p - ws[3]) / s + 1,
    );
    vec![xs[0], ws[0], oh, ow]
}

/// concat and narrow move 16-bit values bit-exactly, forward and backward (concat's gradient is
/// a narrow of the output gradient, narrow's a zero-padded copy).
#[test]
fn concat_narrow_16bit_are_exact_copies() {
    on_each(|device, tag| {
        for dtype in HALVES {
            let seed = common::fresh_seed();
            let (a, af) = rounded(&[2, 3, 7], 1.0, seed, dtype);
            let (b, bf) = rounded(&[2, 5, 7], 1.0, seed + 1, dtype);
            let (dy, dyf) = rounded(&[2, 8, 7], 1.0, seed + 2, dtype);
            let cat = |g: &Graph, v: &[clipcu::Var]| g.concat(&[&v[0], &v[1]], 1);
            let (want, want_g) = common::graph_grads(Device::Cpu, &[af.clone(), bf], &dyf, cat);
            let (dn, dnf) = rounded(&[2, 3, 2], 1.0, seed + 3, dtype);
            let nar = |g: &Graph, v: &[clipcu::Var]| g.narrow(&v[0], 2, 1, 2);
            let (want_n, want_ng) = common::graph_grads(
                Device::Cpu,
                &[af.narrow(2, 0, 4).unwrap().try_contiguous().unwrap()],
                &dnf,
                nar,
            );
            let a4 = a.narrow(2, 0, 4).unwrap().try_contiguous().unwrap();
            for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                let (out, g) = common::graph_grads(on, &[a.clone(), b.clone()], &dy, cat);
                bits_equal("concat fwd", t, &out, &want.to_dtype(dtype));
                bits_equal("concat bwd a", t, &g[0], &want_g[0].to_dtype(dtype));
                bits_equal("concat bwd b", t, &g[1], &want_g[1].to_dtype(dtype));
                let (out, g) = common::graph_grads(on, std::slice::from_ref(&a4), &dn, nar);
                bits_equal("narrow fwd", t, &out, &want_n.to_dtype(dtype));
                bits_equal("narrow bwd", t, &g[0], &want_ng[0].to_dtype(dtype));
            }
        }
    });
}

/// BatchNorm2d with a 16-bit weight and bias (weights kept only in 16 bits): widened exactly for
/// the f32 arithmetic, dw and db (f32 sums) rounded once to their dtype; dw at the f32 kernel's
/// own 1e-4 for its f32 part (a sum over the channel that cancels, f32 vs the CPU's f64 stats).
#[test]
fn batchnorm_with_16bit_parameters() {
    on_each(|device, tag| {
        for dtype in HALVES {
            let (n, c, h, w) = (2, 5, 14, 14);
            let seed = common::fresh_seed();
            let (x, xf) = rounded(&[n, c, h, w], 1.0, seed, dtype);
            let (dy, dyf) = rounded(&[n, c, h, w], 1.0, seed + 3, dtype);
            let (wt, wf) = rounded(&[c], 1.0, seed + 1, dtype);
            let (bt, bf) = rounded(&[c], 1.0, seed + 2, dtype);
            let want = bn_step(Device::Cpu, true, &xf, &wf, &bf, &dyf, seed);
            for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                let got = bn_step(on, true, &x, &wt, &bt, &dy, seed);
                let what = format!("batchnorm {dtype} params");
                check16(&format!("{what} y"), t, seed, dtype, &got[0], &want[0]);
                check16_tol(
                    &format!("{what} dx"),
                    t,
                    seed,
                    dtype,
                    &got[1],
                    &want[1],
                    1e-4,
                );
                check16_tol(
                    &format!("{what} dw"),
                    t,
                    seed,
                    dtype,
                    &got[2],
                    &want[2],
                    1e-4,
                );
                check16(&format!("{what} db"), t, seed, dtype, &got[3], &want[3]);
            }
        }
    });
}
