//! The phases inside an epoch: its training steps (with a search's evaluation points), and
//! its end (evaluation of the weights and every EMA, log, checkpoint, and after the last
//! epoch the summary).

use std::sync::atomic::Ordering;

use super::collective::{align_with_rank_0, combine_over_ranks, train_gradients_over_ranks};
use super::eval::evaluate;
use super::host::{BatchRequest, Part, StepProgress};
use super::plan::{self, drop_path_scales, learning_rate, shard_rows};
use super::supernet::{stage_batch, Scoring, SearchState};
use super::trainer::{Diverged, Epoch, Phase, StepInfo, Trainer};
use crate::data::Batch;
use crate::kernels::optimizer::AdamW;
use crate::model::step::{ScaleChange, StepOptions};
use crate::runlog::{CheckpointEvent, CheckpointKind, EmaAcc, EpochEvent, Event, RunStatus, StepEvent, Summary};

impl Trainer<'_> {
    /// The steps of an epoch, up to its end, a search's end or a stop request.
    pub(super) async fn train_steps(&mut self, mut epoch: Epoch) -> anyhow::Result<Phase> {
        let r = &self.config.recipe;
        let request = BatchRequest {
            part: Part::Train,
            batch: r.batch,
            drop_last: true,
            train: true,
            aug: epoch.aug.clone(),
            seed: r.seed,
            epoch: epoch.index as u64,
            skip: self.state.progress.batch_in_epoch,
            shard: self.shard(),
        };
        let position = self.state.progress.batch_in_epoch as u64;
        let batches = self.host.data.batches(&request)?;
        self.host.sink.epoch_started(epoch.index, r.epochs, self.steps.per_epoch, position);
        epoch.start = self.host.clock.seconds() - epoch.seconds_before;
        let mut stopped = false;
        for item in batches {
            if let Some(pace) = self.host.pace {
                pace.between_steps().await;
            }
            if self.stop_requested() {
                stopped = true;
                break;
            }
            self.step(&mut epoch, item?).await?;
            if plan::search_ended(&self.state.progress) {
                break;
            }
        }
        self.drain_losses(&mut epoch).await?;
        Ok(match () {
            _ if stopped => Phase::Stop(epoch),
            _ if plan::search_ended(&self.state.progress) => Phase::SearchEnd(epoch),
            _ => Phase::EpochEnd(epoch),
        })
    }

    /// One training step: an evaluation point first where the search has one, then the
    /// sub-network's forward, backward and update, submitted with its loss readback.
    async fn step(&mut self, epoch: &mut Epoch, batch: Batch) -> anyhow::Result<()> {
        let step = self.state.progress.step;
        if self.state.progress.search.as_ref().is_some_and(|s| s.evaluates_at(step)) {
            self.drain_losses(epoch).await?;
            let mut search = self.state.progress.search.take().expect("checked above");
            let scored = self.evaluation_point(epoch, &mut search).await;
            self.state.progress.search = Some(search);
            scored?;
        }
        let (resolution, depth) = self.sub_network(epoch, step);
        let mut rec = self.ctx.recorder("train.step");
        let options = self.stage_step(&mut rec, epoch, &batch, step, resolution, depth)?;
        if !self.ring.has_free() {
            if let Some((s, report)) = self.ring.wait_oldest(self.ctx).await? {
                self.record_loss(epoch, s, &report)?;
            }
        }
        let acts = &self.planned.as_ref().expect("planned at the epoch's start").acts[&resolution];
        let (model, optimizer) = (&self.state.model, &mut self.state.optimizer);
        match self.host.collective.filter(|c| c.ranks() > 1) {
            None => optimizer.record_step(&mut rec, model, acts, &options)?,
            Some(peers) => {
                let stop = self.host.stop.load(Ordering::Relaxed);
                let exchanged = train_gradients_over_ranks(self.ctx, rec, model, acts, &options, peers, stop).await?;
                self.stop_agreed = exchanged.stop;
                rec = self.ctx.recorder("train.update");
                optimizer.record_update(&mut rec, model, acts, &options)?;
            }
        }
        self.ring.record(&mut rec, &self.state.optimizer.report, step)?;
        self.ctx.submit(rec)?;
        self.ring.submitted();
        // Every rank trained a shard of the same size: the totals count the whole batch.
        let images = batch.len() * self.shard().ranks;
        let p = &mut self.state.progress;
        p.step += 1;
        p.batch_in_epoch += 1;
        p.train_flops += images as f64 * self.config.model.train_flops_per_image(resolution, depth);
        epoch.images += images as u64;
        let mut last = None;
        for (s, report) in self.ring.poll(self.ctx)? {
            self.record_loss(epoch, s, &report)?;
            last = Some((report[0], epoch.images_per_second(self.host.clock)));
        }
        self.report_failures(epoch.index, step)?;
        let position = self.state.progress.batch_in_epoch as u64;
        self.host.sink.step_done(StepProgress { position, loss: last });
        Ok(())
    }

    /// Whether the run stops before its next step: on this process's request, or in a
    /// data-parallel run when any rank asked at the last step (all ranks stop together).
    fn stop_requested(&self) -> bool {
        match self.peers() {
            None => self.host.stop.load(Ordering::Relaxed),
            Some(_) => self.stop_agreed,
        }
    }

    /// The (resolution, depth) step `step` trains: a random sub-network of the supernet
    /// during a search, else the epoch's one.
    fn sub_network(&self, epoch: &Epoch, step: u64) -> (usize, usize) {
        match &self.state.progress.search {
            Some(s) => {
                let c = s.sample(self.config.recipe.seed, step);
                (c.resolution, c.depth)
            }
            None => (epoch.trains.largest_resolution(), epoch.trains.depth),
        }
    }

    /// Uploads the batch for the sub-network (`resolution`, `depth`), selects its blocks and
    /// draws the step's drop-path factors; returns the step's optimizer options.
    fn stage_step(
        &mut self,
        rec: &mut crate::Recorder<'_>,
        epoch: &mut Epoch,
        batch: &Batch,
        step: u64,
        resolution: usize,
        depth: usize,
    ) -> anyhow::Result<StepOptions> {
        let r = &self.config.recipe;
        let active: Vec<usize> = match &epoch.growth {
            Some(g) => g.active(depth)?,
            None => (0..epoch.trains.depth).collect(),
        };
        let lr = learning_rate(step, self.steps.total, self.steps.warmup, r.lr, r.min_lr);
        let loss_scale = self.state.scaler.map_or(1.0, |s| s.scale);
        epoch.step_info.insert(step, StepInfo { lr, resolution, depth, loss_scale, active: active.clone() });
        let shard = self.shard();
        let planned = self.planned.as_mut().expect("planned at the epoch's start");
        let (images, labels, targets) = (&batch.images, &batch.labels, batch.targets.as_deref());
        let loss = stage_batch(self.ctx, rec, &planned.acts, images, labels, targets, resolution, self.classes.len())?;
        let acts = planned.acts.get_mut(&resolution).expect("planned");
        acts.set_active_blocks(&active)?;
        let rate = epoch.trains.regularisation.drop_path;
        let drop_path = rate > 0.0;
        if drop_path {
            let scales = drop_path_scales(rate, epoch.trains.depth, r.batch, r.seed, step);
            acts.write_drop_path(self.ctx, &shard_rows(&scales, r.batch, shard))?;
        }
        let adamw = AdamW { lr, beta1: r.beta1, beta2: r.beta2, eps: 1e-8, weight_decay: r.weight_decay };
        Ok(StepOptions { adamw, max_grad_norm: r.clip_grad as f32, loss, drop_path, loss_scale })
    }

    /// Logs every loss still being read back.
    async fn drain_losses(&mut self, epoch: &mut Epoch) -> anyhow::Result<()> {
        for (step, report) in self.ring.drain(self.ctx).await? {
            self.record_loss(epoch, step, &report)?;
        }
        Ok(())
    }

    /// Logs the loss of `step` from its report (read back now: [`Optimizer::report`]), or
    /// ends the run if it is not finite; a step whose gradients overflowed was skipped.
    ///
    /// [`Optimizer::report`]: crate::model::step::Optimizer::report
    fn record_loss(&mut self, epoch: &mut Epoch, step: u64, report: &[f32]) -> anyhow::Result<()> {
        let (loss, applied) = (report[0], report[1] != 0.0);
        if !loss.is_finite() {
            let detail = format!("at step {step} (loss {loss})");
            anyhow::bail!(Diverged { detail, kept: self.host.sink.checkpoint_location() });
        }
        // Every step's info is recorded before its submission, and the readbacks are all
        // drained before the epoch changes, so the step is in this epoch's map.
        let info = epoch.step_info[&step].clone();
        if !applied {
            self.skipped_step(step, &info)?;
        } else if let Some(scaler) = &mut self.state.scaler {
            if let ScaleChange::Doubled(to) = scaler.update(info.loss_scale, true) {
                self.host
                    .sink
                    .note(&format!("step {step}: {} clean steps, loss scale raised to {to}", scaler.growth_interval));
            }
        }
        epoch.losses.push(loss as f64);
        let event = StepEvent {
            step,
            epoch: epoch.index as u32,
            loss: loss as f64,
            lr: info.lr,
            images_per_second: epoch.images_per_second(self.host.clock),
            resolution: info.resolution as u32,
            depth: info.depth as u32,
        };
        self.host.sink.event(&Event::Step(event))
    }

    /// A step the GPU skipped because a gradient was inf or NaN: with f16 activations an
    /// overflow (the loss scale halves, as PyTorch's `GradScaler`); in f32 a divergence.
    fn skipped_step(&mut self, step: u64, info: &StepInfo) -> anyhow::Result<()> {
        let Some(scaler) = &mut self.state.scaler else {
            let detail = format!("at step {step} (a gradient is NaN or infinite)");
            anyhow::bail!(Diverged { detail, kept: self.host.sink.checkpoint_location() });
        };
        self.state.optimizer.uncount_skipped_step(&info.active);
        self.state.progress.skipped_steps += 1;
        let note = match scaler.update(info.loss_scale, false) {
            ScaleChange::Halved(from, to) => format!("loss scale {from} -> {to}"),
            _ => format!("the loss scale was already lowered to {}", scaler.scale),
        };
        self.host.sink.note(&format!(
            "step {step}: f16 gradients overflowed at loss scale {}; step skipped, {note}",
            info.loss_scale
        ));
        Ok(())
    }

    /// One of the search's evaluation points (see [`Scoring::evaluation_point`]).
    pub(super) async fn evaluation_point(&mut self, epoch: &Epoch, search: &mut SearchState) -> anyhow::Result<()> {
        let growth = epoch.growth.as_ref().expect("a search epoch has its growth");
        let scoring = Scoring {
            ctx: self.ctx,
            clock: self.host.clock,
            model: &self.state.model,
            optimizer: &self.state.optimizer,
            growth,
            cost: self.config.recipe.search_cost,
            vit: &self.config.model,
        };
        let planned = self.planned.as_mut().expect("planned at the epoch's start");
        let timed = &mut self.state.progress.step_ms;
        let flops_before = search.flops;
        scoring.evaluation_point(&mut planned.acts, search, timed, &epoch.holdout).await?;
        match self.host.collective.filter(|c| c.ranks() > 1) {
            Some(peers) => combine_over_ranks(peers, search, flops_before, timed),
            None => Ok(()),
        }
    }

    /// The end of an epoch: where it is validated (see [`plan::validates`]) the weights and
    /// every EMA evaluated and a checkpoint written; the epoch logged; after the last
    /// epoch, the summary.
    pub(super) async fn end_epoch(&mut self, epoch: Epoch) -> anyhow::Result<Phase> {
        let clock = self.host.clock;
        self.host.sink.epoch_ended();
        let ips = self.count_trained(&epoch);
        let validation = match plan::validates(&self.config.recipe, epoch.index) {
            true => Some(self.validate().await?),
            false => None,
        };
        self.report_failures(epoch.index, self.state.progress.step)?;
        let p = &mut self.state.progress;
        p.skipped_files = self.host.data.failed();
        p.epoch += 1;
        p.batch_in_epoch = 0;
        p.wall_seconds = self.wall_before + clock.seconds() - self.session_start;
        let best = validation.as_ref().is_some_and(|(acc, _)| p.record_validation(acc));
        let train_loss = epoch.losses.iter().sum::<f64>() / epoch.losses.len().max(1) as f64;
        let emas = &self.state.optimizer.emas;
        let ema_accs: Vec<EmaAcc> = validation
            .iter()
            .flat_map(|(acc, _)| emas.iter().zip(&acc[1..]).map(|((_, decay), &acc)| EmaAcc { decay: *decay, acc }))
            .collect();
        let event = EpochEvent {
            epoch: epoch.index as u32,
            step: p.step,
            train_loss,
            val_loss: validation.as_ref().map(|(_, loss)| loss[0]),
            val_acc: validation.as_ref().map(|(acc, _)| acc[0]),
            val_acc_ema: ema_accs.clone(),
            images_per_second: ips,
            wall_seconds: p.wall_seconds,
            train_flops: p.train_flops,
            resolution: p.resolution as u32,
            depth: self.state.model.depth() as u32,
        };
        self.host.sink.event(&Event::Epoch(event))?;
        let line = epoch_line(epoch.index, self.config.recipe.epochs, train_loss, validation.as_ref(), &ema_accs);
        self.host.sink.note(&format!("{line}  {ips:.0} img/s  {:.0} s", self.state.progress.wall_seconds));
        // After every epoch, validated or not, so that ranks never drift for longer.
        self.align_ranks(epoch.index).await?;
        let Some((acc, _)) = validation else { return Ok(Phase::EpochStart) };
        let written = self.save_checkpoint(best).await?;
        for (path, kind) in written.into_iter().zip([CheckpointKind::Last, CheckpointKind::Best]) {
            let event = CheckpointEvent { epoch: epoch.index as u32, step: self.state.progress.step, path, kind };
            self.host.sink.event(&Event::Checkpoint(event))?;
        }
        if epoch.index + 1 < self.config.recipe.epochs {
            return Ok(Phase::EpochStart);
        }
        Ok(Phase::Finished(Box::new(self.finish(acc[0], &ema_accs)?)))
    }

    /// Data-parallel runs, at each epoch's end (before its checkpoint): every rank's state made
    /// rank 0's where the ranks drifted apart (see [`align_with_rank_0`]), with a note.
    async fn align_ranks(&mut self, epoch: usize) -> anyhow::Result<()> {
        let Some(peers) = self.peers() else { return Ok(()) };
        let optimizer = &self.state.optimizer;
        let mut arenas = vec![&self.state.model.params, &optimizer.m, &optimizer.v];
        arenas.extend(optimizer.emas.iter().map(|(t, _)| t));
        if align_with_rank_0(self.ctx, peers, &arenas).await? {
            let why = "adapters that round differently";
            let note =
                format!("epoch {}: the ranks' weights had drifted apart ({why}); all now hold rank 0's", epoch + 1);
            self.host.sink.note(&note);
        }
        Ok(())
    }

    /// Adds what `epoch` trained in this session to the run's totals (also when it was
    /// stopped: the resumed rest counts only its own); returns its images per second.
    pub(super) fn count_trained(&mut self, epoch: &Epoch) -> f64 {
        let train_seconds = self.host.clock.seconds() - epoch.start;
        let p = &mut self.state.progress;
        p.images_trained += epoch.images;
        p.train_seconds += train_seconds;
        epoch.images as f64 / train_seconds.max(1e-9)
    }

    /// Accuracies and losses of the weights, then of each EMA, on the validation images.
    pub(super) async fn validate(&mut self) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let resolution = self.state.progress.resolution;
        let fresh;
        let acts = match &self.planned {
            Some(p) if p.depth == self.state.model.depth() => &p.eval,
            _ => {
                fresh = self.state.model.plan(self.ctx, self.eval_batch(), resolution)?;
                &fresh
            }
        };
        let request = self.eval_request(Part::Val, acts.batch, resolution, false);
        let batches = self.host.data.batches(&request)?;
        let mut arenas = vec![&self.state.model.params];
        arenas.extend(self.state.optimizer.emas.iter().map(|(t, _)| t));
        let mut eval = evaluate(self.ctx, &self.state.model, &arenas, acts, batches).await?;
        if let Some(peers) = self.peers() {
            // Every rank evaluates the same weights on all the images; rank 0's numbers
            // decide (best checkpoint, MoGrow's source) on all of them, whatever the adapters.
            peers.broadcast_f64(&mut eval.acc)?;
            peers.broadcast_f64(&mut eval.loss)?;
        }
        Ok((eval.acc, eval.loss))
    }

    /// The summary of the finished run, handed to the sink with the log's last event.
    fn finish(&mut self, val_acc: f64, ema_accs: &[EmaAcc]) -> anyhow::Result<Summary> {
        let (config, p) = (self.config, &self.state.progress);
        let failed = self.host.data.failed();
        let summary = Summary {
            schedule: super::options::name(&config.recipe.schedule),
            epochs: config.recipe.epochs as u32,
            wall_seconds: p.wall_seconds,
            train_flops: p.train_flops,
            images_per_second: p.images_trained as f64 / p.train_seconds.max(1e-9),
            val_acc,
            val_acc_ema: ema_accs.iter().map(|e| e.acc).reduce(f64::max),
            best_val_acc: p.best_val_acc,
            final_resolution: p.resolution as u32,
            final_depth: self.state.model.depth() as u32,
            adapter: self.ctx.summary.display_name(),
            stages: plan::trained_stages(config.recipe.schedule, &self.stages, p),
            seed: config.recipe.seed,
            skipped_images: failed.len(),
            search_seconds: p.search_seconds,
            search_flops: p.search_flops,
            model: config.model_name.clone(),
            classes: self.classes.len(),
            precision: self.state.model.activations().wgsl().to_string(),
            skipped_steps: p.skipped_steps,
            ranks: self.shard().ranks as u32,
            adapters: self.peers().map(|c| c.adapters()).unwrap_or_default(),
        };
        self.host.sink.summary(&summary)?;
        self.end_event(RunStatus::Finished, self.state.progress.wall_seconds, None)?;
        if !failed.is_empty() {
            self.host.sink.note(&format!(
                "warning: {} images could not be decoded and were skipped: {}",
                failed.len(),
                failed.join(", ")
            ));
        }
        Ok(summary)
    }
}

/// The progress line of an epoch's end: its loss, and where it was validated, the
/// validation's loss and the accuracies of the weights and every EMA.
fn epoch_line(
    index: usize,
    epochs: usize,
    train_loss: f64,
    validation: Option<&(Vec<f64>, Vec<f64>)>,
    ema_accs: &[EmaAcc],
) -> String {
    let head = format!("epoch {}/{epochs}  loss {train_loss:.4}", index + 1);
    let Some((acc, loss)) = validation else { return head };
    let emas: String = ema_accs.iter().map(|e| format!("  ema{} {:.4}", e.decay, e.acc)).collect();
    format!("{head}  val_loss {:.4}  val_acc {:.4}{emas}", loss[0], acc[0])
}
