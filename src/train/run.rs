//! The training loop as a small state machine over [`Phase`]s: an epoch starts (a stage's
//! search or growth set up, activations planned), its steps run (`steps.rs`), a search ends
//! inside it (the winner recycled), the epoch ends (`steps.rs`: evaluation, checkpoint),
//! the run stops or finishes. Each phase is a method of [`Trainer`]; [`run`] drives them.

use super::collective::check_agreement;
use super::config::TrainConfig;
use super::growth::{grow, remap_state};
use super::host::{BatchRequest, Clock, Part, RunSink, TrainData};
use super::options::GrowFrom;
use super::plan::{self, Steps, Trains};
use super::state::{NonFinite, State};
use super::supernet::{choose, scoring_weights, ActsByResolution, HeldBatch};
use super::trainer::{AlreadyFinished, Diverged, Epoch, Host, Phase, Planned, Start, Stopped, Trainer};
use crate::data::{AugmentConfig, Shard};
use crate::gpu::ReadbackRing;
use crate::model::step::STEP_REPORT_LEN;
use crate::model::ParamLayout;
use crate::prog::schedule::{stage_at, Stage};
use crate::prog::search::Candidate;
use crate::runlog::{
    CheckpointEvent, CheckpointKind, DataWarningEvent, Event, Regularisation, RunEndEvent, RunStartEvent, RunStatus,
    StageEvent, Summary,
};
use crate::GpuContext;

/// Loss readbacks in flight: how many steps the host may run ahead of the GPU.
const STEPS_IN_FLIGHT: usize = 3;
/// Batches of training images AutoProg holds back to evaluate its candidates on (at most a
/// tenth of the training set).
const HOLDOUT_BATCHES: usize = 8;

/// Images AutoProg holds back from `train_images` to score its candidates on: whole
/// batches of `batch`, about a tenth of the images, at most [`HOLDOUT_BATCHES`] batches.
/// `None` for the other schedules, unless the data config holds them back for all.
pub fn holdout_images(config: &TrainConfig, train_images: usize) -> anyhow::Result<Option<usize>> {
    let r = &config.recipe;
    if r.schedule != super::options::Schedule::Auto && !config.data.holdout_for_all {
        return Ok(None);
    }
    let held = ((train_images / 10) / r.batch).clamp(1, HOLDOUT_BATCHES) * r.batch;
    anyhow::ensure!(
        train_images >= held + r.batch,
        "AutoProg holds back {held} of the {train_images} training images to compare its candidates; too few are left \
         for --batch {}: use a smaller --batch, more images, or --schedule none (the full model, no search)",
        r.batch
    );
    Ok(Some(held))
}

/// Trains as `config` says on the data, log and clock of `host`; returns the summary (also
/// handed to the sink). The data must already hold back [`holdout_images`] for `auto`.
pub async fn run<'a>(
    ctx: &'a GpuContext,
    config: &'a TrainConfig,
    start: Start<'_>,
    host: Host<'a>,
) -> anyhow::Result<Summary> {
    let started = host.clock.seconds();
    start_event(ctx, config, host.sink, host.clock)?;
    let ranks = host.collective.map_or(1, |c| c.ranks());
    let (mut trainer, wall_before) = match prepare(ctx, config, start, &*host.data, ranks) {
        Ok(ready) => {
            let wall_before = ready.state.progress.wall_seconds;
            (Trainer::new(ctx, config, ready, host), wall_before)
        }
        Err(e) => {
            // The error matters more than a failure to log it.
            let _ = failure_event(host.sink, host.clock, host.clock.seconds() - started, &e);
            return Err(e);
        }
    };
    let outcome = trainer.drive().await;
    if let Err(e) = &outcome {
        // A stopped run has logged its own end; any other failure ends the log here, so
        // that the record says how the run ended.
        if !e.is::<Stopped>() {
            let wall_seconds = wall_before + trainer.host.clock.seconds() - started;
            let _ = failure_event(trainer.host.sink, trainer.host.clock, wall_seconds, e);
        }
    }
    outcome
}

/// The `run_start` event.
fn start_event(
    ctx: &GpuContext,
    config: &TrainConfig,
    sink: &mut dyn RunSink,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    let event = RunStartEvent {
        time: clock.unix_time(),
        version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)?,
        adapter: ctx.summary.display_name(),
        schedule: super::options::name(&config.recipe.schedule),
    };
    sink.event(&Event::RunStart(event))
}

