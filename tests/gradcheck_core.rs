//! Finite-difference gradient checks of every core op on fresh random inputs and odd sizes
//! (1, 7, 13, 50, 77), plus forward checks against independent naive references.
mod common;
use clipcu::ops::unary::UnaryKind;
use clipcu::{Graph, Tensor};
use common::*;

#[test]
fn matmul_all_transposes() {
    for &(m, k, n) in &[(1, 1, 1), (7, 13, 5), (13, 50, 7), (50, 7, 77)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let a = randn(&if ta { [k, m] } else { [m, k] });
                let b = randn(&if tb { [n, k] } else { [k, n] });
                gradcheck(
                    &format!("matmul {m}x{k}x{n} ta={ta} tb={tb}"),
                    &[a, b],
                    Check::default(),
                    |g, x| g.matmul(&x[0], &x[1], ta, tb),
                );
            }
        }
    }
}

#[test]
fn matmul_batched_and_shared_operands() {
    for ta in [false, true] {
        for tb in [false, true] {
            let (bt, m, k, n) = (3, 7, 13, 5);
            let a = randn(&if ta { [bt, k, m] } else { [bt, m, k] });
            let b = randn(&if tb { [bt, n, k] } else { [bt, k, n] });
            gradcheck(
                &format!("bmm ta={ta} tb={tb}"),
                &[a.clone(), b],
                Check::default(),
                |g, x| g.matmul(&x[0], &x[1], ta, tb),
            );
            // 2-D right operand shared over the batch (a Linear weight)
            let w = randn(&if tb { [n, k] } else { [k, n] });
            gradcheck(
                &format!("bmm shared b ta={ta} tb={tb}"),
                &[a, w],
                Check::default(),
                |g, x| g.matmul(&x[0], &x[1], ta, tb),
            );
            // 2-D left operand shared over the batch
            let a2 = randn(&if ta { [k, m] } else { [m, k] });
            let b2 = randn(&if tb { [2, 1, n, k] } else { [2, 1, k, n] });
            gradcheck(
                &format!("bmm shared a ta={ta} tb={tb}"),
                &[a2, b2],
                Check::default(),
                |g, x| g.matmul(&x[0], &x[1], ta, tb),
            );
        }
    }
}

#[test]
fn matmul_forward_matches_naive() {
    let (bt, m, k, n) = (2, 77, 50, 13);
    let a = randn(&[bt, m, k]);
    let b = randn(&[bt, k, n]);
    let c = clipcu::ops::matmul::matmul(&a, &b, false, false).unwrap();
    let (av, bv) = (a.to_vec(), b.to_vec());
    let mut naive = vec![0f32; bt * m * n];
    for z in 0..bt {
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|l| av[z * m * k + i * k + l] as f64 * bv[z * k * n + l * n + j] as f64)
                    .sum();
                naive[z * m * n + i * n + j] = s as f32;
            }
        }
    }
    let err = c.rel_err(&Tensor::from_vec(naive, [bt, m, n]).unwrap());
    assert!(err < 1e-5, "matmul vs naive: {err}");
}

#[test]
fn matmul_shape_errors_name_the_op() {
    let e =
        clipcu::ops::matmul::matmul(&randn(&[2, 3]), &randn(&[4, 5]), false, false).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("matmul") && msg.contains("[2, 3]") && msg.contains("[4, 5]"),
        "{msg}"
    );
    assert!(clipcu::ops::matmul::matmul(&randn(&[3]), &randn(&[3, 2]), false, false).is_err());
    assert!(
        clipcu::ops::matmul::matmul(&randn(&[2, 3, 4]), &randn(&[3, 4, 5]), false, false).is_err()
    );
}

