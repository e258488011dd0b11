//! Matrix multiply with fused epilogues: `shaders/matmul.wgsl`.
//!
//! Three variants: `register` (register tiles, no workgroup memory, no barriers; fastest
//! on CPU adapters such as lavapipe), `tiled` (shared-memory tiles written as plain
//! loops, any tile shape) and `blocked` (shared-memory tiles generated fully unrolled,
//! with vec4 reads from workgroup memory and the next k-tile prefetched into registers
//! while the current one is multiplied: the one meant for real GPUs), plus `cooperative`
//! (tensor cores through cooperative matrices, f16 operands, where the adapter has them).
//! Which variant and which tile sizes a layout uses is decided per adapter by
//! [`autotune`], which times candidates at first use and caches the choice on disk
//! (native) or in memory (web). Until tuned, a per-adapter-type default is used.

mod codegen;
mod cooperative;
mod split_k;
mod tune;

use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};

use crate::gpu::{Access, Element, Generated, GpuContext, KernelSpec, Recorder, Shader, Tensor};
use crate::kernels::LOOP_BUDGET;
use crate::{Error, Result};

pub use codegen::generated_sources;
use codegen::{blocked_source, choose_reads, fit_scalar_reads, register_source};
pub use cooperative::cooperative_sources;
pub use cooperative::Tiles;
use cooperative::{cooperative_source, EMULATED_SUBGROUP, TILE};
pub use split_k::matmul_split_k;
use split_k::split_k_count;
#[cfg(native)]
pub use tune::cache_path;
pub use tune::{
    agrees, autotune, autotune_with_cache, candidates, config_for, default_config, reset_tuning, time_config,
    MatmulState, Tuning,
};

