//! Tensor basics: layout views (reshape, permute, narrow, transpose, expand), dtype conversion,
//! device moves, construction checks and copy-on-write.

use clipcu::{DType, Device, Error, Tensor};
use half::{bf16, f16};
use rand::Rng;

fn seed() -> u64 {
    let s: u64 = rand::rng().random();
    eprintln!("seed {s}");
    s
}

fn shape_err(r: clipcu::Result<Tensor>, what: &str) -> String {
    match r {
        Err(e @ Error::Shape { .. }) => e.to_string(),
        other => panic!("{what}: expected Error::Shape, got {other:?}"),
    }
}

#[test]
fn reshape_checks_element_count() {
    let t = Tensor::randn([2, 3], 1.0, seed());
    let msg = shape_err(t.reshape([4, 2]), "reshape 6 -> 8");
    assert!(msg.contains("[2, 3]") && msg.contains("[4, 2]"), "{msg}");
    let r = t.reshape([3, 1, 2]).unwrap();
    assert_eq!(r.shape(), &[3, 1, 2]);
    assert_eq!(r.to_vec(), t.to_vec());
    // Reshaping a non-contiguous view copies in row-major order of the view.
    let tt = t.transpose(0, 1).unwrap();
    assert_eq!(tt.reshape([6]).unwrap().to_vec(), tt.contiguous().to_vec());
    assert_eq!(
        Tensor::scalar(2.5).reshape([1, 1]).unwrap().to_vec(),
        vec![2.5]
    );
}

#[test]
fn permute_rejects_non_permutations() {
    let t = Tensor::randn([2, 3, 4], 1.0, seed());
    for axes in [&[0, 0, 1][..], &[0, 1], &[0, 1, 3], &[0, 1, 2, 3], &[]] {
        let msg = shape_err(t.permute(axes), &format!("permute {axes:?}"));
        assert!(msg.contains("[2, 3, 4]"), "{msg}");
    }
    assert_eq!(t.permute(&[2, 0, 1]).unwrap().shape(), &[4, 2, 3]);
    assert_eq!(
        Tensor::scalar(1.0).permute(&[]).unwrap().shape(),
        &[] as &[usize]
    );
}

#[test]
fn narrow_range_checks() {
    let t = Tensor::randn([5, 7], 1.0, seed());
    shape_err(t.narrow(0, 3, 3), "narrow past the end");
    shape_err(t.narrow(1, 8, 0), "start past the end");
    shape_err(t.narrow(2, 0, 1), "axis out of range");
    shape_err(t.narrow(-3, 0, 1), "negative axis out of range");
    shape_err(t.narrow(1, usize::MAX, 2), "start + len overflows");
    // Edge cases that are fine: empty at the end, the whole dim, negative axis.
    assert_eq!(t.narrow(0, 5, 0).unwrap().shape(), &[0, 7]);
    assert_eq!(t.narrow(-1, 0, 7).unwrap().to_vec(), t.to_vec());
    let v = t.to_vec();
    let n = t.narrow(-1, 2, 3).unwrap();
    let want: Vec<f32> = (0..5)
        .flat_map(|i| (2..5).map(move |j| (i, j)))
        .map(|(i, j)| v[i * 7 + j])
        .collect();
    assert_eq!(n.to_vec(), want);
}

#[test]
fn transpose_contiguous_matches_hand_indexing() {
    let (a, b, c) = (3, 4, 5);
    let t = Tensor::randn([a, b, c], 1.0, seed());
    let v = t.to_vec();
    let at = |i: usize, j: usize, k: usize| v[(i * b + j) * c + k];

    let t02 = t.transpose(0, 2).unwrap();
    assert_eq!(t02.shape(), &[c, b, a]);
    assert!(!t02.is_contiguous());
    let out = t02.contiguous();
    assert!(out.is_contiguous());
    let got = out.f32s("test").unwrap();
    for k in 0..c {
        for j in 0..b {
            for i in 0..a {
                assert_eq!(got[(k * b + j) * a + i], at(i, j, k), "[{k},{j},{i}]");
            }
        }
    }

    // Negative axes, and a transpose of a narrowed view (offset + strides together).
    let tv = t
        .narrow(1, 1, 2)
        .unwrap()
        .transpose(-1, -2)
        .unwrap()
        .contiguous();
    assert_eq!(tv.shape(), &[a, c, 2]);
    let got = tv.f32s("test").unwrap();
    for i in 0..a {
        for k in 0..c {
            for j in 0..2 {
                assert_eq!(got[(i * c + k) * 2 + j], at(i, j + 1, k));
            }
        }
    }
    // The bytes of a view are those of its contiguous copy, in every dtype.
    for d in [DType::F32, DType::F16, DType::BF16] {
        let x = t.to_dtype(d).transpose(0, 1).unwrap();
        assert_eq!(x.to_le_bytes(), x.contiguous().to_le_bytes());
        assert_eq!(x.to_dtype(DType::F32).to_vec(), x.to_vec());
    }
}

