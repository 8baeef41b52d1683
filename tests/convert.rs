//! Weights out of clipcu (`clipcu convert`, `clipcu info --weights`), against files that
//! transformers and open_clip loaded (tools/make_zoo_fixtures.py, tests/fixtures/models/zoo):
//! - clipcu → HF: our tensors are exactly the file `CLIPModel.from_pretrained` loaded, with
//!   transformers' own key names and shapes, and our `config.json` agrees with `CLIPConfig`;
//!   reading our HF file back gives the embeddings transformers computed from it within 1e-5
//!   (GELU and QuickGELU);
//! - HF → clipcu → open_clip names: bit-identical to the original open_clip file, and its
//!   embeddings equal what open_clip computed from that converted file within 1e-5;
//! - round trips are bitwise in f32; f16/bf16 outputs have their dtype; optimizer state and
//!   other metadata are left out; a ModifiedResNet is refused for HF with the reason.
mod common;
use clipcu::io::safetensors as st;
use clipcu::model::convert::{self, Format};
use clipcu::model::{load_into, Clip, ClipConfig};
use clipcu::{DType, Graph, Tensor};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "clipcu-convert-{}-{}",
        std::process::id(),
        common::fresh_seed()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    st::load(path).unwrap().into_map()
}

/// Same names, shapes, dtypes and bits.
fn assert_same_tensors(what: &str, a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    let mut ka: Vec<&String> = a.keys().collect();
    let mut kb: Vec<&String> = b.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb, "{what}: names");
    for (n, t) in a {
        let u = &b[n];
        assert_eq!(t.shape(), u.shape(), "{what}: {n} shape");
        assert_eq!(t.dtype(), u.dtype(), "{what}: {n} dtype");
        assert_eq!(t.to_le_bytes(), u.to_le_bytes(), "{what}: {n} bits");
    }
}

fn tiny_vit(quick_gelu: bool) -> ClipConfig {
    let mut c = ClipConfig::load("tiny-vit").unwrap();
    c.quick_gelu = quick_gelu;
    c
}

fn ids_of(t: &Tensor) -> Vec<u32> {
    t.to_vec().iter().map(|&v| v as u32).collect()
}

fn embeds(model: &Clip) -> (Tensor, Tensor) {
    let io = st::load(fixture("tiny-vit-io.safetensors")).unwrap();
    let (images, ids) = (io.get("images").unwrap(), io.get("text_ids").unwrap());
    let g = Graph::inference();
    let img = model
        .encode_image(&g, &g.constant(images.clone()))
        .unwrap()
        .into_tensor();
    let txt = model
        .encode_text(&g, &ids_of(ids), ids.shape()[0])
        .unwrap()
        .into_tensor();
    (img, txt)
}

fn check(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let err = got.rel_err(want);
    assert!(err <= 1e-5, "{what}: relative error {err:.3e} > 1e-5");
}

/// tiny-vit.safetensors (open_clip names) → a clipcu file (with `cfg`) → `format`.
fn chain(dir: &Path, cfg: &ClipConfig, format: Format, out: &Path) {
    let ours = dir.join("ours.safetensors");
    convert::convert(
        &fixture("tiny-vit.safetensors"),
        &ours,
        Format::Clipcu,
        None,
        Some(cfg),
    )
    .unwrap();
    let (_, source, dtype) = convert::convert(&ours, out, format, None, None).unwrap();
    assert_eq!(source, convert::ConfigSource::Metadata);
    assert_eq!(dtype, DType::F32);
}

