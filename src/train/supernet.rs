//! The GPU side of AutoProg's one-shot search: the search state a checkpoint carries, the
//! random sub-network of each supernet step, the two measurements of every candidate (its
//! loss on held-back training images, and its step time) and, at the end, the recycling of
//! the winner's weights. Which candidates there are and which one wins is pure logic, in
//! [`crate::prog::search`].

use std::collections::BTreeMap;
use std::sync::Arc;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::host::Clock;
use super::options::SearchCost;
use crate::checkpoint::schema::ema_name;
use crate::gpu::Plan;
use crate::kernels::resize::resize_bilinear;
use crate::model::step::Optimizer;
use crate::model::{Activations, GpuVit, Loss, VitConfig};
use crate::prog::grow::{grow_depth, Growth};
use crate::prog::search::{levels, select, Candidate, SearchSpace, Selection};
use crate::runlog::{CandidateScore, SearchEvent};
use crate::{GpuContext, Tensor};

/// A search in progress (saved in checkpoints so that a run resumes inside it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchState {
    /// The stage it chooses the sub-network for.
    pub stage: usize,
    /// The global step the search starts at, and how many steps of supernet training it
    /// lasts (counted in the training budget; `--search-epochs` may be a fraction, so a
    /// search can end inside an epoch).
    pub start_step: u64,
    pub steps: u64,
    /// The last `window` steps hold the evaluation points.
    pub window: u64,
    /// Depth before the supernet was grown, and the supernet's depth.
    pub from_depth: usize,
    pub to_depth: usize,
    pub candidates: Vec<Candidate>,
    /// The candidate that wins unless another scores better beyond the noise (a search
    /// around the schedule); none in the official search space and in older checkpoints.
    #[serde(default)]
    pub anchor: Option<Candidate>,
    /// Per candidate, its mean held-back loss at each evaluation point so far.
    pub losses: Vec<Vec<f64>>,
    /// Per candidate, its step time in milliseconds (measured at the first evaluation).
    pub step_ms: Vec<f64>,
    /// Seconds spent so far scoring the candidates and timing them (absent in older
    /// checkpoints).
    #[serde(default)]
    pub evaluation_seconds: f64,
    #[serde(default)]
    pub timing_seconds: f64,
    /// FLOPs spent so far on those forward passes and timed steps (the supernet's own
    /// training steps are counted as training).
    #[serde(default)]
    pub flops: f64,
}

/// Evaluation points of a search: four in its window and one at its end.
pub const EVALUATION_POINTS: usize = 5;

/// Forward passes of a held-back batch that a search spends on scoring, per step of
/// supernet training: scoring stays a small part of a search of any length, as in the
/// official code (docs/decisions.md, "Scoring budget of a search").
const EVALUATION_FORWARDS_PER_STEP: f64 = 0.5;

/// Held-back batches each candidate is scored on at one evaluation point: the search's
/// share of forward passes ([`EVALUATION_FORWARDS_PER_STEP`]) spread over its points and
/// candidates, at least one and at most all `available`. Successive points take successive
/// batches, so a search still sees every held-back image when it scores few per point.
pub fn evaluation_batches(search_steps: u64, candidates: usize, available: usize) -> usize {
    let budget = EVALUATION_FORWARDS_PER_STEP * search_steps as f64 / (EVALUATION_POINTS * candidates.max(1)) as f64;
    (budget.round() as usize).clamp(1, available.max(1))
}

/// The evaluation window of a search of `steps` steps with epochs of `steps_per_epoch`:
/// its last epoch when it lasts two or more (as the official code, which scores during
/// the last search epoch), else its second half, so that a short search never scores
/// the supernet it has only just grown.
pub fn evaluation_window(steps: u64, steps_per_epoch: u64) -> u64 {
    if steps >= 2 * steps_per_epoch {
        steps_per_epoch
    } else {
        (steps / 2).max(1)
    }
}

impl SearchState {
    pub fn growth(&self) -> Growth {
        grow_depth(self.from_depth, self.to_depth).expect("a search's growth was valid when it started")
    }

    /// The distinct candidate resolutions, ascending.
    pub fn resolutions(&self) -> Vec<usize> {
        levels(self.candidates.iter().map(|c| c.resolution))
    }

