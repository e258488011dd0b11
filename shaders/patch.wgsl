// Patchify: images [B, Ch, H, W] -> patches [B * Np, Ch * P * P], Np = (H / P) * (W / P),
// patches row-major over the patch grid, each patch flattened as (channel, py, px): the
// layout of a Conv2d weight [C, Ch, P, P], so patch_embed = patches . W^T + b.
// A pure gather; images take no gradient, so there is no backward.

struct Params {
    n: u32,      // output elements, B * Np * Ch * P * P
    ch: u32,
    h: u32,
    w: u32,
    p: u32,
    grid_w: u32, // W / P
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 256u;
// Storage types, from the tensors bound: every entry point reads `Src` and writes `Dst`
// (f32 or f16; the arithmetic is f32 and a store rounds once).
alias Src = f32;
alias Dst = f32;

@group(0) @binding(0) var<storage, read> images: array<Src>;
@group(0) @binding(1) var<storage, read_write> patches: array<Dst>;
@group(0) @binding(2) var<uniform> p: Params;

// patches[b * Np + gy * grid_w + gx, (c * P + py) * P + px] = f32(images[b, c, gy * P + py, gx * P + px])
@compute @workgroup_size(WG)
fn patchify(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= p.n) {
        return;
    }
    let pp = p.p * p.p;
    let k = i % (p.ch * pp);
    let row = i / (p.ch * pp);
    let np = (p.h / p.p) * p.grid_w;
    let b = row / np;
    let cell = row % np;
    let gy = cell / p.grid_w;
    let gx = cell % p.grid_w;
    let c = k / pp;
    let py = (k / p.p) % p.p;
    let px = k % p.p;
    let y = gy * p.p + py;
    let x = gx * p.p + px;
    patches[i] = Dst(f32(images[((b * p.ch + c) * p.h + y) * p.w + x]));
}
