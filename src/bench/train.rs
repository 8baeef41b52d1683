//! `clipcu-bench train`: the trainer's real step (forward, loss, backward, clipping, AdamW) timed
//! over `steps` steps after `warmup` untimed ones, with the numbers a user compares engines by:
//! pairs/s, step time median/p10/p90, MFU, peak memory and bytes per parameter.
//!
//! - **Times**: on Cuda, CUDA events around each step (the GPU's own clock between two points of
//!   the stream; the step reads its loss back, so the host waits inside it anyway); on Cpu and
//!   Emu, which run synchronously, a host clock around each step.
//! - **MFU** = training FLOPs per step ([`ForwardFlops::train_step`]: 3 × forward, counted as
//!   PyTorch's FlopCounterMode counts open_clip's modules) / median step time / the card's peak
//!   for the precision (dense tensor-core figures from NVIDIA's datasheets, [`peak_tflops`]), or
//!   `--peak-tflops`. Without a known peak (a CPU) no MFU is printed, only achieved TFLOP/s.
//! - **Memory**: Cuda and Emu, the caching allocator's peak bytes in use (what the step needed;
//!   the pool may hold more); Cpu, the process's peak resident set (VmHWM), which also counts the
//!   binary and the allocator's retained pages. Bytes per parameter = that peak / parameters.

use super::TrainStepCase;
use crate::model::ClipConfig;
use crate::{Device, Error, Result};
use serde::Serialize;
use std::time::Instant;

pub use crate::train::Precision;

