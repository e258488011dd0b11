//! Fused multi-head self-attention (FlashAttention-2 style), forward and backward by
//! recomputation: `shaders/attention.wgsl`. Nothing of size N x N is ever stored.
//!
//! Layouts match the ViT's linears so no permutes are needed: `qkv` [B, N, 3·C] (timm's
//! [B, N, 3, NH, HS] ordering, C = NH·HS), `out` and `dout` [B, N, C] (or [B, N, NH, HS]),
//! `lse` and `d` [B, NH, N]. NH is read from `lse` (or `d`); HS = C / NH, 1..=128, any
//! value (kernels are specialised per HS; rows are read as vec4 when HS % 4 == 0).
//!
//! Masks: `key_mask` u32 [B, N] (0 = padded key, ignored by every query of that image);
//! `head_mask` [NH], u32 or f32 (a zero bit pattern masks the head: its output and all
//! its gradients are zero). Query rows with no unmasked key output zeros and lse 0.
//!
//! `qkv`, `out`, `dout` and `dqkv` share one element type, f32 or f16 (storage only: scores,
//! softmax and accumulators are f32); `lse` and `d` are f32.
//!
//! Two variants of the forward and gradient kernels ([`AttentionVariant`]): rows per
//! invocation without workgroup memory (CPU adapters, where barriers are expensive) and
//! workgroup tiles (`shaders/attention_tiled.wgsl`, GPUs, where the other needs too few
//! threads to fill the chip). Same bindings, results equal up to f32 rounding.

use bytemuck::{Pod, Zeroable};

use crate::gpu::Element::{self, F32};
use crate::gpu::{grid_1d, Access, GpuContext, KernelSpec, Recorder, Shader, Tensor};
use crate::kernels::{check_loop_budget, expect_shape};
use crate::{Error, Result};

pub const SHADER: Shader = Shader { name: "attention", source: include_str!("../../shaders/attention.wgsl") };
pub const TILED_SHADER: Shader =
    Shader { name: "attention_tiled", source: include_str!("../../shaders/attention_tiled.wgsl") };
/// Rows a workgroup of the tiled variant owns, and invocations per row (`ROWS`, `PARTS`).
const TILED_ROWS: usize = 16;
const TILED_PARTS: usize = 4;
/// Workgroup memory every WebGPU adapter offers; the tiled variant's tiles are sized to fit.
const PORTABLE_WORKGROUP_BYTES: usize = 16384;
/// Invocations per workgroup; must match `WG` in the shader.
const WG: u32 = 64;
/// Rows (query or key) per invocation of the forward and gradient kernels; `PAIR` in the shader.
const PAIR: u32 = 2;
/// Largest head size: each invocation keeps up to eight rows of HS floats in private memory.
pub const MAX_HEAD_SIZE: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    b: u32,
    n: u32,
    nh: u32,
    scale: f32,
    has_key_mask: u32,
    has_head_mask: u32,
    _pad: [u32; 2],
}

/// How the forward and gradient kernels map rows to invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionVariant {
    /// Two rows per invocation, the other side's rows read from storage: no workgroup
    /// memory, no barriers (fast on CPU adapters, too few threads for a GPU).
    Rows,
    /// A workgroup per 16 rows, four invocations per row, the other side's rows staged in
    /// workgroup-memory tiles (FlashAttention-2 style).
    Tiled,
}

impl AttentionVariant {
    pub fn label(self) -> &'static str {
        match self {
            AttentionVariant::Rows => "two-rows-per-invocation",
            AttentionVariant::Tiled => "workgroup-tiles",
        }
    }

    /// The variant for this adapter: rows on CPU adapters (measured on lavapipe, see
    /// BENCHMARKS.md), tiles elsewhere.
    pub fn for_adapter(ctx: &GpuContext) -> AttentionVariant {
        if ctx.summary.is_cpu() {
            AttentionVariant::Rows
        } else {
            AttentionVariant::Tiled
        }
    }
}

/// The scalar and the optional masks every attention entry point takes.
#[derive(Clone, Copy, Debug)]
pub struct AttentionOptions<'a> {
    /// Multiplies the scores q·k before the softmax, usually 1 / sqrt(HS).
    pub scale: f32,
    /// u32 [B, N]: 1 keeps key j of image b, 0 masks it. None: every key is kept.
    pub key_mask: Option<&'a Tensor>,
    /// [NH], u32 1/0 or f32 1.0/0.0: a zero masks the whole head. None: every head is on.
    pub head_mask: Option<&'a Tensor>,
    /// None: the adapter's ([`AttentionVariant::for_adapter`]).
    pub variant: Option<AttentionVariant>,
}

