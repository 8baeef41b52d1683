//! Kernels of `kernels/layout.cu` and the one-axis reductions of `kernels/reduce.cu` against the
//! CPU reference (DESIGN §7): concat along every axis (its gradient: contiguous slices), narrow's
//! gradient (the slice padded with zeros), sum and mean over one axis and their gradient (the
//! broadcast back), and the [A, B, C] → [B, A, C] transpose through conv2d's layout. All are
//! copies or in-order sums, so they must match the CPU bit for bit. Fresh random data at sizes
//! that are not multiples of the 256-thread blocks; outputs NaN-poisoned on Emu, so an element no
//! thread writes fails. Emu in normal and reverse lane order; Cuda when a GPU is present.

mod common;
use common::{graph_grads, on_each_kernel_device as on_each};

use clipcu::ops::layout::concat;
use clipcu::ops::reduce::{mean, sum};
use clipcu::{Device, Tensor};

fn exact(what: &str, tag: &str, seed: u64, out: &Tensor, reference: &Tensor) {
    assert_eq!(out.shape(), reference.shape(), "{what} on {tag}");
    assert_eq!(
        out.to_vec(),
        reference.to_vec(),
        "{what} on {tag}, seed={seed}"
    );
}

#[test]
fn concat_and_its_gradient_match_cpu() {
    on_each(|device, tag| {
        // (outer shape, sizes along the axis) for each axis of a rank-3 tensor
        for (a, b, c) in [(1, 1, 1), (2, 7, 50), (3, 77, 5), (1, 197, 7)] {
            for axis in 0..3 {
                let seed = common::fresh_seed();
                let mut parts = Vec::new();
                for (i, len) in [1usize, 7, 3].into_iter().enumerate() {
                    let mut s = [a, b, c];
                    s[axis] = len;
                    parts.push(Tensor::randn(s.to_vec(), 1.0, seed + i as u64));
                }
                let refs: Vec<&Tensor> = parts.iter().collect();
                let want = concat(&refs, axis as isize).unwrap();
                let dy = Tensor::randn(want.shape().to_vec(), 1.0, seed + 9);
                let f = |g: &clipcu::Graph, v: &[clipcu::Var]| {
                    g.concat(&v.iter().collect::<Vec<_>>(), axis as isize)
                };
                let (out, grads) = graph_grads(device, &parts, &dy, f);
                let (_, want_grads) = graph_grads(Device::Cpu, &parts, &dy, f);
                let what = format!("concat_fwd_f32 [{a},{b},{c}] axis {axis}");
                exact(&what, tag, seed, &out, &want);
                for (i, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
                    exact(
                        &format!("narrow_fwd_f32 part {i} of {what}"),
                        tag,
                        seed,
                        g,
                        w,
                    );
                }
            }
        }
    });
}

#[test]
fn narrow_gradient_matches_cpu() {
    on_each(|device, tag| {
        for (shape, axis, start, len) in [
            (vec![1], 0, 0, 1),
            (vec![77, 50], 0, 3, 7),
            (vec![2, 197, 7], 1, 0, 1),
            (vec![3, 5, 1000], 2, 999, 1),
            (vec![7, 50], 1, 10, 40),
        ] {
            let seed = common::fresh_seed();
            let x = Tensor::randn(shape.clone(), 1.0, seed);
            let mut oshape = shape.clone();
            oshape[axis] = len;
            let dy = Tensor::randn(oshape, 1.0, seed + 1);
            let f =
                |g: &clipcu::Graph, v: &[clipcu::Var]| g.narrow(&v[0], axis as isize, start, len);
            let (_, dx) = graph_grads(device, std::slice::from_ref(&x), &dy, f);
            let (_, want) = graph_grads(Device::Cpu, std::slice::from_ref(&x), &dy, f);
            exact(
                &format!("narrow_bwd_f32 {shape:?} axis {axis} {start}+{len}"),
                tag,
                seed,
                &dx[0],
                &want[0],
            );
        }
    });
}

#[test]
fn axis_sums_and_means_match_cpu() {
    on_each(|device, tag| {
        for shape in [
            vec![1],
            vec![7, 50],
            vec![3, 77, 5],
            vec![1000, 3],
            vec![2, 197, 1, 7],
        ] {
            for axis in 0..shape.len() {
                for is_mean in [false, true] {
                    let seed = common::fresh_seed();
                    let x = Tensor::randn(shape.clone(), 1.0, seed);
                    let f = |g: &clipcu::Graph, v: &[clipcu::Var]| {
                        if is_mean {
                            g.mean(&v[0], Some(axis as isize))
                        } else {
                            g.sum(&v[0], Some(axis as isize))
                        }
                    };
                    let want = if is_mean {
                        mean(&x, Some(axis as isize))
                    } else {
                        sum(&x, Some(axis as isize))
                    }
                    .unwrap();
                    let dy = Tensor::randn(want.shape().to_vec(), 1.0, seed + 1);
                    let (out, dx) = graph_grads(device, std::slice::from_ref(&x), &dy, f);
                    let (_, want_dx) = graph_grads(Device::Cpu, std::slice::from_ref(&x), &dy, f);
                    let what = format!("{shape:?} axis {axis} mean={is_mean}");
                    exact(&format!("sum_axis_f32 {what}"), tag, seed, &out, &want);
                    exact(
                        &format!("expand_axis_f32 {what}"),
                        tag,
                        seed,
                        &dx[0],
                        &want_dx[0],
                    );
                }
            }
        }
    });
}
