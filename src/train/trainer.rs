//! The training loop: batches → contrastive forward/backward (optionally over micro-batches) →
//! gradient clipping → AdamW with the learning-rate schedule → logit-scale clamp; metrics as JSON
//! lines, zero-shot evaluation every `eval_every` steps, atomic checkpoints that hold everything a
//! bit-exact resume needs (weights, optimizer moments, step, data position), and a PNG plot at the
//! end.

use super::data_parallel::{data_parallel_forward_backward, local_batch, GradientSum};
use super::eval::{ValidationResult, ValidationSet, ZeroShotResult, ZeroShotSet};
use super::precision::{LossScaler, Precision};
use super::{contrastive_forward_backward_deferred, eval, plot, read_scalars, samples_to_tensor};
use crate::data::synthetic::{Split, Synthetic, SyntheticConfig, Task};
use crate::data::{DataPosition, Loader, LoaderConfig, RandomResizedCrop, SkipStats, Source};
use crate::device::upload::{BatchUploader, Staged};
use crate::dist::Communicator;
use crate::io::safetensors as st;
use crate::model::{weights, Clip, ClipConfig, Locking};
use crate::nn::Module;
use crate::optim::{clamp_in_place, AdamW, AdamWConfig, LrSchedule};
use crate::tokenizer::Tokenizer;
use crate::{Device, Error, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything that decides a run's numbers (saved in checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub batch_size: usize,
    /// Micro-batch size for gradient accumulation (0: the whole batch at once).
    pub micro_batch: usize,
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup: usize,
    /// Constant learning rate after warmup instead of cosine decay.
    pub constant_lr: bool,
    /// Clip the global gradient norm to this (none when absent).
    pub grad_clip: Option<f64>,
    pub seed: u64,
    /// Activation checkpointing of the transformer blocks.
    pub checkpointing: bool,
    /// Synthetic data only: batches made of groups of this many pairs that share a scene and
    /// differ in shape (hard negatives for shape; see `Synthetic::grouped_recipe`). 0 or 1: plain
    /// random pairs.
    #[serde(default)]
    pub shape_groups: usize,
    /// The towers a fine-tune locks (`model::lock`; nothing by default).
    #[serde(default)]
    pub lock: Locking,
    /// `--epochs`: the run's length in passes over finite data (`steps` is then
    /// [`steps_for_epochs`]); the progress shows the epoch.
    #[serde(default)]
    pub epochs: Option<usize>,
    /// open_clip's training transform on file data: a `RandomResizedCrop` (scale 0.9–1, ratio
    /// 3/4–4/3, bicubic) per sample, keyed by (seed, epoch, sample), instead of the center crop
    /// (`--no-augment` turns it off). The synthetic data is never augmented. Absent from older
    /// checkpoints, which trained without it: `false`. A resumed run keeps its checkpoint's.
    #[serde(default)]
    pub augment: bool,
    /// Data-loading threads (`--workers`; `None`: one per core). Changes no number, so it is
    /// not saved with the run.
    #[serde(skip)]
    pub workers: Option<usize>,
    /// `--precision`: open_clip's names, the CLIP paper's recipe for the pure ones
    /// ([`Precision`]). `None`: fp32 for a fresh run, the checkpoint's on resume. Absent from
    /// older checkpoints, which trained in fp32.
    #[serde(default)]
    pub precision: Option<Precision>,
}

impl TrainConfig {
    /// The run's precision policy (fp32 when none was given).
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or_default()
    }

    /// Refuses settings that make no sense (issue 16): each error names the CLI option and what
    /// it needs. Checked by [`Trainer::new`] and [`Trainer::resume`] before anything is built.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Msg(m));
        if self.batch_size < 2 {
            return bad(format!(
                "--batch-size {}: the contrastive loss needs at least 2 pairs per batch (a pair \
                 has only the other pairs of its batch as negatives; with one the loss is 0 by \
                 construction)",
                self.batch_size
            ));
        }
        if self.micro_batch > self.batch_size {
            return bad(format!(
                "--micro-batch {} is larger than --batch-size {}: a micro-batch is a part of the \
                 batch (0: the whole batch at once)",
                self.micro_batch, self.batch_size
            ));
        }
        if self.steps == 0 {
            return bad("--steps 0: nothing to train; give at least 1 step".into());
        }
        if !self.lr.is_finite() || self.lr < 0.0 {
            return bad(format!(
                "--lr {}: the learning rate must be a finite number ≥ 0",
                self.lr
            ));
        }
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            return bad(format!(
                "--wd {}: the weight decay must be a finite number ≥ 0",
                self.weight_decay
            ));
        }
        self.lock.validate()?;
        if let Some(c) = self.grad_clip {
            if !c.is_finite() || c <= 0.0 {
                return bad(format!(
                    "--grad-clip {c}: the largest gradient norm must be a finite number > 0 \
                     (leave --grad-clip out for no clipping)"
                ));
            }
        }
        Ok(())
    }
}

/// Where and how often a run writes and evaluates.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    pub checkpoint_every: usize,
    pub eval_every: usize,
    /// Held-out samples per zero-shot evaluation.
    pub eval_samples: usize,
    pub progress: bool,
    /// A fresh run into a folder that already holds a run replaces it (its checkpoints, model,
    /// metrics and plot are deleted when the new run starts); without it such a run is refused.
    pub overwrite: bool,
    /// Step-numbered checkpoints kept besides `checkpoint.safetensors` (the latest), so that a
    /// run which went wrong can resume from an earlier one: `checkpoint-<step>.safetensors`, the
    /// newest `keep_checkpoints` of them (hard links of the latest: no extra bytes on disk).
    pub keep_checkpoints: usize,
    /// Zero-shot evaluation on the user's ImageFolder every `eval_every` steps and at the end
    /// (`--zeroshot-data`).
    pub zeroshot: Option<ZeroShotSet>,
    /// Validation loss and recall on held-out pairs every `eval_every` steps and at the end
    /// (`--val-data`).
    pub validation: Option<ValidationSet>,
}

/// The last evaluations of a run (`Trainer::run`), each `None` when not evaluated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    /// Held-out synthetic shape top-1: (single template, ensembled) — synthetic data only.
    pub heldout_shape: Option<(f32, f32)>,
    pub zeroshot: Option<ZeroShotResult>,
    pub validation: Option<ValidationResult>,
}

