//! The training data loader: (image, caption) pairs from a [`Source`] turned into ready batches
//! — images decoded and preprocessed (CLIP's transform) and captions tokenized on worker
//! threads, a bounded number of samples prefetched ahead of the trainer.
//!
//! ```no_run
//! use clipcu::data::loader::{Loader, LoaderConfig};
//! use clipcu::data::sources::Source;
//! # fn main() -> clipcu::Result<()> {
//! let source = Source::webdataset("data/{00000..00099}.tar")?;
//! let mut loader = Loader::new(source, LoaderConfig::new(256, 224), None)?;
//! while let Some(batch) = loader.next_batch()? {
//!     // batch.images: [256, 3, 224, 224]; batch.ids: 256 × 77 token ids
//!     let checkpoint_position = batch.position; // Loader::new(.., Some(position)) resumes here
//! #   let _ = checkpoint_position;
//! }
//! eprintln!("skipped: {:?}", loader.skips());
//! # Ok(()) }
//! ```
//!
//! **Order.** The sample order is a pure function of (source, seed, epoch) — see `plan.rs`:
//! shards shuffled per epoch, keys shuffled within each shard. The stream is cut into small jobs
//! that any worker may take; results are put back in stream order before batches are formed, so
//! the batches (contents and order) do not depend on the number of workers or their timing.
//!
//! **Skips.** Bad input is never fatal. A sample whose image is missing or corrupt, whose caption
//! is missing or empty (after trimming), is skipped and the batch is filled with the next good
//! sample; a tar that breaks off is read up to the break and counted once; a shard that cannot be
//! opened or is not a tar is counted and passed over. Skips are counted in stream order as the
//! batches consume them ([`Loader::skips`]), and the first [`WARN_NAMES`] of each kind are named
//! on stderr. A source in which a whole epoch yields nothing usable is an error (when looping).
//!
//! **Position.** [`DataPosition`] names the next item of the stream. Every batch carries the
//! position just after its last sample; a loader made with that position produces the batch an
//! uninterrupted run would have produced next, and counts only the skips after it.
//!
//! **Augmentation.** With [`LoaderConfig::augment`] each image gets open_clip's training
//! transform ([`RandomResizedCrop`]) instead of the center crop, its box keyed by the seed and
//! the sample's place in the stream (epoch, shard slot, sample), so it too is independent of
//! the workers, the same after a resume, and new every epoch.
//!
//! **Ranks.** With [`LoaderConfig::part`] `Some(Part { rank, world })` the loader yields rank
//! `rank`'s part of each global batch of `batch_size` samples: the stream is planned as a whole
//! on every rank (cheap: shard indexes and row orders, no pixels), cut into windows of
//! `batch_size` samples (markers of empty or unreadable shards hold no slot), and this rank
//! reads and decodes only slots `rank·n..(rank+1)·n` of each window (n = batch_size / world).
//! So the global batch — the ranks' parts in rank order — is the same samples, in the same
//! order, whatever the world size, the positions are the global ones (a checkpoint of a run on
//! 2 ranks resumes on 4), and crops are keyed as in one process. Skips: a skipped sample's slot
//! is filled with this rank's most recent good sample (from an earlier batch when it has one,
//! else from this part — then a pair appears twice in the global batch), so that the windows
//! stay the same on every rank without any communication; only then does the global batch
//! differ from one process's, which fills a skip with the next sample of the stream.
//!
//! **Epochs.** Batches run across epoch boundaries (every batch is full). With
//! `epochs: Some(n)` the stream ends after `n` epochs and the last, partial batch is returned
//! unless `drop_last`; with `None` it loops forever. The synthetic source is always infinite.

use super::augment::RandomResizedCrop;
use super::decode::{decode_image_with, Image, ImageLimits, Mode};
use super::plan::{Item, Planner, Skip, Work};
use super::preprocess::Preprocess;
use super::sources::{read_span, Source};
use super::synthetic::{splitmix64, Split, Synthetic};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result, Tensor};
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How many skips of each kind are named on stderr before they are only counted.
pub const WARN_NAMES: u64 = 5;

