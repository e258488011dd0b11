// Functions shared by several kernel families; prepended to their sources.
// WGSL has no erf: `erf_approx` is Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7).

const INV_SQRT2: f32 = 0.70710678118654752;
const INV_SQRT_2PI: f32 = 0.39894228040143268;

fn erf_approx(v: f32) -> f32 {
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let r = 1.0 - poly * exp(-a * a);
    return select(-r, r, v >= 0.0);
}

// GELU, erf form (PyTorch's default): 0.5 v (1 + erf(v / sqrt 2)).
fn gelu(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf_approx(v * INV_SQRT2));
}

// d gelu / dv = Phi(v) + v phi(v).
fn gelu_grad(v: f32) -> f32 {
    return 0.5 * (1.0 + erf_approx(v * INV_SQRT2)) + v * INV_SQRT_2PI * exp(-0.5 * v * v);
}
