//! The search's candidates and its choice, on the schedules and measurements of real runs.

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
    assert!(candidates(&stages, 3, Candidate { resolution: 32, depth: 6 }, usize::MAX, DepthGrowth::Always).is_err());
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
    assert!(unknown.contains("sometimes") && unknown.contains("schedule") && unknown.contains("always"), "{unknown}");
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
        let s = select(&[173.0, 255.0], &[vec![losses[0]; 3], vec![losses[1]; 3]], Rule::Cheapest).unwrap();
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
    let s = select(&times, &series(&levels, &[0.0; 4]), Rule::Cheapest).unwrap();
    assert_eq!((s.lowest_score, s.winner), (2, 2));
    assert!(s.w > 0.4 && s.w < 0.6, "{s:?}");
    // Loss rising with time (b > 0): w = 0 and the lowest loss wins.
    let s = select(&[1.0, 2.0, 3.0], &series(&[0.9, 1.5, 1.6], &[0.0; 4]), Rule::Cheapest).unwrap();
    assert!(s.fit.b > 0.0);
    assert_eq!((s.w, s.winner), (0.0, 0));
}

#[test]
fn a_search_around_the_schedule_offers_a_level_either_side_of_its_depth_and_above_its_resolution() {
    let stages = nano_stages(); // r 16, 20, 28, 32; depth 3, 4, 5, 6
    let around = |stage, resolution, depth| {
        let (offered, anchor) = candidates_around(&stages, stage, Candidate { resolution, depth }, 0).unwrap();
        (offered.iter().map(Candidate::name).collect::<Vec<_>>(), anchor.name())
    };
    // Stage 0 starts at the schedule's smallest network: nothing lies below it.
    let (offered, anchor) = around(0, 16, 3);
    assert_eq!(
        (offered, anchor),
        (["r16_l3", "r16_l4", "r20_l3", "r20_l4"].map(String::from).to_vec(), "r16_l3".into())
    );
    // Stage 1 from stage 0's network: the current depth below the anchor's, and the
    // levels above it; without a lag the current 16 px is not offered (the resolution
    // never trails the schedule's).
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
    let (offered, anchor) = candidates_around(&shallow, 1, Candidate { resolution: 16, depth: 2 }, 0).unwrap();
    assert_eq!(anchor, Candidate { resolution: 20, depth: 3 });
    assert_eq!(levels(offered.iter().map(|c| c.depth)), [2, 3, 4]);
    let (offered, _) = candidates_around(&shallow, 2, Candidate { resolution: 16, depth: 2 }, 0).unwrap();
    assert_eq!(levels(offered.iter().map(|c| c.depth)), [3, 4], "5 is more than twice 2");
    assert!(candidates_around(&stages, 3, Candidate { resolution: 32, depth: 6 }, 0).is_err());
}

#[test]
fn a_resolution_lag_offers_the_level_below_the_anchor_but_never_below_the_current_one() {
    let stages = nano_stages(); // r 16, 20, 28, 32; depth 3, 4, 5, 6
    let resolutions = |stage, resolution, lag| {
        let (offered, anchor) = candidates_around(&stages, stage, Candidate { resolution, depth: 3 }, lag).unwrap();
        (levels(offered.iter().map(|c| c.resolution)), anchor.resolution)
    };
    // Stage 1 from 16 px: one stage of lag keeps 16 px on offer; the anchor stays 20.
    assert_eq!(resolutions(1, 16, 1), (vec![16, 20, 28], 20));
    // Stage 2 still at 16 px: one level below the anchor, however long the lag.
    assert_eq!(resolutions(2, 16, 1), (vec![20, 28, 32], 28));
    assert_eq!(resolutions(2, 16, 2), (vec![20, 28, 32], 28));
    // From 20 px at stage 2 the level below the anchor is the current one.
    assert_eq!(resolutions(2, 20, 2), (vec![20, 28, 32], 28));
    // A resolution never drops: from 28 px at stage 2 nothing below is offered.
    assert_eq!(resolutions(2, 28, 2), (vec![28, 32], 28));
    // Lags beyond the first stage are the first stage's floor.
    assert_eq!(resolutions(1, 16, 9), resolutions(1, 16, 1));
    // A schedule that keeps 20 px for two stages (digits, 30 epochs): at stage 2, one
    // stage of lag is stage 1's 20 px; two reach back to 16 px.
    let flat: Vec<Stage> =
        stages.iter().zip([16, 20, 20, 24]).map(|(s, resolution)| Stage { resolution, ..*s }).collect();
    let offered = |lag| {
        let (offered, _) = candidates_around(&flat, 2, Candidate { resolution: 16, depth: 3 }, lag).unwrap();
        levels(offered.iter().map(|c| c.resolution))
    };
    assert_eq!((offered(1), offered(2)), (vec![20, 24], vec![16, 20, 24]));
}