impl RunOptions {
    /// The defaults of `clipcu train` for a run into `out`.
    pub fn new(out: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            out: out.into(),
            checkpoint_every: 200,
            eval_every: 1000,
            eval_samples: 1000,
            progress: false,
            overwrite: false,
            keep_checkpoints: 3,
            zeroshot: None,
            validation: None,
        }
    }

    /// Refuses settings that make no sense (the CLI option is named).
    pub fn validate(&self) -> Result<()> {
        if self.eval_every > 0 && self.eval_samples == 0 {
            return Err(Error::Msg(
                "--eval-samples 0: an evaluation of no samples has no accuracy; give \
                 --eval-every 0 to train without evaluating"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Files by which a folder holds a run: [`existing_run`].
const RUN_FILES: [&str; 4] = [
    CHECKPOINT,
    "model.safetensors",
    "metrics.jsonl",
    "training.png",
];

/// The files of a run that `out` already holds (`checkpoint.safetensors`, the step-numbered
/// checkpoints, `model.safetensors`, `metrics.jsonl`, `training.png`), by name; empty when none
/// (or `out` does not exist). A fresh run into such a folder is refused unless
/// [`RunOptions::overwrite`].
pub fn existing_run(out: &Path) -> Vec<String> {
    let mut found: Vec<String> = RUN_FILES
        .iter()
        .filter(|f| out.join(f).exists())
        .map(|f| f.to_string())
        .collect();
    found.extend(numbered_checkpoints(out).into_iter().map(|(_, p)| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }));
    found
}

/// The step-numbered checkpoints `checkpoint-<step>.safetensors` in `dir`, by step.
pub fn numbered_checkpoints(dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let step = name
                .to_str()?
                .strip_prefix("checkpoint-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((step, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// The name of the checkpoint kept for `step`.
pub fn numbered_checkpoint(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("checkpoint-{step}.safetensors"))
}

/// The embedded synthetic dataset, index-based: its position is the number of samples consumed.
pub struct SyntheticStream {
    pub data: Synthetic,
    pub next_index: u64,
    /// Shape-contrast group size (`TrainConfig::shape_groups`).
    pub group: usize,
}

impl SyntheticStream {
    fn next_batch(&mut self, n: usize, ctx: usize) -> Result<(Tensor, Vec<u32>)> {
        self.next_part(n, ctx, 0, n)
    }

    /// Pairs `offset..offset + len` of the next global batch of `n` (a rank's part; samples are
    /// made by index, so only these are rendered); the position moves past the whole batch.
    fn next_part(
        &mut self,
        n: usize,
        ctx: usize,
        offset: usize,
        len: usize,
    ) -> Result<(Tensor, Vec<u32>)> {
        let samples = self.data.grouped_batch(
            Split::Train,
            self.next_index + offset as u64,
            len,
            self.group,
        );
        self.next_index += n as u64;
        let images = samples_to_tensor(&samples)?;
        let captions: Vec<&str> = samples.iter().map(|s| s.caption.as_str()).collect();
        Ok((images, Tokenizer::clip().tokenize_batch(&captions, ctx)))
    }
}

/// Where training pairs come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DataSpec {
    /// The embedded synthetic dataset (seeded by the run's seed).
    Synthetic,
    /// WebDataset shards (a path or brace pattern) or a CSV/TSV file (by extension).
    Files(String),
}

/// The stream of batches of a run.
#[allow(clippy::large_enum_variant)] // one per run
pub enum DataStream {
    Synthetic(SyntheticStream),
    Files(Box<Loader>),
}

impl DataStream {
    fn open(
        spec: &DataSpec,
        cfg: &TrainConfig,
        model: &ClipConfig,
        start: Option<DataPosition>,
    ) -> Result<DataStream> {
        let image_size = model.vision_cfg.image_size;
        Ok(match spec {
            DataSpec::Synthetic => DataStream::Synthetic(SyntheticStream {
                data: Synthetic::try_new(SyntheticConfig {
                    seed: cfg.seed,
                    image_size: image_size as u32,
                })?,
                next_index: 0,
                group: cfg.shape_groups,
            }),
            DataSpec::Files(d) => {
                let source = eval::files_source(d)?;
                check_batch_fits(&source, d, cfg.batch_size)?;
                let mut lc = LoaderConfig::new(cfg.batch_size, image_size);
                lc.context_length = model.text_cfg.context_length;
                lc.seed = cfg.seed;
                lc.drop_last = true;
                if cfg.augment {
                    lc.augment = Some(RandomResizedCrop::open_clip());
                }
                if let Some(w) = cfg.workers {
                    lc.workers = w;
                }
                DataStream::Files(Box::new(Loader::new(source, lc, start)?))
            }
        })
    }

    fn next_batch(&mut self, n: usize, ctx: usize) -> Result<(Tensor, Vec<u32>)> {
        match self {
            DataStream::Synthetic(s) => s.next_batch(n, ctx),
            DataStream::Files(l) => {
                let b = l
                    .next_batch()?
                    .ok_or_else(|| Error::Msg("the training data ran out".into()))?;
                Ok((b.images, b.ids))
            }
        }
    }

    /// Rank `rank`'s part of the next global batch of `n` pairs in a world of `world`: pairs
    /// `rank·n/world..(rank+1)·n/world`, so the global batch is the same samples whatever the
    /// world size, and the position (what a checkpoint stores) is the global one. Both streams
    /// make only this rank's samples: the synthetic one by index, the file loader in its part
    /// mode (set by [`Trainer::set_communicator`]; `data::loader`'s "Ranks").
    fn next_part(
        &mut self,
        n: usize,
        ctx: usize,
        rank: usize,
        world: usize,
    ) -> Result<(Tensor, Vec<u32>)> {
        if world == 1 {
            return self.next_batch(n, ctx);
        }
        let local = local_batch(n, world)?;
        match self {
            DataStream::Synthetic(s) => s.next_part(n, ctx, rank * local, local),
            DataStream::Files(l) => {
                let part = l.config().part;
                if part != Some(crate::data::Part { rank, world }) {
                    return Err(Error::Msg(format!(
                        "the file loader reads {part:?}, not rank {rank} of {world}: join the \
                         group with Trainer::set_communicator"
                    )));
                }
                let (images, ids) = self.next_batch(n, ctx)?;
                let got = images.shape()[0];
                if got != local || ids.len() != local * ctx {
                    return Err(Error::Msg(format!(
                        "the loader gave rank {rank} {got} pairs ({} token ids) for its part of \
                         {local} of a global batch of {n}",
                        ids.len()
                    )));
                }
                Ok((images, ids))
            }
        }
    }

    /// The position to store in a checkpoint (JSON).
    fn position(&self) -> serde_json::Value {
        match self {
            DataStream::Synthetic(s) => {
                serde_json::json!({ "source": "synthetic", "next_index": s.next_index })
            }
            DataStream::Files(l) => {
                serde_json::json!({ "source": "files", "position": l.position() })
            }
        }
    }

    /// The epoch the next batch starts in (0-based; files only).
    pub fn epoch(&self) -> Option<u64> {
        match self {
            DataStream::Synthetic(_) => None,
            DataStream::Files(l) => Some(l.position().epoch),
        }
    }

    /// Samples skipped and counted so far (files only).
    pub fn skips(&self) -> Option<SkipStats> {
        match self {
            DataStream::Synthetic(_) => None,
            DataStream::Files(l) => Some(l.skips()),
        }
    }
}

/// A batch larger than a finite dataset would hold some pairs twice, each then the other's false
/// negative: an error. The samples of a CSV are its rows; those of WebDataset shards are counted
/// (from the tar headers) when there are fewer shards than pairs in a batch — with more, every
/// shard would have to be near empty for the batch not to fit.
fn check_batch_fits(source: &Source, data: &str, batch: usize) -> Result<()> {
    let samples = match source {
        Source::WebDataset { shards } if shards.len() >= batch => return Ok(()),
        s => match samples_of(s) {
            Some(n) => n,
            None => return Ok(()),
        },
    };
    if batch > samples {
        return Err(Error::Msg(format!(
            "--batch-size {batch} is larger than the {samples} samples of --data {data}: a batch \
             would hold some pairs twice, each the other's false negative; give --batch-size ≤ \
             {samples} or more data"
        )));
    }
    Ok(())
}

/// The samples of a finite source: a CSV's rows, the keys of WebDataset shards (counted from
/// the tar headers; a shard that cannot be read counts none: the loader skips and counts it).
fn samples_of(source: &Source) -> Option<usize> {
    match source {
        Source::Csv { rows, .. } => Some(rows.len()),
        Source::WebDataset { shards } => Some(
            shards
                .iter()
                .filter_map(|s| crate::data::sources::index_shard(s).ok())
                .map(|ix| ix.samples.len())
                .sum(),
        ),
        Source::ImageFolder(f) => Some(f.samples.len()),
        Source::Synthetic { .. } => None,
    }
}

/// The steps of `epochs` passes over `data` at `batch` pairs a step: `epochs × ⌊samples /
/// batch⌋`. Batches run on across an epoch's end (the stream does not restart at a batch
/// boundary), so the run sees `epochs × ⌊samples / batch⌋ × batch` samples: the samples of
/// `epochs` full passes less `epochs × (samples mod batch)`, which fall at the end of the last
/// pass. An error for the synthetic dataset (infinite) and for data smaller than a batch.
pub fn steps_for_epochs(data: &DataSpec, epochs: usize, batch: usize) -> Result<usize> {
    let DataSpec::Files(d) = data else {
        return Err(Error::Msg(
            "--epochs counts passes over finite --data; the synthetic dataset is infinite: give              --steps"
                .into(),
        ));
    };
    if epochs == 0 {
        return Err(Error::Msg(
            "--epochs 0: nothing to train; give at least 1".into(),
        ));
    }
    let samples = samples_of(&eval::files_source(d)?).unwrap_or(0);
    let per_epoch = samples / batch.max(1);
    if per_epoch == 0 {
        return Err(Error::Msg(format!(
            "--data {d} has {samples} samples, fewer than one --batch-size {batch}: an epoch \
             would be no step"
        )));
    }
    Ok(epochs * per_epoch)
}

/// A run in progress.
pub struct Trainer {
    pub model: Clip,
    pub config: TrainConfig,
    pub opt: AdamW,
    pub step: usize,
    pub data: DataStream,
    pub data_spec: DataSpec,
    /// For zero-shot evaluation on the held-out split (also when training on files); `None` when
    /// the model's images are below the synthetic scenes' minimum size (then not evaluated).
    pub eval_data: Option<Synthetic>,
    /// Where the step runs: the model's parameters and the optimizer state live there, batches
    /// are uploaded there, and only the step's statistics come back ([`Trainer::to_device`]).
    pub device: Device,
    /// Moves batches to a kernel device (on Cuda on a copy stream, double-buffered).
    uploader: BatchUploader,
    /// On a kernel device, the next step's batch: fetched and uploaded while this step computes.
    next: Option<NextBatch>,
    /// Data parallelism ([`Trainer::set_communicator`]): this rank's handle on its group. `None`:
    /// one process.
    dist: Option<Box<dyn Communicator>>,
    /// The dynamic loss scale of the f16 precisions (`None` under the others).
    pub scaler: Option<LossScaler>,
    /// ZeRO-1 ([`Trainer::set_zero1`]): which rank owns each trainable parameter's optimizer
    /// state; `opt` then holds this rank's parameters only.
    zero: Option<Zero1>,
}

/// ZeRO stage 1 on one rank: the trainable parameters (in the optimizer's order) and each one's
/// owner, the rank that keeps its AdamW moments and computes its update.
struct Zero1 {
    params: Vec<crate::Param>,
    owner: Vec<usize>,
}

/// The owner of each of `sizes` (elements per parameter, in order) among `world` ranks:
/// contiguous runs of parameters of about equal total size, parameter i going to the rank
/// whose share of the total its midpoint falls in.
pub fn zero1_owners(sizes: &[usize], world: usize) -> Vec<usize> {
    let total: usize = sizes.iter().sum::<usize>().max(1);
    let mut before = 0usize;
    sizes
        .iter()
        .map(|&n| {
            let mid = before as u128 * 2 + n as u128;
            before += n;
            ((mid * world as u128 / (2 * total as u128)) as usize).min(world - 1)
        })
        .collect()
}

/// A batch fetched (and its upload started) one step ahead.
struct NextBatch {
    /// The data position before it was fetched: what a checkpoint records, since the batch has
    /// not been trained on yet (a resumed run fetches it again).
    position: serde_json::Value,
    /// The fetch's outcome, reported by the step that would have used it.
    batch: Result<(Staged, Vec<u32>)>,
}

/// What one step reports (a metrics line).
#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    /// exp(logit_scale) as the step's logits used it (before this step's update and clamp).
    pub logit_scale: f32,
    pub i2t_acc: f32,
    pub t2i_acc: f32,
    pub grad_norm: Option<f64>,
    pub pairs_per_s: f64,
    /// f16 precisions: the loss scale this step's backward used, whether its update was skipped
    /// (a gradient overflowed at that scale) and the steps skipped so far in the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

/// A parameter magnitude that means the run diverged (see [`Trainer::check_params`]). CLIP's
/// weights are initialised at O(0.01–1), LayerNorm keeps activations normalised and the
/// temperature is clamped at ln 100; a weight past this is an update out of control (the issue's
/// `--lr 1e6` made weights of 2·10¹⁵ in three steps).
pub const EXPLODED: f32 = 1e5;

/// Checkpoint metadata: the `--data` the run trains on (a [`DataSpec`] as JSON), so that a resume
/// on other data is noticed.
const DATA_SPEC_KEY: &str = "clipcu.data_spec";

/// Checkpoint metadata: the f16 precisions' loss scaler ([`LossScaler`] as JSON).
const LOSS_SCALER_KEY: &str = "clipcu.loss_scaler";

impl Trainer {
    /// A fresh run: model initialised from `seed`.
    pub fn new(model_config: &ClipConfig, config: TrainConfig, data: DataSpec) -> Result<Trainer> {
        config.validate()?;
        Self::build(Clip::new(model_config, config.seed), config, data, None)
    }

    /// A fine-tune: a fresh run (step 0, fresh optimizer) from `model`'s weights, e.g. loaded
    /// with [`weights::load_clip`] from open_clip, OpenAI or Hugging Face files; its
    /// `logit_scale` as loaded. `config.lock` is applied to it.
    pub fn fine_tune(model: Clip, config: TrainConfig, data: DataSpec) -> Result<Trainer> {
        config.validate()?;
        Self::build(model, config, data, None)
    }

    fn build(
        mut model: Clip,
        config: TrainConfig,
        data_spec: DataSpec,
        start: Option<DataPosition>,
    ) -> Result<Trainer> {
        let model_config = &model.config.clone();
        model.set_checkpointing(config.checkpointing);
        // Before the optimizer: it keeps state for the trainable parameters only.
        config.lock.apply(&mut model)?;
        let precision = config.precision();
        store_weights_as(&model, precision.weights())?;
        model.step_precision = crate::model::StepPrecision {
            autocast: precision.autocast(),
            loss_scale: 1.0,
        };
        let opt = AdamW::new(
            &model.parameters(),
            AdamWConfig {
                lr: config.lr,
                weight_decay: config.weight_decay,
                moments: precision.moments(),
                ..AdamWConfig::default()
            },
        );
        let data = DataStream::open(&data_spec, &config, model_config, start)?;
        let eval_data = Synthetic::try_new(SyntheticConfig {
            seed: config.seed,
            image_size: model_config.vision_cfg.image_size as u32,
        })
        .ok();
        Ok(Trainer {
            model,
            config,
            opt,
            step: 0,
            data,
            data_spec,
            eval_data,
            device: Device::Cpu,
            uploader: BatchUploader::new(Device::Cpu)?,
            zero: None,
            next: None,
            dist: None,
            scaler: precision.loss_scaling().then(LossScaler::default),
        })
    }

    /// Move the run to `device` (Cpu, Emu or Cuda): the model's parameters and buffers and the
    /// optimizer's moments. Every later step runs there; checkpoints still hold host tensors, so
    /// a run saved on one device resumes on any other.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        device.ensure_available()?;
        if self.config.precision() == Precision::Tf32 {
            match device {
                Device::Cuda(i) => crate::device::cuda::CudaBackend::get(i)?.set_tf32(true),
                d => {
                    return Err(Error::Msg(format!(
                        "--precision tf32 needs a Cuda device (TF32 is a tensor-core format); \
                         {d} computes in fp32: give --precision fp32 there"
                    )))
                }
            }
        }
        self.model.to_device(device)?;
        // Fixed shapes on a kernel device: the text tower runs the full context instead of
        // cutting each batch after its last EOT (exact either way under the causal mask), so every
        // step has the same shapes and the caching allocator reaches its steady state (no device
        // allocation after the first step; a step could be captured as a CUDA graph). The CPU
        // keeps the cut, which saves it compute.
        self.model.text.truncate = !crate::device::kernel::runs_kernels(device);
        self.opt.to_device(device)?;
        if let Some(n) = self.next.take() {
            // the batch fetched ahead follows the run (the data stream has moved past it)
            let batch = n
                .batch
                .and_then(|(s, ids)| Ok((Staged::Ready(s.ready()?.to_device(device)?), ids)));
            self.next = Some(NextBatch {
                position: n.position,
                batch,
            });
        }
        self.uploader = BatchUploader::new(device)?;
        // Gradient storage now rather than in the first backward: the first step then allocates
        // what every later one does (no device allocation after it).
        for p in self.model.parameters() {
            p.reserve_grad()?;
        }
        self.device = device;
        Ok(())
    }

    /// Make this trainer one rank of a data-parallel group (`train::data_parallel`): from now on
    /// each step reads this rank's part of the global batch (`--batch-size` pairs over all
    /// ranks), runs the data-parallel step, and — in [`Trainer::run`] — only rank 0 writes
    /// metrics, evaluations and checkpoints. Every rank must be built the same way (same
    /// config, seed, weights or checkpoint), so that the replicas start equal. An error when the
    /// world size does not divide the batch, or once a batch was fetched ahead.
    pub fn set_communicator(&mut self, comm: Box<dyn Communicator>) -> Result<()> {
        local_batch(self.config.batch_size, comm.world_size())?;
        if self.next.is_some() {
            return Err(Error::Msg(
                "set_communicator: a batch was already fetched for one process; join the group \
                 before the first step"
                    .into(),
            ));
        }
        // file data: from now on this rank reads and decodes only its part of each global
        // batch (the loader's part mode), from the same global position
        if let DataStream::Files(l) = &self.data {
            let part = (comm.world_size() > 1).then(|| crate::data::Part {
                rank: comm.rank(),
                world: comm.world_size(),
            });
            if l.config().part != part {
                self.data = DataStream::Files(Box::new(l.repartitioned(part)?));
            }
        }
        self.dist = Some(comm);
        Ok(())
    }

    /// ZeRO-1 (`--zero1`): from now on this rank keeps the AdamW moments of its share of the
    /// trainable parameters only ([`zero1_owners`]: contiguous runs of about equal size) and
    /// updates those. The step reduce-scatters the gradients so that each parameter's sum lands
    /// on its owner only (`data_parallel::reduce_gradients_to_owners`), clips with the global
    /// norm (the shards' Σ g² all-reduced: `AdamW::sharded_unscale_clip_grad_norm`), updates,
    /// and all-gathers the updated parameters (`data_parallel::all_gather_parameters`), so
    /// every rank again holds the same weights. A checkpoint gathers the moments first (every
    /// rank takes part), so it is the unsharded checkpoint: it resumes with or without ZeRO at
    /// any world size. Needs the group ([`Trainer::set_communicator`]) first. Every device and
    /// precision: the sharded optimizer keeps its moments where the parameters are, in the
    /// precision's format, and under a loss scaler the overflow test is the global norm's, so
    /// every rank skips the same steps.
    pub fn set_zero1(&mut self) -> Result<()> {
        let Some(comm) = &self.dist else {
            return Err(Error::Msg(
                "--zero1 shards the optimizer state over data-parallel ranks: give \
                 --nproc-per-node N (or a launcher's ranks)"
                    .into(),
            ));
        };
        if self.zero.is_some() {
            return Ok(());
        }
        let params: Vec<crate::Param> = self
            .model
            .parameters()
            .into_iter()
            .filter(|p| p.requires_grad())
            .collect();
        let sizes: Vec<usize> = params.iter().map(|p| p.value().numel()).collect();
        let (rank, world) = (comm.rank(), comm.world_size());
        let owner = zero1_owners(&sizes, world);
        let mine: Vec<usize> = (0..params.len()).filter(|&i| owner[i] == rank).collect();
        // this rank's share of the state the full optimizer holds (fresh or resumed)
        let full: std::collections::HashMap<String, Tensor> =
            self.opt.state()?.into_iter().collect();
        let mut sharded = AdamW::new_shard(&params, &mine, self.opt.config)?;
        sharded.load_state(&full)?;
        self.opt = sharded;
        self.zero = Some(Zero1 { params, owner });
        Ok(())
    }

    /// Whether this trainer shards its optimizer state (ZeRO-1).
    pub fn zero1(&self) -> bool {
        self.zero.is_some()
    }

    /// The whole optimizer state, for a checkpoint. Under ZeRO-1 a collective: every rank must
    /// call it at the same point (each parameter's moments are broadcast from their owner).
    fn optimizer_state(&self) -> Result<Vec<(String, Tensor)>> {
        let (Some(z), Some(comm)) = (&self.zero, &self.dist) else {
            return self.opt.state();
        };
        let mine: std::collections::HashMap<String, Tensor> =
            self.opt.state()?.into_iter().collect();
        let mut out = vec![(
            "step".to_string(),
            mine.get("step")
                .cloned()
                .unwrap_or_else(|| Tensor::scalar(0.0)),
        )];
        for (p, &o) in z.params.iter().zip(&z.owner) {
            // what an optimizer of this parameter alone saves (names, shapes and dtypes of its
            // moments, and of their block scales under f16 moments), filled by the owner
            let template = AdamW::new(std::slice::from_ref(p), self.opt.config).state()?;
            for (key, zeros) in template.into_iter().filter(|(k, _)| k != "step") {
                let t = match mine.get(&key) {
                    Some(t) if o == comm.rank() => t.clone(),
                    _ => zeros,
                };
                out.push((key, comm.broadcast(&t, o)?));
            }
        }
        Ok(out)
    }

    /// ZeRO-1's update (after the clip with the global norm): this rank's AdamW step on the
    /// parameters it owns (it holds only their gradients), then every parameter all-gathered
    /// from its owner.
    fn zero1_step(&mut self, lr: f64) -> Result<()> {
        let (Some(z), Some(comm)) = (&self.zero, &self.dist) else {
            return Err(Error::Msg("zero1_step without ZeRO-1".into()));
        };
        self.opt.step(lr)?;
        z.params.iter().for_each(|p| p.zero_grad());
        super::data_parallel::all_gather_parameters(
            &z.params,
            &z.owner,
            comm.as_ref(),
            super::data_parallel::BUCKET_ELEMENTS,
        )
    }

    /// This process's rank in its data-parallel group (0 without one).
    pub fn rank(&self) -> usize {
        self.dist.as_ref().map_or(0, |c| c.rank())
    }

    /// The ranks of the data-parallel group (1 without one).
    pub fn world_size(&self) -> usize {
        self.dist.as_ref().map_or(1, |c| c.world_size())
    }

    pub fn schedule(&self) -> LrSchedule {
        let c = &self.config;
        if c.constant_lr {
            LrSchedule::Constant {
                base: c.lr,
                warmup: c.warmup,
            }
        } else {
            LrSchedule::Cosine {
                base: c.lr,
                warmup: c.warmup,
                total: c.steps,
            }
        }
    }

    /// One optimisation step on the run's next batch.
    pub fn train_step(&mut self) -> Result<StepLog> {
        let start = Instant::now();
        let ctx = self.model.config.text_cfg.context_length;
        let (images, ids) = match self.next.take() {
            Some(next) => {
                let (staged, ids) = next.batch?;
                (staged.ready()?, ids)
            }
            None => {
                let (rank, world) = (self.rank(), self.world_size());
                let (images, ids) =
                    self.data
                        .next_part(self.config.batch_size, ctx, rank, world)?;
                (self.uploader.upload(&images)?.ready()?, ids)
            }
        };
        self.step_with(images, &ids, start, true)
    }

    /// Whether the next step's batch has already been fetched (and its upload started): on a
    /// kernel device between two steps of a run, until the last.
    pub fn has_batch_ahead(&self) -> bool {
        self.next.is_some()
    }

    /// Fetch the next step's batch and start its upload (the device is busy with this step).
    fn fetch_ahead(&mut self) {
        let position = self.data.position();
        let ctx = self.model.config.text_cfg.context_length;
        let (rank, world) = (self.rank(), self.world_size());
        let batch = self
            .data
            .next_part(self.config.batch_size, ctx, rank, world)
            .and_then(|(images, ids)| Ok((self.uploader.upload(&images)?, ids)));
        self.next = Some(NextBatch { position, batch });
    }

    /// One optimisation step on a given batch (images [N, 3, S, S], token rows [N, T]): what
    /// [`Trainer::train_step`] does after fetching its batch — forward/backward in micro-batches,
    /// clipping, AdamW at this step's learning rate, the `logit_scale` clamp. `started` is when the
    /// step began (for pairs/s). Public so that tests can drive the real step on fixture batches.
    ///
    /// Errors when the step diverged: a non-finite loss or gradient norm (the update is then not
    /// applied), or, on the CPU, parameters that are non-finite or exploded after the update (it
    /// is then applied in memory: stop the run; nothing of it has been saved).
    pub fn train_step_on(
        &mut self,
        images: &Tensor,
        ids: &[u32],
        started: Instant,
    ) -> Result<StepLog> {
        let images = images.to_device(self.device)?;
        self.step_with(images, ids, started, false)
    }

    /// The step on a batch already on the device; with `fetch_ahead`, on a kernel device the
    /// next step's batch is fetched and its upload started once this step's forward and
    /// backward are queued (they run while the host loads data), when there is a next step.
    fn step_with(
        &mut self,
        images: Tensor,
        ids: &[u32],
        started: Instant,
        fetch_ahead: bool,
    ) -> Result<StepLog> {
        let micro = if self.config.micro_batch == 0 {
            self.config.batch_size
        } else {
            self.config.micro_batch
        };
        let loss_scale = self.scaler.map(|s| s.scale);
        self.model.step_precision.loss_scale = loss_scale.unwrap_or(1.0);
        // Data parallel: gradients all-reduced inside, so that every rank holds the full batch's
        // gradient and the clip below sees the global norm.
        let stats = match &self.dist {
            Some(comm) => {
                let sum = match &self.zero {
                    Some(z) => GradientSum::ToOwners {
                        params: &z.params,
                        owner: &z.owner,
                    },
                    None => GradientSum::Everywhere,
                };
                data_parallel_forward_backward(
                    &self.model,
                    &images,
                    ids,
                    micro,
                    comm.as_ref(),
                    sum,
                )?
            }
            None => contrastive_forward_backward_deferred(&self.model, &images, ids, micro)?,
        };
        // On a kernel device the clip factor stays in device memory for the step below. With a
        // loss scaler the norm is always taken: it unscales the gradients and tells an
        // overflowed step. Under ZeRO-1 each rank holds its shard's gradients only: the norm is
        // the shards' Σ g² all-reduced, the same on every rank (and so is a skip).
        let inv_scale = loss_scale.map_or(1.0, |s| 1.0 / s as f64);
        let max = self.config.grad_clip;
        let norm = match (&self.zero, &self.dist) {
            _ if max.is_none() && loss_scale.is_none() => None,
            (Some(_), Some(comm)) => {
                let device = self.device;
                let over_ranks = |t: &Tensor| comm.all_reduce_sum(&t.to_device(device)?);
                Some(self.opt.sharded_unscale_clip_grad_norm(
                    max.unwrap_or(f64::INFINITY),
                    inv_scale,
                    &over_ranks,
                )?)
            }
            _ => Some(
                self.opt
                    .unscale_clip_grad_norm(max.unwrap_or(f64::INFINITY), inv_scale)?,
            ),
        };
        let kernel_device = crate::device::kernel::runs_kernels(self.device);
        if fetch_ahead && kernel_device && self.step + 1 < self.config.steps {
            self.fetch_ahead();
        }
        // The one readback of the step, before the update is applied: loss, accuracies, the
        // scale the logits used, and the gradient norm before clipping.
        let scale = self.model.logit_scale.value();
        let mut scalars = vec![
            &stats.loss,
            &stats.image_to_text_acc,
            &stats.text_to_image_acc,
            &scale,
        ];
        scalars.extend(norm.as_ref());
        let v = read_scalars(&scalars)?;
        // values computed with a collective that failed meanwhile (NCCL's watchdog aborted it)
        // are not this step's: the communicator's error is the step's
        if let Some(comm) = &self.dist {
            comm.check()?;
        }
        let (loss, logit_scale) = (v[0], v[3]);
        let grad_norm = norm.map(|_| v[4] as f64);
        let lr = self.schedule().lr(self.step);
        // The f16 scaler: an overflowed gradient (non-finite norm at this scale) skips the
        // update and halves the scale; the step still counts (the schedule moves on), as under
        // torch's GradScaler.
        let skipped = match self.scaler.as_mut() {
            Some(scaler) if loss.is_finite() => {
                !scaler.update(grad_norm.is_some_and(f64::is_finite))
            }
            _ => false,
        };
        if skipped {
            drop(scale);
            self.opt.skip_step();
            self.uploader.release(&images)?;
            self.step += 1;
        } else {
            // Checked before the update is applied: a non-finite loss, or a non-finite gradient
            // norm (which would make the whole update non-finite). The step is named as
            // metrics.jsonl numbers it (its line would have said `"step": n`).
            if !loss.is_finite() {
                drop(scale);
                return Err(self.diverged(format!("the loss is {loss}"), &images, lr));
            }
            if let Some(g) = grad_norm.filter(|g| !g.is_finite()) {
                drop(scale);
                return Err(self.diverged(format!("the gradient norm is {g}"), &images, lr));
            }
            // The update writes logit_scale in place: a handle still held here would cost a
            // copy-on-write of it (and a new optimizer table) every step.
            drop(scale);
            if self.zero.is_some() {
                self.zero1_step(lr)?;
            } else {
                self.opt.step(lr)?;
            }
            // CLIP clamps the temperature in place after every step: exp(logit_scale) ≤ 100.
            clamp_in_place(&self.model.logit_scale, 0.0, 100f32.ln())?;
            self.uploader.release(&images)?; // every kernel that reads the batch is queued
            self.step += 1;
            // On the CPU the parameters are checked after every update (one pass over them, in
            // place); on a kernel device that would download them every step, so there they are
            // checked with the moments before each checkpoint ([`Trainer::check_state`]), and per
            // step only through the loss and the gradient norm above.
            if !crate::device::kernel::runs_kernels(self.device) {
                if let Some(problem) = self.check_params()? {
                    return Err(Error::Msg(format!(
                        "step {}: after its update (learning rate {lr:.3e}) {problem}; the run \
                         diverged and nothing of this step was saved; {}",
                        self.step,
                        self.likely_cause(lr)
                    )));
                }
            }
        }
        Ok(StepLog {
            step: self.step,
            loss,
            lr,
            logit_scale: logit_scale.exp(),
            i2t_acc: v[1],
            t2i_acc: v[2],
            grad_norm,
            pairs_per_s: (images.shape()[0] * self.world_size()) as f64
                / started.elapsed().as_secs_f64(),
            loss_scale,
            skipped,
            skipped_steps: self.scaler.map(|s| s.skipped),
        })
    }

    /// The parameters' problem, if any: a non-finite element (named by tensor), or a largest
    /// magnitude over [`EXPLODED`]. Reads every parameter (downloads them from a device).
    pub fn check_params(&self) -> Result<Option<String>> {
        let params: Vec<(String, Tensor)> = self
            .model
            .named_params()
            .into_iter()
            .map(|(n, p)| (n, p.value()))
            .collect();
        params_problem(&params)
    }

    /// [`Trainer::check_params`], then the optimizer's moments (non-finite elements): what is
    /// checked before a checkpoint is written, on every device.
    pub fn check_state(&self) -> Result<Option<String>> {
        if let Some(p) = self.check_params()? {
            return Ok(Some(p));
        }
        moments_problem(&self.opt.state()?)
    }

    /// What most likely made a run diverge, and what to do.
    fn likely_cause(&self, lr: f64) -> String {
        let (clip, fix) = match self.config.grad_clip {
            None => (
                ", with no --grad-clip".to_string(),
                "lower --lr or add --grad-clip",
            ),
            Some(c) => (format!(", with --grad-clip {c}"), "lower --lr"),
        };
        format!(
            "the likely cause is a learning rate too high for this model (--lr {:e}, {lr:.3e} at \
             this step{clip}): {fix}, and resume from a checkpoint written before the divergence",
            self.config.lr
        )
    }

    /// The error for a step whose loss or gradient norm is not finite (its update not applied):
    /// the step as metrics.jsonl numbers it and what is likely wrong, found by looking at the
    /// batch and the weights (downloaded from a device: this happens once, at the error).
    fn diverged(&self, what: String, images: &Tensor, lr: f64) -> Error {
        let step = self.step + 1;
        let head = format!("step {step}: {what}, so its update was not applied");
        if let Ok(s) = images.value_stats() {
            if s.non_finite > 0 {
                return Error::Msg(format!(
                    "{head}: the batch's images hold {} non-finite values (a broken input \
                     pipeline, not the learning rate)",
                    s.non_finite
                ));
            }
        }
        match self.check_params() {
            Ok(Some(problem)) if problem.contains("not finite") => Error::Msg(format!(
                "{head}: the weights were already non-finite before this step: {problem}; an \
                 earlier update diverged (on a kernel device the weights are checked at each \
                 checkpoint, not every step); {}",
                self.likely_cause(lr)
            )),
            Ok(Some(problem)) => {
                Error::Msg(format!("{head}: {problem}; {}", self.likely_cause(lr)))
            }
            _ => Error::Msg(format!(
                "{head}: the weights are finite, so the logits or gradients overflowed; {}",
                self.likely_cause(lr)
            )),
        }
    }

    /// Save weights, optimizer state, step and data position to `path`, atomically.
    /// The state is checked first (as [`Trainer::check_state`], on the same host copies that are
    /// then written: one download of parameters and moments per checkpoint): a diverged run is an
    /// error here and the checkpoint already on disk is left as it was.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let params = self
            .model
            .named_params()
            .into_iter()
            .map(|(n, p)| Ok((n, p.value().to_device(Device::Cpu)?)))
            .collect::<Result<Vec<(String, Tensor)>>>()?;
        let state = self.optimizer_state()?;
        let problem = match params_problem(&params)? {
            Some(p) => Some(p),
            None => moments_problem(&state)?,
        };
        if let Some(problem) = problem {
            return Err(Error::Msg(format!(
                "step {}: {problem}, so no checkpoint was written ({} is left as it was); {}",
                self.step,
                path.display(),
                self.likely_cause(self.schedule().lr(self.step.saturating_sub(1)))
            )));
        }
        let mut tensors = params;
        tensors.extend(state.into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), "clipcu".into());
        meta.insert(
            DATA_SPEC_KEY.into(),
            serde_json::to_string(&self.data_spec).expect("data spec serialises"),
        );
        meta.insert(weights::CONFIG_KEY.into(), self.model.config.to_json());
        meta.insert(
            weights::ACTIVATION_KEY.into(),
            if self.model.config.quick_gelu {
                "quick_gelu"
            } else {
                "gelu"
            }
            .into(),
        );
        meta.insert("clipcu.step".into(), self.step.to_string());
        // For the record: the data position is global, so the run resumes at any world size.
        meta.insert("clipcu.world_size".into(), self.world_size().to_string());
        meta.insert(
            "clipcu.train".into(),
            serde_json::to_string(&self.config).expect("config serialises"),
        );
        let position = match &self.next {
            Some(n) => n.position.clone(),
            None => self.data.position(),
        };
        meta.insert("clipcu.data".into(), position.to_string());
        meta.insert(
            "clipcu.precision".into(),
            self.config.precision().to_string(),
        );
        if let Some(s) = &self.scaler {
            meta.insert(
                LOSS_SCALER_KEY.into(),
                serde_json::to_string(s).expect("scaler serialises"),
            );
        }
        st::save(path, &refs, &meta)
    }

    /// Continue a run from a checkpoint written by `save_checkpoint`.
    pub fn resume(path: &Path, mut config: TrainConfig, data_spec: DataSpec) -> Result<Trainer> {
        let file = st::load(path)?;
        let meta = |k: &str| {
            file.metadata.get(k).cloned().ok_or_else(|| {
                Error::format(
                    path,
                    format!("not a clipcu training checkpoint: metadata `{k}` missing"),
                )
            })
        };
        let model_config =
            ClipConfig::from_json(&meta(weights::CONFIG_KEY)?, &path.display().to_string())?;
        // As for a fresh run: the text tower must take the tokenizer's ids.
        model_config.check_tokenizer_vocab(&format!(
            "{} (metadata {})",
            path.display(),
            weights::CONFIG_KEY
        ))?;
        config.validate()?;
        let saved: TrainConfig = serde_json::from_str(&meta("clipcu.train")?)
            .map_err(|e| Error::format(path, format!("clipcu.train: {e}")))?;
        // The locks decide which parameters have optimizer state: the checkpoint's hold.
        if config.lock != saved.lock {
            if config.lock != Locking::default() {
                return Err(Error::format(
                    path,
                    format!(
                        "the run was made with the locks {:?}, this resume gives {:?}: a resumed \
                         run keeps its checkpoint's locks (leave the --lock-* options out)",
                        saved.lock, config.lock
                    ),
                ));
            }
            config.lock = saved.lock;
        }
        // The transform is part of how the run trains: the checkpoint's setting holds.
        config.augment = saved.augment;
        // The precision: the checkpoint's unless --precision gives another, which converts the
        // stored weights and moments on load.
        match config.precision {
            None => config.precision = Some(saved.precision()),
            Some(p) if p != saved.precision() => eprintln!(
                "note: the checkpoint was trained under --precision {}, this run continues under \
                 {p}: weights and Adam moments are converted on load (rounded to nearest where \
                 they narrow), so the numbers differ from an uninterrupted run",
                saved.precision()
            ),
            Some(_) => {}
        }
        if saved.seed != config.seed
            || saved.batch_size != config.batch_size
            || saved.shape_groups != config.shape_groups
        {
            eprintln!("warning: resuming with seed/batch size/shape groups {}/{}/{} over a run made with {}/{}/{}: data order and numbers will differ from an uninterrupted run", config.seed, config.batch_size, config.shape_groups, saved.seed, saved.batch_size, saved.shape_groups);
        }
        let data: serde_json::Value = serde_json::from_str(&meta("clipcu.data")?)
            .map_err(|e| Error::format(path, format!("clipcu.data: {e}")))?;
        let files_position = match data["source"].as_str() {
            Some("files") => Some(
                serde_json::from_value::<DataPosition>(data["position"].clone())
                    .map_err(|e| Error::format(path, format!("clipcu.data position: {e}")))?,
            ),
            _ => None,
        };
        if files_position.is_some() != matches!(data_spec, DataSpec::Files(_)) {
            return Err(Error::format(path, "the checkpoint was trained on other data (synthetic vs files): give the same --data"));
        }
        // Other files: the stored position (epoch, shard, sample) would index into them as if
        // they were the same; that is right when the data only moved, so a warning.
        if let Some(saved) = file.metadata.get(DATA_SPEC_KEY) {
            let saved: DataSpec = serde_json::from_str(saved)
                .map_err(|e| Error::format(path, format!("{DATA_SPEC_KEY}: {e}")))?;
            if let (DataSpec::Files(was), DataSpec::Files(now)) = (&saved, &data_spec) {
                if was != now {
                    eprintln!(
                        "warning: the checkpoint was trained on --data {was:?}, this run gives \
                         {now:?}: it resumes at the checkpoint's position (epoch, shard, sample) \
                         in the new data as if it were the same data; if it is not, the data \
                         order differs from an uninterrupted run"
                    );
                }
            }
        }
        let model = Clip::new(&model_config, config.seed);
        let mut t = Trainer::build(model, config, data_spec, files_position)?;
        weights::load_into(&t.model, path)?;
        // load_into widens to f32; the pure precisions store the weights in 16 bits (exact when
        // the checkpoint's were those 16 bits)
        store_weights_as(&t.model, t.config.precision().weights())?;
        if let (Some(scaler), Some(saved)) = (t.scaler.as_mut(), file.metadata.get(LOSS_SCALER_KEY))
        {
            *scaler = serde_json::from_str(saved)
                .map_err(|e| Error::format(path, format!("{LOSS_SCALER_KEY}: {e}")))?;
        }
        let state: HashMap<String, Tensor> = file
            .tensors
            .into_iter()
            .filter_map(|(n, v)| n.strip_prefix("optim.").map(|k| (k.to_string(), v)))
            .collect();
        for (name, v) in &state {
            weights::check_finite(v, &format!("optim.{name}"), path)?;
        }
        t.opt.load_state(&state)?;
        t.step = meta("clipcu.step")?
            .parse()
            .map_err(|_| Error::format(path, "clipcu.step is not a number"))?;
        if t.step >= t.config.steps {
            return Err(Error::format(
                path,
                format!(
                    "the checkpoint is at step {} and --steps is {}: nothing is left to train \
                     (give --steps above {})",
                    t.step, t.config.steps, t.step
                ),
            ));
        }
        if let DataStream::Synthetic(s) = &mut t.data {
            s.next_index = data["next_index"]
                .as_u64()
                .ok_or_else(|| Error::format(path, "clipcu.data lacks next_index"))?;
        }
        Ok(t)
    }

    /// Train to `config.steps`, writing metrics, checkpoints, evaluations and the plot under
    /// `opts.out`. Returns the last evaluations: the held-out synthetic shapes (synthetic data
    /// only), `opts.zeroshot`, `opts.validation`.
    ///
    /// Before the first step: temporary files that a killed run left in `opts.out` are removed;
    /// a fresh run into a folder that holds a run is refused (or, with `opts.overwrite`, the old
    /// run is deleted); a resumed run drops the lines of `metrics.jsonl` after its checkpoint's
    /// step (written by a run stopped after that checkpoint), so each step is there once.
    pub fn run(&mut self, opts: &RunOptions) -> Result<RunSummary> {
        opts.validate()?;
        if self.step >= self.config.steps {
            return Err(Error::Msg(format!(
                "the run is at step {} and --steps is {}: nothing is left to train",
                self.step, self.config.steps
            )));
        }
        if self.rank() != 0 {
            return self.run_follower(opts);
        }
        std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
        for tmp in st::stale_temp_files(&opts.out)? {
            match std::fs::remove_file(&tmp) {
                Ok(()) => eprintln!(
                    "removed {}: a temporary file left by a run that was killed while writing",
                    tmp.display()
                ),
                Err(e) => eprintln!("warning: could not remove {}: {e}", tmp.display()),
            }
        }
        let metrics_path = opts.out.join("metrics.jsonl");
        // A fresh run starts the file anew; a resumed one continues it from its step.
        let fresh = self.step == 0;
        if fresh {
            let found = existing_run(&opts.out);
            if !found.is_empty() && !opts.overwrite {
                return Err(Error::Msg(format!(
                    "{} already holds a run ({}): a fresh run would overwrite it; give --resume \
                     to continue it, --overwrite to replace it, or another --out",
                    opts.out.display(),
                    found.join(", ")
                )));
            }
            for f in &found {
                let p = opts.out.join(f);
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
            if !found.is_empty() {
                eprintln!(
                    "--overwrite: removed the earlier run in {} ({})",
                    opts.out.display(),
                    found.join(", ")
                );
            }
        } else {
            let dropped = truncate_metrics(&metrics_path, self.step)?;
            if dropped > 0 {
                eprintln!(
                    "{}: dropped {dropped} lines after step {} (written after the checkpoint by \
                     the run that stopped)",
                    metrics_path.display(),
                    self.step
                );
            }
        }
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(!fresh)
            .truncate(fresh)
            .open(&metrics_path)
            .map_err(|e| Error::io(&metrics_path, e))?;
        let bar = progress_bar(opts.progress, self.config.steps as u64, self.step as u64);
        let started = Instant::now();
        let mut summary = RunSummary::default();
        let mut said_no_eval = false;
        let mut recent = Vec::new();
        let on_files = matches!(self.data_spec, DataSpec::Files(_));
        if on_files && opts.eval_every > 0 && opts.zeroshot.is_none() {
            let msg = "note: training on --data: the synthetic shape evaluation is not run (it \
                       measures the synthetic task); --zeroshot-data FOLDER evaluates zero-shot \
                       on your classes, --val-data loss and recall on held-out pairs";
            eprintln!("{msg}");
        }
        while self.step < self.config.steps {
            let log = self.train_step().map_err(|e| stopped(e, &opts.out))?;
            recent.push(log.pairs_per_s);
            let line = serde_json::to_string(&log).expect("serialises");
            writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
            let rate = recent.iter().rev().take(20).sum::<f64>() / recent.len().min(20) as f64;
            let epoch = match (self.data.epoch(), self.config.epochs) {
                (Some(e), Some(n)) => format!("epoch {}/{n} · ", (e + 1).min(n as u64)),
                (Some(e), None) => format!("epoch {} · ", e + 1),
                (None, _) => String::new(),
            };
            // f16 precisions: the loss scale and the overflowed steps skipped so far
            let scaler = match (log.loss_scale, log.skipped_steps) {
                (Some(s), Some(k)) => format!(" · loss scale 2^{} · {k} skipped", s.log2()),
                _ => String::new(),
            };
            bar.set_message(format!(
                "{epoch}loss {:.3} · scale {:.1} · {:.0} pairs/s{scaler}",
                log.loss, log.logit_scale, rate
            ));
            bar.set_position(self.step as u64);
            if !opts.progress && (self.step.is_multiple_of(25) || self.step == 1) {
                eprintln!(
                    "step {:>6}/{}  {epoch}loss {:.4}  scale {:.1}  {:.0} pairs/s  {:.0}s{scaler}",
                    self.step,
                    self.config.steps,
                    log.loss,
                    log.logit_scale,
                    rate,
                    started.elapsed().as_secs_f64()
                );
            }
            let at_end = self.step == self.config.steps;
            let eval_data = match &self.eval_data {
                _ if on_files => None,
                Some(d) => Some(d),
                None if opts.eval_every > 0 && !said_no_eval => {
                    said_no_eval = true;
                    eprintln!("note: no held-out synthetic evaluation: the model's image_size is below the scenes' minimum of {}", Synthetic::MIN_IMAGE_SIZE);
                    None
                }
                None => None,
            };
            let due = opts.eval_every > 0 && (self.step.is_multiple_of(opts.eval_every) || at_end);
            // Evaluations see the model as it is used, BatchNorm on running statistics (the
            // training step after them puts it back), and leave it as it was.
            if due {
                self.model.set_training(false);
            }
            let say = |msg: String| {
                if opts.progress {
                    bar.println(msg);
                } else {
                    eprintln!("{msg}");
                }
            };
            if let Some(eval_data) = eval_data.filter(|_| due) {
                let (single, ens) =
                    eval::zero_shot(&self.model, eval_data, Task::Shape, opts.eval_samples)?;
                let (c_single, c_ens) =
                    eval::zero_shot(&self.model, eval_data, Task::Colour, opts.eval_samples)?;
                let line = serde_json::json!({ "step": self.step, "eval": "zeroshot-heldout", "shape_single": single, "shape_ensemble": ens, "colour_single": c_single, "colour_ensemble": c_ens });
                writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
                say(format!("step {}: held-out zero-shot top-1 — shape {:.1}% single template, {:.1}% ensembled; colour {:.1}% / {:.1}%", self.step, 100.0 * single, 100.0 * ens, 100.0 * c_single, 100.0 * c_ens));
                summary.heldout_shape = Some((single, ens));
            }
            let workers = self.config.workers.unwrap_or_else(default_workers);
            let batch = self.config.batch_size;
            if let Some(z) = opts.zeroshot.as_ref().filter(|_| due) {
                let r = z.evaluate(&self.model, batch, workers)?;
                let line = serde_json::json!({ "step": self.step, "eval": "zeroshot", "data": z.name, "top1": r.top1, "top5": r.top5, "samples": r.samples });
                writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
                say(format!(
                    "step {}: zero-shot on {} ({} images, {} classes) — top-1 {:.1}%, top-5 {:.1}%",
                    self.step,
                    z.name,
                    r.samples,
                    z.classes.len(),
                    100.0 * r.top1,
                    100.0 * r.top5
                ));
                summary.zeroshot = Some(r);
            }
            if let Some(v) = opts.validation.as_ref().filter(|_| due) {
                let r = v.evaluate(&self.model, batch, workers)?;
                let [i1, i5, i10] = r.image_to_text;
                let [t1, t5, t10] = r.text_to_image;
                let line = serde_json::json!({ "step": self.step, "eval": "val", "data": v.name, "val_loss": r.loss, "image_to_text_r1": i1, "image_to_text_r5": i5, "image_to_text_r10": i10, "text_to_image_r1": t1, "text_to_image_r5": t5, "text_to_image_r10": t10, "samples": r.samples });
                writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
                say(format!(
                    "step {}: validation on {} ({} pairs) — loss {:.4}; recall@1/5/10 image→text {:.1}/{:.1}/{:.1}%, text→image {:.1}/{:.1}/{:.1}%",
                    self.step, v.name, r.samples, r.loss,
                    100.0 * i1, 100.0 * i5, 100.0 * i10, 100.0 * t1, 100.0 * t5, 100.0 * t10
                ));
                summary.validation = Some(r);
            }
            if due {
                self.model.set_training(true);
            }
            if (opts.checkpoint_every > 0 && self.step.is_multiple_of(opts.checkpoint_every))
                || at_end
            {
                self.save_checkpoint(&opts.out.join(CHECKPOINT))
                    .map_err(|e| stopped(e, &opts.out))?;
                self.keep_checkpoint(&opts.out, opts.keep_checkpoints)?;
            }
        }
        bar.finish_and_clear();
        if let Some(m) = self.device.memory_stats()? {
            // The peak of the whole process on this device (the allocator's counters are global).
            let line = serde_json::json!({ "step": self.step, "device": self.device.to_string(), "peak_device_bytes": m.peak_in_use_bytes, "device_allocs": m.device_allocs });
            writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
            eprintln!(
                "{}: peak device memory {:.1} MiB in use, {} device allocations",
                self.device,
                m.peak_in_use_bytes as f64 / (1 << 20) as f64,
                m.device_allocs
            );
        }
        weights::save_clip(
            &self.model,
            opts.out.join("model.safetensors"),
            &BTreeMap::new(),
        )?;
        plot::plot_metrics(&metrics_path, &opts.out.join("training.png"))?;
        Ok(summary)
    }
}

impl Trainer {
    /// [`Trainer::run`] on a rank other than 0 of a data-parallel group: the same steps (their
    /// collectives pair with rank 0's), nothing written — rank 0 writes metrics, evaluations and
    /// checkpoints for the group (every rank holds the same weights and optimizer state; under
    /// ZeRO-1 each rank takes part in gathering the moments when rank 0 writes a checkpoint).
    fn run_follower(&mut self, opts: &RunOptions) -> Result<RunSummary> {
        while self.step < self.config.steps {
            self.train_step()?;
            let at_end = self.step == self.config.steps;
            let checkpoint = (opts.checkpoint_every > 0
                && self.step.is_multiple_of(opts.checkpoint_every))
                || at_end;
            if self.zero.is_some() && checkpoint {
                self.optimizer_state()?;
            }
        }
        Ok(RunSummary::default())
    }

    /// After `checkpoint.safetensors` was written for this step: keep it as
    /// `checkpoint-<step>.safetensors` too (a hard link) and delete the numbered checkpoints of
    /// earlier steps beyond the newest `keep`. Numbered checkpoints of later steps than this one
    /// (left by a run that went further before being resumed from an earlier checkpoint) are not
    /// touched until this run's own checkpoint of that step replaces them.
    fn keep_checkpoint(&self, out: &Path, keep: usize) -> Result<()> {
        if keep > 0 {
            st::link_atomic(out.join(CHECKPOINT), numbered_checkpoint(out, self.step))?;
        }
        let older: Vec<(usize, PathBuf)> = numbered_checkpoints(out)
            .into_iter()
            .filter(|(s, _)| *s <= self.step)
            .collect();
        for (_, p) in older.iter().take(older.len().saturating_sub(keep)) {
            if let Err(e) = std::fs::remove_file(p) {
                eprintln!(
                    "warning: could not remove the old checkpoint {}: {e}",
                    p.display()
                );
            }
        }
        Ok(())
    }
}

/// A run stopped by `e`: the error, with what is on disk to resume from.
fn stopped(e: Error, out: &Path) -> Error {
    let mut kept: Vec<String> = Vec::new();
    if out.join(CHECKPOINT).is_file() {
        kept.push(out.join(CHECKPOINT).display().to_string());
    }
    kept.extend(
        numbered_checkpoints(out)
            .into_iter()
            .map(|(_, p)| p.display().to_string()),
    );
    let on_disk = if kept.is_empty() {
        "no checkpoint was written".to_string()
    } else {
        format!(
            "on disk to resume from (--resume [FILE]): {}",
            kept.join(", ")
        )
    };
    Error::Msg(format!("{e}\n  the run stopped; {on_disk}"))
}

/// Drops the lines of the metrics file at `path` whose step is after `step` (and any line that
/// does not parse: one cut short by a kill), atomically; returns how many it dropped. A missing
/// file has none.
fn truncate_metrics(path: &Path, step: usize) -> Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for line in text.lines() {
        let line_step = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["step"].as_u64());
        if line_step.is_some_and(|s| s <= step as u64) {
            kept.push_str(line);
            kept.push('\n');
        } else if !line.trim().is_empty() {
            dropped += 1;
        }
    }
    if dropped > 0 || (!text.is_empty() && !text.ends_with('\n')) {
        st::write_atomic(path, kept.as_bytes())?;
    }
    Ok(dropped)
}

