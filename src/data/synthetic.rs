//! The embedded synthetic captioned-image dataset: coloured shapes with attributes, rendered on
//! the fly, each with a natural-language caption. It is what `clipcu`'s main job trains a small
//! CLIP on, and evaluates zero-shot on, without any download.
//!
//! A sample is a pure function of `(seed, split, index)`: a counter-based generator (splitmix64
//! of the three) draws its attributes, its caption and the jitter of its rendering, so any index
//! can be made in any order or in parallel and "the position in the data" is just an index.
//!
//! ```
//! use clipcu::data::synthetic::{Split, Synthetic, SyntheticConfig, Task};
//! let data = Synthetic::new(SyntheticConfig { seed: 7, image_size: 64 });
//! let s = data.sample(Split::Train, 12345);
//! assert_eq!(s.image.dimensions(), (64, 64));
//! assert!(s.caption.contains(s.attrs.shape.noun(s.attrs.count)));
//! // the zero-shot shape task: classes × prompt templates
//! let label = s.attrs.label(Task::Shape);
//! let prompts = Task::Shape.prompts(label);
//! assert!(prompts[0].contains(s.attrs.shape.name()));
//! // never in training: a fixed (by seed) 20% of the colour–shape pairs
//! assert!(data.train_combos().contains(&(s.attrs.shape, s.attrs.colour)));
//! let h = data.sample(Split::HeldOut, 0);
//! assert!(data.is_held_out(h.attrs.shape, h.attrs.colour));
//! ```
//!
//! Attributes ([`Attributes`]): [`Shape`] (10), [`Colour`] (10), [`Size`] (3), count (1–4 objects
//! of one shape and colour), [`Position`] (3×3 grid, for a single object), [`Background`] (4),
//! [`Texture`] (4). Captions come from [`caption_templates`] (16 sentence patterns, some held out
//! of training: [`held_out_templates`]). The design is written up in `docs/synthetic-data.md`.

mod caption;
mod render;

pub use caption::{caption_templates, held_out_templates, training_templates};
pub use render::Placement;

use image::RgbImage;
use rayon::prelude::*;

// ---- the counter-based generator -------------------------------------------------------------

/// splitmix64's finaliser: a bijection of u64 with good avalanche, the hash every random choice
/// here is built on.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small splitmix64 stream: the random source of one sample (or one part of it).
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(key: u64) -> Rng {
        Rng(splitmix64(key))
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.0)
    }
    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    /// Uniform in 0..n (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
    pub(crate) fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }
    pub(crate) fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    pub(crate) fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            xs.swap(i, self.below(i + 1));
        }
    }
}

// ---- attributes ------------------------------------------------------------------------------

macro_rules! attribute {
    ($(#[$m:meta])* $name:ident, $names_fn:ident, $names:ident,
     [$($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)?]) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $var),+ }
        const $names: &[&str] = &[$($s),+];
        impl $name {
            /// Every value, in class-index order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            /// The word used in captions and prompts.
            pub fn name(self) -> &'static str { $names[self as usize] }
            /// The class index (position in `ALL` and in the names list).
            pub fn index(self) -> usize { self as usize }
        }
        #[doc = concat!("The names of every [`", stringify!($name), "`], in class-index order.")]
        pub fn $names_fn() -> &'static [&'static str] { $names }
    };
}

attribute!(
    /// What is drawn. All ten stay distinguishable at 32 px for medium and large sizes.
    Shape, shape_names, SHAPE_NAMES,
    [Circle = "circle", Square = "square", Triangle = "triangle", Star = "star", Cross = "cross",
     Arrow = "arrow", Diamond = "diamond", Heart = "heart", Ring = "ring",
     Crescent = "crescent"]
);
attribute!(
    /// The object's colour (see [`Colour::rgb`]).
    Colour, colour_names, COLOUR_NAMES,
    [Red = "red", Orange = "orange", Yellow = "yellow", Green = "green", Cyan = "cyan",
     Blue = "blue", Purple = "purple", Pink = "pink", Brown = "brown", White = "white"]
);
attribute!(
    /// Radius as a fraction of the image side: 0.18, 0.21, 0.29. `Large` only for one object.
    Size, size_names, SIZE_NAMES,
    [Small = "small", Medium = "medium", Large = "large"]
);
attribute!(
    /// Where a single object sits: a 3×3 grid (row-major from the top left).
    Position, position_names, POSITION_NAMES,
    [TopLeft = "top left", Top = "top", TopRight = "top right", Left = "left",
     Center = "center", Right = "right", BottomLeft = "bottom left", Bottom = "bottom",
     BottomRight = "bottom right"]
);
attribute!(
    /// The background colour (with a mild random gradient and brightness jitter).
    Background, background_names, BACKGROUND_NAMES,
    [Black = "black", Gray = "gray", White = "white", Navy = "navy"]
);
attribute!(
    /// The fill: solid, or stripes, dots or checks of a tint (the colour 45% of the way to the
    /// background) on the colour. The silhouette stays whole, so a ring is never confused with
    /// an outlined circle.
    Texture, texture_names, TEXTURE_NAMES,
    [Solid = "solid", Striped = "striped", Dotted = "dotted", Checkered = "checkered"]
);

