//! The fused attention kernels (`kernels/attention.cu`, `Graph::attention_packed`) on Emu/Cuda
//! against the CPU's composed path on the same packed projection — `split_qkv_heads`, the
//! recorded attention (softmax over the materialised scores), `merge_heads` — forward and the
//! gradient of qkv, at CLIP's sequence lengths (1, 7, 50, 77 causal, 197) and head dims 64
//! (CLIP's), 32 and 16 (the tiny configs) and one off the warp (24): f32 within 1e-5; f16/bf16
//! against the f32 reference on the same rounded inputs within 2e-3 / 1e-2 (relative L2; the
//! tensor-core kernels accumulate in f32 and round only P and dS as mma operands and the outputs,
//! so the error is those roundings: ≈ 3e-4 / 2.5e-3 seen), at shapes that cut the 64-row blocks
//! and 32-row steps of the 16-bit kernels; bitwise repeatability for both kernel families. Both lane orders;
//! bitwise-repeatable runs; the graph keeps no T×T tensor; unsupported head dims are an error.
//! The CPU's packed path (`fused.rs`) is held to the same composed reference.

mod common;
use common::on_each_kernel_device as on_each;

use clipcu::{DType, Device, Graph, Tensor, Var};

/// The composed reference on the CPU: out [B·T, D] of `qkv` [B·T, 3D].
fn composed(g: &Graph, qkv: &Var, b: usize, h: usize, causal: bool) -> clipcu::Result<Var> {
    let (t, d) = (qkv.shape()[0] / b, qkv.shape()[1] / 3);
    let dh = d / h;
    let qkv = g.permute(&g.reshape(qkv, [b, t, 3, h, dh])?, &[2, 0, 3, 1, 4])?;
    let split = |i| g.reshape(&g.narrow(&qkv, 0, i, 1)?, [b, h, t, dh]);
    let o = g.attention(&split(0)?, &split(1)?, &split(2)?, causal)?;
    g.reshape(&g.permute(&o, &[0, 2, 1, 3])?, [b * t, d])
}

/// (out, dqkv) on `device` through the fused op, both back on the host in f32.
fn fused(
    qkv: &Tensor,
    dy: &Tensor,
    b: usize,
    h: usize,
    causal: bool,
    device: Device,
) -> (Tensor, Tensor) {
    let g = Graph::new();
    let x = g.leaf(qkv.to_device(device).unwrap());
    let out = g.attention_packed(&x, b, h, causal).unwrap();
    assert_eq!(out.tensor().device(), device);
    assert_eq!(out.tensor().dtype(), qkv.dtype());
    let grads = g
        .backward_with(&out, dy.to_device(device).unwrap())
        .unwrap();
    let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_dtype(DType::F32);
    (host(out.tensor()), host(grads.get(&x).unwrap()))
}

fn reference(qkv: &Tensor, dy: &Tensor, b: usize, h: usize, causal: bool) -> (Tensor, Tensor) {
    common::graph_grads(Device::Cpu, std::slice::from_ref(qkv), dy, |g, x| {
        composed(g, &x[0], b, h, causal)
    })
    .map_grads()
}

trait MapGrads {
    fn map_grads(self) -> (Tensor, Tensor);
}
impl MapGrads for (Tensor, Vec<Tensor>) {
    fn map_grads(self) -> (Tensor, Tensor) {
        let (out, mut g) = self;
        (out, g.remove(0))
    }
}

const CASES: [(usize, usize, usize, usize, bool); 7] = [
    // (B, H, T, dh, causal)
    (1, 1, 1, 64, false),
    (2, 1, 7, 64, false),
    (1, 2, 50, 64, false),
    (1, 2, 77, 64, true),
    (1, 1, 197, 64, false),
    (2, 2, 33, 32, true),
    (1, 3, 20, 24, false),
];

