#!/usr/bin/env python3
"""Reference fixtures for clipcu's tokenizer: open_clip's own tokenizer on a corpus of texts.

Writes tests/fixtures/tokenizer/corpus.jsonl. The first line is metadata; then one JSON object a
text:
    text   the input
    ids    open_clip.tokenize(text) (context length 77) without its zero padding
    clean  the cleaned text the tokenizer splits (`_clean_lower`)
    ftfy   ftfy.fix_text(text), only where it differs from the text
    full   the untruncated SimpleTokenizer.encode(text), only where it does not fit in 77

The corpus: hand-written edge cases (HTML entities, mojibake, odd whitespace, contractions,
scripts, emoji, special tokens, ...) and texts mixed from pieces by a seeded random generator.
Run with the virtual environment described in tools/README.md:

    /tmp/torchenv/bin/python tools/make_tokenizer_fixtures.py
"""

import json
import os
import random
import sys
import unicodedata

import ftfy
import ftfy.bad_codecs  # noqa: F401  (registers the sloppy codecs)
import open_clip
from open_clip import tokenizer as oct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tokenizer", "corpus.jsonl")
CTX = 77

HAND = [
    # empty, blank, special tokens
    "", " ", "\t\n ", "<start_of_text>", "<end_of_text>", "<START_OF_TEXT> hello <End_Of_Text>",
    "a<start_of_text>b<end_of_text>c", "<ſtart_of_text>", "<start_of_text", "start_of_text",
    # contractions
    "IT'S", "it's", "don't", "DON'T", "I'M here", "we'LL see", "you'Re", "they've", "he'd", "'s", "''s",
    "rock'n'roll", "it’s", "don’t stop", "'ſ", "O'Reilly's", "the 90's", "'twas", "y'all'd've",
    # HTML entities
    "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&#39;quoted&#39;", "&amp;amp;", "&amp;amp;amp;", "&quot;hi&quot;",
    "a&nbsp;b", "caf&eacute;", "CAF&EACUTE;", "&AMP;", "&Eacute", "&copy 2020", "&#x1F600;", "&#128512;",
    "&#0;", "&#59;", "&hellip;", "a < b &amp; c", "<b>bold</b> &amp; more", "x &amp;\n<tag> &amp;\nz &amp;",
    "&ampx", "&notit;", "&#xD800;", "&#X41;&#x42;", "&#65&#66", "&nosuchentity;", "&frac12; cup",
    "&FRAC12;", "&lt;&lt;&gt;&gt;", "Tom &amp; Jerry", "AT&amp;T", "AT&T", "R&D", "&;", "&#;", "&#x;",
    # mojibake
    "cafÃ©", "CafÃ© au lait", "naÃ¯ve", "FranÃ§ois", "Ã¼ber", "sÃ³", "voilÃ le travail", "Ã  la carte",
    "â€œquotedâ€\x9d", "itâ€™s", "donâ€™t", "ðŸ˜€ smile", "cafÃƒÂ©", "РџСЂРёРІРµС‚", "caf√©", "caf├⌐",
    "cafÃ?", "\x93hello\x94", "\x80 euro", "Ã©tÃ© and naïve", "âœ” No problems", "&macr;\\_(ã\x83\x84)_/&macr;",
    "Ã¡rbol", "MÃ¼nchen", "Ã\xa0 bientÃ´t", "Ã¢â‚¬Å“", "ÐŸÑ€Ð¸Ð²ÐµÑ‚", "Î•Î»Î»Î·Î½Î¹ÎºÎ¬", "Ø§Ù„Ø¹Ø±Ø¨ÙŠØ©",
    "à¤¹à¤¿à¤¨à¥à¤¦à¥€", "ã‚«ã‚¿ã‚«ãƒŠ", "Ã", "Â", "Â£100", "5Â°C", "Â© 2020", "Ã—", "Ã…ngstrÃ¶m",
    "ÃƒÆ’Ã‚Â©", "the cafÃ© is nice, isnâ€™t it?", "Ã©\nÃ©\n<Ã©>\nÃ©",
    # CESU-8 and Java's C0 80 (ftfy's utf-8-variants), a C0 before a final newline
    "í\xa0½í¸\x80 emoji", "Ã©í\xa0½í¸\x80", "cafÃ©À\x80ok", "Ã©À\nnext line", "Ã©À\n",
    "ÃƒÂ¢Ã¢â€šÂ¬Ã…â€œ", "Ã¢â‚¬Å\x93", "ÃÂ", "Ã Ã", "a Ã© b Ã", "Â Â Â",
    # letters newer than the regex crate's Unicode tables (U+0558 is from Unicode 17), one made by ftfy
    "x\u0558y", "Ý\x96ĸŞŅÕ\x98æśį",
    # whitespace
    "a\tb", "a\nb", "a\r\nb", "a\rb", "a\u00a0b", "a\u2028b", "a\u2029b", "a\u3000b", "a\u200bb",
    "a\ufeffb", "a\u200db", "a\x0bb", "a\x0cb", "a\x1cb", "a\x1fb", "a\x85b", "a\u2009b", "  lead", "trail  ",
    "a \t \n b", "\u00a0\u00a0", "\u200b", "a\u180eb", "a\u2060b", "a\u206ab",
    # numbers
    "12345", "3.14159", "1,000,000", "٣٤٥", "१२३", "①②③", "½", "Ⅻ", "x²", "10³", "0x1F", "2nd 3rd 21st",
    "$19.99", "50%", "-273.15°C", "1e-10", "𝟙𝟚𝟛",
    # punctuation
    "!!!???", "...", "—", "---", "(((hello)))", "@#$%^&*", "http://example.com/a?b=c&d=e", "«guillemets»",
    "¿Qué?", "¡Hola!", "a/b\\c", "~~~", "•", "“”‘’„‚", "‹›", "__init__", "#hashtag @user", ":-) ;-) :D",
    # letters
    "café", "cafe\u0301", "Ångström", "A\u030angstro\u0308m", "İstanbul", "ΣΊΣΥΦΟΣ", "ΌΣΟΣ Σ", "Straße", "STRASSE",
    "ﬁnancial ﬂow", "Ｆｕｌｌｗｉｄｔｈ", "ｶﾀｶﾅ", "ŉ", "Ĳssel", "ǅ", "xͅy", "ᾳ", "α\u0345", "Ǆ", "ſ",
    "K", "Å", "ℌ", "ﬀ", "ǈ", "\u1e9e", "ﬅ",
    # scripts
    "中文字符测试", "日本語のテキスト", "한국어 텍스트", "Привет, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم",
    "שלום עולם", "नमस्ते दुनिया", "क़ ख़", "สวัสดีชาวโลก", "வணக்கம்", "გამარჯობა", "Բարեւ", "ሰላም",
    "Tiếng Việt có dấu", "Ελληνικά και English", "mixed 中文 and English", "ไทย123abc",
    # emoji
    "👨‍👩‍👧‍👦", "👍🏽", "🏳️‍🌈", "🇫🇷🇯🇵", "❤️", "1️⃣", "🐶🐱🐭", "I ❤ NY", "☀️ sunny", "🤷‍♀️",
    # terminal escapes, controls
    "\x1b[31mred\x1b[0m text", "\x00null", "bell\x07", "del\x7f", "\x1b[1;32mgreen", "soft\u00adhyphen",
    # U+FFFD, private use, odd
    "\ufffd", "\uf8ff apple", "\ue000", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    # caption-like
    "A photo of a cat.", "a photo of a dog", "A PHOTO OF A TABBY CAT SITTING ON A WINDOWSILL",
    "Stock Photo - Happy family at the beach", "DSC_0042.JPG", "IMG 2019-05-12 14:33:02",
    "[ 2021 ] New York City | Times Square at Night (4K)",
]

