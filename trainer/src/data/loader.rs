//! The prefetching batch loader: worker threads decode and augment whole batches ahead of
//! the training loop, which receives them in order.
//!
//! Every random choice is seeded from (seed, epoch, position in the epoch order) for a
//! sample and (seed, epoch, batch index) for mixup, so the batches are bit-identical for
//! any number of workers. A file that fails to decode is reported once, counted, and left
//! out: its batch is one image short (no other image takes its place, which would count
//! that one twice).

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use autoprog::data::augment::{eval_transform, mix_batch, train_transform, AugmentConfig};
pub use autoprog::data::Batch;

use super::{DataError, LoadError, RgbImage, Source};

/// Independent random streams derived from one seed.
#[derive(Clone, Copy)]
pub(super) enum Stream {
    Order = 1,
    Sample = 2,
    Mix = 3,
    ValSplit = 4,
}

/// SplitMix64's finaliser: spreads nearby inputs over the whole 64-bit range.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The RNG seed of item `index` of `stream` in `epoch`.
pub(super) fn stream_seed(seed: u64, epoch: u64, stream: Stream, index: u64) -> u64 {
    splitmix(splitmix(splitmix(seed ^ splitmix(stream as u64)) ^ epoch) ^ index)
}

/// A seeded shuffle of 0..len, different for every epoch.
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, epoch, Stream::Order, 0));
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    order
}

type Warn = dyn Fn(&str) + Send + Sync;

/// The samples that failed to load, shared between the workers and the caller. Pass the
/// same one to the loaders of every epoch (and of the validation) of a run so that each
/// broken file is reported (and decoded) once per run.
#[derive(Clone)]
pub struct Skipped {
    /// `Source::describe` names of the failed samples.
    failed: Arc<Mutex<BTreeSet<String>>>,
    /// Failures not yet taken by [`Skipped::take_new`] (for the run log).
    new: Arc<Mutex<Vec<LoadError>>>,
    warn: Arc<Warn>,
}

impl Default for Skipped {
    /// Warnings go to stderr.
    fn default() -> Self {
        Skipped::with_warning(|message| eprintln!("warning: {message}"))
    }
}

impl Skipped {
    /// Warnings go to `warn` (one call per failed file).
    pub fn with_warning(warn: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Skipped { failed: Arc::default(), new: Arc::default(), warn: Arc::new(warn) }
    }

    /// Records `files` (`Source::describe` names) as failed without warning: failures of an
    /// earlier session of the run, which a resumed run does not try again.
    pub fn mark_failed(&self, files: impl IntoIterator<Item = String>) {
        self.lock().extend(files);
    }

