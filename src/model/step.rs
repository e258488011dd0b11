//! The training step: forward, loss, backward, global gradient-norm clipping, AdamW and
//! the EMA updates, recorded into one [`Recorder`] so that a step is one submission and
//! nothing (not even the clip factor) goes through the host.

use crate::gpu::{GpuContext, Recorder, Tensor};
use crate::kernels::optimizer::{adamw_update, ema_update, grad_norm, grad_norm_partials_len, AdamW, GRAD_STATS_LEN};
use crate::model::{Activations, GpuVit, Loss};
use crate::Result;

/// AdamW moments, EMAs of the weights and the gradient statistics, each an arena laid
/// out like the parameters.
pub struct Optimizer {
    pub m: Tensor,
    pub v: Tensor,
    /// (EMA weights, decay) for each decay.
    pub emas: Vec<(Tensor, f64)>,
    /// [global gradient L2 norm, clip factor] of the last step.
    pub stats: Tensor,
    partials: Tensor,
    /// Updates of the tensors outside the blocks (embeddings, final norm, head), which every
    /// step takes: AdamW's bias correction uses step + 1 for the next one.
    pub step: u32,
    /// Updates of each block's tensors. A block that an elastic sub-network skipped took
    /// none: as PyTorch's AdamW keeps a step count per parameter and advances it only when
    /// the parameter has a gradient, each block's bias correction counts its own updates.
    pub block_steps: Vec<u32>,
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
            partials: ctx.empty(&[grad_norm_partials_len(len)], "grad.partials")?,
            step: 0,
            block_steps: vec![0; model.depth()],
        })
    }

    /// Records one whole training step on the batch already written to `acts`; the mean
    /// loss lands in `acts.loss`.
    pub fn record_step(
        &mut self,
        rec: &mut Recorder<'_>,
        model: &GpuVit,
        acts: &Activations,
        options: &StepOptions,
    ) -> Result<()> {
        model.forward(rec, &model.params, acts, options.drop_path)?;
        model.loss(rec, acts, options.loss)?;
        model.backward(rec, acts, options.drop_path)?;
        grad_norm(rec, &model.grads, &self.partials, &self.stats, options.max_grad_norm)?;
        self.step += 1;
        for &block in acts.active_blocks() {
            self.block_steps[block] += 1;
        }
        // An elastic sub-network updates only what it ran, as PyTorch's AdamW skips
        // parameters without a gradient: one dispatch per run of updated tensors that share
        // a step count.
        for (range, step) in self.updated_ranges(model, acts.active_blocks()) {
            let len = range.end - range.start;
            let view = |t: &Tensor| t.view(range.start, &[len]);
            adamw_update(
                rec,
                &view(&model.grads)?,
                &self.stats,
                &view(&model.params)?,
                &view(&self.m)?,
                &view(&self.v)?,
                &options.adamw,
                step,
                model.layout.decay_end.clamp(range.start, range.end) - range.start,
            )?;
        }
        let emas: Vec<(&Tensor, f64)> = self.emas.iter().map(|(t, d)| (t, *d)).collect();
        ema_update(rec, &model.params, &emas)
    }
}

impl Optimizer {
    /// The arena ranges AdamW updates when `active` blocks ran, each with the step count of
    /// its tensors: every tensor except those of skipped blocks, adjacent tensors of one
    /// count merged (the whole arena when every block has taken every step).
    fn updated_ranges(&self, model: &GpuVit, active: &[usize]) -> Vec<(std::ops::Range<usize>, u32)> {
        let layout = &model.layout;
        if active.len() == model.depth() && self.block_steps.iter().all(|&s| s == self.step) {
            let whole_arena = 0..layout.len;
            return vec![(whole_arena, self.step)];
        }
        let block_of = |name: &str| {
            name.strip_prefix("blocks.")
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(i, _)| i.parse::<usize>().ok())
        };
        let mut specs: Vec<_> = layout.specs.iter().collect();
        specs.sort_by_key(|s| s.offset);
        let mut ranges: Vec<(std::ops::Range<usize>, u32)> = Vec::new();
        let mut open: Option<(std::ops::Range<usize>, u32)> = None;
        for spec in specs {
            let step = match block_of(&spec.name) {
                Some(i) if !active.contains(&i) => {
                    ranges.extend(open.take());
                    continue;
                }
                Some(i) => self.block_steps[i],
                None => self.step,
            };
            // Padding between two updated tensors is zero in every arena: updating it is harmless.
            open = Some(match open {
                Some((r, s)) if s == step => (r.start..spec.range().end, s),
                other => {
                    ranges.extend(other);
                    (spec.range(), step)
                }
            });
        }
        ranges.extend(open);
        ranges
    }
}
