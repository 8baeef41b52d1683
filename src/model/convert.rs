//! Weights out of clipcu: a model written under open_clip names (what `open_clip`'s
//! `load_state_dict` takes), under Hugging Face `CLIPModel` names with a transformers
//! `config.json` beside it (ViT models only: `CLIPModel` has no ModifiedResNet form), or as a
//! clipcu file (the config in the metadata, as [`save_clip`](super::weights::save_clip) writes).
//!
//! Anything `weights.rs` loads can be converted: the input is loaded into a [`Clip`] (so it is
//! checked — every key, shape and value — exactly as training or evaluation would check it) and
//! the model's tensors are written. Only parameters and buffers are written: the optimizer state
//! of a training checkpoint (`optim.*`) and the input's other metadata are not part of a model.
//!
//! [`expected_tensors`] lists the names and shapes a config's model has without allocating it
//! (the checks of `clipcu info` and parameter counts of models too large to build in a test).

use super::clip::Clip;
use super::config::{ClipConfig, VisionLayers};
use super::hf;
use super::inspect;
use super::weights::{config_in, load_into, ACTIVATION_KEY, CONFIG_KEY};
use crate::io::safetensors::save;
use crate::{DType, Error, Result, Tensor};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One tensor of a model: its name (open_clip's, unless said otherwise), shape, and whether it is
/// a buffer (BatchNorm running statistics: saved with the model, not a trainable parameter, not
/// counted by PyTorch's `model.parameters()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub buffer: bool,
}

impl TensorSpec {
    fn new(name: impl Into<String>, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            buffer: false,
        }
    }

    pub fn numel(&self) -> u128 {
        self.shape.iter().map(|&d| d as u128).product()
    }
}

fn push_block(out: &mut Vec<TensorSpec>, prefix: &str, w: usize, mlp_ratio: f64) {
    let m = (w as f64 * mlp_ratio) as usize;
    let mut p =
        |name: &str, shape: &[usize]| out.push(TensorSpec::new(format!("{prefix}.{name}"), shape));
    p("ln_1.weight", &[w]);
    p("ln_1.bias", &[w]);
    p("attn.in_proj_weight", &[3 * w, w]);
    p("attn.in_proj_bias", &[3 * w]);
    p("attn.out_proj.weight", &[w, w]);
    p("attn.out_proj.bias", &[w]);
    p("ln_2.weight", &[w]);
    p("ln_2.bias", &[w]);
    p("mlp.c_fc.weight", &[m, w]);
    p("mlp.c_fc.bias", &[m]);
    p("mlp.c_proj.weight", &[w, m]);
    p("mlp.c_proj.bias", &[w]);
}

fn push_conv_bn(
    out: &mut Vec<TensorSpec>,
    conv: &str,
    bn: &str,
    cin: usize,
    cout: usize,
    k: usize,
) {
    out.push(TensorSpec::new(
        format!("{conv}.weight"),
        &[cout, cin, k, k],
    ));
    for (part, buffer) in [
        ("weight", false),
        ("bias", false),
        ("running_mean", true),
        ("running_var", true),
    ] {
        out.push(TensorSpec {
            name: format!("{bn}.{part}"),
            shape: vec![cout],
            buffer,
        });
    }
}

