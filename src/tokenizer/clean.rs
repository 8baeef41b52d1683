//! CLIP's text cleaning, open_clip's default `clean="lower"`:
//! `whitespace_clean(basic_clean(text)).lower()` where `basic_clean` is `ftfy.fix_text`, then
//! `html.unescape` twice, then `strip`, and `whitespace_clean` joins Python's `str.split()` with
//! single spaces.

use super::{ftfy, html};

/// Python's `str.isspace` (what `str.split()` and `str.strip()` split on): Unicode White_Space
/// plus the ASCII separators U+001C..U+001F.
pub fn is_py_space(c: char) -> bool {
    matches!(c,
        '\t'..='\r' | '\u{1c}'..='\u{20}' | '\u{85}' | '\u{a0}' | '\u{1680}'
        | '\u{2000}'..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}')
}

/// Text that cleaning leaves as it is, up to whitespace and ASCII case: ASCII with no '&' (no
/// entities) and no control character ftfy would remove.
fn is_plain(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, b' '..=b'~' | b'\t' | b'\n' | b'\x0c' | b'\r') && b != b'&')
}

/// The cleaned, lower-cased text the tokenizer splits into words: ftfy's fixes, HTML entities
/// unescaped (twice), runs of whitespace made one space, no leading or trailing space, lower case.
pub fn clean(text: &str) -> String {
    if is_plain(text) {
        let mut out = String::with_capacity(text.len());
        for word in text.split_ascii_whitespace() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.extend(word.bytes().map(|b| b.to_ascii_lowercase() as char));
        }
        return out;
    }
    let fixed = ftfy::fix_text(text);
    let once = html::unescape(&fixed);
    let twice = html::unescape(&once);
    let mut out = String::with_capacity(twice.len());
    for word in twice.split(is_py_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn cleaning() {
        assert_eq!(clean("  A  Photo\tof\n a DOG  "), "a photo of a dog");
        assert_eq!(clean("Tom &amp;amp; Jerry"), "tom & jerry");
        assert_eq!(clean("cafÃ©\u{a0}au\u{1f}lait"), "café aulait");
        assert_eq!(clean("It’s"), "it's");
        assert_eq!(clean(""), "");
    }
}
