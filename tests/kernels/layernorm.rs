use autoprog::cpu;
use autoprog::gpu::Element;
use autoprog::kernels::{layernorm, RowSplit};
use autoprog::tolerance::Tolerance;
use proptest::prelude::*;

use crate::common::*;

/// Forward, backward (with `partials` partial rows) and the param-grad pass on the GPU, each
/// against its twin, with both row splits.
fn check_layernorm(rows: usize, cols: usize, partials: usize, accumulate: bool, seed: u64) {
    for split in [RowSplit::Invocation, RowSplit::Workgroup] {
        check_layernorm_split(split, rows, cols, partials, accumulate, seed);
    }
}

fn check_layernorm_split(split: RowSplit, rows: usize, cols: usize, num_partials: usize, accumulate: bool, seed: u64) {
    check_layernorm_as(Element::F32, split, rows, cols, num_partials, accumulate, seed);
}

/// [`check_layernorm_split`] with x, y, gamma, beta, dy and dx stored as `element`.
fn check_layernorm_as(
    element: Element,
    split: RowSplit,
    rows: usize,
    cols: usize,
    num_partials: usize,
    accumulate: bool,
    seed: u64,
) {
    let eps = 1e-6;
    let mut r = rng(seed);
    let x = stored(element, &random(&mut r, rows * cols, 2.0));
    let gamma = stored(element, &random(&mut r, cols, 1.5));
    let beta = stored(element, &random(&mut r, cols, 0.5));
    let dy = stored(element, &random(&mut r, rows * cols, 1.0));
    let previous = (rounded(&random(&mut r, cols, 1.0)), rounded(&random(&mut r, cols, 1.0)));

    let up = |v: &[f64], shape: &[usize]| upload_as(element, v, shape);
    let (xt, gt, bt, dyt) = (up(&x, &[rows, cols]), up(&gamma, &[cols]), up(&beta, &[cols]), up(&dy, &[rows, cols]));
    let (y, dx) = (empty_as(element, &[rows, cols]), empty_as(element, &[rows, cols]));
    let (mean, rstd) = (empty(&[rows]), empty(&[rows]));
    let (dgp, dbp) = (empty(&[num_partials, cols]), empty(&[num_partials, cols]));
    let (dgamma, dbeta) = (upload(&previous.0, &[cols]), upload(&previous.1, &[cols]));
    run(|rec| {
        layernorm::layernorm_forward_with_split(rec, split, &xt, &gt, &bt, &y, &mean, &rstd, eps as f32)?;
        layernorm::layernorm_backward_with_split(rec, split, &xt, &gt, &mean, &rstd, &dyt, &dx, &dgp, &dbp)?;
        layernorm::layernorm_param_grad(rec, &dgp, &dbp, &dgamma, &dbeta, accumulate)
    });

    let (want_y, want_mean, want_rstd) = cpu::layernorm::layernorm_forward(&x, &gamma, &beta, rows, cols, eps);
    let y_tol = Tolerance::FORWARD.after_rounding_to(element);
    y_tol.assert(&format!("layernorm_forward y ({split:?}, {element})"), &read(&y), &want_y);
    Tolerance::FORWARD.assert(&format!("layernorm_forward mean ({split:?})"), &read(&mean), &want_mean);
    Tolerance::FORWARD.assert(&format!("layernorm_forward rstd ({split:?})"), &read(&rstd), &want_rstd);

    // The backward twin gets the GPU's saved statistics, as the GPU backward does.
    let (gpu_mean, gpu_rstd): (Vec<f64>, Vec<f64>) =
        (read(&mean).iter().map(|&v| v as f64).collect(), read(&rstd).iter().map(|&v| v as f64).collect());
    let (want_dx, want_dgp, want_dbp) =
        cpu::layernorm::layernorm_backward(&x, &gamma, &gpu_mean, &gpu_rstd, &dy, rows, cols, num_partials);
    let dx_tol = Tolerance::BACKWARD.after_rounding_to(element);
    dx_tol.assert(&format!("layernorm_backward dx ({split:?}, {element})"), &read(&dx), &want_dx);
    Tolerance::BACKWARD.assert(&format!("layernorm_backward dgamma_partial ({split:?})"), &read(&dgp), &want_dgp);
    Tolerance::BACKWARD.assert(&format!("layernorm_backward dbeta_partial ({split:?})"), &read(&dbp), &want_dbp);

    let prev = accumulate.then_some((previous.0.as_slice(), previous.1.as_slice()));
    let (want_dgamma, want_dbeta) =
        cpu::layernorm::layernorm_param_grad(&want_dgp, &want_dbp, num_partials, cols, prev);
    Tolerance::BACKWARD.assert(&format!("layernorm_param_grad dgamma ({split:?})"), &read(&dgamma), &want_dgamma);
    Tolerance::BACKWARD.assert(&format!("layernorm_param_grad dbeta ({split:?})"), &read(&dbeta), &want_dbeta);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn layernorm_matches_cpu(rows in 1usize..100, cols in 1usize..300, extra_partials in 0usize..3,
                             partial_frac in 0.0f64..1.0, accumulate in any::<bool>(), seed in any::<u64>()) {
        // Any partial count works, including more partial rows than rows (the extras hold zeros).
        let partials = 1 + (partial_frac * rows as f64) as usize + extra_partials;
        check_layernorm(rows, cols, partials, accumulate, seed);
    }
}

