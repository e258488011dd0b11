//! The run log: what the trainer writes and the viewer reads.
//!
//! A run directory holds `log.jsonl` (one [`Event`] per line, tagged by `"event"`),
//! `summary.json` ([`Summary`]) and, for a comparison of schedules, `compare.json`
//! ([`Compare`]). `docs/runlog.md` is the schema with example lines.
//!
//! Readers are lenient so that old viewers read new logs and a crash mid-line costs one
//! line: unknown fields are ignored, fields added later have defaults, and [`parse_log`]
//! skips (and reports) lines it cannot read instead of failing. Non-finite numbers (a
//! diverged loss) are written by serde_json as `null`; loss-like fields read `null` back
//! as NaN rather than rejecting the line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::json::{f64_or_nan, vec_f64_or_nan};
pub use crate::prog::search::PowerLaw;
use crate::prog::search::{Candidate, Verdict};
use crate::train::options::{SearchCost, SearchSpace};

/// One line of `log.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStart(RunStartEvent),
    Step(StepEvent),
    Epoch(EpochEvent),
    Stage(StageEvent),
    Growth(GrowthEvent),
    Search(SearchEvent),
    Checkpoint(CheckpointEvent),
    Warning(WarningEvent),
    DataWarning(DataWarningEvent),
    RunEnd(RunEndEvent),
}

/// The `"event"` tags this version knows, in [`Event`] order.
pub const EVENT_NAMES: [&str; 10] =
    ["run_start", "step", "epoch", "stage", "growth", "search", "checkpoint", "warning", "data_warning", "run_end"];

impl Event {
    /// The `"event"` tag of this event.
    pub fn name(&self) -> &'static str {
        let index = match self {
            Event::RunStart(_) => 0,
            Event::Step(_) => 1,
            Event::Epoch(_) => 2,
            Event::Stage(_) => 3,
            Event::Growth(_) => 4,
            Event::Search(_) => 5,
            Event::Checkpoint(_) => 6,
            Event::Warning(_) => 7,
            Event::DataWarning(_) => 8,
            Event::RunEnd(_) => 9,
        };
        EVENT_NAMES[index]
    }
}

/// First line of every run (and of every resumed session of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStartEvent {
    /// Unix time, seconds.
    pub time: f64,
    /// autoprog version (and git commit when known).
    pub version: String,
    /// The fully resolved config (file + flags + defaults).
    #[serde(default)]
    pub config: serde_json::Value,
    /// GPU adapter description, e.g. "llvmpipe (Vulkan)".
    pub adapter: String,
    /// Schedule name: "autoprog", "fixed", ...
    pub schedule: String,
}

/// One optimizer step (written every few steps, not necessarily every one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepEvent {
    /// Global step, counted from 0 over the whole run.
    pub step: u64,
    pub epoch: u32,
    /// Training loss of this step (NaN when it diverged).
    #[serde(deserialize_with = "f64_or_nan")]
    pub loss: f64,
    pub lr: f64,
    pub images_per_second: f64,
    /// Input side in pixels.
    pub resolution: u32,
    /// Number of transformer blocks.
    pub depth: u32,
}

/// End of an epoch, after validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochEvent {
    pub epoch: u32,
    /// Global step at the end of the epoch.
    pub step: u64,
    /// Mean training loss over the epoch.
    #[serde(deserialize_with = "f64_or_nan")]
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    /// Top-1 validation accuracy of the trained weights, a fraction in [0, 1].
    pub val_acc: Option<f64>,
    /// Top-1 validation accuracy of each EMA copy of the weights.
    #[serde(default)]
    pub val_acc_ema: Vec<EmaAcc>,
    /// Training throughput over the epoch.
    pub images_per_second: f64,
    /// Training wall-clock seconds since the run started (summed over resumed sessions).
    pub wall_seconds: f64,
    /// Training FLOPs so far (forward + backward, cumulative).
    pub train_flops: f64,
    pub resolution: u32,
    pub depth: u32,
}