/// The `run_end` event of a run that failed with `error`.
fn failure_event(
    sink: &mut dyn RunSink,
    clock: &dyn Clock,
    wall_seconds: f64,
    error: &anyhow::Error,
) -> anyhow::Result<()> {
    let (time, status, message) = (clock.unix_time(), RunStatus::Failed, Some(format!("{error:#}")));
    sink.event(&Event::RunEnd(RunEndEvent { time, wall_seconds, status, message }))
}

/// What a run is checked and set up with before its first phase.
pub(super) struct Ready {
    pub classes: Vec<String>,
    pub stages: Vec<Stage>,
    pub state: State,
    pub steps: Steps,
}

/// Checks the configuration against the data and builds the state: fresh, or from the
/// run's checkpoint.
fn prepare(
    ctx: &GpuContext,
    config: &TrainConfig,
    start: Start<'_>,
    data: &dyn TrainData,
    ranks: usize,
) -> anyhow::Result<Ready> {
    config.validate()?;
    let batch = config.recipe.batch;
    anyhow::ensure!(
        batch.is_multiple_of(ranks),
        "--batch {batch} does not split evenly over {ranks} ranks: use a multiple of {ranks} (--batch is the global \
         batch; each rank trains --batch / ranks images a step)"
    );
    let classes = data.classes().to_vec();
    anyhow::ensure!(
        classes.len() == config.model.classes,
        "the model has {} outputs but the data has {} classes",
        config.model.classes,
        classes.len()
    );
    let (train, held) = (data.len(Part::Train), data.len(Part::Holdout));
    if let Some(wanted) = holdout_images(config, train + held)? {
        anyhow::ensure!(
            held >= wanted,
            "AutoProg scores its candidates on {wanted} held-back training images, but the data holds back {held}"
        );
    }
    check_adapter(ctx, config)?;
    let steps = Steps::new(config, train)?;
    let stages = config.schedule()?;
    let state = match start {
        Start::Fresh => State::fresh(ctx, config, &stages[0])?,
        Start::Resume { checkpoint, what } => State::from_checkpoint(ctx, config, checkpoint, what)?,
    };
    Ok(Ready { classes, stages, state, steps })
}

/// Checks that the adapter can bind the run's largest tensors (the full model at the full
/// resolution, at the larger of the training and evaluation batch), so that a model too large
/// for it (a browser's adapter, most often) fails before training rather than at the stage
/// that first needs them.
fn check_adapter(ctx: &GpuContext, config: &TrainConfig) -> anyhow::Result<()> {
    let (m, r) = (&config.model, &config.recipe);
    let batch = r.batch.max(r.eval_batch);
    let n = m.tokens_at(m.image_size);
    let largest = [
        ("the MLP activations", batch * n * m.mlp_hidden),
        ("the attention inputs", batch * n * 3 * m.dim),
        ("the input images", batch * m.in_chans * m.image_size * m.image_size),
        ("the parameters", ParamLayout::new(m, m.depth, ctx.arena_align()).count()),
    ];
    for (what, elements) in largest {
        let what = format!("{what} of {} at batch {batch}", config.model_name);
        ctx.check_binding(&what, elements as u64 * 4)?;
    }
    Ok(())
}

impl<'a> Trainer<'a> {
    fn new(ctx: &'a GpuContext, config: &'a TrainConfig, ready: Ready, host: Host<'a>) -> Self {
        let Ready { classes, stages, state, steps } = ready;
        // Files that failed in earlier sessions of the run are not tried (or reported) again.
        host.data.mark_failed(&state.progress.skipped_files);
        let (wall_before, session_start) = (state.progress.wall_seconds, host.clock.seconds());
        let ring = ReadbackRing::new(ctx, STEP_REPORT_LEN, STEPS_IN_FLIGHT);
        Trainer {
            ctx,
            config,
            host,
            stages,
            steps,
            classes,
            state,
            ring,
            planned: None,
            carried: None,
            stop_agreed: false,
            wall_before,
            session_start,
        }
    }

