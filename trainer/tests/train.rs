//! `autoprog train`, `eval`, `predict` and `debug-step` end to end on a micro ViT: the run
//! directory, exact resumption (also after Ctrl-C mid-epoch), and clear errors on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use autoprog::checkpoint::{Checkpoint, NamedTensor};
use autoprog::prog::search::select;
use autoprog::runlog::{parse_log, Event, RunStatus, Summary};

fn autoprog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autoprog"))
        .args(args)
        .env("AUTOPROG_CACHE_DIR", std::env::temp_dir().join("autoprog-cli-test-cache"))
        .output()
        .expect("autoprog runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A fresh temporary directory for one test: removed when the test passes, kept (and
/// named on stderr) when it fails, for a look at the run it left.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the failed test's directory {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("autoprog-train-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A micro ViT (16 px, patch 4, width 16, one block of 2 heads) so each run takes seconds.
fn micro_model(dir: &Path) -> String {
    let path = dir.join("micro.toml");
    std::fs::write(&path, "image_size = 16\npatch_size = 4\ndim = 16\ndepth = 2\nheads = 2\nmlp_hidden = 32\n")
        .unwrap();
    path.display().to_string()
}

/// Train arguments of a micro run on 128 built-in images, 4 steps per epoch.
fn micro_args(model: &str, out: &Path, epochs: usize) -> Vec<String> {
    [
        "train",
        "--model",
        model,
        "--train-images",
        "128",
        "--val-images",
        "64",
        "--batch",
        "32",
        "--epochs",
        &epochs.to_string(),
        "--out",
        &out.display().to_string(),
        "--quiet",
        "--schedule",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `args` with option `name` set to `value`: replaced where given, appended otherwise.
fn set_option(args: &mut Vec<String>, name: &str, value: &str) {
    match args.iter().position(|a| a == name) {
        Some(at) => args[at + 1] = value.into(),
        None => args.extend([name.into(), value.into()]),
    }
}

fn run(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    autoprog(&refs)
}

/// The step losses of a run's log, by global step.
fn step_losses(run: &Path) -> Vec<(u64, f64)> {
    let log = parse_log(&std::fs::read_to_string(run.join("log.jsonl")).unwrap());
    assert!(log.skipped.is_empty(), "unreadable log lines: {:?}", log.skipped);
    let mut losses: Vec<(u64, f64)> = log
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some((s.step, s.loss)),
            _ => None,
        })
        .collect();
    losses.sort_by_key(|(s, _)| *s);
    losses.dedup_by_key(|(s, _)| *s);
    losses
}

#[test]
fn train_writes_a_complete_run_directory_and_eval_agrees() {
    let dir = scratch("complete");
    let model = micro_model(&dir);
    let out_dir = dir.join("run");
    let out = run(&micro_args(&model, &out_dir, 2));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("validation accuracy") && stdout.contains(&out_dir.display().to_string()), "{stdout}");

    for file in
        ["config.toml", "log.jsonl", "summary.json", "checkpoints/last.safetensors", "checkpoints/best.safetensors"]
    {
        assert!(out_dir.join(file).exists(), "{file} missing");
    }
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary.schedule.as_str(), summary.epochs, summary.classes), ("none", 2, 10));
    assert!((0.0..=1.0).contains(&summary.val_acc) && summary.val_acc_ema.is_some());
    assert!(summary.train_flops > 0.0 && summary.images_per_second > 0.0 && summary.wall_seconds > 0.0);
    assert_eq!((summary.final_resolution, summary.final_depth), (16, 2));
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    for key in [
        "schedule",
        "epochs",
        "wall_seconds",
        "train_flops",
        "images_per_second",
        "val_acc",
        "val_acc_ema",
        "best_val_acc",
        "final_resolution",
        "final_depth",
        "adapter",
    ] {
        assert!(raw.get(key).is_some(), "summary.json lacks {key}");
    }
    let losses = step_losses(&out_dir);
    assert_eq!(losses.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    assert!(losses.iter().all(|(_, l)| l.is_finite() && *l > 0.0));

    // The checkpoint carries timm-named weights, the EMAs and the optimizer state.
    let ckpt = Checkpoint::load(&out_dir.join("checkpoints/last.safetensors")).unwrap();
    for name in [
        "patch_embed.proj.weight",
        "blocks.1.attn.qkv.weight",
        "head.bias",
        "optimizer.m.head.bias",
        "ema_0.995.head.bias",
    ] {
        assert!(ckpt.get(name).is_some(), "{name} missing");
    }
    assert_eq!(ckpt.require("pos_embed", &[1, 17, 16]).unwrap().numel(), 17 * 16);

    // `eval` of the last checkpoint on the run's own data gives the final accuracy.
    let last = out_dir.join("checkpoints/last.safetensors").display().to_string();
    let out = autoprog(&["eval", "--checkpoint", &last, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((eval["val_acc"].as_f64().unwrap() - summary.val_acc).abs() < 1e-9, "{eval} vs {}", summary.val_acc);

    // A second run into the same directory is refused (nothing overwritten).
    let again = run(&micro_args(&model, &out_dir, 2));
    assert!(!again.status.success() && text(&again).contains("--resume"), "{}", text(&again));
}

#[test]
fn resumed_runs_repeat_the_uninterrupted_losses() {
    let dir = scratch("resume");
    let model = micro_model(&dir);
    let whole = dir.join("whole");
    assert!(run(&micro_args(&model, &whole, 3)).status.success());

    // A finished run extended by more epochs continues its step count (the cosine then
    // stretches over the new length, so these losses differ from `whole`'s).
    let extended = dir.join("extended");
    assert!(run(&micro_args(&model, &extended, 1)).status.success());
    let out = autoprog(&["train", "--resume", &extended.display().to_string(), "--epochs", "2", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    let losses = step_losses(&extended);
    assert_eq!(losses.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    assert_eq!(losses[..4], step_losses(&whole)[..4]);

    // Interrupted by Ctrl-C in the middle of an epoch (3 epochs of 4 steps, the signal
    // after step 5: it cannot have finished), then resumed.
    let interrupted = dir.join("interrupted");
    interrupt_and_resume(&micro_args(&model, &interrupted, 3), &interrupted, 5);
    let log = parse_log(&std::fs::read_to_string(interrupted.join("log.jsonl")).unwrap());
    assert!(log.events.iter().any(|e| matches!(e, Event::RunEnd(r) if r.status == RunStatus::Interrupted)));
    assert_eq!(step_losses(&interrupted), step_losses(&whole), "resumed after Ctrl-C");
}

/// Starts `autoprog args` and sends it Ctrl-C once `log` holds `steps` step events; it must
/// stop with code 130 and say how to go on.
fn interrupt_at(args: &[String], log: &Path, steps: usize) {
    let child = Command::new(env!("CARGO_BIN_EXE_autoprog"))
        .args(args)
        .env("AUTOPROG_CACHE_DIR", std::env::temp_dir().join("autoprog-cli-test-cache"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::fs::read_to_string(log).map_or(0, |t| t.matches("\"event\":\"step\"").count()) < steps {
        assert!(start.elapsed().as_secs() < 120, "the run never reached step {steps}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("continue it with"), "{stderr}");
}

/// Interrupts the run of `args` after `steps` steps, then resumes it to the end.
fn interrupt_and_resume(args: &[String], run_dir: &Path, steps: usize) {
    interrupt_at(args, &run_dir.join("log.jsonl"), steps);
    let out = autoprog(&["train", "--resume", &run_dir.display().to_string(), "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
}

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
fn predict_and_debug_step_on_a_checkpoint() {
    let dir = scratch("predict");
    let model = micro_model(&dir);
    let out_dir = dir.join("run");
    assert!(run(&micro_args(&model, &out_dir, 1)).status.success());
    let ckpt = out_dir.join("checkpoints/last.safetensors").display().to_string();

    // Two images of other sizes than the model's 16 px.
    let png = dir.join("a.png");
    image::RgbImage::from_fn(20, 12, |x, y| image::Rgb([(x * 12) as u8, (y * 20) as u8, 128])).save(&png).unwrap();
    let jpg = dir.join("b.jpg");
    image::RgbImage::from_fn(40, 40, |x, _| image::Rgb([200, (x * 6) as u8, 10])).save(&jpg).unwrap();
    let out = autoprog(&[
        "predict",
        "--checkpoint",
        &ckpt,
        "--json",
        "--top-k",
        "3",
        &png.display().to_string(),
        &jpg.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let preds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let preds = preds.as_array().unwrap();
    assert_eq!(preds.len(), 2);
    for p in preds {
        assert_eq!(p["logits"].as_array().unwrap().len(), 10);
        let top = p["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let probs: Vec<f64> = top.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs[0] <= 1.0);
        assert!(autoprog::data::CLASSES.contains(&top[0]["label"].as_str().unwrap()));
    }

    // export: the EMA's weights alone with their description; predict gives what the
    // checkpoint with --ema gives (exactly in f32; f16 weights move logits by ~1e-3).
    let predict_logits = |args: &[&str]| -> Vec<f64> {
        let mut all = vec!["predict", "--json"];
        all.extend_from_slice(args);
        let png = png.display().to_string();
        all.push(&png);
        let out = autoprog(&all);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let reference = predict_logits(&["--checkpoint", &ckpt, "--ema", "0.995"]);
    for (name, extra, tolerance) in [("model.safetensors", None, 0.0), ("model16.safetensors", Some("--f16"), 2e-2)] {
        let exported = dir.join(name).display().to_string();
        let mut args = vec!["export", "--checkpoint", &ckpt, "--ema", "0.995", "--out", &exported];
        args.extend(extra);
        let out = autoprog(&args);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("parameters"), "{}", text(&out));
        let file = Checkpoint::load(Path::new(&exported)).unwrap();
        assert_eq!(file.get_json::<String>("format").unwrap().as_deref(), Some("autoprog-model-1"));
        assert!(file.get("ema_0.995.head.weight").is_none() && file.get("optimizer.m.head.weight").is_none());
        let logits = predict_logits(&["--checkpoint", &exported]);
        for (a, b) in logits.iter().zip(&reference) {
            assert!((a - b).abs() <= tolerance * (1.0 + b.abs()), "{name}: {logits:?} vs {reference:?}");
        }
    }
    let out =
        autoprog(&["export", "--checkpoint", &ckpt, "--ema", "0.5", "--out", &dir.join("x").display().to_string()]);
    assert!(!out.status.success() && text(&out).contains("no EMA with decay 0.5"), "{}", text(&out));

    // debug-step: loss, logits and a gradient per parameter.
    let batch = dir.join("batch.safetensors");
    let mut input = Checkpoint::default();
    let images: Vec<f32> = (0..2 * 3 * 16 * 16).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    input.tensors.push(NamedTensor::new("images", vec![2, 3, 16, 16], images));
    input.tensors.push(NamedTensor::new("labels", vec![2], vec![3.0, 7.0]));
    input.save(&batch).unwrap();
    let grads = dir.join("grads.safetensors");
    let out = autoprog(&[
        "debug-step",
        "--checkpoint",
        &ckpt,
        "--batch",
        &batch.display().to_string(),
        "--out",
        &grads.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let g = Checkpoint::load(&grads).unwrap();
    let loss = g.get("loss").unwrap().data[0];
    assert!(loss.is_finite() && loss > 0.0);
    assert_eq!(g.get("logits").unwrap().shape, [2, 10]);
    assert_eq!(g.get("blocks.1.mlp.fc2.weight").unwrap().shape, [16, 32]);
    assert!(g.get("head.weight").unwrap().data.iter().any(|&v| v != 0.0));
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = scratch("bad");
    let model = micro_model(&dir);
    let check = |args: &[&str], expect: &[&str]| {
        let out = autoprog(args);
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {t}");
        assert!(!t.contains("panicked"), "{t}");
        for e in expect {
            assert!(t.contains(e), "{args:?}: expected `{e}` in: {t}");
        }
    };
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    check(&["train", "--data", &empty.display().to_string(), "--model", &model], &["empty"]);
    let not_data = dir.join("not-data");
    std::fs::create_dir_all(&not_data).unwrap();
    std::fs::write(not_data.join("data_batch_1.bin"), [0u8; 100]).unwrap();
    check(&["train", "--data", &not_data.display().to_string(), "--model", &model], &["CIFAR-10"]);
    check(&["train", "--model", "huge"], &["huge", "nano"]);
    // Too few images for AutoProg to hold a batch back and still train on one.
    let few = dir.join("few").display().to_string();
    let too_few = ["train", "--model", &model, "--train-images", "40", "--batch", "32", "--epochs", "2", "--out", &few];
    check(&too_few, &["holds back", "--batch", "--schedule none"]);
    check(
        &["predict", "--checkpoint", &dir.join("nope.safetensors").display().to_string(), "x.png"],
        &["nope.safetensors"],
    );
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not a safetensors file").unwrap();
    check(&["predict", "--checkpoint", &garbage.display().to_string(), "x.png"], &["garbage.safetensors"]);

    // A checkpoint of another architecture: a timm-style file whose blocks are narrower.
    let out_dir = dir.join("run");
    assert!(run(&micro_args(&model, &out_dir, 1)).status.success());
    let mut ckpt = Checkpoint::load(&out_dir.join("checkpoints/last.safetensors")).unwrap();
    ckpt.metadata.clear();
    ckpt.tensors.retain(|t| {
        !t.name.contains('_') || t.name.starts_with("patch_embed") || t.name == "cls_token" || t.name == "pos_embed"
    });
    for t in &mut ckpt.tensors {
        if t.name == "blocks.1.mlp.fc1.weight" {
            t.shape = vec![8, 64];
        }
    }
    let other = dir.join("other.safetensors");
    ckpt.save(&other).unwrap();
    check(&["predict", "--checkpoint", &other.display().to_string(), "x.png"], &["--heads"]);
    check(
        &["predict", "--checkpoint", &other.display().to_string(), "--heads", "2", "x.png"],
        &["blocks.1.mlp.fc1.weight"],
    );
}

/// A run that diverges after its first checkpoint stops with a clear message, exit code 1
/// and a log that says it failed, and leaves that checkpoint exactly as it was. Two ways:
/// weights that turn non-finite in the last step of an epoch (no loss has shown it yet, so
/// only the check before writing the checkpoint can catch it), and a non-finite loss
/// inside an epoch.
#[test]
fn divergence_after_a_checkpoint_keeps_it_intact() {
    let dir = scratch("diverge");
    let model = micro_model(&dir);
    // (images per epoch, what stops the run): one step per epoch ends the epoch on the
    // diverged update; four steps show it in the next step's loss.
    for (train_images, caught_by) in [("32", "holds NaN or infinite values"), ("128", "(loss")] {
        let run_dir = dir.join(format!("run-{train_images}"));
        let mut args = micro_args(&model, &run_dir, 1);
        set_option(&mut args, "--train-images", train_images);
        let out = run(&args);
        assert!(out.status.success(), "{}", text(&out));
        let last = run_dir.join("checkpoints/last.safetensors");
        let good = std::fs::read(&last).unwrap();
        // An f32 learning rate of inf: one AdamW update makes every weight non-finite.
        let config = run_dir.join("config.toml");
        let toml = std::fs::read_to_string(&config).unwrap();
        let lr_line = toml.lines().find(|l| l.starts_with("lr = ")).expect("config.toml has lr").to_string();
        std::fs::write(&config, toml.replace(&lr_line, "lr = 1e39")).unwrap();
        let out =
            run(&["train", "--resume", &run_dir.display().to_string(), "--epochs", "3", "--quiet"].map(String::from));
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(t.contains("diverged") && t.contains(caught_by) && t.contains("--lr"), "{t}");
        assert!(!t.contains("panicked"), "{t}");
        assert_eq!(std::fs::read(&last).unwrap(), good, "the epoch-1 checkpoint must stay as it was");
        let ckpt = Checkpoint::load(&last).unwrap();
        assert!(ckpt.tensors.iter().all(|t| t.data.iter().all(|v| v.is_finite())));
        let mut files: Vec<String> = std::fs::read_dir(run_dir.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["best.safetensors", "last.safetensors"], "no temporary file is left behind");
        let log = std::fs::read_to_string(run_dir.join("log.jsonl")).unwrap();
        let end: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(end["event"], "run_end", "{end}");
        assert_eq!(end["status"], "failed", "{end}");
        assert!(end["message"].as_str().unwrap().contains("diverged"), "{end}");
    }
}

/// A folder dataset of two classes (dark and light grey) with one broken file in each
/// split: train has 11 + the broken one + 12 files (batches of 8 then take every file in
/// every epoch), val 12 + 12 + the broken one; returns the good val images with labels.
fn grey_folders(data: &Path) -> Vec<(PathBuf, u32)> {
    let mut val = Vec::new();
    for split in ["train", "val"] {
        for (c, class) in ["dark", "light"].iter().enumerate() {
            let folder = data.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            let count = if (split, c) == ("train", 0) { 11 } else { 12 };
            for i in 0..count {
                let v = (c * 180 + 30 + i * 3) as u8;
                // A fine checkerboard of ±25 around the class's grey: shrinking it with or
                // without antialiasing gives visibly different pixels.
                let image = image::RgbImage::from_fn(19, 13, |x, y| {
                    let p = if (x + y) % 2 == 0 { v + 25 } else { v - 25 };
                    image::Rgb([p, p, v])
                });
                let file = folder.join(format!("{i}.png"));
                image.save(&file).unwrap();
                if split == "val" {
                    val.push((file, c as u32));
                }
            }
        }
    }
    std::fs::write(data.join("train/dark/broken.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    std::fs::write(data.join("val/light/broken.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    val
}

#[test]
fn corrupt_images_are_skipped_logged_and_never_replaced() {
    let dir = scratch("corrupt");
    let model = micro_model(&dir);
    let data = dir.join("data");
    let val_images = grey_folders(&data);
    let out_dir = dir.join("run");
    let out = autoprog(&[
        "train",
        "--data",
        &data.display().to_string(),
        "--model",
        &model,
        "--batch",
        "8",
        "--epochs",
        "2",
        "--schedule",
        "none",
        "--out",
        &out_dir.display().to_string(),
        "--quiet",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // --quiet hides the progress bar, never a warning.
    assert!(t.contains("train/dark/broken.png") && t.contains("val/light/broken.png"), "warnings on stderr: {t}");
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.skipped_images, 2);
    assert_eq!(summary.classes, 2);
    let log = parse_log(&std::fs::read_to_string(out_dir.join("log.jsonl")).unwrap());
    let warned: Vec<&str> = log
        .events
        .iter()
        .filter_map(|e| if let Event::DataWarning(w) = e { Some(w.file.as_str()) } else { None })
        .collect();
    assert_eq!(warned.len(), 2, "one data_warning per broken file, once per run: {warned:?}");
    assert!(warned.iter().any(|f| f.ends_with("train/dark/broken.png")), "{warned:?}");
    assert!(warned.iter().any(|f| f.ends_with("val/light/broken.png")), "{warned:?}");
    // Skipped, not replaced: each epoch trained on the 23 good images exactly (3 batches of 8,
    // one of them 7), never 24 with one of them twice.
    let ckpt = Checkpoint::load(&out_dir.join("checkpoints/last.safetensors")).unwrap();
    let progress: serde_json::Value = ckpt.get_json("progress").unwrap().unwrap();
    assert_eq!(progress["images_trained"], 2 * 23, "{progress}");
    assert_eq!(progress["skipped_files"].as_array().unwrap().len(), 2, "{progress}");

    // `eval` and `predict` see the same pixels: the mean loss `predict`'s logits give the 24
    // readable val images equals what `eval` reports for them. Same kernels on batches of
    // 24 (eval) and 24 (predict, up to 32 files a batch), so only the order of the f64 sums
    // differs: 1e-5 relative.
    let ckpt_path = out_dir.join("checkpoints/last.safetensors").display().to_string();
    let data_arg = data.display().to_string();
    let eval = autoprog(&["eval", "--checkpoint", &ckpt_path, "--data", &data_arg, "--json"]);
    assert!(eval.status.success(), "{}", text(&eval));
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!((eval["images"].as_u64(), eval["skipped_images"].as_u64()), (Some(24), Some(1)), "{eval}");
    let mut args = vec!["predict".to_string(), "--checkpoint".into(), ckpt_path.clone(), "--json".into()];
    args.extend(val_images.iter().map(|(f, _)| f.display().to_string()));
    let predicted = run(&args);
    assert!(predicted.status.success(), "{}", text(&predicted));
    let predicted: serde_json::Value = serde_json::from_slice(&predicted.stdout).unwrap();
    let losses: Vec<f64> = predicted
        .as_array()
        .unwrap()
        .iter()
        .zip(&val_images)
        .map(|(p, (_, label))| {
            let logits: Vec<f64> = p["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + logits.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
            lse - logits[*label as usize]
        })
        .collect();
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    let eval_loss = eval["val_loss"].as_f64().unwrap();
    assert!((mean - eval_loss).abs() <= 1e-5 * eval_loss.abs().max(1e-3), "predict {mean} vs eval {eval_loss}");
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
        let official = ["--stages", "2", "--res-scale", "0.5", "--depth-scale", "0.5", "--search-epochs", "2"];
        args.extend(official.map(String::from));
        args
    };
    let whole = dir.join("whole");
    let out = run(&auto_args(&whole));
    assert!(out.status.success(), "{}", text(&out));
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
    // The winner is what the selection rule makes of the logged losses and times: the
    // cheapest candidate within the noise of the smallest score, which need not be the
    // smallest score itself (that one is logged as `lowest_score`).
    let times: Vec<f64> = search.candidates.iter().map(|c| c.step_ms).collect();
    let losses: Vec<Vec<f64>> = search.candidates.iter().map(|c| c.losses.clone()).collect();
    let selection = select(&times, &losses).unwrap();
    assert_eq!(search.winner, search.candidates[selection.winner].name);
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
    // The micro model keeps its 2 blocks (2/3 of 2 rounds up to 2), so stage 0 has two
    // candidates, 12 and 16 px: a search cannot rank two, and the cheaper trains without one.
    assert_eq!(stages[0], (0, 12, 2));
    let log = parse_log(&std::fs::read_to_string(out_dir.join("log.jsonl")).unwrap());
    assert_eq!(log.events.iter().filter(|e| matches!(e, Event::Search(_))).count(), 0);
    let first = log.events.iter().find_map(|e| if let Event::Stage(s) = e { Some(s) } else { None }).unwrap();
    assert_eq!(first.chosen_without_search.as_deref(), Some("r12_l2"));
}
