//! `autoprog train`: resolves the run configuration (preset or config file, then flags),
//! opens the data, installs the Ctrl-C handler and runs the training loop.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use autoprog::model::VitConfig;
use autoprog::GpuContext;
use clap::Args;

use crate::data::Dataset;
use crate::ranks::{self, Peers};
use crate::train::{self, Interrupted, RunOptions};
use crate::GpuArgs;
use autoprog::train::{
    Collective, DataConfig, DepthGrowth, GrowFrom, OptState, Precision, Recipe, Schedule, SearchCost, SearchSpace,
    TrainConfig,
};
use data_fit::fit_to_data;

mod data_fit;

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub(crate) gpu: GpuArgs,
    /// Dataset folder: ImageFolder (train/<class>/…, val/<class>/…), CIFAR-10 binary or MNIST IDX.
    /// Default: the built-in procedural dataset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Architecture: micro, nano, tiny, small, or a .toml file with a model config.
    #[arg(long)]
    model: Option<String>,
    /// Run preset: quick (default on CPU adapters) or standard (default on GPUs).
    #[arg(long)]
    preset: Option<String>,
    /// Start from a run's config.toml (flags still override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Passes over the training images.
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per training step.
    #[arg(long)]
    batch: Option<usize>,
    /// The model's input resolution in pixels; images are resized to it.
    #[arg(long)]
    image_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of initialisation, data order, augmentation and drop-path.
    #[arg(long)]
    seed: Option<u64>,
    /// Hold out this fraction of the training images for validation.
    #[arg(long)]
    val_split: Option<f64>,
    /// Built-in data: number of training images.
    #[arg(long)]
    train_images: Option<usize>,
    /// Built-in data: number of validation images.
    #[arg(long)]
    val_images: Option<usize>,
    /// Data loading threads.
    #[arg(long)]
    workers: Option<usize>,
    /// How the model grows: auto (AutoProg, the default: a supernet search at the start of
    /// every stage but the last picks resolution and depth), prog (progressive learning with
    /// MoGrow: resolution and depth rise over --stages equal stages) or none (the full model
    /// throughout).
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// auto: epochs of supernet training at the start of each non-final stage (default 2, the
    /// quick preset 0.25; a fraction ends the search inside an epoch, for short runs)
    #[arg(long)]
    search_epochs: Option<f64>,
    /// auto: a candidate's cost: time (its step time measured on the device, the default) or
    /// flops (its step's FLOPs: every run then makes the same choice).
    #[arg(long, value_enum)]
    search_cost: Option<SearchCost>,
    /// auto: thrifty (the default: the prog schedule's network for the stage and one level
    /// below it in depth and in resolution, as far as --max-res-lag allows, never above it;
    /// the cheapest that scores no worse than the schedule's network beyond the noise wins,
    /// unless some score better beyond it; no search where nothing lies below it),
    /// anchored (one level either side of the schedule's network; it wins unless another
    /// scores better beyond the noise) or official (the official code's candidates;
    /// --max-res-lag and --depth-growth shape them).
    #[arg(long, value_enum)]
    search_space: Option<SearchSpace>,
    /// auto: how many stages the resolution may trail the prog schedule's (default 2; 0:
    /// the search may grow it sooner, never later; a large value is the official, unbounded
    /// rule; the thrifty and anchored spaces offer at most one level below the schedule's).
    #[arg(long)]
    max_res_lag: Option<usize>,
    /// auto, official search space: schedule (the default: a later search may keep the depth where the prog schedule
    /// keeps it, so it decides whether to grow) or always (one level deeper at every search,
    /// the official rule).
    #[arg(long, value_enum)]
    depth_growth: Option<DepthGrowth>,
    /// What activations are stored in: auto (the default: f16 where the adapter has f16
    /// shaders, else f32), f32, or f16 (mixed precision: f32 master weights and optimizer,
    /// f32 accumulation, dynamic loss scaling; checkpoints stay f32).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Stages of the prog schedule, which auto searches within (default 4, or one per epoch
    /// in runs of fewer epochs).
    #[arg(long)]
    stages: Option<usize>,
    /// First stage's resolution as a fraction of the full one (default 0.5, the quick preset 2/3).
    #[arg(long)]
    res_scale: Option<f64>,
    /// First stage's depth as a fraction of the full one (default 0.5, the quick preset 2/3).
    #[arg(long)]
    depth_scale: Option<f64>,
    /// AdamW moments of grown blocks and of the sub-network a search recycles: reset (as the
    /// paper, the default) or copy (from the source blocks; the quick preset).
    #[arg(long, value_enum)]
    grow_opt_state: Option<OptState>,
    /// Weights MoGrow grows from: ema (the slowest EMA, as the paper, the default), weights,
    /// or best (of the weights and every EMA, the most accurate at the last validation; the
    /// quick preset).
    #[arg(long, value_enum)]
    grow_from: Option<GrowFrom>,
    /// Growing schedules: below the full resolution, random crops down to (stage resolution /
    /// full)² of the image's area, so the model has seen objects at the size the full
    /// resolution shows them (default true; false: every stage crops as the config's min_scale says).
    #[arg(long, value_name = "BOOL")]
    stage_crops: Option<bool>,
    /// No random horizontal flips (for digits, text and other data that mirroring changes).
    /// By default a new run probes the training images and leaves flips out where mirrored
    /// images are classified clearly worse than the originals.
    #[arg(long, conflicts_with = "hflip")]
    no_hflip: bool,
    /// Random horizontal flips whatever the probe of the training images says.
    #[arg(long)]
    hflip: bool,
    /// Drop-path rate of the last block (rising linearly from 0 at the first).
    #[arg(long)]
    drop_path: Option<f64>,
    /// Validate and checkpoint after every N epochs, and after the last (default 1; a new run
    /// on a small dataset that gets more epochs than its preset validates as often in steps
    /// as the preset does).
    #[arg(long, value_name = "N")]
    pub(crate) validate_every: Option<usize>,
    /// Run directory (default: runs/<date>-<time>-<model>).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint, with the same losses as an
    /// uninterrupted run. --epochs may extend it (the cosine schedule then stretches to the new end).
    #[arg(long, value_name = "DIR")]
    pub(crate) resume: Option<PathBuf>,
    /// No progress bar; only log lines.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// Reads a model config file (`VitConfig` fields; `classes` may be left out, the data sets it).
