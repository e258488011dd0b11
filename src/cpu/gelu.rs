//! CPU twins of `shaders/gelu.wgsl` (exact erf, f64).

use crate::cpu::erf;

const INV_SQRT2: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// y = 0.5 x (1 + erf(x / sqrt 2))
pub fn gelu_forward(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| 0.5 * v * (1.0 + erf(v * INV_SQRT2))).collect()
}

/// dx = dy * (Phi(x) + x phi(x))
pub fn gelu_backward(x: &[f64], dy: &[f64]) -> Vec<f64> {
    let inv_sqrt_2pi = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
    x.iter()
        .zip(dy)
        .map(|(&v, &g)| g * (0.5 * (1.0 + erf(v * INV_SQRT2)) + v * inv_sqrt_2pi * (-0.5 * v * v).exp()))
        .collect()
}
