//! Shared test helpers: the finite-difference gradient check.
#![allow(dead_code)]

pub mod half;

use clipcu::{Graph, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

/// Options of a gradient check.
#[derive(Clone, Copy)]
pub struct Check {
    /// Finite-difference step.
    pub h: f32,
    /// Allowed ‖analytic − numeric‖ / ‖numeric‖ over the sampled entries of one input.
    pub tol: f64,
    /// Entries sampled per input (all of them when the input is smaller).
    pub samples: usize,
    /// Absolute ‖analytic − numeric‖ that passes whatever the relative error (for gradients that
    /// are exactly zero, where the numeric one is rounding noise).
    pub atol: f64,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            h: 1e-2,
            tol: 1e-2,
            samples: 24,
            atol: 1e-4,
        }
    }
}

/// A fresh seed per call, printed on failure so that a failing case can be replayed.
/// A fresh random seed per call, or `CLIPCU_TEST_SEED` when set (to rerun a failure: every
/// test prints the seed it used in its failure message).
pub fn fresh_seed() -> u64 {
    if let Some(s) = std::env::var("CLIPCU_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return s;
    }
    let s: u64 = rand::rng().random();
    s
}

/// Σ f(xs)·r accumulated in f64, on a graph that records nothing.
fn probe(f: &dyn Fn(&Graph, &[Var]) -> Result<Var>, xs: &[Tensor], r: &[f32]) -> f64 {
    let g = Graph::inference();
    let vars: Vec<Var> = xs.iter().map(|t| g.constant(t.clone())).collect();
    let out = f(&g, &vars)
        .expect("forward in gradcheck")
        .into_tensor()
        .to_vec();
    out.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Checks the backward rules used by `f` against central differences of `L = Σ f(xs)·R` for a
/// random `R`, on every input in `grad_inputs` (indices into `xs`); the other inputs are constants.
pub fn gradcheck_some(
    name: &str,
    xs: &[Tensor],
    grad_inputs: &[usize],
    opts: Check,
    f: impl Fn(&Graph, &[Var]) -> Result<Var>,
) {
    let seed = fresh_seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let g = Graph::new();
    let vars: Vec<Var> = xs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if grad_inputs.contains(&i) {
                g.leaf(t.clone())
            } else {
                g.constant(t.clone())
            }
        })
        .collect();
    let out = f(&g, &vars).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let r = Tensor::randn(out.shape().to_vec(), 1.0, rng.random());
    let rv = r.to_vec();
    let grads = g
        .backward_with(&out, r)
        .unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));
    for &i in grad_inputs {
        let analytic = grads
            .get(&vars[i])
            .unwrap_or_else(|| panic!("{name}: no gradient for input {i}"));
        assert_eq!(
            analytic.shape(),
            xs[i].shape(),
            "{name}: gradient shape of input {i}"
        );
        let a = analytic.to_vec();
        let n = xs[i].numel();
        let idx: Vec<usize> = if n <= opts.samples {
            (0..n).collect()
        } else {
            (0..opts.samples).map(|_| rng.random_range(0..n)).collect()
        };
        let (mut num2, mut den2) = (0f64, 0f64);
        let mut rows = Vec::new();
        for &j in &idx {
            let mut plus = xs.to_vec();
            let mut minus = xs.to_vec();
            let mut vp = xs[i].to_vec();
            let mut vm = vp.clone();
            vp[j] += opts.h;
            vm[j] -= opts.h;
            plus[i] = Tensor::from_vec(vp, xs[i].shape().to_vec()).unwrap();
            minus[i] = Tensor::from_vec(vm, xs[i].shape().to_vec()).unwrap();
            let numeric = (probe(&f, &plus, &rv) - probe(&f, &minus, &rv)) / (2.0 * opts.h as f64);
            assert!(
                a[j].is_finite(),
                "{name}: non-finite analytic gradient of input {i}[{j}] (seed {seed})"
            );
            num2 += (a[j] as f64 - numeric).powi(2);
            den2 += numeric.powi(2);
            rows.push((j, a[j], numeric));
        }
        let rel = num2.sqrt() / den2.sqrt().max(1e-12);
        assert!(
            rel < opts.tol || num2.sqrt() < opts.atol,
            "{name}: input {i} gradient off by {rel:.3e} (tol {:.0e}, seed {seed}); (index, analytic, numeric): {:?}",
            opts.tol,
            &rows[..rows.len().min(8)]
        );
    }
}

