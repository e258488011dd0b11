//! Kernel benchmarks behind `autoprog bench` and the criterion benches: each case is
//! timed after a warm-up as the median of several runs, with GPU timestamps where the
//! adapter has them (wall time otherwise).

use serde::Serialize;

use crate::gpu::GpuContext;
use crate::kernels::matmul::{self, Dims, Layout};
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
    pub ms: f64,
    pub gflops: f64,
    pub variant: String,
    /// `gpu-timestamps` or `wall-clock`.
    pub timer: &'static str,
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
}

impl BenchOptions {
    /// The cases the issue asks for: 1024³ and ViT shapes (batch 32 x 197 tokens).
    pub fn standard() -> Self {
        BenchOptions { square: vec![1024], vit_rows: 32 * 197, reps: 5 }
    }
}

fn timer_name(ctx: &GpuContext) -> &'static str {
    if ctx.has(wgpu::Features::TIMESTAMP_QUERY) {
        "gpu-timestamps"
    } else {
        "wall-clock"
    }
}

/// Times one matmul problem with the tuned config.
pub async fn bench_matmul(ctx: &GpuContext, layout: Layout, dims: Dims, reps: usize) -> Result<BenchResult> {
    let config = matmul::config_for(ctx, layout);
    let ms = matmul::time_config(ctx, layout, config, dims, reps).await?;
    let flops = 2.0 * (dims.batch * dims.m * dims.n * dims.k) as f64;
    Ok(BenchResult {
        name: layout.name().to_string(),
        m: Some(dims.m),
        n: Some(dims.n),
        k: Some(dims.k),
        shape: None,
        ms,
        gflops: flops / (ms * 1e6),
        variant: config.label(),
        timer: timer_name(ctx),
    })
}

/// Runs every case (tuning matmul first), calling `progress` after each.
pub async fn run(
    ctx: &GpuContext,
    opts: &BenchOptions,
    mut progress: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>> {
    matmul::autotune(ctx).await?;
    let mut cases = Vec::new();
    for &s in &opts.square {
        for layout in Layout::ALL {
            cases.push((layout, Dims { batch: 1, m: s, n: s, k: s }));
        }
    }
    for (k, n) in [(192, 576), (192, 768), (384, 1152), (384, 1536)] {
        for layout in Layout::ALL {
            cases.push((layout, Dims { batch: 1, m: opts.vit_rows, n, k }));
        }
    }
    let mut results = Vec::new();
    for (layout, dims) in cases {
        let r = bench_matmul(ctx, layout, dims, opts.reps).await?;
        progress(&r);
        results.push(r);
    }
    Ok(results)
}
