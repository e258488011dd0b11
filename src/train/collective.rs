//! Data-parallel training: what the loop asks of the ranks ([`Collective`]) and the few
//! places it combines them: the gradients and loss of every step, a search's measurements,
//! and checks that the ranks still agree.

use std::collections::BTreeMap;

use super::supernet::SearchState;
use crate::gpu::timing::now_ms;
use crate::gpu::{PendingRead, Recorder};
use crate::model::step::StepOptions;
use crate::model::{Activations, GpuVit, GradPart};
use crate::{GpuContext, Tensor};

/// The processes of a data-parallel run (MPI ranks natively), as the loop needs them: each
/// trains its [`Shard`](crate::data::Shard) of every batch on its own adapter; gradients
/// and the measurements that decide anything (search losses, step times, validation
/// accuracies) are combined here, so that every rank takes the same steps and the same
/// decisions. Calls are collective: every rank makes the same calls in the same order.
pub trait Collective {
    /// This process's rank, 0 for the one that writes the run's record.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn ranks(&self) -> usize;
    /// Each rank's adapter, in rank order (for the summary).
    fn adapters(&self) -> Vec<String>;
    /// Element-wise sum over the ranks, in place; every rank gets the same sums.
    fn sum_f32(&self, values: &mut [f32]) -> anyhow::Result<()>;
    fn sum_f64(&self, values: &mut [f64]) -> anyhow::Result<()>;
    /// Element-wise maximum over the ranks, in place.
    fn max_f64(&self, values: &mut [f64]) -> anyhow::Result<()>;
    /// Replaces `values` with rank 0's (same length on every rank).
    fn broadcast_f64(&self, values: &mut [f64]) -> anyhow::Result<()>;
}

/// About how many buckets a step's gradients travel in: each is sent off as soon as the
/// backward has finished it, so that its all-reduce runs while the GPU computes the rest.
/// A fixed count rather than PyTorch DDP's 25 MB cap: that cap would put a small model's
/// gradients in one bucket, which nothing overlaps.
const BUCKETS_PER_STEP: u64 = 8;

/// A data-parallel step's forward, loss and backward of this rank's shard, recorded after
/// what `rec` holds, with the gradients and the loss replaced by their means over the ranks
/// (which trained shards of one size). The backward is submitted in buckets of finished
/// gradients; each is read back and all-reduced while the GPU computes the next. The loss
/// and any rank's stop request (`stop`: this one's) ride in the last bucket.
pub async fn train_gradients_over_ranks<'a>(
    ctx: &'a GpuContext,
    mut rec: Recorder<'a>,
    model: &GpuVit,
    acts: &Activations,
    options: &StepOptions,
    peers: &dyn Collective,
    stop: bool,
) -> anyhow::Result<Exchanged> {
    let start = now_ms();
    model.forward(&mut rec, &model.params, acts, options.drop_path)?;
    model.scaled_loss(&mut rec, acts, options.loss, options.loss_scale)?;
    let bucket_bytes = (model.grads.bytes() / BUCKETS_PER_STEP).max(1);
    let mut buckets: Vec<(Vec<Tensor>, PendingRead)> = Vec::new();
    let mut open: Vec<Tensor> = Vec::new();
    model.backward_in_parts(&mut rec, acts, options.drop_path, &mut |rec, part| {
        for range in model.layout.part_ranges(part) {
            open.push(model.grads.view(range.start, &[range.len()])?);
        }
        // The embeddings come last: they close the last bucket, which carries the loss too.
        if part == GradPart::Embeddings {
            open.push(acts.loss.clone());
        }
        if open.iter().map(Tensor::bytes).sum::<u64>() >= bucket_bytes || part == GradPart::Embeddings {
            let finished = std::mem::replace(rec, ctx.recorder("train.backward"));
            let parts = std::mem::take(&mut open);
            let read = ctx.submit_and_read(finished, &parts, "gradients")?;
            buckets.push((parts, read));
        }
        Ok(())
    })?;
    let inv_ranks = 1.0 / peers.ranks() as f32;
    let (mut exchange_ms, mut last_arrived, mut stops) = (0.0, start, 0.0);
    let last = buckets.len() - 1;
    for (i, (parts, read)) in buckets.into_iter().enumerate() {
        let mut values = read.finish(ctx).await?;
        last_arrived = now_ms();
        // The stop requests ride in the last bucket's sum, after its loss.
        if i == last {
            values.push(stop as u32 as f32);
        }
        peers.sum_f32(&mut values)?;
        exchange_ms += now_ms() - last_arrived;
        if i == last {
            stops = values.pop().expect("pushed above");
        }
        values.iter_mut().for_each(|g| *g *= inv_ranks);
        let mut at = 0;
        for part in &parts {
            ctx.write(part, &values[at..at + part.numel()])?;
            at += part.numel();
        }
    }
    let end = now_ms();
    Ok(Exchanged { stop: stops > 0.0, backward_ms: last_arrived - start, exchange_ms, exposed_ms: end - last_arrived })
}

