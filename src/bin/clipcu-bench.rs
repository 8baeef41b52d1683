//! clipcu-bench: throughput of the workloads in `clipcu::bench` on a chosen device.
//!
//!     clipcu-bench                 # all workloads on the best device
//!     clipcu-bench gemm --iters 20 --device cpu
//!     clipcu-bench train --config ViT-B-32 --batch 256 --device cuda --steps 50 --warmup 10 --json
//!
//! Prints one line per workload: median and best time per iteration and GFLOP/s (from the median).

use clap::{Parser, ValueEnum};
use clipcu::bench::{
    bench_kernels, bench_train, AttentionCase, BlockCase, ContrastiveCase, EncodeImageCase,
    EncodeTextCase, GemmCase, TrainBenchOptions,
};
use clipcu::Device;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    All,
    Gemm,
    Block,
    /// ViT-B/32 encode_image, batch 16, fp32
    VitB32,
    /// RN50 encode_image, batch 16, fp32
    Rn50,
    /// ViT-B-32 text tower on 16 captions, with and without EOT truncation
    Text,
    /// The trainer's step of `--config` at `--batch`: pairs/s, step time percentiles, MFU,
    /// peak memory (not part of `all`)
    Train,
    /// The contrastive loss forward+backward, fused vs composed, at `--batch` (default 4096 and
    /// 16384) and D = 512 (not part of `all`)
    Contrastive,
    /// Fused self-attention forward+backward from the packed projection (emu, cuda) at CLIP's
    /// shapes — ViT-B/32 B=256 H=12 T=50, the text tower B=256 H=8 T=77 causal, ViT-B/16 B=64
    /// H=12 T=197 — in `--dtype` (default bf16; `--quick`: B=2; not part of `all`)
    Attention,
    /// Every custom kernel family at CLIP's shapes: time, GB/s or TFLOP/s, fraction of the
    /// card's roofline (`--quick`: tiny shapes, the default on emu; not part of `all`)
    Kernels,
}

#[derive(Parser)]
#[command(
    name = "clipcu-bench",
    about = "Throughput of clipcu kernels and training steps"
)]
struct Args {
    /// Which workload to run.
    #[arg(value_enum, default_value = "all")]
    workload: Workload,
    /// Device: auto, cpu, cuda, cuda:N, emu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Timed iterations per workload (after one warm-up).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// train: model config (default ViT-B-32; tiny-vit on emu).
    #[arg(long)]
    config: Option<String>,
    /// train: pairs per step (default 256 on cuda, 16 on cpu, 8 on emu); contrastive: N.
    #[arg(long)]
    batch: Option<usize>,
    /// train: open_clip's precision names: fp32, tf32 (cuda), amp, amp_bf16, pure_fp16,
    /// pure_bf16 (`clipcu train --help`; the 16-bit policies' numerics on every device, their
    /// activations still stored in f32 tensors).
    #[arg(long, default_value = "fp32")]
    precision: clipcu::bench::Precision,
    /// train: timed steps (default 50 on cuda, 10 on cpu, 3 on emu).
    #[arg(long)]
    steps: Option<usize>,
    /// train: untimed steps first (default 10 on cuda, 2 on cpu, 1 on emu).
    #[arg(long)]
    warmup: Option<usize>,
    /// train: the peak TFLOP/s an MFU is taken against (default: the card's datasheet figure
    /// for the precision; none on a CPU).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// train, kernels: print JSON (one object; one line per kernel) instead of the table.
    #[arg(long)]
    json: bool,
    /// kernels: tiny shapes instead of CLIP's (always on emu, which runs threads one by one).
    #[arg(long)]
    quick: bool,
    /// contrastive: the features' dtype, f32 (default), f16 or bf16 (16 bits: the fused op's
    /// tensor-core tiles; the composed loss is then skipped); attention: the activations' dtype
    /// (default bf16).
    #[arg(long)]
    dtype: Option<String>,
    /// contrastive: only the fused loss (at batches whose N×N logits would not fit).
    #[arg(long)]
    fused_only: bool,
}

