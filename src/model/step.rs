//! The training step: forward, loss, backward, global gradient-norm clipping, AdamW and
//! the EMA updates, recorded into one [`Recorder`] so that a step is one submission and
//! nothing (not even the clip factor) goes through the host.
//!
//! A step's commands are recorded once per sub-network and replayed after
//! ([`crate::model::plans`]): [`Optimizer::record_step`] writes the step's learning rate and bias corrections to a
//! table on the GPU, then replays the cached plan.
//!
//! Mixed precision: a step with a loss scale S multiplies dlogits by S, so the f16
//! activation gradients stay clear of f16's underflow, and the unscaling is folded into the
//! factor AdamW applies. A gradient that overflowed (inf or NaN anywhere) makes the GPU skip
//! the update and the EMAs; [`LossScaler`] then halves S when the host reads the step's
//! [`Optimizer::report`] back, as PyTorch's `GradScaler` does.

use crate::gpu::{GpuContext, Recorder, Tensor};
use crate::kernels::optimizer::{
    adamw_update_grouped, ema_update, grad_norm, grad_norm_partials_len, AdamW, ADAMW_GROUP_CHUNK, GRAD_STATS_LEN,
};
use crate::model::plans::{StepKey, StepPlans};
use crate::model::{Activations, GpuVit, Loss, ParamLayout};
use crate::Error;
use crate::Result;

/// Elements of [`Optimizer::report`]: `[mean loss, applied (1) or skipped (0), gradient
/// norm, 0]`.
pub const STEP_REPORT_LEN: usize = 4;

/// AdamW moments, EMAs of the weights and the gradient statistics, each an arena laid
/// out like the parameters.
pub struct Optimizer {
    pub m: Tensor,
    pub v: Tensor,
    /// (EMA weights, decay) for each decay.
    pub emas: Vec<(Tensor, f64)>,
    /// The last step's gradient statistics ([`GRAD_STATS_LEN`], see
    /// [`crate::kernels::optimizer::grad_norm_finish`]).
    pub stats: Tensor,
    /// What the host reads back after each step ([`STEP_REPORT_LEN`]): the mean loss,
    /// whether the update was applied (0: a gradient overflowed and the step was skipped)
    /// and the gradient norm.
    pub report: Tensor,
    partials: Tensor,
    /// Updates of the tensors outside the blocks (embeddings, final norm, head), which every
    /// step takes: AdamW's bias correction uses step + 1 for the next one.
    pub step: u32,
    /// Updates of each block's tensors. A block that an elastic sub-network skipped took
    /// none: as PyTorch's AdamW keeps a step count per parameter and advances it only when
    /// the parameter has a gradient, each block's bias correction counts its own updates.
    pub block_steps: Vec<u32>,
    /// The AdamW group of every [`ADAMW_GROUP_CHUNK`] elements of the arena: 0 outside the
    /// blocks, 1 + i in block i (u32).
    groups: Tensor,
    /// Each group's learning rate, bias corrections and whether it is updated, written by
    /// every step ([`AdamW::group_step`]).
    group_steps: Tensor,
    /// The step's recorded plans, one per sub-network.
    pub plans: StepPlans,
}

/// What one step does besides forward and backward.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOptions {
    /// AdamW hyperparameters, with this step's learning rate.
    pub adamw: AdamW,
    /// Clip the global gradient norm to this (≤ 0: no clipping).
    pub max_grad_norm: f32,
    pub loss: Loss,
    /// Scale residual branches by `Activations::drop_scales`.
    pub drop_path: bool,
    /// The loss scale S of this step (1: none; see [`LossScaler`]).
    pub loss_scale: f32,
}

impl Optimizer {
    /// Zero moments and EMAs that start as copies of the current parameters.
    pub fn new(ctx: &GpuContext, model: &GpuVit, ema_decays: &[f64]) -> Result<Optimizer> {
        let len = model.layout.len;
        let m = ctx.zeros(&[len], "adamw.m")?;
        let v = ctx.zeros(&[len], "adamw.v")?;
        let mut rec = ctx.recorder("ema.init");
        let emas = ema_decays
            .iter()
            .map(|&decay| {
                let ema = ctx.empty(&[len], &format!("ema{decay}"))?;
                rec.copy(&model.params, &ema)?;
                Ok((ema, decay))
            })
            .collect::<Result<Vec<_>>>()?;
        ctx.submit(rec)?;
        Ok(Optimizer {
            m,
            v,
            emas,
            stats: ctx.zeros(&[GRAD_STATS_LEN], "grad.stats")?,
            report: ctx.zeros(&[STEP_REPORT_LEN], "step.report")?,
            partials: ctx.empty(&[grad_norm_partials_len(len)], "grad.partials")?,
            step: 0,
            block_steps: vec![0; model.depth()],
            groups: ctx.upload_u32(&adamw_groups(&model.layout)?, &[groups_len(&model.layout)], "adamw.groups")?,
            group_steps: ctx.zeros(&[4 * (model.depth() + 1)], "adamw.group_steps")?,
            plans: StepPlans::default(),
        })
    }

