//! `clipcu-bench kernels`: every custom kernel family the training step runs, at CLIP's shapes
//! (ViT-B/32 at batch 256, the text tower at batch 256, ViT-B/16 at batch 64, RN50's first stage
//! at batch 64, the loss at batch 256 and 32,768), timed through the same op entry points the
//! graph calls, with the bytes each must move and the FLOPs each must do, so a time becomes a
//! fraction of the card's roofline.
//!
//! - **Times**: on Cuda, CUDA events around `iters` back-to-back runs after one warm-up (the
//!   GPU's clock; no host timer around asynchronous launches), divided by `iters`; on Cpu/Emu a
//!   host clock (they run synchronously).
//! - **Bytes** are the compulsory traffic: every input read once, every output written once, f32
//!   (what the op must move however it is written; a kernel that re-reads shows as a lower
//!   fraction). **FLOPs** only where the op is compute-bound (attention, the loss, the GEMMs).
//! - **Roofline** fraction = max(bytes/time ÷ peak bandwidth, FLOP/time ÷ peak FLOP/s), peaks
//!   from [`card_roofline`]; none on a CPU. `quick` shrinks every shape (for the emulator, which
//!   runs a block's threads one at a time, and for the dry run of the GPU check).

use crate::nn::Module;
use crate::ops::unary::UnaryKind;
use crate::{Device, Result, Tensor};
use serde::Serialize;
use std::time::Instant;

/// HBM bandwidth (TB/s), dense fp32 FMA and bf16/fp16 tensor-core TFLOP/s of a card, by the name the driver reports
/// (the table of [`super::train::card`]).
pub fn card_roofline(card: &str) -> Option<(f64, f64, f64, &'static str)> {
    super::train::card(card).map(|c| (c.hbm_tb_s, c.fp32, c.half, c.row))
}

/// One measured kernel.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub name: String,
    pub shape: String,
    pub time_us: f64,
    pub bytes: f64,
    pub flops: f64,
    pub gb_per_s: f64,
    pub tflops: f64,
    /// Of the card's roofline (bandwidth or compute, whichever bounds the op); `None` off a card.
    pub roofline_fraction: Option<f64>,
}

type Run = Box<dyn FnMut() -> Result<()>>;

struct Case {
    name: String,
    shape: String,
    bytes: f64,
    flops: f64,
    /// The FLOPs run on the tensor cores (16-bit inputs): the roofline takes the card's
    /// bf16/fp16 peak instead of its fp32 FMA peak.
    tensor_cores: bool,
    run: Run,
}

const F32: f64 = 4.0;

fn randn(shape: &[usize], seed: u64, device: Device) -> Result<Tensor> {
    Tensor::randn(shape.to_vec(), 1.0, seed).to_device(device)
}

