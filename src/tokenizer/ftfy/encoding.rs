//! ftfy's `fix_encoding`: find text that is UTF-8 decoded in a single-byte code page (mojibake,
//! "cafÃ©") and decode it again, as ftfy 6.3 does (`ftfy/__init__.py`, `fixes.py`, `chardata.py`,
//! `badness.py`, `bad_codecs/`).
//!
//! One step: leave ASCII and text that does not look bad (`BADNESS_RE`) alone; otherwise for each
//! code page that can encode the whole text (latin-1, the "sloppy" windows-125x, iso-8859-2,
//! MacRoman, cp437), encode it, restore spaces that were non-breaking (`restore_byte_a0`), mark
//! lossy sequences (`replace_lossy_sequences`), and take the first that decodes as UTF-8 (with
//! the `utf-8-variants` quirks: `C0 80` is NUL, CESU-8 surrogate pairs). Failing that, fix UTF-8
//! mojibake embedded in other text (`decode_inconsistent_utf8`), then latin-1 meant as
//! windows-1252, then lone C1 controls. Steps repeat until the text stops changing.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::bytes::Regex as BytesRegex;
use regex::Regex;

use super::super::tables::{
    BADNESS, CHARMAPS, PY_SPACE, PY_WORD, UTF8_CONTINUATION_STRICT, UTF8_DETECTOR,
    WINDOWS_1252_UNDEFINED,
};

/// One single-byte code page: decode table and its inverse.
struct CodePage {
    name: &'static str,
    decode: [char; 256],
    encode: HashMap<char, u8>,
}

fn code_pages() -> &'static [CodePage] {
    static PAGES: OnceLock<Vec<CodePage>> = OnceLock::new();
    PAGES.get_or_init(|| {
        CHARMAPS
            .iter()
            .map(|&(name, sub, high)| {
                let mut decode = ['\0'; 256];
                for (b, d) in decode.iter_mut().enumerate().take(128) {
                    *d = b as u8 as char;
                }
                decode[0x1a] = sub;
                decode[128..].copy_from_slice(&high);
                let encode = decode
                    .iter()
                    .enumerate()
                    .map(|(b, &c)| (c, b as u8))
                    .collect();
                CodePage {
                    name,
                    decode,
                    encode,
                }
            })
            .collect()
    })
}

/// sloppy-windows-1252's character for a byte (C1 bytes windows-1252 leaves undefined stay C1).
pub(super) fn sloppy_1252_char(b: u8) -> char {
    code_pages()[1].decode[b as usize]
}

impl CodePage {
    /// `text.encode(codec)`, or None when a character is not in the code page (ftfy's
    /// `possible_encoding` is exactly this test).
    fn encode(&self, text: &str) -> Option<Vec<u8>> {
        text.chars()
            .map(|c| {
                if c.is_ascii() && c != '\x1a' {
                    Some(c as u8)
                } else {
                    self.encode.get(&c).copied()
                }
            })
            .collect()
    }
}

fn badness_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let pattern = BADNESS.replace("%S%", PY_SPACE).replace("%W%", PY_WORD);
        Regex::new(&pattern).expect("ftfy badness regex")
    })
}

/// `ftfy.badness.is_bad`: does the text contain a sequence that is very likely mojibake?
pub fn is_bad(text: &str) -> bool {
    badness_re().is_match(text)
}

fn altered_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    RE.get_or_init(|| {
        BytesRegex::new(
            r"(?-u)[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]",
        )
        .unwrap()
    })
}

fn lossy_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    RE.get_or_init(|| {
        BytesRegex::new(concat!(
            r"(?-u)[\xc2-\xdf][\x1a]|[\xc2-\xc3][?]",
            r"|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]",
            r"|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]",
            r"|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]",
            r"|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]",
            r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]",
            r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]|\x1a",
        ))
        .unwrap()
    })
}

/// `ftfy.fixes.restore_byte_a0`: `C3 20` (Ã then a space) becomes `C3 A0 20` unless the next word
/// is Portuguese "à"-like; then spaces inside sequences that would be UTF-8 with an A0 byte
/// become A0.
fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0xc3 && bytes.get(i + 1) == Some(&b' ') {
            let after = &bytes[i + 2..];
            let excluded = [&b" "[..], b"quele", b"quela", b"quilo", b"s "]
                .iter()
                .any(|p| after.starts_with(p));
            if !excluded {
                out.extend_from_slice(b"\xc3\xa0 ");
                i += 2;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    altered_utf8_re()
        .replace_all(&out, |c: &regex::bytes::Captures| {
            c[0].iter()
                .map(|&b| if b == b' ' { 0xa0 } else { b })
                .collect::<Vec<u8>>()
        })
        .into_owned()
}

/// ftfy's `utf-8-variants` codec, strict: standard UTF-8, plus `C0 80` as NUL and CESU-8
/// surrogate pairs as one character. (Like the codec, `C0` followed by a final newline also
/// decodes to NUL: Python's `$` matches before a trailing newline.)
pub(super) fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut start = 0; // start of the plain run not yet decoded
    let mut i = 0;
    let n = bytes.len();
    while i < n {
        let special = match bytes[i] {
            0xc0 if i + 1 < n
                && (bytes[i + 1] == 0x80 || (bytes[i + 1] == b'\n' && i + 2 == n)) =>
            {
                Some(('\0', 2))
            }
            0xed if i + 6 <= n
                && (0xa0..=0xaf).contains(&bytes[i + 1])
                && (0x80..=0xbf).contains(&bytes[i + 2])
                && bytes[i + 3] == 0xed
                && (0xb0..=0xbf).contains(&bytes[i + 4])
                && (0x80..=0xbf).contains(&bytes[i + 5]) =>
            {
                let cp = (((bytes[i + 1] & 0x0f) as u32) << 16)
                    + (((bytes[i + 2] & 0x3f) as u32) << 10)
                    + (((bytes[i + 4] & 0x0f) as u32) << 6)
                    + ((bytes[i + 5] & 0x3f) as u32)
                    + 0x10000;
                Some((char::from_u32(cp)?, 6))
            }
            _ => None,
        };
        match special {
            Some((c, len)) => {
                out.push_str(std::str::from_utf8(&bytes[start..i]).ok()?);
                out.push(c);
                i += len;
                start = i;
            }
            None => i += 1,
        }
    }
    out.push_str(std::str::from_utf8(&bytes[start..]).ok()?);
    Some(out)
}