#[test]
fn expand_is_a_stride_0_view_with_numpy_rules() {
    let t = Tensor::randn([3, 1], 1.0, seed());
    let v = t.to_vec();
    let e = t.expand(&[2, 3, 4]).unwrap();
    assert_eq!((e.shape(), e.strides()), (&[2, 3, 4][..], &[0, 1, 0][..]));
    assert_eq!(e.storage_id(), t.storage_id(), "a view, not a copy");
    let got = e.contiguous().to_vec();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(*g, v[(i / 4) % 3], "element {i}");
    }
    // an expand of a narrowed view keeps its offset; equal dims keep their strides
    let n = Tensor::randn([4, 5], 1.0, seed()).narrow(1, 2, 1).unwrap();
    let en = n.expand(&[4, 6]).unwrap();
    assert_eq!(en.strides(), &[5, 0]);
    assert_eq!(en.narrow(1, 3, 1).unwrap().to_vec(), n.to_vec());
    // a non-1 dim that differs, or fewer dims than the tensor, is a shape error naming both
    let msg = shape_err(t.expand(&[3, 4, 2]), "expand [3, 1] → [3, 4, 2]");
    assert!(
        msg.contains("expand") && msg.contains("[3, 1]") && msg.contains("[3, 4, 2]"),
        "{msg}"
    );
    shape_err(t.expand(&[3]), "expand to a lower rank");
    assert_eq!(
        Tensor::scalar(2.0).expand(&[2, 2]).unwrap().to_vec(),
        vec![2.0; 4]
    );
}

#[test]
fn to_dtype_round_trips_within_precision() {
    let t = Tensor::randn([7, 13], 3.0, seed());
    let v = t.to_vec();
    // Round to nearest: relative error at most half an ulp (2^-11 for f16, 2^-8 for bf16) for
    // normal numbers; randn(3.0) stays far inside both ranges (f16 normals start at 6.1e-5).
    for (d, rel) in [(DType::F16, 2f32.powi(-11)), (DType::BF16, 2f32.powi(-8))] {
        let h = t.to_dtype(d);
        assert_eq!(h.dtype(), d);
        assert_eq!(h.shape(), t.shape());
        let back = h.to_dtype(DType::F32);
        assert_eq!(back.dtype(), DType::F32);
        for (x, y) in v.iter().zip(back.to_vec()) {
            if x.abs() >= 1e-4 {
                assert!(((x - y) / x).abs() <= rel, "{d}: {x} -> {y}");
            } else {
                assert!((x - y).abs() <= 1e-7, "{d}: {x} -> {y}");
            }
        }
        // Converting back and forth again changes nothing.
        assert_eq!(back.to_dtype(d).to_le_bytes(), h.to_le_bytes());
    }
    // Values representable in the narrow type survive exactly.
    let exact = vec![0.0, -0.0, 1.0, -2.0, 0.5, 1024.0, 0.15625, -3.75, 96.0];
    let e = Tensor::from_vec(exact.clone(), [9]).unwrap();
    for d in [DType::F16, DType::BF16] {
        let back = e.to_dtype(d).to_dtype(DType::F32).to_vec();
        assert_eq!(back, exact, "{d}");
        assert!(back[1].is_sign_negative(), "{d}: -0.0 keeps its sign");
    }
    // Ties round to even: 1 + 2^-11 is halfway between 1 and the next f16 (1 + 2^-10).
    let ties =
        Tensor::from_vec(vec![1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)], [2]).unwrap();
    assert_eq!(
        ties.to_dtype(DType::F16).to_vec(),
        vec![1.0, 1.0 + 2f32.powi(-9)]
    );
    // Out of f16 range overflows to inf (bf16 keeps f32's range).
    let big = Tensor::from_vec(vec![1e5, -1e6], [2]).unwrap();
    assert!(big
        .to_dtype(DType::F16)
        .to_vec()
        .iter()
        .all(|x| x.is_infinite()));
    assert!(big
        .to_dtype(DType::BF16)
        .to_vec()
        .iter()
        .all(|x| x.is_finite()));
    // Same dtype is a no-op sharing storage.
    assert_eq!(t.to_dtype(DType::F32).storage_id(), t.storage_id());
}

