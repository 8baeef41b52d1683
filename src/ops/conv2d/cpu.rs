//! CPU conv2d: im2col + one GEMM per group of images, col2im for the input gradient.
//!
//! Images go in groups of `Geom::group()` (a function of the shape only). A group's columns are
//! col [K, G·P] (K = C·kh·kw rows, one block of P = OH·OW columns per image), so one GEMM
//! `W[O, K] · col` computes the whole group even when feature maps are small. Groups run in
//! parallel; each output element is produced by exactly one GEMM, so the thread count changes no
//! number. The weight gradient is a reduction over the batch: groups are dealt round-robin to a
//! fixed number of slots (`DW_SLOTS`, not the thread count), each slot accumulates its groups in
//! order, and the slots are then added in slot order.

use crate::ops::matmul::cpu::sgemm;
use rayon::prelude::*;

/// Aim for about this many GEMM columns per group of images (small maps get several images).
const GROUP_COLS: usize = 1024;
/// Number of partial weight gradients summed at the end (fixed, for reproducible sums).
const DW_SLOTS: usize = 8;

/// The shape of one convolution, all derived sizes included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geom {
    /// Rows of the column matrix: C·kh·kw.
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output positions per image: OH·OW.
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }
    /// Elements of one input image: C·H·W.
    fn in_img(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Elements of one output image: O·OH·OW.
    fn out_img(&self) -> usize {
        self.o * self.p()
    }
    /// A 1×1, stride-1, unpadded conv: the image [C, H·W] is already its own column matrix.
    pub fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Images per group.
    pub fn group(&self) -> usize {
        (GROUP_COLS / self.p().max(1)).clamp(1, self.n.max(1))
    }
}

/// Threads for each GEMM when `tasks` of them run side by side.
fn gemm_threads(tasks: usize) -> usize {
    (rayon::current_num_threads() / tasks.max(1)).max(1)
}

/// The output positions `o` (of `len_out`) whose input index `o·s + k − pad` lies in `0..len_in`,
/// as a range `lo..hi`.
pub(crate) fn valid_range(
    k: usize,
    pad: usize,
    s: usize,
    len_in: usize,
    len_out: usize,
) -> (usize, usize) {
    let lo = if k >= pad { 0 } else { (pad - k).div_ceil(s) };
    let hi = if len_in + pad > k {
        (len_in + pad - k - 1) / s + 1
    } else {
        0
    };
    let lo = lo.min(len_out);
    (lo, hi.min(len_out).max(lo))
}

/// im2col of `gi` images `x_g` [gi, C, H, W] into `col` [K, gi·P] (every element written).
pub(crate) fn im2col(x_g: &[f32], gi: usize, g: &Geom, col: &mut [f32]) {
    let (p, ld, hw) = (g.p(), gi * g.p(), g.h * g.w);
    let (s, pad, ow) = (g.stride, g.pad, g.ow);
    col.par_chunks_mut(g.kh * g.kw * ld)
        .enumerate()
        .for_each(|(c, rows)| {
            for j in 0..gi {
                let plane = &x_g[(j * g.c + c) * hw..][..hw];
                for ki in 0..g.kh {
                    let (ylo, yhi) = valid_range(ki, pad, s, g.h, g.oh);
                    for kj in 0..g.kw {
                        let (xlo, xhi) = valid_range(kj, pad, s, g.w, ow);
                        let row = &mut rows[(ki * g.kw + kj) * ld + j * p..][..p];
                        row[..ylo * ow].fill(0.0);
                        row[yhi * ow..].fill(0.0);
                        for oy in ylo..yhi {
                            let src = &plane[(oy * s + ki - pad) * g.w..][..g.w];
                            let dst = &mut row[oy * ow..][..ow];
                            dst[..xlo].fill(0.0);
                            dst[xhi..].fill(0.0);
                            if xlo == xhi {
                                continue;
                            }
                            let x0 = xlo * s + kj - pad;
                            if s == 1 {
                                dst[xlo..xhi].copy_from_slice(&src[x0..x0 + xhi - xlo]);
                            } else {
                                for (t, d) in dst[xlo..xhi].iter_mut().enumerate() {
                                    *d = src[x0 + t * s];
                                }
                            }
                        }
                    }
                }
            }
        });
}

/// col2im: add the columns `dcol` [K, gi·P] back into the zeroed images `dx_g` [gi, C, H, W].
/// One task per (image, channel) plane; within a plane the order is fixed.
pub(crate) fn col2im(dcol: &[f32], gi: usize, g: &Geom, dx_g: &mut [f32]) {
    let (p, ld, hw) = (g.p(), gi * g.p(), g.h * g.w);
    let (s, pad, ow) = (g.stride, g.pad, g.ow);
    dx_g.par_chunks_mut(hw).enumerate().for_each(|(q, plane)| {
        let (j, c) = (q / g.c, q % g.c);
        for ki in 0..g.kh {
            let (ylo, yhi) = valid_range(ki, pad, s, g.h, g.oh);
            for kj in 0..g.kw {
                let (xlo, xhi) = valid_range(kj, pad, s, g.w, ow);
                if xlo == xhi {
                    continue;
                }
                let row = &dcol[((c * g.kh + ki) * g.kw + kj) * ld + j * p..][..p];
                let x0 = xlo * s + kj - pad;
                for oy in ylo..yhi {
                    let dst = &mut plane[(oy * s + ki - pad) * g.w..][..g.w];
                    let src = &row[oy * ow + xlo..oy * ow + xhi];
                    if s == 1 {
                        for (d, v) in dst[x0..x0 + src.len()].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (t, v) in src.iter().enumerate() {
                            dst[x0 + t * s] += v;
                        }
                    }
                }
            }
        }
    });
}