    /// Records one whole training step on the batch already written to `acts`; the mean
    /// loss lands in `acts.loss`. The step's commands replay the plan recorded for this
    /// sub-network (recorded now if there is none; see [`crate::model::plans`]), after a
    /// write of this step's AdamW table. One step per submission: a later step's table would overwrite it.
    pub fn record_step(
        &mut self,
        rec: &mut Recorder<'_>,
        model: &GpuVit,
        acts: &Activations,
        options: &StepOptions,
    ) -> Result<()> {
        self.count_step(rec, acts, options)?;
        if !self.plans.enabled {
            return self.record_passes(rec, model, acts, options);
        }
        let hp = &options.adamw;
        let constants = [
            options.loss_scale.to_bits().into(),
            options.max_grad_norm.to_bits().into(),
            hp.beta1.to_bits(),
            hp.beta2.to_bits(),
            hp.eps.to_bits(),
            hp.weight_decay.to_bits(),
        ];
        let key = StepKey::new(model, acts, options.drop_path, options.loss, constants);
        let plan = match self.plans.get(&key) {
            Some(plan) => plan,
            None => {
                let mut capture = rec.ctx().capture("train.step");
                self.record_passes(&mut capture, model, acts, options)?;
                let plan = capture.into_plan()?;
                self.plans.insert(key, plan.clone());
                plan
            }
        };
        rec.replay(&plan)
    }

    /// Records the second half of a step from the gradients in `model.grads` (scaled by
    /// the loss scale) and the loss in `acts.loss`: the gradient norm and clipping, AdamW,
    /// the EMAs and the report. A data-parallel step has averaged both over the ranks
    /// first ([`crate::train::collective::train_gradients_over_ranks`]).
    pub fn record_update(
        &mut self,
        rec: &mut Recorder<'_>,
        model: &GpuVit,
        acts: &Activations,
        options: &StepOptions,
    ) -> Result<()> {
        self.count_step(rec, acts, options)?;
        self.record_update_passes(rec, model, acts, options)
    }

    /// Counts a step of the blocks `acts` runs and records writing its AdamW table: each
    /// group's learning rate and bias corrections, nothing for the blocks it skips.
    fn count_step(&mut self, rec: &mut Recorder<'_>, acts: &Activations, options: &StepOptions) -> Result<()> {
        self.step += 1;
        for &block in acts.active_blocks() {
            self.block_steps[block] += 1;
        }
        let hp = &options.adamw;
        let mut table = hp.group_step(Some(self.step)).to_vec();
        for (block, &steps) in self.block_steps.iter().enumerate() {
            // An elastic sub-network updates only what it ran, as PyTorch's AdamW skips
            // parameters without a gradient (and counts their steps apart).
            table.extend(hp.group_step(acts.active_blocks().contains(&block).then_some(steps)));
        }
        rec.write(&self.group_steps, &table)
    }

    /// Records forward, loss, backward and the update's passes.
    fn record_passes(
        &self,
        rec: &mut Recorder<'_>,
        model: &GpuVit,
        acts: &Activations,
        options: &StepOptions,
    ) -> Result<()> {
        model.forward(rec, &model.params, acts, options.drop_path)?;
        model.scaled_loss(rec, acts, options.loss, options.loss_scale)?;
        model.backward(rec, acts, options.drop_path)?;
        self.record_update_passes(rec, model, acts, options)
    }

    /// Records the gradient norm and clipping, AdamW over the whole arena (the step's table
    /// says which groups it updates, with which bias corrections), the EMAs and the report.
    fn record_update_passes(
        &self,
        rec: &mut Recorder<'_>,
        model: &GpuVit,
        acts: &Activations,
        options: &StepOptions,
    ) -> Result<()> {
        let inv_scale = 1.0 / options.loss_scale;
        grad_norm(rec, &model.grads, &self.partials, &self.stats, options.max_grad_norm, inv_scale)?;
        adamw_update_grouped(
            rec,
            &model.grads,
            &self.stats,
            &self.groups,
            &self.group_steps,
            &model.params,
            &self.m,
            &self.v,
            &options.adamw,
            model.layout.decay_end,
        )?;
        let emas: Vec<(&Tensor, f64)> = self.emas.iter().map(|(t, d)| (t, *d)).collect();
        ema_update(rec, &model.params, &self.stats, &emas)?;
        let report = |i: usize| self.report.view(i, &[1]);
        rec.copy(&acts.loss, &report(0)?)?;
        rec.copy(&self.stats.view(2, &[1])?, &report(1)?)?;
        rec.copy(&self.stats.view(0, &[1])?, &report(2)?)
    }

    /// Takes back the step counts of a step that the GPU skipped (its gradients overflowed),
    /// once the host has read its report; `active` are the blocks it ran. Steps recorded
    /// before the host knew used counts one higher: a slightly smaller bias correction for
    /// a step or two.
    pub fn uncount_skipped_step(&mut self, active: &[usize]) {
        self.step = self.step.saturating_sub(1);
        for &block in active {
            if let Some(steps) = self.block_steps.get_mut(block) {
                *steps = steps.saturating_sub(1);
            }
        }
    }
}