#[test]
fn cuda_is_an_error_not_a_panic() {
    let t = Tensor::randn([2, 2], 1.0, seed());
    // Without a GPU an Err naming the device; with one a round trip (tests/cuda_device.rs).
    match (
        Device::Cuda(0).ensure_available(),
        t.to_device(Device::Cuda(0)),
    ) {
        (Err(_), Err(Error::BackendUnavailable { device, .. })) => assert_eq!(device, "cuda:0"),
        (Ok(()), Ok(g)) => assert_eq!(g.to_device(Device::Cpu).unwrap().to_vec(), t.to_vec()),
        (probe, other) => panic!("probe {probe:?}, to_device {other:?}"),
    }
    assert_eq!(t.to_device(Device::Cpu).unwrap().to_vec(), t.to_vec());
}

#[test]
fn constructors_check_lengths() {
    let msg = shape_err(
        Tensor::from_vec(vec![1.0; 5], [2, 3]),
        "from_vec 5 for [2, 3]",
    );
    assert!(msg.contains("[2, 3]") && msg.contains('5'), "{msg}");
    shape_err(Tensor::from_vec(vec![], []), "from_vec 0 for a scalar");
    shape_err(Tensor::from_f16(vec![f16::ONE; 3], [2]), "from_f16");
    shape_err(Tensor::from_bf16(vec![bf16::ONE; 1], [0]), "from_bf16");
    shape_err(
        Tensor::from_le_bytes(&[0u8; 7], DType::F32, [2]),
        "from_le_bytes",
    );
    assert_eq!(Tensor::from_vec(vec![], [0, 4]).unwrap().shape(), &[0, 4]);
    assert_eq!(
        Tensor::from_vec(vec![3.0], []).unwrap().item().unwrap(),
        3.0
    );
}

#[test]
fn f32s_mut_copies_on_write() {
    let a = Tensor::randn([4, 5], 1.0, seed());
    let before = a.to_vec();
    let mut b = a.clone();
    assert_eq!(a.storage_id(), b.storage_id());
    b.f32s_mut("test").unwrap()[3] = 42.0;
    assert_eq!(a.to_vec(), before, "the other handle keeps its values");
    assert_eq!(b.to_vec()[3], 42.0);
    assert_ne!(a.storage_id(), b.storage_id());

    // Writing through a view copies the view out; the base is untouched.
    let mut v = a.narrow(0, 1, 2).unwrap();
    v.f32s_mut("test").unwrap()[0] = -7.0;
    assert_eq!(a.to_vec(), before);
    assert_eq!(v.shape(), &[2, 5]);
    assert_eq!(v.to_vec()[0], -7.0);
    assert_eq!(&v.to_vec()[1..], &before[6..15]);

    // A sole owner writes in place.
    let mut c = Tensor::randn([3], 1.0, seed());
    let id = c.storage_id();
    c.f32s_mut("test").unwrap()[0] = 1.0;
    assert_eq!(c.storage_id(), id);

    // Other dtypes are refused.
    let mut h = a.to_dtype(DType::F16);
    assert!(matches!(h.f32s_mut("test"), Err(Error::DType { .. })));
}

#[test]
fn empty_matrix_products_are_empty_or_zero() {
    // [0, k]·[k, n] is empty, [m, 0]·[0, n] is all zeros (a sum over nothing); neither panics
    use clipcu::ops::matmul::matmul;
    let e = matmul(&Tensor::zeros([0, 5]), &Tensor::ones([5, 3]), false, false).unwrap();
    assert_eq!(e.shape(), &[0, 3]);
    let z = matmul(&Tensor::ones([4, 0]), &Tensor::ones([0, 3]), false, false).unwrap();
    assert_eq!(z.shape(), &[4, 3]);
    assert!(z.to_vec().iter().all(|&v| v == 0.0));
    let b = matmul(
        &Tensor::ones([2, 4, 0]),
        &Tensor::ones([2, 0, 3]),
        false,
        false,
    )
    .unwrap();
    assert_eq!(b.to_vec(), vec![0.0; 24]);
}
