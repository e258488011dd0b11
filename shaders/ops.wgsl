// Small ops of the ViT: elementwise add / scale / axpy, deterministic reductions (sum of a
// vector, column sums for bias gradients), the class-token concat and slice, the broadcast
// position-embedding add, and row gather / scatter for token keep-lists. Each has its backward
// here or is its own adjoint's building block (see src/kernels/ops.rs).
//
// Glossary: B batch, N tokens, Np patch tokens (N = Np + 1 with the class token), Nk kept
// tokens, C channels, R rows of a [R, C] matrix.

struct ElementwiseParams {
    n: u32,
    a: f32,
    _pad0: u32,
    _pad1: u32,
}

struct ReduceParams {
    n: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

struct ColumnParams {
    rows: u32,
    cols: u32,
    // column_sum_partial: rows per block; column_sum: 1 to add into out (accumulate).
    rows_per_block_or_accumulate: u32,
    num_blocks: u32,
}

struct TokenParams {
    batch: u32,
    // Tokens of the full sequence [B, N, C] (N = Np + 1 for the class-token ops).
    tokens: u32,
    cols: u32,
    // cls_concat_backward: 1 to add into dcls.
    accumulate: u32,
}

struct GatherParams {
    batch: u32,
    tokens: u32,
    kept: u32,
    cols: u32,
}

const WG: u32 = 256u;
// The storage type of activations (and the weights read: class token, position embedding).
// f16 is storage only: loads widen to f32, stores round once. Reduction outputs, weight
// gradients (dcls) and drop-path scales stay f32; `convert` writes `Converted`.
alias Act = f32;
alias Converted = f32;

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * WG + lid;
}

// ---- elementwise ---------------------------------------------------------------------------

@group(0) @binding(0) var<storage, read> add_x: array<Act>;
@group(0) @binding(1) var<storage, read> add_y: array<Act>;
@group(0) @binding(2) var<storage, read_write> add_z: array<Act>;
@group(0) @binding(3) var<uniform> add_p: ElementwiseParams;

// z = x + y
@compute @workgroup_size(WG)
fn add_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < add_p.n) {
        add_z[i] = Act(f32(add_x[i]) + f32(add_y[i]));
    }
}

@group(0) @binding(0) var<storage, read_write> scale_x: array<Act>;
@group(0) @binding(1) var<uniform> scale_p: ElementwiseParams;

// x = a * x, in place
@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < scale_p.n) {
        scale_x[i] = Act(scale_p.a * f32(scale_x[i]));
    }
}

@group(0) @binding(0) var<storage, read> axpy_x: array<Act>;
@group(0) @binding(1) var<storage, read_write> axpy_y: array<Act>;
@group(0) @binding(2) var<uniform> axpy_p: ElementwiseParams;

// y = y + a * x
@compute @workgroup_size(WG)
fn axpy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < axpy_p.n) {
        axpy_y[i] = Act(f32(axpy_y[i]) + axpy_p.a * f32(axpy_x[i]));
    }
}

// ---- reductions ----------------------------------------------------------------------------

var<workgroup> reduce_slots: array<f32, WG>;

@group(0) @binding(0) var<storage, read> reduce_x: array<Act>;
@group(0) @binding(1) var<storage, read_write> reduce_out: array<f32>;
@group(0) @binding(2) var<uniform> reduce_p: ReduceParams;

// out[0] = scale * sum x, by one workgroup (meant for short vectors such as per-row losses):
// each invocation adds a strided slice, invocation 0 adds the WG partials in order.
@compute @workgroup_size(WG)
fn reduce_sum(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < reduce_p.n; i += WG) {
        s += f32(reduce_x[i]);
    }
    reduce_slots[lid] = s;
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0.0;
        for (var i = 0u; i < WG; i++) {
            total += reduce_slots[i];
        }
        reduce_out[0] = reduce_p.scale * total;
    }
}

@group(0) @binding(0) var<storage, read> csp_x: array<Act>;
@group(0) @binding(1) var<storage, read_write> csp_partial: array<f32>;
@group(0) @binding(2) var<uniform> csp_p: ColumnParams;

// partial[blk, c] = sum of x[r, c] over the rows r of block blk: one invocation per (blk, c),
// adjacent invocations on adjacent columns (coalesced). Blocks past the last row write zeros.
@compute @workgroup_size(WG)
fn column_sum_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    let cols = csp_p.cols;
    if (i >= cols * csp_p.num_blocks) {
        return;
    }
    let blk = i / cols;
    let c = i - blk * cols;
    let first = blk * csp_p.rows_per_block_or_accumulate;
    let last = min(first + csp_p.rows_per_block_or_accumulate, csp_p.rows);
    var s = 0.0;
    for (var r = first; r < last; r++) {
        s += f32(csp_x[r * cols + c]);
    }
    csp_partial[i] = s;
}

