//! Numerical comparison with stated tolerances, shared by tests and benchmarks.

use crate::gpu::Element;

/// Unit roundoff of f16 (11-bit significand): rounding to nearest moves a normal value by
/// at most 2⁻¹¹ of itself.
pub const F16_UNIT_ROUNDOFF: f64 = 1.0 / 2048.0;

/// The whole two-block test ViT with f16 activations against the f64 CPU model: bound on
/// ‖gpu − cpu‖₂ / ‖cpu‖₂ per tensor (logits, every gradient). Every stored activation
/// carries a rounding error of up to u = 2⁻¹¹ of itself; a gradient of the first block
/// passes through about 20 stored tensors, whose independent errors add up to about
/// u·√20 ≈ 2.2e-3, and 8u ≈ 3.9e-3 leaves room for the network's conditioning (measured:
/// at most 1.3e-3 on lavapipe). An f32 value read as f16 bits, a lost rounding step or a
/// scaled gradient left unscaled misses it by orders of magnitude.
pub const F16_MODEL_REL_L2: f64 = 8.0 * F16_UNIT_ROUNDOFF;

/// ‖actual − expected‖₂ / ‖expected‖₂, or the plain norm of `actual` when `expected` is 0.
pub fn relative_l2(actual: &[f32], expected: &[f64]) -> f64 {
    let diff: f64 = actual.iter().zip(expected).map(|(&a, &e)| (a as f64 - e).powi(2)).sum();
    let norm: f64 = expected.iter().map(|e| e * e).sum();
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// |a - b| <= abs + rel * |b| elementwise, where `b` is the reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rel: f64,
    pub abs: f64,
}

impl Tolerance {
    /// Forward kernels against their CPU twins in f32 (issue bar: rel 1e-4, abs 1e-5).
    pub const FORWARD: Tolerance = Tolerance { rel: 1e-4, abs: 1e-5 };
    /// Backward kernels against their CPU twins in f32 (issue bar: rel 1e-3).
    pub const BACKWARD: Tolerance = Tolerance { rel: 1e-3, abs: 1e-5 };
    /// CPU backward (f64) against central finite differences with step 1e-6: truncation
    /// error O(h^2) plus rounding O(eps/h) gives about 1e-8 on smooth functions.
    pub const FINITE_DIFF: Tolerance = Tolerance { rel: 1e-5, abs: 1e-7 };

    /// This tolerance for a kernel that computes in f32 and then stores its result as
    /// `element`, compared with an f64 twin that ran on the same (stored) inputs. f16: WGSL
    /// lets a conversion to f16 take either neighbour of an inexact value, so the one
    /// rounding costs up to one f16 ulp, 2·[`F16_UNIT_ROUNDOFF`] of the value, on top of the
    /// f32 arithmetic's share. The absolute floor is kept: f16's smallest subnormal step
    /// (6e-8) is below every floor used here.
    pub const fn after_rounding_to(self, element: Element) -> Tolerance {
        match element {
            Element::F32 => self,
            Element::F16 => Tolerance { rel: self.rel + 2.0 * F16_UNIT_ROUNDOFF, abs: self.abs },
        }
    }

    /// Whether `actual` is within tolerance of `expected`.
    pub fn accepts(&self, actual: f64, expected: f64) -> bool {
        let diff = (actual - expected).abs();
        diff <= self.abs + self.rel * expected.abs() || (actual.is_nan() && expected.is_nan())
    }

    /// Compares two slices; on failure returns a report of the first mismatches,
    /// their indices and the largest difference.
    pub fn check<A, B>(&self, what: &str, actual: &[A], expected: &[B]) -> Result<(), String>
    where
        A: Copy + Into<f64>,
        B: Copy + Into<f64>,
    {
        if actual.len() != expected.len() {
            return Err(format!("{what}: length {} but expected {}", actual.len(), expected.len()));
        }
        let mut bad = Vec::new();
        let mut max_diff = 0f64;
        let mut max_at = 0;
        let mut count = 0usize;
        for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
            let (a, e): (f64, f64) = (a.into(), e.into());
            let diff = (a - e).abs();
            if diff > max_diff || diff.is_nan() {
                max_diff = diff;
                max_at = i;
            }
            if !self.accepts(a, e) {
                count += 1;
                if bad.len() < 8 {
                    bad.push(format!("  [{i}] got {a:.8e}, expected {e:.8e} (diff {diff:.2e})"));
                }
            }
        }
        if count == 0 {
            return Ok(());
        }
        Err(format!(
            "{what}: {count} of {} values outside rel {:e} / abs {:e}; max diff {max_diff:.3e} at [{max_at}]\n{}",
            actual.len(),
            self.rel,
            self.abs,
            bad.join("\n")
        ))
    }

    /// Like [`Tolerance::check`] but panics with the report; for tests.
    #[track_caller]
    pub fn assert<A, B>(&self, what: &str, actual: &[A], expected: &[B])
    where
        A: Copy + Into<f64>,
        B: Copy + Into<f64>,
    {
        if let Err(report) = self.check(what, actual, expected) {
            panic!("{report}");
        }
    }
}