    /// The short loop over the phases.
    async fn drive(&mut self) -> anyhow::Result<Summary> {
        self.start_note();
        let mut phase = Phase::EpochStart;
        loop {
            phase = match phase {
                Phase::EpochStart => Phase::Steps(self.start_epoch().await?),
                Phase::Steps(epoch) => self.train_steps(epoch).await?,
                Phase::SearchEnd(epoch) => self.end_search(epoch).await?,
                Phase::EpochEnd(epoch) => self.end_epoch(epoch).await?,
                Phase::Stop(epoch) => return Err(self.stop(epoch).await),
                Phase::Finished(summary) => return Ok(*summary),
            }
        }
    }

    /// What is trained on what, for the person watching.
    fn start_note(&mut self) {
        let c = self.config;
        let layout = ParamLayout::new(&c.model, c.model.depth, 1);
        self.host.sink.note(&format!(
            "training {} ({} parameters at full depth) on {}, batch {}, {} epochs of {} steps, schedule {}",
            c.model_name,
            layout.count(),
            self.host.data.describe(),
            c.recipe.batch,
            c.recipe.epochs,
            self.steps.per_epoch,
            super::options::name(&c.recipe.schedule),
        ));
        let precision = match c.recipe.precision.resolve(self.ctx) {
            Ok((element, why)) => format!("{element} activations ({why})"),
            Err(e) => e.to_string(),
        };
        let scale = self.state.scaler.map(|s| format!(", loss scale {}", s.scale)).unwrap_or_default();
        self.host.sink.note(&format!("precision: {precision}{scale}"));
        if let Some(peers) = self.peers() {
            let adapters = peers.adapters().iter().enumerate().map(|(r, a)| format!("{r}: {a}")).collect::<Vec<_>>();
            self.host.sink.note(&format!(
                "data-parallel over {} ranks, {} images per rank a step; ranks' adapters: {}",
                peers.ranks(),
                self.local_batch(),
                adapters.join(", ")
            ));
        }
    }

    /// An epoch starts: a stage's search opens or its sub-network is foregone, the stage
    /// is logged, the model grows to what the epoch trains and the activations are planned.
    async fn start_epoch(&mut self) -> anyhow::Result<Epoch> {
        let (epoch, epochs) = (self.state.progress.epoch, self.config.recipe.epochs);
        if epoch >= epochs {
            anyhow::bail!(AlreadyFinished { epochs });
        }
        let stage = stage_at(&self.stages, epoch);
        let mut chosen_without_search = None;
        if let Some(opening) = plan::opening(self.config, &self.stages, self.steps, &self.state.progress)? {
            match &opening {
                plan::Opening::Foregone { chosen, why } => {
                    self.host.sink.note(&format!("stage {stage}: {} ({why}) trains without a search", chosen.name()));
                    chosen_without_search = Some(*chosen);
                }
                plan::Opening::Search(s) => {
                    self.host.sink.note(&format!("stage {stage}: searching {} candidates", s.candidates.len()))
                }
            }
            plan::open(&mut self.state.progress, &self.stages, opening);
        }
        if plan::starts_stage(&self.stages, &self.state.progress) {
            self.stage_event(stage, chosen_without_search)?;
        }
        let trains = plan::trains(self.config.recipe.schedule, &self.stages, &self.state.progress);
        if trains.depth != self.state.model.depth() {
            self.grow_to(stage, trains.depth).await?;
        }
        self.state.progress.resolution = trains.largest_resolution();
        self.plan_activations(&trains)?;
        let holdout = match self.state.progress.search {
            Some(_) => self.holdout(trains.largest_resolution())?,
            None => Vec::new(),
        };
        self.report_failures(epoch, self.state.progress.step)?;
        Ok(self.epoch(epoch, trains, holdout))
    }

    /// Logs the start of `stage` with what it trains: the schedule's sub-network, or the one
    /// chosen without a search (a search's winner is in its own event).
    fn stage_event(&mut self, stage: usize, chosen_without_search: Option<Candidate>) -> anyhow::Result<()> {
        let s = self.stages[stage];
        let (resolution, depth) = chosen_without_search.map_or((s.resolution, s.depth), |c| (c.resolution, c.depth));
        let event = StageEvent {
            stage: stage as u32,
            epoch: self.state.progress.epoch as u32,
            step: self.state.progress.step,
            resolution: resolution as u32,
            depth: depth as u32,
            regularisation: Regularisation {
                randaug_magnitude: s.randaug_magnitude as f64,
                drop_path: s.drop_path,
                erase_prob: s.erase_prob,
                mixup: s.mix_prob,
            },
            chosen_without_search: chosen_without_search.map(|c| c.name()),
        };
        self.host.sink.event(&Event::Stage(event))
    }