/// Validation accuracy of one EMA copy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmaAcc {
    /// EMA decay, e.g. 0.9995.
    pub decay: f64,
    /// Top-1 accuracy, a fraction in [0, 1].
    pub acc: f64,
}

/// A growth stage begins: the resolution, depth and regularisation it trains with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageEvent {
    /// Stage index, from 0.
    pub stage: u32,
    /// First epoch of the stage.
    pub epoch: u32,
    pub step: u64,
    /// The sub-network the stage trains from its start: the schedule's, or the one chosen
    /// without a search. (Where a search opens the stage, these are the schedule's and the
    /// search event names the winner, which trains from the search's end.)
    pub resolution: u32,
    pub depth: u32,
    pub regularisation: Regularisation,
    /// `auto`: the sub-network the stage trains when no search was needed (its only
    /// candidate, or the cheaper of two, which the criterion cannot rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_without_search: Option<String>,
}

/// Regularisation strengths of a stage (AutoProg scales them with model size).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Regularisation {
    /// RandAugment magnitude on torchvision's 0..=30 scale (timm's m9 is 27 here).
    pub randaug_magnitude: f64,
    /// Stochastic depth rate of the last block.
    pub drop_path: f64,
    /// Random-erasing probability.
    pub erase_prob: f64,
    /// Probability that a batch is mixed (mixup or cutmix; 0 = off).
    pub mixup: f64,
}

/// The model grew deeper (MoGrow).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrowthEvent {
    pub epoch: u32,
    pub step: u64,
    pub from_depth: u32,
    pub to_depth: u32,
    /// New block `i` copies old block `mapping[i]`; `mapping.len() == to_depth`.
    pub mapping: Vec<usize>,
    /// Which weights the grown model starts from: "weights" or an EMA such as "ema_0.998".
    pub source: String,
}

/// Result of a candidate search at the start of a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchEvent {
    /// The stage this search chose the configuration for.
    pub stage: u32,
    pub epoch: u32,
    pub step: u64,
    pub candidates: Vec<CandidateScore>,
    /// Power law fitted to (step time, mean loss) over the candidates.
    pub fit: PowerLaw,
    /// Exponent of the score, `max(-fit.b, 0)`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub w: f64,
    /// Name of the chosen candidate (`prog::search::select`, by the rule of `search_space`).
    pub winner: String,
    /// Name of the anchor: the `prog` schedule's network for the stage, which a search
    /// around the schedule keeps unless the evidence says otherwise. Absent in older logs
    /// and in the official search space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// Name of the candidate with the smallest score (the official rule's winner). Absent
    /// in older logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowest_score: Option<String>,
    /// The weights the candidates were scored with: `ema_<decay>` (the fastest EMA) or
    /// `weights` (when that EMA is too slow for the search's length). Absent in older logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_with: Option<String>,
    /// Wall seconds the search spent scoring its candidates on held-back images, and timing
    /// their steps (the rest of it trained the supernet). Absent in older logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing_seconds: Option<f64>,
    /// What `step_ms` of each candidate measures. Absent in older logs (their run's config
    /// says, under `recipe.search_cost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_cost: Option<SearchCost>,
    /// The candidates' space, which decides the rule that chose (`recipe.search_space`).
    /// Absent in older logs, whose anchored searches kept their anchor without evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_space: Option<SearchSpace>,
    /// Which branch of that rule chose the winner. Absent in older logs, where the viewer
    /// infers it (ambiguously for a cheaper thrifty winner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// One candidate of a search, with what the search measured of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    /// "r{resolution}_l{depth}", e.g. "r32_l6".
    pub name: String,
    /// Its resolution and depth (written as the fields `resolution` and `depth`).
    #[serde(flatten)]
    pub sub_network: Candidate,
    /// Loss at each evaluation point, in order.
    #[serde(deserialize_with = "vec_f64_or_nan")]
    pub losses: Vec<f64>,
    /// Forward + backward time of one step, milliseconds (with `--search-cost flops`: the
    /// step's GFLOPs instead, see [`SearchEvent::search_cost`]).
    pub step_ms: f64,
    /// `mean(losses) * step_ms^w`; the lowest wins.
    #[serde(deserialize_with = "f64_or_nan")]
    pub score: f64,
}