#[test]
fn layernorm_f16_matches_cpu() {
    require_f16();
    for split in [RowSplit::Invocation, RowSplit::Workgroup] {
        for (rows, cols, partials, accumulate, seed) in
            [(70, 192, 4, false, 3), (33, 7, 40, true, 4), (1, 300, 1, true, 5)]
        {
            check_layernorm_as(Element::F16, split, rows, cols, partials, accumulate, seed);
        }
    }
}

#[test]
fn layernorm_vit_width() {
    // ViT-Tiny width, many rows per partial row.
    check_layernorm(70, 192, 4, false, 3);
}

#[test]
fn layernorm_backward_full_matches_cpu() {
    let (rows, cols) = (37, 100);
    let mut r = rng(11);
    let x = rounded(&random(&mut r, rows * cols, 3.0));
    let gamma = rounded(&random(&mut r, cols, 1.0));
    let beta = rounded(&random(&mut r, cols, 1.0));
    let dy = rounded(&random(&mut r, rows * cols, 1.0));
    let (xt, gt, bt, dyt) =
        (upload(&x, &[rows, cols]), upload(&gamma, &[cols]), upload(&beta, &[cols]), upload(&dy, &[rows, cols]));
    let (y, mean, rstd, dx) = (empty(&[rows, cols]), empty(&[rows]), empty(&[rows]), empty(&[rows, cols]));
    let (dgamma, dbeta) = (upload(&vec![1.0; cols], &[cols]), upload(&vec![-1.0; cols], &[cols]));
    run(|rec| {
        layernorm::layernorm_forward(rec, &xt, &gt, &bt, &y, &mean, &rstd, 1e-5)?;
        layernorm::layernorm_backward_full(rec, &xt, &gt, &mean, &rstd, &dyt, &dx, &dgamma, &dbeta, true)
    });
    let (_, m, s) = cpu::layernorm::layernorm_forward(&x, &gamma, &beta, rows, cols, 1e-5);
    let (want_dx, want_dgamma, want_dbeta) =
        cpu::layernorm::layernorm_backward_full(&x, &gamma, &m, &s, &dy, rows, cols);
    let plus = |v: &[f64], d: f64| v.iter().map(|a| a + d).collect::<Vec<_>>();
    Tolerance::BACKWARD.assert("layernorm_backward_full dx", &read(&dx), &want_dx);
    Tolerance::BACKWARD.assert("layernorm_backward_full dgamma", &read(&dgamma), &plus(&want_dgamma, 1.0));
    Tolerance::BACKWARD.assert("layernorm_backward_full dbeta", &read(&dbeta), &plus(&want_dbeta, -1.0));
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let (rows, cols, eps) = (3, 7, 1e-6);
    let mut r = rng(5);
    let x = random(&mut r, rows * cols, 2.0);
    let gamma = random(&mut r, cols, 1.5);
    let beta = random(&mut r, cols, 1.0);
    let w = random(&mut r, rows * cols, 1.0);
    let (_, mean, rstd) = cpu::layernorm::layernorm_forward(&x, &gamma, &beta, rows, cols, eps);
    let (dx, dgamma, dbeta) = cpu::layernorm::layernorm_backward_full(&x, &gamma, &mean, &rstd, &w, rows, cols);
    let loss =
        |x: &[f64], g: &[f64], b: &[f64]| dot(&w, &cpu::layernorm::layernorm_forward(x, g, b, rows, cols, eps).0);
    let h = 1e-6;
    Tolerance::FINITE_DIFF.assert(
        "layernorm dx vs finite differences",
        &dx,
        &numeric_grad(|v| loss(v, &gamma, &beta), &x, h),
    );
    Tolerance::FINITE_DIFF.assert(
        "layernorm dgamma vs finite differences",
        &dgamma,
        &numeric_grad(|v| loss(&x, v, &beta), &gamma, h),
    );
    Tolerance::FINITE_DIFF.assert(
        "layernorm dbeta vs finite differences",
        &dbeta,
        &numeric_grad(|v| loss(&x, &gamma, v), &beta, h),
    );
}

