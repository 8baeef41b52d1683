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
    /// Whether every merge that has a merged token as a part ranks after every merge that
    /// makes that token (true of any vocab a BPE training wrote, CLIP's included): then a merge
    /// only ever creates pairs of a later rank, and the heap merge ([`Vocab::bpe`] on long
    /// words) applies exactly the merges the reference loop does.
    pub heap_exact: bool,
}

/// Words at least this long (in bytes) are merged with a heap, in O(n log n): the reference
/// loop rescans the word once per merge, which is quadratic (a 1 MB word took 28 s).
const HEAP_FROM: usize = 24;

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
        // The last rank that makes each merged token (-1: never made by a merge).
        let mut made = vec![-1i64; tokens.len()];
        for &(rank, merged) in ranks.values() {
            made[merged as usize] = made[merged as usize].max(rank as i64);
        }
        let heap_exact = ranks.iter().all(|(&pair, &(rank, _))| {
            let (a, b) = ((pair >> 32) as usize, (pair & 0xFFFF_FFFF) as usize);
            made[a] < rank as i64 && made[b] < rank as i64
        });
        let n = tokens.len() as u32;
        Ok(Vocab {
            bytes,
            byte_ids,
            ranks,
            sot: n - 2,
            eot: n - 1,
            heap_exact,
        })
    }

    /// BPE of one pre-token (its UTF-8 bytes), appending the ids to `out`: repeatedly merge
    /// every occurrence, left to right, of the adjacent pair with the lowest merge rank. Long
    /// words go through [`bpe_heap`](Self::bpe_heap), which gives the same ids in O(n log n).
    pub fn bpe(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.len() >= HEAP_FROM && self.heap_exact {
            self.bpe_heap(word, out)
        } else {
            self.bpe_reference(word, out)
        }
    }

    /// The merged token of adjacent symbols `a`, `b`, with its rank.
    #[inline]
    fn merge_of(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.ranks.get(&(((a as u64) << 32) | b as u64)).copied()
    }

    /// The symbols of a word before any merge: its bytes, the last one with `</w>`.
    fn symbols(&self, word: &[u8]) -> Vec<u32> {
        let mut sym: Vec<u32> = word.iter().map(|&b| self.byte_ids[b as usize]).collect();
        if let Some(last) = sym.last_mut() {
            *last += 256;
        }
        sym
    }

    /// The BPE of [`bpe`](Self::bpe) with a min-heap of (rank, position) over a linked list of
    /// symbols. Ranks come out of the heap in increasing order (a merge only creates pairs of
    /// later ranks when [`Vocab::heap_exact`]) and one rank's pairs left to right, which is
    /// exactly the reference's pass per rank; entries made stale by a merge next to them are
    /// recognised (a symbol only ever grows) and dropped.
    pub fn bpe_heap(&self, word: &[u8], out: &mut Vec<u32>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut sym = self.symbols(word);
        let n = sym.len();
        if n == 0 {
            return;
        }
        const NONE: usize = usize::MAX;
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        prev[0] = NONE;
        let mut alive = vec![true; n];
        // (rank, left position, left symbol, right symbol)
        let mut heap: BinaryHeap<Reverse<(u32, usize, u32, u32)>> = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some((rank, _)) = self.merge_of(sym[i], sym[i + 1]) {
                heap.push(Reverse((rank, i, sym[i], sym[i + 1])));
            }
        }
        while let Some(Reverse((_, i, a, b))) = heap.pop() {
            let j = next[i];
            if !alive[i] || sym[i] != a || j == NONE || sym[j] != b {
                continue; // stale
            }
            let (_, merged) = self.merge_of(a, b).expect("a pushed pair has a merge");
            sym[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[j] != NONE {
                prev[next[j]] = i;
            }
            if prev[i] != NONE {
                let p = prev[i];
                if let Some((rank, _)) = self.merge_of(sym[p], merged) {
                    heap.push(Reverse((rank, p, sym[p], merged)));
                }
            }
            if next[i] != NONE {
                let k = next[i];
                if let Some((rank, _)) = self.merge_of(merged, sym[k]) {
                    heap.push(Reverse((rank, i, merged, sym[k])));
                }
            }
        }
        let mut i = 0;
        while i != NONE {
            out.push(sym[i]);
            i = next[i];
        }
    }

    /// The reference BPE loop, as CLIP's `SimpleTokenizer.bpe` (quadratic in the word length).
    pub fn bpe_reference(&self, word: &[u8], out: &mut Vec<u32>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn vocab() -> Vocab {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(crate::tokenizer::CLIP_VOCAB_GZ),
            &mut text,
        )
        .unwrap();
        Vocab::parse(&text, "clip").unwrap()
    }

    #[test]
    fn the_heap_merge_equals_the_reference_loop() {
        let v = vocab();
        assert!(v.heap_exact, "CLIP's merges are in creation order");
        let mut r = rand::rngs::StdRng::seed_from_u64(16);
        // words from a small alphabet (many merges, long runs of one letter) and from bytes
        let alphabets: [&[u8]; 3] = [b"ab", b"etaoinshrdlu", b"aaaaaaab"];
        for case in 0..600 {
            let len = r.random_range(1..300);
            let word: Vec<u8> = match case % 4 {
                3 => (0..len).map(|_| r.random()).collect(),
                k => {
                    let a = alphabets[k];
                    (0..len).map(|_| a[r.random_range(0..a.len())]).collect()
                }
            };
            let (mut h, mut f) = (Vec::new(), Vec::new());
            v.bpe_heap(&word, &mut h);
            v.bpe_reference(&word, &mut f);
            assert_eq!(h, f, "case {case}: {:?}", String::from_utf8_lossy(&word));
        }
        for word in [
            &b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..],
            b"x",
            b"ab",
            b"photograph",
        ] {
            let (mut h, mut f) = (Vec::new(), Vec::new());
            v.bpe_heap(word, &mut h);
            v.bpe_reference(word, &mut f);
            assert_eq!(h, f);
        }
    }

    #[test]
    fn a_vocab_whose_merges_are_out_of_creation_order_is_not_heap_exact() {
        // "a b" makes "ab" at rank 1, but "ab c" comes first (rank 0): not creation order.
        let mut text = String::from("#version: 0.2\n");
        text += "ab c\na b\n";
        for i in 0..N_MERGES - 2 {
            // filler merges of byte symbols with </w> that never fire
            let _ = i;
            text += "x y</w>\n";
        }
        let v = Vocab::parse(&text, "test").unwrap();
        assert!(!v.heap_exact);
        let mut out = Vec::new();
        v.bpe(b"abcabcabcabcabcabcabcabcabcabcabc", &mut out);
        let mut f = Vec::new();
        v.bpe_reference(b"abcabcabcabcabcabcabcabcabcabcabc", &mut f);
        assert_eq!(out, f);
    }
}
