//! `clipcu-bench train` (clipcu::bench::train): the report's numbers are consistent with each
//! other and with the config's FLOP count, every precision runs and counts the bytes its weights,
//! gradients and optimizer state take, and the datasheet lookup finds cards by the names drivers
//! report.
mod common;

use clipcu::bench::train::StepTimes;
use clipcu::bench::{bench_train, peak_tflops, Precision, TrainBenchOptions};
use clipcu::model::ClipConfig;
use clipcu::Device;
use rand::{Rng, SeedableRng};

fn tiny(device: Device) -> TrainBenchOptions {
    TrainBenchOptions {
        config: "tiny-vit".into(),
        batch: 4,
        precision: Precision::Fp32,
        device,
        steps: 2,
        warmup: 1,
        peak_tflops: None,
    }
}

#[test]
fn report_is_consistent_on_cpu_and_emu() {
    for device in [Device::Cpu, Device::Emu] {
        let mut o = tiny(device);
        o.peak_tflops = Some(0.5);
        let r = bench_train(&o).unwrap();
        let s = &r.step;
        assert!(s.min_ms > 0.0 && s.min_ms <= s.p10_ms && s.p10_ms <= s.median_ms);
        assert!(s.median_ms <= s.p90_ms && s.p90_ms <= s.max_ms, "{s:?}");
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
        assert!(rel(r.pairs_per_s, 4.0 / (s.median_ms * 1e-3)) < 1e-12);
        let cfg = ClipConfig::load("tiny-vit").unwrap();
        assert_eq!(r.flops_per_step, cfg.forward_flops().train_step(4) as f64);
        assert!(
            rel(
                r.achieved_tflops,
                r.flops_per_step / (s.median_ms * 1e-3) / 1e12
            ) < 1e-12
        );
        assert_eq!(r.peak_source.as_deref(), Some("--peak-tflops"));
        assert!(rel(r.mfu.unwrap(), r.achieved_tflops / 0.5) < 1e-12);
        assert_eq!(r.parameters as u128, cfg.parameter_count());
        let mem = r
            .peak_memory_bytes
            .expect("Linux reports a peak RSS; Emu its allocator's");
        // At least the f32 weights, gradients and two Adam moments were resident at the peak.
        assert!(
            mem >= 16 * r.parameters,
            "{device}: {mem} bytes for {} parameters",
            r.parameters
        );
        assert!(
            rel(
                r.bytes_per_parameter.unwrap(),
                mem as f64 / r.parameters as f64
            ) < 1e-12
        );
        assert!(r.last_loss.is_finite());
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["precision"], "fp32");
        assert_eq!(json["engine"], "clipcu");
        // Without a peak there is no MFU, only the achieved rate.
        let r = bench_train(&tiny(device)).unwrap();
        assert!(r.mfu.is_none() && r.peak_tflops.is_none() && r.achieved_tflops > 0.0);
    }
}

/// Bytes per parameter of weights + gradients + AdamW state, as counted from the trainer's
/// tensors: f32 weights, gradients and moments are 16; 16-bit weights with f32 gradient buffers
/// and f16 moments (one f32 scale per 256 elements and moment) are 2 + 4 + 4 + 8/256.
#[test]
fn every_precision_runs_and_counts_its_state_bytes() {
    for (p, want) in [
        ("fp32", 16.0),
        ("amp", 16.0),
        ("amp_bf16", 16.0),
        ("pure_fp16", 10.0 + 8.0 / 256.0),
        ("pure_bf16", 10.0 + 8.0 / 256.0),
    ] {
        for device in [Device::Cpu, Device::Emu] {
            let mut o = tiny(device);
            o.precision = p.parse().unwrap();
            let r = bench_train(&o).unwrap();
            assert!(r.last_loss.is_finite(), "{p} on {device}");
            // the scales round up to whole blocks per tensor: a little over 8/256
            let got = r.state_bytes_per_parameter;
            assert!(
                got >= want - 1e-9 && got < want + 0.2,
                "{p} on {device}: {got} bytes per parameter, want ≈ {want}"
            );
            let json: serde_json::Value = serde_json::to_value(&r).unwrap();
            assert_eq!(json["precision"], p);
        }
    }
}

#[test]
fn bad_precisions_and_sizes_are_clear_errors() {
    let mut o = tiny(Device::Cpu);
    o.precision = Precision::Tf32;
    let e = bench_train(&o).unwrap_err().to_string();
    assert!(e.contains("tf32") && e.contains("Cuda"), "{e}");
    let e = "fp8".parse::<Precision>().unwrap_err().to_string();
    assert!(e.contains("fp8") && e.contains("amp_bf16"), "{e}");
    let mut o = tiny(Device::Cpu);
    o.batch = 1;
    assert!(bench_train(&o)
        .unwrap_err()
        .to_string()
        .contains("--batch 1"));
}

