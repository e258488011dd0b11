// Fused multi-head self-attention for GPUs, FlashAttention-2 style with workgroup tiles: the
// same entry points, bindings, layouts and masks as attention.wgsl (see its header), mapped
// for many threads instead of few.
//
// Mapping: a workgroup owns ROWS rows of one (batch, head): query rows in the forward and dq
// kernels, key rows in dk/dv. PARTS invocations share a row, each owning every PARTS-th lane
// of it (lane p, p + PARTS, ...: the PARTS invocations of a row read PARTS neighbouring lanes
// of a tile row at once, no bank conflicts). The other side's rows (keys and values, or
// queries and output gradients) go through workgroup memory TILE rows at a time, loaded once
// for the whole workgroup. A score is summed from the PARTS partial dot products in
// workgroup memory, in a fixed order, so every invocation of a row sees the same value and
// keeps the same online-softmax state. Nothing N x N is stored.
//
// Every invocation reaches every barrier: rows past N load zeros and write nothing, and a
// masked head or key is a per-key condition inside the loops, never an early return.

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

// Rows per workgroup and invocations per row; WG = ROWS * PARTS.
const ROWS: u32 = 16u;
const PARTS: u32 = 4u;
const WG: u32 = 64u;
// Head size, lanes (vec4 when HS % 4 == 0) and storage type, as in attention.wgsl.
const HS: u32 = 64u;
alias Lane = vec4<f32>;
const LANES: u32 = 4u;
alias StoredLane = vec4<f32>;
const HL: u32 = HS / LANES;
// Lanes of a row one invocation owns (the last ones may run past HL and are skipped).
const PL: u32 = (HL + PARTS - 1u) / PARTS;
// Rows of a tile of the other side; the host picks it so that workgroup memory fits in the
// 16 KiB every WebGPU adapter offers.
const TILE: u32 = 16u;
const NEG_BIG: f32 = -3.0e38;

var<workgroup> tile_a: array<Lane, TILE * HL>;
var<workgroup> tile_b: array<Lane, TILE * HL>;
// Partial dot products [ROWS][TILE][PARTS]: scores, and in the backward dout·v too.
var<workgroup> part_s: array<f32, ROWS * TILE * PARTS>;
var<workgroup> part_dp: array<f32, ROWS * TILE * PARTS>;
// Per query of a dk/dv tile: its lse and d.
var<workgroup> tile_lse: array<f32, TILE>;
var<workgroup> tile_d: array<f32, TILE>;

fn lane_sum(x: Lane) -> f32 {
    let v = vec4<f32>(x);
    return select(v.x, (v.x + v.y) + (v.z + v.w), LANES == 4u);
}

// The workgroup's (batch, head) and first row, and this invocation's row and part.
struct Place {
    b: u32,
    h: u32,
    bh: u32,
    row: u32,
    part: u32,
    // The row exists (row < N) and the workgroup lies inside the grid.
    valid: bool,
    // The workgroup lies inside the grid (a 2-D grid may have spare workgroups).
    live: bool,
}

fn place_of(wg: vec3<u32>, nwg: vec3<u32>, lid: u32, b: u32, n: u32, nh: u32) -> Place {
    let blocks = (n + ROWS - 1u) / ROWS;
    let wgi = wg.x + wg.y * nwg.x;
    let bh = wgi / blocks;
    let row = (wgi % blocks) * ROWS + lid / PARTS;
    let live = bh < b * nh;
    return Place(bh / nh, bh % nh, bh, row, lid % PARTS, live && row < n, live);
}

// Whether key j takes part: inside N, its head on, and not masked (`mask`: its key_mask
// entry, 1 without a mask).
fn key_kept(n: u32, j: u32, head_on: bool, mask: u32) -> bool {
    return j < n && head_on && mask != 0u;
}

// The score and dout·v of (row, tile row t): sums of the row's PARTS partials, in a fixed
// order. (Workgroup pointers cannot be function arguments, hence two functions.)
fn score(row: u32, t: u32) -> f32 {
    let at = (row * TILE + t) * PARTS;
    var s = 0.0;
    for (var q = 0u; q < PARTS; q++) {
        s += part_s[at + q];
    }
    return s;
}