#[test]
fn a_thrifty_space_offers_nothing_above_the_schedule_and_no_search_where_it_starts() {
    // The quick preset's schedule: 16, 20, 20, 24 px and 4, 5, 5, 6 blocks.
    let quick: Vec<Stage> = nano_stages()
        .iter()
        .zip([(16, 4), (20, 5), (20, 5), (24, 6)])
        .map(|(s, (resolution, depth))| Stage { resolution, depth, ..*s })
        .collect();
    let offered = |space: SearchSpace, stage, resolution, depth| {
        let current = Candidate { resolution, depth };
        let (offered, anchor) = space.offered(&quick, stage, current, 2, DepthGrowth::Schedule).unwrap();
        (offered.iter().map(Candidate::name).collect::<Vec<_>>(), anchor.map(|a| a.name()))
    };
    // Stage 0: the schedule's smallest network is the only thrifty candidate (no search);
    // the anchored space also offers the levels above it.
    assert_eq!(offered(SearchSpace::Thrifty, 0, 16, 4), (vec!["r16_l4".into()], Some("r16_l4".into())));
    assert_eq!(offered(SearchSpace::Anchored, 0, 16, 4).0, ["r16_l4", "r16_l5", "r20_l4", "r20_l5"]);
    // Stage 1 from 16 px and 4 blocks: the anchor r20_l5 and the levels below it; the
    // anchored space adds 24 px and 6 blocks.
    let (thrifty, anchor) = offered(SearchSpace::Thrifty, 1, 16, 4);
    assert_eq!(thrifty, ["r16_l4", "r16_l5", "r20_l4", "r20_l5"]);
    assert_eq!(anchor.as_deref(), Some("r20_l5"));
    assert_eq!(offered(SearchSpace::Anchored, 1, 16, 4).0.len(), 9);
    // Stage 2 from r20_l4: two candidates, a choice without a search.
    assert_eq!(offered(SearchSpace::Thrifty, 2, 20, 4).0, ["r20_l4", "r20_l5"]);
    // Past the schedule's depth, the current network is the anchor and the only candidate.
    assert_eq!(offered(SearchSpace::Thrifty, 1, 20, 6).0, ["r20_l6"]);
    // The official space has no anchor.
    assert_eq!(offered(SearchSpace::Official, 1, 16, 4).1, None);
}

