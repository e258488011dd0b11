// GELU, erf form (PyTorch's default): y = 0.5 x (1 + erf(x / sqrt 2)).
// WGSL has no erf; `erf_approx` is Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7).

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;
const INV_SQRT2: f32 = 0.70710678118654752;
const INV_SQRT_2PI: f32 = 0.39894228040143268;

fn erf_approx(v: f32) -> f32 {
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let r = 1.0 - poly * exp(-a * a);
    return select(-r, r, v >= 0.0);
}

fn gelu(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf_approx(v * INV_SQRT2));
}

fn gelu_grad(v: f32) -> f32 {
    return 0.5 * (1.0 + erf_approx(v * INV_SQRT2)) + v * INV_SQRT_2PI * exp(-0.5 * v * v);
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

// y[i] = gelu(x[i])
@compute @workgroup_size(WG)
fn gelu_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i < p.n) {
        y[i] = gelu(x[i]);
    }
}

@group(0) @binding(0) var<storage, read> bx: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> bp: Params;

// dx[i] = dy[i] * gelu'(x[i])
@compute @workgroup_size(WG)
fn gelu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i < bp.n) {
        dx[i] = dy[i] * gelu_grad(bx[i]);
    }
}
