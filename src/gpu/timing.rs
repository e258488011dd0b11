//! Timing recorded GPU work: warm-up, then the median of several submissions, from GPU
//! timestamps where the adapter has them and the wall clock otherwise. Used by the
//! benchmarks (`crate::bench`) and by the kernels that tune themselves (matmul).

use crate::gpu::{GpuContext, Recorder};
use crate::Result;

/// Which clock the samples of [`time_samples`] come from on this adapter.
pub fn timer_name(ctx: &GpuContext) -> &'static str {
    if ctx.has(wgpu::Features::TIMESTAMP_QUERY) {
        "gpu-timestamps"
    } else {
        "wall-clock"
    }
}

/// Runs `record` once to warm up (compiling pipelines, faulting in memory), then
/// `reps` times, each as its own submission; returns the median in milliseconds.
pub async fn time_ms(ctx: &GpuContext, reps: usize, record: impl Fn(&mut Recorder<'_>) -> Result<()>) -> Result<f64> {
    Ok(median(&mut time_samples(ctx, reps, record).await?))
}

/// As [`time_ms`], but every sample: the sum of the GPU timestamps of the recorded
/// dispatches, or wall time where the adapter has no timestamps.
pub async fn time_samples(
    ctx: &GpuContext,
    reps: usize,
    record: impl Fn(&mut Recorder<'_>) -> Result<()>,
) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(reps);
    for rep in 0..=reps {
        let start = now_ms();
        let mut rec = ctx.timed_recorder("bench");
        record(&mut rec)?;
        let timing = ctx.submit_timed(rec).await?;
        let wall = now_ms() - start;
        if rep > 0 {
            times.push(if timing.passes.is_empty() { wall } else { timing.total_ms() });
        }
    }
    Ok(times)
}

/// Median of a non-empty sample (sorts it in place, so `v[0]` is then the minimum).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Milliseconds from an arbitrary origin (wall clock), native and web.
pub fn now_ms() -> f64 {
    #[cfg(native)]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
    }
    #[cfg(web)]
    {
        js_sys::Date::now()
    }
}