fn utf8_detector() -> &'static (Regex, Regex) {
    static RE: OnceLock<(Regex, Regex)> = OnceLock::new();
    RE.get_or_init(|| {
        (
            Regex::new(UTF8_DETECTOR).unwrap(),
            Regex::new(UTF8_CONTINUATION_STRICT).unwrap(),
        )
    })
}

/// The matches of ftfy's `UTF8_DETECTOR_RE`: its pattern, where the character before the match
/// is not a strict UTF-8 continuation look-alike (the look-behind the `regex` crate lacks).
fn utf8_detector_matches(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let (re, cont) = utf8_detector();
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos <= text.len() {
            let m = re.find_at(text, pos)?;
            let ok = match text[..m.start()].chars().next_back() {
                Some(prev) => !cont.is_match(prev.encode_utf8(&mut [0; 4])),
                None => true,
            };
            if ok {
                pos = m.end();
                return Some((m.start(), m.end()));
            }
            // Try again from the next character.
            pos = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
        }
        None
    })
}

/// `ftfy.fixes.decode_inconsistent_utf8`: fix each UTF-8-looking run that is bad on its own.
fn decode_inconsistent_utf8(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (s, e) in utf8_detector_matches(text) {
        let sub = &text[s..e];
        out.push_str(&text[last..s]);
        if sub.len() < text.len() && is_bad(sub) {
            out.push_str(&fix_encoding(sub));
        } else {
            out.push_str(sub);
        }
        last = e;
    }
    out.push_str(&text[last..]);
    out
}

/// `ftfy.fix_encoding(text)`: repeat single steps until the text stops changing.
pub fn fix_encoding(text: &str) -> String {
    let mut text = text.to_string();
    loop {
        match fix_encoding_step(&text) {
            Some(fixed) if fixed != text => text = fixed,
            _ => return text,
        }
    }
}

/// `_fix_encoding_one_step_and_explain`; None when the step changes nothing.
fn fix_encoding_step(text: &str) -> Option<String> {
    if text.is_ascii() || !is_bad(text) {
        return None;
    }
    let mut latin1_possible = false;
    for page in code_pages() {
        let Some(mut bytes) = page.encode(text) else {
            continue;
        };
        if page.name == "latin-1" {
            latin1_possible = true;
        }
        if page.name != "macroman" && altered_utf8_re().is_match(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if page.name.starts_with("sloppy") {
            bytes = lossy_utf8_re()
                .replace_all(&bytes, &b"\xef\xbf\xbd"[..])
                .into_owned();
        }
        if let Some(fixed) = decode_utf8_variants(&bytes) {
            return Some(fixed);
        }
    }
    if utf8_detector_matches(text).next().is_some() {
        let fixed = decode_inconsistent_utf8(text);
        if fixed != text {
            return Some(fixed);
        }
    }
    // Latin-1 that was meant as windows-1252 (strict: its five undefined bytes fail).
    if latin1_possible {
        let fixed: Option<String> = text
            .chars()
            .map(|c| match c as u32 {
                b @ 0x80..=0x9f if WINDOWS_1252_UNDEFINED.contains(&(b as u8)) => None,
                b @ 0x80..=0x9f => Some(sloppy_1252_char(b as u8)),
                _ => Some(c),
            })
            .collect();
        if let Some(fixed) = fixed {
            if fixed != text {
                return Some(fixed);
            }
        }
    }
    if text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)) {
        return Some(super::fix_c1_controls(text).into_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_variants() {
        assert_eq!(decode_utf8_variants(b"a\xc0\x80b").as_deref(), Some("a\0b"));
        assert_eq!(
            decode_utf8_variants(b"\xed\xa0\xbd\xed\xb8\x80").as_deref(),
            Some("\u{1F600}")
        );
        assert_eq!(decode_utf8_variants(b"\xed\xa0\xbd"), None);
        assert_eq!(decode_utf8_variants(b"\xc0"), None);
        assert_eq!(decode_utf8_variants(b"x\xc0\n").as_deref(), Some("x\0"));
        assert_eq!(
            decode_utf8_variants(b"caf\xc3\xa9").as_deref(),
            Some("café")
        );
    }

    #[test]
    fn mojibake() {
        assert_eq!(fix_encoding("cafÃ©"), "café");
        assert_eq!(fix_encoding("Ã³"), "ó");
        assert_eq!(fix_encoding("&ATILDE;&SUP3;"), "&ATILDE;&SUP3;");
        assert!(is_bad("cafÃ©"));
        assert!(!is_bad("café"));
    }
}