/// Store the trainable weights (all but `logit_scale`, which stays f32 under every precision) as
/// `dtype`: 16 bits under the pure precisions (rounded to nearest once; AdamW then updates them
/// with stochastic rounding), f32 otherwise (widened exactly, when a pure run resumes as another).
/// Buffers (BatchNorm's running statistics) and locked weights are left as they are.
fn store_weights_as(model: &Clip, dtype: crate::DType) -> Result<()> {
    for p in model.parameters() {
        if !p.requires_grad() || p.ptr_eq(&model.logit_scale) || p.value().dtype() == dtype {
            continue;
        }
        p.set_value(p.value().try_to_dtype(dtype)?)?;
    }
    Ok(())
}

/// The loader's default: one decoding thread per core.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn progress_bar(visible: bool, len: u64, pos: u64) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} · {msg} · ETA {eta}")
            .expect("template"),
    );
    bar.set_position(pos);
    bar
}

/// The problem of a set of parameters, if any: a non-finite element (named by tensor), or a
/// largest magnitude over [`EXPLODED`].
fn params_problem(params: &[(String, Tensor)]) -> Result<Option<String>> {
    let mut largest = (0f32, "");
    for (name, v) in params {
        let s = v.value_stats()?;
        if s.non_finite > 0 {
            return Ok(Some(format!(
                "the parameter `{name}` is not finite ({} of its {} elements are NaN or \
                 infinite)",
                s.non_finite,
                v.numel()
            )));
        }
        if s.max_abs > largest.0 {
            largest = (s.max_abs, name);
        }
    }
    if largest.0 > EXPLODED {
        return Ok(Some(format!(
            "the parameters exploded: `{}` reaches |w| = {:.3e}, over {EXPLODED:e} (no \
             healthy CLIP weight comes near it)",
            largest.1, largest.0
        )));
    }
    Ok(None)
}

/// The optimizer state's problem, if any: a non-finite moment (named by tensor).
fn moments_problem(state: &[(String, Tensor)]) -> Result<Option<String>> {
    for (name, t) in state {
        let s = t.value_stats()?;
        if s.non_finite > 0 {
            return Ok(Some(format!(
                "the optimizer state `optim.{name}` is not finite ({} of its {} elements are \
                 NaN or infinite)",
                s.non_finite,
                t.numel()
            )));
        }
    }
    Ok(None)
}
