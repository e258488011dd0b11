//! CPU twins of `shaders/optimizer.wgsl` (f64): gradient norm with clipping, AdamW, EMA.
//! Same arena contract as `kernels::optimizer`: decayed elements first, `decay_end` splits.

use crate::kernels::optimizer::{AdamW, GRAD_NORM_CHUNK};

/// Sum of squares of each chunk of [`GRAD_NORM_CHUNK`] elements (at least one partial).
pub fn grad_norm_partial(grads: &[f64]) -> Vec<f64> {
    if grads.is_empty() {
        return vec![0.0];
    }
    grads.chunks(GRAD_NORM_CHUNK).map(|chunk| chunk.iter().map(|g| g * g).sum()).collect()
}

/// `[norm, clip · inv_scale, finite, 0]`: norm = sqrt(sum partials) · inv_scale, clip =
/// min(1, max_norm / (norm + 1e-6)), or 1 when `max_norm <= 0` (PyTorch `clip_grad_norm_`);
/// finite is 1 unless the sum is inf or NaN (`inv_scale` undoes a loss scale).
pub fn grad_norm_finish(partials: &[f64], max_norm: f64, inv_scale: f64) -> Vec<f64> {
    let total = partials.iter().sum::<f64>();
    let norm = total.sqrt() * inv_scale;
    let clip = if max_norm > 0.0 { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
    vec![norm, clip * inv_scale, f64::from(u8::from(total.is_finite())), 0.0]
}

/// Both passes: the stats of an unscaled gradient arena.
pub fn grad_norm(grads: &[f64], max_norm: f64) -> Vec<f64> {
    grad_norm_finish(&grad_norm_partial(grads), max_norm, 1.0)
}

/// One AdamW step; `stats[1]` is the factor applied to the gradients, `stats[2]` 0 skips
/// the step; weight decay only on `[0, decay_end)`.
/// Returns the new (params, m, v).
#[allow(clippy::too_many_arguments, reason = "mirrors the GPU entry point's bindings and scalars")]
pub fn adamw_update(
    params: &[f64],
    grads: &[f64],
    m: &[f64],
    v: &[f64],
    stats: &[f64],
    hp: &AdamW,
    step: u32,
    decay_end: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    if stats[2] == 0.0 {
        // A skipped step (a gradient overflowed): nothing moves.
        return (params.to_vec(), m.to_vec(), v.to_vec());
    }
    let (bc1, bc2) = hp.bias_corrections(step);
    let clip = stats[1];
    let mut new_params = Vec::with_capacity(params.len());
    let mut new_m = Vec::with_capacity(params.len());
    let mut new_v = Vec::with_capacity(params.len());
    for i in 0..params.len() {
        let g = grads[i] * clip;
        let wd = if i < decay_end { hp.weight_decay } else { 0.0 };
        let p = params[i] - hp.lr * wd * params[i];
        let mi = hp.beta1 * m[i] + (1.0 - hp.beta1) * g;
        let vi = hp.beta2 * v[i] + (1.0 - hp.beta2) * g * g;
        new_params.push(p - hp.lr * (mi / bc1) / ((vi / bc2).sqrt() + hp.eps));
        new_m.push(mi);
        new_v.push(vi);
    }
    (new_params, new_m, new_v)
}

/// `decay * ema + (1 - decay) * params` for each `(ema, decay)`.
pub fn ema_update(params: &[f64], emas: &[(&[f64], f64)]) -> Vec<Vec<f64>> {
    emas.iter()
        .map(|&(ema, decay)| ema.iter().zip(params).map(|(e, p)| decay * e + (1.0 - decay) * p).collect())
        .collect()
}
