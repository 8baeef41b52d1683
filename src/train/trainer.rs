//! The training loop: batches → contrastive forward/backward (optionally over micro-batches) →
//! gradient clipping → AdamW with the learning-rate schedule → logit-scale clamp; metrics as JSON
//! lines, zero-shot evaluation every `eval_every` steps, atomic checkpoints that hold everything a
//! bit-exact resume needs (weights, optimizer moments, step, data position), and a PNG plot at the
//! end.

use super::{contrastive_forward_backward_deferred, eval, plot, read_scalars, samples_to_tensor};
use crate::data::synthetic::{Split, Synthetic, SyntheticConfig, Task};
use crate::data::{CsvOptions, DataPosition, Loader, LoaderConfig, SkipStats, Source};
use crate::device::upload::{BatchUploader, Staged};
use crate::io::safetensors as st;
use crate::model::{weights, Clip, ClipConfig};
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
        let samples = self
            .data
            .grouped_batch(Split::Train, self.next_index, n, self.group);
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
                let source = if d.ends_with(".csv") || d.ends_with(".tsv") {
                    Source::csv(d, &CsvOptions::default())?
                } else {
                    Source::webdataset(d)?
                };
                let mut lc = LoaderConfig::new(cfg.batch_size, image_size);
                lc.context_length = model.text_cfg.context_length;
                lc.seed = cfg.seed;
                lc.drop_last = true;
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

    /// Samples skipped and counted so far (files only).
    pub fn skips(&self) -> Option<SkipStats> {
        match self {
            DataStream::Synthetic(_) => None,
            DataStream::Files(l) => Some(l.skips()),
        }
    }
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
    uploader: Option<BatchUploader>,
    /// On a kernel device, the next step's batch: fetched and uploaded while this step computes.
    next: Option<NextBatch>,
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
}

const CHECKPOINT: &str = "checkpoint.safetensors";

impl Trainer {
    /// A fresh run: model initialised from `seed`.
    pub fn new(model_config: &ClipConfig, config: TrainConfig, data: DataSpec) -> Result<Trainer> {
        Self::build(model_config, config, data, None)
    }

    fn build(
        model_config: &ClipConfig,
        config: TrainConfig,
        data_spec: DataSpec,
        start: Option<DataPosition>,
    ) -> Result<Trainer> {
        let mut model = Clip::new(model_config, config.seed);
        model.set_checkpointing(config.checkpointing);
        let opt = AdamW::new(
            &model.parameters(),
            AdamWConfig {
                lr: config.lr,
                weight_decay: config.weight_decay,
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
            uploader: None,
            next: None,
        })
    }

