//! The training loop: data → one GPU submission per step → losses read back a step or two
//! later → per-epoch evaluation of the weights and every EMA → run log, checkpoints and
//! summary in the run directory. Every random choice is a function of (seed, epoch,
//! position) or (seed, step), so a resumed run repeats an uninterrupted one exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use autoprog::checkpoint::Checkpoint;
use autoprog::data::Procedural;
use autoprog::gpu::ReadbackRing;
use autoprog::kernels::optimizer::AdamW;
use autoprog::model::cpu::cross_entropy;
use autoprog::model::step::{Optimizer, StepOptions};
use autoprog::model::{Activations, GpuVit, ParamLayout};
use autoprog::prog::grow::{grow_depth, remap_blocks, Growth};
use autoprog::prog::schedule::{stage_at, Stage};
use autoprog::prog::search::{candidates as search_candidates, foregone, select, Candidate, DepthGrowth};
use autoprog::runlog::{
    self, CheckpointEvent, CheckpointKind, DataWarningEvent, EmaAcc, EpochEvent, Event, GrowthEvent, LogWriter,
    Regularisation, RunEndEvent, RunStartEvent, RunStatus, SearchEvent, StageEvent, StageSummary, StepEvent, Summary,
};
use autoprog::{GpuContext, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::TrainConfig;
use crate::data::{self, epoch_order, AugmentConfig, Dataset, Loader, LoaderConfig, Skipped, Source};
use crate::search::{
    candidate_loss, candidates_step_ms, evaluation_batches, evaluation_window, stage_batch, ActsByResolution,
    SearchState,
};

/// Name of the checkpoint metadata entry that holds [`Progress`].
const PROGRESS_KEY: &str = "progress";
/// Loss readbacks in flight: how many steps the host may run ahead of the GPU.
const STEPS_IN_FLIGHT: usize = 3;
/// Batches of training images AutoProg holds back to evaluate its candidates on (at most a
/// tenth of the training set).
const HOLDOUT_BATCHES: usize = 8;

/// How a run is started.
pub struct RunOptions {
    /// The run directory.
    pub out: PathBuf,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Only log lines, no progress bar.
    pub quiet: bool,
}

/// Where a run stands; stored in every checkpoint.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Batches of the current epoch already trained (non-zero after an interruption).
    pub batch_in_epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    pub best_val_acc: f64,
    pub wall_seconds: f64,
    pub train_flops: f64,
    /// Images trained on and the seconds spent on them, for the mean throughput.
    pub images_trained: u64,
    pub train_seconds: f64,
    pub resolution: usize,
    pub depth: usize,
    /// Per-epoch validation accuracies of the weights so far.
    pub val_accs: Vec<f64>,
    /// The last validation's accuracy of the weights, then of each EMA (for `--grow-from best`).
    #[serde(default)]
    pub last_val_accs: Vec<f64>,
    /// AdamW's own step count (its bias correction restarts when growth resets the moments).
    #[serde(default)]
    pub adam_step: u64,
    /// AutoProg: the search in progress, if any.
    #[serde(default)]
    pub search: Option<SearchState>,
    /// AutoProg: the (resolution, depth) the last search chose for the current stage.
    #[serde(default)]
    pub chosen: Option<(usize, usize)>,
    /// AutoProg: (start epoch, resolution, depth) of each stage a search configured.
    #[serde(default)]
    pub trained: Vec<(usize, usize, usize)>,
    /// Data files that could not be read so far (left out, and not tried again on resume).
    #[serde(default)]
    pub skipped_files: Vec<String>,
    /// AutoProg: the step time in milliseconds of every sub-network a search has timed, by
    /// name (`r20_l5`). It depends on the shape and the device, not on the weights, so a
    /// later search times only the candidates no earlier one did.
    #[serde(default)]
    pub step_ms: BTreeMap<String, f64>,
}

/// The dataset a config asks for, with a validation part.
pub fn open_dataset(config: &TrainConfig) -> anyhow::Result<Dataset> {
    let d = &config.data;
    let dataset = match &d.path {
        Some(path) => data::open(path)?,
        None => {
            // Rendered at the data's size; the loader resizes (antialiased) to each stage's
            // resolution, so the fine textures average out rather than alias.
            let procedural = Procedural { classes: d.classes, image_size: d.image_size, seed: d.data_seed };
            Dataset::procedural(procedural, d.train_images, d.val_images)
        }
    };
    let dataset = match d.val_split {
        Some(fraction) => dataset.with_val_split(fraction, config.recipe.seed)?,
        None => dataset,
    };
    if dataset.val.is_none() {
        bail!(
            "the dataset at {} has no validation part; pass --val-split 0.1 to hold out 10% of the training images",
            d.path.as_deref().unwrap_or(Path::new("(built-in)")).display()
        );
    }
    Ok(dataset)
}

/// The learning rate at `step` of `total`: linear warmup to `lr`, then a cosine to `min_lr`.
pub fn learning_rate(step: u64, total: u64, warmup: u64, lr: f64, min_lr: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Per-image drop-path factors of a step, laid out as `Activations::write_drop_path`
/// wants: block i drops each branch with probability rate·i/(L−1) (timm's linear rule) and
/// scales a kept branch by 1/(1 − p). Deterministic in (seed, step).
pub fn drop_path_scales(rate: f64, depth: usize, batch: usize, seed: u64, step: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6472_6f70_7061_7468 ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut scales = Vec::with_capacity(depth * 2 * batch);
    for block in 0..depth {
        let p = if depth > 1 { rate * block as f64 / (depth - 1) as f64 } else { rate };
        for _branch in 0..2 {
            for _ in 0..batch {
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                scales.push(if u < p { 0.0 } else { (1.0 / (1.0 - p)) as f32 });
            }
        }
    }
    scales
}

/// Index of the largest value of each row of `logits` [B, K].
fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|row| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i))
        .collect()
}

/// Top-1 accuracy and mean loss of each weight arena on a source.
pub struct Evaluation {
    pub acc: Vec<f64>,
    pub loss: Vec<f64>,
    /// Images evaluated (those that failed to load are left out).
    pub images: usize,
}