    /// The failures recorded since the last call, in the order they happened.
    pub fn take_new(&self) -> Vec<LoadError> {
        std::mem::take(&mut *self.new.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Number of distinct samples skipped so far.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Names of the skipped samples, sorted.
    pub fn files(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn contains(&self, what: &str) -> bool {
        self.lock().contains(what)
    }

    /// Records a failure; warns only the first time a sample fails.
    fn record(&self, error: &LoadError) {
        let first_time = self.lock().insert(error.what.clone());
        if first_time {
            (self.warn)(&format!(
                "skipping `{}`, it could not be loaded ({}); its batch goes on without it",
                error.what, error.reason
            ));
            self.new.lock().unwrap_or_else(PoisonError::into_inner).push(error.clone());
        }
    }
}

/// How the loader builds the batches of one epoch.
#[derive(Clone)]
pub struct LoaderConfig {
    /// Samples per batch B.
    pub batch: usize,
    /// Leave out the last, smaller batch.
    pub drop_last: bool,
    pub aug: AugmentConfig,
    /// Train transform and soft targets when true; the eval transform otherwise.
    pub train: bool,
    pub seed: u64,
    pub epoch: u64,
    /// Decoding threads; 0 builds each batch on the calling thread when it is asked for.
    pub workers: usize,
    /// Batches being built or waiting at most (at least 1); at least `workers` keeps every
    /// worker busy.
    pub prefetch: usize,
    pub skipped: Skipped,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch: 64,
            drop_last: false,
            aug: AugmentConfig::default(),
            train: false,
            seed: 0,
            epoch: 0,
            workers: 2,
            prefetch: 4,
            skipped: Skipped::default(),
        }
    }
}

/// What every batch of an epoch is built from; shared read-only by the workers.
struct Plan {
    source: Arc<dyn Source>,
    order: Vec<usize>,
    config: LoaderConfig,
    batches: usize,
}

impl Plan {
    fn build(&self, index: usize) -> Result<Batch, DataError> {
        let config = &self.config;
        let aug = &config.aug;
        let r = aug.resolution;
        let positions = index * config.batch..((index + 1) * config.batch).min(self.order.len());
        let mut images = Vec::with_capacity(positions.len() * 3 * r * r); // [B, 3, R, R]
        let mut labels = Vec::with_capacity(positions.len()); // [B]
        let (wanted, last) = (positions.len(), positions.end - 1);
        for position in positions {
            let Some((image, label)) = self.load_at(position) else { continue };
            let seed = stream_seed(config.seed, config.epoch, Stream::Sample, position as u64);
            let chw = if config.train {
                train_transform(&image, aug, &mut ChaCha8Rng::seed_from_u64(seed))
            } else {
                eval_transform(&image, aug)
            };
            images.extend_from_slice(&chw);
            labels.push(label);
        }
        if labels.is_empty() {
            return Err(DataError::BatchUnfillable {
                batch: index,
                detail: format!(
                    "none of its {wanted} images loads (the last was `{}`)",
                    self.source.describe(self.order[last])
                ),
            });
        }
        let targets = (config.train && aug.soft_targets()).then(|| {
            let seed = stream_seed(config.seed, config.epoch, Stream::Mix, index as u64);
            let classes = self.source.classes().len();
            mix_batch(&mut images, &labels, classes, aug, &mut ChaCha8Rng::seed_from_u64(seed)).0
        });
        Ok(Batch { index, resolution: r, images, labels, targets })
    }

    /// The sample at `position` of the order, or `None` when it fails to load (recorded in
    /// `skipped`, and not decoded again once it has failed).
    fn load_at(&self, position: usize) -> Option<(RgbImage, u32)> {
        let sample = self.order[position];
        if self.config.skipped.contains(&self.source.describe(sample)) {
            return None;
        }
        match self.source.load(sample) {
            Ok(image) => Some((image, self.source.label(sample))),
            Err(error) => {
                self.config.skipped.record(&error);
                None
            }
        }
    }
}

/// Coordination between the consumer and the workers.
struct Shared {
    progress: Mutex<Progress>,
    wake: Condvar,
}

struct Progress {
    /// The next batch a worker will start.
    next_to_build: usize,
    /// Batches handed to the consumer so far.
    consumed: usize,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Built = (usize, Result<Batch, DataError>);

enum Mode {
    /// No workers: build on demand.
    Inline,
    Threads {
        shared: Arc<Shared>,
        results: Receiver<Built>,
        /// Batches that arrived before their turn.
        early: BTreeMap<usize, Result<Batch, DataError>>,
        handles: Vec<JoinHandle<()>>,
    },
}

/// An epoch's batches, in order. Yields `Err` once if a batch cannot be built and then
/// ends. Dropping it stops and joins the workers.
pub struct Loader {
    plan: Arc<Plan>,
    mode: Mode,
    next: usize,
    finished: bool,
}

impl Loader {
    /// Starts the workers for one epoch over `order` (indices into `source`, e.g. from
    /// [`epoch_order`] for training or `(0..len).collect()` for eval).
    pub fn new(source: Arc<dyn Source>, order: Vec<usize>, config: LoaderConfig) -> Result<Loader, DataError> {
        config.aug.validate().map_err(|e| DataError::Config(e.to_string()))?;
        if config.batch == 0 {
            return Err(DataError::Config("--batch must be at least 1".into()));
        }
        if order.is_empty() {
            return Err(DataError::Config("the epoch has no samples; the dataset split is empty".into()));
        }
        if let Some(&bad) = order.iter().find(|&&i| i >= source.len()) {
            return Err(DataError::Config(format!(
                "sample {bad} of the epoch order is past the {} samples",
                source.len()
            )));
        }
        let batches = if config.drop_last { order.len() / config.batch } else { order.len().div_ceil(config.batch) };
        if batches == 0 {
            return Err(DataError::Config(format!(
                "batch {} is larger than the {} samples of the epoch, and the last partial batch is dropped; \
                 lower --batch",
                config.batch,
                order.len()
            )));
        }
        let workers = config.workers;
        let capacity = config.prefetch.max(1);
        let plan = Arc::new(Plan { source, order, config, batches });
        let mode = if workers == 0 {
            Mode::Inline
        } else {
            let shared = Arc::new(Shared {
                progress: Mutex::new(Progress { next_to_build: 0, consumed: 0, stop: false }),
                wake: Condvar::new(),
            });
            let (sender, results) = channel();
            let handles = (0..workers)
                .map(|i| {
                    let (plan, shared, sender) = (plan.clone(), shared.clone(), sender.clone());
                    std::thread::Builder::new()
                        .name(format!("data-worker-{i}"))
                        .spawn(move || work(&plan, &shared, &sender, capacity))
                        .expect("spawn a data loader thread")
                })
                .collect();
            Mode::Threads { shared, results, early: BTreeMap::new(), handles }
        };
        Ok(Loader { plan, mode, next: 0, finished: false })
    }

