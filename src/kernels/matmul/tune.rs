//! Which variant and tile sizes each layout uses on this adapter: candidates per adapter
//! type, timed at first use ([`autotune`]), the choice cached on disk (native) or in
//! memory (web) and kept per context.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{matmul_with, Config, Dims, Epilogue, Layout};
use crate::gpu::timing::time_samples;
use crate::gpu::GpuContext;
use crate::Result;

/// Candidates timed by [`autotune`]: register tiles for CPU adapters, shared-memory
/// tiles (and one register tile, which came close on an H100) otherwise.
pub fn candidates(ctx: &GpuContext) -> Vec<Config> {
    let limits = ctx.limits();
    let all: Vec<Config> = if ctx.summary.is_cpu() {
        vec![
            // Large tiles win on lavapipe: every load there is a per-lane loop, so
            // loads per multiply-add matter more than register spills.
            Config::register(16, 16, 8),
            Config::register(16, 32, 8),
            Config::register(32, 16, 8),
            Config::register(16, 8, 8),
            Config::register(8, 8, 8),
            Config::tiled(4, 4, 16, 16, 16),
        ]
    } else {
        vec![
            Config::blocked(8, 8, 16, 16, 8),
            Config::blocked(8, 8, 16, 16, 16),
            Config::blocked(8, 8, 16, 16, 32),
            Config::blocked(8, 4, 16, 16, 16),
            Config::blocked(4, 8, 16, 16, 16),
            Config::blocked(4, 4, 16, 16, 16),
            Config::blocked(8, 8, 8, 16, 16),
            Config::blocked(8, 8, 16, 8, 16),
            // The loop-written `tiled` variant is left out: far slower than `blocked` on
            // real GPUs (docs/decisions.md, "Matmul tuning candidates").
            Config::register(4, 4, 64),
        ]
    };
    all.into_iter().filter(|c| c.fits(&limits)).collect()
}

/// The untuned choice: the first candidate for this adapter type.
pub fn default_config(ctx: &GpuContext) -> Config {
    candidates(ctx)[0]
}

/// The config `matmul` uses for `layout` on this context.
pub fn config_for(ctx: &GpuContext, layout: Layout) -> Config {
    let state = ctx.state::<MatmulState>();
    let tuned = state.tuned.lock().expect("tuning lock").as_ref().and_then(|t| t.configs.get(layout.name()).copied());
    tuned.unwrap_or_else(|| default_config(ctx))
}

/// Per-layout choices for one adapter (what the disk cache stores).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tuning {
    pub adapter: String,
    pub configs: HashMap<String, Config>,
}

/// Tuning state kept per context.
#[derive(Default)]
pub struct MatmulState {
    tuned: Mutex<Option<Tuning>>,
}

/// Where tuning results live on disk: `$AUTOPROG_CACHE_DIR` or the user cache dir.
#[cfg(native)]
pub fn cache_path(ctx: &GpuContext) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("AUTOPROG_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("autoprog")))?;
    Some(dir.join(format!("matmul-{}.json", ctx.summary.cache_key())))
}

/// Square size timed per candidate: big enough to reach steady speed, small enough
/// to tune in seconds on a CPU adapter.
fn tuning_size(ctx: &GpuContext) -> usize {
    if ctx.summary.is_cpu() {
        512
    } else {
        2048
    }
}

/// Times one config on a `dims` problem: `reps` samples in milliseconds (see
/// [`time_samples`]).
pub async fn time_config(
    ctx: &GpuContext,
    layout: Layout,
    config: Config,
    dims: Dims,
    reps: usize,
) -> Result<Vec<f64>> {
    let (ar, ac) = if layout == Layout::TN { (dims.k, dims.m) } else { (dims.m, dims.k) };
    let (br, bc) = if layout == Layout::NT { (dims.n, dims.k) } else { (dims.k, dims.n) };
    let fill = |len: usize| (0..len).map(|i| ((i * 7919) % 13) as f32 * 0.01 - 0.06).collect::<Vec<_>>();
    let a = ctx.upload(&fill(ar * ac), &[ar, ac], "bench.a")?;
    let b = ctx.upload(&fill(br * bc), &[br, bc], "bench.b")?;
    let c = ctx.empty(&[dims.m, dims.n], "bench.c")?;
    time_samples(ctx, reps, |rec| matmul_with(rec, layout, config, &a, &b, &c, &Epilogue::default())).await
}

