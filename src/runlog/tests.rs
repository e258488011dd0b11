//! Tests of `runlog`.

use super::*;

fn every_event() -> Vec<Event> {
    vec![
        Event::RunStart(RunStartEvent {
            time: 1_790_000_000.25,
            version: "0.1.0 (abc1234)".into(),
            config: serde_json::json!({"model": "vit_nano", "epochs": 30, "lr": 0.001}),
            adapter: "llvmpipe (Vulkan)".into(),
            schedule: "autoprog".into(),
        }),
        Event::Step(StepEvent {
            step: 1200,
            epoch: 3,
            loss: 1.875,
            lr: 0.0008,
            images_per_second: 412.5,
            resolution: 24,
            depth: 4,
        }),
        Event::Epoch(EpochEvent {
            epoch: 3,
            step: 1250,
            train_loss: 1.9,
            val_loss: Some(1.7),
            val_acc: Some(0.41),
            val_acc_ema: vec![EmaAcc { decay: 0.9995, acc: 0.43 }],
            images_per_second: 400.0,
            wall_seconds: 312.5,
            train_flops: 4.2e13,
            resolution: 24,
            depth: 4,
        }),
        Event::Stage(StageEvent {
            stage: 1,
            epoch: 8,
            step: 3333,
            resolution: 28,
            depth: 5,
            regularisation: Regularisation { randaug_magnitude: 5.0, drop_path: 0.05, erase_prob: 0.1, mixup: 0.0 },
            chosen_without_search: Some("r28_l5".into()),
        }),
        Event::Growth(GrowthEvent {
            epoch: 8,
            step: 3333,
            from_depth: 4,
            to_depth: 6,
            mapping: vec![0, 1, 1, 2, 3, 3],
            source: "ema0.9995".into(),
        }),
        Event::Search(SearchEvent {
            stage: 1,
            epoch: 10,
            step: 4100,
            candidates: vec![
                CandidateScore {
                    name: "r24_l5".into(),
                    sub_network: Candidate { resolution: 24, depth: 5 },
                    losses: vec![1.8, 1.7, 1.65],
                    step_ms: 40.0,
                    score: 2.1,
                },
                CandidateScore {
                    name: "r32_l6".into(),
                    sub_network: Candidate { resolution: 32, depth: 6 },
                    losses: vec![1.6, 1.5, 1.45],
                    step_ms: 80.0,
                    score: 2.3,
                },
            ],
            fit: PowerLaw { a: 3.0, b: -0.15 },
            w: 0.15,
            winner: "r24_l5".into(),
            lowest_score: Some("r24_l5".into()),
            anchor: Some("r24_l5".into()),
            scored_with: Some("ema_0.9998".into()),
            evaluation_seconds: Some(12.5),
            timing_seconds: Some(3.25),
            search_cost: Some(SearchCost::Time),
            search_space: Some(SearchSpace::Thrifty),
            verdict: Some(Verdict::AnchorKept),
        }),
        Event::Checkpoint(CheckpointEvent {
            epoch: 3,
            step: 1250,
            path: "last.safetensors".into(),
            kind: CheckpointKind::Last,
        }),
        Event::Warning(WarningEvent { message: "2 images could not be decoded".into() }),
        Event::DataWarning(DataWarningEvent {
            epoch: 0,
            step: 12,
            file: "data/train/cat/broken.png".into(),
            reason: "unexpected end of file".into(),
        }),
        Event::RunEnd(RunEndEvent {
            time: 1_790_003_600.0,
            wall_seconds: 3550.0,
            status: RunStatus::Interrupted,
            message: Some("stopped by Ctrl-C".into()),
        }),
    ]
}

fn summary(schedule: &str, wall_seconds: f64, val_acc: f64, ema: Option<f64>) -> Summary {
    Summary {
        schedule: schedule.into(),
        epochs: 30,
        wall_seconds,
        train_flops: 1e15,
        images_per_second: 500.0,
        val_acc,
        val_acc_ema: ema,
        best_val_acc: val_acc + 0.01,
        final_resolution: 32,
        final_depth: 6,
        adapter: "llvmpipe (Vulkan)".into(),
        stages: vec![StageSummary { start_epoch: 0, resolution: 16, depth: 3 }],
        seed: 7,
        skipped_images: 0,
        search_seconds: if schedule == "autoprog" { 12.5 } else { 0.0 },
        search_flops: if schedule == "autoprog" { 2e13 } else { 0.0 },
        model: "vit_nano".into(),
        classes: 10,
        precision: "f32".into(),
        skipped_steps: 0,
        ranks: 1,
        adapters: Vec::new(),
    }
}

