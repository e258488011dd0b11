// GELU forward and backward, elementwise; `gelu` and `gelu_grad` come from common.wgsl.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;
// The storage type of every binding (f16: computed in f32, rounded once on store).
alias Act = f32;

@group(0) @binding(0) var<storage, read> x: array<Act>;
@group(0) @binding(1) var<storage, read_write> y: array<Act>;
@group(0) @binding(2) var<uniform> p: Params;

// y[i] = gelu(x[i])
@compute @workgroup_size(WG)
fn gelu_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i < p.n) {
        y[i] = Act(gelu(f32(x[i])));
    }
}

@group(0) @binding(0) var<storage, read> bx: array<Act>;
@group(0) @binding(1) var<storage, read> dy: array<Act>;
@group(0) @binding(2) var<storage, read_write> dx: array<Act>;
@group(0) @binding(3) var<uniform> bp: Params;

// dx[i] = dy[i] * gelu'(x[i])
@compute @workgroup_size(WG)
fn gelu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i < bp.n) {
        dx[i] = Act(f32(dy[i]) * gelu_grad(f32(bx[i])));
    }
}
