//! The prefetching batch loader: worker threads decode and augment whole batches ahead of
//! the training loop, which receives them in order.
//!
//! Every random choice is seeded from (seed, epoch, position in the epoch order) for a
//! sample and (seed, epoch, batch index) for mixup, so the batches are bit-identical for
//! any number of workers. A file that fails to decode is reported once, counted, and left
//! out: its batch is one image short (no other image takes its place, which would count
//! that one twice).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

pub use autoprog::data::{Batch, Skipped};
use autoprog::data::{Pass, PassConfig};

use super::{DataError, Source};

/// Failures warn on stderr (once per sample), as the command line wants.
pub fn skipped_with_warnings() -> Skipped {
    Skipped::with_warning(|message| eprintln!("warning: {message}"))
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
    plan: Arc<Pass>,
    mode: Mode,
    next: usize,
    finished: bool,
}

impl Loader {
    /// Starts `workers` threads for one epoch over `order` (indices into `source`, e.g. from
    /// [`epoch_order`](autoprog::data::epoch_order) for training or `(0..len).collect()`
    /// for eval), each keeping up to two batches ahead of the consumer.
    pub fn new(
        source: Arc<dyn Source>,
        order: Vec<usize>,
        config: PassConfig,
        workers: usize,
    ) -> Result<Loader, DataError> {
        let pass = Pass::new(source, order, config)?;
        Ok(Loader::start(pass, workers, 2 * workers.max(1)))
    }

    /// Builds the batches of `pass` on `workers` threads (none: on the calling thread when
    /// asked for), at most `prefetch` of them ahead of the consumer.
    pub fn start(pass: Pass, workers: usize, prefetch: usize) -> Loader {
        Loader::starting_at(pass, 0, workers, prefetch)
    }

    /// As [`Loader::start`], from batch `first` on: the batches before it are never built
    /// (a run resumed, or re-planned after a search, inside an epoch). Every batch is seeded
    /// by its position, so batch `first` is the same as in a pass from the start.
    pub fn starting_at(pass: Pass, first: usize, workers: usize, prefetch: usize) -> Loader {
        let capacity = prefetch.max(1);
        let first = first.min(pass.batches());
        let plan = Arc::new(pass);
        let mode = if workers == 0 {
            Mode::Inline
        } else {
            let shared = Arc::new(Shared {
                progress: Mutex::new(Progress { next_to_build: first, consumed: first, stop: false }),
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
        Loader { plan, mode, next: first, finished: false }
    }

    /// Number of batches in the epoch.
    #[cfg(test)]
    pub fn batches(&self) -> usize {
        self.plan.batches()
    }

    /// The skipped-sample record (readable after the loop).
    #[cfg(test)]
    pub fn skipped(&self) -> Skipped {
        self.plan.skipped().clone()
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
fn work(plan: &Pass, shared: &Shared, results: &Sender<Built>, capacity: usize) {
    loop {
        let index = {
            let mut progress = shared.lock();
            loop {
                if progress.stop || progress.next_to_build >= plan.batches() {
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
        let build = AssertUnwindSafe(|| plan.build(index).map_err(DataError::from));
        let built = catch_unwind(build).unwrap_or_else(|panic| {
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
        if self.finished || self.next >= self.plan.batches() {
            self.shut_down();
            return None;
        }
        let index = self.next;
        let built = match &mut self.mode {
            Mode::Inline => self.plan.build(index).map_err(DataError::from),
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
        let left = if self.finished { 0 } else { self.plan.batches() - self.next };
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