    /// MoGrow to `depth` blocks.
    async fn grow_to(&mut self, stage: usize, depth: usize) -> anyhow::Result<()> {
        if self.config.recipe.grow_from == GrowFrom::Best && plan::validation_is_stale(&self.state.progress) {
            // The source is whichever validated best, and the last validation is older than
            // the epoch before (a spread run validates every few epochs): take one now.
            self.state.progress.last_val_accs = self.validate().await?.0;
        }
        let (grown, event) = grow(self.ctx, &self.state, self.config, depth).await?;
        self.replace_state(grown);
        // A supernet grows to its deepest candidate; the search may then keep fewer blocks.
        let why = if self.state.progress.search.is_some() { " for the search's deepest candidate" } else { "" };
        self.host.sink.note(&format!(
            "stage {stage}: grew from {} to {} blocks{why} (MoGrow from {})",
            event.from_depth, event.to_depth, event.source
        ));
        self.host.sink.event(&Event::Growth(event))?;
        self.planned = None;
        Ok(())
    }

    /// Swaps in a rebuilt state; the old model's buffers go back to the driver.
    fn replace_state(&mut self, state: State) {
        self.state = state;
        self.ctx.trim_pool();
    }

    fn plan_activations(&mut self, trains: &Trains) -> anyhow::Result<()> {
        if matches!(&self.planned, Some(p) if p.resolutions == trains.resolutions && p.depth == trains.depth) {
            return Ok(());
        }
        // Release the old activations before allocating the new ones.
        self.planned = None;
        self.ctx.trim_pool();
        let batch = self.local_batch();
        let mut acts = ActsByResolution::new();
        for &res in &trains.resolutions {
            acts.insert(res, self.state.model.plan(self.ctx, batch, res)?);
        }
        let eval = self.state.model.plan(self.ctx, self.eval_batch(), trains.largest_resolution())?;
        self.planned = Some(Planned { resolutions: trains.resolutions.clone(), depth: trains.depth, acts, eval });
        Ok(())
    }

    pub(super) fn eval_batch(&self) -> usize {
        self.config.recipe.eval_batch.min(self.host.data.len(Part::Val)).max(1)
    }

    /// Held-back training images at `resolution` (eval transform), in whole batches.
    fn holdout(&self, resolution: usize) -> anyhow::Result<Vec<HeldBatch>> {
        if self.host.data.len(Part::Holdout) == 0 {
            return Ok(Vec::new());
        }
        // Each rank scores its shard of every held-back batch; the losses are averaged.
        let request = BatchRequest {
            shard: self.shard(),
            ..self.eval_request(Part::Holdout, self.config.recipe.batch, resolution, true)
        };
        self.host.data.batches(&request)?.map(|b| b.map(|b| (b.images, b.labels))).collect()
    }

    /// A pass over `part` with the eval transform at `resolution`.
    pub(super) fn eval_request(&self, part: Part, batch: usize, resolution: usize, drop_last: bool) -> BatchRequest {
        let aug = &self.config.augment;
        BatchRequest {
            part,
            batch,
            drop_last,
            train: false,
            aug: AugmentConfig { mean: aug.mean, std: aug.std, ..AugmentConfig::none(resolution) },
            seed: 0,
            epoch: 0,
            skip: 0,
            shard: Shard::WHOLE,
        }
    }

    /// Logs each sample that failed since the last call, as one `data_warning` event.
    pub(super) fn report_failures(&mut self, epoch: usize, step: u64) -> anyhow::Result<()> {
        for failure in self.host.data.take_failures() {
            let event = DataWarningEvent { epoch: epoch as u32, step, file: failure.what, reason: failure.reason };
            self.host.sink.event(&Event::DataWarning(event))?;
        }
        Ok(())
    }

