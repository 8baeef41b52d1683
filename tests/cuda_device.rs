//! The Cuda device's host side.
//!
//! On every machine: the probe turns a missing GPU stack into an `Err` (never a panic); the
//! caching allocator's policy, on a fake device; the row-major → column-major cuBLAS parameter
//! mapping, applied by a naive column-major GEMM and compared with the CPU `matmul`.
//!
//! With a GPU (the probe succeeds): real GEMMs through cuBLAS and cuBLASLt against the CPU in
//! f32/f16/bf16, host↔device copies, the allocator on the card, event timing. Without one, each
//! of those tests writes `skipped: no CUDA device (reason)` straight to stderr (visible without
//! `--nocapture`) and returns: it is a skip, not a pass.

mod common;

use clipcu::device::cuda::alloc::{size_class, CachingAllocator, RawAllocError, RawAllocator};
use clipcu::device::cuda::gemm::{plan, CublasGemm, GemmArgs, RowMajorGemm};
use clipcu::device::cuda::{self, CudaBackend};
use clipcu::ops::matmul::{gpu::GemmOptions, matmul};
use clipcu::{DType, Device, Error, Tensor};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

fn seed() -> u64 {
    let s: u64 = rand::rng().random();
    eprintln!("seed {s}");
    s
}

// ---- the probe, without a GPU ---------------------------------------------------------------

/// The backend, or `None` after printing a visible skip line for `test` and counting the skip
/// (reported at exit); under `CLIPCU_REQUIRE_CUDA=1` a failed start fails the test instead.
fn gpu_or_skip(test: &str) -> Option<Arc<CudaBackend>> {
    match CudaBackend::get(0) {
        Ok(b) => Some(b),
        Err(e) => {
            // Straight to the stderr handle: libtest captures print!/eprint! of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "test {test}: skipped: no CUDA device ({e})"
            );
            common::skip_cuda_run(&e.to_string());
            None
        }
    }
}

/// The reasons the probe may give all name what is missing.
fn names_what_is_missing(reason: &str) -> bool {
    [
        "libcuda",
        "cuBLAS",
        "cuBLASLt",
        "driver",
        "no usable GPU",
        "CUDA device",
    ]
    .iter()
    .any(|w| reason.contains(w))
}

#[test]
fn probe_is_an_error_not_a_panic() {
    // Asked twice: the second answer comes from the remembered probe and must agree.
    let first = Device::Cuda(0).ensure_available();
    let second = Device::Cuda(0).ensure_available();
    match (first, second) {
        (Ok(()), Ok(())) => {
            let b = CudaBackend::get(0).unwrap();
            assert_eq!(b.ordinal(), 0);
            assert!(!b.info().name.is_empty());
        }
        (Err(Error::BackendUnavailable { device, reason }), Err(e2)) => {
            assert_eq!(device, "cuda:0");
            assert!(names_what_is_missing(&reason), "unclear reason: {reason}");
            assert!(e2.to_string().contains(&reason), "{e2}");
        }
        (a, b) => panic!("inconsistent or wrong probe answers: {a:?}, {b:?}"),
    }
    // An ordinal no machine of ours has is always an error, with or without a GPU.
    match Device::Cuda(999).ensure_available() {
        Err(Error::BackendUnavailable { device, reason }) => {
            assert_eq!(device, "cuda:999");
            assert!(
                names_what_is_missing(&reason) || reason.contains("no cuda:999"),
                "{reason}"
            );
        }
        other => panic!("cuda:999: expected BackendUnavailable, got {other:?}"),
    }
}

#[test]
fn to_device_without_gpu_is_a_clean_error() {
    let t = Tensor::randn([3, 4], 1.0, seed());
    match (CudaBackend::get(0), t.to_device(Device::Cuda(0))) {
        (Ok(_), Ok(g)) => {
            // With a GPU this is a round trip (covered in depth by the gpu_* tests).
            assert_eq!(g.device(), Device::Cuda(0));
            assert_eq!(g.to_device(Device::Cpu).unwrap().to_vec(), t.to_vec());
        }
        (Err(probe), Err(Error::BackendUnavailable { device, reason })) => {
            assert_eq!(device, "cuda:0");
            assert!(probe.to_string().contains(&reason));
        }
        (p, r) => panic!("probe {p:?} but to_device gave {r:?}"),
    }
    // Host tensors stay usable whatever happened.
    assert_eq!(t.to_device(Device::Cpu).unwrap().to_vec(), t.to_vec());
}

#[test]
fn auto_explains_its_choice() {
    let (d, why) = Device::auto();
    match CudaBackend::get(0) {
        Err(e) => {
            assert_eq!(d, Device::Cpu);
            assert!(why.starts_with("cpu ("), "{why}");
            assert!(why.contains(&e.to_string()), "{why} vs {e}");
        }
        Ok(_) if !cuda::kernels_built() => {
            assert_eq!(d, Device::Cpu);
            assert!(why.contains("tools/install-nvcc.sh"), "{why}");
        }
        Ok(_) => {
            assert_eq!(d, Device::Cuda(0));
            assert!(why.starts_with("cuda:0"), "{why}");
        }
    }
}