/// The transformer kernels of one tower: rows = batch × tokens of `width`, `heads` heads.
fn tower_cases(
    tag: &str,
    (batch, tokens, width, heads): (usize, usize, usize, usize),
    causal: bool,
    device: Device,
) -> Result<Vec<Case>> {
    let rows = batch * tokens;
    let n = (rows * width) as f64;
    let shape = format!("{tag} b{batch}: {batch}×{tokens}×{width}");
    let x = randn(&[rows, width], 1, device)?;
    let dy = randn(&[rows, width], 2, device)?;
    let w = randn(&[width], 3, device)?;
    let b = randn(&[width], 4, device)?;
    let hidden = randn(&[rows, 4 * width], 5, device)?;
    let dhidden = randn(&[rows, 4 * width], 6, device)?;
    let qkv = randn(&[rows, 3 * width], 7, device)?;
    let qkv_packed = qkv.clone();
    let (_, mean, rstd) = crate::ops::layernorm::layer_norm_stats(&x, &w, &b, 1e-5)?;
    let mut cases = Vec::new();
    {
        let (x, w, b) = (x.clone(), w.clone(), b.clone());
        cases.push(Case {
            name: "layer_norm fwd".into(),
            shape: shape.clone(),
            bytes: 2.0 * n * F32,
            flops: 0.0,
            tensor_cores: false,
            run: Box::new(move || crate::ops::layernorm::layer_norm(&x, &w, &b, 1e-5).map(drop)),
        });
    }
    {
        let (x, w, dy) = (x.clone(), w.clone(), dy.clone());
        cases.push(Case {
            name: "layer_norm bwd".into(),
            shape: shape.clone(),
            bytes: 3.0 * n * F32,
            flops: 0.0,
            tensor_cores: false,
            run: Box::new(move || {
                crate::ops::layernorm::layer_norm_backward(&x, &w, &mean, &rstd, &dy).map(drop)
            }),
        });
    }
    {
        let (x, dy) = (x.clone(), dy.clone());
        cases.push(Case {
            name: "residual add".into(),
            shape: shape.clone(),
            bytes: 3.0 * n * F32,
            flops: 0.0,
            tensor_cores: false,
            run: Box::new(move || crate::ops::binary::add(&x, &dy).map(drop)),
        });
    }
    let m = 4.0 * n;
    // CLIP's shipped configs use GELU (the -quickgelu twins QuickGELU: the same traffic).
    let act = UnaryKind::Gelu;
    {
        let h = hidden.clone();
        cases.push(Case {
            name: format!("{act:?} fwd").to_lowercase(),
            shape: format!("{tag} b{batch}: {rows}×{}", 4 * width),
            bytes: 2.0 * m * F32,
            flops: 0.0,
            tensor_cores: false,
            run: Box::new(move || crate::ops::unary::unary(act, &h).map(drop)),
        });
    }
    {
        let (h, dh) = (hidden, dhidden);
        cases.push(Case {
            name: format!("{act:?} bwd").to_lowercase(),
            shape: format!("{tag} b{batch}: {rows}×{}", 4 * width),
            bytes: 3.0 * m * F32,
            flops: 0.0,
            tensor_cores: false,
            run: Box::new(move || crate::ops::unary::unary_backward(act, &h, &dh).map(drop)),
        });
    }
    {
        // q·kᵀ and P·v: 4·T²·width per sample; qkv read once, the merged heads written once
        // (the compulsory traffic of a fused kernel, issue 13; today's split copies add more).
        let t = tokens as f64;
        cases.push(Case {
            name: format!(
                "attention fwd{} (split, attend, merge)",
                if causal { " causal" } else { "" }
            ),
            shape: format!(
                "{tag} b{batch}: T {tokens}, {heads} heads of {}",
                width / heads
            ),
            bytes: 4.0 * n * F32,
            flops: 4.0 * batch as f64 * t * t * width as f64,
            tensor_cores: false,
            run: Box::new(move || {
                // what the training step runs on a device today: split the packed projection
                // into heads, attention (GEMMs + softmax), merge the heads
                use crate::ops::attention as a;
                let s = a::split_qkv_heads(&qkv, batch, heads)?;
                let dims = [batch, heads, tokens, width / heads];
                let part = |i| s.narrow(0, i, 1)?.reshape(dims);
                let o = a::attention(&part(0)?, &part(1)?, &part(2)?, causal)?;
                a::merge_heads(&o).map(drop)
            }),
        });
    }
    if crate::device::kernel::runs_kernels(device)
        && crate::ops::attention::packed::supported(&qkv_packed, batch, heads)
    {
        for dtype in [crate::DType::F32, crate::DType::BF16] {
            let (dh, case) = (width / heads, super::AttentionCase::new);
            let case = case(batch, tokens, heads, dh, causal, dtype, device)?;
            cases.push(case.into_case(tag)?);
        }
    }
    Ok(cases)
}

impl super::AttentionCase {
    fn into_case(self, tag: &str) -> Result<Case> {
        Ok(Case {
            name: format!(
                "attention fused fwd+bwd{} {}",
                if self.causal { " causal" } else { "" },
                self.dtype
            ),
            shape: format!(
                "{tag} b{}: T {}, {} heads of {}",
                self.batch, self.tokens, self.heads, self.head_dim
            ),
            bytes: self.bytes(),
            flops: self.flops(),
            tensor_cores: false,
            run: Box::new(move || self.run()),
        })
    }
}

