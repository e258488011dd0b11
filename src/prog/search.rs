//! The one-shot search of a stage: which sub-networks (resolution, depth) are candidates,
//! and which one wins. Each candidate's loss is measured at several points of the search
//! and averaged (L̄), its step time T measured on the device; a power law L̄ = a·T^b is
//! fitted over the candidates and the winner minimises L̄·T^max(−b, 0): the candidate
//! furthest below the loss-for-time trend.

use serde::{Deserialize, Serialize};

use crate::prog::schedule::Stage;
use crate::{Error, Result};

/// A sub-network of the supernet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub resolution: usize,
    pub depth: usize,
}

impl Candidate {
    /// A short name such as `r32_l6` (the viewer's `search-winner`).
    pub fn name(&self) -> String {
        format!("r{}_l{}", self.resolution, self.depth)
    }
}

/// Distinct values in ascending order.
pub fn levels(values: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut v: Vec<usize> = values.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The candidates of the search at the start of stage `stage` (not the last) as the
/// official code forms them. Stage 0: the first, middle and last resolutions × the first,
/// middle and last depths of the schedule (9 candidates). Later stages: the current and
/// the next resolution × up to three depth levels above the current one (growth by at
/// least one level), at most twice the current depth.
pub fn candidates(stages: &[Stage], stage: usize, current: Candidate) -> Result<Vec<Candidate>> {
    if stage + 1 >= stages.len() {
        return Err(Error::invalid(
            "search",
            format!("stage {stage} of {} is the last; the last stage always trains the full model", stages.len()),
        ));
    }
    let resolutions = levels(stages.iter().map(|s| s.resolution));
    let depths = levels(stages.iter().map(|s| s.depth));
    let (rs, ls): (Vec<usize>, Vec<usize>) = if stage == 0 {
        // First, middle (index K/2) and last stage's values.
        let pick = |value: fn(&Stage) -> usize| {
            levels([&stages[0], &stages[stages.len() / 2], &stages[stages.len() - 1]].into_iter().map(value))
        };
        (pick(|s| s.resolution), pick(|s| s.depth))
    } else {
        let next_res = resolutions.iter().copied().find(|&r| r > current.resolution).unwrap_or(current.resolution);
        let above: Vec<usize> =
            depths.iter().copied().filter(|&l| l > current.depth && l <= 2 * current.depth).take(3).collect();
        let ls = if above.is_empty() { vec![current.depth] } else { above };
        (levels([current.resolution, next_res].into_iter()), ls)
    };
    Ok(rs.iter().flat_map(|&resolution| ls.iter().map(move |&depth| Candidate { resolution, depth })).collect())
}

/// A power law `loss = a · time^b`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerLaw {
    pub a: f64,
    pub b: f64,
}

/// Least-squares fit of `log loss = log a + b log time` over the points. The official code
/// fits in linear space with scipy's curve_fit; the log-space fit is closed-form, needs no
/// starting point and weighs every candidate's relative error alike. With fewer than two
/// distinct times the slope is 0 (no trend to correct for).
pub fn fit_power_law(times: &[f64], losses: &[f64]) -> Result<PowerLaw> {
    if times.len() != losses.len() || times.is_empty() {
        return Err(Error::invalid("power-law fit", format!("{} times for {} losses", times.len(), losses.len())));
    }
    if let Some(bad) = times.iter().chain(losses).find(|v| !(v.is_finite() && **v > 0.0)) {
        return Err(Error::invalid(
            "power-law fit",
            format!("{bad} among the step times and losses; every one must be finite and positive"),
        ));
    }
    let n = times.len() as f64;
    let x: Vec<f64> = times.iter().map(|t| t.ln()).collect();
    let y: Vec<f64> = losses.iter().map(|l| l.ln()).collect();
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
    let sxy: f64 = x.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let b = if sxx > 1e-12 * n { sxy / sxx } else { 0.0 };
    Ok(PowerLaw { a: (my - b * mx).exp(), b })
}

/// The outcome of a search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub fit: PowerLaw,
    /// The exponent on time in the score, max(−b, 0).
    pub w: f64,
    /// L̄ · T^w per candidate, in the order given.
    pub scores: Vec<f64>,
    /// Index of the smallest score.
    pub winner: usize,
}

