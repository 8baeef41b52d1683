//! Captions: sentence patterns with slots, filled from a sample's attributes.
//!
//! Slots: `{np}` the noun phrase ("two small striped red stars", "a yellow circle": count word or
//! article, then size, texture and colour adjectives, each sometimes left out, then the shape
//! noun, always there); `{be}` "is"/"are"; `{pos}` " in the top left" (single objects only, and
//! not always) or nothing; `{bg}` the background colour.

use super::{Attributes, Position, Rng, Texture, COUNT_WORDS};

/// The sentence patterns. Indices in [`HELD_OUT`] never caption a training sample.
const TEMPLATES: &[&str] = &[
    "a photo of {np}{pos} on a {bg} background.",
    "{np}{pos}.",
    "there {be} {np}{pos}.",
    "an image showing {np}{pos}.",
    "a picture of {np} against a {bg} background.",
    "a rendering of {np}{pos}.",
    "a drawing of {np} on a {bg} backdrop.",
    "{np} {be} drawn{pos} on a {bg} background.",
    "this image contains {np}{pos}.",
    "a simple graphic of {np}{pos}.",
    "a {bg} background with {np}{pos}.",
    "you can see {np}{pos} here.",
    "a synthetic image of {np}.",
    "look at {np}{pos}!",
    "{np}, {bg} background.",
    "a clean illustration of {np}{pos}.",
];

/// Sentence patterns kept out of [`super::Split::Train`]: one of each kind (leading "an image
/// showing", a plain statement, a "synthetic image" phrase, a comma-separated background).
const HELD_OUT: &[usize] = &[3, 8, 12, 14];

/// Every caption sentence pattern, with its slots (see the module docs of `caption`).
pub fn caption_templates() -> &'static [&'static str] {
    TEMPLATES
}

/// Indices into [`caption_templates`] that never caption a training sample.
pub fn held_out_templates() -> &'static [usize] {
    HELD_OUT
}

/// Indices into [`caption_templates`] that training samples use.
pub fn training_templates() -> Vec<usize> {
    (0..TEMPLATES.len())
        .filter(|i| !HELD_OUT.contains(i))
        .collect()
}

/// "an orange", "a star".
pub(crate) fn with_article(word: &str) -> String {
    let an = word.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {word}", if an { "an" } else { "a" })
}

fn position_phrase(p: Position, rng: &mut Rng) -> &'static str {
    const PHRASES: [[&str; 2]; 9] = [
        ["in the top left", "in the upper left corner"],
        ["at the top", "near the top"],
        ["in the top right", "in the upper right corner"],
        ["on the left", "on the left side"],
        ["in the center", "in the middle"],
        ["on the right", "on the right side"],
        ["in the bottom left", "in the lower left corner"],
        ["at the bottom", "near the bottom"],
        ["in the bottom right", "in the lower right corner"],
    ];
    PHRASES[p.index()][rng.below(2)]
}

fn noun_phrase(a: &Attributes, rng: &mut Rng) -> String {
    let mut words: Vec<&str> = Vec::with_capacity(5);
    if rng.chance(0.7) {
        words.push(a.size.name());
    }
    let say_texture = if a.texture == Texture::Solid {
        0.25
    } else {
        0.7
    };
    if rng.chance(say_texture) {
        words.push(a.texture.name());
    }
    if rng.chance(0.92) {
        words.push(a.colour.name());
    }
    words.push(a.shape.noun(a.count));
    let rest = words.join(" ");
    if a.count == 1 && rng.chance(0.88) {
        with_article(&rest)
    } else {
        format!("{} {rest}", COUNT_WORDS[a.count as usize - 1])
    }
}

/// The caption of `a` in pattern `template`, the optional parts drawn from `seed`.
pub(super) fn caption(a: &Attributes, template: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let np = noun_phrase(a, &mut rng);
    let pos = match a.position {
        Some(p) if rng.chance(0.8) => format!(" {}", position_phrase(p, &mut rng)),
        _ => String::new(),
    };
    let be = if a.count == 1 { "is" } else { "are" };
    TEMPLATES[template]
        .replace("{np}", &np)
        .replace("{pos}", &pos)
        .replace("{be}", be)
        .replace("{bg}", a.background.name())
}
