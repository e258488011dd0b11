//! The one-shot search of a stage: which sub-networks (resolution, depth) are candidates,
//! and which one wins. Each candidate's loss is measured at several points of the search
//! and averaged (L̄), its step time T measured on the device; a power law L̄ = a·T^b is
//! fitted over the candidates and the smallest L̄·T^max(−b, 0) marks the candidate furthest
//! below the loss-for-time trend; the cheapest candidate within the evaluation noise of it
//! wins.

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

/// Which depths a later stage's search offers (see [`candidates`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DepthGrowth {
    /// From the `prog` schedule's depth for the stage (or the current one, if deeper).
    #[default]
    Schedule,
    /// At least one level deeper than now, as the official code.
    Always,
}

/// Which candidates a search offers, and how it chooses among them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SearchSpace {
    /// Around the `prog` schedule ([`candidates_around`]): its network for the stage (the
    /// anchor), one level above it in resolution and one below and above in depth; the
    /// anchor wins unless another candidate scores better beyond the noise ([`select`] with
    /// an anchor).
    #[default]
    Anchored,
    /// As the official code ([`candidates`], shaped by `max_res_lag` and [`DepthGrowth`]):
    /// the cheapest candidate within the noise of the smallest score wins.
    Official,
}

/// The candidates of a [`SearchSpace::Anchored`] search at the start of stage `stage` (not
/// the last), and the anchor among them: the `prog` schedule's network for the stage, or
/// the current resolution or depth where that is already larger. Around it, the next
/// higher level of the schedule's resolutions, and the next lower and higher level of its
/// depths, never below the current depth (a model does not shrink) nor deeper than twice
/// it (MoGrow at most doubles it). No resolution below the anchor's: a search compares the
/// resolution the model trained at for a whole stage with ones it met only in the search,
/// so a lower one wins on familiarity, and the last stage's forced jump to the full
/// resolution then costs accuracy (docs/decisions.md, "Searches around the schedule").
/// The depths are centred on the anchor wherever the current depth allows, so a cheaper
/// network than `prog`'s is on offer: the search can make a run faster than `prog`, not
/// only slower.
pub fn candidates_around(stages: &[Stage], stage: usize, current: Candidate) -> Result<(Vec<Candidate>, Candidate)> {
    if stage + 1 >= stages.len() {
        return Err(Error::invalid(
            "search",
            format!("stage {stage} of {} is the last; the last stage always trains the full model", stages.len()),
        ));
    }
    let anchor = Candidate {
        resolution: stages[stage].resolution.max(current.resolution),
        depth: stages[stage].depth.max(current.depth),
    };
    // The level below, at and above `centre` among `all`, none below `floor` or above `ceiling`.
    let around = |all: Vec<usize>, centre: usize, floor: usize, ceiling: usize| -> Vec<usize> {
        let below = all.iter().copied().filter(|&v| v < centre && v >= floor).max();
        let above = all.iter().copied().filter(|&v| v > centre && v <= ceiling).min();
        below.into_iter().chain([centre]).chain(above).collect()
    };
    // The resolutions' floor is the anchor's own: no level below it is offered.
    let rs = around(levels(stages.iter().map(|s| s.resolution)), anchor.resolution, anchor.resolution, usize::MAX);
    let ls = around(levels(stages.iter().map(|s| s.depth)), anchor.depth, current.depth, 2 * current.depth);
    let offered = rs.iter().flat_map(|&resolution| ls.iter().map(move |&depth| Candidate { resolution, depth }));
    Ok((offered.collect(), anchor))
}

