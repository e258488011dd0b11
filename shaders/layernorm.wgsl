// LayerNorm over the last dimension C of x [R, C] (R = rows, e.g. B*N tokens), as in PyTorch/timm:
// y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps), biased variance.
//
// THREADS_PER_ROW invocations share a row (specialised by the host): WG on GPUs, where a workgroup
// per row gives coalesced loads, and 1 on CPU adapters (lavapipe), where a workgroup barrier is a
// coroutine switch and one invocation per row with plain loops is far faster. Row sums with
// several invocations per row go through workgroup memory with a single barrier: every
// invocation writes its partial, then adds the row's partials in the same order, so all see the
// same deterministic total.
// dgamma/dbeta are column sums over rows: the backward writes one partial row per chunk of rows,
// and `layernorm_param_grad` adds the partial rows in a fixed order (no float atomics).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad0: u32,
}

struct BackwardParams {
    rows: u32,
    cols: u32,
    // Consecutive rows summed into one partial row; the partial buffer has num_partials rows.
    rows_per_partial: u32,
    num_partials: u32,
}

struct ParamGradParams {
    num_partials: u32,
    cols: u32,
    // 1: add into dgamma/dbeta (gradient accumulation); 0: overwrite.
    accumulate: u32,
    _pad0: u32,
}

const WG: u32 = 64u;
// The storage type of x, y, gamma, beta, dy and dx (f16: every load widens to f32, a
// store rounds once). mean, rstd and the dgamma/dbeta sums are always f32.
alias Act = f32;
// A divisor of WG; the workgroup handles WG / THREADS_PER_ROW rows side by side.
const THREADS_PER_ROW: u32 = 64u;
const ROWS_PER_WG: u32 = WG / THREADS_PER_ROW;

var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;
// The backward alternates between two sets of slots by step parity, so an invocation already
// writing step s+1 never overwrites slots a slower one still reads for step s (and none can
// reach step s+2 before every invocation has passed step s+1's barrier).
var<workgroup> red_g: array<array<f32, WG>, 2>;
var<workgroup> red_gx: array<array<f32, WG>, 2>;

// Sum over the invocations of this row of `v` (slots red_a); call in uniform control flow.
fn row_sum_a(lid: u32, v: f32) -> f32 {
    if (THREADS_PER_ROW == 1u) {
        return v;
    }
    red_a[lid] = v;
    workgroupBarrier();
    let first = lid - lid % THREADS_PER_ROW;
    var total = 0.0;
    for (var i = 0u; i < THREADS_PER_ROW; i++) {
        total += red_a[first + i];
    }
    return total;
}

// As row_sum_a with slots red_b, so the two sums of the forward need no barrier between them.
fn row_sum_b(lid: u32, v: f32) -> f32 {
    if (THREADS_PER_ROW == 1u) {
        return v;
    }
    red_b[lid] = v;
    workgroupBarrier();
    let first = lid - lid % THREADS_PER_ROW;
    var total = 0.0;
    for (var i = 0u; i < THREADS_PER_ROW; i++) {
        total += red_b[first + i];
    }
    return total;
}

// Both row sums of the backward at once, in slots of parity `slot`.
fn row_sums_g(lid: u32, slot: u32, g: f32, gx: f32) -> vec2<f32> {
    if (THREADS_PER_ROW == 1u) {
        return vec2<f32>(g, gx);
    }
    red_g[slot][lid] = g;
    red_gx[slot][lid] = gx;
    workgroupBarrier();
    let first = lid - lid % THREADS_PER_ROW;
    var total = vec2<f32>(0.0, 0.0);
    for (var i = 0u; i < THREADS_PER_ROW; i++) {
        total += vec2<f32>(red_g[slot][first + i], red_gx[slot][first + i]);
    }
    return total;
}

@group(0) @binding(0) var<storage, read> x: array<Act>;
@group(0) @binding(1) var<storage, read> gamma: array<Act>;
@group(0) @binding(2) var<storage, read> beta: array<Act>;
@group(0) @binding(3) var<storage, read_write> y: array<Act>;
@group(0) @binding(4) var<storage, read_write> mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

// y[r, :] = layernorm(x[r, :]); saves mean[r] and rstd[r] for the backward.
@compute @workgroup_size(WG)
fn layernorm_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let row = (wg.x + wg.y * nwg.x) * ROWS_PER_WG + lid / THREADS_PER_ROW;
    let lane = lid % THREADS_PER_ROW;
    // Rows past the end loop zero times but still meet the barriers.
    let valid = row < p.rows;
    let cols = select(0u, p.cols, valid);
    let base = row * p.cols;
    let inv_c = 1.0 / f32(p.cols);

    var s = 0.0;
    for (var c = lane; c < cols; c += THREADS_PER_ROW) {
        s += f32(x[base + c]);
    }
    let mu = row_sum_a(lid, s) * inv_c;

    // Two-pass variance: sum of squared deviations, no cancellation of E[x^2] - E[x]^2.
    var q = 0.0;
    for (var c = lane; c < cols; c += THREADS_PER_ROW) {
        let d = f32(x[base + c]) - mu;
        q += d * d;
    }
    let rs = 1.0 / sqrt(row_sum_b(lid, q) * inv_c + p.eps);

    for (var c = lane; c < cols; c += THREADS_PER_ROW) {
        y[base + c] = Act((f32(x[base + c]) - mu) * rs * f32(gamma[c]) + f32(beta[c]));
    }
    if (valid && lane == 0u) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

