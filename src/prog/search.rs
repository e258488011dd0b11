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
    /// anchor) and one level below and above it in resolution and in depth; the anchor wins
    /// unless another candidate scores better beyond the noise ([`Rule::KeepAnchor`]).
    Anchored,
    /// The candidates of [`SearchSpace::Anchored`] at or below the anchor in resolution and
    /// in depth, and the cheapest that scores no worse than the anchor beyond the noise wins,
    /// unless some score better than it beyond the noise ([`Rule::UndercutAnchor`]): the
    /// schedule's network is the most a stage spends, and the bar a cheaper one must clear.
    /// A stage whose anchor is the smallest network on offer (stage 0) opens without a
    /// search, and the supernet never trains sub-networks larger than the schedule's.
    #[default]
    Thrifty,
    /// As the official code ([`candidates`], shaped by `max_res_lag` and [`DepthGrowth`]):
    /// the cheapest candidate within the noise of the smallest score wins.
    Official,
}

impl SearchSpace {
    /// The candidates of this space's search at the start of stage `stage` (not the last),
    /// and the anchor among them where the space has one.
    pub fn offered(
        self,
        stages: &[Stage],
        stage: usize,
        current: Candidate,
        max_res_lag: usize,
        depth_growth: DepthGrowth,
    ) -> Result<(Vec<Candidate>, Option<Candidate>)> {
        match self {
            SearchSpace::Official => Ok((candidates(stages, stage, current, max_res_lag, depth_growth)?, None)),
            SearchSpace::Anchored => candidates_around(stages, stage, current, max_res_lag).map(|(c, a)| (c, Some(a))),
            SearchSpace::Thrifty => {
                let (mut offered, anchor) = candidates_around(stages, stage, current, max_res_lag)?;
                offered.retain(|c| c.resolution <= anchor.resolution && c.depth <= anchor.depth);
                Ok((offered, Some(anchor)))
            }
        }
    }

    /// How this space's search chooses, given the anchor's index among the candidates.
    pub fn rule(self, anchor: Option<usize>) -> Rule {
        match (self, anchor) {
            (SearchSpace::Anchored, Some(a)) => Rule::KeepAnchor(a),
            (SearchSpace::Thrifty, Some(a)) => Rule::UndercutAnchor(a),
            _ => Rule::Cheapest,
        }
    }
}

/// How [`select`] picks among the scored candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The cheapest candidate whose score is not above the smallest.
    Cheapest,
    /// The anchor (its index), unless some candidates score below it beyond the noise;
    /// then [`Rule::Cheapest`] among those.
    KeepAnchor(usize),
    /// As [`Rule::KeepAnchor`] where some score below the anchor beyond the noise; else the
    /// cheapest candidate whose score is not above the anchor's beyond the noise.
    UndercutAnchor(usize),
}

/// The candidates of a [`SearchSpace::Anchored`] search at the start of stage `stage` (not
/// the last), and the anchor among them: the `prog` schedule's network for the stage, or
/// the current resolution or depth where that is already larger. Around it, the next
/// lower and higher level of the schedule's resolutions and of its depths, never below the
/// current depth (a model does not shrink) nor deeper than twice it (MoGrow at most
/// doubles it). The resolution never drops below the current one, nor trails the
/// schedule's by more than `max_res_lag` stages: with 0 nothing below the anchor's is
/// offered. A search compares the resolution the model trained at for a whole stage with
/// ones it met only in the search, so a lower one wins on familiarity; without stage crops
/// the last stage's forced jump to the full resolution then cost accuracy
/// (docs/decisions.md, "Searches around the schedule" and "Stage crops").
/// The levels are centred on the anchor wherever the current network allows, so a cheaper
/// network than `prog`'s is on offer: the search can make a run faster than `prog`, not
/// only slower.
pub fn candidates_around(
    stages: &[Stage],
    stage: usize,
    current: Candidate,
    max_res_lag: usize,
) -> Result<(Vec<Candidate>, Candidate)> {
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
    // With no lag the floor is the anchor's own resolution: no level below it is offered.
    let res_floor = current.resolution.max(stages[stage.saturating_sub(max_res_lag)].resolution);
    let rs = around(levels(stages.iter().map(|s| s.resolution)), anchor.resolution, res_floor, usize::MAX);
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
    /// Which branch of the rule chose it.
    pub verdict: Verdict,
}

