//! Matrix multiply with fused epilogues: `shaders/matmul.wgsl`.
//!
//! Three variants: `register` (register tiles, no workgroup memory, no barriers; fastest
//! on CPU adapters such as lavapipe), `tiled` (shared-memory tiles written as plain
//! loops, any tile shape) and `blocked` (shared-memory tiles generated fully unrolled,
//! with vec4 reads from workgroup memory and the next k-tile prefetched into registers
//! while the current one is multiplied: the one meant for real GPUs).
//! Which variant and which tile sizes a layout uses is decided per adapter by
//! [`autotune`], which times candidates at first use and caches the choice on disk
//! (native) or in memory (web). Until tuned, a per-adapter-type default is used.

use std::collections::HashMap;
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};

use crate::gpu::{Access, Generated, GpuContext, KernelSpec, Recorder, Shader, Tensor};
use crate::kernels::LOOP_BUDGET;
use crate::{Error, Result};

pub const SHADER: Shader = Shader {
    name: "matmul",
    source: concat!(include_str!("../../shaders/common.wgsl"), include_str!("../../shaders/matmul.wgsl")),
};

/// Which operands are transposed: C = op(A) op(B).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layout {
    /// A [M, K], B [K, N]
    NN,
    /// A [M, K], B [N, K]: linear layers (y = x Wᵀ) and input gradients.
    NT,
    /// A [K, M], B [K, N]: weight gradients (dW = dyᵀ x).
    TN,
}

impl Layout {
    pub const ALL: [Layout; 3] = [Layout::NN, Layout::NT, Layout::TN];

    pub fn name(self) -> &'static str {
        match self {
            Layout::NN => "matmul_nn",
            Layout::NT => "matmul_nt",
            Layout::TN => "matmul_tn",
        }
    }
    fn transposes(self) -> (bool, bool) {
        match self {
            Layout::NN => (false, false),
            Layout::NT => (false, true),
            Layout::TN => (true, false),
        }
    }
}

/// A kernel variant and its tile sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Config {
    pub variant: Variant,
    /// Rows and columns per invocation.
    pub tm: u32,
    pub tn: u32,
    /// Workgroup width (columns) and height (rows).
    pub wx: u32,
    pub wy: u32,
    /// K-tile depth (shared-memory variants only).
    pub bk: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Register,
    Tiled,
    Blocked,
}

impl Config {
    /// Register tiles: a row of `wx` invocations sharing `tm` rows, `tn` columns each.
    pub const fn register(tm: u32, tn: u32, wx: u32) -> Self {
        Config { variant: Variant::Register, tm, tn, wx, wy: 1, bk: 1 }
    }
    pub const fn tiled(tm: u32, tn: u32, wx: u32, wy: u32, bk: u32) -> Self {
        Config { variant: Variant::Tiled, tm, tn, wx, wy, bk }
    }
    /// Shared-memory tiles, unrolled, vec4 workgroup reads: `tm` and `tn` must be
    /// multiples of 4, and every invocation stages whole vec4 groups of both tiles.
    pub const fn blocked(tm: u32, tn: u32, wx: u32, wy: u32, bk: u32) -> Self {
        Config { variant: Variant::Blocked, tm, tn, wx, wy, bk }
    }
    /// Rows x columns of C covered by one workgroup.
    pub fn block(&self) -> (u32, u32) {
        (self.wy * self.tm, self.wx * self.tn)
    }
    /// A short name such as `register_8x4_8` or `tiled_4x4_16x16_k16`.
    pub fn label(&self) -> String {
        match self.variant {
            Variant::Register => format!("register_{}x{}_{}", self.tm, self.tn, self.wx),
            Variant::Tiled => format!("tiled_{}x{}_{}x{}_k{}", self.tm, self.tn, self.wx, self.wy, self.bk),
            Variant::Blocked => format!("blocked_{}x{}_{}x{}_k{}", self.tm, self.tn, self.wx, self.wy, self.bk),
        }
    }
    fn fits(&self, limits: &wgpu::Limits) -> bool {
        let invocations = self.wx * self.wy;
        let (bm, bn) = self.block();
        let shared = match self.variant {
            Variant::Register => 0,
            Variant::Tiled | Variant::Blocked => (bm + bn) * self.bk * 4,
        };
        let shape_ok = match self.variant {
            Variant::Blocked => {
                self.tm.is_multiple_of(4)
                    && self.tn.is_multiple_of(4)
                    && (bm * self.bk / 4).is_multiple_of(invocations)
                    && (bn * self.bk / 4).is_multiple_of(invocations)
            }
            _ => true,
        };
        shape_ok
            && invocations <= limits.max_compute_invocations_per_workgroup
            && self.wx <= limits.max_compute_workgroup_size_x
            && self.wy <= limits.max_compute_workgroup_size_y
            && shared <= limits.max_compute_workgroup_storage_size
    }
}

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
            // The loop-written `tiled` variant is left out: 50-80x slower than `blocked` on
            // an H100 (BENCHMARKS.md), and seconds per tuning run on a small GPU.
            Config::register(4, 4, 64),
        ]
    };
    all.into_iter().filter(|c| c.fits(&limits)).collect()
}

