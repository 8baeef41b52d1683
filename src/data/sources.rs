//! Where training pairs come from: WebDataset tar shards (as img2dataset writes them), a CSV/TSV
//! of image paths and captions, the synthetic dataset; and ImageFolder trees for zero-shot
//! evaluation.
//!
//! - **WebDataset**: shards named by a brace pattern (`data/{00000..00099}.tar`, `{a,b}` lists,
//!   several patterns joined by `::` as in open_clip) or a single path. Inside a shard, entries
//!   `KEY.EXT` are grouped by key (the path up to the first `.` of the file name, as webdataset
//!   does): `jpg`/`jpeg`/`png`/`webp` is the image, `txt` the caption, anything else (`json`, ...)
//!   is ignored. A shard is *indexed* (headers only: where each entry's bytes are) and the bytes
//!   of a sample are read when a loader worker needs them, so a shard is never held in memory.
//! - **CSV/TSV**: columns picked by header name (defaults `filepath` and `title`, open_clip's
//!   `--csv-img-key`/`--csv-caption-key`), separator from the extension (`.tsv` → tab, else `,`)
//!   unless given; relative image paths are relative to the CSV's folder.
//! - **ImageFolder**: one sub-folder per class, class names = folder names sorted.
//!
//! A shard, CSV or folder that does not exist is an error naming it, when the source is made.
//! Bad *content* (corrupt images, empty captions, truncated tars) is not an error: the
//! [`Loader`](super::loader::Loader) skips and counts it.

use super::synthetic::{Split, Synthetic};
use crate::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File extensions read as images (lower case), in WebDataset shards and ImageFolder trees.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

// ---- brace patterns ---------------------------------------------------------------------------

/// Expands a shard pattern the way webdataset's `braceexpand` does: `{00000..00099}` (a numeric
/// range, zero-padded to the wider bound when either bound has a leading zero; descending ranges
/// count down), `{a,b,c}` (a list), several groups multiply out left to right. Patterns joined by
/// `::` are expanded one after another (open_clip's way of mixing several datasets).
///
/// ```
/// use clipcu::data::sources::expand_braces;
/// assert_eq!(expand_braces("s/{008..010}.tar").unwrap(), ["s/008.tar", "s/009.tar", "s/010.tar"]);
/// assert_eq!(expand_braces("{a,b}-{1..2}").unwrap(), ["a-1", "a-2", "b-1", "b-2"]);
/// ```
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for part in pattern.split("::").filter(|p| !p.is_empty()) {
        expand_one(part, pattern, &mut out)?;
    }
    if out.is_empty() {
        return Err(Error::Msg(format!("shard pattern {pattern:?} is empty")));
    }
    Ok(out)
}

fn expand_one(s: &str, whole: &str, out: &mut Vec<String>) -> Result<()> {
    let Some(open) = s.find('{') else {
        if s.contains('}') {
            return Err(Error::Msg(format!(
                "shard pattern {whole:?}: '}}' without '{{'"
            )));
        }
        out.push(s.to_string());
        return Ok(());
    };
    let close = s[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| Error::Msg(format!("shard pattern {whole:?}: '{{' without '}}'")))?;
    let body = &s[open + 1..close];
    if body.contains('{') {
        return Err(Error::Msg(format!(
            "shard pattern {whole:?}: nested braces are not supported"
        )));
    }
    let (head, tail) = (&s[..open], &s[close + 1..]);
    let mut rest = Vec::new();
    expand_one(tail, whole, &mut rest)?;
    for alt in brace_alternatives(body, whole)? {
        out.extend(rest.iter().map(|r| format!("{head}{alt}{r}")));
    }
    Ok(())
}

fn brace_alternatives(body: &str, whole: &str) -> Result<Vec<String>> {
    if let Some((a, b)) = body.split_once("..") {
        let bad = || Error::Msg(format!("shard pattern {whole:?}: bad range {{{body}}}"));
        if a.is_empty() || b.is_empty() || !a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let (x, y): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        let padded = |t: &str| t.len() > 1 && t.starts_with('0');
        let width = if padded(a) || padded(b) {
            a.len().max(b.len())
        } else {
            0
        };
        if x.abs_diff(y) > 10_000_000 {
            return Err(Error::Msg(format!(
                "shard pattern {whole:?}: range {{{body}}} is too long"
            )));
        }
        let nums: Vec<u64> = if x <= y {
            (x..=y).collect()
        } else {
            (y..=x).rev().collect()
        };
        Ok(nums.into_iter().map(|n| format!("{n:0width$}")).collect())
    } else if body.contains(',') {
        Ok(body.split(',').map(str::to_string).collect())
    } else {
        // `{x}` is literal text in braceexpand (only lists and ranges expand).
        Ok(vec![format!("{{{body}}}")])
    }
}

// ---- WebDataset shards ------------------------------------------------------------------------

/// Where one tar entry's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
}