impl<'a> AttentionOptions<'a> {
    /// No masks.
    pub fn new(scale: f32) -> Self {
        AttentionOptions { scale, key_mask: None, head_mask: None, variant: None }
    }
    pub fn with_key_mask(self, key_mask: &'a Tensor) -> Self {
        AttentionOptions { key_mask: Some(key_mask), ..self }
    }
    pub fn with_head_mask(self, head_mask: &'a Tensor) -> Self {
        AttentionOptions { head_mask: Some(head_mask), ..self }
    }
    pub fn with_variant(self, variant: AttentionVariant) -> Self {
        AttentionOptions { variant: Some(variant), ..self }
    }
    fn variant_on(&self, ctx: &GpuContext) -> AttentionVariant {
        self.variant.unwrap_or_else(|| AttentionVariant::for_adapter(ctx))
    }
}

/// B, N, NH, HS of one call, checked against every tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dims {
    b: usize,
    n: usize,
    nh: usize,
    hs: usize,
}

impl Dims {
    /// Reads B, NH, N from a [B, NH, N] tensor (`lse` or `d`) and HS from a [B, N, k·C]
    /// tensor whose last axes may also be split as [k, NH, HS] (k = 3 for qkv, 1 for out).
    fn from(op: &'static str, rows: (&str, &Tensor), wide: (&str, &Tensor), k: usize) -> Result<Dims> {
        let (rows_name, rows) = rows;
        let (wide_name, wide) = wide;
        let &[b, nh, n] = rows.shape() else {
            return Err(Error::shape(op, format!("{rows_name} is {:?} but must be [B, NH, N]", rows.shape())));
        };
        let split = if k == 1 { "[B, N, NH, HS]" } else { "[B, N, 3, NH, HS]" };
        let bad = || {
            Error::shape(
                op,
                format!(
                    "{wide_name} is {:?} but {rows_name} {:?} gives B = {b}, NH = {nh}, N = {n}: \
                     {wide_name} must be [B, N, {k}·NH·HS] or {split}",
                    wide.shape(),
                    rows.shape()
                ),
            )
        };
        let shape = wide.shape();
        if shape.len() < 3 || shape[0] != b || shape[1] != n || nh == 0 {
            return Err(bad());
        }
        let hs = match shape[2..] {
            [w] if w % (k * nh) == 0 => w / (k * nh),
            [kk, h, hs] if k > 1 && kk == k && h == nh => hs,
            [h, hs] if k == 1 && h == nh => hs,
            _ => return Err(bad()),
        };
        if hs == 0 || hs > MAX_HEAD_SIZE {
            return Err(Error::invalid(
                op,
                format!(
                    "{wide_name} {shape:?} with NH = {nh} gives head size HS = {hs}; supported is 1..={MAX_HEAD_SIZE}"
                ),
            ));
        }
        Ok(Dims { b, n, nh, hs })
    }

    /// A [B, N, k·C] tensor (or its split form) of these dimensions.
    fn check_wide(&self, op: &'static str, name: &str, t: &Tensor, k: usize) -> Result<()> {
        let Dims { b, n, nh, hs } = *self;
        let flat = [b, n, k * nh * hs];
        let ok =
            t.shape() == flat || (k == 1 && t.shape() == [b, n, nh, hs]) || (k == 3 && t.shape() == [b, n, 3, nh, hs]);
        if !ok {
            return Err(Error::shape(op, format!("{name} is {:?} but must be {flat:?}", t.shape())));
        }
        Ok(())
    }

    fn check_masks(&self, op: &'static str, opts: &AttentionOptions<'_>) -> Result<()> {
        if let Some(m) = opts.key_mask {
            expect_shape(op, "key_mask", m, &[self.b, self.n])?;
        }
        if let Some(m) = opts.head_mask {
            expect_shape(op, "head_mask", m, &[self.nh])?;
        }
        Ok(())
    }

    /// Floats per storage load: rows are read as vec4 when every row is 16-byte aligned.
    fn lanes(&self) -> usize {
        if self.hs.is_multiple_of(4) {
            4
        } else {
            1
        }
    }