#[test]
fn an_anchored_search_departs_from_the_anchor_only_beyond_the_noise() {
    let times = [1.0, 2.0, 3.0];
    // All alike: without an anchor the cheapest wins; with one, the anchor.
    let alike = series(&[1.0, 1.0, 1.0], &[0.0, 0.01, -0.01, 0.0]);
    assert_eq!(select(&times, &alike, Rule::Cheapest).unwrap().winner, 0);
    assert_eq!(select(&times, &alike, Rule::KeepAnchor(1)).unwrap().winner, 1);
    // A cheaper candidate 10 % below the anchor at every point wins; so does a costlier one.
    assert_eq!(select(&times, &series(&[0.9, 1.0, 1.0], &[0.0; 4]), Rule::KeepAnchor(1)).unwrap().winner, 0);
    assert_eq!(select(&times, &series(&[1.0, 1.0, 0.8], &[0.0; 4]), Rule::KeepAnchor(1)).unwrap().winner, 2);
    // Both below it: the rule picks among those two (the costlier is well below the cheaper).
    let s = select(&times, &series(&[0.9, 1.0, 0.6], &[0.0; 4]), Rule::KeepAnchor(1)).unwrap();
    assert_eq!((s.winner, s.lowest_score), (2, 2), "{s:?}");
    // Lower by 1 % on average but flipping sign between points: noise, the anchor stays.
    let mut flips = series(&[1.0, 1.0, 1.0], &[0.0; 4]);
    flips[0] = flips[1].iter().zip([-0.05, 0.03, -0.05, 0.03]).map(|(l, j)| l + j).collect();
    assert_eq!(select(&times, &flips, Rule::KeepAnchor(1)).unwrap().winner, 1);
    // One evaluation point: no noise estimate, nothing departs.
    let single = vec![vec![0.5], vec![1.0], vec![0.9]];
    assert_eq!(select(&times, &single, Rule::KeepAnchor(1)).unwrap().winner, 1);
    assert_eq!(select(&times, &single, Rule::Cheapest).unwrap().winner, 0);
    assert!(select(&times, &single, Rule::KeepAnchor(3)).is_err());
}

#[test]
fn a_thrifty_search_undercuts_the_anchor_unless_the_evidence_puts_the_cheaper_behind() {
    let times = [1.0, 2.0, 3.0];
    let undercut = |losses: &[Vec<f64>]| {
        let s = select(&times, losses, Rule::UndercutAnchor(1)).unwrap();
        (s.winner, s.verdict)
    };
    // All alike: the cheapest.
    assert_eq!(undercut(&series(&[1.0, 1.0, 1.0], &[0.0, 0.01, -0.01, 0.0])), (0, Verdict::NotWorseThanAnchor));
    // The cheaper 10 % above the anchor at every point: the anchor (the costlier one is
    // not worse, but dearer than the anchor).
    assert_eq!(undercut(&series(&[1.1, 1.0, 1.0], &[0.0; 4])), (1, Verdict::AnchorKept));
    // Flipping sign around the anchor: not behind it beyond the noise, so the cheaper.
    let mut flips = series(&[1.0, 1.0, 1.0], &[0.0; 4]);
    flips[0] = flips[1].iter().zip([0.05, -0.03, 0.05, -0.03]).map(|(l, j)| l + j).collect();
    assert_eq!(undercut(&flips), (0, Verdict::NotWorseThanAnchor));
    // A costlier candidate below the anchor beyond the noise still wins.
    assert_eq!(undercut(&series(&[1.0, 1.0, 0.8], &[0.0; 4])), (2, Verdict::BelowAnchor));
    // One evaluation point: no noise estimate, nothing departs.
    assert_eq!(undercut(&[vec![0.5], vec![1.0], vec![0.9]]), (1, Verdict::AnchorKept));
    assert!(select(&times, &[vec![0.5], vec![1.0], vec![0.9]], Rule::UndercutAnchor(3)).is_err());
}