/// One key of a shard: its image and caption entries, each missing if the shard has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSample {
    pub key: String,
    pub image: Option<Span>,
    pub caption: Option<Span>,
}

/// The index of one tar shard: its keys in file order, and whether the tar ended early.
#[derive(Debug)]
pub struct ShardIndex {
    pub file: Arc<File>,
    pub samples: Vec<ShardSample>,
    /// Why the tar could not be read to its end, when it could not (the samples before are kept).
    pub truncated: Option<String>,
}

/// Splits an entry path into (key, lower-case extension) at the first `.` of the file name.
fn split_key(path: &str) -> Option<(&str, String)> {
    let name_start = path.rfind('/').map_or(0, |i| i + 1);
    let dot = path[name_start..].find('.')? + name_start;
    (dot > name_start).then(|| (&path[..dot], path[dot + 1..].to_ascii_lowercase()))
}

/// Reads the headers of a tar shard (seeking over the data) and groups its entries by key.
/// Errors only when the file cannot be opened; a tar that breaks off is returned with what was
/// readable and `truncated` set.
pub fn index_shard(path: &Path) -> Result<ShardIndex> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut samples: Vec<ShardSample> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut truncated = None;
    let mut end = 0u64; // where the last entry's padded data ends
    let mut archive = tar::Archive::new(&file);
    match archive.entries_with_seek() {
        Err(e) => truncated = Some(e.to_string()),
        Ok(entries) => {
            for entry in entries {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        truncated = Some(e.to_string());
                        break;
                    }
                };
                let span = Span {
                    offset: entry.raw_file_position(),
                    len: entry.size(),
                };
                if span.offset.saturating_add(span.len) > file_len {
                    truncated = Some(format!(
                        "entry {} ends at byte {} of a {file_len}-byte file",
                        String::from_utf8_lossy(&entry.path_bytes()),
                        span.offset + span.len
                    ));
                    break;
                }
                end = (span.offset + span.len).div_ceil(512) * 512;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let path_bytes = entry.path_bytes();
                let path = String::from_utf8_lossy(&path_bytes);
                let Some((key, ext)) = split_key(&path) else {
                    continue;
                };
                let is_image = IMAGE_EXTENSIONS.contains(&ext.as_str());
                if !is_image && ext != "txt" {
                    continue;
                }
                let i = *by_key.entry(key.to_string()).or_insert_with(|| {
                    samples.push(ShardSample {
                        key: key.to_string(),
                        image: None,
                        caption: None,
                    });
                    samples.len() - 1
                });
                let s = &mut samples[i];
                if is_image {
                    s.image.get_or_insert(span);
                } else {
                    s.caption.get_or_insert(span);
                }
            }
        }
    }
    // A tar cut exactly between two entries reads cleanly; the two zero blocks that end every
    // archive (tar, Python's tarfile, the tar crate) are then missing.
    if truncated.is_none() && file_len < end + 1024 {
        truncated = Some(format!(
            "no end-of-archive marker after byte {end} (the file has {file_len} bytes)"
        ));
    }
    Ok(ShardIndex {
        file: Arc::new(file),
        samples,
        truncated,
    })
}

/// Reads `span` of `file` without moving a shared cursor (positional read), so worker threads
/// can share one open shard.
pub fn read_span(file: &File, span: Span) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; span.len as usize];
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, span.offset)?;
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = file.try_clone()?;
        f.seek(SeekFrom::Start(span.offset))?;
        f.read_exact(&mut buf)?;
    }
    Ok(buf)
}

// ---- CSV / TSV --------------------------------------------------------------------------------

/// Which columns of a CSV hold the image path and the caption, and how fields are separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvOptions {
    /// Header of the image-path column (open_clip's `--csv-img-key`, default `filepath`).
    pub image_key: String,
    /// Header of the caption column (open_clip's `--csv-caption-key`, default `title`).
    pub caption_key: String,
    /// Field separator; `None` infers it from the extension: `.tsv` → tab, anything else `,`.
    pub separator: Option<u8>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            image_key: "filepath".into(),
            caption_key: "title".into(),
            separator: None,
        }
    }
}

/// One CSV row: the image path (resolved against the CSV's folder) and the caption as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvRow {
    pub image: PathBuf,
    pub caption: String,
}