// ---- the caching allocator on a fake device -------------------------------------------------

/// A fake device: hands out addresses, tracks what is live, fails beyond `capacity` bytes.
struct Fake {
    next: u64,
    live: HashMap<u64, usize>,
    used: usize,
    capacity: usize,
    calls: usize,
}

struct FakeBuf {
    addr: u64,
    bytes: usize,
}

impl Fake {
    fn new(capacity: usize) -> Fake {
        Fake {
            next: 0x1000,
            live: HashMap::new(),
            used: 0,
            capacity,
            calls: 0,
        }
    }
}

impl RawAllocator for Fake {
    type Buf = FakeBuf;
    fn alloc(&mut self, bytes: usize) -> Result<FakeBuf, RawAllocError> {
        self.calls += 1;
        if self.used + bytes > self.capacity {
            return Err(RawAllocError {
                out_of_memory: true,
                msg: format!("fake device full ({} of {})", self.used, self.capacity),
            });
        }
        let addr = self.next;
        self.next += bytes.max(1) as u64;
        self.used += bytes;
        self.live.insert(addr, bytes);
        Ok(FakeBuf { addr, bytes })
    }
    fn free(&mut self, buf: FakeBuf) {
        let b = self.live.remove(&buf.addr).expect("double free");
        assert_eq!(b, buf.bytes);
        self.used -= b;
    }
    fn address(buf: &FakeBuf) -> u64 {
        buf.addr
    }
}

#[test]
fn size_classes_bound_the_waste() {
    assert_eq!(size_class(0), 512);
    assert_eq!(size_class(1), 512);
    assert_eq!(size_class(512), 512);
    assert_eq!(size_class(513), 1024);
    assert_eq!(size_class(5000), 5120); // step 1 KiB between 4 and 8 KiB
    assert_eq!(size_class(1 << 20), 1 << 20);
    assert_eq!(size_class((1 << 20) + 1), (1 << 20) + (1 << 18));
    assert_eq!(size_class((64 << 20) + 1), (66 << 20)); // step capped at 2 MiB
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let mut prev = 0;
    for i in 0..20_000usize {
        let b = if i < 5000 {
            i
        } else {
            let bits = rng.random_range(10..34);
            rng.random_range(0..(1usize << bits))
        };
        let c = size_class(b);
        assert!(c >= b && c >= 512 && c.is_multiple_of(512), "{b} -> {c}");
        // Waste: under 512 B for small requests, else at most a quarter, and at most 2 MiB.
        let bound = 512usize.max((b / 4).min(2 << 20));
        assert!(c - b <= bound, "{b} -> {c}: wastes more than {bound}");
        assert_eq!(size_class(c), c, "a class is its own class");
        if i < 5000 {
            assert!(c >= prev, "not monotone at {b}: {prev} then {c}");
            prev = c;
        }
    }
}

#[test]
fn freed_blocks_are_reused_within_their_class() {
    let a = CachingAllocator::new(Fake::new(1 << 30));
    let b1 = a.alloc(1000).unwrap();
    let addr = b1.address();
    assert_eq!((b1.len(), b1.capacity()), (1000, 1024));
    drop(b1);
    let s = a.stats();
    assert_eq!(
        (s.cached_bytes, s.cached_blocks, s.in_use_bytes),
        (1024, 1, 0)
    );
    // Same class (1024): the same memory, no device call.
    let b2 = a.alloc(700).unwrap();
    assert_eq!(b2.address(), addr);
    let s = a.stats();
    assert_eq!((s.device_allocs, s.cache_hits, s.cached_blocks), (1, 1, 0));
    // Another class is not served from it.
    let b3 = a.alloc(5000).unwrap();
    assert_ne!(b3.address(), addr);
    assert_eq!(a.stats().device_allocs, 2);
    drop(b2);
    let b4 = a.alloc(300).unwrap(); // class 512: not the cached 1024 block
    assert_ne!(b4.address(), addr);
    assert_eq!(a.stats().device_allocs, 3);
    assert_eq!(a.with_raw(|f| f.calls), 3);
}

