//! Kernel benchmarks behind `autoprog bench` and the criterion benches: each case is
//! timed after a warm-up as the median of several runs, with GPU timestamps where the
//! adapter has them (wall time otherwise).

use serde::Serialize;

pub use crate::gpu::timing::time_ms;
use crate::gpu::timing::{median, now_ms, time_samples, timer_name};
use crate::gpu::{Element, GpuContext};
use crate::kernels::attention::{self, AttentionOptions, AttentionVariant};
use crate::kernels::matmul::{self, Dims, Layout};
use crate::train::Collective;
use crate::Result;

/// One measured case, as printed by `autoprog bench --json`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub m: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// Free-form shape for non-matmul cases, e.g. `B8 NH3 N197 HS64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<String>,
    /// Median over the timed runs.
    pub ms: f64,
    pub gflops: f64,
    /// Fastest run: a CPU adapter shares the machine, and other work only slows runs down.
    pub min_ms: f64,
    pub variant: String,
    /// `gpu-timestamps` or `wall-clock`.
    pub timer: &'static str,
    /// Training throughput of the `train_step` cases (images per second, from the median).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images_per_second: Option<f64>,
    /// `train_step` cases: host time to record and submit one step (median, ms), the part
    /// of a step that the GPU's speed does not change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ms: Option<f64>,
    /// `train_step` cases: GPU time per kernel in one step (label, ms, dispatches), largest
    /// first; empty without timestamp queries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<(String, f64, usize)>,
    /// `train_step` cases: device memory the step's tensors hold (model, optimizer,
    /// activations and scratch; bytes of the storage buffers created for it, see
    /// [`GpuContext::tensor_bytes`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_bytes: Option<u64>,
    /// `train_step` cases: GPU time of one step, the sum of `kernels` (None without
    /// timestamp queries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_ms: Option<f64>,
    /// Data-parallel `train_step` cases (under `mpirun`): what the ranks did together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_parallel: Option<DataParallel>,
}

/// A data-parallel training step: `ranks` ranks train the case's batch, each its share,
/// and average their gradients through host memory.
#[derive(Clone, Debug, Serialize)]
pub struct DataParallel {
    pub ranks: usize,
    /// Bytes of gradients each rank sends into the all-reduce per step.
    pub gradient_bytes: u64,
    /// One all-reduce of all the gradients alone (median, timed after the ranks met).
    pub all_reduce_ms: f64,
    /// The step's all-reduces of its buckets, waiting for slower ranks included (median).
    pub exchange_ms: f64,
    /// The part of the exchange the step waited for after its backward (median).
    pub exposed_ms: f64,
    /// From recording the forward to the last bucket of gradients on the host (median).
    pub backward_ms: f64,
    /// One process alone training the whole batch on rank 0's adapter (median step).
    pub alone_ms: f64,
    /// Strong-scaling efficiency: alone_ms / (ranks × step ms); 1 is perfect.
    pub scaling_efficiency: f64,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Square matmul sizes (each in NN, NT and TN).
    pub square: Vec<usize>,
    /// Rows of the ViT-shape matmuls (batch x tokens).
    pub vit_rows: usize,
    /// Timed repetitions per case (after one warm-up run).
    pub reps: usize,
    /// Batch of the attention cases (3 heads of size 64, DeiT-Ti's attention).
    pub attention_batch: usize,
    /// Only the training-step cases.
    pub train_only: bool,
    /// Only the attention cases (both variants).
    pub attention_only: bool,
    /// Images per step of the training-step cases.
    pub train_batch: usize,
    /// Model presets of the training-step cases.
    pub train_models: Vec<String>,
    /// Time every matmul candidate of this adapter at the square sizes, not only the tuned one.
    pub all_variants: bool,
}

impl BenchOptions {
    /// The cases the issue asks for: 1024³ and ViT shapes (batch 32 x 197 tokens).
    pub fn standard() -> Self {
        BenchOptions {
            square: vec![1024],
            vit_rows: 32 * 197,
            reps: 9,
            attention_batch: 32,
            train_only: false,
            attention_only: false,
            train_batch: 64,
            train_models: vec!["nano".into(), "tiny".into()],
            all_variants: false,
        }
    }
}