    fn depths(&self) -> Vec<usize> {
        levels(self.candidates.iter().map(|c| c.depth))
    }

    /// The sub-network a supernet step trains: resolution and depth drawn independently and
    /// uniformly (as the official code), deterministic in (seed, step).
    pub fn sample(&self, seed: u64, step: u64) -> Candidate {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ 0x7375_7065_726e_6574 ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (rs, ls) = (self.resolutions(), self.depths());
        let resolution = rs[(rng.next_u64() % rs.len() as u64) as usize];
        let depth = ls[(rng.next_u64() % ls.len() as u64) as usize];
        Candidate { resolution, depth }
    }

    /// The step the search ends before (its last supernet step is `end() - 1`).
    pub fn end(&self) -> u64 {
        self.start_step + self.steps
    }

    /// Whether an evaluation point falls before global step `step`: at the start, ¼, ½
    /// and ¾ of the evaluation window (its end is evaluated when the search finishes).
    pub fn evaluates_at(&self, step: u64) -> bool {
        let window_start = self.end() - self.window;
        let inside = EVALUATION_POINTS as u64 - 1;
        (0..inside).any(|q| window_start + q * self.window / inside == step)
    }
}

/// Activations for each candidate resolution (all planned at the supernet's depth).
pub type ActsByResolution = BTreeMap<usize, Activations>;

/// Writes `images` (at the largest resolution) into the activations of resolution `r`:
/// directly at the largest, else through the GPU bilinear resize, recorded into `rec`.
pub fn stage_images(
    ctx: &GpuContext,
    rec: &mut crate::Recorder<'_>,
    acts: &ActsByResolution,
    images: &[f32],
    r: usize,
) -> crate::Result<()> {
    let largest = *acts.keys().last().expect("at least one resolution");
    let top = &acts[&largest];
    ctx.write(&top.images, images)?;
    if r != largest {
        resize_bilinear(rec, &top.images, &acts[&r].images)?;
    }
    Ok(())
}

/// Writes a batch of `labels.len()` images (at the largest resolution of `acts`, staged to
/// `r` as [`stage_images`] does) with its labels and, when mixed or smoothed, its soft
/// `targets` [n, K], and returns the loss to train on. A batch short of the planned size
/// (files that failed to load were left out) is padded with zero images and all-zero target
/// rows, which [`Loss::Partial`] leaves out of the loss and the gradients.
#[allow(clippy::too_many_arguments, reason = "the batch's three parts and where they go")]
pub fn stage_batch(
    ctx: &GpuContext,
    rec: &mut crate::Recorder<'_>,
    acts: &ActsByResolution,
    images: &[f32],
    labels: &[u32],
    targets: Option<&[f32]>,
    r: usize,
    classes: usize,
) -> crate::Result<Loss> {
    let to = &acts[&r];
    let (planned, rows) = (to.batch, labels.len());
    if rows == planned {
        stage_images(ctx, rec, acts, images, r)?;
        ctx.write_u32(&to.labels, labels)?;
        return Ok(match targets {
            Some(targets) => {
                ctx.write(&to.targets, targets)?;
                Loss::Soft
            }
            None => Loss::Hard { smoothing: 0.0 },
        });
    }
    let top = &acts[acts.keys().last().expect("at least one resolution")];
    let mut padded = images.to_vec();
    padded.resize(top.images.numel(), 0.0);
    stage_images(ctx, rec, acts, &padded, r)?;
    let mut padded_labels = labels.to_vec();
    padded_labels.resize(planned, 0);
    ctx.write_u32(&to.labels, &padded_labels)?;
    let mut padded_targets = match targets {
        Some(targets) => targets.to_vec(),
        None => labels.iter().flat_map(|&l| (0..classes).map(move |k| (k == l as usize) as u32 as f32)).collect(),
    };
    padded_targets.resize(planned * classes, 0.0);
    ctx.write(&to.targets, &padded_targets)?;
    Ok(Loss::Partial { rows })
}

/// Held-back images at the largest resolution, with their labels.
pub type HeldBatch = (Vec<f32>, Vec<u32>);