/// Evaluates every arena in `arenas` (the weights, then each EMA) on `source` at the
/// resolution of `acts`, one val batch at a time (each batch decoded once for all arenas).
/// Images that fail to load are recorded in `skipped` and left out of the means.
#[allow(clippy::too_many_arguments, reason = "the model, what it runs on, and where the data comes from")]
pub fn evaluate(
    ctx: &GpuContext,
    model: &GpuVit,
    arenas: &[&autoprog::Tensor],
    acts: &Activations,
    source: Arc<dyn Source>,
    aug: &AugmentConfig,
    workers: usize,
    skipped: &Skipped,
) -> anyhow::Result<Evaluation> {
    let classes = model.config.classes;
    let batch = acts.batch;
    let order: Vec<usize> = (0..source.len()).collect();
    let loader_config = LoaderConfig {
        batch,
        drop_last: false,
        aug: AugmentConfig { mean: aug.mean, std: aug.std, ..AugmentConfig::none(aug.resolution) },
        train: false,
        workers,
        prefetch: 2 * workers.max(1),
        skipped: skipped.clone(),
        ..LoaderConfig::default()
    };
    let loader = Loader::new(source, order, loader_config)?;
    let logits_all = ctx.empty(&[arenas.len(), batch, classes], "eval.logits")?;
    let (mut correct, mut loss_sum, mut count) = (vec![0usize; arenas.len()], vec![0.0; arenas.len()], 0usize);
    for item in loader {
        let b = item?;
        if b.is_empty() {
            continue;
        }
        let n = b.len();
        let mut images = b.images;
        images.resize(acts.images.numel(), 0.0); // the last batch is padded; its extra rows are ignored
        ctx.write(&acts.images, &images)?;
        let mut rec = ctx.recorder("eval");
        for (i, arena) in arenas.iter().enumerate() {
            model.forward(&mut rec, arena, acts, false)?;
            rec.copy(&acts.logits, &logits_all.view(i * batch * classes, &[batch, classes])?)?;
        }
        ctx.submit(rec)?;
        let logits = ctx.read_blocking(&logits_all)?;
        for i in 0..arenas.len() {
            let rows = &logits[i * batch * classes..][..n * classes];
            let predicted = argmax_rows(rows, classes);
            correct[i] += predicted.iter().zip(&b.labels).filter(|(p, l)| **p == **l as usize).count();
            let rows64: Vec<f64> = rows.iter().map(|&v| v as f64).collect();
            loss_sum[i] += cross_entropy(&rows64, &b.labels, classes, 0.0).0 * n as f64;
        }
        count += n;
    }
    let images = count;
    let count = count.max(1) as f64;
    Ok(Evaluation {
        acc: correct.iter().map(|&c| c as f64 / count).collect(),
        loss: loss_sum.iter().map(|&l| l / count).collect(),
        images,
    })
}

/// The model, optimizer and progress of a run: fresh, or read from its last checkpoint.
struct State {
    model: GpuVit,
    optimizer: Optimizer,
    progress: Progress,
}

fn ema_prefix(decay: f64) -> String {
    format!("ema_{decay}.")
}

/// Writes `last.safetensors` (and `best.safetensors` when `best`) atomically.
fn save_checkpoint(
    ctx: &GpuContext,
    state: &State,
    config: &TrainConfig,
    classes: &[String],
    dir: &Path,
    best: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let layout = &state.model.layout;
    let mut ckpt =
        Checkpoint { tensors: layout.to_tensors(&ctx.read_blocking(&state.model.params)?, ""), ..Default::default() };
    for (ema, decay) in &state.optimizer.emas {
        ckpt.tensors.extend(layout.to_tensors(&ctx.read_blocking(ema)?, &ema_prefix(*decay)));
    }
    ckpt.tensors.extend(layout.to_tensors(&ctx.read_blocking(&state.optimizer.m)?, "optimizer.m."));
    ckpt.tensors.extend(layout.to_tensors(&ctx.read_blocking(&state.optimizer.v)?, "optimizer.v."));
    // The loss of a step is computed before its update, so the last updates of an epoch can
    // leave NaN or inf weights that no loss has shown yet: never let them replace a good file.
    if let Some(bad) = ckpt.tensors.iter().find(|t| t.data.iter().any(|v| !v.is_finite())) {
        bail!(Diverged {
            detail: format!(
                "after step {} `{}` holds NaN or infinite values, so no checkpoint was written",
                state.progress.step, bad.name
            ),
            checkpoints: dir.join("checkpoints"),
        });
    }
    ckpt.set_json("format", "autoprog-checkpoint-1")?;
    ckpt.set_json("config", config)?;
    ckpt.set_json("vit", &state.model.config)?;
    ckpt.set_json("classes", classes)?;
    ckpt.set_json("mean", &config.augment.mean)?;
    ckpt.set_json("std", &config.augment.std)?;
    ckpt.set_json("epoch", &state.progress.epoch)?;
    ckpt.set_json("step", &state.progress.step)?;
    ckpt.set_json("resolution", &state.progress.resolution)?;
    ckpt.set_json("depth", &state.progress.depth)?;
    ckpt.set_json("rng", &serde_json::json!({ "seed": config.recipe.seed, "step": state.progress.step }))?;
    ckpt.set_json(PROGRESS_KEY, &state.progress)?;
    let dir = dir.join("checkpoints");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = ckpt.to_bytes()?;
    let mut written = vec![dir.join("last.safetensors")];
    if best {
        written.push(dir.join("best.safetensors"));
    }
    for path in &written {
        autoprog::fsutil::write_atomic(path, &bytes)?;
    }
    Ok(written)
}

fn fresh_state(ctx: &GpuContext, config: &TrainConfig, first: &Stage) -> anyhow::Result<State> {
    let depth = first.depth;
    let layout = ParamLayout::new(&config.model, depth, ctx.arena_align());
    let params = layout.init(&config.model, config.recipe.seed);
    let model = GpuVit::new(ctx, config.model.clone(), layout, &params)?;
    let optimizer = Optimizer::new(ctx, &model, &config.recipe.ema_decays)?;
    let progress = Progress { resolution: first.resolution, depth, ..Progress::default() };
    Ok(State { model, optimizer, progress })
}