fn score_dp(row: u32, t: u32) -> f32 {
    let at = (row * TILE + t) * PARTS;
    var s = 0.0;
    for (var q = 0u; q < PARTS; q++) {
        s += part_dp[at + q];
    }
    return s;
}

// ---------------------------------------------------------------------------------------
// Forward: a workgroup owns ROWS query rows; keys and values come in tiles.

// Binding 0 of every entry point: qkv [B, N, 3, NH, HS].
@group(0) @binding(0) var<storage, read> qkv: array<StoredLane>;

// Loads a row's lanes that this invocation owns from `base` (zeros when `on` is false).
fn own_lanes_qkv(base: u32, part: u32, on: bool) -> array<Lane, PL> {
    var row: array<Lane, PL>;
    if (on) {
        for (var e = 0u; e < PL; e++) {
            let d = part + e * PARTS;
            if (d < HL) {
                row[e] = Lane(qkv[base + d]);
            }
        }
    }
    return row;
}

// Stages the keys [t0, t0 + TILE) of the workgroup's (batch, head) in tile_a and their values
// in tile_b (zeros past N); `c` is NH * HL.
fn load_kv_tile(lid: u32, t0: u32, at: Place, n: u32, c: u32) {
    for (var x = lid; x < TILE * HL; x += WG) {
        let j = t0 + x / HL;
        var k = Lane(0.0);
        var v = Lane(0.0);
        if (at.live && j < n) {
            let k_base = (at.b * n + j) * 3u * c + c + at.h * HL + x % HL;
            k = Lane(qkv[k_base]);
            v = Lane(qkv[k_base + c]);
        }
        tile_a[x] = k;
        tile_b[x] = v;
    }
}

@group(0) @binding(1) var<storage, read> f_key_mask: array<u32>;
@group(0) @binding(2) var<storage, read> f_head_mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> f_out: array<StoredLane>;
@group(0) @binding(4) var<storage, read_write> f_lse: array<f32>;
@group(0) @binding(5) var<uniform> fp: Params;