/// Mean cross-entropy (no smoothing) of candidate `c` with the weights in `arena` over the
/// given held-back batches (images at the largest resolution, labels). Every batch runs the
/// same forward and loss passes: recorded once and replayed for the others (a short batch,
/// whose loss leaves out padded rows, records its own).
pub async fn candidate_loss(
    ctx: &GpuContext,
    model: &GpuVit,
    arena: &Tensor,
    acts: &mut ActsByResolution,
    growth: &Growth,
    c: Candidate,
    holdout: &[&HeldBatch],
) -> anyhow::Result<f64> {
    acts.get_mut(&c.resolution).expect("planned").set_active_blocks(&growth.active(c.depth)?)?;
    let a = &acts[&c.resolution];
    let mut plans: Vec<(Loss, Arc<Plan>)> = Vec::new();
    let mut total = 0.0;
    for (images, labels) in holdout.iter().copied() {
        let mut rec = ctx.recorder("search.eval");
        let loss = stage_batch(ctx, &mut rec, acts, images, labels, None, c.resolution, model.config.classes)?;
        let plan = match plans.iter().find(|(kind, _)| *kind == loss) {
            Some((_, plan)) => plan.clone(),
            None => {
                let mut capture = ctx.capture("search.eval");
                model.forward(&mut capture, arena, a, false)?;
                model.loss(&mut capture, a, loss)?;
                let plan = capture.into_plan()?;
                plans.push((loss, plan.clone()));
                plan
            }
        };
        rec.replay(&plan)?;
        ctx.submit(rec)?;
        total += ctx.read(&a.loss).await?[0] as f64;
    }
    Ok(total / holdout.len().max(1) as f64)
}

/// Timed forward + backward steps per candidate, after one untimed warm-up step each.
const TIMING_ROUNDS: usize = 3;

/// Forward + backward time of one step of each candidate in milliseconds: the median of
/// [`TIMING_ROUNDS`] steps, from GPU timestamps where the adapter has them, wall clock
/// otherwise. The rounds go over all candidates in turn rather than one candidate at a
/// time, so that a passing disturbance (another process on a CPU adapter, the data
/// workers) slows one sample of many candidates instead of every sample of one.
pub async fn candidates_step_ms(
    ctx: &GpuContext,
    clock: &dyn Clock,
    model: &GpuVit,
    acts: &mut ActsByResolution,
    growth: &Growth,
    candidates: &[Candidate],
) -> anyhow::Result<Vec<f64>> {
    // Each candidate's step, captured once (before its warm-up) and replayed in every round,
    // as training replays its steps: on adapters without timestamps the wall clock then
    // counts the host time training pays, not that of recording afresh.
    let mut plans = Vec::with_capacity(candidates.len());
    for &c in candidates {
        let a = acts.get_mut(&c.resolution).expect("planned");
        a.set_active_blocks(&growth.active(c.depth)?)?;
        let mut capture = ctx.capture("search.time");
        model.forward(&mut capture, &model.params, a, false)?;
        model.loss(&mut capture, a, Loss::Hard { smoothing: 0.0 })?;
        model.backward(&mut capture, a, false)?;
        plans.push(capture.into_plan()?);
    }
    let mut samples = vec![Vec::with_capacity(TIMING_ROUNDS); candidates.len()];
    for round in 0..=TIMING_ROUNDS {
        for (i, plan) in plans.iter().enumerate() {
            let ms = step_ms(ctx, clock, plan).await?;
            if round > 0 {
                samples[i].push(ms);
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        })
        .collect())
}

/// One timed replay of a candidate's step `plan` in milliseconds.
async fn step_ms(ctx: &GpuContext, clock: &dyn Clock, plan: &Arc<Plan>) -> anyhow::Result<f64> {
    let start = clock.seconds();
    let mut rec = ctx.timed_recorder("search.time");
    rec.replay(plan)?;
    let timing = ctx.submit_timed(rec).await?;
    let wall = (clock.seconds() - start) * 1e3;
    Ok(if timing.passes.is_empty() { wall } else { timing.total_ms() })
}