/// Where the loader is in its stream: the next item is sample `sample` of slot `shard` of epoch
/// `epoch` (see the module docs of `plan.rs`; `shard` is 0 for CSV and synthetic sources, and
/// `sample` is the synthetic index). Small and serialisable, for checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub shard: u64,
    pub sample: u64,
}

/// Kinds of skipped input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipKind {
    /// Image bytes that do not decode (corrupt, truncated, not an image), or an image outside
    /// the loader's [`ImageLimits`].
    CorruptImage,
    /// No image: a shard key without an image entry, a CSV path that cannot be read.
    MissingImage,
    /// A shard key without a `.txt` entry.
    MissingCaption,
    /// A caption that is empty after trimming whitespace.
    EmptyCaption,
    /// A tar that breaks off (its readable samples are used).
    TruncatedShard,
    /// A shard that cannot be opened or is not a tar.
    UnreadableShard,
}

impl SkipKind {
    fn describe(self) -> &'static str {
        match self {
            SkipKind::CorruptImage => "corrupt image",
            SkipKind::MissingImage => "missing image",
            SkipKind::MissingCaption => "missing caption",
            SkipKind::EmptyCaption => "empty caption",
            SkipKind::TruncatedShard => "truncated shard",
            SkipKind::UnreadableShard => "unreadable shard",
        }
    }
}

/// Counts of skipped input, by kind (samples, except the two shard counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipStats {
    pub corrupt_image: u64,
    pub missing_image: u64,
    pub missing_caption: u64,
    pub empty_caption: u64,
    pub truncated_shard: u64,
    pub unreadable_shard: u64,
}

impl SkipStats {
    pub fn get(&self, kind: SkipKind) -> u64 {
        match kind {
            SkipKind::CorruptImage => self.corrupt_image,
            SkipKind::MissingImage => self.missing_image,
            SkipKind::MissingCaption => self.missing_caption,
            SkipKind::EmptyCaption => self.empty_caption,
            SkipKind::TruncatedShard => self.truncated_shard,
            SkipKind::UnreadableShard => self.unreadable_shard,
        }
    }
    fn bump(&mut self, kind: SkipKind) -> u64 {
        let c = match kind {
            SkipKind::CorruptImage => &mut self.corrupt_image,
            SkipKind::MissingImage => &mut self.missing_image,
            SkipKind::MissingCaption => &mut self.missing_caption,
            SkipKind::EmptyCaption => &mut self.empty_caption,
            SkipKind::TruncatedShard => &mut self.truncated_shard,
            SkipKind::UnreadableShard => &mut self.unreadable_shard,
        };
        *c += 1;
        *c
    }
    /// Skipped samples (corrupt, missing or empty), not counting shard-level events.
    pub fn samples(&self) -> u64 {
        self.corrupt_image + self.missing_image + self.missing_caption + self.empty_caption
    }
}

/// The loader's settings. [`LoaderConfig::new`] gives the usual defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Side of the square images (CLIP's transform: resize short side, center crop).
    pub image_size: usize,
    /// Token ids per caption (CLIP: 77).
    pub context_length: usize,
    /// Keys the shard, sample and row shuffles.
    pub seed: u64,
    /// Decoding threads; 0 decodes on the calling thread, inside `next_batch`.
    pub workers: usize,
    /// Batches decoded ahead of the one being consumed (at least 1).
    pub prefetch: usize,
    /// Stop after this many epochs; `None` loops forever.
    pub epochs: Option<u64>,
    /// Drop the last, partial batch of a finite stream.
    pub drop_last: bool,
    /// Shuffle shards and samples (off: file order, e.g. for evaluation).
    pub shuffle: bool,
    /// Images outside these bounds are skipped and counted as [`SkipKind::CorruptImage`]
    /// before their pixels are decoded.
    pub image_limits: ImageLimits,
    /// The training transform: a [`RandomResizedCrop`] per sample instead of the center crop,
    /// its box keyed by (seed, epoch, the sample's place in the epoch) so that a resumed stream
    /// crops as the uninterrupted one and each epoch crops anew. `None` (the default): the
    /// evaluation transform, an exact center crop.
    pub augment: Option<RandomResizedCrop>,
    /// Data parallelism: yield only this rank's part of each global batch (module docs,
    /// "Ranks"). `None`: the whole batch.
    pub part: Option<Part>,
}

