//! safetensors save/load: round trips on fresh random data (odd shapes, views, all dtypes), the
//! file checked by the `safetensors` crate as an independent reader, atomic replace, and bad
//! files that must give an `Err` (never a panic).

use clipcu::io::{load, save, SafeTensorsFile};
use clipcu::{DType, Error, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A fresh seed, printed so that a failing case can be replayed.
fn seed() -> u64 {
    let s: u64 = rand::rng().random();
    eprintln!("seed {s}");
    s
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let r: u64 = rand::rng().random();
        let p =
            std::env::temp_dir().join(format!("clipcu-io-{tag}-{}-{r:016x}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Names of the entries in the directory, sorted.
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A set of tensors covering every dtype, odd shapes, a 0-d scalar, an empty tensor and views.
fn sample_tensors(seed: u64) -> Vec<(String, Tensor)> {
    let base = Tensor::randn([13, 7], 1.0, seed ^ 1);
    vec![
        ("one".into(), Tensor::randn([1], 1.0, seed)),
        (
            "half.cube".into(),
            Tensor::randn([2, 3, 5], 1.0, seed ^ 2).to_dtype(DType::F16),
        ),
        ("mat".into(), Tensor::randn([7, 13], 1.0, seed ^ 3)),
        (
            "bf.scalar".into(),
            Tensor::randn([], 1.0, seed ^ 4).to_dtype(DType::BF16),
        ),
        ("scalar".into(), Tensor::randn([], 1.0, seed ^ 5)),
        // non-contiguous views
        (
            "bf.transposed".into(),
            base.to_dtype(DType::BF16).transpose(0, 1).unwrap(),
        ),
        ("narrowed".into(), base.narrow(1, 2, 4).unwrap()),
        (
            "half.permuted".into(),
            Tensor::randn([2, 3, 5], 1.0, seed ^ 6)
                .to_dtype(DType::F16)
                .permute(&[2, 0, 1])
                .unwrap()
                .narrow(0, 1, 3)
                .unwrap(),
        ),
        ("empty".into(), Tensor::zeros([0, 3])),
    ]
}

fn refs(ts: &[(String, Tensor)]) -> Vec<(&str, &Tensor)> {
    ts.iter().map(|(n, t)| (n.as_str(), t)).collect()
}

fn sample_metadata() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), "pt".into());
    m.insert("model".into(), "ViT-B/32 — test ✓".into());
    m.insert("step".into(), "12345".into());
    m
}

fn assert_same(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    assert_eq!(got.to_le_bytes(), want.to_le_bytes(), "{name}: bytes");
}

#[test]
fn round_trip_all_dtypes_and_views() {
    let dir = TempDir::new("rt");
    let path = dir.join("model.safetensors");
    let ts = sample_tensors(seed());
    assert!(!ts[5].1.is_contiguous() && !ts[6].1.is_contiguous() && !ts[7].1.is_contiguous());
    let meta = sample_metadata();
    save(&path, &refs(&ts), &meta).unwrap();

    let file = load(&path).unwrap();
    assert_eq!(file.metadata, meta);
    assert_eq!(file.tensors.len(), ts.len());
    for (name, want) in &ts {
        let got = file.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_same(name, got, want);
        assert!(got.is_contiguous());
    }
    assert!(file.get("nope").is_none());

    // File order: 4-byte dtypes first, then 2-byte ones, caller's order kept within each group.
    let order: Vec<&str> = file.tensors.iter().map(|(n, _)| n.as_str()).collect();
    let by_size = |size: usize| {
        ts.iter()
            .filter(move |(_, t)| t.dtype().size_in_bytes() == size)
            .map(|(n, _)| n.as_str())
    };
    let want: Vec<&str> = by_size(4).chain(by_size(2)).collect();
    assert_eq!(order, want);

    let map = file.clone().into_map();
    assert_eq!(map.len(), ts.len());
    assert_same("map[mat]", &map["mat"], &ts[2].1);
}

#[test]
fn empty_metadata_and_no_tensors() {
    let dir = TempDir::new("empty");
    let path = dir.join("nothing.safetensors");
    save(&path, &[], &BTreeMap::new()).unwrap();
    let f = load(&path).unwrap();
    assert!(f.tensors.is_empty() && f.metadata.is_empty());

    let t = Tensor::randn([3], 1.0, seed());
    save(&path, &[("t", &t)], &BTreeMap::new()).unwrap();
    let f = load(&path).unwrap();
    assert!(f.metadata.is_empty());
    assert_same("t", f.get("t").unwrap(), &t);
}

#[test]
fn readable_by_the_safetensors_crate() {
    use safetensors::{Dtype, SafeTensors};
    let dir = TempDir::new("indep");
    let path = dir.join("x.safetensors");
    let ts = sample_tensors(seed());
    let meta = sample_metadata();
    save(&path, &refs(&ts), &meta).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).expect("the crate reads our file");
    assert_eq!(st.len(), ts.len());
    for (name, want) in &ts {
        let v = st.tensor(name).unwrap();
        let dtype = match want.dtype() {
            DType::F32 => Dtype::F32,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
        };
        assert_eq!(v.dtype(), dtype, "{name}");
        assert_eq!(v.shape(), want.shape(), "{name}");
        assert_eq!(v.data(), &want.to_le_bytes()[..], "{name}");
        // Every tensor starts aligned to its element size (data section starts 8-aligned).
        let offset = v.data().as_ptr() as usize - bytes.as_ptr() as usize;
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(header_end % 8, 0);
        assert_eq!(
            (offset - header_end) % want.dtype().size_in_bytes(),
            0,
            "{name} misaligned"
        );
    }
    let (_, m) = SafeTensors::read_metadata(&bytes).unwrap();
    let m: BTreeMap<String, String> = m.metadata().clone().unwrap().into_iter().collect();
    assert_eq!(m, meta);
}