SCRIPTS = {
    "latin": ["photo", "dog", "running", "beautiful", "sunset", "mountain", "street", "coffee", "table", "Wiki"],
    "accent": ["café", "naïve", "résumé", "Zürich", "São", "Paulo", "Ångström", "crème", "brûlée", "piñata",
               "façade", "Øresund", "Łódź", "Dvořák", "İzmir", "Ærø", "Þórr", "señor"],
    "cjk": ["東京", "北京", "猫", "写真", "コーヒー", "ラーメン", "카페", "사진", "山", "海"],
    "cyr": ["Москва", "кошка", "фото", "улица", "Київ", "Београд", "ЖЁЛТЫЙ"],
    "greek": ["Αθήνα", "γάτα", "φωτογραφία", "ΘΆΛΑΣΣΑ", "ΣΟΦΟΣ"],
    "arab": ["القاهرة", "قطة", "صورة", "شارع"],
    "hindi": ["दिल्ली", "बिल्ली", "तस्वीर", "क़िला"],
    "thai": ["กรุงเทพ", "แมว", "ภาพถ่าย"],
    "hebrew": ["ירושלים", "חתול"],
    "emoji": ["😀", "🐶", "🌅", "👍🏻", "👩‍💻", "🏳️‍⚧️", "❤️‍🔥", "🇩🇪", "✨", "🎉", "☕"],
    "num": ["2019", "4K", "100%", "3.5", "1,200", "#1", "No. 7", "½", "²", "٣"],
    "punct": ["!", "?!", "...", " - ", " | ", "(", ")", "\"", "'", "’", "“", "”", ":", ";", "—", "&", "/", "*"],
    "entity": ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&nbsp;", "&amp;amp;", "&eacute;", "&#8217;",
               "&hellip;", "&copy;", "&mdash;", "&#x2019;", "&AMP;", "&apos;"],
    "space": [" ", "  ", "\t", "\n", "\u00a0", "\u200b", "\u3000", "\r\n", "\u2009", "\ufeff"],
    "contraction": ["it's", "IT'S", "don't", "Don’t", "I'm", "we'll", "they're", "you've", "he'd", "she'S"],
}
TEMPLATES = [
    "a photo of a {}.", "A picture of the {} in {}", "{} and {} at {}", "close-up of {} with {}",
    "{}: {} ({})", "{} {} {}", "the {} is {}", "{}, {} - {}", "My {} loves {}!", "{} | {} | {}",
]
ENCODINGS = ["latin-1", "sloppy-windows-1252", "sloppy-windows-1251", "sloppy-windows-1250",
             "sloppy-windows-1253", "sloppy-windows-1254", "sloppy-windows-1257", "iso-8859-2",
             "macroman", "cp437"]


