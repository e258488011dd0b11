// Resizing, with PyTorch's F.interpolate(align_corners=False, antialias=False) semantics:
// - resize_bilinear: images [B, Ch, H, W] -> [B, Ch, H2, W2] (progressive resolution).
// - pos_embed_resize_forward / _backward: bicubic (A = -0.75) resize of the position-embedding
//   grid [Gh, Gw, C] -> [Gh2, Gw2, C], channels last as the ViT stores its tokens.
//
// Source coordinate of destination index d: (d + 0.5) * scale - 0.5 with scale = in / out
// (computed in f32 on the host, as torch does for f32 tensors). Bilinear clamps that coordinate
// at 0 from below; bicubic does not, it clamps the integer tap indices to [0, size - 1].

struct BilinearParams {
    n: u32,        // output elements, B * Ch * H2 * W2
    h: u32,
    w: u32,
    h2: u32,
    w2: u32,
    scale_h: f32,  // H / H2
    scale_w: f32,  // W / W2
    _pad0: u32,
}

struct BicubicParams {
    n: u32,        // elements of the tensor this entry point writes
    c: u32,
    gh: u32,       // source grid
    gw: u32,
    gh2: u32,      // destination grid
    gw2: u32,
    scale_h: f32,  // Gh / Gh2
    scale_w: f32,  // Gw / Gw2
}

const WG: u32 = 256u;
const CUBIC_A: f32 = -0.75;
// Storage types, from the tensors bound: every entry point reads `Src` and writes `Dst`
// (f32 or f16; the arithmetic is f32 and a store rounds once).
alias Src = f32;
alias Dst = f32;

// Keys' cubic convolution kernel for 1 <= |x| < 2 and |x| < 1 respectively.
fn cubic_outer(x: f32) -> f32 {
    return ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A;
}

fn cubic_inner(x: f32) -> f32 {
    return ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0;
}

// Weights of the taps at floor - 1, floor, floor + 1, floor + 2 for fraction t in [0, 1).
fn cubic_weights(t: f32) -> vec4<f32> {
    let u = 1.0 - t;
    return vec4<f32>(cubic_outer(t + 1.0), cubic_inner(t), cubic_inner(u), cubic_outer(u + 1.0));
}

// Unclamped bicubic source coordinate of destination index d.
fn cubic_source(d: u32, scale: f32) -> f32 {
    return scale * (f32(d) + 0.5) - 0.5;
}

// Total weight that destination index d (along one axis) gives to source index s once tap
// indices are clamped to [0, size - 1]: several taps may land on a border cell.
fn cubic_weight_to(d: u32, s: i32, size: u32, scale: f32) -> f32 {
    let real = cubic_source(d, scale);
    let fl = floor(real);
    let w = cubic_weights(real - fl);
    let first = i32(fl) - 1;
    let last = i32(size) - 1;
    var total = 0.0;
    for (var k = 0; k < 4; k++) {
        if (clamp(first + k, 0, last) == s) {
            total += w[k];
        }
    }
    return total;
}

// Destination indices whose taps can touch source index s, with one index of slack on each
// side against f32 rounding (the exact test is `cubic_weight_to`). A destination's taps span
// floor(real) - 1 ..= floor(real) + 2, so floor(real) must lie in [s - 2, s + 1]; clamped taps
// need no special case since floor(real) >= -1 and <= size - 1 always.
fn cubic_dest_range(s: u32, scale: f32, out_size: u32) -> vec2<u32> {
    let lo = floor((f32(s) - 1.5) / scale - 0.5) - 1.0;
    let hi = ceil((f32(s) + 2.5) / scale - 0.5) + 1.0;
    let top = f32(out_size - 1u);
    return vec2<u32>(u32(clamp(lo, 0.0, top)), u32(clamp(hi, 0.0, top)));
}

@group(0) @binding(0) var<storage, read> bl_x: array<Src>;
@group(0) @binding(1) var<storage, read_write> bl_y: array<Dst>;
@group(0) @binding(2) var<uniform> bl: BilinearParams;

