//! The data pipeline: shard patterns, WebDataset/CSV/ImageFolder sources, the loader's skips,
//! determinism across worker counts and exact resume. Every dataset is built here, in a temp
//! dir, with fresh random content (the seed is printed).

use clipcu::data::sources::{index_shard, CsvOptions};
use clipcu::data::synthetic::{Split, Synthetic, SyntheticConfig};
use clipcu::data::{
    expand_braces, Batch, DataPosition, ImageFolder, Loader, LoaderConfig, Source, OPENAI_MEAN,
    OPENAI_STD,
};
use image::{ImageFormat, RgbImage};
use rand::{Rng, RngCore, SeedableRng};
use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

fn rng() -> rand::rngs::StdRng {
    let seed: u64 = rand::random();
    eprintln!("content seed {seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// A solid-colour PNG whose red channel is `v` (lossless: the batch pixel gives `v` back).
fn solid_png(v: u8, w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_pixel(w, h, image::Rgb([v, 255 - v, 77]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A noise-textured JPEG.
fn noise_jpeg(r: &mut impl RngCore, w: u32, h: u32) -> Vec<u8> {
    let mut img = RgbImage::new(w, h);
    for p in img.pixels_mut() {
        *p = image::Rgb([r.random(), r.random(), r.random()]);
    }
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn write_tar(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

/// Entries of a shard of `n` samples keyed `{prefix}{i:04}`: a solid PNG with red `base + i`,
/// a caption naming the key, and a `.json` that must be ignored.
fn shard_entries(prefix: &str, n: usize, base: u8) -> Vec<(String, Vec<u8>)> {
    let mut e = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}{i:04}");
        e.push((format!("{key}.png"), solid_png(base + i as u8, 20, 14)));
        e.push((
            format!("{key}.txt"),
            format!("a photo of {key}").into_bytes(),
        ));
        e.push((format!("{key}.json"), b"{\"url\": null}".to_vec()));
    }
    e
}

fn cfg(batch: usize, workers: usize) -> LoaderConfig {
    LoaderConfig {
        context_length: 16,
        seed: 11,
        workers,
        prefetch: 2,
        epochs: Some(1),
        ..LoaderConfig::new(batch, 8)
    }
}

fn drain(loader: &mut Loader) -> Vec<Batch> {
    let mut out = Vec::new();
    while let Some(b) = loader.next_batch().unwrap() {
        out.push(b);
    }
    out
}

/// The red value of sample `i`'s top-left pixel, undoing the normalisation.
fn red(b: &Batch, i: usize) -> u8 {
    let s = b.images.shape()[2];
    let x = b.images.to_vec()[i * 3 * s * s];
    ((x * OPENAI_STD[0] + OPENAI_MEAN[0]) * 255.0).round() as u8
}

fn captions(batches: &[Batch]) -> Vec<String> {
    batches.iter().flat_map(|b| b.captions.clone()).collect()
}

fn assert_same(a: &[Batch], b: &[Batch]) {
    assert_eq!(a.len(), b.len(), "batch counts");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.captions, y.captions, "batch {i} captions");
        assert_eq!(x.ids, y.ids, "batch {i} ids");
        assert_eq!(x.position, y.position, "batch {i} position");
        assert_eq!(x.images.shape(), y.images.shape());
        let bits = |t: &clipcu::Tensor| t.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&x.images) == bits(&y.images),
            "batch {i} images differ"
        );
    }
}

#[test]
fn brace_expansion() {
    let e = |p: &str| expand_braces(p).unwrap();
    assert_eq!(
        e("data/{00000..00002}.tar"),
        ["data/00000.tar", "data/00001.tar", "data/00002.tar"]
    );
    assert_eq!(e("{8..10}"), ["8", "9", "10"]);
    assert_eq!(e("{098..100}"), ["098", "099", "100"]);
    assert_eq!(e("{3..1}"), ["3", "2", "1"]);
    assert_eq!(
        e("{a,b}/{0..1}.tar"),
        ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]
    );
    assert_eq!(e("x/{a,}.tar"), ["x/a.tar", "x/.tar"]);
    assert_eq!(e("one.tar"), ["one.tar"]);
    assert_eq!(e("a.tar::b/{1..2}.tar"), ["a.tar", "b/1.tar", "b/2.tar"]);
    assert_eq!(e("lit{x}.tar"), ["lit{x}.tar"]);
    assert_eq!(e("data/{000000..009999}.tar").len(), 10_000);
    for bad in ["a{0..2", "a}b", "{1..x}", "{..3}", "{{a,b}}", ""] {
        assert!(expand_braces(bad).is_err(), "{bad:?} should be an error");
    }
}