/// The untuned choice: the first candidate for this adapter type.
pub fn default_config(ctx: &GpuContext) -> Config {
    candidates(ctx)[0]
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

/// The fused epilogue: what happens to each accumulated value before it is stored.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// `+ bias[n]`, shape [N].
    pub bias: Option<&'a Tensor>,
    /// Apply GELU (after the bias).
    pub gelu: bool,
    /// Also store the value before GELU here (shape of C), for the backward pass.
    pub pre: Option<&'a Tensor>,
    /// `+ residual[m, n]` after GELU, shape of C.
    pub residual: Option<&'a Tensor>,
    /// `C += result` instead of `C = result` (beta = 1: gradient accumulation).
    pub accumulate: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_offset: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    b_offset: u32,
    batch_a: u32,
    batch_b: u32,
    batch_c: u32,
    _pad2: u32,
}

/// Problem size derived from the operand shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

fn split(t: &Tensor) -> (usize, usize, usize) {
    let s = t.shape();
    let r = s.len();
    let batch = s[..r - 2].iter().product();
    (batch, s[r - 2], s[r - 1])
}

/// Checks operand shapes for `layout` and returns the problem size. The last two
/// dimensions are the matrix; leading dimensions are the batch. An operand without
/// batch dimensions is shared by the whole batch.
pub fn dims(layout: Layout, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Dims> {
    let op = layout.name();
    for (name, t) in [("A", a), ("B", b), ("C", c)] {
        if t.shape().len() < 2 {
            return Err(Error::shape(op, format!("{name} is {:?}; matmul needs at least 2 dimensions", t.shape())));
        }
    }
    let (ba, a0, a1) = split(a);
    let (bb, b0, b1) = split(b);
    let (bc, m, n) = split(c);
    let (am, ak) = if layout == Layout::TN { (a1, a0) } else { (a0, a1) };
    let (bk, bn) = if layout == Layout::NT { (b1, b0) } else { (b0, b1) };
    let shapes = || format!("A {:?}, B {:?}, C {:?}", a.shape(), b.shape(), c.shape());
    if ak != bk {
        return Err(Error::shape(op, format!("{}: inner dimensions differ ({ak} vs {bk})", shapes())));
    }
    if am != m || bn != n {
        return Err(Error::shape(op, format!("{}: C must be [{am}, {bn}]", shapes())));
    }
    let a_rank_ok = a.shape().len() == 2 || ba == bc;
    let b_rank_ok = b.shape().len() == 2 || bb == bc;
    if !a_rank_ok || !b_rank_ok {
        return Err(Error::shape(op, format!("{}: batch dimensions must match C's or be absent", shapes())));
    }
    Ok(Dims { batch: bc, m, n, k: ak })
}

/// Records C = op(A) op(B) with the fused epilogue, using this adapter's tuned config.
pub fn matmul(rec: &mut Recorder, layout: Layout, a: &Tensor, b: &Tensor, c: &Tensor, epi: &Epilogue) -> Result<()> {
    let config = config_for(rec.ctx(), layout);
    matmul_with(rec, layout, config, a, b, c, epi)
}

/// The config `matmul` uses for `layout` on this context.
pub fn config_for(ctx: &GpuContext, layout: Layout) -> Config {
    let tuned = ctx.matmul.tuned.lock().expect("tuning lock");
    tuned.as_ref().and_then(|t| t.configs.get(layout.name()).copied()).unwrap_or_else(|| default_config(ctx))
}

/// [`matmul`] with an explicit variant (tests and tuning).
pub fn matmul_with(
    rec: &mut Recorder,
    layout: Layout,
    config: Config,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    epi: &Epilogue,
) -> Result<()> {
    let op = layout.name();
    let d = dims(layout, a, b, c)?;
    if let Some(bias) = epi.bias {
        if bias.shape() != [d.n] {
            return Err(Error::shape(op, format!("bias is {:?} but C has {} columns", bias.shape(), d.n)));
        }
    }
    for (name, t) in [("residual", epi.residual), ("pre", epi.pre)] {
        if let Some(t) = t {
            if t.shape() != c.shape() {
                return Err(Error::shape(op, format!("{name} is {:?} but C is {:?}", t.shape(), c.shape())));
            }
        }
    }
    if epi.pre.is_some() && !epi.gelu {
        return Err(Error::invalid(op, "storing the pre-activation only makes sense with gelu"));
    }
    if d.m == 0 || d.n == 0 || d.batch == 0 {
        return Ok(());
    }
    if let Some(splits) = split_k_count(rec.ctx(), layout, config, &d, a, b, epi) {
        return matmul_split_k(rec, config, a, b, c, epi.accumulate, splits);
    }
    let (a_trans, b_trans) = layout.transposes();
    let flag = |b: bool| b.to_string();
    let consts = [
        ("TM", format!("{}u", config.tm)),
        ("TN", format!("{}u", config.tn)),
        ("WX", format!("{}u", config.wx)),
        ("WY", format!("{}u", config.wy)),
        ("BK", format!("{}u", config.bk)),
        ("A_TRANS", flag(a_trans)),
        ("B_TRANS", flag(b_trans)),
        ("HAS_BIAS", flag(epi.bias.is_some())),
        ("GELU", flag(epi.gelu)),
        ("STORE_PRE", flag(epi.pre.is_some())),
        ("HAS_RESIDUAL", flag(epi.residual.is_some())),
        ("ACCUMULATE", flag(epi.accumulate)),
    ];
    let config = fit_scalar_reads(layout, config, &d);
    let reads = choose_reads(layout, config, &d);
    let register = || register_source(config, reads);
    let blocked = || blocked_source(config, a_trans, b_trans);
    let name = match config.variant {
        Variant::Register => format!("{}_{reads:?}", config.label()),
        Variant::Tiled => String::new(),
        Variant::Blocked => format!("{}_{}", config.label(), layout.name()),
    };
    let (entry, generated) = match config.variant {
        Variant::Register => ("matmul_register", Some(Generated { name: &name, source: &register })),
        Variant::Tiled => ("matmul_tiled", None),
        Variant::Blocked => ("matmul_blocked", Some(Generated { name: &name, source: &blocked })),
    };
    use Access::*;
    let spec = KernelSpec {
        shader: SHADER,
        entry,
        bindings: &[Read, Read, Read, Read, ReadWrite, ReadWrite, Uniform],
        consts: &consts,
        generated,
    };
    let kernel = rec.ctx().kernel(&spec)?;
    // Unused bindings still need a buffer.
    let placeholder_read = rec.ctx().placeholder(false)?;
    let placeholder_write = rec.ctx().placeholder(true)?;
    let bias = epi.bias.unwrap_or(&placeholder_read);
    let residual = epi.residual.unwrap_or(&placeholder_read);
    let pre = epi.pre.unwrap_or(&placeholder_write);
    let stride = |t: &Tensor, rows: usize, cols: usize| if t.shape().len() == 2 { 0 } else { (rows * cols) as u32 };
    let (a0, a1) = if layout == Layout::TN { (d.k, d.m) } else { (d.m, d.k) };
    let (b0, b1) = if layout == Layout::NT { (d.n, d.k) } else { (d.k, d.n) };
    let params = Params {
        m: d.m as u32,
        n: d.n as u32,
        k: d.k as u32,
        lda: a1 as u32,
        ldb: b1 as u32,
        ldc: d.n as u32,
        batch_a: stride(a, a0, a1),
        batch_b: stride(b, b0, b1),
        batch_c: (d.m * d.n) as u32,
        ..Zeroable::zeroed()
    };
    let (bm, bn) = match config.variant {
        Variant::Register => (config.tm, config.wx * config.tn),
        Variant::Tiled | Variant::Blocked => config.block(),
    };
    let groups = [(d.n as u32).div_ceil(bn), (d.m as u32).div_ceil(bm), d.batch as u32];
    let chunk = k_chunk(rec.ctx(), config, d.k);
    if chunk >= d.k {
        return rec.dispatch(&kernel, &[a, b, bias, residual, c, pre], &params, groups);
    }
    // CPU adapters stop a shader's loops after 65535 iterations: split K and let every
    // chunk after the first accumulate into C.
    if epi.bias.is_some() || epi.gelu || epi.residual.is_some() {
        return Err(Error::invalid(
            op,
            format!(
                "K = {} is too long for one pass on this adapter, and only a plain or accumulating matmul can be split",
                d.k
            ),
        ));
    }
    let plain = KernelSpec { consts: &consts_accumulating(&consts), ..spec };
    let accumulating = rec.ctx().kernel(&plain)?;
    let (a_trans, b_trans) = layout.transposes();
    for k0 in (0..d.k).step_by(chunk) {
        let kernel = if k0 == 0 { &kernel } else { &accumulating };
        let p = Params {
            k: (chunk.min(d.k - k0)) as u32,
            a_offset: (if a_trans { k0 * a1 } else { k0 }) as u32,
            b_offset: (if b_trans { k0 } else { k0 * b1 }) as u32,
            ..params
        };
        rec.dispatch(kernel, &[a, b, bias, residual, c, pre], &p, groups)?;
    }
    Ok(())
}

/// Workgroups a matmul should launch to fill a large GPU (an H100 runs about two
/// 256-invocation workgroups on each of its 132 multiprocessors).
const SPLIT_K_TARGET_WORKGROUPS: usize = 256;
/// The shortest K slice worth a workgroup of its own.
const SPLIT_K_MIN_SLICE: usize = 256;

/// How many K slices to split a weight-gradient matmul into, if any. A dW = dYᵀ·X is TN
/// with a small output (width × width) and a long K (batch × tokens): one workgroup per
/// output tile would leave most of a GPU idle. Only on GPUs (CPU adapters have a handful
/// of cores, which the tiles already fill) and only for a plain or accumulating epilogue.
fn split_k_count(
    ctx: &GpuContext,
    layout: Layout,
    config: Config,
    d: &Dims,
    a: &Tensor,
    b: &Tensor,
    epi: &Epilogue,
) -> Option<usize> {
    let plain = epi.bias.is_none() && !epi.gelu && epi.pre.is_none() && epi.residual.is_none();
    let two_d = a.shape().len() == 2 && b.shape().len() == 2;
    if ctx.summary.is_cpu() || layout != Layout::TN || !plain || !two_d || d.batch != 1 {
        return None;
    }
    let (bm, bn) = config.block();
    split_k_slices(d.m.div_ceil(bm as usize) * d.n.div_ceil(bn as usize), d.k)
}

/// Slices for an output of `tiles` workgroup tiles and a reduction of length `k`: enough
/// to reach the target number of workgroups, none shorter than the minimum slice, and
/// none at all when the tiles alone fill half the target.
fn split_k_slices(tiles: usize, k: usize) -> Option<usize> {
    let splits = SPLIT_K_TARGET_WORKGROUPS.div_ceil(tiles).min(k / SPLIT_K_MIN_SLICE);
    (tiles * 2 <= SPLIT_K_TARGET_WORKGROUPS && splits >= 2).then_some(splits)
}

/// C (+)= Aᵀ·B for A [K, M] and B [K, N], with K cut into about `splits` slices that run
/// as one batched matmul into a scratch [slices, M, N], then summed into C in a fixed
/// order (deterministic, no atomics). Public for tests; [`matmul`] picks it by itself on
/// GPUs when the output is too small to fill the device.
pub fn matmul_split_k(
    rec: &mut Recorder,
    config: Config,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    accumulate: bool,
    splits: usize,
) -> Result<()> {
    let d = dims(Layout::TN, a, b, c)?;
    if a.shape().len() != 2 || b.shape().len() != 2 || d.batch != 1 || splits == 0 {
        return Err(Error::invalid(
            "matmul_tn",
            format!(
                "split-K takes 2-D operands and output and at least one slice (A {:?}, B {:?}, C {:?}, {splits} slices)",
                a.shape(),
                b.shape(),
                c.shape()
            ),
        ));
    }
    // Slices of a multiple of 64 rows start every view of A and B at a multiple of 256
    // bytes, the largest storage offset alignment an adapter may ask for.
    let slice = d.k.div_ceil(splits).next_multiple_of(64);
    let full = d.k / slice;
    let tail = d.k - full * slice;
    if full == 0 {
        return matmul_with(rec, Layout::TN, config, a, b, c, &Epilogue { accumulate, ..Default::default() });
    }
    // The tail (K not a multiple of the slice) goes straight into C, the slices' sum after it.
    let mut add_slices = accumulate;
    if tail > 0 {
        let at = full * slice;
        let (a_tail, b_tail) = (a.view(at * d.m, &[tail, d.m])?, b.view(at * d.n, &[tail, d.n])?);
        matmul_with(rec, Layout::TN, config, &a_tail, &b_tail, c, &Epilogue { accumulate, ..Default::default() })?;
        add_slices = true;
    }
    let partial = rec.ctx().empty(&[full, d.m, d.n], "matmul.split_k")?;
    // Held until submission, so that the pool cannot hand it out again before the sum runs.
    rec.keep(partial.clone());
    let a_slices = a.view(0, &[full, slice, d.m])?;
    let b_slices = b.view(0, &[full, slice, d.n])?;
    matmul_with(rec, Layout::TN, config, &a_slices, &b_slices, &partial, &Epilogue::default())?;
    let sums = partial.reshape(&[full, d.m * d.n])?;
    crate::kernels::ops::column_sum(rec, &sums, &c.reshape(&[d.m * d.n])?, add_slices)
}

/// `consts` with ACCUMULATE switched on.
fn consts_accumulating(consts: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    consts.iter().map(|(k, v)| (*k, if *k == "ACCUMULATE" { "true".to_string() } else { v.clone() })).collect()
}

/// The longest K one dispatch may run. CPU adapters (Mesa's lavapipe and llvmpipe)
/// silently end a shader's loops after 65535 iterations per invocation; chunks are
/// multiples of 64 so that vec4 reads stay aligned.
fn k_chunk(ctx: &GpuContext, config: Config, k: usize) -> usize {
    if !ctx.summary.is_cpu() {
        return k;
    }
    let per_k = match config.variant {
        // The k loop, a quarter of it with vec4 reads: count it fully to stay simple.
        Variant::Register => 1.0,
        // One unrolled iteration per k-tile.
        Variant::Blocked => 1.0 / config.bk as f64,
        // Per k-tile: the two staging loops, then BK steps of the TM x TN loops.
        Variant::Tiled => {
            let threads = (config.wx * config.wy) as f64;
            let (bm, bn) = config.block();
            let staging = ((bm * config.bk) as f64 / threads).ceil() + ((bn * config.bk) as f64 / threads).ceil();
            let inner = config.bk as f64 * (1.0 + (config.tm + config.tn + config.tm * (1 + config.tn)) as f64);
            (1.0 + staging + inner) / config.bk as f64
        }
    };
    let store = (config.tm * (1 + config.tn)) as f64;
    let chunk = ((LOOP_BUDGET as f64 - store) / per_k) as usize;
    (chunk / 64 * 64).max(64)
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
/// [`crate::bench::time_samples`]).
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
    crate::bench::time_samples(ctx, reps, |rec| matmul_with(rec, layout, config, &a, &b, &c, &Epilogue::default()))
        .await
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
    if let Some(t) = ctx.matmul.tuned.lock().expect("tuning lock").clone() {
        return Ok(t);
    }
    if let Some(t) = cache.as_deref().and_then(|path| load_cached(ctx, path)) {
        *ctx.matmul.tuned.lock().expect("tuning lock") = Some(t.clone());
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
    *ctx.matmul.tuned.lock().expect("tuning lock") = Some(tuning.clone());
    Ok(tuning)
}

/// Forgets the in-memory choice (the disk cache stays), so the next `autotune` reloads.
pub fn reset_tuning(ctx: &GpuContext) {
    *ctx.matmul.tuned.lock().expect("tuning lock") = None;
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

/// Full sources of generated kernels (register: every read mode, a spread of tile
/// shapes; blocked: every layout), for validation by naga in the tests.
pub fn generated_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for config in [Config::register(8, 4, 8), Config::register(16, 8, 8), Config::register(3, 5, 4)] {
        for reads in [Reads::Scalar, Reads::Vec4N, Reads::Vec4NK, Reads::Vec4K] {
            if matches!(reads, Reads::Vec4N | Reads::Vec4NK) && !config.tn.is_multiple_of(4) {
                continue;
            }
            let source = crate::gpu::specialise(SHADER.source, &[]) + &register_source(config, reads);
            out.push((format!("{} {reads:?}", config.label()), source));
        }
    }
    for config in [Config::blocked(8, 8, 16, 16, 8), Config::blocked(4, 8, 8, 4, 8)] {
        for layout in Layout::ALL {
            let (a_trans, b_trans) = layout.transposes();
            let source = crate::gpu::specialise(SHADER.source, &[]) + &blocked_source(config, a_trans, b_trans);
            out.push((format!("{} {}", config.label(), layout.name()), source));
        }
    }
    out
}

/// Writes the epilogue: the accumulators go into a private array, then one loop
/// stores them through `store()`. Unrolling `store()` per output would multiply the
/// epilogue code (bias, GELU, residual) by TM x TN and make compilation very slow.
/// `row` and `column` are the WGSL expressions of output row i and column j.
fn write_epilogue(w: &mut String, tm: u32, tn: u32, outputs: &[String], row: &str, column: &str) {
    use std::fmt::Write;
    let _ = writeln!(w, "    var out: array<f32, {}>;", tm * tn);
    for (e, value) in outputs.iter().enumerate() {
        let _ = writeln!(w, "    out[{e}] = {value};");
    }
    let _ = writeln!(w, "    for (var e = 0u; e < {}u; e++) {{", tm * tn);
    let _ = writeln!(w, "        let i = e / {tn}u;");
    let _ = writeln!(w, "        let j = e % {tn}u;");
    let _ = writeln!(w, "        store(batch, {row}, {column}, out[e]);");
    let _ = writeln!(w, "    }}");
}

/// How the generated register kernel reads its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reads {
    /// Scalar loads: any shape.
    Scalar,
    /// B rows contiguous along n, read as vec4 (NN/TN with N % 4 == 0).
    Vec4N,
    /// As `Vec4N`, and A rows contiguous along k read as vec4, four k-steps per
    /// iteration (NN with K % 4 == 0).
    Vec4NK,
    /// A and B contiguous along k, read as vec4 four k-steps at a time (NT with K % 4 == 0).
    Vec4K,
}

fn choose_reads(layout: Layout, config: Config, d: &Dims) -> Reads {
    match layout {
        Layout::NN if d.n.is_multiple_of(4) && d.k.is_multiple_of(4) && config.tn.is_multiple_of(4) => Reads::Vec4NK,
        Layout::NN | Layout::TN if d.n.is_multiple_of(4) && config.tn.is_multiple_of(4) => Reads::Vec4N,
        Layout::NT if d.k.is_multiple_of(4) => Reads::Vec4K,
        _ => Reads::Scalar,
    }
}

/// Shapes that allow no vec4 reads get at most an 8 x 8 register tile: with scalar
/// reads a large tile gains little and takes CPU adapters seconds to compile (every
/// load there expands to a per-lane loop).
fn fit_scalar_reads(layout: Layout, config: Config, d: &Dims) -> Config {
    if config.variant == Variant::Register && choose_reads(layout, config, d) == Reads::Scalar {
        Config::register(config.tm.min(8), config.tn.min(8), config.wx)
    } else {
        config
    }
}

/// Generates the fully unrolled `matmul_register` entry point.
///
/// A workgroup is WX invocations in a row; all of them share the workgroup's TM rows,
/// so every A address depends only on the workgroup and k. Such loads are uniform,
/// which CPU adapters execute once per SIMD batch of invocations instead of once per
/// lane, and B (the divergent operand) is read as wide as the layout allows.
fn register_source(config: Config, reads: Reads) -> String {
    use std::fmt::Write;
    let (tm, tn, wx) = (config.tm, config.tn, config.wx);
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "@compute @workgroup_size({wx}, 1)");
    let _ = writeln!(
        w,
        "fn matmul_register(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{"
    );
    let _ = writeln!(w, "    let batch = wg.z;");
    let _ = writeln!(w, "    let a_base = batch * p.batch_a + p.a_offset;");
    let _ = writeln!(w, "    let b_base = batch * p.batch_b + p.b_offset;");
    let _ = writeln!(w, "    let row0 = wg.y * {tm}u;");
    for i in 0..tm {
        let _ = writeln!(w, "    let r{i} = min(row0 + {i}u, p.m - 1u);");
    }
    match reads {
        Reads::Vec4N | Reads::Vec4NK => {
            let groups = tn / 4;
            let _ = writeln!(w, "    let g0 = wg.x * {}u + lid.x;", wx * groups);
            let _ = writeln!(w, "    let ngroups = p.n / 4u;");
            for j in 0..groups {
                let _ = writeln!(w, "    let c{j} = min(g0 + {}u, ngroups - 1u);", wx * j);
            }
            for i in 0..tm {
                for j in 0..groups {
                    let _ = writeln!(w, "    var acc{i}_{j} = vec4<f32>(0.0);");
                }
            }
            let _ = writeln!(w, "    let ldb4 = p.ldb / 4u;");
            let _ = writeln!(w, "    var bk = b_base / 4u;");
            if reads == Reads::Vec4NK {
                let _ = writeln!(w, "    for (var kk = 0u; kk < p.k; kk += 4u) {{");
                for i in 0..tm {
                    let _ = writeln!(w, "        let av{i} = a4[(a_base + r{i} * p.lda + kk) / 4u];");
                }
                for (q, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                    for j in 0..groups {
                        let _ = writeln!(w, "        let bv{j}_{q} = b4[bk + c{j}];");
                    }
                    for i in 0..tm {
                        for j in 0..groups {
                            let _ = writeln!(
                                w,
                                "        acc{i}_{j} = fma(vec4<f32>(av{i}.{comp}), bv{j}_{q}, acc{i}_{j});"
                            );
                        }
                    }
                    let _ = writeln!(w, "        bk += ldb4;");
                }
            } else {
                let _ = writeln!(w, "    for (var kk = 0u; kk < p.k; kk++) {{");
                for i in 0..tm {
                    let _ = writeln!(w, "        let av{i} = vec4<f32>(a[a_base + a_at(r{i}, kk)]);");
                }
                for j in 0..groups {
                    let _ = writeln!(w, "        let bv{j} = b4[bk + c{j}];");
                }
                for i in 0..tm {
                    for j in 0..groups {
                        let _ = writeln!(w, "        acc{i}_{j} = fma(av{i}, bv{j}, acc{i}_{j});");
                    }
                }
                let _ = writeln!(w, "        bk += ldb4;");
            }
            let _ = writeln!(w, "    }}");
            let outputs: Vec<String> = (0..tm)
                .flat_map(|i| {
                    (0..groups * 4).map(move |j| format!("acc{i}_{}.{}", j / 4, ["x", "y", "z", "w"][(j % 4) as usize]))
                })
                .collect();
            let column = format!("(g0 + {wx}u * (j / 4u)) * 4u + j % 4u");
            write_epilogue(w, tm, tn, &outputs, "row0 + i", &column);
        }
        Reads::Vec4K | Reads::Scalar => {
            let _ = writeln!(w, "    let col0 = wg.x * {}u + lid.x;", wx * tn);
            for j in 0..tn {
                let _ = writeln!(w, "    let c{j} = min(col0 + {}u, p.n - 1u);", wx * j);
            }
            for i in 0..tm {
                for j in 0..tn {
                    let _ = writeln!(w, "    var acc{i}_{j} = 0.0;");
                }
            }
            if reads == Reads::Vec4K {
                // A is [M, K] and B is [N, K]: both rows are contiguous along k.
                let _ = writeln!(w, "    for (var kk = 0u; kk < p.k; kk += 4u) {{");
                for i in 0..tm {
                    let _ = writeln!(w, "        let av{i} = a4[(a_base + r{i} * p.lda + kk) / 4u];");
                }
                for j in 0..tn {
                    let _ = writeln!(w, "        let bv{j} = b4[(b_base + c{j} * p.ldb + kk) / 4u];");
                }
                for i in 0..tm {
                    for j in 0..tn {
                        let _ = writeln!(w, "        acc{i}_{j} += dot(av{i}, bv{j});");
                    }
                }
            } else {
                let _ = writeln!(w, "    for (var kk = 0u; kk < p.k; kk++) {{");
                for i in 0..tm {
                    let _ = writeln!(w, "        let av{i} = a[a_base + a_at(r{i}, kk)];");
                }
                for j in 0..tn {
                    let _ = writeln!(w, "        let bv{j} = b[b_base + b_at(kk, c{j})];");
                }
                for i in 0..tm {
                    for j in 0..tn {
                        let _ = writeln!(w, "        acc{i}_{j} = fma(av{i}, bv{j}, acc{i}_{j});");
                    }
                }
            }
            let _ = writeln!(w, "    }}");
            let outputs: Vec<String> = (0..tm).flat_map(|i| (0..tn).map(move |j| format!("acc{i}_{j}"))).collect();
            write_epilogue(w, tm, tn, &outputs, "row0 + i", &format!("col0 + {wx}u * j"));
        }
    }
    let _ = writeln!(w, "}}");
    s
}

