//! Benchmark workloads shared by the Criterion benches (`benches/`) and `clipcu-bench`, so both
//! measure exactly the same thing. Each workload knows its FLOP count for GFLOP/s figures.
//! `train` is `clipcu-bench train`: the trainer's step timed the way engines are compared.

pub mod kernels;
pub mod train;

pub use kernels::{bench_kernels, card_roofline, KernelReport};
pub use train::{bench_train, peak_tflops, Precision, TrainBenchOptions, TrainBenchReport};

use crate::nn::{Activation, BlockDims, BlockInit, Module, ResidualAttentionBlock};
use crate::{DType, Device, Graph, Result, Tensor};
use rand::SeedableRng;

/// A GEMM `[m, k] · [k, n]` on f32 inputs.
pub struct GemmCase {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    a: Tensor,
    b: Tensor,
}

impl GemmCase {
    pub fn new(m: usize, k: usize, n: usize, device: Device) -> Result<GemmCase> {
        Ok(GemmCase {
            m,
            k,
            n,
            a: Tensor::randn([m, k], 1.0, 1).to_device(device)?,
            b: Tensor::randn([k, n], 1.0, 2).to_device(device)?,
        })
    }
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.k * self.n) as f64
    }
    pub fn run(&self) -> Result<Tensor> {
        crate::ops::matmul::matmul(&self.a, &self.b, false, false)
    }
}

/// One pre-LN transformer block, forward and backward (parameter and input gradients).
pub struct BlockCase {
    pub batch: usize,
    pub tokens: usize,
    pub width: usize,
    block: ResidualAttentionBlock,
    x: Tensor,
    seed_grad: Tensor,
}

impl BlockCase {
    pub fn new(batch: usize, tokens: usize, width: usize, device: Device) -> Result<BlockCase> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let block = ResidualAttentionBlock::new(
            "blk",
            BlockDims {
                width,
                heads: width / 64,
                mlp_width: 4 * width,
                layers: 12,
            },
            Activation::Gelu,
            BlockInit::ClipText,
            &mut rng,
        );
        block.to_device(device)?;
        Ok(BlockCase {
            batch,
            tokens,
            width,
            block,
            x: Tensor::randn([batch, tokens, width], 1.0, 4).to_device(device)?,
            seed_grad: Tensor::randn([batch, tokens, width], 1.0, 5).to_device(device)?,
        })
    }
    /// Forward FLOPs (GEMMs: qkv 6D², out 2D², MLP 16D² per token, plus 4TD for q·kᵀ and P·v)
    /// times 3 for forward + backward.
    pub fn flops(&self) -> f64 {
        let (bt, t, d) = (
            (self.batch * self.tokens) as f64,
            self.tokens as f64,
            self.width as f64,
        );
        3.0 * bt * (24.0 * d * d + 4.0 * t * d)
    }
    pub fn run(&self) -> Result<()> {
        for p in self.block.parameters() {
            p.zero_grad();
        }
        let g = Graph::new();
        let x = g.leaf(self.x.clone());
        let y = self.block.forward(&g, &x, false)?;
        g.backward_with(&y, self.seed_grad.clone())?;
        Ok(())
    }
}

/// `encode_image` of a batch of random 224-px images through a freshly initialised model
/// (inference graph: nothing recorded).
pub struct EncodeImageCase {
    pub config_name: String,
    pub batch: usize,
    model: crate::model::Clip,
    images: Tensor,
}

impl EncodeImageCase {
    pub fn new(config_name: &str, batch: usize, device: Device) -> Result<EncodeImageCase> {
        let cfg = crate::model::ClipConfig::load(config_name)?;
        let mut model = crate::model::Clip::new(&cfg, 0);
        model.set_training(false);
        model.to_device(device)?;
        let s = cfg.vision_cfg.image_size;
        Ok(EncodeImageCase {
            config_name: config_name.to_string(),
            batch,
            model,
            images: Tensor::randn([batch, 3, s, s], 1.0, 6).to_device(device)?,
        })
    }
    pub fn run(&self) -> Result<Tensor> {
        let g = Graph::inference();
        Ok(self
            .model
            .encode_image(&g, &g.constant(self.images.clone()))?
            .into_tensor())
    }
}

