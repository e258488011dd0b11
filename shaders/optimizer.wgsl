// Optimizer step over flat arenas: parameters, gradients and the AdamW moments m, v
// each live in one buffer, so a whole training step's update is a handful of dispatches.
//
//   grad_norm_partial  sums of squares of the gradient arena, one per CHUNK elements
//   grad_norm_finish   partials -> stats = [global L2 norm, gradient factor, finite, 0]
//   adamw_update       AdamW (decoupled weight decay) with gradients scaled by stats[1], per-group steps
//   ema_update         ema = d * ema + (1 - d) * param
//
// Loss scaling: the stored gradients may be `scale` times the true ones (f16 activation
// gradients); grad_norm_finish unscales the norm and folds 1 / scale into the factor, and
// when any gradient is inf or NaN (an f16 overflow) it clears `finite`: AdamW and the EMAs
// then leave everything untouched, the step is skipped.
//
// The clip factor never leaves the GPU: adamw_update reads it from the stats buffer, so
// norm, clipping and update are recorded into the same submission. The norm reduction
// is deterministic: a fixed assignment of elements to threads and fixed tree orders,
// no atomics.

const WG: u32 = 256u;
// Elements per thread in grad_norm_partial; one workgroup covers CHUNK = WG * ITEMS.
// Must match `GRAD_NORM_CHUNK` in src/kernels/optimizer.rs.
const ITEMS: u32 = 16u;
const CHUNK: u32 = WG * ITEMS;
// PyTorch clip_grad_norm_: clip = min(1, max_norm / (norm + 1e-6)).
const CLIP_EPS: f32 = 1e-6;

var<workgroup> scratch: array<f32, WG>;

// Sums `scratch` over the workgroup; every invocation must call it (it has barriers).
fn workgroup_sum(lid: u32, value: f32) -> f32 {
    scratch[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            scratch[lid] = scratch[lid] + scratch[lid + stride];
        }
        workgroupBarrier();
    }
    return scratch[0];
}

struct PartialParams {
    n: u32,
    num_partials: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> part_grads: array<f32>;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<uniform> part_p: PartialParams;

// partials[j] = sum of g[i]^2 over i in [j * CHUNK, (j + 1) * CHUNK)
@compute @workgroup_size(WG)
fn grad_norm_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let group = wg.x + wg.y * nwg.x;
    let base = group * CHUNK;
    var acc = 0.0;
    // Strided so that neighbouring threads read neighbouring elements.
    for (var k = 0u; k < ITEMS; k = k + 1u) {
        let i = base + k * WG + lid;
        if (i < part_p.n) {
            let g = part_grads[i];
            acc = acc + g * g;
        }
    }
    // No early return above: the barriers in workgroup_sum need uniform control flow.
    let total = workgroup_sum(lid, acc);
    if (lid == 0u && group < part_p.num_partials) {
        partials[group] = total;
    }
}

struct FinishParams {
    num_partials: u32,
    // <= 0 disables clipping (clip factor 1).
    max_norm: f32,
    // 1 / the loss scale the gradients carry.
    inv_scale: f32,
    _pad0: u32,
}

// Whether x is neither inf nor NaN, from its bits (compilers may assume floats finite).
fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@group(0) @binding(0) var<storage, read> fin_partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> fin_stats: array<f32>;
@group(0) @binding(2) var<uniform> fin_p: FinishParams;

// norm = sqrt(sum partials) / scale, clip = min(1, max_norm / (norm + 1e-6));
// stats = [norm, clip / scale, finite, 0]; one workgroup.
@compute @workgroup_size(WG)
fn grad_norm_finish(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var j = lid; j < fin_p.num_partials; j = j + WG) {
        acc = acc + fin_partials[j];
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) {
        let norm = sqrt(total) * fin_p.inv_scale;
        var clip = 1.0;
        if (fin_p.max_norm > 0.0) {
            clip = min(1.0, fin_p.max_norm / (norm + CLIP_EPS));
        }
        fin_stats[0] = norm;
        fin_stats[1] = clip * fin_p.inv_scale;
        fin_stats[2] = select(0.0, 1.0, is_finite(total));
        fin_stats[3] = 0.0;
    }
}

// Host-computed scalars; 1 - beta and the bias corrections come from f64 on the host
// (as PyTorch does) rather than from f32 arithmetic here.
struct AdamParams {
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    n: u32,
    // Elements [0, decay_end) get weight decay, [decay_end, n) do not.
    decay_end: u32,
}

// Elements per entry of the group table. Must match `ADAMW_GROUP_CHUNK` in optimizer.rs.
const GROUP_CHUNK: u32 = 128u;

@group(0) @binding(0) var<storage, read> adam_grads: array<f32>;
@group(0) @binding(1) var<storage, read> adam_stats: array<f32>;
// The group of each GROUP_CHUNK elements: tensors that share a step count (a block of the
// ViT, or everything outside the blocks).
@group(0) @binding(2) var<storage, read> adam_groups: array<u32>;
// Per group, written every step: (lr, 1 - beta1^t, 1 - beta2^t, apply), t the group's
// 1-based step; apply 0 leaves the group untouched (a block the sub-network skipped).
@group(0) @binding(3) var<storage, read> adam_steps: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> adam_params: array<f32>;
@group(0) @binding(5) var<storage, read_write> adam_m: array<f32>;
@group(0) @binding(6) var<storage, read_write> adam_v: array<f32>;
@group(0) @binding(7) var<uniform> adam_p: AdamParams;

// g = grad * clip; p -= lr wd p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr (m / bc1) / (sqrt(v / bc2) + eps)
@compute @workgroup_size(WG)
fn adamw_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= adam_p.n || adam_stats[2] == 0.0) {
        return;
    }
    let step = adam_steps[adam_groups[i / GROUP_CHUNK]];
    if (step.w == 0.0) {
        return;
    }
    let lr = step.x;
    let g = adam_grads[i] * adam_stats[1];
    let wd = select(0.0, adam_p.weight_decay, i < adam_p.decay_end);
    var w = adam_params[i];
    w = w - lr * wd * w;
    let m = adam_p.beta1 * adam_m[i] + adam_p.one_minus_beta1 * g;
    let v = adam_p.beta2 * adam_v[i] + adam_p.one_minus_beta2 * g * g;
    adam_m[i] = m;
    adam_v[i] = v;
    adam_params[i] = w - lr * (m / step.y) / (sqrt(v / step.z) + adam_p.eps);
}

struct EmaParams {
    n: u32,
    decay: f32,
    // From f64 on the host, so that decays near 1 keep their precision.
    one_minus_decay: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> ema_params: array<f32>;
@group(0) @binding(1) var<storage, read> ema_stats: array<f32>;
@group(0) @binding(2) var<storage, read_write> ema: array<f32>;
@group(0) @binding(3) var<uniform> ema_p: EmaParams;

// ema[i] = d * ema[i] + (1 - d) * param[i], unless the step was skipped (stats[2] = 0)
@compute @workgroup_size(WG)
fn ema_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i < ema_p.n && ema_stats[2] != 0.0) {
        ema[i] = ema_p.decay * ema[i] + ema_p.one_minus_decay * ema_params[i];
    }
}
