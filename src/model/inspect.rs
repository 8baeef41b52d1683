//! What a weights file is (`clipcu info --weights FILE`): its naming scheme, the config it
//! implies, its dtypes and parameter count, and the keys that are missing, unexpected or of the
//! wrong shape against a named (or the implied) config. Only the safetensors header is read, so
//! a multi-gigabyte checkpoint is described at once, and tensors of any dtype are listed.
//!
//! The implied config: a clipcu file's own (metadata); else a transformers `config.json` beside
//! a file in Hugging Face names; else one inferred from the shapes — widths, layer counts, patch
//! and image size, embed dim, vocabulary and context — matched against the shipped configs
//! (`assets/models`). The activation and the head counts are not in the shapes: an inferred
//! config that matches no shipped one assumes 64-wide heads, and the report says so.

use super::config::{ClipConfig, VisionLayers};
use super::convert::{expected_tensors, is_buffer_name, Format, TensorSpec};
use super::hf;
use super::weights::ignorable;
use super::weights::CONFIG_KEY;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

/// One tensor as the header describes it.
#[derive(Clone, Debug)]
pub struct HeaderEntry {
    pub name: String,
    /// safetensors' spelling: `F32`, `F16`, `BF16`, `I64`, ...
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// The header of a safetensors file: tensors (sorted by name) and metadata.
#[derive(Clone, Debug, Default)]
pub struct Header {
    pub entries: Vec<HeaderEntry>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads (and validates, as the loader does: offsets, sizes, the file's length) the header of a
/// safetensors file, without reading the tensors.
pub fn read_header(path: &Path) -> Result<Header> {
    let (tensors, metadata) = crate::io::safetensors::read_header(path)?;
    let mut entries: Vec<HeaderEntry> = tensors
        .into_iter()
        .map(|(name, dtype, shape)| HeaderEntry { name, dtype, shape })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Header { entries, metadata })
}

fn strip(name: &str) -> &str {
    name.strip_prefix("module.").unwrap_or(name)
}

/// The naming scheme of a file: clipcu when its metadata has a clipcu config, Hugging Face when
/// it has `vision_model.*`/`text_model.*` keys, else open_clip.
pub fn naming_of(h: &Header) -> Format {
    if h.metadata.contains_key(CONFIG_KEY) {
        Format::Clipcu
    } else if h.entries.iter().any(|e| {
        let n = strip(&e.name);
        n.starts_with("vision_model.") || n.starts_with("text_model.")
    }) {
        Format::HuggingFace
    } else {
        Format::OpenClip
    }
}

/// The file's weight tensors (prefix stripped, skipped keys dropped) as open_clip names and
/// shapes; a Hugging Face file's are mapped back (its unknown keys kept as they are).
fn open_clip_shapes(h: &Header, naming: Format) -> HashMap<String, Vec<usize>> {
    let mut out = HashMap::new();
    for e in &h.entries {
        let n = strip(&e.name);
        if ignorable(n) {
            continue;
        }
        if naming == Format::HuggingFace {
            if let Some((o, s)) = hf::open_clip_spec(n, &e.shape) {
                out.insert(o, s);
                continue;
            }
        }
        out.insert(n.to_string(), e.shape.clone());
    }
    out
}

fn count_layers(shapes: &HashMap<String, Vec<usize>>, prefix: &str) -> usize {
    (0..)
        .take_while(|i| shapes.contains_key(&format!("{prefix}.{i}.ln_1.weight")))
        .count()
}

fn dim(shapes: &HashMap<String, Vec<usize>>, name: &str, axis: usize) -> Result<usize> {
    shapes
        .get(name)
        .and_then(|s| s.get(axis).copied())
        .ok_or_else(|| Error::Msg(format!("`{name}` is missing or has too few dimensions")))
}

fn ratio(shapes: &HashMap<String, Vec<usize>>, prefix: &str, width: usize) -> f64 {
    shapes
        .get(&format!("{prefix}.0.mlp.c_fc.weight"))
        .and_then(|s| s.first())
        .map_or(4.0, |&m| m as f64 / width.max(1) as f64)
}

/// A config built from the shapes alone (open_clip names); heads 64 wide and GELU assumed.
fn infer_config(shapes: &HashMap<String, Vec<usize>>) -> Result<ClipConfig> {
    let tw = dim(shapes, "token_embedding.weight", 1)?;
    let vocab = dim(shapes, "token_embedding.weight", 0)?;
    let ctx = dim(shapes, "positional_embedding", 0)?;
    let embed = dim(shapes, "text_projection", 1)?;
    let tlayers = count_layers(shapes, "transformer.resblocks");
    let heads = if tw >= 64 && tw % 64 == 0 { tw / 64 } else { 1 };
    let text = serde_json::json!({
        "context_length": ctx, "vocab_size": vocab, "width": tw, "heads": heads,
        "layers": tlayers, "mlp_ratio": ratio(shapes, "transformer.resblocks", tw),
    });
    let vision = if shapes.contains_key("visual.attnpool.positional_embedding") {
        let w = dim(shapes, "visual.conv3.weight", 0)?;
        let layers: Vec<usize> = (1..=4)
            .map(|i| {
                (0..)
                    .take_while(|b| {
                        shapes.contains_key(&format!("visual.layer{i}.{b}.conv1.weight"))
                    })
                    .count()
            })
            .collect();
        let n = dim(shapes, "visual.attnpool.positional_embedding", 0)?;
        let s = ((n.saturating_sub(1)) as f64).sqrt().round() as usize;
        serde_json::json!({"image_size": s * 32, "layers": layers, "width": w, "patch_size": null})
    } else {
        let w = dim(shapes, "visual.conv1.weight", 0)?;
        let p = dim(shapes, "visual.conv1.weight", 2)?;
        let n = dim(shapes, "visual.positional_embedding", 0)?;
        let g = ((n.saturating_sub(1)) as f64).sqrt().round() as usize;
        let hw = if w % 64 == 0 { 64 } else { w };
        serde_json::json!({
            "image_size": g * p, "layers": count_layers(shapes, "visual.transformer.resblocks"),
            "width": w, "patch_size": p, "head_width": hw,
            "mlp_ratio": ratio(shapes, "visual.transformer.resblocks", w),
        })
    };
    let cfg = serde_json::json!({"embed_dim": embed, "vision_cfg": vision, "text_cfg": text});
    ClipConfig::from_json(&cfg.to_string(), "the config inferred from the shapes")
}

/// The shipped configs whose tensors have exactly these names and shapes.
pub fn matching_builtins(shapes: &HashMap<String, Vec<usize>>) -> Vec<&'static str> {
    ClipConfig::builtin_names()
        .into_iter()
        .filter(|name| {
            let Ok(cfg) = ClipConfig::load(name) else {
                return false;
            };
            let specs = expected_tensors(&cfg);
            specs.len() == shapes.len()
                && specs.iter().all(|s| {
                    shapes.get(&s.name).is_some_and(|shape| {
                        *shape == s.shape
                            || (s.name == "logit_scale" && shape.iter().product::<usize>() == 1)
                    })
                })
        })
        .collect()
}

/// Where the config a report checks against came from.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigOrigin {
    /// Named by the caller (`--config NAME`).
    Given(String),
    /// The file's clipcu metadata.
    Metadata,
    /// A transformers `config.json` beside the file.
    HfConfigJson(String),
    /// The shapes equal a shipped config's (all the names listed match: twins differ only in
    /// the activation, which the file does not record).
    Shipped(Vec<&'static str>),
    /// Inferred from the shapes, matching no shipped config (heads assumed 64 wide, GELU).
    Inferred,
}

/// What `clipcu info --weights` says about a file.
#[derive(Clone, Debug)]
pub struct Report {
    pub path: String,
    pub naming: Format,
    pub config: Option<ClipConfig>,
    pub origin: Option<ConfigOrigin>,
    /// Why no config could be implied (when `config` is `None`).
    pub config_error: Option<String>,
    /// The shipped configs whose shapes the file's tensors have.
    pub matches: Vec<&'static str>,
    /// Tensors per dtype (weights only; skipped keys not counted).
    pub dtypes: BTreeMap<String, usize>,
    /// Weight tensors, parameters (PyTorch's count) and buffer elements in the file.
    pub tensors: usize,
    pub parameters: u128,
    pub buffer_elements: u128,
    /// Keys skipped on load (optimizer state, counters, ...).
    pub skipped: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// `name: file [..], config [..]`.
    pub wrong_shape: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

impl Report {
    /// The file fits the config: nothing missing, unexpected or of the wrong shape.
    pub fn fits(&self) -> bool {
        self.config.is_some()
            && self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.wrong_shape.is_empty()
    }
}

/// Describes the weights file `path`, checked against `config` (a name and its config) when
/// given, else against the config the file implies.
pub fn inspect(path: &Path, config: Option<(&str, ClipConfig)>) -> Result<Report> {
    let header = read_header(path)?;
    let naming = naming_of(&header);
    let shapes = open_clip_shapes(&header, naming);
    let matches = matching_builtins(&shapes);
    let mut config_error = None;
    let (cfg, origin) = if let Some((name, c)) = config {
        (Some(c), Some(ConfigOrigin::Given(name.to_string())))
    } else if let Some(j) = header.metadata.get(CONFIG_KEY) {
        let src = format!("{} (metadata {CONFIG_KEY})", path.display());
        match ClipConfig::from_json(j, &src) {
            Ok(c) => (Some(c), Some(ConfigOrigin::Metadata)),
            Err(e) => {
                config_error = Some(e.to_string());
                (None, None)
            }
        }
    } else if naming == Format::HuggingFace && hf::config_json_beside(path).exists() {
        let json = hf::config_json_beside(path);
        let src = json.display().to_string();
        match std::fs::read_to_string(&json)
            .map_err(|e| Error::io(&json, e))
            .and_then(|t| hf::config_from_hf_json(&t, &src))
        {
            Ok(c) => (Some(c), Some(ConfigOrigin::HfConfigJson(src))),
            Err(e) => {
                config_error = Some(e.to_string());
                (None, None)
            }
        }
    } else if let Some(first) = matches.first() {
        (
            ClipConfig::load(first).ok(),
            Some(ConfigOrigin::Shipped(matches.clone())),
        )
    } else {
        match infer_config(&shapes) {
            Ok(c) => (Some(c), Some(ConfigOrigin::Inferred)),
            Err(e) => {
                config_error = Some(format!(
                    "no CLIP config can be inferred from the shapes: {e}"
                ));
                (None, None)
            }
        }
    };

    let mut dtypes = BTreeMap::new();
    let (mut tensors, mut parameters, mut buffer_elements, mut skipped) = (0, 0u128, 0u128, 0);
    for e in &header.entries {
        if ignorable(strip(&e.name)) {
            skipped += 1;
            continue;
        }
        tensors += 1;
        *dtypes.entry(e.dtype.clone()).or_insert(0) += 1;
        let n: u128 = e.shape.iter().map(|&d| d as u128).product();
        if is_buffer_name(&e.name) {
            buffer_elements += n;
        } else {
            parameters += n;
        }
    }

    let (mut missing, mut unexpected, mut wrong_shape) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(cfg) = &cfg {
        let specs = expected_tensors(cfg);
        // compare in the file's own names
        let expected: Vec<TensorSpec> = if naming == Format::HuggingFace {
            let (mut h, rest) = hf::hf_specs(&specs);
            h.extend(rest); // a ResNet config against an HF file: its names stay open_clip's
            h
        } else {
            specs
        };
        let file: HashMap<&str, &[usize]> = header
            .entries
            .iter()
            .filter(|e| !ignorable(strip(&e.name)))
            .map(|e| (strip(&e.name), e.shape.as_slice()))
            .collect();
        for s in &expected {
            match file.get(s.name.as_str()) {
                None => missing.push(s.name.clone()),
                Some(shape) => {
                    let scalar_ok = s.name == "logit_scale" && shape.iter().product::<usize>() == 1;
                    if *shape != s.shape.as_slice() && !scalar_ok {
                        wrong_shape.push(format!(
                            "{}: file {:?}, config {:?}",
                            s.name, shape, s.shape
                        ));
                    }
                }
            }
        }
        let names: std::collections::HashSet<&str> =
            expected.iter().map(|s| s.name.as_str()).collect();
        unexpected = file
            .keys()
            .filter(|k| !names.contains(*k))
            .map(|k| k.to_string())
            .collect();
        unexpected.sort();
        missing.sort();
        wrong_shape.sort();
    }
    Ok(Report {
        path: path.display().to_string(),
        naming,
        config: cfg,
        origin,
        config_error,
        matches,
        dtypes,
        tensors,
        parameters,
        buffer_elements,
        skipped,
        missing,
        unexpected,
        wrong_shape,
        metadata: header.metadata,
    })
}

fn config_line(c: &ClipConfig, activation_known: bool) -> String {
    let v = &c.vision_cfg;
    let t = &c.text_cfg;
    let vision = match &v.layers {
        VisionLayers::Vit(n) => format!(
            "ViT: width {}, {n} layers, {} heads, patch {}, image {}",
            v.width,
            v.width / v.head_width.max(1),
            v.patch_size.unwrap_or(0),
            v.image_size
        ),
        VisionLayers::ResNet(ls) => format!(
            "ModifiedResNet: width {}, layers {ls:?}, {} attention-pool heads, image {}",
            v.width,
            v.width * 32 / v.head_width.max(1),
            v.image_size
        ),
    };
    format!(
        "  image tower: {vision}\n  text tower: width {}, {} layers, {} heads, vocab {}, context {}\n  embed dim {}, activation {}{}",
        t.width,
        t.layers,
        t.heads,
        t.vocab_size,
        t.context_length,
        c.embed_dim,
        if c.quick_gelu { "quick_gelu" } else { "gelu" },
        if activation_known {
            ""
        } else {
            " (assumed: the file does not record it)"
        }
    )
}

fn list(f: &mut fmt::Formatter<'_>, what: &str, items: &[String]) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 20;
    writeln!(f, "{what} ({}):", items.len())?;
    for i in items.iter().take(SHOWN) {
        writeln!(f, "  {i}")?;
    }
    if items.len() > SHOWN {
        writeln!(f, "  ... and {} more", items.len() - SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file: {}", self.path)?;
        let naming = match self.naming {
            Format::OpenClip => "open_clip (open_clip / OpenAI key names, no clipcu config)",
            Format::HuggingFace => "hf (Hugging Face CLIPModel key names)",
            Format::Clipcu => "clipcu (open_clip key names, config in the metadata)",
        };
        writeln!(f, "naming: {naming}")?;
        let dtypes: Vec<String> = self
            .dtypes
            .iter()
            .map(|(d, n)| format!("{} ({n} tensors)", d.to_lowercase()))
            .collect();
        writeln!(f, "dtype: {}", dtypes.join(", "))?;
        writeln!(
            f,
            "tensors: {} ({} parameters{}){}",
            self.tensors,
            self.parameters,
            if self.buffer_elements > 0 {
                format!(", {} buffer elements", self.buffer_elements)
            } else {
                String::new()
            },
            if self.skipped > 0 {
                format!(
                    "; {} keys skipped on load (optimizer state, counters)",
                    self.skipped
                )
            } else {
                String::new()
            }
        )?;
        if self.matches.is_empty() {
            writeln!(f, "matches shipped config: none")?;
        } else {
            writeln!(f, "matches shipped config: {}", self.matches.join(", "))?;
        }
        match (&self.config, &self.origin) {
            (Some(c), Some(origin)) => {
                let from = match origin {
                    ConfigOrigin::Given(n) => format!("config: {n} (given)"),
                    ConfigOrigin::Metadata => "config: from the file's clipcu metadata".into(),
                    ConfigOrigin::HfConfigJson(p) => format!("config: from {p}"),
                    ConfigOrigin::Shipped(names) => format!(
                        "config: implied by the shapes, {}{}",
                        names.join(" / "),
                        if names.len() > 1 {
                            " (the activation is not recorded in the file: give --config)"
                        } else {
                            ""
                        }
                    ),
                    ConfigOrigin::Inferred => "config: inferred from the shapes (matches no \
                        shipped config; heads assumed 64 wide and the activation unknown)"
                        .into(),
                };
                writeln!(f, "{from}")?;
                let known = !matches!(origin, ConfigOrigin::Shipped(_) | ConfigOrigin::Inferred);
                writeln!(f, "{}", config_line(c, known))?;
            }
            _ => writeln!(
                f,
                "config: none ({})",
                self.config_error.as_deref().unwrap_or("unknown")
            )?,
        }
        if self.config.is_some() {
            if self.fits() {
                writeln!(f, "keys: all {} fit the config", self.tensors)?;
            } else {
                list(f, "missing", &self.missing)?;
                list(f, "unexpected", &self.unexpected)?;
                list(f, "wrong shape", &self.wrong_shape)?;
            }
        }
        Ok(())
    }
}