/// The state rebuilt with block i of the new model taken from block `source[i]` of the old
/// one, in the weights (from `weights`: the model's own, or an EMA), in every EMA and, with
/// `--grow-opt-state copy`, in the AdamW moments; fresh moments otherwise (`reset`, as the
/// official code does both at growth and at parameter recycling). The old model's buffers
/// go back to the driver rather than waiting in the pool.
fn remap_state(
    ctx: &GpuContext,
    state: State,
    config: &TrainConfig,
    source: &[usize],
    weights: &autoprog::Tensor,
) -> anyhow::Result<State> {
    let layout = ParamLayout::new(&config.model, source.len(), ctx.arena_align());
    let remap = |t: &autoprog::Tensor| -> anyhow::Result<Vec<f32>> {
        Ok(remap_blocks(&state.model.layout, &layout, source, &ctx.read_blocking(t)?)?)
    };
    let model = GpuVit::new(ctx, config.model.clone(), layout.clone(), &remap(weights)?)?;
    let mut optimizer = Optimizer::new(ctx, &model, &config.recipe.ema_decays)?;
    for ((ema, _), (old_ema, _)) in optimizer.emas.iter().zip(&state.optimizer.emas) {
        ctx.write(ema, &remap(old_ema)?)?;
    }
    let mut progress = state.progress.clone();
    if config.recipe.grow_opt_state == "copy" {
        ctx.write(&optimizer.m, &remap(&state.optimizer.m)?)?;
        ctx.write(&optimizer.v, &remap(&state.optimizer.v)?)?;
        optimizer.step = state.optimizer.step;
    } else {
        progress.adam_step = 0;
    }
    progress.depth = source.len();
    drop(state);
    ctx.trim_pool();
    Ok(State { model, optimizer, progress })
}

/// MoGrow: the state grown to `depth` blocks. The new weights are those `--grow-from`
/// names (by default the slowest EMA's, the weights themselves without EMA) with blocks
/// copied by the interleaved mapping; every EMA grows from its own weights; the AdamW
/// moments restart (`reset`) or are copied from the source blocks (`copy`).
fn grow(ctx: &GpuContext, state: State, config: &TrainConfig, depth: usize) -> anyhow::Result<(State, GrowthEvent)> {
    let growth = grow_depth(state.model.depth(), depth)?;
    let emas = &state.optimizer.emas;
    let slowest = emas.iter().enumerate().max_by(|a, b| a.1 .1.total_cmp(&b.1 .1)).map(|(i, _)| i);
    // Index into [weights, EMA 0, EMA 1, …], as the validation accuracies are.
    let pick = match config.recipe.grow_from.as_str() {
        "weights" => 0,
        "best" if state.progress.last_val_accs.len() == emas.len() + 1 => {
            let accs = &state.progress.last_val_accs;
            // max_by keeps the last of equal maxima: ties go to an EMA, as the paper prefers.
            (0..accs.len()).max_by(|&a, &b| accs[a].total_cmp(&accs[b])).unwrap_or(0)
        }
        _ => slowest.map_or(0, |i| i + 1),
    };
    let (weights, source) = match pick {
        0 => (state.model.params.clone(), "weights".to_string()),
        i => (emas[i - 1].0.clone(), format!("ema_{}", emas[i - 1].1)),
    };
    let state = remap_state(ctx, state, config, &growth.mapping, &weights)?;
    let event = GrowthEvent {
        epoch: state.progress.epoch as u32,
        step: state.progress.step,
        from_depth: growth.from as u32,
        to_depth: growth.to as u32,
        mapping: growth.mapping,
        source,
    };
    Ok((state, event))
}

fn resumed_state(ctx: &GpuContext, config: &TrainConfig, path: &Path) -> anyhow::Result<State> {
    let ckpt = Checkpoint::load(path)?;
    let progress: Progress = ckpt
        .get_json(PROGRESS_KEY)?
        .with_context(|| format!("{} is not a training checkpoint of autoprog (no progress record)", path.display()))?;
    anyhow::ensure!(
        (1..=config.model.depth).contains(&progress.depth),
        "{} records {} blocks but the run's model has at most {}; the checkpoint is damaged or belongs to another run",
        path.display(),
        progress.depth,
        config.model.depth
    );
    let layout = ParamLayout::new(&config.model, progress.depth, ctx.arena_align());
    let params = layout.arena_from(&ckpt, "")?;
    let model = GpuVit::new(ctx, config.model.clone(), layout, &params)?;
    let mut optimizer = Optimizer::new(ctx, &model, &config.recipe.ema_decays)?;
    for (ema, decay) in &optimizer.emas {
        ctx.write(ema, &model.layout.arena_from(&ckpt, &ema_prefix(*decay))?)?;
    }
    ctx.write(&optimizer.m, &model.layout.arena_from(&ckpt, "optimizer.m.")?)?;
    ctx.write(&optimizer.v, &model.layout.arena_from(&ckpt, "optimizer.v.")?)?;
    optimizer.step = u32::try_from(progress.adam_step).context("step count beyond 2^32")?;
    Ok(State { model, optimizer, progress })
}

/// Trains as `config` says into `opts.out`; returns the summary (also written to
/// `summary.json`). `stop` is set by Ctrl-C: the run then checkpoints and returns an error.
pub fn train(
    ctx: &GpuContext,
    config: &TrainConfig,
    dataset: &Dataset,
    opts: &RunOptions,
    stop: &AtomicBool,
) -> anyhow::Result<Summary> {
    config.validate()?;
    let run_dir = &opts.out;
    let classes: Vec<String> = dataset.classes().to_vec();
    anyhow::ensure!(
        classes.len() == config.model.classes,
        "the model has {} outputs but the data has {} classes",
        config.model.classes,
        classes.len()
    );
    let last = run_dir.join("checkpoints/last.safetensors");
    if !opts.resume && last.exists() {
        bail!("{} already holds a run; continue it with --resume {0}, or pass another --out", run_dir.display());
    }
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create the run directory {}", run_dir.display()))?;
    autoprog::fsutil::write_atomic(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;
    let stages = config.schedule()?;
    let state = if opts.resume { resumed_state(ctx, config, &last)? } else { fresh_state(ctx, config, &stages[0])? };
    let mut log = if opts.resume {
        LogWriter::open_for_resume(&run_dir.join("log.jsonl"))?
    } else {
        LogWriter::open(&run_dir.join("log.jsonl"))?
    };
    let adapter = ctx.summary.display_name();
    log.write(&Event::RunStart(RunStartEvent {
        time: runlog::unix_time_now(),
        version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)?,
        adapter: adapter.clone(),
        schedule: config.recipe.schedule.clone(),
    }))?;
    let setup = Setup { ctx, config, dataset, opts, stop, classes, stages, adapter };
    let (started, wall_before) = (Instant::now(), state.progress.wall_seconds);
    let outcome = train_epochs(&setup, state, &mut log);
    if let Err(e) = &outcome {
        // An interrupted run has logged its own end; any other failure ends the log here so
        // that the record says how the run ended. The error itself matters more than a
        // failure to log it.
        if !e.is::<Interrupted>() {
            let _ = log.write(&Event::RunEnd(RunEndEvent {
                time: runlog::unix_time_now(),
                wall_seconds: wall_before + started.elapsed().as_secs_f64(),
                status: RunStatus::Failed,
                message: Some(format!("{e:#}")),
            }));
        }
    }
    outcome
}

