//! LayerNorm over the last dimension, forward and backward: `shaders/layernorm.wgsl`.
//!
//! The backward is two passes so that dgamma/dbeta stay deterministic without float atomics:
//! [`layernorm_backward`] writes dx and one partial row of dgamma/dbeta per chunk of rows,
//! [`layernorm_param_grad`] adds the partial rows in a fixed order. [`layernorm_backward_full`]
//! records both with a scratch partial buffer sized by [`layernorm_partial_rows`].
//! Rows are split over invocations as [`RowSplit::for_rows`] picks for the adapter; the
//! `_with_split` functions choose explicitly (tests run both splits on any adapter).
//! x, y, gamma, beta, dy and dx share one element type (f32 or f16, computed in f32); the
//! statistics and the dgamma/dbeta sums are f32.

use bytemuck::{Pod, Zeroable};

use crate::gpu::Element::F32;
use crate::gpu::{grid_1d, Access, KernelSpec, Recorder, Shader, Tensor};
use crate::kernels::{act_const, check_loop_budget, expect_shape, same_shape, RowSplit, LOOP_BUDGET};
use crate::{Error, Result};

pub const SHADER: Shader = Shader { name: "layernorm", source: include_str!("../../shaders/layernorm.wgsl") };
/// Partial rows summed per invocation lane of `layernorm_param_grad` (the shader's `LANES`).
const PARAM_GRAD_LANES: usize = 8;
/// Columns per workgroup of `layernorm_param_grad` (the shader's `COLS`).
const PARAM_GRAD_COLS: u32 = 32;
/// Upper bound on suggested partial rows: enough chunks to fill a large GPU in the backward,
/// few enough that the second pass stays short.
const MAX_PARTIAL_ROWS: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BackwardParams {
    rows: u32,
    cols: u32,
    rows_per_partial: u32,
    num_partials: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ParamGradParams {
    num_partials: u32,
    cols: u32,
    accumulate: u32,
    _pad: u32,
}

/// (R, C) of a tensor normalised over its last dimension C; R is the product of the rest.
fn rows_cols(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape().last() {
        Some(&c) if c > 0 => Ok((x.numel() / c, c)),
        _ => Err(Error::shape(op, format!("x is {:?}; it needs a last dimension C >= 1 to normalise over", x.shape()))),
    }
}

/// Checks that `t` holds one value per row.
fn expect_rows(op: &'static str, name: &str, t: &Tensor, rows: usize, x: &Tensor) -> Result<()> {
    if t.numel() != rows {
        return Err(Error::shape(
            op,
            format!("{name} is {:?} but x is {:?}; it needs one value per row ({rows})", t.shape(), x.shape()),
        ));
    }
    Ok(())
}

/// Loop iterations of one backward invocation: zeroing its partial row, then per row two
/// passes, one reduction and the step loop itself.
fn backward_iterations(split: RowSplit, cols: usize, rows_per_partial: usize) -> usize {
    let t = split.threads_per_row();
    cols.div_ceil(t) + 2 + rows_per_partial * (split.iterations_per_row(cols, 2, 1) + 1)
}

/// The most rows one partial row may cover for rows of `cols` channels, under either split,
/// so that backward invocations stay within [`LOOP_BUDGET`].
pub fn layernorm_max_rows_per_partial(cols: usize) -> usize {
    [RowSplit::Invocation, RowSplit::Workgroup]
        .into_iter()
        .map(|split| {
            let fixed = backward_iterations(split, cols, 0);
            let per_row = backward_iterations(split, cols, 1) - fixed;
            LOOP_BUDGET.saturating_sub(fixed) / per_row
        })
        .min()
        .unwrap_or(1)
        .max(1)
}

/// Partial rows the backward should use for x [rows, cols]: at most about 1024, more where a
/// partial row would cover more than [`layernorm_max_rows_per_partial`] rows.
pub fn layernorm_partial_rows(rows: usize, cols: usize) -> usize {
    let rows = rows.max(1);
    let rows_per_partial = rows.div_ceil(MAX_PARTIAL_ROWS).min(layernorm_max_rows_per_partial(cols));
    rows.div_ceil(rows_per_partial)
}

/// y = (x - mean) * rstd * gamma + beta over the last dimension, saving mean and
/// rstd = 1 / sqrt(var + eps) (biased variance) per row.
#[allow(clippy::too_many_arguments, reason = "one tensor per shader binding")]
pub fn layernorm_forward(
    rec: &mut Recorder<'_>,
    x: &Tensor,     // [R, C] (or [B, N, C])
    gamma: &Tensor, // [C]
    beta: &Tensor,  // [C]
    y: &Tensor,     // like x
    mean: &Tensor,  // [R]
    rstd: &Tensor,  // [R]
    eps: f32,
) -> Result<()> {
    let split = RowSplit::for_rows(rec.ctx(), x.shape().last().copied().unwrap_or(0));
    layernorm_forward_with_split(rec, split, x, gamma, beta, y, mean, rstd, eps)
}

/// [`layernorm_forward`] with an explicit row split.
#[allow(clippy::too_many_arguments, reason = "one tensor per shader binding")]
pub fn layernorm_forward_with_split(
    rec: &mut Recorder<'_>,
    split: RowSplit,
    x: &Tensor,     // [R, C]
    gamma: &Tensor, // [C]
    beta: &Tensor,  // [C]
    y: &Tensor,     // like x
    mean: &Tensor,  // [R]
    rstd: &Tensor,  // [R]
    eps: f32,
) -> Result<()> {
    const OP: &str = "layernorm_forward";
    let (rows, cols) = rows_cols(OP, x)?;
    same_shape(OP, &[("x", x), ("y", y)])?;
    expect_shape(OP, "gamma", gamma, &[cols])?;
    expect_shape(OP, "beta", beta, &[cols])?;
    expect_rows(OP, "mean", mean, rows, x)?;
    expect_rows(OP, "rstd", rstd, rows, x)?;
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::invalid(OP, format!("eps is {eps}; it must be finite and >= 0")));
    }
    check_loop_budget(OP, split.iterations_per_row(cols, 3, 2), || format!("a row of {cols} channels"))?;
    let act = x.element();
    let consts = [split.shader_const(), act_const(act)].concat();
    let kernel = rec.ctx().kernel(
        &KernelSpec::new(
            SHADER,
            "layernorm_forward",
            &[
                Access::Read,
                Access::Read,
                Access::Read,
                Access::ReadWrite,
                Access::ReadWrite,
                Access::ReadWrite,
                Access::Uniform,
            ],
        )
        .with_consts(&consts)
        .with_elements(&[act, act, act, act, F32, F32]),
    )?;
    let params = Params { rows: rows as u32, cols: cols as u32, eps, _pad: 0 };
    let groups = rows.div_ceil(split.rows_per_workgroup()) as u32;
    rec.dispatch(&kernel, &[x, gamma, beta, y, mean, rstd], &params, grid_1d(groups))
}

