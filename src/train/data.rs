//! Training data from [`Source`]s with every batch built on the calling thread: what a host
//! without threads (the browser) uses, and what the native loader's worker threads must
//! reproduce batch for batch.

use std::sync::Arc;

use anyhow::Context;

use super::config::TrainConfig;
use super::host::{BatchRequest, Batches, Part, TrainData};
use super::run::holdout_images;
use crate::data::{epoch_order, split_train_val, LoadError, Pass, PassConfig, Skipped, Source};

/// The train part (less what AutoProg holds back), the held-back part and the val part of
/// a dataset, with one record of the samples that failed.
pub struct SourceData {
    train: Arc<dyn Source>,
    holdout: Option<Arc<dyn Source>>,
    val: Arc<dyn Source>,
    summary: String,
    skipped: Skipped,
}

impl SourceData {
    /// The parts a run of `config` reads from `train` and `val`; `summary` describes the
    /// dataset in the run's first note; failures are recorded (and warned about) in `skipped`.
    pub fn new(
        train: Arc<dyn Source>,
        val: Arc<dyn Source>,
        config: &TrainConfig,
        summary: String,
        skipped: Skipped,
    ) -> anyhow::Result<SourceData> {
        let (train, holdout): (Arc<dyn Source>, Option<Arc<dyn Source>>) = match holdout_images(config, train.len())? {
            Some(held) => {
                let fraction = held as f64 / train.len() as f64;
                let (kept, held) = split_train_val(train, fraction, config.recipe.seed)?;
                (Arc::new(kept), Some(Arc::new(held)))
            }
            None => (train, None),
        };
        Ok(SourceData { train, holdout, val, summary, skipped })
    }

    /// The source of `part`, if the data has it.
    pub fn source(&self, part: Part) -> Option<&Arc<dyn Source>> {
        match part {
            Part::Train => Some(&self.train),
            Part::Holdout => self.holdout.as_ref(),
            Part::Val => Some(&self.val),
        }
    }

    /// The pass `request` asks for: its source, its order (shuffled by seed and epoch when
    /// training) and how each batch is built.
    pub fn pass(&self, request: &BatchRequest) -> anyhow::Result<Pass> {
        let source = self.source(request.part).context("no images are held back")?.clone();
        let order = match request.train {
            true => epoch_order(source.len(), request.seed, request.epoch),
            false => (0..source.len()).collect(),
        };
        let config = PassConfig {
            batch: request.batch,
            drop_last: request.drop_last,
            aug: request.aug.clone(),
            train: request.train,
            seed: request.seed,
            epoch: request.epoch,
            skipped: self.skipped.clone(),
            shard: request.shard,
        };
        Ok(Pass::new(source, order, config)?)
    }
}

impl TrainData for SourceData {
    fn len(&self, part: Part) -> usize {
        self.source(part).map_or(0, |s| s.len())
    }

    fn classes(&self) -> &[String] {
        self.train.classes()
    }

    fn describe(&self) -> String {
        self.summary.clone()
    }

    fn batches(&self, request: &BatchRequest) -> anyhow::Result<Batches> {
        let batches = self.pass(request)?.inline(request.skip);
        Ok(Box::new(batches.map(|b| b.map_err(anyhow::Error::from))))
    }

    fn take_failures(&self) -> Vec<LoadError> {
        self.skipped.take_new()
    }

    fn failed(&self) -> Vec<String> {
        self.skipped.files()
    }

    fn mark_failed(&self, samples: &[String]) {
        self.skipped.mark_failed(samples.iter().cloned());
    }
}