// y[b, ch, oy, ox] = bilinear sample of x[b, ch] at the source coordinate of (oy, ox).
@compute @workgroup_size(WG)
fn resize_bilinear(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= bl.n) {
        return;
    }
    let ox = i % bl.w2;
    let oy = (i / bl.w2) % bl.h2;
    let plane = i / (bl.w2 * bl.h2);

    let ry = max(bl.scale_h * (f32(oy) + 0.5) - 0.5, 0.0);
    let rx = max(bl.scale_w * (f32(ox) + 0.5) - 0.5, 0.0);
    let y0 = min(u32(ry), bl.h - 1u);
    let x0 = min(u32(rx), bl.w - 1u);
    // The second tap stays on the border cell when the first one is already there.
    let y1 = min(y0 + 1u, bl.h - 1u);
    let x1 = min(x0 + 1u, bl.w - 1u);
    let ly = ry - f32(y0);
    let lx = rx - f32(x0);

    let base = plane * bl.h * bl.w;
    let top = (1.0 - lx) * f32(bl_x[base + y0 * bl.w + x0]) + lx * f32(bl_x[base + y0 * bl.w + x1]);
    let bottom = (1.0 - lx) * f32(bl_x[base + y1 * bl.w + x0]) + lx * f32(bl_x[base + y1 * bl.w + x1]);
    bl_y[i] = Dst((1.0 - ly) * top + ly * bottom);
}

@group(0) @binding(0) var<storage, read> pf_grid: array<Src>;
@group(0) @binding(1) var<storage, read_write> pf_out: array<Dst>;
@group(0) @binding(2) var<uniform> pf: BicubicParams;

// out[oy, ox, c] = sum over the 4x4 clamped taps of wy * wx * grid[y, x, c]; one thread per
// output element, consecutive threads on consecutive channels so reads coalesce.
@compute @workgroup_size(WG)
fn pos_embed_resize_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= pf.n) {
        return;
    }
    let ch = i % pf.c;
    let pixel = i / pf.c;
    let ox = pixel % pf.gw2;
    let oy = pixel / pf.gw2;

    let ry = cubic_source(oy, pf.scale_h);
    let rx = cubic_source(ox, pf.scale_w);
    let fy = floor(ry);
    let fx = floor(rx);
    let wy = cubic_weights(ry - fy);
    let wx = cubic_weights(rx - fx);
    let y_first = i32(fy) - 1;
    let x_first = i32(fx) - 1;
    let y_last = i32(pf.gh) - 1;
    let x_last = i32(pf.gw) - 1;

    var acc = 0.0;
    for (var r = 0; r < 4; r++) {
        let row = u32(clamp(y_first + r, 0, y_last)) * pf.gw;
        var along_row = 0.0;
        for (var k = 0; k < 4; k++) {
            let col = u32(clamp(x_first + k, 0, x_last));
            along_row += wx[k] * f32(pf_grid[(row + col) * pf.c + ch]);
        }
        acc += wy[r] * along_row;
    }
    pf_out[i] = Dst(acc);
}

@group(0) @binding(0) var<storage, read> pb_dout: array<Src>;
@group(0) @binding(1) var<storage, read_write> pb_dgrid: array<Dst>;
@group(0) @binding(2) var<uniform> pb: BicubicParams;

// dgrid[sy, sx, c] = sum over destinations (oy, ox) of Wy(oy -> sy) * Wx(ox -> sx) * dout[oy, ox, c].
// A gather: each thread owns one source element, so the result is deterministic without atomics.
@compute @workgroup_size(WG)
fn pos_embed_resize_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= pb.n) {
        return;
    }
    let ch = i % pb.c;
    let cell = i / pb.c;
    let sx = cell % pb.gw;
    let sy = cell / pb.gw;

    let rows = cubic_dest_range(sy, pb.scale_h, pb.gh2);
    let cols = cubic_dest_range(sx, pb.scale_w, pb.gw2);
    var acc = 0.0;
    for (var oy = rows.x; oy <= rows.y; oy++) {
        let wy = cubic_weight_to(oy, i32(sy), pb.gh, pb.scale_h);
        if (wy == 0.0) {
            continue;
        }
        var along_row = 0.0;
        for (var ox = cols.x; ox <= cols.y; ox++) {
            let wx = cubic_weight_to(ox, i32(sx), pb.gw, pb.scale_w);
            along_row += wx * f32(pb_dout[(oy * pb.gw2 + ox) * pb.c + ch]);
        }
        acc += wy * along_row;
    }
    pb_dgrid[i] = Dst(acc);
}
