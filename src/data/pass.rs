//! One pass over a source's images as batches ([`Pass`]): each sample loaded, transformed
//! (train or eval) and, when training, the batch mixed, every random choice seeded from
//! (seed, epoch, position) so the batches are bit-identical on any thread and in any order
//! of building. A sample that fails to load is recorded once in [`Skipped`] and left out:
//! its batch is one image short (no other image takes its place, which would count that
//! one twice).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::augment::{eval_transform, mix_batch, train_transform, AugmentConfig};
use super::source::{stream_seed, Source, Stream};
use super::{Batch, LoadError, RgbImage, Shard};
use crate::{Error, Result};

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
    /// No warnings: failures are only recorded (see [`Skipped::with_warning`]).
    fn default() -> Self {
        Skipped::with_warning(|_| {})
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

/// How a pass builds its batches.
#[derive(Clone, Default)]
pub struct PassConfig {
    /// Samples per batch B.
    pub batch: usize,
    /// Leave out the last, smaller batch.
    pub drop_last: bool,
    pub aug: AugmentConfig,
    /// Train transform and soft targets when true; the eval transform otherwise.
    pub train: bool,
    pub seed: u64,
    pub epoch: u64,
    /// Where failed samples are recorded; share one across the passes of a run.
    pub skipped: Skipped,
    /// The part of every batch this process reads (data-parallel runs).
    pub shard: Shard,
}

/// One pass over `order` (indices into `source`): what every batch of it is built from.
/// Immutable, so worker threads can build its batches in any order.
pub struct Pass {
    source: Arc<dyn Source>,
    order: Vec<usize>,
    config: PassConfig,
    batches: usize,
}

impl Pass {
    /// Checks the settings against the source and the order.
    pub fn new(source: Arc<dyn Source>, order: Vec<usize>, config: PassConfig) -> Result<Pass> {
        config.aug.validate().map_err(|e| Error::Config(e.to_string()))?;
        if config.batch == 0 {
            return Err(Error::Config("--batch must be at least 1".into()));
        }
        let ranks = config.shard.ranks;
        if ranks > 1 && (!config.batch.is_multiple_of(ranks) || !config.drop_last) {
            return Err(Error::Config(format!(
                "a batch shared by {ranks} ranks must split evenly and passes must drop their last partial batch \
                 (batch {}); use a --batch that is a multiple of {ranks}",
                config.batch
            )));
        }
        if order.is_empty() {
            return Err(Error::Config("the epoch has no samples; the dataset split is empty".into()));
        }
        if let Some(&bad) = order.iter().find(|&&i| i >= source.len()) {
            let n = source.len();
            return Err(Error::Config(format!("sample {bad} of the epoch order is past the {n} samples")));
        }
        let batches = if config.drop_last { order.len() / config.batch } else { order.len().div_ceil(config.batch) };
        if batches == 0 {
            return Err(Error::Config(format!(
                "batch {} is larger than the {} samples of the epoch, and the last partial batch is dropped; \
                 lower --batch",
                config.batch,
                order.len()
            )));
        }
        Ok(Pass { source, order, config, batches })
    }

    /// Number of batches in the pass.
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// The record of failed samples.
    pub fn skipped(&self) -> &Skipped {
        &self.config.skipped
    }

    /// Builds batch `index`: its samples loaded, transformed and (when training) mixed, or
    /// the shard's part of it. A sample that fails is left out; a batch none of whose
    /// samples loads is an error.
    pub fn build(&self, index: usize) -> Result<Batch> {
        let config = &self.config;
        let whole = index * config.batch..((index + 1) * config.batch).min(self.order.len());
        // Mixing pairs sample i with sample B−1−i of the whole batch: a shard of a mixed
        // batch is cut from the whole one, which every rank builds.
        let mixes = config.train && config.aug.soft_targets();
        let positions = match mixes {
            true => whole.clone(),
            false => shift(config.shard.rows(whole.len()), whole.start),
        };
        let (mut images, labels) = self.load(index, positions)?;
        let targets = mixes.then(|| {
            let seed = stream_seed(config.seed, config.epoch, Stream::Mix, index as u64);
            let classes = self.source.classes().len();
            mix_batch(&mut images, &labels, classes, &config.aug, &mut ChaCha8Rng::seed_from_u64(seed)).0
        });
        let batch = Batch { index, resolution: config.aug.resolution, images, labels, targets };
        if !mixes {
            return Ok(batch);
        }
        if batch.len() < config.shard.ranks {
            return Err(Error::BatchUnfillable {
                batch: index,
                detail: format!(
                    "{} images load, fewer than the {} ranks that share it",
                    batch.len(),
                    config.shard.ranks
                ),
            });
        }
        Ok(batch.shard(config.shard))
    }

    /// The images ([n, 3, R, R], transformed) and labels of the samples at `positions`,
    /// those that fail left out; an error when none loads.
    fn load(&self, index: usize, positions: std::ops::Range<usize>) -> Result<(Vec<f32>, Vec<u32>)> {
        let (config, r) = (&self.config, self.config.aug.resolution);
        let mut images = Vec::with_capacity(positions.len() * 3 * r * r);
        let mut labels = Vec::with_capacity(positions.len());
        let (wanted, last) = (positions.len(), positions.end.max(1) - 1);
        for position in positions {
            let Some((image, label)) = self.load_at(position) else { continue };
            let seed = stream_seed(config.seed, config.epoch, Stream::Sample, position as u64);
            let chw = if config.train {
                train_transform(&image, &config.aug, &mut ChaCha8Rng::seed_from_u64(seed))
            } else {
                eval_transform(&image, &config.aug)
            };
            images.extend_from_slice(&chw);
            labels.push(label);
        }
        if labels.is_empty() {
            return Err(Error::BatchUnfillable {
                batch: index,
                detail: format!(
                    "none of its {wanted} images loads (the last was `{}`)",
                    self.source.describe(self.order[last])
                ),
            });
        }
        Ok((images, labels))
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

/// `range` moved `by` positions on.
fn shift(range: std::ops::Range<usize>, by: usize) -> std::ops::Range<usize> {
    range.start + by..range.end + by
}

/// The batches of a pass, built one after another on the calling thread when asked for
/// (the browser's path; natively the loader builds them on worker threads). Ends after the
/// first error.
pub struct InlineBatches {
    pass: Pass,
    next: usize,
}

impl Pass {
    /// The batches, from batch `skip` on, built on the calling thread.
    pub fn inline(self, skip: usize) -> InlineBatches {
        InlineBatches { pass: self, next: skip }
    }
}

impl Iterator for InlineBatches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.pass.batches {
            return None;
        }
        let built = self.pass.build(self.next);
        self.next = if built.is_ok() { self.next + 1 } else { self.pass.batches };
        Some(built)
    }
}
