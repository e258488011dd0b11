//! Training as a library: the AutoProg loop that the native CLI and (later) the web page
//! both run, on whatever the host provides through the traits of [`host`].
//!
//! - [`config`] and [`options`]: what a run is asked to do (`config.toml`).
//! - [`plan`]: the decisions that need no GPU: a stage's opening (search or foregone
//!   choice), what an epoch trains, when a search ends, learning rate and drop-path.
//! - [`run`] (and `steps.rs`): the loop as phases over a [`trainer::Trainer`]: epoch start
//!   (search set-up, growth, activations), training steps (with evaluation points), search
//!   end (choice and recycling), epoch end (evaluation, checkpoint), stop, finish.
//! - [`collective`]: data-parallel runs: gradients averaged over the ranks, a search's
//!   measurements combined, the ranks' agreement checked.
//! - [`supernet`]: the GPU side of a search: sampling, scoring, timing, the choice's event.
//! - [`growth`]: MoGrow and the winner's extraction from the supernet.
//! - [`state`]: the model, optimizer and [`progress`] of a run, and its checkpoint.
//! - [`eval`]: accuracy and loss of the weights and every EMA.
//! - [`fit`]: what a new run on a user's images chooses from them (flips, epochs).
//! - [`data`]: batches from image sources on the calling thread (hosts without threads);
//!   [`memory`]: a run record kept in memory.
//!
//! Every random choice is a function of (seed, epoch, position) or (seed, step), so a
//! resumed run repeats an uninterrupted one exactly. The loop is `async` only because GPU
//! readbacks are: natively it runs under `pollster::block_on`.

pub mod collective;
pub mod config;
pub mod data;
pub mod eval;
pub mod fit;
pub mod growth;
pub mod host;
pub mod memory;
pub mod options;
pub mod plan;
pub mod progress;
pub mod run;
pub mod state;
mod steps;
pub mod supernet;
pub mod trainer;

pub use collective::Collective;
pub use config::{DataConfig, Recipe, TrainConfig, MAX_EPOCH_STRETCH, PRESETS, SCHEDULES};
pub use data::SourceData;
pub use eval::{evaluate, Evaluation};
pub use host::{BatchRequest, Batches, Clock, HostFuture, Pace, Part, RunSink, StepProgress, TrainData};
pub use memory::MemoryRecord;
pub use options::{DepthGrowth, GrowFrom, OptState, Precision, Schedule, SearchCost, SearchSpace};
pub use progress::Progress;
pub use run::{holdout_images, run};
pub use trainer::{Diverged, Host, Start, Stopped};
