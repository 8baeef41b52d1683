//! Model configs in open_clip's JSON format (`embed_dim`, `quick_gelu`, `vision_cfg`, `text_cfg`).
//! Shipped configs live in `assets/models/` and are embedded in the binary; any such file given by
//! path works too. Options that change the architecture in ways clipcu does not implement
//! (layer scale, attentional pooling, timm/HF towers, ...) are refused with an error naming them,
//! never silently ignored.

use crate::nn::Activation;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// `vision_cfg.layers`: an int for a ViT, four ints for a ModifiedResNet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VisionLayers {
    Vit(usize),
    ResNet([usize; 4]),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub image_size: usize,
    pub layers: VisionLayers,
    pub width: usize,
    /// ViT only (null for ResNets).
    #[serde(default)]
    pub patch_size: Option<usize>,
    #[serde(default = "default_head_width")]
    pub head_width: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    #[serde(default = "default_context_length")]
    pub context_length: usize,
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_text_width")]
    pub width: usize,
    #[serde(default = "default_text_heads")]
    pub heads: usize,
    #[serde(default = "default_text_layers")]
    pub layers: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub embed_dim: usize,
    #[serde(default)]
    pub quick_gelu: bool,
    pub vision_cfg: VisionConfig,
    pub text_cfg: TextConfig,
}

fn default_head_width() -> usize {
    64
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_context_length() -> usize {
    77
}
fn default_vocab_size() -> usize {
    49408
}
fn default_text_width() -> usize {
    512
}
fn default_text_heads() -> usize {
    8
}
fn default_text_layers() -> usize {
    12
}

/// The configs shipped in `assets/models/`, by name.
const BUILTIN: &[(&str, &str)] = &[
    (
        "ViT-B-32",
        include_str!("../../assets/models/ViT-B-32.json"),
    ),
    (
        "ViT-B-32-quickgelu",
        include_str!("../../assets/models/ViT-B-32-quickgelu.json"),
    ),
    (
        "ViT-B-16",
        include_str!("../../assets/models/ViT-B-16.json"),
    ),
    (
        "ViT-B-16-quickgelu",
        include_str!("../../assets/models/ViT-B-16-quickgelu.json"),
    ),
    (
        "ViT-L-14",
        include_str!("../../assets/models/ViT-L-14.json"),
    ),
    (
        "ViT-L-14-quickgelu",
        include_str!("../../assets/models/ViT-L-14-quickgelu.json"),
    ),
    (
        "ViT-L-14-336",
        include_str!("../../assets/models/ViT-L-14-336.json"),
    ),
    (
        "ViT-L-14-336-quickgelu",
        include_str!("../../assets/models/ViT-L-14-336-quickgelu.json"),
    ),
    ("RN50", include_str!("../../assets/models/RN50.json")),
    (
        "RN50-quickgelu",
        include_str!("../../assets/models/RN50-quickgelu.json"),
    ),
    ("RN101", include_str!("../../assets/models/RN101.json")),
    (
        "RN101-quickgelu",
        include_str!("../../assets/models/RN101-quickgelu.json"),
    ),
    ("RN50x4", include_str!("../../assets/models/RN50x4.json")),
    (
        "RN50x4-quickgelu",
        include_str!("../../assets/models/RN50x4-quickgelu.json"),
    ),
    (
        "tiny-vit",
        include_str!("../../assets/models/tiny-vit.json"),
    ),
    ("tiny-rn", include_str!("../../assets/models/tiny-rn.json")),
    (
        "synthetic-tiny",
        include_str!("../../assets/models/synthetic-tiny.json"),
    ),
    (
        "synthetic-rn",
        include_str!("../../assets/models/synthetic-rn.json"),
    ),
];

/// Keys (per section) whose non-default values change the architecture in ways not implemented.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("", "custom_text"),
    ("", "init_logit_bias"),
    ("", "nonscalar_logit_scale"),
    ("vision_cfg", "ls_init_value"),
    ("vision_cfg", "patch_dropout"),
    ("vision_cfg", "attentional_pool"),
    ("vision_cfg", "no_ln_pre"),
    ("vision_cfg", "final_ln_after_pool"),
    ("vision_cfg", "timm_model_name"),
    ("vision_cfg", "output_tokens"),
    ("vision_cfg", "qk_norm"),
    ("vision_cfg", "scaled_cosine_attn"),
    ("vision_cfg", "scale_heads"),
    ("vision_cfg", "scale_attn"),
    ("vision_cfg", "scale_fc"),
    ("vision_cfg", "act_kwargs"),
    ("text_cfg", "ls_init_value"),
    ("text_cfg", "hf_model_name"),
    ("text_cfg", "embed_cls"),
    ("text_cfg", "no_causal_mask"),
    ("text_cfg", "final_ln_after_pool"),
    ("text_cfg", "proj_bias"),
    ("text_cfg", "output_tokens"),
    ("text_cfg", "qk_norm"),
    ("text_cfg", "act_kwargs"),
];

