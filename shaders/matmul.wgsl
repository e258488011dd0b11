// Matrix multiply C = op(A) op(B), batched, with a fused epilogue:
//   acc = op(A) op(B) (+ bias[n]) ; pre = acc ; acc = gelu(acc) ; (+ residual) ; (+ C_old) ; C = acc
// or, for a GELU's backward, acc = op(A) op(B) (+ bias[n]) ; acc *= gelu'(pre) ; ... (GELU_GRAD:
// `pre` then holds the forward's pre-activation and is only read). ROW_SCALE multiplies acc by
// row_scale[(batch * M + row) / rows_per_scale] before the residual: drop-path's per-image
// factor on a residual branch.
// Layouts (row-major, leading dimensions lda/ldb/ldc):
//   A_TRANS = false: A is [M, K];  true: A is [K, M]  (C = Aᵀ B, used for weight gradients)
//   B_TRANS = false: B is [K, N];  true: B is [N, K]  (C = A Bᵀ, used for linear layers and dX)
// The consts below are rewritten per variant (src/kernels/matmul.rs) before compilation:
// WGSL needs compile-time sizes for the private accumulator arrays.
// TM/TN/WX/WY/BK apply to the shared-memory variant `matmul_tiled`.

const TM: u32 = 4u;   // rows per invocation
const TN: u32 = 4u;   // columns per invocation
const WX: u32 = 16u;  // workgroup width (columns)
const WY: u32 = 16u;  // workgroup height (rows)
const BK: u32 = 16u;  // k-tile depth of the shared-memory variant
const A_TRANS: bool = false;
const B_TRANS: bool = false;
const HAS_BIAS: bool = false;
const GELU: bool = false;
const STORE_PRE: bool = false;
const GELU_GRAD: bool = false;
const HAS_RESIDUAL: bool = false;
const ROW_SCALE: bool = false;
const ACCUMULATE: bool = false;
// Storage element types, rewritten per variant: `Operand` for A, B and the bias, `Output`
// for C, the pre-activation and the residual. f16 is storage only: every load widens to
// f32, the accumulators are f32, and a store rounds once.
alias Operand = f32;
alias Output = f32;

const BM: u32 = WY * TM;
const BN: u32 = WX * TN;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Element offsets of the first k-column of A and k-row of B: the host splits very
    // long K into chunks (CPU adapters cap loop iterations per invocation).
    a_offset: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    b_offset: u32,
    // Elements between consecutive batch items; 0 broadcasts one matrix to the whole batch.
    batch_a: u32,
    batch_b: u32,
    batch_c: u32,
    // Rows of C (counted over the batch) that share one row_scale factor.
    rows_per_scale: u32,
}

@group(0) @binding(0) var<storage, read> a: array<Operand>;
@group(0) @binding(1) var<storage, read> b: array<Operand>;
@group(0) @binding(2) var<storage, read> bias: array<Operand>;
@group(0) @binding(3) var<storage, read> residual: array<Output>;
@group(0) @binding(4) var<storage, read> row_scale: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<Output>;
@group(0) @binding(6) var<storage, read_write> pre: array<Output>;
@group(0) @binding(7) var<uniform> p: Params;

// Offset of op(A)[row, kk] relative to the batch item's base.
fn a_at(row: u32, kk: u32) -> u32 {
    if (A_TRANS) {
        return kk * p.lda + row;
    }
    return row * p.lda + kk;
}

// Offset of op(B)[kk, col] relative to the batch item's base.
fn b_at(kk: u32, col: u32) -> u32 {
    if (B_TRANS) {
        return col * p.ldb + kk;
    }
    return kk * p.ldb + col;
}

fn store(batch: u32, row: u32, col: u32, value: f32) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    let at = batch * p.batch_c + row * p.ldc + col;
    var acc = value;
    if (HAS_BIAS) {
        acc += f32(bias[col]);
    }
    if (STORE_PRE) {
        pre[at] = Output(acc);
    }
    if (GELU) {
        acc = gelu(acc);
    }
    if (GELU_GRAD) {
        acc *= gelu_grad(f32(pre[at]));
    }
    if (ROW_SCALE) {
        acc *= row_scale[(batch * p.m + row) / p.rows_per_scale];
    }
    if (HAS_RESIDUAL) {
        acc += f32(residual[at]);
    }
    if (ACCUMULATE) {
        acc += f32(c[at]);
    }
    c[at] = Output(acc);
}

// The register-tiled entry point `matmul_register` is generated per tile shape by
// src/kernels/matmul.rs (fully unrolled: naga emits every loop as a plain `loop`, which
// CPU and some GPU compilers do not unroll, leaving the tile in memory instead of
// registers) and appended to this file. It reads A and B through these vec4 views
// when the shapes allow.
@group(0) @binding(0) var<storage, read> a4: array<vec4<Operand>>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<Operand>>;

// Shared-memory tiled (for real GPUs): the workgroup stages a BK-deep slice of A
// (as [BK][BM]) and of B (as [BK][BN]) in workgroup memory, then every invocation
// accumulates its TM x TN outputs from there. Global loads are ordered so that
// neighbouring invocations read neighbouring addresses in every layout.
var<workgroup> tile_a: array<f32, BK * BM>;
var<workgroup> tile_b: array<f32, BK * BN>;

@compute @workgroup_size(WX, WY)
fn matmul_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let batch = wg.z;
    let a_base = batch * p.batch_a + p.a_offset;
    let b_base = batch * p.batch_b + p.b_offset;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    var acc: array<f32, TM * TN>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var e = li; e < BM * BK; e += WX * WY) {
            var r: u32;
            var kk: u32;
            if (A_TRANS) {
                kk = e / BM;
                r = e % BM;
            } else {
                r = e / BK;
                kk = e % BK;
            }
            let gr = m0 + r;
            let gk = k0 + kk;
            var v = 0.0;
            if (gr < p.m && gk < p.k) {
                v = f32(a[a_base + a_at(gr, gk)]);
            }
            tile_a[kk * BM + r] = v;
        }
        for (var e = li; e < BN * BK; e += WX * WY) {
            var col: u32;
            var kk: u32;
            if (B_TRANS) {
                col = e / BK;
                kk = e % BK;
            } else {
                kk = e / BN;
                col = e % BN;
            }
            let gc = n0 + col;
            let gk = k0 + kk;
            var v = 0.0;
            if (gc < p.n && gk < p.k) {
                v = f32(b[b_base + b_at(gk, gc)]);
            }
            tile_b[kk * BN + col] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, TM>;
            var bv: array<f32, TN>;
            for (var i = 0u; i < TM; i++) {
                av[i] = tile_a[kk * BM + lid.y * TM + i];
            }
            for (var j = 0u; j < TN; j++) {
                bv[j] = tile_b[kk * BN + lid.x + WX * j];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] = fma(av[i], bv[j], acc[i * TN + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            store(batch, m0 + lid.y * TM + i, n0 + lid.x + WX * j, acc[i * TN + j]);
        }
    }
}