const PLURALS: &[&str] = &[
    "circles",
    "squares",
    "triangles",
    "stars",
    "crosses",
    "arrows",
    "diamonds",
    "hearts",
    "rings",
    "crescents",
];
const COUNT_WORDS: &[&str] = &["one", "two", "three", "four"];

/// The most objects in one image.
pub const MAX_COUNT: u8 = 4;

/// The words for one to [`MAX_COUNT`] objects: class `k` of [`Task::Count`] is `k + 1` objects.
pub fn count_words() -> &'static [&'static str] {
    COUNT_WORDS
}

impl Shape {
    /// The noun for `count` objects: "star" or "stars".
    pub fn noun(self, count: u8) -> &'static str {
        if count == 1 {
            self.name()
        } else {
            PLURALS[self as usize]
        }
    }
    /// Signed distance (negative inside) from `(x, y)` to the shape's outline, in the shape's own
    /// frame: unit radius (every shape lies inside the unit disc), y pointing down.
    pub fn sdf(self, x: f32, y: f32) -> f32 {
        render::Geometry::of(self).sdf(x, y)
    }
}

impl Colour {
    /// The nominal sRGB colour (rendering jitters it by up to ±12 per channel).
    pub fn rgb(self) -> [u8; 3] {
        [
            [220, 40, 40],
            [245, 140, 20],
            [240, 220, 40],
            [40, 170, 60],
            [40, 200, 220],
            [40, 80, 220],
            [140, 60, 190],
            [245, 130, 190],
            [130, 80, 40],
            [240, 240, 240],
        ][self as usize]
    }
}

impl Background {
    /// The nominal sRGB colour (rendering adds a gradient and jitter of up to about ±20).
    pub fn rgb(self) -> [u8; 3] {
        [[15, 15, 15], [128, 128, 128], [240, 240, 240], [20, 28, 70]][self as usize]
    }
    /// Whether an object of colour `c` may be drawn on this background: their nominal colours
    /// must be at least 100 apart (Euclidean, 0–255 per channel).
    pub fn contrasts_with(self, c: Colour) -> bool {
        let (a, b) = (self.rgb(), c.rgb());
        let d2: i32 = (0..3).map(|i| (a[i] as i32 - b[i] as i32).pow(2)).sum();
        d2 >= 100 * 100
    }
}

impl Size {
    /// The object's radius as a fraction of the image side (before a ±7% jitter).
    pub fn radius_fraction(self) -> f32 {
        [0.18, 0.21, 0.29][self as usize]
    }
}

/// Everything a caption can say about an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// 1..=[`MAX_COUNT`] objects, all of the same shape, colour, size and texture.
    pub count: u8,
    /// `Some` exactly when `count == 1`; several objects are scattered without overlap.
    pub position: Option<Position>,
    pub background: Background,
    pub texture: Texture,
}

/// The zero-shot classification tasks: each attribute with a class per value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    Shape,
    Colour,
    Size,
    Count,
    Texture,
    Background,
}

