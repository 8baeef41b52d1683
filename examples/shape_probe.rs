//! Where a trained synthetic model's shape zero-shot accuracy comes from: ensembled-prompt top-1
//! on the training split and on the held-out split, by size and by count, the shape confusion
//! matrix, and every other synthetic task's zero-shot top-1 beside it (a model that reads colour
//! and background but not size, count or shape is a colour histogram).
//!
//!     cargo run --release --example shape_probe -- runs/synthetic/model.safetensors [N]

use clipcu::data::synthetic::{Shape, Split, Synthetic, SyntheticConfig, Task};
use clipcu::model::weights::load_clip;
use clipcu::ops::normalize::l2_normalize;
use clipcu::train::samples_to_tensor;
use clipcu::zeroshot::{encode_texts, ZeroShotClassifier};
use clipcu::Graph;

fn main() -> clipcu::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("runs/synthetic/model.safetensors");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let model = load_clip(path, None)?;
    let size = model.config.vision_cfg.image_size as u32;
    let data = Synthetic::new(SyntheticConfig {
        seed: 0,
        image_size: size,
    });
    let task = Task::Shape;
    let classes: Vec<String> = task.class_names().iter().map(|c| c.to_string()).collect();
    let mut centroids: Vec<Vec<f32>> = Vec::new();
    for split in [Split::Train, Split::HeldOut] {
        let samples = data.batch(split, 0, n);
        let images = samples_to_tensor(&samples)?;
        let g = Graph::inference();
        let f = l2_normalize(&model.encode_image(&g, &g.constant(images))?.into_tensor())?;
        let mut tasks = format!("{split:?}, every task:");
        for &t in Task::ALL {
            let right = predict(&model, t, &f)?
                .iter()
                .zip(&samples)
                .filter(|(&p, s)| p == s.attrs.label(t))
                .count();
            tasks += &format!(" {t:?} {:.1}%", 100.0 * right as f32 / n as f32);
        }
        println!("{tasks}");
        let predicted = predict(&model, task, &f)?;
        let hit: Vec<bool> = samples
            .iter()
            .zip(&predicted)
            .map(|(s, &p)| p == s.attrs.label(task))
            .collect();
        let acc = |pred: &dyn Fn(usize) -> bool| {
            let idx: Vec<usize> = (0..n).filter(|&i| pred(i)).collect();
            let h = idx.iter().filter(|&&i| hit[i]).count();
            format!(
                "{:5.1}% ({:4})",
                100.0 * h as f32 / idx.len().max(1) as f32,
                idx.len()
            )
        };
        println!("{split:?}: all {}", acc(&|_| true));
        // Vision alone: nearest shape centroid of the training split's image features.
        let fv = f.f32s("shape_probe")?;
        let dim = fv.len() / n;
        if split == Split::Train {
            centroids = vec![vec![0f32; dim]; classes.len()];
            for (i, s) in samples.iter().enumerate() {
                for (c, v) in centroids[s.attrs.label(task)]
                    .iter_mut()
                    .zip(&fv[i * dim..])
                {
                    *c += v;
                }
            }
        }
        let nearest = samples
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                let x = &fv[i * dim..(i + 1) * dim];
                let best = (0..classes.len())
                    .max_by(|&a, &b| {
                        let sc = |k: usize| {
                            let c = &centroids[k];
                            let nrm = c.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                            c.iter().zip(x).map(|(p, q)| p * q).sum::<f32>() / nrm
                        };
                        sc(a).total_cmp(&sc(b))
                    })
                    .unwrap();
                best == s.attrs.label(task)
            })
            .count();
        println!(
            "  image features, nearest training shape centroid: {:5.1}%",
            100.0 * nearest as f32 / n as f32
        );
        // In context: the sample's own caption against the same caption with each other shape.
        let m = n.min(200);
        let fd = f.f32s("shape_probe")?;
        let d = fd.len() / n;
        let mut in_context = 0;
        for i in 0..m {
            let r = data.recipe(split, i as u64);
            let texts: Vec<String> = Shape::ALL
                .iter()
                .map(|&sh| {
                    let mut a = r.attrs;
                    a.shape = sh;
                    data.caption(&a, r.template, r.caption_seed)
                })
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let t = encode_texts(&model, &refs, 16)?;
            let img = &fd[i * d..(i + 1) * d];
            let score = |k: usize| {
                let row = &t[k * d..(k + 1) * d];
                let nrm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                row.iter().zip(img).map(|(a, b)| a * b).sum::<f32>() / nrm
            };
            let best = (0..texts.len())
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap();
            in_context += (best == r.attrs.shape.index()) as usize;
        }
        println!(
            "  own caption vs its shape swapped: {:5.1}% ({m})",
            100.0 * in_context as f32 / m as f32
        );
        for sz in ["small", "medium", "large"] {
            println!(
                "  size {sz:6} {}",
                acc(&|i| samples[i].attrs.size.name() == sz)
            );
        }
        for k in 1..=4u8 {
            println!("  count {k}     {}", acc(&|i| samples[i].attrs.count == k));
        }
        println!("  confusion (rows: true shape; columns: predicted, in class order)");
        for (k, name) in classes.iter().enumerate() {
            let mut row = vec![0usize; classes.len()];
            for (s, &p) in samples.iter().zip(&predicted) {
                if s.attrs.label(task) == k {
                    row[p] += 1;
                }
            }
            println!("    {name:9} {row:?}");
        }
    }
    Ok(())
}

/// The ensembled-prompt zero-shot prediction of `task` for each row of the normalised image
/// features `f`.
fn predict(
    model: &clipcu::model::Clip,
    task: Task,
    f: &clipcu::Tensor,
) -> clipcu::Result<Vec<usize>> {
    let classes: Vec<String> = task.class_names().iter().map(|c| c.to_string()).collect();
    let prompts: Vec<Vec<String>> = (0..classes.len()).map(|c| task.prompts(c)).collect();
    let clf = ZeroShotClassifier::build_from_prompts(model, &classes, &prompts, 64)?;
    let logits = clf.classify(f)?;
    let l = logits.f32s("shape_probe")?;
    let c = classes.len();
    Ok(l.chunks(c)
        .map(|row| (0..c).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap())
        .collect())
}