/// Scores every candidate from its mean loss `losses[i]` and step time `times[i]` and
/// picks the smallest score (ties: the earlier candidate).
pub fn select(times: &[f64], losses: &[f64]) -> Result<Selection> {
    let fit = fit_power_law(times, losses)?;
    let w = (-fit.b).max(0.0);
    let scores: Vec<f64> = losses.iter().zip(times).map(|(l, t)| l * t.powf(w)).collect();
    let winner = scores.iter().enumerate().fold(0, |best, (i, s)| if *s < scores[best] { i } else { best });
    Ok(Selection { fit, w, scores, winner })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prog::schedule::ScheduleConfig;

    fn nano_stages() -> Vec<Stage> {
        ScheduleConfig {
            stages: 4,
            epochs: 40,
            resolution: 32,
            res_scale: 0.5,
            patch: 4,
            depth: 6,
            depth_scale: 0.5,
            randaug_magnitude: 9,
            drop_path: 0.1,
            erase_prob: 0.25,
            mix_prob: 0.5,
            randaug_scale: 0.5,
            drop_path_scale: 0.0,
            erase_scale: 0.0,
            mix_scale: 0.0,
        }
        .stages()
        .unwrap()
    }

    #[test]
    fn candidate_sets_follow_the_official_rules() {
        let stages = nano_stages(); // r 16, 20, 28, 32; depth 3, 4, 5, 6
        let first = candidates(&stages, 0, Candidate { resolution: 16, depth: 3 }).unwrap();
        let names: Vec<String> = first.iter().map(Candidate::name).collect();
        assert_eq!(names, ["r16_l3", "r16_l5", "r16_l6", "r28_l3", "r28_l5", "r28_l6", "r32_l3", "r32_l5", "r32_l6"]);
        // Later: current and next resolution, up to three deeper levels within 2x.
        let later = candidates(&stages, 1, Candidate { resolution: 20, depth: 4 }).unwrap();
        let names: Vec<String> = later.iter().map(Candidate::name).collect();
        assert_eq!(names, ["r20_l5", "r20_l6", "r28_l5", "r28_l6"]);
        let capped = candidates(&stages, 2, Candidate { resolution: 32, depth: 6 }).unwrap();
        assert_eq!(capped, [Candidate { resolution: 32, depth: 6 }]);
        assert!(candidates(&stages, 3, Candidate { resolution: 32, depth: 6 }).is_err());
    }

    #[test]
    fn power_law_fit_recovers_a_and_b() {
        let times = [1.0, 2.0, 4.0, 8.0];
        let losses: Vec<f64> = times.iter().map(|t: &f64| 3.0 * t.powf(-0.4)).collect();
        let fit = fit_power_law(&times, &losses).unwrap();
        assert!((fit.a - 3.0).abs() < 1e-9 && (fit.b + 0.4).abs() < 1e-12, "{fit:?}");
        // One distinct time: no slope.
        assert_eq!(fit_power_law(&[2.0, 2.0], &[1.0, 3.0]).unwrap().b, 0.0);
        assert!(fit_power_law(&[1.0, 0.0], &[1.0, 1.0]).is_err());
        assert!(fit_power_law(&[1.0, 2.0], &[1.0, f64::NAN]).is_err());
    }

    #[test]
    fn the_winner_sits_furthest_below_the_trend() {
        // On the trend L = 2 T^-0.5 every score is ~2; the third point is 10 % below it.
        let times = [1.0, 4.0, 9.0, 16.0];
        let mut losses: Vec<f64> = times.iter().map(|t: &f64| 2.0 / t.sqrt()).collect();
        losses[2] *= 0.9;
        let s = select(&times, &losses).unwrap();
        assert_eq!(s.winner, 2);
        assert!(s.w > 0.4 && s.w < 0.6, "{s:?}");
        // Loss rising with time (b > 0): w = 0 and the lowest loss wins.
        let s = select(&[1.0, 2.0, 3.0], &[0.9, 1.5, 1.6]).unwrap();
        assert!(s.fit.b > 0.0);
        assert_eq!((s.w, s.winner), (0.0, 0));
    }
}
