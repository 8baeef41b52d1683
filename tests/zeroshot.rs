//! Zero-shot classification and retrieval (`clipcu::zeroshot`).

use clipcu::model::{Clip, ClipConfig};
use clipcu::ops::normalize::l2_normalize;
use clipcu::tokenizer::Tokenizer;
use clipcu::zeroshot::{
    accuracies, accuracy, retrieval_recall, text_tower_key, CacheOutcome, Templates,
    ZeroShotClassifier,
};
use clipcu::{Error, Graph, Tensor};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A small random model with CLIP's full vocabulary and context length.
fn small_config() -> ClipConfig {
    let mut cfg = ClipConfig::load("tiny-vit").unwrap();
    cfg.text_cfg.vocab_size = 49408;
    cfg.text_cfg.context_length = 77;
    cfg
}

fn small_model(seed: u64) -> Clip {
    Clip::new(&small_config(), seed)
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

fn tmpdir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "clipcu-zeroshot-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// ---- templates ------------------------------------------------------------------------------

#[test]
fn builtin_templates_match_open_clip() {
    let o = Templates::openai();
    assert_eq!(o.len(), 80);
    assert_eq!(o.name(), "openai");
    assert_eq!(o.as_slice()[0], "a bad photo of a {}.");
    assert_eq!(o.as_slice()[1], "a photo of many {}.");
    assert_eq!(o.as_slice()[79], "a tattoo of the {}.");
    assert!(o.as_slice().iter().all(|t| t.matches("{}").count() == 1));
    let s = Templates::simple();
    assert_eq!(s.len(), 7);
    assert_eq!(
        s.as_slice(),
        strings(&[
            "itap of a {}.",
            "a bad photo of the {}.",
            "a origami {}.",
            "a photo of the large {}.",
            "a {} in a video game.",
            "art of the {}.",
            "a photo of the small {}.",
        ])
    );
    assert_eq!(s.fill("dog")[4], "a dog in a video game.");
    assert_eq!(Templates::parse("openai").unwrap(), o);
    assert_eq!(Templates::parse("simple").unwrap(), s);
    assert_ne!(o.hash(), s.hash());
    let one = o.single(79).unwrap();
    assert_eq!(one.as_slice(), strings(&["a tattoo of the {}."]));
    assert!(o.single(80).is_err());
}

#[test]
fn template_files_parse_and_bad_lines_name_file_and_line() {
    let dir = tmpdir();
    let good = dir.join("good.txt");
    std::fs::write(
        &good,
        "# my templates\n\na photo of a {}.\n   \n  {} on a table.  \n# end\n",
    )
    .unwrap();
    let t = Templates::parse(good.to_str().unwrap()).unwrap();
    assert_eq!(
        t.as_slice(),
        strings(&["a photo of a {}.", "{} on a table."])
    );
    assert_eq!(t.name(), good.display().to_string());

    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "a photo of a {}.\n# fine\n\na photo of nothing.\n").unwrap();
    let e = Templates::from_file(&bad).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Format { .. }), "{msg}");
    assert!(
        msg.contains(&format!("{}:4", bad.display())),
        "error should name file:line: {msg}"
    );
    assert!(msg.contains("a photo of nothing."), "{msg}");

    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    assert!(Templates::from_file(&empty).is_err());
    let missing = dir.join("missing.txt");
    assert!(matches!(
        Templates::parse(missing.to_str().unwrap()),
        Err(Error::Io { .. })
    ));
    assert!(Templates::new("x", vec![]).is_err());
    assert!(Templates::new("x", strings(&["no placeholder"])).is_err());
}

// ---- classifier -----------------------------------------------------------------------------

/// One prompt's embedding, encoded on its own (batch 1), L2-normalised.
fn encode_one(model: &Clip, text: &str) -> Vec<f32> {
    let ids = Tokenizer::clip().tokenize(text, 77);
    let g = Graph::inference();
    let e = model.encode_text(&g, &ids, 1).unwrap().into_tensor();
    l2_normalize(&e).unwrap().to_vec()
}

