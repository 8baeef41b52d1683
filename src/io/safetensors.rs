//! Tensors to and from safetensors files (the format open_clip, timm and transformers use for
//! checkpoints and our parity fixtures).
//!
//! A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of JSON header
//! (`{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}`,
//! padded with spaces to a multiple of 8) and then the raw little-endian, row-major tensor bytes,
//! back to back with no holes.
//!
//! **Writing** ([`save`]): tensors of any layout (views included) are written contiguous in their
//! own dtype (f32, f16, bf16). The header is built from the `safetensors` crate's own types
//! (`TensorInfo`, `Dtype`) and checked by its parser before anything is written; the bytes are then
//! streamed tensor by tensor, so a checkpoint never needs a second copy of itself in memory.
//! Tensors are stored 4-byte dtypes first, then 2-byte ones (as the crate does, so every tensor
//! starts aligned to its element size for memory-mapping readers), keeping the caller's order
//! within each group; the header is deterministic (metadata keys sorted). The write is atomic: the
//! file goes to a temporary sibling `.<name>.tmp.<pid>.<n>` in the same directory, is fsynced, then
//! renamed over the target (and the directory fsynced, where the filesystem allows); on any error
//! the temporary file is removed and the target is left as it was.
//!
//! **Reading** ([`load`]): the header is parsed and validated by the crate (offsets contiguous,
//! sizes matching shape × dtype, no arithmetic overflow); the length checks against the file are
//! done here, then each tensor is read in file order, so memory peaks at the tensors plus one
//! tensor's bytes. F32, F16 and BF16 come back in their stored dtype; F64 is converted to f32
//! (round to nearest; values beyond f32 range become ±inf); every other dtype (the integers,
//! BOOL, the 8-bit floats torch writes) comes back as a [`RawTensor`] in
//! [`SafeTensorsFile::raw`], for the caller to keep or refuse by name. A missing or unreadable file is
//! [`Error::Io`]; a truncated or corrupt one is [`Error::Format`]. Bad files never panic.

use crate::tensor::{DType, Tensor};
use crate::{Error, Result};
use ::safetensors::tensor::{Dtype, Metadata, TensorInfo};
use serde::ser::{SerializeMap, Serializer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The key the format reserves for the string-to-string metadata.
const METADATA_KEY: &str = "__metadata__";
/// Bytes of the header-length prefix.
const N_LEN: usize = 8;

/// The contents of a safetensors file: the float tensors in file order, every other tensor as
/// its bytes ([`RawTensor`]), and the metadata.
#[derive(Debug, Clone, Default)]
pub struct SafeTensorsFile {
    pub tensors: Vec<(String, Tensor)>,
    /// Tensors of a dtype clipcu does not compute in (integers, bools, 8-bit floats), in file
    /// order: torch writes `num_batches_tracked` as I64 and transformers `position_ids` as I64,
    /// and the loader that reads the file decides by name whether such a tensor matters.
    pub raw: Vec<(String, RawTensor)>,
    pub metadata: BTreeMap<String, String>,
}

/// A tensor kept as stored: its safetensors dtype name (`I64`, `U8`, `BOOL`, `F8_E4M3`, ...), its
/// shape and its little-endian bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// The elements as i64 when the dtype is a signed or unsigned integer or a bool of up to
    /// 64 bits (U64 values above i64::MAX wrap), else `None`.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        let width = match self.dtype.as_str() {
            "BOOL" | "U8" | "I8" => 1,
            "U16" | "I16" => 2,
            "U32" | "I32" => 4,
            "U64" | "I64" => 8,
            _ => return None,
        };
        let signed = self.dtype.starts_with('I');
        Some(
            self.bytes
                .chunks_exact(width)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b[..width].copy_from_slice(c);
                    if signed && c[width - 1] & 0x80 != 0 {
                        b[width..].fill(0xff);
                    }
                    i64::from_le_bytes(b)
                })
                .collect(),
        )
    }
}

impl SafeTensorsFile {
    /// The tensor called `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The non-float tensor called `name`, if there is one.
    pub fn get_raw(&self, name: &str) -> Option<&RawTensor> {
        self.raw.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The float tensors by name (file order is lost).
    pub fn into_map(self) -> HashMap<String, Tensor> {
        self.tensors.into_iter().collect()
    }
}

fn to_file_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
    }
}

/// Writes `tensors` (names must be unique) and `metadata` to `path` as safetensors, atomically.
/// See the module docs for the layout and the atomic-replace protocol.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut seen = HashSet::new();
    for (name, _) in tensors {
        if *name == METADATA_KEY {
            return Err(Error::format(
                path,
                format!("'{METADATA_KEY}' is reserved by safetensors and cannot name a tensor"),
            ));
        }
        if !seen.insert(*name) {
            return Err(Error::format(
                path,
                format!("tensor name '{name}' appears more than once"),
            ));
        }
    }
    // 4-byte dtypes first, then 2-byte ones; stable, so the caller's order holds within a group.
    let mut order: Vec<&(&str, &Tensor)> = tensors.iter().collect();
    order.sort_by_key(|(_, t)| std::cmp::Reverse(t.dtype().size_in_bytes()));
    let header = build_header(path, &order, metadata)?;

    replace_atomically(path, |tmp| write_file(tmp, &header, &order))
}