/// What every epoch of a run reads, set up by [`train`].
struct Setup<'a> {
    ctx: &'a GpuContext,
    config: &'a TrainConfig,
    dataset: &'a Dataset,
    opts: &'a RunOptions,
    stop: &'a AtomicBool,
    classes: Vec<String>,
    stages: Vec<Stage>,
    adapter: String,
}

/// The epochs of a run from `state` on, with their searches, growth, evaluations and
/// checkpoints; returns the summary after the last.
fn train_epochs(setup: &Setup, mut state: State, log: &mut LogWriter) -> anyhow::Result<Summary> {
    let Setup { ctx, config, dataset, opts, stop, ref classes, ref stages, ref adapter } = *setup;
    let run_dir = &opts.out;
    let r = &config.recipe;
    let val_source = dataset.val.clone().expect("open_dataset guarantees a val part");
    // AutoProg evaluates its candidates on training images held back from training.
    let (train_source, holdout_source): (Arc<dyn Source>, Option<Arc<dyn Source>>) = if r.schedule == "auto" {
        let n = dataset.train.len();
        // Whole batches only (the activations are planned for --batch images).
        let held = ((n / 10) / r.batch).clamp(1, HOLDOUT_BATCHES) * r.batch;
        anyhow::ensure!(
            n >= held + r.batch,
            "AutoProg holds back {held} of the {n} training images to compare its candidates; too few are left for --batch {}: \
             use a smaller --batch, more images, or --schedule none (the full model, no search)",
            r.batch
        );
        let (train, holdout) = data::split_train_val(dataset.train.clone(), held as f64 / n as f64, r.seed)?;
        (Arc::new(train), Some(Arc::new(holdout)))
    } else {
        (dataset.train.clone(), None)
    };
    let steps_per_epoch = (train_source.len() / r.batch) as u64;
    anyhow::ensure!(
        steps_per_epoch > 0,
        "--batch {} is larger than the {} training images; lower --batch",
        r.batch,
        train_source.len()
    );
    let total_steps = steps_per_epoch * r.epochs as u64;
    let warmup = (r.warmup_epochs * steps_per_epoch as f64).round() as u64;
    let eval_batch = r.eval_batch.min(val_source.len()).max(1);
    // Files that failed in earlier sessions of the run are not tried (or reported) again.
    let skipped = Skipped::default();
    skipped.mark_failed(state.progress.skipped_files.iter().cloned());
    // Each file that fails becomes one data_warning event, logged after the step that met it.
    let log_skipped = |log: &mut LogWriter, epoch: usize, step: u64| -> anyhow::Result<()> {
        for failure in skipped.take_new() {
            let event = DataWarningEvent { epoch: epoch as u32, step, file: failure.what, reason: failure.reason };
            log.write(&Event::DataWarning(event))?;
        }
        Ok(())
    };
    let mut ring = ReadbackRing::new(ctx, 1, STEPS_IN_FLIGHT);
    let session_start = Instant::now();
    let wall_before = state.progress.wall_seconds;
    // Training activations per resolution and the evaluation activations of the current
    // (resolutions, depth), re-planned when either changes.
    let mut planned: Option<(Vec<usize>, usize, ActsByResolution, Activations)> = None;
    // Losses, images and seconds of an epoch that a search ended inside of.
    let mut carried: Option<(Vec<f64>, u64, f64)> = None;

    eprintln!(
        "training {} ({} parameters at full depth) on {}, batch {}, {} epochs of {steps_per_epoch} steps, schedule {}",
        config.model_name,
        ParamLayout::new(&config.model, config.model.depth, 1).count(),
        dataset.summary(),
        r.batch,
        r.epochs,
        config.recipe.schedule.clone(),
    );
    while state.progress.epoch < r.epochs {
        let epoch = state.progress.epoch;
        let stage_index = stage_at(stages, epoch);
        let stage = stages[stage_index];
        let last_stage = stage_index + 1 == stages.len();
        let auto = config.recipe.schedule == "auto";
        let fresh_epoch = state.progress.batch_in_epoch == 0;
        // AutoProg: the sub-network of a stage decided without a search.
        let mut without_search = None;
        // AutoProg: a search opens at the start of every stage but the last.
        if auto && !last_stage && epoch == stage.start_epoch && fresh_epoch && state.progress.search.is_none() {
            let current = Candidate { resolution: state.progress.resolution, depth: state.model.depth() };
            let candidates =
                search_candidates(stages, stage_index, current, r.max_res_lag, DepthGrowth::parse(&r.depth_growth)?)?;
            let flops = |c: Candidate| config.model.train_flops_per_image(c.resolution, c.depth);
            if let Some(only) = foregone(&candidates, flops) {
                // Nothing to choose between (e.g. the depth can only grow to the full one,
                // or two candidates, which the criterion cannot rank): a supernet would
                // spend its search window on no decision.
                let why = if candidates.len() == 1 { "the only candidate" } else { "the cheaper of two" };
                eprintln!("stage {stage_index}: {} ({why}) trains without a search", only.name());
                without_search = Some(only.name());
                state.progress.chosen = Some((only.resolution, only.depth));
                state.progress.trained.push((stage.start_epoch, only.resolution, only.depth));
            } else {
                let to_depth = candidates.iter().map(|c| c.depth).max().expect("at least one candidate");
                let stage_epochs = stages.get(stage_index + 1).map_or(r.epochs, |s| s.start_epoch) - stage.start_epoch;
                let stage_steps = stage_epochs as u64 * steps_per_epoch;
                let steps = ((r.search_epochs * steps_per_epoch as f64).round() as u64).clamp(1, stage_steps);
                eprintln!("stage {stage_index}: searching {} candidates", candidates.len());
                state.progress.search = Some(SearchState {
                    stage: stage_index,
                    start_step: state.progress.step,
                    steps,
                    window: evaluation_window(steps, steps_per_epoch),
                    from_depth: state.model.depth(),
                    to_depth,
                    losses: vec![Vec::new(); candidates.len()],
                    candidates,
                    step_ms: Vec::new(),
                    evaluation_seconds: 0.0,
                    timing_seconds: 0.0,
                });
            }
        }
        if epoch == stage.start_epoch && fresh_epoch {
            log.write(&Event::Stage(StageEvent {
                stage: stage_index as u32,
                epoch: epoch as u32,
                step: state.progress.step,
                resolution: stage.resolution as u32,
                depth: stage.depth as u32,
                regularisation: Regularisation {
                    randaug_magnitude: stage.randaug_magnitude as f64,
                    drop_path: stage.drop_path,
                    erase_prob: stage.erase_prob,
                    mixup: stage.mix_prob,
                },
                chosen_without_search: without_search,
            }))?;
        }
        // What this epoch trains: the supernet during a search, else one (resolution, depth).
        let search = state.progress.search.clone();
        let (resolutions, depth, reg) = match (&search, auto) {
            (Some(s), _) => (s.resolutions(), s.to_depth, stages[stages.len() - 1]),
            (None, true) if !last_stage => {
                let (res, d) = state.progress.chosen.unwrap_or((stage.resolution, stage.depth));
                (vec![res], d, stage)
            }
            _ => (vec![stage.resolution], stage.depth, stage),
        };
        if depth != state.model.depth() {
            let (grown, event) = grow(ctx, state, config, depth)?;
            state = grown;
            eprintln!(
                "stage {stage_index}: grew from {} to {} blocks (MoGrow from {})",
                event.from_depth, event.to_depth, event.source
            );
            log.write(&Event::Growth(event))?;
            planned = None;
        }
        let largest = *resolutions.last().expect("at least one resolution");
        state.progress.resolution = largest;
        if !matches!(&planned, Some((res, d, _, _)) if *res == resolutions && *d == depth) {
            // Release the old activations before allocating the new ones.
            drop(planned.take());
            ctx.trim_pool();
            let mut acts = ActsByResolution::new();
            for &res in &resolutions {
                acts.insert(res, state.model.plan(ctx, r.batch, res)?);
            }
            let eval_acts = state.model.plan(ctx, eval_batch, largest)?;
            planned = Some((resolutions.clone(), depth, acts, eval_acts));
        }
        let (_, _, acts_by_res, _) = planned.as_mut().expect("planned above");
        // Held-back training images for the search's evaluation points, at its largest resolution.
        let holdout = match (&search, &holdout_source) {
            (Some(_), Some(source)) => load_holdout(source.clone(), largest, r.batch, config, &skipped)?,
            _ => Vec::new(),
        };
        log_skipped(log, epoch, state.progress.step)?;
        let growth = search.as_ref().map(SearchState::growth);
        let aug = AugmentConfig {
            resolution: largest,
            randaug_magnitude: reg.randaug_magnitude,
            erase_prob: reg.erase_prob as f32,
            mix_prob: reg.mix_prob as f32,
            ..config.augment.clone()
        };
        let drop_path_rate = reg.drop_path;
        let bar = progress_bar(opts.quiet, steps_per_epoch, epoch, r.epochs);
        bar.set_position(state.progress.batch_in_epoch as u64);
        let loader_config = LoaderConfig {
            batch: r.batch,
            drop_last: true,
            aug: aug.clone(),
            train: true,
            seed: r.seed,
            epoch: epoch as u64,
            workers: config.data.workers,
            prefetch: 2 * config.data.workers.max(1),
            skipped: skipped.clone(),
        };
        let loader =
            Loader::new(train_source.clone(), epoch_order(train_source.len(), r.seed, epoch as u64), loader_config)?;
        debug_assert_eq!(loader.batches() as u64, steps_per_epoch);
        // An epoch a search ended inside goes on with what it had so far (its clock too).
        let (mut losses, mut images_this_epoch, seconds_before) = carried.take().unwrap_or_default();
        let epoch_start =
            Instant::now().checked_sub(std::time::Duration::from_secs_f64(seconds_before)).unwrap_or_else(Instant::now);
        let mut interrupted = false;
        // lr, resolution and depth of each step, for its log line.
        let mut step_info: BTreeMap<u64, (f64, usize, usize)> = BTreeMap::new();
        let record_loss =
            |log: &mut LogWriter, losses: &mut Vec<f64>, step: u64, loss: f32, info: (f64, usize, usize), ips: f64| {
                if !loss.is_finite() {
                    bail!(Diverged {
                        detail: format!("at step {step} (loss {loss})"),
                        checkpoints: run_dir.join("checkpoints"),
                    });
                }
                losses.push(loss as f64);
                log.write(&Event::Step(StepEvent {
                    step,
                    epoch: epoch as u32,
                    loss: loss as f64,
                    lr: info.0,
                    images_per_second: ips,
                    resolution: info.1 as u32,
                    depth: info.2 as u32,
                }))?;
                Ok(())
            };
        for item in loader.skip(state.progress.batch_in_epoch) {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            let batch = item?;
            let step = state.progress.step;
            if let (Some(s), Some(g)) = (state.progress.search.as_mut(), growth.as_ref()) {
                if s.evaluates_at(step) {
                    for (s_step, v) in ring.drain(ctx)? {
                        let ips = images_this_epoch as f64 / epoch_start.elapsed().as_secs_f64();
                        record_loss(log, &mut losses, s_step, v[0], step_info[&s_step], ips)?;
                    }
                    let timed = &mut state.progress.step_ms;
                    evaluation_point(ctx, config, &state.model, &state.optimizer, acts_by_res, g, s, timed, &holdout)?;
                }
            }
            // The sub-network this step trains (the only one outside a search).
            let (res, sub_depth) = match &state.progress.search {
                Some(s) => {
                    let c = s.sample(r.seed, step);
                    (c.resolution, c.depth)
                }
                None => (largest, depth),
            };
            let active: Vec<usize> = match &growth {
                Some(g) => g.active(sub_depth)?,
                None => (0..depth).collect(),
            };
            let lr = learning_rate(step, total_steps, warmup, r.lr, r.min_lr);
            step_info.insert(step, (lr, res, sub_depth));
            let mut rec = ctx.recorder("train.step");
            let (images, labels, targets) = (&batch.images, &batch.labels, batch.targets.as_deref());
            let loss = stage_batch(ctx, &mut rec, acts_by_res, images, labels, targets, res, classes.len())?;
            let acts = acts_by_res.get_mut(&res).expect("planned");
            acts.set_active_blocks(&active)?;
            let acts = &*acts;
            let drop_path = drop_path_rate > 0.0;
            if drop_path {
                acts.write_drop_path(ctx, &drop_path_scales(drop_path_rate, depth, r.batch, r.seed, step))?;
            }
            let options = StepOptions {
                adamw: AdamW { lr, beta1: r.beta1, beta2: r.beta2, eps: 1e-8, weight_decay: r.weight_decay },
                max_grad_norm: r.clip_grad as f32,
                loss,
                drop_path,
            };
            if !ring.has_free() {
                if let Some((s, v)) = ring.wait_oldest(ctx)? {
                    let ips = images_this_epoch as f64 / epoch_start.elapsed().as_secs_f64();
                    record_loss(log, &mut losses, s, v[0], step_info[&s], ips)?;
                }
            }
            state.optimizer.record_step(&mut rec, &state.model, acts, &options)?;
            ring.record(&mut rec, &acts.loss, step)?;
            ctx.submit(rec)?;
            ring.submitted();
            state.progress.step += 1;
            state.progress.adam_step += 1;
            state.progress.batch_in_epoch += 1;
            state.progress.train_flops += batch.len() as f64 * config.model.train_flops_per_image(res, sub_depth);
            images_this_epoch += batch.len() as u64;
            for (s, v) in ring.poll(ctx)? {
                let ips = images_this_epoch as f64 / epoch_start.elapsed().as_secs_f64();
                record_loss(log, &mut losses, s, v[0], step_info[&s], ips)?;
                bar.set_message(format!("loss {:.3}  {ips:.0} img/s", v[0]));
            }
            log_skipped(log, epoch, step)?;
            bar.inc(1);
            if matches!(&state.progress.search, Some(s) if s.end() == state.progress.step) {
                break;
            }
        }
        for (s, v) in ring.drain(ctx)? {
            let ips = images_this_epoch as f64 / epoch_start.elapsed().as_secs_f64();
            record_loss(log, &mut losses, s, v[0], step_info[&s], ips)?;
        }
        // The end of a search: the last evaluation point, the choice and parameter recycling.
        if let (false, Some(s), Some(g)) = (interrupted, state.progress.search.clone(), growth.as_ref()) {
            if s.end() == state.progress.step {
                let mut s = s;
                let timed = &mut state.progress.step_ms;
                evaluation_point(ctx, config, &state.model, &state.optimizer, acts_by_res, g, &mut s, timed, &holdout)?;
                let (recycled, event, chosen) = finish_search(ctx, state, config, &s, epoch)?;
                state = recycled;
                eprintln!("stage {}: chose {} ({} candidates)", s.stage, event.winner, s.candidates.len());
                log.write(&Event::Search(event))?;
                state.progress.chosen = Some(chosen);
                state.progress.trained.push((stages[s.stage].start_epoch, chosen.0, chosen.1));
                state.progress.search = None;
                planned = None;
                if state.progress.batch_in_epoch < steps_per_epoch as usize {
                    // The search ended inside the epoch: the chosen sub-network trains the
                    // rest of it (re-planned, with a loader that skips the batches done).
                    carried = Some((losses, images_this_epoch, epoch_start.elapsed().as_secs_f64()));
                    bar.finish_and_clear();
                    continue;
                }
            }
        }
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        bar.finish_and_clear();
        state.progress.images_trained += images_this_epoch;
        state.progress.train_seconds += train_seconds;
        let ips = images_this_epoch as f64 / train_seconds.max(1e-9);
        if interrupted {
            state.progress.wall_seconds = wall_before + session_start.elapsed().as_secs_f64();
            state.progress.skipped_files = skipped.files();
            let paths = save_checkpoint(ctx, &state, config, classes, run_dir, false)?;
            log.write(&Event::Checkpoint(CheckpointEvent {
                epoch: epoch as u32,
                step: state.progress.step,
                path: paths[0].display().to_string(),
                kind: CheckpointKind::Last,
            }))?;
            log.write(&Event::RunEnd(RunEndEvent {
                time: runlog::unix_time_now(),
                wall_seconds: state.progress.wall_seconds,
                status: RunStatus::Interrupted,
                message: Some(format!("stopped at step {} of epoch {epoch}", state.progress.step)),
            }))?;
            bail!(Interrupted { resume: format!("autoprog train --resume {}", run_dir.display()) });
        }

        // Evaluate the weights and every EMA.
        let mut arenas = vec![&state.model.params];
        arenas.extend(state.optimizer.emas.iter().map(|(t, _)| t));
        let fresh_eval;
        let eval_acts = match &planned {
            Some((_, d, _, e)) if *d == state.model.depth() => e,
            _ => {
                fresh_eval = state.model.plan(ctx, eval_batch, state.progress.resolution)?;
                &fresh_eval
            }
        };
        let val_aug = AugmentConfig { resolution: state.progress.resolution, ..aug.clone() };
        let workers = config.data.workers;
        let eval = evaluate(ctx, &state.model, &arenas, eval_acts, val_source.clone(), &val_aug, workers, &skipped)?;
        log_skipped(log, epoch, state.progress.step)?;
        state.progress.skipped_files = skipped.files();
        state.progress.epoch += 1;
        state.progress.batch_in_epoch = 0;
        state.progress.wall_seconds = wall_before + session_start.elapsed().as_secs_f64();
        state.progress.val_accs.push(eval.acc[0]);
        state.progress.last_val_accs = eval.acc.clone();
        let best = eval.acc[0] > state.progress.best_val_acc;
        if best {
            state.progress.best_val_acc = eval.acc[0];
        }
        let train_loss = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
        let ema_accs: Vec<EmaAcc> = state
            .optimizer
            .emas
            .iter()
            .zip(&eval.acc[1..])
            .map(|((_, decay), &acc)| EmaAcc { decay: *decay, acc })
            .collect();
        log.write(&Event::Epoch(EpochEvent {
            epoch: epoch as u32,
            step: state.progress.step,
            train_loss,
            val_loss: Some(eval.loss[0]),
            val_acc: Some(eval.acc[0]),
            val_acc_ema: ema_accs.clone(),
            images_per_second: ips,
            wall_seconds: state.progress.wall_seconds,
            train_flops: state.progress.train_flops,
            resolution: state.progress.resolution as u32,
            depth: state.model.depth() as u32,
        }))?;
        let emas: String = ema_accs.iter().map(|e| format!("  ema{} {:.4}", e.decay, e.acc)).collect();
        eprintln!(
            "epoch {}/{}  loss {train_loss:.4}  val_loss {:.4}  val_acc {:.4}{emas}  {ips:.0} img/s  {:.0} s",
            epoch + 1,
            r.epochs,
            eval.loss[0],
            eval.acc[0],
            state.progress.wall_seconds
        );
        let paths = save_checkpoint(ctx, &state, config, classes, run_dir, best)?;
        for (path, kind) in paths.iter().zip([CheckpointKind::Last, CheckpointKind::Best]) {
            log.write(&Event::Checkpoint(CheckpointEvent {
                epoch: epoch as u32,
                step: state.progress.step,
                path: path.display().to_string(),
                kind,
            }))?;
        }
        if epoch + 1 == r.epochs {
            let summary = Summary {
                schedule: config.recipe.schedule.clone(),
                epochs: r.epochs as u32,
                wall_seconds: state.progress.wall_seconds,
                train_flops: state.progress.train_flops,
                images_per_second: state.progress.images_trained as f64 / state.progress.train_seconds.max(1e-9),
                val_acc: eval.acc[0],
                val_acc_ema: ema_accs.iter().map(|e| e.acc).reduce(f64::max),
                best_val_acc: state.progress.best_val_acc,
                final_resolution: state.progress.resolution as u32,
                final_depth: state.model.depth() as u32,
                adapter: adapter.clone(),
                stages: trained_stages(stages, &state.progress, config),
                seed: r.seed,
                skipped_images: skipped.count(),
                model: config.model_name.clone(),
                classes: classes.len(),
            };
            runlog::write_json_atomic(&run_dir.join("summary.json"), &summary)?;
            log.write(&Event::RunEnd(RunEndEvent {
                time: runlog::unix_time_now(),
                wall_seconds: state.progress.wall_seconds,
                status: RunStatus::Finished,
                message: None,
            }))?;
            if skipped.count() > 0 {
                eprintln!(
                    "warning: {} images could not be decoded and were skipped: {}",
                    skipped.count(),
                    skipped.files().join(", ")
                );
            }
            return Ok(summary);
        }
    }
    bail!("{} already finished all {} epochs; nothing to resume", run_dir.display(), r.epochs)
}

