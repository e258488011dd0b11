//! Data-parallel training under `mpirun -np 2` (the `mpi` feature) on the test machine's
//! adapter: two ranks train what one process trains with the same global batch, make the
//! same AutoProg decisions, and a rank that dies ends the job at once, leaving a checkpoint
//! that resumes. `./test.sh` installs OpenMPI where it is missing.

#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use autoprog::checkpoint::Checkpoint;
use autoprog::runlog::{parse_log, Event, Summary};
use common::{micro_args, micro_model, run, scratch, set_option, step_losses, text, wait_for_events};

/// Relative difference allowed between one process and two ranks, per loss and per
/// checkpoint tensor (relative L2). The ranks sum their shards' gradients in another order
/// than one process sums the whole batch (16 + 16 rows, then the mean of two), which moves
/// f32 results by a few units of 2^-24 relative; five AdamW steps keep that near 1e-6
/// (measured at most 1.0e-6).
const RANKS_REL: f64 = 1e-5;

/// The same in f16 activations: a rank rounds each activation to f16 as one process does
/// (per sample), but the f32 sums over the batch differ as above, and a difference of one
/// unit in an f32 value may tip its f16 rounding (2^-11 relative); measured at most 1.4e-4.
const RANKS_REL_F16: f64 = 1e-3;

/// `mpirun -np <ranks> autoprog <args>`, as root where need be (containers, CI).
fn mpirun(ranks: usize, args: &[String]) -> Command {
    let mut command = Command::new("mpirun");
    command
        .args(["-np", &ranks.to_string(), "--oversubscribe"])
        .arg(env!("CARGO_BIN_EXE_autoprog"))
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("AUTOPROG_CACHE_DIR", std::env::temp_dir().join("autoprog-cli-test-cache"));
    command
}

fn run_ranks(ranks: usize, args: &[String]) -> Output {
    mpirun(ranks, args).output().expect("mpirun runs (OpenMPI: apt-get install openmpi-bin; ./test.sh installs it)")
}

fn summary(run: &Path) -> Summary {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let norm: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

#[test]
fn two_ranks_train_what_one_process_trains_with_the_same_global_batch() {
    let dir = scratch("ranks-equal");
    let model = micro_model(&dir);
    // 5 steps of the global batch 32 (16 images per rank), the quick preset's augmentation
    // (mixing included) and drop-path, in f32 and in f16 (with loss scaling).
    for (precision, rel) in [("f32", RANKS_REL), ("f16", RANKS_REL_F16)] {
        let args = |out: &Path| {
            let mut args = micro_args(&model, out, 1);
            set_option(&mut args, "--train-images", "160");
            set_option(&mut args, "--precision", precision);
            args
        };
        let (one, two) = (dir.join(format!("one-{precision}")), dir.join(format!("two-{precision}")));
        let out = run(&args(&one));
        assert!(out.status.success(), "{}", text(&out));
        let out = run_ranks(2, &args(&two));
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("data-parallel over 2 ranks, 16 images per rank a step"), "{}", text(&out));
        assert_same_training(&one, &two, rel, precision);
        let (alone, ranked) = (summary(&one), summary(&two));
        assert_eq!((alone.ranks, ranked.ranks), (1, 2));
        assert_eq!((alone.precision.as_str(), ranked.precision.as_str()), (precision, precision));
        assert_eq!(ranked.adapters.len(), 2, "{ranked:?}");
        assert_eq!(ranked.train_flops, alone.train_flops, "FLOPs count the whole batch");
        // The run directory is rank 0's alone: one log, with one run_start.
        let log = parse_log(&std::fs::read_to_string(two.join("log.jsonl")).unwrap());
        assert_eq!(log.events.iter().filter(|e| matches!(e, Event::RunStart(_))).count(), 1);
    }
}

