//! A port of `ftfy.fix_text` with its default configuration (ftfy 6.3, Copyright 2023 Robyn Speer,
//! Apache-2.0), the first step of CLIP's text cleaning.
//!
//! Every fixer ftfy runs by default is here, in ftfy's order: `unescape_html` (off for the rest of
//! the text once a line contains '<'), `fix_encoding` (mojibake: text that was UTF-8 decoded as
//! latin-1, windows-125x, MacRoman or cp437 — see `encoding.rs`), `fix_c1_controls`,
//! `fix_latin_ligatures`, `fix_character_width`, `uncurl_quotes` (on by default: ’ → '),
//! `fix_line_breaks`, `remove_terminal_escapes`, `remove_control_chars`, then NFC; the whole list is
//! repeated until the text stops changing, line by line. `fix_surrogates` has nothing to do: a Rust
//! `str` cannot hold a lone surrogate. Character classes and code pages come from ftfy and Python
//! themselves (`tools/gen_tokenizer_tables.py`), so the remaining differences are Unicode-version
//! ones (Python 3.11's Unicode 14 against the Unicode tables of the `regex` and
//! `unicode-normalization` crates) for characters assigned after Unicode 14.

mod encoding;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use regex::{Captures, Regex};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

pub use encoding::fix_encoding;

use super::html;
use super::tables::{HTML5_ENTITIES, WIDTH_MAP};

/// ftfy's `max_decode_length`: the longest piece of a line fixed at once, in characters.
const MAX_DECODE_LENGTH: usize = 1_000_000;

/// `ftfy.fix_text(text)` with ftfy's default configuration.
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        if let Some((i, _)) = rest[..end].char_indices().nth(MAX_DECODE_LENGTH) {
            end = i;
        }
        let (segment, tail) = rest.split_at(end);
        // "auto": once a line looks like HTML, entities are left alone from there on.
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
        rest = tail;
    }
    out
}

/// `ftfy.fix_and_explain` on one segment: all fixers, repeated until nothing changes.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let orig = text.clone();
        if unescape {
            text = unescape_html(&text).into_owned();
        }
        text = fix_encoding(&text);
        text = fix_c1_controls(&text).into_owned();
        text = fix_latin_ligatures(&text).into_owned();
        text = fix_character_width(&text).into_owned();
        text = uncurl_quotes(&text).into_owned();
        text = fix_line_breaks(&text).into_owned();
        text = remove_terminal_escapes(&text).into_owned();
        text = remove_control_chars(&text).into_owned();
        if is_nfc_quick(text.chars()) != IsNormalized::Yes {
            text = text.nfc().collect();
        }
        if text == orig {
            return text;
        }
    }
}

/// Replaces the characters for which `map` gives Some; borrows when there are none.
fn map_chars(text: &str, map: impl Fn(char) -> Option<&'static str>) -> Cow<'_, str> {
    let Some(first) = text.char_indices().find(|&(_, c)| map(c).is_some()) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first.0]);
    for c in text[first.0..].chars() {
        match map(c) {
            Some(s) => out.push_str(s),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// ftfy's `HTML_ENTITIES`: `&name;` for every HTML5 name with a ';', plus an upper-case `&NAME;`
/// for lower-case names whose upper-case form Python's `html.unescape` leaves alone.
fn ftfy_entities() -> &'static HashMap<String, String> {
    static MAP: OnceLock<HashMap<String, String>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashMap::new();
        for &(name, value) in HTML5_ENTITIES.iter() {
            if !name.ends_with(';') {
                continue;
            }
            map.insert(format!("&{name}"), value.to_string());
            if name == name.to_lowercase() {
                let upper = format!("&{}", name.to_uppercase());
                if html::unescape(&upper) == upper {
                    map.insert(upper, value.to_uppercase());
                }
            }
        }
        map
    })
}

