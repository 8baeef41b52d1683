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
    ("RN50x16", include_str!("../../assets/models/RN50x16.json")),
    (
        "RN50x16-quickgelu",
        include_str!("../../assets/models/RN50x16-quickgelu.json"),
    ),
    ("RN50x64", include_str!("../../assets/models/RN50x64.json")),
    (
        "RN50x64-quickgelu",
        include_str!("../../assets/models/RN50x64-quickgelu.json"),
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

/// Upper bounds of single config sizes (far above any CLIP; they keep every product of sizes
/// finite and turn a typo like `"width": 1e18` into an error naming the field).
const MAX_DIM: usize = 1 << 31;
const MAX_LAYERS: usize = 1 << 20;
const MAX_IMAGE_SIZE: usize = 1 << 14;
const MAX_CONTEXT: usize = 1 << 16;
const MAX_MLP_RATIO: f64 = 1024.0;

/// The keys clipcu reads, per section (besides [`UNSUPPORTED`] and the pooling/embedding types
/// checked in `from_json`). Any other key is an error naming it: a key that is ignored silently
/// could be one that changes the architecture.
const KNOWN: &[(&str, &[&str])] = &[
    ("", &["embed_dim", "quick_gelu", "vision_cfg", "text_cfg"]),
    (
        "vision_cfg",
        &[
            "image_size",
            "layers",
            "width",
            "patch_size",
            "head_width",
            "mlp_ratio",
            "pool_type",
            "pos_embed_type",
        ],
    ),
    (
        "text_cfg",
        &[
            "context_length",
            "vocab_size",
            "width",
            "heads",
            "layers",
            "mlp_ratio",
            "pool_type",
        ],
    ),
];

/// Reports the first key of `raw` that clipcu neither reads nor refuses by name.
fn check_known_keys(raw: &Value, source: &str) -> Result<()> {
    for (section, known) in KNOWN {
        let obj = if section.is_empty() {
            raw.as_object()
        } else {
            raw.get(section).and_then(Value::as_object)
        };
        let Some(obj) = obj else { continue };
        for key in obj.keys() {
            let refused = UNSUPPORTED.iter().any(|(s, k)| s == section && k == key);
            if !known.contains(&key.as_str()) && !refused {
                let field = if section.is_empty() {
                    key.clone()
                } else {
                    format!("{section}.{key}")
                };
                return Err(Error::format(
                    source,
                    format!("unknown key `{field}` (known here: {})", known.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// Bytes of memory available to a new allocation: `MemAvailable` of /proc/meminfo (where there
/// is none, no limit).
pub fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib.saturating_mul(1024))
}

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
        check_known_keys(&raw, source)?;
        let cfg: ClipConfig = serde_json::from_value(raw)
            .map_err(|e| Error::format(source, format!("not an open_clip model config: {e}")))?;
        cfg.validate(source)?;
        cfg.check_memory(source, available_memory())?;
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
        // Upper bounds on each size, so that no product of them overflows and no single one
        // asks for what no machine has; the parameter count is checked against the memory
        // (`check_memory`).
        let mut sizes: Vec<(String, usize, usize)> = vec![
            ("embed_dim".into(), self.embed_dim, MAX_DIM),
            ("vision_cfg.width".into(), v.width, MAX_DIM),
            ("vision_cfg.head_width".into(), v.head_width, MAX_DIM),
            ("vision_cfg.image_size".into(), v.image_size, MAX_IMAGE_SIZE),
            ("text_cfg.width".into(), t.width, MAX_DIM),
            ("text_cfg.heads".into(), t.heads, MAX_DIM),
            ("text_cfg.layers".into(), t.layers, MAX_LAYERS),
            ("text_cfg.vocab_size".into(), t.vocab_size, MAX_DIM),
            (
                "text_cfg.context_length".into(),
                t.context_length,
                MAX_CONTEXT,
            ),
        ];
        match &v.layers {
            VisionLayers::Vit(n) => sizes.push(("vision_cfg.layers".into(), *n, MAX_LAYERS)),
            VisionLayers::ResNet(ls) => {
                for (i, &n) in ls.iter().enumerate() {
                    if n == 0 {
                        return bad(format!(
                            "vision_cfg.layers[{i}] is 0: every ModifiedResNet stage needs at least one block"
                        ));
                    }
                    sizes.push((format!("vision_cfg.layers[{i}]"), n, MAX_LAYERS));
                }
            }
        }
        if let Some(p) = v.patch_size {
            sizes.push(("vision_cfg.patch_size".into(), p, MAX_IMAGE_SIZE));
        }
        for (field, value, max) in sizes {
            if value > max {
                return bad(format!("`{field}` = {value} is over the limit of {max}"));
            }
        }
        for (field, r) in [
            ("vision_cfg.mlp_ratio", v.mlp_ratio),
            ("text_cfg.mlp_ratio", t.mlp_ratio),
        ] {
            if !(r.is_finite() && r > 0.0 && r <= MAX_MLP_RATIO) {
                return bad(format!(
                    "`{field}` = {r} must be a number > 0 and at most {MAX_MLP_RATIO} (CLIP: 4)"
                ));
            }
        }
        for (field, width, r) in [
            ("vision_cfg.mlp_ratio", v.width, v.mlp_ratio),
            ("text_cfg.mlp_ratio", t.width, t.mlp_ratio),
        ] {
            if (width as f64 * r) < 1.0 {
                return bad(format!(
                    "`{field}` = {r} gives an MLP of width {} (width {width} × ratio): it must be at least 1",
                    (width as f64 * r) as usize
                ));
            }
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

    /// Errors unless this config's text tower takes CLIP's tokenizer's ids (`vocab_size` of at
    /// least 49,408). The shipped `tiny-vit` and `tiny-rn` (vocab 1000, the open_clip parity
    /// fixtures) are image-tower configs: their text tower only takes ids below 1000, so every
    /// command that tokenizes text refuses them with this error.
    pub fn check_tokenizer_vocab(&self, source: &str) -> Result<()> {
        let need = crate::tokenizer::Tokenizer::VOCAB_SIZE;
        if self.text_cfg.vocab_size < need {
            return Err(Error::format(
                source,
                format!(
                    "`text_cfg.vocab_size` = {} is smaller than the {need} ids of CLIP's tokenizer, \
                     so the text tower cannot take tokenized text (this config is for the image \
                     tower only; give a config with vocab_size {need})",
                    self.text_cfg.vocab_size
                ),
            ));
        }
        Ok(())
    }

    /// The number of parameters the model of this config has, counted per part; the parts
    /// are named by the config fields that size them. Wide integers: no size can overflow it.
    pub fn parameter_parts(&self) -> Vec<(&'static str, u128)> {
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        let e = self.embed_dim as u128;
        let block = |w: u128, ratio: f64| {
            let m = (w as f64 * ratio) as u128;
            // ln_1, in_proj (packed q,k,v + bias), out_proj, ln_2, c_fc, c_proj
            2 * w + 3 * w * w + 3 * w + w * w + w + 2 * w + w * m + m + m * w + w
        };
        let mut parts = Vec::new();
        match &v.layers {
            VisionLayers::Vit(n) => {
                let w = v.width as u128;
                let p = v.patch_size.unwrap_or(1).max(1) as u128;
                let grid = (v.image_size as u128 / p).pow(2);
                parts.push((
                    "vision_cfg.width, vision_cfg.layers, vision_cfg.mlp_ratio",
                    *n as u128 * block(w, v.mlp_ratio),
                ));
                parts.push((
                    "vision_cfg.width, vision_cfg.image_size, vision_cfg.patch_size",
                    3 * p * p * w + w + (grid + 1) * w + 4 * w + w * e,
                ));
            }
            VisionLayers::ResNet(ls) => {
                let w = v.width as u128;
                let h = w / 2;
                let bn = |c: u128| 4 * c;
                let mut n = 3 * h * 9 + h * h * 9 + h * w * 9 + bn(h) * 2 + bn(w);
                let mut inplanes = w;
                for (i, &blocks) in ls.iter().enumerate() {
                    let planes = w << i;
                    for b in 0..blocks as u128 {
                        let inp = if b == 0 { inplanes } else { planes * 4 };
                        n += inp * planes + bn(planes) + planes * planes * 9 + bn(planes);
                        n += planes * planes * 4 + bn(planes * 4);
                        if b == 0 {
                            n += inp * planes * 4 + bn(planes * 4); // downsample
                        }
                    }
                    inplanes = planes * 4;
                }
                parts.push(("vision_cfg.width, vision_cfg.layers", n));
                let c = w * 32;
                let spatial = (v.image_size as u128 / 32).pow(2);
                parts.push((
                    "vision_cfg.width, vision_cfg.image_size",
                    (spatial + 1) * c + 3 * (c * c + c) + c * e + e,
                ));
            }
        }
        let w = t.width as u128;
        parts.push((
            "text_cfg.width, text_cfg.layers, text_cfg.mlp_ratio",
            t.layers as u128 * block(w, t.mlp_ratio),
        ));
        parts.push((
            "text_cfg.vocab_size, text_cfg.width",
            t.vocab_size as u128 * w,
        ));
        parts.push((
            "text_cfg.context_length, text_cfg.width, embed_dim",
            t.context_length as u128 * w + 2 * w + w * e + 1,
        ));
        parts
    }

    /// Total parameters (see [`parameter_parts`](Self::parameter_parts)).
    pub fn parameter_count(&self) -> u128 {
        self.parameter_parts().iter().map(|(_, n)| n).sum()
    }

    /// Errors when the f32 weights of this model (4 bytes a parameter) would not fit in
    /// `available` bytes of memory: the message names the config fields of the largest part and
    /// the bytes needed. (Training needs about four times as much — gradients and two Adam
    /// moments — and activations on top; this is the check that can be made before anything is
    /// allocated.)
    pub fn check_memory(&self, source: &str, available: u64) -> Result<()> {
        let parts = self.parameter_parts();
        let total: u128 = parts.iter().map(|(_, n)| n).sum();
        let bytes = total.saturating_mul(4);
        if bytes <= available as u128 {
            return Ok(());
        }
        let (fields, largest) = parts
            .iter()
            .max_by_key(|(_, n)| *n)
            .copied()
            .unwrap_or(("", 0));
        Err(Error::format(
            source,
            format!(
                "the model would have {total} parameters, {bytes} bytes of f32 weights, more \
                 than the {available} bytes of memory available; most of them ({largest}) come \
                 from {fields}"
            ),
        ))
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