#[test]
fn stats_track_use_cache_and_peak() {
    let a = CachingAllocator::new(Fake::new(1 << 30));
    let x = a.alloc(3000).unwrap(); // class 3072
    let y = a.alloc(100).unwrap(); // class 512
    let s = a.stats();
    assert_eq!(s.in_use_bytes, 3072 + 512);
    assert_eq!(s.requested_bytes, 3100);
    assert_eq!(s.live_blocks, 2);
    assert_eq!(s.peak_in_use_bytes, 3584);
    drop(x);
    let s = a.stats();
    assert_eq!((s.in_use_bytes, s.cached_bytes), (512, 3072));
    assert_eq!(s.reserved_bytes(), 3584);
    assert_eq!(s.peak_in_use_bytes, 3584);
    assert_eq!(a.with_raw(|f| f.used), 3584);
    // empty_cache gives cached memory back to the device, not the live block.
    assert_eq!(a.empty_cache(), 3072);
    let s = a.stats();
    assert_eq!((s.cached_bytes, s.cached_blocks, s.device_frees), (0, 0, 1));
    assert_eq!(a.with_raw(|f| (f.used, f.live.len())), (512, 1));
    drop(y);
    assert_eq!(a.stats().in_use_bytes, 0);
    assert_eq!(a.stats().requested_bytes, 0);
}

/// The sizes one simulated training step asks for: parameters' gradients, per-layer activations
/// kept for backward, temporaries freed at once, a workspace.
fn step_sizes(rng: &mut impl Rng, layers: usize) -> Vec<usize> {
    (0..layers * 3)
        .map(|_| rng.random_range(1..(4 << 20)))
        .collect()
}

fn one_step(a: &CachingAllocator<Fake>, sizes: &[usize]) {
    let mut saved = Vec::new();
    // Forward: each layer keeps an activation, uses a temporary and frees it.
    for s in sizes.chunks(3) {
        saved.push(a.alloc(s[0]).unwrap());
        let tmp = a.alloc(s[1]).unwrap();
        saved.push(a.alloc(s[2]).unwrap());
        drop(tmp);
    }
    // Backward: free activations in reverse, with gradient temporaries in between.
    while let Some(act) = saved.pop() {
        let g = a.alloc(act.len() / 2 + 1).unwrap();
        drop(act);
        drop(g);
    }
}

#[test]
fn steady_state_makes_no_device_allocation() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let sizes = step_sizes(&mut rng, 12);
    let a = CachingAllocator::new(Fake::new(usize::MAX / 2));
    one_step(&a, &sizes);
    let after_first = a.stats();
    assert!(after_first.device_allocs > 0);
    assert_eq!(after_first.in_use_bytes, 0);
    let device_after_first = a.with_raw(|f| (f.used, f.calls));
    for _ in 1..100 {
        one_step(&a, &sizes);
    }
    let s = a.stats();
    assert_eq!(
        s.device_allocs, after_first.device_allocs,
        "steps 2..100 allocated on the device"
    );
    assert_eq!(s.reserved_bytes(), after_first.reserved_bytes());
    assert_eq!(a.with_raw(|f| (f.used, f.calls)), device_after_first);
    assert_eq!(s.peak_in_use_bytes, after_first.peak_in_use_bytes);
    assert!(s.cache_hits >= 99 * (sizes.len() as u64 + sizes.len() as u64 * 2 / 3));
    assert_eq!((s.in_use_bytes, s.live_blocks), (0, 0));
}

#[test]
fn out_of_memory_releases_the_cache_then_fails_clearly() {
    let a = CachingAllocator::new(Fake::new(16 << 10));
    // Fill the fake device with cached 4 KiB blocks.
    let blocks: Vec<_> = (0..4).map(|_| a.alloc(4096).unwrap()).collect();
    drop(blocks);
    assert_eq!(a.stats().cached_bytes, 16 << 10);
    // A different class does not fit until the cache is released; then it does.
    let big = a.alloc(12 << 10).unwrap();
    let s = a.stats();
    assert_eq!((s.cached_bytes, s.device_frees), (0, 4));
    assert_eq!(a.with_raw(|f| f.used), 12 << 10);
    // Beyond the device: an error that says how much was asked and what is held.
    let err = a.alloc(8 << 10).unwrap_err().to_string();
    assert!(err.contains("out of device memory"), "{err}");
    assert!(err.contains("8192") && err.contains("12288"), "{err}");
    drop(big);
    // The failed request left the accounting intact.
    let s = a.stats();
    assert_eq!(
        (s.in_use_bytes, s.live_blocks, s.cached_bytes),
        (0, 0, 12 << 10)
    );
}

// ---- the row-major → column-major GEMM mapping, on the CPU ----------------------------------