/// `encode_text` of 16 realistic captions (`assets/bench_captions.txt`), tokenized to 77 and run
/// with or without the exact EOT truncation.
pub struct EncodeTextCase {
    pub truncate: bool,
    model: crate::model::Clip,
    ids: Vec<u32>,
}

impl EncodeTextCase {
    pub fn new(config_name: &str, truncate: bool, device: Device) -> Result<EncodeTextCase> {
        let cfg = crate::model::ClipConfig::load(config_name)?;
        let mut model = crate::model::Clip::new(&cfg, 0);
        model.text.truncate = truncate;
        model.to_device(device)?;
        let captions: Vec<&str> = include_str!("../../assets/bench_captions.txt")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(16)
            .collect();
        let ids = crate::tokenizer::Tokenizer::clip()
            .tokenize_batch(&captions, cfg.text_cfg.context_length);
        Ok(EncodeTextCase {
            truncate,
            model,
            ids,
        })
    }
    pub fn run(&self) -> Result<Tensor> {
        let g = Graph::inference();
        Ok(self.model.encode_text(&g, &self.ids, 16)?.into_tensor())
    }
}

/// One training step of a CLIP (the trainer's own step: forward, backward, loss, clipping, AdamW,
/// the clamp) on a fixed synthetic batch of the model's shapes: images ~ N(0, 1) (normalised
/// pixels), captions of random token ids with an EOT at a random length.
pub struct TrainStepCase {
    pub config_name: String,
    pub batch: usize,
    trainer: crate::train::Trainer,
    images: Tensor,
    ids: Vec<u32>,
}

impl TrainStepCase {
    pub fn new(
        config_name: &str,
        batch: usize,
        device: Device,
        precision: crate::train::Precision,
    ) -> Result<TrainStepCase> {
        use rand::Rng;
        let cfg = crate::model::ClipConfig::load(config_name)?;
        let config = crate::train::TrainConfig {
            batch_size: batch,
            micro_batch: 0,
            steps: 1_000_000,
            lr: 5e-4,
            weight_decay: 0.2,
            warmup: 100,
            constant_lr: false,
            grad_clip: Some(1.0),
            seed: 0,
            checkpointing: false,
            shape_groups: 0,
            lock: Default::default(),
            epochs: None,
            augment: false,
            workers: None,
            precision: Some(precision),
        };
        let mut trainer =
            crate::train::Trainer::new(&cfg, config, crate::train::DataSpec::Synthetic)?;
        trainer.to_device(device)?;
        let s = cfg.vision_cfg.image_size;
        let (ctx, vocab) = (cfg.text_cfg.context_length, cfg.text_cfg.vocab_size as u32);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut ids = vec![0u32; batch * ctx];
        for row in ids.chunks_mut(ctx) {
            let end = rng.random_range(2..ctx);
            row[0] = vocab - 2;
            for v in &mut row[1..end] {
                *v = rng.random_range(1..vocab - 2);
            }
            row[end] = vocab - 1;
        }
        Ok(TrainStepCase {
            config_name: config_name.to_string(),
            batch,
            trainer,
            images: Tensor::randn([batch, 3, s, s], 1.0, 8),
            ids,
        })
    }
    pub fn run(&mut self) -> Result<crate::train::StepLog> {
        self.trainer
            .train_step_on(&self.images, &self.ids, std::time::Instant::now())
    }

    /// Bytes of the trainable weights, their gradient buffers and AdamW's state, as the trainer
    /// stores them under its precision, per trainable parameter: counted from the tensors
    /// themselves (weights at their dtype, gradients f32, the moments and their scales as
    /// `AdamW::state` holds them), not from the policy's table.
    pub fn state_bytes_per_parameter(&self) -> Result<f64> {
        let mut n = 0usize;
        let mut bytes = 0usize;
        for p in self.trainer.model.parameters() {
            if !p.requires_grad() {
                continue;
            }
            let v = p.value();
            n += v.numel();
            // the gradient buffer: f32 whatever the weight's dtype (AdamW reads f32 gradients)
            bytes += v.numel() * (v.dtype().size_in_bytes() + 4);
        }
        for (name, t) in self.trainer.opt.state()? {
            if name != "step" {
                bytes += t.numel() * t.dtype().size_in_bytes();
            }
        }
        Ok(bytes as f64 / n.max(1) as f64)
    }
}

