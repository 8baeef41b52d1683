//! Data: images and captions in, ready for the towers.
//!
//! - [`synthetic`]: the embedded synthetic captioned-image dataset (coloured shapes with
//!   attributes, generated on the fly, deterministic by seed, with held-out colour–shape
//!   combinations for zero-shot evaluation).

pub mod synthetic;