/// Apply a cuBLAS plan with a naive column-major GEMM (f64 accumulation): call-A is the
/// row-major `b`, call-B the row-major `a`. Checks the leading dimensions cuBLAS requires and
/// poisons the output so an element the plan does not write fails.
fn run_plan(p: &CublasGemm, a: &[f32], b: &[f32]) -> Vec<f32> {
    if p.is_empty() {
        return vec![];
    }
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let (lda, ldb, ldc) = (p.lda as usize, p.ldb as usize, p.ldc as usize);
    assert!(lda >= if p.transa { k } else { m }.max(1), "lda {p:?}");
    assert!(ldb >= if p.transb { n } else { k }.max(1), "ldb {p:?}");
    assert!(ldc >= m.max(1), "ldc {p:?}");
    let batch = p.batch as usize;
    let mut c = vec![f32::NAN; batch * p.stride_c as usize];
    let (call_a, call_b) = (b, a);
    for bi in 0..batch {
        let (oa, ob, oc) = (
            bi * p.stride_a as usize,
            bi * p.stride_b as usize,
            bi * p.stride_c as usize,
        );
        for j in 0..n {
            for i in 0..m {
                let mut acc = 0f64;
                for l in 0..k {
                    let x = if p.transa {
                        call_a[oa + l + i * lda]
                    } else {
                        call_a[oa + i + l * lda]
                    };
                    let y = if p.transb {
                        call_b[ob + j + l * ldb]
                    } else {
                        call_b[ob + l + j * ldb]
                    };
                    acc += x as f64 * y as f64;
                }
                c[oc + i + j * ldc] = if k == 0 { 0.0 } else { acc as f32 };
            }
        }
    }
    c
}

/// One case: batch dims of A and B (one of them may be empty = shared), m, n, k, flags.
struct Case {
    ba: Vec<usize>,
    bb: Vec<usize>,
    m: usize,
    n: usize,
    k: usize,
}

fn stored(batch: &[usize], r: usize, c: usize, t: bool) -> Vec<usize> {
    let mut s = batch.to_vec();
    s.extend(if t { [c, r] } else { [r, c] });
    s
}

fn check_case(case: &Case, ta: bool, tb: bool, seed: u64) {
    let a = Tensor::randn(stored(&case.ba, case.m, case.k, ta), 1.0, seed);
    let b = Tensor::randn(stored(&case.bb, case.k, case.n, tb), 1.0, seed + 1);
    let want = matmul(&a, &b, ta, tb).unwrap();
    let batch: usize = want.shape()[..want.rank() - 2].iter().product();
    let g = RowMajorGemm {
        ta,
        tb,
        batch,
        m: case.m,
        n: case.n,
        k: case.k,
        a_shared: case.ba.is_empty() && !case.bb.is_empty(),
        b_shared: case.bb.is_empty() && !case.ba.is_empty(),
    };
    let p = plan(&g).unwrap();
    if g.b_shared && !ta {
        assert_eq!(p.batch, 1, "shared B with plain A folds the batch: {p:?}");
    }
    let got = run_plan(&p, &a.to_vec(), &b.to_vec());
    let what = format!(
        "A{:?}{} · B{:?}{} plan {p:?}",
        a.shape(),
        if ta { "ᵀ" } else { "" },
        b.shape(),
        if tb { "ᵀ" } else { "" }
    );
    assert_eq!(got.len(), want.numel(), "{what}");
    let got = Tensor::from_vec(got, want.dims()).unwrap();
    let err = got.rel_err(&want);
    assert!(err <= 1e-5, "{what}: rel err {err}");
}

