// Fused multi-head self-attention, FlashAttention-2 style: the N x N score matrix is never
// stored; every kernel recomputes the scores it needs from q, k and the saved row log-sum-exp.
//
// Layouts (no permute kernels around attention in the ViT):
//   qkv  [B, N, 3, NH, HS]  the qkv linear's output; q, k, v of head h at [.., 0|1|2, h, :]
//   out  [B, N, NH, HS]     feeds the proj linear directly; dout has the same layout
//   lse  [B, NH, N]         natural-log sum of exp(scores) per query row (0 where undefined)
//   d    [B, NH, N]         rowsum(dout * out), the backward preprocess
//   dqkv [B, N, 3, NH, HS]  same layout as qkv
//   key_mask  [B, N]  u32, 0 = masked key (padding); head_mask [NH], bits 0 = masked head.
//   Without a mask the host binds a placeholder and clears the has_* flag.
//
// Mapping: one invocation per PAIR of query rows (forward, dq) or key rows (dk/dv), so every
// k/v (or q/dout) row it loads serves two rows; one per row in the preprocess. Rows and
// accumulators live in private arrays of exactly one row each. Workgroups are
// (batch, head, block of WG pairs), so all invocations of a workgroup read the same k/v (or
// q/dout) row at the same time. No workgroup memory and no barriers: barriers are coroutine
// switches on lavapipe, and at ViT sizes (N <= 257, HS = 64) the per-row loop is cheap.