/// The step losses and every checkpoint tensor of runs `one` and `two` within `rel`.
fn assert_same_training(one: &Path, two: &Path, rel: f64, what: &str) {
    let (a, b) = (step_losses(one), step_losses(two));
    assert_eq!(a.iter().map(|s| s.0).collect::<Vec<_>>(), (0..5).collect::<Vec<u64>>());
    assert_eq!(a.len(), b.len(), "two ranks log every step once");
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= rel * x.abs(), "{what}, step {step}: loss {x} alone, {y} on two ranks");
    }
    let [a, b] = [one, two].map(|run| Checkpoint::load(&run.join("checkpoints/last.safetensors")).unwrap());
    assert_eq!(a.tensors.len(), b.tensors.len());
    for tensor in &a.tensors {
        let other = b.get(&tensor.name).unwrap_or_else(|| panic!("{} missing on two ranks", tensor.name));
        let (mut x, mut y) = (tensor.data.clone(), other.data.clone());
        if tensor.name.ends_with("attn.qkv.bias") {
            // The keys' bias shifts every score of a query alike, which the softmax cancels:
            // its gradient is rounding noise, which AdamW scales up to steps of the learning
            // rate, differently in every summation order. The queries' and values' are kept.
            let dim = x.len() / 3;
            x.drain(dim..2 * dim);
            y.drain(dim..2 * dim);
        }
        let difference = relative_l2(&x, &y);
        assert!(difference <= rel, "{what}, {}: relative L2 difference {difference:.2e}", tensor.name);
    }
}

#[test]
fn autoprog_decides_the_same_on_two_ranks_as_in_one_process() {
    let dir = scratch("ranks-auto");
    let model = micro_model(&dir);
    // A search over {8, 16} px x {1, 2} blocks, its cost in FLOPs (measured step times
    // would differ between any two runs), scored on a held-back batch that each rank
    // scores half of.
    let args = |out: &Path| {
        let mut args = micro_args(&model, out, 4);
        set_option(&mut args, "--train-images", "256");
        set_option(&mut args, "--schedule", "auto");
        set_option(&mut args, "--precision", "f32");
        let search = ["--stages", "2", "--res-scale", "0.5", "--depth-scale", "0.5", "--search-epochs", "1"];
        // The anchored space: the thrifty default offers nothing above stage 0's network.
        let anchored = ["--search-cost", "flops", "--search-space", "anchored"];
        args.extend(search.into_iter().chain(anchored).map(String::from));
        args
    };
    let (one, two) = (dir.join("one"), dir.join("two"));
    let out = run(&args(&one));
    assert!(out.status.success(), "{}", text(&out));
    let out = run_ranks(2, &args(&two));
    assert!(out.status.success(), "{}", text(&out));
    let decisions = |run: &Path| {
        let log = parse_log(&std::fs::read_to_string(run.join("log.jsonl")).unwrap());
        let searches: Vec<_> = log
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Search(s) => Some((s.step, s.winner.clone(), s.candidates.clone())),
                _ => None,
            })
            .collect();
        let growths: Vec<_> = log
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Growth(g) => Some((g.step, g.from_depth, g.to_depth, g.source.clone())),
                _ => None,
            })
            .collect();
        (searches, growths)
    };
    let ((searches, growths), (ranked_searches, ranked_growths)) = (decisions(&one), decisions(&two));
    assert_eq!(searches.len(), 1, "one search");
    assert_eq!(growths, ranked_growths, "the same growth at the same steps, from the same source");
    for ((step, winner, candidates), (ranked_step, ranked_winner, ranked_candidates)) in
        searches.iter().zip(&ranked_searches)
    {
        assert_eq!((step, winner), (ranked_step, ranked_winner), "the same winner at the same step");
        for (c, r) in candidates.iter().zip(ranked_candidates) {
            // The held-back loss: the mean of the ranks' halves of each batch.
            for (x, y) in c.losses.iter().zip(&r.losses) {
                assert!((x - y).abs() <= RANKS_REL * x.abs(), "{}: held-back loss {x} alone, {y} on two ranks", c.name);
            }
        }
    }
    let (alone, ranked) = (summary(&one), summary(&two));
    assert_eq!(alone.stages, ranked.stages);
    assert_eq!(alone.search_flops, ranked.search_flops, "the ranks' scoring FLOPs add up to one process's");
}

/// The pid of `rank` among the children of `mpirun` (OpenMPI launches local ranks itself).
fn rank_pid(mpirun: u32, rank: usize) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{mpirun}/task/{mpirun}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse().ok()).find(|pid: &u32| {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        environ.split(|&b| b == 0).any(|var| var == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes())
    })
}