/// A checkpoint file was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointEvent {
    pub epoch: u32,
    pub step: u64,
    /// Path relative to the run directory.
    pub path: String,
    pub kind: CheckpointKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// The latest state, for resuming.
    Last,
    /// The best validation accuracy so far.
    Best,
}

/// Something the user should know that did not stop the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarningEvent {
    pub message: String,
}

/// A data file that could not be read was left out of the run (one event per file, the
/// first time it fails; its batch went on one image short).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataWarningEvent {
    pub epoch: u32,
    /// The step being trained when it failed.
    pub step: u64,
    /// The file, or the record inside a file (`data_batch_1.bin#17`).
    pub file: String,
    /// Why it could not be read.
    pub reason: String,
}

/// Last line of a run session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEndEvent {
    /// Unix time, seconds.
    pub time: f64,
    /// Training wall-clock seconds of the whole run (summed over resumed sessions).
    pub wall_seconds: f64,
    pub status: RunStatus,
    /// Why it was interrupted or failed.
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Finished,
    /// Stopped by the user (Ctrl-C); resumable.
    Interrupted,
    Failed,
}

/// serde_json writes non-finite floats as `null`; read them back as NaN.
/// The events of a log, and the lines that could not be read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogParse {
    pub events: Vec<Event>,
    /// (1-based line number, reason) for each skipped line.
    pub skipped: Vec<(usize, String)>,
}

/// Parses `log.jsonl` text. Never fails: malformed lines, events of kinds this version does
/// not know and a truncated last line (normal after a crash) are skipped and reported.
/// Blank lines are ignored.
pub fn parse_log(text: &str) -> LogParse {
    let mut parse = LogParse::default();
    let complete = text.ends_with('\n');
    let mut lines = text.split('\n').enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        let is_last = lines.peek().is_none();
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(line) {
            Ok(event) => parse.events.push(event),
            Err(error) => {
                let reason = if is_last && !complete {
                    format!("truncated last line (the run stopped while writing it): {error}")
                } else {
                    why_unreadable(line, &error)
                };
                parse.skipped.push((index + 1, reason));
            }
        }
    }
    parse
}

/// Tells an unknown event kind from a broken line (only on the failure path, so cheap).
fn why_unreadable(line: &str, error: &serde_json::Error) -> String {
    #[derive(Deserialize)]
    struct Tag {
        event: String,
    }
    match serde_json::from_str::<Tag>(line) {
        Ok(Tag { event }) if !EVENT_NAMES.contains(&event.as_str()) => {
            format!("unknown event {event:?} (written by a newer autoprog?)")
        }
        Ok(Tag { event }) => format!("malformed {event:?} event: {error}"),
        Err(_) => format!("not a log event: {error}"),
    }
}

/// `summary.json`: the outcome of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub schedule: String,
    /// Epochs trained.
    pub epochs: u32,
    /// Training wall-clock seconds (summed over resumed sessions).
    pub wall_seconds: f64,
    /// Total training FLOPs.
    pub train_flops: f64,
    /// Mean training throughput.
    pub images_per_second: f64,
    /// Final top-1 validation accuracy, a fraction in [0, 1].
    pub val_acc: f64,
    /// Final top-1 validation accuracy of the main EMA copy; `null` without EMA.
    pub val_acc_ema: Option<f64>,
    /// Best per-epoch validation accuracy.
    pub best_val_acc: f64,
    pub final_resolution: u32,
    pub final_depth: u32,
    pub adapter: String,
    pub stages: Vec<StageSummary>,
    pub seed: u64,
    /// Images the data loader could not decode and left out.
    pub skipped_images: usize,
    /// AutoProg: wall seconds and FLOPs its searches spent scoring and timing candidates
    /// (included in `wall_seconds` and `train_flops`; 0 for other schedules and older runs).
    pub search_seconds: f64,
    pub search_flops: f64,
    /// Model name, e.g. "vit_nano".
    pub model: String,
    /// Number of classes.
    pub classes: usize,
    /// What activations were stored in: "f32" or "f16" (mixed precision; older runs: empty).
    pub precision: String,
    /// Steps skipped because their f16 gradients overflowed (loss scaling).
    pub skipped_steps: u64,
    /// Processes of a data-parallel run (1: one process; 0 in older runs) and, with more
    /// than one, each rank's adapter in rank order.
    pub ranks: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<String>,
}

