//! Hugging Face `CLIPModel` names and `config.json`, going out (the inverse of
//! `weights.rs`'s `from_hugging_face`, which reads them):
//! - q/k/v: open_clip's packed `attn.in_proj_weight [3D, D]` / `in_proj_bias [3D]` become
//!   `self_attn.{q,k,v}_proj.{weight,bias}` (rows 0..D, D..2D, 2D..3D);
//! - `visual.proj [W, E]` and `text_projection [W, E]` become `visual_projection.weight` and
//!   `text_projection.weight` `[E, W]` (a `Linear` without bias: stored transposed);
//! - the rest is a rename (`ln_1` → `layer_norm1`, `mlp.c_fc` → `mlp.fc1`, `ln_pre` →
//!   `pre_layrnorm` — transformers' own spelling —, ...).
//!
//! `config.json` is transformers' `CLIPConfig` (`text_config`, `vision_config`, `projection_dim`)
//! with the activation the model has (`hidden_act`: `gelu` or `quick_gelu`) and LayerNorm eps
//! 1e-5. `text_config.eos_token_id` is 2, as in OpenAI's Hub configs: transformers then pools the
//! text at the argmax of the token ids, exactly what CLIP (and clipcu) does. A ModifiedResNet has
//! no `CLIPModel` form and is refused.

use super::config::{ClipConfig, VisionLayers};
use super::convert::TensorSpec;
use crate::{DType, Error, Result, Tensor};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// How one open_clip tensor appears under Hugging Face names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HfName {
    /// The same tensor under another name.
    Renamed(String),
    /// Transposed (a projection matrix: `[W, E]` → `[E, W]`).
    Transposed(String),
    /// Split into three along dimension 0 (packed q, k, v), named in that order.
    SplitQkv([String; 3]),
}

/// (open_clip name, Hugging Face `CLIPModel` name, stored transposed) of every tensor outside
/// the transformer blocks: the one table both directions of the mapping read (and `weights.rs`).
pub(crate) const FIXED_NAMES: &[(&str, &str, bool)] = &[
    ("logit_scale", "logit_scale", false),
    (
        "token_embedding.weight",
        "text_model.embeddings.token_embedding.weight",
        false,
    ),
    (
        "positional_embedding",
        "text_model.embeddings.position_embedding.weight",
        false,
    ),
    (
        "ln_final.weight",
        "text_model.final_layer_norm.weight",
        false,
    ),
    ("ln_final.bias", "text_model.final_layer_norm.bias", false),
    ("text_projection", "text_projection.weight", true),
    (
        "visual.class_embedding",
        "vision_model.embeddings.class_embedding",
        false,
    ),
    (
        "visual.conv1.weight",
        "vision_model.embeddings.patch_embedding.weight",
        false,
    ),
    (
        "visual.positional_embedding",
        "vision_model.embeddings.position_embedding.weight",
        false,
    ),
    (
        "visual.ln_pre.weight",
        "vision_model.pre_layrnorm.weight",
        false,
    ),
    (
        "visual.ln_pre.bias",
        "vision_model.pre_layrnorm.bias",
        false,
    ),
    (
        "visual.ln_post.weight",
        "vision_model.post_layernorm.weight",
        false,
    ),
    (
        "visual.ln_post.bias",
        "vision_model.post_layernorm.bias",
        false,
    ),
    ("visual.proj", "visual_projection.weight", true),
];

/// (open_clip, Hugging Face) module names inside a transformer block, besides the attention's
/// packed `in_proj` (split into q/k/v projections in HF).
pub(crate) const LAYER_PARTS: &[(&str, &str)] = &[
    ("attn.out_proj", "self_attn.out_proj"),
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
];

/// The Hugging Face name(s) of an open_clip ViT-CLIP tensor; `None` for a name `CLIPModel` has no
/// place for (a ModifiedResNet tensor, or an unknown key).
pub fn hf_name(name: &str) -> Option<HfName> {
    use HfName::*;
    if let Some((_, hf, transposed)) = FIXED_NAMES.iter().find(|(oc, ..)| *oc == name) {
        let hf = hf.to_string();
        return Some(if *transposed {
            Transposed(hf)
        } else {
            Renamed(hf)
        });
    }
    let (tower, rest) = if let Some(r) = name.strip_prefix("visual.transformer.resblocks.") {
        ("vision_model", r)
    } else if let Some(r) = name.strip_prefix("transformer.resblocks.") {
        ("text_model", r)
    } else {
        return None;
    };
    let (layer, part) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let h = format!("{tower}.encoder.layers.{layer}");
    if let Some(p) = part.strip_prefix("attn.in_proj_") {
        if p != "weight" && p != "bias" {
            return None;
        }
        return Some(SplitQkv(
            ["q", "k", "v"].map(|x| format!("{h}.self_attn.{x}_proj.{p}")),
        ));
    }
    let (module, p) = part.rsplit_once('.')?;
    if p != "weight" && p != "bias" {
        return None;
    }
    let (_, m) = LAYER_PARTS.iter().find(|(oc, _)| *oc == module)?;
    Some(Renamed(format!("{h}.{m}.{p}")))
}

