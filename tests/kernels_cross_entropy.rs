//! Kernels of `kernels/cross_entropy.cu` against the CPU reference (DESIGN §7): the row-wise
//! log-softmax loss (then the fixed-order mean of `reduce.cu`) and its gradient
//! `(p − onehot)·dL/N`, for row counts and class counts that are not multiples of the 8-row
//! blocks or the 32-lane warps, fresh random logits and targets, outputs NaN-poisoned on Emu.
//! Emu runs every case in normal and reverse lane order; Cuda when a GPU is present (else
//! reported as SKIPPED). Also the contrastive loss end to end (two cross-entropies over the
//! transposed similarity logits, a broadcast scalar multiply and exp).

mod common;
use common::{check_kernel as check, graph_grads, on_each_kernel_device as on_each};

use clipcu::loss::contrastive_loss;
use clipcu::ops::cross_entropy::cross_entropy;
use clipcu::{Device, Tensor};
use rand::{Rng, SeedableRng};

/// (rows N, classes C)
const CASES: [(usize, usize); 7] = [
    (1, 1),
    (1, 7),
    (7, 50),
    (50, 7),
    (77, 77),
    (197, 33),
    (3, 1000),
];

fn targets(seed: u64, n: usize, c: usize) -> Vec<u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..c as u32)).collect()
}

#[test]
fn cross_entropy_fwd_bwd_match_cpu() {
    on_each(|device, tag| {
        for (n, c) in CASES {
            let seed = common::fresh_seed();
            // std 3: rows with a clear winner and rows of near ties, like trained logits
            let z = Tensor::randn([n, c], 3.0, seed);
            let t = targets(seed ^ 1, n, c);
            let loss = cross_entropy(&z.to_device(device).unwrap(), &t).unwrap();
            assert_eq!(loss.device(), device);
            let reference = cross_entropy(&z, &t).unwrap();
            check(
                &format!("cross_entropy_fwd_f32 [{n},{c}]"),
                tag,
                seed,
                &loss,
                &reference,
            );
            // backward through the graph with a non-unit output gradient
            let dl = Tensor::randn(Vec::<usize>::new(), 1.0, seed ^ 2);
            let f = |g: &clipcu::Graph, v: &[clipcu::Var]| g.cross_entropy(&v[0], &t);
            let (_, dz) = graph_grads(device, std::slice::from_ref(&z), &dl, f);
            let (_, want) = graph_grads(Device::Cpu, std::slice::from_ref(&z), &dl, f);
            check(
                &format!("cross_entropy_bwd_f32 [{n},{c}]"),
                tag,
                seed,
                &dz[0],
                &want[0],
            );
        }
    });
}

#[test]
fn cross_entropy_is_stable_for_huge_logits() {
    // The row max is subtracted before exp: logits of ±1e4 (exp would overflow f32 at 89) give a
    // finite loss that matches the CPU's, and probabilities that are exactly 0/1 where they must be.
    on_each(|device, tag| {
        let seed = common::fresh_seed();
        let z = Tensor::randn([7, 50], 1e4, seed);
        let t = targets(seed, 7, 50);
        let loss = cross_entropy(&z.to_device(device).unwrap(), &t).unwrap();
        let reference = cross_entropy(&z, &t).unwrap();
        assert!(loss.item().unwrap().is_finite(), "{tag} seed={seed}");
        check(
            "cross_entropy_fwd_f32 huge logits",
            tag,
            seed,
            &loss,
            &reference,
        );
    });
}

#[test]
fn contrastive_loss_and_feature_grads_match_cpu() {
    on_each(|device, tag| {
        for n in [1, 7, 50] {
            let seed = common::fresh_seed();
            let img = Tensor::randn([n, 32], 1.0, seed);
            let txt = Tensor::randn([n, 32], 1.0, seed + 1);
            let scale = Tensor::scalar(2.659);
            let dy = Tensor::scalar(1.0);
            let f = |g: &clipcu::Graph, v: &[clipcu::Var]| {
                Ok(contrastive_loss(g, &v[0], &v[1], &v[2])?.loss)
            };
            let xs = [img, txt, scale];
            let (loss, grads) = graph_grads(device, &xs, &dy, f);
            let (want, want_grads) = graph_grads(Device::Cpu, &xs, &dy, f);
            check(&format!("contrastive loss n={n}"), tag, seed, &loss, &want);
            for (i, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
                // the feature gradients pass through L2-normalize's backward, a difference of
                // nearly equal terms (see check_kernel_grad)
                common::check_kernel_grad(&format!("contrastive d{i} n={n}"), tag, seed, g, w);
            }
        }
    });
}

#[test]
fn contrastive_accuracies_match_cpu_with_ties_and_nans() {
    // diagonal_hits_f32 + the fixed-order sum against the CPU rule (a row counts when its
    // diagonal is strictly the largest): features with duplicated rows make exact ties in both
    // directions, and a NaN feature makes its row and column misses.
    on_each(|device, tag| {
        for (n, nan) in [
            (1usize, false),
            (7, false),
            (7, true),
            (50, false),
            (77, true),
        ] {
            let seed = common::fresh_seed();
            let mut iv = Tensor::randn([n, 16], 1.0, seed).to_vec();
            let mut tv = iv.clone();
            // texts near their images (most rows hit), with noise
            for (t, r) in tv
                .iter_mut()
                .zip(Tensor::randn([n, 16], 0.7, seed + 1).to_vec())
            {
                *t += r;
            }
            if n >= 7 {
                // image 3 duplicates image 2, text 5 duplicates text 4: ties; a NaN in image 6
                // (its row and, through it, every column are then misses)
                let (a, b) = (iv[2 * 16..3 * 16].to_vec(), tv[4 * 16..5 * 16].to_vec());
                iv[3 * 16..4 * 16].copy_from_slice(&a);
                tv[5 * 16..6 * 16].copy_from_slice(&b);
                if nan {
                    iv[6 * 16] = f32::NAN;
                }
            }
            let img = Tensor::from_vec(iv, [n, 16]).unwrap();
            let txt = Tensor::from_vec(tv, [n, 16]).unwrap();
            let accs = |d: Device| {
                let g = clipcu::Graph::inference();
                let out = contrastive_loss(
                    &g,
                    &g.constant(img.to_device(d).unwrap()),
                    &g.constant(txt.to_device(d).unwrap()),
                    &g.constant(Tensor::scalar(2.0).to_device(d).unwrap()),
                )
                .unwrap();
                assert_eq!(out.image_to_text_acc.device(), d);
                (
                    out.image_to_text_acc.item().unwrap(),
                    out.text_to_image_acc.item().unwrap(),
                )
            };
            let (got, want) = (accs(device), accs(Device::Cpu));
            assert_eq!(got, want, "{tag} n={n} nan={nan} seed={seed}");
            if n >= 7 {
                assert!(want.0 < 1.0 && want.1 < 1.0, "ties and NaN must be misses");
                assert!(nan || want.0 > 0.0, "most rows hit without a NaN");
            }
        }
    });
}
