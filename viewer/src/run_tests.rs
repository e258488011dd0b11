//! Tests of `run`.

use super::*;

/// A small auto run: stage 0 at r8/d2 with a search, growth to a supernet of 4, stage 1.
fn log() -> String {
    let mut lines = vec![
        concat!(
            r#"{"event":"run_start","time":1.0,"version":"0.1","config":{},"adapter":"llvmpipe (vulkan)","#,
            r#""schedule":"auto"}"#,
        )
        .to_string(),
        concat!(
            r#"{"event":"stage","stage":0,"epoch":0,"step":0,"resolution":8,"depth":2,"#,
            r#""regularisation":{"randaug_magnitude":0,"drop_path":0,"erase_prob":0,"mixup":0}}"#,
        )
        .into(),
        concat!(
            r#"{"event":"growth","epoch":0,"step":0,"from_depth":2,"to_depth":4,"mapping":[0,0,1,1],"#,
            r#""source":"ema_0.99"}"#,
        )
        .into(),
    ];
    for step in 0..40 {
        lines.push(format!(
            concat!(
                r#"{{"event":"step","step":{step},"epoch":{},"loss":{},"lr":0.001,"images_per_second":100,"#,
                r#""resolution":8,"depth":4}}"#,
            ),
            step / 10,
            2.0 - step as f64 * 0.03,
            step = step,
        ));
        if step % 10 == 9 {
            let epoch = step / 10;
            lines.push(format!(
                concat!(
                    r#"{{"event":"epoch","epoch":{epoch},"step":{},"train_loss":1.5,"val_loss":1.2,"val_acc":{},"#,
                    r#""val_acc_ema":[{{"decay":0.99,"acc":0.5}}],"images_per_second":100,"wall_seconds":{},"#,
                    r#""train_flops":{},"resolution":8,"depth":4}}"#,
                ),
                step + 1,
                0.3 + 0.1 * epoch as f64,
                10.0 * (epoch + 1) as f64,
                1e9 * (epoch + 1) as f64,
                epoch = epoch,
            ));
        }
        if step == 19 {
            lines.push(concat!(
                r#"{"event":"search","stage":0,"epoch":1,"step":20,"candidates":[{"name":"r8_l2","resolution":8,"#,
                r#""depth":2,"losses":[1.5,1.4],"step_ms":10,"score":1.2},{"name":"r8_l4","resolution":8,"depth":4,"#,
                r#""losses":[1.3,1.2],"step_ms":20,"score":1.1}],"fit":{"a":2.0,"b":-0.2},"w":0.2,"winner":"r8_l4","#,
                r#""scored_with":"weights","evaluation_seconds":2.5,"timing_seconds":6}"#,
            ).into());
            lines.push(
                concat!(
                    r#"{"event":"stage","stage":1,"epoch":2,"step":20,"resolution":16,"depth":4,"#,
                    r#""regularisation":{"randaug_magnitude":0,"drop_path":0,"erase_prob":0,"mixup":0}}"#,
                )
                .into(),
            );
        }
    }
    lines.join("\n") + "\n"
}

const SUMMARY: &str = concat!(
    r#"{"schedule":"auto","epochs":4,"stages":[{"start_epoch":0,"resolution":8,"depth":4},{"start_epoch":2,"#,
    r#""resolution":16,"depth":4}],"val_acc":0.6}"#,
);

