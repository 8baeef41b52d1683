//! Rendering: each shape is a signed distance function (SDF) in its own unit frame; a pixel's
//! coverage is `clamp(0.5 − distance in pixels, 0, 1)`, which anti-aliases edges with one SDF
//! evaluation per pixel (a box filter across the edge) instead of supersampling. Textures are
//! distance functions too (stripes, dots, checks), anti-aliased the same way.

use super::{Attributes, Position, Rng, Shape, Size, Texture};
use image::RgbImage;
use std::f32::consts::{FRAC_1_SQRT_2, PI, TAU};
use std::sync::OnceLock;

/// Where one object was drawn, in pixels of the output image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    /// Centre, x to the right and y down, pixel centres at `k + 0.5`.
    pub cx: f32,
    pub cy: f32,
    /// The shape's unit radius in pixels: the object lies inside this disc.
    pub radius: f32,
    /// Rotation in radians (clockwise on screen).
    pub angle: f32,
}

// ---- geometry --------------------------------------------------------------------------------

/// A polygon edge from vertex `(x, y)` to the previous vertex, `(x + ex, y + ey)`, with
/// `1 / |e|²` precomputed, and the previous vertex's `y` as stored: `y + ey` rounds, and can
/// miss it by an ulp, so the crossing test must not rebuild it from the difference.
#[derive(Clone, Copy)]
pub(crate) struct Edge {
    x: f32,
    y: f32,
    ex: f32,
    ey: f32,
    prev_y: f32,
    inv_len2: f32,
}

fn edges(v: Vec<[f32; 2]>) -> Vec<Edge> {
    (0..v.len())
        .map(|i| {
            let j = (i + v.len() - 1) % v.len();
            let (ex, ey) = (v[j][0] - v[i][0], v[j][1] - v[i][1]);
            Edge {
                x: v[i][0],
                y: v[i][1],
                ex,
                ey,
                prev_y: v[j][1],
                inv_len2: 1.0 / (ex * ex + ey * ey),
            }
        })
        .collect()
}

struct Polygons {
    triangle: Vec<Edge>,
    square: Vec<Edge>,
    arrow: Vec<Edge>,
    star: Vec<Edge>,
    cross: Vec<Edge>,
    diamond: Vec<Edge>,
    heart_body: Vec<Edge>,
}

/// Heart: a square standing on its corner (half-diagonal `H`, centre `(0, HEART_C)`) with a disc
/// on each upper edge; sized so the whole heart lies inside the unit disc.
const HEART_H: f32 = 0.74;
const HEART_C: f32 = 0.1036 * HEART_H;

fn regular(n: usize, radius: f32, phase: f32) -> Vec<Edge> {
    edges(
        (0..n)
            .map(|k| {
                let a = phase + TAU * k as f32 / n as f32;
                [radius * a.cos(), radius * a.sin()]
            })
            .collect(),
    )
}

fn polygons() -> &'static Polygons {
    static P: OnceLock<Polygons> = OnceLock::new();
    P.get_or_init(|| {
        let up = -PI / 2.0;
        let star = (0..10)
            .map(|k| {
                let r = if k % 2 == 0 { 0.98 } else { 0.44 };
                let a = up + PI * k as f32 / 5.0;
                [r * a.cos(), r * a.sin()]
            })
            .collect();
        let (w, l) = (0.32, 0.92);
        let cross = vec![
            [-w, -l],
            [w, -l],
            [w, -w],
            [l, -w],
            [l, w],
            [w, w],
            [w, l],
            [-w, l],
            [-w, w],
            [-l, w],
            [-l, -w],
            [-w, -w],
        ];
        let (h, c) = (HEART_H, HEART_C);
        Polygons {
            triangle: regular(3, 0.98, up),
            square: regular(4, 0.98, up + PI / 4.0),
            // A long shaft under a short head, so that the head alone never reads as a triangle.
            arrow: edges(vec![
                [0.0, -0.96],
                [0.56, -0.4],
                [0.2, -0.4],
                [0.2, 0.94],
                [-0.2, 0.94],
                [-0.2, -0.4],
                [-0.56, -0.4],
            ]),
            star: edges(star),
            cross: edges(cross),
            diamond: edges(vec![[0.0, -0.98], [0.62, 0.0], [0.0, 0.98], [-0.62, 0.0]]),
            heart_body: edges(vec![[0.0, c - h], [h, c], [0.0, c + h], [-h, c]]),
        }
    })
}