fn model_from_file(path: &Path) -> anyhow::Result<VitConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the model file {}", path.display()))?;
    let mut value: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not a valid TOML model config", path.display()))?;
    value.entry("classes").or_insert(toml::Value::Integer(2));
    let dim = value.get("dim").and_then(toml::Value::as_integer).unwrap_or(0);
    value.entry("mlp_hidden").or_insert(toml::Value::Integer(4 * dim));
    let config: VitConfig = value.try_into().with_context(|| {
        format!(
            "{} is not a model config (fields: image_size, patch_size, dim, depth, heads, mlp_hidden)",
            path.display()
        )
    })?;
    Ok(config)
}

impl TrainArgs {
    /// The preset, config file or resumed run's config, with the flags applied.
    pub(crate) fn resolve(&self, ctx: &GpuContext) -> anyhow::Result<TrainConfig> {
        if let Some(dir) = &self.resume {
            let mut config = TrainConfig::load(&dir.join("config.toml"))
                .with_context(|| format!("{} is not a run directory of autoprog", dir.display()))?;
            if let Some(epochs) = self.epochs {
                config.recipe.epochs = epochs;
            }
            return Ok(config);
        }
        let mut config = self.base_config(ctx)?;
        self.apply_recipe(&mut config.recipe);
        if self.no_hflip || self.hflip {
            config.augment.hflip = self.hflip;
        }
        self.apply_data(&mut config.data);
        if self.stages.is_none() {
            config.fit_stages_to_epochs();
        }
        Ok(config)
    }

