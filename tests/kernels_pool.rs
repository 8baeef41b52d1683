//! Kernels of `kernels/pool.cu` against the CPU reference (DESIGN §7): AvgPool2d forward and the
//! gather backward, including overlapping windows (stride < k) and floor-dropped edges. Emu runs
//! each case in normal and reverse lane order; Cuda when a GPU is present (else SKIPPED).

mod common;
#[allow(unused_imports)]
use common::kernel_runs as runs;

use clipcu::device::emu;
use clipcu::ops::pool::{avg_pool2d, avg_pool2d_backward};
use clipcu::Tensor;

#[test]
fn avgpool_fwd_bwd_match_cpu() {
    for (device, reverse) in runs() {
        let tag = format!("{device}{}", if reverse { " (reverse)" } else { "" });
        emu::with_reverse(reverse, || {
            // (N, C, H, W, k, s)
            for (n, c, h, w, k, s) in [
                (1, 1, 1, 1, 1, 1),
                (1, 3, 7, 7, 2, 2),
                (2, 5, 14, 14, 2, 2),
                (1, 7, 9, 11, 3, 2),
                (2, 3, 10, 7, 3, 1),
                (1, 50, 8, 8, 4, 4),
            ] {
                let seed = common::fresh_seed();
                let x = Tensor::randn([n, c, h, w], 1.0, seed);
                let out = avg_pool2d(&x.to_device(device).unwrap(), k, s).unwrap();
                let reference = avg_pool2d(&x, k, s).unwrap();
                assert_eq!(out.shape(), reference.shape());
                let what = format!("[{n},{c},{h},{w}] k={k} s={s} on {tag}, seed={seed}");
                let err = out.rel_err(&reference);
                assert!(err < 1e-5, "avgpool_fwd_f32 {what}: rel err {err}");
                let dy = Tensor::randn(reference.shape().to_vec(), 1.0, seed + 1);
                let dx = avg_pool2d_backward(&dy.to_device(device).unwrap(), [n, c, h, w], k, s)
                    .unwrap();
                let reference = avg_pool2d_backward(&dy, [n, c, h, w], k, s).unwrap();
                let err = dx.rel_err(&reference);
                assert!(err < 1e-5, "avgpool_bwd_f32 {what}: rel err {err}");
            }
        });
    }
}