/// Times fused attention forward and backward on qkv [B, N, 3·NH·HS] in `variant`. FLOPs
/// follow the FlashAttention convention: forward 4·B·NH·N²·HS (QKᵀ and PV), backward 2.5× that.
pub async fn bench_attention(
    ctx: &GpuContext,
    variant: AttentionVariant,
    [b, nh, n, hs]: [usize; 4],
    reps: usize,
) -> Result<[BenchResult; 2]> {
    let c = nh * hs;
    let fill = |len: usize| (0..len).map(|i| ((i * 7919) % 17) as f32 * 0.02 - 0.16).collect::<Vec<_>>();
    let qkv = ctx.upload(&fill(b * n * 3 * c), &[b, n, 3 * c], "bench.qkv")?;
    let dout = ctx.upload(&fill(b * n * c), &[b, n, c], "bench.dout")?;
    let out = ctx.empty(&[b, n, c], "bench.out")?;
    let lse = ctx.empty(&[b, nh, n], "bench.lse")?;
    let dqkv = ctx.empty(&[b, n, 3 * c], "bench.dqkv")?;
    let opts = AttentionOptions::new(1.0 / (hs as f32).sqrt()).with_variant(variant);
    let mut fwd = time_samples(ctx, reps, |rec| attention::attention_forward(rec, &qkv, &opts, &out, &lse)).await?;
    let mut bwd =
        time_samples(ctx, reps, |rec| attention::attention_backward(rec, &qkv, &out, &dout, &lse, &opts, &dqkv))
            .await?;
    let fwd_flops = 4.0 * (b * nh * n * n * hs) as f64;
    let shape = format!("B{b} NH{nh} N{n} HS{hs}");
    let result = |name: &str, samples: &mut Vec<f64>, flops: f64| {
        let ms = median(samples);
        BenchResult {
            name: name.to_string(),
            m: None,
            n: None,
            k: None,
            shape: Some(shape.clone()),
            ms,
            gflops: flops / (ms * 1e6),
            min_ms: samples[0],
            variant: variant.label().to_string(),
            timer: timer_name(ctx),
            images_per_second: None,
            host_ms: None,
            kernels: Vec::new(),
            device_bytes: None,
            gpu_ms: None,
            data_parallel: None,
        }
    };
    Ok([result("attention_forward", &mut fwd, fwd_flops), result("attention_backward", &mut bwd, 2.5 * fwd_flops)])
}

/// Times one matmul problem with `config`, operands stored as `operand` (f16 cases are
/// named `matmul_nn_f16` etc.; C is f32 in both).
pub async fn bench_matmul(
    ctx: &GpuContext,
    layout: Layout,
    config: matmul::Config,
    dims: Dims,
    reps: usize,
    operand: Element,
) -> Result<BenchResult> {
    let mut samples = matmul::time_config(ctx, layout, config, dims, reps, operand).await?;
    let ms = median(&mut samples);
    let flops = 2.0 * (dims.batch * dims.m * dims.n * dims.k) as f64;
    Ok(BenchResult {
        name: if operand == Element::F16 { format!("{}_f16", layout.name()) } else { layout.name().to_string() },
        m: Some(dims.m),
        n: Some(dims.n),
        k: Some(dims.k),
        shape: None,
        ms,
        gflops: flops / (ms * 1e6),
        min_ms: samples[0],
        variant: config.label(),
        timer: timer_name(ctx),
        images_per_second: None,
        host_ms: None,
        kernels: Vec::new(),
        device_bytes: None,
        gpu_ms: None,
        data_parallel: None,
    })
}

