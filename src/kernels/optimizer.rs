//! The optimizer step over flat arenas: global gradient norm with clipping, AdamW and
//! EMA updates (`shaders/optimizer.wgsl`).
//!
//! Arena contract: parameters, gradients and the AdamW moments `m`, `v` each live in
//! one flat buffer with the same layout (a tensor's slice is a [`Tensor::view`]). The
//! trainer lays out the parameter arena with every weight-decayed tensor first and the
//! non-decayed ones (biases, norm weights, cls/pos tokens) after them; `decay_end` is the
//! element index where the non-decayed region starts. [`adamw_update`] then covers the
//! whole arena in one dispatch, with weight decay on `[0, decay_end)` only.
//!
//! One training step records, with no CPU readback in between:
//!
//! ```text
//! grad_norm(rec, &grads, &partials, &stats, max_norm, 1.0)?;     // stats = [norm, clip, finite, 0]
//! adamw_update(rec, &grads, &stats, &params, &m, &v, &hp, step, decay_end)?;
//! ema_update(rec, &params, &stats, &[(&ema, 0.9999)])?;
//! ```
//!
//! With loss scaling the gradients carry a factor `scale`: pass `1 / scale` to
//! [`grad_norm`], which reports the true norm and folds the unscaling into the factor
//! AdamW applies; an inf or NaN gradient clears `finite` and AdamW and the EMA updates
//! skip the step on the GPU (nothing changes, the host learns it from `stats`).

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Access, KernelSpec, Recorder, Shader, Tensor};
use crate::kernels::{expect_shape, same_shape};
use crate::{Error, Result};

pub const SHADER: Shader = Shader { name: "optimizer", source: include_str!("../../shaders/optimizer.wgsl") };
const WG: u32 = 256;
/// Gradient elements per partial sum of squares (one workgroup: 256 threads x 16).
/// Must match `CHUNK` in the WGSL.
pub const GRAD_NORM_CHUNK: usize = 4096;
/// Length of the stats tensor written by [`grad_norm_finish`]: `[global L2 norm of the
/// true gradient, factor AdamW applies to the stored gradients (clip / loss scale),
/// finite (1: apply the step, 0: an inf or NaN gradient, skip it), 0]`.
pub const GRAD_STATS_LEN: usize = 4;

/// Length of the scratch tensor [`grad_norm_partial`] writes for an `n`-element gradient
/// arena (at least 1, so that an empty arena still has a valid binding).
pub fn grad_norm_partials_len(n: usize) -> usize {
    n.div_ceil(GRAD_NORM_CHUNK).max(1)
}

/// AdamW hyperparameters of one step (PyTorch `torch.optim.AdamW` semantics). f64 so
/// that `1 - beta` and the bias corrections are formed before rounding to f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to the decayed region only.
    pub weight_decay: f64,
}