#[test]
fn binary_ops_with_broadcasting() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[7, 13], &[7, 13]),
        (&[2, 7, 13], &[13]),
        (&[13], &[2, 7, 13]),
        (&[2, 7, 1], &[1, 1, 5]),
        (&[7, 1], &[1]),
        (&[1], &[1]),
        (&[3, 1, 5], &[3, 4, 1]),
    ];
    for (sa, sb) in cases {
        for name in ["add", "sub", "mul", "div"] {
            let a = randn(sa);
            let mut b = randn(sb);
            if name == "div" {
                // keep the divisor away from 0 so the finite difference is well-conditioned
                b = Tensor::from_vec(
                    b.to_vec()
                        .iter()
                        .map(|v| v.signum() * (1.0 + v.abs()))
                        .collect(),
                    sb.to_vec(),
                )
                .unwrap();
            }
            gradcheck(
                &format!("{name} {sa:?} {sb:?}"),
                &[a, b],
                Check::default(),
                |g, x| match name {
                    "add" => g.add(&x[0], &x[1]),
                    "sub" => g.sub(&x[0], &x[1]),
                    "mul" => g.mul(&x[0], &x[1]),
                    _ => g.div(&x[0], &x[1]),
                },
            );
        }
    }
    assert!(clipcu::ops::binary::add(&randn(&[2, 3]), &randn(&[4])).is_err());
}

#[test]
fn unary_ops() {
    for &n in &[1usize, 7, 50, 77] {
        for kind in [
            UnaryKind::Gelu,
            UnaryKind::QuickGelu,
            UnaryKind::Relu,
            UnaryKind::Exp,
            UnaryKind::Log,
            UnaryKind::Sigmoid,
            UnaryKind::Scale(-1.7),
        ] {
            let mut x = randn(&[n, 3]);
            if kind == UnaryKind::Log {
                x = Tensor::from_vec(x.to_vec().iter().map(|v| 0.5 + v.abs()).collect(), [n, 3])
                    .unwrap();
            }
            if kind == UnaryKind::Relu {
                // stay away from the kink at 0, where the finite difference is meaningless
                x = Tensor::from_vec(
                    x.to_vec()
                        .iter()
                        .map(|v| v.signum() * (0.1 + v.abs()))
                        .collect(),
                    [n, 3],
                )
                .unwrap();
            }
            gradcheck(
                &format!("{kind:?} n={n}"),
                &[x],
                Check::default(),
                |g, x| g.unary(kind, &x[0]),
            );
        }
    }
}

/// GELU against `0.5·x·erfc(−x/√2)` in f64 on fresh random inputs (std 3) and a dense sweep of
/// both tails: at most 1e-6 relative error per element wherever the result is a normal f32
/// (the textbook `1 + erf` form in f32 is off by 1e-3 relative already at x = −4).
#[test]
fn gelu_is_accurate_in_both_tails() {
    let seed = fresh_seed();
    let mut xs = Tensor::randn([100_000], 3.0, seed).to_vec();
    xs.extend((0..=24_000).map(|i| -14.0 + i as f32 * 1e-3)); // -14 … 10
    xs.extend([0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 30.0, 1e4]);
    let n = xs.len();
    let got = clipcu::ops::unary::gelu(&Tensor::from_vec(xs.clone(), [n]).unwrap())
        .unwrap()
        .to_vec();
    let mut worst = (0.0f64, 0.0f32);
    for (&x, &y) in xs.iter().zip(&got) {
        let v = x as f64;
        let exact = 0.5 * v * libm::erfc(-v / std::f64::consts::SQRT_2);
        if exact.abs() < f32::MIN_POSITIVE as f64 {
            assert!(
                (y as f64 - exact).abs() < 1e-37,
                "gelu({x}) = {y} vs {exact:e}"
            );
            continue;
        }
        let rel = (y as f64 - exact).abs() / exact.abs();
        if rel > worst.0 {
            worst = (rel, x);
        }
    }
    assert!(
        worst.0 <= 1e-6,
        "gelu: worst relative error {:.3e} at x = {} (seed {seed})",
        worst.0,
        worst.1
    );
    eprintln!(
        "gelu: worst relative error {:.3e} at x = {}",
        worst.0, worst.1
    );
}