/// Times whole training steps (forward, loss, backward, clipping, AdamW, one EMA: one
/// submission each) of the preset `model` at `resolution` px with patches of `patch` px and
/// `batch` images, activations stored as `activations` (f16: with a fixed loss scale of
/// 1024), wall clock from recording to completion, so that submission overhead counts too.
/// Also returns the GPU time per kernel of one step (empty without timestamps), largest
/// first, and the device memory the step's tensors hold.
pub async fn bench_train_step(
    ctx: &GpuContext,
    model: &str,
    resolution: usize,
    patch: usize,
    batch: usize,
    reps: usize,
    activations: Element,
) -> Result<BenchResult> {
    use crate::model::step::Optimizer;

    // Memory: what the pool holds after the step's tensors are made, less what it held
    // before (idle buffers of earlier cases released first).
    ctx.trim_pool();
    let memory_before = ctx.tensor_bytes();
    let TrainCase { config, vit, acts, options } = TrainCase::new(ctx, model, resolution, patch, batch, activations)?;
    let mut opt = Optimizer::new(ctx, &vit, &[0.999])?;
    let mut samples = Vec::with_capacity(reps);
    let mut host = Vec::with_capacity(reps);
    for rep in 0..=reps {
        let start = now_ms();
        let mut rec = ctx.recorder("bench.train_step");
        opt.record_step(&mut rec, &vit, &acts, &options)?;
        ctx.submit(rec)?;
        let submitted = now_ms();
        ctx.read(&acts.loss).await?;
        if rep > 0 {
            samples.push(now_ms() - start);
            host.push(submitted - start);
        }
    }
    let mut rec = ctx.timed_recorder("bench.train_step");
    opt.record_step(&mut rec, &vit, &acts, &options)?;
    let breakdown = ctx.submit_timed(rec).await?.by_kernel();
    // One submission either way; the host records it afresh only with plans turned off.
    let variant = if opt.plans.enabled { "replayed plan" } else { "recorded afresh" };
    let device_bytes = ctx.tensor_bytes() - memory_before;
    let shape = format!("{model} R{resolution} P{patch} B{batch} {activations}");
    let flops = batch as f64 * config.train_flops_per_image(resolution, config.depth);
    Ok(BenchResult {
        host_ms: Some(median(&mut host)),
        gpu_ms: (!breakdown.is_empty()).then(|| breakdown.iter().map(|(_, ms, _)| ms).sum()),
        kernels: breakdown,
        device_bytes: Some(device_bytes),
        ..BenchResult::train_step(shape, variant, &mut samples, batch, flops)
    })
}

impl BenchResult {
    /// A `train_step` case of `batch` images and `flops` per step from its step times in ms.
    fn train_step(shape: String, variant: &str, samples: &mut [f64], batch: usize, flops: f64) -> BenchResult {
        let ms = median(samples);
        BenchResult {
            name: "train_step".into(),
            m: None,
            n: None,
            k: None,
            shape: Some(shape),
            ms,
            gflops: flops / (ms * 1e6),
            min_ms: samples[0],
            variant: variant.into(),
            timer: "wall-clock",
            images_per_second: Some(batch as f64 / (ms / 1e3)),
            host_ms: None,
            kernels: Vec::new(),
            device_bytes: None,
            gpu_ms: None,
            data_parallel: None,
        }
    }
}