/// The math a precision's GEMMs run in, which picks the peak an MFU is taken against.
fn math(p: Precision) -> Math {
    match p {
        Precision::Fp32 => Math::Fp32,
        Precision::Tf32 => Math::Tf32,
        _ => Math::Half,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Math {
    Fp32,
    Tf32,
    Half,
}

/// One card's datasheet figures (NVIDIA's; the "with sparsity" figures halved to dense).
pub struct Card {
    /// The row's name, as reports print it.
    pub row: &'static str,
    /// HBM bandwidth, TB/s.
    pub hbm_tb_s: f64,
    /// Dense TFLOP/s: fp32 FMA, tf32 tensor core, bf16/fp16 tensor core.
    pub fp32: f64,
    pub tf32: f64,
    pub half: f64,
}

/// The cards whose peaks are known, by the name the driver reports (`NVIDIA H100 80GB HBM3`,
/// `NVIDIA H100 PCIe`, `NVIDIA A100-SXM4-80GB`, ...); the first row that matches wins.
pub fn card(name: &str) -> Option<&'static Card> {
    const fn c(row: &'static str, hbm_tb_s: f64, fp32: f64, tf32: f64, half: f64) -> Card {
        Card {
            row,
            hbm_tb_s,
            fp32,
            tf32,
            half,
        }
    }
    // (substring of the name, needs "PCIe" in it, figures)
    const ROWS: &[(&str, bool, Card)] = &[
        ("H200", false, c("H200 SXM", 4.8, 67.0, 494.7, 989.4)),
        ("H100", true, c("H100 PCIe", 2.0, 51.0, 378.0, 756.0)),
        ("H100", false, c("H100 SXM", 3.35, 67.0, 494.7, 989.4)),
        ("A100", false, c("A100", 2.04, 19.5, 156.0, 312.0)),
        ("L40S", false, c("L40S", 0.864, 91.6, 183.0, 362.1)),
    ];
    let pcie = name.to_ascii_uppercase().contains("PCIE");
    ROWS.iter()
        .find(|(n, needs_pcie, _)| name.contains(n) && (!needs_pcie || pcie))
        .map(|(_, _, c)| c)
}

/// Dense peak TFLOP/s of a card for a precision ([`card`]); the second value names the row used.
pub fn peak_tflops(card_name: &str, precision: Precision) -> Option<(f64, &'static str)> {
    let c = card(card_name)?;
    let peak = match math(precision) {
        Math::Fp32 => c.fp32,
        Math::Tf32 => c.tf32,
        Math::Half => c.half,
    };
    Some((peak, c.row))
}

/// What to run.
#[derive(Clone, Debug)]
pub struct TrainBenchOptions {
    pub config: String,
    pub batch: usize,
    pub precision: Precision,
    pub device: Device,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first (allocator warm-up, cuBLASLt heuristics, page faults).
    pub warmup: usize,
    /// Overrides the card's peak for the MFU.
    pub peak_tflops: Option<f64>,
}

impl TrainBenchOptions {
    /// Sensible sizes per device: ViT-B-32 at batch 256 on Cuda (50 steps after 10); ViT-B-32 at
    /// batch 16 on the CPU (10 after 2); the tiny ViT at batch 8 on the emulator (3 after 1).
    pub fn defaults_for(device: Device) -> TrainBenchOptions {
        let (config, batch, steps, warmup) = match device {
            Device::Cuda(_) => ("ViT-B-32", 256, 50, 10),
            Device::Cpu => ("ViT-B-32", 16, 10, 2),
            Device::Emu => ("tiny-vit", 8, 3, 1),
        };
        TrainBenchOptions {
            config: config.into(),
            batch,
            precision: Precision::Fp32,
            device,
            steps,
            warmup,
            peak_tflops: None,
        }
    }
}

/// Step times in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct StepTimes {
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl StepTimes {
    /// Percentiles by linear interpolation between order statistics (numpy's default).
    pub fn of(ms: &[f64]) -> StepTimes {
        let mut v = ms.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if v.is_empty() {
                return f64::NAN;
            }
            let x = q * (v.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
        };
        StepTimes {
            median_ms: at(0.5),
            p10_ms: at(0.1),
            p90_ms: at(0.9),
            min_ms: at(0.0),
            max_ms: at(1.0),
        }
    }
}

/// What a run measured (`--json` prints it as is).
#[derive(Clone, Debug, Serialize)]
pub struct TrainBenchReport {
    pub engine: &'static str,
    pub config: String,
    pub batch: usize,
    pub precision: Precision,
    pub device: String,
    pub steps: usize,
    pub warmup: usize,
    pub step: StepTimes,
    pub pairs_per_s: f64,
    pub flops_per_step: f64,
    pub achieved_tflops: f64,
    pub peak_tflops: Option<f64>,
    /// Where the peak came from: a datasheet row, `--peak-tflops`, or nothing.
    pub peak_source: Option<String>,
    pub mfu: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    /// What `peak_memory_bytes` counts (see the module doc).
    pub memory_kind: &'static str,
    pub parameters: u64,
    pub bytes_per_parameter: Option<f64>,
    /// Weights + gradients + optimizer state as stored under the precision, per trainable
    /// parameter (fp32/amp ≈ 16, pure 16-bit with f16 Adam moments ≈ 10: 16-bit weights, f32
    /// gradient buffers, 4 bytes of moments and 8 of scales per 256).
    pub state_bytes_per_parameter: f64,
    /// The last timed step's loss: finite, or the numbers mean nothing.
    pub last_loss: f32,
}

/// The process's peak resident set in bytes (Linux `VmHWM`), if the system says.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs the benchmark.
pub fn bench_train(o: &TrainBenchOptions) -> Result<TrainBenchReport> {
    if o.batch < 2 {
        return Err(Error::Msg(format!(
            "--batch {}: a contrastive step needs at least 2 pairs",
            o.batch
        )));
    }
    if o.steps == 0 {
        return Err(Error::Msg("--steps must be at least 1".into()));
    }
    // (tf32 off a Cuda device is refused by the trainer, naming the option)
    let cfg = ClipConfig::load(&o.config)?;
    let mut case = TrainStepCase::new(&o.config, o.batch, o.device, o.precision)?;
    let cuda = match o.device {
        Device::Cuda(i) => Some(crate::device::cuda::CudaBackend::get(i)?),
        _ => None,
    };
    let step = |case: &mut TrainStepCase| -> Result<(f64, f32)> {
        match &cuda {
            Some(b) => {
                let (log, ms) = b.time_ms(|| case.run())?;
                Ok((ms as f64, log.loss))
            }
            None => {
                let t = Instant::now();
                let log = case.run()?;
                Ok((t.elapsed().as_secs_f64() * 1e3, log.loss))
            }
        }
    };
    for _ in 0..o.warmup {
        step(&mut case)?;
    }
    let mut ms = Vec::with_capacity(o.steps);
    let mut last_loss = f32::NAN;
    for _ in 0..o.steps {
        let (t, loss) = step(&mut case)?;
        ms.push(t);
        last_loss = loss;
    }
    if !last_loss.is_finite() {
        return Err(Error::Msg(format!(
            "the benchmark's training diverged (loss {last_loss}): its numbers would mean nothing"
        )));
    }
    let times = StepTimes::of(&ms);
    let flops = cfg.forward_flops().train_step(o.batch) as f64;
    let achieved = flops / (times.median_ms * 1e-3) / 1e12;
    let card = cuda.as_ref().map(|b| b.info().name.clone());
    let (peak, source) = match (o.peak_tflops, &card) {
        (Some(p), _) => (Some(p), Some("--peak-tflops".to_string())),
        (None, Some(name)) => match peak_tflops(name, o.precision) {
            Some((p, row)) => (
                Some(p),
                Some(format!("{row} {} datasheet (dense)", o.precision)),
            ),
            None => (None, None),
        },
        (None, None) => (None, None),
    };
    let (peak_memory, memory_kind) = match o.device.memory_stats()? {
        Some(s) => (Some(s.peak_in_use_bytes as u64), "allocator peak in use"),
        None => (peak_rss_bytes(), "process peak resident set"),
    };
    // as PyTorch's `model.parameters()` counts them (BatchNorm running statistics are buffers),
    // so that bytes per parameter compares with tools/bench_torch.py's
    let parameters = crate::model::convert::parameter_count(&cfg) as u64;
    let state_bytes_per_parameter = case.state_bytes_per_parameter()?;
    Ok(TrainBenchReport {
        engine: "clipcu",
        config: o.config.clone(),
        batch: o.batch,
        precision: o.precision,
        device: match &card {
            Some(name) => format!("{} ({name})", o.device),
            None => o.device.to_string(),
        },
        steps: o.steps,
        warmup: o.warmup,
        pairs_per_s: o.batch as f64 / (times.median_ms * 1e-3),
        step: times,
        flops_per_step: flops,
        achieved_tflops: achieved,
        peak_tflops: peak,
        peak_source: source,
        mfu: peak.map(|p| achieved / p),
        peak_memory_bytes: peak_memory,
        memory_kind,
        parameters,
        bytes_per_parameter: peak_memory.map(|b| b as f64 / parameters as f64),
        state_bytes_per_parameter,
        last_loss,
    })
}

impl std::fmt::Display for TrainBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.step;
        writeln!(
            f,
            "train {} batch {} {} on {}: {} timed steps after {} warm-up",
            self.config, self.batch, self.precision, self.device, self.steps, self.warmup
        )?;
        writeln!(
            f,
            "  {:.1} pairs/s   step median {:.2} ms (p10 {:.2}, p90 {:.2})",
            self.pairs_per_s, s.median_ms, s.p10_ms, s.p90_ms
        )?;
        write!(
            f,
            "  {:.2} TFLOP/s achieved ({:.1} GFLOP a step)",
            self.achieved_tflops,
            self.flops_per_step / 1e9
        )?;
        match (self.mfu, &self.peak_source) {
            (Some(m), Some(src)) => writeln!(f, "   MFU {:.1}% of {src}", 100.0 * m)?,
            _ => writeln!(f, "   MFU: no peak known for this device (--peak-tflops)")?,
        }
        match (self.peak_memory_bytes, self.bytes_per_parameter) {
            (Some(b), Some(per)) => write!(
                f,
                "  peak memory {:.1} MiB ({}), {:.1} bytes per parameter ({:.2} M parameters)",
                b as f64 / (1u64 << 20) as f64,
                self.memory_kind,
                per,
                self.parameters as f64 / 1e6
            ),
            _ => write!(f, "  peak memory: not known on this system"),
        }?;
        write!(
            f,
            "\n  weights + gradients + AdamW state: {:.2} bytes per parameter",
            self.state_bytes_per_parameter
        )
    }
}