/// Exact signed distance to a simple polygon (Inigo Quilez's `sdPolygon`): the nearest edge,
/// and a crossing count for the sign.
///
/// The count is a half-open test on each edge's two vertex `y`s, so both edges that meet at a
/// vertex must compare against the very same number, the stored one (`prev_y`, not `y + ey`).
/// Otherwise a point whose `y` is one of the two values or lies between them (they differ by an
/// ulp or so) is counted across one edge but not the other, and comes out inside all along that
/// horizontal line, however far from the polygon.
fn sd_polygon(edges: &[Edge], x: f32, y: f32) -> f32 {
    let mut d = f32::INFINITY;
    let mut inside = false;
    for e in edges {
        let (wx, wy) = (x - e.x, y - e.y);
        let t = ((wx * e.ex + wy * e.ey) * e.inv_len2).clamp(0.0, 1.0);
        let (bx, by) = (wx - e.ex * t, wy - e.ey * t);
        d = d.min(bx * bx + by * by);
        let (c1, c2, c3) = (y >= e.y, y < e.prev_y, e.ex * wy > e.ey * wx);
        if (c1 && c2 && c3) || (!c1 && !c2 && !c3) {
            inside = !inside;
        }
    }
    if inside {
        -d.sqrt()
    } else {
        d.sqrt()
    }
}

fn sd_circle(x: f32, y: f32, cx: f32, cy: f32, r: f32) -> f32 {
    ((x - cx).powi(2) + (y - cy).powi(2)).sqrt() - r
}