/// Values of a key that mean "feature off" (absent, null, false, 0, empty).
fn is_off(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
    }
}

impl ClipConfig {
    /// Names of the shipped configs.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// A shipped config by name (`ViT-B-32`), or a JSON file by path (anything ending in `.json`
    /// or containing a path separator).
    pub fn load(name_or_path: &str) -> Result<ClipConfig> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::from_json(text, name_or_path);
        }
        let p = Path::new(name_or_path);
        if name_or_path.ends_with(".json") || p.components().count() > 1 || p.exists() {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            return Self::from_json(&text, name_or_path);
        }
        Err(Error::Msg(format!(
            "unknown model config '{name_or_path}': give a JSON file path or one of {}",
            Self::builtin_names().join(", ")
        )))
    }

    /// Parse and validate; `source` names the file (or config name) in errors.
    pub fn from_json(text: &str, source: &str) -> Result<ClipConfig> {
        let raw: Value = serde_json::from_str(text)
            .map_err(|e| Error::format(source, format!("not valid JSON: {e}")))?;
        for (section, key) in UNSUPPORTED {
            let v = if section.is_empty() {
                raw.get(key)
            } else {
                raw.get(section).and_then(|s| s.get(key))
            };
            if let Some(v) = v {
                if !is_off(v) {
                    let field = if section.is_empty() {
                        key.to_string()
                    } else {
                        format!("{section}.{key}")
                    };
                    return Err(Error::format(source, format!("`{field}` = {v} is not supported by clipcu (only CLIP's ViT/ModifiedResNet + text transformer)")));
                }
            }
        }
        for (section, key, ok) in [
            ("vision_cfg", "pool_type", "tok"),
            ("text_cfg", "pool_type", "argmax"),
            ("vision_cfg", "pos_embed_type", "learnable"),
        ] {
            if let Some(v) = raw.get(section).and_then(|s| s.get(key)) {
                if v.as_str() != Some(ok) {
                    return Err(Error::format(
                        source,
                        format!("`{section}.{key}` = {v} is not supported (only \"{ok}\")"),
                    ));
                }
            }
        }
        let cfg: ClipConfig = serde_json::from_value(raw)
            .map_err(|e| Error::format(source, format!("not an open_clip model config: {e}")))?;
        cfg.validate(source)?;
        Ok(cfg)
    }

    fn validate(&self, source: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::format(source, msg));
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        if self.embed_dim == 0
            || v.width == 0
            || t.width == 0
            || v.image_size == 0
            || t.context_length == 0
            || t.vocab_size == 0
        {
            return bad(
                "embed_dim, widths, image_size, context_length and vocab_size must be > 0".into(),
            );
        }
        match &v.layers {
            VisionLayers::Vit(_) => {
                let Some(p) = v.patch_size else {
                    return bad(
                        "vision_cfg.patch_size is required for a ViT (vision_cfg.layers is an int)"
                            .into(),
                    );
                };
                if p == 0 || !v.image_size.is_multiple_of(p) {
                    return bad(format!(
                        "vision_cfg.image_size {} is not a multiple of patch_size {p}",
                        v.image_size
                    ));
                }
                if v.head_width == 0 || !v.width.is_multiple_of(v.head_width) {
                    return bad(format!(
                        "vision_cfg.width {} is not a multiple of head_width {}",
                        v.width, v.head_width
                    ));
                }
            }
            VisionLayers::ResNet(_) => {
                if !v.image_size.is_multiple_of(32) {
                    return bad(format!(
                        "a ModifiedResNet needs image_size divisible by 32, got {}",
                        v.image_size
                    ));
                }
                if v.head_width == 0 || !(v.width * 32).is_multiple_of(v.head_width) {
                    return bad(format!(
                        "vision_cfg.width·32 = {} is not a multiple of head_width {}",
                        v.width * 32,
                        v.head_width
                    ));
                }
            }
        }
        if t.heads == 0 || !t.width.is_multiple_of(t.heads) {
            return bad(format!(
                "text_cfg.width {} is not a multiple of text_cfg.heads {}",
                t.width, t.heads
            ));
        }
        Ok(())
    }

    pub fn activation(&self) -> Activation {
        if self.quick_gelu {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        }
    }

    pub fn is_resnet(&self) -> bool {
        matches!(self.vision_cfg.layers, VisionLayers::ResNet(_))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }
}