@group(0) @binding(0) var<storage, read> bx: array<Act>;
@group(0) @binding(1) var<storage, read> bgamma: array<Act>;
@group(0) @binding(2) var<storage, read> bmean: array<f32>;
@group(0) @binding(3) var<storage, read> brstd: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<Act>;
@group(0) @binding(5) var<storage, read_write> dx: array<Act>;
@group(0) @binding(6) var<storage, read_write> dgamma_partial: array<f32>;
@group(0) @binding(7) var<storage, read_write> dbeta_partial: array<f32>;
@group(0) @binding(8) var<uniform> bp: BackwardParams;

// Partial row j covers rows [j * rows_per_partial, (j + 1) * rows_per_partial). The invocations of
// one row slot of the workgroup take partial row j in turn, one row per step; for each row, with
// xhat = (x - mean) rstd and g = dy * gamma:
//   dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))
// and dgamma_partial[j, c] = sum_rows dy * xhat, dbeta_partial[j, c] = sum_rows dy.
@compute @workgroup_size(WG)
fn layernorm_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let j = (wg.x + wg.y * nwg.x) * ROWS_PER_WG + lid / THREADS_PER_ROW;
    let lane = lid % THREADS_PER_ROW;
    let has_partial = j < bp.num_partials;
    let cols = bp.cols;
    let inv_c = 1.0 / f32(cols);
    let part = j * cols;
    // Each invocation owns columns lane, lane + THREADS_PER_ROW, ... of partial row j, so it can
    // accumulate there across rows without synchronisation. Partial rows past the last row
    // stay zero.
    if (has_partial) {
        for (var c = lane; c < cols; c += THREADS_PER_ROW) {
            dgamma_partial[part + c] = 0.0;
            dbeta_partial[part + c] = 0.0;
        }
    }
    for (var step = 0u; step < bp.rows_per_partial; step++) {
        let row = j * bp.rows_per_partial + step;
        let valid = has_partial && row < bp.rows;
        let row_cols = select(0u, cols, valid);
        let base = row * cols;
        var mu = 0.0;
        var rs = 0.0;
        if (valid) {
            mu = bmean[row];
            rs = brstd[row];
        }
        var sg = 0.0;
        var sgx = 0.0;
        for (var c = lane; c < row_cols; c += THREADS_PER_ROW) {
            let g = f32(dy[base + c]) * f32(bgamma[c]);
            sg += g;
            sgx += g * (f32(bx[base + c]) - mu) * rs;
        }
        let sums = row_sums_g(lid, step & 1u, sg, sgx) * inv_c;
        for (var c = lane; c < row_cols; c += THREADS_PER_ROW) {
            let d = f32(dy[base + c]);
            let xhat = (f32(bx[base + c]) - mu) * rs;
            dx[base + c] = Act(rs * (d * f32(bgamma[c]) - sums.x - xhat * sums.y));
            dgamma_partial[part + c] += d * xhat;
            dbeta_partial[part + c] += d;
        }
    }
}

const COLS: u32 = 32u;
const LANES: u32 = 8u;

var<workgroup> lane_g: array<array<f32, COLS>, LANES>;
var<workgroup> lane_b: array<array<f32, COLS>, LANES>;

@group(0) @binding(0) var<storage, read> pg_dgamma_partial: array<f32>;
@group(0) @binding(1) var<storage, read> pg_dbeta_partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(4) var<uniform> pp: ParamGradParams;

// dgamma[c] (+)= sum_j dgamma_partial[j, c], likewise dbeta. A workgroup takes COLS adjacent
// columns (coalesced loads); LANES invocations per column add every LANES-th partial row, then
// lane 0 adds the LANES sums in order.
@compute @workgroup_size(COLS, LANES)
fn layernorm_param_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_id) li: vec3<u32>) {
    let c = (wg.x + wg.y * nwg.x) * COLS + li.x;
    let valid = c < pp.cols;
    var sg = 0.0;
    var sb = 0.0;
    if (valid) {
        for (var j = li.y; j < pp.num_partials; j += LANES) {
            sg += pg_dgamma_partial[j * pp.cols + c];
            sb += pg_dbeta_partial[j * pp.cols + c];
        }
    }
    lane_g[li.y][li.x] = sg;
    lane_b[li.y][li.x] = sb;
    workgroupBarrier();
    if (valid && li.y == 0u) {
        var tg = 0.0;
        var tb = 0.0;
        for (var l = 0u; l < LANES; l++) {
            tg += lane_g[l][li.x];
            tb += lane_b[l][li.x];
        }
        if (pp.accumulate != 0u) {
            tg += dgamma[c];
            tb += dbeta[c];
        }
        dgamma[c] = tg;
        dbeta[c] = tb;
    }
}
