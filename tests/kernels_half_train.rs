//! The f16/bf16 kernels of the training path beyond tests/kernels_half.rs (issue 14 item 2):
//! LayerNorm backward and the fused residual + LayerNorm forward, the binary ops (residual and
//! bias adds, mul, sub, div) with their backward, every unary activation forward/backward, the
//! embedding lookup and its gradient, and cross-entropy on 16-bit logits.
//! Each on Emu (normal and reverse lane order; Cuda when present) *and* on the CPU, both given
//! the same 16-bit tensors, against the f32 CPU reference computed from the same rounded values.
//!
//! Bound: tests/kernels_half.rs's per-element `check16`: half an ulp of the output format
//! relative to the reference (the one rounding of each 16-bit output), plus half f16's smallest
//! subnormal, plus 1e-5·rms(ref) for the f32 reordering of sums (warp butterflies against the
//! CPU's sequential loops). Where an output is computed from another 16-bit output (exp's and
//! sigmoid's backward read the saved, rounded y), the reference is computed from that same
//! rounded tensor, so each compared value is still one rounding away from its reference. f32
//! outputs (LayerNorm's dw, db) at the f32 kernels' 1e-5 relative.

mod common;
use common::half::{check16, rounded};
use common::on_each_kernel_device as on_each;

use clipcu::ops::binary::{add, binary, BinaryKind};
use clipcu::ops::layernorm::{layer_norm_backward, layer_norm_residual, layer_norm_stats};
use clipcu::ops::unary::{unary, unary_backward, UnaryKind};
use clipcu::{DType, Device, Tensor};

const HALVES: [DType; 2] = [DType::F16, DType::BF16];

/// `f` applied to each value of the f32 tensor `t`, rounded to `dtype`: (that, it in f32).
fn mapped(t: &Tensor, dtype: DType, f: impl Fn(f32) -> f32) -> (Tensor, Tensor) {
    let v: Vec<f32> = t.to_vec().into_iter().map(f).collect();
    let h = Tensor::from_vec(v, t.shape().to_vec())
        .unwrap()
        .to_dtype(dtype);
    let hf = h.to_dtype(DType::F32);
    (h, hf)
}

#[test]
fn layernorm_bwd_and_residual_16bit_match_f32_reference() {
    on_each(|device, tag| {
        for dtype in HALVES {
            // 300 rows: two dw/db chunks of 256, the second partial
            for (r, d) in [(1, 1), (7, 50), (77, 7), (300, 77), (3, 1000)] {
                let seed = common::fresh_seed();
                let (x, xf) = rounded(&[r, d], 1.0, seed, dtype);
                let (res, resf) = rounded(&[r, d], 1.0, seed + 1, dtype);
                let (dy, dyf) = rounded(&[r, d], 1.0, seed + 2, dtype);
                let w = Tensor::randn([d], 1.0, seed + 3);
                let b = Tensor::randn([d], 1.0, seed + 4);
                let what = |k: &str| format!("{k} [{r},{d}]");

                // backward, from the statistics of the f32 reference (identical inputs)
                let (_, m, s) = layer_norm_stats(&xf, &w, &b, 1e-5).unwrap();
                let (dx_ref, dw_ref, db_ref) = layer_norm_backward(&xf, &w, &m, &s, &dyf).unwrap();
                for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                    let to = |t: &Tensor| t.to_device(on).unwrap();
                    let (dx, dw, db) =
                        layer_norm_backward(&to(&x), &to(&w), &to(&m), &to(&s), &to(&dy)).unwrap();
                    check16(&what("layernorm_bwd dx"), t, seed, dtype, &dx, &dx_ref);
                    // the parameters' gradients stay f32
                    for (name, got, want) in [("dw", &dw, &dw_ref), ("db", &db, &db_ref)] {
                        assert_eq!(got.dtype(), DType::F32, "{name} dtype on {t}");
                        common::check_kernel(
                            &what(&format!("layernorm_bwd_dwdb {dtype} {name}")),
                            t,
                            seed,
                            &got.to_device(Device::Cpu).unwrap(),
                            want,
                        );
                    }
                }

                // residual forward: s = x + r rounded once, y = LN(s as stored)
                let s_ref = add(&xf, &resf).unwrap();
                let s_stored = s_ref.to_dtype(dtype).to_dtype(DType::F32);
                let (y_ref, m_ref, rs_ref) = layer_norm_stats(&s_stored, &w, &b, 1e-5).unwrap();
                for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                    let to = |t: &Tensor| t.to_device(on).unwrap();
                    let (y, sum, mean, rstd) =
                        layer_norm_residual(&to(&x), &to(&res), &to(&w), &to(&b), 1e-5).unwrap();
                    check16(&what("layernorm_residual s"), t, seed, dtype, &sum, &s_ref);
                    check16(&what("layernorm_residual y"), t, seed, dtype, &y, &y_ref);
                    for (name, got, want) in [("mean", &mean, &m_ref), ("rstd", &rstd, &rs_ref)] {
                        common::check_kernel(
                            &what(&format!("layernorm_residual {dtype} {name}")),
                            t,
                            seed,
                            &got.to_device(Device::Cpu).unwrap(),
                            want,
                        );
                    }
                }
            }
        }
    });
}