/// Held-back training images at `resolution` (eval transform), in batches of `batch`.
fn load_holdout(
    source: Arc<dyn Source>,
    resolution: usize,
    batch: usize,
    config: &TrainConfig,
    skipped: &Skipped,
) -> anyhow::Result<Vec<(Vec<f32>, Vec<u32>)>> {
    let aug = AugmentConfig { mean: config.augment.mean, std: config.augment.std, ..AugmentConfig::none(resolution) };
    let order: Vec<usize> = (0..source.len()).collect();
    let loader_config = LoaderConfig {
        batch,
        drop_last: true,
        aug,
        train: false,
        workers: 0,
        skipped: skipped.clone(),
        ..LoaderConfig::default()
    };
    let mut out = Vec::new();
    for item in Loader::new(source, order, loader_config)? {
        let b = item?;
        out.push((b.images, b.labels));
    }
    Ok(out)
}

/// The weights a search scores its candidates with, and their name: the fastest EMA, as the
/// official code, when its time constant 1/(1 − decay) fits into the supernet training
/// before the first evaluation point; else (short searches, slow EMAs) the weights, since
/// such an EMA still mostly holds the model from before the supernet grew, whose
/// duplicated blocks were exact copies: every candidate would score nearly alike.
fn scoring_weights<'a>(model: &'a GpuVit, optimizer: &'a Optimizer, search: &SearchState) -> (&'a Tensor, String) {
    let trained_before_scoring = (search.steps - search.window) as f64;
    match optimizer.emas.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
        Some((ema, decay)) if 1.0 / (1.0 - decay) <= trained_before_scoring => (ema, format!("ema_{decay}")),
        _ => (&model.params, "weights".into()),
    }
}

