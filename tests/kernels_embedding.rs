//! Kernels of `kernels/embedding.cu` against the CPU reference (DESIGN §7): the row gather and the
//! deterministic gradient (CSR per-row ownership, bit-identical to the CPU's id-order sum).
//! Emu runs each case in normal and reverse lane order; Cuda when a GPU is present (else reported
//! SKIPPED on stderr).

mod common;
#[allow(unused_imports)]
use common::{kernel_runs as runs, on_each_kernel_device as on_each};

use clipcu::ops::embedding::{embedding, embedding_backward};
use clipcu::{Device, Tensor};
use rand::{Rng, SeedableRng};

#[test]
fn embedding_fwd_bwd_match_cpu_bit_exactly() {
    on_each(|device, tag| {
        // (vocab, dim, ids): repeated ids (a small vocab), absent ids, dims around the block size
        for (v, d, n) in [
            (1, 1, 1),
            (7, 50, 77),
            (50, 7, 197),
            (1000, 130, 50),
            (3, 257, 1000),
        ] {
            let seed = common::fresh_seed();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
            let w = Tensor::randn([v, d], 1.0, seed + 1);
            let out = embedding(&w.to_device(device).unwrap(), &ids, &[n]).unwrap();
            assert_eq!(out.device(), device);
            assert_eq!(out.shape(), &[n, d]);
            let reference = embedding(&w, &ids, &[n]).unwrap();
            assert_eq!(
                out.to_vec(),
                reference.to_vec(),
                "embedding_fwd_f32 V={v} D={d} N={n} on {tag}, seed={seed}"
            );
            let dy = Tensor::randn([n, d], 1.0, seed + 2);
            let dw = embedding_backward(&dy.to_device(device).unwrap(), &ids, v).unwrap();
            assert_eq!(dw.shape(), &[v, d]);
            let reference = embedding_backward(&dy, &ids, v).unwrap();
            assert_eq!(
                dw.to_vec(),
                reference.to_vec(),
                "embedding_bwd_f32 V={v} D={d} N={n} on {tag}, seed={seed}"
            );
        }
    });
}

#[test]
fn embedding_bwd_zeroes_absent_rows_and_checks_ids() {
    let dy = Tensor::randn([2, 3, 5], 1.0, 4)
        .to_device(Device::Emu)
        .unwrap();
    let ids = [4u32, 4, 0, 4, 2, 0];
    let dw = embedding_backward(&dy, &ids, 6).unwrap().to_vec();
    for v in [1usize, 3, 5] {
        assert!(
            dw[v * 5..(v + 1) * 5].iter().all(|&x| x == 0.0),
            "row {v} not zero"
        );
    }
    let e = embedding_backward(&dy, &[0, 1, 2, 3, 4, 9], 6)
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range"), "{e}");
}
