//! The types of a run in progress: what the host provides ([`Host`]), how the run starts
//! ([`Start`]), the [`Trainer`] its phases work on, the [`Phase`] it goes to next, the
//! [`Epoch`] being trained, and how a run ends early ([`Stopped`], [`Diverged`]). The phases
//! themselves are in `run.rs` (epoch start, search end, stop) and `steps.rs` (steps, epoch
//! end).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use super::collective::Collective;
use super::config::TrainConfig;
use super::host::{Clock, Pace, RunSink, TrainData};
use super::plan::{Steps, Trains};
use super::state::State;
use super::supernet::{ActsByResolution, HeldBatch, SearchState};
use crate::checkpoint::Checkpoint;
use crate::data::{AugmentConfig, Shard};
use crate::gpu::ReadbackRing;
use crate::model::Activations;
use crate::prog::grow::Growth;
use crate::prog::schedule::{stage_crop_scale, Stage};
use crate::runlog::Summary;
use crate::GpuContext;

/// What the program running the loop provides (see [`super::host`]).
pub struct Host<'a> {
    pub data: &'a mut dyn TrainData,
    pub sink: &'a mut dyn RunSink,
    pub clock: &'a dyn Clock,
    /// Set to stop the run: it checkpoints and ends with [`Stopped`].
    pub stop: &'a AtomicBool,
    /// Awaited between steps, where the host has a use for it.
    pub pace: Option<&'a dyn Pace>,
    /// The other processes of a data-parallel run; `None`: this process trains alone.
    pub collective: Option<&'a dyn Collective>,
}

/// How a run starts.
pub enum Start<'a> {
    Fresh,
    /// From a training checkpoint of the same run; `what` names it in errors.
    Resume {
        checkpoint: &'a Checkpoint,
        what: &'a str,
    },
}

/// The run was stopped on request after writing its checkpoint.
#[derive(Debug, thiserror::Error)]
#[error("stopped at step {step} of epoch {epoch}")]
pub struct Stopped {
    pub epoch: usize,
    pub step: u64,
}

/// A resumed run had already trained all its epochs.
#[derive(Debug, thiserror::Error)]
#[error("the run already finished all {epochs} epochs; nothing to resume (a larger --epochs extends it)")]
pub struct AlreadyFinished {
    pub epochs: usize,
}

/// The loss or the weights became NaN or infinite.
#[derive(Debug, thiserror::Error)]
#[error(
    "training diverged {detail}; the last good checkpoint is kept in {kept}; try a lower --lr or a smaller --batch"
)]
pub struct Diverged {
    pub detail: String,
    pub kept: String,
}

/// Where the loop goes next.
pub(super) enum Phase {
    /// An epoch (or the rest of one, after a search ended inside it) starts.
    EpochStart,
    Steps(Epoch),
    SearchEnd(Epoch),
    EpochEnd(Epoch),
    Stop(Epoch),
    Finished(Box<Summary>),
}

/// A run in progress: what it was set up with, and the state it trains.
pub(super) struct Trainer<'a> {
    pub ctx: &'a GpuContext,
    pub config: &'a TrainConfig,
    pub host: Host<'a>,
    pub stages: Vec<Stage>,
    pub steps: Steps,
    pub classes: Vec<String>,
    pub state: State,
    pub ring: ReadbackRing,
    /// Training activations per resolution and the evaluation activations of the current
    /// (resolutions, depth), re-planned when either changes.
    pub planned: Option<Planned>,
    /// The tally of an epoch that a search ended inside of.
    pub carried: Option<Tally>,
    /// Data-parallel runs: a rank asked to stop at the last step's exchange.
    pub stop_agreed: bool,
    /// Wall seconds of earlier sessions of the run, and when this one started.
    pub wall_before: f64,
    pub session_start: f64,
}

pub(super) struct Planned {
    pub resolutions: Vec<usize>,
    pub depth: usize,
    pub acts: ActsByResolution,
    pub eval: Activations,
}

/// Losses, images and seconds of an epoch so far.
#[derive(Clone, Debug, Default)]
pub(super) struct Tally {
    pub losses: Vec<f64>,
    pub images: u64,
    pub seconds: f64,
}

/// The learning rate, resolution and depth of a step, for its log line; the loss scale
/// and the blocks it ran, for when its report says it was skipped.
#[derive(Clone, Debug)]
pub(super) struct StepInfo {
    pub lr: f64,
    pub resolution: usize,
    pub depth: usize,
    pub loss_scale: f32,
    pub active: Vec<usize>,
}

/// An epoch being trained.
pub(super) struct Epoch {
    pub index: usize,
    pub trains: Trains,
    /// During a search: the supernet's growth, whose active blocks give each sub-network.
    pub growth: Option<Growth>,
    /// During a search: the held-back batches its candidates are scored on.
    pub holdout: Vec<HeldBatch>,
    /// The augmentation of the stage at the epoch's largest resolution.
    pub aug: AugmentConfig,
    pub losses: Vec<f64>,
    pub images: u64,
    /// Clock seconds at which the epoch's steps started (earlier by the seconds carried
    /// over); set when its batches are requested.
    pub start: f64,
    /// Seconds of the epoch trained before a search ended inside it.
    pub seconds_before: f64,
    pub step_info: BTreeMap<u64, StepInfo>,
}

impl Epoch {
    /// What the epoch has done so far, to carry over into its re-planned rest.
    pub fn tally(&self, clock: &dyn Clock) -> Tally {
        Tally { losses: self.losses.clone(), images: self.images, seconds: clock.seconds() - self.start }
    }

    pub fn images_per_second(&self, clock: &dyn Clock) -> f64 {
        self.images as f64 / (clock.seconds() - self.start)
    }
}

impl Trainer<'_> {
    /// The processes of a data-parallel run, if there are several.
    pub(super) fn peers(&self) -> Option<&dyn Collective> {
        self.host.collective.filter(|c| c.ranks() > 1)
    }

    /// The part of every batch this process trains.
    pub(super) fn shard(&self) -> Shard {
        self.peers().map_or(Shard::WHOLE, |c| Shard { rank: c.rank(), ranks: c.ranks() })
    }

    /// Images per training step on this process: its shard of `--batch`.
    pub(super) fn local_batch(&self) -> usize {
        self.config.recipe.batch / self.shard().ranks
    }

    pub(super) fn epoch(&mut self, index: usize, trains: Trains, holdout: Vec<HeldBatch>) -> Epoch {
        let reg = trains.regularisation;
        let resolution = trains.largest_resolution();
        let base = &self.config.augment;
        let min_scale = if self.config.recipe.stage_crops {
            stage_crop_scale(base.min_scale, resolution, self.config.model.image_size)
        } else {
            base.min_scale
        };
        let aug = AugmentConfig {
            resolution,
            min_scale,
            randaug_magnitude: reg.randaug_magnitude,
            erase_prob: reg.erase_prob as f32,
            mix_prob: reg.mix_prob as f32,
            ..self.config.augment.clone()
        };
        let growth = self.state.progress.search.as_ref().map(SearchState::growth);
        // An epoch a search ended inside goes on with what it had so far (its clock too).
        let Tally { losses, images, seconds } = self.carried.take().unwrap_or_default();
        let (start, seconds_before, step_info) = (self.host.clock.seconds() - seconds, seconds, BTreeMap::new());
        Epoch { index, trains, growth, holdout, aug, losses, images, start, seconds_before, step_info }
    }
}