/// One evaluation point of a search: each candidate's mean held-back loss with the
/// [`scoring_weights`], and, the first time, each candidate's cost (step time, or GFLOPs
/// per step with `--search-cost flops`). Step times come from `timed` where an earlier
/// search measured them; the others are measured and added.
#[allow(clippy::too_many_arguments, reason = "the model, its optimizer, the search and what it runs on")]
fn evaluation_point(
    ctx: &GpuContext,
    config: &TrainConfig,
    model: &GpuVit,
    optimizer: &Optimizer,
    acts: &mut ActsByResolution,
    growth: &Growth,
    search: &mut SearchState,
    timed: &mut BTreeMap<String, f64>,
    holdout: &[(Vec<f32>, Vec<u32>)],
) -> anyhow::Result<()> {
    let batch = acts.values().next().map_or(1, |a| a.batch);
    if holdout.is_empty() {
        bail!("no held-back images to evaluate the candidates on; the training set is too small for --batch");
    }
    let (scoring, _) = scoring_weights(model, optimizer, search);
    if search.step_ms.is_empty() {
        let start = Instant::now();
        search.step_ms = match config.recipe.search_cost.as_str() {
            // GFLOPs of one step: proportional to an ideal device's time, and the same on
            // every run (the fit's exponent and the ranking ignore the scale).
            "flops" => search
                .candidates
                .iter()
                .map(|c| batch as f64 * config.model.train_flops_per_image(c.resolution, c.depth) / 1e9)
                .collect(),
            _ => {
                let untimed: Vec<Candidate> =
                    search.candidates.iter().copied().filter(|c| !timed.contains_key(&c.name())).collect();
                if !untimed.is_empty() {
                    for (c, ms) in untimed.iter().zip(candidates_step_ms(ctx, model, acts, growth, &untimed)?) {
                        timed.insert(c.name(), ms);
                    }
                }
                search.candidates.iter().map(|c| timed[&c.name()]).collect()
            }
        };
        search.timing_seconds += start.elapsed().as_secs_f64();
    }
    let start = Instant::now();
    // This point's share of the held-back batches, following on from the last point's.
    let per_point = evaluation_batches(search.steps, search.candidates.len(), holdout.len());
    let first = search.losses.first().map_or(0, Vec::len) * per_point;
    let batches: Vec<&(Vec<f32>, Vec<u32>)> = (first..first + per_point).map(|b| &holdout[b % holdout.len()]).collect();
    for (i, &c) in search.candidates.clone().iter().enumerate() {
        search.losses[i].push(candidate_loss(ctx, model, scoring, acts, growth, c, &batches)?);
    }
    search.evaluation_seconds += start.elapsed().as_secs_f64();
    Ok(())
}

