//! What the training loop asks of the program that runs it: the native CLI (worker threads,
//! files, Ctrl-C) or a web page (WebGPU, IndexedDB, a stop button). Three narrow traits,
//! so that the loop itself never touches threads, the file system or the clock.

use crate::checkpoint::Checkpoint;
use crate::data::{AugmentConfig, Batch, LoadError, Shard};
use crate::runlog::{Event, Summary};

/// Which images a [`BatchRequest`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The images trained on.
    Train,
    /// The validation images.
    Val,
    /// AutoProg: training images held back to score search candidates on.
    Holdout,
}

/// A pass over one part of the data.
#[derive(Clone, Debug)]
pub struct BatchRequest {
    pub part: Part,
    /// Images per batch.
    pub batch: usize,
    /// Leave out the last, smaller batch.
    pub drop_last: bool,
    /// `true`: the train transform of `aug` in the shuffled order of (`seed`, `epoch`),
    /// with soft targets where `aug` mixes or smooths. `false`: the eval transform (resize
    /// to `aug.resolution`, normalise) in index order.
    pub train: bool,
    pub aug: AugmentConfig,
    pub seed: u64,
    pub epoch: u64,
    /// Batches of the pass already trained (a resumed or re-planned epoch starts later).
    pub skip: usize,
    /// The part of every batch this process reads ([`Shard::WHOLE`] but in data-parallel
    /// training passes).
    pub shard: Shard,
}

/// Batches of a pass, in order; an error ends the run.
pub type Batches = Box<dyn Iterator<Item = anyhow::Result<Batch>>>;

/// Where batches come from. Every random choice of a batch must be a function of (seed,
/// epoch, position), so that a resumed run repeats an uninterrupted one.
pub trait TrainData {
    /// Images in `part`.
    fn len(&self, part: Part) -> usize;
    /// Class names, in label order.
    fn classes(&self) -> &[String];
    /// A short description for the run's first note (`digits (ImageFolder), 1000 images`).
    fn describe(&self) -> String;
    /// The batches of one pass. A sample that fails to load is left out of its batch (a
    /// batch may come out short, never empty) and reported by [`TrainData::take_failures`].
    fn batches(&self, request: &BatchRequest) -> anyhow::Result<Batches>;
    /// Samples that failed since the last call, in the order they failed.
    fn take_failures(&self) -> Vec<LoadError>;
    /// Every sample left out so far, sorted (kept in checkpoints).
    fn failed(&self) -> Vec<String>;
    /// Samples that failed in an earlier session of the run: not tried again.
    fn mark_failed(&self, samples: &[String]);
}

/// One step of an epoch's progress, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct StepProgress {
    /// Steps of the epoch done (after a resume, counting those before it).
    pub position: u64,
    /// A loss read back during this step, with the epoch's throughput so far.
    pub loss: Option<(f32, f64)>,
}

/// Where a run's record goes: the run log, human-readable notes, checkpoints, the summary.
pub trait RunSink {
    /// Appends one event to the run log.
    fn event(&mut self, event: &Event) -> anyhow::Result<()>;
    /// A line for the person watching (stderr natively).
    fn note(&mut self, line: &str);
    /// Stores `checkpoint` as the run's last one and, when `best`, also as its best; returns
    /// where each went (the last first).
    fn checkpoint(&mut self, checkpoint: &Checkpoint, best: bool) -> anyhow::Result<Vec<String>>;
    /// Where the last good checkpoint is kept, for error messages.
    fn checkpoint_location(&self) -> String;
    /// Stores the summary of a finished run.
    fn summary(&mut self, summary: &Summary) -> anyhow::Result<()>;
    /// An epoch of `steps` steps starts (at `position` when resumed inside it).
    fn epoch_started(&mut self, _epoch: usize, _epochs: usize, _steps: u64, _position: u64) {}
    fn step_done(&mut self, _progress: StepProgress) {}
    fn epoch_ended(&mut self) {}
}

/// A future the loop awaits, borrowed from the host.
pub type HostFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// Where the loop hands control back to the host between training steps: a web page yields
/// to its event loop there, so that the page stays responsive, and holds a paused run. The
/// native CLI has no need of it.
pub trait Pace {
    /// Awaited before every training step (and before a stop request is looked at, so a
    /// paused run can still be stopped).
    fn between_steps(&self) -> HostFuture<'_>;
}

/// Time, as the host measures it.
pub trait Clock {
    /// Monotonic seconds from an arbitrary origin.
    fn seconds(&self) -> f64;
    /// Seconds since the Unix epoch (event time stamps).
    fn unix_time(&self) -> f64;
}

/// The clock of the operating system.
#[cfg(native)]
pub struct SystemClock {
    origin: std::time::Instant,
}

#[cfg(native)]
impl Default for SystemClock {
    fn default() -> Self {
        SystemClock { origin: std::time::Instant::now() }
    }
}

#[cfg(native)]
impl Clock for SystemClock {
    fn seconds(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    fn unix_time(&self) -> f64 {
        crate::runlog::unix_time_now()
    }
}
