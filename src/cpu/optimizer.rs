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

/// `[norm, clip]`: norm = sqrt(sum partials), clip = min(1, max_norm / (norm + 1e-6)),
/// or 1 when `max_norm <= 0` (PyTorch `clip_grad_norm_`).
pub fn grad_norm_finish(partials: &[f64], max_norm: f64) -> Vec<f64> {
    let norm = partials.iter().sum::<f64>().sqrt();
    let clip = if max_norm > 0.0 { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
    vec![norm, clip]
}

/// Both passes: `[norm, clip]` of the gradient arena.
pub fn grad_norm(grads: &[f64], max_norm: f64) -> Vec<f64> {
    grad_norm_finish(&grad_norm_partial(grads), max_norm)
}

/// One AdamW step; `stats[1]` is the clip factor, weight decay only on `[0, decay_end)`.
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
