//! Growing the model: MoGrow at a stage boundary, and the extraction of a search's winner
//! from the supernet (parameter recycling). Both rebuild the state with each new block
//! copied from an old one; which block from which is decided in [`crate::prog::grow`].

use super::config::TrainConfig;
use super::options::{GrowFrom, OptState};
use super::state::State;
use crate::checkpoint::schema::ema_name;
use crate::model::step::Optimizer;
use crate::model::{GpuVit, ParamLayout};
use crate::prog::grow::{grow_depth, remap_blocks};
use crate::runlog::GrowthEvent;
use crate::{GpuContext, Tensor};

/// The state rebuilt with block i of the new model taken from block `source[i]` of the old
/// one, in the weights (from `weights`: the model's own, or an EMA), in every EMA and, with
/// [`OptState::Copy`], in the AdamW moments; fresh moments otherwise ([`OptState::Reset`],
/// as the official code does both at growth and at parameter recycling). The caller
/// replaces the old state with it and trims the pool, so that the old model's buffers go
/// back to the driver rather than waiting there.
pub async fn remap_state(
    ctx: &GpuContext,
    state: &State,
    config: &TrainConfig,
    source: &[usize],
    weights: &Tensor,
) -> anyhow::Result<State> {
    let layout = ParamLayout::new(&config.model, source.len(), ctx.arena_align());
    let old = &state.model.layout;
    let remap = |values: Vec<f32>| remap_blocks(old, &layout, source, &values);
    let mut model = GpuVit::new(ctx, config.model.clone(), layout.clone(), &remap(ctx.read(weights).await?)?)?;
    model.set_activations(ctx, state.model.activations())?;
    let mut optimizer = Optimizer::new(ctx, &model, &config.recipe.ema_decays)?;
    for ((ema, _), (old_ema, _)) in optimizer.emas.iter().zip(&state.optimizer.emas) {
        ctx.write(ema, &remap(ctx.read(old_ema).await?)?)?;
    }
    let mut progress = state.progress.clone();
    match config.recipe.grow_opt_state {
        OptState::Copy => {
            ctx.write(&optimizer.m, &remap(ctx.read(&state.optimizer.m).await?)?)?;
            ctx.write(&optimizer.v, &remap(ctx.read(&state.optimizer.v).await?)?)?;
            optimizer.step = state.optimizer.step;
            optimizer.block_steps = source.iter().map(|&i| state.optimizer.block_steps[i]).collect();
        }
        // `Optimizer::new`: zero moments, and step counts from 0.
        OptState::Reset => {}
    }
    progress.depth = source.len();
    Ok(State { model, optimizer, progress, scaler: state.scaler })
}

/// MoGrow: the state grown to `depth` blocks. The new weights are those `--grow-from`
/// names (by default the slowest EMA's, the weights themselves without EMA) with blocks
/// copied by the interleaved mapping; every EMA grows from its own weights; the AdamW
/// moments restart or are copied from the source blocks (`--grow-opt-state`).
pub async fn grow(
    ctx: &GpuContext,
    state: &State,
    config: &TrainConfig,
    depth: usize,
) -> anyhow::Result<(State, GrowthEvent)> {
    let growth = grow_depth(state.model.depth(), depth)?;
    let (weights, source) = match grow_source(state, config.recipe.grow_from) {
        None => (&state.model.params, "weights".to_string()),
        Some(i) => {
            let (ema, decay) = &state.optimizer.emas[i];
            (ema, ema_name(*decay))
        }
    };
    let state = remap_state(ctx, state, config, &growth.mapping, weights).await?;
    let event = GrowthEvent {
        epoch: state.progress.epoch as u32,
        step: state.progress.step,
        from_depth: growth.from as u32,
        to_depth: growth.to as u32,
        mapping: growth.mapping,
        source,
    };
    Ok((state, event))
}

/// The EMA (its index) MoGrow grows from, or `None` for the weights.
fn grow_source(state: &State, grow_from: GrowFrom) -> Option<usize> {
    let emas = &state.optimizer.emas;
    let slowest = emas.iter().enumerate().max_by(|a, b| a.1 .1.total_cmp(&b.1 .1)).map(|(i, _)| i);
    let accs = &state.progress.last_val_accs;
    match grow_from {
        GrowFrom::Weights => None,
        // Accuracies of [weights, EMA 0, EMA 1, …]; max_by keeps the last of equal maxima,
        // so ties go to an EMA, as the paper prefers.
        GrowFrom::Best if accs.len() == emas.len() + 1 => {
            (0..accs.len()).max_by(|&a, &b| accs[a].total_cmp(&accs[b])).and_then(|i: usize| i.checked_sub(1))
        }
        GrowFrom::Best | GrowFrom::Ema => slowest,
    }
}