#[test]
fn ensembling_is_the_renormalised_mean_of_normalised_prompt_embeddings() {
    let model = small_model(3);
    let classes = strings(&["cat", "red circle", "a very small blue star"]);
    let templates = Templates::simple();
    // batch 5: batches straddle class boundaries
    let zs = ZeroShotClassifier::build(&model, &classes, &templates, 5).unwrap();
    assert_eq!(zs.weights().shape(), &[3, 32]);
    assert_eq!(zs.class_names(), classes.as_slice());
    assert_eq!(zs.templates_name(), "simple");
    let w = zs.weights().to_vec();
    for (c, class) in classes.iter().enumerate() {
        let mut mean = vec![0f64; 32];
        for t in templates.as_slice() {
            let e = encode_one(&model, &t.replace("{}", class));
            for (m, v) in mean.iter_mut().zip(e) {
                *m += v as f64 / templates.len() as f64;
            }
        }
        let n = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
        let hand: Vec<f32> = mean.iter().map(|m| (m / n) as f32).collect();
        let d = max_abs_diff(&w[c * 32..(c + 1) * 32], &hand);
        assert!(d < 1e-6, "class {class}: max |Δ| {d}");
    }
}

#[test]
fn classifier_weights_are_unit_rows() {
    let model = small_model(4);
    let classes = strings(&["one", "two", "three", "four", "five"]);
    let zs = ZeroShotClassifier::build(&model, &classes, &Templates::openai(), 64).unwrap();
    assert_eq!(zs.num_classes(), 5);
    assert_eq!(zs.embed_dim(), 32);
    for row in zs.weights().to_vec().chunks(32) {
        let n = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((n - 1.0).abs() < 1e-6, "row norm {n}");
    }
}

#[test]
fn single_template_is_the_normalised_prompt_embedding() {
    let model = small_model(5);
    let classes = strings(&["cat", "dog"]);
    let t = Templates::openai();
    let zs = ZeroShotClassifier::build_single(&model, &classes, &t, 79, 8).unwrap();
    assert_eq!(zs.templates_name(), "openai[79]");
    let w = zs.weights().to_vec();
    for (c, class) in classes.iter().enumerate() {
        let e = encode_one(&model, &format!("a tattoo of the {class}."));
        assert!(max_abs_diff(&w[c * 32..(c + 1) * 32], &e) < 1e-6);
    }
    // explicit per-class prompts (e.g. the synthetic tasks') give the same as templates
    let prompts: Vec<Vec<String>> = classes.iter().map(|c| t.fill(c)).collect();
    let a = ZeroShotClassifier::build_from_prompts(&model, &classes, &prompts, 33).unwrap();
    let b = ZeroShotClassifier::build(&model, &classes, &t, 33).unwrap();
    assert_eq!(a.weights().to_vec(), b.weights().to_vec());
    // errors: no classes, mismatched prompt lists, a class with no prompts
    assert!(ZeroShotClassifier::build(&model, &[], &t, 8).is_err());
    assert!(ZeroShotClassifier::build_from_prompts(&model, &classes, &prompts[..1], 8).is_err());
    assert!(
        ZeroShotClassifier::build_from_prompts(&model, &classes, &[vec![], vec![]], 8).is_err()
    );
}

#[test]
fn tokens_outside_a_small_vocab_are_an_error() {
    let model = Clip::new(&ClipConfig::load("tiny-vit").unwrap(), 0);
    let e = ZeroShotClassifier::build(&model, &strings(&["zebra"]), &Templates::simple(), 8)
        .unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
}

#[test]
fn classify_gives_cosine_logits() {
    let model = small_model(6);
    let classes = strings(&["a", "b", "c"]);
    let zs = ZeroShotClassifier::build(&model, &classes, &Templates::simple(), 16).unwrap();
    // image features equal to the class weights: each row's best class is its own, logit 1
    let feats = Tensor::from_vec(
        [zs.weights().to_vec(), zs.weights().to_vec()[..32].to_vec()].concat(),
        [4, 32],
    )
    .unwrap();
    let logits = zs.classify(&feats).unwrap();
    assert_eq!(logits.shape(), &[4, 3]);
    let l = logits.to_vec();
    for (i, c) in [0, 1, 2, 0].into_iter().enumerate() {
        assert!((l[i * 3 + c] - 1.0).abs() < 1e-5);
    }
    // rows of distinct unit vectors have cosine < 1 unless equal
    assert_eq!(accuracy(&logits, &[0, 1, 2, 0], 1).unwrap(), 1.0);
}

