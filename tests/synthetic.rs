//! The synthetic dataset: determinism, held-out design, captions, and what the pixels show.
//! Every test draws fresh indices from a per-run seed (printed; set `CLIPCU_TEST_SEED` to replay).

use clipcu::data::synthetic::{
    caption_templates, held_out_templates, splitmix64, Attributes, Background, Colour, Position,
    Sample, Shape, Size, Split, Synthetic, SyntheticConfig, Task, Texture, MAX_COUNT,
};
use std::collections::HashSet;

fn run_seed() -> u64 {
    let seed = std::env::var("CLIPCU_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_nanos() as u64
        });
    eprintln!("CLIPCU_TEST_SEED={seed}");
    seed
}

/// Fresh random indices (and a dataset seed) for this run.
struct Draw(u64);
impl Draw {
    fn new() -> Draw {
        Draw(run_seed())
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix64(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn data(seed: u64, image_size: u32) -> Synthetic {
    Synthetic::new(SyntheticConfig { seed, image_size })
}

fn dist(a: [u8; 3], b: [u8; 3]) -> f32 {
    (0..3)
        .map(|i| (a[i] as f32 - b[i] as f32).powi(2))
        .sum::<f32>()
        .sqrt()
}

#[test]
fn samples_are_a_pure_function_of_seed_split_and_index() {
    let mut d = Draw::new();
    let seed = d.next();
    let (a, b) = (data(seed, 48), data(seed, 48));
    for split in [Split::Train, Split::HeldOut] {
        let indices: Vec<u64> = (0..24).map(|_| d.next()).collect();
        let batch = a.batch_of(split, &indices);
        for (k, &i) in indices.iter().enumerate() {
            let (x, y) = (a.sample(split, i), b.sample(split, i));
            assert_eq!(x.image, y.image, "seed {seed} {split:?} index {i}");
            assert_eq!(x.caption, y.caption);
            assert_eq!(x.attrs, y.attrs);
            assert_eq!(batch[k].image, x.image, "batch_of matches sample");
            assert_eq!(batch[k].caption, x.caption);
            let z = a.sample(split, i.wrapping_add(1));
            assert_ne!(
                x.image, z.image,
                "seed {seed} {split:?}: index {i} and the next"
            );
        }
        let start = d.next() >> 1;
        for (k, s) in a.batch(split, start, 9).iter().enumerate() {
            assert_eq!(s.image, a.sample(split, start + k as u64).image);
        }
    }
    // The recipe (attributes, caption) does not depend on the image size; the seed matters.
    let (c, other) = (data(seed, 32), data(seed ^ 1, 48));
    let i = d.next();
    assert_eq!(
        c.sample(Split::Train, i).caption,
        a.sample(Split::Train, i).caption
    );
    assert_eq!(c.sample(Split::Train, i).image.dimensions(), (32, 32));
    let differs = (0..8).any(|k| {
        other.sample(Split::Train, i + k).caption != a.sample(Split::Train, i + k).caption
    });
    assert!(differs, "another seed gives other samples");
}

#[test]
fn held_out_combos_are_balanced_and_depend_on_the_seed() {
    let mut d = Draw::new();
    let mut sets = HashSet::new();
    for _ in 0..6 {
        let seed = d.next();
        let ds = data(seed, 32);
        let held = ds.held_out_combos();
        assert_eq!(held.len(), 20, "seed {seed}");
        assert_eq!(ds.train_combos().len(), 80);
        for &s in Shape::ALL {
            assert_eq!(
                held.iter().filter(|h| h.0 == s).count(),
                2,
                "seed {seed} {s:?}"
            );
        }
        for &c in Colour::ALL {
            assert_eq!(
                held.iter().filter(|h| h.1 == c).count(),
                2,
                "seed {seed} {c:?}"
            );
        }
        for &(s, c) in &held {
            assert!(ds.is_held_out(s, c));
            assert!(!ds.train_combos().contains(&(s, c)));
        }
        sets.insert(held);
    }
    assert!(sets.len() > 1, "the held-out set follows the seed");
}

#[test]
fn splits_keep_to_their_combos_and_templates() {
    let mut d = Draw::new();
    let seed = d.next();
    let ds = data(seed, 32);
    let held_t: HashSet<usize> = held_out_templates().iter().copied().collect();
    assert!(held_t.len() >= 3 && caption_templates().len() >= 12);
    let (mut shapes, mut colours, mut combos, mut templates) = (
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
    );
    let base = d.next() >> 1;
    for i in base..base + 3000 {
        let r = ds.recipe(Split::Train, i);
        let (s, c) = (r.attrs.shape, r.attrs.colour);
        assert!(
            !ds.is_held_out(s, c),
            "seed {seed} train {i}: held-out {s:?} {c:?}"
        );
        assert!(
            !held_t.contains(&r.template),
            "seed {seed} train {i}: held-out template"
        );
        shapes.insert(s);
        colours.insert(c);
        combos.insert((s, c));
        templates.insert(r.template);
    }
    assert_eq!(shapes.len(), Shape::ALL.len(), "every shape is trained on");
    assert_eq!(
        colours.len(),
        Colour::ALL.len(),
        "every colour is trained on"
    );
    assert_eq!(combos.len(), 80, "every training combination appears");
    assert_eq!(templates.len(), caption_templates().len() - held_t.len());
    let (mut held_combos, mut held_templates_used) = (HashSet::new(), 0);
    for i in base..base + 1000 {
        let r = ds.recipe(Split::HeldOut, i);
        assert!(
            ds.is_held_out(r.attrs.shape, r.attrs.colour),
            "seed {seed} held-out {i}"
        );
        held_combos.insert((r.attrs.shape, r.attrs.colour));
        held_templates_used += held_t.contains(&r.template) as usize;
    }
    assert_eq!(held_combos.len(), 20);
    assert!(
        held_templates_used > 100,
        "held-out samples use held-out templates too"
    );
}

/// The fixed words of a template, in order (the text between its slots).
fn fragments(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push(rest[..open].to_string());
        let close = rest[open..].find('}').unwrap() + open;
        rest = &rest[close + 1..];
    }
    out.push(rest.to_string());
    out.into_iter().filter(|f| !f.trim().is_empty()).collect()
}

fn check_attributes(ds: &Synthetic, s: &Sample, what: &str) {
    let a = &s.attrs;
    let size = ds.config().image_size as f32;
    assert!((1..=MAX_COUNT).contains(&a.count), "{what}");
    assert_eq!(a.position.is_some(), a.count == 1, "{what}");
    assert!(
        a.count == 1 || a.size != Size::Large,
        "{what}: several large objects"
    );
    assert!(a.background.contrasts_with(a.colour), "{what}");
    assert_eq!(s.objects.len(), a.count as usize, "{what}");
    for (k, o) in s.objects.iter().enumerate() {
        let frac = o.radius / (a.size.radius_fraction() * size);
        assert!((0.92..=1.08).contains(&frac), "{what}: radius {}", o.radius);
        assert!(
            o.cx - o.radius >= 0.0 && o.cx + o.radius <= size,
            "{what}: {o:?}"
        );
        assert!(
            o.cy - o.radius >= 0.0 && o.cy + o.radius <= size,
            "{what}: {o:?}"
        );
        for p in &s.objects[k + 1..] {
            let d = (o.cx - p.cx).hypot(o.cy - p.cy);
            assert!(d >= o.radius + p.radius, "{what}: objects overlap");
        }
    }
    if let Some(p) = a.position {
        let (col, row) = (p.index() % 3, p.index() / 3);
        let o = &s.objects[0];
        for (axis, c) in [(col, o.cx), (row, o.cy)] {
            let f = c / size;
            let ok = match axis {
                0 => f < 0.35,
                1 => (0.40..=0.60).contains(&f),
                _ => f > 0.65,
            };
            assert!(
                ok,
                "{what}: {p:?} drawn at {:?}",
                (o.cx / size, o.cy / size)
            );
        }
    }
}

#[test]
fn shape_contrast_groups_share_a_scene_and_differ_in_shape() {
    let mut d = Draw::new();
    let seed = d.next();
    let ds = data(seed, 32);
    let templates: HashSet<usize> = held_out_templates().iter().copied().collect();
    for (split, partners) in [(Split::Train, 8), (Split::HeldOut, 2)] {
        for group in [2usize, 5, 8, 12] {
            let start = (d.next() >> 4) / group as u64 * group as u64; // a group boundary
            let n = 3 * group;
            let batch = ds.grouped_batch(split, start, n, group);
            assert_eq!(batch.len(), n);
            for (g, members) in batch.chunks(group).enumerate() {
                let what = format!("seed {seed} {split:?} group size {group}, group {g}");
                let scene = |a: &Attributes| {
                    (
                        a.colour,
                        a.size,
                        a.count,
                        a.position,
                        a.background,
                        a.texture,
                    )
                };
                let first = &members[0].attrs;
                let mut shapes = Vec::new();
                for s in members {
                    assert_eq!(scene(&s.attrs), scene(first), "{what}: scene differs");
                    assert_eq!(
                        ds.is_held_out(s.attrs.shape, s.attrs.colour),
                        split == Split::HeldOut,
                        "{what}: {:?} {:?} in the wrong split",
                        s.attrs.colour,
                        s.attrs.shape
                    );
                    if split == Split::Train {
                        assert!(!templates.contains(&s.template), "{what}: held-out pattern");
                    }
                    assert!(
                        s.caption.contains(s.attrs.shape.noun(s.attrs.count)),
                        "{what}"
                    );
                    check_attributes(&ds, s, &what);
                    shapes.push(s.attrs.shape);
                }
                // Distinct shapes while the colour has partners left, then repeating in order.
                let distinct: HashSet<Shape> = shapes.iter().copied().collect();
                assert_eq!(distinct.len(), group.min(partners), "{what}: {shapes:?}");
                for k in partners..group {
                    assert_eq!(shapes[k], shapes[k - partners], "{what}: {shapes:?}");
                }
                // Per-sample jitter: same scene, different pixels.
                assert_ne!(members[0].image, members[1].image, "{what}");
            }
            // A pure function of (seed, split, index, group): any sub-range renders the same.
            let k = d.below(n as u64);
            let again = ds.grouped_batch(split, start + k, 1, group);
            assert_eq!(again[0].image, batch[k as usize].image);
            assert_eq!(again[0].caption, batch[k as usize].caption);
        }
        // Group size 0 or 1 is the plain stream.
        let i = d.next() >> 1;
        for group in [0, 1] {
            let s = &ds.grouped_batch(split, i, 1, group)[0];
            assert_eq!(s.image, ds.sample(split, i).image);
            assert_eq!(s.caption, ds.sample(split, i).caption);
        }
    }
    // Over many groups every colour and every training pair turns up.
    let batch = ds.grouped_batch(Split::Train, 0, 8 * 400, 8);
    let pairs: HashSet<(Shape, Colour)> = batch
        .iter()
        .map(|s| (s.attrs.shape, s.attrs.colour))
        .collect();
    assert_eq!(pairs.len(), ds.train_combos().len(), "seed {seed}");
}

#[test]
fn captions_say_what_is_drawn() {
    let mut d = Draw::new();
    let seed = d.next();
    let ds = data(seed, 32);
    let numbers = ["one", "two", "three", "four"];
    let mut said_colour = 0;
    let n = 1500;
    for k in 0..n {
        let split = if k % 3 == 0 {
            Split::HeldOut
        } else {
            Split::Train
        };
        let i = d.next();
        let s = ds.sample(split, i);
        let (a, c) = (&s.attrs, &s.caption);
        let what = format!("seed {seed} {split:?} {i}: {c:?} for {a:?}");
        check_attributes(&ds, &s, &what);
        let words: Vec<&str> = c
            .split(|ch: char| !ch.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
            .collect();
        assert!(
            words.contains(&a.shape.noun(a.count)),
            "{what}: no shape noun"
        );
        if a.count > 1 {
            assert!(
                words.contains(&numbers[a.count as usize - 1]),
                "{what}: count"
            );
            assert!(!words.contains(&a.shape.name()), "{what}: singular noun");
        }
        for (w, next) in words.iter().zip(words.iter().skip(1)) {
            let vowel = next.starts_with(['a', 'e', 'i', 'o', 'u']);
            let wrong = (*w == "a" && vowel) || (*w == "an" && !vowel);
            assert!(!wrong, "{what}: article");
        }
        let template = caption_templates()[s.template];
        if template.contains("{bg}") {
            assert!(
                c.contains(&format!("{} background", a.background.name()))
                    || c.contains(&format!("{} backdrop", a.background.name()))
            );
        }
        let mut at = 0;
        for f in fragments(template) {
            let found = c[at..]
                .find(&f)
                .unwrap_or_else(|| panic!("{what}: {f:?} missing"));
            at += found + f.len();
        }
        assert!(!c.contains('{') && !c.contains("  "), "{what}");
        said_colour += words.contains(&a.colour.name()) as usize;
        // words of other shapes never appear
        for &other in Shape::ALL.iter().filter(|&&o| o != a.shape) {
            assert!(!words.contains(&other.name()) && !words.contains(&other.noun(2)));
        }
    }
    assert!(
        said_colour * 100 > n * 80,
        "colour said in {said_colour}/{n} captions"
    );
}

/// Area of a shape in units of radius², by sampling its distance function.
fn unit_area(shape: Shape) -> f32 {
    let n = 400;
    let step = 2.0 / n as f32;
    let mut inside = 0;
    for i in 0..n {
        for j in 0..n {
            let (x, y) = (
                -1.0 + (i as f32 + 0.5) * step,
                -1.0 + (j as f32 + 0.5) * step,
            );
            inside += (shape.sdf(x, y) < 0.0) as usize;
        }
    }
    inside as f32 * step * step
}

#[test]
fn shapes_fit_the_unit_disc() {
    for &s in Shape::ALL {
        for k in 0..720 {
            let a = k as f32 * std::f32::consts::TAU / 720.0;
            for r in [1.0f32, 1.05, 1.5] {
                assert!(
                    s.sdf(r * a.cos(), r * a.sin()) > 0.0,
                    "{s:?} pokes out at {a}"
                );
            }
        }
        // No sliver that vanishes at 32 px: the thinnest, the arrow (a 0.4-wide shaft), covers
        // 0.85 r²; distinctness itself is `shapes_are_distinguishable_at_32_px`.
        let area = unit_area(s);
        assert!((0.8..=3.0).contains(&area), "{s:?}: area {area}");
    }
}

/// A random sample's attributes with some fields forced.
fn random_attrs(d: &mut Draw, ds: &Synthetic) -> Attributes {
    let i = d.next();
    ds.recipe(Split::Train, i).attrs
}

#[test]
fn pixels_show_the_colour_over_the_expected_area_on_the_background() {
    let mut d = Draw::new();
    let seed = d.next();
    let ds = data(seed, 64);
    let areas: Vec<f32> = Shape::ALL.iter().map(|&s| unit_area(s)).collect();
    for _ in 0..300 {
        let mut a = random_attrs(&mut d, &ds);
        if d.below(2) == 0 {
            a.shape = Shape::ALL[d.below(10) as usize]; // held-out pairs render the same way
        }
        a.background = *ds
            .backgrounds_for(a.colour)
            .get(d.below(4) as usize % ds.backgrounds_for(a.colour).len())
            .unwrap();
        let textured = a.texture;
        a.texture = Texture::Solid;
        let jitter = d.next();
        let (img, objects) = ds.render(&a, jitter);
        let what = format!("seed {seed} jitter {jitter}: {a:?}");
        let (fg, bg) = (a.colour.rgb(), a.background.rgb());
        let expected: f32 = objects
            .iter()
            .map(|o| areas[a.shape.index()] * o.radius.powi(2))
            .sum();
        let slack: f32 = objects.iter().map(|o| 8.0 * o.radius).sum::<f32>() + 2.0;
        let (mut n_fg, mut n_bg) = (0.0f32, 0.0f32);
        for (x, y, p) in img.enumerate_pixels() {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let near_fg = dist(p.0, fg) < 45.0;
            let near_bg = dist(p.0, bg) < 45.0;
            n_fg += near_fg as u8 as f32;
            n_bg += near_bg as u8 as f32;
            // signed distance to the nearest object, in pixels
            let sd = objects
                .iter()
                .map(|o| {
                    let (dx, dy) = (px - o.cx, py - o.cy);
                    let (c, s) = (o.angle.cos(), o.angle.sin());
                    let (u, v) = (c * dx + s * dy, c * dy - s * dx);
                    a.shape.sdf(u / o.radius, v / o.radius) * o.radius
                })
                .fold(f32::INFINITY, f32::min);
            if sd > 1.0 {
                assert!(near_bg, "{what}: background pixel ({x},{y}) is {:?}", p.0);
            } else if sd < -1.0 {
                assert!(
                    dist(p.0, fg) < 25.0,
                    "{what}: object pixel ({x},{y}) is {:?}",
                    p.0
                );
            }
        }
        assert!(
            (n_fg - expected).abs() <= slack,
            "{what}: {n_fg} object pixels, ~{expected}"
        );
        let rest = (64 * 64) as f32 - expected;
        assert!(
            (n_bg - rest).abs() <= slack,
            "{what}: {n_bg} background pixels, ~{rest}"
        );

        // The same object textured: the tint covers a good part of its inside.
        if textured != Texture::Solid {
            a.texture = textured;
            let (img, _) = ds.render(&a, jitter);
            let inside = img.pixels().filter(|p| dist(p.0, bg) >= 45.0).count() as f32;
            let tinted = img
                .pixels()
                .filter(|p| dist(p.0, bg) >= 45.0 && dist(p.0, fg) >= 25.0)
                .count() as f32;
            assert!(
                tinted > 0.1 * inside,
                "{what} {textured:?}: {tinted} of {inside}"
            );
        }
    }
}

/// Rotation-invariant descriptor of the object around its known centre: on 8 rings, the mean
/// foreground-ness and the magnitudes of its angular harmonics 2..=6.
fn descriptor(img: &image::RgbImage, bg: [u8; 3], cx: f32, cy: f32, r: f32) -> Vec<f32> {
    let fgness = |x: f32, y: f32| {
        let (xi, yi) = (x.floor() as i64, y.floor() as i64);
        if xi < 0 || yi < 0 || xi >= img.width() as i64 || yi >= img.height() as i64 {
            return 0.0;
        }
        let p = img.get_pixel(xi as u32, yi as u32).0;
        ((dist(p, bg) - 20.0) / 60.0).clamp(0.0, 1.0)
    };
    let mut out = Vec::new();
    let angles = 48;
    for ring in 0..8 {
        let rho = (ring as f32 + 0.5) / 8.0 * 1.05 * r;
        let vals: Vec<f32> = (0..angles)
            .map(|k| {
                let a = k as f32 * std::f32::consts::TAU / angles as f32;
                fgness(cx + rho * a.cos(), cy + rho * a.sin())
            })
            .collect();
        out.push(vals.iter().sum::<f32>() / angles as f32);
        for h in 2..=6 {
            let (mut re, mut im) = (0.0f32, 0.0f32);
            for (k, v) in vals.iter().enumerate() {
                let a = (h * k) as f32 * std::f32::consts::TAU / angles as f32;
                re += v * a.cos();
                im += v * a.sin();
            }
            out.push(re.hypot(im) / angles as f32);
        }
    }
    out
}

/// Accuracy of a nearest-centroid classifier on [`descriptor`], fitted on one set of renders and
/// scored on fresh ones: single solid objects of the given sizes, any colour and position.
fn nearest_centroid_accuracy(d: &mut Draw, ds: &Synthetic, sizes: &[Size]) -> f32 {
    let mut make = |shape: Shape| {
        let colour = Colour::ALL[d.below(10) as usize];
        let bgs: Vec<Background> = ds.backgrounds_for(colour).to_vec();
        let a = Attributes {
            shape,
            colour,
            size: sizes[d.below(sizes.len() as u64) as usize],
            count: 1,
            position: Some(Position::ALL[d.below(9) as usize]),
            background: bgs[d.below(bgs.len() as u64) as usize],
            texture: Texture::Solid,
        };
        let (img, obj) = ds.render(&a, d.next());
        let o = obj[0];
        descriptor(&img, a.background.rgb(), o.cx, o.cy, o.radius)
    };
    let (fit, score) = (40, 30);
    let mut centroids = Vec::new();
    for &s in Shape::ALL {
        let xs: Vec<Vec<f32>> = (0..fit).map(|_| make(s)).collect();
        let dim = xs[0].len();
        centroids.push(
            (0..dim)
                .map(|j| xs.iter().map(|x| x[j]).sum::<f32>() / fit as f32)
                .collect::<Vec<f32>>(),
        );
    }
    let mut correct = 0;
    let mut confusion = vec![vec![0; 10]; 10];
    for &s in Shape::ALL {
        for _ in 0..score {
            let x = make(s);
            let d2 = |c: &Vec<f32>| x.iter().zip(c).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
            let best = (0..10)
                .min_by(|&i, &j| d2(&centroids[i]).total_cmp(&d2(&centroids[j])))
                .unwrap();
            correct += (best == s.index()) as usize;
            confusion[s.index()][best] += 1;
        }
    }
    let acc = correct as f32 / (10 * score) as f32;
    eprintln!(
        "{sizes:?}: nearest-centroid accuracy {acc:.3}; confusion (rows: truth) {confusion:?}"
    );
    acc
}

#[test]
fn shapes_are_distinguishable_at_32_px() {
    let mut d = Draw::new();
    let seed = d.next();
    let ds = data(seed, 32);
    let big = nearest_centroid_accuracy(&mut d, &ds, &[Size::Medium, Size::Large]);
    assert!(big >= 0.85, "seed {seed}: medium and large, accuracy {big}");
    let small = nearest_centroid_accuracy(&mut d, &ds, &[Size::Small]);
    assert!(small >= 0.75, "seed {seed}: small, accuracy {small}");
}

#[test]
fn zero_shot_classes_and_prompts() {
    let mut d = Draw::new();
    let ds = data(d.next(), 32);
    assert!(Task::Shape.class_names().len() >= 8 && Task::Colour.class_names().len() >= 8);
    for &task in Task::ALL {
        for (k, name) in task.class_names().iter().enumerate() {
            let prompts = task.prompts(k);
            assert!(prompts.len() >= 3);
            for p in &prompts {
                assert!(p.contains(name) && !p.contains('{'), "{task:?}: {p}");
                assert!(!p.contains(" a o") && !p.contains(" a a"), "{task:?}: {p}");
            }
        }
    }
    assert_eq!(Task::Count.prompts(0)[0], "a photo of one shape.");
    assert_eq!(Task::Count.prompts(2)[0], "a photo of three shapes.");
    assert_eq!(
        Task::Colour.prompts(Colour::Orange.index())[0],
        "a photo of an orange shape."
    );
    // shape prompts name both numbers: half the training captions use the plural noun
    let cross = Task::Shape.prompts(Shape::Cross.index());
    assert!(
        cross.contains(&"a photo of a cross.".to_string()),
        "{cross:?}"
    );
    assert!(
        cross.contains(&"a photo of some crosses.".to_string()),
        "{cross:?}"
    );
    for _ in 0..200 {
        let s = ds.recipe(Split::HeldOut, d.next()).attrs;
        for &task in Task::ALL {
            assert!(s.label(task) < task.class_names().len());
        }
        assert_eq!(
            Task::Shape.class_names()[s.label(Task::Shape)],
            s.shape.name()
        );
        assert_eq!(
            Task::Colour.class_names()[s.label(Task::Colour)],
            s.colour.name()
        );
        assert_eq!(s.label(Task::Count) + 1, s.count as usize);
    }
}
