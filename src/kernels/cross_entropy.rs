//! Softmax cross-entropy, forward and backward fused per row: `shaders/cross_entropy.wgsl`.
//!
//! Each entry point writes the per-row loss [B] and dlogits [B, K] in one dispatch. For the
//! mean loss over the batch pass `grad_scale = 1 / B` here and reduce the per-row losses on
//! the GPU with [`crate::kernels::ops::reduce_sum`] (scale 1 / B). Rows are split over
//! invocations as [`RowSplit::for_rows`] picks for the adapter; the `_with_split` functions
//! choose explicitly. Logits and dlogits are f32 or f16 (computed in f32); losses, labels
//! and soft targets are f32 (u32).

use bytemuck::{Pod, Zeroable};

use crate::gpu::Element::F32;
use crate::gpu::{grid_1d, Access, KernelSpec, Recorder, Shader, Tensor};
use crate::kernels::{act_const, check_loop_budget, expect_shape, same_shape, RowSplit};
use crate::{Error, Result};

pub const SHADER: Shader = Shader { name: "cross_entropy", source: include_str!("../../shaders/cross_entropy.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct HardParams {
    batch: u32,
    classes: u32,
    smoothing: f32,
    grad_scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SoftParams {
    batch: u32,
    classes: u32,
    grad_scale: f32,
    _pad: u32,
}

/// (B, K) of logits [B, K], checking that a row fits one invocation's loop budget.
fn batch_classes(op: &'static str, split: RowSplit, logits: &Tensor) -> Result<(usize, usize)> {
    let (b, k) = match logits.shape() {
        &[b, k] if k > 0 => (b, k),
        other => return Err(Error::shape(op, format!("logits is {other:?} but must be [B, K] with K >= 1 classes"))),
    };
    check_loop_budget(op, split.iterations_per_row(k, 3, 2), || format!("a row of {k} classes"))?;
    Ok((b, k))
}

fn check_grad_scale(op: &'static str, grad_scale: f32) -> Result<()> {
    if !grad_scale.is_finite() {
        return Err(Error::invalid(op, format!("grad_scale is {grad_scale}; it must be finite")));
    }
    Ok(())
}

/// Hard labels (u32, one per row) with label smoothing `smoothing` in [0, 1]: the target is
/// (1 - s) onehot(label) + s / K. loss[b] = -sum target log softmax(logits[b]),
/// dlogits = grad_scale * (softmax - target). A label >= K (unchecked on the host, as labels
/// live on the GPU) makes that row's loss and gradient NaN, so a bad label cannot go unnoticed.
#[allow(clippy::too_many_arguments, reason = "tensors and the loss settings")]
pub fn cross_entropy_hard(
    rec: &mut Recorder<'_>,
    logits: &Tensor,  // [B, K]
    labels: &Tensor,  // [B] u32
    loss: &Tensor,    // [B]
    dlogits: &Tensor, // [B, K]
    smoothing: f32,
    grad_scale: f32,
) -> Result<()> {
    let split = RowSplit::for_rows(rec.ctx(), logits.shape().last().copied().unwrap_or(0));
    cross_entropy_hard_with_split(rec, split, logits, labels, loss, dlogits, smoothing, grad_scale)
}

/// [`cross_entropy_hard`] with an explicit row split.
#[allow(clippy::too_many_arguments, reason = "tensors and the loss settings")]
pub fn cross_entropy_hard_with_split(
    rec: &mut Recorder<'_>,
    split: RowSplit,
    logits: &Tensor,  // [B, K]
    labels: &Tensor,  // [B] u32
    loss: &Tensor,    // [B]
    dlogits: &Tensor, // [B, K]
    smoothing: f32,
    grad_scale: f32,
) -> Result<()> {
    const OP: &str = "cross_entropy_hard";
    let (batch, classes) = batch_classes(OP, split, logits)?;
    expect_shape(OP, "labels", labels, &[batch])?;
    expect_shape(OP, "loss", loss, &[batch])?;
    same_shape(OP, &[("logits", logits), ("dlogits", dlogits)])?;
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(Error::invalid(OP, format!("label smoothing is {smoothing}; it must lie in [0, 1]")));
    }
    check_grad_scale(OP, grad_scale)?;
    let act = logits.element();
    let consts = [split.shader_const(), act_const(act)].concat();
    let kernel = rec.ctx().kernel(
        &KernelSpec::new(
            SHADER,
            "cross_entropy_hard",
            &[Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::Uniform],
        )
        .with_consts(&consts)
        .with_elements(&[act, F32, F32, act]),
    )?;
    let params = HardParams { batch: batch as u32, classes: classes as u32, smoothing, grad_scale };
    let groups = batch.div_ceil(split.rows_per_workgroup()) as u32;
    rec.dispatch(&kernel, &[logits, labels, loss, dlogits], &params, grid_1d(groups))
}

/// Soft targets [B, K] (mixup/cutmix): loss[b] = -sum_k targets log softmax(logits[b]),
/// dlogits = grad_scale * (softmax * sum_k targets - targets), which is softmax - targets
/// for targets that sum to 1.
pub fn cross_entropy_soft(
    rec: &mut Recorder<'_>,
    logits: &Tensor,  // [B, K]
    targets: &Tensor, // [B, K]
    loss: &Tensor,    // [B]
    dlogits: &Tensor, // [B, K]
    grad_scale: f32,
) -> Result<()> {
    let split = RowSplit::for_rows(rec.ctx(), logits.shape().last().copied().unwrap_or(0));
    cross_entropy_soft_with_split(rec, split, logits, targets, loss, dlogits, grad_scale)
}

/// [`cross_entropy_soft`] with an explicit row split.
pub fn cross_entropy_soft_with_split(
    rec: &mut Recorder<'_>,
    split: RowSplit,
    logits: &Tensor,  // [B, K]
    targets: &Tensor, // [B, K]
    loss: &Tensor,    // [B]
    dlogits: &Tensor, // [B, K]
    grad_scale: f32,
) -> Result<()> {
    const OP: &str = "cross_entropy_soft";
    let (batch, classes) = batch_classes(OP, split, logits)?;
    same_shape(OP, &[("logits", logits), ("targets", targets), ("dlogits", dlogits)])?;
    expect_shape(OP, "loss", loss, &[batch])?;
    check_grad_scale(OP, grad_scale)?;
    let act = logits.element();
    let consts = [split.shader_const(), act_const(act)].concat();
    let kernel = rec.ctx().kernel(
        &KernelSpec::new(
            SHADER,
            "cross_entropy_soft",
            &[Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::Uniform],
        )
        .with_consts(&consts)
        .with_elements(&[act, F32, F32, act]),
    )?;
    let params = SoftParams { batch: batch as u32, classes: classes as u32, grad_scale, _pad: 0 };
    let groups = batch.div_ceil(split.rows_per_workgroup()) as u32;
    rec.dispatch(&kernel, &[logits, targets, loss, dlogits], &params, grid_1d(groups))
}
