use autoprog::cpu;
use autoprog::gpu::Element;
use autoprog::kernels::gelu;
use autoprog::tolerance::Tolerance;
use proptest::prelude::*;

use crate::common::*;

fn check_gelu(n: usize, seed: u64) {
    check_gelu_as(Element::F32, n, seed);
}

fn check_gelu_as(element: Element, n: usize, seed: u64) {
    let mut r = rng(seed);
    let x = stored(element, &random(&mut r, n, 6.0));
    let dy = stored(element, &random(&mut r, n, 1.0));
    let (xt, dyt) = (upload_as(element, &x, &[n]), upload_as(element, &dy, &[n]));
    let (y, dx) = (empty_as(element, &[n]), empty_as(element, &[n]));
    run(|rec| {
        gelu::gelu_forward(rec, &xt, &y)?;
        gelu::gelu_backward(rec, &xt, &dyt, &dx)
    });
    let (forward, backward) =
        (Tolerance::FORWARD.after_rounding_to(element), Tolerance::BACKWARD.after_rounding_to(element));
    forward.assert(&format!("gelu_forward {element}"), &read(&y), &cpu::gelu::gelu_forward(&x));
    backward.assert(&format!("gelu_backward {element}"), &read(&dx), &cpu::gelu::gelu_backward(&x, &dy));
}

#[test]
fn gelu_f16_matches_cpu() {
    require_f16();
    for (n, seed) in [(1, 1), (2999, 2), (256 * 70 + 3, 3)] {
        check_gelu_as(Element::F16, n, seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn gelu_matches_cpu(n in 1usize..3000, seed in any::<u64>()) {
        check_gelu(n, seed);
    }
}

#[test]
fn gelu_large_grid() {
    // More than 65535 workgroups of 256 would need the 2-D grid; this size exercises it cheaply enough.
    check_gelu(256 * 65_536 + 7, 1);
}

#[test]
fn gelu_backward_matches_finite_differences() {
    let mut r = rng(7);
    let x = random(&mut r, 64, 4.0);
    let w = random(&mut r, 64, 1.0);
    let analytic = cpu::gelu::gelu_backward(&x, &w);
    let numeric = numeric_grad(|x| dot(&w, &cpu::gelu::gelu_forward(x)), &x, 1e-6);
    Tolerance::FINITE_DIFF.assert("gelu_backward vs finite differences", &analytic, &numeric);
}

#[test]
fn gelu_rejects_mismatched_shapes() {
    let c = ctx();
    let x = c.zeros(&[4, 5], "x").unwrap();
    let y = c.zeros(&[5, 4], "y").unwrap();
    let mut rec = c.recorder("bad");
    let err = gelu::gelu_forward(&mut rec, &x, &y).unwrap_err().to_string();
    assert!(err.contains("gelu_forward") && err.contains("[5, 4]") && err.contains("[4, 5]"), "{err}");
}