#[test]
fn reads_files_written_by_the_safetensors_crate() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let dir = TempDir::new("crate");
    let path = dir.join("c.safetensors");
    let a = Tensor::randn([4, 3], 1.0, seed());
    let b = Tensor::randn([5], 1.0, seed()).to_dtype(DType::BF16);
    let (ab, bb) = (a.to_le_bytes(), b.to_le_bytes());
    let f64s: Vec<f64> = vec![1.5, -2.25, 1e300, 3.0e-3];
    let cb: Vec<u8> = f64s.iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![
        ("a", TensorView::new(Dtype::F32, vec![4, 3], &ab).unwrap()),
        ("b", TensorView::new(Dtype::BF16, vec![5], &bb).unwrap()),
        ("c", TensorView::new(Dtype::F64, vec![2, 2], &cb).unwrap()),
    ];
    let mut info = std::collections::HashMap::new();
    info.insert("k".to_string(), "v".to_string());
    safetensors::serialize_to_file(views, Some(info), &path).unwrap();

    let f = load(&path).unwrap();
    assert_same("a", f.get("a").unwrap(), &a);
    assert_same("b", f.get("b").unwrap(), &b);
    // F64 is read as f32.
    let c = f.get("c").unwrap();
    assert_eq!(c.dtype(), DType::F32);
    assert_eq!(c.shape(), &[2, 2]);
    let want: Vec<f32> = f64s.iter().map(|&x| x as f32).collect();
    assert_eq!(c.to_vec(), want);
    assert!(c.to_vec()[2].is_infinite());
    assert_eq!(f.metadata.get("k").map(String::as_str), Some("v"));
}

#[test]
fn save_is_atomic_and_replaces() {
    let dir = TempDir::new("atomic");
    let path = dir.join("ckpt.safetensors");
    let s = seed();
    let first = Tensor::randn([7, 13], 1.0, s);
    save(&path, &[("w", &first)], &BTreeMap::new()).unwrap();
    assert_eq!(dir.entries(), vec!["ckpt.safetensors"]);

    // Saving over an existing file replaces it (different names, dtype and size).
    let second = Tensor::randn([2, 3, 5], 1.0, s ^ 9).to_dtype(DType::F16);
    save(&path, &[("v", &second)], &sample_metadata()).unwrap();
    assert_eq!(dir.entries(), vec!["ckpt.safetensors"]);
    let f = load(&path).unwrap();
    assert_eq!(f.tensors.len(), 1);
    assert!(f.get("w").is_none());
    assert_same("v", f.get("v").unwrap(), &second);
    assert_eq!(f.metadata, sample_metadata());
}