/// `a ∘ b` forward and its gradients through the graph, each once rounded from identical inputs
/// (so shapes where a gradient is one rounding: mul and div with equal shapes — a broadcast
/// operand's gradient would sum already-rounded products —, add and sub with a broadcast bias,
/// or any other broadcast, whose gradient is a sum of the incoming gradient itself, exactly ±g).
#[test]
fn binary_16bit_fwd_bwd_match_f32_reference() {
    on_each(|device, tag| {
        for dtype in HALVES {
            for (kind, a_shape, b_shape) in [
                (BinaryKind::Add, vec![197, 77], vec![197, 77]),
                (BinaryKind::Add, vec![3, 50, 33], vec![33]),
                (BinaryKind::Add, vec![33], vec![7, 33]),
                // a broadcast the kernels do not repeat: both sides materialised, and a's
                // gradient summed over two stretched dims, widened and rounded once
                (BinaryKind::Add, vec![2, 1, 5], vec![3, 2, 7, 5]),
                (BinaryKind::Sub, vec![7, 50], vec![50]),
                (BinaryKind::Sub, vec![1], vec![13, 33]),
                (BinaryKind::Mul, vec![13, 301], vec![13, 301]),
                (BinaryKind::Div, vec![1000], vec![1000]),
            ] {
                let seed = common::fresh_seed();
                let (a, af) = rounded(&a_shape, 1.0, seed, dtype);
                let (b, bf) = rounded(&b_shape, 1.0, seed + 1, dtype);
                // a divisor away from 0, so |a/b| stays in f16's range
                let (b, bf) = if kind == BinaryKind::Div {
                    mapped(&bf, dtype, |v| 2.0 + v.abs())
                } else {
                    (b, bf)
                };
                let want = binary(kind, &af, &bf).unwrap();
                let (dy, dyf) = rounded(want.shape(), 1.0, seed + 2, dtype);
                let f = |g: &clipcu::Graph, v: &[clipcu::Var]| match kind {
                    BinaryKind::Add => g.add(&v[0], &v[1]),
                    BinaryKind::Sub => g.sub(&v[0], &v[1]),
                    BinaryKind::Mul => g.mul(&v[0], &v[1]),
                    BinaryKind::Div => g.div(&v[0], &v[1]),
                };
                let (_, want_grads) = common::graph_grads(Device::Cpu, &[af, bf], &dyf, f);
                for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                    let (out, grads) = common::graph_grads(on, &[a.clone(), b.clone()], &dy, f);
                    let what = format!("{kind:?} {a_shape:?} {b_shape:?}");
                    check16(&format!("{what} fwd"), t, seed, dtype, &out, &want);
                    for (i, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
                        check16(&format!("{what} grad {i}"), t, seed, dtype, g, w);
                    }
                }
            }
        }
    });
}

