//! The progressive schedule: K equal stages over E epochs; resolution, depth and the
//! regularisation rise linearly from a fraction of their full value to it (AutoProg's
//! `prog/progressive.py`, with the resolution rounded to the patch size instead of 32 px,
//! which would collapse every stage of a 32 px model to one size).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the schedule scales each dimension: stage k of K gets
/// `linspace(scale, 1, K)[k] · full`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// K (at least 1).
    pub stages: usize,
    pub epochs: usize,
    /// Full resolution and the fraction of it the first stage starts at.
    pub resolution: usize,
    pub res_scale: f64,
    /// Resolutions are rounded to multiples of this (the patch size).
    pub patch: usize,
    /// Full depth and the fraction of it the first stage starts at.
    pub depth: usize,
    pub depth_scale: f64,
    /// Full regularisation, reached in the last stage.
    pub randaug_magnitude: u32,
    pub drop_path: f64,
    pub erase_prob: f64,
    pub mix_prob: f64,
    /// Where each regularisation starts, as a fraction of its full value (negative values
    /// keep it at 0 for the first stages, as the official defaults do).
    pub randaug_scale: f64,
    pub drop_path_scale: f64,
    pub erase_scale: f64,
    pub mix_scale: f64,
}

/// One stage: from `start_epoch` on, train at this size with this regularisation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub start_epoch: usize,
    pub resolution: usize,
    pub depth: usize,
    pub randaug_magnitude: u32,
    pub drop_path: f64,
    pub erase_prob: f64,
    pub mix_prob: f64,
}

/// `value` rounded to a multiple of `divisor` as timm's `make_divisible` does: to the
/// nearest multiple, at least `divisor`, and one more if rounding lost over 10 %.
pub fn make_divisible(value: f64, divisor: usize) -> usize {
    let d = divisor.max(1);
    let mut v = (((value + d as f64 / 2.0) as usize) / d * d).max(d);
    if (v as f64) < 0.9 * value {
        v += d;
    }
    v
}

/// `linspace(start, 1, k)[i]`.
fn ramp(start: f64, stages: usize, i: usize) -> f64 {
    if stages <= 1 {
        1.0
    } else {
        start + (1.0 - start) * i as f64 / (stages - 1) as f64
    }
}

impl ScheduleConfig {
    /// The stages, first to last; the last is always the full model with full regularisation.
    pub fn stages(&self) -> Result<Vec<Stage>> {
        let bad = |msg: String| Err(Error::invalid("progressive schedule", msg));
        if self.stages == 0 {
            return bad("--stages 0: a schedule needs at least one stage".into());
        }
        if self.stages > self.epochs.max(1) {
            return bad(format!(
                "{} stages over {} epochs; a stage lasts at least an epoch, so pass --stages {} or fewer, or --epochs \
                    {} or more",
                self.stages,
                self.epochs,
                self.epochs.max(1),
                self.stages
            ));
        }
        for (name, v) in [("--res-scale", self.res_scale), ("--depth-scale", self.depth_scale)] {
            if !(v > 0.0 && v <= 1.0) {
                return bad(format!("{name} {v} must lie in (0, 1]"));
            }
        }
        let k = self.stages;
        Ok((0..k)
            .map(|i| Stage {
                start_epoch: i * self.epochs / k,
                resolution: make_divisible(ramp(self.res_scale, k, i) * self.resolution as f64, self.patch)
                    .min(self.resolution),
                depth: make_divisible(ramp(self.depth_scale, k, i) * self.depth as f64, 1).min(self.depth),
                // Truncated, as the official code's int().
                randaug_magnitude: (ramp(self.randaug_scale, k, i).max(0.0) * self.randaug_magnitude as f64) as u32,
                drop_path: (ramp(self.drop_path_scale, k, i) * self.drop_path).max(0.0),
                erase_prob: (ramp(self.erase_scale, k, i) * self.erase_prob).max(0.0),
                mix_prob: (ramp(self.mix_scale, k, i) * self.mix_prob).max(0.0),
            })
            .collect())
    }
}

/// The smallest random crop, as a fraction of the image's area, for a stage that trains at
/// `resolution` a model whose full resolution is `full`: the configured `min_scale`, or
/// `(resolution / full)²` if smaller. A crop of that area, resized to the stage's resolution,
/// shows an object as large in pixels per patch as the full resolution will, so growing the
/// resolution no longer shows the model sizes it has never seen.
pub fn stage_crop_scale(min_scale: f32, resolution: usize, full: usize) -> f32 {
    let zoom_to_full = (resolution as f32 / full.max(1) as f32).powi(2);
    min_scale.min(zoom_to_full)
}