/// Picks the fastest candidate for every layout by timing them on this adapter, unless
/// a cached choice exists ([`cache_path`] natively; memory only on the web). Call once at
/// an entry point before heavy work.
pub async fn autotune(ctx: &GpuContext) -> Result<Tuning> {
    #[cfg(native)]
    let cache = cache_path(ctx);
    #[cfg(web)]
    let cache = None;
    autotune_with_cache(ctx, cache).await
}

/// [`autotune`] with an explicit cache file; `None` keeps the choice in memory only.
pub async fn autotune_with_cache(ctx: &GpuContext, cache: Option<std::path::PathBuf>) -> Result<Tuning> {
    if let Some(t) = ctx.state::<MatmulState>().tuned.lock().expect("tuning lock").clone() {
        return Ok(t);
    }
    if let Some(t) = cache.as_deref().and_then(|path| load_cached(ctx, path)) {
        *ctx.state::<MatmulState>().tuned.lock().expect("tuning lock") = Some(t.clone());
        return Ok(t);
    }
    let n = tuning_size(ctx);
    let dims = Dims { batch: 1, m: n, n, k: n };
    let mut tuning = Tuning { adapter: ctx.summary.name.clone(), configs: HashMap::new() };
    for layout in Layout::ALL {
        let mut best: Option<(f64, Config)> = None;
        for config in candidates(ctx) {
            // One run first: a candidate already twice as slow as the best cannot win, and
            // a poor variant can take seconds per run on a small GPU.
            let first = time_config(ctx, layout, config, dims, 1).await?[0];
            if best.is_some_and(|(b, _)| first > 2.0 * b) {
                log::debug!("{} {}: {:.3} ms (dropped after one run)", layout.name(), config.label(), first);
                continue;
            }
            // The fastest of several runs: interference from other work on the
            // machine only ever slows a run down, so the minimum is the steadiest.
            let samples = time_config(ctx, layout, config, dims, 4).await?;
            let ms = samples.iter().copied().fold(first, f64::min);
            log::debug!("{} {}: {:.3} ms", layout.name(), config.label(), ms);
            if best.is_none_or(|(b, _)| ms < b) {
                best = Some((ms, config));
            }
        }
        tuning.configs.insert(layout.name().to_string(), best.expect("at least one candidate").1);
    }
    if let Some(path) = cache.as_deref() {
        save_cached(path, &tuning);
    }
    *ctx.state::<MatmulState>().tuned.lock().expect("tuning lock") = Some(tuning.clone());
    Ok(tuning)
}

/// Forgets the in-memory choice (the disk cache stays), so the next `autotune` reloads.
pub fn reset_tuning(ctx: &GpuContext) {
    *ctx.state::<MatmulState>().tuned.lock().expect("tuning lock") = None;
}

fn load_cached(ctx: &GpuContext, path: &std::path::Path) -> Option<Tuning> {
    let text = std::fs::read_to_string(path).ok()?;
    let tuning: Tuning = serde_json::from_str(&text).ok()?;
    let valid = candidates(ctx);
    // A cache written by another build may name configs this build no longer offers.
    let ok = Layout::ALL.iter().all(|l| tuning.configs.get(l.name()).is_some_and(|c| valid.contains(c)));
    ok.then_some(tuning)
}

fn save_cached(path: &std::path::Path, tuning: &Tuning) {
    let json = serde_json::to_string_pretty(tuning).expect("tuning serialises");
    // A failed cache write only costs a re-tune next time.
    #[cfg(native)]
    if let Err(e) = crate::fsutil::write_atomic(path, json.as_bytes()) {
        log::warn!("could not cache matmul tuning at {}: {e}", path.display());
    }
    #[cfg(web)]
    let _ = (path, json);
}
