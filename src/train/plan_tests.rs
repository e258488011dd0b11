//! The loop's decisions at the places where runs go wrong: stage boundaries, a resume in
//! the middle of a search, the last stage.

use super::*;
use crate::runlog::StageSummary;
use crate::train::config::TrainConfig;

/// The quick preset under `schedule`: 4 one-epoch stages from 16 px and 4 blocks to 24 px
/// and 6 blocks, 100 steps an epoch.
fn quick(schedule: Schedule) -> (TrainConfig, Vec<Stage>, Steps) {
    let mut config = TrainConfig::preset("quick").unwrap();
    config.recipe.schedule = schedule;
    let stages = config.schedule().unwrap();
    let steps = Steps::new(&config, 100 * config.recipe.batch).unwrap();
    (config, stages, steps)
}

fn fresh(stages: &[Stage]) -> Progress {
    Progress { resolution: stages[0].resolution, depth: stages[0].depth, ..Progress::default() }
}

fn search_of(progress: &Progress, config: &TrainConfig, stages: &[Stage], steps: Steps) -> SearchState {
    match opening(config, stages, steps, progress).unwrap() {
        Some(Opening::Search(s)) => s,
        other => panic!("expected a search, got {other:?}"),
    }
}

#[test]
fn the_first_stage_opens_an_anchored_search_around_the_schedules_first_network() {
    let (mut config, stages, steps) = quick(Schedule::Auto);
    let progress = fresh(&stages);
    // The thrifty default offers nothing above the schedule's network, which at stage 0 is
    // the smallest: the stage trains it without a search.
    match opening(&config, &stages, steps, &progress).unwrap() {
        Some(Opening::Foregone { chosen, why }) => {
            assert_eq!((chosen, why), (Candidate { resolution: 16, depth: 4 }, "the only candidate"))
        }
        other => panic!("expected a foregone choice, got {other:?}"),
    }
    config.recipe.search_space = SearchSpace::Anchored;
    let search = search_of(&progress, &config, &stages, steps);
    // 16 px and 4 blocks, and one level above each; a quarter-epoch search of 25 steps
    // from step 0.
    let names: Vec<String> = search.candidates.iter().map(Candidate::name).collect();
    assert_eq!(names, ["r16_l4", "r16_l5", "r20_l4", "r20_l5"]);
    assert_eq!(search.anchor, Some(Candidate { resolution: 16, depth: 4 }));
    assert_eq!((search.start_step, search.steps, search.to_depth), (0, 25, 5));
    // The epoch trains the supernet: every candidate resolution, the deepest depth, the
    // last stage's regularisation.
    let mut searching = progress.clone();
    open(&mut searching, &stages, Opening::Search(search.clone()));
    let t = trains(Schedule::Auto, &stages, &searching);
    assert_eq!((t.resolutions, t.depth), (search.resolutions(), 5));
    assert_eq!(t.regularisation, stages[3]);
}

#[test]
fn the_official_search_space_opens_over_the_schedules_corners() {
    let (mut config, stages, steps) = quick(Schedule::Auto);
    config.recipe.search_space = SearchSpace::Official;
    let search = search_of(&fresh(&stages), &config, &stages, steps);
    // Three resolutions by three depths, no anchor.
    assert_eq!((search.candidates.len(), search.anchor, search.to_depth), (9, None, 6));
}

#[test]
fn no_search_opens_outside_auto_or_inside_a_stage() {
    for schedule in [Schedule::Full, Schedule::Prog] {
        let (config, stages, steps) = quick(schedule);
        assert_eq!(opening(&config, &stages, steps, &fresh(&stages)).unwrap(), None, "{schedule:?}");
    }
    let (config, stages, steps) = quick(Schedule::Auto);
    let inside = Progress { batch_in_epoch: 3, ..fresh(&stages) };
    assert_eq!(opening(&config, &stages, steps, &inside).unwrap(), None);
    assert!(!starts_stage(&stages, &inside), "a resumed epoch does not log its stage again");
}

#[test]
fn a_resume_inside_a_search_goes_on_with_the_supernet() {
    let (mut config, stages, steps) = quick(Schedule::Auto);
    // A search at stage 0: the anchored space has one there, the thrifty default none.
    config.recipe.search_space = SearchSpace::Anchored;
    let mut progress = fresh(&stages);
    let search = search_of(&progress, &config, &stages, steps);
    open(&mut progress, &stages, Opening::Search(search.clone()));
    // Interrupted after 10 of the search's 25 steps and resumed: nothing opens again, the
    // stage is not logged again, the supernet trains on.
    progress.step = 10;
    progress.batch_in_epoch = 10;
    assert_eq!(opening(&config, &stages, steps, &progress).unwrap(), None);
    assert!(!starts_stage(&stages, &progress));
    assert_eq!(trains(Schedule::Auto, &stages, &progress).depth, search.to_depth);
    assert!(!search_ended(&progress));
    progress.step = search.end();
    assert!(search_ended(&progress));
}