#[test]
fn webdataset_yields_pairs_by_key() {
    let dir = tempfile::tempdir().unwrap();
    write_tar(&dir.path().join("s-0.tar"), &shard_entries("a", 7, 0));
    write_tar(&dir.path().join("s-1.tar"), &shard_entries("dir/b", 6, 100));
    let pattern = format!("{}/s-{{0..1}}.tar", dir.path().display());
    let mut loader = Loader::new(Source::webdataset(&pattern).unwrap(), cfg(4, 2), None).unwrap();
    let batches = drain(&mut loader);
    assert_eq!(
        batches.iter().map(Batch::len).collect::<Vec<_>>(),
        [4, 4, 4, 1]
    );
    let mut seen = BTreeSet::new();
    for b in &batches {
        assert_eq!(b.images.shape(), [b.len(), 3, 8, 8]);
        assert_eq!(b.ids.len(), b.len() * 16);
        for (i, c) in b.captions.iter().enumerate() {
            // the caption names the key; the image's red channel encodes the same key
            let key = c.strip_prefix("a photo of ").unwrap();
            let (base, idx) = match key.strip_prefix("dir/b") {
                Some(n) => (100, n.parse::<u8>().unwrap()),
                None => (0, key[1..].parse::<u8>().unwrap()),
            };
            assert_eq!(red(b, i), base + idx, "image of {key}");
            let row = &b.ids[i * 16..][..16];
            assert_eq!(row[0], clipcu::tokenizer::Tokenizer::SOT);
            assert!(row.contains(&clipcu::tokenizer::Tokenizer::EOT));
            seen.insert(c.clone());
        }
    }
    assert_eq!(seen.len(), 13);
    assert_eq!(loader.skips().samples(), 0);
    // the default order is shuffled: not the file order
    assert!(batches.iter().all(|b| b.labels.is_empty()));
    let in_file_order: Vec<String> = (0..7).map(|i| format!("a photo of a{i:04}")).collect();
    assert_ne!(captions(&batches)[..7], in_file_order[..]);
}

#[test]
fn bad_samples_in_a_shard_are_skipped_and_counted() {
    let mut r = rng();
    let dir = tempfile::tempdir().unwrap();
    let mut e = shard_entries("g", 5, 10);
    let mut corrupt = noise_jpeg(&mut r, 40, 30);
    let n = corrupt.len();
    corrupt.truncate(n / 2); // a JPEG that breaks off
    e.push(("bad-trunc.jpg".into(), corrupt));
    e.push(("bad-trunc.txt".into(), b"truncated jpeg".to_vec()));
    let mut garbage = vec![0xFF, 0xD8, 0xFF, 0xE0];
    garbage.extend((0..500).map(|_| r.random::<u8>()));
    e.push(("bad-noise.jpeg".into(), garbage));
    e.push(("bad-noise.txt".into(), b"noise bytes".to_vec()));
    e.push(("bad-empty.png".into(), solid_png(1, 5, 5)));
    e.push(("bad-empty.txt".into(), b"  \n\t ".to_vec()));
    e.push(("bad-nocap.png".into(), solid_png(2, 5, 5)));
    e.push(("bad-noimg.txt".into(), b"no image here".to_vec()));
    write_tar(&dir.path().join("s.tar"), &e);
    let src = Source::webdataset(&dir.path().join("s.tar").display().to_string()).unwrap();
    let mut loader = Loader::new(src, cfg(3, 2), None).unwrap();
    let got: BTreeSet<String> = captions(&drain(&mut loader)).into_iter().collect();
    let want: BTreeSet<String> = (0..5).map(|i| format!("a photo of g{i:04}")).collect();
    assert_eq!(got, want);
    let s = loader.skips();
    assert_eq!(s.corrupt_image, 2, "{s:?}");
    assert_eq!(s.empty_caption, 1, "{s:?}");
    assert_eq!(s.missing_caption, 1, "{s:?}");
    assert_eq!(s.missing_image, 1, "{s:?}");
    assert_eq!(s.truncated_shard, 0, "{s:?}");
}

