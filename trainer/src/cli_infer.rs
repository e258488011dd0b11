//! Commands that use a trained model: `eval` (accuracy on a dataset's validation part),
//! `predict` (classes of image files) and `debug-step` (one forward and backward on a given
//! batch, written out for comparison with PyTorch).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use autoprog::checkpoint::{Checkpoint, NamedTensor, Storage};
use autoprog::data::preprocess;
use autoprog::model::inference::{top_classes, InferenceModel, LoadOptions, TopClass};
use autoprog::model::{GpuVit, Loss, ParamLayout};
use autoprog::GpuContext;
use clap::Args;
use serde::Serialize;

use crate::data::{decode_image, skipped_with_warnings, AugmentConfig, Dataset};
use crate::train::{self, eval_batches};
use crate::GpuArgs;
use autoprog::checkpoint::schema::meta;
use autoprog::train::{evaluate, BatchRequest, Part, TrainConfig};

/// How to read a checkpoint into a model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A checkpoint of `autoprog train`, a model file of `autoprog export`, or a timm
    /// VisionTransformer saved with safetensors.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Use this EMA of the weights (its decay, e.g. 0.999) instead of the weights.
    #[arg(long)]
    ema: Option<f64>,
    /// Attention heads, for checkpoints that do not say (timm files).
    #[arg(long)]
    heads: Option<usize>,
    /// Normalisation mean per channel (default: the checkpoint's, else ImageNet's).
    #[arg(long, num_args = 3, value_delimiter = ',')]
    mean: Option<Vec<f32>>,
    /// Normalisation std per channel (default: the checkpoint's, else ImageNet's).
    #[arg(long, num_args = 3, value_delimiter = ',')]
    std: Option<Vec<f32>>,
}

/// A model read from a checkpoint, with what inference needs besides the weights.
pub struct LoadedModel {
    pub model: InferenceModel,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
    /// The training config, for checkpoints written by `autoprog train`.
    pub train_config: Option<TrainConfig>,
}

impl LoadedModel {
    /// The model on the GPU, ready for inference.
    fn gpu_model(&self, ctx: &GpuContext) -> anyhow::Result<GpuVit> {
        Ok(GpuVit::new(ctx, self.model.config.clone(), self.layout.clone(), &self.params)?)
    }
}

fn three(v: &Option<Vec<f32>>, what: &str) -> anyhow::Result<Option<[f32; 3]>> {
    match v {
        None => Ok(None),
        Some(v) => {
            <[f32; 3]>::try_from(v.as_slice()).map(Some).map_err(|_| anyhow::anyhow!("--{what} takes three values"))
        }
    }
}

impl ModelArgs {
    /// The model in the file, without a GPU.
    pub fn read(&self) -> anyhow::Result<(InferenceModel, Checkpoint)> {
        let ckpt = Checkpoint::load(&self.checkpoint)?;
        let options = LoadOptions {
            heads: self.heads,
            ema: self.ema,
            mean: three(&self.mean, "mean")?,
            std: three(&self.std, "std")?,
        };
        let model = InferenceModel::from_checkpoint(&ckpt, &self.checkpoint.display().to_string(), &options)?;
        Ok((model, ckpt))
    }
}