def mojibake(rng, s):
    enc = rng.choice(ENCODINGS[:3]) if rng.random() < 0.7 else rng.choice(ENCODINGS)
    out = s.encode("utf-8").decode(enc, errors="replace")
    r = rng.random()
    if r < 0.15:
        out = out.encode("utf-8").decode(rng.choice(ENCODINGS[:2]), errors="replace")  # twice
    elif r < 0.3:
        out = out.replace("\u00a0", " ")
    elif r < 0.4 and len(out) > 2:
        i = rng.randrange(len(out))
        out = out[:i] + rng.choice(["?", "\ufffd"]) + out[i + 1:]
    return out


def piece(rng):
    kind = rng.choice(list(SCRIPTS))
    return rng.choice(SCRIPTS[kind])


def random_text(rng):
    r = rng.random()
    if r < 0.45:
        t = rng.choice(TEMPLATES)
        s = t.format(*[piece(rng) for _ in range(t.count("{}"))])
    elif r < 0.7:
        s = "".join(piece(rng) + rng.choice(["", " ", " ", " ", ", "]) for _ in range(rng.randint(1, 8)))
    elif r < 0.8:
        # long: several captions, often past 77 tokens
        s = " ".join(rng.choice(TEMPLATES).format(*[piece(rng) for _ in range(3)]) for _ in range(rng.randint(6, 20)))
    elif r < 0.9:
        letters = "abcdefghijklmnopqrstuvwxyzéüßøñ"
        s = " ".join("".join(rng.choice(letters) for _ in range(rng.randint(1, 14))) for _ in range(rng.randint(1, 6)))
    else:
        s = "".join(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x24f), rng.randint(0x370, 0x52f),
                                    rng.randint(0x2000, 0x206f), rng.randint(0x3000, 0x30ff), rng.randint(0xff00, 0xffef),
                                    rng.randint(0x1f300, 0x1f6ff), rng.randint(0x80, 0x9f)]))
                    for _ in range(rng.randint(1, 20)))
    m = rng.random()
    if m < 0.15:
        s = mojibake(rng, s)
    elif m < 0.22:
        parts = s.split(" ")
        i = rng.randrange(len(parts))
        parts[i] = mojibake(rng, parts[i])
        s = " ".join(parts)
    c = rng.random()
    if c < 0.1:
        s = s.upper()
    elif c < 0.15:
        s = s.title()
    elif c < 0.2:
        s = unicodedata.normalize("NFD", s)
    return s


def main():
    rng = random.Random(20240611)
    texts = list(HAND)
    seen = set(texts)
    while len(texts) < 1600:
        s = random_text(rng)
        if s not in seen:
            seen.add(s)
            texts.append(s)
    tok = oct._tokenizer
    rows = [json.dumps({"meta": {"open_clip": open_clip.__version__, "ftfy": ftfy.__version__,
                                 "python": sys.version.split()[0], "unicode": unicodedata.unidata_version,
                                 "context_length": CTX, "count": len(texts)}}, ensure_ascii=False)]
    ids77 = oct.tokenize(texts, context_length=CTX).tolist()
    for text, row in zip(texts, ids77):
        text.encode("utf-8")  # no lone surrogates: Rust strings cannot hold them
        while row and row[-1] == 0:
            row.pop()
        rec = {"text": text, "ids": row, "clean": oct._clean_lower(text)}
        fixed = ftfy.fix_text(text)
        if fixed != text:
            rec["ftfy"] = fixed
        full = tok.encode(text)
        if len(full) + 2 > CTX:
            rec["full"] = full
        rows.append(json.dumps(rec, ensure_ascii=False))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    print(f"wrote {len(texts)} texts to {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