#[test]
fn save_into_missing_directory_is_an_error() {
    let dir = TempDir::new("nodir");
    let path = dir.join("does/not/exist/x.safetensors");
    let t = Tensor::randn([3], 1.0, seed());
    let err = save(&path, &[("t", &t)], &BTreeMap::new()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(dir.entries().is_empty());
}

#[test]
fn failed_save_leaves_no_temp_file_and_keeps_the_target() {
    let dir = TempDir::new("fail");
    // The target is a non-empty directory: the final rename fails after the temp file is written.
    let target = dir.join("taken");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let t = Tensor::randn([5, 5], 1.0, seed());
    let err = save(&target, &[("t", &t)], &BTreeMap::new()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&target.display().to_string()),
        "{err}"
    );
    assert_eq!(dir.entries(), vec!["taken"]);
    assert!(target.join("keep").exists());
}

#[test]
fn duplicate_and_reserved_names_are_errors() {
    let dir = TempDir::new("dup");
    let path = dir.join("d.safetensors");
    let (a, b) = (
        Tensor::randn([2], 1.0, seed()),
        Tensor::randn([3], 1.0, seed()),
    );
    let err = save(&path, &[("x", &a), ("y", &b), ("x", &b)], &BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("'x'"), "{err}");
    let err = save(&path, &[("__metadata__", &a)], &BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("__metadata__"), "{err}");
    assert!(dir.entries().is_empty());
}

// ---- bad files ------------------------------------------------------------------------------

/// A file made of an 8-byte length prefix, `header` and `data`.
fn raw_file(dir: &TempDir, name: &str, header: &str, data: &[u8]) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn expect_format(path: &Path, what: &str) -> String {
    match load(path) {
        Err(e @ Error::Format { .. }) => {
            let msg = e.to_string();
            eprintln!("{what}: {msg}");
            assert!(msg.contains(&path.display().to_string()), "{what}: {msg}");
            msg
        }
        other => panic!("{what}: expected Error::Format, got {other:?}"),
    }
}

#[test]
fn missing_file_is_io_error_naming_the_path() {
    let dir = TempDir::new("missing");
    let path = dir.join("nope.safetensors");
    match load(&path) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains(&path.display().to_string())),
        other => panic!("expected Error::Io, got {other:?}"),
    }
    // A directory is not a file either.
    assert!(matches!(load(&dir.0), Err(Error::Io { .. })));
}

#[test]
fn corrupt_files_are_format_errors() {
    let dir = TempDir::new("bad");

    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    expect_format(&empty, "empty file");

    let short = dir.join("short.safetensors");
    std::fs::write(&short, b"\x05\x00\x00").unwrap();
    expect_format(&short, "3-byte file");

    // Header length larger than the file (and the largest possible one).
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let long = dir.join("long.safetensors");
    std::fs::write(&long, &bytes).unwrap();
    let msg = expect_format(&long, "header length > file");
    assert!(msg.contains("1000"), "{msg}");
    let huge = dir.join("huge.safetensors");
    std::fs::write(&huge, u64::MAX.to_le_bytes()).unwrap();
    expect_format(&huge, "header length u64::MAX");

    expect_format(
        &raw_file(&dir, "garbage", "{not json at all", &[]),
        "JSON garbage",
    );
    expect_format(&raw_file(&dir, "array", "[1, 2, 3]", &[]), "JSON array");
    let p = dir.join("utf8");
    let mut bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0x7b, 0x7d]);
    std::fs::write(&p, bytes).unwrap();
    expect_format(&p, "invalid UTF-8");

    // Offsets beyond the data actually present.
    let h = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let msg = expect_format(
        &raw_file(&dir, "trunc", h, &[0u8; 8]),
        "data offsets > file",
    );
    assert!(msg.contains("16") && msg.contains('8'), "{msg}");
    // Trailing bytes beyond the described data.
    expect_format(&raw_file(&dir, "trailing", h, &[0u8; 20]), "extra data");
    // Offsets that do not match shape × dtype, or overlap, or overflow.
    let h = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#;
    expect_format(&raw_file(&dir, "size", h, &[0u8; 16]), "size mismatch");
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    expect_format(
        &raw_file(&dir, "overlap", h, &[0u8; 12]),
        "overlapping offsets",
    );
    let h = format!(
        r#"{{"w":{{"dtype":"U8","shape":[{m},{m}],"data_offsets":[0,{m}]}}}}"#,
        m = usize::MAX
    );
    expect_format(
        &raw_file(&dir, "overflow", &h, &[0u8; 8]),
        "overflowing shape",
    );
    let h = format!(
        r#"{{"w":{{"dtype":"U8","shape":[{e}],"data_offsets":[0,{e}]}}}}"#,
        e = usize::MAX - 20
    );
    expect_format(
        &raw_file(&dir, "wrap", &h, &[0u8; 8]),
        "offsets near usize::MAX",
    );
    let h = r#"{"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#;
    expect_format(&raw_file(&dir, "dtype", h, &[0u8; 4]), "unknown dtype");

    // A valid file cut short by one byte.
    let t = Tensor::randn([7, 13], 1.0, seed());
    let good = dir.join("good.safetensors");
    save(&good, &[("t", &t)], &BTreeMap::new()).unwrap();
    let mut bytes = std::fs::read(&good).unwrap();
    bytes.pop();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes).unwrap();
    expect_format(&cut, "truncated file");
}