#[test]
fn fused_attention_matches_the_composed_cpu_path_f32() {
    for (b, h, t, dh, causal) in CASES {
        let seed = common::fresh_seed();
        let qkv = Tensor::randn([b * t, 3 * h * dh], 1.0, seed);
        let dy = Tensor::randn([b * t, h * dh], 1.0, seed + 1);
        let (want, want_d) = reference(&qkv, &dy, b, h, causal);
        let what = format!("attention_packed B{b} H{h} T{t} dh{dh} causal={causal}");
        let check = |device, tag: &str| {
            let (out, d) = fused(&qkv, &dy, b, h, causal, device);
            common::check_kernel(&format!("{what} out"), tag, seed, &out, &want);
            common::check_kernel(&format!("{what} dqkv"), tag, seed, &d, &want_d);
        };
        // the CPU's packed path (per-head GEMMs from qkv) as well as the kernels
        check(Device::Cpu, "cpu");
        on_each(check);
    }
}

#[test]
fn fused_attention_16bit_matches_the_f32_reference_on_the_same_rounded_inputs() {
    // The tensor-core kernels own 64 rows per block and step over 32: T = 1, 7, 33, 50 (one
    // partial tile), 64 (exactly one), 65, 77, 197 (a partial last tile and step); causal at
    // T = 1, 7, 77, 197 (the diagonal inside a tile and a step); dh 16, 24 (a k step half
    // padding), 32, 64.
    for (b, h, t, dh, causal) in [
        (1, 1, 1, 64, true),
        (2, 1, 7, 64, true),
        (1, 2, 50, 64, false),
        (1, 1, 64, 16, true),
        (1, 1, 65, 64, false),
        (1, 1, 77, 64, true),
        (1, 1, 197, 64, false),
        (1, 1, 197, 64, true),
        (2, 2, 7, 16, false),
        (1, 2, 33, 24, false),
        (2, 1, 77, 32, true),
    ] {
        for (dtype, tol) in [(DType::F16, 2e-3), (DType::BF16, 1e-2)] {
            let seed = common::fresh_seed();
            let qkv = Tensor::randn([b * t, 3 * h * dh], 1.0, seed).to_dtype(dtype);
            let dy = Tensor::randn([b * t, h * dh], 1.0, seed + 1).to_dtype(dtype);
            let (want, want_d) = reference(
                &qkv.to_dtype(DType::F32),
                &dy.to_dtype(DType::F32),
                b,
                h,
                causal,
            );
            on_each(|device, tag| {
                let (out, d) = fused(&qkv, &dy, b, h, causal, device);
                let what =
                    format!("attention_packed {dtype} B{b} H{h} T{t} dh{dh} causal={causal}");
                println!(
                    "{what} on {tag}: rel err out {:.2e}, dqkv {:.2e}",
                    out.rel_err(&want),
                    d.rel_err(&want_d)
                );
                common::check_kernel_tol(&format!("{what} out"), tag, seed, &out, &want, tol);
                common::check_kernel_tol(&format!("{what} dqkv"), tag, seed, &d, &want_d, tol);
            });
        }
    }
}

#[test]
fn fused_attention_is_bitwise_repeatable_and_keeps_no_t_by_t_tensor() {
    let (b, h, t, dh) = (2, 2, 77, 64);
    let seed = common::fresh_seed();
    let qkv = Tensor::randn([b * t, 3 * h * dh], 1.0, seed);
    let dy = Tensor::randn([b * t, h * dh], 1.0, seed + 1);
    let a = fused(&qkv, &dy, b, h, true, Device::Emu);
    let c = fused(&qkv, &dy, b, h, true, Device::Emu);
    assert_eq!(a.0.to_vec(), c.0.to_vec(), "seed {seed}: out");
    assert_eq!(a.1.to_vec(), c.1.to_vec(), "seed {seed}: dqkv");
    // saved for backward: qkv, out and lse — O(B·T·D), against the composed path's B·H·T×T P
    let saved = |packed: bool| {
        let g = Graph::new();
        let x = g.leaf(qkv.to_device(Device::Emu).unwrap());
        let before = g.saved_bytes();
        let _out = if packed {
            g.attention_packed(&x, b, h, true).unwrap()
        } else {
            composed(&g, &x, b, h, true).unwrap()
        };
        g.saved_bytes() - before
    };
    let (fused_bytes, composed_bytes) = (saved(true), saved(false));
    let probabilities = b * h * t * t * 4;
    let want = (b * t * 3 * h * dh + b * t * h * dh + b * h * t) * 4;
    println!("saved for backward: fused {fused_bytes} B, composed {composed_bytes} B (P alone {probabilities} B)");
    assert_eq!(
        fused_bytes, want,
        "the fused op keeps exactly qkv, out and lse (no T×T tensor)"
    );
    assert!(
        composed_bytes >= probabilities,
        "the reference keeps P ({composed_bytes} B)"
    );
}