struct Params {
    b: u32,
    n: u32,
    nh: u32,
    scale: f32,
    has_key_mask: u32,
    has_head_mask: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 64u;
// Rows per invocation in the forward and gradient kernels (the code is written out for 2).
const PAIR: u32 = 2u;
// Head size; the host specialises it per call so private arrays are exactly one row.
const HS: u32 = 64u;
// Rows are read and written in Lanes of LANES floats: vec4 when HS % 4 == 0 (every row then
// starts 16-byte aligned), else f32; the host specialises both. On lavapipe every storage
// load is a loop over the SIMD lanes, so one vec4 load costs about what one f32 load does.
alias Lane = vec4<f32>;
const LANES: u32 = 4u;
// How q, k, v, out and their gradients are stored: Lane's shape in the element type of the
// activations (f16 storage: loads widen to f32 Lanes, every sum and softmax runs in f32,
// stores round once). lse and d are always f32.
alias StoredLane = vec4<f32>;
// Lanes per row of one head.
const HL: u32 = HS / LANES;
// Running-max start value: finite so that exp(start - s) is 0, never NaN.
const NEG_BIG: f32 = -3.0e38;

// The rows (batch, head, index i and i + 1) an invocation owns; valid = false past the end.
// With rows = 1, or for the last row of an odd N, `second` is false and i2 repeats i, so
// loads stay in bounds and the duplicate's results are simply not written.
struct Row {
    b: u32,
    h: u32,
    bh: u32,
    i: u32,
    i2: u32,
    second: bool,
    valid: bool,
}

fn row_of(wg: vec3<u32>, nwg: vec3<u32>, lid: u32, b: u32, n: u32, nh: u32, rows: u32) -> Row {
    let per_group = WG * rows;
    let blocks = (n + per_group - 1u) / per_group;
    let wgi = wg.x + wg.y * nwg.x;
    let bh = wgi / blocks;
    let i = (wgi % blocks) * per_group + lid * rows;
    let second = rows == 2u && i + 1u < n;
    return Row(bh / nh, bh % nh, bh, i, select(i, i + 1u, second), second, bh < b * nh && i < n);
}

// Sum of the floats in a Lane (for f32, vec4(x) splats and .x is x itself).
fn lane_sum(x: Lane) -> f32 {
    let v = vec4<f32>(x);
    return select(v.x, (v.x + v.y) + (v.z + v.w), LANES == 4u);
}

// ---------------------------------------------------------------------------------------
// Forward: out = softmax(q k^T * scale, masked keys dropped) v, lse = log sum exp.

@group(0) @binding(0) var<storage, read> f_qkv: array<StoredLane>;
@group(0) @binding(1) var<storage, read> f_key_mask: array<u32>;
@group(0) @binding(2) var<storage, read> f_head_mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> f_out: array<StoredLane>;
@group(0) @binding(4) var<storage, read_write> f_lse: array<f32>;
@group(0) @binding(5) var<uniform> fp: Params;

@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wg, nwg, lid, fp.b, fp.n, fp.nh, PAIR);
    if (!r.valid) {
        return;
    }
    let c = fp.nh * HL; // lanes per token of out
    let token = r.b * fp.n + r.i;
    let token2 = r.b * fp.n + r.i2;
    // Two independent online softmaxes, one per query row.
    var acc: array<Lane, HL>;
    var acc2: array<Lane, HL>;
    var m = NEG_BIG;
    var m2 = NEG_BIG;
    var l = 0.0;
    var l2 = 0.0;
    if (fp.has_head_mask == 0u || f_head_mask[r.h] != 0u) {
        var q: array<Lane, HL>;
        var q2: array<Lane, HL>;
        let q_base = token * 3u * c + r.h * HL;
        let q2_base = token2 * 3u * c + r.h * HL;
        for (var d = 0u; d < HL; d++) {
            q[d] = Lane(f_qkv[q_base + d]);
            q2[d] = Lane(f_qkv[q2_base + d]);
        }
        for (var j = 0u; j < fp.n; j++) {
            if (fp.has_key_mask != 0u && f_key_mask[r.b * fp.n + j] == 0u) {
                continue;
            }
            let k_base = (r.b * fp.n + j) * 3u * c + c + r.h * HL;
            let v_base = k_base + c;
            var qk = Lane(0.0);
            var qk2 = Lane(0.0);
            for (var d = 0u; d < HL; d++) {
                let kd = Lane(f_qkv[k_base + d]);
                qk += q[d] * kd;
                qk2 += q2[d] * kd;
            }
            let s = lane_sum(qk) * fp.scale;
            let s2 = lane_sum(qk2) * fp.scale;
            // Online softmax: rescale only when a running max grows (rare after the first
            // keys); one loop for both rows keeps the loop count per key at three.
            if (s > m || s2 > m2) {
                let corr = select(1.0, exp(m - s), s > m);
                let corr2 = select(1.0, exp(m2 - s2), s2 > m2);
                l *= corr;
                l2 *= corr2;
                for (var d = 0u; d < HL; d++) {
                    acc[d] *= corr;
                    acc2[d] *= corr2;
                }
                m = max(m, s);
                m2 = max(m2, s2);
            }
            let pj = exp(s - m);
            let pj2 = exp(s2 - m2);
            l += pj;
            l2 += pj2;
            for (var d = 0u; d < HL; d++) {
                let vd = Lane(f_qkv[v_base + d]);
                acc[d] += pj * vd;
                acc2[d] += pj2 * vd;
            }
        }
    }
    // l == 0: masked head or no unmasked key; the output is defined as zeros, lse as 0.
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let o_base = token * c + r.h * HL;
    for (var d = 0u; d < HL; d++) {
        f_out[o_base + d] = StoredLane(acc[d] * inv);
    }
    f_lse[r.bh * fp.n + r.i] = select(0.0, m + log(l), l > 0.0);
    if (r.second) {
        let inv2 = select(0.0, 1.0 / l2, l2 > 0.0);
        let o2_base = token2 * c + r.h * HL;
        for (var d = 0u; d < HL; d++) {
            f_out[o2_base + d] = StoredLane(acc2[d] * inv2);
        }
        f_lse[r.bh * fp.n + r.i2] = select(0.0, m2 + log(l2), l2 > 0.0);
    }
}

// ---------------------------------------------------------------------------------------
// Backward preprocess: d[b, h, i] = sum_d dout[b, i, h, d] * out[b, i, h, d].

@group(0) @binding(0) var<storage, read> p_out: array<StoredLane>;
@group(0) @binding(1) var<storage, read> p_dout: array<StoredLane>;
@group(0) @binding(2) var<storage, read_write> p_d: array<f32>;
@group(0) @binding(3) var<uniform> pp: Params;