fn build_cases(device: Device, quick: bool) -> Result<Vec<Case>> {
    // (batch, tokens, width, heads)
    let (vit_b32, text, vit_b16) = if quick {
        ((4, 17, 64, 2), (4, 13, 64, 2), (2, 37, 64, 2))
    } else {
        ((256, 50, 768, 12), (256, 77, 512, 8), (64, 197, 768, 12))
    };
    let mut cases = tower_cases("ViT-B/32", vit_b32, false, device)?;
    cases.extend(tower_cases("text", text, true, device)?);
    cases.extend(tower_cases("ViT-B/16", vit_b16, false, device)?);

    // Token embedding of the text batch (gather) and its backward (scatter-add into the table).
    let (vocab, rows, width) = if quick {
        (1000, 52, 64)
    } else {
        (49408, 256 * 77, 512)
    };
    let table = randn(&[vocab, width], 8, device)?;
    let ids: Vec<u32> = (0..rows as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % vocab as u32)
        .collect();
    {
        let ids = ids.clone();
        cases.push(Case {
            name: "embedding fwd".into(),
            shape: format!("{rows} ids of {vocab}×{width}"),
            bytes: 2.0 * (rows * width) as f64 * F32,
            flops: 0.0,
            tensor_cores: false,
            run: Box::new(move || {
                crate::ops::embedding::embedding(&table, &ids, &[rows]).map(drop)
            }),
        });
    }
    let gout = randn(&[rows, width], 9, device)?;
    cases.push(Case {
        name: "embedding bwd".into(),
        shape: format!("{rows} ids into {vocab}×{width}"),
        bytes: ((rows + vocab) * width) as f64 * F32,
        flops: 0.0,
        tensor_cores: false,
        run: Box::new(move || {
            crate::ops::embedding::embedding_backward(&gout, &ids, vocab).map(drop)
        }),
    });

    // BatchNorm (training statistics) at RN50's first bottleneck stage, batch 64.
    let (nb, c, hw) = if quick { (2, 16, 8) } else { (64, 256, 56) };
    let x = randn(&[nb, c, hw, hw], 10, device)?;
    let (g, b) = (randn(&[c], 11, device)?, randn(&[c], 12, device)?);
    cases.push(Case {
        name: "batch_norm2d train fwd".into(),
        shape: format!("RN50 layer1 b{nb}: {c}×{hw}×{hw}"),
        bytes: 2.0 * (nb * c * hw * hw) as f64 * F32,
        flops: 0.0,
        tensor_cores: false,
        run: Box::new(move || {
            crate::ops::batchnorm::batch_norm2d_train(&x, &g, &b, 1e-5).map(drop)
        }),
    });

    // The fused contrastive loss, forward + backward (similarity tiles recomputed in backward).
    // f32 on FMA tiles, bf16 on the tensor cores (mixed precision's loss inputs).
    for (n, dtype) in if quick {
        vec![(16, crate::DType::F32), (16, crate::DType::BF16)]
    } else {
        vec![
            (256, crate::DType::F32),
            (32768, crate::DType::F32),
            (32768, crate::DType::BF16),
        ]
    } {
        let d = if quick { 32 } else { 512 };
        let case = super::ContrastiveCase::new(n, d, true, dtype, device)?;
        let flops = case.flops();
        cases.push(Case {
            name: format!("contrastive fused fwd+bwd {dtype}"),
            shape: format!("N {n}, D {d}"),
            bytes: 4.0 * (n * d) as f64 * dtype.size_in_bytes() as f64,
            flops,
            tensor_cores: dtype != crate::DType::F32,
            run: Box::new(move || case.run().map(drop)),
        });
    }

    // AdamW over ViT-B/32's parameters (the tiny ViT when quick), as fp32/amp run it (f32
    // weights and moments) and as the pure 16-bit policies do (bf16 weights written with
    // stochastic rounding, f16 moments with one f32 scale per 256 elements and moment).
    let name = if quick { "tiny-vit" } else { "ViT-B-32" };
    let cfg = crate::model::ClipConfig::load(name)?;
    for pure in [false, true] {
        let model = crate::model::Clip::new(&cfg, 0);
        model.to_device(device)?;
        let params: Vec<crate::graph::Param> = model
            .named_params()
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| p.requires_grad())
            .collect();
        if pure {
            for p in &params {
                p.set_value(p.value().try_to_dtype(crate::DType::BF16)?)?;
            }
        }
        let count: usize = params.iter().map(|p| p.value().numel()).sum();
        let grads: Vec<Tensor> = params
            .iter()
            .map(|p| Tensor::randn(p.value().shape().to_vec(), 1e-3, 13).to_device(device))
            .collect::<Result<_>>()?;
        let moments = if pure {
            crate::optim::MomentPrecision::F16Scaled
        } else {
            crate::optim::MomentPrecision::F32
        };
        let mut opt = crate::optim::AdamW::new(
            &params,
            crate::optim::AdamWConfig {
                moments,
                ..Default::default()
            },
        );
        // A step consumes the gradients (zero_grad after it), so each run first puts them back:
        // on a kernel device a copy into the kept gradient storage (g read, storage written: 8
        // bytes), counted with AdamW's own traffic: f32 p, g, m, v read and p, m, v written (28
        // bytes), or bf16 p, f32 g, f16 m, v read and p, m, v written (16 bytes) plus the m and
        // v scales read and written (16 bytes per 256 elements).
        let per_param = if pure {
            8.0 + 16.0 + 16.0 / 256.0
        } else {
            8.0 + 28.0
        };
        cases.push(Case {
            name: if pure {
                "grad refill + adamw step bf16 SR, f16 moments".into()
            } else {
                "grad refill + adamw step".into()
            },
            shape: format!("{name} ({:.1} M parameters)", count as f64 / 1e6),
            bytes: per_param * count as f64,
            flops: 0.0,
            tensor_cores: false,
            run: Box::new(move || {
                let _keep = &model;
                for (p, g) in params.iter().zip(&grads) {
                    p.accumulate_grad(g.clone())?;
                }
                opt.step(1e-4)
            }),
        });
    }
    Ok(cases)
}