/// Every activation's forward and backward in 16 bits. Backward from the input (GELU, QuickGELU,
/// ReLU, log, scale) with `unary_backward`; from the saved output (exp, sigmoid) through the
/// graph, the reference computed from the kernel's own rounded y (header).
#[test]
fn unary_16bit_fwd_bwd_match_f32_reference() {
    use clipcu::ops::binary::{mul, sub};
    on_each(|device, tag| {
        for dtype in HALVES {
            for kind in [
                UnaryKind::Gelu,
                UnaryKind::QuickGelu,
                UnaryKind::Relu,
                UnaryKind::Exp,
                UnaryKind::Log,
                UnaryKind::Sigmoid,
                UnaryKind::Scale(-0.37),
            ] {
                for n in [1, 7, 257, 1000] {
                    let seed = common::fresh_seed();
                    let (x, xf) = rounded(&[n], 2.0, seed, dtype);
                    // log: positive inputs; exp: |x| ≲ 8 keeps e^x inside f16's range
                    let (x, xf) = if kind == UnaryKind::Log {
                        mapped(&xf, dtype, |v| v.abs() + 0.01)
                    } else {
                        (x, xf)
                    };
                    let (dy, dyf) = rounded(&[n], 1.0, seed + 1, dtype);
                    let want = unary(kind, &xf).unwrap();
                    let what = format!("{kind:?} n={n}");
                    for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                        let to = |t: &Tensor| t.to_device(on).unwrap();
                        let y = unary(kind, &to(&x)).unwrap();
                        assert_eq!(y.device(), on);
                        check16(&format!("{what} fwd"), t, seed, dtype, &y, &want);
                        let (dx, want_dx) = match kind {
                            UnaryKind::Exp | UnaryKind::Sigmoid => {
                                let (y, grads) = common::graph_grads(
                                    on,
                                    std::slice::from_ref(&x),
                                    &dy,
                                    |g, v| g.unary(kind, &v[0]),
                                );
                                let yr = y.to_dtype(DType::F32);
                                let want = if kind == UnaryKind::Exp {
                                    mul(&dyf, &yr).unwrap()
                                } else {
                                    let one_minus = sub(&Tensor::scalar(1.0), &yr).unwrap();
                                    mul(&mul(&dyf, &yr).unwrap(), &one_minus).unwrap()
                                };
                                (grads[0].clone(), want)
                            }
                            _ => (
                                unary_backward(kind, &to(&x), &to(&dy)).unwrap(),
                                unary_backward(kind, &xf, &dyf).unwrap(),
                            ),
                        };
                        check16(&format!("{what} bwd"), t, seed, dtype, &dx, &want_dx);
                    }
                }
            }
        }
    });
}

/// Operands of different dtypes are errors that name the op and both dtypes, on every device.
#[test]
fn mixed_dtypes_of_the_training_ops_are_clear_errors() {
    for device in [Device::Emu, Device::Cpu] {
        let h = |shape: &[usize], d: DType| {
            Tensor::randn(shape.to_vec(), 1.0, 3)
                .to_dtype(d)
                .to_device(device)
                .unwrap()
        };
        let (x16, xb) = (h(&[7, 50], DType::F16), h(&[7, 50], DType::BF16));
        let e = binary(BinaryKind::Mul, &x16, &xb).unwrap_err().to_string();
        assert!(
            e.contains("mul") && e.contains("f16") && e.contains("bf16"),
            "{device}: {e}"
        );
        let x32 = h(&[7, 50], DType::F32);
        let e = add(&x16, &x32).unwrap_err().to_string();
        assert!(
            e.contains("add") && e.contains("f16") && e.contains("f32"),
            "{device}: {e}"
        );
        let e = unary_backward(UnaryKind::QuickGelu, &x16, &xb)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unary backward") && e.contains("bf16"),
            "{device}: {e}"
        );
        let (w, m) = (h(&[50], DType::F32), h(&[7], DType::F32));
        let e = layer_norm_backward(&x16, &w, &m, &m, &xb)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layer_norm backward") && e.contains("f16") && e.contains("bf16"),
            "{device}: {e}"
        );
        let e = layer_norm_residual(&x16, &xb, &w, &w, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("f16") && e.contains("bf16"), "{device}: {e}");
        // a 16-bit input with an f32 (master) conv weight: the weight is cast first
        let (x4, w4) = (h(&[2, 3, 5, 5], DType::F16), h(&[4, 3, 3, 3], DType::F32));
        let e = clipcu::ops::conv2d::conv2d(&x4, &w4, 1, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("conv2d") && e.contains("f16") && e.contains("f32"),
            "{device}: {e}"
        );
        // an f32 gradient into a 16-bit table
        let e = clipcu::ops::embedding::embedding_backward_as(&x32, &[0; 7], 9, DType::BF16)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("embedding backward") && e.contains("bf16"),
            "{device}: {e}"
        );
        let e = clipcu::ops::softmax::softmax_backward(&x16, &xb)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("softmax backward") && e.contains("bf16"),
            "{device}: {e}"
        );
    }
}