#[test]
fn truncated_tar_gives_its_readable_samples_then_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.tar");
    write_tar(&cut, &shard_entries("c", 12, 0));
    let full_len = std::fs::metadata(&cut).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    f.set_len(full_len * 6 / 10 + 37).unwrap(); // mid-entry (`cut_len` below)
    write_tar(&dir.path().join("ok.tar"), &shard_entries("k", 4, 50));
    let index = index_shard(&cut).unwrap();
    assert!(index.truncated.is_some());
    // The readable samples, from the bytes this test wrote: a sample reads when its image and its
    // caption entries end within the cut (tar: a 512-byte header, then the data padded to 512).
    let cut_len = full_len * 6 / 10 + 37;
    let entries = shard_entries("c", 12, 0);
    let mut ends = Vec::new();
    let mut offset = 0u64;
    for (_, data) in &entries {
        let len = data.len() as u64;
        ends.push(offset + 512 + len);
        offset += 512 + len.div_ceil(512) * 512;
    }
    // entries come as (png, txt, json) per sample
    let readable = (0..12)
        .take_while(|&i| ends[3 * i] <= cut_len && ends[3 * i + 1] <= cut_len)
        .count();
    assert!(
        (1..12).contains(&readable),
        "the cut must fall inside the shard: {readable} samples readable"
    );
    assert_eq!(
        index
            .samples
            .iter()
            .filter(|s| s.image.is_some() && s.caption.is_some())
            .count(),
        readable,
        "the index reads every sample that is whole in the cut file"
    );

    // cut exactly after a whole sample: every entry reads, the end-of-archive blocks are gone
    let clean = dir.path().join("clean.tar");
    write_tar(&clean, &shard_entries("e", 3, 0));
    let whole = index_shard(&clean).unwrap();
    assert!(whole.truncated.is_none());
    let last = whole.samples[1].caption.unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&clean)
        .unwrap();
    f.set_len(whole.samples[2].image.unwrap().offset - 512)
        .unwrap();
    let cut_clean = index_shard(&clean).unwrap();
    assert!(cut_clean.truncated.is_some());
    assert_eq!(cut_clean.samples.len(), 2);
    assert_eq!(cut_clean.samples[1].caption, Some(last));

    let pattern = format!("{}/{{cut,ok}}.tar", dir.path().display());
    let mut loader = Loader::new(Source::webdataset(&pattern).unwrap(), cfg(5, 3), None).unwrap();
    let got: BTreeSet<String> = captions(&drain(&mut loader)).into_iter().collect();
    let mut want: BTreeSet<String> = (0..4).map(|i| format!("a photo of k{i:04}")).collect();
    want.extend((0..readable).map(|i| format!("a photo of c{i:04}")));
    assert_eq!(got, want);
    assert_eq!(loader.skips().truncated_shard, 1);
}

#[test]
fn a_file_that_is_not_a_tar_is_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0.tar"),
        b"this is not a tar archive at all",
    )
    .unwrap();
    write_tar(&dir.path().join("1.tar"), &shard_entries("k", 3, 50));
    let pattern = format!("{}/{{0..1}}.tar", dir.path().display());
    let mut loader = Loader::new(Source::webdataset(&pattern).unwrap(), cfg(2, 1), None).unwrap();
    assert_eq!(captions(&drain(&mut loader)).len(), 3);
    let s = loader.skips();
    assert_eq!(s.unreadable_shard + s.truncated_shard, 1, "{s:?}");
}

#[test]
fn missing_shard_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_tar(&dir.path().join("0.tar"), &shard_entries("k", 1, 0));
    let pattern = format!("{}/{{0..2}}.tar", dir.path().display());
    let err = Source::webdataset(&pattern).unwrap_err().to_string();
    assert!(err.contains("1.tar") && err.contains("2 of the 3"), "{err}");
    // an existing folder is not "a shard that does not exist": say what --data takes
    let err = Source::webdataset(dir.path().to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is a folder") && err.contains(".tar") && err.contains(".csv"),
        "{err}"
    );
}