/// Where a stage started and the sub-network it trained (for a stage that a search opened,
/// the winner, which trained from the search's end on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageSummary {
    pub start_epoch: u32,
    pub resolution: u32,
    pub depth: u32,
}

/// `compare.json`: several runs and the per-schedule means.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Compare {
    pub runs: Vec<Summary>,
    /// The schedule that `speedup` and `acc_delta` are relative to.
    pub baseline: Option<String>,
    pub by_schedule: BTreeMap<String, ScheduleMeans>,
}

/// Means over the runs of one schedule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleMeans {
    /// Number of runs averaged.
    pub runs: usize,
    pub wall_seconds: f64,
    pub train_flops: f64,
    /// The part of `wall_seconds` and `train_flops` that searches spent scoring and timing.
    pub search_seconds: f64,
    pub search_flops: f64,
    pub val_acc: f64,
    /// Mean over the runs that have an EMA accuracy; `null` if none has.
    pub val_acc_ema: Option<f64>,
    /// Baseline wall seconds / these wall seconds (> 1 is faster); `null` for the baseline
    /// itself and without one.
    pub speedup: Option<f64>,
    /// These val_acc − baseline val_acc (fraction); `null` for the baseline itself and without one.
    pub acc_delta: Option<f64>,
}

impl Compare {
    /// Groups `runs` by schedule and averages them; `speedup` and `acc_delta` are relative to
    /// the `baseline` schedule when it is among the runs.
    pub fn from_runs(runs: Vec<Summary>, baseline: &str) -> Compare {
        let mut groups: BTreeMap<&str, Vec<&Summary>> = BTreeMap::new();
        for run in &runs {
            groups.entry(run.schedule.as_str()).or_default().push(run);
        }
        let mean = |group: &[&Summary], f: &dyn Fn(&Summary) -> f64| {
            group.iter().map(|s| f(s)).sum::<f64>() / group.len() as f64
        };
        let mut by_schedule: BTreeMap<String, ScheduleMeans> = groups
            .iter()
            .map(|(schedule, group)| {
                let ema: Vec<f64> = group.iter().filter_map(|s| s.val_acc_ema).collect();
                let means = ScheduleMeans {
                    runs: group.len(),
                    wall_seconds: mean(group, &|s| s.wall_seconds),
                    train_flops: mean(group, &|s| s.train_flops),
                    search_seconds: mean(group, &|s| s.search_seconds),
                    search_flops: mean(group, &|s| s.search_flops),
                    val_acc: mean(group, &|s| s.val_acc),
                    val_acc_ema: (!ema.is_empty()).then(|| ema.iter().sum::<f64>() / ema.len() as f64),
                    speedup: None,
                    acc_delta: None,
                };
                (schedule.to_string(), means)
            })
            .collect();
        let base = by_schedule.get(baseline).cloned();
        if let Some(base) = &base {
            // The baseline itself gets none: its speedup and accuracy change are trivially 1 and 0.
            for (_, means) in by_schedule.iter_mut().filter(|(schedule, _)| schedule.as_str() != baseline) {
                means.speedup = (means.wall_seconds > 0.0).then(|| base.wall_seconds / means.wall_seconds);
                means.acc_delta = Some(means.val_acc - base.val_acc);
            }
        }
        Compare { baseline: base.map(|_| baseline.to_string()), by_schedule, runs }
    }
}

#[cfg(native)]
pub use native::*;

#[cfg(native)]
mod native;

#[cfg(test)]
mod tests;