#[test]
fn a_search_still_running_at_a_stage_boundary_keeps_the_supernet() {
    let (mut config, stages, steps) = quick(Schedule::Auto);
    // A search at stage 0: the anchored space has one there, the thrifty default none.
    config.recipe.search_space = SearchSpace::Anchored;
    let mut progress = fresh(&stages);
    let mut search = search_of(&progress, &config, &stages, steps);
    // A search longer than its epoch: at the next stage's first batch no second search
    // opens over it, and the supernet still trains (the stage itself is logged).
    search.steps = 150;
    open(&mut progress, &stages, Opening::Search(search.clone()));
    progress.epoch = 1;
    progress.step = 100;
    assert!(starts_stage(&stages, &progress));
    assert_eq!(opening(&config, &stages, steps, &progress).unwrap(), None);
    let t = trains(Schedule::Auto, &stages, &progress);
    assert_eq!((t.resolutions, t.depth), (search.resolutions(), search.to_depth));
}

#[test]
fn the_chosen_sub_network_trains_until_the_last_stage_which_trains_the_full_model() {
    let (config, stages, steps) = quick(Schedule::Auto);
    let mut progress = Progress { epoch: 1, step: 100, ..fresh(&stages) };
    choose(&mut progress, 0, Candidate { resolution: 20, depth: 5 });
    progress.search = None;
    let t = trains(Schedule::Auto, &stages, &progress);
    assert_eq!((t.resolutions.as_slice(), t.depth), ([20].as_slice(), 5));
    assert_eq!(progress.trained, [StageSummary { start_epoch: 0, resolution: 20, depth: 5 }]);
    // The last stage: no search, the schedule's full size whatever was chosen before.
    progress.epoch = 3;
    progress.step = 300;
    assert_eq!(opening(&config, &stages, steps, &progress).unwrap(), None);
    let last = trains(Schedule::Auto, &stages, &progress);
    assert_eq!((last.resolutions.as_slice(), last.depth), ([24].as_slice(), 6));
    let summary = trained_stages(Schedule::Auto, &stages, &progress);
    assert_eq!(summary.len(), 2);
    assert_eq!((summary[1].start_epoch, summary[1].resolution, summary[1].depth), (3, 24, 6));
}

#[test]
fn two_candidates_are_a_foregone_choice_of_the_anchor_or_the_cheaper() {
    let (mut config, stages, steps) = quick(Schedule::Auto);
    // At stage 2 from the full depth, only the current and the next resolution remain. In
    // the official space the cheaper of the two trains; in the anchored one, the
    // schedule's network (here the cheaper too, since the model is already past the
    // schedule's depth); the thrifty one offers nothing above that network, so it is the
    // only candidate.
    let progress = Progress { epoch: 2, step: 200, resolution: 20, depth: 6, ..Progress::default() };
    let foregone = |config: &TrainConfig| match opening(config, &stages, steps, &progress).unwrap() {
        Some(Opening::Foregone { chosen, why }) => (chosen, why),
        other => panic!("expected a foregone choice, got {other:?}"),
    };
    let r20_l6 = Candidate { resolution: 20, depth: 6 };
    assert_eq!(foregone(&config), (r20_l6, "the only candidate"), "thrifty, the default");
    config.recipe.search_space = SearchSpace::Anchored;
    assert_eq!(foregone(&config), (r20_l6, "the schedule's, which one other candidate cannot beat"));
    config.recipe.search_space = SearchSpace::Official;
    match opening(&config, &stages, steps, &progress).unwrap() {
        Some(Opening::Foregone { chosen, why }) => {
            assert_eq!((chosen, why), (Candidate { resolution: 20, depth: 6 }, "the cheaper of two"));
            let mut p = progress.clone();
            open(&mut p, &stages, Opening::Foregone { chosen, why });
            assert_eq!(p.chosen, Some(chosen));
            assert_eq!(p.trained, [StageSummary { start_epoch: 2, resolution: 20, depth: 6 }]);
        }
        other => panic!("expected a foregone choice, got {other:?}"),
    }
}

