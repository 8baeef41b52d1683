//! Kernels of `kernels/contrastive.cu` (the fused contrastive loss, f32) against the CPU's fused
//! op — itself held to the f64 definition and the composed loss in tests/contrastive.rs — at
//! batch sizes that are no multiple of the 32×32 tiles and feature sizes that are no multiple of
//! the 32-wide chunks: loss, both accuracies, dI, dT and d logit_scale, fresh random features,
//! outputs NaN-poisoned on Emu; Emu in normal and reverse lane order, Cuda when present. Also:
//! two runs bitwise equal, NaN features, and the stripe geometry (several row groups per block).
mod common;
use common::on_each_kernel_device as on_each;

use clipcu::{Device, Graph, Tensor};

/// (loss, i2t, t2i, dI, dT, dlogit) on `device`, all read back to the host.
fn run(
    img: &Tensor,
    txt: &Tensor,
    ls: &Tensor,
    device: Device,
) -> (f32, f32, f32, Tensor, Tensor, f32) {
    let g = Graph::new();
    let on = |t: &Tensor| g.leaf(t.to_device(device).unwrap());
    let (vi, vt, vs) = (on(img), on(txt), on(ls));
    let (loss, i2t, t2i) = g.contrastive(&vi, &vt, &vs).unwrap();
    assert_eq!(loss.tensor().device(), device);
    let grads = g.backward(&loss).unwrap();
    let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap();
    (
        loss.tensor().item().unwrap(),
        i2t.item().unwrap(),
        t2i.item().unwrap(),
        host(grads.get(&vi).unwrap()),
        host(grads.get(&vt).unwrap()),
        grads.get(&vs).unwrap().item().unwrap(),
    )
}

/// Pairs correlated enough that the accuracies are neither 0 nor 1, at a peaked scale.
fn features(n: usize, d: usize, seed: u64) -> (Tensor, Tensor, Tensor) {
    let shared = Tensor::randn(vec![n, d], 1.0, seed);
    let add = |s| clipcu::ops::binary::add(&shared, &Tensor::randn(vec![n, d], 1.5, s)).unwrap();
    (
        add(seed ^ 1),
        add(seed ^ 2),
        Tensor::scalar(1.5 + (seed % 5) as f32 * 0.3),
    )
}

fn rel(a: f32, b: f32) -> f32 {
    (a - b).abs() / b.abs().max(1e-6)
}

#[test]
fn fused_kernels_match_the_cpu_op() {
    // 300 rows: 10 row groups, which a stripe takes several of at D = 64 (groups_per_stripe)
    for (n, d) in [
        (1, 64),
        (7, 72),
        (77, 64),
        (129, 72),
        (300, 64),
        (33, 512),
        (129, 512),
    ] {
        let seed = common::fresh_seed();
        let (img, txt, ls) = features(n, d, seed);
        let want = run(&img, &txt, &ls, Device::Cpu);
        on_each(|device, tag| {
            let got = run(&img, &txt, &ls, device);
            let what = format!("N {n} D {d} on {tag}, seed {seed}");
            assert!(
                rel(got.0, want.0) < 1e-5,
                "{what}: loss {} vs cpu {}",
                got.0,
                want.0
            );
            assert_eq!((got.1, got.2), (want.1, want.2), "{what}: accuracies");
            common::check_kernel_tol(&format!("{what}: dI"), tag, seed, &got.3, &want.3, 1e-5);
            common::check_kernel_tol(&format!("{what}: dT"), tag, seed, &got.4, &want.4, 1e-5);
            if n > 1 {
                // Σ|dS·S| ≤ s·Σ|dS| ≤ 2s bounds the terms, which cancel for weak pairs
                let floor = 1e-7 * 2.0 * ls.item().unwrap().exp();
                assert!(
                    (got.5 - want.5).abs() <= 1e-5 * want.5.abs() + floor,
                    "{what}: dlogit {} vs cpu {}",
                    got.5,
                    want.5
                );
            } else {
                assert!(
                    got.5.abs() < 1e-6,
                    "{what}: dlogit {} (the loss of one pair is 0)",
                    got.5
                );
            }
        });
    }
}

#[test]
fn two_runs_are_bitwise_equal_and_nan_features_give_a_nan_loss() {
    let seed = common::fresh_seed();
    let (img, txt, ls) = features(70, 40, seed);
    let a = run(&img, &txt, &ls, Device::Emu);
    let b = run(&img, &txt, &ls, Device::Emu);
    assert_eq!(
        (a.0.to_bits(), a.5.to_bits()),
        (b.0.to_bits(), b.5.to_bits()),
        "seed {seed}"
    );
    assert_eq!(a.3.to_vec(), b.3.to_vec(), "seed {seed}: dI");
    assert_eq!(a.4.to_vec(), b.4.to_vec(), "seed {seed}: dT");
    let mut v = img.to_vec();
    v[40 * 33 + 5] = f32::NAN;
    let img = Tensor::from_vec(v, vec![70, 40]).unwrap();
    let on = |t: &Tensor| t.to_device(Device::Emu).unwrap();
    let out = clipcu::ops::contrastive::contrastive(&on(&img), &on(&txt), &on(&ls)).unwrap();
    assert!(
        out.loss.item().unwrap().is_nan(),
        "seed {seed}: a NaN feature gave a finite loss"
    );
    let cpu = clipcu::ops::contrastive::contrastive(&img, &txt, &ls).unwrap();
    assert_eq!(
        (
            out.image_to_text_acc.item().unwrap(),
            out.text_to_image_acc.item().unwrap()
        ),
        (
            cpu.image_to_text_acc.item().unwrap(),
            cpu.text_to_image_acc.item().unwrap()
        ),
        "seed {seed}: accuracies with a NaN row (its row and every column miss)"
    );
}
