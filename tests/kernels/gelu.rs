use autoprog::cpu;
use autoprog::kernels::gelu;
use autoprog::tolerance::Tolerance;
use proptest::prelude::*;

use crate::common::*;

fn check_gelu(n: usize, seed: u64) {
    let mut r = rng(seed);
    let x = rounded(&random(&mut r, n, 6.0));
    let dy = rounded(&random(&mut r, n, 1.0));
    let (xt, dyt) = (upload(&x, &[n]), upload(&dy, &[n]));
    let (y, dx) = (empty(&[n]), empty(&[n]));
    run(|rec| {
        gelu::gelu_forward(rec, &xt, &y)?;
        gelu::gelu_backward(rec, &xt, &dyt, &dx)
    });
    Tolerance::FORWARD.assert("gelu_forward", &read(&y), &cpu::gelu::gelu_forward(&x));
    Tolerance::BACKWARD.assert("gelu_backward", &read(&dx), &cpu::gelu::gelu_backward(&x, &dy));
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