/// GELU's backward against `Φ(x) + x·φ(x)` in f64 (Φ through erfc, so the tails are exact), on
/// fresh random inputs and a sweep of both tails: within 1e-6 of the size of its two terms
/// (|Φ| + |x·φ|; the derivative itself crosses zero near x = −0.75, where a relative error means
/// nothing), and within 1e-5 relative wherever the two terms cancel by less than 10× and the
/// result is a normal f32.
#[test]
fn gelu_derivative_is_accurate_in_both_tails() {
    let seed = fresh_seed();
    let mut xs = Tensor::randn([100_000], 3.0, seed).to_vec();
    xs.extend((0..=24_000).map(|i| -14.0 + i as f32 * 1e-3)); // -14 … 10
    xs.extend([0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 30.0, 1e4, -30.0]);
    let n = xs.len();
    let g = Tensor::randn([n], 1.0, seed ^ 1).to_vec();
    let got = clipcu::ops::unary::unary_backward(
        UnaryKind::Gelu,
        &Tensor::from_vec(xs.clone(), [n]).unwrap(),
        &Tensor::from_vec(g.clone(), [n]).unwrap(),
    )
    .unwrap()
    .to_vec();
    for ((&x, &gi), &y) in xs.iter().zip(&g).zip(&got) {
        let v = x as f64;
        let cdf = 0.5 * libm::erfc(-v / std::f64::consts::SQRT_2);
        let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let exact = gi as f64 * (cdf + v * pdf);
        let scale = gi.abs() as f64 * (cdf.abs() + (v * pdf).abs());
        let err = (y as f64 - exact).abs();
        assert!(
            err <= 1e-6 * scale + 1e-38,
            "gelu'({x})·{gi} = {y} vs {exact:e} (seed {seed})"
        );
        if exact.abs() > 0.1 * scale && exact.abs() > f32::MIN_POSITIVE as f64 {
            assert!(
                err <= 1e-5 * exact.abs(),
                "gelu'({x})·{gi} = {y} vs {exact:e}"
            );
        }
    }
}

#[test]
fn unary_forward_values() {
    // Independent formulas in f64: exact GELU uses erf, QuickGELU x·σ(1.702x).
    let x = randn(&[77]);
    let gelu = clipcu::ops::unary::gelu(&x).unwrap().to_vec();
    let qg = clipcu::ops::unary::quick_gelu(&x).unwrap().to_vec();
    for (i, v) in x.to_vec().iter().enumerate() {
        let v = *v as f64;
        let exact = 0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2));
        let quick = v / (1.0 + (-1.702 * v).exp());
        assert!(
            (gelu[i] as f64 - exact).abs() < 1e-6,
            "gelu({v}) = {} vs {exact}",
            gelu[i]
        );
        assert!(
            (qg[i] as f64 - quick).abs() < 1e-6,
            "quick_gelu({v}) = {} vs {quick}",
            qg[i]
        );
    }
}

