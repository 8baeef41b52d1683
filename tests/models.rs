//! CLIP models against open_clip: fixtures from `tools/make_fixtures.py` (random weights, fixed
//! seeds) in tests/fixtures/models. Embeddings must match open_clip's fp32 outputs within 1e-5
//! relative error; weights load under open_clip and Hugging Face names alike.
mod common;
use clipcu::io::safetensors as st;
use clipcu::model::{load_clip, load_into, save_clip, Clip, ClipConfig};
use clipcu::nn::Module;
use clipcu::{DType, Graph, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn io(name: &str) -> st::SafeTensorsFile {
    st::load(fixture(&format!("{name}-io.safetensors"))).unwrap()
}

fn ids_of(t: &Tensor) -> Vec<u32> {
    t.to_vec().iter().map(|&v| v as u32).collect()
}

fn embeds(model: &Clip, images: &Tensor, ids: &Tensor) -> (Tensor, Tensor) {
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

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "clipcu-models-{}-{}",
        std::process::id(),
        common::fresh_seed()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn check(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let err = got.rel_err(want);
    assert!(err <= tol, "{what}: relative error {err:.3e} > {tol:.0e}");
}

#[test]
fn vit_matches_open_clip_gelu_and_quickgelu() {
    let f = io("tiny-vit");
    let (images, ids) = (f.get("images").unwrap(), f.get("text_ids").unwrap());
    let mut cfg = ClipConfig::load("tiny-vit").unwrap();
    for (suffix, quick) in [("", false), ("-quickgelu", true)] {
        cfg.quick_gelu = quick;
        let model = Clip::new(&cfg, 1);
        load_into(&model, fixture("tiny-vit.safetensors")).unwrap();
        let (img, txt) = embeds(&model, images, ids);
        check(
            &format!("image{suffix}"),
            &img,
            f.get(&format!("image_embeds{suffix}")).unwrap(),
            1e-5,
        );
        check(
            &format!("text{suffix}"),
            &txt,
            f.get(&format!("text_embeds{suffix}")).unwrap(),
            1e-5,
        );
    }
}

#[test]
fn resnet_matches_open_clip() {
    let f = io("tiny-rn");
    let cfg = ClipConfig::load("tiny-rn").unwrap();
    let mut model = Clip::new(&cfg, 1);
    model.set_training(false); // open_clip's fixture ran in eval mode: BatchNorm uses running stats
    load_into(&model, fixture("tiny-rn.safetensors")).unwrap();
    let (img, txt) = embeds(&model, f.get("images").unwrap(), f.get("text_ids").unwrap());
    check("resnet image", &img, f.get("image_embeds").unwrap(), 1e-5);
    check("resnet text", &txt, f.get("text_embeds").unwrap(), 1e-5);
}

#[test]
fn hugging_face_names_give_the_same_embeddings() {
    let f = io("tiny-vit");
    let cfg = ClipConfig::load("tiny-vit").unwrap();
    let (a, b) = (Clip::new(&cfg, 1), Clip::new(&cfg, 2));
    load_into(&a, fixture("tiny-vit.safetensors")).unwrap();
    load_into(&b, fixture("tiny-vit-hf.safetensors")).unwrap();
    let (ia, ta) = embeds(&a, f.get("images").unwrap(), f.get("text_ids").unwrap());
    let (ib, tb) = embeds(&b, f.get("images").unwrap(), f.get("text_ids").unwrap());
    check("HF vs open_clip image", &ib, &ia, 1e-6);
    check("HF vs open_clip text", &tb, &ta, 1e-6);
    check(
        "HF image vs open_clip output",
        &ib,
        f.get("image_embeds").unwrap(),
        1e-5,
    );
}

#[test]
fn open_clip_preprocessed_image_files() {
    let f = st::load(fixture("tiny-vit-files.safetensors")).unwrap();
    let model = Clip::new(&ClipConfig::load("tiny-vit").unwrap(), 1);
    load_into(&model, fixture("tiny-vit.safetensors")).unwrap();
    let g = Graph::inference();
    let img = model
        .encode_image(&g, &g.constant(f.get("pixels").unwrap().clone()))
        .unwrap();
    check(
        "file images",
        img.tensor(),
        f.get("image_embeds").unwrap(),
        1e-5,
    );
}

/// `encode_image` and `encode_text` on a graph that records nothing (where the inference fast
/// paths run) against a recording graph (the plain ops, as in training), on fresh random weights
/// with random BatchNorm statistics and gains (bn3's zero init replaced, so every branch counts).
fn fast_paths_match_plain_ops(config: &str) {
    let seed = common::fresh_seed();
    let cfg = ClipConfig::load(config).unwrap();
    let mut model = Clip::new(&cfg, seed);
    model.set_training(false);
    for (i, p) in model.parameters().iter().enumerate() {
        let (shape, s) = (p.value().shape().to_vec(), seed.wrapping_add(i as u64));
        let name = p.name().to_string();
        let v = if name.ends_with("running_var") {
            Tensor::rand_uniform(shape, 0.5, 2.0, s)
        } else if name.contains(".bn") || name.contains("downsample.1") || name.ends_with("bias") {
            Tensor::randn(shape, 0.5, s)
        } else {
            continue;
        };
        p.set_value(v).unwrap();
    }
    let b = 3;
    let s = cfg.vision_cfg.image_size;
    let images = Tensor::randn([b, 3, s, s], 1.0, seed ^ 1);
    let ctx = cfg.text_cfg.context_length;
    let mut ids = vec![0u32; b * ctx];
    for r in 0..b {
        let end = 3 + 5 * r;
        for i in 0..end {
            ids[r * ctx + i] = 1 + ((seed >> i) % 900) as u32 + i as u32;
        }
        ids[r * ctx + end] = 999;
    }
    let run = |recording: bool| {
        let g = if recording {
            Graph::new()
        } else {
            Graph::inference()
        };
        let img = model.encode_image(&g, &g.constant(images.clone())).unwrap();
        let txt = model.encode_text(&g, &ids, b).unwrap();
        (img.into_tensor(), txt.into_tensor())
    };
    let (img_fast, txt_fast) = run(false);
    let (img_plain, txt_plain) = run(true);
    check(
        &format!("{config} image, fast vs plain (seed {seed})"),
        &img_fast,
        &img_plain,
        1e-5,
    );
    check(
        &format!("{config} text, fast vs plain (seed {seed})"),
        &txt_fast,
        &txt_plain,
        1e-5,
    );
}

#[test]
fn inference_fast_paths_match_plain_ops_resnet() {
    fast_paths_match_plain_ops("tiny-rn");
}

#[test]
fn inference_fast_paths_match_plain_ops_vit() {
    fast_paths_match_plain_ops("tiny-vit");
}

#[test]
fn text_truncation_is_exact() {
    let cfg = ClipConfig::load("tiny-vit").unwrap();
    let mut model = Clip::new(&cfg, common::fresh_seed());
    let ctx = cfg.text_cfg.context_length;
    // random rows with the EOT (largest id) at random positions, zero padding after
    let seed = common::fresh_seed();
    let mut state = seed;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut ids = vec![0u32; 5 * ctx];
    for r in 0..5 {
        let end = 1 + next(ctx as u64 / 2) as usize;
        for i in 0..end {
            ids[r * ctx + i] = 1 + next(990) as u32;
        }
        ids[r * ctx + end] = 999;
    }
    let run = |m: &Clip| {
        let g = Graph::inference();
        m.encode_text(&g, &ids, 5).unwrap().into_tensor()
    };
    let cut = run(&model);
    model.text.truncate = false;
    let full = run(&model);
    check(
        &format!("truncated vs full (seed {seed})"),
        &cut,
        &full,
        1e-6,
    );
}

#[test]
fn checkpoint_round_trip_carries_the_config() {
    let mut cfg = ClipConfig::load("tiny-rn").unwrap();
    cfg.quick_gelu = true;
    let model = Clip::new(&cfg, common::fresh_seed());
    let path = tmp("rn.safetensors");
    save_clip(&model, &path, &BTreeMap::new()).unwrap();
    let meta = st::load(&path).unwrap().metadata;
    assert_eq!(
        meta.get("clipcu.activation").map(String::as_str),
        Some("quick_gelu")
    );
    let back = load_clip(&path, None).unwrap();
    assert_eq!(back.config, cfg);
    for ((n1, p1), (n2, p2)) in model.named_params().iter().zip(back.named_params()) {
        assert_eq!(*n1, n2);
        assert_eq!(p1.value().to_vec(), p2.value().to_vec(), "{n1}");
    }
    // buffers are saved too
    assert!(
        meta.len() >= 3
            && model
                .named_params()
                .iter()
                .any(|(n, _)| n.ends_with("running_var"))
    );
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn module_prefix_half_precision_and_scalar_shapes_load() {
    let file = st::load(fixture("tiny-vit.safetensors")).unwrap();
    let path = tmp("ddp-f16.safetensors");
    let mut renamed = Vec::new();
    for (n, t) in &file.tensors {
        let t = if n == "logit_scale" {
            t.reshape([1]).unwrap()
        } else {
            t.to_dtype(DType::F16)
        };
        renamed.push((format!("module.{n}"), t));
    }
    renamed.push((
        "module.visual.bn.num_batches_tracked".into(),
        Tensor::zeros([1]),
    ));
    let refs: Vec<(&str, &Tensor)> = renamed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    st::save(&path, &refs, &BTreeMap::new()).unwrap();
    let cfg = ClipConfig::load("tiny-vit").unwrap();
    let (a, b) = (Clip::new(&cfg, 3), Clip::new(&cfg, 4));
    load_into(&a, fixture("tiny-vit.safetensors")).unwrap();
    load_into(&b, &path).unwrap();
    for ((n, p), (_, q)) in a.named_params().iter().zip(b.named_params()) {
        let want = if n == "logit_scale" {
            p.value()
        } else {
            p.value().to_dtype(DType::F16).to_dtype(DType::F32)
        };
        assert_eq!(
            q.value().to_vec(),
            want.to_vec(),
            "{n} after f16 round trip"
        );
    }
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

/// Issue 17: a ModifiedResNet state dict as torch writes it (`save_file(model.state_dict())`,
/// int64 `num_batches_tracked` included; tools/make_torch_state_dict_fixture.py) loads, and gives
/// open_clip's embeddings.
#[test]
fn torch_state_dict_with_int64_buffers_loads_and_matches_open_clip() {
    let path = fixture("tiny-rn-torch-state-dict.safetensors");
    let file = st::load(&path).unwrap();
    let ints: Vec<&str> = file
        .raw
        .iter()
        .filter(|(_, r)| r.dtype == "I64")
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(
        !ints.is_empty() && ints.iter().all(|n| n.ends_with("num_batches_tracked")),
        "the fixture holds torch's int64 buffers: {ints:?}"
    );
    let f = io("tiny-rn");
    let mut model = load_clip(&path, Some(&ClipConfig::load("tiny-rn").unwrap())).unwrap();
    model.set_training(false);
    let (img, txt) = embeds(&model, f.get("images").unwrap(), f.get("text_ids").unwrap());
    check("torch RN image", &img, f.get("image_embeds").unwrap(), 1e-5);
    check("torch RN text", &txt, f.get("text_embeds").unwrap(), 1e-5);
}

/// An integer tensor where the model needs a float weight is an error naming the tensor and its
/// dtype; a DDP `module.` prefix does not hide an integer buffer from the skip list.
#[test]
fn integer_weight_is_an_error_naming_it() {
    use safetensors::tensor::{serialize_to_file, Dtype, TensorView};
    let file = st::load(fixture("tiny-vit.safetensors")).unwrap();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>, Dtype)> = file
        .tensors
        .iter()
        .map(|(n, t)| {
            if n == "ln_final.weight" {
                let ints: Vec<u8> = (0..t.numel() as i32)
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                (n.clone(), ints, t.shape().to_vec(), Dtype::I32)
            } else {
                (
                    format!("module.{n}"),
                    t.to_le_bytes(),
                    t.shape().to_vec(),
                    Dtype::F32,
                )
            }
        })
        .chain(std::iter::once((
            "module.visual.bn.num_batches_tracked".to_string(),
            7i64.to_le_bytes().to_vec(),
            vec![],
            Dtype::I64,
        )))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, b, s, d)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let path = tmp("int-weight.safetensors");
    serialize_to_file(views, None, &path).unwrap();
    let model = Clip::new(&ClipConfig::load("tiny-vit").unwrap(), 0);
    let msg = load_into(&model, &path).unwrap_err().to_string();
    for needle in [
        "int-weight.safetensors",
        "`ln_final.weight`",
        "I32",
        "F32, F16 or BF16",
    ] {
        assert!(msg.contains(needle), "error lacks `{needle}`: {msg}");
    }
    assert!(!msg.contains("visual.bn.num_batches_tracked"), "{msg}");
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn bad_weights_are_listed_in_one_error() {
    let file = st::load(fixture("tiny-vit.safetensors")).unwrap();
    let path = tmp("bad.safetensors");
    let mut ts: Vec<(String, Tensor)> = file
        .tensors
        .into_iter()
        .filter(|(n, _)| n != "ln_final.bias")
        .collect();
    for (n, t) in ts.iter_mut() {
        if n == "visual.proj" {
            *t = Tensor::zeros([3, 3]);
        }
    }
    ts.push(("visual.extra_head.weight".into(), Tensor::zeros([2])));
    let refs: Vec<(&str, &Tensor)> = ts.iter().map(|(n, t)| (n.as_str(), t)).collect();
    st::save(&path, &refs, &BTreeMap::new()).unwrap();
    let model = Clip::new(&ClipConfig::load("tiny-vit").unwrap(), 0);
    let msg = load_into(&model, &path).unwrap_err().to_string();
    for needle in [
        "bad.safetensors",
        "1 missing: ln_final.bias",
        "1 unexpected: visual.extra_head.weight",
        "visual.proj: file [3, 3], model [64, 32]",
    ] {
        assert!(msg.contains(needle), "error lacks `{needle}`: {msg}");
    }
    // no config anywhere: a clear error, not a guess
    let e = load_clip(&path, None)
        .err()
        .expect("no config: an error")
        .to_string();
    assert!(e.contains("--config"), "{e}");
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn positional_embedding_resize_matches_open_clip() {
    let want = st::load(fixture("tiny-vit-posembed.safetensors")).unwrap();
    for size in [48usize, 24] {
        let mut cfg = ClipConfig::load("tiny-vit").unwrap();
        cfg.vision_cfg.image_size = size;
        let model = Clip::new(&cfg, 0);
        load_into(&model, fixture("tiny-vit.safetensors")).unwrap();
        let got = model
            .named_params()
            .into_iter()
            .find(|(n, _)| n == "visual.positional_embedding")
            .unwrap()
            .1
            .value();
        check(
            &format!("pos embed {size}"),
            &got,
            want.get(&format!("positional_embedding_{size}")).unwrap(),
            1e-6,
        );
    }
}

#[test]
fn initialisation_follows_open_clip() {
    // tools/make_init_stats.py: per tensor [mean, std, numel, models pooled], the values of that
    // many fresh open_clip models pooled (≥ 16,384 values each). Ours pools as many fresh models.
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("init-stats.json")).unwrap())
            .unwrap();
    for name in ["tiny-vit", "tiny-rn"] {
        let cfg = ClipConfig::load(name).unwrap();
        let theirs = stats[name].as_object().unwrap();
        let first = Clip::new(&cfg, common::fresh_seed());
        let names: Vec<String> = first.named_params().into_iter().map(|(n, _)| n).collect();
        let mut expected_names: Vec<&String> = theirs
            .keys()
            .filter(|k| !k.ends_with("num_batches_tracked"))
            .collect();
        expected_names.sort();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(
            sorted.iter().collect::<Vec<_>>(),
            expected_names,
            "{name}: parameter names differ from open_clip's"
        );
        let models = |k: &str| theirs[k][3].as_u64().unwrap() as usize;
        let most = names.iter().map(|k| models(k)).max().unwrap();
        let base = common::fresh_seed();
        let mut pooled: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for m in 0..most {
            let model = if m == 0 {
                None
            } else {
                Some(Clip::new(&cfg, base.wrapping_add(m as u64)))
            };
            let params = model.as_ref().unwrap_or(&first).named_params();
            for (k, p) in params.iter() {
                if m < models(k) {
                    let key = names.iter().find(|n| *n == k).unwrap().as_str();
                    pooled
                        .entry(key)
                        .or_default()
                        .extend(p.value().to_vec().iter().map(|&a| a as f64));
                }
            }
        }
        let mut checked = 0;
        for (k, x) in &pooled {
            let v = &theirs[*k];
            let (mean, std, numel) = (
                v[0].as_f64().unwrap(),
                v[1].as_f64().unwrap(),
                v[2].as_u64().unwrap() as usize,
            );
            let n_theirs = (numel * models(k)) as f64;
            assert_eq!(x.len() as f64, n_theirs, "{name} {k}: size");
            let n = x.len() as f64;
            let m = x.iter().sum::<f64>() / n;
            let s = (x.iter().map(|&a| (a - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
            if std == 0.0 {
                assert!(
                    x.iter().all(|&a| (a - mean).abs() < 1e-6),
                    "{name} {k}: open_clip fills it with {mean}"
                );
                continue;
            }
            // Both stds are estimates from n values each (relative spread 1/√(2n)): allow 5 of
            // the combined spreads, about 4% at 16,384 values apiece; the means likewise.
            let spread = (1.0 / (2.0 * n) + 1.0 / (2.0 * n_theirs)).sqrt();
            let tol = 5.0 * spread;
            assert!(
                (s / std - 1.0).abs() < tol,
                "{name} {k}: std {s:.5} vs open_clip's {std:.5} ({n} values, tol {tol:.3})"
            );
            let mean_tol = 5.0 * std * (1.0 / n + 1.0 / n_theirs).sqrt();
            assert!(
                (m - mean).abs() < mean_tol,
                "{name} {k}: mean {m:.5} vs {mean:.5} (tol {mean_tol:.2e})"
            );
            assert!(
                tol < 0.05,
                "{name} {k}: tolerance {tol:.3} is not a few percent"
            );
            checked += 1;
        }
        assert!(
            checked >= 30,
            "{name}: only {checked} random tensors checked"
        );
    }
}

#[test]
fn configs_load_and_bad_ones_are_refused() {
    for name in ClipConfig::builtin_names() {
        let cfg = ClipConfig::load(name).unwrap();
        assert_eq!(cfg.quick_gelu, name.ends_with("quickgelu"), "{name}");
    }
    let rn50 = Clip::new(&ClipConfig::load("RN50").unwrap(), 0);
    let vit = Clip::new(&ClipConfig::load("ViT-B-32").unwrap(), 0);
    // parameter counts of open_clip's models (sum of numel over parameters, buffers excluded)
    assert_eq!(vit.num_trainable(), 151_277_313);
    assert_eq!(rn50.num_trainable(), 102_007_137);
    let e = ClipConfig::from_json(r#"{"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "ls_init_value": 0.1}, "text_cfg": {}}"#, "x.json").unwrap_err();
    assert!(e.to_string().contains("vision_cfg.ls_init_value"), "{e}");
    let e = ClipConfig::from_json(r#"{"embed_dim": 8, "vision_cfg": {"image_size": 30, "layers": 2, "width": 64, "patch_size": 8}, "text_cfg": {}}"#, "y.json").unwrap_err();
    assert!(
        e.to_string().contains("y.json") && e.to_string().contains("patch_size"),
        "{e}"
    );
    let e = ClipConfig::load("/nonexistent/model.json").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/model.json"), "{e}");
    assert!(ClipConfig::load("ViT-Q-99")
        .unwrap_err()
        .to_string()
        .contains("ViT-B-32"));
}

#[test]
fn image_files_through_our_preprocessing() {
    // PNG decodes exactly as PIL does; the JPEG decoder differs by a few levels, hence the looser
    // bound on the embeddings than for preprocessed tensors.
    let f = st::load(fixture("tiny-vit-files.safetensors")).unwrap();
    let model = Clip::new(&ClipConfig::load("tiny-vit").unwrap(), 1);
    load_into(&model, fixture("tiny-vit.safetensors")).unwrap();
    let pre = clipcu::data::Preprocess::clip(32);
    let imgs: Vec<clipcu::data::Image> = ["photo-80x60.png", "photo-50x70.jpg"]
        .iter()
        .map(|n| clipcu::data::load_image(fixture(n)).unwrap())
        .collect();
    let pixels = pre.batch(&imgs).unwrap();
    let want_px = f.get("pixels").unwrap();
    check(
        "png pixels",
        &pixels.narrow(0, 0, 1).unwrap().contiguous(),
        &want_px.narrow(0, 0, 1).unwrap().contiguous(),
        1e-6,
    );
    check(
        "jpeg pixels",
        &pixels.narrow(0, 1, 1).unwrap().contiguous(),
        &want_px.narrow(0, 1, 1).unwrap().contiguous(),
        2e-2,
    );
    let g = Graph::inference();
    let emb = model
        .encode_image(&g, &g.constant(pixels))
        .unwrap()
        .into_tensor();
    let want = f.get("image_embeds").unwrap();
    check(
        "png embedding",
        &emb.narrow(0, 0, 1).unwrap().contiguous(),
        &want.narrow(0, 0, 1).unwrap().contiguous(),
        1e-5,
    );
    check(
        "jpeg embedding",
        &emb.narrow(0, 1, 1).unwrap().contiguous(),
        &want.narrow(0, 1, 1).unwrap().contiguous(),
        2e-2,
    );
}