/// (median, best) seconds of `iters` runs of `f` on `device` after one warm-up run; the first
/// error ends it. On Cuda each run is timed by CUDA events around it on the backend's stream
/// (the GPU's clock: a launch returns at once, so a host timer would measure the enqueue); on
/// Cpu and Emu, which run synchronously, by the host clock.
fn time<T>(
    device: Device,
    iters: usize,
    mut f: impl FnMut() -> clipcu::Result<T>,
) -> clipcu::Result<(f64, f64)> {
    f()?;
    device.synchronize()?;
    let cuda = match device {
        Device::Cuda(i) => Some(clipcu::device::cuda::CudaBackend::get(i)?),
        _ => None,
    };
    let mut t = (0..iters.max(1))
        .map(|_| match &cuda {
            Some(b) => Ok(b.time_ms(&mut f)?.1 as f64 * 1e-3),
            None => {
                let s = Instant::now();
                f()?;
                device.synchronize()?;
                Ok(s.elapsed().as_secs_f64())
            }
        })
        .collect::<clipcu::Result<Vec<f64>>>()?;
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], t[0]))
}

fn report(name: &str, flops: f64, (median, best): (f64, f64)) {
    println!(
        "{name:<34} {:>9.2} ms {:>9.2} ms {:>9.1} GFLOP/s",
        median * 1e3,
        best * 1e3,
        flops / median / 1e9
    );
}