impl Task {
    pub const ALL: &'static [Task] = &[
        Task::Shape,
        Task::Colour,
        Task::Size,
        Task::Count,
        Task::Texture,
        Task::Background,
    ];
    /// The class names, in label order.
    pub fn class_names(self) -> &'static [&'static str] {
        match self {
            Task::Shape => SHAPE_NAMES,
            Task::Colour => COLOUR_NAMES,
            Task::Size => SIZE_NAMES,
            Task::Count => COUNT_WORDS,
            Task::Texture => TEXTURE_NAMES,
            Task::Background => BACKGROUND_NAMES,
        }
    }
    /// The prompt templates for prompt ensembling: `{}` is the class name, `{a}` the class name
    /// with its article ("an orange"), `{s}` the plural "s" of count classes ("" for one), `{p}`
    /// a shape's plural noun ("crosses"). Half the synthetic images hold several objects and are
    /// captioned with the plural noun, which the text tower learns as a token of its own, so every
    /// shape template comes in both numbers.
    pub fn prompt_templates(self) -> &'static [&'static str] {
        match self {
            Task::Shape => &[
                "a photo of {a}.",
                "{a} on a plain background.",
                "an image showing {a}.",
                "a drawing of {a}.",
                "there is {a} in the picture.",
                "a photo of some {p}.",
                "{p} on a plain background.",
                "an image showing some {p}.",
                "a drawing of some {p}.",
                "there are {p} in the picture.",
            ],
            Task::Colour => &[
                "a photo of {a} shape.",
                "{a} object on a plain background.",
                "an image showing something {}.",
                "a drawing of {a} shape.",
            ],
            Task::Size => &[
                "a photo of {a} shape.",
                "{a} object.",
                "an image showing {a} shape.",
            ],
            Task::Count => &[
                "a photo of {} shape{s}.",
                "{} object{s}.",
                "an image showing {} shape{s}.",
            ],
            Task::Texture => &[
                "a photo of {a} shape.",
                "{a} object.",
                "an image showing {a} shape.",
            ],
            Task::Background => &[
                "a photo of a shape on a {} background.",
                "something on a {} background.",
                "a {} background.",
            ],
        }
    }
    /// The prompts of class `class`: every template of [`Task::prompt_templates`] filled in.
    pub fn prompts(self, class: usize) -> Vec<String> {
        let name = self.class_names()[class];
        let plural = if self == Task::Count && class > 0 {
            "s"
        } else {
            ""
        };
        let plural_noun = match self {
            Task::Shape => Shape::ALL[class].noun(2),
            _ => name,
        };
        self.prompt_templates()
            .iter()
            .map(|t| {
                t.replace("{p}", plural_noun)
                    .replace("{a}", &caption::with_article(name))
                    .replace("{s}", plural)
                    .replace("{}", name)
            })
            .collect()
    }
}

impl Attributes {
    /// The class index of this sample in `task` (the index into [`Task::class_names`]).
    pub fn label(&self, task: Task) -> usize {
        match task {
            Task::Shape => self.shape.index(),
            Task::Colour => self.colour.index(),
            Task::Size => self.size.index(),
            Task::Count => self.count as usize - 1,
            Task::Texture => self.texture.index(),
            Task::Background => self.background.index(),
        }
    }
}

// ---- the dataset -----------------------------------------------------------------------------

/// The dataset's whole configuration: a sample is a pure function of these and (split, index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticConfig {
    /// Picks the held-out combinations and every sample's randomness.
    pub seed: u64,
    /// Side of the square images in pixels (at least 16; 32–64 is the intended range).
    pub image_size: u32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 0,
            image_size: 64,
        }
    }
}

/// Which part of the data: training pairs, or the held-out colour–shape combinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Only colour–shape combinations outside [`Synthetic::held_out_combos`], and only caption
    /// templates outside [`held_out_templates`].
    Train,
    /// Only the held-out colour–shape combinations, with any caption template.
    HeldOut,
}

impl Split {
    fn tag(self) -> u64 {
        match self {
            Split::Train => 0x7452_4149_4E00_0001,
            Split::HeldOut => 0x4845_4C44_4F55_5402,
        }
    }
}

/// One (image, caption) pair with what it shows.
#[derive(Clone, Debug)]
pub struct Sample {
    pub image: RgbImage,
    pub caption: String,
    pub attrs: Attributes,
    /// Index into [`caption_templates`] of the caption's sentence pattern.
    pub template: usize,
    /// Where each object was drawn (pixels), one per object.
    pub objects: Vec<Placement>,
}

/// What one sample is made of: `sample` = `render(attrs, render_seed)` +
/// `caption(attrs, template, caption_seed)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipe {
    pub attrs: Attributes,
    /// Index into [`caption_templates`].
    pub template: usize,
    pub caption_seed: u64,
    pub render_seed: u64,
}

/// The synthetic dataset. Cheap to build; `sample` takes `&self` and is thread-safe.
#[derive(Clone, Debug)]
pub struct Synthetic {
    cfg: SyntheticConfig,
    held_out: [[bool; 10]; 10],
    train_combos: Vec<(Shape, Colour)>,
    held_out_combos: Vec<(Shape, Colour)>,
    train_templates: Vec<usize>,
    backgrounds: Vec<Vec<Background>>,
}

impl Synthetic {
    /// The smallest image side the scenes are drawn at.
    pub const MIN_IMAGE_SIZE: u32 = 16;