#[test]
fn cache_round_trip_and_invalidation() {
    let dir = tmpdir();
    let path = dir.join("sub/dir/classifier.safetensors");
    let model = small_model(7);
    let classes = strings(&["cat", "dog", "bird"]);
    let t = Templates::simple();

    let (a, out) =
        ZeroShotClassifier::build_cached(&model, &classes, &t, &path, Some("ckpt-1"), 8).unwrap();
    assert!(matches!(out, CacheOutcome::Built { ref reason } if reason == "no cache file"));
    assert!(path.exists());
    let (b, out) =
        ZeroShotClassifier::build_cached(&model, &classes, &t, &path, Some("ckpt-1"), 8).unwrap();
    assert_eq!(out, CacheOutcome::Loaded);
    assert_eq!(a.weights().to_le_bytes(), b.weights().to_le_bytes());
    assert_eq!(b.class_names(), classes.as_slice());
    assert_eq!(b.templates_name(), "simple");
    assert_eq!(b.model_key(), "key:ckpt-1");

    // a different key, class list or template set: rebuilt (and the cache rewritten)
    let rebuilt = |classes: &[String], t: &Templates, key: Option<&str>| {
        ZeroShotClassifier::build_cached(&model, classes, t, &path, key, 8)
            .unwrap()
            .1
    };
    let reason = |o: CacheOutcome| match o {
        CacheOutcome::Built { reason } => reason,
        CacheOutcome::Loaded => panic!("expected a rebuild"),
        CacheOutcome::NotCached { error, .. } => panic!("not cached: {error}"),
    };
    assert_eq!(
        reason(rebuilt(&classes, &t, Some("ckpt-2"))),
        "model key differs"
    );
    assert_eq!(rebuilt(&classes, &t, Some("ckpt-2")), CacheOutcome::Loaded);
    let fewer = strings(&["cat", "dog"]);
    assert_eq!(
        reason(rebuilt(&fewer, &t, Some("ckpt-2"))),
        "class names differ"
    );
    assert_eq!(rebuilt(&fewer, &t, Some("ckpt-2")), CacheOutcome::Loaded);
    let one = t.single(0).unwrap();
    assert_eq!(
        reason(rebuilt(&fewer, &one, Some("ckpt-2"))),
        "templates differ"
    );

    // no key: the text tower's hash; another init of the model differs, the same one does not
    assert_eq!(
        reason(rebuilt(&classes, &t, None)),
        "class names differ",
        "class list checked first"
    );
    assert_eq!(rebuilt(&classes, &t, None), CacheOutcome::Loaded);
    assert_eq!(text_tower_key(&model), text_tower_key(&small_model(7)));
    let other = small_model(8);
    assert_ne!(text_tower_key(&model), text_tower_key(&other));
    let (c, out) = ZeroShotClassifier::build_cached(&other, &classes, &t, &path, None, 8).unwrap();
    assert_eq!(reason(out), "model key differs");
    assert_ne!(c.weights().to_vec(), a.weights().to_vec());

    // save/load directly
    let p2 = dir.join("direct.safetensors");
    a.save(&p2).unwrap();
    let l = ZeroShotClassifier::load(&p2).unwrap();
    assert_eq!(l.weights().to_le_bytes(), a.weights().to_le_bytes());
    assert_eq!(l.model_key(), a.model_key());

    // a corrupt cache is rebuilt, not an error
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let o = reason(rebuilt(&classes, &t, Some("k")));
    assert!(o.starts_with("unreadable cache"), "{o}");
    assert_eq!(rebuilt(&classes, &t, Some("k")), CacheOutcome::Loaded);
}

// ---- accuracy -------------------------------------------------------------------------------