/// The tensors (open_clip names and shapes, parameters and buffers) of the model `cfg` builds —
/// the same set as `Clip::new(cfg, _).named_params()`, computed without allocating anything.
pub fn expected_tensors(cfg: &ClipConfig) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    let v = &cfg.vision_cfg;
    let e = cfg.embed_dim;
    match &v.layers {
        VisionLayers::Vit(layers) => {
            let w = v.width;
            let p = v.patch_size.unwrap_or(1).max(1);
            let grid = v.image_size / p;
            out.push(TensorSpec::new("visual.class_embedding", &[w]));
            out.push(TensorSpec::new(
                "visual.positional_embedding",
                &[grid * grid + 1, w],
            ));
            out.push(TensorSpec::new("visual.conv1.weight", &[w, 3, p, p]));
            out.push(TensorSpec::new("visual.ln_pre.weight", &[w]));
            out.push(TensorSpec::new("visual.ln_pre.bias", &[w]));
            for i in 0..*layers {
                push_block(
                    &mut out,
                    &format!("visual.transformer.resblocks.{i}"),
                    w,
                    v.mlp_ratio,
                );
            }
            out.push(TensorSpec::new("visual.ln_post.weight", &[w]));
            out.push(TensorSpec::new("visual.ln_post.bias", &[w]));
            out.push(TensorSpec::new("visual.proj", &[w, e]));
        }
        VisionLayers::ResNet(blocks) => {
            let w = v.width;
            let h = w / 2;
            push_conv_bn(&mut out, "visual.conv1", "visual.bn1", 3, h, 3);
            push_conv_bn(&mut out, "visual.conv2", "visual.bn2", h, h, 3);
            push_conv_bn(&mut out, "visual.conv3", "visual.bn3", h, w, 3);
            let mut inplanes = w;
            for (i, &count) in blocks.iter().enumerate() {
                let planes = w << i;
                let stride = if i == 0 { 1 } else { 2 };
                for b in 0..count {
                    let pre = format!("visual.layer{}.{b}", i + 1);
                    let inp = if b == 0 { inplanes } else { planes * 4 };
                    let n = |s: &str| format!("{pre}.{s}");
                    push_conv_bn(&mut out, &n("conv1"), &n("bn1"), inp, planes, 1);
                    push_conv_bn(&mut out, &n("conv2"), &n("bn2"), planes, planes, 3);
                    push_conv_bn(&mut out, &n("conv3"), &n("bn3"), planes, planes * 4, 1);
                    if b == 0 && (stride > 1 || inp != planes * 4) {
                        push_conv_bn(
                            &mut out,
                            &n("downsample.0"),
                            &n("downsample.1"),
                            inp,
                            planes * 4,
                            1,
                        );
                    }
                }
                inplanes = planes * 4;
            }
            let c = w * 32;
            let s = v.image_size / 32;
            out.push(TensorSpec::new(
                "visual.attnpool.positional_embedding",
                &[s * s + 1, c],
            ));
            for proj in ["q_proj", "k_proj", "v_proj"] {
                out.push(TensorSpec::new(
                    format!("visual.attnpool.{proj}.weight"),
                    &[c, c],
                ));
                out.push(TensorSpec::new(
                    format!("visual.attnpool.{proj}.bias"),
                    &[c],
                ));
            }
            out.push(TensorSpec::new("visual.attnpool.c_proj.weight", &[e, c]));
            out.push(TensorSpec::new("visual.attnpool.c_proj.bias", &[e]));
        }
    }
    let t = &cfg.text_cfg;
    let w = t.width;
    out.push(TensorSpec::new(
        "token_embedding.weight",
        &[t.vocab_size, w],
    ));
    out.push(TensorSpec::new(
        "positional_embedding",
        &[t.context_length, w],
    ));
    for i in 0..t.layers {
        push_block(
            &mut out,
            &format!("transformer.resblocks.{i}"),
            w,
            t.mlp_ratio,
        );
    }
    out.push(TensorSpec::new("ln_final.weight", &[w]));
    out.push(TensorSpec::new("ln_final.bias", &[w]));
    out.push(TensorSpec::new("text_projection", &[w, e]));
    out.push(TensorSpec::new("logit_scale", &[]));
    out
}

/// Trainable parameters of the model of `cfg` as PyTorch counts them (`model.parameters()`:
/// `logit_scale` included, BatchNorm running statistics not).
pub fn parameter_count(cfg: &ClipConfig) -> u128 {
    expected_tensors(cfg)
        .iter()
        .filter(|s| !s.buffer)
        .map(TensorSpec::numel)
        .sum()
}

/// Whether an open_clip tensor name is a buffer (not a parameter).
pub fn is_buffer_name(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// The naming schemes clipcu reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// open_clip / OpenAI names, no clipcu metadata.
    OpenClip,
    /// Hugging Face `CLIPModel` names (with a `config.json` beside the file).
    HuggingFace,
    /// open_clip names with the model config in the metadata.
    Clipcu,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::OpenClip => "open_clip",
            Format::HuggingFace => "hf",
            Format::Clipcu => "clipcu",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        match s {
            "open_clip" | "openclip" | "open-clip" => Ok(Format::OpenClip),
            "hf" | "huggingface" | "hugging_face" => Ok(Format::HuggingFace),
            "clipcu" => Ok(Format::Clipcu),
            other => Err(Error::Msg(format!(
                "unknown weights format '{other}': one of open_clip, hf, clipcu"
            ))),
        }
    }
}

/// Parses `f32`, `f16`, `bf16` (also `float32`, `float16`, `bfloat16`).
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "fp32" => Ok(DType::F32),
        "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::Msg(format!(
            "unknown dtype '{other}': one of f32, f16, bf16"
        ))),
    }
}

/// Where the config of a loaded model came from (said by `clipcu convert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// Given by the caller (`--config`).
    Given,
    /// The clipcu metadata of the file.
    Metadata,
    /// A transformers `config.json` beside the file.
    HfConfigJson(PathBuf),
}

