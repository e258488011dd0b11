//! Where a run stands: everything besides the tensors that a checkpoint must hold for a
//! resumed run to repeat an uninterrupted one exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::supernet::SearchState;
use crate::prog::search::Candidate;
use crate::runlog::StageSummary;

/// Where a run stands; stored in every checkpoint under `progress`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Batches of the current epoch already trained (non-zero after an interruption).
    pub batch_in_epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    pub best_val_acc: f64,
    pub wall_seconds: f64,
    pub train_flops: f64,
    /// Images trained on and the seconds spent on them, for the mean throughput.
    pub images_trained: u64,
    pub train_seconds: f64,
    pub resolution: usize,
    pub depth: usize,
    /// Validation accuracies of the weights so far, one per validated epoch.
    pub val_accs: Vec<f64>,
    /// The last validation's accuracy of the weights, then of each EMA (for `--grow-from best`).
    #[serde(default)]
    pub last_val_accs: Vec<f64>,
    /// Epochs completed when that validation was taken (`None` before the first one, and in
    /// older checkpoints, which validated after every epoch).
    #[serde(default)]
    pub validated_after: Option<usize>,
    /// AdamW's own step count (its bias correction restarts when growth resets the moments);
    /// written from the optimizer when a checkpoint is taken, read when one is loaded.
    #[serde(default)]
    pub adam_step: u64,
    /// AdamW's step count of each block's tensors (a block that a sub-network skipped took
    /// fewer). Older checkpoints have none: every block then counts `adam_step`.
    #[serde(default)]
    pub adam_block_steps: Vec<u64>,
    /// AutoProg: the search in progress, if any.
    #[serde(default)]
    pub search: Option<SearchState>,
    /// AutoProg: the sub-network the last search chose for the current stage. (Older
    /// checkpoints wrote it as a `[resolution, depth]` pair, which still reads.)
    #[serde(default)]
    pub chosen: Option<Candidate>,
    /// AutoProg: each stage a search configured (older checkpoints: `[epoch, res, depth]`).
    #[serde(default)]
    pub trained: Vec<StageSummary>,
    /// AutoProg: wall seconds and FLOPs the finished searches spent scoring and timing their
    /// candidates (their FLOPs are also in `train_flops`).
    #[serde(default)]
    pub search_seconds: f64,
    #[serde(default)]
    pub search_flops: f64,
    /// Data files that could not be read so far (left out, and not tried again on resume).
    #[serde(default)]
    pub skipped_files: Vec<String>,
    /// AutoProg: the step time in milliseconds of every sub-network a search has timed, by
    /// name (`r20_l5`). It depends on the shape and the device, not on the weights, so a
    /// later search times only the candidates no earlier one did.
    #[serde(default)]
    pub step_ms: BTreeMap<String, f64>,
    /// Mixed precision: the loss scale and its clean steps in a row (none in f32 runs and
    /// older checkpoints: a resumed f16 run then starts a fresh scale).
    #[serde(default)]
    pub loss_scale: Option<f32>,
    #[serde(default)]
    pub loss_scale_clean_steps: u32,
    /// Steps skipped because their f16 gradients overflowed.
    #[serde(default)]
    pub skipped_steps: u64,
}

impl Progress {
    /// Records the validation just taken after `self.epoch` epochs (`accs`: of the weights,
    /// then of each EMA); returns whether the weights' accuracy is the best so far.
    pub fn record_validation(&mut self, accs: &[f64]) -> bool {
        self.val_accs.push(accs[0]);
        self.last_val_accs = accs.to_vec();
        self.validated_after = Some(self.epoch);
        let best = accs[0] > self.best_val_acc;
        if best {
            self.best_val_acc = accs[0];
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_of_older_checkpoints_still_reads() {
        // Before the stage choices had names they were tuples: JSON arrays.
        let old = r#"{"epoch":2,"batch_in_epoch":0,"step":40,"best_val_acc":0.5,"wall_seconds":1.0,
            "train_flops":1.0,"images_trained":10,"train_seconds":1.0,"resolution":16,"depth":4,
            "val_accs":[0.4,0.5],"chosen":[16,4],"trained":[[1,16,4]]}"#;
        let progress: Progress = serde_json::from_str(old).unwrap();
        assert_eq!(progress.chosen, Some(Candidate { resolution: 16, depth: 4 }));
        assert_eq!(progress.trained, [StageSummary { start_epoch: 1, resolution: 16, depth: 4 }]);
        let back: Progress = serde_json::from_str(&serde_json::to_string(&progress).unwrap()).unwrap();
        assert_eq!(back, progress);
    }
}
