//! After its first step, the device optimizer copies nothing between host and device: gradient
//! clipping, the fused AdamW step, the logit_scale clamp and zeroing the gradients run on Emu with
//! no upload and no download (DESIGN §10; counted by `device::transfers`, where every host read
//! or write of Emu memory is counted as the copy it would be on a GPU), also with gradients
//! accumulated in two contributions (micro-batches), and the gradients keep their storage; the
//! same with 16-bit moments (f16 with block scales, bf16) and f16/bf16 weights. One test in its
//! own binary keeps the global counters to this test alone.
mod common;
use clipcu::device::transfers;
use clipcu::ops::unary::scale;
use clipcu::optim::{clamp_in_place, AdamW, AdamWConfig, MomentPrecision};
use clipcu::{DType, Device, Param, Tensor};

#[test]
fn an_optimizer_step_on_emu_copies_nothing_after_the_first() {
    for (moments, dtypes) in [
        (MomentPrecision::F32, [DType::F32; 4]),
        (
            MomentPrecision::F16Scaled,
            [DType::F16, DType::BF16, DType::F32, DType::F16],
        ),
        (
            MomentPrecision::Bf16Sr,
            [DType::BF16, DType::F32, DType::F32, DType::F16],
        ),
    ] {
        copies_nothing_after_the_first(moments, dtypes);
    }
}

fn copies_nothing_after_the_first(moments: MomentPrecision, dtypes: [DType; 4]) {
    let device = Device::Emu;
    let seed = common::fresh_seed();
    let shapes: [&[usize]; 4] = [&[40, 130], &[130], &[], &[5000]];
    let names = ["a.weight", "a.bias", "logit_scale", "b.bias"];
    let params: Vec<Param> = names
        .iter()
        .zip(shapes)
        .enumerate()
        .map(|(i, (n, s))| {
            let t = Tensor::randn(s.to_vec(), 0.5, seed ^ i as u64).to_dtype(dtypes[i]);
            Param::new(*n, t.to_device(device).unwrap())
        })
        .collect();
    // gradients are made on the device from these (a scale kernel), so that only the
    // optimizer's own copies are counted
    let bases: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let t = Tensor::randn(s.to_vec(), 1.0, common::splitmix64(seed ^ i as u64));
            t.to_device(device).unwrap()
        })
        .collect();
    let mut opt = AdamW::new(
        &params,
        AdamWConfig {
            moments,
            ..AdamWConfig::default()
        },
    );
    let mut grad_ids = Vec::new();
    for step in 0..5 {
        let before = transfers::stats(device);
        for (p, b) in params.iter().zip(&bases) {
            for part in 0..2 {
                let c = 0.5 + step as f32 + part as f32;
                p.accumulate_grad(scale(b, c).unwrap()).unwrap();
            }
        }
        let ids: Vec<usize> = params
            .iter()
            .map(|p| p.grad().unwrap().storage_id())
            .collect();
        let norm = opt.clip_grad_norm(1.0).unwrap();
        opt.step(1e-3).unwrap();
        clamp_in_place(&params[2], 0.0, 100f32.ln()).unwrap();
        let d = transfers::stats(device) - before;
        drop(norm);
        if step == 0 {
            // the moments were made on the device; the table goes up once
            assert_eq!(
                (d.uploads, d.downloads),
                (1, 0),
                "{moments:?} step 0: {d:?}"
            );
        } else {
            assert_eq!(
                d,
                transfers::TransferStats::default(),
                "{moments:?} step {step}"
            );
            assert_eq!(ids, grad_ids, "{moments:?} step {step}: a gradient moved");
        }
        grad_ids = ids;
    }
}
