//! The decisions of the training loop that need no GPU, as pure functions of the
//! configuration and the [`Progress`]: whether a stage opens with a search (and over which
//! candidates) or with a foregone choice, which sub-network an epoch trains, when a search
//! ends, and the per-step learning rate and drop-path draws. The phases apply them.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{Recipe, TrainConfig};
use super::options::{Schedule, SearchSpace};
use super::progress::Progress;
use super::supernet::{evaluation_window, SearchState};
use crate::data::Shard;
use crate::prog::schedule::{stage_at, Stage};
use crate::prog::search::{foregone, Candidate};
use crate::runlog::StageSummary;

/// The step counts of a run, fixed once the data is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steps {
    pub per_epoch: u64,
    pub total: u64,
    pub warmup: u64,
}

impl Steps {
    pub fn new(config: &TrainConfig, train_images: usize) -> anyhow::Result<Steps> {
        let r = &config.recipe;
        let per_epoch = (train_images / r.batch) as u64;
        anyhow::ensure!(
            per_epoch > 0,
            "--batch {} is larger than the {train_images} training images; lower --batch",
            r.batch
        );
        let warmup = (r.warmup_epochs * per_epoch as f64).round() as u64;
        Ok(Steps { per_epoch, total: per_epoch * r.epochs as u64, warmup })
    }
}

/// How a stage of `auto` starts, decided at its first batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Opening {
    /// Supernet training and evaluation points, then the choice.
    Search(SearchState),
    /// Nothing to choose between (one candidate, or two, which the criterion cannot rank):
    /// the stage trains this one from its start.
    Foregone { chosen: Candidate, why: &'static str },
}

/// Whether epoch `progress.epoch` starts a stage: its first batch, in the stage's first epoch.
pub fn starts_stage(stages: &[Stage], progress: &Progress) -> bool {
    let stage = stages[stage_at(stages, progress.epoch)];
    progress.epoch == stage.start_epoch && progress.batch_in_epoch == 0
}

/// AutoProg: how the stage that starts here opens, or `None` where no search opens (other
/// schedules, the last stage, inside a stage, or a search already running).
pub fn opening(
    config: &TrainConfig,
    stages: &[Stage],
    steps: Steps,
    progress: &Progress,
) -> anyhow::Result<Option<Opening>> {
    let r = &config.recipe;
    let index = stage_at(stages, progress.epoch);
    let last_stage = index + 1 == stages.len();
    if r.schedule != Schedule::Auto || last_stage || !starts_stage(stages, progress) || progress.search.is_some() {
        return Ok(None);
    }
    let current = Candidate { resolution: progress.resolution, depth: progress.depth };
    let (offered, anchor) = r.search_space.offered(stages, index, current, r.max_res_lag, r.depth_growth)?;
    let flops = |c: Candidate| config.model.train_flops_per_image(c.resolution, c.depth);
    // Of two candidates the thrifty rule takes the cheaper, as the official one does.
    let kept_anchor = anchor.filter(|_| r.search_space == SearchSpace::Anchored);
    if let Some(chosen) = foregone(&offered, kept_anchor, flops) {
        let why = match (offered.len(), kept_anchor) {
            (1, _) => "the only candidate",
            (_, Some(_)) => "the schedule's, which one other candidate cannot beat",
            _ => "the cheaper of two",
        };
        return Ok(Some(Opening::Foregone { chosen, why }));
    }
    let stage = stages[index];
    let to_depth = offered.iter().map(|c| c.depth).max().expect("at least one candidate");
    let stage_epochs = stages.get(index + 1).map_or(r.epochs, |s| s.start_epoch) - stage.start_epoch;
    let stage_steps = stage_epochs as u64 * steps.per_epoch;
    let search_steps = ((r.search_epochs * steps.per_epoch as f64).round() as u64).clamp(1, stage_steps);
    Ok(Some(Opening::Search(SearchState {
        stage: index,
        start_step: progress.step,
        steps: search_steps,
        window: evaluation_window(search_steps, steps.per_epoch),
        from_depth: progress.depth,
        to_depth,
        losses: vec![Vec::new(); offered.len()],
        candidates: offered,
        anchor,
        step_ms: Vec::new(),
        evaluation_seconds: 0.0,
        timing_seconds: 0.0,
        flops: 0.0,
    })))
}

/// Records an opening in the progress.
pub fn open(progress: &mut Progress, stages: &[Stage], opening: Opening) {
    match opening {
        Opening::Search(search) => progress.search = Some(search),
        Opening::Foregone { chosen, .. } => {
            choose(progress, stages[stage_at(stages, progress.epoch)].start_epoch, chosen)
        }
    }
}

