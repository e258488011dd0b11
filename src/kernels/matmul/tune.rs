//! Which variant and tile sizes each layout uses on this adapter: candidates per adapter
//! type, timed at first use ([`autotune`]) and checked against the default variant's
//! result, the choice cached on disk (native) or in memory (web) and kept per context.
//! f16 operands get a table of their own where the device has cooperative matrices (the
//! tensor-core variant takes only f16); elsewhere they use the f32 choices.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{matmul_with, Config, Dims, Epilogue, Layout};
use crate::gpu::timing::time_samples;
use crate::gpu::{Element, GpuContext, Tensor};
use crate::Result;

/// Candidates timed by [`autotune`] for operands stored as `operand`: register tiles for
/// CPU adapters, shared-memory tiles (and one register tile, which came close on an H100)
/// otherwise, then, for f16 operands on a device with cooperative matrices, the
/// tensor-core variant. The first candidate is the untuned default.
pub fn candidates(ctx: &GpuContext, operand: Element) -> Vec<Config> {
    let limits = ctx.limits();
    let subgroup = ctx.cooperative_matrix_subgroup().unwrap_or(0);
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
    let cooperative: &[Config] = if operand == Element::F16 && subgroup > 0 {
        &[
            Config::cooperative(2, 2, 2, 2, 32),
            Config::cooperative(4, 2, 2, 2, 32),
            Config::cooperative(2, 4, 2, 2, 32),
            Config::cooperative(4, 4, 2, 2, 32),
            Config::cooperative(4, 4, 2, 2, 16),
            Config::cooperative(2, 2, 4, 2, 32),
        ]
    } else {
        &[]
    };
    all.into_iter().chain(cooperative.iter().copied()).filter(|c| c.fits(&limits, subgroup)).collect()
}

/// The untuned choice: the first candidate for this adapter type (never the tensor-core
/// variant, which runs only once tuning has checked its results on this device).
pub fn default_config(ctx: &GpuContext) -> Config {
    candidates(ctx, Element::F32)[0]
}

/// Whether f16 operands are tuned on their own (see the module doc).
fn tunes_f16(ctx: &GpuContext) -> bool {
    ctx.cooperative_matrix_subgroup().is_some()
}

/// The operand types with tuning tables of their own on this device.
fn tuned_operands(ctx: &GpuContext) -> &'static [Element] {
    if tunes_f16(ctx) {
        &[Element::F32, Element::F16]
    } else {
        &[Element::F32]
    }
}

/// The tuning table's key for `layout` with operands stored as `operand`.
fn tuning_key(ctx: &GpuContext, layout: Layout, operand: Element) -> String {
    if operand == Element::F16 && tunes_f16(ctx) {
        format!("{}_f16", layout.name())
    } else {
        layout.name().to_string()
    }
}