/// What one step's exchange of gradients did and took.
#[derive(Clone, Copy, Debug)]
pub struct Exchanged {
    /// Some rank asked to stop.
    pub stop: bool,
    /// From recording the forward to the last bucket of gradients on the host.
    pub backward_ms: f64,
    /// In the all-reduces, waiting for slower ranks included.
    pub exchange_ms: f64,
    /// What the step waited for after its backward: the exchange not hidden behind it.
    pub exposed_ms: f64,
}

/// Makes one data-parallel evaluation point's measurements the same on every rank: each
/// candidate's new loss becomes the mean of the ranks' (each scored its shard of the same
/// held-back batches), the step times the slowest rank's, the FLOPs spent the ranks' total
/// (`flops_before`: the search's FLOPs before the point) and the seconds the longest.
pub fn combine_over_ranks(
    peers: &dyn Collective,
    search: &mut SearchState,
    flops_before: f64,
    timed: &mut BTreeMap<String, f64>,
) -> anyhow::Result<()> {
    let ranks = peers.ranks() as f64;
    let mut losses: Vec<f64> = search.losses.iter().map(|l| l.last().copied().unwrap_or(0.0)).collect();
    peers.sum_f64(&mut losses)?;
    for (series, sum) in search.losses.iter_mut().zip(losses) {
        if let Some(last) = series.last_mut() {
            *last = sum / ranks;
        }
    }
    peers.max_f64(&mut search.step_ms)?;
    for (c, &ms) in search.candidates.iter().zip(&search.step_ms) {
        timed.entry(c.name()).and_modify(|t| *t = ms);
    }
    let mut spent = [search.flops - flops_before];
    peers.sum_f64(&mut spent)?;
    search.flops = flops_before + spent[0];
    let mut seconds = [search.evaluation_seconds, search.timing_seconds];
    peers.max_f64(&mut seconds)?;
    [search.evaluation_seconds, search.timing_seconds] = seconds;
    Ok(())
}

/// Makes every rank's `arenas` (weights, AdamW moments, EMAs) rank 0's where they drifted
/// apart, and returns whether they had. Ranks on adapters of one kind compute bit for bit
/// alike from the same averaged gradients and never drift; adapters of different kinds may
/// round an update differently, and training would amplify that step by step.
pub async fn align_with_rank_0(ctx: &GpuContext, peers: &dyn Collective, arenas: &[&Tensor]) -> anyhow::Result<bool> {
    let mut values = Vec::with_capacity(arenas.len());
    for arena in arenas {
        values.push(ctx.read(arena).await?);
    }
    // Two sums per arena, the second weighted by position (a permutation changes it).
    let checksums: Vec<f64> = values
        .iter()
        .flat_map(|v| {
            let plain: f64 = v.iter().map(|&x| x as f64).sum();
            let weighted: f64 = v.iter().enumerate().map(|(i, &x)| x as f64 * (i % 1021 + 1) as f64).sum();
            [plain, weighted]
        })
        .collect();
    if all_agree(peers, &checksums)? {
        return Ok(false);
    }
    for (arena, values) in arenas.iter().zip(values) {
        // f32 → f64 → f32 is exact.
        let mut wide: Vec<f64> = values.iter().map(|&x| x as f64).collect();
        peers.broadcast_f64(&mut wide)?;
        let narrow: Vec<f32> = wide.iter().map(|&x| x as f32).collect();
        ctx.write(arena, &narrow)?;
    }
    Ok(true)
}

/// Checks that every rank holds the same `values` (a decision); an error naming `what`
/// otherwise. The ranks make their decisions from shared numbers, so they agree by
/// construction; a rank that did not would train another network while rank 0 records one.
pub fn check_agreement(peers: &dyn Collective, what: &str, values: &[f64]) -> anyhow::Result<()> {
    anyhow::ensure!(
        all_agree(peers, values)?,
        "the {} ranks disagree on {what} (rank {} holds {values:?}); this is a bug, please report it",
        peers.ranks(),
        peers.rank()
    );
    Ok(())
}

/// Whether every rank holds the same `values`: then each value's maximum over the ranks is
/// minus the maximum of its negation. (Collective.)
fn all_agree(peers: &dyn Collective, values: &[f64]) -> anyhow::Result<bool> {
    let mut extremes: Vec<f64> = values.iter().flat_map(|&v| [v, -v]).collect();
    peers.max_f64(&mut extremes)?;
    Ok(extremes.chunks(2).all(|pair| pair[0] == -pair[1]))
}