/// dx for every row, and per chunk of rows the partial sums dgamma_partial[j] = sum dy * xhat
/// and dbeta_partial[j] = sum dy, where partial row j covers rows
/// [j * ceil(R / P), (j + 1) * ceil(R / P)) and P is the partials' first dimension: any value
/// with at most [`layernorm_max_rows_per_partial`] rows per partial row (rows past the end give
/// zeros); [`layernorm_partial_rows`] suggests one.
#[allow(clippy::too_many_arguments, reason = "one tensor per shader binding")]
pub fn layernorm_backward(
    rec: &mut Recorder<'_>,
    x: &Tensor,              // [R, C]
    gamma: &Tensor,          // [C]
    mean: &Tensor,           // [R]
    rstd: &Tensor,           // [R]
    dy: &Tensor,             // [R, C]
    dx: &Tensor,             // [R, C]
    dgamma_partial: &Tensor, // [P, C]
    dbeta_partial: &Tensor,  // [P, C]
) -> Result<()> {
    let split = RowSplit::for_rows(rec.ctx(), x.shape().last().copied().unwrap_or(0));
    layernorm_backward_with_split(rec, split, x, gamma, mean, rstd, dy, dx, dgamma_partial, dbeta_partial)
}

/// [`layernorm_backward`] with an explicit row split.
#[allow(clippy::too_many_arguments, reason = "one tensor per shader binding")]
pub fn layernorm_backward_with_split(
    rec: &mut Recorder<'_>,
    split: RowSplit,
    x: &Tensor,              // [R, C]
    gamma: &Tensor,          // [C]
    mean: &Tensor,           // [R]
    rstd: &Tensor,           // [R]
    dy: &Tensor,             // [R, C]
    dx: &Tensor,             // [R, C]
    dgamma_partial: &Tensor, // [P, C]
    dbeta_partial: &Tensor,  // [P, C]
) -> Result<()> {
    const OP: &str = "layernorm_backward";
    let (rows, cols) = rows_cols(OP, x)?;
    same_shape(OP, &[("x", x), ("dy", dy), ("dx", dx)])?;
    expect_shape(OP, "gamma", gamma, &[cols])?;
    expect_rows(OP, "mean", mean, rows, x)?;
    expect_rows(OP, "rstd", rstd, rows, x)?;
    let num_partials = match dgamma_partial.shape() {
        &[p, c] if p >= 1 && c == cols => p,
        other => {
            return Err(Error::shape(
                OP,
                format!("dgamma_partial is {other:?} but must be [P >= 1, {cols}] for x {:?}", x.shape()),
            ))
        }
    };
    same_shape(OP, &[("dgamma_partial", dgamma_partial), ("dbeta_partial", dbeta_partial)])?;
    let rows_per_partial = rows.div_ceil(num_partials);
    let act = x.element();
    let consts = [split.shader_const(), act_const(act)].concat();
    if backward_iterations(split, cols, rows_per_partial) > LOOP_BUDGET {
        return Err(Error::invalid(
            OP,
            format!(
                "{num_partials} partial rows of {rows_per_partial} rows each for x {:?} exceed the loop budget \
                 of one invocation; use at least {} partial rows (see layernorm_partial_rows)",
                x.shape(),
                rows.div_ceil(layernorm_max_rows_per_partial(cols))
            ),
        ));
    }
    let kernel = rec.ctx().kernel(
        &KernelSpec::new(
            SHADER,
            "layernorm_backward",
            &[
                Access::Read,
                Access::Read,
                Access::Read,
                Access::Read,
                Access::Read,
                Access::ReadWrite,
                Access::ReadWrite,
                Access::ReadWrite,
                Access::Uniform,
            ],
        )
        .with_consts(&consts)
        .with_elements(&[act, act, F32, F32, act, act, F32, F32]),
    )?;
    let params = BackwardParams {
        rows: rows as u32,
        cols: cols as u32,
        rows_per_partial: rows_per_partial as u32,
        num_partials: num_partials as u32,
    };
    let groups = num_partials.div_ceil(split.rows_per_workgroup()) as u32;
    rec.dispatch(&kernel, &[x, gamma, mean, rstd, dy, dx, dgamma_partial, dbeta_partial], &params, grid_1d(groups))
}