/// Records the sub-network chosen for the stage that starts at `start_epoch`.
pub fn choose(progress: &mut Progress, start_epoch: usize, chosen: Candidate) {
    progress.chosen = Some(chosen);
    progress.trained.push(stage_summary(start_epoch, chosen.resolution, chosen.depth));
}

/// What an epoch trains.
#[derive(Clone, Debug, PartialEq)]
pub struct Trains {
    /// Resolutions, ascending: every candidate's during a search, else one.
    pub resolutions: Vec<usize>,
    /// The depth of the model: the supernet's during a search.
    pub depth: usize,
    /// The stage whose regularisation applies (the last stage's during a search, which
    /// trains every candidate as the largest would be trained).
    pub regularisation: Stage,
}

impl Trains {
    pub fn largest_resolution(&self) -> usize {
        *self.resolutions.last().expect("at least one resolution")
    }
}

/// What the epoch `progress.epoch` trains: the supernet during a search; in `auto`, the
/// chosen sub-network until the last stage; else the schedule's stage.
pub fn trains(schedule: Schedule, stages: &[Stage], progress: &Progress) -> Trains {
    let stage = stages[stage_at(stages, progress.epoch)];
    let last_stage = stage_at(stages, progress.epoch) + 1 == stages.len();
    match (&progress.search, schedule) {
        (Some(s), _) => {
            Trains { resolutions: s.resolutions(), depth: s.to_depth, regularisation: stages[stages.len() - 1] }
        }
        (None, Schedule::Auto) if !last_stage => {
            let c = progress.chosen.unwrap_or(Candidate { resolution: stage.resolution, depth: stage.depth });
            Trains { resolutions: vec![c.resolution], depth: c.depth, regularisation: stage }
        }
        _ => Trains { resolutions: vec![stage.resolution], depth: stage.depth, regularisation: stage },
    }
}

/// Whether the search in progress has taken its last step.
pub fn search_ended(progress: &Progress) -> bool {
    matches!(&progress.search, Some(s) if s.end() == progress.step)
}

/// Whether the epoch `epoch` ends with a validation (and a checkpoint): every
/// `validate_every`-th epoch, and the last.
pub fn validates(recipe: &Recipe, epoch: usize) -> bool {
    (epoch + 1).is_multiple_of(recipe.validate_every.max(1)) || epoch + 1 >= recipe.epochs
}

/// Whether MoGrow, choosing its source by the last validation, must validate first: the
/// epoch before the growth was not validated. (Inside the first epoch there is nothing to
/// validate yet; the slowest EMA is grown, as before any validation.)
pub fn validation_is_stale(progress: &Progress) -> bool {
    progress.epoch > 0 && progress.validated_after != Some(progress.epoch)
}

/// The learning rate at `step` of `total`: linear warmup to `lr`, then a cosine to `min_lr`.
pub fn learning_rate(step: u64, total: u64, warmup: u64, lr: f64, min_lr: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Per-image drop-path factors of a step, laid out as `Activations::write_drop_path`
/// wants: block i drops each branch with probability rate·i/(L−1) (timm's linear rule) and
/// scales a kept branch by 1/(1 − p). Deterministic in (seed, step).
pub fn drop_path_scales(rate: f64, depth: usize, batch: usize, seed: u64, step: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6472_6f70_7061_7468 ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut scales = Vec::with_capacity(depth * 2 * batch);
    for block in 0..depth {
        let p = if depth > 1 { rate * block as f64 / (depth - 1) as f64 } else { rate };
        for _branch in 0..2 {
            for _ in 0..batch {
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                scales.push(if u < p { 0.0 } else { (1.0 / (1.0 - p)) as f32 });
            }
        }
    }
    scales
}

/// The rows of `shard` in each run of `batch` values of `values` (per-sample values laid out
/// [.., batch], such as [`drop_path_scales`]).
pub fn shard_rows(values: &[f32], batch: usize, shard: Shard) -> Vec<f32> {
    let rows = shard.rows(batch);
    values.chunks(batch).flat_map(|run| run[rows.clone()].iter().copied()).collect()
}

fn stage_summary(start_epoch: usize, resolution: usize, depth: usize) -> StageSummary {
    StageSummary { start_epoch: start_epoch as u32, resolution: resolution as u32, depth: depth as u32 }
}

/// The stages a run trained, for `summary.json`: the schedule's for `none` and `prog`; for
/// `auto`, what each search chose and the full model in the last stage.
pub fn trained_stages(schedule: Schedule, stages: &[Stage], progress: &Progress) -> Vec<StageSummary> {
    if schedule == Schedule::Auto {
        let last = stages[stages.len() - 1];
        let mut out = progress.trained.clone();
        out.push(stage_summary(last.start_epoch, last.resolution, last.depth));
        out
    } else {
        stages.iter().map(|s| stage_summary(s.start_epoch, s.resolution, s.depth)).collect()
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
