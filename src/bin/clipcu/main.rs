//! clipcu: the command-line face of the engine.
//!
//!     clipcu                      # the main job: `clipcu train` on the synthetic dataset
//!     clipcu train [--data D] ...  # train a CLIP from scratch, zero-shot eval on held-out data
//!     clipcu demo                 # train a small transformer for a few steps on the best device
//!     clipcu zeroshot --weights W --data FOLDER [--templates openai|simple|FILE]
//!     clipcu retrieval --weights W --data pairs.csv
//!     clipcu tokenize --json TEXT...
//!     clipcu embed --config ViT-B-32 [--weights W] [--image P]... [--text S]... --out E.safetensors
//!     clipcu info                 # devices and build facts
//!     clipcu info --weights W [--config NAME]   # what a weights file is: names, config, dtype, keys
//!     clipcu convert W --to open_clip|hf|clipcu --out OUT [--dtype f16] [--config NAME]
//!     clipcu kernels              # the CUDA kernels in this build: PTX modules, ptxas report

mod convert;
mod demo;
mod embed;
mod evaluate;
mod info;
mod train;

use clap::{Parser, Subcommand};
use clipcu::{Device, Result};

#[derive(Parser)]
#[command(
    name = "clipcu",
    version,
    about = "CLIP training and zero-shot transfer in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    image_limits: ImageLimitFlags,
}

/// Bounds on input images, checked against the size a file declares before it is decoded: an
/// image outside them is an error naming the file (`embed`, `zeroshot`, `retrieval`) or a
/// skipped and counted sample (`train`). See docs/reliability.md.
#[derive(clap::Args)]
struct ImageLimitFlags {
    /// Widest or tallest input image accepted, in pixels.
    #[arg(long, global = true, default_value_t = clipcu::data::ImageLimits::DEFAULT.max_width)]
    max_image_side: u32,
    /// Most pixels (width × height) of an input image accepted.
    #[arg(long, global = true, default_value_t = clipcu::data::ImageLimits::DEFAULT.max_pixels)]
    max_image_pixels: u64,
    /// Largest aspect ratio (long side : short side) of an input image accepted.
    #[arg(long, global = true, default_value_t = clipcu::data::ImageLimits::DEFAULT.max_aspect)]
    max_image_aspect: u32,
}

#[derive(Subcommand)]
enum Command {
    /// Train a CLIP from scratch (synthetic data by default) with zero-shot evaluation.
    Train(Box<train::TrainArgs>),
    /// Train a small causal transformer on a copy task: shows forward, backward, checkpointing.
    Demo(demo::DemoArgs),
    /// Zero-shot classification of an ImageFolder (top-1/top-5) with prompt ensembling.
    Zeroshot(evaluate::ZeroShotArgs),
    /// Retrieval recall@1/5/10 in both directions on a paired CSV.
    Retrieval(evaluate::RetrievalArgs),
    /// Tokenize texts with CLIP's tokenizer.
    Tokenize(embed::TokenizeArgs),
    /// Embed images and texts with a CLIP model; writes image_embeds and text_embeds.
    Embed(embed::EmbedArgs),
    /// Print the devices this build can use, or (--weights FILE) what a weights file is.
    Info(info::InfoArgs),
    /// Convert weights between open_clip, Hugging Face CLIPModel and clipcu files.
    Convert(convert::ConvertArgs),
    /// List the CUDA kernels of this build (PTX modules, emulator) and print the ptxas report.
    Kernels,
}

/// `auto` picks the best device and says why; anything else must be available.
pub fn pick_device(s: &str) -> Result<Device> {
    if s == "auto" {
        let (d, why) = Device::auto();
        eprintln!("device: {why}");
        return Ok(d);
    }
    let d: Device = s.parse()?;
    d.ensure_available()?;
    eprintln!("device: {d}");
    Ok(d)
}

/// Refuses an output path that names one of the command's inputs (the same file, however
/// spelled: symbolic and hard links too): writing it would replace that input, e.g.
/// `embed --out W` over the weights `W`.
pub fn refuse_output_over_inputs<P: AsRef<std::path::Path>>(
    out_flag: &str,
    out: &std::path::Path,
    inputs: &[(&str, P)],
) -> Result<()> {
    if !out.exists() {
        return Ok(()); // (a file that does not exist yet is no input; saves a stat per input)
    }
    for (flag, input) in inputs {
        if clipcu::io::same_file(out, input) {
            return Err(clipcu::Error::Msg(format!(
                "{out_flag} {} is the same file as {flag} {}: writing it would replace an input \
                 of this command; give another {out_flag}",
                out.display(),
                input.as_ref().display()
            )));
        }
    }
    Ok(())
}

/// See Cargo.toml: reuse of large buffers across ops.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    clipcu::alloc::keep_freed_memory();
    clipcu::process::end_quietly_on_closed_stdout();
    let cli = Cli::parse();
    let l = &cli.image_limits;
    clipcu::data::ImageLimits::set_process_default(clipcu::data::ImageLimits {
        max_width: l.max_image_side,
        max_height: l.max_image_side,
        max_pixels: l.max_image_pixels,
        max_aspect: l.max_image_aspect,
    });
    // No subcommand: the main job, `clipcu train` with its defaults (synthetic data, zero-shot).
    let command = cli.command.unwrap_or_else(|| {
        Cli::parse_from(["clipcu", "train"])
            .command
            .expect("train parses")
    });
    let result = match command {
        Command::Train(a) => train::run(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Zeroshot(a) => evaluate::zeroshot(&a),
        Command::Retrieval(a) => evaluate::retrieval(&a),
        Command::Tokenize(a) => embed::tokenize(&a),
        Command::Embed(a) => embed::embed(&a),
        Command::Info(a) => info::run(&a),
        Command::Convert(a) => convert::run(&a),
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
