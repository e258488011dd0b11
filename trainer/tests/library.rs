//! The training loop as a library: driven in-process by a host without threads (batches
//! built on the calling thread, the record kept in memory), it trains exactly what the
//! `autoprog` command trains with its worker threads and run directory, search included.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use autoprog::data::{Procedural, ProceduralSource, Skipped, Split};
use autoprog::runlog::{Event, RunStatus};
use autoprog::train::host::SystemClock;
use autoprog::train::{Host, MemoryRecord, Schedule, SourceData, Start, TrainConfig};
use autoprog::{ContextOptions, GpuContext};

use common::*;

#[test]
fn an_in_process_run_without_threads_repeats_the_command_line_run_that_records_steps_afresh() {
    let dir = scratch("library");
    let model = micro_model(&dir);
    let cli_dir = dir.join("cli");
    // AutoProg with a one-epoch search over both resolutions and depths, then growth:
    // every phase of the loop, with FLOPs as the cost so that the choice is reproducible.
    let mut args = micro_args(&model, &cli_dir, 3);
    set_option(&mut args, "--train-images", "256");
    set_option(&mut args, "--schedule", "auto");
    args.extend(
        ["--stages", "2", "--res-scale", "0.5", "--depth-scale", "0.5", "--search-epochs", "1"].map(String::from),
    );
    // The anchored space, since the thrifty default has no candidate above stage 0's network.
    args.extend(["--search-cost", "flops", "--search-space", "anchored"].map(String::from));
    // The command records every step afresh, the library replays its step plans: equal
    // losses and weights also show that replaying a plan changes nothing, across the
    // search's sub-network switches and the growth after it.
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = autoprog_with_env(&refs, &[(autoprog::model::plans::STEP_PLANS_ENV, "0")]);
    assert!(out.status.success(), "{}", text(&out));

    // The same configuration, run by the library on the built-in images.
    let config = TrainConfig::from_toml(&std::fs::read_to_string(cli_dir.join("config.toml")).unwrap()).unwrap();
    let d = &config.data;
    let images = Procedural { classes: d.classes, image_size: d.image_size, seed: d.data_seed };
    let train = Arc::new(ProceduralSource::new(images, Split::Train, d.train_images));
    let val = Arc::new(ProceduralSource::new(images, Split::Val, d.val_images));
    let mut data = SourceData::new(train, val, &config, "procedural".into(), Skipped::default()).unwrap();
    let mut record = MemoryRecord::default();
    let ctx = GpuContext::new_blocking(&ContextOptions::default()).unwrap();
    let (clock, stop) = (SystemClock::default(), AtomicBool::new(false));
    let host = Host { data: &mut data, sink: &mut record, clock: &clock, stop: &stop, pace: None, collective: None };
    let summary = pollster::block_on(autoprog::train::run(&ctx, &config, Start::Fresh, host)).unwrap();

    let losses: Vec<(u64, f64)> = record
        .events
        .iter()
        .filter_map(|e| if let Event::Step(s) = e { Some((s.step, s.loss)) } else { None })
        .collect();
    assert_eq!(losses, step_losses(&cli_dir), "every step's loss, to the bit");
    let searches = |events: &[Event]| -> Vec<String> {
        events.iter().filter_map(|e| if let Event::Search(s) = e { Some(s.winner.clone()) } else { None }).collect()
    };
    let cli_log = autoprog::runlog::parse_log(&std::fs::read_to_string(cli_dir.join("log.jsonl")).unwrap());
    assert_eq!(searches(&record.events), searches(&cli_log.events));
    assert_eq!(searches(&record.events).len(), 1, "the run searched once");
    let cli_summary: autoprog::runlog::Summary =
        serde_json::from_str(&std::fs::read_to_string(cli_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary.val_acc, summary.stages.clone()), (cli_summary.val_acc, cli_summary.stages));
    assert_eq!(record.summary.as_ref().map(|s| s.val_acc), Some(summary.val_acc));
    // The last checkpoint holds the same weights as the command's file.
    let cli_ckpt = autoprog::checkpoint::Checkpoint::load(&cli_dir.join("checkpoints/last.safetensors")).unwrap();
    let ours = record.last.as_ref().expect("a checkpoint was handed to the sink");
    let by_name = |c: &autoprog::checkpoint::Checkpoint| {
        let mut tensors = c.tensors.clone();
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        tensors
    };
    assert_eq!(by_name(ours), by_name(&cli_ckpt));
}

#[test]
fn setup_errors_end_the_record_as_a_failed_run_before_any_training() {
    let ctx = GpuContext::new_blocking(&ContextOptions::default()).unwrap();
    let mut config = TrainConfig::preset("quick").unwrap();
    config.data.train_images = 320;
    config.fit_stages_to_epochs();
    let images = Procedural { classes: config.data.classes, image_size: 32, seed: 0 };
    let train = Arc::new(ProceduralSource::new(images, Split::Train, 320));
    let val = Arc::new(ProceduralSource::new(images, Split::Val, 64));
    let attempt = |config: &TrainConfig, data: &mut SourceData| {
        let mut record = MemoryRecord::default();
        let (clock, stop) = (SystemClock::default(), AtomicBool::new(false));
        let host = Host { data, sink: &mut record, clock: &clock, stop: &stop, pace: None, collective: None };
        let error = pollster::block_on(autoprog::train::run(&ctx, config, Start::Fresh, host)).unwrap_err();
        (format!("{error:#}"), record.events)
    };
    let failed_with = |events: &[Event], text: &str| {
        matches!(events, [Event::RunStart(_), Event::RunEnd(end)]
            if end.status == RunStatus::Failed && end.message.as_deref().is_some_and(|m| m.contains(text)))
    };

    // A model with fewer outputs than the data has classes.
    let mut three = config.clone();
    three.model.classes = 3;
    let mut data =
        SourceData::new(train.clone(), val.clone(), &three, "procedural".into(), Skipped::default()).unwrap();
    let (error, events) = attempt(&three, &mut data);
    assert!(error.contains("3 outputs but the data has 10 classes"), "{error}");
    assert!(failed_with(&events, "3 outputs"), "{events:?}");

    // AutoProg on data that holds nothing back for scoring (built for `--schedule none`).
    let mut full = config.clone();
    full.recipe.schedule = Schedule::Full;
    let mut data = SourceData::new(train.clone(), val.clone(), &full, "procedural".into(), Skipped::default()).unwrap();
    let (error, events) = attempt(&config, &mut data);
    assert!(error.contains("held-back training images, but the data holds back 0"), "{error}");
    assert!(failed_with(&events, "holds back 0"), "{events:?}");

    // A model whose MLP activations at full size do not fit one of the adapter's bindings
    // (a browser's adapter, most often): refused before anything is allocated.
    let mut wide = config.clone();
    let limit = ctx.limits().max_storage_buffer_binding_size.min(ctx.limits().max_buffer_size) as usize;
    let n = wide.model.tokens_at(wide.model.image_size);
    wide.recipe.eval_batch = wide.recipe.batch;
    wide.model.mlp_hidden = (limit / (4 * n * wide.recipe.batch) + 1).min(autoprog::model::limits::MLP_HIDDEN);
    assert!(wide.model.mlp_hidden * 4 * n * wide.recipe.batch > limit, "lavapipe binds too much for this case");
    let mut data = SourceData::new(train, val, &wide, "procedural".into(), Skipped::default()).unwrap();
    let (error, events) = attempt(&wide, &mut data);
    assert!(error.contains("the MLP activations of nano at batch 32") && error.contains("smaller batch"), "{error}");
    assert!(failed_with(&events, "MLP activations"), "{events:?}");
}