/// CLIP's contrastive loss forward + backward at batch `n`, feature size `d`: the fused op
/// (`Graph::contrastive`) or the composed one (normalize, matmul, two cross-entropies over the
/// N×N logits). Reports the bytes the graph keeps for backward beside the time.
pub struct ContrastiveCase {
    pub n: usize,
    pub d: usize,
    pub fused: bool,
    /// The features' storage type (f16/bf16: the fused op's tensor-core tiles).
    pub dtype: DType,
    img: Tensor,
    txt: Tensor,
    scale: Tensor,
}

impl ContrastiveCase {
    pub fn new(
        n: usize,
        d: usize,
        fused: bool,
        dtype: DType,
        device: Device,
    ) -> Result<ContrastiveCase> {
        let features = |seed| {
            Tensor::randn([n, d], 1.0, seed)
                .try_to_dtype(dtype)?
                .to_device(device)
        };
        Ok(ContrastiveCase {
            n,
            d,
            fused,
            dtype,
            img: features(11)?,
            txt: features(12)?,
            scale: Tensor::scalar(100f32.ln()).to_device(device)?,
        })
    }
    /// Multiply-adds of the similarity tiles: forward once, backward twice more (the fused op
    /// recomputes them) plus the two gradient products; the composed loss does the same work
    /// minus the recomputation, counted alike so the ratio of times is the ratio of rates.
    pub fn flops(&self) -> f64 {
        2.0 * 3.0 * (self.n * self.n * self.d) as f64
    }
    /// One forward + backward; returns the bytes saved for backward.
    pub fn run(&self) -> Result<usize> {
        let g = Graph::new();
        let (i, t, s) = (
            g.leaf(self.img.clone()),
            g.leaf(self.txt.clone()),
            g.leaf(self.scale.clone()),
        );
        let loss = if self.fused {
            g.contrastive(&i, &t, &s)?.0
        } else {
            crate::loss::contrastive_loss_composed(&g, &i, &t, &s)?.loss
        };
        let saved = g.saved_bytes();
        g.backward(&loss)?;
        Ok(saved)
    }
}

/// Fused self-attention forward + backward from a packed projection `[B·T, 3·H·dh]`
/// (`Graph::attention_packed`, kernel devices) at CLIP's shapes.
pub struct AttentionCase {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub dtype: DType,
    qkv: Tensor,
    dout: Tensor,
}

impl AttentionCase {
    pub fn new(
        batch: usize,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        causal: bool,
        dtype: DType,
        device: Device,
    ) -> Result<AttentionCase> {
        let rows = batch * tokens;
        let width = heads * head_dim;
        let rand = |shape: [usize; 2], seed| {
            Tensor::randn(shape, 1.0, seed)
                .try_to_dtype(dtype)?
                .to_device(device)
        };
        Ok(AttentionCase {
            batch,
            tokens,
            heads,
            head_dim,
            causal,
            dtype,
            qkv: rand([rows, 3 * width], 21)?,
            dout: rand([rows, width], 22)?,
        })
    }
    /// Useful FLOPs as FlashAttention counts them: forward 4·B·T²·D (q·kᵀ and P·v), backward
    /// 2.5× that (dV, dP, dQ, dK); a causal mask halves both.
    pub fn flops(&self) -> f64 {
        let t = self.tokens as f64;
        let fwd = 4.0 * self.batch as f64 * t * t * (self.heads * self.head_dim) as f64;
        3.5 * fwd * if self.causal { 0.5 } else { 1.0 }
    }
    /// Compulsory traffic: forward reads qkv and writes out; backward reads qkv, out and dout and
    /// writes dqkv — 12 elements of a D-wide row per token.
    pub fn bytes(&self) -> f64 {
        12.0 * (self.batch * self.tokens * self.heads * self.head_dim * self.dtype.size_in_bytes())
            as f64
    }
    /// One forward and backward.
    pub fn run(&self) -> Result<()> {
        let g = Graph::new();
        let x = g.leaf(self.qkv.clone());
        let out = g.attention_packed(&x, self.batch, self.heads, self.causal)?;
        g.backward_with(&out, self.dout.clone())?;
        Ok(())
    }
}