/// The config `matmul` uses for `layout` with operands stored as `operand` on this context.
pub fn config_for(ctx: &GpuContext, layout: Layout, operand: Element) -> Config {
    let state = ctx.state::<MatmulState>();
    let key = tuning_key(ctx, layout, operand);
    let tuned = state.tuned.lock().expect("tuning lock").as_ref().and_then(|t| t.configs.get(&key).copied());
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

/// Operands and output of a timed problem: A and B stored as `operand` (their values kept
/// on the host for checks), C in f32.
struct Problem {
    layout: Layout,
    dims: Dims,
    host_a: Vec<f32>,
    host_b: Vec<f32>,
    a: Tensor,
    b: Tensor,
    c: Tensor,
}

impl Problem {
    fn new(ctx: &GpuContext, layout: Layout, dims: Dims, operand: Element) -> Result<Self> {
        let (ar, ac) = if layout == Layout::TN { (dims.k, dims.m) } else { (dims.m, dims.k) };
        let (br, bc) = if layout == Layout::NT { (dims.n, dims.k) } else { (dims.k, dims.n) };
        // Multiples of 1/1024 in [-1, 1) from a multiplicative hash: exact in f16 as in f32,
        // and a variant that mixes up indices gets a different result (a short periodic
        // fill could hide it).
        let fill = |len: usize, salt: u64| {
            (0..len as u64)
                .map(|i| {
                    ((i.wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 2048) as f32 / 1024.0 - 1.0
                })
                .collect::<Vec<_>>()
        };
        let (host_a, host_b) = (fill(ar * ac, 1), fill(br * bc, 2));
        Ok(Problem {
            layout,
            dims,
            a: ctx.upload_as(&host_a, &[ar, ac], operand, "bench.a")?,
            b: ctx.upload_as(&host_b, &[br, bc], operand, "bench.b")?,
            c: ctx.empty(&[dims.m, dims.n], "bench.c")?,
            host_a,
            host_b,
        })
    }

    async fn time(&self, ctx: &GpuContext, config: Config, reps: usize) -> Result<Vec<f64>> {
        let (layout, a, b, c) = (self.layout, &self.a, &self.b, &self.c);
        time_samples(ctx, reps, |rec| matmul_with(rec, layout, config, a, b, c, &Epilogue::default())).await
    }

    /// C as `config` computes it, from a C filled with NaN first (so that a variant which
    /// leaves elements unwritten cannot pass on an earlier variant's values).
    async fn result(&self, ctx: &GpuContext, config: Config) -> Result<Vec<f32>> {
        ctx.write(&self.c, &vec![f32::NAN; self.dims.m * self.dims.n])?;
        self.time(ctx, config, 0).await?;
        ctx.read(&self.c).await
    }

    /// C[i, j] computed on the host in f64.
    fn host_element(&self, i: usize, j: usize) -> f32 {
        let Dims { m, n, k, .. } = self.dims;
        let a = |kk: usize| if self.layout == Layout::TN { self.host_a[kk * m + i] } else { self.host_a[i * k + kk] };
        let b = |kk: usize| if self.layout == Layout::NT { self.host_b[j * k + kk] } else { self.host_b[kk * n + j] };
        (0..k).map(|kk| a(kk) as f64 * b(kk) as f64).sum::<f64>() as f32
    }

    /// Whether `result` agrees with the host at `count` elements spread over C (every
    /// element if C has no more).
    fn agrees_with_host(&self, result: &[f32], count: usize) -> bool {
        let (m, n) = (self.dims.m, self.dims.n);
        let picks: Vec<usize> = (0..count.min(m * n)).map(|p| p * (m * n) / count.min(m * n)).collect();
        let want: Vec<f32> = picks.iter().map(|&e| self.host_element(e / n, e % n)).collect();
        let got: Vec<f32> = picks.iter().map(|&e| result.get(e).copied().unwrap_or(f32::NAN)).collect();
        agrees(&want, &got)
    }
}

/// Times one config on a `dims` problem with operands stored as `operand`: `reps`
/// samples in milliseconds (see [`time_samples`]).
pub async fn time_config(
    ctx: &GpuContext,
    layout: Layout,
    config: Config,
    dims: Dims,
    reps: usize,
    operand: Element,
) -> Result<Vec<f64>> {
    Problem::new(ctx, layout, dims, operand)?.time(ctx, config, reps).await
}

/// Whether a candidate's result agrees with the reference variant's on the same problem:
/// every element within 1e-3 of the largest reference magnitude. Both accumulate in f32
/// from the same stored operands and differ only in summation order (relative error near
/// 1e-6 over K = 2048); a variant that computes the wrong thing is off by the magnitude
/// of the values themselves.
pub fn agrees(reference: &[f32], candidate: &[f32]) -> bool {
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    reference.len() == candidate.len() && reference.iter().zip(candidate).all(|(r, c)| (r - c).abs() <= 1e-3 * scale)
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
    let operands = tuned_operands(ctx);
    for &operand in operands {
        for layout in Layout::ALL {
            let best = tune_layout(ctx, layout, dims, operand).await?;
            tuning.configs.insert(tuning_key(ctx, layout, operand), best);
        }
    }
    if let Some(path) = cache.as_deref() {
        save_cached(path, &tuning);
    }
    *ctx.state::<MatmulState>().tuned.lock().expect("tuning lock") = Some(tuning.clone());
    Ok(tuning)
}

/// The fastest candidate for one layout and operand type whose results are right on this
/// device: the default variant's (the reference) must match the host at sampled elements,
/// every other candidate must match the reference on the tuning problem, and each must
/// match the host on a small odd shape (partial tiles, a K tail). A candidate that fails
/// or computes wrong is dropped with a warning rather than trusted for its speed; only the
/// reference's failure is an error.
async fn tune_layout(ctx: &GpuContext, layout: Layout, dims: Dims, operand: Element) -> Result<Config> {
    let problem = Problem::new(ctx, layout, dims, operand)?;
    let odd = Problem::new(ctx, layout, Dims { batch: 1, m: 70, n: 33, k: 50 }, operand)?;
    let mut reference: Option<Vec<f32>> = None;
    let mut best: Option<(f64, Config)> = None;
    for config in candidates(ctx, operand) {
        let checked = async {
            let result = problem.result(ctx, config).await?;
            let right = match &reference {
                None => problem.agrees_with_host(&result, 64),
                Some(want) => agrees(want, &result),
            };
            let odd_right = odd.agrees_with_host(&odd.result(ctx, config).await?, usize::MAX);
            // One run first: a candidate already twice as slow as the best cannot win, and
            // a poor variant can take seconds per run on a small GPU.
            let first = problem.time(ctx, config, 1).await?[0];
            Ok::<_, crate::Error>((result, right && odd_right, first))
        };
        let what = format!("matmul variant {} for {} ({})", config.label(), layout.name(), operand.wgsl());
        let (result, right, first) = match (checked.await, &reference) {
            (Ok(checked), _) => checked,
            (Err(e), None) => return Err(e),
            (Err(e), Some(_)) => {
                log::warn!("{what} failed on this adapter; not used: {e}");
                continue;
            }
        };
        if !right && reference.is_none() {
            return Err(crate::Error::invalid(
                "matmul tuning",
                format!("the default {what} computes wrong results on this adapter"),
            ));
        }
        if !right {
            log::warn!("{what} gives wrong results on this adapter; not used");
            continue;
        }
        reference.get_or_insert(result);
        if best.is_some_and(|(b, _)| first > 2.0 * b) {
            log::debug!("{what}: {first:.3} ms (dropped after one run)");
            continue;
        }
        // The fastest of several runs: interference from other work on the
        // machine only ever slows a run down, so the minimum is the steadiest.
        let ms = match problem.time(ctx, config, 4).await {
            Ok(samples) => samples.iter().copied().fold(first, f64::min),
            Err(e) => {
                log::warn!("{what} failed on this adapter; not used: {e}");
                continue;
            }
        };
        log::debug!("{what}: {ms:.3} ms");
        if best.is_none_or(|(b, _)| ms < b) {
            best = Some((ms, config));
        }
    }
    best.map(|(_, config)| config).ok_or_else(|| {
        crate::Error::invalid("matmul tuning", format!("no {} variant could be timed on this adapter", layout.name()))
    })
}

/// Forgets the in-memory choice (the disk cache stays), so the next `autotune` reloads.
pub fn reset_tuning(ctx: &GpuContext) {
    *ctx.state::<MatmulState>().tuned.lock().expect("tuning lock") = None;
}

fn load_cached(ctx: &GpuContext, path: &std::path::Path) -> Option<Tuning> {
    let text = std::fs::read_to_string(path).ok()?;
    let tuning: Tuning = serde_json::from_str(&text).ok()?;
    let operands = tuned_operands(ctx);
    // A cache written by another build may name configs this build no longer offers, or
    // lack the f16 table.
    let ok = operands.iter().all(|&operand| {
        let valid = candidates(ctx, operand);
        Layout::ALL.iter().all(|&l| tuning.configs.get(&tuning_key(ctx, l, operand)).is_some_and(|c| valid.contains(c)))
    });
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

#[cfg(test)]
mod tests {
    use super::agrees;

    #[test]
    fn a_result_agrees_within_summation_noise_and_not_beyond() {
        let reference: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 40.0).collect();
        let reordered: Vec<f32> = reference.iter().map(|v| v * (1.0 + 1e-6)).collect();
        assert!(agrees(&reference, &reference) && agrees(&reference, &reordered));
        // A transposed 8 x 8 result, one wrong element, a short result: all refused.
        let transposed: Vec<f32> = (0..64).map(|i| reference[(i % 8) * 8 + i / 8]).collect();
        let mut one_off = reference.clone();
        one_off[17] += 0.5;
        assert!(!agrees(&reference, &transposed));
        assert!(!agrees(&reference, &one_off));
        assert!(!agrees(&reference, &reference[..63]));
    }
}
