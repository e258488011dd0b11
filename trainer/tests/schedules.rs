//! The growth schedules end to end on a micro ViT: `prog` grows the model and resumes
//! across growth, `auto` searches, recycles the winner and resumes inside a search, and
//! `compare` trains every schedule.

mod common;

use std::path::Path;

use autoprog::prog::search::{select, SearchSpace};
use autoprog::runlog::{parse_log, Event, Summary};

use common::*;

#[test]
fn progressive_schedule_grows_the_model_and_resumes_across_growth() {
    let dir = scratch("prog");
    let model = micro_model(&dir);
    let prog_args = |out: &Path| {
        let mut args = micro_args(&model, out, 6);
        // Resolution and depth both grow from half (the quick preset's from 2/3).
        set_option(&mut args, "--schedule", "prog");
        args.extend(["--stages", "2", "--res-scale", "0.5", "--depth-scale", "0.5"].map(String::from));
        args
    };
    let whole = dir.join("whole");
    let out = run(&prog_args(&whole));
    assert!(out.status.success(), "{}", text(&out));
    let summary: Summary = serde_json::from_str(&std::fs::read_to_string(whole.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.schedule, "prog");
    let stages: Vec<(u32, u32, u32)> = summary.stages.iter().map(|s| (s.start_epoch, s.resolution, s.depth)).collect();
    assert_eq!(stages, [(0, 8, 1), (3, 16, 2)]);
    assert_eq!((summary.final_resolution, summary.final_depth), (16, 2));
    let log = parse_log(&std::fs::read_to_string(whole.join("log.jsonl")).unwrap());
    let growths: Vec<_> =
        log.events.iter().filter_map(|e| if let Event::Growth(g) = e { Some(g) } else { None }).collect();
    assert_eq!(growths.len(), 1);
    assert_eq!((growths[0].from_depth, growths[0].to_depth, growths[0].mapping.clone()), (1, 2, vec![0, 0]));
    assert_eq!(growths[0].step, 12);
    let stage_events = log.events.iter().filter(|e| matches!(e, Event::Stage(_))).count();
    assert_eq!(stage_events, 2);
    // FLOPs: 3 epochs of the small model and 3 of the full one, less than 6 of the full one.
    let full = run(&micro_args(&model, &dir.join("full"), 6));
    assert!(full.status.success());
    let full: Summary = serde_json::from_str(&std::fs::read_to_string(dir.join("full/summary.json")).unwrap()).unwrap();
    assert!(summary.train_flops < 0.7 * full.train_flops, "{} vs {}", summary.train_flops, full.train_flops);

    // Interrupted after the growth (step 12 of 24), then resumed: the same losses.
    let interrupted = dir.join("interrupted");
    interrupt_and_resume(&prog_args(&interrupted), &interrupted, 14);
    assert_eq!(step_losses(&interrupted), step_losses(&whole), "resumed after growth");
}

#[test]
fn compare_trains_every_schedule_and_writes_compare_json() {
    let dir = scratch("compare");
    let model = micro_model(&dir);
    let out = dir.join("cmp");
    let mut args: Vec<String> = micro_args(&model, &out, 4);
    args[0] = "compare".into();
    args.extend(["--schedules", "none,prog", "--seeds", "2", "--stages", "2"].map(String::from));
    let result = run(&args);
    assert!(result.status.success(), "{}", text(&result));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(stdout.contains("speedup") && stdout.contains("prog") && stdout.contains("compare.json"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let seeds: Vec<u64> = runs.iter().map(|r| r["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [0, 0, 1, 1]);
    for schedule in ["none", "prog"] {
        let m = &json["by_schedule"][schedule];
        for key in ["wall_seconds", "train_flops", "val_acc"] {
            assert!(m[key].as_f64().is_some(), "{schedule} lacks {key}: {m}");
        }
        assert!(m.get("val_acc_ema").is_some());
    }
    assert!(json["by_schedule"]["prog"]["speedup"].as_f64().unwrap() > 0.0);
    assert!(json["by_schedule"]["prog"]["acc_delta"].as_f64().is_some());
    assert!(json["by_schedule"]["none"]["speedup"].is_null());
    // Progressive learning spends fewer FLOPs than the full model for the same epochs.
    let flops = |s: &str| json["by_schedule"][s]["train_flops"].as_f64().unwrap();
    assert!(flops("prog") < flops("none"));
    // Every schedule trains on the images `auto` trains on: of the 128, one batch of 32 is
    // held back for its scoring, leaving 3 steps an epoch.
    for schedule in ["none", "prog"] {
        let steps = step_losses(&out.join(format!("{schedule}-seed0")));
        assert_eq!(steps.len(), 4 * 3, "{schedule}: the same training images as auto");
        assert_eq!(json["by_schedule"][schedule]["search_seconds"].as_f64(), Some(0.0));
    }
    assert!(out.join("prog-seed1/summary.json").exists());
    // Each run directory holds the comparison too, for the viewer's baseline.
    let copy = std::fs::read_to_string(out.join("none-seed0/compare.json")).unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&copy).unwrap(), json);

    // Run again on the same folder: the finished runs are kept, not trained again; a run
    // whose directory is gone is trained anew.
    std::fs::remove_dir_all(out.join("prog-seed1")).unwrap();
    let again = run(&args);
    assert!(again.status.success(), "{}", text(&again));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(stderr.matches("finished before").count(), 3, "{stderr}");
    assert!(stderr.contains("== prog, seed 1 ->"), "{stderr}");
    let json_again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(json_again["runs"][0], json["runs"][0], "a kept run's summary is the one it wrote");
    assert_eq!(json_again["runs"].as_array().unwrap().len(), 4);

    // A comparison stopped by Ctrl-C inside its first run resumes that run (with the losses
    // of an uninterrupted one) when started again.
    let cut = dir.join("cut");
    let mut cut_args = args.clone();
    let at = cut_args.iter().position(|a| a == "--out").unwrap();
    cut_args[at + 1] = cut.display().to_string();
    interrupt_at(&cut_args, &cut.join("none-seed0/log.jsonl"), 6);
    let resumed = run(&cut_args);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert_eq!(step_losses(&cut.join("none-seed0")), step_losses(&out.join("none-seed0")));

    // Another configuration on the same folder is refused rather than mixed in.
    let mut other = args.clone();
    let at = other.iter().position(|a| a == "--epochs").unwrap();
    other[at + 1] = "3".into();
    let refused = run(&other);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("another configuration"), "{}", text(&refused));
}

#[test]
fn autoprog_searches_recycles_and_resumes_inside_a_search() {
    let dir = scratch("auto");
    let model = micro_model(&dir);
    let auto_args = |out: &Path| {
        let mut args = micro_args(&model, out, 6);
        // Enough images to hold a batch back for the candidates' evaluation.
        set_option(&mut args, "--train-images", "256");
        set_option(&mut args, "--schedule", "auto");
        // Both resolutions and depths as candidates, and the official two search epochs
        // (the quick preset starts at 2/3 of resolution and depth and searches for a quarter of an epoch).
        // The anchored space searches at stage 0 (the thrifty default offers nothing above
        // the schedule's first network there, so it would not search at all).
        let official = ["--stages", "2", "--res-scale", "0.5", "--depth-scale", "0.5", "--search-epochs", "2"];
        args.extend(["--search-space", "anchored"].map(String::from));
        args.extend(official.map(String::from));
        args
    };
    let whole = dir.join("whole");
    let out = run(&auto_args(&whole));
    assert!(out.status.success(), "{}", text(&out));
    // The search's scoring and timing are reported apart, and counted in the totals.
    let summary: Summary = serde_json::from_str(&std::fs::read_to_string(whole.join("summary.json")).unwrap()).unwrap();
    assert!(summary.search_seconds > 0.0 && summary.search_seconds < summary.wall_seconds, "{summary:?}");
    assert!(summary.search_flops > 0.0 && summary.search_flops < summary.train_flops, "{summary:?}");
    let log = parse_log(&std::fs::read_to_string(whole.join("log.jsonl")).unwrap());
    let searches: Vec<_> =
        log.events.iter().filter_map(|e| if let Event::Search(s) = e { Some(s) } else { None }).collect();
    assert_eq!(searches.len(), 1, "one search: stage 0 of 2");
    let search = searches[0];
    // Stage 0 of a 16 px, 2-block model from 8 px and 1 block: {8, 16} px x {1, 2} blocks.
    let names: Vec<&str> = search.candidates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["r8_l1", "r8_l2", "r16_l1", "r16_l2"]);
    for c in &search.candidates {
        assert_eq!(c.losses.len(), 5, "{}: five evaluation points", c.name);
        assert!(c.losses.iter().all(|l| l.is_finite() && *l > 0.0) && c.step_ms > 0.0 && c.score.is_finite());
    }
    // The winner is what the anchored space's rule makes of the logged losses and
    // times around the anchor (the prog schedule's 8 px and 1 block); it need not be the
    // smallest score itself (that one is logged as `lowest_score`).
    assert_eq!(search.anchor.as_deref(), Some("r8_l1"));
    let times: Vec<f64> = search.candidates.iter().map(|c| c.step_ms).collect();
    let losses: Vec<Vec<f64>> = search.candidates.iter().map(|c| c.losses.clone()).collect();
    let selection = select(&times, &losses, SearchSpace::Anchored.rule(Some(0))).unwrap();
    assert_eq!(search.winner, search.candidates[selection.winner].name);
    assert_eq!(search.verdict, Some(selection.verdict), "the log says which branch of the rule chose");
    assert_eq!(search.lowest_score.as_deref(), Some(search.candidates[selection.lowest_score].name.as_str()));
    for (c, score) in search.candidates.iter().zip(&selection.scores) {
        assert_eq!(c.score, *score, "{}", c.name);
    }
    // Where the search's time went besides the supernet steps.
    assert!(search.evaluation_seconds.unwrap() > 0.0 && search.timing_seconds.unwrap() > 0.0, "{search:?}");
    assert_eq!((search.epoch, search.step), (1, 14), "2 search epochs of 7 steps");
    let summary: Summary = serde_json::from_str(&std::fs::read_to_string(whole.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.schedule, "auto");
    assert_eq!(summary.stages.len(), 2);
    assert_eq!((summary.stages[1].start_epoch, summary.stages[1].resolution, summary.stages[1].depth), (3, 16, 2));
    assert_eq!(summary.stages[0].start_epoch, 0);
    assert_eq!(format!("r{}_l{}", summary.stages[0].resolution, summary.stages[0].depth), search.winner);

    // Interrupted inside the search, then resumed: the supernet steps repeat exactly. (What
    // follows depends on the candidates' measured step times, which no two runs share.)
    let interrupted = dir.join("interrupted");
    interrupt_and_resume(&auto_args(&interrupted), &interrupted, 3);
    let (a, b) = (step_losses(&interrupted), step_losses(&whole));
    assert_eq!(a.len(), b.len());
    assert_eq!(a[..14], b[..14], "supernet steps after resuming inside the search");
    let log = parse_log(&std::fs::read_to_string(interrupted.join("log.jsonl")).unwrap());
    assert_eq!(log.events.iter().filter(|e| matches!(e, Event::Search(_))).count(), 1);

    // With FLOPs as the cost the choice is the same on every run: the whole loss sequence
    // repeats after an interruption inside the search.
    let flops_args = |out: &Path| {
        let mut args = auto_args(out);
        args.extend(["--search-cost", "flops"].map(String::from));
        args
    };
    let (whole, interrupted) = (dir.join("flops-whole"), dir.join("flops-interrupted"));
    assert!(run(&flops_args(&whole)).status.success());
    interrupt_and_resume(&flops_args(&interrupted), &interrupted, 3);
    assert_eq!(step_losses(&interrupted), step_losses(&whole), "the same losses with --search-cost flops");

    // A fractional search ends inside an epoch: half of 7 steps rounds to 4, scored at steps
    // 2 and 3 (its second half) and at its end, with the weights (the EMA of 0.995 is far
    // too slow for 4 steps). The chosen sub-network trains on from step 4, inside epoch 0,
    // and a run interrupted around there resumes with the same losses.
    let half_args = |out: &Path| {
        let mut args = flops_args(out);
        let at = args.iter().position(|a| a == "--search-epochs").unwrap();
        args[at + 1] = "0.5".into();
        args
    };
    let (whole, interrupted) = (dir.join("half-whole"), dir.join("half-interrupted"));
    let out = run(&half_args(&whole));
    assert!(out.status.success(), "{}", text(&out));
    let log = parse_log(&std::fs::read_to_string(whole.join("log.jsonl")).unwrap());
    let searches: Vec<_> =
        log.events.iter().filter_map(|e| if let Event::Search(s) = e { Some(s) } else { None }).collect();
    assert_eq!(searches.len(), 1);
    assert_eq!((searches[0].epoch, searches[0].step), (0, 4), "the search ends after 4 steps, inside epoch 0");
    assert_eq!(searches[0].scored_with.as_deref(), Some("weights"));
    assert!(searches[0].candidates.iter().all(|c| c.losses.len() == 3), "{:?}", searches[0].candidates);
    let epochs: Vec<u32> =
        log.events.iter().filter_map(|e| if let Event::Epoch(e) = e { Some(e.epoch) } else { None }).collect();
    assert_eq!(epochs, [0, 1, 2, 3, 4, 5], "each epoch reported once");
    let steps: Vec<u64> =
        log.events.iter().filter_map(|e| if let Event::Step(s) = e { Some(s.step) } else { None }).collect();
    assert_eq!(steps, (0..42).collect::<Vec<u64>>(), "every step once, in order");
    interrupt_and_resume(&half_args(&interrupted), &interrupted, 5);
    assert_eq!(step_losses(&interrupted), step_losses(&whole), "the same losses around a mid-epoch search end");
}

#[test]
fn the_default_schedule_is_auto_with_a_stage_per_epoch_in_short_runs() {
    let dir = scratch("default");
    let model = micro_model(&dir);
    let out_dir = dir.join("run");
    let mut args = micro_args(&model, &out_dir, 2);
    let at = args.iter().position(|a| a == "--schedule").unwrap();
    args.drain(at..at + 2);
    // Enough images to hold a batch back for the candidates' evaluation.
    set_option(&mut args, "--train-images", "256");
    let out = run(&args);
    assert!(out.status.success(), "2 epochs under the default 4 stages: {}", text(&out));
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.schedule, "auto");
    let stages: Vec<(u32, u32, u32)> = summary.stages.iter().map(|s| (s.start_epoch, s.resolution, s.depth)).collect();
    assert_eq!(stages.len(), 2, "one stage per epoch: {stages:?}");
    assert_eq!(stages[1], (1, 16, 2), "the last stage trains the full model");
    // The micro model keeps its 2 blocks (2/3 of 2 rounds up to 2), and the thrifty default
    // offers nothing above the schedule's 12 px at stage 0: it trains without a search.
    assert_eq!(stages[0], (0, 12, 2));
    let log = parse_log(&std::fs::read_to_string(out_dir.join("log.jsonl")).unwrap());
    assert_eq!(log.events.iter().filter(|e| matches!(e, Event::Search(_))).count(), 0);
    let first = log.events.iter().find_map(|e| if let Event::Stage(s) = e { Some(s) } else { None }).unwrap();
    assert_eq!(first.chosen_without_search.as_deref(), Some("r12_l2"));
    // The stage event records what the stage trains, as the summary does.
    assert_eq!((first.resolution, first.depth), (12, 2));
}
