//! `autoprog compare`: trains each schedule with the same data, epochs and seeds, one run
//! after another, and reports wall time, training FLOPs and accuracy against `none`.
//! Started again on the same `--out`, it keeps the runs that finished, resumes the one a
//! crash or Ctrl-C cut short, and trains the rest.

use std::path::{Path, PathBuf};

use anyhow::Context;
use autoprog::runlog::{self, Compare, Summary};
use autoprog::GpuContext;
use clap::Args;

use autoprog::train::{options, Schedule, TrainConfig};

use crate::cli_train::{default_run_dir, prepare, stop_on_ctrl_c, tune_matmul, TrainArgs};
use crate::train::{self, Interrupted, RunOptions};

#[derive(Args)]
pub struct CompareArgs {
    /// Schedules to train, comma-separated (`none` is the baseline of speedup and accuracy).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Schedule::Full, Schedule::Prog])]
    schedules: Vec<Schedule>,
    /// Runs per schedule, with seeds --seed, --seed + 1, ...
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Everything `autoprog train` takes; --out is the folder of the comparison, each run goes
    /// to <out>/<schedule>-seed<seed>.
    #[command(flatten)]
    train: TrainArgs,
}

pub fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.train.resume.is_none(), "compare starts new runs; --resume does not apply");
    anyhow::ensure!(args.seeds >= 1, "--seeds must be at least 1");
    let ctx = GpuContext::new_blocking(&args.train.gpu.options())?;
    let (base, dataset) = prepare(&args.train, &ctx, true)?;
    tune_matmul(&ctx, true)?;
    let out: PathBuf = args.train.out.clone().unwrap_or_else(|| default_run_dir("compare"));
    let stop = stop_on_ctrl_c()?;
    let mut runs = Vec::new();
    let mut dirs = Vec::new();
    for offset in 0..args.seeds {
        for &schedule in &args.schedules {
            let mut config = base.clone();
            config.recipe.schedule = schedule;
            // Every schedule trains on the images that `auto` trains on.
            config.data.holdout_for_all = true;
            let schedule = options::name(&schedule);
            config.recipe.seed = base.recipe.seed + offset;
            let dir = out.join(format!("{schedule}-seed{}", config.recipe.seed));
            let previous = previous_run(&dir, &config)?;
            if let Some(summary) = previous.finished {
                eprintln!("== {schedule}, seed {}: finished before in {}, kept", config.recipe.seed, dir.display());
                runs.push(summary);
            } else {
                eprintln!("== {schedule}, seed {} -> {}", config.recipe.seed, dir.display());
                let options = RunOptions { out: dir.clone(), resume: previous.started, quiet: args.train.quiet };
                match train::train(&ctx, &config, &dataset, &options, &stop, None) {
                    Ok(summary) => runs.push(summary),
                    Err(e) if e.is::<Interrupted>() => anyhow::bail!(Interrupted {
                        resume: "the same autoprog compare command (it keeps the finished runs and resumes this one)"
                            .into()
                    }),
                    Err(e) => return Err(e),
                }
            }
            dirs.push(dir);
        }
    }
    let comparison = Compare::from_runs(runs, &options::name(&Schedule::Full));
    runlog::write_json_atomic(&out.join("compare.json"), &comparison)?;
    // A copy in every run directory, so the viewer shows each run against the baseline.
    for dir in &dirs {
        runlog::write_json_atomic(&dir.join("compare.json"), &comparison)?;
    }
    println!(
        "{:<10} {:>4} {:>10} {:>14} {:>8} {:>9} {:>8} {:>10}",
        "schedule", "runs", "wall s", "train FLOPs", "val_acc", "EMA acc", "speedup", "acc delta"
    );
    for (schedule, m) in &comparison.by_schedule {
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
        println!(
            "{schedule:<10} {:>4} {:>10.1} {:>14.3e} {:>8.4} {:>9} {:>8} {:>10}",
            m.runs,
            m.wall_seconds,
            m.train_flops,
            m.val_acc,
            opt(m.val_acc_ema, &|v| format!("{v:.4}")),
            opt(m.speedup, &|v| format!("{v:.2}x")),
            opt(m.acc_delta, &|v| format!("{v:+.4}")),
        );
    }
    println!("comparison written to {}", out.join("compare.json").display());
    Ok(())
}

/// What an earlier `compare` left in a run's directory.
struct PreviousRun {
    /// Its summary, when it finished.
    finished: Option<Summary>,
    /// Whether it wrote a checkpoint to resume from.
    started: bool,
}

/// The run in `dir`, if an earlier comparison trained it with exactly `config`; another
/// configuration there is an error rather than a run silently mixed into this comparison.
fn previous_run(dir: &Path, config: &TrainConfig) -> anyhow::Result<PreviousRun> {
    let started = dir.join("checkpoints/last.safetensors").exists();
    let summary_path = dir.join("summary.json");
    if !started && !summary_path.exists() {
        return Ok(PreviousRun { finished: None, started: false });
    }
    let recorded = TrainConfig::load(&dir.join("config.toml"))?;
    anyhow::ensure!(
        &recorded == config,
        "{} holds a run with another configuration than this comparison's; pass another --out, or remove it",
        dir.display()
    );
    let finished = match std::fs::read_to_string(&summary_path) {
        Ok(text) => Some(serde_json::from_str(&text).with_context(|| {
            format!("{} is not a run summary; remove it to train the run again", summary_path.display())
        })?),
        Err(_) => None,
    };
    Ok(PreviousRun { finished, started })
}
