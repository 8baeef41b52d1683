//! CLIP's tokenizer, exactly as OpenAI CLIP / open_clip's `SimpleTokenizer` with its default
//! `clean="lower"`: the same ids for the same text.
//!
//! 1. Clean ([`clean`]): [`ftfy::fix_text`] (a port of ftfy's default fixes: mojibake, HTML
//!    entities, curly quotes, widths, ligatures, control characters, NFC), `html.unescape` twice,
//!    runs of whitespace to one space, strip, lower case.
//! 2. Split into words with
//!    `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//!    (the special tokens and contractions case-insensitive).
//! 3. Byte-level BPE of each word's UTF-8 bytes with the 48,894 merges of
//!    `bpe_simple_vocab_16e6.txt.gz` (embedded in the binary). Vocabulary: 49,408 ids.
//! 4. [`Tokenizer::tokenize`]: `[SOT] + ids + [EOT]`, zero-padded to the context length (77 for
//!    CLIP); longer text is cut to the context length with its last id made EOT.
//!
//! ```
//! use clipcu::tokenizer::Tokenizer;
//! let tok = Tokenizer::clip();
//! let row = tok.tokenize("A photo of a cat.", 77);
//! assert_eq!(&row[..7], &[Tokenizer::SOT, 320, 1125, 539, 320, 2368, 269]);
//! assert_eq!(row[7], Tokenizer::EOT);
//! assert_eq!(tok.decode(&row[1..7]), "a photo of a cat . ");
//! ```
//!
//! `tests/tokenizer.rs` checks every id of a 1,600-text corpus (mojibake, entities, scripts, emoji,
//! odd whitespace, long texts...) against open_clip 3.3: all match. What can still differ:
//! - lower case of characters assigned after Unicode 14: Python 3.11's `str.lower` knows Unicode
//!   14, Rust's `to_lowercase` Unicode 16 (55 code points differ, none in everyday text). ftfy's
//!   classes and the word classes are generated from the Python side (`tables.rs`), so they agree
//!   everywhere; so does NFC;
//! - lone surrogates (Python strings can hold them; a Rust `str` cannot);
//! - `decode` skips ids outside the vocabulary (Python raises `KeyError`).
//!
//! BPE results are cached per word, as in the reference, but the cache is bounded (a shard is
//! emptied when full; words over 256 bytes are not kept), so memory stays flat on endless text.
//! Words of 24 bytes or more are merged with a heap, O(n log n), giving the reference loop's ids
//! (which it would take quadratic time for: a 1 MB word took 28 s); see `Vocab::bpe_heap`.

mod bpe;
mod clean;
pub mod ftfy;
pub mod html;
#[rustfmt::skip]
mod tables;

use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

use rayon::prelude::*;
use regex::Regex;

pub use bpe::bytes_to_unicode;
pub use clean::{clean, is_py_space};

use crate::error::{Error, Result};
use bpe::{FxHasher, FxMap, Vocab};

/// The vocab file OpenAI CLIP and open_clip ship, gzip-compressed, embedded in the binary.
pub const CLIP_VOCAB_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// The pre-tokenization regex, `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|
/// [\p{N}]|[^\s\p{L}\p{N}]+` with IGNORECASE. The classes are spelled out as the Python `regex`
/// module has them (`tables.rs`): its Unicode tables are newer than the `regex` crate's, and with
/// IGNORECASE it puts U+0345 (whose case variant ι is a letter) in no class at all.
fn word_pattern() -> String {
    format!(
        r"(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)|[{}]+|[{}]|[{}]+",
        tables::WORD_LETTER,
        tables::WORD_NUMBER,
        tables::WORD_OTHER
    )
}

const CACHE_SHARDS: usize = 64;
/// Words kept per cache shard before the shard is emptied (64 × 4096 ≈ 262k words in all).
const CACHE_SHARD_CAPACITY: usize = 4096;

/// Longer words are not cached.
const CACHE_MAX_WORD: usize = 256;

type Shard = RwLock<FxMap<Box<[u8]>, Box<[u32]>>>;

struct Inner {
    vocab: Vocab,
    cache: Vec<Shard>,
    words: Regex,
}

