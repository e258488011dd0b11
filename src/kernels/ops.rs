//! Small ops of the ViT: `shaders/ops.wgsl`.
//!
//! Elementwise [`add_forward`], [`scale`], [`axpy`]; deterministic reductions [`reduce_sum`]
//! (e.g. the mean loss) and [`column_sum`] (bias gradients, two passes through
//! [`column_sum_partial`] for many rows); the class token ([`cls_concat`], [`cls_slice`] and
//! their backwards); the position-embedding add [`add_broadcast`] and
//! [`add_broadcast_backward`]; token keep-lists ([`gather_rows`], [`scatter_rows`]).
//! No float atomics anywhere: every sum has a fixed order.
//!
//! Activations (and the class token and position embedding they read) are f32 or f16, the
//! type of the op's first tensor, computed in f32; sums into weight gradients, reductions
//! and drop-path scales are f32. [`convert`] changes a tensor's element type.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::gpu::Element::{self, F32};
use crate::gpu::{grid_1d, Access, Kernel, KernelSpec, Recorder, Shader, Tensor};
use crate::kernels::{act_const, check_loop_budget, expect_shape, same_shape};
use crate::{Error, Result};

pub const SHADER: Shader = Shader { name: "ops", source: include_str!("../../shaders/ops.wgsl") };
const WG: u32 = 256;
/// Columns per workgroup of `column_sum` (the shader's `COLS`).
const COLUMN_SUM_COLS: u32 = 32;
/// Invocations per column of `column_sum` (the shader's `LANES`).
const COLUMN_SUM_LANES: usize = 8;
/// Up to this many rows [`column_sum`] sums directly; beyond, it goes through partial sums
/// of about sqrt(R) rows each, so both passes have short serial loops.
const DIRECT_COLUMN_SUM_ROWS: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ElementwiseParams {
    n: u32,
    a: f32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ReduceParams {
    n: u32,
    scale: f32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ColumnParams {
    rows: u32,
    cols: u32,
    rows_per_block_or_accumulate: u32,
    num_blocks: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TokenParams {
    batch: u32,
    tokens: u32,
    cols: u32,
    accumulate: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GatherParams {
    batch: u32,
    tokens: u32,
    kept: u32,
    cols: u32,
}

/// The compiled entry point with the shader's `Act` set to `act`; `elements` types its
/// storage bindings (activations `act`, reduction outputs and weight gradients f32).
fn kernel(
    rec: &Recorder<'_>,
    entry: &'static str,
    bindings: &[Access],
    act: Element,
    elements: &[Element],
) -> Result<Arc<Kernel>> {
    let consts = act_const(act);
    rec.ctx().kernel(&KernelSpec::new(SHADER, entry, bindings).with_consts(&consts).with_elements(elements))
}

fn groups(elements: usize) -> [u32; 3] {
    grid_1d((elements as u32).div_ceil(WG))
}

/// [B, N, C] of a rank-3 tensor.
fn dims3(op: &'static str, name: &str, t: &Tensor) -> Result<(usize, usize, usize)> {
    match t.shape() {
        &[b, n, c] => Ok((b, n, c)),
        other => Err(Error::shape(op, format!("{name} is {other:?} but must be [B, N, C]"))),
    }
}

/// (R, C) of a tensor summed over all but its last dimension.
fn rows_cols(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape().last() {
        Some(&c) if c > 0 => Ok((x.numel() / c, c)),
        _ => Err(Error::shape(op, format!("x is {:?}; it needs a last dimension C >= 1", x.shape()))),
    }
}

/// z = x + y, elementwise.
pub fn add_forward(rec: &mut Recorder<'_>, x: &Tensor, y: &Tensor, z: &Tensor) -> Result<()> {
    same_shape("add_forward", &[("x", x), ("y", y), ("z", z)])?;
    let a = x.element();
    let k = kernel(rec, "add_forward", &[Access::Read, Access::Read, Access::ReadWrite, Access::Uniform], a, &[a; 3])?;
    let params = ElementwiseParams { n: x.numel() as u32, a: 0.0, _pad: [0; 2] };
    rec.dispatch(&k, &[x, y, z], &params, groups(x.numel()))
}

/// x = a * x, in place.
pub fn scale(rec: &mut Recorder<'_>, x: &Tensor, a: f32) -> Result<()> {
    let k = kernel(rec, "scale", &[Access::ReadWrite, Access::Uniform], x.element(), &[x.element()])?;
    let params = ElementwiseParams { n: x.numel() as u32, a, _pad: [0; 2] };
    rec.dispatch(&k, &[x], &params, groups(x.numel()))
}

/// y = y + a * x, elementwise.
pub fn axpy(rec: &mut Recorder<'_>, a: f32, x: &Tensor, y: &Tensor) -> Result<()> {
    same_shape("axpy", &[("x", x), ("y", y)])?;
    let act = x.element();
    let k = kernel(rec, "axpy", &[Access::Read, Access::ReadWrite, Access::Uniform], act, &[act; 2])?;
    let params = ElementwiseParams { n: x.numel() as u32, a, _pad: [0; 2] };
    rec.dispatch(&k, &[x, y], &params, groups(x.numel()))
}

/// out[0] = scale * sum(x), in one workgroup with a fixed order: for short vectors such as
/// per-row losses (scale = 1 / B gives the mean).
pub fn reduce_sum(rec: &mut Recorder<'_>, x: &Tensor, out: &Tensor, scale: f32) -> Result<()> {
    if out.numel() != 1 {
        return Err(Error::shape("reduce_sum", format!("out is {:?} but must hold one value", out.shape())));
    }
    let n = x.numel();
    check_loop_budget("reduce_sum", n.div_ceil(WG as usize) + WG as usize + 2, || format!("summing {n} values"))?;
    let a = x.element();
    let k = kernel(rec, "reduce_sum", &[Access::Read, Access::ReadWrite, Access::Uniform], a, &[a, F32])?;
    let params = ReduceParams { n: x.numel() as u32, scale, _pad: [0; 2] };
    rec.dispatch(&k, &[x, out], &params, [1, 1, 1])
}

/// partial[blk, c] = sum over the rows of block blk of x[r, c], with ceil(R / num_blocks)
/// rows per block (num_blocks is partial's first dimension; extra blocks hold zeros).
pub fn column_sum_partial(
    rec: &mut Recorder<'_>,
    x: &Tensor,       // [R, C] (or [.., C])
    partial: &Tensor, // [num_blocks, C]
) -> Result<()> {
    const OP: &str = "column_sum_partial";
    let (rows, cols) = rows_cols(OP, x)?;
    let num_blocks = match partial.shape() {
        &[nb, c] if nb >= 1 && c == cols => nb,
        other => {
            return Err(Error::shape(
                OP,
                format!("partial is {other:?} but must be [num_blocks >= 1, {cols}] for x {:?}", x.shape()),
            ))
        }
    };
    let rows_per_block = rows.div_ceil(num_blocks);
    check_loop_budget(OP, rows_per_block + 1, || format!("{num_blocks} blocks of {rows_per_block} rows"))?;
    let a = x.element();
    let k = kernel(rec, "column_sum_partial", &[Access::Read, Access::ReadWrite, Access::Uniform], a, &[a, F32])?;
    let params = ColumnParams {
        rows: rows as u32,
        cols: cols as u32,
        rows_per_block_or_accumulate: rows_per_block as u32,
        num_blocks: num_blocks as u32,
    };
    rec.dispatch(&k, &[x, partial], &params, groups(num_blocks * cols))
}

/// out[c] = sum over rows of x[r, c] (added to out with `accumulate`), for bias gradients.
/// Many rows go through [`column_sum_partial`] into a scratch buffer first.
pub fn column_sum(
    rec: &mut Recorder<'_>,
    x: &Tensor,   // [R, C] (or [.., C])
    out: &Tensor, // [C]
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "column_sum";
    let (rows, cols) = rows_cols(OP, x)?;
    expect_shape(OP, "out", out, &[cols])?;
    let direct = |rec: &mut Recorder<'_>, x: &Tensor, rows: usize| {
        check_loop_budget(OP, rows.div_ceil(COLUMN_SUM_LANES) + COLUMN_SUM_LANES + 2, || {
            format!("summing {rows} rows")
        })?;
        let a = x.element();
        let k = kernel(rec, "column_sum", &[Access::Read, Access::ReadWrite, Access::Uniform], a, &[a, F32])?;
        let params = ColumnParams {
            rows: rows as u32,
            cols: cols as u32,
            rows_per_block_or_accumulate: accumulate as u32,
            num_blocks: 0,
        };
        rec.dispatch(&k, &[x, out], &params, grid_1d((cols as u32).div_ceil(COLUMN_SUM_COLS)))
    };
    if rows <= DIRECT_COLUMN_SUM_ROWS {
        return direct(rec, x, rows);
    }
    let rows_per_block = (rows as f64).sqrt().ceil() as usize;
    let num_blocks = rows.div_ceil(rows_per_block);
    let partial = rec.ctx().empty(&[num_blocks, cols], "column_sum.partial")?; // [num_blocks, C]

    // Held until submission, so the pool cannot hand it to an upload that would land first.
    rec.keep(partial.clone());
    column_sum_partial(rec, x, &partial)?;
    direct(rec, &partial, num_blocks)
}

/// out[b, 0, :] = cls, out[b, 1.., :] = patches[b]: prepends the class token.
pub fn cls_concat(
    rec: &mut Recorder<'_>,
    patches: &Tensor, // [B, Np, C]
    cls: &Tensor,     // [C]
    out: &Tensor,     // [B, Np + 1, C]
) -> Result<()> {
    const OP: &str = "cls_concat";
    let (b, np, c) = dims3(OP, "patches", patches)?;
    expect_shape(OP, "cls", cls, &[c])?;
    expect_shape(OP, "out", out, &[b, np + 1, c])?;
    let a = patches.element();
    let k = kernel(rec, "cls_concat", &[Access::Read, Access::Read, Access::ReadWrite, Access::Uniform], a, &[a; 3])?;
    let params = TokenParams { batch: b as u32, tokens: (np + 1) as u32, cols: c as u32, accumulate: 0 };
    rec.dispatch(&k, &[patches, cls, out], &params, groups(out.numel()))
}

/// dpatches = dout[:, 1.., :]; dcls = sum over the batch of dout[:, 0, :] (added to dcls
/// with `accumulate`).
pub fn cls_concat_backward(
    rec: &mut Recorder<'_>,
    dout: &Tensor,     // [B, Np + 1, C]
    dpatches: &Tensor, // [B, Np, C]
    dcls: &Tensor,     // [C]
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "cls_concat_backward";
    let (b, n, c) = dims3(OP, "dout", dout)?;
    if n == 0 {
        return Err(Error::shape(OP, format!("dout is {:?}; it needs the class token row", dout.shape())));
    }
    expect_shape(OP, "dpatches", dpatches, &[b, n - 1, c])?;
    expect_shape(OP, "dcls", dcls, &[c])?;
    check_loop_budget(OP, b + 1, || format!("summing dcls over a batch of {b}"))?;
    let a = dout.element();
    let bindings = [Access::Read, Access::ReadWrite, Access::ReadWrite, Access::Uniform];
    let k = kernel(rec, "cls_concat_backward", &bindings, a, &[a, a, F32])?;
    let params = TokenParams { batch: b as u32, tokens: n as u32, cols: c as u32, accumulate: accumulate as u32 };
    rec.dispatch(&k, &[dout, dpatches, dcls], &params, groups(dpatches.numel() + c))
}

/// out[b, :] = x[b, 0, :]: the class token of every sequence.
pub fn cls_slice(
    rec: &mut Recorder<'_>,
    x: &Tensor,   // [B, N, C]
    out: &Tensor, // [B, C]
) -> Result<()> {
    const OP: &str = "cls_slice";
    let (b, n, c) = dims3(OP, "x", x)?;
    if n == 0 {
        return Err(Error::shape(OP, format!("x is {:?}; it has no token to take", x.shape())));
    }
    expect_shape(OP, "out", out, &[b, c])?;
    let a = x.element();
    let k = kernel(rec, "cls_slice", &[Access::Read, Access::ReadWrite, Access::Uniform], a, &[a; 2])?;
    let params = TokenParams { batch: b as u32, tokens: n as u32, cols: c as u32, accumulate: 0 };
    rec.dispatch(&k, &[x, out], &params, groups(out.numel()))
}

/// dx[b, 0, :] = dout[b, :] and zeros elsewhere.
pub fn cls_slice_backward(
    rec: &mut Recorder<'_>,
    dout: &Tensor, // [B, C]
    dx: &Tensor,   // [B, N, C]
) -> Result<()> {
    const OP: &str = "cls_slice_backward";
    let (b, n, c) = dims3(OP, "dx", dx)?;
    expect_shape(OP, "dout", dout, &[b, c])?;
    let a = dout.element();
    let k = kernel(rec, "cls_slice_backward", &[Access::Read, Access::ReadWrite, Access::Uniform], a, &[a; 2])?;
    let params = TokenParams { batch: b as u32, tokens: n as u32, cols: c as u32, accumulate: 0 };
    rec.dispatch(&k, &[dout, dx], &params, groups(dx.numel()))
}

/// x[b, n, c] += pos[n, c], in place (the position embedding).
pub fn add_broadcast(
    rec: &mut Recorder<'_>,
    x: &Tensor,   // [B, N, C]
    pos: &Tensor, // [N, C]
) -> Result<()> {
    const OP: &str = "add_broadcast";
    let (b, n, c) = dims3(OP, "x", x)?;
    expect_shape(OP, "pos", pos, &[n, c])?;
    let a = x.element();
    let k = kernel(rec, "add_broadcast", &[Access::Read, Access::ReadWrite, Access::Uniform], a, &[a; 2])?;
    let params = TokenParams { batch: b as u32, tokens: n as u32, cols: c as u32, accumulate: 0 };
    rec.dispatch(&k, &[pos, x], &params, groups(x.numel()))
}

/// dpos[n, c] = sum_b dy[b, n, c] (added to dpos with `accumulate`): [`column_sum`] over
/// dy viewed as [B, N C].
pub fn add_broadcast_backward(
    rec: &mut Recorder<'_>,
    dy: &Tensor,   // [B, N, C]
    dpos: &Tensor, // [N, C]
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "add_broadcast_backward";
    let (b, n, c) = dims3(OP, "dy", dy)?;
    expect_shape(OP, "dpos", dpos, &[n, c])?;
    if n * c == 0 {
        return Ok(());
    }
    column_sum(rec, &dy.reshape(&[b, n * c])?, &dpos.reshape(&[n * c])?, accumulate)
}

/// out[b, k, :] = x[b, index[b, k], :] (compacts the kept tokens). An index >= N, which the
/// host cannot check as indices live on the GPU, gives a zero row.
pub fn gather_rows(
    rec: &mut Recorder<'_>,
    x: &Tensor,     // [B, N, C]
    index: &Tensor, // [B, Nk] u32
    out: &Tensor,   // [B, Nk, C]
) -> Result<()> {
    const OP: &str = "gather_rows";
    let (b, n, c) = dims3(OP, "x", x)?;
    let kept = match index.shape() {
        &[ib, nk] if ib == b => nk,
        other => {
            return Err(Error::shape(OP, format!("index is {other:?} but must be [{b}, Nk] for x {:?}", x.shape())))
        }
    };
    expect_shape(OP, "out", out, &[b, kept, c])?;
    let a = x.element();
    let bindings = [Access::Read, Access::Read, Access::ReadWrite, Access::Uniform];
    let k = kernel(rec, "gather_rows", &bindings, a, &[a, F32, a])?;
    let params = GatherParams { batch: b as u32, tokens: n as u32, kept: kept as u32, cols: c as u32 };
    rec.dispatch(&k, &[x, index, out], &params, groups(out.numel()))
}

/// The backward of [`gather_rows`]: dx[b, index[b, k], :] = dout[b, k, :], zero for tokens
/// not kept. Records a clear of dx, then the scatter. The indices of one batch must be
/// distinct (a keep-list); indices >= N are skipped.
pub fn scatter_rows(
    rec: &mut Recorder<'_>,
    dout: &Tensor,  // [B, Nk, C]
    index: &Tensor, // [B, Nk] u32
    dx: &Tensor,    // [B, N, C]
) -> Result<()> {
    const OP: &str = "scatter_rows";
    let (b, n, c) = dims3(OP, "dx", dx)?;
    let kept = match index.shape() {
        &[ib, nk] if ib == b => nk,
        other => {
            return Err(Error::shape(OP, format!("index is {other:?} but must be [{b}, Nk] for dx {:?}", dx.shape())))
        }
    };
    expect_shape(OP, "dout", dout, &[b, kept, c])?;
    let a = dout.element();
    let bindings = [Access::Read, Access::Read, Access::ReadWrite, Access::Uniform];
    let k = kernel(rec, "scatter_rows", &bindings, a, &[a, F32, a])?;
    rec.clear(dx);
    let params = GatherParams { batch: b as u32, tokens: n as u32, kept: kept as u32, cols: c as u32 };
    rec.dispatch(&k, &[dout, index, dx], &params, groups(dout.numel()))
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RowScaleParams {
    n: u32,
    per_item: u32,
    _pad: [u32; 2],
}

/// Checks a per-item scale [B] against x [B, ..] and returns the uniform.
fn row_scale_params(op: &'static str, x: &Tensor, scale: &Tensor) -> Result<RowScaleParams> {
    let b = x.shape().first().copied().unwrap_or(0);
    if b == 0 || scale.shape() != [b] {
        return Err(Error::shape(
            op,
            format!("scale is {:?} but x is {:?}; scale needs one value per batch item [B]", scale.shape(), x.shape()),
        ));
    }
    Ok(RowScaleParams { n: x.numel() as u32, per_item: (x.numel() / b) as u32, _pad: [0; 2] })
}

/// out = x + branch · scale[b] for each batch item b: the residual add of a block whose
/// branch goes through drop-path (scale 0 drops it, 1 / keep-probability keeps it).
pub fn add_scaled_rows(
    rec: &mut Recorder<'_>,
    x: &Tensor,      // [B, ..]
    branch: &Tensor, // like x
    scale: &Tensor,  // [B]
    out: &Tensor,    // like x
) -> Result<()> {
    const OP: &str = "add_scaled_rows";
    same_shape(OP, &[("x", x), ("branch", branch), ("out", out)])?;
    let params = row_scale_params(OP, x, scale)?;
    let a = x.element();
    let bindings = [Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::Uniform];
    let k = kernel(rec, OP, &bindings, a, &[a, a, F32, a])?;
    rec.dispatch(&k, &[x, branch, scale, out], &params, groups(x.numel()))
}

/// y = x · scale[b] for each batch item b (the branch gradient of [`add_scaled_rows`]).
pub fn scale_rows(
    rec: &mut Recorder<'_>,
    x: &Tensor,     // [B, ..]
    scale: &Tensor, // [B]
    y: &Tensor,     // like x
) -> Result<()> {
    const OP: &str = "scale_rows";
    same_shape(OP, &[("x", x), ("y", y)])?;
    let params = row_scale_params(OP, x, scale)?;
    let a = x.element();
    let k = kernel(rec, OP, &[Access::Read, Access::Read, Access::ReadWrite, Access::Uniform], a, &[a, F32, a])?;
    rec.dispatch(&k, &[x, scale, y], &params, groups(x.numel()))
}

/// y = x in y's element type (f32 master weights into their f16 copy, f16 back to f32);
/// f32 to f16 rounds to a neighbour (nearest on the adapters we know).
pub fn convert(rec: &mut Recorder<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "convert";
    if x.shape() != y.shape() {
        return Err(Error::shape(OP, format!("{x:?} into {y:?}: the shapes must match")));
    }
    let consts = [("Act", x.element().wgsl().to_string()), ("Converted", y.element().wgsl().to_string())];
    let elements = [x.element(), y.element()];
    let spec = KernelSpec::new(SHADER, OP, &[Access::Read, Access::ReadWrite, Access::Uniform])
        .with_consts(&consts)
        .with_elements(&elements);
    let k = rec.ctx().kernel(&spec)?;
    let params = ElementwiseParams { n: x.numel() as u32, a: 0.0, _pad: [0; 2] };
    rec.dispatch(&k, &[x, y], &params, groups(x.numel()))
}