    /// The config file or preset (by default the adapter's), with the model flags applied.
    fn base_config(&self, ctx: &GpuContext) -> anyhow::Result<TrainConfig> {
        let mut config = match (&self.config, &self.preset) {
            (Some(path), _) => TrainConfig::load(path)?,
            (None, Some(name)) => TrainConfig::preset(name)?,
            (None, None) => {
                let name = if ctx.summary.is_cpu() { "quick" } else { "standard" };
                TrainConfig::preset(name)?
            }
        };
        if let Some(model) = &self.model {
            let classes = config.model.classes;
            config.model = if model.ends_with(".toml") {
                model_from_file(Path::new(model))?
            } else {
                VitConfig::preset(model, classes)?
            };
            config.model.classes = classes;
            config.model_name = model.clone();
        }
        if let Some(size) = self.image_size {
            config.model.image_size = size;
        }
        config.augment.resolution = config.model.image_size;
        if self.data.is_some() {
            config.data.path = self.data.clone();
        }
        Ok(config)
    }

    fn apply_recipe(&self, r: &mut Recipe) {
        fn set<T: Copy>(target: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *target = v;
            }
        }
        set(&mut r.epochs, self.epochs);
        set(&mut r.batch, self.batch);
        set(&mut r.lr, self.lr);
        set(&mut r.seed, self.seed);
        set(&mut r.drop_path, self.drop_path);
        set(&mut r.schedule, self.schedule);
        set(&mut r.stages, self.stages);
        set(&mut r.search_epochs, self.search_epochs);
        set(&mut r.search_cost, self.search_cost);
        set(&mut r.search_space, self.search_space);
        set(&mut r.max_res_lag, self.max_res_lag);
        set(&mut r.depth_growth, self.depth_growth);
        set(&mut r.precision, self.precision);
        set(&mut r.res_scale, self.res_scale);
        set(&mut r.depth_scale, self.depth_scale);
        set(&mut r.grow_opt_state, self.grow_opt_state);
        set(&mut r.grow_from, self.grow_from);
        set(&mut r.stage_crops, self.stage_crops);
        set(&mut r.validate_every, self.validate_every);
    }

    fn apply_data(&self, d: &mut DataConfig) {
        for (target, value) in [
            (&mut d.train_images, self.train_images),
            (&mut d.val_images, self.val_images),
            (&mut d.workers, self.workers),
        ] {
            if let Some(v) = value {
                *target = v;
            }
        }
        if self.val_split.is_some() {
            d.val_split = self.val_split;
        }
    }
}