#[test]
fn gemm_plan_matches_cpu_matmul_for_every_layout() {
    let s = seed();
    let cases = [
        // plain 2-D, square and not, degenerate dims
        Case {
            ba: vec![],
            bb: vec![],
            m: 5,
            n: 7,
            k: 3,
        },
        Case {
            ba: vec![],
            bb: vec![],
            m: 16,
            n: 16,
            k: 16,
        },
        Case {
            ba: vec![],
            bb: vec![],
            m: 1,
            n: 9,
            k: 4,
        },
        Case {
            ba: vec![],
            bb: vec![],
            m: 6,
            n: 1,
            k: 1,
        },
        // batched, both sides
        Case {
            ba: vec![3],
            bb: vec![3],
            m: 4,
            n: 6,
            k: 5,
        },
        Case {
            ba: vec![2, 3],
            bb: vec![2, 3],
            m: 7,
            n: 2,
            k: 9,
        },
        // shared B (a Linear weight) and shared A
        Case {
            ba: vec![4],
            bb: vec![],
            m: 3,
            n: 5,
            k: 6,
        },
        Case {
            ba: vec![2, 2],
            bb: vec![],
            m: 5,
            n: 3,
            k: 2,
        },
        Case {
            ba: vec![],
            bb: vec![3],
            m: 6,
            n: 4,
            k: 7,
        },
        Case {
            ba: vec![],
            bb: vec![2, 3],
            m: 2,
            n: 5,
            k: 3,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        for ta in [false, true] {
            for tb in [false, true] {
                check_case(c, ta, tb, s + 10 * i as u64);
            }
        }
    }
}

#[test]
fn gemm_plan_edge_cases() {
    let g = |batch, m, n, k| RowMajorGemm {
        ta: false,
        tb: false,
        batch,
        m,
        n,
        k,
        a_shared: false,
        b_shared: false,
    };
    assert!(plan(&g(1, 0, 4, 3)).unwrap().is_empty());
    assert!(plan(&g(0, 2, 4, 3)).unwrap().is_empty());
    let z = plan(&g(2, 2, 4, 0)).unwrap();
    assert!(z.is_zero_fill() && !z.is_empty());
    assert!(z.lda >= 1 && z.ldb >= 1 && z.ldc >= 1);
    // The naive executor agrees that k = 0 is a zero matrix.
    assert!(run_plan(&z, &[], &[]).iter().all(|&x| x == 0.0));
    // Dimensions beyond cuBLAS's 32-bit ints are an error, not a wrapped int.
    let err = plan(&g(1, 1 << 31, 2, 2)).unwrap_err().to_string();
    assert!(err.contains("32-bit"), "{err}");
    let err = plan(&RowMajorGemm {
        b_shared: true,
        ..g(1 << 20, 1 << 12, 2, 2)
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("32-bit"), "{err}");
}

// ---- on a GPU -------------------------------------------------------------------------------

fn round(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).to_dtype(DType::F32)
}

/// Tolerance of ‖out−ref‖/‖ref‖ (DESIGN §7) for inputs of `input` and an output of `output`,
/// against a reference computed in f32 from the same (rounded) inputs.
fn tolerance(input: DType, output: DType) -> f64 {
    match (input, output) {
        (DType::F32, _) => 1e-5,
        (_, DType::F32) => 1e-4,
        (DType::F16, _) => 2e-3,
        (DType::BF16, _) => 1e-2,
    }
}

fn upload_as(be: &CudaBackend, t: &Tensor, dtype: DType) -> cuda::DeviceBlock {
    let v = t.to_vec();
    match dtype {
        DType::F32 => be.upload(&v).unwrap(),
        DType::F16 => be
            .upload(&v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>())
            .unwrap(),
        DType::BF16 => be
            .upload(&v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
            .unwrap(),
    }
}

fn download_f32(be: &CudaBackend, addr: u64, n: usize, dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => be.download::<f32>(addr, n).unwrap(),
        DType::F16 => be
            .download::<f16>(addr, n)
            .unwrap()
            .iter()
            .map(|x| x.to_f32())
            .collect(),
        DType::BF16 => be
            .download::<bf16>(addr, n)
            .unwrap()
            .iter()
            .map(|x| x.to_f32())
            .collect(),
    }
}

#[test]
fn gpu_gemm_wrapper_matches_cpu() {
    let Some(be) = gpu_or_skip("gpu_gemm_wrapper_matches_cpu") else {
        return;
    };
    let s = seed();
    let cases = [
        Case {
            ba: vec![],
            bb: vec![],
            m: 33,
            n: 17,
            k: 65,
        },
        Case {
            ba: vec![3],
            bb: vec![3],
            m: 20,
            n: 12,
            k: 40,
        },
        Case {
            ba: vec![4],
            bb: vec![],
            m: 9,
            n: 64,
            k: 24,
        },
        Case {
            ba: vec![],
            bb: vec![2],
            m: 16,
            n: 8,
            k: 31,
        },
    ];
    let combos = [
        (DType::F32, DType::F32),
        (DType::F16, DType::F16),
        (DType::F16, DType::F32),
        (DType::BF16, DType::BF16),
        (DType::BF16, DType::F32),
    ];
    for (ci, c) in cases.iter().enumerate() {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = Tensor::randn(stored(&c.ba, c.m, c.k, ta), 1.0, s + ci as u64);
            let b = Tensor::randn(stored(&c.bb, c.k, c.n, tb), 1.0, s + 100 + ci as u64);
            let batch: usize = if c.ba.is_empty() { &c.bb } else { &c.ba }.iter().product();
            let p = plan(&RowMajorGemm {
                ta,
                tb,
                batch,
                m: c.m,
                n: c.n,
                k: c.k,
                a_shared: c.ba.is_empty() && !c.bb.is_empty(),
                b_shared: c.bb.is_empty() && !c.ba.is_empty(),
            })
            .unwrap();
            for &(input, output) in &combos {
                let want = matmul(&round(&a, input), &round(&b, input), ta, tb).unwrap();
                let (da, db) = (upload_as(&be, &a, input), upload_as(&be, &b, input));
                for lt in [false, true] {
                    // Poison the output (NaN) so an unwritten element fails.
                    let nan = Tensor::full(f32::NAN, [want.numel()]);
                    let dc = upload_as(&be, &nan, output);
                    let args = GemmArgs {
                        a: da.address(),
                        b: db.address(),
                        c: dc.address(),
                        input,
                        output,
                        tf32: false,
                    };
                    unsafe {
                        if lt {
                            be.gemm_lt(&p, &args, None).unwrap()
                        } else {
                            be.gemm(&p, &args).unwrap()
                        }
                    };
                    let got = download_f32(&be, dc.address(), want.numel(), output);
                    let got = Tensor::from_vec(got, want.dims()).unwrap();
                    let err = got.rel_err(&want);
                    let tol = tolerance(input, output);
                    assert!(
                        err <= tol,
                        "{} {input}->{output} case {ci} ta {ta} tb {tb}: rel err {err} > {tol}",
                        if lt { "cuBLASLt" } else { "cuBLAS" }
                    );
                }
            }
        }
    }
}

