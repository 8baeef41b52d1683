//! Kernels of `kernels/elementwise.cu` against the CPU reference (DESIGN §7): QuickGELU, ReLU,
//! scale (forward and backward), same-shape and row-broadcast add, and the bias gradient (the
//! column sum behind `sum_to_shape`); every other numpy broadcast of add/sub/mul/div (operands
//! materialised by expand + the strided copy, gradients summed back by axis sums). Fresh random
//! data, sizes that are not multiples of the
//! block sizes, outputs NaN-poisoned on Emu. Emu runs every case twice — normal and reverse lane
//! order (a missing barrier shows up there); Cuda runs when a GPU is present, else it is reported
//! as SKIPPED on stderr.

mod common;
#[allow(unused_imports)]
use common::{check_kernel as check, kernel_runs as runs, on_each_kernel_device as on_each};

use clipcu::ops::binary::add;
use clipcu::ops::reduce::sum_to_shape;
use clipcu::ops::unary::{quick_gelu, relu, scale, unary_backward, UnaryKind};
use clipcu::{Device, Graph, Tensor};

const SIZES: [usize; 6] = [1, 7, 50, 77, 197, 1000];

#[test]
fn unary_fwd_bwd_match_cpu() {
    on_each(|device, tag| {
        for n in SIZES {
            let seed = common::fresh_seed();
            let x = Tensor::randn([n], 2.0, seed);
            let dy = Tensor::randn([n], 1.0, seed ^ 0x5bd1);
            let (xd, dyd) = (x.to_device(device).unwrap(), dy.to_device(device).unwrap());
            type Fwd = fn(&Tensor) -> clipcu::Result<Tensor>;
            let fwd: [(&str, Fwd); 2] =
                [("quick_gelu_fwd_f32", quick_gelu), ("relu_fwd_f32", relu)];
            for (name, f) in fwd {
                let out = f(&xd).unwrap();
                assert_eq!(out.device(), device);
                check(&format!("{name} n={n}"), tag, seed, &out, &f(&x).unwrap());
            }
            let out = scale(&xd, -0.37).unwrap();
            check(
                &format!("scale_fwd_f32 n={n}"),
                tag,
                seed,
                &out,
                &scale(&x, -0.37).unwrap(),
            );
            for kind in [UnaryKind::QuickGelu, UnaryKind::Relu, UnaryKind::Scale(1.7)] {
                let out = unary_backward(kind, &xd, &dyd).unwrap();
                let reference = unary_backward(kind, &x, &dy).unwrap();
                check(
                    &format!("{kind:?} backward n={n}"),
                    tag,
                    seed,
                    &out,
                    &reference,
                );
            }
        }
    });
}

#[test]
fn relu_backward_is_exactly_masked() {
    // ReLU's gradient is a selection: bit-exact against the CPU, zeros where x ≤ 0.
    on_each(|device, tag| {
        let seed = common::fresh_seed();
        let x = Tensor::randn([197], 1.0, seed);
        let dy = Tensor::randn([197], 1.0, seed + 1);
        let out = unary_backward(
            UnaryKind::Relu,
            &x.to_device(device).unwrap(),
            &dy.to_device(device).unwrap(),
        )
        .unwrap()
        .to_vec();
        let reference = unary_backward(UnaryKind::Relu, &x, &dy).unwrap().to_vec();
        assert_eq!(out, reference, "relu_bwd_f32 on {tag}, seed={seed}");
    });
}

#[test]
fn add_same_shape_and_bias_match_cpu() {
    on_each(|device, tag| {
        for (r, d) in [(1, 1), (7, 50), (77, 7), (197, 77), (3, 1000)] {
            let seed = common::fresh_seed();
            let a = Tensor::randn([r, d], 1.0, seed);
            let b = Tensor::randn([r, d], 1.0, seed + 1);
            let bias = Tensor::randn([d], 1.0, seed + 2);
            let (ad, bd, biasd) = (
                a.to_device(device).unwrap(),
                b.to_device(device).unwrap(),
                bias.to_device(device).unwrap(),
            );
            check(
                &format!("add_fwd_f32 [{r},{d}]"),
                tag,
                seed,
                &add(&ad, &bd).unwrap(),
                &add(&a, &b).unwrap(),
            );
            let reference = add(&a, &bias).unwrap();
            check(
                &format!("add_bias_fwd_f32 [{r},{d}]"),
                tag,
                seed,
                &add(&ad, &biasd).unwrap(),
                &reference,
            );
            // bias on the left, and a [1, D] bias over a rank-3 tensor
            check(
                &format!("bias + x [{r},{d}]"),
                tag,
                seed,
                &add(&biasd, &ad).unwrap(),
                &reference,
            );
            let x3 = Tensor::randn([2, r, d], 1.0, seed + 3);
            let b2 = bias.reshape([1, d]).unwrap();
            check(
                &format!("add_bias_fwd_f32 [2,{r},{d}]+[1,{d}]"),
                tag,
                seed,
                &add(
                    &x3.to_device(device).unwrap(),
                    &b2.to_device(device).unwrap(),
                )
                .unwrap(),
                &add(&x3, &b2).unwrap(),
            );
        }
    });
}

