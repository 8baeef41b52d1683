//! `clipcu demo`: a small causal transformer trained for a few steps on a copy task (predict the
//! previous token), showing forward, backward, SGD and activation checkpointing on one screen.

use clipcu::nn::{Activation, BlockInit, Module, Transformer};
use clipcu::ops::{binary, unary};
use clipcu::{Graph, Param, Result, Tensor};
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Device: auto, cpu, cuda, cuda:N, emu.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 128)]
    pub width: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Recompute each block in backward instead of holding its activations.
    #[arg(long)]
    pub checkpointing: bool,
}

pub fn run(a: &DemoArgs) -> Result<()> {
    let (device, steps, layers, width, seed, checkpointing) = (
        a.device.as_str(),
        a.steps,
        a.layers,
        a.width,
        a.seed,
        a.checkpointing,
    );
    let heads = (width / 64).max(1);
    if width == 0 || width % heads != 0 {
        return Err(clipcu::Error::Msg(format!(
            "--width {width}: the demo's width must be at least 1 and a multiple of its {heads} attention head(s) (width / 64)"
        )));
    }
    let device = crate::pick_device(device)?;
    let (vocab, batch, tokens) = (64usize, 16usize, 24usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let embed = Param::new(
        "token_embedding.weight",
        Tensor::randn_with([vocab, width], 0.02, &mut rng).to_device(device)?,
    );
    let pos = Param::new(
        "positional_embedding",
        Tensor::randn_with([tokens, width], 0.01, &mut rng).to_device(device)?,
    );
    let mut model = Transformer::new(
        "transformer",
        width,
        layers,
        (width / 64).max(1),
        Activation::Gelu,
        BlockInit::ClipText,
        &mut rng,
    );
    model.checkpointing = checkpointing;
    model.to_device(device)?;
    let ln_w = Param::new("ln_final.weight", Tensor::ones([width]).to_device(device)?);
    let ln_b = Param::new("ln_final.bias", Tensor::zeros([width]).to_device(device)?);
    let mut params = model.parameters();
    params.extend([embed.clone(), pos.clone(), ln_w.clone(), ln_b.clone()]);
    let n_params: usize = params.iter().map(|p| p.value().numel()).sum();
    println!(
        "model: {layers}-layer causal transformer, width {width}, {} heads, {n_params} parameters; task: \
         predict the previous token (copy through causal attention), vocab {vocab}, batch {batch}×{tokens}",
        (width / 64).max(1)
    );
    let lr = 0.5f32;
    let start = Instant::now();
    for step in 0..steps {
        let ids: Vec<u32> = (0..batch * tokens)
            .map(|_| rng.random_range(0..vocab as u32))
            .collect();
        // target at position t is the token at t−1 (position 0 predicts itself)
        let targets: Vec<u32> = (0..batch * tokens)
            .map(|i| if i % tokens == 0 { ids[i] } else { ids[i - 1] })
            .collect();
        let g = Graph::new();
        let e = g.param(&embed);
        let x = g.add(&g.embedding(&e, &ids, &[batch, tokens])?, &g.param(&pos))?;
        let x = model.forward(&g, &x, true)?;
        let x = g.layer_norm(&x, &g.param(&ln_w), &g.param(&ln_b), 1e-5)?;
        let logits = g.matmul(&g.reshape(&x, [batch * tokens, width])?, &e, false, true)?;
        let loss = g.cross_entropy(&logits, &targets)?;
        let held = g.saved_bytes();
        g.backward(&loss)?;
        for p in &params {
            if let Some(grad) = p.grad() {
                p.set_value(binary::add(&p.value(), &unary::scale(&grad, -lr)?)?)?;
                p.zero_grad();
            }
        }
        if step % 5 == 0 || step + 1 == steps {
            println!(
                "step {step:>4}  loss {:.4}  activations held for backward {:.1} MiB",
                loss.tensor().item()?,
                held as f64 / (1 << 20) as f64
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{steps} steps in {secs:.2} s ({:.0} tokens/s forward+backward) on {device}; chance loss is {:.3}",
        (steps * batch * tokens) as f64 / secs,
        (vocab as f64).ln()
    );
    Ok(())
}