    /// The shader's specialisation: head size, the type rows are computed in (f32 lanes)
    /// and the type they are stored in (lanes of `act`, the activations' element type).
    fn consts(&self, act: Element) -> [(&'static str, String); 4] {
        let lanes = |scalar: &str| if self.lanes() == 4 { format!("vec4<{scalar}>") } else { scalar.to_string() };
        [
            ("HS", format!("{}u", self.hs)),
            ("LANES", format!("{}u", self.lanes())),
            ("Lane", lanes("f32")),
            ("StoredLane", lanes(act.wgsl())),
        ]
    }

    fn params(&self, opts: &AttentionOptions<'_>) -> Params {
        Params {
            b: self.b as u32,
            n: self.n as u32,
            nh: self.nh as u32,
            scale: opts.scale,
            has_key_mask: opts.key_mask.is_some() as u32,
            has_head_mask: opts.head_mask.is_some() as u32,
            _pad: [0; 2],
        }
    }

    /// Every kernel here loops over all N keys (or queries) per invocation, with up to
    /// three HS-long loops per step. CPU adapters silently stop after 65535 loop
    /// iterations per invocation, so there such lengths are refused (about N > 300 at
    /// HS = 64; ViT-S/16 at 224 px has N = 197). Counted per float even where rows are
    /// read as vec4 (a quarter of the iterations): a margin, and one limit for every HS.
    fn check_loop_budget(&self, ctx: &GpuContext, op: &'static str) -> Result<()> {
        if !ctx.summary.is_cpu() {
            return Ok(());
        }
        let iterations = self.n * (3 * self.hs + 1) + 3 * self.hs;
        check_loop_budget(op, iterations, || format!("N = {} tokens at head size {} on a CPU adapter", self.n, self.hs))
    }

    /// One invocation per (batch, head, `rows` rows); workgroups never straddle a (batch, head).
    fn groups(&self, rows: u32) -> [u32; 3] {
        grid_1d((self.b * self.nh) as u32 * (self.n as u32).div_ceil(WG * rows))
    }

    /// The shader, its specialisation and the grid of a forward or gradient kernel.
    fn variant(&self, variant: AttentionVariant, act: Element) -> (Shader, Vec<(&'static str, String)>, [u32; 3]) {
        let consts = self.consts(act).to_vec();
        match variant {
            AttentionVariant::Rows => (SHADER, consts, self.groups(PAIR)),
            AttentionVariant::Tiled => {
                // Every workgroup array of the shader, per row of a tile: a k (or q) and a v
                // (or dout) row in f32, two partials per (row, part), an lse and a d.
                let per_tile_row = 2 * self.hs * 4 + 2 * TILED_ROWS * TILED_PARTS * 4 + 2 * 4;
                let tile = (PORTABLE_WORKGROUP_BYTES / per_tile_row).clamp(1, 16);
                let tiled = [("TILE", format!("{tile}u"))];
                let groups = grid_1d(((self.b * self.nh) * self.n.div_ceil(TILED_ROWS)) as u32);
                (TILED_SHADER, [consts, tiled.to_vec()].concat(), groups)
            }
        }
    }
}

fn spec<'a>(
    shader: Shader,
    entry: &'a str,
    bindings: &'a [Access],
    consts: &'a [(&'a str, String)],
    elements: &'a [Element],
) -> KernelSpec<'a> {
    KernelSpec::new(shader, entry, bindings).with_consts(consts).with_elements(elements)
}

/// out = softmax(q kᵀ · scale, masked keys dropped) v per (image, head), and the row
/// log-sum-exp for the backward pass. qkv [B, N, 3C] → out [B, N, C], lse [B, NH, N].
pub fn attention_forward(
    rec: &mut Recorder<'_>,
    qkv: &Tensor,
    opts: &AttentionOptions<'_>,
    out: &Tensor,
    lse: &Tensor,
) -> Result<()> {
    const OP: &str = "attention_forward";
    let dims = Dims::from(OP, ("lse", lse), ("qkv", qkv), 3)?;
    dims.check_wide(OP, "out", out, 1)?;
    dims.check_masks(OP, opts)?;
    dims.check_loop_budget(rec.ctx(), OP)?;
    let act = qkv.element();
    let (shader, consts, groups) = dims.variant(opts.variant_on(rec.ctx()), act);
    let kernel = rec.ctx().kernel(&spec(
        shader,
        OP,
        &[Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::Uniform],
        &consts,
        &[act, F32, F32, act, F32],
    ))?;
    // An absent mask binds a placeholder the shader never reads (its flag is 0).
    let unused = rec.ctx().placeholder(false)?;
    let key_mask = opts.key_mask.unwrap_or(&unused);
    let head_mask = opts.head_mask.unwrap_or(&unused);
    rec.dispatch(&kernel, &[qkv, key_mask, head_mask, out, lse], &dims.params(opts), groups)
}