#[test]
fn csv_and_tsv_sources() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("img")).unwrap();
    let mut rows = String::from("id,filepath,title\n");
    for i in 0..6u8 {
        std::fs::write(
            dir.path().join(format!("img/{i}.png")),
            solid_png(20 + i, 9, 12),
        )
        .unwrap();
        rows += &format!("{i},img/{i}.png,\"caption {i}, with a comma\"\n");
    }
    rows += "6,img/missing.png,not there\n";
    rows += "7,img/0.png,   \n";
    std::fs::write(dir.path().join("img/bad.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    rows += "8,img/bad.png,broken png\n";
    let csv = dir.path().join("train.csv");
    std::fs::write(&csv, rows).unwrap();
    let src = Source::csv(&csv, &CsvOptions::default()).unwrap();
    let mut loader = Loader::new(src, cfg(4, 2), None).unwrap();
    let batches = drain(&mut loader);
    let mut n = 0;
    for b in &batches {
        for (i, c) in b.captions.iter().enumerate() {
            let k: u8 = c["caption ".len()..][..1].parse().unwrap();
            assert_eq!(red(b, i), 20 + k);
            n += 1;
        }
    }
    assert_eq!(n, 6);
    let s = loader.skips();
    assert_eq!(
        (s.missing_image, s.empty_caption, s.corrupt_image),
        (1, 1, 1),
        "{s:?}"
    );

    // TSV: tab inferred from the extension, other column names
    let tsv = dir.path().join("t.tsv");
    std::fs::write(&tsv, "caption\tpath\nhello there\timg/3.png\n").unwrap();
    let opts = CsvOptions {
        image_key: "path".into(),
        caption_key: "caption".into(),
        separator: None,
    };
    let mut loader = Loader::new(Source::csv(&tsv, &opts).unwrap(), cfg(1, 0), None).unwrap();
    let b = loader.next_batch().unwrap().unwrap();
    assert_eq!((b.captions[0].as_str(), red(&b, 0)), ("hello there", 23));
    assert!(loader.next_batch().unwrap().is_none());

    // wrong columns: the error lists the ones found
    let err = Source::csv(&tsv, &CsvOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("filepath") && err.contains("[\"caption\", \"path\"]"),
        "{err}"
    );
    let err = Source::csv(dir.path().join("nope.csv"), &CsvOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.csv"), "{err}");
}

/// Two shards of noise JPEGs of varied sizes, one corrupt sample among them.
fn noise_shards(dir: &Path, r: &mut impl RngCore) -> String {
    for s in 0..3 {
        let mut e = Vec::new();
        for i in 0..(9 + s) {
            let key = format!("{s}-{i:03}");
            let (w, h) = (r.random_range(12..40), r.random_range(12..40));
            let mut img = noise_jpeg(r, w, h);
            if s == 1 && i == 4 {
                img.truncate(img.len() - 30);
            }
            e.push((format!("{key}.jpg"), img));
            e.push((
                format!("{key}.txt"),
                format!("noise sample {key}").into_bytes(),
            ));
        }
        write_tar(&dir.join(format!("n{s}.tar")), &e);
    }
    format!("{}/n{{0..2}}.tar", dir.display())
}

#[test]
fn same_seed_same_batches_whatever_the_workers() {
    let mut r = rng();
    let dir = tempfile::tempdir().unwrap();
    let pattern = noise_shards(dir.path(), &mut r);
    let run = |workers: usize, prefetch: usize, seed: u64| {
        let c = LoaderConfig {
            prefetch,
            seed,
            epochs: Some(3),
            ..cfg(5, workers)
        };
        drain(&mut Loader::new(Source::webdataset(&pattern).unwrap(), c, None).unwrap())
    };
    let a = run(0, 1, 5);
    assert_eq!(a.iter().map(Batch::len).sum::<usize>(), 3 * 29);
    assert_same(&a, &run(1, 2, 5));
    assert_same(&a, &run(4, 3, 5));
    // epochs are shuffled differently, and another seed gives another order
    assert_ne!(captions(&a)[..29], captions(&a)[29..58]);
    assert_ne!(captions(&a), captions(&run(2, 2, 6)));
}

#[test]
fn resume_from_a_position_continues_exactly() {
    let mut r = rng();
    let dir = tempfile::tempdir().unwrap();
    let pattern = noise_shards(dir.path(), &mut r);
    let c = |workers| LoaderConfig {
        epochs: None, // looping: batches run across epoch boundaries
        ..cfg(4, workers)
    };
    let source = Source::webdataset(&pattern).unwrap();
    let mut full = Loader::new(source.clone(), c(2), None).unwrap();
    let all: Vec<Batch> = (0..20)
        .map(|_| full.next_batch().unwrap().unwrap())
        .collect();
    assert!(all.last().unwrap().position.epoch >= 2);
    for k in [1, 7, 8, 13] {
        let mut first = Loader::new(source.clone(), c(3), None).unwrap();
        let head: Vec<Batch> = (0..k)
            .map(|_| first.next_batch().unwrap().unwrap())
            .collect();
        assert_same(&head, &all[..k]);
        let saved = serde_json::to_string(&first.position()).unwrap();
        let pos: DataPosition = serde_json::from_str(&saved).unwrap();
        assert_eq!(pos, all[k - 1].position);
        let mut resumed = Loader::new(source.clone(), c(1), Some(pos)).unwrap();
        let tail: Vec<Batch> = (k..20)
            .map(|_| resumed.next_batch().unwrap().unwrap())
            .collect();
        assert_same(&tail, &all[k..]);
        // skips are counted once: before the position by the first, after it by the second
        let (a, b) = (first.skips(), resumed.skips());
        assert_eq!(
            a.corrupt_image + b.corrupt_image,
            full.skips().corrupt_image
        );
    }
    assert!(full.skips().corrupt_image >= 2);
}

#[test]
fn resume_in_a_csv_and_the_synthetic_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::from("filepath,title\n");
    for i in 0..7u8 {
        std::fs::write(dir.path().join(format!("{i}.png")), solid_png(i, 6, 6)).unwrap();
        rows += &format!("{i}.png,row {i}\n");
    }
    let csv = dir.path().join("d.csv");
    std::fs::write(&csv, rows).unwrap();
    let synth = Source::synthetic(
        Synthetic::new(SyntheticConfig {
            seed: 3,
            image_size: 16,
        }),
        Split::Train,
    );
    for source in [Source::csv(&csv, &CsvOptions::default()).unwrap(), synth] {
        let c = LoaderConfig {
            epochs: None,
            ..cfg(3, 2)
        };
        let mut full = Loader::new(source.clone(), c.clone(), None).unwrap();
        let all: Vec<Batch> = (0..9)
            .map(|_| full.next_batch().unwrap().unwrap())
            .collect();
        let mut resumed = Loader::new(source.clone(), c, Some(all[3].position)).unwrap();
        let tail: Vec<Batch> = (4..9)
            .map(|_| resumed.next_batch().unwrap().unwrap())
            .collect();
        assert_same(&tail, &all[4..]);
    }
}

#[test]
fn synthetic_source_batches() {
    let data = Synthetic::new(SyntheticConfig {
        seed: 9,
        image_size: 32,
    });
    let want: Vec<String> = (0..6)
        .map(|i| data.sample(Split::Train, i).caption)
        .collect();
    let mut loader = Loader::new(
        Source::synthetic(data, Split::Train),
        LoaderConfig {
            epochs: Some(1), // ignored: the synthetic source is infinite
            ..cfg(6, 2)
        },
        None,
    )
    .unwrap();
    let b = loader.next_batch().unwrap().unwrap();
    assert_eq!(b.captions, want);
    assert_eq!(b.position.sample, 6);
    assert_eq!(b.images.shape(), [6, 3, 8, 8]);
}

#[test]
fn a_source_with_nothing_usable_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let e = vec![("x.txt".to_string(), b"caption only".to_vec())];
    write_tar(&dir.path().join("0.tar"), &e);
    let src = Source::webdataset(&dir.path().join("0.tar").display().to_string()).unwrap();
    let c = LoaderConfig {
        epochs: None,
        ..cfg(2, 1)
    };
    let err = Loader::new(src, c, None).unwrap().next_batch().unwrap_err();
    assert!(err.to_string().contains("no usable sample"), "{err}");
}

