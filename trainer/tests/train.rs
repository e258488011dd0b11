//! `autoprog train`, `eval`, `predict` and `debug-step` end to end on a micro ViT: the run
//! directory, exact resumption (also after Ctrl-C mid-epoch), and clear errors on bad input.

mod common;

use std::path::{Path, PathBuf};

use autoprog::checkpoint::{Checkpoint, NamedTensor};
use autoprog::runlog::{parse_log, CheckpointKind, Event, RunStatus, Summary};
use autoprog::train::TrainConfig;

use common::*;

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

#[test]
fn sparse_validations_change_no_step_and_no_growth() {
    let dir = scratch("sparse");
    let model = micro_model(&dir);
    // prog over 2 stages of 3 epochs, from 1 block to 2, growing from whichever of the
    // weights and the EMA validated best: every epoch validated, against every fourth and the
    // last (epochs 4 and 6).
    let args = |out: &Path, every: &str| {
        let mut args = micro_args(&model, out, 6);
        let options = [("--schedule", "prog"), ("--stages", "2"), ("--depth-scale", "0.5"), ("--grow-from", "best")];
        for (name, value) in options.into_iter().chain([("--validate-every", every)]) {
            set_option(&mut args, name, value);
        }
        args
    };
    let (every, sparse) = (dir.join("every"), dir.join("sparse"));
    assert!(run(&args(&every, "1")).status.success());
    // Interrupted (inside the second epoch or later) and resumed.
    interrupt_and_resume(&args(&sparse, "4"), &sparse, 6);
    assert_eq!(step_losses(&sparse), step_losses(&every), "validations must not change training");

    let events = |run: &Path| parse_log(&std::fs::read_to_string(run.join("log.jsonl")).unwrap()).events;
    let validated = |run: &Path| -> Vec<(u32, bool)> {
        let epochs = events(run).into_iter().filter_map(|e| match e {
            Event::Epoch(e) => Some((e.epoch, e.val_acc.is_some() && !e.val_acc_ema.is_empty())),
            _ => None,
        });
        epochs.collect()
    };
    let expected: Vec<(u32, bool)> = (0..6).map(|e| (e, e == 3 || e == 5)).collect();
    assert_eq!(validated(&sparse), expected);
    // Checkpoints after the validated epochs only (and where Ctrl-C stopped the run).
    let log = events(&sparse);
    let at_ctrl_c = |i: usize| matches!(log.get(i + 1), Some(Event::RunEnd(r)) if r.status == RunStatus::Interrupted);
    let checkpointed: Vec<u32> = (0..log.len())
        .filter_map(|i| match &log[i] {
            Event::Checkpoint(c) if c.kind == CheckpointKind::Last && !at_ctrl_c(i) => Some(c.epoch),
            _ => None,
        })
        .collect();
    assert_eq!(checkpointed, [3, 5]);
    // The growth after epoch 3 validated first, so MoGrow grew the weights, which had
    // overtaken the EMA, as with a validation after every epoch (without one it would
    // have grown the EMA, as before any validation).
    let sources = |run: &Path| -> Vec<String> {
        let growths = events(run).into_iter().filter_map(|e| match e {
            Event::Growth(g) => Some(g.source),
            _ => None,
        });
        growths.collect()
    };
    assert_eq!(sources(&every), ["weights"]);
    assert_eq!(sources(&sparse), sources(&every));
    let summary = |run: &Path| -> Summary {
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
    };
    assert_eq!(summary(&sparse).val_acc, summary(&every).val_acc);
}

/// Starts `autoprog args` and sends it Ctrl-C once `log` holds `steps` step events; it must
/// stop with code 130 and say how to go on.
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
    // 35 images: a full chunk of 32 and a padded one, through the same replayed forward pass;
    // each image's logits are those it had in a batch of two (within f32 rounding of a
    // matmul that may tile batches of other sizes differently).
    let paths: Vec<String> = (0..35).map(|i| [&png, &jpg][i % 2].display().to_string()).collect();
    let mut args = vec!["predict", "--checkpoint", &ckpt, "--json"];
    args.extend(paths.iter().map(String::as_str));
    let out = autoprog(&args);
    assert!(out.status.success(), "{}", text(&out));
    let many: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logits = |p: &serde_json::Value| -> Vec<f64> {
        p["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    assert_eq!(many.as_array().unwrap().len(), 35);
    for (i, p) in many.as_array().unwrap().iter().enumerate() {
        let (got, want) = (logits(p), logits(&preds[i % 2]));
        assert!(
            got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-4 * (1.0 + w.abs())),
            "image {i}: {got:?} against {want:?}"
        );
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

/// A folder dataset whose two classes are mirror images of each other (a light bar on the
/// left or on the right of 20 px images): 40 training and 8 validation images per class.
fn sided_folders(data: &Path) {
    for (split, count) in [("train", 40), ("val", 8)] {
        for (c, class) in ["left", "right"].iter().enumerate() {
            let folder = data.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..count {
                let image = image::RgbImage::from_fn(20, 20, |x, y| {
                    let bar = if c == 0 { x < 6 } else { x >= 14 };
                    let noise = ((i * 37 + y * 11 + x * 5) % 30) as u8;
                    image::Rgb([if bar { 210 + noise } else { 20 + noise }; 3])
                });
                image.save(folder.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn flips_follow_the_data_unless_chosen() {
    let dir = scratch("flips");
    let model = micro_model(&dir);
    let data = dir.join("data");
    sided_folders(&data);
    let hflip_of = |run: &Path| -> bool {
        let config = TrainConfig::load(&run.join("config.toml")).unwrap();
        config.augment.hflip
    };
    let train = |name: &str, extra: &[&str]| -> (PathBuf, String) {
        let run = dir.join(name);
        let (data, out) = (data.display().to_string(), run.display().to_string());
        let mut args = vec!["train", "--data", &data, "--model", &model, "--batch", "16", "--epochs", "1"];
        args.extend(["--schedule", "none", "--quiet", "--out", &out]);
        args.extend_from_slice(extra);
        let result = autoprog(&args);
        let t = text(&result);
        assert!(result.status.success(), "{t}");
        (run, t)
    };
    // Mirrored images are the other class: the probe sees it and says so.
    let (run, t) = train("probed", &[]);
    assert!(t.contains("flips: off") && t.contains("--hflip"), "{t}");
    assert!(!hflip_of(&run));
    // The 20 px images meet the model file's 16 px: the run says so, and what keeps them.
    assert!(t.contains("resolution: 16 px (the model file's): the training images, 20×20 px, are scaled down"), "{t}");
    assert!(t.contains("--image-size 20 keeps more of their detail"), "{t}");
    // Chosen on the command line, here over a config file without flips: no probe, the
    // choice stands.
    let config = run.join("config.toml").display().to_string();
    let (run, t) = train("forced", &["--config", &config, "--hflip"]);
    assert!(!t.contains("flips:"), "{t}");
    assert!(hflip_of(&run));
    assert!(t.contains("resolution: 16 px (the model file's)"), "{t}");
}