/// Generates the fully unrolled `matmul_blocked` entry point.
///
/// The workgroup computes a BM x BN block of C (BM = WY·TM, BN = WX·TN). Workgroup
/// memory holds one BK-deep slice of op(A) as [BK][BM] and of op(B) as [BK][BN], both
/// as vec4 along M and N, so an invocation reads its TM rows and TN columns of one k-step
/// with TM/4 + TN/4 vec4 loads. An invocation owns rows `(ty + WY·g)·4 + q` and columns
/// `(tx + WX·g)·4 + q`: neighbouring invocations read neighbouring vec4s, without bank
/// conflicts. While a slice is multiplied, the next one is loaded from global memory into
/// registers, so global latency hides behind the multiply-adds.
///
/// Staging: every invocation loads whole groups of four elements that are neighbours in
/// the tile's vec4 direction (M for A, N for B). Which tile index runs fastest across
/// invocations follows the operand's contiguous dimension in global memory, so a warp's
/// loads always cover consecutive addresses.
fn blocked_source(config: Config, a_trans: bool, b_trans: bool) -> String {
    use std::fmt::Write;
    let Config { tm, tn, wx, wy, bk, .. } = config;
    let threads = wx * wy;
    let (bm, bn) = config.block();
    let (bm4, bn4) = (bm / 4, bn / 4);
    let (groups_a, groups_b) = (bm4 * bk / threads, bn4 * bk / threads);
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "var<workgroup> blk_a: array<vec4<f32>, {}>;", bk * bm4);
    let _ = writeln!(w, "var<workgroup> blk_b: array<vec4<f32>, {}>;", bk * bn4);
    let _ = writeln!(w, "@compute @workgroup_size({wx}, {wy})");
    let _ = writeln!(
        w,
        "fn matmul_blocked(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, \
         @builtin(local_invocation_index) li: u32) {{"
    );
    let _ = writeln!(w, "    let batch = wg.z;");
    let _ = writeln!(w, "    let a_base = batch * p.batch_a + p.a_offset;");
    let _ = writeln!(w, "    let b_base = batch * p.batch_b + p.b_offset;");
    let _ = writeln!(w, "    let m0 = wg.y * {bm}u;");
    let _ = writeln!(w, "    let n0 = wg.x * {bn}u;");
    // Where each staged group sits in the tile: (k within the slice, vec4 index along M/N).
    // `contiguous_k`: the operand's rows run along k in memory, so k runs fastest.
    let place = |w: &mut String, name: &str, g: u32, span4: u32, contiguous_k: bool| {
        let _ = writeln!(w, "    let {name}e{g} = li + {}u;", g * threads);
        if contiguous_k {
            let _ = writeln!(w, "    let {name}k{g} = {name}e{g} % {bk}u;");
            let _ = writeln!(w, "    let {name}v{g} = {name}e{g} / {bk}u;");
        } else {
            let _ = writeln!(w, "    let {name}k{g} = {name}e{g} / {span4}u;");
            let _ = writeln!(w, "    let {name}v{g} = {name}e{g} % {span4}u;");
        }
    };
    for g in 0..groups_a {
        place(w, "sa", g, bm4, !a_trans);
    }
    for g in 0..groups_b {
        place(w, "sb", g, bn4, b_trans);
    }
    // Staging registers, loaded for the slice starting at k0.
    for g in 0..groups_a {
        let _ = writeln!(w, "    var la{g} = vec4<f32>(0.0);");
    }
    for g in 0..groups_b {
        let _ = writeln!(w, "    var lb{g} = vec4<f32>(0.0);");
    }
    // One operand's staging loads for the slice at `k0`: register `{reg}{g}` takes the four
    // elements of group g, indices clamped into the matrix and zeros selected outside it.
    let load_operand = |w: &mut String,
                        k0: &str,
                        reg: &str,
                        place: &str,
                        groups: u32,
                        origin: &str,
                        bound: &str,
                        element: &dyn Fn(&str) -> String| {
        for g in 0..groups {
            let _ = writeln!(w, "        {{");
            let _ = writeln!(w, "            let gk = {k0} + {place}k{g};");
            let _ = writeln!(w, "            let kc = min(gk, p.k - 1u);");
            let comps: Vec<String> = (0..4)
                .map(|q| {
                    let index = format!("{origin} + {place}v{g} * 4u + {q}u");
                    let value = element(&format!("min({index}, {bound} - 1u)"));
                    format!("select(0.0, {value}, {index} < {bound} && gk < p.k)")
                })
                .collect();
            let _ = writeln!(w, "            {reg}{g} = vec4<f32>({});", comps.join(", "));
            let _ = writeln!(w, "        }}");
        }
    };
    let load = |w: &mut String, k0: &str| {
        load_operand(w, k0, "la", "sa", groups_a, "m0", "p.m", &|row| format!("a[a_base + a_at({row}, kc)]"));
        load_operand(w, k0, "lb", "sb", groups_b, "n0", "p.n", &|col| format!("b[b_base + b_at(kc, {col})]"));
    };
    load(w, "0u");
    for i in 0..tm {
        for j in 0..tn / 4 {
            let _ = writeln!(w, "    var acc{i}_{j} = vec4<f32>(0.0);");
        }
    }
    let _ = writeln!(w, "    for (var k0 = 0u; k0 < p.k; k0 += {bk}u) {{");
    for g in 0..groups_a {
        let _ = writeln!(w, "        blk_a[sak{g} * {bm4}u + sav{g}] = la{g};");
    }
    for g in 0..groups_b {
        let _ = writeln!(w, "        blk_b[sbk{g} * {bn4}u + sbv{g}] = lb{g};");
    }
    let _ = writeln!(w, "        workgroupBarrier();");
    // Past the end of K the loads read clamped addresses and select zeros: harmless.
    load(w, &format!("k0 + {bk}u"));
    for kk in 0..bk {
        for g in 0..tm / 4 {
            let _ = writeln!(w, "        let a{kk}_{g} = blk_a[{}u + lid.y];", kk * bm4 + g * wy);
        }
        for g in 0..tn / 4 {
            let _ = writeln!(w, "        let b{kk}_{g} = blk_b[{}u + lid.x];", kk * bn4 + g * wx);
        }
        for i in 0..tm {
            let comp = ["x", "y", "z", "w"][(i % 4) as usize];
            for j in 0..tn / 4 {
                let _ =
                    writeln!(w, "        acc{i}_{j} = fma(vec4<f32>(a{kk}_{}.{comp}), b{kk}_{j}, acc{i}_{j});", i / 4);
            }
        }
    }
    let _ = writeln!(w, "        workgroupBarrier();");
    let _ = writeln!(w, "    }}");
    let outputs: Vec<String> = (0..tm)
        .flat_map(|i| (0..tn).map(move |j| format!("acc{i}_{}.{}", j / 4, ["x", "y", "z", "w"][(j % 4) as usize])))
        .collect();
    let row = format!("m0 + (lid.y + {wy}u * (i / 4u)) * 4u + i % 4u");
    let column = format!("n0 + (lid.x + {wx}u * (j / 4u)) * 4u + j % 4u");
    write_epilogue(w, tm, tn, &outputs, &row, &column);
    let _ = writeln!(w, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::split_k_slices;

    #[test]
    fn split_k_fills_the_device_only_when_the_output_cannot() {
        // nano at batch 512 (K = 512 x 65 tokens): qkv's dW [192, 64] is 2 tiles of 128 x 128.
        assert_eq!(split_k_slices(2, 33_280), Some(128));
        // A short K limits the slices to 256 rows each.
        assert_eq!(split_k_slices(2, 1_000), Some(3));
        assert_eq!(split_k_slices(2, 511), None);
        // tiny's fc1 dW [768, 192]: 12 tiles.
        assert_eq!(split_k_slices(12, 33_280), Some(22));
        // Up to half the target the tiles are doubled at least; beyond it they go unsplit.
        assert_eq!(split_k_slices(128, 1 << 20), Some(2));
        assert_eq!(split_k_slices(129, 1 << 20), None);
    }
}