/// erf by its Taylor series (converges fast for |x| < 4; beyond, erf = ±1 to f64 precision for our use).
fn erf64(x: f64) -> f64 {
    if x.abs() > 4.0 {
        return x.signum();
    }
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn layer_norm() {
    for &(rows, d) in &[(1, 1), (7, 13), (3, 50), (2, 77)] {
        let x = randn(&[rows, d]);
        let w = randn(&[d]);
        let b = randn(&[d]);
        if d == 1 {
            // x̂ is identically 0 for one feature: only the bias gets a gradient worth checking
            gradcheck_some(
                "layer_norm d=1",
                &[x, w, b],
                &[2],
                Check::default(),
                |g, x| g.layer_norm(&x[0], &x[1], &x[2], 1e-5),
            );
            continue;
        }
        gradcheck(
            &format!("layer_norm {rows}x{d}"),
            &[x, w, b],
            Check::default(),
            |g, x| g.layer_norm(&x[0], &x[1], &x[2], 1e-5),
        );
    }
    let e = clipcu::ops::layernorm::layer_norm(&randn(&[2, 5]), &randn(&[4]), &randn(&[4]), 1e-5)
        .unwrap_err();
    assert!(e.to_string().contains("layer_norm"), "{e}");
}

#[test]
fn layer_norm_forward_matches_formula() {
    let (rows, d) = (7, 50);
    let x = randn(&[rows, d]);
    let w = randn(&[d]);
    let b = randn(&[d]);
    let y = clipcu::ops::layernorm::layer_norm(&x, &w, &b, 1e-5)
        .unwrap()
        .to_vec();
    let (xv, wv, bv) = (x.to_vec(), w.to_vec(), b.to_vec());
    for r in 0..rows {
        let row = &xv[r * d..(r + 1) * d];
        let mu = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / d as f64;
        for i in 0..d {
            let want = (row[i] as f64 - mu) / (var + 1e-5).sqrt() * wv[i] as f64 + bv[i] as f64;
            assert!((y[r * d + i] as f64 - want).abs() < 1e-5, "row {r} col {i}");
        }
    }
}

#[test]
fn softmax_plain_and_causal() {
    for &t in &[1usize, 7, 13] {
        gradcheck(
            &format!("softmax t={t}"),
            &[randn(&[2, t, t])],
            Check::default(),
            |g, x| g.softmax(&x[0], false),
        );
        gradcheck(
            &format!("causal softmax t={t}"),
            &[randn(&[2, t, t])],
            Check::default(),
            |g, x| g.softmax(&x[0], true),
        );
    }
    gradcheck(
        "softmax rows of 77",
        &[randn(&[3, 77])],
        Check::default(),
        |g, x| g.softmax(&x[0], false),
    );
    // Element by element against exp(x − max) / Σ exp(x − max) in f64 over the visible columns
    // (all, or ≤ the row's index when causal), exactly 0 beyond; large logits too (std 30).
    for (causal, shape) in [(false, [3usize, 77, 77]), (true, [2, 13, 13])] {
        let seed = fresh_seed();
        let x = Tensor::randn(shape, 30.0, seed);
        let y = clipcu::ops::softmax::softmax(&x, causal).unwrap().to_vec();
        let (t, xv) = (shape[2], x.to_vec());
        for (r, row) in xv.chunks(t).enumerate() {
            let vis = if causal { r % shape[1] + 1 } else { t };
            let m = row[..vis]
                .iter()
                .fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let z: f64 = row[..vis].iter().map(|&v| (v as f64 - m).exp()).sum();
            for (i, &v) in row.iter().enumerate() {
                let got = y[r * t + i] as f64;
                if i >= vis {
                    assert_eq!(got, 0.0, "row {r} col {i}: masked (seed {seed})");
                    continue;
                }
                // f32 rounds x − max, so the exponent carries up to ~|x − max|·2⁻²⁴ of error:
                // the bound grows with it (and covers subnormal results by an absolute 1e-40).
                let want = (v as f64 - m).exp() / z;
                let rel = 1e-6 + 2.0 * f32::EPSILON as f64 * (v as f64 - m).abs();
                assert!(
                    (got - want).abs() <= rel * want + 1e-40,
                    "causal {causal} row {r} col {i}: {got} vs {want} (seed {seed})"
                );
            }
        }
    }
    assert!(clipcu::ops::softmax::softmax(&randn(&[3, 4]), true).is_err());
}

#[test]
fn embedding_lookup() {
    let (v, d) = (50, 7);
    let ids: Vec<u32> = (0..13)
        .map(|i| (i * 17 % 50) as u32)
        .chain([3, 3, 3])
        .collect();
    let w = randn(&[v, d]);
    let ids2 = ids.clone();
    gradcheck(
        "embedding",
        std::slice::from_ref(&w),
        Check::default(),
        move |g, x| g.embedding(&x[0], &ids2, &[2, 8]),
    );
    let out = clipcu::ops::embedding::embedding(&w, &ids, &[16])
        .unwrap()
        .to_vec();
    let wv = w.to_vec();
    for (k, &i) in ids.iter().enumerate() {
        assert_eq!(
            &out[k * d..(k + 1) * d],
            &wv[i as usize * d..(i as usize + 1) * d]
        );
    }
    let e = clipcu::ops::embedding::embedding(&w, &[50], &[1]).unwrap_err();
    assert!(e.to_string().contains("50"), "{e}");
}

#[test]
fn layout_ops() {
    let x = randn(&[2, 7, 13]);
    gradcheck(
        "reshape",
        std::slice::from_ref(&x),
        Check::default(),
        |g, x| g.reshape(&x[0], [14, 13]),
    );
    gradcheck(
        "permute",
        std::slice::from_ref(&x),
        Check::default(),
        |g, x| {
            // follow the permute with a non-linear op so that its layout matters to the gradient
            let p = g.permute(&x[0], &[2, 0, 1])?;
            let r = g.reshape(&p, [13, 14])?;
            g.softmax(&r, false)
        },
    );
    gradcheck(
        "narrow",
        std::slice::from_ref(&x),
        Check::default(),
        |g, x| g.narrow(&x[0], 1, 2, 4),
    );
    gradcheck(
        "narrow then matmul",
        &[x.clone(), randn(&[13, 5])],
        Check::default(),
        |g, x| {
            let n = g.narrow(&x[0], 1, 0, 1)?;
            g.matmul(&n, &x[1], false, false)
        },
    );
    gradcheck(
        "concat",
        &[randn(&[2, 3, 5]), randn(&[2, 1, 5]), randn(&[2, 7, 5])],
        Check::default(),
        |g, x| g.concat(&[&x[0], &x[1], &x[2]], 1),
    );
    gradcheck(
        "concat last",
        &[randn(&[3, 2]), randn(&[3, 5])],
        Check::default(),
        |g, x| g.concat(&[&x[0], &x[1]], -1),
    );
    assert!(clipcu::ops::layout::concat(&[&randn(&[2, 3]), &randn(&[3, 3])], 1).is_err());
    // permute values against hand indexing
    let p = x.permute(&[2, 0, 1]).unwrap().contiguous().to_vec();
    let xv = x.to_vec();
    for c in 0..13 {
        for a in 0..2 {
            for b in 0..7 {
                assert_eq!(p[c * 14 + a * 7 + b], xv[a * 91 + b * 13 + c]);
            }
        }
    }
}

#[test]
fn reductions() {
    for axis in [0isize, 1, -1] {
        gradcheck(
            &format!("sum axis {axis}"),
            &[randn(&[7, 13, 3])],
            Check::default(),
            |g, x| g.sum(&x[0], Some(axis)),
        );
        gradcheck(
            &format!("mean axis {axis}"),
            &[randn(&[7, 13, 3])],
            Check::default(),
            |g, x| g.mean(&x[0], Some(axis)),
        );
    }
    gradcheck("mean all", &[randn(&[7, 13])], Check::default(), |g, x| {
        g.mean(&x[0], None)
    });
    gradcheck("sum all", &[randn(&[50])], Check::default(), |g, x| {
        g.sum(&x[0], None)
    });
    let x = randn(&[7, 13]);
    let m = clipcu::ops::reduce::mean(&x, Some(0)).unwrap().to_vec();
    let xv = x.to_vec();
    for j in 0..13 {
        let want: f64 = (0..7).map(|i| xv[i * 13 + j] as f64).sum::<f64>() / 7.0;
        assert!((m[j] as f64 - want).abs() < 1e-6);
    }
}

#[test]
fn l2_normalize() {
    for &(n, d) in &[(1, 1), (7, 13), (3, 77)] {
        gradcheck(
            &format!("l2_normalize {n}x{d}"),
            &[randn(&[n, d])],
            Check::default(),
            |g, x| g.l2_normalize(&x[0]),
        );
    }
    // Element by element against x / max(‖x‖, eps) in f64, with a row scaled far down (below
    // eps after squaring would underflow in f32) and an all-zero row (y = 0, not NaN).
    let seed = fresh_seed();
    let mut xv = Tensor::randn([6, 50], 3.0, seed).to_vec();
    xv[50..100].iter_mut().for_each(|v| *v *= 1e-20);
    xv[100..150].fill(0.0);
    let x = Tensor::from_vec(xv.clone(), [6, 50]).unwrap();
    let (y, norms) = clipcu::ops::normalize::l2_normalize_stats(&x).unwrap();
    let (y, norms) = (y.to_vec(), norms.to_vec());
    for (r, row) in xv.chunks(50).enumerate() {
        let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        assert!(
            (norms[r] as f64 - norm).abs() <= 1e-6 * norm,
            "row {r}: norm {} vs {norm} (seed {seed})",
            norms[r]
        );
        let denom = norm.max(clipcu::ops::normalize::L2_EPS as f64);
        for (i, &v) in row.iter().enumerate() {
            let want = v as f64 / denom;
            let got = y[r * 50 + i] as f64;
            assert!(
                (got - want).abs() <= 2e-7 * want.abs() + 1e-30,
                "row {r} col {i}: {got} vs {want} (seed {seed})"
            );
        }
    }
}

#[test]
fn cross_entropy() {
    for &(n, c) in &[(1, 1), (7, 13), (13, 7), (5, 77)] {
        let t: Vec<u32> = (0..n).map(|i| ((i * 5 + 3) % c) as u32).collect();
        gradcheck(
            &format!("cross_entropy {n}x{c}"),
            &[randn(&[n, c])],
            Check::default(),
            move |g, x| g.cross_entropy(&x[0], &t),
        );
    }
    // value against logsumexp in f64
    let z = randn(&[4, 9]);
    let t = [0u32, 8, 3, 3];
    let l = clipcu::ops::cross_entropy::cross_entropy(&z, &t)
        .unwrap()
        .item()
        .unwrap() as f64;
    let zv = z.to_vec();
    let want: f64 = (0..4)
        .map(|i| {
            let row = &zv[i * 9..(i + 1) * 9];
            row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln() - row[t[i] as usize] as f64
        })
        .sum::<f64>()
        / 4.0;
    assert!((l - want).abs() < 1e-5, "{l} vs {want}");
    assert!(clipcu::ops::cross_entropy::cross_entropy(&z, &[0, 1, 2, 9]).is_err());
}

#[test]
fn attention_plain_and_causal() {
    for &(b, h, t, dh) in &[(1, 1, 1, 1), (2, 3, 7, 5), (1, 2, 13, 8)] {
        for causal in [false, true] {
            let xs = [
                randn(&[b, h, t, dh]),
                randn(&[b, h, t, dh]),
                randn(&[b, h, t, dh]),
            ];
            gradcheck(
                &format!("attention {b}x{h}x{t}x{dh} causal={causal}"),
                &xs,
                Check::default(),
                |g, x| g.attention(&x[0], &x[1], &x[2], causal),
            );
        }
    }
    // one query over 7 keys (the attention-pool pattern), Dv ≠ Dh
    let xs = [
        randn(&[2, 2, 1, 4]),
        randn(&[2, 2, 7, 4]),
        randn(&[2, 2, 7, 3]),
    ];
    gradcheck("attention tq=1", &xs, Check::default(), |g, x| {
        g.attention(&x[0], &x[1], &x[2], false)
    });
}

#[test]
fn packed_attention_plain_and_causal() {
    // straight from the packed projection [B·T, 3·H·dh] (src/ops/attention/fused.rs)
    for &(b, h, t, dh) in &[(1, 1, 1, 1), (2, 3, 7, 5), (1, 2, 13, 8)] {
        for causal in [false, true] {
            let xs = [randn(&[b * t, 3 * h * dh])];
            gradcheck(
                &format!("attention_packed {b}x{h}x{t}x{dh} causal={causal}"),
                &xs,
                Check::default(),
                |g, x| g.attention_packed(&x[0], b, h, causal),
            );
        }
    }
}

#[test]
fn attention_equals_composed_ops() {
    // The fused op against matmul → scale → softmax → matmul recorded as separate ops.
    let (b, h, t, dh) = (2, 2, 50, 8);
    let q = randn(&[b, h, t, dh]);
    let k = randn(&[b, h, t, dh]);
    let v = randn(&[b, h, t, dh]);
    for causal in [false, true] {
        let g = Graph::inference();
        let (qv, kv, vv) = (
            g.constant(q.clone()),
            g.constant(k.clone()),
            g.constant(v.clone()),
        );
        let fused = g.attention(&qv, &kv, &vv, causal).unwrap();
        let s = g
            .scale(
                &g.matmul(&qv, &kv, false, true).unwrap(),
                1.0 / (dh as f32).sqrt(),
            )
            .unwrap();
        let p = g.softmax(&s, causal).unwrap();
        let composed = g.matmul(&p, &vv, false, false).unwrap();
        let err = fused.tensor().rel_err(composed.tensor());
        assert!(err < 1e-5, "causal={causal}: {err}");
    }
}

#[test]
fn erf_is_accurate() {
    // a dense grid plus the tails, against the f64 series
    let mut worst = 0f64;
    for i in -60000..=60000 {
        let x = i as f32 * 1e-4;
        let e = (clipcu::ops::unary::cpu::erf(x) as f64 - erf64(x as f64)).abs();
        worst = worst.max(e);
    }
    assert!(worst < 2e-7, "erf max abs error {worst:e}");
}

#[test]
fn linear_fused_bias() {
    for &(rows, din, dout) in &[(1, 1, 1), (7, 13, 5), (50, 7, 77)] {
        let xs = [randn(&[rows, din]), randn(&[dout, din]), randn(&[dout])];
        gradcheck(
            &format!("linear {rows}x{din}->{dout}"),
            &xs,
            Check::default(),
            |g, x| g.linear(&x[0], &x[1], Some(&x[2])),
        );
        gradcheck(
            &format!("linear no bias {rows}x{din}->{dout}"),
            &xs[..2],
            Check::default(),
            |g, x| g.linear(&x[0], &x[1], None),
        );
        // equals matmul + broadcast add
        let g = Graph::inference();
        let v: Vec<_> = xs.iter().map(|t| g.constant(t.clone())).collect();
        let fused = g.linear(&v[0], &v[1], Some(&v[2])).unwrap();
        let composed = g
            .add(&g.matmul(&v[0], &v[1], false, true).unwrap(), &v[2])
            .unwrap();
        assert!(fused.tensor().rel_err(composed.tensor()) < 1e-6);
    }
    assert!(
        clipcu::ops::matmul::linear(&randn(&[2, 3]), &randn(&[4, 3]), Some(&randn(&[3]))).is_err()
    );
}

/// The inference-only attention on the packed projection against the recorded path's pieces
/// (split heads, attention, merge heads), causal or not, on fresh random data.
#[test]
fn attention_qkv_matches_split_attention_merge() {
    use clipcu::ops::attention::{attention, attention_qkv, merge_heads, split_qkv_heads};
    for (b, t, h, dh) in [(1, 1, 1, 4), (2, 7, 3, 8), (3, 50, 2, 64), (4, 21, 8, 16)] {
        let qkv = randn(&[b * t, 3 * h * dh]);
        for causal in [false, true] {
            let heads = split_qkv_heads(&qkv, b, h).unwrap();
            let part = |i| {
                heads
                    .narrow(0, i, 1)
                    .unwrap()
                    .reshape([b, h, t, dh])
                    .unwrap()
            };
            let o = attention(&part(0), &part(1), &part(2), causal).unwrap();
            let reference = merge_heads(&o).unwrap();
            let out = attention_qkv(&qkv, b, h, causal).unwrap();
            assert_eq!(out.shape(), reference.shape());
            let err = out.rel_err(&reference);
            assert!(
                err <= 1e-6,
                "attention_qkv b{b} t{t} h{h} dh{dh} causal {causal}: rel err {err:.3e}"
            );
        }
    }
}