#[test]
fn a_rank_killed_mid_run_ends_the_job_and_the_checkpoint_resumes() {
    let dir = scratch("ranks-kill");
    let model = micro_model(&dir);
    let out_dir = dir.join("run");
    let args = micro_args(&model, &out_dir, 80);
    let mut job = mpirun(2, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("mpirun starts");
    let log = out_dir.join("log.jsonl");
    wait_for_events(&log, "checkpoint", 4);
    let victim = rank_pid(job.id(), 1).expect("rank 1 is a child of mpirun");
    assert!(Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap().success());
    let killed = Instant::now();
    let ended = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "the job still runs 30 s after rank 1 died");
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = job.wait_with_output().unwrap();
    let said = text(&output);
    assert!(!ended.success(), "{said}");
    assert!(said.contains("rank 1") && said.contains("signal 9"), "the message names the dead rank: {said}");
    assert!(!std::fs::read_to_string(&log).unwrap().contains("\"event\":\"run_end\""), "killed before the end");

    // The last checkpoint is whole, and the run goes on from it, here in one process (a
    // resume may change the number of ranks: --batch stays the global batch).
    Checkpoint::load(&out_dir.join("checkpoints/last.safetensors")).expect("the checkpoint on disk loads");
    let resumed = run(&["train", "--resume", &out_dir.display().to_string(), "--quiet"].map(String::from));
    assert!(resumed.status.success(), "{}", text(&resumed));
    let ended = summary(&out_dir);
    assert_eq!((ended.epochs, ended.ranks), (80, 1));
    let steps: Vec<u64> = step_losses(&out_dir).iter().map(|s| s.0).collect();
    assert_eq!(steps, (0..80 * 4).collect::<Vec<u64>>(), "every step logged once across the two sessions");
}

#[test]
fn bench_under_mpirun_reports_the_all_reduce_and_the_scaling_efficiency() {
    let args = ["bench", "--json", "--train", "--train-batch", "2", "--reps", "1"].map(String::from);
    let out = run_ranks(2, &args);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON array, from rank 0");
    let steps = json.as_array().expect("array");
    assert!(steps.len() >= 2, "nano and tiny at least: {json}");
    for step in steps {
        let dp = &step["data_parallel"];
        assert_eq!(dp["ranks"], 2, "{step}");
        for key in ["all_reduce_ms", "exchange_ms", "exposed_ms", "backward_ms", "alone_ms", "scaling_efficiency"] {
            let value = dp[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {step}"));
            assert!(value.is_finite() && value > 0.0, "{key} = {value} in {step}");
        }
        // The gradients of every parameter, in f32.
        let model = if step["shape"].as_str().unwrap().starts_with("nano") { 306_250 } else { 5_000_000 };
        assert!(dp["gradient_bytes"].as_u64().unwrap() >= 4 * model, "{step}");
    }
}

#[test]
fn commands_that_run_in_one_process_refuse_to_run_as_several_ranks() {
    let out = run_ranks(2, &["info".to_string()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("only `train` and `bench` run data-parallel"), "{}", text(&out));
}

#[test]
fn a_batch_that_does_not_split_over_the_ranks_ends_the_job_with_the_fix() {
    let dir = scratch("ranks-odd-batch");
    let model = micro_model(&dir);
    let mut args = micro_args(&model, &dir.join("run"), 1);
    set_option(&mut args, "--batch", "31");
    let out = run_ranks(2, &args);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("--batch 31 does not split evenly over 2 ranks: use a multiple of 2"), "{said}");
    assert!(said.contains("rank 0: error") || said.contains("rank 1: error"), "the failing rank is named: {said}");
}

#[test]
fn sigusr1_to_mpirun_stops_every_rank_with_a_checkpoint_that_resumes_exactly() {
    let dir = scratch("ranks-stop");
    let model = micro_model(&dir);
    let args = |out: &Path| {
        let mut args = micro_args(&model, out, 30);
        set_option(&mut args, "--precision", "f32");
        args
    };
    let (whole, stopped) = (dir.join("whole"), dir.join("stopped"));
    let out = run_ranks(2, &args(&whole));
    assert!(out.status.success(), "{}", text(&out));
    // Ctrl-C makes mpirun end its job at once; SIGUSR1 it forwards to every rank.
    let job = mpirun(2, &args(&stopped)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("mpirun");
    wait_for_events(&stopped.join("log.jsonl"), "step", 3);
    assert!(Command::new("kill").args(["-USR1", &job.id().to_string()]).status().unwrap().success());
    let output = job.wait_with_output().unwrap();
    let said = text(&output);
    assert_eq!(output.status.code(), Some(130), "{said}");
    assert!(said.contains("continue it with: mpirun -np 2 autoprog train --resume"), "{said}");
    let resumed = run_ranks(2, &["train", "--resume", &stopped.display().to_string(), "--quiet"].map(String::from));
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert_eq!(step_losses(&stopped), step_losses(&whole), "the same losses after a stop and resume on 2 ranks");
}