/// One rank's share of the global batch: rank `rank` of `world` (module docs, "Ranks").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub rank: usize,
    pub world: usize,
}

impl LoaderConfig {
    /// `batch_size` × `image_size` px, context 77, seed 0, one worker per core, 2 batches
    /// prefetched, looping forever, shuffled, [`ImageLimits::process_default`], center crop
    /// (no augmentation).
    pub fn new(batch_size: usize, image_size: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            image_size,
            context_length: Tokenizer::CONTEXT_LENGTH,
            seed: 0,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: 2,
            epochs: None,
            drop_last: false,
            shuffle: true,
            image_limits: ImageLimits::process_default(),
            augment: None,
            part: None,
        }
    }
}

/// A ready batch.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[B, 3, S, S]`, normalised with CLIP's mean and std.
    pub images: Tensor,
    /// `B × context_length` token ids, row-major.
    pub ids: Vec<u32>,
    /// The captions as read (trimmed); the class names for an ImageFolder source.
    pub captions: Vec<String>,
    /// The class index of each image for an ImageFolder source; empty for the others.
    pub labels: Vec<u32>,
    /// The position just after this batch: resume here to get the next one.
    pub position: DataPosition,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.captions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }
}

/// One decoded sample.
#[derive(Clone)]
struct Ready {
    image: Vec<f32>,
    ids: Vec<u32>,
    caption: String,
    label: Option<u32>,
}

/// What a worker made of one item.
struct Outcome {
    ready: Option<Ready>,
    skips: Vec<Skip>,
    next: DataPosition,
    /// What slot the item holds: none (a marker), this rank's, another rank's.
    slot: Slot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    None,
    Own,
    Foreign,
}

struct Job {
    seq: u64,
    items: Vec<Item>,
}

type JobResult = (u64, std::result::Result<Vec<Outcome>, String>);

/// What every worker needs.
struct Context {
    pre: Preprocess,
    tokenizer: Tokenizer,
    context_length: usize,
    image_limits: ImageLimits,
    synthetic: Option<(Arc<Synthetic>, Split)>,
    /// The training transform and the seed its crops are keyed by.
    augment: Option<RandomResizedCrop>,
    seed: u64,
    /// Set when the loader is dropped: workers stop taking jobs.
    stop: AtomicBool,
}

/// The multi-threaded loader; see the module docs.
pub struct Loader {
    cfg: LoaderConfig,
    planner: Planner,
    planner_done: bool,
    ctx: Arc<Context>,
    job_tx: Option<Sender<Job>>,
    res_rx: Receiver<JobResult>,
    res_tx: Sender<JobResult>,
    workers: Vec<JoinHandle<()>>,
    job_size: usize,
    issued: u64,
    consumed: u64,
    in_flight: usize,
    arrived: BTreeMap<u64, Vec<Outcome>>,
    current: VecDeque<Outcome>,
    position: DataPosition,
    skips: SkipStats,
    warned: HashMap<SkipKind, Vec<String>>,
    /// Where the current run of outcomes without a usable sample began (the position after the
    /// last usable one, or the start).
    bad_since: DataPosition,
    finished: bool,
    /// Part mode: samples planned so far (the window slot of the next one is this mod the
    /// batch size), and this rank's most recent good sample (fills a skipped slot).
    planned: u64,
    spare: Option<Ready>,
}