#[test]
fn every_event_round_trips_with_its_tag() {
    let events = every_event();
    let names: Vec<&str> = events.iter().map(Event::name).collect();
    assert_eq!(names, EVENT_NAMES, "every_event covers every kind, in order");
    for event in events {
        let line = serde_json::to_string(&event).unwrap();
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["event"], event.name(), "{line}");
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, event, "{line}");
    }
}

#[test]
fn non_finite_losses_read_back_as_nan() {
    let event = Event::Step(StepEvent {
        step: 1,
        epoch: 0,
        loss: f64::NAN,
        lr: 0.1,
        images_per_second: 1.0,
        resolution: 32,
        depth: 6,
    });
    let line = serde_json::to_string(&event).unwrap();
    assert!(line.contains(r#""loss":null"#), "{line}");
    let parse = parse_log(&format!("{line}\n"));
    assert!(parse.skipped.is_empty(), "{:?}", parse.skipped);
    let Event::Step(step) = &parse.events[0] else { panic!("{:?}", parse.events) };
    assert!(step.loss.is_nan());
}

#[test]
fn unknown_fields_are_ignored_and_new_optional_fields_default() {
    let line = r#"{"event":"epoch","epoch":1,"step":10,"train_loss":2.0,"images_per_second":5.0,
        "wall_seconds":3.0,"train_flops":1e9,"resolution":16,"depth":2,"added_later":[1,2]}"#;
    let Event::Epoch(epoch) = serde_json::from_str(line).unwrap() else { panic!() };
    assert_eq!((epoch.val_loss, epoch.val_acc, epoch.val_acc_ema.len()), (None, None, 0));
}

#[test]
fn parse_log_skips_and_reports_malformed_unknown_and_truncated_lines() {
    let good: Vec<String> = every_event().iter().map(|e| serde_json::to_string(e).unwrap()).collect();
    let torn = &good[1][..good[1].len() / 2];
    let text = format!(
        "{}\n{{not \
            json\n\n{}\n{{\"event\":\"hologram\",\"x\":1}}\n{{\"event\":\"step\",\"step\":\"many\"}}\r\n{}\n{torn}",
        good[0], good[1], good[2]
    );
    let parse = parse_log(&text);
    assert_eq!(parse.events, every_event()[..3].to_vec());
    let lines: Vec<usize> = parse.skipped.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [2, 5, 6, 8], "{:?}", parse.skipped);
    assert!(parse.skipped[0].1.contains("not a log event"), "{}", parse.skipped[0].1);
    assert!(parse.skipped[1].1.contains("unknown event \"hologram\""), "{}", parse.skipped[1].1);
    assert!(parse.skipped[2].1.contains("malformed \"step\""), "{}", parse.skipped[2].1);
    assert!(parse.skipped[3].1.starts_with("truncated last line"), "{}", parse.skipped[3].1);
    // A complete last line without its newline is still an event.
    let parse = parse_log(&good[0]);
    assert_eq!((parse.events.len(), parse.skipped.len()), (1, 0));
    assert_eq!(parse_log(""), LogParse::default());
}

#[test]
fn parse_log_reads_100k_lines() {
    let events = every_event();
    let lines: Vec<String> = events.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
    let mut text = String::new();
    for i in 0..100_000 {
        text.push_str(&lines[i % lines.len()]);
        text.push('\n');
    }
    let start = std::time::Instant::now();
    let parse = parse_log(&text);
    eprintln!("parse_log: 100000 lines, {} bytes in {:?}", text.len(), start.elapsed());
    assert!(parse.skipped.is_empty());
    assert_eq!(parse.events.len(), 100_000);
    assert_eq!(parse.events[99_999], events[99_999 % events.len()]);
}

#[test]
fn summary_round_trips_and_old_files_read_with_defaults() {
    let s = summary("autoprog", 100.0, 0.8, None);
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains(r#""val_acc_ema":null"#), "{json}");
    assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), s);
    let old: Summary = serde_json::from_str(r#"{"schedule":"fixed","val_acc":0.5,"future":true}"#).unwrap();
    assert_eq!((old.schedule.as_str(), old.val_acc, old.stages.len()), ("fixed", 0.5, 0));
}