/// dgamma = sum over partial rows of dgamma_partial, likewise dbeta; with `accumulate` the sums
/// are added to the existing dgamma/dbeta (gradient accumulation).
pub fn layernorm_param_grad(
    rec: &mut Recorder<'_>,
    dgamma_partial: &Tensor, // [P, C]
    dbeta_partial: &Tensor,  // [P, C]
    dgamma: &Tensor,         // [C]
    dbeta: &Tensor,          // [C]
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "layernorm_param_grad";
    let (num_partials, cols) = match dgamma_partial.shape() {
        &[p, c] => (p, c),
        other => {
            return Err(Error::shape(OP, format!("dgamma_partial is {other:?} but must be [P, C]")));
        }
    };
    same_shape(OP, &[("dgamma_partial", dgamma_partial), ("dbeta_partial", dbeta_partial)])?;
    expect_shape(OP, "dgamma", dgamma, &[cols])?;
    expect_shape(OP, "dbeta", dbeta, &[cols])?;
    check_loop_budget(OP, num_partials.div_ceil(PARAM_GRAD_LANES) + PARAM_GRAD_LANES + 2, || {
        format!("summing {num_partials} partial rows")
    })?;
    let kernel = rec.ctx().kernel(&KernelSpec::new(
        SHADER,
        "layernorm_param_grad",
        &[Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::Uniform],
    ))?;
    let params = ParamGradParams {
        num_partials: num_partials as u32,
        cols: cols as u32,
        accumulate: accumulate as u32,
        _pad: 0,
    };
    let groups = (cols as u32).div_ceil(PARAM_GRAD_COLS);
    rec.dispatch(&kernel, &[dgamma_partial, dbeta_partial, dgamma, dbeta], &params, grid_1d(groups))
}

/// The whole backward: [`layernorm_backward`] into a scratch partial buffer, then
/// [`layernorm_param_grad`] into dgamma/dbeta (added to them with `accumulate`).
#[allow(clippy::too_many_arguments, reason = "one tensor per gradient")]
pub fn layernorm_backward_full(
    rec: &mut Recorder<'_>,
    x: &Tensor,      // [R, C]
    gamma: &Tensor,  // [C]
    mean: &Tensor,   // [R]
    rstd: &Tensor,   // [R]
    dy: &Tensor,     // [R, C]
    dx: &Tensor,     // [R, C]
    dgamma: &Tensor, // [C]
    dbeta: &Tensor,  // [C]
    accumulate: bool,
) -> Result<()> {
    let (rows, cols) = rows_cols("layernorm_backward", x)?;
    let partials = layernorm_partial_rows(rows, cols);
    let dgamma_partial = rec.ctx().empty(&[partials, cols], "layernorm.dgamma_partial")?; // [P, C]
    let dbeta_partial = rec.ctx().empty(&[partials, cols], "layernorm.dbeta_partial")?; // [P, C]

    // Held until submission, so the pool cannot hand them to an upload that would land first.
    rec.keep(dgamma_partial.clone());
    rec.keep(dbeta_partial.clone());
    layernorm_backward(rec, x, gamma, mean, rstd, dy, dx, &dgamma_partial, &dbeta_partial)?;
    layernorm_param_grad(rec, &dgamma_partial, &dbeta_partial, dgamma, dbeta, accumulate)
}