impl Loader {
    /// A loader over `source`, starting at `start` (a position from a batch or
    /// [`Loader::position`]) or at the beginning.
    pub fn new(source: Source, cfg: LoaderConfig, start: Option<DataPosition>) -> Result<Loader> {
        for (name, v) in [
            ("batch_size", cfg.batch_size),
            ("image_size", cfg.image_size),
            ("context_length", cfg.context_length),
        ] {
            if v == 0 {
                return Err(Error::Msg(format!("data loader: {name} is 0")));
            }
        }
        if let Some(a) = &cfg.augment {
            a.validate()?;
        }
        if let Some(p) = cfg.part {
            if p.world == 0 || p.rank >= p.world || !cfg.batch_size.is_multiple_of(p.world) {
                return Err(Error::Msg(format!(
                    "data loader: rank {} of {} ranks cannot take an equal part of a batch of {}",
                    p.rank, p.world, cfg.batch_size
                )));
            }
        }
        let synthetic = match &source {
            Source::Synthetic { data, split } => Some((Arc::clone(data), *split)),
            _ => None,
        };
        let start = start.unwrap_or_default();
        let ctx = Arc::new(Context {
            pre: Preprocess::clip(cfg.image_size),
            tokenizer: Tokenizer::clip(),
            context_length: cfg.context_length,
            image_limits: cfg.image_limits,
            synthetic,
            augment: cfg.augment,
            seed: cfg.seed,
            stop: AtomicBool::new(false),
        });
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<JobResult>();
        let mut workers = Vec::new();
        for i in 0..cfg.workers {
            let (rx, tx, ctx) = (job_rx.clone(), res_tx.clone(), Arc::clone(&ctx));
            let h = std::thread::Builder::new()
                .name(format!("clipcu-data-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        if ctx.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let res = run_job(&ctx, job.items);
                        if tx.send((job.seq, res)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| Error::Msg(format!("data loader: cannot start a worker: {e}")))?;
            workers.push(h);
        }
        // Jobs small enough that every worker gets several per batch.
        let job_size = cfg.batch_size.div_ceil(2 * cfg.workers.max(1)).clamp(1, 32);
        Ok(Loader {
            planner: Planner::new(source, cfg.seed, cfg.shuffle, cfg.epochs, start),
            planner_done: false,
            ctx,
            job_tx: Some(job_tx),
            res_rx,
            res_tx,
            workers,
            job_size,
            issued: 0,
            consumed: 0,
            in_flight: 0,
            arrived: BTreeMap::new(),
            current: VecDeque::new(),
            position: start,
            skips: SkipStats::default(),
            warned: HashMap::new(),
            bad_since: start,
            finished: false,
            planned: 0,
            spare: None,
            cfg,
        })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// The position after the last batch returned (the start position before the first).
    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// Skips counted so far, in the samples the returned batches consumed.
    pub fn skips(&self) -> SkipStats {
        self.skips
    }

    /// Issues jobs until `prefetch` batches' worth of items are in flight.
    fn fill(&mut self) -> Result<()> {
        let cap = (self.cfg.prefetch.max(1) * self.cfg.batch_size).max(self.job_size);
        while !self.planner_done && self.in_flight < cap {
            let mut items = Vec::with_capacity(self.job_size);
            while items.len() < self.job_size {
                match self.planner.next_item()? {
                    Some(mut item) => {
                        if let Some(p) = self.cfg.part {
                            if !matches!(item.work, Work::Marker) {
                                let n = (self.cfg.batch_size / p.world) as u64;
                                let slot = self.planned % self.cfg.batch_size as u64;
                                self.planned += 1;
                                if slot / n != p.rank as u64 {
                                    item.work = Work::Foreign;
                                }
                            }
                        }
                        items.push(item)
                    }
                    None => {
                        self.planner_done = true;
                        break;
                    }
                }
            }
            if items.is_empty() {
                break;
            }
            self.in_flight += items.len();
            let seq = self.issued;
            self.issued += 1;
            match &self.job_tx {
                Some(tx) if !self.workers.is_empty() => tx
                    .send(Job { seq, items })
                    .map_err(|_| Error::Msg("data loader: the workers have stopped".into()))?,
                _ => {
                    let res = run_job(&self.ctx, items);
                    let _ = self.res_tx.send((seq, res));
                }
            }
        }
        Ok(())
    }

    /// The next outcome in stream order, or `None` at the end of the stream.
    fn next_outcome(&mut self) -> Result<Option<Outcome>> {
        loop {
            if let Some(o) = self.current.pop_front() {
                self.in_flight -= 1;
                self.fill()?;
                return Ok(Some(o));
            }
            if self.consumed == self.issued {
                self.fill()?;
                if self.consumed == self.issued {
                    return Ok(None);
                }
            }
            if let Some(v) = self.arrived.remove(&self.consumed) {
                self.current = v.into();
                self.consumed += 1;
                continue;
            }
            let (seq, res) = self
                .res_rx
                .recv()
                .map_err(|_| Error::Msg("data loader: the workers have stopped".into()))?;
            let outcomes = res.map_err(|e| Error::Msg(format!("data loader: {e}")))?;
            self.arrived.insert(seq, outcomes);
        }
    }

    /// Counts a skip; names it on stderr if it is one of the first [`WARN_NAMES`] distinct
    /// names of its kind (a sample skipped again in a later epoch is not named again).
    fn count(&mut self, skip: &Skip) {
        self.skips.bump(skip.kind);
        let what = skip.kind.describe();
        let named = self.warned.entry(skip.kind).or_default();
        if named.contains(&skip.name) {
            return;
        }
        if (named.len() as u64) < WARN_NAMES {
            eprintln!(
                "clipcu data: skipping {what} {}: {}",
                skip.name, skip.reason
            );
            named.push(skip.name.clone());
        } else if named.len() as u64 == WARN_NAMES {
            eprintln!("clipcu data: more {what} skips are counted (Loader::skips), not named");
            named.push(String::new()); // said once
        }
    }

    /// The next batch, or `None` at the end of a finite stream. In part mode
    /// ([`LoaderConfig::part`]) this rank's part of the next global batch.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        if self.finished {
            return Ok(None);
        }
        if let Some(p) = self.cfg.part {
            return self.next_part(p);
        }
        self.fill()?;
        let b = self.cfg.batch_size;
        let s = self.cfg.image_size;
        let mut images = Vec::with_capacity(b * 3 * s * s);
        let mut ids = Vec::with_capacity(b * self.cfg.context_length);
        let mut captions = Vec::with_capacity(b);
        let mut labels = Vec::new();
        let mut position = self.position;
        while captions.len() < b {
            let Some(o) = self.next_outcome()? else {
                self.finished = true;
                break;
            };
            for skip in &o.skips {
                self.count(skip);
            }
            position = o.next;
            match o.ready {
                Some(r) => {
                    self.bad_since = o.next;
                    images.extend_from_slice(&r.image);
                    ids.extend_from_slice(&r.ids);
                    captions.push(r.caption);
                    labels.extend(r.label);
                }
                None => {
                    // Hopeless once a whole epoch, start to end, lies inside the run of
                    // unusable items: the run began at an epoch's start and has reached the
                    // next epoch, or it has reached the epoch after next. (Counting items would
                    // fire falsely when bad samples at the end of one epoch and the start of
                    // the next make a run longer than an epoch, with good ones in each.)
                    let b = self.bad_since;
                    let at_start = b.shard == 0 && b.sample == 0;
                    let hopeless = self.cfg.epochs.is_none()
                        && (o.next.epoch >= b.epoch + 2 || (at_start && o.next.epoch > b.epoch));
                    if hopeless {
                        return Err(Error::Msg(format!(
                            "data loader: no usable sample in a whole epoch (skipped so far: {:?})",
                            self.skips
                        )));
                    }
                }
            }
        }
        self.position = position;
        let n = captions.len();
        if n == 0 || (n < b && self.cfg.drop_last) {
            return Ok(None);
        }
        Ok(Some(Batch {
            images: Tensor::from_vec(images, [n, 3, s, s])?,
            ids,
            captions,
            labels,
            position,
        }))
    }
}

impl Loader {
    /// Part mode: the `batch_size` slots of the next window, this rank's decoded (module docs).
    fn next_part(&mut self, part: Part) -> Result<Option<Batch>> {
        self.fill()?;
        let (b, s) = (self.cfg.batch_size, self.cfg.image_size);
        let n = b / part.world;
        let mut own: Vec<Option<Ready>> = Vec::with_capacity(n);
        let (mut slots, mut position) = (0, self.position);
        while slots < b {
            let Some(o) = self.next_outcome()? else {
                self.finished = true;
                break;
            };
            for skip in &o.skips {
                self.count(skip);
            }
            position = o.next;
            match o.slot {
                Slot::None => {}
                Slot::Foreign => {
                    slots += 1;
                    self.bad_since = o.next; // another rank's: not known to be bad
                }
                Slot::Own => {
                    slots += 1;
                    if o.ready.is_some() {
                        self.bad_since = o.next;
                    } else {
                        let bs = self.bad_since;
                        let at_start = bs.shard == 0 && bs.sample == 0;
                        if self.cfg.epochs.is_none()
                            && (o.next.epoch >= bs.epoch + 2
                                || (at_start && o.next.epoch > bs.epoch))
                        {
                            return Err(Error::Msg(format!(
                                "data loader: rank {} found no usable sample of its part in a \
                                 whole epoch (skipped so far: {:?})",
                                part.rank, self.skips
                            )));
                        }
                    }
                    own.push(o.ready);
                }
            }
        }
        self.position = position;
        if own.is_empty() || (slots < b && self.cfg.drop_last) {
            return Ok(None);
        }
        // skipped slots: this rank's last good sample before this batch, else this part's
        let fill = match self.spare.clone() {
            Some(r) => Some(r),
            None => own.iter().flatten().next().cloned(),
        };
        if let Some(r) = own.iter().flatten().last() {
            self.spare = Some(r.clone());
        }
        let k = own.len();
        let mut images = Vec::with_capacity(k * 3 * s * s);
        let mut ids = Vec::with_capacity(k * self.cfg.context_length);
        let (mut captions, mut labels) = (Vec::with_capacity(k), Vec::new());
        for r in own {
            let Some(r) = r.or_else(|| fill.clone()) else {
                return Err(Error::Msg(format!(
                    "data loader: rank {} of {}: no usable sample in its part of the batch \
                     ending at {position:?}, and none before it to fill the skipped slots \
                     (skipped so far: {:?})",
                    part.rank, part.world, self.skips
                )));
            };
            images.extend_from_slice(&r.image);
            ids.extend_from_slice(&r.ids);
            captions.push(r.caption);
            labels.extend(r.label);
        }
        Ok(Some(Batch {
            images: Tensor::from_vec(images, [k, 3, s, s])?,
            ids,
            captions,
            labels,
            position,
        }))
    }