/// Writes `path` through a temporary sibling (the naming [`stale_temp_files`] finds after a
/// kill): `write` fills and fsyncs it, then it is renamed over `path` and the rename made
/// durable; on failure the temporary file is removed and the error names both files.
fn replace_atomically(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let tmp = temp_path(path)?;
    let result = write(&tmp)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            Error::io(
                path,
                std::io::Error::new(
                    e.kind(),
                    format!("writing via temporary file {}: {e}", tmp.display()),
                ),
            )
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_parent(path);
    Ok(())
}

/// Makes a rename into `path`'s directory durable; not every filesystem lets a directory be
/// fsynced, so a failure is ignored.
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Writes `bytes` to `path` atomically, with the protocol of [`save`]: a temporary sibling
/// (same naming, so [`stale_temp_files`] finds it after a kill), fsynced, renamed over `path`.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    replace_atomically(path.as_ref(), |tmp| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })
}

/// Makes `dst` name the same file as `src`, atomically replacing whatever `dst` was: a hard link
/// under a temporary name renamed over `dst` (no bytes copied), or, where the filesystem has no
/// hard links, a copy written by the same protocol.
pub fn link_atomic(src: impl AsRef<Path>, dst: impl AsRef<Path>) -> Result<()> {
    let (src, dst) = (src.as_ref(), dst.as_ref());
    let tmp = temp_path(dst)?;
    let linked = fs::hard_link(src, &tmp).and_then(|()| fs::rename(&tmp, dst));
    match linked {
        Ok(()) => {
            sync_parent(dst);
            Ok(())
        }
        Err(_) => {
            let _ = fs::remove_file(&tmp);
            let bytes = fs::read(src).map_err(|e| Error::io(src, e))?;
            write_atomic(dst, &bytes)
        }
    }
}

/// The temporary files of [`save`]/[`write_atomic`] (`.<name>.tmp.<pid>.<n>`) in `dir` that a
/// process which is no longer running left behind (a run killed mid-write): each can be as large
/// as a checkpoint, and nothing will ever rename it. Files of a live process other than this one
/// (another run writing into the same folder) are not listed; on a system without `/proc` every
/// such file of another process counts as stale. A missing `dir` has none.
pub fn stale_temp_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let procfs = Path::new("/proc/self").exists();
    let mut stale = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_file_pid) else {
            continue;
        };
        let alive = pid == std::process::id()
            || (procfs && Path::new("/proc").join(pid.to_string()).exists());
        if !alive && entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            stale.push(entry.path());
        }
    }
    stale.sort();
    Ok(stale)
}

/// The writer's pid when `name` is one of our temporary names, `.<name>.tmp.<pid>.<n>`.
fn temp_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (target, tail) = rest.rsplit_once(".tmp.")?;
    let (pid, n) = tail.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if target.is_empty() || !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// The padded JSON header for `tensors` in the order `save` writes them.
