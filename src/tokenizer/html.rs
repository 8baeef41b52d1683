//! Python's `html.unescape` (CPython 3.11 `html/__init__.py`), character for character: the
//! HTML5 named references (with and without their ';', longest-prefix matching for legacy names
//! such as `&ampx` → `&x`), numeric references with the HTML5 replacements for invalid ones.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use regex::{Captures, Regex};

use super::tables::HTML5_ENTITIES;

/// Name (without '&', with its ';' where the table has one) → replacement.
pub(super) fn html5() -> &'static HashMap<&'static str, &'static str> {
    static MAP: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    MAP.get_or_init(|| HTML5_ENTITIES.iter().copied().collect())
}

fn charref_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0C <&#;]{1,32};?)").unwrap()
    })
}

/// `html.unescape(s)`.
pub fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    charref_re().replace_all(s, |c: &Captures| replace_charref(&c[1]))
}

/// Python's `_invalid_charrefs`: numeric references HTML5 maps to something else.
fn invalid_charref(num: u64) -> Option<char> {
    Some(match num {
        0x00 => '\u{FFFD}',
        0x0d => '\r',
        0x80 => '\u{20AC}',
        0x81 => '\u{81}',
        0x82 => '\u{201A}',
        0x83 => '\u{0192}',
        0x84 => '\u{201E}',
        0x85 => '\u{2026}',
        0x86 => '\u{2020}',
        0x87 => '\u{2021}',
        0x88 => '\u{02C6}',
        0x89 => '\u{2030}',
        0x8a => '\u{0160}',
        0x8b => '\u{2039}',
        0x8c => '\u{0152}',
        0x8d => '\u{8D}',
        0x8e => '\u{017D}',
        0x8f => '\u{8F}',
        0x90 => '\u{90}',
        0x91 => '\u{2018}',
        0x92 => '\u{2019}',
        0x93 => '\u{201C}',
        0x94 => '\u{201D}',
        0x95 => '\u{2022}',
        0x96 => '\u{2013}',
        0x97 => '\u{2014}',
        0x98 => '\u{02DC}',
        0x99 => '\u{2122}',
        0x9a => '\u{0161}',
        0x9b => '\u{203A}',
        0x9c => '\u{0153}',
        0x9d => '\u{9D}',
        0x9e => '\u{017E}',
        0x9f => '\u{0178}',
        _ => return None,
    })
}

/// Python's `_invalid_codepoints`: numeric references that unescape to nothing.
fn invalid_codepoint(num: u64) -> bool {
    matches!(num, 0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f..=0x9f | 0xfdd0..=0xfdef)
        || (num <= 0x10ffff && (num & 0xfffe) == 0xfffe)
}

/// Digits to a number, saturating (anything past 0x10FFFF is treated the same).
fn parse_saturating(digits: &str, radix: u32) -> u64 {
    digits.chars().fold(0u64, |acc, c| {
        acc.saturating_mul(radix as u64)
            .saturating_add(c.to_digit(radix).unwrap_or(0) as u64)
    })
}

fn replace_charref(s: &str) -> String {
    if let Some(num) = s.strip_prefix('#') {
        let num = num.trim_end_matches(';');
        let num = match num.strip_prefix(['x', 'X']) {
            Some(hex) => parse_saturating(hex, 16),
            None => parse_saturating(num, 10),
        };
        if let Some(c) = invalid_charref(num) {
            return c.to_string();
        }
        if (0xD800..=0xDFFF).contains(&num) || num > 0x10FFFF {
            return "\u{FFFD}".to_string();
        }
        if invalid_codepoint(num) {
            return String::new();
        }
        return char::from_u32(num as u32)
            .map(String::from)
            .unwrap_or_default();
    }
    let table = html5();
    if let Some(v) = table.get(s) {
        return (*v).to_string();
    }
    // The longest prefix (of at least 2 characters, shorter than the whole) that is a name.
    let ends: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
    for x in (2..ends.len()).rev() {
        let (head, tail) = s.split_at(ends[x]);
        if let Some(v) = table.get(head) {
            return format!("{v}{tail}");
        }
    }
    format!("&{s}")
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn like_python() {
        let cases = [
            ("&amp;", "&"),
            ("&amp;amp;", "&amp;"),
            ("&lt;b&gt;", "<b>"),
            ("&#39;", "'"),
            ("&#x27;&#X27", "''"),
            ("&ampx", "&x"),
            ("&notit;", "¬it;"),
            ("&nosuch;", "&nosuch;"),
            ("&#0;", "\u{FFFD}"),
            ("&#x80;", "€"),
            ("&#1;x", "x"),
            ("&#xD800;", "\u{FFFD}"),
            ("&#99999999999999999999999;", "\u{FFFD}"),
            ("&#xFFFE;", ""),
            ("&#;", "&#;"),
            ("a & b", "a & b"),
        ];
        for (input, want) in cases {
            assert_eq!(unescape(input), want, "{input:?}");
        }
    }
}