    /// [`Synthetic::new`], or an error naming `image_size` when it is below
    /// [`Synthetic::MIN_IMAGE_SIZE`].
    pub fn try_new(cfg: SyntheticConfig) -> crate::Result<Synthetic> {
        if cfg.image_size < Self::MIN_IMAGE_SIZE {
            return Err(crate::Error::Msg(format!(
                "synthetic data: image_size {} is below the minimum of {} (the config's vision_cfg.image_size)",
                cfg.image_size,
                Self::MIN_IMAGE_SIZE
            )));
        }
        Ok(Self::new(cfg))
    }

    /// # Panics
    /// When `cfg.image_size < 16` ([`Synthetic::try_new`] returns the error instead).
    pub fn new(cfg: SyntheticConfig) -> Synthetic {
        assert!(
            cfg.image_size >= Self::MIN_IMAGE_SIZE,
            "synthetic data: image_size {} is below the minimum of 16",
            cfg.image_size
        );
        // Held-out design: shuffle shapes and colours by the seed and hold out the pairs
        // (σ(i), τ(i)) and (σ(i), τ(i+1)): every shape loses exactly two colours and every colour
        // exactly two shapes, so all of them still appear in training with eight partners.
        let mut rng = Rng::new(splitmix64(cfg.seed) ^ 0x4845_4C44_4F55_5400);
        let mut shapes = Shape::ALL.to_vec();
        let mut colours = Colour::ALL.to_vec();
        rng.shuffle(&mut shapes);
        rng.shuffle(&mut colours);
        let n = colours.len();
        let mut held_out = [[false; 10]; 10];
        for (i, &s) in shapes.iter().enumerate() {
            for j in 0..2 {
                held_out[s.index()][colours[(i + j) % n].index()] = true;
            }
        }
        let mut train_combos = Vec::new();
        let mut held_out_combos = Vec::new();
        for &s in Shape::ALL {
            for &c in Colour::ALL {
                if held_out[s.index()][c.index()] {
                    held_out_combos.push((s, c));
                } else {
                    train_combos.push((s, c));
                }
            }
        }
        let backgrounds = Colour::ALL
            .iter()
            .map(|&c| {
                Background::ALL
                    .iter()
                    .copied()
                    .filter(|b| b.contrasts_with(c))
                    .collect()
            })
            .collect();
        Synthetic {
            cfg,
            held_out,
            train_combos,
            held_out_combos,
            train_templates: training_templates(),
            backgrounds,
        }
    }

    pub fn config(&self) -> &SyntheticConfig {
        &self.cfg
    }

    /// The colour–shape pairs that never appear in [`Split::Train`] (20 of 100), shape-major.
    pub fn held_out_combos(&self) -> Vec<(Shape, Colour)> {
        self.held_out_combos.clone()
    }

    /// The colour–shape pairs of [`Split::Train`] (80 of 100), shape-major.
    pub fn train_combos(&self) -> Vec<(Shape, Colour)> {
        self.train_combos.clone()
    }

    pub fn is_held_out(&self, shape: Shape, colour: Colour) -> bool {
        self.held_out[shape.index()][colour.index()]
    }

    /// The backgrounds an object of colour `c` is drawn on (those it contrasts with).
    pub fn backgrounds_for(&self, c: Colour) -> &[Background] {
        &self.backgrounds[c.index()]
    }

    /// The random key of one sample: splitmix64 of (seed, split, index).
    fn key(&self, split: Split, index: u64) -> u64 {
        splitmix64(splitmix64(splitmix64(self.cfg.seed) ^ split.tag()) ^ index)
    }

    /// Everything but shape and colour, drawn from `rng` in a fixed order: count, size (never
    /// large for several objects), position (single objects only), a background the colour
    /// contrasts with, texture.
    fn draw_scene(&self, rng: &mut Rng, shape: Shape, colour: Colour) -> Attributes {
        let count = if rng.chance(0.5) {
            1
        } else {
            2 + rng.below(MAX_COUNT as usize - 1) as u8
        };
        let size = if count == 1 {
            rng.pick(Size::ALL)
        } else {
            rng.pick(&[Size::Small, Size::Medium])
        };
        let position = (count == 1).then(|| rng.pick(Position::ALL));
        let background = rng.pick(self.backgrounds_for(colour));
        let texture = rng.pick(Texture::ALL);
        Attributes {
            shape,
            colour,
            size,
            count,
            position,
            background,
            texture,
        }
    }

    /// A caption pattern: a training one for `Split::Train`, any for `Split::HeldOut`.
    fn draw_template(&self, rng: &mut Rng, split: Split) -> usize {
        match split {
            Split::Train => rng.pick(&self.train_templates),
            Split::HeldOut => rng.below(caption_templates().len()),
        }
    }