#[test]
fn gpu_matmul_op_matches_cpu() {
    let Some(be) = gpu_or_skip("gpu_matmul_op_matches_cpu") else {
        return;
    };
    let gpu = Device::Cuda(be.ordinal());
    let s = seed();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // [B, T, D] · Wᵀ with a shared weight (a Linear), then attention-like batched products.
        let x = round(&Tensor::randn([4, 10, 32], 1.0, s), dtype);
        let w = round(&Tensor::randn([24, 32], 0.5, s + 1), dtype);
        let want = matmul(&x, &w, false, true).unwrap();
        let (xg, wg) = (
            x.to_dtype(dtype).to_device(gpu).unwrap(),
            w.to_dtype(dtype).to_device(gpu).unwrap(),
        );
        let got = matmul(&xg, &wg, false, true).unwrap();
        assert_eq!((got.device(), got.dtype()), (gpu, dtype));
        let got = got.to_device(Device::Cpu).unwrap();
        let err = got.rel_err(&want);
        assert!(err <= tolerance(dtype, dtype), "{dtype} linear: {err}");

        // A transposed view is read in place with the flag flipped.
        let q = Tensor::randn([3, 8, 16], 1.0, s + 2);
        let k = Tensor::randn([3, 8, 16], 1.0, s + 3);
        let (q, k) = (round(&q, dtype), round(&k, dtype));
        let want = matmul(&q, &k, false, true).unwrap();
        let kt = k
            .to_dtype(dtype)
            .to_device(gpu)
            .unwrap()
            .transpose(-1, -2)
            .unwrap();
        let qg = q.to_dtype(dtype).to_device(gpu).unwrap();
        let got = matmul(&qg, &kt, false, false).unwrap();
        let err = got.to_device(Device::Cpu).unwrap().rel_err(&want);
        assert!(err <= tolerance(dtype, dtype), "{dtype} qkᵀ view: {err}");

        // Bias in the cuBLASLt epilogue, f32 output.
        let bias = Tensor::randn([24], 1.0, s + 4);
        let want = clipcu::ops::binary::add(&matmul(&x, &w, false, true).unwrap(), &bias).unwrap();
        let opts = GemmOptions {
            out_dtype: Some(DType::F32),
            bias: Some(&bias.to_device(gpu).unwrap()),
            lt: true,
        };
        let got = clipcu::ops::matmul::gpu::gemm(&xg, &wg, false, true, &opts).unwrap();
        let err = got.to_device(Device::Cpu).unwrap().rel_err(&want);
        assert!(err <= tolerance(dtype, DType::F32), "{dtype} bias: {err}");
    }
    // Operands and a bias that start mid-buffer (views at odd element offsets): cuBLASLt is told
    // their real alignment, and a bias its epilogue cannot read is added after a plain GEMM.
    for (off_x, off_bias) in [(1usize, 1usize), (2, 3), (4, 0), (0, 2)] {
        let x = Tensor::randn([off_x + 4 * 10 * 32], 1.0, s + 5);
        let bias = Tensor::randn([off_bias + 24], 1.0, s + 6);
        let w = Tensor::randn([24, 32], 0.5, s + 7);
        let xv = |t: &Tensor| {
            t.narrow(0, off_x, 4 * 10 * 32)
                .unwrap()
                .reshape([4, 10, 32])
                .unwrap()
        };
        let bv = |t: &Tensor| t.narrow(0, off_bias, 24).unwrap();
        let want = clipcu::ops::binary::add(&matmul(&xv(&x), &w, false, true).unwrap(), &bv(&bias))
            .unwrap();
        let (xg, bg, wg) = (
            x.to_device(gpu).unwrap(),
            bias.to_device(gpu).unwrap(),
            w.to_device(gpu).unwrap(),
        );
        let opts = GemmOptions {
            out_dtype: Some(DType::F32),
            bias: Some(&bv(&bg)),
            lt: true,
        };
        let got = clipcu::ops::matmul::gpu::gemm(&xv(&xg), &wg, false, true, &opts).unwrap();
        let err = got.to_device(Device::Cpu).unwrap().rel_err(&want);
        assert!(err <= 1e-5, "x at +{off_x}, bias at +{off_bias}: {err}");
    }
    // Mixed dtypes and host operands are errors.
    let a = Tensor::randn([2, 3], 1.0, s).to_device(gpu).unwrap();
    let b = Tensor::randn([3, 2], 1.0, s)
        .to_dtype(DType::F16)
        .to_device(gpu)
        .unwrap();
    assert!(matches!(
        matmul(&a, &b, false, false),
        Err(Error::DType { .. })
    ));
    let h = Tensor::randn([3, 2], 1.0, s);
    assert!(matches!(
        matmul(&a, &h, false, false),
        Err(Error::Device { .. })
    ));
}