/// Entries of the AdamW group table of an arena laid out as `layout`.
fn groups_len(layout: &ParamLayout) -> usize {
    layout.len.div_ceil(ADAMW_GROUP_CHUNK).max(1)
}

/// The AdamW group table of `layout` (see [`Optimizer::groups`]): tensors that share a
/// step count share a group. Alignment padding between tensors takes group 0: it is zero in
/// every arena, so its updates change nothing.
fn adamw_groups(layout: &ParamLayout) -> Result<Vec<u32>> {
    let mut table = vec![0u32; groups_len(layout)];
    for spec in &layout.specs {
        if !spec.offset.is_multiple_of(ADAMW_GROUP_CHUNK) {
            return Err(Error::invalid(
                "optimizer",
                format!(
                    "{} starts at element {} of the arena; AdamW's groups need offsets in multiples of \
                     {ADAMW_GROUP_CHUNK} (lay the arena out with GpuContext::arena_align)",
                    spec.name, spec.offset
                ),
            ));
        }
        let block = spec.name.strip_prefix("blocks.").and_then(|rest| rest.split_once('.'));
        let group = match block.and_then(|(i, _)| i.parse::<u32>().ok()) {
            Some(i) => i + 1,
            None => 0,
        };
        let range = spec.range();
        table[range.start / ADAMW_GROUP_CHUNK..range.end.div_ceil(ADAMW_GROUP_CHUNK)].fill(group);
    }
    Ok(table)
}

/// Dynamic loss scaling for f16 activation gradients, as PyTorch's `GradScaler`: the scale
/// halves after a step whose gradients overflowed (the GPU skipped that step) and doubles
/// after `growth_interval` clean steps in a row. The host learns a step's outcome a few
/// steps late (the readback ring), so each report carries the scale its step used: an
/// overflow at a scale already halved is not halved again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    pub scale: f32,
    /// Clean steps in a row at the current scale.
    pub clean_steps: u32,
    pub growth_interval: u32,
}

/// What a step's report changed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaleChange {
    None,
    /// The step overflowed and was skipped; the scale went from the first to the second.
    Halved(f32, f32),
    /// `growth_interval` clean steps: the scale doubled to this.
    Doubled(f32),
    /// The step overflowed at a scale already lowered since: skipped, no further change.
    Skipped,
}

impl LossScaler {
    /// PyTorch's defaults: 2^16, doubling after 2000 clean steps.
    pub fn new() -> LossScaler {
        LossScaler { scale: 65536.0, clean_steps: 0, growth_interval: 2000 }
    }

    /// A scaler resumed at `scale` (from a checkpoint), or fresh.
    pub fn resumed(scale: Option<f32>, clean_steps: u32) -> Result<LossScaler> {
        match scale {
            None => Ok(LossScaler::new()),
            Some(s) if s.is_finite() && s > 0.0 => Ok(LossScaler { scale: s, clean_steps, ..LossScaler::new() }),
            Some(s) => Err(Error::invalid("loss scale", format!("a checkpoint holds loss scale {s}; it must be > 0"))),
        }
    }

    /// Takes the report of a step that ran at `used` scale.
    pub fn update(&mut self, used: f32, applied: bool) -> ScaleChange {
        match applied {
            false if used > self.scale => ScaleChange::Skipped,
            false => {
                let before = self.scale;
                // Never below 2^-24: a scale that small means the loss itself is not finite.
                self.scale = (self.scale / 2.0).max(2f32.powi(-24));
                self.clean_steps = 0;
                ScaleChange::Halved(before, self.scale)
            }
            true if used == self.scale => {
                self.clean_steps += 1;
                if self.clean_steps >= self.growth_interval {
                    self.clean_steps = 0;
                    // Below f32's largest power of two: the scale itself stays finite.
                    self.scale = (self.scale * 2.0).min(2f32.powi(100));
                    return ScaleChange::Doubled(self.scale);
                }
                ScaleChange::None
            }
            true => ScaleChange::None,
        }
    }
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaler_halves_once_per_overflow_and_grows_after_clean_steps() {
        let mut s = LossScaler { growth_interval: 3, ..LossScaler::new() };
        assert_eq!(s.update(65536.0, false), ScaleChange::Halved(65536.0, 32768.0));
        // Steps already in flight at the old scale overflow too: no second halving.
        assert_eq!(s.update(65536.0, false), ScaleChange::Skipped);
        assert_eq!(s.update(65536.0, true), ScaleChange::None);
        assert_eq!(s.clean_steps, 0, "a clean step at another scale does not count");
        assert_eq!(s.update(32768.0, true), ScaleChange::None);
        assert_eq!(s.update(32768.0, true), ScaleChange::None);
        assert_eq!(s.update(32768.0, true), ScaleChange::Doubled(65536.0));
        assert_eq!((s.scale, s.clean_steps), (65536.0, 0));
        assert!(LossScaler::resumed(Some(0.0), 0).is_err());
        assert_eq!(LossScaler::resumed(Some(8.0), 5).unwrap().scale, 8.0);
    }
}
