//! Helpers of the end-to-end tests: running the `autoprog` binary on a micro ViT in a
//! scratch folder, reading its run log back, and interrupting it like Ctrl-C would.

#![allow(dead_code, reason = "each test crate uses a different part of these helpers")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use autoprog::runlog::{parse_log, Event};

pub fn autoprog(args: &[&str]) -> Output {
    autoprog_with_env(args, &[])
}

/// [`autoprog`] with more environment variables set.
pub fn autoprog_with_env(args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autoprog"))
        .args(args)
        .env("AUTOPROG_CACHE_DIR", std::env::temp_dir().join("autoprog-cli-test-cache"))
        .envs(vars.iter().copied())
        .output()
        .expect("autoprog runs")
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A fresh temporary directory for one test: removed when the test passes, kept (and
/// named on stderr) when it fails, for a look at the run it left.
pub struct Scratch(pub PathBuf);

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

pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("autoprog-train-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A micro ViT (16 px, patch 4, width 16, one block of 2 heads) so each run takes seconds.
pub fn micro_model(dir: &Path) -> String {
    let path = dir.join("micro.toml");
    std::fs::write(&path, "image_size = 16\npatch_size = 4\ndim = 16\ndepth = 2\nheads = 2\nmlp_hidden = 32\n")
        .unwrap();
    path.display().to_string()
}

/// Train arguments of a micro run on 128 built-in images, 4 steps per epoch.
pub fn micro_args(model: &str, out: &Path, epochs: usize) -> Vec<String> {
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
pub fn set_option(args: &mut Vec<String>, name: &str, value: &str) {
    match args.iter().position(|a| a == name) {
        Some(at) => args[at + 1] = value.into(),
        None => args.extend([name.into(), value.into()]),
    }
}

pub fn run(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    autoprog(&refs)
}

/// The step losses of a run's log, by global step.
pub fn step_losses(run: &Path) -> Vec<(u64, f64)> {
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

/// Waits until the run log `log` holds `count` events of kind `event` (at most 120 s).
pub fn wait_for_events(log: &Path, event: &str, count: usize) {
    let start = std::time::Instant::now();
    let needle = format!("\"event\":\"{event}\"");
    while std::fs::read_to_string(log).map_or(0, |t| t.matches(&needle).count()) < count {
        assert!(start.elapsed().as_secs() < 120, "the run never logged {count} {event} events");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn interrupt_at(args: &[String], log: &Path, steps: usize) {
    let child = Command::new(env!("CARGO_BIN_EXE_autoprog"))
        .args(args)
        .env("AUTOPROG_CACHE_DIR", std::env::temp_dir().join("autoprog-cli-test-cache"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_events(log, "step", steps);
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("continue it with"), "{stderr}");
}

/// Interrupts the run of `args` after `steps` steps, then resumes it to the end.
pub fn interrupt_and_resume(args: &[String], run_dir: &Path, steps: usize) {
    interrupt_at(args, &run_dir.join("log.jsonl"), steps);
    let out = autoprog(&["train", "--resume", &run_dir.display().to_string(), "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
}