/// The column matrix of a group: the images themselves for a pointwise conv of one image,
/// otherwise im2col into `buf`.
fn columns<'a>(x_g: &'a [f32], gi: usize, g: &Geom, buf: &'a mut Vec<f32>) -> &'a [f32] {
    if g.pointwise() && gi == 1 {
        return x_g;
    }
    buf.resize(g.k() * gi * g.p(), 0.0);
    im2col(x_g, gi, g, buf);
    buf
}

/// [gi, O, P] → [O, gi·P] (the layout of a group's GEMM output), into `buf`.
fn gather_rows<'a>(t: &[f32], gi: usize, o: usize, p: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
    buf.resize(o * gi * p, 0.0);
    buf.par_chunks_mut(gi * p).enumerate().for_each(|(r, row)| {
        for (j, dst) in row.chunks_mut(p).enumerate() {
            dst.copy_from_slice(&t[(j * o + r) * p..][..p]);
        }
    });
    buf
}

/// [O, gi·P] → [gi, O, P].
fn scatter_rows(t: &[f32], gi: usize, o: usize, p: usize, out: &mut [f32]) {
    out.par_chunks_mut(p).enumerate().for_each(|(q, dst)| {
        let (j, r) = (q / o, q % o);
        dst.copy_from_slice(&t[r * gi * p + j * p..][..p]);
    });
}

/// Forward: x [N, C, H, W], w [O, K] → out [N, O, OH, OW].
pub fn forward(x: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let gs = g.group();
    let mut out = vec![0f32; g.n * g.out_img()];
    if out.is_empty() {
        return out;
    }
    let threads = gemm_threads(g.n.div_ceil(gs));
    out.par_chunks_mut(gs * g.out_img())
        .zip(x.par_chunks(gs * g.in_img()))
        .for_each(|(out_g, x_g)| {
            let gi = x_g.len() / g.in_img();
            let mut buf = Vec::new();
            let col = columns(x_g, gi, g, &mut buf);
            if gi == 1 {
                sgemm(false, false, o, p, k, w, col, out_g, false, threads);
            } else {
                let mut tmp = vec![0f32; o * gi * p];
                sgemm(false, false, o, gi * p, k, w, col, &mut tmp, false, threads);
                scatter_rows(&tmp, gi, o, p, out_g);
            }
        });
    out
}

/// Input gradient: `dcol = Wᵀ · dOut` per group, then col2im (a pointwise single image writes
/// `Wᵀ · dOut` straight into dx).
pub fn backward_x(gout: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let gs = g.group();
    let mut dx = vec![0f32; g.n * g.in_img()];
    if dx.is_empty() {
        return dx;
    }
    let threads = gemm_threads(g.n.div_ceil(gs));
    dx.par_chunks_mut(gs * g.in_img())
        .enumerate()
        .for_each(|(grp, dx_g)| {
            let gi = dx_g.len() / g.in_img();
            let go_g = &gout[grp * gs * g.out_img()..][..gi * g.out_img()];
            let mut gbuf = Vec::new();
            let dy = if gi == 1 {
                go_g
            } else {
                gather_rows(go_g, gi, o, p, &mut gbuf)
            };
            if g.pointwise() && gi == 1 {
                sgemm(true, false, k, p, o, w, dy, dx_g, false, threads);
                return;
            }
            let mut dcol = vec![0f32; k * gi * p];
            sgemm(true, false, k, gi * p, o, w, dy, &mut dcol, false, threads);
            col2im(&dcol, gi, g, dx_g);
        });
    dx
}

/// Weight gradient `dW = Σ_groups dOut_g · col_gᵀ` [O, K], summed in a fixed order (module doc).
pub fn backward_w(x: &[f32], gout: &[f32], g: &Geom) -> Vec<f32> {
    let (k, p, o) = (g.k(), g.p(), g.o);
    let gs = g.group();
    let n_groups = g.n.div_ceil(gs);
    let slots = n_groups.min(DW_SLOTS);
    if slots == 0 || o * k == 0 {
        return vec![0f32; o * k];
    }
    let threads = gemm_threads(slots);
    let partials: Vec<Vec<f32>> = (0..slots)
        .into_par_iter()
        .map(|slot| {
            let mut acc = vec![0f32; o * k];
            let (mut xbuf, mut gbuf) = (Vec::new(), Vec::new());
            for (t, grp) in (slot..n_groups).step_by(slots).enumerate() {
                let i0 = grp * gs;
                let gi = gs.min(g.n - i0);
                let x_g = &x[i0 * g.in_img()..][..gi * g.in_img()];
                let go_g = &gout[i0 * g.out_img()..][..gi * g.out_img()];
                let col = columns(x_g, gi, g, &mut xbuf);
                let dy = if gi == 1 {
                    go_g
                } else {
                    gather_rows(go_g, gi, o, p, &mut gbuf)
                };
                sgemm(false, true, o, k, gi * p, dy, col, &mut acc, t > 0, threads);
            }
            acc
        })
        .collect();
    let mut it = partials.into_iter();
    let mut dw = it.next().expect("at least one slot");
    for part in it {
        for (a, b) in dw.iter_mut().zip(&part) {
            *a += b;
        }
    }
    dw
}
