//! A small stable 64-bit hash for cache keys (not cryptographic; the same on every platform and
//! Rust version, unlike `std`'s `DefaultHasher`).
//!
//! Each 64-bit word is mixed in with `h = (h ^ w) · P` (an odd multiplier, so every step is a
//! bijection of `h`: changing any single word always changes the result), and the output goes
//! through a final avalanche (splitmix64's finaliser).

const SEED: u64 = 0xcbf2_9ce4_8422_2325;
const P: u64 = 0x0000_0100_0000_01b3 | 0x9e37_79b9_0000_0000;

#[derive(Clone, Debug)]
pub(crate) struct Hash64 {
    h: u64,
}

impl Hash64 {
    pub(crate) fn new() -> Self {
        Hash64 { h: SEED }
    }

    pub(crate) fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(P);
    }

    /// The bytes, preceded by their length (so concatenations cannot collide trivially).
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(last));
        }
    }

    pub(crate) fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub(crate) fn finish(&self) -> u64 {
        let mut z = self.h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn hex(&self) -> String {
        format!("{:016x}", self.finish())
    }
}