@compute @workgroup_size(WG)
fn attention_backward_preprocess(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                 @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wg, nwg, lid, pp.b, pp.n, pp.nh, 1u);
    if (!r.valid) {
        return;
    }
    let base = ((r.b * pp.n + r.i) * pp.nh + r.h) * HL;
    var acc = Lane(0.0);
    for (var d = 0u; d < HL; d++) {
        acc += Lane(p_dout[base + d]) * Lane(p_out[base + d]);
    }
    p_d[r.bh * pp.n + r.i] = lane_sum(acc);
}

// ---------------------------------------------------------------------------------------
// Backward, shared by dk/dv and dq. With s = q k^T * scale, p = exp(s - lse),
// dp = dout v^T and ds = p (dp - d):  dv = p^T dout, dk = ds^T q * scale, dq = ds k * scale.

@group(0) @binding(0) var<storage, read> b_qkv: array<StoredLane>;
@group(0) @binding(1) var<storage, read> b_dout: array<StoredLane>;
@group(0) @binding(2) var<storage, read> b_lse: array<f32>;
@group(0) @binding(3) var<storage, read> b_d: array<f32>;
@group(0) @binding(4) var<storage, read> b_key_mask: array<u32>;
@group(0) @binding(5) var<storage, read> b_head_mask: array<u32>;
@group(0) @binding(6) var<storage, read_write> b_dqkv: array<StoredLane>;
@group(0) @binding(7) var<uniform> bp: Params;

// One invocation per pair of key rows j, j2: loops over all query rows, writes the k and v
// slots of dqkv.
@compute @workgroup_size(WG)
fn attention_backward_dkdv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wg, nwg, lid, bp.b, bp.n, bp.nh, PAIR);
    if (!r.valid) {
        return;
    }
    let c = bp.nh * HL;
    let k_base = (r.b * bp.n + r.i) * 3u * c + c + r.h * HL;
    let v_base = k_base + c;
    let k2_base = (r.b * bp.n + r.i2) * 3u * c + c + r.h * HL;
    let v2_base = k2_base + c;
    var dk: array<Lane, HL>;
    var dv: array<Lane, HL>;
    var dk2: array<Lane, HL>;
    var dv2: array<Lane, HL>;
    let head_on = bp.has_head_mask == 0u || b_head_mask[r.h] != 0u;
    // A masked key gets no probability and a masked head no output: both gradients stay
    // zero. A masked key's p is forced to 0 below (its lse terms may not cover it).
    let key_on = bp.has_key_mask == 0u || b_key_mask[r.b * bp.n + r.i] != 0u;
    let key2_on = bp.has_key_mask == 0u || b_key_mask[r.b * bp.n + r.i2] != 0u;
    if (head_on && (key_on || key2_on)) {
        var k: array<Lane, HL>;
        var v: array<Lane, HL>;
        var k2: array<Lane, HL>;
        var v2: array<Lane, HL>;
        for (var d = 0u; d < HL; d++) {
            k[d] = Lane(b_qkv[k_base + d]);
            v[d] = Lane(b_qkv[v_base + d]);
            k2[d] = Lane(b_qkv[k2_base + d]);
            v2[d] = Lane(b_qkv[v2_base + d]);
        }
        // Some key of the pair is unmasked, so every query row of this batch has a finite lse.
        for (var i = 0u; i < bp.n; i++) {
            let q_base = (r.b * bp.n + i) * 3u * c + r.h * HL;
            let o_base = (r.b * bp.n + i) * c + r.h * HL;
            var qk = Lane(0.0);
            var dov = Lane(0.0);
            var qk2 = Lane(0.0);
            var dov2 = Lane(0.0);
            for (var d = 0u; d < HL; d++) {
                let qd = Lane(b_qkv[q_base + d]);
                let od = Lane(b_dout[o_base + d]);
                qk += qd * k[d];
                dov += od * v[d];
                qk2 += qd * k2[d];
                dov2 += od * v2[d];
            }
            let at = r.bh * bp.n + i;
            let lse_i = b_lse[at];
            let d_i = b_d[at];
            let pij = select(0.0, exp(lane_sum(qk) * bp.scale - lse_i), key_on);
            let ds = pij * (lane_sum(dov) - d_i);
            let pij2 = select(0.0, exp(lane_sum(qk2) * bp.scale - lse_i), key2_on);
            let ds2 = pij2 * (lane_sum(dov2) - d_i);
            for (var d = 0u; d < HL; d++) {
                let qd = Lane(b_qkv[q_base + d]);
                let od = Lane(b_dout[o_base + d]);
                dv[d] += pij * od;
                dk[d] += ds * qd;
                dv2[d] += pij2 * od;
                dk2[d] += ds2 * qd;
            }
        }
    }
    for (var d = 0u; d < HL; d++) {
        b_dqkv[k_base + d] = StoredLane(dk[d] * bp.scale);
        b_dqkv[v_base + d] = StoredLane(dv[d]);
    }
    if (r.second) {
        for (var d = 0u; d < HL; d++) {
            b_dqkv[k2_base + d] = StoredLane(dk2[d] * bp.scale);
            b_dqkv[v2_base + d] = StoredLane(dv2[d]);
        }
    }
}

