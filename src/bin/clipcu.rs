//! clipcu: the command-line face of the engine.
//!
//!     clipcu            # the main job (for now: `demo`)
//!     clipcu demo       # train a small transformer for a few steps on the best device
//!     clipcu info       # devices and build facts
//!     clipcu kernels    # the CUDA kernels in this build: PTX modules, ptxas report, emulator

use clap::{Parser, Subcommand};
use clipcu::nn::{Activation, Module, Transformer};
use clipcu::ops::{binary, unary};
use clipcu::{Device, Graph, Param, Result, Tensor};
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "clipcu",
    version,
    about = "CLIP training and zero-shot transfer in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a small causal transformer on a copy task: shows forward, backward, checkpointing.
    Demo {
        /// Device: auto, cpu, cuda, cuda:N, emu.
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        #[arg(long, default_value_t = 4)]
        layers: usize,
        #[arg(long, default_value_t = 128)]
        width: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Recompute each block in backward instead of holding its activations.
        #[arg(long)]
        checkpointing: bool,
    },
    /// Print the devices this build can use.
    Info,
    /// List the CUDA kernels of this build (PTX modules, emulator) and print the ptxas report.
    Kernels,
}

fn pick_device(s: &str) -> Result<Device> {
    if s == "auto" {
        let (d, why) = Device::auto();
        println!("device: {why}");
        return Ok(d);
    }
    let d: Device = s.parse()?;
    d.ensure_available()?;
    println!("device: {d}");
    Ok(d)
}

fn demo(
    device: &str,
    steps: usize,
    layers: usize,
    width: usize,
    seed: u64,
    checkpointing: bool,
) -> Result<()> {
    let device = pick_device(device)?;
    let (vocab, batch, tokens) = (64usize, 16usize, 24usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let embed = Param::new(
        "token_embedding.weight",
        Tensor::randn_with([vocab, width], 0.02, &mut rng).to_device(device)?,
    );
    let pos = Param::new(
        "positional_embedding",
        Tensor::randn_with([tokens, width], 0.01, &mut rng).to_device(device)?,
    );
    let mut model = Transformer::new(
        "transformer",
        width,
        layers,
        (width / 64).max(1),
        Activation::Gelu,
        &mut rng,
    );
    model.checkpointing = checkpointing;
    let ln_w = Param::new("ln_final.weight", Tensor::ones([width]));
    let ln_b = Param::new("ln_final.bias", Tensor::zeros([width]));
    let mut params = model.parameters();
    params.extend([embed.clone(), pos.clone(), ln_w.clone(), ln_b.clone()]);
    let n_params: usize = params.iter().map(|p| p.value().numel()).sum();
    println!(
        "model: {layers}-layer causal transformer, width {width}, {} heads, {n_params} parameters; task: \
         predict the previous token (copy through causal attention), vocab {vocab}, batch {batch}×{tokens}",
        (width / 64).max(1)
    );
    let lr = 0.5f32;
    let start = Instant::now();
    for step in 0..steps {
        let ids: Vec<u32> = (0..batch * tokens)
            .map(|_| rng.random_range(0..vocab as u32))
            .collect();
        // target at position t is the token at t−1 (position 0 predicts itself)
        let targets: Vec<u32> = (0..batch * tokens)
            .map(|i| if i % tokens == 0 { ids[i] } else { ids[i - 1] })
            .collect();
        let g = Graph::new();
        let e = g.param(&embed);
        let x = g.add(&g.embedding(&e, &ids, &[batch, tokens])?, &g.param(&pos))?;
        let x = model.forward(&g, &x, true)?;
        let x = g.layer_norm(&x, &g.param(&ln_w), &g.param(&ln_b), 1e-5)?;
        let logits = g.matmul(&g.reshape(&x, [batch * tokens, width])?, &e, false, true)?;
        let loss = g.cross_entropy(&logits, &targets)?;
        let held = g.saved_bytes();
        g.backward(&loss)?;
        for p in &params {
            if let Some(grad) = p.grad() {
                p.set_value(binary::add(&p.value(), &unary::scale(&grad, -lr)?)?)?;
                p.zero_grad();
            }
        }
        if step % 5 == 0 || step + 1 == steps {
            println!(
                "step {step:>4}  loss {:.4}  activations held for backward {:.1} MiB",
                loss.tensor().item()?,
                held as f64 / (1 << 20) as f64
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{steps} steps in {secs:.2} s ({:.0} tokens/s forward+backward) on {device}; chance loss is {:.3}",
        (steps * batch * tokens) as f64 / secs,
        (vocab as f64).ln()
    );
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo {
        device: "auto".into(),
        steps: 30,
        layers: 4,
        width: 128,
        seed: 0,
        checkpointing: false,
    }) {
        Command::Demo {
            device,
            steps,
            layers,
            width,
            seed,
            checkpointing,
        } => demo(&device, steps, layers, width, seed, checkpointing),
        Command::Info => {
            println!(
                "clipcu {} — CPU threads: {}",
                env!("CARGO_PKG_VERSION"),
                Device::cpu_threads()
            );
            for d in [Device::Cpu, Device::Cuda(0), Device::Emu] {
                match d.ensure_available() {
                    Ok(()) => println!("{d}: available"),
                    Err(e) => println!("{d}: {e}"),
                }
            }
            match clipcu::kernels::missing_reason() {
                None => println!(
                    "kernels: PTX for {} ({} modules)",
                    clipcu::kernels::PTX_ARCH,
                    clipcu::kernels::MODULES.len()
                ),
                Some(why) => println!("kernels: {why}"),
            }
            Ok(())
        }
        Command::Kernels => {
            use clipcu::kernels;
            match kernels::NVCC_VERSION {
                Some(v) => println!("PTX for {} built by {v}:", kernels::PTX_ARCH),
                None => println!("{}", kernels::missing_reason().unwrap_or("")),
            }
            for m in kernels::MODULES {
                println!(
                    "  {:<16} {:>7} bytes  {}",
                    m.name,
                    m.ptx.len(),
                    m.kernels.join(" ")
                );
            }
            let emu = clipcu::device::emu::kernels();
            println!(
                "\nemulator: {} kernels (incl. emutest_* self-tests)",
                emu.len()
            );
            println!("\n{}", kernels::PTXAS_REPORT);
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