pub const SHADER: Shader = Shader {
    name: "matmul",
    source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/matmul.wgsl")),
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
    /// 16x16x16 cooperative-matrix tiles: `tm` x `tn` tiles per subgroup, `wx` x `wy`
    /// subgroups per workgroup, K staged `bk` deep (a multiple of 16).
    Cooperative,
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
    /// Cooperative matrices: `tm` x `tn` tiles of 16 x 16 per subgroup, `wx` x `wy`
    /// subgroups, K slices `bk` deep (f16 operands only).
    pub const fn cooperative(tm: u32, tn: u32, wx: u32, wy: u32, bk: u32) -> Self {
        Config { variant: Variant::Cooperative, tm, tn, wx, wy, bk }
    }
    /// Rows x columns of C covered by one workgroup.
    pub fn block(&self) -> (u32, u32) {
        let tile = if self.variant == Variant::Cooperative { TILE } else { 1 };
        (self.wy * self.tm * tile, self.wx * self.tn * tile)
    }
    /// A short name such as `register_8x4_8` or `tiled_4x4_16x16_k16`.
    pub fn label(&self) -> String {
        match self.variant {
            Variant::Register => format!("register_{}x{}_{}", self.tm, self.tn, self.wx),
            Variant::Tiled => format!("tiled_{}x{}_{}x{}_k{}", self.tm, self.tn, self.wx, self.wy, self.bk),
            Variant::Blocked => format!("blocked_{}x{}_{}x{}_k{}", self.tm, self.tn, self.wx, self.wy, self.bk),
            Variant::Cooperative => format!("coop_{}x{}_{}x{}_k{}", self.tm, self.tn, self.wx, self.wy, self.bk),
        }
    }
    /// Whether the device can run this config; `subgroup` is the subgroup size a
    /// cooperative config is generated for (invocations per subgroup).
    fn fits(&self, limits: &wgpu::Limits, subgroup: u32) -> bool {
        let lanes = if self.variant == Variant::Cooperative { subgroup } else { 1 };
        let invocations = self.wx * self.wy * lanes;
        let (bm, bn) = self.block();
        let shared = match self.variant {
            Variant::Register => 0,
            Variant::Tiled | Variant::Blocked => (bm + bn) * self.bk * 4,
            Variant::Cooperative => cooperative::shared_bytes(*self),
        };
        let shape_ok = match self.variant {
            Variant::Blocked => {
                self.tm.is_multiple_of(4)
                    && self.tn.is_multiple_of(4)
                    && (bm * self.bk / 4).is_multiple_of(invocations)
                    && (bn * self.bk / 4).is_multiple_of(invocations)
            }
            Variant::Cooperative => subgroup > 0 && self.bk >= TILE && self.bk.is_multiple_of(TILE),
            _ => true,
        };
        let width = if self.variant == Variant::Cooperative { invocations } else { self.wx };
        shape_ok
            && invocations <= limits.max_compute_invocations_per_workgroup
            && width <= limits.max_compute_workgroup_size_x
            && self.wy <= limits.max_compute_workgroup_size_y
            && shared <= limits.max_compute_workgroup_storage_size
    }
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
    /// Multiply by GELU'(x) of this tensor (shape of C), after the bias: the backward of a
    /// GELU whose input the forward stored with `pre`, fused into the matmul that makes the
    /// GELU's output gradient. Exclusive with `gelu` (it is bound where `pre` is).
    pub gelu_grad_of: Option<&'a Tensor>,
    /// `+ residual[m, n]` after GELU, shape of C.
    pub residual: Option<&'a Tensor>,
    /// `(scale, rows)`: multiply by `scale[r / rows]` before the residual, r counting the
    /// rows of C over the batch (f32 [rows of C / rows]): drop-path's factor per image on a
    /// residual branch, `rows` its tokens.
    pub row_scale: Option<(&'a Tensor, usize)>,
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
    rows_per_scale: u32,
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
pub fn matmul(
    rec: &mut Recorder<'_>,
    layout: Layout,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    epi: &Epilogue<'_>,
) -> Result<()> {
    let config = config_for(rec.ctx(), layout, a.element());
    matmul_with(rec, layout, config, a, b, c, epi)
}

/// [`matmul`] with an explicit variant (tests and tuning).
pub fn matmul_with(
    rec: &mut Recorder<'_>,
    layout: Layout,
    config: Config,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    epi: &Epilogue<'_>,
) -> Result<()> {
    matmul_tiles(rec, layout, config, a, b, c, epi, Tiles::Hardware)
}

/// [`matmul_with`] a cooperative `config` whose tile operations are written out as plain
/// loops ([`Tiles::Emulated`]): the tests run it on adapters without cooperative matrices
/// to check everything around the tensor cores.
pub fn matmul_cooperative_emulated(
    rec: &mut Recorder<'_>,
    layout: Layout,
    config: Config,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    epi: &Epilogue<'_>,
) -> Result<()> {
    if config.variant != Variant::Cooperative {
        return Err(Error::invalid(layout.name(), format!("{} is not a cooperative config", config.label())));
    }
    // CPU adapters end a loop after 65535 iterations, and the written-out tiles loop
    // about TM·TN·16 times per K element: enough for test shapes, not for long K.
    if dims(layout, a, b, c)?.k > EMULATED_MAX_K {
        return Err(Error::invalid(
            layout.name(),
            format!("emulated cooperative tiles take K up to {EMULATED_MAX_K} (they are for tests)"),
        ));
    }
    matmul_tiles(rec, layout, config, a, b, c, epi, Tiles::Emulated)
}

/// The longest K [`matmul_cooperative_emulated`] takes.
const EMULATED_MAX_K: usize = 256;

#[allow(clippy::too_many_arguments, reason = "matmul_with's arguments and how cooperative tiles run")]
fn matmul_tiles(
    rec: &mut Recorder<'_>,
    layout: Layout,
    config: Config,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    epi: &Epilogue<'_>,
    tiles: Tiles,
) -> Result<()> {
    let op = layout.name();
    let d = dims(layout, a, b, c)?;
    if let Some(bias) = epi.bias {
        if bias.shape() != [d.n] {
            return Err(Error::shape(op, format!("bias is {:?} but C has {} columns", bias.shape(), d.n)));
        }
    }
    for (name, t) in [("residual", epi.residual), ("pre", epi.pre), ("gelu_grad_of", epi.gelu_grad_of)] {
        if let Some(t) = t {
            if t.shape() != c.shape() {
                return Err(Error::shape(op, format!("{name} is {:?} but C is {:?}", t.shape(), c.shape())));
            }
        }
    }
    if epi.pre.is_some() && !epi.gelu {
        return Err(Error::invalid(op, "storing the pre-activation only makes sense with gelu"));
    }
    if let Some((scale, rows)) = epi.row_scale {
        if rows == 0 || (d.batch * d.m) % rows != 0 || scale.shape() != [d.batch * d.m / rows] {
            return Err(Error::shape(
                op,
                format!("row scale {:?} of {rows} rows each for the {} rows of C", scale.shape(), d.batch * d.m),
            ));
        }
    }
    if epi.gelu_grad_of.is_some() && epi.gelu {
        return Err(Error::invalid(op, "gelu_grad_of (a GELU's backward) and gelu (its forward) exclude each other"));
    }
    if d.m == 0 || d.n == 0 || d.batch == 0 {
        return Ok(());
    }
    if c.element() == Element::F32 {
        let split = split_k_count(rec.ctx(), layout, config, &d, a, b, epi).filter(|_| tiles == Tiles::Hardware);
        if let Some(splits) = split {
            return matmul_split_k(rec, config, a, b, c, epi.accumulate, splits);
        }
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
        ("GELU_GRAD", flag(epi.gelu_grad_of.is_some())),
        ("HAS_RESIDUAL", flag(epi.residual.is_some())),
        ("ROW_SCALE", flag(epi.row_scale.is_some())),
        ("ACCUMULATE", flag(epi.accumulate)),
        ("Operand", a.element().wgsl().to_string()),
        ("Output", c.element().wgsl().to_string()),
    ];
    // A, B and the bias share one element type, C, the residual and the pre-activation
    // another; dispatch refuses tensors that differ.
    let (operand, output) = (a.element(), c.element());
    let elements = [operand, operand, operand, output, Element::F32, output, output];
    let config = fit_scalar_reads(layout, config, &d);
    let reads = choose_reads(layout, config, &d);
    let subgroup = match config.variant {
        Variant::Cooperative => cooperative_subgroup(rec.ctx(), op, config, operand, tiles)?,
        _ => 0,
    };
    let register = || register_source(config, reads);
    let blocked = || blocked_source(config, a_trans, b_trans);
    let coop = || cooperative_source(config, a_trans, b_trans, subgroup, tiles);
    let name = match config.variant {
        Variant::Register => format!("{}_{reads:?}", config.label()),
        Variant::Tiled => String::new(),
        Variant::Blocked => format!("{}_{}", config.label(), layout.name()),
        Variant::Cooperative => format!("{}_{}_{tiles:?}", config.label(), layout.name()),
    };
    let enables: &[&str] = if tiles == Tiles::Hardware { &["wgpu_cooperative_matrix"] } else { &[] };
    let (entry, generated) = match config.variant {
        Variant::Register => ("matmul_register", Some(Generated { name: &name, source: &register, enables: &[] })),
        Variant::Tiled => ("matmul_tiled", None),
        Variant::Blocked => ("matmul_blocked", Some(Generated { name: &name, source: &blocked, enables: &[] })),
        Variant::Cooperative => ("matmul_cooperative", Some(Generated { name: &name, source: &coop, enables })),
    };
    use Access::*;
    let spec = KernelSpec {
        shader: SHADER,
        entry,
        bindings: &[Read, Read, Read, Read, Read, ReadWrite, ReadWrite, Uniform],
        consts: &consts,
        generated,
        elements: &elements,
    };
    let kernel = rec.ctx().kernel(&spec)?;
    // Unused bindings still need a buffer.
    let placeholder_read = rec.ctx().placeholder(false)?;
    let placeholder_write = rec.ctx().placeholder(true)?;
    let bias = epi.bias.unwrap_or(&placeholder_read);
    let residual = epi.residual.unwrap_or(&placeholder_read);
    let (row_scale, rows_per_scale) = epi.row_scale.unwrap_or((&placeholder_read, 1));
    let pre = epi.pre.or(epi.gelu_grad_of).unwrap_or(&placeholder_write);
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
        rows_per_scale: rows_per_scale as u32,
        ..Zeroable::zeroed()
    };
    let (bm, bn) = match config.variant {
        Variant::Register => (config.tm, config.wx * config.tn),
        Variant::Tiled | Variant::Blocked | Variant::Cooperative => config.block(),
    };
    let groups = [(d.n as u32).div_ceil(bn), (d.m as u32).div_ceil(bm), d.batch as u32];
    let chunk = k_chunk(rec.ctx(), config, d.k);
    if chunk >= d.k {
        return rec.dispatch(&kernel, &[a, b, bias, residual, row_scale, c, pre], &params, groups);
    }
    // CPU adapters stop a shader's loops after 65535 iterations: split K and let every
    // chunk after the first accumulate into C.
    let fused = epi.gelu || epi.gelu_grad_of.is_some() || epi.row_scale.is_some();
    if epi.bias.is_some() || fused || epi.residual.is_some() {
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
        rec.dispatch(kernel, &[a, b, bias, residual, row_scale, c, pre], &p, groups)?;
    }
    Ok(())
}

/// The subgroup size to generate a cooperative config for, or why it cannot run here:
/// the device lacks cooperative matrices (not needed for emulated tiles), the operands are
/// not f16, or the tile shape is empty.
fn cooperative_subgroup(
    ctx: &GpuContext,
    op: &'static str,
    config: Config,
    operand: Element,
    tiles: Tiles,
) -> Result<u32> {
    let subgroup = match tiles {
        Tiles::Hardware => ctx.cooperative_matrix_subgroup(),
        Tiles::Emulated => Some(EMULATED_SUBGROUP),
    };
    let Some(subgroup) = subgroup else {
        return Err(Error::invalid(
            op,
            format!(
                "the cooperative-matrix variant needs 16x16x16 f16 -> f32 cooperative matrices, which {} does not \
                 offer (autoprog info lists them); use another variant",
                ctx.summary.display_name()
            ),
        ));
    };
    if operand != Element::F16 {
        return Err(Error::invalid(
            op,
            format!("the cooperative-matrix variant takes f16 operands, not {}; use another variant", operand.wgsl()),
        ));
    }
    if config.tm * config.tn * config.wx * config.wy == 0 || config.bk == 0 || !config.bk.is_multiple_of(TILE) {
        return Err(Error::invalid(
            op,
            format!("{}: tiles, subgroups and a K slice that is a multiple of {TILE} are needed", config.label()),
        ));
    }
    Ok(subgroup)
}

/// `consts` with ACCUMULATE switched on.
pub(super) fn consts_accumulating(consts: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
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
        // One unrolled iteration per k-tile. (No CPU adapter has cooperative matrices; their
        // emulated tiles, which tests run on CPU adapters, are held to a short K instead.)
        Variant::Blocked | Variant::Cooperative => 1.0 / config.bk as f64,
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
