//! The vocabulary and byte-level BPE of CLIP's `SimpleTokenizer`.
//!
//! Vocabulary order (ids): the 256 byte symbols in `bytes_to_unicode` order, the same 256 with
//! `</w>` (end of word), one token per merge (the merged pair's concatenation) for lines
//! 1..48895 of the vocab file, then `<start_of_text>` and `<end_of_text>`. Tokens are strings over
//! the `bytes_to_unicode` alphabet (each byte one printable character); here they are handled as
//! ids, with a string → id map (a string listed twice gets its last id, as Python's dict does) so
//! that id equality is string equality.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Error, Result};

/// How many merges CLIP takes from the vocab file (`merges[1:49152-256-2+1]`).
pub const N_MERGES: usize = 49152 - 256 - 2;

/// rustc's FxHash: fast, fine for keys nobody crafts to collide.
#[derive(Default, Clone, Copy)]
pub(super) struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.add(x);
    }
    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.add(x as u64);
    }
    /// Rotated (as rustc-hash 2 does) so that the low bits hashbrown indexes with depend on all
    /// of the input: the product's low bits see only the input's low bits.
    #[inline]
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

pub(super) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// GPT-2/CLIP `bytes_to_unicode`: the printable character each byte stands for, and the byte
/// order of the first 256 vocabulary entries.
pub fn bytes_to_unicode() -> [(u8, char); 256] {
    let mut out = [(0u8, '\0'); 256];
    let mut k = 0;
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    for b in 0..256u32 {
        if printable(b) {
            out[k] = (b as u8, char::from_u32(b).unwrap());
            k += 1;
        }
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable(b) {
            out[k] = (b as u8, char::from_u32(256 + n).unwrap());
            k += 1;
            n += 1;
        }
    }
    out
}

pub(super) struct Vocab {
    /// id → the token's bytes (with `</w>` spelled out as its four ASCII bytes), for decode.
    pub bytes: Vec<Box<[u8]>>,
    /// byte → id of its one-byte symbol; `+ 256` gives the symbol with `</w>`.
    pub byte_ids: [u32; 256],
    /// (left id << 32 | right id) → (merge rank, id of the merged token).
    pub ranks: FxMap<u64, (u32, u32)>,
    pub sot: u32,
    pub eot: u32,
}

impl Vocab {
    /// Builds the vocabulary from the text of a vocab file; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Vocab> {
        let b2u = bytes_to_unicode();
        let mut u2b: HashMap<char, u8> = HashMap::new();
        for &(b, c) in &b2u {
            u2b.insert(c, b);
        }
        let mut lines: Vec<&str> = text.split('\n').skip(1).collect(); // skip the "#version" header
        if lines.last() == Some(&"") {
            lines.pop(); // the file's final newline
        }
        if lines.len() < N_MERGES {
            return Err(Error::format(
                path,
                format!(
                    "a CLIP vocab file has a header line and at least {N_MERGES} merges; this one has {} merge lines",
                    lines.len()
                ),
            ));
        }
        let mut merges: Vec<(&str, &str)> = Vec::with_capacity(N_MERGES);
        for (i, line) in lines.into_iter().take(N_MERGES).enumerate() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a, b)),
                _ => {
                    return Err(Error::format(
                        path,
                        format!(
                            "line {}: expected a merge of two symbols separated by a space, found {line:?}",
                            i + 2
                        ),
                    ))
                }
            }
        }
        let mut tokens: Vec<String> = b2u.iter().map(|&(_, c)| c.to_string()).collect();
        tokens.extend(b2u.iter().map(|&(_, c)| format!("{c}</w>")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.push("<start_of_text>".into());
        tokens.push("<end_of_text>".into());
        // Python's dict(zip(vocab, range)): a repeated string keeps its last id.
        let mut ids: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            ids.insert(t.as_str(), i as u32);
        }
        let mut ranks = FxMap::default();
        for (rank, (a, b)) in merges.iter().enumerate() {
            // A merge whose parts are not tokens can never apply (symbols are always tokens).
            let (Some(&ia), Some(&ib)) = (ids.get(a), ids.get(b)) else {
                continue;
            };
            let merged = ids[format!("{a}{b}").as_str()];
            ranks.insert(((ia as u64) << 32) | ib as u64, (rank as u32, merged));
        }
        let mut byte_ids = [0u32; 256];
        for (i, &(b, _)) in b2u.iter().enumerate() {
            byte_ids[b as usize] = i as u32;
        }
        let mut bytes = Vec::with_capacity(tokens.len());
        for t in &tokens {
            let (body, end) = match t.strip_suffix("</w>") {
                Some(body) => (body, &b"</w>"[..]),
                None => (t.as_str(), &b""[..]),
            };
            let mut v: Vec<u8> = Vec::with_capacity(body.len() + end.len());
            for c in body.chars() {
                match u2b.get(&c) {
                    Some(&b) => v.push(b),
                    None => {
                        return Err(Error::format(
                            path,
                            format!(
                                "token {t:?} has the character {c:?}, which is not a byte symbol"
                            ),
                        ))
                    }
                }
            }
            v.extend_from_slice(end);
            bytes.push(v.into_boxed_slice());
        }
        let n = tokens.len() as u32;
        Ok(Vocab {
            bytes,
            byte_ids,
            ranks,
            sot: n - 2,
            eot: n - 1,
        })
    }

    /// BPE of one pre-token (its UTF-8 bytes), appending the ids to `out`: repeatedly merge
    /// every occurrence, left to right, of the adjacent pair with the lowest merge rank.
    pub fn bpe(&self, word: &[u8], out: &mut Vec<u32>) {
        let Some((&last, head)) = word.split_last() else {
            return;
        };
        let mut sym: Vec<u32> = head.iter().map(|&b| self.byte_ids[b as usize]).collect();
        sym.push(self.byte_ids[last as usize] + 256);
        let mut next = Vec::with_capacity(sym.len());
        while sym.len() > 1 {
            let mut best: Option<(u32, u32, u32, u32)> = None; // (rank, left, right, merged)
            for w in sym.windows(2) {
                if let Some(&(rank, merged)) =
                    self.ranks.get(&(((w[0] as u64) << 32) | w[1] as u64))
                {
                    if best.is_none_or(|b| rank < b.0) {
                        best = Some((rank, w[0], w[1], merged));
                    }
                }
            }
            let Some((_, left, right, merged)) = best else {
                break;
            };
            next.clear();
            let mut i = 0;
            while i < sym.len() {
                if sym[i] == left && i + 1 < sym.len() && sym[i + 1] == right {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(sym[i]);
                    i += 1;
                }
            }
            std::mem::swap(&mut sym, &mut next);
        }
        out.extend_from_slice(&sym);
    }
}