// One invocation per pair of query rows i, i2: loops over all unmasked keys, writes the q
// slot of dqkv.
@compute @workgroup_size(WG)
fn attention_backward_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wg, nwg, lid, bp.b, bp.n, bp.nh, PAIR);
    if (!r.valid) {
        return;
    }
    let c = bp.nh * HL;
    let q_base = (r.b * bp.n + r.i) * 3u * c + r.h * HL;
    let q2_base = (r.b * bp.n + r.i2) * 3u * c + r.h * HL;
    var dq: array<Lane, HL>;
    var dq2: array<Lane, HL>;
    if (bp.has_head_mask == 0u || b_head_mask[r.h] != 0u) {
        var q: array<Lane, HL>;
        var dout: array<Lane, HL>;
        var q2: array<Lane, HL>;
        var dout2: array<Lane, HL>;
        let o_base = (r.b * bp.n + r.i) * c + r.h * HL;
        let o2_base = (r.b * bp.n + r.i2) * c + r.h * HL;
        for (var d = 0u; d < HL; d++) {
            q[d] = Lane(b_qkv[q_base + d]);
            dout[d] = Lane(b_dout[o_base + d]);
            q2[d] = Lane(b_qkv[q2_base + d]);
            dout2[d] = Lane(b_dout[o2_base + d]);
        }
        let at = r.bh * bp.n + r.i;
        let lse_i = b_lse[at];
        let d_i = b_d[at];
        let at2 = r.bh * bp.n + r.i2;
        let lse_i2 = b_lse[at2];
        let d_i2 = b_d[at2];
        // A row without unmasked keys skips every key and keeps dq = 0.
        for (var j = 0u; j < bp.n; j++) {
            if (bp.has_key_mask != 0u && b_key_mask[r.b * bp.n + j] == 0u) {
                continue;
            }
            let k_base = (r.b * bp.n + j) * 3u * c + c + r.h * HL;
            let v_base = k_base + c;
            var qk = Lane(0.0);
            var dov = Lane(0.0);
            var qk2 = Lane(0.0);
            var dov2 = Lane(0.0);
            for (var d = 0u; d < HL; d++) {
                let kd = Lane(b_qkv[k_base + d]);
                let vd = Lane(b_qkv[v_base + d]);
                qk += q[d] * kd;
                dov += dout[d] * vd;
                qk2 += q2[d] * kd;
                dov2 += dout2[d] * vd;
            }
            let ds = exp(lane_sum(qk) * bp.scale - lse_i) * (lane_sum(dov) - d_i);
            let ds2 = exp(lane_sum(qk2) * bp.scale - lse_i2) * (lane_sum(dov2) - d_i2);
            for (var d = 0u; d < HL; d++) {
                let kd = Lane(b_qkv[k_base + d]);
                dq[d] += ds * kd;
                dq2[d] += ds2 * kd;
            }
        }
    }
    for (var d = 0u; d < HL; d++) {
        b_dqkv[q_base + d] = StoredLane(dq[d] * bp.scale);
    }
    if (r.second) {
        for (var d = 0u; d < HL; d++) {
            b_dqkv[q2_base + d] = StoredLane(dq2[d] * bp.scale);
        }
    }
}