/// Chooses the winner of a finished search and recycles its weights: the sub-network is
/// extracted from the supernet (weights and every EMA; AdamW moments as
/// `--grow-opt-state` says) and trained on from here. Returns the new state, the log event and the
/// chosen (resolution, depth).
fn finish_search(
    ctx: &GpuContext,
    state: State,
    config: &TrainConfig,
    search: &SearchState,
    epoch: usize,
) -> anyhow::Result<(State, SearchEvent, (usize, usize))> {
    let selection = select(&search.step_ms, &search.losses)?;
    let winner = search.candidates[selection.winner];
    let active = search.growth().active(winner.depth)?;
    let (_, scored_with) = scoring_weights(&state.model, &state.optimizer, search);
    let weights = state.model.params.clone();
    let mut state = remap_state(ctx, state, config, &active, &weights)?;
    state.progress.resolution = winner.resolution;
    let event = SearchEvent {
        stage: search.stage as u32,
        epoch: epoch as u32,
        step: state.progress.step,
        candidates: search
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| runlog::Candidate {
                name: c.name(),
                resolution: c.resolution as u32,
                depth: c.depth as u32,
                losses: search.losses[i].clone(),
                step_ms: search.step_ms[i],
                score: selection.scores[i],
            })
            .collect(),
        fit: runlog::PowerLaw { a: selection.fit.a, b: selection.fit.b },
        w: selection.w,
        winner: winner.name(),
        lowest_score: Some(search.candidates[selection.lowest_score].name()),
        scored_with: Some(scored_with),
        evaluation_seconds: Some(search.evaluation_seconds),
        timing_seconds: Some(search.timing_seconds),
    };
    Ok((state, event, (winner.resolution, winner.depth)))
}