    /// Move the run to `device` (Cpu, Emu or Cuda): the model's parameters and buffers and the
    /// optimizer's moments. Every later step runs there; checkpoints still hold host tensors, so
    /// a run saved on one device resumes on any other.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        device.ensure_available()?;
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
        self.uploader = if crate::device::kernel::runs_kernels(device) {
            Some(BatchUploader::new(device)?)
        } else {
            None
        };
        // Gradient storage now rather than in the first backward: the first step then allocates
        // what every later one does (no device allocation after it).
        for p in self.model.parameters() {
            p.reserve_grad()?;
        }
        self.device = device;
        Ok(())
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
                let (images, ids) = self.data.next_batch(self.config.batch_size, ctx)?;
                (self.upload(&images)?.ready()?, ids)
            }
        };
        self.step_with(images, &ids, start, true)
    }

    /// Whether the next step's batch has already been fetched (and its upload started): on a
    /// kernel device between two steps of a run, until the last.
    pub fn has_batch_ahead(&self) -> bool {
        self.next.is_some()
    }

    fn upload(&mut self, images: &Tensor) -> Result<Staged> {
        match &mut self.uploader {
            Some(up) => up.upload(images),
            None => Ok(Staged::Ready(images.to_device(self.device)?)),
        }
    }

    /// Fetch the next step's batch and start its upload (the device is busy with this step).
    fn fetch_ahead(&mut self) {
        let position = self.data.position();
        let ctx = self.model.config.text_cfg.context_length;
        let batch = self
            .data
            .next_batch(self.config.batch_size, ctx)
            .and_then(|(images, ids)| Ok((self.upload(&images)?, ids)));
        self.next = Some(NextBatch { position, batch });
    }

    /// One optimisation step on a given batch (images [N, 3, S, S], token rows [N, T]): what
    /// [`Trainer::train_step`] does after fetching its batch — forward/backward in micro-batches,
    /// clipping, AdamW at this step's learning rate, the `logit_scale` clamp. `started` is when the
    /// step began (for pairs/s). Public so that tests can drive the real step on fixture batches.
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
        let stats = contrastive_forward_backward_deferred(&self.model, &images, ids, micro)?;
        // On a kernel device the clip factor stays in device memory for the step below.
        let norm = match self.config.grad_clip {
            Some(max) => Some(self.opt.clip_grad_norm(max)?),
            None => None,
        };
        if fetch_ahead && self.uploader.is_some() && self.step + 1 < self.config.steps {
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
        let (loss, logit_scale) = (v[0], v[3]);
        if !loss.is_finite() {
            return Err(Error::Msg(format!(
                "step {}: the loss is {} — lower --lr or add --grad-clip",
                self.step, loss
            )));
        }
        let grad_norm = norm.map(|_| v[4] as f64);
        // The update writes logit_scale in place: a handle still held here would cost a
        // copy-on-write of it (and a new optimizer table) every step.
        drop(scale);
        let lr = self.schedule().lr(self.step);
        self.opt.step(lr)?;
        // CLIP clamps the temperature in place after every step: exp(logit_scale) ≤ 100.
        clamp_in_place(&self.model.logit_scale, 0.0, 100f32.ln())?;
        if let Some(up) = &mut self.uploader {
            up.release(&images)?; // every kernel that reads the batch is queued
        }
        self.step += 1;
        Ok(StepLog {
            step: self.step,
            loss,
            lr,
            logit_scale: logit_scale.exp(),
            i2t_acc: v[1],
            t2i_acc: v[2],
            grad_norm,
            pairs_per_s: images.shape()[0] as f64 / started.elapsed().as_secs_f64(),
        })
    }

    /// Save weights, optimizer state, step and data position to `path`, atomically.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = self
            .model
            .named_params()
            .into_iter()
            .map(|(n, p)| (n, p.value()))
            .collect();
        tensors.extend(
            self.opt
                .state()
                .into_iter()
                .map(|(n, t)| (format!("optim.{n}"), t)),
        );
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), "clipcu".into());
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
        meta.insert(
            "clipcu.train".into(),
            serde_json::to_string(&self.config).expect("config serialises"),
        );
        let position = match &self.next {
            Some(n) => n.position.clone(),
            None => self.data.position(),
        };
        meta.insert("clipcu.data".into(), position.to_string());
        st::save(path, &refs, &meta)
    }

    /// Continue a run from a checkpoint written by `save_checkpoint`.
    pub fn resume(path: &Path, config: TrainConfig, data_spec: DataSpec) -> Result<Trainer> {
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
        let saved: TrainConfig = serde_json::from_str(&meta("clipcu.train")?)
            .map_err(|e| Error::format(path, format!("clipcu.train: {e}")))?;
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
        let mut t = Trainer::build(&model_config, config, data_spec, files_position)?;
        weights::load_into(&t.model, path)?;
        let state: HashMap<String, Tensor> = file
            .tensors
            .into_iter()
            .filter_map(|(n, v)| n.strip_prefix("optim.").map(|k| (k.to_string(), v)))
            .collect();
        t.opt.load_state(&state)?;
        t.step = meta("clipcu.step")?
            .parse()
            .map_err(|_| Error::format(path, "clipcu.step is not a number"))?;
        if let DataStream::Synthetic(s) = &mut t.data {
            s.next_index = data["next_index"]
                .as_u64()
                .ok_or_else(|| Error::format(path, "clipcu.data lacks next_index"))?;
        }
        Ok(t)
    }

    /// Train to `config.steps`, writing metrics, checkpoints, evaluations and the plot under
    /// `opts.out`. Returns the last evaluation (single-template, ensembled top-1 on shapes).
    pub fn run(&mut self, opts: &RunOptions) -> Result<Option<(f32, f32)>> {
        std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
        let metrics_path = opts.out.join("metrics.jsonl");
        // A fresh run starts the file anew (a second `clipcu train` into the same folder must not
        // mix its curve with the last run's); a resumed one continues it.
        let fresh = self.step == 0;
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(!fresh)
            .truncate(fresh)
            .open(&metrics_path)
            .map_err(|e| Error::io(&metrics_path, e))?;
        let bar = progress_bar(opts.progress, self.config.steps as u64, self.step as u64);
        let started = Instant::now();
        let mut last_eval = None;
        let mut said_no_eval = false;
        let mut recent = Vec::new();
        while self.step < self.config.steps {
            let log = self.train_step()?;
            recent.push(log.pairs_per_s);
            let line = serde_json::to_string(&log).expect("serialises");
            writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
            let rate = recent.iter().rev().take(20).sum::<f64>() / recent.len().min(20) as f64;
            bar.set_message(format!(
                "loss {:.3} · scale {:.1} · {:.0} pairs/s",
                log.loss, log.logit_scale, rate
            ));
            bar.set_position(self.step as u64);
            if !opts.progress && (self.step.is_multiple_of(25) || self.step == 1) {
                eprintln!(
                    "step {:>6}/{}  loss {:.4}  scale {:.1}  {:.0} pairs/s  {:.0}s",
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
                Some(d) => Some(d),
                None if opts.eval_every > 0 && !said_no_eval => {
                    said_no_eval = true;
                    eprintln!("note: no held-out synthetic evaluation: the model's image_size is below the scenes' minimum of {}", Synthetic::MIN_IMAGE_SIZE);
                    None
                }
                None => None,
            };
            if let Some(eval_data) = eval_data.filter(|_| {
                opts.eval_every > 0 && (self.step.is_multiple_of(opts.eval_every) || at_end)
            }) {
                let (single, ens) =
                    eval::zero_shot(&self.model, eval_data, Task::Shape, opts.eval_samples)?;
                let (c_single, c_ens) =
                    eval::zero_shot(&self.model, eval_data, Task::Colour, opts.eval_samples)?;
                let line = serde_json::json!({ "step": self.step, "eval": "zeroshot-heldout", "shape_single": single, "shape_ensemble": ens, "colour_single": c_single, "colour_ensemble": c_ens });
                writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
                let msg = format!("step {}: held-out zero-shot top-1 — shape {:.1}% single template, {:.1}% ensembled; colour {:.1}% / {:.1}%", self.step, 100.0 * single, 100.0 * ens, 100.0 * c_single, 100.0 * c_ens);
                if opts.progress {
                    bar.println(msg);
                } else {
                    eprintln!("{msg}");
                }
                last_eval = Some((single, ens));
            }
            if (opts.checkpoint_every > 0 && self.step.is_multiple_of(opts.checkpoint_every))
                || at_end
            {
                self.save_checkpoint(&opts.out.join(CHECKPOINT))?;
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
        plot_metrics(&metrics_path, &opts.out.join("training.png"))?;
        Ok(last_eval)
    }
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

/// The plot of a run from its metrics file (so a resumed run plots its whole history).
fn plot_metrics(metrics: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let mut loss = Vec::new();
    let mut acc: Vec<(&str, Vec<(f64, f64)>)> = vec![
        ("shape, 1 template", vec![]),
        ("shape, ensembled", vec![]),
        ("colour, ensembled", vec![]),
    ];
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v["step"].as_f64().unwrap_or(0.0);
        if let Some(l) = v["loss"].as_f64() {
            loss.push((step, l));
        }
        for (i, key) in ["shape_single", "shape_ensemble", "colour_ensemble"]
            .iter()
            .enumerate()
        {
            if let Some(a) = v[key].as_f64() {
                acc[i].1.push((step, a));
            }
        }
    }
    plot::plot_training(png, &loss, &acc)
}