#[test]
fn topk_accuracy_with_ties_counted_against_the_model() {
    let nan = f32::NAN;
    #[rustfmt::skip]
    let logits = Tensor::from_vec(vec![
        0.9, 0.1, 0.0, -1.0, // y=0: rank 0
        0.5, 0.5, 0.2, 0.1,  // y=1: tied with class 0 → rank 1
        0.3, 0.3, 0.3, 0.3,  // y=2: all tied → rank 3
        0.1, 0.2, 0.3, 0.4,  // y=0: last → rank 3
        0.0, nan, 0.5, 0.1,  // y=3: NaN and 0.5 above → rank 2
        nan, 0.0, 0.0, 0.0,  // y=0: NaN true logit → always a miss
    ], [6, 4]).unwrap();
    let labels = [0, 1, 2, 0, 3, 0];
    let acc = |k| accuracy(&logits, &labels, k).unwrap();
    assert_eq!(acc(1), 1.0 / 6.0);
    assert_eq!(acc(2), 2.0 / 6.0);
    assert_eq!(acc(3), 3.0 / 6.0);
    assert_eq!(acc(4), 5.0 / 6.0);
    assert_eq!(acc(5), 5.0 / 6.0);
    assert_eq!(acc(0), 0.0);
    assert_eq!(
        accuracies(&logits, &labels, &[1, 5]).unwrap(),
        vec![1.0 / 6.0, 5.0 / 6.0]
    );
    // shape errors
    assert!(accuracy(&logits, &labels[..5], 1).is_err());
    assert!(accuracy(&logits, &[0, 1, 2, 0, 3, 4], 1).is_err());
    assert!(accuracy(&Tensor::zeros([6]), &labels, 1).is_err());
    assert_eq!(accuracy(&Tensor::zeros([0, 4]), &[], 1).unwrap(), 0.0);
}

// ---- retrieval ------------------------------------------------------------------------------

fn one_hot(d: usize, entries: &[(usize, f32)]) -> Vec<f32> {
    let mut v = vec![0.0; d];
    for &(i, x) in entries {
        v[i] = x;
    }
    v
}

#[test]
fn retrieval_recall_on_a_constructed_case() {
    let d = 8;
    // images: e0..e4 (image 4 has no caption)
    let images: Vec<f32> = (0..5).flat_map(|i| one_hot(d, &[(i, 1.0)])).collect();
    // captions: t0..t2 exact; t3 (image 3) mostly e0; t4 (image 3) e3 + e1/2; t5 (image 0) = e3
    let texts: Vec<f32> = [
        one_hot(d, &[(0, 1.0)]),
        one_hot(d, &[(1, 2.0)]), // norm does not matter
        one_hot(d, &[(2, 1.0)]),
        one_hot(d, &[(0, 0.9), (3, 0.1)]),
        one_hot(d, &[(3, 1.0), (1, 0.5)]),
        one_hot(d, &[(3, 1.0)]),
    ]
    .concat();
    let text_to_image = [0, 1, 2, 3, 3, 0];
    let r = retrieval_recall(
        &Tensor::from_vec(images, [5, d]).unwrap(),
        &Tensor::from_vec(texts, [6, d]).unwrap(),
        &text_to_image,
        &[1, 2, 5],
    )
    .unwrap();
    assert_eq!(r.num_image_queries, 4);
    assert_eq!(r.num_text_queries, 6);
    // image→text ranks: img0 0 (t0), img1 0, img2 0, img3 1 (t5 = e3 beats t4)
    assert_eq!(r.image_to_text, vec![(1, 0.75), (2, 1.0), (5, 1.0)]);
    // text→image ranks: 0, 0, 0, 1 (e0 first), 0, and t5: image 0 scores 0, tied with
    // images 1, 2 and 4 and beaten by image 3 → rank 4
    assert_eq!(
        r.text_to_image,
        vec![(1, 4.0 / 6.0), (2, 5.0 / 6.0), (5, 1.0)]
    );
    assert_eq!(r.image_to_text_at(1), Some(0.75));
    assert_eq!(r.text_to_image_at(10), None);

    // errors: bad index, length mismatch, dim mismatch
    let i = Tensor::zeros([2, 4]);
    let t = Tensor::zeros([3, 4]);
    assert!(retrieval_recall(&i, &t, &[0, 1, 2], &[1]).is_err());
    assert!(retrieval_recall(&i, &t, &[0, 1], &[1]).is_err());
    assert!(retrieval_recall(&i, &Tensor::zeros([3, 5]), &[0, 1, 1], &[1]).is_err());
}