/// The weights a search scores its candidates with, and their name: the fastest EMA, as the
/// official code, when its time constant 1/(1 − decay) fits into the supernet training
/// before the first evaluation point; else (short searches, slow EMAs) the weights, since
/// such an EMA still mostly holds the model from before the supernet grew, whose
/// duplicated blocks were exact copies: every candidate would score nearly alike.
pub fn scoring_weights<'a>(model: &'a GpuVit, optimizer: &'a Optimizer, search: &SearchState) -> (&'a Tensor, String) {
    let trained_before_scoring = (search.steps - search.window) as f64;
    match optimizer.emas.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
        Some((ema, decay)) if 1.0 / (1.0 - decay) <= trained_before_scoring => (ema, ema_name(*decay)),
        _ => (&model.params, "weights".into()),
    }
}

/// What an evaluation point runs on.
pub struct Scoring<'a> {
    pub ctx: &'a GpuContext,
    pub clock: &'a dyn Clock,
    pub model: &'a GpuVit,
    pub optimizer: &'a Optimizer,
    pub growth: &'a Growth,
    pub cost: SearchCost,
    pub vit: &'a VitConfig,
}

impl Scoring<'_> {
    /// One evaluation point of a search: each candidate's mean held-back loss with the
    /// [`scoring_weights`], and, the first time, each candidate's cost (step time, or GFLOPs
    /// per step with [`SearchCost::Flops`]). Step times come from `timed` where an earlier
    /// search measured them; the others are measured and added.
    pub async fn evaluation_point(
        &self,
        acts: &mut ActsByResolution,
        search: &mut SearchState,
        timed: &mut BTreeMap<String, f64>,
        holdout: &[HeldBatch],
    ) -> anyhow::Result<()> {
        if holdout.is_empty() {
            anyhow::bail!(
                "no held-back images to evaluate the candidates on; the training set is too small for --batch"
            );
        }
        let batch = acts.values().next().map_or(1, |a| a.batch) as f64;
        if search.step_ms.is_empty() {
            let start = self.clock.seconds();
            let (costs, flops) = self.costs(acts, &search.candidates, timed).await?;
            search.step_ms = costs;
            search.flops += batch * flops;
            search.timing_seconds += self.clock.seconds() - start;
        }
        let start = self.clock.seconds();
        let (scoring, _) = scoring_weights(self.model, self.optimizer, search);
        // This point's share of the held-back batches, following on from the last point's.
        let per_point = evaluation_batches(search.steps, search.candidates.len(), holdout.len());
        let first = search.losses.first().map_or(0, Vec::len) * per_point;
        let batches: Vec<&HeldBatch> = (first..first + per_point).map(|b| &holdout[b % holdout.len()]).collect();
        for (i, &c) in search.candidates.clone().iter().enumerate() {
            let loss = candidate_loss(self.ctx, self.model, scoring, acts, self.growth, c, &batches).await?;
            search.losses[i].push(loss);
            search.flops += (batches.len() as f64) * batch * self.vit.forward_flops_per_image(c.resolution, c.depth);
        }
        search.evaluation_seconds += self.clock.seconds() - start;
        Ok(())
    }

    /// Each candidate's cost: measured step time, or GFLOPs of one step (proportional to an
    /// ideal device's time, and the same on every run: the fit's exponent and the ranking
    /// ignore the scale); and the FLOPs per image that the timed steps took.
    async fn costs(
        &self,
        acts: &mut ActsByResolution,
        candidates: &[Candidate],
        timed: &mut BTreeMap<String, f64>,
    ) -> anyhow::Result<(Vec<f64>, f64)> {
        let batch = acts.values().next().map_or(1, |a| a.batch);
        let step_flops = |c: &Candidate| self.vit.train_flops_per_image(c.resolution, c.depth);
        if self.cost == SearchCost::Flops {
            return Ok((candidates.iter().map(|c| batch as f64 * step_flops(c) / 1e9).collect(), 0.0));
        }
        let untimed: Vec<Candidate> = candidates.iter().copied().filter(|c| !timed.contains_key(&c.name())).collect();
        if !untimed.is_empty() {
            let ms = candidates_step_ms(self.ctx, self.clock, self.model, acts, self.growth, &untimed).await?;
            for (c, ms) in untimed.iter().zip(ms) {
                timed.insert(c.name(), ms);
            }
        }
        // One warm-up and TIMING_ROUNDS timed steps of each candidate timed now.
        let flops = (TIMING_ROUNDS + 1) as f64 * untimed.iter().map(step_flops).sum::<f64>();
        Ok((candidates.iter().map(|c| timed[&c.name()]).collect(), flops))
    }
}

