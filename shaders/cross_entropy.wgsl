// Softmax cross-entropy over logits z [B, K], fused: one kernel per row writes the loss [B] and
// dlogits [B, K] = grad_scale * dloss/dz (grad_scale = 1/B gives the gradient of the mean loss).
// Max-subtracted softmax: p = exp(z - m) / se with m = max z, se = sum exp(z - m), lse = m + log se.
//
// THREADS_PER_ROW invocations share a row (specialised by the host): WG on GPUs (coalesced loads),
// 1 on CPU adapters such as lavapipe, where barriers are coroutine switches. Row reductions with
// several invocations per row take one barrier each: every invocation writes its partial, then
// combines the row's partials in the same order (deterministic, the same value everywhere).

struct HardParams {
    batch: u32,
    classes: u32,
    // Label smoothing s: the target is (1 - s) onehot(label) + s / K.
    smoothing: f32,
    grad_scale: f32,
}

struct SoftParams {
    batch: u32,
    classes: u32,
    grad_scale: f32,
    _pad0: u32,
}

const WG: u32 = 64u;
// The storage type of the logits and their gradient (f16: computed in f32, rounded once on
// store); losses and soft targets are f32.
alias Act = f32;
// A divisor of WG; the workgroup handles WG / THREADS_PER_ROW rows side by side.
const THREADS_PER_ROW: u32 = 64u;
const ROWS_PER_WG: u32 = WG / THREADS_PER_ROW;

var<workgroup> red_max: array<f32, WG>;
var<workgroup> red_sums: array<vec3<f32>, WG>;

// A quiet NaN. `zero` must be a runtime 0: a constant expression that is NaN is an error in WGSL
// (Chrome's compiler rejects the shader).
fn nan(zero: u32) -> f32 {
    return bitcast<f32>(0x7fc00000u | zero);
}

// Maximum of `v` over the invocations of this row; call in uniform control flow.
fn row_max(lid: u32, v: f32) -> f32 {
    if (THREADS_PER_ROW == 1u) {
        return v;
    }
    red_max[lid] = v;
    workgroupBarrier();
    let first = lid - lid % THREADS_PER_ROW;
    var m = red_max[first];
    for (var i = 1u; i < THREADS_PER_ROW; i++) {
        m = max(m, red_max[first + i]);
    }
    return m;
}

// Sums of `v` (up to three quantities) over the invocations of this row.
fn row_sums(lid: u32, v: vec3<f32>) -> vec3<f32> {
    if (THREADS_PER_ROW == 1u) {
        return v;
    }
    red_sums[lid] = v;
    workgroupBarrier();
    let first = lid - lid % THREADS_PER_ROW;
    var total = vec3<f32>(0.0);
    for (var i = 0u; i < THREADS_PER_ROW; i++) {
        total += red_sums[first + i];
    }
    return total;
}

@group(0) @binding(0) var<storage, read> logits: array<Act>;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<Act>;
@group(0) @binding(4) var<uniform> hp: HardParams;

// Hard labels with smoothing s: loss = (1 - s)(lse - z[label]) + s (lse - mean z),
// dlogits = grad_scale (p - target). A label >= K makes the row's loss and gradient NaN.
@compute @workgroup_size(WG)
fn cross_entropy_hard(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let row = (wg.x + wg.y * nwg.x) * ROWS_PER_WG + lid / THREADS_PER_ROW;
    let lane = lid % THREADS_PER_ROW;
    // Rows past the end loop zero times but still meet the barriers.
    let valid = row < hp.batch;
    let k = select(0u, hp.classes, valid);
    let base = row * hp.classes;

    var m = -3.0e38;
    for (var c = lane; c < k; c += THREADS_PER_ROW) {
        m = max(m, f32(logits[base + c]));
    }
    m = row_max(lid, m);

    // sum exp(z - m), and sum (m - z) for the smoothing term, in one pass.
    var part = vec3<f32>(0.0);
    for (var c = lane; c < k; c += THREADS_PER_ROW) {
        let d = f32(logits[base + c]) - m;
        part += vec3<f32>(exp(d), -d, 0.0);
    }
    let sums = row_sums(lid, part);
    if (!valid) {
        return;
    }

    let label = labels[row];
    let s = hp.smoothing;
    let log_se = log(sums.x);
    let off = s / f32(k);
    let on = 1.0 - s + off;
    if (label >= k) {
        for (var c = lane; c < k; c += THREADS_PER_ROW) {
            dlogits[base + c] = Act(nan(label - label));
        }
        if (lane == 0u) {
            loss[row] = nan(label - label);
        }
        return;
    }
    for (var c = lane; c < k; c += THREADS_PER_ROW) {
        let p = exp(f32(logits[base + c]) - m) / sums.x;
        let t = select(off, on, c == label);
        dlogits[base + c] = Act(hp.grad_scale * (p - t));
    }
    if (lane == 0u) {
        // lse - z = (m - z) + log se, so no large numbers cancel.
        let nll = m - f32(logits[base + label]) + log_se;
        let mean_nll = sums.y / f32(k) + log_se;
        loss[row] = (1.0 - s) * nll + s * mean_nll;
    }
}

@group(0) @binding(0) var<storage, read> slogits: array<Act>;
@group(0) @binding(1) var<storage, read> targets: array<f32>;
@group(0) @binding(2) var<storage, read_write> sloss: array<f32>;
@group(0) @binding(3) var<storage, read_write> sdlogits: array<Act>;
@group(0) @binding(4) var<uniform> sp: SoftParams;

// Soft targets t [B, K] (mixup/cutmix): loss = sum t (lse - z),
// dlogits = grad_scale (p sum t - t) (= p - t when the targets sum to 1).
@compute @workgroup_size(WG)
fn cross_entropy_soft(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let row = (wg.x + wg.y * nwg.x) * ROWS_PER_WG + lid / THREADS_PER_ROW;
    let lane = lid % THREADS_PER_ROW;
    let valid = row < sp.batch;
    let k = select(0u, sp.classes, valid);
    let base = row * sp.classes;

    var m = -3.0e38;
    for (var c = lane; c < k; c += THREADS_PER_ROW) {
        m = max(m, f32(slogits[base + c]));
    }
    m = row_max(lid, m);

    // sum exp(z - m), sum t and sum t (m - z) in one pass.
    var part = vec3<f32>(0.0);
    for (var c = lane; c < k; c += THREADS_PER_ROW) {
        let d = f32(slogits[base + c]) - m;
        let t = targets[base + c];
        part += vec3<f32>(exp(d), t, -t * d);
    }
    let sums = row_sums(lid, part);
    if (!valid) {
        return;
    }

    for (var c = lane; c < k; c += THREADS_PER_ROW) {
        let p = exp(f32(slogits[base + c]) - m) / sums.x;
        sdlogits[base + c] = Act(sp.grad_scale * (p * sums.y - targets[base + c]));
    }
    if (lane == 0u) {
        sloss[row] = sums.z + sums.y * log(sums.x);
    }
}
