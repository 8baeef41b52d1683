//! Attention on the kernel devices against the CPU reference (DESIGN §7): scaled dot-product
//! attention composed from batched device GEMMs, `scale_fwd_f32` and the (causal) softmax
//! kernels, forward and backward (dq, dk, dv through `softmax_bwd_f32`), and the whole
//! `MultiheadAttention` layer (fused qkv linear, head split by views, attention, merge, out
//! projection) with every parameter gradient. Sequence lengths 1, 7, 50, 77 and 197 (CLIP's text
//! and ViT-B/16 token counts), head widths that are not multiples of 32; fresh random data.
//! Emu in normal and reverse lane order; Cuda when a GPU is present (else SKIPPED).

mod common;
use common::{
    check_kernel as check, check_kernel_grad, graph_grads, on_each_kernel_device as on_each,
};

use clipcu::nn::{Init, Module, MultiheadAttention};
use clipcu::{Device, Graph, Tensor};
use rand::SeedableRng;

#[test]
fn attention_fwd_bwd_match_cpu() {
    on_each(|device, tag| {
        // (B, H, Tq, Tk, Dh, Dv, causal)
        for (b, h, tq, tk, dh, dv, causal) in [
            (1, 1, 1, 1, 1, 1, false),
            (1, 1, 1, 1, 8, 8, true),
            (2, 3, 7, 50, 5, 9, false),
            (1, 2, 77, 77, 16, 16, true),
            (2, 1, 197, 197, 12, 12, false),
            (1, 2, 50, 7, 33, 7, false),
        ] {
            let seed = common::fresh_seed();
            let q = Tensor::randn([b, h, tq, dh], 1.0, seed);
            let k = Tensor::randn([b, h, tk, dh], 1.0, seed + 1);
            let v = Tensor::randn([b, h, tk, dv], 1.0, seed + 2);
            let dy = Tensor::randn([b, h, tq, dv], 1.0, seed + 3);
            let f = |g: &Graph, x: &[clipcu::Var]| g.attention(&x[0], &x[1], &x[2], causal);
            let xs = [q, k, v];
            let (out, grads) = graph_grads(device, &xs, &dy, f);
            let (want, want_grads) = graph_grads(Device::Cpu, &xs, &dy, f);
            let what = format!("attention [{b},{h}] {tq}x{tk} dh={dh} dv={dv} causal={causal}");
            check(&what, tag, seed, &out, &want);
            for (i, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
                // dq and dk go through softmax's backward (a difference of nearly equal terms)
                check_kernel_grad(&format!("{what} d{}", ["q", "k", "v"][i]), tag, seed, g, w);
            }
        }
    });
}

#[test]
fn multihead_attention_layer_and_param_grads_match_cpu() {
    on_each(|device, tag| {
        for (b, t, width, heads, causal) in [(2, 7, 32, 2, true), (1, 50, 48, 3, false)] {
            let seed = common::fresh_seed();
            let mk = || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                MultiheadAttention::new(
                    "attn",
                    width,
                    heads,
                    Init::Normal(0.2),
                    Init::Normal(0.2),
                    &mut rng,
                )
            };
            let (cpu, dev) = (mk(), mk());
            dev.to_device(device).unwrap();
            let x = Tensor::randn([b, t, width], 1.0, seed + 1);
            let dy = Tensor::randn([b, t, width], 1.0, seed + 2);
            let run = |m: &MultiheadAttention, d: Device| {
                let g = Graph::new();
                let xv = g.leaf(x.to_device(d).unwrap());
                let y = m.forward(&g, &xv, causal).unwrap();
                let grads = g.backward_with(&y, dy.to_device(d).unwrap()).unwrap();
                (y.into_tensor(), grads.get(&xv).unwrap().clone())
            };
            let (y, dx) = run(&dev, device);
            let (want, want_dx) = run(&cpu, Device::Cpu);
            let what = format!("MultiheadAttention b={b} t={t} w={width} h={heads}");
            check(&what, tag, seed, &y, &want);
            check_kernel_grad(&format!("{what} dx"), tag, seed, &dx, &want_dx);
            for (pd, pc) in dev.parameters().iter().zip(cpu.parameters()) {
                let (gd, gc) = (pd.grad().unwrap(), pc.grad().unwrap());
                assert_eq!(gd.device(), device);
                check_kernel_grad(&format!("{what} d{}", pc.name()), tag, seed, &gd, &gc);
            }
        }
    });
}