    /// The end of a search: the last evaluation point, the choice and parameter recycling.
    /// The chosen sub-network trains the rest of the epoch when the search ended inside it.
    async fn end_search(&mut self, epoch: Epoch) -> anyhow::Result<Phase> {
        let mut search = self.state.progress.search.take().expect("a search is running");
        self.evaluation_point(&epoch, &mut search).await?;
        let (_, scored_with) = scoring_weights(&self.state.model, &self.state.optimizer, &search);
        let (cost, space) = (self.config.recipe.search_cost, self.config.recipe.search_space);
        let (chosen, event) = choose(&search, cost, space, scored_with, epoch.index, self.state.progress.step)?;
        if let Some(peers) = self.peers() {
            check_agreement(peers, "the search's choice", &[chosen.resolution as f64, chosen.depth as f64])?;
        }
        let active = search.growth().active(chosen.depth)?;
        let recycled = remap_state(self.ctx, &self.state, self.config, &active, &self.state.model.params).await?;
        self.replace_state(recycled);
        self.state.progress.resolution = chosen.resolution;
        let reason = event.verdict.map(|v| format!("; {}", v.reason(event.anchor.as_deref()))).unwrap_or_default();
        self.host.sink.note(&format!(
            "stage {}: chose {} ({} candidates{reason})",
            search.stage,
            event.winner,
            search.candidates.len()
        ));
        self.host.sink.event(&Event::Search(event))?;
        plan::choose(&mut self.state.progress, self.stages[search.stage].start_epoch, chosen);
        let p = &mut self.state.progress;
        p.search_seconds += search.evaluation_seconds + search.timing_seconds;
        p.search_flops += search.flops;
        p.train_flops += search.flops;
        self.planned = None;
        if self.state.progress.batch_in_epoch < self.steps.per_epoch as usize {
            // Re-planned, with a pass that skips the batches done; the tally goes on.
            self.carried = Some(epoch.tally(self.host.clock));
            self.host.sink.epoch_ended();
            return Ok(Phase::EpochStart);
        }
        Ok(Phase::EpochEnd(epoch))
    }

    /// A stop was requested: the checkpoint is written, the log ends, the run returns
    /// [`Stopped`] (or the error that kept it from saving).
    async fn stop(&mut self, epoch: Epoch) -> anyhow::Error {
        let outcome = async {
            self.host.sink.epoch_ended();
            self.count_trained(&epoch);
            self.state.progress.wall_seconds = self.wall_before + self.host.clock.seconds() - self.session_start;
            self.state.progress.skipped_files = self.host.data.failed();
            let written = self.save_checkpoint(false).await?;
            let event = CheckpointEvent {
                epoch: epoch.index as u32,
                step: self.state.progress.step,
                path: written[0].clone(),
                kind: CheckpointKind::Last,
            };
            self.host.sink.event(&Event::Checkpoint(event))?;
            let stopped = Stopped { epoch: epoch.index, step: self.state.progress.step };
            let message = Some(format!("stopped at step {} of epoch {}", stopped.step, stopped.epoch));
            self.end_event(RunStatus::Interrupted, self.state.progress.wall_seconds, message)?;
            anyhow::Ok(stopped)
        };
        match outcome.await {
            Ok(stopped) => stopped.into(),
            Err(e) => e,
        }
    }

    /// Writes the checkpoint of the current state (also as the best when `best`).
    pub(super) async fn save_checkpoint(&mut self, best: bool) -> anyhow::Result<Vec<String>> {
        let checkpoint = match self.state.to_checkpoint(self.ctx, self.config, &self.classes).await {
            Ok(c) => c,
            Err(e) => match e.downcast::<NonFinite>() {
                Ok(bad) => {
                    let detail = format!("{bad}, so no checkpoint was written");
                    anyhow::bail!(Diverged { detail, kept: self.host.sink.checkpoint_location() })
                }
                Err(e) => return Err(e),
            },
        };
        self.host.sink.checkpoint(&checkpoint, best)
    }

    pub(super) fn end_event(
        &mut self,
        status: RunStatus,
        wall_seconds: f64,
        message: Option<String>,
    ) -> anyhow::Result<()> {
        let event = RunEndEvent { time: self.host.clock.unix_time(), wall_seconds, status, message };
        self.host.sink.event(&Event::RunEnd(event))
    }
}
