//! Kernels of `kernels/reduce.cu` against the CPU reference (DESIGN §7): the fixed-order
//! two-stage sum/mean over everything, the global L2 norm of a list of gradients, and the
//! attention head layout (qkv split, head merge, and their backwards). Emu runs each case in
//! normal and reverse lane order; Cuda when a GPU is present (else reported SKIPPED on stderr).

mod common;
#[allow(unused_imports)]
use common::{kernel_runs as runs, on_each_kernel_device as on_each};

use clipcu::ops::attention::{
    merge_heads, merge_heads_backward, split_qkv_heads, split_qkv_heads_backward,
};
use clipcu::ops::reduce::{global_l2_norm, mean, sum};
use clipcu::{Device, Tensor};

#[test]
fn sum_and_mean_over_all_match_cpu_and_are_deterministic() {
    on_each(|device, tag| {
        // up to several 4096-element stage-1 chunks (partial last chunk)
        for n in [1, 7, 50, 77, 197, 1000, 4096, 9000] {
            let seed = common::fresh_seed();
            // positive data: no cancellation, so a relative error of the scalar is meaningful
            let x = Tensor::rand_uniform([n], 0.5, 1.5, seed);
            let xd = x.to_device(device).unwrap();
            for (name, f) in [
                ("sum", sum as fn(&Tensor, Option<isize>) -> _),
                ("mean", mean),
            ] {
                let out = f(&xd, None).unwrap();
                assert_eq!(out.device(), device);
                assert_eq!(out.shape(), &[] as &[usize]);
                let err = out.rel_err(&f(&x, None).unwrap());
                assert!(
                    err < 1e-5,
                    "reduce_sum_f32 {name} n={n} on {tag}, seed={seed}: rel err {err}"
                );
            }
            assert_eq!(
                sum(&xd, None).unwrap().to_vec(),
                sum(&xd, None).unwrap().to_vec()
            );
        }
        // multi-dim input, mixed signs
        let seed = common::fresh_seed();
        let x = Tensor::randn([3, 77, 50], 1.0, seed);
        let out = sum(&x.to_device(device).unwrap(), None).unwrap().to_vec()[0] as f64;
        let reference: f64 = x.to_vec().iter().map(|&v| v as f64).sum();
        assert!(
            (out - reference).abs() < 1e-4,
            "sum [3,77,50] on {tag}, seed={seed}: {out} vs {reference}"
        );
    });
}

#[test]
fn global_l2_norm_matches_cpu() {
    on_each(|device, tag| {
        let seed = common::fresh_seed();
        let ts: Vec<Tensor> = [vec![1], vec![7, 50], vec![197], vec![3, 1000], vec![9000]]
            .iter()
            .enumerate()
            .map(|(i, s)| Tensor::randn(s.clone(), 0.1 * (i + 1) as f32, seed + i as u64))
            .collect();
        let reference = global_l2_norm(&ts.iter().collect::<Vec<_>>()).unwrap();
        let on: Vec<Tensor> = ts.iter().map(|t| t.to_device(device).unwrap()).collect();
        let out = global_l2_norm(&on.iter().collect::<Vec<_>>()).unwrap();
        let err = (out - reference).abs() / reference;
        assert!(
            err < 1e-5,
            "global norm on {tag}, seed={seed}: {out} vs {reference}"
        );
    });
}

#[test]
fn head_split_and_merge_match_cpu_exactly() {
    on_each(|device, tag| {
        for (b, t, h, dh) in [(1, 1, 1, 1), (2, 7, 3, 5), (1, 77, 8, 8), (2, 50, 4, 16)] {
            let seed = common::fresh_seed();
            let d = h * dh;
            let qkv = Tensor::randn([b * t, 3 * d], 1.0, seed);
            let qkvd = qkv.to_device(device).unwrap();
            let split = split_qkv_heads(&qkvd, b, h).unwrap();
            assert_eq!(split.shape(), &[3, b, h, t, dh]);
            let reference = split_qkv_heads(&qkv, b, h).unwrap();
            let what = format!("[B={b},T={t},H={h},Dh={dh}] on {tag}, seed={seed}");
            assert_eq!(
                split.to_vec(),
                reference.to_vec(),
                "head_split_fwd_f32 {what}"
            );
            // q = x[0] must be the first D columns, per head
            let back = split_qkv_heads_backward(&split).unwrap();
            assert_eq!(
                back.to_vec(),
                qkv.to_vec(),
                "head_split_bwd_f32 round trip {what}"
            );
            let dsplit = Tensor::randn([3, b, h, t, dh], 1.0, seed + 1);
            assert_eq!(
                split_qkv_heads_backward(&dsplit.to_device(device).unwrap())
                    .unwrap()
                    .to_vec(),
                split_qkv_heads_backward(&dsplit).unwrap().to_vec(),
                "head_split_bwd_f32 {what}"
            );
            let o = Tensor::randn([b, h, t, dh], 1.0, seed + 2);
            let merged = merge_heads(&o.to_device(device).unwrap()).unwrap();
            assert_eq!(merged.shape(), &[b * t, d]);
            assert_eq!(
                merged.to_vec(),
                merge_heads(&o).unwrap().to_vec(),
                "merge_heads {what}"
            );
            let g = Tensor::randn([b * t, d], 1.0, seed + 3);
            let gd = merge_heads_backward(&g.to_device(device).unwrap(), b, h).unwrap();
            assert_eq!(gd.shape(), &[b, h, t, dh]);
            assert_eq!(
                gd.to_vec(),
                merge_heads_backward(&g, b, h).unwrap().to_vec(),
                "merge_heads backward {what}"
            );
        }
    });
}

#[test]
fn head_split_cpu_layout_is_the_documented_one() {
    // out[s, b, h, t, e] = qkv[b·T + t, s·D + h·Dh + e], checked element by element
    let (b, t, h, dh) = (2, 3, 2, 4);
    let d = h * dh;
    let qkv = Tensor::randn([b * t, 3 * d], 1.0, 11);
    let x = qkv.to_vec();
    for device in [Device::Cpu, Device::Emu] {
        let out = split_qkv_heads(&qkv.to_device(device).unwrap(), b, h)
            .unwrap()
            .to_vec();
        let mut i = 0;
        for s in 0..3 {
            for bi in 0..b {
                for hi in 0..h {
                    for ti in 0..t {
                        for e in 0..dh {
                            assert_eq!(
                                out[i],
                                x[(bi * t + ti) * 3 * d + s * d + hi * dh + e],
                                "{device}"
                            );
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}