@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let at = place_of(wg, nwg, lid, fp.b, fp.n, fp.nh);
    let c = fp.nh * HL;
    let head_on = at.live && (fp.has_head_mask == 0u || f_head_mask[at.h] != 0u);
    let r = lid / PARTS;
    let q = own_lanes_qkv((at.b * fp.n + at.row) * 3u * c + at.h * HL, at.part, at.valid);
    var acc: array<Lane, PL>;
    var m = NEG_BIG;
    var l = 0.0;
    for (var t0 = 0u; t0 < fp.n; t0 += TILE) {
        load_kv_tile(lid, t0, at, fp.n, c);
        workgroupBarrier();
        for (var t = 0u; t < TILE; t++) {
            var qk = Lane(0.0);
            for (var e = 0u; e < PL; e++) {
                let d = at.part + e * PARTS;
                if (d < HL) {
                    qk += q[e] * tile_a[t * HL + d];
                }
            }
            part_s[(r * TILE + t) * PARTS + at.part] = lane_sum(qk);
        }
        workgroupBarrier();
        // The tile's scores and their maximum, then one rescale for the whole tile.
        var s: array<f32, TILE>;
        var tile_max = NEG_BIG;
        for (var t = 0u; t < TILE; t++) {
            let j = t0 + t;
            var mask = 1u;
            if (fp.has_key_mask != 0u && at.live && j < fp.n) {
                mask = f_key_mask[at.b * fp.n + j];
            }
            if (key_kept(fp.n, j, head_on, mask)) {
                s[t] = score(r, t) * fp.scale;
                tile_max = max(tile_max, s[t]);
            } else {
                s[t] = NEG_BIG;
            }
        }
        if (tile_max > m) {
            let corr = exp(m - tile_max);
            l *= corr;
            for (var e = 0u; e < PL; e++) {
                acc[e] *= corr;
            }
            m = tile_max;
        }
        for (var t = 0u; t < TILE; t++) {
            if (s[t] > NEG_BIG) {
                let pj = exp(s[t] - m);
                l += pj;
                for (var e = 0u; e < PL; e++) {
                    let d = at.part + e * PARTS;
                    if (d < HL) {
                        acc[e] += pj * tile_b[t * HL + d];
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if (at.valid) {
        // l == 0: masked head or no unmasked key; the output is zeros and lse 0.
        let inv = select(0.0, 1.0 / l, l > 0.0);
        let o_base = (at.b * fp.n + at.row) * c + at.h * HL;
        for (var e = 0u; e < PL; e++) {
            let d = at.part + e * PARTS;
            if (d < HL) {
                f_out[o_base + d] = StoredLane(acc[e] * inv);
            }
        }
        if (at.part == 0u) {
            f_lse[at.bh * fp.n + at.row] = select(0.0, m + log(l), l > 0.0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backward. With s = q k^T * scale, p = exp(s - lse), dp = dout v^T and ds = p (dp - d):
// dv = p^T dout, dk = ds^T q * scale, dq = ds k * scale. d comes from attention.wgsl's
// preprocess.

@group(0) @binding(1) var<storage, read> b_dout: array<StoredLane>;
@group(0) @binding(2) var<storage, read> b_lse: array<f32>;
@group(0) @binding(3) var<storage, read> b_d: array<f32>;
@group(0) @binding(4) var<storage, read> b_key_mask: array<u32>;
@group(0) @binding(5) var<storage, read> b_head_mask: array<u32>;
@group(0) @binding(6) var<storage, read_write> b_dqkv: array<StoredLane>;
@group(0) @binding(7) var<uniform> bp: Params;

fn own_lanes_dout(base: u32, part: u32, on: bool) -> array<Lane, PL> {
    var row: array<Lane, PL>;
    if (on) {
        for (var e = 0u; e < PL; e++) {
            let d = part + e * PARTS;
            if (d < HL) {
                row[e] = Lane(b_dout[base + d]);
            }
        }
    }
    return row;
}

// The partial dot products of row r's own lanes with every row of the tiles: `x` against
// tile_a (the score: k with the queries, or q with the keys) into part_s, `y` against tile_b
// (dout·v) into part_dp.
fn tile_partials(r: u32, part: u32, x: array<Lane, PL>, y: array<Lane, PL>) {
    for (var t = 0u; t < TILE; t++) {
        var xa = Lane(0.0);
        var yb = Lane(0.0);
        for (var e = 0u; e < PL; e++) {
            let d = part + e * PARTS;
            if (d < HL) {
                xa += x[e] * tile_a[t * HL + d];
                yb += y[e] * tile_b[t * HL + d];
            }
        }
        part_s[(r * TILE + t) * PARTS + part] = lane_sum(xa);
        part_dp[(r * TILE + t) * PARTS + part] = lane_sum(yb);
    }
}

// A workgroup owns ROWS key rows and loops over tiles of queries (q and dout); writes the k
// and v slots of dqkv.
@compute @workgroup_size(WG)
fn attention_backward_dkdv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let at = place_of(wg, nwg, lid, bp.b, bp.n, bp.nh);
    let c = bp.nh * HL;
    let r = lid / PARTS;
    let head_on = at.live && (bp.has_head_mask == 0u || b_head_mask[at.h] != 0u);
    var mask = 1u;
    if (bp.has_key_mask != 0u && at.valid) {
        mask = b_key_mask[at.b * bp.n + at.row];
    }
    // A masked key gets no probability and a masked head no output: both gradients stay 0.
    let kept = at.valid && key_kept(bp.n, at.row, head_on, mask);
    let k_base = (at.b * bp.n + at.row) * 3u * c + c + at.h * HL;
    let k = own_lanes_qkv(k_base, at.part, kept);
    let v = own_lanes_qkv(k_base + c, at.part, kept);
    var dk: array<Lane, PL>;
    var dv: array<Lane, PL>;
    for (var t0 = 0u; t0 < bp.n; t0 += TILE) {
        for (var x = lid; x < TILE * HL; x += WG) {
            let i = t0 + x / HL;
            var qd = Lane(0.0);
            var od = Lane(0.0);
            if (at.live && i < bp.n) {
                qd = Lane(qkv[(at.b * bp.n + i) * 3u * c + at.h * HL + x % HL]);
                od = Lane(b_dout[(at.b * bp.n + i) * c + at.h * HL + x % HL]);
            }
            tile_a[x] = qd;
            tile_b[x] = od;
        }
        if (lid < TILE) {
            let i = t0 + lid;
            var lse_i = 0.0;
            var d_i = 0.0;
            if (at.live && i < bp.n) {
                lse_i = b_lse[at.bh * bp.n + i];
                d_i = b_d[at.bh * bp.n + i];
            }
            tile_lse[lid] = lse_i;
            tile_d[lid] = d_i;
        }
        workgroupBarrier();
        tile_partials(r, at.part, k, v);
        workgroupBarrier();
        if (kept) {
            // Key j is unmasked, so every query row of this image has a finite lse.
            for (var t = 0u; t < TILE; t++) {
                if (t0 + t < bp.n) {
                    let pij = exp(score(r, t) * bp.scale - tile_lse[t]);
                    let ds = pij * (score_dp(r, t) - tile_d[t]);
                    for (var e = 0u; e < PL; e++) {
                        let d = at.part + e * PARTS;
                        if (d < HL) {
                            dv[e] += pij * tile_b[t * HL + d];
                            dk[e] += ds * tile_a[t * HL + d];
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if (at.valid) {
        for (var e = 0u; e < PL; e++) {
            let d = at.part + e * PARTS;
            if (d < HL) {
                b_dqkv[k_base + d] = StoredLane(dk[e] * bp.scale);
                b_dqkv[k_base + c + d] = StoredLane(dv[e]);
            }
        }
    }
}

// A workgroup owns ROWS query rows and loops over tiles of keys and values; writes the q
// slot of dqkv.
@compute @workgroup_size(WG)
fn attention_backward_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let at = place_of(wg, nwg, lid, bp.b, bp.n, bp.nh);
    let c = bp.nh * HL;
    let r = lid / PARTS;
    let head_on = at.live && (bp.has_head_mask == 0u || b_head_mask[at.h] != 0u);
    let q_base = (at.b * bp.n + at.row) * 3u * c + at.h * HL;
    let q = own_lanes_qkv(q_base, at.part, at.valid && head_on);
    let dout = own_lanes_dout((at.b * bp.n + at.row) * c + at.h * HL, at.part, at.valid && head_on);
    var lse_i = 0.0;
    var d_i = 0.0;
    if (at.valid) {
        lse_i = b_lse[at.bh * bp.n + at.row];
        d_i = b_d[at.bh * bp.n + at.row];
    }
    var dq: array<Lane, PL>;
    for (var t0 = 0u; t0 < bp.n; t0 += TILE) {
        load_kv_tile(lid, t0, at, bp.n, c);
        workgroupBarrier();
        tile_partials(r, at.part, q, dout);
        workgroupBarrier();
        if (at.valid) {
            // A row without unmasked keys skips every key and keeps dq = 0.
            for (var t = 0u; t < TILE; t++) {
                let j = t0 + t;
                var mask = 1u;
                if (bp.has_key_mask != 0u && j < bp.n) {
                    mask = b_key_mask[at.b * bp.n + j];
                }
                if (key_kept(bp.n, j, head_on, mask)) {
                    let ds = exp(score(r, t) * bp.scale - lse_i) * (score_dp(r, t) - d_i);
                    for (var e = 0u; e < PL; e++) {
                        let d = at.part + e * PARTS;
                        if (d < HL) {
                            dq[e] += ds * tile_a[t * HL + d];
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if (at.valid) {
        for (var e = 0u; e < PL; e++) {
            let d = at.part + e * PARTS;
            if (d < HL) {
                b_dqkv[q_base + d] = StoredLane(dq[e] * bp.scale);
            }
        }
    }
}