/// CLIP's BPE tokenizer. Cheap to clone (shared vocabulary and cache); `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer(Arc<Inner>);

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// `<start_of_text>`.
    pub const SOT: u32 = 49406;
    /// `<end_of_text>`; the largest id, so `argmax` over a row finds it.
    pub const EOT: u32 = 49407;
    /// Ids in CLIP's vocabulary.
    pub const VOCAB_SIZE: usize = 49408;
    /// CLIP's context length.
    pub const CONTEXT_LENGTH: usize = 77;

    /// The CLIP tokenizer with the embedded vocabulary (built once, then shared).
    pub fn clip() -> Tokenizer {
        static CLIP: OnceLock<Tokenizer> = OnceLock::new();
        CLIP.get_or_init(|| {
            Self::from_bytes(CLIP_VOCAB_GZ, "<embedded bpe_simple_vocab_16e6.txt.gz>")
                .expect("the embedded CLIP vocab is valid")
        })
        .clone()
    }

    /// A tokenizer from a vocab file in CLIP's format (gzip-compressed or plain): a header line,
    /// then at least 48,894 merges `a b`, one a line.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&data, &path.display().to_string())
    }

    /// A tokenizer from the bytes of a vocab file (gzip or plain text); `name` is used in errors.
    pub fn from_bytes(data: &[u8], name: &str) -> Result<Tokenizer> {
        let text = if data.starts_with(&[0x1f, 0x8b]) {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(data), &mut s)
                .map_err(|e| {
                    Error::format(name, format!("not a readable gzip of UTF-8 text: {e}"))
                })?;
            s
        } else {
            String::from_utf8(data.to_vec())
                .map_err(|e| Error::format(name, format!("not UTF-8 text: {e}")))?
        };
        let vocab = Vocab::parse(&text, name)?;
        Ok(Tokenizer(Arc::new(Inner {
            vocab,
            cache: (0..CACHE_SHARDS).map(|_| RwLock::default()).collect(),
            words: Regex::new(&word_pattern()).expect("word regex"),
        })))
    }

    /// Number of ids (49,408 for CLIP).
    pub fn vocab_size(&self) -> usize {
        self.0.vocab.bytes.len()
    }

    /// BPE ids of `text`, without SOT/EOT (open_clip's `SimpleTokenizer.encode`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out, usize::MAX);
        out
    }

    /// Appends the ids of `text` to `out`, stopping once `out` holds at least `limit` ids.
    fn encode_into(&self, text: &str, out: &mut Vec<u32>, limit: usize) {
        let inner = &*self.0;
        let cleaned = clean(text);
        for m in inner.words.find_iter(&cleaned) {
            if out.len() >= limit {
                return;
            }
            match m.as_str() {
                "<start_of_text>" => out.push(inner.vocab.sot),
                "<end_of_text>" => out.push(inner.vocab.eot),
                word => self.bpe_cached(word.as_bytes(), out),
            }
        }
    }

    fn bpe_cached(&self, word: &[u8], out: &mut Vec<u32>) {
        let inner = &*self.0;
        if word.len() == 1 {
            out.push(inner.vocab.byte_ids[word[0] as usize] + 256);
            return;
        }
        if word.len() > CACHE_MAX_WORD {
            // not worth keeping (and a megabyte-long word would hold megabytes of ids)
            inner.vocab.bpe(word, out);
            return;
        }
        let mut h = FxHasher::default();
        std::hash::Hasher::write(&mut h, word);
        // Bits 32.. pick the shard: hashbrown uses the low bits (bucket) and the top 7 (tag),
        // which must still vary within a shard.
        let shard = &inner.cache[(std::hash::Hasher::finish(&h) >> 32) as usize % CACHE_SHARDS];
        if let Some(ids) = shard.read().unwrap().get(word) {
            out.extend_from_slice(ids);
            return;
        }
        let start = out.len();
        inner.vocab.bpe(word, out);
        let mut map = shard.write().unwrap();
        if map.len() >= CACHE_SHARD_CAPACITY {
            map.clear();
        }
        map.insert(word.into(), out[start..].into());
    }

    /// One row of `context_length` ids: `[SOT] + encode(text) + [EOT]`, zero-padded; text that
    /// does not fit is cut to `context_length` ids and the last one is made EOT
    /// (open_clip's `tokenize`).
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<u32> {
        let mut row = vec![0; context_length];
        self.tokenize_into(text, &mut row);
        row
    }

    fn tokenize_into(&self, text: &str, row: &mut [u32]) {
        let ctx = row.len();
        if ctx == 0 {
            return;
        }
        let mut ids = Vec::with_capacity(ctx + 8);
        ids.push(self.0.vocab.sot);
        // Only the first ctx - 1 ids after SOT can survive truncation.
        self.encode_into(text, &mut ids, ctx);
        ids.push(self.0.vocab.eot);
        if ids.len() > ctx {
            ids.truncate(ctx);
            ids[ctx - 1] = self.0.vocab.eot;
        }
        row[..ids.len()].copy_from_slice(&ids);
        row[ids.len()..].fill(0);
    }

    /// [`tokenize`](Self::tokenize) of many texts in parallel (rayon): a row-major
    /// `[texts.len(), context_length]` buffer.
    pub fn tokenize_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        context_length: usize,
    ) -> Vec<u32> {
        let mut out = vec![0u32; texts.len() * context_length];
        if context_length == 0 {
            return out;
        }
        out.par_chunks_mut(context_length)
            .zip(texts.par_iter())
            .with_min_len(16)
            .for_each(|(row, text)| self.tokenize_into(text.as_ref(), row));
        out
    }

    /// Text of `ids` (open_clip's `decode`): the tokens' bytes as UTF-8 (invalid sequences become
    /// U+FFFD) with every `</w>` turned into a space. Special tokens decode to their names; ids
    /// outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let table = &self.0.vocab.bytes;
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&id| table.get(id as usize))
            .flat_map(|b| b.iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }

    /// Forgets the cached BPE of every word (for cold-start measurements).
    pub fn clear_cache(&self) {
        for shard in &self.0.cache {
            shard.write().unwrap().clear();
        }
    }
}