/// A 16-bit table's lookup is a copy (bit-identical on every device); its gradient is summed
/// in f32 in id order and rounded once into a 16-bit table (`check16`), or kept f32 for an f32
/// table (then the very sums of the f32 reference, in the same order: bit-identical).
#[test]
fn embedding_16bit_fwd_bwd_match_f32_reference() {
    use clipcu::ops::embedding::{embedding, embedding_backward, embedding_backward_as};
    on_each(|device, tag| {
        for dtype in HALVES {
            for (vocab, n, d) in [(11, 13, 50), (5, 77, 130), (3, 1, 1)] {
                let seed = common::fresh_seed();
                let (w, wf) = rounded(&[vocab, d], 1.0, seed, dtype);
                // repeated ids (a row's gradient sums several), and rows no id picks (vocab 3, n 1)
                let ids: Vec<u32> = (0..n).map(|k| ((k * k + 3 * k) % vocab) as u32).collect();
                let (dy, dyf) = rounded(&[n, d], 1.0, seed + 1, dtype);
                let want = embedding(&wf, &ids, &[n]).unwrap().to_dtype(dtype);
                let dw_ref = embedding_backward(&dyf, &ids, vocab).unwrap();
                for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                    let to = |t: &Tensor| t.to_device(on).unwrap();
                    let out = embedding(&to(&w), &ids, &[n]).unwrap();
                    assert_eq!(out.dtype(), dtype, "embedding fwd dtype on {t}");
                    assert_eq!(
                        out.to_device(Device::Cpu)
                            .unwrap()
                            .to_dtype(DType::F32)
                            .to_vec(),
                        want.to_dtype(DType::F32).to_vec(),
                        "embedding fwd {dtype} [{vocab},{d}] on {t}: a gather copies exactly"
                    );
                    let what = format!("embedding_bwd [{vocab},{d}] n={n}");
                    let dw = embedding_backward(&to(&dy), &ids, vocab).unwrap();
                    check16(&what, t, seed, dtype, &dw, &dw_ref);
                    let dw32 = embedding_backward_as(&to(&dy), &ids, vocab, DType::F32).unwrap();
                    assert_eq!(dw32.dtype(), DType::F32);
                    assert_eq!(
                        dw32.to_device(Device::Cpu).unwrap().to_vec(),
                        dw_ref.to_vec(),
                        "{what} {dtype} into an f32 table on {t}, seed={seed}"
                    );
                }
            }
        }
    });
}

/// 16-bit logits: the loss (f32) at the f32 kernels' 1e-5 relative against the reference on the
/// same rounded logits; the logits' gradient in their dtype through the graph (`check16`).
#[test]
fn cross_entropy_16bit_fwd_bwd_match_f32_reference() {
    use clipcu::ops::cross_entropy::cross_entropy;
    on_each(|device, tag| {
        for dtype in HALVES {
            for (n, c, square) in [
                (7, 50, false),
                (13, 0, true),
                (40, 3, false),
                (1, 1000, false),
            ] {
                let seed = common::fresh_seed();
                let c = if square { n } else { c };
                let (z, zf) = rounded(&[n, c], 3.0, seed, dtype);
                // square logits with targets 0..N (the contrastive labels: no target upload)
                let targets: Vec<u32> = if square {
                    (0..n as u32).collect()
                } else {
                    (0..n).map(|i| ((i * 7 + 1) % c) as u32).collect()
                };
                let want = cross_entropy(&zf, &targets).unwrap();
                let seed_grad = Tensor::scalar(0.75);
                let (_, want_g) = common::graph_grads(
                    Device::Cpu,
                    std::slice::from_ref(&zf),
                    &seed_grad,
                    |g, v| g.cross_entropy(&v[0], &targets),
                );
                for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                    let what = format!("cross_entropy {dtype} [{n},{c}]");
                    let loss = cross_entropy(&z.to_device(on).unwrap(), &targets).unwrap();
                    assert_eq!(loss.dtype(), DType::F32, "{what}: the loss stays f32");
                    common::check_kernel(
                        &format!("{what} loss"),
                        t,
                        seed,
                        &loss.to_device(Device::Cpu).unwrap(),
                        &want,
                    );
                    let (_, g) =
                        common::graph_grads(on, std::slice::from_ref(&z), &seed_grad, |g, v| {
                            g.cross_entropy(&v[0], &targets)
                        });
                    check16(
                        &format!("{what} dlogits"),
                        t,
                        seed,
                        dtype,
                        &g[0],
                        &want_g[0],
                    );
                }
            }
        }
    });
}