/// The choice at the end of a search, and its log event (`scored_with` names the weights
/// the candidates were scored with; `epoch` and `step` are where the search ended).
pub fn choose(
    search: &SearchState,
    cost: SearchCost,
    space: SearchSpace,
    scored_with: String,
    epoch: usize,
    step: u64,
) -> anyhow::Result<(Candidate, SearchEvent)> {
    let anchor = search.anchor.and_then(|a| search.candidates.iter().position(|c| *c == a));
    let Selection { winner, scores, fit, w, lowest_score, verdict } =
        select(&search.step_ms, &search.losses, space.rule(anchor))?;
    let chosen = search.candidates[winner];
    let candidates = search
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| CandidateScore {
            name: c.name(),
            sub_network: *c,
            losses: search.losses[i].clone(),
            step_ms: search.step_ms[i],
            score: scores[i],
        })
        .collect();
    let event = SearchEvent {
        stage: search.stage as u32,
        epoch: epoch as u32,
        step,
        candidates,
        fit,
        w,
        winner: chosen.name(),
        lowest_score: Some(search.candidates[lowest_score].name()),
        anchor: search.anchor.map(|a| a.name()),
        scored_with: Some(scored_with),
        evaluation_seconds: Some(search.evaluation_seconds),
        timing_seconds: Some(search.timing_seconds),
        search_cost: Some(cost),
        search_space: Some(space),
        verdict: Some(verdict),
    };
    Ok((chosen, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(start_step: u64, steps: u64, steps_per_epoch: u64) -> SearchState {
        SearchState {
            stage: 0,
            start_step,
            steps,
            window: evaluation_window(steps, steps_per_epoch),
            from_depth: 3,
            to_depth: 6,
            candidates: vec![Candidate { resolution: 16, depth: 3 }, Candidate { resolution: 16, depth: 6 }],
            anchor: None,
            losses: vec![Vec::new(); 2],
            step_ms: Vec::new(),
            evaluation_seconds: 0.0,
            timing_seconds: 0.0,
            flops: 0.0,
        }
    }

    fn points(s: &SearchState) -> Vec<u64> {
        (s.start_step..s.end()).filter(|&step| s.evaluates_at(step)).collect()
    }

    #[test]
    fn short_searches_score_on_fewer_batches() {
        // The quick preset: 115 supernet steps. Nine candidates at stage 0 get one batch per
        // point (45 forward passes, about half the steps), four candidates later get three.
        assert_eq!(evaluation_batches(115, 9, 8), 1);
        assert_eq!(evaluation_batches(115, 4, 8), 3);
        // A long search is capped by what is held back; a tiny one still scores one batch.
        assert_eq!(evaluation_batches(5000, 9, 8), 8);
        assert_eq!(evaluation_batches(3, 9, 8), 1);
        assert_eq!(evaluation_batches(5000, 9, 0), 1);
    }

    #[test]
    fn two_search_epochs_are_scored_in_the_last_one() {
        let s = search(1000, 200, 100);
        assert_eq!(s.window, 100);
        assert_eq!(points(&s), vec![1100, 1125, 1150, 1175]);
    }

    #[test]
    fn a_short_search_is_scored_in_its_second_half_never_at_its_start() {
        // One epoch, and a quarter of one: no point at the freshly grown supernet.
        assert_eq!(points(&search(0, 100, 100)), vec![50, 62, 75, 87]);
        let quarter = search(468, 117, 468);
        assert_eq!(quarter.window, 58);
        assert_eq!(points(&quarter), vec![527, 541, 556, 570]);
        assert_eq!(quarter.end(), 585);
        // Tiny searches still have one point before the end.
        assert_eq!(points(&search(10, 1, 100)), vec![10]);
        assert_eq!(points(&search(10, 3, 100)), vec![12]);
    }
}
