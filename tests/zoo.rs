//! The model zoo: every shipped config's parameter count equals open_clip's (fixture from
//! tools/make_zoo_fixtures.py, models built on PyTorch's meta device), the names and shapes
//! `convert::expected_tensors` computes without allocating equal the built model's, and the
//! paper's large ResNets (RN50x16, RN50x64) run a batch-1 CPU forward with their own depth and
//! image size at a reduced width (the full ones are 291 M and 623 M parameters).
use clipcu::model::convert::{expected_tensors, parameter_count};
use clipcu::model::{Clip, ClipConfig, VisionLayers};
use clipcu::{Graph, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn counts() -> BTreeMap<String, u128> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/zoo/param-counts.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn every_shipped_config_has_open_clips_parameter_count() {
    let want = counts();
    let names = ClipConfig::builtin_names();
    for name in &names {
        let cfg = ClipConfig::load(name).unwrap();
        let Some(&n) = want.get(*name) else {
            panic!("{name}: no open_clip count in param-counts.json (rerun tools/make_zoo_fixtures.py)");
        };
        assert_eq!(parameter_count(&cfg), n, "{name}");
    }
    assert_eq!(
        want.len(),
        names.len(),
        "configs in the fixture but not shipped"
    );
    for (name, n) in [
        ("RN50x16", 290_979_217u128),
        ("RN50x64", 623_258_305),
        ("RN50x16-quickgelu", 290_979_217),
        ("RN50x64-quickgelu", 623_258_305),
    ] {
        assert_eq!(want[name], n, "{name}");
    }
}

#[test]
fn large_resnets_have_the_papers_shape() {
    for (name, image, layers, width, embed, tw, heads, quick) in [
        ("RN50x16", 384, [6, 8, 18, 8], 96, 768, 768, 12, false),
        ("RN50x64", 448, [3, 15, 36, 10], 128, 1024, 1024, 16, false),
        (
            "RN50x16-quickgelu",
            384,
            [6, 8, 18, 8],
            96,
            768,
            768,
            12,
            true,
        ),
        (
            "RN50x64-quickgelu",
            448,
            [3, 15, 36, 10],
            128,
            1024,
            1024,
            16,
            true,
        ),
    ] {
        let c = ClipConfig::load(name).unwrap();
        assert_eq!(c.vision_cfg.image_size, image, "{name}");
        assert_eq!(c.vision_cfg.layers, VisionLayers::ResNet(layers), "{name}");
        assert_eq!(c.vision_cfg.width, width, "{name}");
        assert_eq!(c.embed_dim, embed, "{name}");
        assert_eq!(
            (c.text_cfg.width, c.text_cfg.heads, c.text_cfg.layers),
            (tw, heads, 12)
        );
        assert_eq!(c.quick_gelu, quick, "{name}");
    }
}

/// `cfg` at a small width, the depth, image size and patch kept (the structure of every key).
fn reduced(cfg: &ClipConfig) -> ClipConfig {
    let mut c = cfg.clone();
    match c.vision_cfg.layers {
        VisionLayers::Vit(_) => {
            c.vision_cfg.width = 32;
            c.vision_cfg.head_width = 16;
        }
        VisionLayers::ResNet(_) => {
            c.vision_cfg.width = 8;
            c.vision_cfg.head_width = 64;
        }
    }
    c.text_cfg.width = 32;
    c.text_cfg.heads = 2;
    c.text_cfg.vocab_size = c.text_cfg.vocab_size.min(1000);
    c.embed_dim = 24;
    c
}

fn check_specs(what: &str, cfg: &ClipConfig) {
    let model = Clip::new(cfg, 1);
    let specs = expected_tensors(cfg);
    let built: Vec<(String, Vec<usize>, bool)> = model
        .named_params()
        .iter()
        .map(|(n, p)| (n.clone(), p.value().shape().to_vec(), !p.requires_grad()))
        .collect();
    let mut a: Vec<_> = specs
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone(), s.buffer))
        .collect();
    let mut b = built.clone();
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "{what}: expected_tensors differs from the built model"
    );
    let params: u128 = built
        .iter()
        .filter(|(_, _, buffer)| !buffer)
        .map(|(_, s, _)| s.iter().product::<usize>() as u128)
        .sum();
    assert_eq!(params, parameter_count(cfg), "{what}");
}

#[test]
fn expected_tensors_are_the_built_models() {
    for name in ClipConfig::builtin_names() {
        let cfg = ClipConfig::load(name).unwrap();
        if cfg.parameter_count() < 10_000_000 {
            check_specs(name, &cfg);
        }
        check_specs(&format!("{name} at a reduced width"), &reduced(&cfg));
    }
}

/// The ResNet width of the forward test (RN50x16: 96, RN50x64: 128): every stage, block count,
/// stride and the full image size are kept (the text tower is reduced as in `reduced`); at this
/// width a forward takes 2–3.5 s in release on two cores (the full image towers are about 2.2×
/// and 4× as much work).
const FORWARD_WIDTH: usize = 64;

#[test]
fn large_resnets_run_a_batch_1_forward() {
    for name in ["RN50x16", "RN50x64"] {
        let full = ClipConfig::load(name).unwrap();
        let mut cfg = reduced(&full);
        cfg.vision_cfg.width = FORWARD_WIDTH;
        cfg.text_cfg.vocab_size = 49408;
        let t0 = std::time::Instant::now();
        let mut model = Clip::new(&cfg, 3);
        model.set_training(false);
        let s = cfg.vision_cfg.image_size;
        let g = Graph::inference();
        let img = model
            .encode_image(&g, &g.constant(Tensor::randn([1, 3, s, s], 1.0, 5)))
            .unwrap()
            .into_tensor();
        assert_eq!(img.shape(), [1, cfg.embed_dim], "{name}");
        let mut ids = vec![0u32; cfg.text_cfg.context_length];
        ids[..4].copy_from_slice(&[49406, 320, 1125, 49407]);
        let txt = model.encode_text(&g, &ids, 1).unwrap().into_tensor();
        assert_eq!(txt.shape(), [1, cfg.embed_dim], "{name}");
        for v in img.to_vec().iter().chain(&txt.to_vec()) {
            assert!(v.is_finite(), "{name}: non-finite embedding");
        }
        eprintln!("{name} at width {FORWARD_WIDTH}: {:.1?}", t0.elapsed());
    }
}
