//! CPU twins of `shaders/resize.wgsl` in f64: bilinear image resize and the bicubic
//! position-embedding resize with its backward, PyTorch `F.interpolate` semantics
//! (align_corners = False, antialias = False, scale = in / out).

/// Keys' cubic convolution coefficient, the one torch uses for bicubic.
const CUBIC_A: f64 = -0.75;

/// Source coordinate of destination index `d` for align_corners = False.
fn source_coord(d: usize, input: usize, output: usize) -> f64 {
    (d as f64 + 0.5) * (input as f64 / output as f64) - 0.5
}

/// Bilinear taps along one axis: (first index, second index, weight of the second).
/// The coordinate is clamped at 0 from below; at the far border both taps sit on the last cell.
fn linear_taps(d: usize, input: usize, output: usize) -> (usize, usize, f64) {
    let real = source_coord(d, input, output).max(0.0);
    let i0 = (real.floor() as usize).min(input - 1);
    let i1 = (i0 + 1).min(input - 1);
    (i0, i1, real - i0 as f64)
}

/// Bicubic taps along one axis: 4 (clamped index, weight) pairs. The coordinate itself is not
/// clamped; taps outside [0, size - 1] read the border cell.
fn cubic_taps(d: usize, input: usize, output: usize) -> [(usize, f64); 4] {
    let real = source_coord(d, input, output);
    let fl = real.floor();
    let t = real - fl;
    let outer = |x: f64| ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A;
    let inner = |x: f64| ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0;
    let weights = [outer(t + 1.0), inner(t), inner(1.0 - t), outer(2.0 - t)];
    let first = fl as i64 - 1;
    std::array::from_fn(|k| ((first + k as i64).clamp(0, input as i64 - 1) as usize, weights[k]))
}

/// y [B, Ch, H2, W2] from x [B, Ch, H, W] (`shape`), bilinear.
pub fn resize_bilinear(x: &[f64], shape: [usize; 4], out_hw: [usize; 2]) -> Vec<f64> {
    let [b, ch, h, w] = shape;
    let [h2, w2] = out_hw;
    let mut y = vec![0.0; b * ch * h2 * w2];
    for plane in 0..b * ch {
        let src = &x[plane * h * w..(plane + 1) * h * w];
        for oy in 0..h2 {
            let (y0, y1, ly) = linear_taps(oy, h, h2);
            for ox in 0..w2 {
                let (x0, x1, lx) = linear_taps(ox, w, w2);
                let top = (1.0 - lx) * src[y0 * w + x0] + lx * src[y0 * w + x1];
                let bottom = (1.0 - lx) * src[y1 * w + x0] + lx * src[y1 * w + x1];
                y[(plane * h2 + oy) * w2 + ox] = (1.0 - ly) * top + ly * bottom;
            }
        }
    }
    y
}

/// out [Gh2, Gw2, C] from grid [Gh, Gw, C] (`in_hw` = [Gh, Gw]), bicubic, channels last.
pub fn pos_embed_resize_forward(grid: &[f64], in_hw: [usize; 2], c: usize, out_hw: [usize; 2]) -> Vec<f64> {
    let ([gh, gw], [gh2, gw2]) = (in_hw, out_hw);
    let mut out = vec![0.0; gh2 * gw2 * c];
    for oy in 0..gh2 {
        let rows = cubic_taps(oy, gh, gh2);
        for ox in 0..gw2 {
            let cols = cubic_taps(ox, gw, gw2);
            for ch in 0..c {
                let mut acc = 0.0;
                for &(sy, wy) in &rows {
                    for &(sx, wx) in &cols {
                        acc += wy * wx * grid[(sy * gw + sx) * c + ch];
                    }
                }
                out[(oy * gw2 + ox) * c + ch] = acc;
            }
        }
    }
    out
}

/// dgrid [Gh, Gw, C] from dout [Gh2, Gw2, C]: the transpose of the forward, written as a
/// scatter (the GPU gathers instead, so the two formulations check each other).
pub fn pos_embed_resize_backward(dout: &[f64], in_hw: [usize; 2], c: usize, out_hw: [usize; 2]) -> Vec<f64> {
    let ([gh, gw], [gh2, gw2]) = (in_hw, out_hw);
    let mut dgrid = vec![0.0; gh * gw * c];
    for oy in 0..gh2 {
        let rows = cubic_taps(oy, gh, gh2);
        for ox in 0..gw2 {
            let cols = cubic_taps(ox, gw, gw2);
            for ch in 0..c {
                let g = dout[(oy * gw2 + ox) * c + ch];
                for &(sy, wy) in &rows {
                    for &(sx, wx) in &cols {
                        dgrid[(sy * gw + sx) * c + ch] += wy * wx * g;
                    }
                }
            }
        }
    }
    dgrid
}