/// Errors unless a model of `cfg` has a Hugging Face `CLIPModel` form.
pub fn check_convertible(cfg: &ClipConfig) -> Result<()> {
    if cfg.is_resnet() {
        return Err(Error::Msg(
            "a ModifiedResNet (RN50-style) image tower has no Hugging Face CLIPModel form: \
             transformers' CLIPModel has only a ViT image tower, so these weights cannot be \
             written in HF names (convert to open_clip or clipcu instead)"
                .into(),
        ));
    }
    Ok(())
}

/// open_clip-named tensors (a ViT CLIP) → Hugging Face `CLIPModel` names.
pub fn to_hf(tensors: Vec<(String, Tensor)>, cfg: &ClipConfig) -> Result<Vec<(String, Tensor)>> {
    check_convertible(cfg)?;
    let mut out = Vec::with_capacity(tensors.len() + 32);
    for (name, t) in tensors {
        match hf_name(&name) {
            Some(HfName::Renamed(n)) => out.push((n, t)),
            Some(HfName::Transposed(n)) => out.push((n, t.transpose(0, 1)?.try_contiguous()?)),
            Some(HfName::SplitQkv(names)) => {
                let d = t.shape()[0] / 3;
                for (j, n) in names.into_iter().enumerate() {
                    out.push((n, t.narrow(0, j * d, d)?.try_contiguous()?));
                }
            }
            None => {
                return Err(Error::Msg(format!(
                    "tensor `{name}` has no place in a Hugging Face CLIPModel"
                )))
            }
        }
    }
    Ok(out)
}

/// Names and shapes under Hugging Face names of open_clip-named `specs` (those `CLIPModel` has
/// no place for are returned second).
pub fn hf_specs(specs: &[TensorSpec]) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let mut out = Vec::new();
    let mut rest = Vec::new();
    for s in specs {
        match hf_name(&s.name) {
            Some(HfName::Renamed(n)) => out.push(TensorSpec {
                name: n,
                ..s.clone()
            }),
            Some(HfName::Transposed(n)) => out.push(TensorSpec {
                name: n,
                shape: s.shape.iter().rev().copied().collect(),
                buffer: s.buffer,
            }),
            Some(HfName::SplitQkv(names)) => {
                for n in names {
                    let mut shape = s.shape.clone();
                    shape[0] /= 3;
                    out.push(TensorSpec {
                        name: n,
                        shape,
                        buffer: s.buffer,
                    });
                }
            }
            None => rest.push(s.clone()),
        }
    }
    (out, rest)
}

/// The open_clip name and shape of a Hugging Face-named tensor (q/k/v each stand for the packed
/// `in_proj`, whose shape is returned: three times as many rows), or `None` when `CLIPModel` has
/// no such tensor. Used to read shapes (`clipcu info`); `weights.rs` converts the tensors.
pub fn open_clip_spec(name: &str, shape: &[usize]) -> Option<(String, Vec<usize>)> {
    if let Some((o, _, t)) = FIXED_NAMES.iter().find(|(_, h, _)| *h == name) {
        let shape = if *t {
            shape.iter().rev().copied().collect()
        } else {
            shape.to_vec()
        };
        return Some((o.to_string(), shape));
    }
    let (tower, rest) = if let Some(r) = name.strip_prefix("vision_model.encoder.layers.") {
        ("visual.transformer.resblocks", r)
    } else if let Some(r) = name.strip_prefix("text_model.encoder.layers.") {
        ("transformer.resblocks", r)
    } else {
        return None;
    };
    let (layer, part) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (module, p) = part.rsplit_once('.')?;
    if p != "weight" && p != "bias" {
        return None;
    }
    let o = format!("{tower}.{layer}");
    match module {
        "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj" => {
            let mut s = shape.to_vec();
            if let Some(d) = s.first_mut() {
                *d *= 3;
            }
            Some((format!("{o}.attn.in_proj_{p}"), s))
        }
        _ => {
            let (m, _) = LAYER_PARTS.iter().find(|(_, hf)| *hf == module)?;
            Some((format!("{o}.{m}.{p}"), shape.to_vec()))
        }
    }
}

/// `config.json` in the folder of `weights` (where transformers' `from_pretrained` reads it).
pub fn config_json_beside(weights: &Path) -> PathBuf {
    weights.with_file_name("config.json")
}

fn act(cfg: &ClipConfig) -> &'static str {
    if cfg.quick_gelu {
        "quick_gelu"
    } else {
        "gelu"
    }
}

/// transformers' dtype spelling (`dtype` since transformers 5, `torch_dtype` before: both are
/// written).
fn torch_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    }
}

/// The transformers `CLIPConfig` of a ViT CLIP (as `CLIPConfig.to_dict()` spells the keys).
pub fn hf_config_json(cfg: &ClipConfig, dtype: DType) -> Value {
    let v = &cfg.vision_cfg;
    let t = &cfg.text_cfg;
    let act = act(cfg);
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "dtype": torch_dtype(dtype),
        "torch_dtype": torch_dtype(dtype),
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": (t.width as f64 * t.mlp_ratio) as usize,
            "projection_dim": cfg.embed_dim,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.width,
            "intermediate_size": (v.width as f64 * v.mlp_ratio) as usize,
            "projection_dim": cfg.embed_dim,
            "num_hidden_layers": match v.layers { VisionLayers::Vit(n) => n, VisionLayers::ResNet(_) => 0 },
            "num_attention_heads": v.width / v.head_width.max(1),
            "num_channels": 3,
            "image_size": v.image_size,
            "patch_size": v.patch_size.unwrap_or(0),
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0
        }
    })
}