/// See Cargo.toml: reuse of large buffers across ops.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    clipcu::alloc::keep_freed_memory();
    clipcu::process::end_quietly_on_closed_stdout();
    let args = Args::parse();
    let device = match args.device.as_str() {
        "auto" => {
            let (d, why) = Device::auto();
            eprintln!("device: {why}");
            d
        }
        s => match s
            .parse::<Device>()
            .and_then(|d| d.ensure_available().map(|_| d))
        {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        },
    };
    let banner = format!(
        "clipcu-bench on {device} ({} CPU threads)",
        Device::cpu_threads()
    );
    if matches!(args.workload, Workload::Train | Workload::Kernels) {
        // The train and kernels reports is its own table (or JSON on stdout, which nothing else may share).
        eprintln!("{banner}");
    } else {
        println!("{banner}");
        println!(
            "{:<34} {:>12} {:>12} {:>17}",
            "workload", "median", "best", "throughput"
        );
    }
    let run = || -> clipcu::Result<()> {
        if matches!(args.workload, Workload::All | Workload::Gemm) {
            let c = GemmCase::new(4096, 768, 3072, device)?;
            let t = time(device, args.iters, || c.run())?;
            report("gemm f32 4096x768x3072", c.flops(), t);
        }
        if matches!(args.workload, Workload::All | Workload::Block) {
            let c = BlockCase::new(16, 50, 768, device)?;
            let t = time(device, args.iters, || c.run())?;
            report("block fwd+bwd w768 t50 b16", c.flops(), t);
        }
        for (w, name) in [(Workload::VitB32, "ViT-B-32"), (Workload::Rn50, "RN50")] {
            if args.workload == w || args.workload == Workload::All {
                let c = EncodeImageCase::new(name, 16, device)?;
                let (med, best) = time(device, args.iters, || c.run())?;
                println!(
                    "{:<34} {:>9.2} ms {:>9.2} ms {:>9.1} img/s",
                    format!("{name} encode_image b16"),
                    med * 1e3,
                    best * 1e3,
                    16.0 / med
                );
            }
        }
        if args.workload == Workload::Train {
            let d = TrainBenchOptions::defaults_for(device);
            let o = TrainBenchOptions {
                config: args.config.clone().unwrap_or(d.config),
                batch: args.batch.unwrap_or(d.batch),
                precision: args.precision,
                device,
                steps: args.steps.unwrap_or(d.steps),
                warmup: args.warmup.unwrap_or(d.warmup),
                peak_tflops: args.peak_tflops,
            };
            let report = bench_train(&o)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("a report serialises")
                );
            } else {
                println!("{report}");
            }
        }
        if args.workload == Workload::Kernels {
            let quick = args.quick || device == Device::Emu;
            if !args.json {
                println!(
                    "{:<28} {:<40} {:>13} {:>14}",
                    "kernel", "shape", "time", "rate"
                );
            }
            bench_kernels(device, quick, args.iters, |r| {
                if args.json {
                    println!("{}", serde_json::to_string(r).expect("a report serialises"));
                    return;
                }
                let rate = if r.flops > 0.0 {
                    format!("{:.2} TFLOP/s", r.tflops)
                } else {
                    format!("{:.1} GB/s", r.gb_per_s)
                };
                let roof = r
                    .roofline_fraction
                    .map(|f| format!("{:.0}% of roofline", 100.0 * f))
                    .unwrap_or_default();
                println!(
                    "{:<28} {:<40} {:>10.1} us {:>14} {roof}",
                    r.name, r.shape, r.time_us, rate
                );
            })?;
        }
        if args.workload == Workload::Contrastive {
            let sizes = match args.batch {
                Some(n) => vec![n],
                None => vec![4096, 16384],
            };
            let dtype =
                clipcu::model::convert::parse_dtype(args.dtype.as_deref().unwrap_or("f32"))?;
            let kinds: &[bool] = if args.fused_only || dtype != clipcu::DType::F32 {
                &[true]
            } else {
                &[true, false]
            };
            let mib = |b: f64| b / (1 << 20) as f64;
            for n in sizes {
                for &fused in kinds {
                    let c = ContrastiveCase::new(n, 512, fused, dtype, device)?;
                    // inputs and their gradients: what any loss must hold
                    let io = 4.0 * (n * 512 * dtype.size_in_bytes()) as f64;
                    let saved = c.run()?;
                    let t = time(device, args.iters, || c.run())?;
                    let name = format!(
                        "contrastive {} {dtype} n{n} d512",
                        if fused { "fused" } else { "composed" }
                    );
                    report(&name, c.flops(), t);
                    let peak = match device.memory_stats()? {
                        Some(s) => format!(
                            ", peak device memory {:.1} MiB: {:.1} MiB beyond inputs and gradients",
                            mib(s.peak_in_use_bytes as f64),
                            mib(s.peak_in_use_bytes as f64 - io)
                        ),
                        None => String::new(),
                    };
                    println!(
                        "{:<34} {:>9.1} MiB saved for backward{peak}",
                        "",
                        mib(saved as f64)
                    );
                }
            }
        }
        if args.workload == Workload::Attention {
            let dtype =
                clipcu::model::convert::parse_dtype(args.dtype.as_deref().unwrap_or("bf16"))?;
            let b = |n: usize| if args.quick { 2 } else { n };
            // (batch, tokens, heads, causal): ViT-B/32, the text tower, ViT-B/16
            for (batch, tokens, heads, causal) in [
                (b(256), 50, 12, false),
                (b(256), 77, 8, true),
                (b(64), 197, 12, false),
            ] {
                let c = AttentionCase::new(batch, tokens, heads, 64, causal, dtype, device)?;
                let t = time(device, args.iters, || c.run())?;
                let name = format!(
                    "attention {dtype} b{batch} h{heads} t{tokens}{}",
                    if causal { " causal" } else { "" }
                );
                report(&name, c.flops(), t);
            }
        }
        if matches!(args.workload, Workload::All | Workload::Text) {
            for truncate in [false, true] {
                let c = EncodeTextCase::new("ViT-B-32", truncate, device)?;
                let (med, best) = time(device, args.iters, || c.run())?;
                let name = if truncate {
                    "text b16 (truncated at EOT)"
                } else {
                    "text b16 (77 tokens)"
                };
                println!(
                    "{name:<34} {:>9.2} ms {:>9.2} ms {:>9.1} texts/s",
                    med * 1e3,
                    best * 1e3,
                    16.0 / med
                );
            }
        }
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
