//! The loader's sample order: a deterministic stream of work items, a pure function of the
//! source, the seed and the epoch — never of thread timing.
//!
//! - WebDataset: epoch `e` visits the shards in a permutation keyed by `(seed, e)`; inside the
//!   shard with list index `j`, the keys in a permutation keyed by `(seed, e, j)` (so a shard's
//!   inner order does not depend on where it falls in the epoch).
//! - CSV and ImageFolder: epoch `e` visits the rows (files) in a permutation keyed by
//!   `(seed, e)`.
//! - Synthetic: sample `0, 1, 2, ...` (the dataset is already random per index).
//!
//! A [`DataPosition`] `(epoch, shard, sample)` names the next item: `shard` is the slot in the
//! epoch's shard order (always 0 for CSV and synthetic), `sample` the index in that shard's (or
//! the CSV's) permuted order, or the synthetic index. Shuffles are Fisher–Yates over splitmix64,
//! written out here so a position stays valid across versions of any RNG crate.

use super::loader::{DataPosition, SkipKind};
use super::sources::{index_shard, ShardSample, Source};
use super::synthetic::splitmix64;
use crate::{Error, Result};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

const TAG_SHARDS: u64 = 0x5348_4152_4453_0001;
const TAG_SAMPLES: u64 = 0x5341_4D50_4C45_0002;
const TAG_ROWS: u64 = 0x524F_5753_0000_0003;

/// The permutation of `0..n` keyed by `key` (Fisher–Yates; identity when `shuffle` is off).
pub(crate) fn permutation(n: usize, key: u64, shuffle: bool) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut state = splitmix64(key);
        for i in (1..n).rev() {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let r = splitmix64(state);
            let j = ((r as u128 * (i as u128 + 1)) >> 64) as usize;
            v.swap(i, j);
        }
    }
    v
}

fn key(seed: u64, tag: u64, epoch: u64, extra: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed ^ tag) ^ epoch) ^ extra)
}

/// A skip the loader counts: what kind, what it was (shard and key, or file), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Skip {
    pub kind: SkipKind,
    pub name: String,
    pub reason: String,
}

/// What a worker must do for one item.
#[derive(Clone, Debug)]
pub(crate) enum Work {
    /// A key of a tar shard: read its entries from the shared open file.
    Tar {
        file: Arc<File>,
        shard: Arc<PathBuf>,
        sample: ShardSample,
    },
    /// An image file and its caption (CSV rows), or its class (ImageFolder: the class name is
    /// the caption).
    File {
        path: PathBuf,
        caption: String,
        label: Option<u32>,
    },
    /// Synthetic sample `index`.
    Synthetic { index: u64 },
    /// Nothing to load: carries only shard-level skips (an empty or unreadable shard).
    Marker,
    /// A sample of another rank's part of the global batch (data parallelism): it holds a slot
    /// of the batch but this rank neither reads nor decodes it.
    Foreign,
}

/// One item of the stream: the work, shard-level skips to count when it is consumed, and the
/// position just after it.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub work: Work,
    pub notes: Vec<Skip>,
    pub next: DataPosition,
}

/// The shard being walked: which (epoch, slot) it is, and its keys in this epoch's order.
struct CurrentShard {
    epoch: u64,
    slot: u64,
    file: Option<Arc<File>>,
    path: Arc<PathBuf>,
    samples: Vec<ShardSample>,
    notes: Vec<Skip>,
}

pub(crate) struct Planner {
    source: Arc<Source>,
    seed: u64,
    shuffle: bool,
    epochs: Option<u64>,
    pos: DataPosition,
    shard_order: Option<(u64, Vec<usize>)>,
    row_order: Option<(u64, Vec<usize>)>,
    current: Option<CurrentShard>,
    /// Items planned in the current epoch, and whether it was started from its beginning.
    epoch_items: u64,
    epoch_from_start: bool,
}

impl Planner {
    pub fn new(
        source: Source,
        seed: u64,
        shuffle: bool,
        epochs: Option<u64>,
        start: DataPosition,
    ) -> Planner {
        Planner {
            source: Arc::new(source),
            seed,
            shuffle,
            epochs,
            epoch_from_start: start.shard == 0 && start.sample == 0,
            pos: start,
            shard_order: None,
            row_order: None,
            current: None,
            epoch_items: 0,
        }
    }

    /// The source being planned.
    pub fn source(&self) -> &Source {
        &self.source
    }

    fn next_epoch(&mut self) -> Result<()> {
        if self.epoch_from_start && self.epoch_items == 0 {
            return Err(Error::Msg(
                "data loader: the source has no samples (a whole epoch was empty)".into(),
            ));
        }
        self.pos = DataPosition {
            epoch: self.pos.epoch + 1,
            shard: 0,
            sample: 0,
        };
        self.epoch_items = 0;
        self.epoch_from_start = true;
        Ok(())
    }