/// The clipcu config of a transformers `CLIPConfig` JSON (`config.json` of a Hub CLIP), checked
/// as any config is. Both towers must have the same activation (clipcu has one per model), and
/// only what CLIP's architecture has is accepted.
pub fn config_from_hf_json(text: &str, source: &str) -> Result<ClipConfig> {
    let bad = |msg: String| Error::format(source, msg);
    let raw: Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    // transformers' defaults (CLIPTextConfig / CLIPVisionConfig) for keys a config leaves out
    let default = |section: &str, key: &str| -> Option<usize> {
        Some(match (section, key) {
            ("text_config", "vocab_size") => 49408,
            ("text_config", "hidden_size") => 512,
            ("text_config", "intermediate_size") => 2048,
            ("text_config", "num_hidden_layers") => 12,
            ("text_config", "num_attention_heads") => 8,
            ("text_config", "max_position_embeddings") => 77,
            ("vision_config", "hidden_size") => 768,
            ("vision_config", "intermediate_size") => 3072,
            ("vision_config", "num_hidden_layers") => 12,
            ("vision_config", "num_attention_heads") => 12,
            ("vision_config", "image_size") => 224,
            ("vision_config", "patch_size") => 32,
            _ => return None,
        })
    };
    let num = |section: &str, key: &str| -> Result<usize> {
        match raw.get(section).and_then(|s| s.get(key)) {
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                bad(format!(
                    "`{section}.{key}` = {v} is not a non-negative integer"
                ))
            }),
            None => {
                default(section, key).ok_or_else(|| bad(format!("`{section}.{key}` is missing")))
            }
        }
    };
    for s in ["text_config", "vision_config"] {
        if !raw.get(s).is_some_and(Value::is_object) {
            return Err(bad(format!(
                "`{s}` is missing: not a transformers CLIPConfig (CLIPModel) config.json"
            )));
        }
    }
    let acts: Vec<String> = ["text_config", "vision_config"]
        .iter()
        .map(|s| {
            raw.get(s)
                .and_then(|c| c.get("hidden_act"))
                .and_then(Value::as_str)
                .unwrap_or("quick_gelu") // transformers' default
                .to_string()
        })
        .collect();
    let quick_gelu = match (acts[0].as_str(), acts[1].as_str()) {
        ("quick_gelu", "quick_gelu") => true,
        ("gelu", "gelu") => false,
        (a, b) => {
            return Err(bad(format!(
                "hidden_act is `{a}` in text_config and `{b}` in vision_config: clipcu supports \
                 `gelu` or `quick_gelu`, the same in both towers"
            )))
        }
    };
    for s in ["text_config", "vision_config"] {
        if let Some(eps) = raw.get(s).and_then(|c| c.get("layer_norm_eps")) {
            if eps.as_f64().is_some_and(|e| (e - 1e-5).abs() > 1e-12) {
                return Err(bad(format!(
                    "`{s}.layer_norm_eps` = {eps}: clipcu's CLIP uses 1e-5"
                )));
            }
        }
    }
    let (vw, vh) = (
        num("vision_config", "hidden_size")?,
        num("vision_config", "num_attention_heads")?,
    );
    let (tw, vi, ti) = (
        num("text_config", "hidden_size")?,
        num("vision_config", "intermediate_size")?,
        num("text_config", "intermediate_size")?,
    );
    if vh == 0 || vw % vh != 0 || vw == 0 || tw == 0 {
        return Err(bad(format!(
            "vision_config.hidden_size {vw} is not a multiple of num_attention_heads {vh}"
        )));
    }
    let embed = match raw.get("projection_dim") {
        None => 512, // transformers' default
        Some(v) => v.as_u64().ok_or_else(|| {
            bad(format!(
                "`projection_dim` = {v} is not a non-negative integer"
            ))
        })?,
    };
    let oc = json!({
        "embed_dim": embed,
        "quick_gelu": quick_gelu,
        "vision_cfg": {
            "image_size": num("vision_config", "image_size")?,
            "layers": num("vision_config", "num_hidden_layers")?,
            "width": vw,
            "patch_size": num("vision_config", "patch_size")?,
            "head_width": vw / vh,
            "mlp_ratio": vi as f64 / vw as f64,
        },
        "text_cfg": {
            "context_length": num("text_config", "max_position_embeddings")?,
            "vocab_size": num("text_config", "vocab_size")?,
            "width": tw,
            "heads": num("text_config", "num_attention_heads")?,
            "layers": num("text_config", "num_hidden_layers")?,
            "mlp_ratio": ti as f64 / tw as f64,
        }
    });
    ClipConfig::from_json(&oc.to_string(), source)
}