    /// A loader over the same source and settings, from this one's position, that yields
    /// `part` of each global batch instead (`None`: whole batches). For joining a
    /// data-parallel group at a batch boundary.
    pub fn repartitioned(&self, part: Option<Part>) -> Result<Loader> {
        let mut cfg = self.cfg.clone();
        cfg.part = part;
        Loader::new(self.planner.source().clone(), cfg, Some(self.position))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.ctx.stop.store(true, Ordering::Relaxed);
        self.job_tx = None; // workers see the channel close and return
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Runs one job; a panic (a bug, not bad data) becomes an error for the consumer.
fn run_job(ctx: &Context, items: Vec<Item>) -> std::result::Result<Vec<Outcome>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        items.into_iter().map(|item| run_item(ctx, item)).collect()
    }))
    .map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("a worker panicked: {msg}")
    })
}

fn run_item(ctx: &Context, item: Item) -> Outcome {
    let slot = match item.work {
        Work::Marker => Slot::None,
        Work::Foreign => Slot::Foreign,
        _ => Slot::Own,
    };
    let mut skips = item.notes;
    let ready = match load(ctx, item.work, crop_key(ctx.seed, item.next)) {
        Ok(r) => r,
        Err(skip) => {
            skips.push(skip);
            None
        }
    };
    Outcome {
        ready,
        skips,
        next: item.next,
        slot,
    }
}