#[test]
fn layernorm_partial_rows_cover_all_rows() {
    for (rows, cols) in
        [(0, 1), (1, 768), (5, 3), (1024, 64), (1025, 64), (4160, 192), (50_432, 768), (1_000_000, 3), (300_000, 4096)]
    {
        let partials = layernorm::layernorm_partial_rows(rows, cols);
        let max_rows = layernorm::layernorm_max_rows_per_partial(cols);
        let per = rows.max(1).div_ceil(partials);
        assert!(partials >= 1 && per <= max_rows, "{rows}x{cols} -> {partials} partials of {per} (max {max_rows})");
        // At most ~1024 partial rows unless the loop budget asks for more, and none idle.
        assert!(partials <= 1024 || per == max_rows, "{rows}x{cols} -> {partials} partials of {per}");
        assert!(rows == 0 || (partials - 1) * per < rows, "{rows}x{cols} -> {partials} partials of {per}");
    }
}

#[test]
fn layernorm_backward_at_loop_budget() {
    // Partial rows of exactly the most rows allowed: software GPUs skip loop iterations past
    // 65535 per invocation, which would leave the last rows of each chunk unwritten.
    for cols in [3, 200] {
        let max_rows = layernorm::layernorm_max_rows_per_partial(cols);
        check_layernorm(2 * max_rows, cols, 2, true, cols as u64);
    }
}

#[test]
fn layernorm_large_grid() {
    // More than 65535 rows: the forward with a workgroup per row needs the 2-D grid.
    let (rows, cols) = (70_000, 3);
    check_layernorm(rows, cols, layernorm::layernorm_partial_rows(rows, cols), false, 8);
}

#[test]
fn layernorm_rejects_mismatched_shapes() {
    let c = ctx();
    let x = c.zeros(&[4, 5], "x").unwrap();
    let gamma = c.zeros(&[6], "gamma").unwrap();
    let beta = c.zeros(&[5], "beta").unwrap();
    let y = c.zeros(&[4, 5], "y").unwrap();
    let stats = c.zeros(&[4], "stats").unwrap();
    let mut rec = c.recorder("bad");
    let err =
        layernorm::layernorm_forward(&mut rec, &x, &gamma, &beta, &y, &stats, &stats, 1e-6).unwrap_err().to_string();
    assert!(
        err.contains("layernorm_forward") && err.contains("gamma") && err.contains("[6]") && err.contains("[5]"),
        "{err}"
    );

    let partial = c.zeros(&[2, 4], "partial").unwrap();
    let err = layernorm::layernorm_backward(&mut rec, &x, &beta, &stats, &stats, &y, &y, &partial, &partial)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layernorm_backward") && err.contains("[2, 4]") && err.contains("[4, 5]"), "{err}");

    // Too few partial rows: each invocation would run past the loop budget.
    let (x, dy, dx) = (
        c.zeros(&[10_000, 3], "x").unwrap(),
        c.zeros(&[10_000, 3], "dy").unwrap(),
        c.zeros(&[10_000, 3], "dx").unwrap(),
    );
    let (gamma, stats) = (c.zeros(&[3], "gamma").unwrap(), c.zeros(&[10_000], "stats").unwrap());
    let (dgp, dbp) = (c.zeros(&[1, 3], "dgp").unwrap(), c.zeros(&[1, 3], "dbp").unwrap());
    let err = layernorm::layernorm_backward(&mut rec, &x, &gamma, &stats, &stats, &dy, &dx, &dgp, &dbp)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layernorm_backward") && err.contains("at least 12 partial rows"), "{err}");
}