#[test]
fn bias_grad_column_sum_matches_cpu_and_is_deterministic() {
    on_each(|device, tag| {
        for (r, d) in [(1, 1), (7, 50), (77, 7), (197, 77), (1000, 33), (9, 1000)] {
            let seed = common::fresh_seed();
            let g = Tensor::randn([r, d], 1.0, seed);
            let gd = g.to_device(device).unwrap();
            let out = sum_to_shape(&gd, &[d]).unwrap();
            assert_eq!(out.device(), device);
            check(
                &format!("bias_bwd_f32 [{r},{d}]"),
                tag,
                seed,
                &out,
                &sum_to_shape(&g, &[d]).unwrap(),
            );
            let again = sum_to_shape(&gd, &[d]).unwrap();
            assert_eq!(
                out.to_vec(),
                again.to_vec(),
                "bias_bwd_f32 not deterministic on {tag}"
            );
        }
        // [B, T, D] → [1, 1, D]
        let seed = common::fresh_seed();
        let g = Tensor::randn([3, 77, 50], 1.0, seed);
        let out = sum_to_shape(&g.to_device(device).unwrap(), &[1, 1, 50]).unwrap();
        check(
            "bias_bwd_f32 [3,77,50]→[1,1,50]",
            tag,
            seed,
            &out,
            &sum_to_shape(&g, &[1, 1, 50]).unwrap(),
        );
    });
}

#[test]
fn graph_add_bias_backward_runs_on_kernels() {
    // y = quick_gelu(x + b)·c ; the whole backward (scale, quick_gelu, add, bias sum) on kernels.
    on_each(|device, tag| {
        let seed = common::fresh_seed();
        let x = Tensor::randn([77, 50], 1.0, seed);
        let b = Tensor::randn([50], 1.0, seed + 1);
        let grads = |dev: Device| {
            let g = Graph::new();
            let xv = g.leaf(x.to_device(dev).unwrap());
            let bv = g.leaf(b.to_device(dev).unwrap());
            let h = g.add(&xv, &bv).unwrap();
            let y = g.scale(&g.quick_gelu(&h).unwrap(), 0.5).unwrap();
            let gy = Tensor::randn([77, 50], 1.0, seed + 2)
                .to_device(dev)
                .unwrap();
            let gr = g.backward_with(&y, gy).unwrap();
            (gr.get(&xv).unwrap().clone(), gr.get(&bv).unwrap().clone())
        };
        let (gx, gb) = grads(device);
        let (rx, rb) = grads(Device::Cpu);
        assert_eq!(gx.device(), device);
        check("graph dx", tag, seed, &gx, &rx);
        check("graph db", tag, seed, &gb, &rb);
    });
}

#[test]
fn unsupported_inputs_are_clear_errors() {
    let x = Tensor::randn([4, 3], 1.0, 1)
        .to_device(Device::Emu)
        .unwrap();
    let y = Tensor::randn([3, 4], 1.0, 2)
        .to_device(Device::Emu)
        .unwrap();
    let e = add(&x, &y).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("do not broadcast"), "{e}");
    // 16-bit activations are supported (tests/kernels_half_train.rs); mixing dtypes is not
    let h = x.to_dtype(clipcu::DType::F16);
    let e = unary_backward(UnaryKind::Relu, &h, &x)
        .unwrap_err()
        .to_string();
    assert!(e.contains("f16") && e.contains("f32"), "{e}");
}