/// The message of a decode error without the file name it starts with (the skip names it).
fn reason(e: Error) -> String {
    match e {
        Error::Format { msg, .. } => msg,
        e => e.to_string(),
    }
}

fn skip(kind: SkipKind, name: &str, reason: impl Into<String>) -> Skip {
    Skip {
        kind,
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Keys the augmentation of the item just before `next` in the stream: a pure function of the
/// seed and the item's place (epoch, shard slot, index in the shard or the epoch's row order),
/// which is what a checkpoint's [`DataPosition`] restores.
fn crop_key(seed: u64, next: DataPosition) -> u64 {
    const TAG_CROP: u64 = 0x4352_4F50_0000_0004;
    splitmix64(
        splitmix64(splitmix64(splitmix64(seed ^ TAG_CROP) ^ next.epoch) ^ next.shard) ^ next.sample,
    )
}

/// Reads, decodes, preprocesses and tokenizes one item (`Ok(None)` for markers); `crop_key`
/// keys the random crop when the loader augments.
fn load(ctx: &Context, work: Work, crop_key: u64) -> std::result::Result<Option<Ready>, Skip> {
    let mut label = None;
    let (image, caption, name) = match work {
        Work::Marker | Work::Foreign => return Ok(None),
        Work::Synthetic { index } => {
            let (data, split) = ctx.synthetic.as_ref().expect("a synthetic source");
            let s = data.sample(*split, index);
            let (w, h) = s.image.dimensions();
            let name = format!("synthetic #{index}");
            let img = Image::new(w as usize, h as usize, Mode::Rgb, s.image.into_raw())
                .map_err(|e| skip(SkipKind::CorruptImage, &name, e.to_string()))?;
            (img, s.caption, name)
        }
        Work::Tar {
            file,
            shard,
            sample,
        } => {
            let name = format!("{}:{}", shard.display(), sample.key);
            let Some(img_span) = sample.image else {
                return Err(skip(SkipKind::MissingImage, &name, "no image entry"));
            };
            let Some(cap_span) = sample.caption else {
                return Err(skip(SkipKind::MissingCaption, &name, "no .txt entry"));
            };
            let caption = read_span(&file, cap_span)
                .map_err(|e| skip(SkipKind::MissingCaption, &name, e.to_string()))?;
            let caption = String::from_utf8_lossy(&caption).trim().to_string();
            if caption.is_empty() {
                return Err(skip(SkipKind::EmptyCaption, &name, "empty .txt"));
            }
            let bytes = read_span(&file, img_span)
                .map_err(|e| skip(SkipKind::MissingImage, &name, e.to_string()))?;
            let img = decode_image_with(&bytes, &name, &ctx.image_limits)
                .map_err(|e| skip(SkipKind::CorruptImage, &name, reason(e)))?;
            (img, caption, name)
        }
        Work::File {
            path,
            caption,
            label: l,
        } => {
            label = l;
            let name = path.display().to_string();
            let caption = caption.trim().to_string();
            if caption.is_empty() {
                return Err(skip(SkipKind::EmptyCaption, &name, "empty caption"));
            }
            if path.as_os_str().is_empty() {
                return Err(skip(SkipKind::MissingImage, "(row)", "no image path"));
            }
            let bytes = std::fs::read(&path)
                .map_err(|e| skip(SkipKind::MissingImage, &name, e.to_string()))?;
            let img = decode_image_with(&bytes, &name, &ctx.image_limits)
                .map_err(|e| skip(SkipKind::CorruptImage, &name, reason(e)))?;
            (img, caption, name)
        }
    };
    let s = ctx.pre.image_size;
    let mut out = crate::alloc::try_filled(3 * s * s, 0f32, "image")
        .map_err(|e| skip(SkipKind::CorruptImage, &name, e.to_string()))?;
    match &ctx.augment {
        Some(a) => a.apply_into(&ctx.pre, &image, crop_key, &mut out),
        None => ctx.pre.apply_into(&image, &mut out),
    }
    .map_err(|e| skip(SkipKind::CorruptImage, &name, reason(e)))?;
    let ids = ctx.tokenizer.tokenize(&caption, ctx.context_length);
    Ok(Some(Ready {
        image: out,
        ids,
        caption,
        label,
    }))
}