/// d = rowsum(dout ∘ out): out, dout [B, N, C] → d [B, NH, N].
pub fn attention_backward_preprocess(rec: &mut Recorder<'_>, out: &Tensor, dout: &Tensor, d: &Tensor) -> Result<()> {
    const OP: &str = "attention_backward_preprocess";
    let dims = Dims::from(OP, ("d", d), ("out", out), 1)?;
    dims.check_wide(OP, "dout", dout, 1)?;
    let act = out.element();
    let consts = dims.consts(act);
    let bindings = [Access::Read, Access::Read, Access::ReadWrite, Access::Uniform];
    let kernel = rec.ctx().kernel(&spec(SHADER, OP, &bindings, &consts, &[act, act, F32]))?;
    let params = dims.params(&AttentionOptions::new(1.0));
    rec.dispatch(&kernel, &[out, dout, d], &params, dims.groups(1))
}

/// Shared binding of the two gradient kernels, which write disjoint slots of dqkv.
#[allow(clippy::too_many_arguments, reason = "one tensor per binding of the shader, plus the entry")]
fn record_gradient(
    op: &'static str,
    rec: &mut Recorder<'_>,
    qkv: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
    d: &Tensor,
    opts: &AttentionOptions<'_>,
    dqkv: &Tensor,
) -> Result<()> {
    let dims = Dims::from(op, ("lse", lse), ("qkv", qkv), 3)?;
    dims.check_wide(op, "dout", dout, 1)?;
    dims.check_wide(op, "dqkv", dqkv, 3)?;
    expect_shape(op, "d", d, lse.shape())?;
    dims.check_masks(op, opts)?;
    dims.check_loop_budget(rec.ctx(), op)?;
    let act = qkv.element();
    let (shader, consts, groups) = dims.variant(opts.variant_on(rec.ctx()), act);
    let kernel = rec.ctx().kernel(&spec(
        shader,
        op,
        &[
            Access::Read,
            Access::Read,
            Access::Read,
            Access::Read,
            Access::Read,
            Access::Read,
            Access::ReadWrite,
            Access::Uniform,
        ],
        &consts,
        &[act, act, F32, F32, F32, F32, act],
    ))?;
    let unused = rec.ctx().placeholder(false)?;
    let key_mask = opts.key_mask.unwrap_or(&unused);
    let head_mask = opts.head_mask.unwrap_or(&unused);
    rec.dispatch(&kernel, &[qkv, dout, lse, d, key_mask, head_mask, dqkv], &dims.params(opts), groups)
}

/// The k and v slots of dqkv [B, N, 3C]: dv = pᵀ dout, dk = dsᵀ q · scale, one invocation
/// per two keys looping over all queries. The q slot is left untouched.
pub fn attention_backward_dkdv(
    rec: &mut Recorder<'_>,
    qkv: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
    d: &Tensor,
    opts: &AttentionOptions<'_>,
    dqkv: &Tensor,
) -> Result<()> {
    record_gradient("attention_backward_dkdv", rec, qkv, dout, lse, d, opts, dqkv)
}

/// The q slot of dqkv [B, N, 3C]: dq = ds k · scale, one invocation per two queries looping
/// over all keys. The k and v slots are left untouched.
pub fn attention_backward_dq(
    rec: &mut Recorder<'_>,
    qkv: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
    d: &Tensor,
    opts: &AttentionOptions<'_>,
    dqkv: &Tensor,
) -> Result<()> {
    record_gradient("attention_backward_dq", rec, qkv, dout, lse, d, opts, dqkv)
}

/// Shape of the one scratch tensor [`attention_backward`] allocates: d [B, NH, N], the
/// same as lse (so never N x N).
pub fn backward_scratch_shape(lse: &Tensor) -> Vec<usize> {
    lse.shape().to_vec()
}

/// The whole backward pass: dqkv [B, N, 3C] (every slot written) from the forward's
/// inputs and outputs. Allocates d [B, NH, N] from the pool, held by `rec` until it is submitted.
pub fn attention_backward(
    rec: &mut Recorder<'_>,
    qkv: &Tensor,
    out: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
    opts: &AttentionOptions<'_>,
    dqkv: &Tensor,
) -> Result<()> {
    const OP: &str = "attention_backward";
    let dims = Dims::from(OP, ("lse", lse), ("qkv", qkv), 3)?;
    dims.check_wide(OP, "out", out, 1)?;
    let d = rec.ctx().empty(&backward_scratch_shape(lse), "attention.d")?; // [B, NH, N]
    attention_backward_preprocess(rec, out, dout, &d)?;
    attention_backward_dkdv(rec, qkv, dout, lse, &d, opts, dqkv)?;
    attention_backward_dq(rec, qkv, dout, lse, &d, opts, dqkv)?;
    rec.keep(d);
    Ok(())
}