/// The CPU takes 16-bit activations in the ops whose kernels tests/kernels_half.rs covers
/// (softmax, L2 normalisation, LayerNorm forward): widened, computed in f32, rounded once — so
/// within `check16` of the f32 reference on the same rounded values, in the input's dtype.
#[test]
fn cpu_ops_take_16bit_activations() {
    use clipcu::ops::layernorm::layer_norm;
    use clipcu::ops::normalize::{l2_normalize_backward, l2_normalize_stats};
    use clipcu::ops::softmax::{softmax, softmax_backward};
    for dtype in HALVES {
        for (r, d) in [(1, 1), (7, 50), (3, 1000)] {
            let seed = common::fresh_seed();
            let (x, xf) = rounded(&[r, d], 2.0, seed, dtype);
            let (dy, dyf) = rounded(&[r, d], 1.0, seed + 1, dtype);
            let what = |k: &str| format!("{k} [{r},{d}]");
            for causal in [false, d == r] {
                let y = softmax(&x, causal).unwrap();
                check16(
                    &what("softmax"),
                    "cpu",
                    seed,
                    dtype,
                    &y,
                    &softmax(&xf, causal).unwrap(),
                );
                let yr = y.to_dtype(DType::F32);
                let dx = softmax_backward(&y, &dy).unwrap();
                let want = softmax_backward(&yr, &dyf).unwrap();
                check16(&what("softmax bwd"), "cpu", seed, dtype, &dx, &want);
            }
            let (y, norm) = l2_normalize_stats(&x).unwrap();
            let (yf, normf) = l2_normalize_stats(&xf).unwrap();
            check16(&what("l2norm"), "cpu", seed, dtype, &y, &yf);
            assert_eq!(
                norm.to_vec(),
                normf.to_vec(),
                "{}: the norms are f32",
                what("l2norm")
            );
            let dx = l2_normalize_backward(&y, &norm, &dy).unwrap();
            let want = l2_normalize_backward(&y.to_dtype(DType::F32), &normf, &dyf).unwrap();
            check16(&what("l2norm bwd"), "cpu", seed, dtype, &dx, &want);
            let (w, b) = (
                Tensor::randn([d], 1.0, seed + 2),
                Tensor::randn([d], 1.0, seed + 3),
            );
            let y = layer_norm(&x, &w, &b, 1e-5).unwrap();
            check16(
                &what("layernorm"),
                "cpu",
                seed,
                dtype,
                &y,
                &layer_norm(&xf, &w, &b, 1e-5).unwrap(),
            );
        }
    }
}