#[test]
fn learning_rate_warms_up_then_follows_a_cosine() {
    let (lr, min) = (1e-3, 1e-5);
    assert!((learning_rate(0, 100, 10, lr, min) - 1e-4).abs() < 1e-12);
    assert!((learning_rate(9, 100, 10, lr, min) - lr).abs() < 1e-12);
    assert!((learning_rate(10, 100, 10, lr, min) - lr).abs() < 1e-12);
    let mid = learning_rate(55, 100, 10, lr, min);
    assert!((mid - (min + 0.5 * (lr - min))).abs() < 1e-9, "{mid}");
    assert!((learning_rate(100, 100, 10, lr, min) - min).abs() < 1e-12);
    // Past the end it stays at the minimum; without warmup it starts at the peak.
    assert!((learning_rate(150, 100, 10, lr, min) - min).abs() < 1e-12);
    assert!((learning_rate(0, 10, 0, lr, min) - lr).abs() < 1e-12);
    // Without warmup, step 3 of 10 is 30 % into the cosine.
    let expected = min + 0.5 * (lr - min) * (1.0 + (0.3 * std::f64::consts::PI).cos());
    assert!((learning_rate(3, 10, 0, lr, min) - expected).abs() < 1e-12);
    // The cosine only falls.
    let curve: Vec<f64> = (10..=100).map(|s| learning_rate(s, 100, 10, lr, min)).collect();
    assert!(curve.windows(2).all(|w| w[1] <= w[0]), "{curve:?}");
}

#[test]
fn drop_path_follows_the_linear_rule_and_is_deterministic() {
    let (depth, batch) = (4, 2000);
    let s = drop_path_scales(0.3, depth, batch, 7, 11);
    assert_eq!(s, drop_path_scales(0.3, depth, batch, 7, 11));
    assert_ne!(s, drop_path_scales(0.3, depth, batch, 7, 12));
    for block in 0..depth {
        let p = 0.3 * block as f64 / 3.0;
        let row = &s[2 * block * batch..][..2 * batch];
        let dropped = row.iter().filter(|&&v| v == 0.0).count() as f64 / row.len() as f64;
        assert!((dropped - p).abs() < 0.03, "block {block}: {dropped} vs {p}");
        // Kept branches are rescaled so that the expectation is unchanged.
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / row.len() as f64;
        assert!((mean - 1.0).abs() < 0.06, "block {block}: mean {mean}");
    }
}

#[test]
fn compared_schedules_hold_back_the_same_images() {
    let (auto, _, _) = quick(Schedule::Auto);
    let (mut none, _, _) = quick(Schedule::Full);
    let held = crate::train::run::holdout_images;
    // At most 8 batches of 32, about a tenth of the 15 000 images.
    assert_eq!(held(&auto, 15_000).unwrap(), Some(256));
    assert_eq!(held(&none, 15_000).unwrap(), None, "alone, `none` trains on every image");
    none.data.holdout_for_all = true;
    assert_eq!(held(&none, 15_000).unwrap(), Some(256), "under compare, on what `auto` trains on");
    let err = held(&auto, 40).unwrap_err().to_string();
    assert!(err.contains("holds back 32 of the 40") && err.contains("--schedule none"), "{err}");
}

#[test]
fn each_rank_takes_its_rows_of_every_blocks_drop_path_factors() {
    let (depth, batch) = (3, 8);
    let whole = drop_path_scales(0.3, depth, batch, 5, 11);
    let shards: Vec<Vec<f32>> = (0..2).map(|rank| shard_rows(&whole, batch, Shard { rank, ranks: 2 })).collect();
    // Per block and branch: rank 0's 4 factors, then rank 1's, make up the whole batch's.
    for (run, factors) in whole.chunks(batch).enumerate() {
        let joined: Vec<f32> = shards.iter().flat_map(|s| s[run * 4..run * 4 + 4].iter().copied()).collect();
        assert_eq!(joined, factors, "block/branch {run}");
    }
}

#[test]
fn spread_runs_validate_every_few_epochs_and_always_after_the_last() {
    let (mut config, _, _) = quick(Schedule::Auto);
    config.recipe.epochs = 8;
    let validated = |config: &TrainConfig| (0..8).filter(|&e| validates(&config.recipe, e)).collect::<Vec<_>>();
    assert_eq!(validated(&config), (0..8).collect::<Vec<_>>(), "by default after every epoch");
    config.recipe.validate_every = 3;
    assert_eq!(validated(&config), [2, 5, 7], "every third, and the last");
}

#[test]
fn growth_validates_anew_only_where_the_epoch_before_it_was_not_validated() {
    let mut progress = Progress { epoch: 0, ..Progress::default() };
    assert!(!validation_is_stale(&progress), "inside the first epoch there is nothing to validate");
    progress.epoch = 4;
    progress.validated_after = Some(4);
    assert!(!validation_is_stale(&progress), "validated after the epoch before");
    progress.validated_after = Some(2);
    assert!(validation_is_stale(&progress), "two epochs old");
    progress.validated_after = None;
    assert!(validation_is_stale(&progress), "never validated, or a checkpoint that did not say");
}
