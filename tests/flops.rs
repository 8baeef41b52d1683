//! The FLOP count of every shipped config (src/model/flops.rs, from the config alone) against
//! PyTorch's FlopCounterMode run over open_clip's own modules (tools/make_flops_fixture.py):
//! exact equality per tower, so no product is missed or counted twice.

use clipcu::model::ClipConfig;

#[test]
fn forward_flops_equal_torch_flop_counter_on_open_clip() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/models/flops.json")).unwrap();
    let table = fixture.as_object().unwrap();
    let mut checked = 0;
    for (name, want) in table.iter().filter(|(k, _)| !k.starts_with('_')) {
        let got = ClipConfig::load(name).unwrap().forward_flops();
        for (tower, got) in [("image", got.image), ("text", got.text)] {
            let want = want[tower].as_u64().unwrap() as u128;
            assert_eq!(
                got, want,
                "{name} {tower}: ours {got}, FlopCounterMode {want}"
            );
        }
        checked += 1;
    }
    // Every shipped config without a -quickgelu twin's suffix is in the fixture (the activation
    // does not change the count).
    let shipped: Vec<&str> = ClipConfig::builtin_names()
        .into_iter()
        .filter(|n| !n.ends_with("-quickgelu"))
        .collect();
    for n in &shipped {
        assert!(
            table.contains_key(*n),
            "{n} has no FlopCounterMode count: rerun tools/make_flops_fixture.py"
        );
    }
    assert_eq!(checked, shipped.len());
}

#[test]
fn train_step_is_three_forwards_per_pair() {
    let f = ClipConfig::load("ViT-B-32").unwrap().forward_flops();
    assert_eq!(f.train_step(256), 3 * 256 * (f.image + f.text));
}