/// One-axis sum/mean and its gradient in the input's dtype (f32 sums, one rounding); the full
/// sum's result stays f32 (a scalar loss or norm) with its gradient in the input's dtype; the
/// attention head layouts move 16-bit values bit-exactly.
#[test]
fn reductions_and_head_layouts_16bit() {
    use clipcu::ops::attention::{
        merge_heads, merge_heads_backward, split_qkv_heads, split_qkv_heads_backward,
    };
    use clipcu::ops::reduce::{mean, sum};
    on_each(|device, tag| {
        for dtype in HALVES {
            for (shape, axis) in [
                (vec![3, 77, 50], 1isize),
                (vec![7, 33], -1),
                (vec![1000, 3], 0),
            ] {
                let seed = common::fresh_seed();
                let (x, xf) = rounded(&shape, 1.0, seed, dtype);
                for is_mean in [false, true] {
                    let f = |g: &clipcu::Graph, v: &[clipcu::Var]| {
                        if is_mean {
                            g.mean(&v[0], Some(axis))
                        } else {
                            g.sum(&v[0], Some(axis))
                        }
                    };
                    let want = if is_mean {
                        mean(&xf, Some(axis))
                    } else {
                        sum(&xf, Some(axis))
                    };
                    let want = want.unwrap();
                    let (dy, dyf) = rounded(want.shape(), 1.0, seed + 1, dtype);
                    let (_, want_g) =
                        common::graph_grads(Device::Cpu, std::slice::from_ref(&xf), &dyf, f);
                    for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                        let what = format!(
                            "{} {shape:?} axis {axis}",
                            if is_mean { "mean" } else { "sum" }
                        );
                        let (out, g) = common::graph_grads(on, std::slice::from_ref(&x), &dy, f);
                        check16(&format!("{what} fwd"), t, seed, dtype, &out, &want);
                        check16(&format!("{what} bwd"), t, seed, dtype, &g[0], &want_g[0]);
                    }
                }
                // the full sum: an f32 scalar from f32 sums of the 16-bit values
                let want = sum(&xf, None).unwrap();
                for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                    let got = sum(&x.to_device(on).unwrap(), None).unwrap();
                    assert_eq!(got.dtype(), DType::F32, "full sum dtype on {t}");
                    common::check_kernel(
                        &format!("sum {shape:?} {dtype}"),
                        t,
                        seed,
                        &got.to_device(Device::Cpu).unwrap(),
                        &want,
                    );
                    let (_, g) = common::graph_grads(
                        on,
                        std::slice::from_ref(&x),
                        &Tensor::scalar(0.5),
                        |g, v| g.mean(&v[0], None),
                    );
                    assert_eq!(g[0].dtype(), dtype, "full mean's gradient dtype on {t}");
                }
            }
            // [B·T, 3·D] with B = 2, T = 7, H = 3, Dh = 5
            let seed = common::fresh_seed();
            let (qkv, _) = rounded(&[14, 45], 1.0, seed, dtype);
            let split = split_qkv_heads(&qkv, 2, 3).unwrap();
            let (heads, _) = rounded(&[2, 3, 7, 5], 1.0, seed + 1, dtype);
            let merged = merge_heads(&heads).unwrap();
            let to = |t: &Tensor| t.to_device(device).unwrap();
            let bits = |t: &Tensor| host_f32(t).to_vec();
            let got = split_qkv_heads(&to(&qkv), 2, 3).unwrap();
            assert_eq!(got.dtype(), dtype);
            assert_eq!(bits(&got), bits(&split), "head split {dtype} on {tag}");
            let back = split_qkv_heads_backward(&got).unwrap();
            assert_eq!(
                bits(&back),
                bits(&qkv),
                "head split backward {dtype} on {tag}"
            );
            let got = merge_heads(&to(&heads)).unwrap();
            assert_eq!(bits(&got), bits(&merged), "head merge {dtype} on {tag}");
            let back = merge_heads_backward(&got, 2, 3).unwrap();
            assert_eq!(
                bits(&back),
                bits(&heads),
                "head merge backward {dtype} on {tag}"
            );
        }
    });
}

fn host_f32(t: &Tensor) -> Tensor {
    t.to_device(Device::Cpu).unwrap().to_dtype(DType::F32)
}

/// LayerNorm with 16-bit gain and bias (weights kept only in 16 bits): the parameters are
/// widened (exactly) for the f32 arithmetic, and dw, db — f32 sums — rounded once to their dtype.
#[test]
fn layernorm_with_16bit_parameters() {
    on_each(|device, tag| {
        for dtype in HALVES {
            for (r, d) in [(7, 50), (300, 77)] {
                let seed = common::fresh_seed();
                let (x, xf) = rounded(&[r, d], 1.0, seed, dtype);
                let (dy, dyf) = rounded(&[r, d], 1.0, seed + 1, dtype);
                let (w, wf) = rounded(&[d], 1.0, seed + 2, dtype);
                let (b, bf) = rounded(&[d], 1.0, seed + 3, dtype);
                let (y_ref, m, s) = layer_norm_stats(&xf, &wf, &bf, 1e-5).unwrap();
                let (dx_ref, dw_ref, db_ref) = layer_norm_backward(&xf, &wf, &m, &s, &dyf).unwrap();
                for (on, t) in [(device, tag), (Device::Cpu, "cpu")] {
                    let to = |t: &Tensor| t.to_device(on).unwrap();
                    let what = |k: &str| format!("layernorm {k} 16-bit params [{r},{d}]");
                    let (y, _, _) = layer_norm_stats(&to(&x), &to(&w), &to(&b), 1e-5).unwrap();
                    check16(&what("y"), t, seed, dtype, &y, &y_ref);
                    let (dx, dw, db) =
                        layer_norm_backward(&to(&x), &to(&w), &to(&m), &to(&s), &to(&dy)).unwrap();
                    check16(&what("dx"), t, seed, dtype, &dx, &dx_ref);
                    check16(&what("dw"), t, seed, dtype, &dw, &dw_ref);
                    check16(&what("db"), t, seed, dtype, &db, &db_ref);
                }
            }
        }
    });
}