#[test]
fn image_folder_classes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("val");
    for (class, n) in [("zebra", 2), ("ant", 3), ("cat", 1)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..n {
            std::fs::write(
                root.join(class).join(format!("{i}.PNG")),
                solid_png(i, 4, 4),
            )
            .unwrap();
        }
        std::fs::write(root.join(class).join("notes.txt"), "not an image").unwrap();
    }
    std::fs::write(root.join("README"), "a file at the top is not a class").unwrap();
    let f = ImageFolder::open(&root).unwrap();
    assert_eq!(f.classes, ["ant", "cat", "zebra"]);
    let labels: Vec<usize> = f.samples.iter().map(|(_, c)| *c).collect();
    assert_eq!(labels, [0, 0, 0, 1, 2, 2]);
    let names: Vec<PathBuf> = f.samples.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(names[3], root.join("cat/0.PNG"));

    // as a loader source (evaluation: file order, one pass): class names as captions, labels
    std::fs::write(root.join("cat/9.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let c = LoaderConfig {
        shuffle: false,
        ..cfg(4, 2)
    };
    let mut loader = Loader::new(Source::image_folder(&root).unwrap(), c, None).unwrap();
    let batches = drain(&mut loader);
    let labels: Vec<u32> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(labels, [0, 0, 0, 1, 2, 2]);
    assert_eq!(
        captions(&batches),
        ["ant", "ant", "ant", "cat", "zebra", "zebra"]
    );
    let reds: Vec<u8> = batches
        .iter()
        .flat_map(|b| (0..b.len()).map(|i| red(b, i)))
        .collect();
    assert_eq!(reds, [0, 1, 2, 0, 0, 1]);
    assert_eq!(loader.skips().corrupt_image, 1);

    let err = ImageFolder::open(dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

/// A noise-textured PNG (lossless: any change of crop changes the pixels).
fn noise_png(r: &mut impl RngCore, w: u32, h: u32) -> Vec<u8> {
    let mut img = RgbImage::new(w, h);
    for p in img.pixels_mut() {
        *p = image::Rgb([r.random(), r.random(), r.random()]);
    }
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The image of each caption in `batches`, in stream order, as f32 bits.
fn images_by_caption(batches: &[Batch]) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    for b in batches {
        let per = b.images.numel() / b.len();
        let v = b.images.to_vec();
        for (i, c) in b.captions.iter().enumerate() {
            let img = v[i * per..(i + 1) * per]
                .iter()
                .map(|x| x.to_bits())
                .collect();
            out.push((c.clone(), img));
        }
    }
    out
}

#[test]
fn augmented_stream_resumes_exactly_and_crops_anew_each_epoch() {
    use clipcu::data::RandomResizedCrop;
    let mut r = rng();
    let dir = tempfile::tempdir().unwrap();
    let rows_n = 30;
    let mut rows = String::from("filepath,title\n");
    for i in 0..rows_n {
        // Near-square: an image far outside the ratio bounds (3/4–4/3, at 90% of its area or
        // more) gets torchvision's deterministic fallback box, the same every epoch.
        let (w, h) = (r.random_range(90..100), r.random_range(90..100));
        std::fs::write(dir.path().join(format!("{i}.png")), noise_png(&mut r, w, h)).unwrap();
        rows += &format!("{i}.png,row {i}\n");
    }
    let csv = dir.path().join("d.csv");
    std::fs::write(&csv, rows).unwrap();
    let source = Source::csv(&csv, &CsvOptions::default()).unwrap();
    // 32 px, not cfg's 8: a downscale of ~12× averages a box's noise so widely that boxes a
    // pixel apart round to the same bytes.
    let c = |workers, augment: bool| LoaderConfig {
        epochs: None,
        augment: augment.then(RandomResizedCrop::open_clip),
        image_size: 32,
        ..cfg(3, workers)
    };
    let mut full = Loader::new(source.clone(), c(2, true), None).unwrap();
    let all: Vec<Batch> = (0..24)
        .map(|_| full.next_batch().unwrap().unwrap())
        .collect();
    assert!(all.last().unwrap().position.epoch >= 2);
    // the workers change nothing
    let mut other = Loader::new(source.clone(), c(0, true), None).unwrap();
    let again: Vec<Batch> = (0..24)
        .map(|_| other.next_batch().unwrap().unwrap())
        .collect();
    assert_same(&again, &all);
    // resumed from a checkpointed position (one inside epoch 2 among them): bit-exact
    let in_epoch_2 = all
        .iter()
        .position(|b| b.position.epoch == 1 && b.position.sample > 0);
    for k in [1, 4, in_epoch_2.unwrap() + 1, 17] {
        let saved = serde_json::to_string(&all[k - 1].position).unwrap();
        let pos: DataPosition = serde_json::from_str(&saved).unwrap();
        let mut resumed = Loader::new(source.clone(), c(1, true), Some(pos)).unwrap();
        let tail: Vec<Batch> = (k..24)
            .map(|_| resumed.next_batch().unwrap().unwrap())
            .collect();
        assert_same(&tail, &all[k..]);
    }
    // epoch 2 crops the same rows anew, and crops differ from the center crop
    let imgs = images_by_caption(&all);
    let (e1, e2) = (&imgs[..rows_n], &imgs[rows_n..2 * rows_n]);
    let mut plain = Loader::new(source.clone(), c(1, false), None).unwrap();
    let centre = images_by_caption(
        &(0..10)
            .map(|_| plain.next_batch().unwrap().unwrap())
            .collect::<Vec<_>>(),
    );
    let (mut anew, mut not_centre) = (0, 0);
    for (cap, img) in e1 {
        let later = &e2.iter().find(|(c, _)| c == cap).unwrap().1;
        anew += (later != img) as usize;
        let c = &centre.iter().find(|(c, _)| c == cap).unwrap().1;
        not_centre += (c != img) as usize;
    }
    // By chance a box can repeat, and about one sample in ten gets the whole image, which on an
    // image this close to square (long side < 33/32 of the short) is what the center crop keeps
    // too; so not every row differs, but far more than half must.
    assert!(
        anew >= rows_n / 2,
        "{anew} of {rows_n} rows cropped anew in epoch 2"
    );
    assert!(
        not_centre >= rows_n / 2,
        "{not_centre} of {rows_n} rows differ from the center crop"
    );
}

/// Rank `rank` of `world`'s loader over `source` (looping, augmented, `workers` threads).
fn part_loader(
    source: &Source,
    batch: usize,
    rank: usize,
    world: usize,
    workers: usize,
    start: Option<DataPosition>,
) -> Loader {
    let c = LoaderConfig {
        epochs: None,
        augment: Some(clipcu::data::RandomResizedCrop::open_clip()),
        part: (world > 1).then_some(clipcu::data::Part { rank, world }),
        ..cfg(batch, workers)
    };
    Loader::new(source.clone(), c, start).unwrap()
}

/// A global batch as the ranks read it: captions, image bits, token ids (the parts joined in
/// rank order) and each rank's position after it.
type GlobalBatch = (Vec<String>, Vec<u32>, Vec<u32>, Vec<DataPosition>);

/// `steps` global batches read by `world` rank loaders: per step, the ranks' parts joined in
/// rank order (captions, image bits, ids) and every rank's position after it.
fn global_batches(
    source: &Source,
    batch: usize,
    world: usize,
    steps: usize,
    start: Option<DataPosition>,
) -> Vec<GlobalBatch> {
    // a different worker count on each rank: nothing may depend on it
    let mut ranks: Vec<Loader> = (0..world)
        .map(|r| part_loader(source, batch, r, world, r % 3, start))
        .collect();
    (0..steps)
        .map(|_| {
            let (mut caps, mut bits, mut ids, mut pos) = (vec![], vec![], vec![], vec![]);
            for l in ranks.iter_mut() {
                let b = l.next_batch().unwrap().unwrap();
                assert_eq!(b.len(), batch / world, "a rank's part");
                caps.extend(b.captions.clone());
                bits.extend(b.images.to_vec().iter().map(|v| v.to_bits()));
                ids.extend(b.ids.clone());
                pos.push(b.position);
            }
            (caps, bits, ids, pos)
        })
        .collect()
}

/// Data parallelism: each rank reads only its part of the global batch (WebDataset shards of
/// uneven sizes, and a CSV), and the global batches — the ranks' parts in rank order — are
/// world 1's, sample for sample and bit for bit (augmented crops included), across epoch ends,
/// at world sizes 2 and 4; positions are global, so a world-2 stream stopped at a batch
/// boundary resumes on 4 ranks as world 1 continues.
#[test]
fn rank_parts_make_the_same_global_batches_whatever_the_world_size() {
    let dir = tempfile::tempdir().unwrap();
    for (s, n) in [(0, 7), (1, 9), (2, 5)] {
        write_tar(
            &dir.path().join(format!("p{s}.tar")),
            &shard_entries(&format!("s{s}-"), n, 10 * s as u8),
        );
    }
    let mut rows = String::from("filepath,title\n");
    for i in 0..13u8 {
        std::fs::write(dir.path().join(format!("{i}.png")), solid_png(3 * i, 11, 9)).unwrap();
        rows += &format!("{i}.png,row {i}\n");
    }
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, rows).unwrap();
    let sources = [
        (
            "webdataset",
            Source::webdataset(&format!("{}/p{{0..2}}.tar", dir.path().display())).unwrap(),
            21,
        ),
        (
            "csv",
            Source::csv(&csv, &CsvOptions::default()).unwrap(),
            13,
        ),
    ];
    let (batch, steps) = (8, 7); // 56 samples: more than two epochs of either source
    for (name, source, size) in &sources {
        let one = global_batches(source, batch, 1, steps, None);
        // the reference is the plain loader (no part mode)
        let mut plain = part_loader(source, batch, 0, 1, 2, None);
        for (k, (caps, bits, _, pos)) in one.iter().enumerate() {
            let b = plain.next_batch().unwrap().unwrap();
            assert_eq!(&b.captions, caps, "{name}: batch {k}");
            assert_eq!(
                &b.images
                    .to_vec()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                bits
            );
            assert_eq!(pos[0], b.position);
        }
        let keys: BTreeSet<String> = one.iter().flat_map(|b| b.0.clone()).collect();
        // 56 samples: every sample of the source seen, some in two or three epochs
        assert_eq!(
            keys.len(),
            *size,
            "{name}: the steps saw {} keys",
            keys.len()
        );
        for world in [2, 4] {
            let got = global_batches(source, batch, world, steps, None);
            for (k, (a, b)) in got.iter().zip(&one).enumerate() {
                assert_eq!(a.0, b.0, "{name}, world {world}, step {k}: samples");
                assert!(a.1 == b.1, "{name}, world {world}, step {k}: image bits");
                assert_eq!(a.2, b.2, "{name}, world {world}, step {k}: token ids");
                assert!(
                    a.3.iter().all(|p| *p == b.3[0]),
                    "{name}, world {world}, step {k}: positions {:?} vs {:?}",
                    a.3,
                    b.3[0]
                );
            }
        }
        // world 2 for 3 steps, then world 4 from the position it reached
        let head = global_batches(source, batch, 2, 3, None);
        let tail = global_batches(source, batch, 4, steps - 3, Some(head[2].3[0]));
        for (k, (a, b)) in head.iter().chain(&tail).zip(&one).enumerate() {
            assert_eq!(a.0, b.0, "{name}, resumed 2 → 4, step {k}");
            assert!(a.1 == b.1, "{name}, resumed 2 → 4, step {k}: image bits");
        }
    }
}

/// A skipped sample in part mode: its slot is filled with the rank's most recent good sample,
/// the other ranks' parts and every position stay those of the clean windows, and the skip is
/// counted by the rank that owned it. A rank's part size never varies.
#[test]
fn a_skipped_sample_in_a_rank_part_keeps_the_windows() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = shard_entries("k", 12, 40);
    // key k0005's image is corrupt: its slot (5 of the first window of 8) is rank 1's of 2
    e[5 * 3].1 = b"\x89PNG\r\n\x1a\nbroken".to_vec();
    write_tar(&dir.path().join("s.tar"), &e);
    let source = Source::webdataset(&dir.path().join("s.tar").display().to_string()).unwrap();
    let c = |rank| LoaderConfig {
        epochs: None,
        shuffle: false,
        part: Some(clipcu::data::Part { rank, world: 2 }),
        ..cfg(8, 1)
    };
    let mut r0 = Loader::new(source.clone(), c(0), None).unwrap();
    let mut r1 = Loader::new(source.clone(), c(1), None).unwrap();
    let (a0, a1) = (
        r0.next_batch().unwrap().unwrap(),
        r1.next_batch().unwrap().unwrap(),
    );
    let cap = |k: usize| format!("a photo of k{k:04}");
    assert_eq!(a0.captions, (0..4).map(cap).collect::<Vec<_>>());
    // slot 5 filled from this part (no earlier batch): k0004 twice
    assert_eq!(a1.captions, [cap(4), cap(4), cap(6), cap(7)]);
    assert_eq!(a0.position, a1.position);
    assert_eq!(
        a1.position.sample, 8,
        "the window of 8 slots, the bad one included"
    );
    assert_eq!((r0.skips().corrupt_image, r1.skips().corrupt_image), (0, 1));
    // the next windows are the clean ones (12 samples: epoch 1 starts at slot 4 of window 2)
    let (b0, b1) = (
        r0.next_batch().unwrap().unwrap(),
        r1.next_batch().unwrap().unwrap(),
    );
    assert_eq!(b0.captions, (8..12).map(cap).collect::<Vec<_>>());
    assert_eq!(b1.captions.len(), 4);
    assert_eq!(b0.position, b1.position);
    // a world that does not divide the batch is refused, naming the numbers
    let bad = LoaderConfig {
        part: Some(clipcu::data::Part { rank: 0, world: 3 }),
        ..cfg(8, 1)
    };
    let err = Loader::new(source, bad, None).err().unwrap().to_string();
    assert!(
        err.contains("3 ranks") && err.contains("batch of 8"),
        "{err}"
    );
}