#[test]
fn exp_log_sigmoid_fwd_bwd_match_cpu() {
    // Forward on tensors; backward through the graph, since exp and sigmoid differentiate from
    // their saved output (exp_bwd_f32 / sigmoid_bwd_f32 read y, log_bwd_f32 reads x).
    on_each(|device, tag| {
        for n in SIZES {
            let seed = common::fresh_seed();
            let x = Tensor::randn([n], 2.0, seed);
            // log needs positive inputs: |x| + 0.1
            let xp =
                Tensor::from_vec(x.to_vec().iter().map(|v| v.abs() + 0.1).collect(), [n]).unwrap();
            let dy = Tensor::randn([n], 1.0, seed ^ 0x5bd1);
            type F = fn(&Graph, &clipcu::Var) -> clipcu::Result<clipcu::Var>;
            let cases: [(&str, F, &Tensor); 3] = [
                ("exp", |g, v| g.exp(v), &x),
                ("log", |g, v| g.log(v), &xp),
                ("sigmoid", |g, v| g.sigmoid(v), &x),
            ];
            for (name, f, input) in cases {
                let run = |g: &Graph, v: &[clipcu::Var]| f(g, &v[0]);
                let xs = std::slice::from_ref(input);
                let (out, dx) = common::graph_grads(device, xs, &dy, run);
                let (want, want_dx) = common::graph_grads(Device::Cpu, xs, &dy, run);
                check(&format!("{name}_fwd_f32 n={n}"), tag, seed, &out, &want);
                check(
                    &format!("{name}_bwd_f32 n={n}"),
                    tag,
                    seed,
                    &dx[0],
                    &want_dx[0],
                );
            }
        }
    });
}

#[test]
fn mul_sub_div_broadcast_fwd_bwd_match_cpu() {
    // Equal shapes, a trailing [D] block on either side, a [1, D] block over a rank-3 tensor,
    // and a scalar (the contrastive loss's logit scale). Backward through the graph: the
    // operand-shaped gradients are the products/quotients summed back down by bias_bwd_f32; the
    // divisor's is div_bwd_b_f32.
    on_each(|device, tag| {
        let shapes: [(Vec<usize>, Vec<usize>); 6] = [
            (vec![1], vec![1]),
            (vec![7, 50], vec![7, 50]),
            (vec![77, 7], vec![7]),
            (vec![50], vec![197, 50]),
            (vec![2, 3, 77], vec![1, 77]),
            (vec![1000], vec![]),
        ];
        for (sa, sb) in shapes {
            let seed = common::fresh_seed();
            let a = Tensor::randn(sa.clone(), 1.0, seed);
            let b = divisor_operand(&sb, seed + 1);
            let out_shape = clipcu::tensor::broadcast_shape("test", &sa, &sb).unwrap();
            let dy = Tensor::randn(out_shape, 1.0, seed + 2);
            type F = fn(&Graph, &clipcu::Var, &clipcu::Var) -> clipcu::Result<clipcu::Var>;
            let cases: [(&str, F); 3] = [
                ("mul", |g, a, b| g.mul(a, b)),
                ("sub", |g, a, b| g.sub(a, b)),
                ("div", |g, a, b| g.div(a, b)),
            ];
            for (name, f) in cases {
                let run = |g: &Graph, v: &[clipcu::Var]| f(g, &v[0], &v[1]);
                let xs = [a.clone(), b.clone()];
                let (out, grads) = common::graph_grads(device, &xs, &dy, run);
                let (want, want_grads) = common::graph_grads(Device::Cpu, &xs, &dy, run);
                let what = format!("{name} {sa:?}∘{sb:?}");
                check(&format!("{name}_fwd_f32 {what}"), tag, seed, &out, &want);
                // a broadcast operand's gradient is a column sum in bias_bwd_f32's tree order
                // against the CPU's sequential one (and div's terms reach 4·|a·dy|): 1e-4
                let grad = common::check_kernel_grad;
                grad(&format!("{what} da"), tag, seed, &grads[0], &want_grads[0]);
                grad(&format!("{what} db"), tag, seed, &grads[1], &want_grads[1]);
            }
        }
    });
}

/// A random operand that is safe to divide by: sign(x)·(|x| + 0.5), away from 0.
fn divisor_operand(shape: &[usize], seed: u64) -> Tensor {
    let b = Tensor::randn(shape.to_vec(), 1.0, seed);
    let v = b
        .to_vec()
        .iter()
        .map(|v| v.signum() * (v.abs() + 0.5))
        .collect();
    Tensor::from_vec(v, shape.to_vec()).unwrap()
}

