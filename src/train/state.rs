//! The model, optimizer and progress of a run, and their training checkpoint: written by
//! [`State::to_checkpoint`], read back by [`State::from_checkpoint`], with the key names of
//! [`crate::checkpoint::schema`].

use anyhow::Context;

use super::config::TrainConfig;
use super::progress::Progress;
use crate::checkpoint::schema::{ema_prefix, meta, ADAM_M, ADAM_V, TRAINING_FORMAT};
use crate::checkpoint::Checkpoint;
use crate::gpu::Element;
use crate::model::step::{LossScaler, Optimizer};
use crate::model::{GpuVit, ParamLayout};
use crate::prog::schedule::Stage;
use crate::GpuContext;

/// The model, optimizer and progress of a run.
pub struct State {
    pub model: GpuVit,
    pub optimizer: Optimizer,
    pub progress: Progress,
    /// The loss scale of a run with f16 activations (`None` in f32).
    pub scaler: Option<LossScaler>,
}

/// `model` set to the run's precision; the loss scaler it needs (f16), resumed from
/// `progress` where it holds one.
fn with_precision(
    ctx: &GpuContext,
    config: &TrainConfig,
    model: &mut GpuVit,
    progress: &Progress,
) -> anyhow::Result<Option<LossScaler>> {
    let (element, _) = config.recipe.precision.resolve(ctx)?;
    model.set_activations(ctx, element)?;
    Ok(match element {
        Element::F32 => None,
        Element::F16 => Some(LossScaler::resumed(progress.loss_scale, progress.loss_scale_clean_steps)?),
    })
}

/// The weights, an EMA or a moment held NaN or infinite values.
#[derive(Debug, thiserror::Error)]
#[error("after step {step} `{tensor}` holds NaN or infinite values")]
pub struct NonFinite {
    pub step: u64,
    pub tensor: String,
}

impl State {
    /// A new model at the first stage's depth, initialised from the run's seed.
    pub fn fresh(ctx: &GpuContext, config: &TrainConfig, first: &Stage) -> anyhow::Result<State> {
        let depth = first.depth;
        let layout = ParamLayout::new(&config.model, depth, ctx.arena_align());
        let params = layout.init(&config.model, config.recipe.seed);
        let mut model = GpuVit::new(ctx, config.model.clone(), layout, &params)?;
        let optimizer = Optimizer::new(ctx, &model, &config.recipe.ema_decays)?;
        let progress = Progress { resolution: first.resolution, depth, ..Progress::default() };
        let scaler = with_precision(ctx, config, &mut model, &progress)?;
        Ok(State { model, optimizer, progress, scaler })
    }

    /// The state a training checkpoint holds; `what` names it in errors.
    pub fn from_checkpoint(
        ctx: &GpuContext,
        config: &TrainConfig,
        ckpt: &Checkpoint,
        what: &str,
    ) -> anyhow::Result<State> {
        let progress: Progress = ckpt
            .get_json(meta::PROGRESS)?
            .with_context(|| format!("{what} is not a training checkpoint of autoprog (no progress record)"))?;
        anyhow::ensure!(
            (1..=config.model.depth).contains(&progress.depth),
            "{what} records {} blocks but the run's model has at most {}; the checkpoint is damaged or belongs to \
                another run",
            progress.depth,
            config.model.depth
        );
        let layout = ParamLayout::new(&config.model, progress.depth, ctx.arena_align());
        let params = layout.arena_from(ckpt, "")?;
        let mut model = GpuVit::new(ctx, config.model.clone(), layout, &params)?;
        let scaler = with_precision(ctx, config, &mut model, &progress)?;
        let mut optimizer = Optimizer::new(ctx, &model, &config.recipe.ema_decays)?;
        for (ema, decay) in &optimizer.emas {
            ctx.write(ema, &model.layout.arena_from(ckpt, &ema_prefix(*decay))?)?;
        }
        ctx.write(&optimizer.m, &model.layout.arena_from(ckpt, ADAM_M)?)?;
        ctx.write(&optimizer.v, &model.layout.arena_from(ckpt, ADAM_V)?)?;
        optimizer.step = u32::try_from(progress.adam_step).context("step count beyond 2^32")?;
        optimizer.block_steps = match progress.adam_block_steps.len() {
            0 => vec![optimizer.step; progress.depth],
            n if n == progress.depth => {
                let steps = progress.adam_block_steps.iter().map(|&s| u32::try_from(s));
                steps.collect::<Result<_, _>>().context("step count beyond 2^32")?
            }
            n => anyhow::bail!("{what} records AdamW steps of {n} blocks for a model of {}", progress.depth),
        };
        Ok(State { model, optimizer, progress, scaler })
    }

    /// The training checkpoint of this state: weights, every EMA, the AdamW moments and the
    /// metadata. Refuses ([`NonFinite`]) when any tensor holds NaN or infinite values: the
    /// loss of a step is computed before its update, so the last updates of an epoch can
    /// leave bad weights that no loss has shown yet, and they must never replace a good file.
    pub async fn to_checkpoint(
        &self,
        ctx: &GpuContext,
        config: &TrainConfig,
        classes: &[String],
    ) -> anyhow::Result<Checkpoint> {
        let layout = &self.model.layout;
        let mut ckpt =
            Checkpoint { tensors: layout.to_tensors(&ctx.read(&self.model.params).await?, ""), ..Default::default() };
        for (ema, decay) in &self.optimizer.emas {
            ckpt.tensors.extend(layout.to_tensors(&ctx.read(ema).await?, &ema_prefix(*decay)));
        }
        ckpt.tensors.extend(layout.to_tensors(&ctx.read(&self.optimizer.m).await?, ADAM_M));
        ckpt.tensors.extend(layout.to_tensors(&ctx.read(&self.optimizer.v).await?, ADAM_V));
        if let Some(bad) = ckpt.tensors.iter().find(|t| t.data.iter().any(|v| !v.is_finite())) {
            return Err(NonFinite { step: self.progress.step, tensor: bad.name.clone() }.into());
        }
        // AdamW's step counts live in the optimizer; the checkpoint's progress record keeps them.
        let mut p = self.progress.clone();
        p.adam_step = u64::from(self.optimizer.step);
        p.adam_block_steps = self.optimizer.block_steps.iter().map(|&s| u64::from(s)).collect();
        // So does the loss scale.
        p.loss_scale = self.scaler.map(|s| s.scale);
        p.loss_scale_clean_steps = self.scaler.map_or(0, |s| s.clean_steps);
        ckpt.set_json(meta::FORMAT, TRAINING_FORMAT)?;
        ckpt.set_json(meta::CONFIG, config)?;
        ckpt.set_json(meta::VIT, &self.model.config)?;
        ckpt.set_json(meta::CLASSES, classes)?;
        ckpt.set_json(meta::MEAN, &config.augment.mean)?;
        ckpt.set_json(meta::STD, &config.augment.std)?;
        ckpt.set_json(meta::EPOCH, &p.epoch)?;
        ckpt.set_json(meta::STEP, &p.step)?;
        ckpt.set_json(meta::RESOLUTION, &p.resolution)?;
        ckpt.set_json(meta::DEPTH, &p.depth)?;
        ckpt.set_json(meta::RNG, &serde_json::json!({ "seed": config.recipe.seed, "step": p.step }))?;
        ckpt.set_json(meta::PROGRESS, &p)?;
        Ok(ckpt)
    }
}