/// `gradcheck_some` on every input.
pub fn gradcheck(
    name: &str,
    xs: &[Tensor],
    opts: Check,
    f: impl Fn(&Graph, &[Var]) -> Result<Var>,
) {
    let all: Vec<usize> = (0..xs.len()).collect();
    gradcheck_some(name, xs, &all, opts, f);
}

/// A random normal tensor from a fresh seed.
pub fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(shape.to_vec(), 1.0, fresh_seed())
}

/// splitmix64, the generator `tools/make_train_fixture.py` uses for its batches.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The training batch of `step` exactly as `tools/make_train_fixture.py` makes it: images
/// [batch, 3, s, s] with 24-bit uniform values in [-1, 1), and token rows [batch, ctx] with 998 at
/// the start, ids in 1..=997, and the EOT 999 at a random end.
pub fn train_batch(step: u64, batch: usize, image_size: usize, ctx: usize) -> (Tensor, Vec<u32>) {
    let n = batch * 3 * image_size * image_size;
    let images: Vec<f32> = (0..n as u64)
        .map(|i| {
            let bits = splitmix64(i + (1 << 40) + (step << 24)) >> 40;
            (bits as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect();
    let r: Vec<u64> = (0..(batch * ctx) as u64)
        .map(|i| splitmix64(i + (2 << 40) + (step << 24)))
        .collect();
    let mut ids = vec![0u32; batch * ctx];
    for i in 0..batch {
        let end = 2 + (r[i * ctx] % (ctx as u64 - 2)) as usize;
        ids[i * ctx] = 998;
        for j in 1..end {
            ids[i * ctx + j] = 1 + (r[i * ctx + j] % 997) as u32;
        }
        ids[i * ctx + end] = 999;
    }
    (
        Tensor::from_vec(images, [batch, 3, image_size, image_size]).unwrap(),
        ids,
    )
}

/// Kernel tests of this binary that ran without their cuda:0 pass.
static CUDA_SKIPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static CUDA_SKIP_REASON: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// At process exit (after libtest's own summary, outside any test's output capture): one line
/// saying how many kernel tests of this binary skipped their Cuda run and why, so that "ok"
/// above is not read as "passed on the GPU".
extern "C" fn report_cuda_skips() {
    use std::io::Write;
    let n = CUDA_SKIPPED.load(std::sync::atomic::Ordering::SeqCst);
    if n > 0 {
        let reason = CUDA_SKIP_REASON.get().map(String::as_str).unwrap_or("");
        let _ = writeln!(
            std::io::stderr(),
            "kernel tests: {n} test(s) SKIPPED their cuda:0 run (ran on Emu only): {reason}"
        );
    }
}

extern "C" {
    fn atexit(f: extern "C" fn()) -> std::os::raw::c_int;
}

/// (device, reverse lane order) pairs every kernel test case runs on: Emu in normal and reverse
/// lane order, and the GPU when one is present. Without one the Cuda run is skipped — counted, and
/// reported at exit by [`report_cuda_skips`], never passed; with `CLIPCU_REQUIRE_CUDA=1` (GPU
/// machines: tools/gpu-check.sh) a missing GPU fails the test instead.
pub fn kernel_runs() -> Vec<(clipcu::Device, bool)> {
    use clipcu::Device;
    let mut v = vec![(Device::Emu, false), (Device::Emu, true)];
    match Device::Cuda(0).ensure_available() {
        Ok(()) => v.push((Device::Cuda(0), false)),
        Err(e) => skip_cuda_run(&e.to_string()),
    }
    v
}

/// Whether this run must have a GPU (`CLIPCU_REQUIRE_CUDA` set and not `0`: GPU machines,
/// tools/gpu-check.sh), so that a skipped Cuda run is a failure.
pub fn cuda_required() -> bool {
    std::env::var("CLIPCU_REQUIRE_CUDA").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A test's Cuda run cannot happen (`reason`): a failure under [`cuda_required`], otherwise counted
/// and reported at exit by [`report_cuda_skips`] — a skip, never a pass.
pub fn skip_cuda_run(reason: &str) {
    if cuda_required() {
        panic!("CLIPCU_REQUIRE_CUDA is set but cuda:0 is unavailable: {reason}");
    }
    eprintln!("kernel tests: cuda:0 SKIPPED ({reason})");
    static REGISTER: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain extern "C" function with no captured state.
    REGISTER.call_once(|| unsafe {
        atexit(report_cuda_skips);
    });
    CUDA_SKIP_REASON.get_or_init(|| reason.to_string());
    CUDA_SKIPPED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// The devices a whole-model test (training, transfers) runs on: Emu always, in normal lane
/// order (whole steps are too long to run twice), and cuda:0 when present — a missing GPU is a
/// counted skip as in [`kernel_runs`], a failure under `CLIPCU_REQUIRE_CUDA=1`.
pub fn model_devices() -> Vec<clipcu::Device> {
    use clipcu::Device;
    let mut v = vec![Device::Emu];
    match Device::Cuda(0).ensure_available() {
        Ok(()) => v.push(Device::Cuda(0)),
        Err(e) => skip_cuda_run(&e.to_string()),
    }
    v
}

/// Run `f(device, tag)` on every [`kernel_runs`] pair, with the emulator's lane order set.
pub fn on_each_kernel_device(mut f: impl FnMut(clipcu::Device, &str)) {
    for (device, reverse) in kernel_runs() {
        let tag = format!("{device}{}", if reverse { " (reverse)" } else { "" });
        clipcu::device::emu::with_reverse(reverse, || f(device, &tag));
    }
}

/// A kernel's output against the CPU reference: same shape, relative error < 1e-5 (f32).
pub fn check_kernel(what: &str, tag: &str, seed: u64, out: &Tensor, reference: &Tensor) {
    check_kernel_tol(what, tag, seed, out, reference, 1e-5);
}

/// For backward kernels whose result is a difference of nearly equal terms (softmax's
/// `y·(dy − Σ dy·y)`, L2 normalize's `(dy − y·(y·dy))/‖x‖`): the kernel's warp-order sums differ
/// from the CPU's sequential ones by rounding that the subtraction magnifies, so 1e-4 (1.4e-5 seen
/// on fresh seeds at 1e-5).
pub fn check_kernel_grad(what: &str, tag: &str, seed: u64, out: &Tensor, reference: &Tensor) {
    check_kernel_tol(what, tag, seed, out, reference, 1e-4);
}

pub fn check_kernel_tol(
    what: &str,
    tag: &str,
    seed: u64,
    out: &Tensor,
    reference: &Tensor,
    tol: f64,
) {
    assert_eq!(out.shape(), reference.shape(), "{what} on {tag}");
    let err = out.rel_err(reference);
    assert!(
        err < tol,
        "{what} on {tag}, seed={seed}: rel err {err} (tol {tol:e})"
    );
}

/// Forward and backward of `f` on `device`: the inputs `xs` (CPU tensors) moved there as graph
/// leaves, the output seeded with `dy`; returns the output and each input's gradient, all on the
/// host. Run it on Cpu for the reference and on a kernel device for the check.
pub fn graph_grads(
    device: clipcu::Device,
    xs: &[Tensor],
    dy: &Tensor,
    f: impl Fn(&Graph, &[Var]) -> Result<Var>,
) -> (Tensor, Vec<Tensor>) {
    use clipcu::Device;
    let g = Graph::new();
    let vars: Vec<Var> = xs
        .iter()
        .map(|t| g.leaf(t.to_device(device).unwrap()))
        .collect();
    let out = f(&g, &vars).unwrap_or_else(|e| panic!("forward on {device}: {e}"));
    assert_eq!(out.tensor().device(), device, "forward output device");
    let grads = g
        .backward_with(&out, dy.to_device(device).unwrap())
        .unwrap_or_else(|e| panic!("backward on {device}: {e}"));
    let gs = vars
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let t = grads
                .get(v)
                .unwrap_or_else(|| panic!("no gradient for input {i} on {device}"));
            assert_eq!(t.device(), device, "gradient {i} device");
            t.to_device(Device::Cpu).unwrap()
        })
        .collect();
    (out.into_tensor().to_device(Device::Cpu).unwrap(), gs)
}