/// `ftfy.fixes.unescape_html`: entities of the form `&#?[0-9A-Za-z]{1,24};` only.
pub(super) fn unescape_html(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").unwrap());
    re.replace_all(text, |c: &Captures| {
        let m = &c[0];
        if let Some(v) = ftfy_entities().get(m) {
            v.clone()
        } else if m.starts_with("&#") {
            let un = html::unescape(m);
            if un.contains(';') {
                m.to_string()
            } else {
                un.into_owned()
            }
        } else {
            m.to_string()
        }
    })
}

/// `ftfy.fixes.fix_c1_controls`: U+0080..U+009F read as windows-1252 bytes.
pub(super) fn fix_c1_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)) {
        return Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| match c {
            '\u{80}'..='\u{9f}' => encoding::sloppy_1252_char(c as u8),
            c => c,
        })
        .collect::<String>()
        .into()
}

fn fix_latin_ligatures(text: &str) -> Cow<'_, str> {
    map_chars(text, |c| {
        Some(match c {
            'Ĳ' => "IJ",
            'ĳ' => "ij",
            'ŉ' => "ʼn",
            'Ǳ' => "DZ",
            'ǲ' => "Dz",
            'ǳ' => "dz",
            'Ǆ' => "DŽ",
            'ǅ' => "Dž",
            'ǆ' => "dž",
            'Ǉ' => "LJ",
            'ǈ' => "Lj",
            'ǉ' => "lj",
            'Ǌ' => "NJ",
            'ǋ' => "Nj",
            'ǌ' => "nj",
            'ﬀ' => "ff",
            'ﬁ' => "fi",
            'ﬂ' => "fl",
            'ﬃ' => "ffi",
            'ﬄ' => "ffl",
            'ﬅ' => "ſt",
            'ﬆ' => "st",
            _ => return None,
        })
    })
}

fn fix_character_width(text: &str) -> Cow<'_, str> {
    map_chars(text, |c| {
        if c != '\u{3000}' && !('\u{ff01}'..='\u{ffef}').contains(&c) {
            return None;
        }
        WIDTH_MAP
            .binary_search_by_key(&c, |&(k, _)| k)
            .ok()
            .map(|i| WIDTH_MAP[i].1)
    })
}

fn uncurl_quotes(text: &str) -> Cow<'_, str> {
    map_chars(text, |c| match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => Some("'"),
        '\u{201c}'..='\u{201f}' => Some("\""),
        _ => None,
    })
}

fn fix_line_breaks(text: &str) -> Cow<'_, str> {
    if !text.contains(['\r', '\u{2028}', '\u{2029}', '\u{85}']) {
        return Cow::Borrowed(text);
    }
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
        .into()
}

fn remove_terminal_escapes(text: &str) -> Cow<'_, str> {
    if !text.contains('\x1b') {
        return Cow::Borrowed(text);
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"\x1b\[((?:\d|;)*)([a-zA-Z])").unwrap());
    re.replace_all(text, "")
}

fn is_removed_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}'
        | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

fn remove_control_chars(text: &str) -> Cow<'_, str> {
    if !text.contains(is_removed_control) {
        return Cow::Borrowed(text);
    }
    text.chars()
        .filter(|&c| !is_removed_control(c))
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_table_matches_ftfy() {
        assert_eq!(
            ftfy_entities().len(),
            super::super::tables::FTFY_HTML_ENTITY_COUNT
        );
    }

    #[test]
    fn documented_examples() {
        // From ftfy's docstrings.
        assert_eq!(fix_text("âœ” No problems"), "✔ No problems");
        assert_eq!(fix_text("&macr;\\_(ã\u{83}\u{84})_/&macr;"), "¯\\_(ツ)_/¯");
        assert_eq!(
            fix_text("Broken text&hellip; it&#x2019;s ﬂubberiﬁc!"),
            "Broken text… it's flubberific!"
        );
        assert_eq!(fix_text("ＬＯＵＤ　ＮＯＩＳＥＳ"), "LOUD NOISES");
        assert_eq!(fix_text("sÃ³"), "só");
        assert_eq!(fix_text("voilÃ le travail"), "voilà le travail");
        assert_eq!(fix_text("a < b &amp; c"), "a < b &amp; c");
        assert_eq!(fix_text("“quoted” it’s"), "\"quoted\" it's");
    }
}