#[test]
fn a_tie_within_the_noise_is_explained() {
    let tied = log().replace(r#""winner":"r8_l4""#, r#""winner":"r8_l2","lowest_score":"r8_l4""#);
    let report = Run::parse(&tied, Some(SUMMARY), None).unwrap().report();
    assert!(report.searches.contains("<span data-testid=\"search-winner\">r8_l2</span>"), "{}", report.searches);
    assert!(report.searches.contains("the lowest, r8_l4, ties with the cheaper r8_l2"), "{}", report.searches);
}

#[test]
fn an_anchored_choice_is_explained() {
    let kept = log().replace(r#""winner":"r8_l4""#, r#""winner":"r8_l4","anchor":"r8_l4""#);
    let report = Run::parse(&kept, Some(SUMMARY), None).unwrap().report();
    assert!(report.searches.contains("anchored on the prog schedule's r8_l4"), "{}", report.searches);
    assert!(report.searches.contains("so it is kept"), "{}", report.searches);
    let departed = log().replace(r#""winner":"r8_l4""#, r#""winner":"r8_l4","anchor":"r8_l2""#);
    let report = Run::parse(&departed, Some(SUMMARY), None).unwrap().report();
    assert!(report.searches.contains("r8_l4 scores below it beyond the evaluation noise"), "{}", report.searches);
}

#[test]
fn a_thrifty_choice_is_explained() {
    // r8_l2 (10 ms a step) undercuts the anchor r8_l4 (20 ms).
    let thrifty = |winner: &str| {
        let log = log().replace(
            r#""winner":"r8_l4""#,
            &format!(r#""winner":"{winner}","anchor":"r8_l4","search_space":"thrifty""#),
        );
        Run::parse(&log, Some(SUMMARY), None).unwrap().report().searches
    };
    let undercut = thrifty("r8_l2");
    assert!(undercut.contains("r8_l2 is the cheapest candidate that scores no worse than it"), "{undercut}");
    let kept = thrifty("r8_l4");
    assert!(kept.contains("every cheaper candidate scores above it beyond"), "{kept}");
    // A log that records the verdict is explained by it, whichever way the step times lie.
    let below = thrifty(r#"r8_l2","verdict":"below_anchor"#);
    assert!(below.contains("r8_l2 scores below it beyond the evaluation noise"), "{below}");
    assert!(!below.contains("scores no worse"), "{below}");
    let not_worse = thrifty(r#"r8_l2","verdict":"not_worse_than_anchor"#);
    assert!(not_worse.contains("none scores below it beyond"), "{not_worse}");
    assert!(not_worse.contains("r8_l2 is the cheapest candidate that scores no worse than it"), "{not_worse}");
}

#[test]
fn a_run_reads_into_stages_searches_and_panels() {
    let run = Run::parse(&log(), Some(SUMMARY), None).unwrap();
    assert_eq!((run.steps.len(), run.epochs.len(), run.stages.len()), (40, 4, 2));
    let report = run.report();
    assert_eq!(report.stage_count, 2);
    assert_eq!((report.schedule.as_str(), report.epochs), ("auto", 4));
    assert!(report.searches.contains("<span data-testid=\"search-winner\">r8_l4</span>"), "{}", report.searches);
    assert!(report.searches.contains("measured with the weights"), "{}", report.searches);
    assert!(report.searches.contains("Scoring took 2.5 s and timing 6.0 s"), "{}", report.searches);
    assert!(report.timeline.contains("class=\"band\""), "the search window is shaded");
    assert!(report.network.contains("new block 1 copies block 0"), "{}", report.network);
    // The winner r8_l4 runs every block of the supernet; r8_l2 only the originals 0 and 2.
    assert!(
        report.network.contains(
            "<td>r8_l2</td><td class=\"on\">●</td><td class=\"off\">·</td><td \
        class=\"on\">●</td><td class=\"off\">·</td>"
        ),
        "{}",
        report.network
    );
    assert!(report.compute.contains("autoprog compare"));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[test]
fn a_recycled_sub_network_gets_a_column_before_the_next_growth() {
    let mut text = log();
    text.push_str(concat!(
        r#"{"event":"growth","epoch":3,"step":30,"from_depth":3,"to_depth":6,"mapping":[0,0,1,1,2,2],"#,
        r#""source":"weights"}"#,
    ));
    text.push('\n');
    let network = Run::parse(&text, None, None).unwrap().network();
    let columns: Vec<&str> =
        ["start: 2 blocks", "epoch 0: supernet, 4 blocks", "chosen: 3 blocks", "epoch 3: grown, 6 blocks"]
            .into_iter()
            .filter(|c| network.contains(c))
            .collect();
    assert_eq!(columns.len(), 4, "{network}");
}

#[test]
fn the_stage_count_follows_the_summary_else_the_log() {
    let run = Run::parse(&log(), None, None).unwrap();
    assert_eq!(run.report().stage_count, 2);
    let one = r#"{"schedule":"none","epochs":4,"stages":[{"start_epoch":0,"resolution":16,"depth":4}]}"#;
    assert_eq!(Run::parse(&log(), Some(one), None).unwrap().report().stage_count, 1);
}

#[test]
fn steps_map_to_fractional_epochs() {
    let run = Run::parse(&log(), None, None).unwrap();
    assert_eq!(run.step_to_epoch(0), 0.0);
    assert_eq!(run.step_to_epoch(10), 1.0);
    assert_eq!(run.step_to_epoch(15), 1.5);
    assert_eq!(run.step_to_epoch(50), 5.0);
}

#[test]
fn a_log_without_epoch_ends_places_steps_by_their_epoch() {
    // A run still in its first epochs (or a log of step events only).
    let text: String = (0..25)
        .map(|step| {
            format!(
                "{{\"event\":\"step\",\"step\":{step},\"epoch\":{},\"loss\":1.0,\"lr\":0.001,\
                    \"images_per_second\":1,\"resolution\":8,\"depth\":2}}\n",
                step / 10
            )
        })
        .collect();
    let run = Run::parse(&text, None, None).unwrap();
    assert_eq!(run.epoch_count(), 3);
    assert_eq!(run.step_to_epoch(15), 1.5);
    assert!(run.step_to_epoch(24) <= run.epoch_count() as f64);
}

#[test]
fn broken_files_become_warnings_and_an_empty_log_an_error() {
    let mut text = log();
    text.insert_str(0, "not json\n{\"event\":\"teleport\"}\n");
    text.push_str("{\"event\":\"step\",\"ste");
    let run = Run::parse(&text, Some("{oops"), Some("42")).unwrap();
    let w = run.warnings.join("\n");
    assert!(w.contains("line 1") && w.contains("teleport") && w.contains("truncated"), "{w}");
    assert!(w.contains("summary.json") && w.contains("compare.json"), "{w}");
    assert!(Run::parse("", None, None).unwrap_err().contains("empty"));
    assert!(Run::parse("garbage\n", None, None).unwrap_err().contains("none of its 1 lines"));
}

#[test]
fn a_compare_file_draws_the_baseline() {
    let compare = concat!(
        r#"{"runs":[],"baseline":"none","by_schedule":{"none":{"runs":2,"wall_seconds":80,"train_flops":8e9,"#,
        r#""val_acc":0.6,"val_acc_ema":null,"speedup":null,"acc_delta":null},"auto":{"runs":2,"wall_seconds":40,"#,
        r#""train_flops":4e9,"val_acc":0.6,"val_acc_ema":null,"speedup":2.0,"acc_delta":0.0}}}"#,
    );
    let run = Run::parse(&log(), Some(SUMMARY), Some(compare)).unwrap();
    let compute = run.report().compute;
    assert!(compute.contains("none (mean of compare.json)") && compute.contains("2.00×"), "{compute}");
}

#[test]
fn long_runs_are_bucketed() {
    let steps: Vec<StepEvent> = (0..100_000)
        .map(|i| StepEvent {
            step: i,
            epoch: 0,
            loss: if i == 5 { f64::NAN } else { 1.0 },
            lr: 0.0,
            images_per_second: 0.0,
            resolution: 8,
            depth: 2,
        })
        .collect();
    let buckets = bucket_means(&steps, MAX_CURVE_POINTS);
    assert!(buckets.len() <= MAX_CURVE_POINTS && buckets.len() > MAX_CURVE_POINTS / 2);
    assert!(buckets.iter().all(|b| b.1 == 1.0));
}

#[test]
fn without_a_summary_a_searched_stage_shows_its_winner() {
    let run = Run::parse(&log(), None, None).unwrap();
    let stages = run.stage_list();
    // Stage 0's event holds the schedule's 8 px and 2 blocks; its search chose r8_l4.
    assert_eq!((stages[0].start_epoch, stages[0].resolution, stages[0].depth), (0, 8, 4));
    assert_eq!((stages[1].start_epoch, stages[1].resolution, stages[1].depth), (2, 16, 4));
}

#[test]
fn the_search_cost_comes_from_the_search_event() {
    let time = Run::parse(&log(), None, None).unwrap();
    assert_eq!(time.search_cost, SearchCost::Time);
    assert!(time.search_panels().contains("step time (ms)"));
    let flops = log().replace(r#""timing_seconds":6}"#, r#""timing_seconds":6,"search_cost":"flops"}"#);
    let flops = Run::parse(&flops, None, None).unwrap();
    assert_eq!(flops.search_cost, SearchCost::Flops);
    assert!(flops.search_panels().contains("GFLOPs per step"));
}

#[test]
fn a_search_still_running_is_shaded_until_it_ends() {
    // The run so far: its first stage's search has trained 15 steps and not yet ended.
    let planned = log().replace(r#""config":{}"#, r#""config":{"recipe":{"stages":2}}"#);
    let so_far: String =
        planned.lines().take_while(|l| !l.contains(r#""step":15,"#)).map(|l| format!("{l}\n")).collect();
    let run = Run::parse(&so_far, None, None).unwrap();
    let (start, end, label) = run.search_in_progress().expect("a search in progress");
    assert_eq!((start, label.as_str()), (0.0, "searching for stage 0 (in progress)"));
    assert!((end - 1.5).abs() < 1e-9, "the window reaches the last logged step: {end}");
    let report = run.report();
    assert!(report.running && report.timeline.contains("searching for stage 0 (in progress)"), "{}", report.timeline);
    // Ended: by its search event, or by the end of the session (a stopped run).
    assert!(Run::parse(&planned, None, None).unwrap().search_in_progress().is_none());
    let stopped = so_far + r#"{"event":"run_end","time":2.0,"wall_seconds":1.0,"status":"interrupted"}"# + "\n";
    let run = Run::parse(&stopped, None, None).unwrap();
    assert!(run.search_in_progress().is_none() && !run.report().running);
    // The last stage opens without a search.
    let last_stage = planned.replace(r#""recipe":{"stages":2}"#, r#""recipe":{"stages":1}"#);
    let cut: String = last_stage.lines().take(10).map(|l| format!("{l}\n")).collect();
    assert!(Run::parse(&cut, None, None).unwrap().search_in_progress().is_none());
}

#[test]
fn the_accuracy_so_far_is_the_last_validated_epochs() {
    // A run that validates every few epochs logs the epochs in between without a validation.
    let unvalidated = concat!(
        r#"{"event":"epoch","epoch":4,"step":50,"train_loss":1.4,"val_loss":null,"val_acc":null,"val_acc_ema":[],"#,
        r#""images_per_second":100,"wall_seconds":50,"train_flops":5e9,"resolution":8,"depth":4}"#
    );
    let run = Run::parse(&format!("{}\n{unvalidated}\n", log()), None, None).unwrap();
    assert_eq!(run.epochs.len(), 5);
    let last_validated = run.epochs[3].val_acc;
    assert!(last_validated.is_some());
    assert_eq!(run.report().final_val_acc, last_validated);
}