#[test]
fn general_broadcasts_fwd_bwd_match_cpu() {
    // Broadcasts that are not "a trailing block over rows": a middle dim stretched, both sides
    // stretched ([T, 1] ∘ [1, D]), size-1 dims on both sides at rank 4, and a [T, 1] column over
    // a rank-3 tensor. The stretched operand is materialised on the device (expand + the strided
    // copy, exact), so the forward is the same f32 operation on the same pairs as the CPU:
    // bit-for-bit. The gradients are sums over the stretched dims (axis sums in another order
    // than the CPU's single pass): 1e-4.
    on_each(|device, tag| {
        let shapes: [(Vec<usize>, Vec<usize>); 5] = [
            (vec![2, 1, 5], vec![2, 7, 5]),
            (vec![77, 1], vec![1, 50]),
            (vec![3, 1, 4, 1], vec![1, 5, 1, 6]),
            (vec![7, 1], vec![3, 7, 13]),
            (vec![2, 9, 1, 33], vec![9, 17, 1]),
        ];
        for (sa, sb) in shapes {
            let seed = common::fresh_seed();
            let a = Tensor::randn(sa.clone(), 1.0, seed);
            let b = divisor_operand(&sb, seed + 1);
            let out_shape = clipcu::tensor::broadcast_shape("test", &sa, &sb).unwrap();
            let dy = Tensor::randn(out_shape.clone(), 1.0, seed + 2);
            type F = fn(&Graph, &clipcu::Var, &clipcu::Var) -> clipcu::Result<clipcu::Var>;
            let cases: [(&str, F); 4] = [
                ("add", |g, a, b| g.add(a, b)),
                ("mul", |g, a, b| g.mul(a, b)),
                ("sub", |g, a, b| g.sub(a, b)),
                ("div", |g, a, b| g.div(a, b)),
            ];
            for (name, f) in cases {
                let run = |g: &Graph, v: &[clipcu::Var]| f(g, &v[0], &v[1]);
                let xs = [a.clone(), b.clone()];
                let (out, grads) = common::graph_grads(device, &xs, &dy, run);
                let (want, want_grads) = common::graph_grads(Device::Cpu, &xs, &dy, run);
                let what = format!("{name} {sa:?}∘{sb:?}");
                assert_eq!(out.shape(), out_shape.as_slice(), "{what}");
                assert_eq!(
                    out.to_vec(),
                    want.to_vec(),
                    "{what} forward on {tag}, seed={seed}"
                );
                let grad = common::check_kernel_grad;
                grad(&format!("{what} da"), tag, seed, &grads[0], &want_grads[0]);
                grad(&format!("{what} db"), tag, seed, &grads[1], &want_grads[1]);
            }
            // 16-bit add of the same broadcast: both operands f16 (one rounding of the sum)
            for dtype in [clipcu::DType::F16, clipcu::DType::BF16] {
                let (ah, bh) = (a.to_dtype(dtype), b.to_dtype(dtype));
                let want = add(
                    &ah.to_dtype(clipcu::DType::F32),
                    &bh.to_dtype(clipcu::DType::F32),
                )
                .unwrap()
                .to_dtype(dtype);
                let out = add(
                    &ah.to_device(device).unwrap(),
                    &bh.to_device(device).unwrap(),
                )
                .unwrap();
                assert_eq!((out.device(), out.dtype()), (device, dtype));
                assert_eq!(
                    out.to_le_bytes(),
                    want.to_le_bytes(),
                    "{dtype} add {sa:?}+{sb:?} on {tag}, seed={seed}"
                );
            }
        }
    });
}

#[test]
fn fill_makes_constants_on_the_device() {
    // fill_f32 (Tensor::full_on): every element, bit for bit, on the device itself
    on_each(|device, tag| {
        for (n, value) in [
            (1usize, 1.0f32),
            (7, -0.0),
            (1000, 3.25),
            (77, f32::MIN_POSITIVE),
        ] {
            let t = Tensor::full_on(value, [n], device).unwrap();
            assert_eq!(t.device(), device, "{tag}");
            assert!(
                t.to_vec().iter().all(|v| v.to_bits() == value.to_bits()),
                "{tag} n={n}: not all {value}"
            );
        }
        let m = Tensor::full_on(2.0, [3, 0, 4], device).unwrap();
        assert_eq!(m.shape(), &[3, 0, 4]);
    });
}