/// The stage that epoch `epoch` belongs to.
pub fn stage_at(stages: &[Stage], epoch: usize) -> usize {
    stages.iter().rposition(|s| s.start_epoch <= epoch).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped AutoProg script: VOLO-D1, 100 epochs, 4 stages, r 224 from 0.5, depth 18
    /// from 0.5, RandAugment from 0.5 of m9, drop-path 0.1 and erasing 0.25 from 0.
    fn official() -> ScheduleConfig {
        ScheduleConfig {
            stages: 4,
            epochs: 100,
            resolution: 224,
            res_scale: 0.5,
            patch: 32,
            depth: 18,
            depth_scale: 0.5,
            randaug_magnitude: 9,
            drop_path: 0.1,
            erase_prob: 0.25,
            mix_prob: 0.0,
            randaug_scale: 0.5,
            drop_path_scale: 0.0,
            erase_scale: 0.0,
            mix_scale: 0.0,
        }
    }

    #[test]
    fn reproduces_the_official_schedule() {
        let stages = official().stages().unwrap();
        let pick = |f: fn(&Stage) -> f64| stages.iter().map(f).collect::<Vec<_>>();
        assert_eq!(pick(|s| s.start_epoch as f64), [0.0, 25.0, 50.0, 75.0]);
        assert_eq!(pick(|s| s.resolution as f64), [128.0, 160.0, 192.0, 224.0]);
        assert_eq!(pick(|s| s.depth as f64), [9.0, 12.0, 15.0, 18.0]);
        assert_eq!(pick(|s| s.randaug_magnitude as f64), [4.0, 6.0, 7.0, 9.0]);
        let dp = pick(|s| s.drop_path);
        assert!((dp[1] - 0.1 / 3.0).abs() < 1e-12 && dp[0] == 0.0 && (dp[3] - 0.1).abs() < 1e-12);
        assert!((stages[2].erase_prob - 0.25 * 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(stage_at(&stages, 0), 0);
        assert_eq!(stage_at(&stages, 49), 1);
        assert_eq!(stage_at(&stages, 99), 3);
    }

    #[test]
    fn small_models_round_to_the_patch_size() {
        // A 32 px nano model with 4 px patches: 16, 20 (rounded from 21.3), 28 (from 26.7), 32.
        let config = ScheduleConfig { resolution: 32, patch: 4, depth: 6, ..official() };
        let stages = config.stages().unwrap();
        assert_eq!(stages.iter().map(|s| s.resolution).collect::<Vec<_>>(), [16, 20, 28, 32]);
        assert_eq!(stages.iter().map(|s| s.depth).collect::<Vec<_>>(), [3, 4, 5, 6]);
        // Negative scales hold a regularisation at 0 for the first stages.
        let held = ScheduleConfig { drop_path_scale: -0.5, ..config }.stages().unwrap();
        assert_eq!(held[0].drop_path, 0.0);
        assert_eq!(held[1].drop_path, 0.0);
        assert!((held[2].drop_path - 0.05).abs() < 1e-12);
    }

    #[test]
    fn stage_crops_zoom_as_far_as_the_full_resolution() {
        // 16 of 24 px: a crop of 4/9 of the area, resized to 16 px, has the full 24 px scale.
        // (Within f32 rounding of the squared ratio.)
        assert!((stage_crop_scale(1.0, 16, 24) - 4.0 / 9.0).abs() < 1e-6);
        assert!((stage_crop_scale(1.0, 20, 24) - 25.0 / 36.0).abs() < 1e-6);
        // The full resolution adds no crops; crops configured stronger are kept.
        assert_eq!(stage_crop_scale(1.0, 24, 24), 1.0);
        assert_eq!(stage_crop_scale(0.35, 16, 24), 0.35);
    }

    #[test]
    fn make_divisible_matches_timm() {
        assert_eq!(make_divisible(112.0, 32), 128);
        assert_eq!(make_divisible(149.33, 32), 160);
        assert_eq!(make_divisible(3.0, 8), 8);
        assert_eq!(make_divisible(12.0, 1), 12);
        // Rounding down by more than 10 % goes one step up instead.
        assert_eq!(make_divisible(21.0, 16), 32);
    }

    #[test]
    fn bad_schedules_are_errors() {
        assert!(ScheduleConfig { stages: 0, ..official() }.stages().is_err());
        let err = ScheduleConfig { stages: 4, epochs: 3, ..official() }.stages().unwrap_err().to_string();
        assert!(err.contains("--stages 3 or fewer") && err.contains("--epochs 4 or more"), "{err}");
        let err = ScheduleConfig { res_scale: 0.0, ..official() }.stages().unwrap_err().to_string();
        assert!(err.contains("--res-scale"), "{err}");
    }
}