impl LoadedModel {
    /// The model [`ModelArgs::read`] read, laid out for `ctx`. The file is read before the
    /// GPU is opened, so that a bad file fails at once.
    pub fn new(ctx: &GpuContext, (model, ckpt): (InferenceModel, Checkpoint)) -> anyhow::Result<LoadedModel> {
        let layout = model.layout(ctx.arena_align());
        let params = model.arena(&layout)?;
        // Only `eval` without --data needs the training config; a config of an older
        // version must not stop inference.
        let train_config = ckpt.get_json::<TrainConfig>(meta::CONFIG).ok().flatten();
        Ok(LoadedModel { model, layout, params, train_config })
    }
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Dataset folder (default: the data the checkpoint was trained on).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Hold out this fraction of the training images when the dataset has no validation part.
    #[arg(long)]
    val_split: Option<f64>,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let read = args.model.read()?;
    let ctx = GpuContext::new_blocking(&args.gpu.options())?;
    let loaded = LoadedModel::new(&ctx, read)?;
    let mut config = match &loaded.train_config {
        Some(c) => c.clone(),
        None => {
            let mut c = TrainConfig::preset("quick")?;
            c.data.path = None;
            c
        }
    };
    if args.data.is_some() {
        config.data.path = args.data.clone();
        config.data.val_split = args.val_split;
    } else if loaded.train_config.is_none() {
        bail!("{} does not record its training data; pass --data", args.model.checkpoint.display());
    }
    config.model = loaded.model.config.clone();
    let dataset: Dataset = train::open_dataset(&config)?;
    let classes = dataset.classes().len();
    if classes != loaded.model.config.classes {
        bail!(
            "the model has {} classes but the data has {classes}; evaluate it on the data it was trained for",
            loaded.model.config.classes
        );
    }
    let resolution = loaded.model.config.image_size;
    let model = loaded.gpu_model(&ctx)?;
    let val = dataset.val.clone().expect("open_dataset guarantees a val part");
    let acts = model.plan(&ctx, args.batch.min(val.len()).max(1), resolution)?;
    let aug = AugmentConfig { mean: loaded.model.mean, std: loaded.model.std, ..AugmentConfig::none(resolution) };
    let skipped = skipped_with_warnings();
    let request = BatchRequest {
        part: Part::Val,
        batch: acts.batch,
        drop_last: false,
        train: false,
        aug,
        seed: 0,
        epoch: 0,
        skip: 0,
        shard: Default::default(),
    };
    let batches = eval_batches(val.clone(), &request, config.data.workers, &skipped)?;
    let result = pollster::block_on(evaluate(&ctx, &model, &[&model.params], &acts, batches))?;
    if args.json {
        let out = serde_json::json!({
            "images": result.images,
            "skipped_images": skipped.count(),
            "val_acc": result.acc[0],
            "val_loss": result.loss[0],
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "validation accuracy {:.4}, loss {:.4} on {} images ({})",
            result.acc[0],
            result.loss[0],
            result.images,
            dataset.summary()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Image files (PNG, JPEG, ...).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Classes to show per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Print JSON: per image {file, logits, top: [{class, label, prob}]}.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Prediction {
    file: String,
    logits: Vec<f32>,
    top: Vec<TopClass>,
}

/// An image file as the model's input [3, R, R]: decoded as the datasets decode and
/// preprocessed as training's evaluation and the web viewer preprocess.
pub fn load_image(path: &Path, resolution: usize, mean: [f32; 3], std: [f32; 3]) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let image = decode_image(&bytes, path).map_err(|reason| {
        anyhow::anyhow!(
            "{} is not an image this tool can decode (PNG, JPEG, GIF, BMP, TIFF, WebP, ...): {reason}",
            path.display()
        )
    })?;
    Ok(preprocess(&image, resolution, mean, std))
}

pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    let read = args.model.read()?;
    let ctx = GpuContext::new_blocking(&args.gpu.options())?;
    let loaded = LoadedModel::new(&ctx, read)?;
    let resolution = loaded.model.config.image_size;
    let model = loaded.gpu_model(&ctx)?;
    let k = loaded.model.config.classes;
    let mut predictions = Vec::new();
    const CHUNK: usize = 32;
    // Every chunk runs the same forward pass: recorded once, replayed; the last chunk is
    // padded with zero images, whose logits are left out.
    let acts = model.plan(&ctx, args.images.len().min(CHUNK), resolution)?;
    let mut capture = ctx.capture("predict");
    model.forward(&mut capture, &model.params, &acts, false)?;
    let forward = capture.into_plan()?;
    for files in args.images.chunks(CHUNK) {
        let mut images = Vec::with_capacity(acts.images.numel());
        for f in files {
            images.extend(load_image(f, resolution, loaded.model.mean, loaded.model.std)?);
        }
        images.resize(acts.images.numel(), 0.0);
        ctx.write(&acts.images, &images)?;
        let mut rec = ctx.recorder("predict");
        rec.replay(&forward)?;
        ctx.submit(rec)?;
        let logits = ctx.read_blocking(&acts.logits)?;
        for (f, row) in files.iter().zip(logits.chunks(k)) {
            let top = top_classes(row, &loaded.model.classes, args.top_k.max(1));
            predictions.push(Prediction { file: f.display().to_string(), logits: row.to_vec(), top });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&predictions)?);
    } else {
        for p in &predictions {
            let tops: Vec<String> = p.top.iter().map(|t| format!("{} {:.1}%", t.label, 100.0 * t.prob)).collect();
            println!("{}: {}", p.file, tops.join(", "));
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct DebugStepArgs {
    #[command(flatten)]
    gpu: GpuArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// safetensors with `images` [B, 3, R, R] f32 (normalised) and `labels` [B] (integers).
    #[arg(long)]
    batch: PathBuf,
    /// Where to write `loss`, `logits` and every parameter's gradient (safetensors).
    #[arg(long)]
    out: PathBuf,
}

/// One forward and backward pass with no augmentation, dropout or drop-path and plain
/// mean cross-entropy; writes the loss, the logits and every gradient under its name.
pub fn debug_step(args: &DebugStepArgs) -> anyhow::Result<()> {
    let read = args.model.read()?;
    let ctx = GpuContext::new_blocking(&args.gpu.options())?;
    let loaded = LoadedModel::new(&ctx, read)?;
    let input = Checkpoint::load(&args.batch)?;
    let images = input.get("images").with_context(|| format!("{} has no `images` tensor", args.batch.display()))?;
    let (b, resolution) = match images.shape.as_slice() {
        &[b, c, h, w] if c == loaded.model.config.in_chans && h == w && b > 0 => (b, h),
        other => {
            bail!(
                "`images` in {} is {other:?}; it must be [B, {}, R, R]",
                args.batch.display(),
                loaded.model.config.in_chans
            )
        }
    };
    let labels = input
        .require("labels", &[b])
        .with_context(|| format!("{} needs `labels` [{b}]", args.batch.display()))?
        .as_labels()?;
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= loaded.model.config.classes) {
        bail!("label {bad} is out of range for a model of {} classes", loaded.model.config.classes);
    }
    let model = loaded.gpu_model(&ctx)?;
    let acts = model.plan(&ctx, b, resolution)?;
    ctx.write(&acts.images, &images.data)?;
    ctx.write_u32(&acts.labels, &labels)?;
    let mut rec = ctx.recorder("debug-step");
    model.forward(&mut rec, &model.params, &acts, false)?;
    model.loss(&mut rec, &acts, Loss::Hard { smoothing: 0.0 })?;
    model.backward(&mut rec, &acts, false)?;
    ctx.submit(rec)?;
    let mut out = Checkpoint::default();
    out.tensors.push(NamedTensor::new("loss", vec![], ctx.read_blocking(&acts.loss)?));
    out.tensors.push(NamedTensor::new(
        "logits",
        vec![b, loaded.model.config.classes],
        ctx.read_blocking(&acts.logits)?,
    ));
    out.tensors.extend(model.layout.to_tensors(&ctx.read_blocking(&model.grads)?, ""));
    out.save(&args.out)?;
    eprintln!(
        "loss {:.6}; wrote loss, logits and {} gradients to {}",
        out.tensors[0].data[0],
        model.layout.specs.len(),
        args.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The model file to write (safetensors: weights under timm's names; architecture,
    /// classes and normalisation in the header).
    #[arg(long)]
    out: PathBuf,
    /// Store the weights as 16-bit floats (half the size; logits change by about 1e-3).
    #[arg(long)]
    f16: bool,
}

/// `autoprog export`: one set of weights (the model's or an EMA's) and everything needed to
/// use it, in one file that `predict`, `eval` and the web viewer read.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let (model, source) = args.model.read()?;
    let mut file = model.to_checkpoint()?;
    // The training config lets `eval` find the data the model was trained on.
    if let Some(config) = source.metadata.get(meta::CONFIG) {
        file.metadata.insert(meta::CONFIG.into(), config.clone());
    }
    let bytes = file.to_bytes_as(if args.f16 { Storage::F16 } else { Storage::F32 })?;
    autoprog::fsutil::write_atomic(&args.out, &bytes)?;
    println!(
        "{}: {} ({} parameters, {} blocks, {} px, {} classes, {})",
        args.out.display(),
        human_bytes(bytes.len()),
        model.parameter_count(),
        model.depth,
        model.config.image_size,
        model.config.classes,
        if args.f16 { "f16" } else { "f32" }
    );
    Ok(())
}

fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}