/// The candidates of the search at the start of stage `stage` (not the last) as the
/// official code forms them ([`SearchSpace::Official`]). Stage 0: the first, middle and
/// last resolutions × the first, middle and last depths of the schedule (9 candidates). Later stages: the current and
/// the next resolution × up to three depth levels above the current one (growth by at
/// least one level), at most twice the current depth.
///
/// Two departures, both bounded by the manual (`prog`) schedule:
/// - `max_res_lag`: a later stage's resolution may trail the schedule by at most that many
///   stages (the official code: unbounded). A search compares the current resolution,
///   trained for a whole stage, with the next, trained only during the search, so it keeps
///   choosing the current one; the last stage must then jump to the full resolution at
///   once, which costs accuracy (docs/decisions.md, `max_res_lag`). So the candidates start
///   no lower than the schedule's resolution `max_res_lag` stages before this one (0: this
///   stage's own); a current resolution below that is not offered.
/// - [`DepthGrowth::Schedule`]: the depth levels start at the schedule's depth for this
///   stage, or the current depth where that is deeper, so a search decides *whether* to
///   grow (as the paper describes it) instead of always adding a level (the code). Without
///   it a stage that the schedule leaves at its depth is forced deeper than `prog` trains
///   it, and `auto` can never be as cheap as `prog`.
pub fn candidates(
    stages: &[Stage],
    stage: usize,
    current: Candidate,
    max_res_lag: usize,
    depth_growth: DepthGrowth,
) -> Result<Vec<Candidate>> {
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
        let floor = stages[stage.saturating_sub(max_res_lag)].resolution;
        let low = current.resolution.max(floor);
        let next_res = resolutions.iter().copied().find(|&r| r > low).unwrap_or(low);
        // The shallowest depth offered, and the one kept when no level lies in range.
        let (shallowest, kept) = match depth_growth {
            DepthGrowth::Always => (current.depth + 1, current.depth),
            DepthGrowth::Schedule => {
                let floor = current.depth.max(stages[stage].depth);
                (floor, floor)
            }
        };
        let deepest = (2 * current.depth).max(kept);
        let ls: Vec<usize> = depths.iter().copied().filter(|&l| l >= shallowest && l <= deepest).take(3).collect();
        let ls = if ls.is_empty() { vec![kept] } else { ls };
        (levels([low, next_res].into_iter()), ls)
    };
    Ok(rs.iter().flat_map(|&resolution| ls.iter().map(move |&depth| Candidate { resolution, depth })).collect())
}

/// The candidate a search would choose before it measures anything, if there is one: the
/// only candidate, or of two, the `anchor` where there is one, else the cheaper (by
/// `cost`, e.g. FLOPs per step). With two candidates the power law passes through both
/// points, so both score exactly `a`: neither beats the anchor, and without one they tie
/// and [`select`] takes the cheaper, whatever the losses. The official rule's argmin
/// between the two equal scores is decided by rounding. Either way the supernet training
/// would buy no decision, so the stage trains the foregone winner from its start.
pub fn foregone(
    candidates: &[Candidate],
    anchor: Option<Candidate>,
    cost: impl Fn(Candidate) -> f64,
) -> Option<Candidate> {
    match (candidates, anchor) {
        ([only], _) => Some(*only),
        ([_, _], Some(anchor)) => Some(anchor),
        ([a, b], None) => Some(if cost(*b) < cost(*a) { *b } else { *a }),
        _ => None,
    }
}

/// A power law `loss = a · time^b`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerLaw {
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub a: f64,
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
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
    /// Index of the smallest score (the official winner).
    pub lowest_score: usize,
    /// Index of the chosen candidate (see [`select`]).
    pub winner: usize,
}

/// How many standard errors of the paired difference a candidate's score may lie above
/// another's before it counts as worse: about a one-sided 95 % test for the 4–5 evaluation
/// points of a search.
pub const TIE_STANDARD_ERRORS: f64 = 2.0;

