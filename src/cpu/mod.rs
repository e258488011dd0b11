//! CPU twins of every kernel entry point: plain loops in f64, numerically sane
//! (max-subtracted softmax), never optimised. Same names as the WGSL entry points.
//! Tests compare the GPU against these, and these against finite differences.

pub mod attention;
pub mod cross_entropy;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod ops;
pub mod optimizer;
pub mod patch;
pub mod resize;

/// The error function to near f64 precision (W. J. Cody's rational approximations
/// are overkill here; this uses the series for |x| < 3 and a continued fraction beyond).
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        // Maclaurin series: erf(a) = 2/sqrt(pi) * sum (-1)^n a^(2n+1) / (n! (2n+1))
        let mut term = a;
        let mut sum = a;
        let a2 = a * a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a2 / n;
            sum += term / (2.0 * n + 1.0);
            if n > 200.0 {
                break;
            }
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // erfc(a) = exp(-a^2)/sqrt(pi) * 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...)))) (Lentz-free, fixed depth)
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_matches_known_values() {
        // Reference values from tables of erf.
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
        ] {
            assert!((super::erf(x) - want).abs() < 1e-13, "erf({x}) = {}", super::erf(x));
            assert!((super::erf(-x) + want).abs() < 1e-13);
        }
    }
}