/// Today's date and time as `YYYYMMDD-HHMMSS` (UTC), for default run names.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn run(args: TrainArgs) -> ExitCode {
    let mut peers = match ranks::join() {
        Ok(peers) => peers,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = run_inner(&args, peers.as_mut());
    let rank = peers.as_ref().map_or(0, |p| p.rank());
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Interrupted>() => {
            if rank == 0 {
                eprintln!("{e}");
            }
            ExitCode::from(130)
        }
        Err(e) => {
            // Other ranks would wait for this one forever: the whole job ends.
            if let Some(peers) = &peers {
                ranks::abort_job(peers, &e);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The resolved configuration and the opened dataset of a run (the model's class count
/// and the flips follow the data for a new run).
/// `announce`: say which preset was chosen (one rank of a data-parallel run does).
pub(crate) fn prepare(args: &TrainArgs, ctx: &GpuContext, announce: bool) -> anyhow::Result<(TrainConfig, Dataset)> {
    let mut config = args.resolve(ctx)?;
    if announce && args.resume.is_none() && args.preset.is_none() && args.config.is_none() {
        eprintln!(
            "preset: {} (the default on {} adapters like {}; --preset overrides)",
            config.preset,
            if ctx.summary.is_cpu() { "CPU" } else { "GPU" },
            ctx.summary.display_name()
        );
    }
    let dataset = train::open_dataset(&config)?;
    if args.resume.is_none() {
        config.model.classes = dataset.classes().len();
        fit_to_data(args, &mut config, &dataset, announce)?;
    }
    Ok((config, dataset))
}

/// Sets the returned flag on the first Ctrl-C or on SIGUSR1 (the run then checkpoints and
/// stops); a second Ctrl-C exits at once.
pub(crate) fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = stop.clone();
    ctrlc::set_handler(move || {
        if handler_stop.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopping now without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step and saving a checkpoint (Ctrl-C again to quit at once)");
    })
    .context("cannot install the Ctrl-C handler")?;
    // `mpirun` ends its job on Ctrl-C but forwards SIGUSR1 to every rank: `kill -USR1` to
    // mpirun stops a data-parallel run with a checkpoint (a single process takes it too).
    #[cfg(unix)]
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, stop.clone())
        .context("cannot install the SIGUSR1 handler")?;
    Ok(stop)
}

/// Chooses the matmul variants by timing them on a GPU (cached on disk after the first
/// run; where the device has cooperative matrices, this is what lets f16 training use
/// them, once their results check out). CPU adapters keep their fixed default: tuning
/// there takes seconds per run and could choose differently from one run to the next,
/// and runs that must match to the bit (tests, resumes) would then not.
pub(crate) fn tune_matmul(ctx: &GpuContext, reports: bool) -> anyhow::Result<()> {
    if ctx.summary.is_cpu() {
        return Ok(());
    }
    if reports {
        eprintln!("tuning matmul variants for this adapter (cached after the first run)...");
    }
    pollster::block_on(autoprog::kernels::matmul::autotune(ctx))?;
    Ok(())
}

/// `runs/<date>-<time>-<what>`.
pub(crate) fn default_run_dir(what: &str) -> PathBuf {
    PathBuf::from("runs").join(format!("{}-{what}", timestamp()))
}

/// Trains as `args` say; in a data-parallel run (`peers`) as one of its ranks, rank 0
/// reporting.
fn run_inner(args: &TrainArgs, mut peers: Option<&mut Peers>) -> anyhow::Result<()> {
    let rank = peers.as_ref().map_or(0, |p| p.rank());
    let gpu = match peers {
        Some(_) => args.gpu.options_for_rank(rank),
        None => args.gpu.options(),
    };
    let ctx = GpuContext::new_blocking(&gpu)?;
    if let Some(peers) = peers.as_deref_mut() {
        peers.share_adapter(&ctx.summary.display_name());
    }
    let peers = peers.map(|p| &*p as &dyn Collective);
    let reports = rank == 0;
    let (config, dataset) = prepare(args, &ctx, reports)?;
    tune_matmul(&ctx, reports)?;
    let out = match (&args.resume, &args.out) {
        (Some(dir), _) => dir.clone(),
        (None, Some(out)) => out.clone(),
        (None, None) => default_run_dir(&config.model_name),
    };
    let stop = stop_on_ctrl_c()?;
    if reports {
        eprintln!("adapter: {} ({})", ctx.summary.display_name(), ctx.summary.backend);
    }
    let options = RunOptions { out: out.clone(), resume: args.resume.is_some(), quiet: args.quiet || !reports };
    let summary = train::train(&ctx, &config, &dataset, &options, &stop, peers)?;
    if !reports {
        return Ok(());
    }
    let ema = summary.val_acc_ema.map_or(String::new(), |acc| format!(", best EMA {acc:.4}"));
    println!(
        "validation accuracy {:.4}{ema} after {} epochs in {:.0} s ({:.0} images/s on {})",
        summary.val_acc, summary.epochs, summary.wall_seconds, summary.images_per_second, summary.adapter
    );
    println!("run written to {}", out.display());
    eprintln!("see it in the browser: autoprog serve {} (after www/build.sh)", out.display());
    Ok(())
}