#[test]
fn gpu_copies_round_trip() {
    let Some(be) = gpu_or_skip("gpu_copies_round_trip") else {
        return;
    };
    let gpu = Device::Cuda(be.ordinal());
    let t = Tensor::randn([5, 6, 7], 1.0, seed());
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let h = t.to_dtype(dtype);
        let g = h.to_device(gpu).unwrap();
        assert_eq!((g.device(), g.dtype(), g.shape()), (gpu, dtype, h.shape()));
        assert_eq!(
            g.to_device(Device::Cpu).unwrap().to_le_bytes(),
            h.to_le_bytes()
        );
        // Views: a narrow (offset) and a permute (strides) come back in the view's order.
        let v = g.narrow(1, 2, 3).unwrap().permute(&[2, 0, 1]).unwrap();
        let hv = h.narrow(1, 2, 3).unwrap().permute(&[2, 0, 1]).unwrap();
        assert_eq!(
            v.to_device(Device::Cpu).unwrap().to_le_bytes(),
            hv.to_le_bytes()
        );
        assert_eq!(v.contiguous().device(), gpu);
        assert_eq!(v.to_vec(), hv.to_vec());
        // dtype conversion of a device tensor stays on the device.
        let f = g.to_dtype(DType::F32);
        assert_eq!((f.device(), f.dtype()), (gpu, DType::F32));
        assert_eq!(f.to_vec(), h.to_vec());
    }
    // Host reads of device data are errors that say what to do.
    let g = t.to_device(gpu).unwrap();
    let err = g.f32s("test").unwrap_err().to_string();
    assert!(err.contains("to_device"), "{err}");
}

#[test]
fn gpu_allocator_reaches_steady_state() {
    let Some(be) = gpu_or_skip("gpu_allocator_reaches_steady_state") else {
        return;
    };
    let gpu = Device::Cuda(be.ordinal());
    let x = Tensor::randn([8, 64, 96], 1.0, seed())
        .to_device(gpu)
        .unwrap();
    let w = Tensor::randn([128, 96], 1.0, seed())
        .to_device(gpu)
        .unwrap();
    let step = || {
        let h = matmul(&x, &w, false, true).unwrap();
        let g = matmul(&h, &w, false, false).unwrap();
        drop(h);
        g.to_device(Device::Cpu).unwrap()
    };
    step();
    let first = be.memory_stats();
    for _ in 0..20 {
        step();
    }
    let s = be.memory_stats();
    assert_eq!(s.device_allocs, first.device_allocs, "{first:?} -> {s:?}");
    assert!(s.cache_hits > first.cache_hits);
}

#[test]
fn gpu_event_timing() {
    let Some(be) = gpu_or_skip("gpu_event_timing") else {
        return;
    };
    let gpu = Device::Cuda(be.ordinal());
    let a = Tensor::randn([512, 512], 1.0, seed())
        .to_device(gpu)
        .unwrap();
    let (c, ms) = be.time_ms(|| matmul(&a, &a, false, false)).unwrap();
    assert!(ms.is_finite() && ms > 0.0, "{ms} ms");
    assert_eq!(c.shape(), &[512, 512]);
    // An error inside is passed through.
    let bad = be.time_ms(|| matmul(&a, &Tensor::zeros([3, 3]), false, false));
    assert!(bad.is_err());
}

// ---- batch uploads ahead of their step (device::upload) --------------------------------------

/// The double-buffered uploader, as the trainer drives it: batch k+1 is staged while kernels
/// queued for batch k still read theirs; every batch arrives intact (against its host values),
/// also when a caller keeps a batch (its slot then gets a fresh buffer) and when the batch's
/// shape changes. On Emu a plain copy; on cuda:0 (when present) the copy stream, page-locked
/// buffers and events — with a long chain of kernels on each batch so that copies overlap them.
#[test]
fn staged_batches_arrive_intact_while_earlier_ones_are_computed_on() {
    use clipcu::device::upload::BatchUploader;
    use clipcu::ops::unary::scale;
    let base = seed();
    for device in common::model_devices() {
        let mut up = BatchUploader::new(device).unwrap();
        let shape = |k: u64| {
            if k == 5 {
                vec![3, 7]
            } else {
                vec![64, 3, 32, 32]
            }
        };
        let host = |k: u64| clipcu::Tensor::randn(shape(k), 1.0, base ^ k);
        let mut staged = Some(up.upload(&host(0)).unwrap());
        let mut kept = Vec::new();
        for k in 0..8u64 {
            let batch = staged.take().unwrap().ready().unwrap();
            // work on the batch, queued before the next upload starts
            let mut y = scale(&batch, 1.0).unwrap();
            for _ in 0..20 {
                y = scale(&y, 1.0).unwrap();
            }
            if k + 1 < 8 {
                staged = Some(up.upload(&host(k + 1)).unwrap());
            }
            let got = y.to_device(Device::Cpu).unwrap().to_vec();
            assert_eq!(got, host(k).to_vec(), "{device}: batch {k} (seed {base})");
            up.release(&batch).unwrap();
            if k == 2 {
                kept.push(batch); // held past its step: its slot must not be overwritten
            }
        }
        assert_eq!(
            kept[0].to_device(Device::Cpu).unwrap().to_vec(),
            host(2).to_vec(),
            "{device}: a kept batch was overwritten (seed {base})"
        );
    }
}