/// Runs every case `iters` times after one warm-up; `each` sees every report as soon as it is
/// measured (a CPU run at CLIP's shapes takes minutes); all of them are returned at the end.
pub fn bench_kernels(
    device: Device,
    quick: bool,
    iters: usize,
    mut each: impl FnMut(&KernelReport),
) -> Result<Vec<KernelReport>> {
    let cuda = match device {
        Device::Cuda(i) => Some(crate::device::cuda::CudaBackend::get(i)?),
        _ => None,
    };
    let roof = cuda.as_ref().and_then(|b| card_roofline(&b.info().name));
    let iters = iters.max(1);
    let mut out = Vec::new();
    for mut case in build_cases(device, quick)? {
        (case.run)()?;
        device.synchronize()?;
        let seconds = match &cuda {
            Some(b) => {
                let ((), ms) = b.time_ms(|| (0..iters).try_for_each(|_| (case.run)()))?;
                ms as f64 * 1e-3
            }
            None => {
                let t = Instant::now();
                (0..iters).try_for_each(|_| (case.run)())?;
                t.elapsed().as_secs_f64()
            }
        } / iters as f64;
        let (gbs, tfs) = (case.bytes / seconds / 1e9, case.flops / seconds / 1e12);
        let report = KernelReport {
            name: case.name,
            shape: case.shape,
            time_us: seconds * 1e6,
            bytes: case.bytes,
            flops: case.flops,
            gb_per_s: gbs,
            tflops: tfs,
            roofline_fraction: roof.map(|(bw, fp32, half, _)| {
                let peak = if case.tensor_cores { half } else { fp32 };
                (gbs / (bw * 1e3)).max(tfs / peak)
            }),
        };
        each(&report);
        out.push(report);
    }
    Ok(out)
}
