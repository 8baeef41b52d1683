//! Model weights in safetensors files.
//!
//! Saving writes every parameter and buffer under its open_clip name, plus the model config (with
//! its activation) in the file's metadata, so a checkpoint says what it is. Loading accepts:
//! - open_clip / OpenAI names (`visual.conv1.weight`, `transformer.resblocks.0.attn.in_proj_weight`,
//!   ...), optionally behind a `module.` prefix (DistributedDataParallel);
//! - Hugging Face `CLIPModel` names (`vision_model.*`, `text_model.*`, separate q/k/v projections,
//!   `visual_projection`/`text_projection` stored transposed), converted to the above;
//! - f32, f16 and bf16 (converted to f32), `logit_scale` 0-d or `[1]`; integer tensors only
//!   where torch keeps integer buffers (below), any other is an error naming the tensor;
//! - a ViT positional embedding of another grid size, resized (bicubic, as open_clip does).
//!
//! `num_batches_tracked`, `position_ids`, `attn_mask`, the OpenAI JIT scalars and the optimizer
//! state of training checkpoints (`optim.*`) are skipped.
//! Missing, unexpected and wrong-shaped keys are collected and reported in one error; a tensor
//! with a NaN or infinite element is an error naming it.

use super::clip::{Clip, VisionTower};
use super::config::ClipConfig;
use super::resize::resize_pos_embed;
use crate::io::safetensors::{load, save, SafeTensorsFile};
use crate::ops::layout::concat;
use crate::{DType, Error, Result, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Metadata key holding the model config (JSON) in clipcu checkpoints.
pub const CONFIG_KEY: &str = "clipcu.config";
/// Metadata key holding the activation (`gelu` or `quick_gelu`), redundant with the config but
/// readable by other tools without parsing it.
pub const ACTIVATION_KEY: &str = "clipcu.activation";

/// Keys that carry no weights for us.
pub(crate) fn ignorable(name: &str) -> bool {
    name.starts_with("optim.")
        || name.ends_with("num_batches_tracked")
        || name.ends_with("position_ids")
        || matches!(
            name,
            "attn_mask" | "input_resolution" | "context_length" | "vocab_size"
        )
}

/// Write all parameters and buffers of `model`, with its config in the metadata (atomically).
pub fn save_clip(
    model: &Clip,
    path: impl AsRef<Path>,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let named = model.named_params();
    let values: Vec<(String, Tensor)> = named.iter().map(|(n, p)| (n.clone(), p.value())).collect();
    let refs: Vec<(&str, &Tensor)> = values.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut meta = extra.clone();
    meta.insert("format".into(), "clipcu".into());
    meta.insert(CONFIG_KEY.into(), model.config.to_json());
    let act = if model.config.quick_gelu {
        "quick_gelu"
    } else {
        "gelu"
    };
    meta.insert(ACTIVATION_KEY.into(), act.into());
    save(path, &refs, &meta)
}

/// The model config stored in a clipcu checkpoint, if the file has one (read from the header
/// alone: the tensors are loaded once, by whoever builds the model).
pub fn config_in(path: impl AsRef<Path>) -> Result<Option<ClipConfig>> {
    let path = path.as_ref();
    let (_, metadata) = crate::io::safetensors::read_header(path)?;
    metadata
        .get(CONFIG_KEY)
        .map(|j| ClipConfig::from_json(j, &format!("{} (metadata {CONFIG_KEY})", path.display())))
        .transpose()
}

/// Build a model from a checkpoint: its stored config, else `fallback`; then load the weights.
pub fn load_clip(path: impl AsRef<Path>, fallback: Option<&ClipConfig>) -> Result<Clip> {
    let path = path.as_ref();
    let file = load(path)?;
    let config = match file.metadata.get(CONFIG_KEY) {
        Some(j) => {
            ClipConfig::from_json(j, &format!("{} (metadata {CONFIG_KEY})", path.display()))?
        }
        None => fallback.cloned().ok_or_else(|| {
            Error::format(
                path,
                "the file has no clipcu config in its metadata: give the model config (--config)",
            )
        })?,
    };
    let model = Clip::new(&config, 0);
    assign(&model, file, path)?;
    Ok(model)
}

/// Load weights from `path` into `model` (see the module doc for the names accepted).
pub fn load_into(model: &Clip, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    assign(model, load(path)?, path)
}

fn assign(model: &Clip, file: SafeTensorsFile, path: &Path) -> Result<()> {
    for (name, raw) in &file.raw {
        let short = name.strip_prefix("module.").unwrap_or(name);
        if !ignorable(short) {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{name}` is stored as {} {:?}: model weights must be F32, F16 or \
                     BF16 (F64 is read as f32); only buffers such as num_batches_tracked, \
                     position_ids and attn_mask may be integers",
                    raw.dtype, raw.shape
                ),
            ));
        }
    }
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in file.tensors {
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        if !ignorable(&name) {
            let t = t.try_to_dtype(DType::F32)?;
            check_finite(&t, &name, path)?;
            map.insert(name, t);
        }
    }
    if map
        .keys()
        .any(|k| k.starts_with("vision_model.") || k.starts_with("text_model."))
    {
        map = from_hugging_face(map, path)?;
    }
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for (name, p) in model.named_params() {
        let Some(mut t) = map.remove(&name) else {
            missing.push(name);
            continue;
        };
        let want = p.value().shape().to_vec();
        if name == "logit_scale" && t.numel() == 1 {
            t = t.reshape(want.clone())?;
        }
        if name == "visual.positional_embedding"
            && t.shape() != want
            && matches!(model.visual, VisionTower::Vit(_))
            && t.rank() == 2
            && t.shape()[1] == want[1]
        {
            let new_grid = ((want[0] - 1) as f64).sqrt().round() as usize;
            t = resize_pos_embed(&t, new_grid)?;
        }
        if t.shape() != want {
            wrong.push(format!("{name}: file {:?}, model {:?}", t.shape(), want));
            continue;
        }
        p.set_value(t.to_device(p.value().device())?)?;
    }
    let mut unexpected: Vec<String> = map.into_keys().collect();
    unexpected.sort();
    if missing.is_empty() && unexpected.is_empty() && wrong.is_empty() {
        return Ok(());
    }
    let mut msg = String::from("weights do not fit the model config");
    for (what, list) in [
        ("missing", &missing),
        ("unexpected", &unexpected),
        ("wrong shape", &wrong),
    ] {
        if !list.is_empty() {
            msg += &format!("; {} {what}: {}", list.len(), list.join(", "));
        }
    }
    Err(Error::format(path, msg))
}

/// A weight with NaN or ±inf elements is an error naming the tensor: a model loaded from it
/// would give NaN embeddings and meaningless accuracies without a word (issue 16). (An f64 value
/// beyond f32's range, which `load` makes ±inf, is caught here too.)
pub fn check_finite(t: &Tensor, name: &str, path: &Path) -> Result<()> {
    let stats = t.value_stats()?;
    if stats.non_finite > 0 {
        return Err(Error::format(
            path,
            format!(
                "tensor `{name}` holds non-finite values ({} of its {} elements are NaN or \
                 infinite): the weights are corrupt or come from a diverged run",
                stats.non_finite,
                t.numel()
            ),
        ));
    }
    Ok(())
}

fn take(map: &mut HashMap<String, Tensor>, key: &str, path: &Path) -> Result<Tensor> {
    map.remove(key)
        .ok_or_else(|| Error::format(path, format!("Hugging Face CLIP weights lack `{key}`")))
}

/// Hugging Face `CLIPModel` names → open_clip names (q/k/v packed, projections transposed).
fn from_hugging_face(
    mut hf: HashMap<String, Tensor>,
    path: &Path,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    // (Hugging Face name, open_clip name, stored transposed)
    let mut renames: Vec<(String, String, bool)> = super::hf::FIXED_NAMES
        .iter()
        .map(|(oc, hf, t)| (hf.to_string(), oc.to_string(), *t))
        .collect();
    for (hf_prefix, oc_prefix) in [
        ("text_model.encoder.layers", "transformer.resblocks"),
        (
            "vision_model.encoder.layers",
            "visual.transformer.resblocks",
        ),
    ] {
        for i in 0.. {
            let (h, o) = (format!("{hf_prefix}.{i}"), format!("{oc_prefix}.{i}"));
            if !hf.contains_key(&format!("{h}.layer_norm1.weight")) {
                break;
            }
            for part in ["weight", "bias"] {
                let q = take(&mut hf, &format!("{h}.self_attn.q_proj.{part}"), path)?;
                let k = take(&mut hf, &format!("{h}.self_attn.k_proj.{part}"), path)?;
                let v = take(&mut hf, &format!("{h}.self_attn.v_proj.{part}"), path)?;
                out.insert(
                    format!("{o}.attn.in_proj_{part}"),
                    concat(&[&q, &k, &v], 0)?,
                );
                for (b, a) in super::hf::LAYER_PARTS {
                    renames.push((format!("{h}.{a}.{part}"), format!("{o}.{b}.{part}"), false));
                }
            }
        }
    }
    for (from, to, transpose) in renames {
        let t = take(&mut hf, &from, path)?;
        out.insert(
            to,
            if transpose {
                t.transpose(0, 1)?.try_contiguous()?
            } else {
                t
            },
        );
    }
    // Whatever is left is reported as unexpected by the caller.
    out.extend(hf);
    Ok(out)
}