/// Times data-parallel training steps of the preset `model` (see [`bench_train_step`]):
/// every rank trains its share of `batch` images and the ranks average their gradients;
/// then rank 0 alone times the whole batch (the others wait), for the scaling efficiency.
/// A collective call: every rank calls it with the same arguments.
#[allow(clippy::too_many_arguments, reason = "the case's shape and the ranks")]
pub async fn bench_data_parallel_step(
    ctx: &GpuContext,
    peers: &dyn Collective,
    model: &str,
    resolution: usize,
    patch: usize,
    batch: usize,
    reps: usize,
    activations: Element,
) -> anyhow::Result<BenchResult> {
    use crate::model::step::Optimizer;
    use crate::train::collective::train_gradients_over_ranks;

    let ranks = peers.ranks();
    anyhow::ensure!(batch.is_multiple_of(ranks), "--train-batch {batch} does not split over {ranks} ranks");
    let case = TrainCase::new(ctx, model, resolution, patch, batch / ranks, activations)?;
    let [mut samples, mut backward, mut exchange, mut exposed, mut reduce] = [(); 5].map(|_| Vec::new());
    let mut opt = Optimizer::new(ctx, &case.vit, &[0.999])?;
    for rep in 0..=reps {
        let start = now_ms();
        let rec = ctx.recorder("bench.train_step");
        let exchanged =
            train_gradients_over_ranks(ctx, rec, &case.vit, &case.acts, &case.options, peers, false).await?;
        let mut rec = ctx.recorder("bench.train_step");
        opt.record_update(&mut rec, &case.vit, &case.acts, &case.options)?;
        ctx.submit(rec)?;
        ctx.read(&opt.report).await?;
        let step_ms = now_ms() - start;
        // The same all-reduce again once every rank has arrived: its transfer alone.
        peers.sum_f64(&mut [0.0])?;
        let mut gradients = vec![0.0f32; case.vit.grads.numel()];
        let reduce_start = now_ms();
        peers.sum_f32(&mut gradients)?;
        if rep > 0 {
            samples.push(step_ms);
            backward.push(exchanged.backward_ms);
            exchange.push(exchanged.exchange_ms);
            exposed.push(exchanged.exposed_ms);
            reduce.push(now_ms() - reduce_start);
        }
    }
    let alone = match peers.rank() {
        0 => Some(bench_train_step(ctx, model, resolution, patch, batch, reps, activations).await?),
        _ => None,
    };
    // The others wait here (without spinning) while rank 0 times alone.
    peers.sum_f64(&mut [0.0])?;
    let alone_ms = alone.map_or(f64::NAN, |a| a.ms);
    let flops = batch as f64 * case.config.train_flops_per_image(resolution, case.config.depth);
    let shape = format!("{model} R{resolution} P{patch} B{batch} {activations} over {ranks} ranks");
    let step = BenchResult::train_step(shape, "data-parallel", &mut samples, batch, flops);
    Ok(BenchResult {
        data_parallel: Some(DataParallel {
            ranks,
            gradient_bytes: case.vit.grads.numel() as u64 * 4,
            all_reduce_ms: median(&mut reduce),
            exchange_ms: median(&mut exchange),
            exposed_ms: median(&mut exposed),
            backward_ms: median(&mut backward),
            alone_ms,
            scaling_efficiency: alone_ms / (ranks as f64 * step.ms),
        }),
        ..step
    })
}

/// A training step's model, activations with a batch written, and options.
struct TrainCase {
    config: crate::model::VitConfig,
    vit: crate::model::GpuVit,
    acts: crate::model::Activations,
    options: crate::model::step::StepOptions,
}

impl TrainCase {
    /// The preset `model` at `resolution` px with patches of `patch` px, `batch` images,
    /// activations stored as `activations` (f16: with a fixed loss scale of 1024).
    fn new(
        ctx: &GpuContext,
        model: &str,
        resolution: usize,
        patch: usize,
        batch: usize,
        activations: Element,
    ) -> Result<TrainCase> {
        use crate::kernels::optimizer::AdamW;
        use crate::model::step::StepOptions;
        use crate::model::{GpuVit, Loss, ParamLayout, VitConfig};

        let mut config = VitConfig::preset(model, 10)?;
        config.image_size = resolution;
        config.patch_size = patch;
        config.validate()?;
        let layout = ParamLayout::new(&config, config.depth, ctx.arena_align());
        let params = layout.init(&config, 0);
        let mut vit = GpuVit::new(ctx, config.clone(), layout, &params)?;
        vit.set_activations(ctx, activations)?;
        let acts = vit.plan(ctx, batch, resolution)?;
        let images: Vec<f32> = (0..acts.images.numel()).map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0).collect();
        ctx.write(&acts.images, &images)?;
        ctx.write_u32(&acts.labels, &(0..batch as u32).map(|i| i % 10).collect::<Vec<_>>())?;
        let options = StepOptions {
            adamw: AdamW { lr: 1e-4, weight_decay: 0.05, ..AdamW::default() },
            max_grad_norm: 1.0,
            loss: Loss::Hard { smoothing: 0.1 },
            drop_path: true,
            loss_scale: if activations == Element::F16 { 1024.0 } else { 1.0 },
        };
        Ok(TrainCase { config, vit, acts, options })
    }
}