/// The stages a run trained, for summary.json: the schedule's for `none` and `prog`; for
/// `auto`, what each search chose and the full model in the last stage.
fn trained_stages(stages: &[Stage], progress: &Progress, config: &TrainConfig) -> Vec<StageSummary> {
    let entry = |start: usize, resolution: usize, depth: usize| StageSummary {
        start_epoch: start as u32,
        resolution: resolution as u32,
        depth: depth as u32,
    };
    if config.recipe.schedule == "auto" {
        let last = stages[stages.len() - 1];
        let mut out: Vec<StageSummary> = progress.trained.iter().map(|&(e, r, d)| entry(e, r, d)).collect();
        out.push(entry(last.start_epoch, last.resolution, last.depth));
        out
    } else {
        stages.iter().map(|s| entry(s.start_epoch, s.resolution, s.depth)).collect()
    }
}

/// The run was stopped by Ctrl-C after writing its checkpoint; `resume` says how to go on.
#[derive(Debug, thiserror::Error)]
#[error("interrupted; the run is saved, continue it with: {resume}")]
pub struct Interrupted {
    pub resume: String,
}

/// The loss or the weights became NaN or infinite.
#[derive(Debug, thiserror::Error)]
#[error(
    "training diverged {detail}; the last good checkpoint is kept in {}; try a lower --lr or a smaller --batch",
    checkpoints.display()
)]
pub struct Diverged {
    detail: String,
    checkpoints: PathBuf,
}

fn progress_bar(quiet: bool, steps: u64, epoch: usize, epochs: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_images_are_rendered_at_the_data_size_not_the_model_size() {
        // The quick preset trains at 24 px (16 px in its first stage) on images drawn at 32 px.
        // Drawn at the 16 px it once trained at, the fine textures alias: 4 epochs of 15 000
        // images reached 0.929 that way, 0.981 from 32 px.
        let config = TrainConfig::preset("quick").unwrap();
        assert_eq!((config.model.image_size, config.data.image_size), (24, 32));
        let dataset = open_dataset(&config).unwrap();
        let image = dataset.train.load(0).unwrap();
        assert_eq!((image.width, image.height), (32, 32));
        assert_eq!(dataset.val.unwrap().load(0).unwrap().width, 32);
    }

    #[test]
    fn learning_rate_warms_up_then_follows_a_cosine() {
        let (lr, min) = (1e-3, 1e-5);
        assert!((learning_rate(0, 100, 10, lr, min) - 1e-4).abs() < 1e-12);
        assert!((learning_rate(9, 100, 10, lr, min) - lr).abs() < 1e-12);
        assert!((learning_rate(10, 100, 10, lr, min) - lr).abs() < 1e-12);
        let mid = learning_rate(55, 100, 10, lr, min);
        assert!((mid - (min + 0.5 * (lr - min))).abs() < 1e-9, "{mid}");
        assert!((learning_rate(100, 100, 10, lr, min) - min).abs() < 1e-12);
        // Past the end it stays at the minimum; without warmup it starts at the peak.
        assert!((learning_rate(150, 100, 10, lr, min) - min).abs() < 1e-12);
        assert!((learning_rate(0, 10, 0, lr, min) - lr).abs() < 1e-12);
        // Without warmup, step 3 of 10 is 30 % into the cosine.
        let expected = min + 0.5 * (lr - min) * (1.0 + (0.3 * std::f64::consts::PI).cos());
        assert!((learning_rate(3, 10, 0, lr, min) - expected).abs() < 1e-12);
        // The cosine only falls.
        let curve: Vec<f64> = (10..=100).map(|s| learning_rate(s, 100, 10, lr, min)).collect();
        assert!(curve.windows(2).all(|w| w[1] <= w[0]), "{curve:?}");
    }

    #[test]
    fn drop_path_follows_the_linear_rule_and_is_deterministic() {
        let (depth, batch) = (4, 2000);
        let s = drop_path_scales(0.3, depth, batch, 7, 11);
        assert_eq!(s, drop_path_scales(0.3, depth, batch, 7, 11));
        assert_ne!(s, drop_path_scales(0.3, depth, batch, 7, 12));
        for block in 0..depth {
            let p = 0.3 * block as f64 / 3.0;
            let row = &s[2 * block * batch..][..2 * batch];
            let dropped = row.iter().filter(|&&v| v == 0.0).count() as f64 / row.len() as f64;
            assert!((dropped - p).abs() < 0.03, "block {block}: {dropped} vs {p}");
            // Kept branches are rescaled so that the expectation is unchanged.
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / row.len() as f64;
            assert!((mean - 1.0).abs() < 0.06, "block {block}: mean {mean}");
        }
    }

    #[test]
    fn metrics_of_logits() {
        let logits = [0.0, 2.0, 1.0, 3.0, 0.0, 0.0];
        assert_eq!(argmax_rows(&logits, 3), [1, 0]);
        let logits64: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        let loss = cross_entropy(&logits64, &[1, 0], 3, 0.0).0;
        let row = |z: [f64; 3], l: usize| z.iter().map(|v| v.exp()).sum::<f64>().ln() - z[l];
        assert!((loss - (row([0.0, 2.0, 1.0], 1) + row([3.0, 0.0, 0.0], 0)) / 2.0).abs() < 1e-6);
    }
}