/// Scores every candidate from its held-back losses at each evaluation point
/// (`losses[i]`, L̄ their mean) and its step time `times[i]`, and picks the winner.
///
/// The official rule takes the smallest L̄·T^w. Early in training, or when a stage's
/// candidates differ little, the losses lie within their noise and the fitted trend is
/// flat or rising (w = 0): the rule then picks a costlier candidate on a loss that is lower
/// by chance (docs/decisions.md, "Ties in the search's choice"). So a candidate's score
/// counts as above another's only where their per-point scores differ, on average, by
/// more than [`TIE_STANDARD_ERRORS`] standard errors of that paired difference (with a
/// single evaluation point there is no noise estimate, and only the smallest score counts
/// as not above).
///
/// Without an `anchor` the cheapest candidate whose score is not above the smallest wins.
/// With one, the anchor wins unless some candidates score below it beyond the noise; then
/// the same rule picks among those. A search around the `prog` schedule thus departs from
/// the schedule's network only on evidence, in either direction.
pub fn select(times: &[f64], losses: &[Vec<f64>], anchor: Option<usize>) -> Result<Selection> {
    if let Some(empty) = losses.iter().position(Vec::is_empty) {
        return Err(Error::invalid("search", format!("candidate {empty} has no evaluation point")));
    }
    if let Some(a) = anchor.filter(|&a| a >= times.len()) {
        return Err(Error::invalid("search", format!("anchor {a} of {} candidates", times.len())));
    }
    let means: Vec<f64> = losses.iter().map(|l| l.iter().sum::<f64>() / l.len() as f64).collect();
    let fit = fit_power_law(times, &means)?;
    let w = (-fit.b).max(0.0);
    let scores: Vec<f64> = means.iter().zip(times).map(|(l, t)| l * t.powf(w)).collect();
    let lowest =
        |pool: &[usize]| pool.iter().copied().reduce(|best, i| if scores[i] < scores[best] { i } else { best });
    let all: Vec<usize> = (0..times.len()).collect();
    let lowest_score = lowest(&all).expect("at least one candidate");
    let per_point = |i: usize| -> Vec<f64> { losses[i].iter().map(|l| l * times[i].powf(w)).collect() };
    // Whether candidate i's score lies above j's beyond the noise (None: no noise estimate).
    let above = |i: usize, j: usize| -> Option<bool> {
        let d: Vec<f64> = per_point(i).iter().zip(per_point(j)).map(|(a, b)| a - b).collect();
        if d.len() < 2 || losses[i].len() != losses[j].len() {
            return None;
        }
        let n = d.len() as f64;
        let mean = d.iter().sum::<f64>() / n;
        let sd = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        Some(mean > TIE_STANDARD_ERRORS * sd / n.sqrt())
    };
    // The cheapest of `pool` whose score is not above the pool's smallest.
    let cheapest_tied = |pool: &[usize]| -> Option<usize> {
        let best = lowest(pool)?;
        pool.iter()
            .copied()
            .filter(|&i| above(i, best).map_or(i == best, |above| !above))
            .min_by(|&a, &b| times[a].total_cmp(&times[b]).then(scores[a].total_cmp(&scores[b])))
    };
    let winner = match anchor {
        None => cheapest_tied(&all).unwrap_or(lowest_score),
        Some(anchor) => {
            let better: Vec<usize> = all.iter().copied().filter(|&i| above(anchor, i) == Some(true)).collect();
            cheapest_tied(&better).unwrap_or(anchor)
        }
    };
    Ok(Selection { fit, w, scores, lowest_score, winner })
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
        let first =
            candidates(&stages, 0, Candidate { resolution: 16, depth: 3 }, usize::MAX, DepthGrowth::Always).unwrap();
        let names: Vec<String> = first.iter().map(Candidate::name).collect();
        assert_eq!(names, ["r16_l3", "r16_l5", "r16_l6", "r28_l3", "r28_l5", "r28_l6", "r32_l3", "r32_l5", "r32_l6"]);
        // Later: current and next resolution, up to three deeper levels within 2x.
        let later =
            candidates(&stages, 1, Candidate { resolution: 20, depth: 4 }, usize::MAX, DepthGrowth::Always).unwrap();
        let names: Vec<String> = later.iter().map(Candidate::name).collect();
        assert_eq!(names, ["r20_l5", "r20_l6", "r28_l5", "r28_l6"]);
        let capped =
            candidates(&stages, 2, Candidate { resolution: 32, depth: 6 }, usize::MAX, DepthGrowth::Always).unwrap();
        assert_eq!(capped, [Candidate { resolution: 32, depth: 6 }]);
        assert!(
            candidates(&stages, 3, Candidate { resolution: 32, depth: 6 }, usize::MAX, DepthGrowth::Always).is_err()
        );
    }

    #[test]
    fn the_resolution_trails_the_schedule_by_at_most_the_lag() {
        let stages = nano_stages(); // r 16, 20, 28, 32
        let names = |stage, resolution, lag| {
            candidates(&stages, stage, Candidate { resolution, depth: 4 }, lag, DepthGrowth::Always)
                .unwrap()
                .iter()
                .map(|c| format!("r{}", c.resolution))
                .collect::<Vec<_>>()
        };
        // Stage 2 after staying at 16 px: unbounded, 16 or 20; one stage behind the
        // schedule (its 20 px at stage 1), 20 or 28; no lag, 28 or 32.
        assert_eq!(levels_of(names(2, 16, usize::MAX)), ["r16", "r20"]);
        assert_eq!(levels_of(names(2, 16, 1)), ["r20", "r28"]);
        assert_eq!(levels_of(names(2, 16, 0)), ["r28", "r32"]);
        // A resolution ahead of the schedule is never pulled back.
        assert_eq!(levels_of(names(1, 28, 0)), ["r28", "r32"]);
        // Stage 0 offers its three levels whatever the lag.
        assert_eq!(levels_of(names(0, 16, 0)), ["r16", "r28", "r32"]);
    }

    #[test]
    fn a_search_may_keep_the_depth_the_schedule_keeps() {
        let stages = nano_stages(); // depth 3, 4, 5, 6
        let depths = |stage, depth, growth| {
            let mut d: Vec<usize> = candidates(&stages, stage, Candidate { resolution: 20, depth }, 0, growth)
                .unwrap()
                .iter()
                .map(|c| c.depth)
                .collect();
            d.sort_unstable();
            d.dedup();
            d
        };
        // Ahead of the schedule (5 blocks where stage 1 has 4): the official rule must grow,
        // the schedule rule may keep 5.
        assert_eq!(depths(1, 5, DepthGrowth::Always), [6]);
        assert_eq!(depths(1, 5, DepthGrowth::Schedule), [5, 6]);
        // Behind it: both start at the schedule's 4 (up to three levels).
        assert_eq!(depths(1, 3, DepthGrowth::Always), [4, 5, 6]);
        assert_eq!(depths(1, 3, DepthGrowth::Schedule), [4, 5, 6]);
        // At it (stage 2 has 5): the schedule rule offers keeping it.
        assert_eq!(depths(2, 5, DepthGrowth::Schedule), [5, 6]);
        // Stage 0 is the same 3 × 3 under both.
        assert_eq!(
            candidates(&stages, 0, Candidate { resolution: 16, depth: 3 }, 0, DepthGrowth::Schedule).unwrap(),
            candidates(&stages, 0, Candidate { resolution: 16, depth: 3 }, 0, DepthGrowth::Always).unwrap()
        );
        let unknown = serde_json::from_str::<DepthGrowth>("\"sometimes\"").unwrap_err().to_string();
        assert!(
            unknown.contains("sometimes") && unknown.contains("schedule") && unknown.contains("always"),
            "{unknown}"
        );
    }

    fn levels_of(mut names: Vec<String>) -> Vec<String> {
        names.dedup();
        names
    }

    #[test]
    fn two_candidates_are_decided_before_any_search() {
        let (r20, r24) = (Candidate { resolution: 20, depth: 6 }, Candidate { resolution: 24, depth: 6 });
        let tokens = |c: Candidate| (c.resolution * c.resolution) as f64;
        assert_eq!(foregone(&[r24, r20], None, tokens), Some(r20));
        assert_eq!(foregone(&[r20, r24], Some(r24), tokens), Some(r24), "the anchor, when there is one");
        assert_eq!(foregone(&[r24], None, tokens), Some(r24));
        assert_eq!(foregone(&[r20, r24, Candidate { resolution: 20, depth: 5 }], Some(r20), tokens), None);
        // What the search would have found: the cheaper wins whatever the losses. Where the
        // costlier has the lower loss, the fitted power law passes through both points and
        // both score exactly a; where it has the higher loss, w = 0 and the lower loss wins.
        for losses in [[0.452, 0.405], [1.0, 0.5], [0.40, 0.45]] {
            let s = select(&[173.0, 255.0], &[vec![losses[0]; 3], vec![losses[1]; 3]], None).unwrap();
            if losses[1] < losses[0] {
                assert!((s.scores[0] - s.scores[1]).abs() < 1e-9 * s.scores[0], "{s:?}");
            }
            assert_eq!(s.winner, 0, "{losses:?}");
        }
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

    /// Evaluation points falling along a curve, the same for every candidate, shifted by
    /// each candidate's level (the shape a search's losses have).
    fn series(levels: &[f64], jitter: &[f64]) -> Vec<Vec<f64>> {
        levels.iter().map(|l| [1.2, 1.1, 1.05, 1.0].iter().zip(jitter).map(|(c, j)| l * c + j).collect()).collect()
    }

    #[test]
    fn the_winner_sits_furthest_below_the_trend() {
        // On the trend L = 2 T^-0.5 every score is ~2; the third point is 10 % below it.
        let times = [1.0, 4.0, 9.0, 16.0];
        let mut levels: Vec<f64> = times.iter().map(|t: &f64| 2.0 / t.sqrt()).collect();
        levels[2] *= 0.9;
        let s = select(&times, &series(&levels, &[0.0; 4]), None).unwrap();
        assert_eq!((s.lowest_score, s.winner), (2, 2));
        assert!(s.w > 0.4 && s.w < 0.6, "{s:?}");
        // Loss rising with time (b > 0): w = 0 and the lowest loss wins.
        let s = select(&[1.0, 2.0, 3.0], &series(&[0.9, 1.5, 1.6], &[0.0; 4]), None).unwrap();
        assert!(s.fit.b > 0.0);
        assert_eq!((s.w, s.winner), (0.0, 0));
    }

    #[test]
    fn a_search_around_the_schedule_offers_a_level_either_side_of_its_depth_and_above_its_resolution() {
        let stages = nano_stages(); // r 16, 20, 28, 32; depth 3, 4, 5, 6
        let around = |stage, resolution, depth| {
            let (offered, anchor) = candidates_around(&stages, stage, Candidate { resolution, depth }).unwrap();
            (offered.iter().map(Candidate::name).collect::<Vec<_>>(), anchor.name())
        };
        // Stage 0 starts at the schedule's smallest network: nothing lies below it.
        let (offered, anchor) = around(0, 16, 3);
        assert_eq!(
            (offered, anchor),
            (["r16_l3", "r16_l4", "r20_l3", "r20_l4"].map(String::from).to_vec(), "r16_l3".into())
        );
        // Stage 1 from stage 0's network: the current depth below the anchor's, and the
        // levels above it; the current 16 px is not offered (a resolution never trails the
        // schedule's).
        let (offered, anchor) = around(1, 16, 3);
        assert_eq!(anchor, "r20_l4");
        assert_eq!(offered, ["r20_l3", "r20_l4", "r20_l5", "r28_l3", "r28_l4", "r28_l5"]);
        // Ahead of the schedule, the current network is the anchor and nothing lies below.
        let (offered, anchor) = around(1, 28, 5);
        assert_eq!(
            (offered, anchor),
            (["r28_l5", "r28_l6", "r32_l5", "r32_l6"].map(String::from).to_vec(), "r28_l5".into())
        );
        // Behind it (still 16 px and 3 blocks at stage 2, as a resumed older run can be):
        // the schedule's resolution and the next, the depths one either side of its.
        let (offered, anchor) = around(2, 16, 3);
        assert_eq!(anchor, "r28_l5");
        assert_eq!(levels(offered.iter().map(|n| n[1..3].parse::<usize>().unwrap())), [28, 32]);
        assert_eq!(levels(offered.iter().map(|n| n[5..].parse::<usize>().unwrap())), [4, 5, 6]);
        // MoGrow at most doubles the depth: from 2 blocks, 5 is out of reach.
        let shallow: Vec<Stage> = stages.iter().map(|s| Stage { depth: s.depth - 1, ..*s }).collect();
        let (offered, anchor) = candidates_around(&shallow, 1, Candidate { resolution: 16, depth: 2 }).unwrap();
        assert_eq!(anchor, Candidate { resolution: 20, depth: 3 });
        assert_eq!(levels(offered.iter().map(|c| c.depth)), [2, 3, 4]);
        let (offered, _) = candidates_around(&shallow, 2, Candidate { resolution: 16, depth: 2 }).unwrap();
        assert_eq!(levels(offered.iter().map(|c| c.depth)), [3, 4], "5 is more than twice 2");
        assert!(candidates_around(&stages, 3, Candidate { resolution: 32, depth: 6 }).is_err());
    }

    #[test]
    fn an_anchored_search_departs_from_the_anchor_only_beyond_the_noise() {
        let times = [1.0, 2.0, 3.0];
        // All alike: without an anchor the cheapest wins; with one, the anchor.
        let alike = series(&[1.0, 1.0, 1.0], &[0.0, 0.01, -0.01, 0.0]);
        assert_eq!(select(&times, &alike, None).unwrap().winner, 0);
        assert_eq!(select(&times, &alike, Some(1)).unwrap().winner, 1);
        // A cheaper candidate 10 % below the anchor at every point wins; so does a costlier one.
        assert_eq!(select(&times, &series(&[0.9, 1.0, 1.0], &[0.0; 4]), Some(1)).unwrap().winner, 0);
        assert_eq!(select(&times, &series(&[1.0, 1.0, 0.8], &[0.0; 4]), Some(1)).unwrap().winner, 2);
        // Both below it: the rule picks among those two (the costlier is well below the cheaper).
        let s = select(&times, &series(&[0.9, 1.0, 0.6], &[0.0; 4]), Some(1)).unwrap();
        assert_eq!((s.winner, s.lowest_score), (2, 2), "{s:?}");
        // Lower by 1 % on average but flipping sign between points: noise, the anchor stays.
        let mut flips = series(&[1.0, 1.0, 1.0], &[0.0; 4]);
        flips[0] = flips[1].iter().zip([-0.05, 0.03, -0.05, 0.03]).map(|(l, j)| l + j).collect();
        assert_eq!(select(&times, &flips, Some(1)).unwrap().winner, 1);
        // One evaluation point: no noise estimate, nothing departs.
        let single = vec![vec![0.5], vec![1.0], vec![0.9]];
        assert_eq!(select(&times, &single, Some(1)).unwrap().winner, 1);
        assert_eq!(select(&times, &single, None).unwrap().winner, 0);
        assert!(select(&times, &single, Some(3)).is_err());
    }

    #[test]
    fn a_costlier_candidate_must_beat_the_noise() {
        // The second search of a digits run (r28/r32 × 4/5/6 blocks; losses at five points,
        // step times in ms). The loss rises with time (w = 0), and the lowest mean loss,
        // r32_l4's, is 0.3 % below r28_l4's with the sign flipping between points: a tie,
        // and the cheaper r28_l4 wins. r28_l5 is higher at four of five points: no tie.
        let mut losses = vec![
            vec![0.431, 0.417, 0.410, 0.408, 0.392],
            vec![0.450, 0.429, 0.416, 0.405, 0.383],
            vec![0.487, 0.461, 0.434, 0.420, 0.396],
            vec![0.431, 0.420, 0.407, 0.400, 0.385],
            vec![0.459, 0.438, 0.420, 0.405, 0.383],
            vec![0.539, 0.501, 0.463, 0.438, 0.413],
        ];
        let times = [244.0, 289.0, 355.0, 445.0, 391.0, 609.0];
        let s = select(&times, &losses, None).unwrap();
        assert_eq!((s.w, s.lowest_score, s.winner), (0.0, 3, 0), "{s:?}");
        // r32_l4 lower by 2.5 % at every point: a real difference, and it wins.
        losses[3] = losses[0].iter().map(|l| l - 0.01).collect();
        let s = select(&times, &losses, None).unwrap();
        assert_eq!((s.lowest_score, s.winner), (3, 3), "{s:?}");
        // One evaluation point each: no noise estimate, the smallest score wins.
        let single: Vec<Vec<f64>> = losses.iter().map(|l| vec![l[4]]).collect();
        let s = select(&times, &single, None).unwrap();
        assert_eq!(s.winner, s.lowest_score);
        assert!(select(&times[..2], &[vec![0.41], vec![]], None).is_err());
    }
}