#[test]
fn step_time_percentiles() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(common::fresh_seed());
    for _ in 0..50 {
        let n = rng.random_range(1..40);
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(0.1..100.0)).collect();
        let t = StepTimes::of(&v);
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        assert_eq!((t.min_ms, t.max_ms), (s[0], s[n - 1]));
        // numpy's linear interpolation: the median of an odd count is its middle element, of an
        // even count the mean of the two middle ones
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        assert!((t.median_ms - median).abs() <= 1e-9 * median, "{v:?}");
        // p10: at least a tenth of the values lie at or below it, at least 90% at or above it
        let below = s.iter().filter(|&&x| x <= t.p10_ms).count() as f64;
        let above = s.iter().filter(|&&x| x >= t.p10_ms).count() as f64;
        assert!(below >= 0.1 * (n - 1) as f64 && above >= 0.9 * (n - 1) as f64);
        assert!(t.p10_ms <= t.median_ms && t.median_ms <= t.p90_ms);
    }
}

#[test]
fn datasheet_peaks_by_driver_name() {
    let h100 = peak_tflops("NVIDIA H100 80GB HBM3", Precision::AmpBf16).unwrap();
    assert_eq!(h100.1, "H100 SXM");
    assert_eq!(
        peak_tflops("NVIDIA H100 PCIe", Precision::Fp32).unwrap().1,
        "H100 PCIe"
    );
    assert_eq!(
        peak_tflops("NVIDIA H200", Precision::Tf32).unwrap().1,
        "H200 SXM"
    );
    assert_eq!(
        peak_tflops("NVIDIA A100-SXM4-80GB", Precision::Amp)
            .unwrap()
            .1,
        "A100"
    );
    assert_eq!(
        peak_tflops("NVIDIA L40S", Precision::PureBf16).unwrap().1,
        "L40S"
    );
    assert!(peak_tflops("NVIDIA GeForce RTX 4090", Precision::Fp32).is_none());
    // The tensor-core rates exceed the FMA rate on every card, and 16-bit doubles TF32.
    for card in ["H200", "H100 PCIe", "H100", "A100", "L40S"] {
        let f = |p| peak_tflops(card, p).unwrap().0;
        assert!(f(Precision::Fp32) < f(Precision::Tf32));
        let ratio = f(Precision::AmpBf16) / f(Precision::Tf32);
        assert!((1.97..2.01).contains(&ratio), "{card}: {ratio}");
    }
}

#[test]
fn kernels_bench_covers_every_family_on_cpu_and_emu() {
    use clipcu::bench::{bench_kernels, card_roofline};
    for device in [Device::Cpu, Device::Emu] {
        let mut streamed = 0;
        let reports = bench_kernels(device, true, 1, |_| streamed += 1).unwrap();
        assert_eq!(
            streamed,
            reports.len(),
            "every report is streamed as it is measured"
        );
        for family in [
            "layer_norm fwd",
            "layer_norm bwd",
            "residual add",
            "gelu fwd",
            "gelu bwd",
            "attention fwd",
            "attention fwd causal",
            "embedding fwd",
            "embedding bwd",
            "batch_norm2d",
            "contrastive",
            "adamw",
        ] {
            assert!(
                reports.iter().any(|r| r.name.contains(family)),
                "{device}: no `{family}` kernel"
            );
        }
        for r in &reports {
            assert!(r.time_us > 0.0 && r.bytes > 0.0, "{r:?}");
            let gbs = r.bytes / (r.time_us * 1e-6) / 1e9;
            assert!((r.gb_per_s - gbs).abs() <= 1e-9 * gbs, "{r:?}");
            assert!(
                r.roofline_fraction.is_none(),
                "no roofline off a card: {r:?}"
            );
        }
    }
    let (bw, fp32, half, row) = card_roofline("NVIDIA H100 80GB HBM3").unwrap();
    assert_eq!(row, "H100 SXM");
    assert!(bw > 3.0 && fp32 > 60.0 && half > 900.0);
    assert_eq!(card_roofline("NVIDIA H100 PCIe").unwrap().3, "H100 PCIe");
    assert_eq!(card_roofline("NVIDIA H200").unwrap().3, "H200 SXM");
    assert!(card_roofline("Tesla T4").is_none());
}