    /// The next item, or `None` once `epochs` epochs are done.
    pub fn next_item(&mut self) -> Result<Option<Item>> {
        loop {
            if self.epochs.is_some_and(|n| self.pos.epoch >= n) {
                return Ok(None);
            }
            let source = Arc::clone(&self.source);
            let item = match &*source {
                Source::Synthetic { .. } => {
                    let index = self.pos.sample;
                    self.pos.sample += 1;
                    Some(Item {
                        work: Work::Synthetic { index },
                        notes: Vec::new(),
                        next: self.pos,
                    })
                }
                Source::Csv { rows, .. } => self.next_listed(rows.len(), |i| Work::File {
                    path: rows[i].image.clone(),
                    caption: rows[i].caption.clone(),
                    label: None,
                })?,
                Source::ImageFolder(f) => self.next_listed(f.samples.len(), |i| Work::File {
                    path: f.samples[i].0.clone(),
                    caption: f.classes[f.samples[i].1].clone(),
                    label: Some(f.samples[i].1 as u32),
                })?,
                Source::WebDataset { shards } => self.next_shard_item(shards)?,
            };
            if let Some(item) = item {
                self.epoch_items += 1;
                return Ok(Some(item));
            }
        }
    }

    /// The next item of a listed source (CSV rows, ImageFolder files): `n` entries, entry `i`
    /// made by `make(i)`.
    fn next_listed(&mut self, n: usize, make: impl Fn(usize) -> Work) -> Result<Option<Item>> {
        if self.pos.shard > 0 || self.pos.sample >= n as u64 {
            self.next_epoch()?;
            return Ok(None);
        }
        let epoch = self.pos.epoch;
        if self.row_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let k = key(self.seed, TAG_ROWS, epoch, 0);
            self.row_order = Some((epoch, permutation(n, k, self.shuffle)));
        }
        let order = &self.row_order.as_ref().unwrap().1;
        let work = make(order[self.pos.sample as usize]);
        self.pos.sample += 1;
        Ok(Some(Item {
            work,
            notes: Vec::new(),
            next: self.pos,
        }))
    }

    fn next_shard_item(&mut self, shards: &[PathBuf]) -> Result<Option<Item>> {
        let DataPosition {
            epoch,
            shard: slot,
            sample,
        } = self.pos;
        if slot >= shards.len() as u64 {
            self.next_epoch()?;
            return Ok(None);
        }
        let loaded = self
            .current
            .as_ref()
            .is_some_and(|c| c.epoch == epoch && c.slot == slot);
        if !loaded {
            if self.shard_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let k = key(self.seed, TAG_SHARDS, epoch, 0);
                self.shard_order = Some((epoch, permutation(shards.len(), k, self.shuffle)));
            }
            let j = self.shard_order.as_ref().unwrap().1[slot as usize];
            self.current = Some(self.load_shard(&shards[j], j, epoch, slot));
        }
        let cur = self.current.as_mut().unwrap();
        // Shard-level skips are counted with the shard's first item, and only when the walk
        // starts the shard at its beginning (a resumed walk counted them before it stopped).
        let notes = if sample == 0 {
            std::mem::take(&mut cur.notes)
        } else {
            Vec::new()
        };
        if sample >= cur.samples.len() as u64 {
            self.pos = DataPosition {
                epoch,
                shard: slot + 1,
                sample: 0,
            };
            return Ok((!notes.is_empty()).then(|| Item {
                work: Work::Marker,
                notes,
                next: self.pos,
            }));
        }
        let s = cur.samples[sample as usize].clone();
        self.pos.sample += 1;
        Ok(Some(Item {
            work: Work::Tar {
                file: Arc::clone(cur.file.as_ref().expect("a shard with samples is open")),
                shard: Arc::clone(&cur.path),
                sample: s,
            },
            notes,
            next: self.pos,
        }))
    }

    fn load_shard(&self, path: &std::path::Path, j: usize, epoch: u64, slot: u64) -> CurrentShard {
        let name = path.display().to_string();
        let path = Arc::new(path.to_path_buf());
        match index_shard(&path) {
            Err(e) => CurrentShard {
                epoch,
                slot,
                file: None,
                path,
                samples: Vec::new(),
                notes: vec![Skip {
                    kind: SkipKind::UnreadableShard,
                    name,
                    reason: e.to_string(),
                }],
            },
            Ok(index) => {
                let mut notes = Vec::new();
                if let Some(why) = index.truncated {
                    // A file that is not a tar at all breaks off before its first entry.
                    let kind = if index.samples.is_empty() {
                        SkipKind::UnreadableShard
                    } else {
                        SkipKind::TruncatedShard
                    };
                    notes.push(Skip {
                        kind,
                        name,
                        reason: why,
                    });
                }
                let k = key(self.seed, TAG_SAMPLES, epoch, j as u64);
                let order = permutation(index.samples.len(), k, self.shuffle);
                let mut samples: Vec<Option<ShardSample>> =
                    index.samples.into_iter().map(Some).collect();
                let samples = order.iter().map(|&i| samples[i].take().unwrap()).collect();
                CurrentShard {
                    epoch,
                    slot,
                    file: Some(index.file),
                    path,
                    samples,
                    notes,
                }
            }
        }
    }
}