#[test]
fn compare_means_speedup_and_acc_delta_against_baseline() {
    let runs = vec![
        summary("fixed", 200.0, 0.80, Some(0.82)),
        summary("fixed", 300.0, 0.84, None),
        summary("autoprog", 125.0, 0.81, Some(0.83)),
    ];
    let compare = Compare::from_runs(runs, "fixed");
    assert_eq!(compare.baseline.as_deref(), Some("fixed"));
    let fixed = &compare.by_schedule["fixed"];
    assert_eq!((fixed.runs, fixed.wall_seconds, fixed.val_acc_ema), (2, 250.0, Some(0.82)));
    assert!((fixed.val_acc - 0.82).abs() < 1e-12);
    assert_eq!((fixed.speedup, fixed.acc_delta), (None, None), "the baseline is not compared with itself");
    let auto = &compare.by_schedule["autoprog"];
    assert_eq!(auto.speedup, Some(2.0));
    assert_eq!((auto.search_seconds, auto.search_flops), (12.5, 2e13));
    assert_eq!((fixed.search_seconds, fixed.search_flops), (0.0, 0.0));
    assert!((auto.acc_delta.unwrap() + 0.01).abs() < 1e-12);
    let json = serde_json::to_string(&compare).unwrap();
    assert_eq!(serde_json::from_str::<Compare>(&json).unwrap(), compare);
    let alone = Compare::from_runs(vec![summary("autoprog", 1.0, 0.5, None)], "fixed");
    assert_eq!((alone.baseline, alone.by_schedule["autoprog"].speedup), (None, None));
}

/// Every example line of docs/runlog.md parses, and every event kind has one.
#[test]
fn doc_examples_parse() {
    let doc = include_str!("../../docs/runlog.md");
    let examples: String = doc.lines().filter(|l| l.starts_with(r#"{"event":"#)).flat_map(|l| [l, "\n"]).collect();
    let parse = parse_log(&examples);
    assert!(parse.skipped.is_empty(), "{:?}", parse.skipped);
    let mut kinds: Vec<&str> = parse.events.iter().map(Event::name).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut all = EVENT_NAMES.to_vec();
    all.sort_unstable();
    assert_eq!(kinds, all);
}

#[cfg(native)]
mod files {
    use super::*;
    use std::path::PathBuf;

    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("autoprog-runlog-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn log_writer_appends_one_line_per_event() {
        let dir = temp_dir("append");
        let path = dir.join("run/log.jsonl");
        let events = every_event();
        let mut log = LogWriter::open(&path).unwrap();
        for e in &events[..4] {
            log.write(e).unwrap();
        }
        drop(log);
        let mut log = LogWriter::open(&path).unwrap();
        for e in &events[4..] {
            log.write(e).unwrap();
        }
        let parse = read_log(&path).unwrap();
        assert_eq!((parse.events, parse.skipped), (events, vec![]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_for_resume_drops_a_torn_last_line() {
        let dir = temp_dir("resume");
        let path = dir.join("log.jsonl");
        let events = every_event();
        let mut log = LogWriter::open(&path).unwrap();
        log.write(&events[0]).unwrap();
        log.write(&events[1]).unwrap();
        drop(log);
        // A crash in the middle of a line, ending in a torn multi-byte character.
        let mut bytes = std::fs::read(&path).unwrap();
        let torn = b"{\"event\":\"warning\",\"message\":\"caf\xC3";
        bytes.extend_from_slice(torn);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_log(&path).unwrap().skipped.len(), 1);

        let mut log = LogWriter::open_for_resume(&path).unwrap();
        assert_eq!(log.dropped_bytes(), torn.len() as u64);
        log.write(&events[2]).unwrap();
        let parse = read_log(&path).unwrap();
        assert_eq!((parse.events, parse.skipped), (events[..3].to_vec(), vec![]));

        // Nothing to drop on a clean log; a log without any newline is cut to empty.
        assert_eq!(LogWriter::open_for_resume(&path).unwrap().dropped_bytes(), 0);
        let lone = dir.join("lone.jsonl");
        std::fs::write(&lone, b"{\"event\":").unwrap();
        assert_eq!(LogWriter::open_for_resume(&lone).unwrap().dropped_bytes(), 9);
        assert_eq!(std::fs::read(&lone).unwrap(), b"");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_for_resume_scans_back_over_long_torn_tails() {
        let dir = temp_dir("long-tail");
        let path = dir.join("log.jsonl");
        let mut bytes = b"{\"event\":\"warning\",\"message\":\"a\"}\n".to_vec();
        let kept = bytes.len() as u64;
        bytes.extend(std::iter::repeat_n(b'x', 200_000));
        std::fs::write(&path, &bytes).unwrap();
        let log = LogWriter::open_for_resume(&path).unwrap();
        assert_eq!(log.dropped_bytes(), 200_000);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), kept);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn json_files_write_atomically_and_read_back() {
        let dir = temp_dir("json");
        let path = dir.join("summary.json");
        let s = summary("autoprog", 10.0, 0.5, Some(0.55));
        write_json_atomic(&path, &s).unwrap();
        assert_eq!(read_json::<Summary>(&path).unwrap(), s);
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["summary.json"]);
        std::fs::write(&path, b"{\"schedule\": 3").unwrap();
        let err = read_json::<Summary>(&path).unwrap_err().to_string();
        assert!(err.contains("summary.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