impl Default for AdamW {
    /// PyTorch's defaults.
    fn default() -> Self {
        AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

impl AdamW {
    /// Bias corrections `(1 - beta1^t, 1 - beta2^t)` for the 1-based step `t`.
    pub fn bias_corrections(&self, step: u32) -> (f64, f64) {
        let t = step as i32;
        (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t))
    }

    /// A group's entry of [`adamw_update_grouped`]'s step table: `[lr, 1 - beta1^t,
    /// 1 - beta2^t, 1]` for its 1-based step `t`, or zeros (apply 0) for `None`, a group
    /// that takes no update.
    pub fn group_step(&self, step: Option<u32>) -> [f32; 4] {
        match step {
            None => [0.0; 4],
            Some(t) => {
                let (bc1, bc2) = self.bias_corrections(t);
                [self.lr as f32, bc1 as f32, bc2 as f32, 1.0]
            }
        }
    }
}

/// Elements per entry of [`adamw_update_grouped`]'s group table: every tensor of a
/// parameter arena starts at a multiple of it ([`crate::GpuContext::arena_align`] is one).
/// Must match `GROUP_CHUNK` in the WGSL.
pub const ADAMW_GROUP_CHUNK: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PartialParams {
    n: u32,
    num_partials: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct FinishParams {
    num_partials: u32,
    max_norm: f32,
    inv_scale: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AdamParams {
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    n: u32,
    decay_end: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EmaParams {
    n: u32,
    decay: f32,
    one_minus_decay: f32,
    _pad: u32,
}

/// Arenas are indexed with u32 in the WGSL.
fn check_len(op: &'static str, t: &Tensor) -> Result<u32> {
    u32::try_from(t.numel())
        .map_err(|_| Error::shape(op, format!("arena {:?} has more than 2^32 - 1 elements", t.shape())))
}

/// partials[j] = sum of grads[i]^2 over the j-th chunk of [`GRAD_NORM_CHUNK`] elements.
pub fn grad_norm_partial(rec: &mut Recorder<'_>, grads: &Tensor, partials: &Tensor) -> Result<()> {
    let op = "grad_norm_partial";
    let n = check_len(op, grads)?;
    let num_partials = grad_norm_partials_len(n as usize);
    expect_shape(op, "partials", partials, &[num_partials])?;
    let kernel = rec.ctx().kernel(&KernelSpec::new(
        SHADER,
        "grad_norm_partial",
        &[Access::Read, Access::ReadWrite, Access::Uniform],
    ))?;
    let params = PartialParams { n, num_partials: num_partials as u32, _pad: [0; 2] };
    rec.dispatch(&kernel, &[grads, partials], &params, grid_1d(num_partials as u32))
}

/// stats = [norm, clip · inv_scale, finite, 0] with norm = sqrt(sum partials) · inv_scale and,
/// as PyTorch's `clip_grad_norm_`, clip = min(1, max_norm / (norm + 1e-6)); `max_norm <= 0`
/// disables clipping (clip = 1). `inv_scale` undoes a loss scale (1 without one); finite is
/// 0 when the sum of squares is inf or NaN. One workgroup.
pub fn grad_norm_finish(
    rec: &mut Recorder<'_>,
    partials: &Tensor,
    stats: &Tensor,
    max_norm: f32,
    inv_scale: f32,
) -> Result<()> {
    let op = "grad_norm_finish";
    if partials.shape().len() != 1 {
        return Err(Error::shape(op, format!("partials is {:?} but must be 1-D", partials.shape())));
    }
    expect_shape(op, "stats", stats, &[GRAD_STATS_LEN])?;
    if !max_norm.is_finite() {
        return Err(Error::invalid(op, format!("max_norm {max_norm} must be finite (<= 0 disables clipping)")));
    }
    if !(inv_scale.is_finite() && inv_scale > 0.0) {
        return Err(Error::invalid(op, format!("inverse loss scale {inv_scale} must be finite and > 0")));
    }
    let kernel = rec.ctx().kernel(&KernelSpec::new(
        SHADER,
        "grad_norm_finish",
        &[Access::Read, Access::ReadWrite, Access::Uniform],
    ))?;
    let params = FinishParams { num_partials: check_len(op, partials)?, max_norm, inv_scale, _pad: 0 };
    rec.dispatch(&kernel, &[partials, stats], &params, [1, 1, 1])
}

/// Global L2 norm of the gradient arena and the factor AdamW applies, left on the GPU in
/// `stats` (`[GRAD_STATS_LEN]`, see [`grad_norm_finish`]). `partials` is caller-owned scratch of
/// [`grad_norm_partials_len`]`(grads.numel())` elements, so that nothing is allocated
/// (and nothing can alias) while a step is being recorded.
pub fn grad_norm(
    rec: &mut Recorder<'_>,
    grads: &Tensor,
    partials: &Tensor,
    stats: &Tensor,
    max_norm: f32,
    inv_scale: f32,
) -> Result<()> {
    grad_norm_partial(rec, grads, partials)?;
    grad_norm_finish(rec, partials, stats, max_norm, inv_scale)
}

/// One AdamW step over the whole arena, in one dispatch, unless `stats[2]` is 0 (a skipped
/// step): `g = grads * stats[1]` (the factor from [`grad_norm`], read on the GPU), then for each element
/// `p -= lr wd p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr (m/bc1) / (sqrt(v/bc2) + eps)`
/// with `bc = 1 - beta^step` and `wd = hp.weight_decay` on `[0, decay_end)`, 0 after it
/// (see the module doc for the arena layout). `step` is 1-based. The step's values go to
/// the GPU as a one-group table (see [`adamw_update_grouped`]).
#[allow(clippy::too_many_arguments, reason = "one tensor per WGSL binding plus the step's scalars")]
pub fn adamw_update(
    rec: &mut Recorder<'_>,
    grads: &Tensor,
    stats: &Tensor,
    params: &Tensor,
    m: &Tensor,
    v: &Tensor,
    hp: &AdamW,
    step: u32,
    decay_end: usize,
) -> Result<()> {
    if step == 0 {
        return Err(Error::invalid("adamw_update", "step is 1-based; step 0 has no bias correction"));
    }
    let ctx = rec.ctx();
    let chunks = params.numel().div_ceil(ADAMW_GROUP_CHUNK).max(1);
    let groups = ctx.upload_u32(&vec![0; chunks], &[chunks], "adamw.groups")?;
    let steps = ctx.upload(&hp.group_step(Some(step)), &[4], "adamw.steps")?;
    adamw_update_grouped(rec, grads, stats, &groups, &steps, params, m, v, hp, decay_end)?;
    rec.keep(groups);
    rec.keep(steps);
    Ok(())
}

/// [`adamw_update`] with a step count per group of tensors, read on the GPU: `groups`
/// (u32) gives the group of every [`ADAMW_GROUP_CHUNK`] elements, and `steps` holds each
/// group's [`AdamW::group_step`] (its learning rate, bias corrections, and whether it is
/// updated at all). A training step writes `steps` and leaves its recorded dispatches as
/// they are; `hp.lr` is not read.
#[allow(clippy::too_many_arguments, reason = "one tensor per WGSL binding plus the constant hyperparameters")]
pub fn adamw_update_grouped(
    rec: &mut Recorder<'_>,
    grads: &Tensor,
    stats: &Tensor,
    groups: &Tensor,
    steps: &Tensor,
    params: &Tensor,
    m: &Tensor,
    v: &Tensor,
    hp: &AdamW,
    decay_end: usize,
) -> Result<()> {
    let op = "adamw_update";
    same_shape(op, &[("params", params), ("grads", grads), ("m", m), ("v", v)])?;
    expect_shape(op, "stats", stats, &[GRAD_STATS_LEN])?;
    let n = check_len(op, params)?;
    expect_shape(op, "groups", groups, &[(n as usize).div_ceil(ADAMW_GROUP_CHUNK).max(1)])?;
    if steps.shape().len() != 1 || steps.numel() == 0 || !steps.numel().is_multiple_of(4) {
        return Err(Error::shape(op, format!("steps is {:?}; it holds 4 values per group", steps.shape())));
    }
    if decay_end > n as usize {
        return Err(Error::invalid(
            op,
            format!("decay_end {decay_end} is past the end of the {n}-element arena {:?}", params.shape()),
        ));
    }
    let kernel = rec.ctx().kernel(&KernelSpec::new(
        SHADER,
        "adamw_update",
        &[
            Access::Read,
            Access::Read,
            Access::Read,
            Access::Read,
            Access::ReadWrite,
            Access::ReadWrite,
            Access::ReadWrite,
            Access::Uniform,
        ],
    ))?;
    let uniform = AdamParams {
        beta1: hp.beta1 as f32,
        beta2: hp.beta2 as f32,
        eps: hp.eps as f32,
        weight_decay: hp.weight_decay as f32,
        one_minus_beta1: (1.0 - hp.beta1) as f32,
        one_minus_beta2: (1.0 - hp.beta2) as f32,
        n,
        decay_end: decay_end as u32,
    };
    rec.dispatch(&kernel, &[grads, stats, groups, steps, params, m, v], &uniform, grid_1d(n.div_ceil(WG)))
}

/// `ema = decay * ema + (1 - decay) * params` for each `(ema, decay)`, one dispatch each,
/// unless `stats[2]` (from [`grad_norm`]) is 0: a skipped step moves no EMA. Every EMA
/// arena has the parameter arena's shape; decays lie in [0, 1].
pub fn ema_update(rec: &mut Recorder<'_>, params: &Tensor, stats: &Tensor, emas: &[(&Tensor, f64)]) -> Result<()> {
    let op = "ema_update";
    let n = check_len(op, params)?;
    expect_shape(op, "stats", stats, &[GRAD_STATS_LEN])?;
    for &(ema, decay) in emas {
        same_shape(op, &[("params", params), ("ema", ema)])?;
        if !(0.0..=1.0).contains(&decay) {
            return Err(Error::invalid(op, format!("decay {decay} must lie in [0, 1]")));
        }
    }
    let kernel = rec.ctx().kernel(&KernelSpec::new(
        SHADER,
        "ema_update",
        &[Access::Read, Access::Read, Access::ReadWrite, Access::Uniform],
    ))?;
    for &(ema, decay) in emas {
        let uniform = EmaParams { n, decay: decay as f32, one_minus_decay: (1.0 - decay) as f32, _pad: 0 };
        rec.dispatch(&kernel, &[params, stats, ema], &uniform, grid_1d(n.div_ceil(WG)))?;
    }
    Ok(())
}