    /// Number of batches in the epoch.
    #[cfg(test)]
    pub fn batches(&self) -> usize {
        self.plan.batches
    }

    /// The skipped-sample record (readable after the loop).
    #[cfg(test)]
    pub fn skipped(&self) -> Skipped {
        self.plan.config.skipped.clone()
    }

    /// Stops and joins the workers; further `next` calls return `None`.
    fn shut_down(&mut self) {
        self.finished = true;
        if let Mode::Threads { shared, handles, .. } = &mut self.mode {
            shared.lock().stop = true;
            shared.wake.notify_all();
            for handle in handles.drain(..) {
                // Worker panics are caught and reported as batch errors, so join cannot fail
                // in a way worth reporting here.
                let _ = handle.join();
            }
        }
    }
}

/// A worker: takes the next batch index while fewer than `capacity` batches are ahead of
/// the consumer, builds it, sends it, until the epoch is done or the loader stops.
fn work(plan: &Plan, shared: &Shared, results: &Sender<Built>, capacity: usize) {
    loop {
        let index = {
            let mut progress = shared.lock();
            loop {
                if progress.stop || progress.next_to_build >= plan.batches {
                    return;
                }
                if progress.next_to_build < progress.consumed + capacity {
                    break;
                }
                progress = shared.wake.wait(progress).unwrap_or_else(PoisonError::into_inner);
            }
            progress.next_to_build += 1;
            progress.next_to_build - 1
        };
        // A panic (a bug) must not leave the consumer waiting for this batch forever.
        let built = catch_unwind(AssertUnwindSafe(|| plan.build(index))).unwrap_or_else(|panic| {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(DataError::WorkerPanic { batch: index, detail })
        });
        if results.send((index, built)).is_err() {
            return; // The loader is gone.
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished || self.next >= self.plan.batches {
            self.shut_down();
            return None;
        }
        let index = self.next;
        let built = match &mut self.mode {
            Mode::Inline => self.plan.build(index),
            Mode::Threads { shared, results, early, .. } => {
                let built = loop {
                    if let Some(built) = early.remove(&index) {
                        break built;
                    }
                    match results.recv() {
                        Ok((i, built)) => {
                            early.insert(i, built);
                        }
                        Err(_) => {
                            let detail = "the workers stopped before building it".to_string();
                            break Err(DataError::WorkerPanic { batch: index, detail });
                        }
                    }
                };
                shared.lock().consumed += 1;
                shared.wake.notify_all();
                built
            }
        };
        self.next += 1;
        if built.is_err() {
            self.shut_down();
        }
        Some(built)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.finished { 0 } else { self.plan.batches - self.next };
        (0, Some(left))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;
