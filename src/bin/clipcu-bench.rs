//! clipcu-bench: throughput of the workloads in `clipcu::bench` on a chosen device.
//!
//!     clipcu-bench                 # all workloads on the best device
//!     clipcu-bench gemm --iters 20 --device cpu
//!
//! Prints one line per workload: median and best time per iteration and GFLOP/s (from the median).

use clap::{Parser, ValueEnum};
use clipcu::bench::{
    BlockCase, ContrastiveCase, EncodeImageCase, EncodeTextCase, GemmCase, TrainStepCase,
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
    /// One training step of `--config` at `--batch` (not part of `all`)
    Train,
    /// The contrastive loss forward+backward, fused vs composed, at `--batch` (default 4096 and
    /// 16384) and D = 512 (not part of `all`)
    Contrastive,
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
    /// Model config of the train workload (default: ViT-B-32 on cuda, tiny-vit elsewhere).
    #[arg(long)]
    config: Option<String>,
    /// Pairs per step of the train workload (default: 128 on cuda, 16 elsewhere).
    #[arg(long)]
    batch: Option<usize>,
    /// TF32 tensor-core math for f32 GEMMs on cuda.
    #[arg(long)]
    tf32: bool,
}

/// (median, best) seconds of `iters` runs of `f` on `device` after one warm-up run; the first
/// error ends it. Each timed run includes waiting for the device to finish the work it queued
/// (on Cuda a launch returns at once: a host timer alone would measure only the enqueue).
fn time<T>(
    device: Device,
    iters: usize,
    mut f: impl FnMut() -> clipcu::Result<T>,
) -> clipcu::Result<(f64, f64)> {
    f()?;
    device.synchronize()?;
    let mut t = (0..iters.max(1))
        .map(|_| {
            let s = Instant::now();
            f()?;
            device.synchronize()?;
            Ok(s.elapsed().as_secs_f64())
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
    println!(
        "clipcu-bench on {device} ({} CPU threads)",
        Device::cpu_threads()
    );
    println!(
        "{:<34} {:>12} {:>12} {:>17}",
        "workload", "median", "best", "throughput"
    );
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
            let on_gpu = matches!(device, Device::Cuda(_));
            let name = args
                .config
                .clone()
                .unwrap_or_else(|| if on_gpu { "ViT-B-32" } else { "tiny-vit" }.into());
            let batch = args.batch.unwrap_or(if on_gpu { 128 } else { 16 });
            if let Device::Cuda(i) = device {
                clipcu::device::cuda::CudaBackend::get(i)?.set_tf32(args.tf32);
            }
            let mut c = TrainStepCase::new(&name, batch, device)?;
            let (med, best) = time(device, args.iters, || c.run())?;
            println!(
                "{:<34} {:>9.2} ms {:>9.2} ms {:>9.1} pairs/s",
                format!(
                    "train {name} b{batch}{}",
                    if args.tf32 { " tf32" } else { "" }
                ),
                med * 1e3,
                best * 1e3,
                batch as f64 / med
            );
        }
        if args.workload == Workload::Contrastive {
            let sizes = match args.batch {
                Some(n) => vec![n],
                None => vec![4096, 16384],
            };
            for n in sizes {
                for fused in [true, false] {
                    let c = ContrastiveCase::new(n, 512, fused, device)?;
                    let saved = c.run()?;
                    let t = time(device, args.iters, || c.run())?;
                    let name = format!(
                        "contrastive {} n{n} d512",
                        if fused { "fused" } else { "composed" }
                    );
                    report(&name, c.flops(), t);
                    println!(
                        "{:<34} {:>9.1} MiB saved for backward",
                        "",
                        saved as f64 / (1 << 20) as f64
                    );
                }
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