/// A shape's distance function, resolved once per object.
#[derive(Clone, Copy)]
pub(crate) enum Geometry {
    Circle,
    Ring,
    Crescent,
    Heart(&'static [Edge]),
    Polygon(&'static [Edge]),
}

impl Geometry {
    pub(crate) fn of(shape: Shape) -> Geometry {
        let p = polygons();
        match shape {
            Shape::Circle => Geometry::Circle,
            Shape::Ring => Geometry::Ring,
            Shape::Crescent => Geometry::Crescent,
            Shape::Heart => Geometry::Heart(&p.heart_body),
            Shape::Square => Geometry::Polygon(&p.square),
            Shape::Triangle => Geometry::Polygon(&p.triangle),
            Shape::Star => Geometry::Polygon(&p.star),
            Shape::Cross => Geometry::Polygon(&p.cross),
            Shape::Arrow => Geometry::Polygon(&p.arrow),
            Shape::Diamond => Geometry::Polygon(&p.diamond),
        }
    }

    #[inline]
    pub(crate) fn sdf(self, x: f32, y: f32) -> f32 {
        match self {
            Geometry::Circle => sd_circle(x, y, 0.0, 0.0, 0.9),
            Geometry::Ring => (sd_circle(x, y, 0.0, 0.0, 0.76)).abs() - 0.22,
            Geometry::Crescent => {
                sd_circle(x, y, 0.0, 0.0, 0.95).max(-sd_circle(x, y, 0.45, -0.12, 0.8))
            }
            Geometry::Heart(body) => {
                let (h, c) = (HEART_H, HEART_C);
                let r = h * FRAC_1_SQRT_2;
                let lobes = sd_circle(x.abs(), y, h / 2.0, c - h / 2.0, r);
                sd_polygon(body, x, y).min(lobes)
            }
            Geometry::Polygon(v) => sd_polygon(v, x, y),
        }
    }
}

impl Shape {
    /// The rotation jitter, ± radians: free for shapes that stay themselves when turned, small
    /// where a turn would change the name (a square at 45° is a diamond).
    fn max_rotation(self) -> f32 {
        match self {
            Shape::Square | Shape::Diamond | Shape::Cross | Shape::Heart => 15f32.to_radians(),
            _ => PI,
        }
    }
}

// ---- layout ----------------------------------------------------------------------------------

/// Object centres and radii: one object at its grid position, or several scattered without
/// overlap (rejection sampling, with a 2×2 grid as the fallback).
fn layout(a: &Attributes, s: f32, rng: &mut Rng) -> Vec<(f32, f32, f32)> {
    let size = if a.count > 1 && a.size == Size::Large {
        Size::Medium
    } else {
        a.size
    };
    let radii: Vec<f32> = (0..a.count)
        .map(|_| size.radius_fraction() * s * rng.range(0.93, 1.07))
        .collect();
    let margin = 1.0;
    let clamp = |v: f32, r: f32| v.clamp(r + margin, s - r - margin);
    if a.count == 1 {
        let p = a.position.unwrap_or(Position::Center).index();
        let (col, row) = ((p % 3) as f32, (p / 3) as f32);
        let r = radii[0];
        let cx = clamp((0.25 + 0.25 * col + rng.range(-0.04, 0.04)) * s, r);
        let cy = clamp((0.25 + 0.25 * row + rng.range(-0.04, 0.04)) * s, r);
        return vec![(cx, cy, r)];
    }
    let gap = 0.03 * s;
    for _attempt in 0..64 {
        let mut placed: Vec<(f32, f32, f32)> = Vec::with_capacity(radii.len());
        for &r in &radii {
            for _try in 0..16 {
                let cx = rng.range(r + margin, s - r - margin);
                let cy = rng.range(r + margin, s - r - margin);
                let free = placed
                    .iter()
                    .all(|&(x, y, q)| (x - cx).hypot(y - cy) >= r + q + gap);
                if free {
                    placed.push((cx, cy, r));
                    break;
                }
            }
        }
        if placed.len() == radii.len() {
            return placed;
        }
    }
    let mut cells = [0usize, 1, 2, 3];
    rng.shuffle(&mut cells);
    radii
        .iter()
        .zip(cells)
        .map(|(&r, k)| {
            let (col, row) = ((k % 2) as f32, (k / 2) as f32);
            (
                clamp((0.25 + 0.5 * col) * s, r),
                clamp((0.25 + 0.5 * row) * s, r),
                r,
            )
        })
        .collect()
}

// ---- textures --------------------------------------------------------------------------------

/// How much of the tint a point of the object shows, from its offset `(u, v)` in pixels in the
/// object's (rotated) frame.
enum Fill {
    Solid,
    /// Stripes of period `p` across direction `(dx, dy)`, phase `o` (in periods).
    Stripes {
        dx: f32,
        dy: f32,
        p: f32,
        o: f32,
    },
    /// Dots of radius `r` on a square lattice of pitch `p`, offset `(ox, oy)` (in pitches).
    Dots {
        p: f32,
        r: f32,
        ox: f32,
        oy: f32,
    },
    /// A checkerboard of pitch `p` in the object's frame, offset `(ox, oy)` (in pitches).
    Checks {
        p: f32,
        ox: f32,
        oy: f32,
    },
}

impl Fill {
    fn new(t: Texture, radius: f32, rng: &mut Rng) -> Fill {
        match t {
            Texture::Solid => Fill::Solid,
            Texture::Striped => {
                let a = rng.range(0.0, PI);
                Fill::Stripes {
                    dx: a.cos(),
                    dy: a.sin(),
                    p: (0.5 * radius).max(3.0),
                    o: rng.unit(),
                }
            }
            Texture::Dotted => {
                let p = (0.55 * radius).max(3.5);
                Fill::Dots {
                    p,
                    r: 0.28 * p,
                    ox: rng.unit(),
                    oy: rng.unit(),
                }
            }
            Texture::Checkered => Fill::Checks {
                p: (0.45 * radius).max(3.0),
                ox: rng.unit(),
                oy: rng.unit(),
            },
        }
    }

    #[inline]
    fn tint(&self, u: f32, v: f32) -> f32 {
        match *self {
            Fill::Solid => 0.0,
            Fill::Stripes { dx, dy, p, o } => band((u * dx + v * dy) / p + o, p),
            Fill::Dots { p, r, ox, oy } => {
                let (fx, fy) = (u / p + ox + 0.5, v / p + oy + 0.5);
                let (gx, gy) = (fract(fx) - 0.5, fract(fy) - 0.5);
                (0.5 - ((gx * gx + gy * gy).sqrt() * p - r)).clamp(0.0, 1.0)
            }
            Fill::Checks { p, ox, oy } => {
                let (a, b) = (band(u / p + ox, p), band(v / p + oy, p));
                a + b - 2.0 * a * b // a smooth xor
            }
        }
    }
}

/// Coverage of the central half of each period by a band, for phase `f` (in periods) and period
/// `p` pixels: 1 inside, 0 outside, anti-aliased across the edges.
#[inline]
fn band(f: f32, p: f32) -> f32 {
    let d = ((fract(f) - 0.5).abs() - 0.25) * p;
    (0.5 - d).clamp(0.0, 1.0)
}

/// `x − floor(x)` without a libm call (the baseline x86-64 target has no `roundss`).
#[inline]
fn fract(x: f32) -> f32 {
    let t = x as i32 as f32;
    let fl = if t > x { t - 1.0 } else { t };
    x - fl
}

// ---- the image -------------------------------------------------------------------------------

/// Round half up and saturate to 0..=255 (`as` saturates; no libm `roundf` call).
#[inline]
fn to_u8(v: f32) -> u8 {
    (v + 0.5) as u8
}

fn jitter(c: [u8; 3], amount: f32, rng: &mut Rng) -> [f32; 3] {
    c.map(|v| (v as f32 + rng.range(-amount, amount)).clamp(0.0, 255.0))
}

/// Draws `a` on a `size`×`size` image with the jitter drawn from `seed`.
pub(super) fn render(a: &Attributes, size: u32, seed: u64) -> (RgbImage, Vec<Placement>) {
    let mut rng = Rng::new(seed);
    let s = size as f32;

    // Background: jittered colour and brightness plus a mild linear gradient.
    let lift = rng.range(-8.0, 8.0);
    let bg = jitter(a.background.rgb(), 5.0, &mut rng).map(|v| v + lift);
    let (ga, gamp) = (rng.range(0.0, TAU), rng.range(0.0, 12.0));
    let (gx, gy) = (ga.cos() * gamp / s, ga.sin() * gamp / s);
    let mut raw = Vec::with_capacity((3 * size * size) as usize);
    for y in 0..size {
        let row = (y as f32 + 0.5 - s / 2.0) * gy;
        for x in 0..size {
            let g = (x as f32 + 0.5 - s / 2.0) * gx + row;
            raw.extend_from_slice(&bg.map(|v| to_u8(v + g)));
        }
    }
    let mut img = RgbImage::from_raw(size, size, raw).expect("buffer of size² pixels");

    // Object colour (all objects share it) and its tint, half-way to the background.
    let fg = jitter(a.colour.rgb(), 12.0, &mut rng);
    let tint: [f32; 3] = std::array::from_fn(|i| fg[i] + 0.45 * (bg[i] - fg[i]));

    let geo = Geometry::of(a.shape);
    let mut placements = Vec::with_capacity(a.count as usize);
    for (cx, cy, r) in layout(a, s, &mut rng) {
        let angle = rng.range(-1.0, 1.0) * a.shape.max_rotation();
        let fill = Fill::new(a.texture, r, &mut rng);
        placements.push(Placement {
            cx,
            cy,
            radius: r,
            angle,
        });
        let (cs, sn) = (angle.cos(), angle.sin());
        let reach = r + 1.0;
        let x0 = (cx - reach).floor().max(0.0) as u32;
        let y0 = (cy - reach).floor().max(0.0) as u32;
        let x1 = ((cx + reach).ceil() as u32).min(size);
        let y1 = ((cy + reach).ceil() as u32).min(size);
        for y in y0..y1 {
            let dy = y as f32 + 0.5 - cy;
            for x in x0..x1 {
                let dx = x as f32 + 0.5 - cx;
                if dx * dx + dy * dy > reach * reach {
                    continue;
                }
                // into the object's frame: rotate by −angle
                let (u, v) = (cs * dx + sn * dy, cs * dy - sn * dx);
                let sd = geo.sdf(u / r, v / r) * r;
                let cover = (0.5 - sd).clamp(0.0, 1.0);
                if cover == 0.0 {
                    continue;
                }
                let t = fill.tint(u, v);
                let px = img.get_pixel_mut(x, y);
                for i in 0..3 {
                    let c = fg[i] + t * (tint[i] - fg[i]);
                    let old = px.0[i] as f32;
                    px.0[i] = to_u8(old + cover * (c - old));
                }
            }
        }
    }
    (img, placements)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the horizontal line through each vertex, and the few floats either side of it, every
    /// polygon is positive well outside the unit disc, to the left and to the right. With the
    /// previous vertex rebuilt as `y + ey` the triangle, square, star and arrow all came out
    /// inside on some of these lines: the triangle's lower vertices are at y = 0.49 and
    /// 0.49000007, and (−4.6, 0.49000004) was 3.75 inside.
    #[test]
    fn polygons_are_outside_along_the_lines_through_their_vertices() {
        let p = polygons();
        let all: [(&str, &[Edge]); 7] = [
            ("triangle", &p.triangle),
            ("square", &p.square),
            ("arrow", &p.arrow),
            ("star", &p.star),
            ("cross", &p.cross),
            ("diamond", &p.diamond),
            ("heart body", &p.heart_body),
        ];
        assert!(sd_polygon(&p.triangle, -4.6, f32::from_bits(0x3efa_e149)) > 3.0);
        for (name, edges) in all {
            for e in edges {
                for vy in [e.y, e.prev_y] {
                    for k in -3i32..=3 {
                        let y = f32::from_bits(vy.to_bits().wrapping_add_signed(k));
                        for x in [-5.0f32, -1.5, 1.5, 5.0] {
                            let d = sd_polygon(edges, x, y);
                            assert!(d > 0.4, "{name}: sd({x}, {y}) = {d}");
                        }
                    }
                }
            }
        }
    }
}
