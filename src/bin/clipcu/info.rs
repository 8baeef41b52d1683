//! `clipcu info`: the devices of this build, or, with `--weights FILE`, what a weights file is
//! (naming, implied config, dtypes, parameter count, keys that do not fit).

use clipcu::model::inspect::inspect;
use clipcu::model::ClipConfig;
use clipcu::{Device, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// A weights file (safetensors) to describe instead of the devices.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Check the file against this config (a shipped name or JSON file) instead of the one it
    /// implies.
    #[arg(long, requires = "weights")]
    pub config: Option<String>,
}

pub fn run(a: &InfoArgs) -> Result<()> {
    let Some(w) = &a.weights else {
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
        match clipcu::dist::nccl::probe() {
            Ok(v) => println!(
                "nccl: {} (multi-GPU collectives)",
                clipcu::dist::nccl::version_string(v)
            ),
            Err(e) => println!("nccl: {e}"),
        }
        return Ok(());
    };
    let config = match &a.config {
        Some(name) => Some((name.as_str(), ClipConfig::load(name)?)),
        None => None,
    };
    print!("{}", inspect(w, config)?);
    Ok(())
}
