//! A diagnostic: how fast can a model's image tower learn the synthetic shapes when told the
//! label directly (cross-entropy through a linear head on the image embedding)? Compared with
//! the contrastive run's shape accuracy it separates "the tower cannot see shape in this budget"
//! from "the contrastive signal is too weak".
//!
//!     cargo run --release --example shape_supervised -- CONFIG STEPS BATCH LR
//!
//! Prints training-split and held-out accuracy every 100 steps, then the accuracy by true shape
//! (with the shapes it is mistaken for), by size and by texture. `EASY=1` trains on single
//! medium/large objects only (evaluation stays on the whole distribution). Results: docs/perf.md.

use clipcu::data::synthetic::{Sample, Split, Synthetic, SyntheticConfig, Task};
use clipcu::model::{Clip, ClipConfig, VisionTower};
use clipcu::nn::{Linear, Module};
use clipcu::optim::{AdamW, AdamWConfig, LrSchedule};
use clipcu::train::samples_to_tensor;
use clipcu::{Graph, Tensor};
use rand::SeedableRng;

fn main() -> clipcu::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let cfg = ClipConfig::load(a.get(1).map(String::as_str).unwrap_or("synthetic-tiny"))?;
    let steps: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(500);
    let batch: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(128);
    let lr: f64 = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(5e-4);
    let model = Clip::new(&cfg, 0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let head = Linear::torch_default("head", cfg.embed_dim, 10, true, &mut rng);
    let mut params = match &model.visual {
        VisionTower::Vit(v) => v.parameters(),
        VisionTower::ResNet(r) => r.parameters(),
    };
    params.extend(head.parameters());
    let mut opt = AdamW::new(
        &params,
        AdamWConfig {
            lr,
            weight_decay: 0.1,
            ..Default::default()
        },
    );
    let sched = LrSchedule::Cosine {
        base: lr,
        warmup: 50,
        total: steps,
    };
    let data = Synthetic::new(SyntheticConfig {
        seed: 0,
        image_size: cfg.vision_cfg.image_size as u32,
    });
    // Shape logits [n, 10] of rendered samples, nothing recorded.
    let predict = |s: &[Sample]| -> clipcu::Result<Tensor> {
        let g = Graph::inference();
        let x = g.constant(samples_to_tensor(s)?);
        Ok(head
            .forward(&g, &model.encode_image(&g, &x)?)?
            .into_tensor())
    };
    let eval = |split: Split| -> clipcu::Result<f32> {
        let s = data.batch(split, 0, 500);
        let logits = predict(&s)?;
        let labels: Vec<usize> = s.iter().map(|s| s.attrs.label(Task::Shape)).collect();
        clipcu::zeroshot::accuracy(&logits, &labels, 1)
    };
    let easy = std::env::var("EASY").is_ok();
    for step in 0..steps {
        let s: Vec<_> = if easy {
            data.batch(Split::Train, (step * batch * 8) as u64, batch * 8)
                .into_iter()
                .filter(|s| s.attrs.count == 1 && s.attrs.size.name() != "small")
                .take(batch)
                .collect()
        } else {
            data.batch(Split::Train, (step * batch) as u64, batch)
        };
        let g = Graph::new();
        let x = g.constant(samples_to_tensor(&s)?);
        let logits = head.forward(&g, &model.encode_image(&g, &x)?)?;
        let labels: Vec<u32> = s
            .iter()
            .map(|s| s.attrs.label(Task::Shape) as u32)
            .collect();
        let loss = g.cross_entropy(&logits, &labels)?;
        let l = loss.tensor().item()?;
        g.backward(&loss)?;
        opt.step(sched.lr(step))?;
        if (step + 1) % 100 == 0 {
            println!(
                "step {:5} loss {l:.3} train {:.1}% held-out {:.1}%",
                step + 1,
                100.0 * eval(Split::Train)?,
                100.0 * eval(Split::HeldOut)?
            );
        }
    }
    // Where the errors are: accuracy by true shape and by size on 1000 training samples.
    let s = data.batch(Split::Train, 1 << 40, 1000);
    let logits = predict(&s)?;
    let l = logits.f32s("probe")?;
    let pred: Vec<usize> = (0..s.len())
        .map(|i| {
            (0..10)
                .max_by(|&a, &b| l[i * 10 + a].total_cmp(&l[i * 10 + b]))
                .unwrap()
        })
        .collect();
    let names = Task::Shape.class_names();
    for (c, name) in names.iter().enumerate() {
        let idx: Vec<usize> = (0..s.len())
            .filter(|&i| s[i].attrs.shape.index() == c)
            .collect();
        let mut conf = [0usize; 10];
        idx.iter().for_each(|&i| conf[pred[i]] += 1);
        println!(
            "{name:9} {:5.1}%  confused with {:?}",
            100.0 * conf[c] as f32 / idx.len() as f32,
            (0..10)
                .filter(|&k| k != c && conf[k] * 10 > idx.len())
                .map(|k| names[k])
                .collect::<Vec<_>>()
        );
    }
    // accuracy over the samples that `keep` selects
    let acc_where = |keep: &dyn Fn(&Sample) -> bool| {
        let idx: Vec<usize> = (0..s.len()).filter(|&i| keep(&s[i])).collect();
        let hits = idx
            .iter()
            .filter(|&&i| pred[i] == s[i].attrs.shape.index())
            .count();
        100.0 * hits as f32 / idx.len() as f32
    };
    for size in ["small", "medium", "large"] {
        println!(
            "{size:7} {:5.1}%",
            acc_where(&|x| x.attrs.size.name() == size)
        );
    }
    for tex in clipcu::data::synthetic::texture_names() {
        println!(
            "{tex:10} {:5.1}%",
            acc_where(&|x| x.attrs.texture.name() == *tex)
        );
    }
    Ok(())
}