/// Every key we write that transformers' `CLIPConfig.to_dict()` has (non-null) has its value.
fn agrees_with(ours: &Value, hf: &Value, path: &str, compared: &mut usize) {
    let (Some(o), Some(h)) = (ours.as_object(), hf.as_object()) else {
        return;
    };
    for (k, v) in o {
        let Some(hv) = h.get(k) else { continue };
        if hv.is_null() {
            continue; // (architectures, dtype: not set on a config that was never saved)
        }
        let p = format!("{path}{k}");
        if v.is_object() {
            agrees_with(v, hv, &format!("{p}."), compared);
        } else if let (Some(a), Some(b)) = (v.as_f64(), hv.as_f64()) {
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                "{p}: ours {a}, transformers {b}"
            );
            *compared += 1;
        } else {
            assert_eq!(v, hv, "{p}");
            *compared += 1;
        }
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn clipcu_to_hf_is_what_transformers_loaded() {
    let dir = tmpdir();
    let zoo = fixture("zoo");
    let keys: BTreeMap<String, Vec<usize>> =
        serde_json::from_value(read_json(&zoo.join("hf-keys.json"))).unwrap();
    let loaded = tensors(&zoo.join("hf/model.safetensors"));
    for (quick, config_fixture) in [(false, "config.json"), (true, "config-quickgelu.json")] {
        let d = dir.join(format!("hf-{quick}"));
        std::fs::create_dir_all(&d).unwrap();
        let out = d.join("model.safetensors");
        chain(&dir, &tiny_vit(quick), Format::HuggingFace, &out);
        let ours = tensors(&out);
        // (a) transformers' own names and shapes, and the exact tensors from_pretrained loaded
        let got: BTreeMap<String, Vec<usize>> = ours
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec()))
            .collect();
        assert_eq!(
            got, keys,
            "names and shapes of CLIPModel(config).state_dict()"
        );
        assert_same_tensors("HF file", &ours, &loaded);
        let cfg_json = read_json(&d.join("config.json"));
        assert_eq!(cfg_json, read_json(&zoo.join("hf").join(config_fixture)));
        let act = if quick { "quick_gelu" } else { "gelu" };
        for tower in ["text_config", "vision_config"] {
            assert_eq!(cfg_json[tower]["hidden_act"], act);
        }
        if !quick {
            // (the fixture is the GELU model's CLIPConfig)
            let mut compared = 0;
            let hf = read_json(&zoo.join("hf-config.json"));
            agrees_with(&cfg_json, &hf, "", &mut compared);
            assert!(compared >= 25, "only {compared} config keys compared");
        }
        // (b) read back (config from config.json), it gives transformers' embeddings
        let (model, source) = convert::load_any(&out, None).unwrap();
        assert!(matches!(source, convert::ConfigSource::HfConfigJson(_)));
        assert_eq!(model.config, tiny_vit(quick));
        let (img, txt) = embeds(&model);
        let hf = st::load(zoo.join("hf-embeds.safetensors")).unwrap();
        let s = if quick { "-quickgelu" } else { "" };
        check(
            &format!("image{s} vs transformers"),
            &img,
            hf.get(&format!("image_embeds{s}")).unwrap(),
        );
        check(
            &format!("text{s} vs transformers"),
            &txt,
            hf.get(&format!("text_embeds{s}")).unwrap(),
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn hf_to_clipcu_to_open_clip_is_what_open_clip_loaded() {
    let dir = tmpdir();
    let want = st::load(fixture("zoo/open_clip-embeds.safetensors")).unwrap();
    for quick in [false, true] {
        let cfg = tiny_vit(quick);
        let ours = dir.join("from-hf.safetensors");
        let oc = dir.join("open_clip.safetensors");
        convert::convert(
            &fixture("tiny-vit-hf.safetensors"),
            &ours,
            Format::Clipcu,
            None,
            Some(&cfg),
        )
        .unwrap();
        let meta = st::load(&ours).unwrap().metadata;
        let act = if quick { "quick_gelu" } else { "gelu" };
        assert_eq!(meta.get("clipcu.activation").map(String::as_str), Some(act));
        convert::convert(&ours, &oc, Format::OpenClip, None, None).unwrap();
        let file = st::load(&oc).unwrap();
        assert!(
            file.metadata.is_empty(),
            "open_clip output carries metadata: {:?}",
            file.metadata
        );
        // the very tensors open_clip's load_state_dict(strict=True) took in the fixture script
        assert_same_tensors(
            "HF → clipcu → open_clip",
            &file.into_map(),
            &tensors(&fixture("tiny-vit.safetensors")),
        );
        let model = Clip::new(&cfg, 9);
        load_into(&model, &oc).unwrap();
        let (img, txt) = embeds(&model);
        let s = if quick { "-quickgelu" } else { "" };
        check(
            &format!("image{s} vs open_clip"),
            &img,
            want.get(&format!("image_embeds{s}")).unwrap(),
        );
        check(
            &format!("text{s} vs open_clip"),
            &txt,
            want.get(&format!("text_embeds{s}")).unwrap(),
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn round_trips_are_bitwise_in_f32() {
    let dir = tmpdir();
    for (name, via) in [
        ("tiny-vit", Format::HuggingFace),
        ("tiny-vit", Format::Clipcu),
        ("tiny-rn", Format::Clipcu),
        ("tiny-rn", Format::OpenClip),
    ] {
        let cfg = ClipConfig::load(name).unwrap();
        let src = fixture(&format!("{name}.safetensors"));
        let sub = dir.join(format!("{name}-{via}"));
        std::fs::create_dir_all(&sub).unwrap();
        let mid = sub.join("model.safetensors");
        let back = sub.join("back.safetensors");
        convert::convert(&src, &mid, via, None, Some(&cfg)).unwrap();
        convert::convert(&mid, &back, Format::OpenClip, None, Some(&cfg)).unwrap();
        assert_same_tensors(
            &format!("{name}: open_clip → {via} → open_clip"),
            &tensors(&back),
            &tensors(&src),
        );
        // and once more through clipcu: its file equals a straight clipcu conversion
        let c1 = sub.join("c1.safetensors");
        let c2 = sub.join("c2.safetensors");
        convert::convert(&src, &c1, Format::Clipcu, None, Some(&cfg)).unwrap();
        convert::convert(&back, &c2, Format::Clipcu, None, Some(&cfg)).unwrap();
        assert_eq!(
            std::fs::read(&c1).unwrap(),
            std::fs::read(&c2).unwrap(),
            "{name} via {via}: clipcu files differ"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn half_precision_outputs_have_their_dtype() {
    let dir = tmpdir();
    let cfg = ClipConfig::load("tiny-vit").unwrap();
    let src = fixture("tiny-vit.safetensors");
    let f32s = tensors(&src);
    for dtype in [DType::F16, DType::BF16] {
        for format in [Format::OpenClip, Format::HuggingFace, Format::Clipcu] {
            let sub = dir.join(format!("{}-{format}", dtype.as_str()));
            std::fs::create_dir_all(&sub).unwrap();
            let out = sub.join("model.safetensors");
            let (_, _, d) = convert::convert(&src, &out, format, Some(dtype), Some(&cfg)).unwrap();
            assert_eq!(d, dtype);
            for (n, t) in tensors(&out) {
                assert_eq!(t.dtype(), dtype, "{format} {n}");
            }
            if format == Format::HuggingFace {
                let j = read_json(&sub.join("config.json"));
                let want = if dtype == DType::F16 {
                    "float16"
                } else {
                    "bfloat16"
                };
                assert_eq!(j["torch_dtype"], want);
                assert_eq!(j["dtype"], want);
            }
            // back to open_clip: the input's dtype is kept (no --dtype), values are the rounded f32s
            let back = sub.join("back.safetensors");
            let (_, _, d) =
                convert::convert(&out, &back, Format::OpenClip, None, Some(&cfg)).unwrap();
            assert_eq!(d, dtype, "the default dtype is the input's");
            let back = tensors(&back);
            for (n, t) in &f32s {
                assert_eq!(
                    back[n].to_le_bytes(),
                    t.to_dtype(dtype).to_le_bytes(),
                    "{format} {n}"
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resnets_are_refused_for_hf_and_optimizer_state_is_left_out() {
    let dir = tmpdir();
    let cfg = ClipConfig::load("tiny-rn").unwrap();
    let out = dir.join("rn-hf.safetensors");
    let e = convert::convert(
        &fixture("tiny-rn.safetensors"),
        &out,
        Format::HuggingFace,
        None,
        Some(&cfg),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("ModifiedResNet") && e.contains("CLIPModel"),
        "{e}"
    );
    assert!(
        !out.exists() && !dir.join("config.json").exists(),
        "something was written"
    );

    // a training checkpoint: model tensors, optimizer moments and run metadata
    let model = Clip::new(&cfg, 4);
    load_into(&model, fixture("tiny-rn.safetensors")).unwrap();
    let mut ts: Vec<(String, Tensor)> = model
        .named_params()
        .iter()
        .map(|(n, p)| (n.clone(), p.value()))
        .collect();
    ts.push((
        "optim.m.visual.conv1.weight".into(),
        Tensor::ones([2, 3, 3, 3]),
    ));
    ts.push(("optim.step".into(), Tensor::scalar(7.0)));
    let refs: Vec<(&str, &Tensor)> = ts.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut meta = convert::clipcu_metadata(&cfg);
    meta.insert("clipcu.step".into(), "7".into());
    let ckpt = dir.join("ckpt.safetensors");
    st::save(&ckpt, &refs, &meta).unwrap();
    for format in [Format::OpenClip, Format::Clipcu] {
        let out = dir.join(format!("out-{format}.safetensors"));
        convert::convert(&ckpt, &out, format, None, None).unwrap();
        let f = st::load(&out).unwrap();
        assert!(
            f.tensors.iter().all(|(n, _)| !n.starts_with("optim.")),
            "{format}: optimizer state written"
        );
        assert_eq!(f.tensors.len(), ts.len() - 2);
        assert!(
            !f.metadata.contains_key("clipcu.step"),
            "{format}: run metadata carried over"
        );
        if format == Format::Clipcu {
            assert_eq!(f.metadata, convert::clipcu_metadata(&cfg));
        }
    }
    // no config anywhere: an error asking for one
    let e = convert::convert(
        &fixture("tiny-vit.safetensors"),
        &dir.join("x.safetensors"),
        Format::Clipcu,
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--config"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

fn clipcu() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clipcu"))
}

/// `clipcu info --weights FILE [args]`: (success, stdout + stderr).
fn info(file: &Path, args: &[&str]) -> (bool, String) {
    let out = clipcu()
        .arg("info")
        .arg("--weights")
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn assert_has(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "output lacks `{n}`:\n{text}");
    }
}

#[test]
fn info_describes_open_clip_hf_clipcu_and_bad_files() {
    let dir = tmpdir();
    // open_clip names, no config: implied by the shapes (tiny-vit), activation unknown
    let (ok, t) = info(&fixture("tiny-vit.safetensors"), &[]);
    assert!(ok, "{t}");
    assert_has(
        &t,
        &[
            "naming: open_clip",
            "dtype: f32 (62 tensors)",
            "174721 parameters", // open_clip's count (param-counts.json)
            "matches shipped config: tiny-vit",
            "image tower: ViT: width 64, 2 layers, 2 heads, patch 8, image 32",
            "vocab 1000, context 16",
            "embed dim 32",
            "does not record it",
            "keys: all 62 fit the config",
        ],
    );
    // a ResNet with BatchNorm buffers
    let (ok, t) = info(&fixture("tiny-rn.safetensors"), &[]);
    assert!(ok, "{t}");
    assert_has(
        &t,
        &[
            "145891 parameters",
            "ModifiedResNet: width 4, layers [1, 1, 1, 1]",
            "image 64",
            "tiny-rn",
        ],
    );
    // HF names: the fixture made by transformers' CLIPModel names (no config.json beside it)
    let (ok, t) = info(&fixture("tiny-vit-hf.safetensors"), &[]);
    assert!(ok, "{t}");
    assert_has(
        &t,
        &[
            "naming: hf",
            "174721 parameters",
            "matches shipped config: tiny-vit",
            "keys: all 78 fit",
        ],
    );
    // ... and with config.json beside it (what convert writes): the config comes from there
    let (ok, t) = info(&fixture("zoo/hf/model.safetensors"), &[]);
    assert!(ok, "{t}");
    assert_has(
        &t,
        &[
            "naming: hf",
            "config: from",
            "config.json",
            "activation gelu\n",
        ],
    );
    // ours, in bf16, QuickGELU: config and activation from the metadata
    let ours = dir.join("ours.safetensors");
    let cfg_path = dir.join("tiny-vit-quickgelu.json");
    std::fs::write(&cfg_path, tiny_vit(true).to_json()).unwrap();
    let o = clipcu()
        .arg("convert")
        .arg(fixture("tiny-vit.safetensors"))
        .args(["--to", "clipcu", "--dtype", "bf16", "--config"])
        .arg(&cfg_path)
        .arg("--out")
        .arg(&ours)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (ok, t) = info(&ours, &[]);
    assert!(ok, "{t}");
    assert_has(
        &t,
        &[
            "naming: clipcu",
            "dtype: bf16 (62 tensors)",
            "config: from the file's clipcu metadata",
            "activation quick_gelu\n",
            "keys: all 62 fit",
        ],
    );
    // a wrong, a missing and an extra key, and against a named config that does not fit
    let mut ts: Vec<(String, Tensor)> = st::load(fixture("tiny-vit.safetensors"))
        .unwrap()
        .tensors
        .into_iter()
        .filter(|(n, _)| n != "ln_final.bias")
        .collect();
    for (n, t) in ts.iter_mut() {
        if n == "visual.proj" {
            *t = Tensor::zeros([64, 16]);
        }
    }
    ts.push(("visual.extra_head.weight".into(), Tensor::zeros([2])));
    let refs: Vec<(&str, &Tensor)> = ts.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bad = dir.join("bad.safetensors");
    st::save(&bad, &refs, &BTreeMap::new()).unwrap();
    let (ok, t) = info(&bad, &["--config", "tiny-vit"]);
    assert!(ok, "{t}");
    assert_has(
        &t,
        &[
            "config: tiny-vit (given)",
            "missing (1):\n  ln_final.bias",
            "unexpected (1):\n  visual.extra_head.weight",
            "wrong shape (1):\n  visual.proj: file [64, 16], config [64, 32]",
            "matches shipped config: none",
        ],
    );
    let (ok, t) = info(&bad, &[]);
    assert!(ok, "{t}");
    assert_has(
        &t,
        &[
            "inferred from the shapes",
            "missing (1):\n  ln_final.bias",
            "unexpected (1):\n  visual.extra_head.weight",
        ],
    );
    // unreadable files: clear errors, no panic
    for (path, needle) in [
        (dir.join("none.safetensors"), "No such file"),
        (fixture("photo-80x60.png"), "not a safetensors file"),
        (dir.clone(), "directory"),
    ] {
        let (ok, t) = info(&path, &[]);
        assert!(!ok, "{t}");
        assert_has(&t, &["error: ", needle]);
        assert!(!t.contains("panicked"), "{t}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn convert_cli_writes_hf_and_refuses_to_overwrite() {
    let dir = tmpdir().join("new-folder");
    let out = dir.join("model.safetensors");
    let run = |extra: &[&str]| {
        clipcu()
            .arg("convert")
            .arg(fixture("tiny-vit-hf.safetensors"))
            .args(["--to", "hf", "--config", "tiny-vit", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("config.json"));
    assert_same_tensors(
        "CLI HF output",
        &tensors(&out),
        &tensors(&fixture("tiny-vit-hf.safetensors")),
    );
    assert_eq!(
        read_json(&dir.join("config.json")),
        read_json(&fixture("zoo/hf/config.json"))
    );
    let o = run(&[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--overwrite"));
    assert!(run(&["--overwrite"]).status.success());
    // out = in is refused even with --overwrite
    let o = clipcu()
        .arg("convert")
        .arg(&out)
        .args(["--to", "open_clip", "--overwrite", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("same file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::remove_dir_all(dir.parent().unwrap()).ok();
}

#[test]
fn hf_config_json_round_trips_and_hub_defaults_are_transformers() {
    use clipcu::model::hf::{config_from_hf_json, hf_config_json};
    for name in ClipConfig::builtin_names() {
        let cfg = ClipConfig::load(name).unwrap();
        if cfg.is_resnet() {
            continue;
        }
        let text = hf_config_json(&cfg, DType::F32).to_string();
        assert_eq!(config_from_hf_json(&text, name).unwrap(), cfg, "{name}");
    }
    // keys a Hub config leaves out take transformers' defaults: those are OpenAI's ViT-B/32
    let minimal = r#"{"text_config": {"hidden_act": "quick_gelu"}, "vision_config": {"hidden_act": "quick_gelu"}}"#;
    assert_eq!(
        config_from_hf_json(minimal, "minimal").unwrap(),
        ClipConfig::load("ViT-B-32-quickgelu").unwrap()
    );
    for (text, needle) in [
        (r#"{"vision_config": {}}"#, "text_config"),
        (
            r#"{"text_config": {"hidden_act": "gelu"}, "vision_config": {"hidden_act": "quick_gelu"}}"#,
            "the same in both towers",
        ),
        (
            r#"{"text_config": {"hidden_act": "relu"}, "vision_config": {"hidden_act": "relu"}}"#,
            "relu",
        ),
        (
            r#"{"text_config": {"hidden_size": -1}, "vision_config": {}}"#,
            "text_config.hidden_size",
        ),
        ("not json", "not valid JSON"),
    ] {
        let e = config_from_hf_json(text, "c.json").unwrap_err().to_string();
        assert!(e.contains(needle), "{text}: {e}");
    }
}

/// A checkpoint exactly as torch writes it (int64 `num_batches_tracked` beside the floats):
/// `info` lists the integer buffers as skipped and the rest as fitting tiny-rn; `convert` writes
/// the float weights, bit for bit those of tiny-rn.safetensors.
#[test]
fn torch_state_dict_with_integer_buffers_is_described_and_converted() {
    let dir = tmpdir();
    let src = fixture("tiny-rn-torch-state-dict.safetensors");
    let (ok, t) = info(&src, &[]);
    assert!(ok, "{t}");
    assert_has(
        &t,
        &[
            "naming: open_clip",
            "dtype: f32 (134 tensors)",
            "145891 parameters",
            "keys skipped on load",
            "matches shipped config: tiny-rn",
            "keys: all 134 fit",
        ],
    );
    let out = dir.join("rn.safetensors");
    let cfg = ClipConfig::load("tiny-rn").unwrap();
    convert::convert(&src, &out, Format::OpenClip, None, Some(&cfg)).unwrap();
    assert_same_tensors(
        "torch state dict → open_clip",
        &tensors(&out),
        &tensors(&fixture("tiny-rn.safetensors")),
    );
    std::fs::remove_dir_all(&dir).ok();
}
