//! Kernels of `kernels/conv2d.cu` against the CPU reference (DESIGN §7): im2col (bit-exact: a
//! copy with zero padding) and col2im (bit-exact: the same tap order as the CPU), for strides,
//! paddings and kernel sizes of CLIP's ResNet stem and ViT patch embedding. Also checks that
//! `W · im2col(x)` is the convolution, and that conv2d itself — im2col, one device GEMM over the
//! batch, `transpose01_f32` back to NCHW; backward through the same kernels and col2im — matches
//! the CPU forward and backward. Emu runs each case in normal and reverse lane order; Cuda when a
//! GPU is present (else reported SKIPPED on stderr).

mod common;
#[allow(unused_imports)]
use common::kernel_runs as runs;

use clipcu::device::emu;
use clipcu::ops::conv2d::{col2im, conv2d, im2col};
use clipcu::ops::matmul::matmul;
use clipcu::{Device, Tensor};

/// (N, C, H, W, kh, kw, stride, pad)
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);
const CASES: [Case; 6] = [
    (1, 1, 1, 1, 1, 1, 1, 0),
    (2, 3, 7, 7, 3, 3, 1, 1),
    (1, 3, 14, 14, 7, 7, 2, 3),
    (2, 5, 9, 11, 3, 2, 2, 1),
    (1, 3, 32, 32, 16, 16, 16, 0),
    (3, 2, 5, 5, 1, 1, 1, 0),
];

#[test]
fn im2col_col2im_match_cpu_bit_exactly() {
    for (device, reverse) in runs() {
        let tag = format!("{device}{}", if reverse { " (reverse)" } else { "" });
        emu::with_reverse(reverse, || {
            for (n, c, h, w, kh, kw, s, p) in CASES {
                let seed = common::fresh_seed();
                let what =
                    format!("[{n},{c},{h},{w}] k={kh}x{kw} s={s} p={p} on {tag}, seed={seed}");
                let x = Tensor::randn([n, c, h, w], 1.0, seed);
                let col = im2col(&x.to_device(device).unwrap(), kh, kw, s, p).unwrap();
                let reference = im2col(&x, kh, kw, s, p).unwrap();
                assert_eq!(col.shape(), reference.shape(), "{what}");
                assert_eq!(col.to_vec(), reference.to_vec(), "im2col_fwd_f32 {what}");
                let dcol = Tensor::randn(reference.shape().to_vec(), 1.0, seed + 1);
                let dx =
                    col2im(&dcol.to_device(device).unwrap(), [n, c, h, w], kh, kw, s, p).unwrap();
                let reference = col2im(&dcol, [n, c, h, w], kh, kw, s, p).unwrap();
                assert_eq!(dx.to_vec(), reference.to_vec(), "col2im_bwd_f32 {what}");
            }
        });
    }
}

#[test]
fn weight_times_columns_is_the_convolution() {
    // The layout contract the cuBLAS GEMM relies on: W [O, K] · col [K, N·P] = y permuted.
    let (n, c, h, w, kh, kw, s, p, o) = (2, 3, 9, 8, 3, 3, 2, 1, 4);
    let seed = common::fresh_seed();
    let x = Tensor::randn([n, c, h, w], 1.0, seed);
    let wt = Tensor::randn([o, c, kh, kw], 1.0, seed + 1);
    let y = conv2d(&x, &wt, s, p).unwrap();
    let (oh, ow) = (y.shape()[2], y.shape()[3]);
    let col = im2col(&x.to_device(Device::Emu).unwrap(), kh, kw, s, p)
        .unwrap()
        .to_device(Device::Cpu)
        .unwrap();
    let prod = matmul(&wt.reshape([o, c * kh * kw]).unwrap(), &col, false, false).unwrap(); // [O, N·P]
    let prod = prod
        .reshape([o, n, oh * ow])
        .unwrap()
        .permute(&[1, 0, 2])
        .unwrap()
        .contiguous();
    let err = prod.reshape([n, o, oh, ow]).unwrap().rel_err(&y);
    assert!(err < 1e-5, "seed={seed}: rel err {err}");
}

#[test]
fn conv2d_fwd_bwd_match_cpu() {
    // The GEMMs add in a different order from the CPU's grouped GEMMs and the weight gradient
    // sums over the batch differently, so f32 tolerance rather than bit equality; on a GPU cuBLAS
    // may use TF32 (3e-4, DESIGN §7).
    common::on_each_kernel_device(|device, tag| {
        let tol = if device == Device::Emu { 1e-5 } else { 3e-4 };
        for (i, (n, c, h, w, kh, kw, s, p)) in CASES.into_iter().enumerate() {
            let seed = common::fresh_seed();
            let o = [1, 7, 5, 3, 8, 4][i];
            let x = Tensor::randn([n, c, h, w], 1.0, seed);
            let wt = Tensor::randn([o, c, kh, kw], 1.0, seed + 1);
            let want = conv2d(&x, &wt, s, p).unwrap();
            let dy = Tensor::randn(want.shape().to_vec(), 1.0, seed + 2);
            let f = |g: &clipcu::Graph, v: &[clipcu::Var]| g.conv2d(&v[0], &v[1], s, p);
            let xs = [x, wt];
            let (out, grads) = common::graph_grads(device, &xs, &dy, f);
            let (_, want_grads) = common::graph_grads(Device::Cpu, &xs, &dy, f);
            let what = format!("conv2d [{n},{c},{h},{w}] o={o} k={kh}x{kw} s={s} p={p}");
            common::check_kernel_tol(&what, tag, seed, &out, &want, tol);
            for (j, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
                let name = ["dx", "dw"][j];
                common::check_kernel_tol(&format!("{what} {name}"), tag, seed, g, w, tol);
            }
        }
    });
}

#[test]
fn conv2d_bad_shapes_are_clear_errors() {
    let x = Tensor::randn([1, 3, 8, 8], 1.0, 1)
        .to_device(Device::Emu)
        .unwrap();
    let w = Tensor::randn([4, 2, 3, 3], 1.0, 2)
        .to_device(Device::Emu)
        .unwrap();
    let e = conv2d(&x, &w, 1, 1).unwrap_err().to_string();
    assert!(
        e.contains("conv2d") && e.contains("[1, 3, 8, 8]") && e.contains("[4, 2, 3, 3]"),
        "{e}"
    );
}