/// Under `mpirun`: the training-step cases of [`run`], data-parallel over `peers` (see
/// [`bench_data_parallel_step`]), calling `progress` after each. Collective.
pub async fn run_data_parallel(
    ctx: &GpuContext,
    peers: &dyn Collective,
    opts: &BenchOptions,
    mut progress: impl FnMut(&BenchResult),
) -> anyhow::Result<Vec<BenchResult>> {
    matmul::autotune(ctx).await?;
    let mut results = Vec::new();
    for model in opts.train_models.iter().map(String::as_str) {
        for activations in precisions(ctx) {
            let reps = opts.reps.min(5);
            let r = bench_data_parallel_step(ctx, peers, model, 32, 4, opts.train_batch, reps, activations).await?;
            progress(&r);
            results.push(r);
        }
    }
    Ok(results)
}

/// The activation types the training steps are timed in: f32, and f16 where the adapter
/// has f16 shaders.
fn precisions(ctx: &GpuContext) -> Vec<Element> {
    let mut precisions = vec![Element::F32];
    if ctx.has_f16() {
        precisions.push(Element::F16);
    }
    precisions
}

/// Runs every case (tuning matmul first), calling `progress` after each.
pub async fn run(
    ctx: &GpuContext,
    opts: &BenchOptions,
    mut progress: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>> {
    let mut results = Vec::new();
    if opts.attention_only {
        attention_cases(ctx, opts, &mut results, &mut progress).await?;
        return Ok(results);
    }
    matmul::autotune(ctx).await?;
    // Both at 32 px with 4 px patches (65 tokens), the CIFAR-style setting of the reference
    // PyTorch numbers.
    for model in opts.train_models.iter().map(String::as_str) {
        for activations in precisions(ctx) {
            let r = bench_train_step(ctx, model, 32, 4, opts.train_batch, opts.reps.min(5), activations).await?;
            progress(&r);
            results.push(r);
        }
    }
    if opts.train_only {
        return Ok(results);
    }
    let mut cases = Vec::new();
    // Square problems in every operand type the training steps use (f16: the tensor-core
    // variant where the device has it), the ViT's shapes in f32.
    for operand in precisions(ctx) {
        for &s in &opts.square {
            for layout in Layout::ALL {
                let dims = Dims { batch: 1, m: s, n: s, k: s };
                if opts.all_variants {
                    cases.extend(matmul::candidates(ctx, operand).into_iter().map(|c| (layout, c, dims, operand)));
                } else {
                    cases.push((layout, matmul::config_for(ctx, layout, operand), dims, operand));
                }
            }
        }
    }
    for (k, n) in [(192, 576), (192, 768), (384, 1152), (384, 1536)] {
        for layout in Layout::ALL {
            let dims = Dims { batch: 1, m: opts.vit_rows, n, k };
            cases.push((layout, matmul::config_for(ctx, layout, Element::F32), dims, Element::F32));
        }
    }
    for (layout, config, dims, operand) in cases {
        let r = bench_matmul(ctx, layout, config, dims, opts.reps, operand).await?;
        progress(&r);
        results.push(r);
    }
    attention_cases(ctx, opts, &mut results, &mut progress).await?;
    Ok(results)
}

/// Attention at 65 and 197 tokens (3 heads of 64, DeiT-Ti's), in both variants.
async fn attention_cases(
    ctx: &GpuContext,
    opts: &BenchOptions,
    results: &mut Vec<BenchResult>,
    progress: &mut impl FnMut(&BenchResult),
) -> Result<()> {
    for n in [65, 197] {
        for variant in [AttentionVariant::Rows, AttentionVariant::Tiled] {
            for r in bench_attention(ctx, variant, [opts.attention_batch, 3, n, 64], opts.reps).await? {
                progress(&r);
                results.push(r);
            }
        }
    }
    Ok(())
}