// ---- host-side rules that need no GPU --------------------------------------------------------

#[test]
fn cublaslt_alignment_is_what_every_batch_entry_has() {
    use clipcu::device::cuda::gemm::{lt_bias_aligned, lt_min_alignment};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    for _ in 0..2000 {
        let addr: u64 = rng.random_range(0..1 << 40) & !3; // f32 views: 4-byte multiples
        let stride: u64 = 4 * rng.random_range(1..100_000);
        let batch = rng.random_range(1..5);
        let a = lt_min_alignment(addr, stride, batch) as u64;
        assert!(a.is_power_of_two() && (4..=256).contains(&a), "{a}");
        // every entry is aligned to it, and (below 256) the next power of two fails one entry
        let entries: Vec<u64> = (0..batch as u64).map(|i| addr + i * stride).collect();
        assert!(
            entries.iter().all(|e| e % a == 0),
            "{addr:#x} {stride} {batch}: {a}"
        );
        if a < 256 {
            assert!(
                entries.iter().any(|e| e % (2 * a) != 0),
                "{addr:#x} {stride} {batch}: {a}"
            );
        }
    }
    assert_eq!(lt_min_alignment(0x7f00_0000_0000, 3 * 4, 1), 256);
    assert!(lt_bias_aligned(0x1000) && lt_bias_aligned(0x1010));
    assert!(!lt_bias_aligned(0x1004) && !lt_bias_aligned(0x1008));
}

#[test]
fn allocation_mode_switch_and_fallback() {
    use clipcu::device::cuda::alloc::AllocMode;
    assert_eq!(AllocMode::from_env_value(None).unwrap(), None);
    assert_eq!(AllocMode::from_env_value(Some("auto")).unwrap(), None);
    assert_eq!(
        AllocMode::from_env_value(Some("sync")).unwrap(),
        Some(AllocMode::Sync)
    );
    assert_eq!(
        AllocMode::from_env_value(Some(" async ")).unwrap(),
        Some(AllocMode::Async)
    );
    let e = AllocMode::from_env_value(Some("pool"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("CLIPCU_CUDA_ALLOC=pool") && e.contains("sync"),
        "{e}"
    );
    let unsupported = RawAllocError {
        out_of_memory: false,
        msg: "CUDA_ERROR_NOT_SUPPORTED".into(),
    };
    let oom = RawAllocError {
        out_of_memory: true,
        msg: "CUDA_ERROR_OUT_OF_MEMORY".into(),
    };
    assert_eq!(
        AllocMode::Async.fallback(false, &unsupported),
        Some(AllocMode::Sync)
    );
    assert_eq!(
        AllocMode::Async.fallback(true, &unsupported),
        None,
        "forced async stays"
    );
    assert_eq!(
        AllocMode::Async.fallback(false, &oom),
        None,
        "OOM is not a pool problem"
    );
    assert_eq!(AllocMode::Sync.fallback(false, &unsupported), None);
}

#[test]
fn loaded_cuda_libraries_from_proc_maps() {
    let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.03
7f0000001000-7f0000002000 r-xp 00001000 08:01 1234 /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.03
7f0000003000-7f0000004000 r--p 00000000 08:01 99 /opt/venv/nvidia/cublas/lib/libcublasLt.so.13
7f0000005000-7f0000006000 r--p 00000000 08:01 98 /opt/venv/nvidia/cublas/lib/libcublas.so.13
7f0000007000-7f0000008000 r--p 00000000 08:01 97 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000009000-7f000000a000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00001000 rw-p 00000000 00:00 0 [stack]
";
    assert_eq!(
        cuda::cuda_libraries_in_maps(maps),
        vec![
            "/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.03",
            "/opt/venv/nvidia/cublas/lib/libcublasLt.so.13",
            "/opt/venv/nvidia/cublas/lib/libcublas.so.13",
        ]
    );
}