fn build_header(
    path: &Path,
    order: &[&(&str, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut infos = Vec::with_capacity(order.len());
    let mut offset = 0usize;
    for (name, t) in order {
        let n = t.numel() * t.dtype().size_in_bytes();
        infos.push((
            name.to_string(),
            TensorInfo {
                dtype: to_file_dtype(t.dtype()),
                shape: t.shape().to_vec(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }

    let mut json = Vec::new();
    let json_err = |e: serde_json::Error| Error::format(path, format!("building the header: {e}"));
    {
        let mut ser = serde_json::Serializer::new(&mut json);
        let mut map = ser
            .serialize_map(Some(infos.len() + usize::from(!metadata.is_empty())))
            .map_err(json_err)?;
        if !metadata.is_empty() {
            map.serialize_entry(METADATA_KEY, metadata)
                .map_err(json_err)?;
        }
        for (name, info) in &infos {
            map.serialize_entry(name, info).map_err(json_err)?;
        }
        map.end().map_err(json_err)?;
    }
    // The crate's own parser must accept what we wrote (cheap: the header only).
    serde_json::from_slice::<Metadata>(&json).map_err(|e| {
        Error::format(
            path,
            format!("internal error: the header does not validate: {e}"),
        )
    })?;
    json.resize(json.len().next_multiple_of(N_LEN), b' ');
    Ok(json)
}

/// `.<name>.tmp.<pid>.<n>` beside `path`; `n` counts saves in this process, so two threads saving
/// the same target never share a temporary file.
fn temp_path(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file path (no file name)",
            ),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".{}.tmp.{}.{n}", name.to_string_lossy(), std::process::id());
    Ok(path.with_file_name(tmp))
}

fn write_file(tmp: &Path, header: &[u8], order: &[&(&str, &Tensor)]) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header)?;
    for (_, t) in order {
        w.write_all(&t.to_le_bytes())?;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Opens `path` and reads its header, validated by the crate (offsets contiguous, sizes matching
/// shape × dtype) and against the file's length; the file is left at the first tensor byte.
fn open_validated(path: &Path) -> Result<(File, Metadata)> {
    let io = |e: std::io::Error| Error::io(path, e);
    let bad = |msg: String| Error::format(path, msg);

    let mut file = File::open(path).map_err(io)?;
    let stat = file.metadata().map_err(io)?;
    if stat.is_dir() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory, not a safetensors file",
        )));
    }
    let file_len = stat.len();
    if file_len < N_LEN as u64 {
        return Err(bad(format!(
            "not a safetensors file: {file_len} bytes, shorter than the 8-byte header length"
        )));
    }
    let mut n_bytes = [0u8; N_LEN];
    file.read_exact(&mut n_bytes).map_err(io)?;
    let n = u64::from_le_bytes(n_bytes);
    let rest = file_len - N_LEN as u64;
    if n > rest {
        return Err(bad(format!(
            "header length {n} exceeds the {rest} bytes after the length prefix (truncated or \
             not a safetensors file)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header = std::str::from_utf8(&header)
        .map_err(|e| bad(format!("corrupt safetensors header: not UTF-8 ({e})")))?;
    let meta: Metadata = serde_json::from_str(header)
        .map_err(|e| bad(format!("corrupt safetensors header: {e}")))?;

    let data_len = rest - n;
    if meta.data_len() as u64 != data_len {
        return Err(bad(format!(
            "the header describes {} bytes of tensor data but the file holds {data_len} \
             (truncated or corrupt)",
            meta.data_len()
        )));
    }
    Ok((file, meta))
}

/// One tensor as the header describes it: name, safetensors dtype name (`F32`, `I64`, ...),
/// shape.
pub type HeaderTensor = (String, String, Vec<usize>);

/// The header of a safetensors file — its tensors (in file order) and metadata — validated as
/// [`load`] validates it, without reading any tensor.
pub fn read_header(
    path: impl AsRef<Path>,
) -> Result<(Vec<HeaderTensor>, BTreeMap<String, String>)> {
    let (_, meta) = open_validated(path.as_ref())?;
    let tensors = meta
        .offset_keys()
        .into_iter()
        .filter_map(|name| {
            let info = meta.info(&name)?;
            Some((name, format!("{:?}", info.dtype), info.shape.clone()))
        })
        .collect();
    Ok((tensors, metadata_of(&meta)))
}

fn metadata_of(meta: &Metadata) -> BTreeMap<String, String> {
    meta.metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Reads a safetensors file: tensors in file order (stored dtype; F64 becomes f32) and metadata.
pub fn load(path: impl AsRef<Path>) -> Result<SafeTensorsFile> {
    let path = path.as_ref();
    let io = |e: std::io::Error| Error::io(path, e);
    let bad = |msg: String| Error::format(path, msg);
    let (mut file, meta) = open_validated(path)?;

    let mut tensors = Vec::new();
    let mut raw = Vec::new();
    let mut buf = Vec::new();
    // `offset_keys` lists names by data offset; the crate has checked the offsets are contiguous
    // from 0, so reading the tensors one after another walks the data section in order.
    for name in meta.offset_keys() {
        let info = meta
            .info(&name)
            .ok_or_else(|| bad(format!("tensor '{name}' listed but not described")))?;
        let (begin, end) = info.data_offsets;
        let len = end
            .checked_sub(begin)
            .ok_or_else(|| bad(format!("tensor '{name}' has offsets {begin}..{end}")))?;
        buf.resize(len, 0);
        file.read_exact(&mut buf).map_err(io)?;
        let shape = info.shape.clone();
        let tensor = match info.dtype {
            Dtype::F32 => Tensor::from_le_bytes(&buf, DType::F32, shape),
            Dtype::F16 => Tensor::from_le_bytes(&buf, DType::F16, shape),
            Dtype::BF16 => Tensor::from_le_bytes(&buf, DType::BF16, shape),
            Dtype::F64 => {
                let v = buf
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32)
                    .collect();
                Tensor::from_vec(v, shape)
            }
            other => {
                raw.push((
                    name,
                    RawTensor {
                        dtype: format!("{other:?}"),
                        shape,
                        bytes: std::mem::take(&mut buf),
                    },
                ));
                continue;
            }
        }
        .map_err(|e| bad(format!("tensor '{name}': {e}")))?;
        tensors.push((name, tensor));
    }

    let metadata = metadata_of(&meta);
    Ok(SafeTensorsFile {
        tensors,
        raw,
        metadata,
    })
}