#[test]
fn retrieval_recall_with_controlled_noise() {
    // each caption = its image's one-hot + noise: perfect recall while the noise is small
    let (n, per, d) = (6, 3, 16);
    let images: Vec<f32> = (0..n).flat_map(|i| one_hot(d, &[(i, 1.0)])).collect();
    let noise = Tensor::randn([n * per, d], 0.05, 11).to_vec();
    let mut texts = Vec::new();
    let mut t2i = Vec::new();
    for i in 0..n {
        for c in 0..per {
            let row = (i * per + c) * d;
            let mut v = one_hot(d, &[(i, 1.0)]);
            v.iter_mut()
                .zip(&noise[row..row + d])
                .for_each(|(a, b)| *a += b);
            texts.extend(v);
            t2i.push(i);
        }
    }
    let r = retrieval_recall(
        &Tensor::from_vec(images, [n, d]).unwrap(),
        &Tensor::from_vec(texts, [n * per, d]).unwrap(),
        &t2i,
        &[1, 5, 10],
    )
    .unwrap();
    assert!(r.image_to_text.iter().all(|&(_, x)| x == 1.0), "{r:?}");
    assert!(r.text_to_image.iter().all(|&(_, x)| x == 1.0), "{r:?}");
}

/// Brute force: sort every candidate by score (descending), matching ones after non-matching
/// ones on ties; a hit at k when the first matching one is in the first k.
fn brute_recall(sim: &[Vec<f64>], matches: &dyn Fn(usize, usize) -> bool, k: usize) -> f32 {
    let mut hits = 0;
    let mut queries = 0;
    for (q, row) in sim.iter().enumerate() {
        if !(0..row.len()).any(|j| matches(q, j)) {
            continue;
        }
        queries += 1;
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| {
            row[b]
                .partial_cmp(&row[a])
                .unwrap()
                .then(matches(q, a).cmp(&matches(q, b)))
        });
        if order[..k.min(order.len())].iter().any(|&j| matches(q, j)) {
            hits += 1;
        }
    }
    hits as f32 / queries as f32
}

#[test]
fn retrieval_recall_matches_brute_force_on_random_features() {
    for seed in 0..3u64 {
        let (n, m, d) = (37, 90, 12);
        let img = Tensor::randn([n, d], 1.0, 100 + seed);
        let txt = Tensor::randn([m, d], 1.0, 200 + seed);
        // a few images get no caption, some several
        let t2i: Vec<usize> = (0..m)
            .map(|t| ((t as u64 * 2654435761 + seed) % (n as u64 - 3)) as usize)
            .collect();
        let ks = [1, 5, 10];
        let r = retrieval_recall(&img, &txt, &t2i, &ks).unwrap();
        let unit = |t: &Tensor, rows: usize| -> Vec<Vec<f64>> {
            t.to_vec()
                .chunks(d)
                .take(rows)
                .map(|r| {
                    let n = r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                    r.iter().map(|&x| x as f64 / n).collect()
                })
                .collect()
        };
        let (iu, tu) = (unit(&img, n), unit(&txt, m));
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let i2t: Vec<Vec<f64>> = iu
            .iter()
            .map(|i| tu.iter().map(|t| dot(i, t)).collect())
            .collect();
        let t2i_sim: Vec<Vec<f64>> = tu
            .iter()
            .map(|t| iu.iter().map(|i| dot(t, i)).collect())
            .collect();
        assert_eq!(r.num_image_queries, {
            let mut has = vec![false; n];
            t2i.iter().for_each(|&i| has[i] = true);
            has.iter().filter(|&&h| h).count()
        });
        for (idx, &k) in ks.iter().enumerate() {
            let want_i2t = brute_recall(&i2t, &|i, t| t2i[t] == i, k);
            let want_t2i = brute_recall(&t2i_sim, &|t, i| t2i[t] == i, k);
            assert_eq!(r.image_to_text[idx], (k, want_i2t), "seed {seed} i2t@{k}");
            assert_eq!(r.text_to_image[idx], (k, want_t2i), "seed {seed} t2i@{k}");
        }
    }
}