/// Torch writes integer buffers (`num_batches_tracked` as I64, masks as BOOL or U8): they are
/// read as raw tensors beside the float ones, with their dtype, shape and values, sign-extended
/// where the dtype is signed; the values are random and checked against a little-endian encoder
/// written independently here.
#[test]
fn integer_and_bool_tensors_are_read_raw() {
    let dir = TempDir::new("dtype");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    for (dtype, size, signed) in [
        ("I64", 8usize, true),
        ("I32", 4, true),
        ("I16", 2, true),
        ("I8", 1, true),
        ("U8", 1, false),
        ("U16", 2, false),
        ("U32", 4, false),
        ("BOOL", 1, false),
    ] {
        let n = rng.random_range(1..6usize);
        let bits = 8 * size as u32;
        let want: Vec<i64> = (0..n)
            .map(|_| match (dtype, signed) {
                ("BOOL", _) => rng.random_range(0..2),
                (_, true) => rng.random_range(-(1i128 << (bits - 1))..(1i128 << (bits - 1))) as i64,
                (_, false) => rng.random_range(0..(1i128 << bits)) as i64,
            })
            .collect();
        let mut data = 1.5f32.to_le_bytes().to_vec();
        for v in &want {
            data.extend_from_slice(&v.to_le_bytes()[..size]);
        }
        let h = format!(
            r#"{{"ok":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}},"ids":{{"dtype":"{dtype}","shape":[{n}],"data_offsets":[4,{}]}}}}"#,
            4 + n * size
        );
        let f = load(raw_file(&dir, dtype, &h, &data)).unwrap();
        assert_eq!(f.tensors.len(), 1, "{dtype}: the float tensor");
        assert_eq!(f.get("ok").unwrap().to_vec(), vec![1.5]);
        let raw = f.get_raw("ids").unwrap();
        assert_eq!(raw.dtype, dtype);
        assert_eq!(raw.shape, vec![n]);
        assert_eq!(raw.bytes, data[4..].to_vec());
        assert_eq!(raw.to_i64().unwrap(), want, "{dtype}");
    }
    // An 8-bit float is kept as bytes too, with no integer view.
    let h = r#"{"f8":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}"#;
    let f = load(raw_file(&dir, "f8", h, &[0x38, 0xb8])).unwrap();
    let raw = f.get_raw("f8").unwrap();
    assert_eq!((raw.dtype.as_str(), raw.to_i64()), ("F8_E4M3", None));
}

#[test]
fn safetensors_file_helpers() {
    let a = Tensor::randn([2], 1.0, seed());
    let f = SafeTensorsFile {
        tensors: vec![("a".into(), a.clone())],
        ..Default::default()
    };
    assert_same("a", f.get("a").unwrap(), &a);
    assert!(f.into_map().contains_key("a"));
}