/// Reads every row of a CSV/TSV. Errors when the file cannot be read, when its header lacks one
/// of the named columns (the message lists the columns it has) or when a row cannot be parsed.
/// A row that is short of the named columns gets an empty path or caption (the loader skips it).
pub fn read_csv(path: &Path, opts: &CsvOptions) -> Result<Vec<CsvRow>> {
    let sep = opts.separator.unwrap_or_else(|| {
        let tsv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
        if tsv {
            b'\t'
        } else {
            b','
        }
    });
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(sep)
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    let headers = rdr
        .headers()
        .map_err(|e| Error::format(path, format!("cannot read the header: {e}")))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(ic), Some(cc)) = (col(&opts.image_key), col(&opts.caption_key)) else {
        let found: Vec<&str> = headers.iter().collect();
        return Err(Error::format(
            path,
            format!(
                "needs columns {:?} (image) and {:?} (caption); the header has {found:?}",
                opts.image_key, opts.caption_key
            ),
        ));
    };
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| Error::format(path, format!("row {}: {e}", i + 2)))?;
        let img = rec.get(ic).unwrap_or("").trim();
        rows.push(CsvRow {
            image: if img.is_empty() {
                PathBuf::new()
            } else {
                dir.join(img)
            },
            caption: rec.get(cc).unwrap_or("").to_string(),
        });
    }
    Ok(rows)
}

// ---- ImageFolder ------------------------------------------------------------------------------

/// An ImageFolder tree (torchvision's layout): `root/<class>/<image>`, class index = position of
/// the folder name in sorted order; images sorted by path within a class, classes in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    /// (image path, class index).
    pub samples: Vec<(PathBuf, usize)>,
}

impl ImageFolder {
    /// Lists the tree. Files whose extension is not an image's ([`IMAGE_EXTENSIONS`], any case)
    /// are ignored; errors when `root` is not a readable folder or has no class folders.
    pub fn open(root: impl AsRef<Path>) -> Result<ImageFolder> {
        let root = root.as_ref();
        let mut classes: Vec<String> = std::fs::read_dir(root)
            .map_err(|e| Error::io(root, e))?
            .filter_map(|d| d.ok())
            .filter(|d| d.file_type().is_ok_and(|t| t.is_dir()))
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        if classes.is_empty() {
            return Err(Error::format(root, "has no class folders"));
        }
        let mut samples = Vec::new();
        for (ci, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(&dir, e))?
                .filter_map(|d| d.ok())
                .map(|d| d.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension().is_some_and(|e| {
                            IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str())
                        })
                })
                .collect();
            files.sort();
            samples.extend(files.into_iter().map(|p| (p, ci)));
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            samples,
        })
    }
}

// ---- the loader's sources ---------------------------------------------------------------------

/// A source of (image, caption) pairs for the [`Loader`](super::loader::Loader).
#[derive(Clone, Debug)]
pub enum Source {
    /// WebDataset tar shards, in the order the pattern lists them (the loader shuffles them).
    WebDataset { shards: Vec<PathBuf> },
    /// Rows of a CSV/TSV.
    Csv {
        path: PathBuf,
        rows: Arc<Vec<CsvRow>>,
    },
    /// The synthetic dataset: infinite, sample `i` is a pure function of `i`.
    Synthetic { data: Arc<Synthetic>, split: Split },
    /// An ImageFolder tree (for evaluation): each image's caption is its class name and the
    /// batches carry class indices in [`Batch::labels`](super::loader::Batch::labels).
    ImageFolder(Arc<ImageFolder>),
}

impl Source {
    /// Shards from a brace pattern (see [`expand_braces`]) or a single path; errors naming the
    /// first shard that does not exist.
    pub fn webdataset(pattern: &str) -> Result<Source> {
        let shards: Vec<PathBuf> = expand_braces(pattern)?
            .into_iter()
            .map(PathBuf::from)
            .collect();
        if let [dir] = &shards[..] {
            if dir.is_dir() {
                return Err(Error::format(
                    dir,
                    "is a folder: --data takes WebDataset .tar shards (a file or a brace pattern \
                     such as 'shards/{00000..00099}.tar') or a .csv/.tsv file of image paths and \
                     captions; for a folder of .tar shards give their pattern",
                ));
            }
        }
        let missing: Vec<&PathBuf> = shards.iter().filter(|p| !p.is_file()).collect();
        if let Some(first) = missing.first() {
            return Err(Error::format(
                first,
                format!(
                    "shard does not exist ({} of the {} shards of {pattern:?} are missing)",
                    missing.len(),
                    shards.len()
                ),
            ));
        }
        Ok(Source::WebDataset { shards })
    }

    /// A CSV/TSV of image paths and captions, read whole now (see [`read_csv`]).
    pub fn csv(path: impl AsRef<Path>, opts: &CsvOptions) -> Result<Source> {
        let path = path.as_ref();
        Ok(Source::Csv {
            path: path.to_path_buf(),
            rows: Arc::new(read_csv(path, opts)?),
        })
    }

    /// An ImageFolder tree (see [`ImageFolder::open`]).
    pub fn image_folder(root: impl AsRef<Path>) -> Result<Source> {
        Ok(Source::ImageFolder(Arc::new(ImageFolder::open(root)?)))
    }

    /// The synthetic dataset's `split` (its own seed decides every sample; the loader's seed
    /// plays no part).
    pub fn synthetic(data: Synthetic, split: Split) -> Source {
        Source::Synthetic {
            data: Arc::new(data),
            split,
        }
    }
}