#[test]
fn fused_attention_16bit_is_bitwise_repeatable() {
    // the tensor-core kernels: every mma k step and every quad reduction in a fixed order
    let (b, h, t, dh) = (2, 2, 77, 64);
    for dtype in [DType::F16, DType::BF16] {
        let seed = common::fresh_seed();
        let qkv = Tensor::randn([b * t, 3 * h * dh], 1.0, seed).to_dtype(dtype);
        let dy = Tensor::randn([b * t, h * dh], 1.0, seed + 1).to_dtype(dtype);
        for causal in [false, true] {
            let a = fused(&qkv, &dy, b, h, causal, Device::Emu);
            let c = fused(&qkv, &dy, b, h, causal, Device::Emu);
            assert_eq!(a.0.to_vec(), c.0.to_vec(), "{dtype} seed {seed}: out");
            assert_eq!(a.1.to_vec(), c.1.to_vec(), "{dtype} seed {seed}: dqkv");
        }
    }
}

/// The error of a call that must fail (`what` says why it must).
fn refused(r: clipcu::Result<Var>, what: &str) -> String {
    match r {
        Ok(_) => panic!("accepted: {what}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_shapes_and_devices_are_errors_naming_the_op() {
    let g = Graph::new();
    let big = g.leaf(Tensor::zeros([4, 3 * 128]).to_device(Device::Emu).unwrap());
    let err = refused(g.attention_packed(&big, 1, 1, false), "head dim 128");
    assert!(
        err.contains("attention_packed") && err.contains("128") && err.contains("64"),
        "{err}"
    );
    let odd = g.leaf(Tensor::zeros([5, 12]).to_device(Device::Emu).unwrap());
    let err = refused(
        g.attention_packed(&odd, 2, 1, false),
        "B does not divide rows",
    );
    assert!(err.contains("[5, 12]"), "{err}");
    // the CPU takes any head dim
    let cpu = g.leaf(Tensor::randn([4, 3 * 128], 1.0, 1));
    assert_eq!(
        g.attention_packed(&cpu, 1, 1, false).unwrap().shape(),
        &[4, 128]
    );
}

#[test]
fn a_multihead_attention_layer_runs_packed_and_holds_no_t_by_t_tensor() {
    use clipcu::nn::{Init, MultiheadAttention};
    use rand::SeedableRng;
    let (b, t, heads, width) = (2, 77, 2, 128);
    let mut rng = rand::rngs::StdRng::seed_from_u64(common::fresh_seed());
    let layer = MultiheadAttention::new(
        "attn",
        width,
        heads,
        Init::Normal(0.05),
        Init::Normal(0.05),
        &mut rng,
    );
    let x = Tensor::randn([b, t, width], 1.0, common::fresh_seed());
    let saved = |device: Device| {
        clipcu::nn::Module::to_device(&layer, device).unwrap();
        let g = Graph::new();
        let xv = g.leaf(x.to_device(device).unwrap());
        let y = layer.forward(&g, &xv, true).unwrap();
        (
            g.saved_bytes(),
            y.into_tensor().to_device(Device::Cpu).unwrap(),
        )
    };
    let (cpu_bytes, cpu_y) = saved(Device::Cpu);
    let (emu_bytes, emu_y) = saved(Device::Emu);
    common::check_kernel("MultiheadAttention causal T77", "emu", 0, &emu_y, &cpu_y);
    // the in-projection's input x, qkv, the attention output (also the out-projection's input:
    // one storage) and the log-sum-exp; the composed path would add q, k, v copies and the
    // B·H·T×T probabilities instead of the lse
    let rows = b * t;
    let want = (rows * width + rows * 3 * width + rows * width + b * heads * t) * 4;
    println!(
        "saved for backward: {cpu_bytes} B (cpu), {emu_bytes} B (emu); P would be {} B",
        b * heads * t * t * 4
    );
    assert_eq!(cpu_bytes, want, "cpu: x, qkv, out, lse");
    assert_eq!(emu_bytes, want, "emu: x, qkv, out, lse");
}