/// Which branch of [`select`]'s [`Rule`] chose the winner, so that a log can say why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No anchor: the cheapest candidate whose score is not above the lowest beyond the noise.
    CheapestTied,
    /// The anchor stays: no candidate scores below it beyond the noise (and, under
    /// [`Rule::UndercutAnchor`], no cheaper one scores no worse than it).
    AnchorKept,
    /// Some candidates score below the anchor beyond the noise: the cheapest of them whose
    /// score is not above their lowest beyond the noise.
    BelowAnchor,
    /// [`Rule::UndercutAnchor`] with none below the anchor beyond the noise: the cheapest
    /// candidate whose score is not above the anchor's beyond the noise.
    NotWorseThanAnchor,
}

impl Verdict {
    /// Why the winner won, in a few words, for a run's progress lines (`anchor`: the name
    /// of the schedule's network).
    pub fn reason(self, anchor: Option<&str>) -> String {
        let anchor = anchor.unwrap_or("anchor");
        match self {
            Verdict::CheapestTied => "the cheapest within the noise of the lowest score".into(),
            Verdict::AnchorKept => format!("the schedule's {anchor}, which no candidate beat beyond the noise"),
            Verdict::BelowAnchor => format!("scored below the schedule's {anchor} beyond the noise"),
            Verdict::NotWorseThanAnchor => {
                format!("the cheapest that scored no worse than the schedule's {anchor} beyond the noise")
            }
        }
    }
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
/// The [`Rule`] decides what wins. [`Rule::KeepAnchor`] departs from the `prog` schedule's
/// network only on evidence, in either direction; [`Rule::UndercutAnchor`] also departs to a
/// cheaper network that the evidence does not put behind it.
pub fn select(times: &[f64], losses: &[Vec<f64>], rule: Rule) -> Result<Selection> {
    if let Some(empty) = losses.iter().position(Vec::is_empty) {
        return Err(Error::invalid("search", format!("candidate {empty} has no evaluation point")));
    }
    let anchor = match rule {
        Rule::Cheapest => None,
        Rule::KeepAnchor(a) | Rule::UndercutAnchor(a) => Some(a),
    };
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
    let cheapest = |pool: &[usize]| pool.iter().copied().min_by(|&a, &b| times[a].total_cmp(&times[b]));
    let better_than =
        |anchor: usize| -> Vec<usize> { all.iter().copied().filter(|&i| above(anchor, i) == Some(true)).collect() };
    let (winner, verdict) = match rule {
        Rule::Cheapest => (cheapest_tied(&all).unwrap_or(lowest_score), Verdict::CheapestTied),
        Rule::KeepAnchor(anchor) | Rule::UndercutAnchor(anchor) => match cheapest_tied(&better_than(anchor)) {
            Some(below) => (below, Verdict::BelowAnchor),
            None if matches!(rule, Rule::KeepAnchor(_)) => (anchor, Verdict::AnchorKept),
            None => {
                // Without a noise estimate only the anchor itself counts as not worse.
                let not_worse: Vec<usize> =
                    all.iter().copied().filter(|&i| above(i, anchor).map_or(i == anchor, |above| !above)).collect();
                match cheapest(&not_worse).unwrap_or(anchor) {
                    kept if kept == anchor => (anchor, Verdict::AnchorKept),
                    cheaper => (cheaper, Verdict::NotWorseThanAnchor),
                }
            }
        },
    };
    Ok(Selection { fit, w, scores, lowest_score, winner, verdict })
}

#[cfg(test)]
#[path = "search_tests.rs"]
mod tests;