const COLS: u32 = 32u;
const LANES: u32 = 8u;

var<workgroup> lane_sums: array<array<f32, COLS>, LANES>;

@group(0) @binding(0) var<storage, read> cs_x: array<Act>;
@group(0) @binding(1) var<storage, read_write> cs_out: array<f32>;
@group(0) @binding(2) var<uniform> cs_p: ColumnParams;

// out[c] (+)= sum_r x[r, c]. A workgroup takes COLS adjacent columns; LANES invocations per
// column add every LANES-th row, then lane 0 adds the LANES sums in order.
@compute @workgroup_size(COLS, LANES)
fn column_sum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) li: vec3<u32>) {
    let c = (wg.x + wg.y * nwg.x) * COLS + li.x;
    let valid = c < cs_p.cols;
    var s = 0.0;
    if (valid) {
        for (var r = li.y; r < cs_p.rows; r += LANES) {
            s += f32(cs_x[r * cs_p.cols + c]);
        }
    }
    lane_sums[li.y][li.x] = s;
    workgroupBarrier();
    if (valid && li.y == 0u) {
        var total = 0.0;
        for (var l = 0u; l < LANES; l++) {
            total += lane_sums[l][li.x];
        }
        if (cs_p.rows_per_block_or_accumulate != 0u) {
            total += cs_out[c];
        }
        cs_out[c] = total;
    }
}

// ---- class token ---------------------------------------------------------------------------

@group(0) @binding(0) var<storage, read> cc_patches: array<Act>;
@group(0) @binding(1) var<storage, read> cc_cls: array<Act>;
@group(0) @binding(2) var<storage, read_write> cc_out: array<Act>;
@group(0) @binding(3) var<uniform> cc_p: TokenParams;

// out[b, 0, :] = cls, out[b, 1 + n, :] = patches[b, n, :]
@compute @workgroup_size(WG)
fn cls_concat(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    let per_batch = cc_p.tokens * cc_p.cols;
    if (i >= cc_p.batch * per_batch) {
        return;
    }
    let b = i / per_batch;
    let j = i - b * per_batch;
    if (j < cc_p.cols) {
        cc_out[i] = cc_cls[j];
    } else {
        // Patch element j - C of batch b, whose patches hold (N - 1) C values.
        cc_out[i] = cc_patches[b * (per_batch - cc_p.cols) + j - cc_p.cols];
    }
}

@group(0) @binding(0) var<storage, read> ccb_dout: array<Act>;
@group(0) @binding(1) var<storage, read_write> ccb_dpatches: array<Act>;
@group(0) @binding(2) var<storage, read_write> ccb_dcls: array<f32>;
@group(0) @binding(3) var<uniform> ccb_p: TokenParams;

// dpatches[b, n, :] = dout[b, 1 + n, :]; dcls[c] (+)= sum_b dout[b, 0, c] (batch order, fixed).
// The first B (N - 1) C invocations copy, the next C add one column each.
@compute @workgroup_size(WG)
fn cls_concat_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    let cols = ccb_p.cols;
    let per_batch = (ccb_p.tokens - 1u) * cols;
    let copies = ccb_p.batch * per_batch;
    if (i < copies) {
        let b = i / per_batch;
        ccb_dpatches[i] = ccb_dout[i + (b + 1u) * cols];
    } else if (i < copies + cols) {
        let c = i - copies;
        var s = 0.0;
        for (var b = 0u; b < ccb_p.batch; b++) {
            s += f32(ccb_dout[b * ccb_p.tokens * cols + c]);
        }
        if (ccb_p.accumulate != 0u) {
            s += ccb_dcls[c];
        }
        ccb_dcls[c] = s;
    }
}

@group(0) @binding(0) var<storage, read> cs_in: array<Act>;
@group(0) @binding(1) var<storage, read_write> cs_slice: array<Act>;
@group(0) @binding(2) var<uniform> csl_p: TokenParams;

// out[b, :] = x[b, 0, :] (the class token of every sequence)
@compute @workgroup_size(WG)
fn cls_slice(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= csl_p.batch * csl_p.cols) {
        return;
    }
    let b = i / csl_p.cols;
    cs_slice[i] = cs_in[i + b * (csl_p.tokens - 1u) * csl_p.cols];
}

@group(0) @binding(0) var<storage, read> csb_dout: array<Act>;
@group(0) @binding(1) var<storage, read_write> csb_dx: array<Act>;
@group(0) @binding(2) var<uniform> csb_p: TokenParams;

