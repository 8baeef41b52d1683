//! `clipcu convert`: weights from any name scheme clipcu reads to open_clip names, Hugging Face
//! `CLIPModel` names (+ `config.json`), or a clipcu file; `clipcu info --weights` lives in
//! `info.rs`.

use clipcu::model::convert::{self, ConfigSource, Format};
use clipcu::model::hf::config_json_beside;
use clipcu::model::ClipConfig;
use clipcu::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Input weights (safetensors: open_clip/OpenAI names, Hugging Face CLIPModel names, or a
    /// clipcu model file or checkpoint).
    pub input: PathBuf,
    /// Output naming: open_clip (plain safetensors for open_clip's load_state_dict), hf (Hugging
    /// Face CLIPModel names, with config.json written beside --out; ViT models only), or clipcu
    /// (open_clip names with the config in the metadata).
    #[arg(long, value_parser = ["open_clip", "hf", "clipcu"])]
    pub to: String,
    /// Output file (for hf, name it model.safetensors in its own folder, so that transformers'
    /// from_pretrained(folder) finds it beside config.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Output dtype: f32, f16 or bf16 (default: the input's, when all its tensors have one).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Model config (a shipped name or JSON file): needed when the input carries none (open_clip
    /// files; HF files without config.json beside them). Overrides the input's own.
    #[arg(long)]
    pub config: Option<String>,
    /// Replace --out (and config.json beside it, for hf) when it exists.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &ConvertArgs) -> Result<()> {
    let format: Format = a.to.parse()?;
    let dtype = a.dtype.as_deref().map(convert::parse_dtype).transpose()?;
    let config = a.config.as_deref().map(ClipConfig::load).transpose()?;
    let mut outputs = vec![a.out.clone()];
    if format == Format::HuggingFace {
        outputs.push(config_json_beside(&a.out));
    }
    // an HF input's config.json is an input too (its config is read from there)
    let mut inputs = vec![("the input", a.input.clone())];
    let input_json = config_json_beside(&a.input);
    if input_json.exists() {
        inputs.push(("the input's config.json", input_json));
    }
    for out in &outputs {
        crate::refuse_output_over_inputs("--out", out, &inputs)?;
        if out.exists() && !a.overwrite {
            return Err(Error::Msg(format!(
                "{} exists: give --overwrite to replace it, or another --out",
                out.display()
            )));
        }
    }
    if !a.input.exists() {
        return Err(Error::io(
            &a.input,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let (written, source, dtype) =
        convert::convert(&a.input, &a.out, format, dtype, config.as_ref())?;
    let from = match source {
        ConfigSource::Given => format!("--config {}", a.config.as_deref().unwrap_or("")),
        ConfigSource::Metadata => "the input's metadata".into(),
        ConfigSource::HfConfigJson(p) => p.display().to_string(),
    };
    let files: Vec<String> = written
        .files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    println!(
        "wrote {} tensors ({}, {}; config from {from}): {}",
        written.tensors,
        format,
        dtype.as_str(),
        files.join(", ")
    );
    Ok(())
}