/// Loads a model from any weights file clipcu reads. The config: `config` when given, else the
/// clipcu metadata of the file, else a transformers `config.json` beside a file in Hugging Face
/// names; else an error asking for `--config` (the activation and head counts are not in the
/// shapes, and clipcu does not guess them).
pub fn load_any(path: &Path, config: Option<&ClipConfig>) -> Result<(Clip, ConfigSource)> {
    let (cfg, source) = match config {
        Some(c) => (c.clone(), ConfigSource::Given),
        None => match config_in(path)? {
            Some(c) => (c, ConfigSource::Metadata),
            None => {
                let header = inspect::read_header(path)?;
                let json = hf::config_json_beside(path);
                if inspect::naming_of(&header) == Format::HuggingFace && json.exists() {
                    let text = std::fs::read_to_string(&json).map_err(|e| Error::io(&json, e))?;
                    (
                        hf::config_from_hf_json(&text, &json.display().to_string())?,
                        ConfigSource::HfConfigJson(json),
                    )
                } else {
                    return Err(Error::format(
                        path,
                        "the file has no clipcu config in its metadata (and no transformers \
                         config.json beside it): give the model config (--config; `clipcu info \
                         --weights FILE` names the shipped configs its shapes match)",
                    ));
                }
            }
        },
    };
    let model = Clip::new(&cfg, 0);
    load_into(&model, path)?;
    Ok((model, source))
}

/// The model's tensors under open_clip names, cast to `dtype`.
fn open_clip_tensors(model: &Clip, dtype: DType) -> Result<Vec<(String, Tensor)>> {
    model
        .named_params()
        .into_iter()
        .map(|(n, p)| {
            let t = p.value().to_device(crate::Device::Cpu)?;
            Ok((n, t.try_to_dtype(dtype)?))
        })
        .collect()
}

/// The clipcu metadata of a model file (as `save_clip` writes it).
pub fn clipcu_metadata(cfg: &ClipConfig) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    meta.insert("format".into(), "clipcu".into());
    meta.insert(CONFIG_KEY.into(), cfg.to_json());
    let act = if cfg.quick_gelu { "quick_gelu" } else { "gelu" };
    meta.insert(ACTIVATION_KEY.into(), act.into());
    meta
}

/// What [`write_model`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub files: Vec<PathBuf>,
    pub tensors: usize,
}

/// Writes `model` to `out` in `format` and `dtype`, atomically; for [`Format::HuggingFace`] also
/// `config.json` beside `out`. A ModifiedResNet is refused for Hugging Face (before anything is
/// written).
pub fn write_model(model: &Clip, out: &Path, format: Format, dtype: DType) -> Result<Written> {
    let tensors = match format {
        Format::HuggingFace => {
            hf::check_convertible(&model.config)?;
            hf::to_hf(open_clip_tensors(model, dtype)?, &model.config)?
        }
        _ => open_clip_tensors(model, dtype)?,
    };
    let meta = match format {
        Format::Clipcu => clipcu_metadata(&model.config),
        Format::OpenClip => BTreeMap::new(),
        Format::HuggingFace => BTreeMap::from([("format".to_string(), "pt".to_string())]),
    };
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(out, &refs, &meta)?;
    let mut files = vec![out.to_path_buf()];
    if format == Format::HuggingFace {
        let json = hf::config_json_beside(out);
        let text = serde_json::to_string_pretty(&hf::hf_config_json(&model.config, dtype))
            .expect("config serialises");
        crate::io::write_atomic(&json, format!("{text}\n").as_bytes())?;
        files.push(json);
    }
    Ok(Written {
        files,
        tensors: tensors.len(),
    })
}

/// The dtype of the floating tensors of a file when they all have one (`None` when mixed, or
/// when there are none).
pub fn uniform_dtype(path: &Path) -> Result<Option<DType>> {
    let header = inspect::read_header(path)?;
    let mut found: Option<DType> = None;
    for e in &header.entries {
        let d = match e.dtype.as_str() {
            "F32" | "F64" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            _ => continue,
        };
        if e.name.starts_with("optim.") {
            continue;
        }
        match found {
            None => found = Some(d),
            Some(f) if f != d => return Ok(None),
            _ => {}
        }
    }
    Ok(found)
}

/// `clipcu convert`: loads `input` (see [`load_any`]) and writes it to `out` in `format`, in
/// `dtype` (default: the input's dtype when uniform, else f32).
pub fn convert(
    input: &Path,
    out: &Path,
    format: Format,
    dtype: Option<DType>,
    config: Option<&ClipConfig>,
) -> Result<(Written, ConfigSource, DType)> {
    let dtype = match dtype {
        Some(d) => d,
        None => uniform_dtype(input)?.unwrap_or(DType::F32),
    };
    let (model, source) = load_any(input, config)?;
    if format == Format::HuggingFace {
        hf::check_convertible(&model.config)?;
    }
    let written = write_model(&model, out, format, dtype)?;
    Ok((written, source, dtype))
}