    /// What sample `index` of `split` is made of, without rendering it.
    pub fn recipe(&self, split: Split, index: u64) -> Recipe {
        let mut rng = Rng::new(self.key(split, index));
        let combos = match split {
            Split::Train => &self.train_combos,
            Split::HeldOut => &self.held_out_combos,
        };
        let (shape, colour) = rng.pick(combos);
        let attrs = self.draw_scene(&mut rng, shape, colour);
        let template = self.draw_template(&mut rng, split);
        Recipe {
            attrs,
            template,
            caption_seed: rng.next_u64(),
            render_seed: rng.next_u64(),
        }
    }

    /// What sample `index` of `split` is made of when the stream comes in *shape-contrast
    /// groups* of `group` consecutive indices (`group` ≤ 1: [`Synthetic::recipe`]).
    ///
    /// The samples of one group share one scene — colour, size, count, position, background and
    /// texture — and differ in shape: distinct shapes, as many as the split pairs with that
    /// colour (8 in training), then repeating. Captions (pattern and wording) and rendering
    /// jitter stay per sample. In a random batch, colour, count and size already tell most pairs
    /// apart, so a contrastive loss gives little pressure to see shape; inside a group shape is
    /// the only difference, so every group is a set of hard negatives for it. Still a pure
    /// function of (seed, split, index, group).
    pub fn grouped_recipe(&self, split: Split, index: u64, group: usize) -> Recipe {
        if group <= 1 {
            return self.recipe(split, index);
        }
        let g = index / group as u64;
        let slot = (index % group as u64) as usize;
        // The group's key: the sample key of the group's number, re-hashed with a tag so that it
        // never coincides with a sample's own key.
        let mut scene = Rng::new(self.key(split, g) ^ 0x4752_4F55_5053_0001);
        let colour = scene.pick(Colour::ALL);
        let mut shapes: Vec<Shape> = Shape::ALL
            .iter()
            .copied()
            .filter(|&s| self.is_held_out(s, colour) == (split == Split::HeldOut))
            .collect();
        scene.shuffle(&mut shapes);
        let shape = shapes[slot % shapes.len()];
        let attrs = self.draw_scene(&mut scene, shape, colour);
        let mut own = Rng::new(self.key(split, index));
        let template = self.draw_template(&mut own, split);
        Recipe {
            attrs,
            template,
            caption_seed: own.next_u64(),
            render_seed: own.next_u64(),
        }
    }

    /// Sample `index` of `split`: a pure function of (seed, split, index).
    pub fn sample(&self, split: Split, index: u64) -> Sample {
        self.make(self.recipe(split, index))
    }

    /// Samples `start..start + n` of the shape-contrast-grouped stream of `split`
    /// ([`Synthetic::grouped_recipe`]), rendered in parallel, in index order.
    pub fn grouped_batch(&self, split: Split, start: u64, n: usize, group: usize) -> Vec<Sample> {
        (start..start + n as u64)
            .into_par_iter()
            .map(|i| self.make(self.grouped_recipe(split, i, group)))
            .collect()
    }

    /// Renders and captions a recipe.
    pub fn make(&self, r: Recipe) -> Sample {
        let (image, objects) = self.render(&r.attrs, r.render_seed);
        Sample {
            image,
            caption: self.caption(&r.attrs, r.template, r.caption_seed),
            attrs: r.attrs,
            template: r.template,
            objects,
        }
    }

    /// Samples `start..start + n` of `split`, rendered in parallel (rayon), in index order.
    pub fn batch(&self, split: Split, start: u64, n: usize) -> Vec<Sample> {
        self.grouped_batch(split, start, n, 1)
    }

    /// The samples at `indices` of `split`, rendered in parallel (rayon), in the given order.
    pub fn batch_of(&self, split: Split, indices: &[u64]) -> Vec<Sample> {
        indices.par_iter().map(|&i| self.sample(split, i)).collect()
    }

    /// Draws `attrs` at this dataset's image size; `seed` picks the jitter (layout, rotation,
    /// colour noise, texture phase). Any attributes can be drawn, held out or not.
    pub fn render(&self, attrs: &Attributes, seed: u64) -> (RgbImage, Vec<Placement>) {
        render::render(attrs, self.cfg.image_size, seed)
    }

    /// The caption of `attrs` in sentence pattern `template`; `seed` picks which optional
    /// attributes are said and how.
    pub fn caption(&self, attrs: &Attributes, template: usize, seed: u64) -> String {
        caption::caption(attrs, template, seed)
    }
}