#[test]
fn a_cheaper_thrifty_winner_below_the_anchor_is_told_from_one_no_worse() {
    // As at the quick preset's stage 1: r20_l4 (index 2) lies below the anchor (3) beyond
    // the noise, the lowest such candidate, and wins though r16_l4 (0) is cheaper. The
    // verdict says which branch chose; the step times alone cannot.
    let times = [1.0, 1.5, 2.0, 3.0];
    let anchor = vec![1.2, 1.1, 1.05, 1.0];
    let cheapest = vec![1.25, 1.05, 1.1, 0.98];
    let behind = vec![1.3, 1.2, 1.15, 1.1];
    let losses = [cheapest.clone(), behind.clone(), vec![1.0, 0.92, 0.88, 0.85], anchor.clone()];
    let s = select(&times, &losses, Rule::UndercutAnchor(3)).unwrap();
    assert_eq!((s.winner, s.verdict), (2, Verdict::BelowAnchor), "{s:?}");
    assert_eq!(s.verdict.reason(Some("r24_l4")), "scored below the schedule's r24_l4 beyond the noise");
    assert_eq!(select(&times, &losses, Rule::KeepAnchor(3)).unwrap().verdict, Verdict::BelowAnchor);
    assert_eq!(select(&times, &losses, Rule::Cheapest).unwrap().verdict, Verdict::CheapestTied);
    // With r20_l4 behind the anchor too, nothing lies below it: the thrifty rule takes the
    // cheapest, no worse than it within the noise; the anchored one keeps the anchor.
    let none_below = [cheapest, behind, vec![1.35, 1.25, 1.2, 1.15], anchor];
    let s = select(&times, &none_below, Rule::UndercutAnchor(3)).unwrap();
    assert_eq!((s.winner, s.verdict), (0, Verdict::NotWorseThanAnchor), "{s:?}");
    let s = select(&times, &none_below, Rule::KeepAnchor(3)).unwrap();
    assert_eq!((s.winner, s.verdict), (3, Verdict::AnchorKept), "{s:?}");
}

#[test]
fn real_digits_stage_1_the_thrifty_rule_takes_16_px_where_the_anchored_keeps_the_schedule() {
    // Stage 1 of real digits (seed 0, stage crops, one stage of resolution lag): the
    // 16 px candidates, trained through stage 0, lie below the anchor r20_l5 on average
    // but above it at one point of five; nothing beats it beyond the noise.
    let names = ["r16_l4", "r16_l5", "r16_l6", "r20_l4", "r20_l5", "r20_l6", "r24_l4", "r24_l5", "r24_l6"];
    let times = [104.1, 126.6, 152.6, 152.2, 184.3, 223.9, 219.7, 274.1, 325.4];
    let losses = [
        [0.268, 0.72, 0.522, 0.387, 0.179],
        [0.238, 0.657, 0.586, 0.411, 0.18],
        [0.254, 0.57, 0.613, 0.419, 0.171],
        [0.749, 0.478, 0.461, 0.638, 0.417],
        [0.651, 0.459, 0.499, 0.594, 0.418],
        [0.637, 0.447, 0.592, 0.709, 0.494],
        [0.609, 0.395, 0.583, 0.744, 0.412],
        [0.526, 0.407, 0.582, 0.672, 0.366],
        [0.558, 0.353, 0.618, 0.843, 0.366],
    ]
    .map(|l| l.to_vec());
    let winner = |rule| names[select(&times, &losses, rule).unwrap().winner];
    assert_eq!(winner(Rule::KeepAnchor(4)), "r20_l5");
    assert_eq!(winner(Rule::UndercutAnchor(4)), "r16_l4");
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
    let s = select(&times, &losses, Rule::Cheapest).unwrap();
    assert_eq!((s.w, s.lowest_score, s.winner), (0.0, 3, 0), "{s:?}");
    // r32_l4 lower by 2.5 % at every point: a real difference, and it wins.
    losses[3] = losses[0].iter().map(|l| l - 0.01).collect();
    let s = select(&times, &losses, Rule::Cheapest).unwrap();
    assert_eq!((s.lowest_score, s.winner), (3, 3), "{s:?}");
    // One evaluation point each: no noise estimate, the smallest score wins.
    let single: Vec<Vec<f64>> = losses.iter().map(|l| vec![l[4]]).collect();
    let s = select(&times, &single, Rule::Cheapest).unwrap();
    assert_eq!(s.winner, s.lowest_score);
    assert!(select(&times[..2], &[vec![0.41], vec![]], Rule::Cheapest).is_err());
}