// dx[b, 0, :] = dout[b, :], dx[b, n > 0, :] = 0
@compute @workgroup_size(WG)
fn cls_slice_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    let per_batch = csb_p.tokens * csb_p.cols;
    if (i >= csb_p.batch * per_batch) {
        return;
    }
    let b = i / per_batch;
    let j = i - b * per_batch;
    var v = 0.0;
    if (j < csb_p.cols) {
        v = f32(csb_dout[b * csb_p.cols + j]);
    }
    csb_dx[i] = Act(v);
}

// ---- position embedding --------------------------------------------------------------------

@group(0) @binding(0) var<storage, read> ab_pos: array<Act>;
@group(0) @binding(1) var<storage, read_write> ab_x: array<Act>;
@group(0) @binding(2) var<uniform> ab_p: TokenParams;

// x[b, n, c] += pos[n, c], in place
@compute @workgroup_size(WG)
fn add_broadcast(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    let per_batch = ab_p.tokens * ab_p.cols;
    if (i < ab_p.batch * per_batch) {
        ab_x[i] = Act(f32(ab_x[i]) + f32(ab_pos[i % per_batch]));
    }
}

// ---- token gather / scatter ----------------------------------------------------------------

@group(0) @binding(0) var<storage, read> g_x: array<Act>;
@group(0) @binding(1) var<storage, read> g_index: array<u32>;
@group(0) @binding(2) var<storage, read_write> g_out: array<Act>;
@group(0) @binding(3) var<uniform> g_p: GatherParams;

// out[b, k, :] = x[b, index[b, k], :]; an index >= N gives a zero row.
@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= g_p.batch * g_p.kept * g_p.cols) {
        return;
    }
    let row = i / g_p.cols; // b * Nk + k
    let c = i - row * g_p.cols;
    let b = row / g_p.kept;
    let n = g_index[row];
    var v = 0.0;
    if (n < g_p.tokens) {
        v = f32(g_x[(b * g_p.tokens + n) * g_p.cols + c]);
    }
    g_out[i] = Act(v);
}

@group(0) @binding(0) var<storage, read> s_dout: array<Act>;
@group(0) @binding(1) var<storage, read> s_index: array<u32>;
@group(0) @binding(2) var<storage, read_write> s_dx: array<Act>;
@group(0) @binding(3) var<uniform> s_p: GatherParams;

// dx[b, index[b, k], :] = dout[b, k, :] into a dx cleared beforehand (rows not kept stay zero).
// Indices of one batch must be distinct; an index >= N is skipped.
@compute @workgroup_size(WG)
fn scatter_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= s_p.batch * s_p.kept * s_p.cols) {
        return;
    }
    let row = i / s_p.cols;
    let c = i - row * s_p.cols;
    let b = row / s_p.kept;
    let n = s_index[row];
    if (n < s_p.tokens) {
        s_dx[(b * s_p.tokens + n) * s_p.cols + c] = s_dout[i];
    }
}

// ---- drop-path -----------------------------------------------------------------------------

struct RowScaleParams {
    n: u32,
    // Elements per batch item: element i belongs to item i / per_item.
    per_item: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> asr_x: array<Act>;
@group(0) @binding(1) var<storage, read> asr_branch: array<Act>;
@group(0) @binding(2) var<storage, read> asr_scale: array<f32>;
@group(0) @binding(3) var<storage, read_write> asr_out: array<Act>;
@group(0) @binding(4) var<uniform> asr_p: RowScaleParams;

// out = x + branch * scale[b]: a residual add whose branch is dropped (scale 0) or
// rescaled (1 / keep probability) per batch item.
@compute @workgroup_size(WG)
fn add_scaled_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < asr_p.n) {
        asr_out[i] = Act(f32(asr_x[i]) + f32(asr_branch[i]) * asr_scale[i / asr_p.per_item]);
    }
}

@group(0) @binding(0) var<storage, read> sr_x: array<Act>;
@group(0) @binding(1) var<storage, read> sr_scale: array<f32>;
@group(0) @binding(2) var<storage, read_write> sr_y: array<Act>;
@group(0) @binding(3) var<uniform> sr_p: RowScaleParams;

// y = x * scale[b] (the branch gradient of add_scaled_rows)
@compute @workgroup_size(WG)
fn scale_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < sr_p.n) {
        sr_y[i] = Act(f32(sr_x[i]) * sr_scale[i / sr_p.per_item]);
    }
}

// ---- element type conversion -----------------------------------------------------------------

@group(0) @binding(0) var<storage, read> cv_x: array<Act>;
@group(0) @binding(1) var<storage, read_write> cv_y: array<Converted>;
@group(0) @binding(2) var<uniform> cv_p: ElementwiseParams;

// y = x in another element type (f32 master weights to their f16 copy, f16 to f32)
@compute @workgroup_size(WG)
fn convert(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < cv_p.n) {
        cv_y[i] = Converted(cv_x[i]);
    }
}
