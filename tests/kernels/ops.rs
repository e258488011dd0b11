use autoprog::cpu;
use autoprog::gpu::Element;
use autoprog::kernels::ops;
use autoprog::tolerance::Tolerance;
use proptest::prelude::*;
use rand::seq::index::sample;

use crate::common::*;

fn upload_index(index: &[u32], shape: &[usize]) -> autoprog::Tensor {
    ctx().upload_u32(index, shape, "test.index").expect("upload index")
}

/// Distinct sorted token indices per batch (a keep-list), [B, Nk].
fn keep_lists(r: &mut rand_chacha::ChaCha8Rng, batch: usize, tokens: usize, kept: usize) -> Vec<u32> {
    (0..batch)
        .flat_map(|_| {
            let mut keep: Vec<u32> = sample(r, tokens, kept).into_iter().map(|i| i as u32).collect();
            keep.sort_unstable();
            keep
        })
        .collect()
}

fn check_elementwise(element: Element, n: usize, seed: u64) {
    let mut r = rng(seed);
    let (x, y) = (stored(element, &random(&mut r, n, 2.0)), stored(element, &random(&mut r, n, 2.0)));
    let up = |v: &[f64]| upload_as(element, v, &[n]);
    let (xt, yt, st, at) = (up(&x), up(&y), up(&x), up(&y));
    let (z, sum) = (empty_as(element, &[n]), empty(&[1]));
    run(|rec| {
        ops::add_forward(rec, &xt, &yt, &z)?;
        ops::scale(rec, &st, -0.75)?;
        ops::axpy(rec, 0.5, &xt, &at)?;
        ops::reduce_sum(rec, &xt, &sum, 0.5)
    });
    let tol = Tolerance::FORWARD.after_rounding_to(element);
    tol.assert(&format!("add_forward {element}"), &read(&z), &cpu::ops::add_forward(&x, &y));
    tol.assert(&format!("scale {element}"), &read(&st), &cpu::ops::scale(&x, -0.75));
    tol.assert(&format!("axpy {element}"), &read(&at), &cpu::ops::axpy(0.5, &x, &y));
    // A sum of n terms of size ~1 in f32: absolute error grows like n * eps, beyond FORWARD's abs.
    let sum_tol = Tolerance { rel: 1e-4, abs: 1e-6 * n as f64 };
    sum_tol.assert("reduce_sum", &read(&sum), &[cpu::ops::reduce_sum(&x, 0.5)]);
}

/// column_sum (direct or two-pass by row count) with and without accumulation, and the
/// partial pass on its own.
fn check_column_sum(element: Element, rows: usize, cols: usize, num_blocks: usize, seed: u64) {
    let mut r = rng(seed);
    let x = stored(element, &random(&mut r, rows * cols, 1.0));
    let prev = rounded(&random(&mut r, cols, 1.0));
    let xt = upload_as(element, &x, &[rows, cols]);
    let (out, acc, partial) = (empty(&[cols]), upload(&prev, &[cols]), empty(&[num_blocks, cols]));
    run(|rec| {
        ops::column_sum(rec, &xt, &out, false)?;
        ops::column_sum(rec, &xt, &acc, true)?;
        ops::column_sum_partial(rec, &xt, &partial)
    });
    // Sums of up to a few thousand terms of size ~1 (see reduce_sum above).
    let tol = Tolerance { rel: 1e-4, abs: 1e-6 * rows.max(10) as f64 };
    tol.assert("column_sum", &read(&out), &cpu::ops::column_sum(&x, rows, cols, None));
    tol.assert("column_sum accumulate", &read(&acc), &cpu::ops::column_sum(&x, rows, cols, Some(&prev)));
    tol.assert("column_sum_partial", &read(&partial), &cpu::ops::column_sum_partial(&x, rows, cols, num_blocks));
}

/// The token ops with activations (and the class token and position embedding) stored as
/// `element`; the gradients of the class token and position embedding are f32.
fn check_tokens(element: Element, batch: usize, patch_tokens: usize, cols: usize, kept: usize, seed: u64) {
    let tokens = patch_tokens + 1;
    let mut r = rng(seed);
    let act = |r: &mut rand_chacha::ChaCha8Rng, n: usize| stored(element, &random(r, n, 1.0));
    let patches = act(&mut r, batch * patch_tokens * cols);
    let cls = act(&mut r, cols);
    let pos = act(&mut r, tokens * cols);
    let dseq = act(&mut r, batch * tokens * cols);
    let dcls_prev = rounded(&random(&mut r, cols, 1.0));
    let dpos_prev = rounded(&random(&mut r, tokens * cols, 1.0));
    let dhead = act(&mut r, batch * cols);
    let dkept = act(&mut r, batch * kept * cols);
    let index = keep_lists(&mut r, batch, tokens, kept);

    let up = |v: &[f64], shape: &[usize]| upload_as(element, v, shape);
    let (pt, ct, post, dseqt) = (
        up(&patches, &[batch, patch_tokens, cols]),
        up(&cls, &[cols]),
        up(&pos, &[tokens, cols]),
        up(&dseq, &[batch, tokens, cols]),
    );
    let (dheadt, dkeptt, it) =
        (up(&dhead, &[batch, cols]), up(&dkept, &[batch, kept, cols]), upload_index(&index, &[batch, kept]));
    let seq = empty_as(element, &[batch, tokens, cols]);
    let (head, gathered) = (empty_as(element, &[batch, cols]), empty_as(element, &[batch, kept, cols]));
    let (dpatches, dcls, dpos) = (
        empty_as(element, &[batch, patch_tokens, cols]),
        upload(&dcls_prev, &[cols]),
        upload(&dpos_prev, &[tokens, cols]),
    );
    let (dpos_fresh, dx_head, dx_kept) =
        (empty(&[tokens, cols]), empty_as(element, &[batch, tokens, cols]), empty_as(element, &[batch, tokens, cols]));
    run(|rec| {
        ops::cls_concat(rec, &pt, &ct, &seq)?;
        ops::add_broadcast(rec, &seq, &post)?;
        ops::cls_slice(rec, &seq, &head)?;
        ops::gather_rows(rec, &seq, &it, &gathered)?;
        ops::cls_concat_backward(rec, &dseqt, &dpatches, &dcls, true)?;
        ops::add_broadcast_backward(rec, &dseqt, &dpos, true)?;
        ops::add_broadcast_backward(rec, &dseqt, &dpos_fresh, false)?;
        ops::cls_slice_backward(rec, &dheadt, &dx_head)?;
        ops::scatter_rows(rec, &dkeptt, &it, &dx_kept)
    });

    // The sequence is rounded once (by the position add); the slice and gather copy it.
    let forward = Tolerance::FORWARD.after_rounding_to(element);
    let want_seq = cpu::ops::add_broadcast(&cpu::ops::cls_concat(&patches, &cls, batch, patch_tokens, cols), &pos);
    forward.assert("cls_concat + add_broadcast", &read(&seq), &want_seq);
    forward.assert("cls_slice", &read(&head), &cpu::ops::cls_slice(&want_seq, batch, tokens, cols));
    forward.assert(
        "gather_rows",
        &read(&gathered),
        &cpu::ops::gather_rows(&want_seq, &index, batch, tokens, kept, cols),
    );

    let (want_dpatches, want_dcls) = cpu::ops::cls_concat_backward(&dseq, batch, tokens, cols, Some(&dcls_prev));
    Tolerance::BACKWARD.assert("cls_concat_backward dpatches", &read(&dpatches), &want_dpatches);
    Tolerance::BACKWARD.assert("cls_concat_backward dcls", &read(&dcls), &want_dcls);
    let per_batch = tokens * cols;
    Tolerance::BACKWARD.assert(
        "add_broadcast_backward accumulate",
        &read(&dpos),
        &cpu::ops::add_broadcast_backward(&dseq, batch, per_batch, Some(&dpos_prev)),
    );
    Tolerance::BACKWARD.assert(
        "add_broadcast_backward",
        &read(&dpos_fresh),
        &cpu::ops::add_broadcast_backward(&dseq, batch, per_batch, None),
    );
    Tolerance::BACKWARD.assert(
        "cls_slice_backward",
        &read(&dx_head),
        &cpu::ops::cls_slice_backward(&dhead, batch, tokens, cols),
    );
    Tolerance::BACKWARD.assert(
        "scatter_rows",
        &read(&dx_kept),
        &cpu::ops::scatter_rows(&dkept, &index, batch, tokens, kept, cols),
    );
}

fn check_drop_path(element: Element, batch: usize, per_item: usize, seed: u64) {
    let mut r = rng(seed);
    let n = batch * per_item;
    let (x, branch) = (stored(element, &random(&mut r, n, 2.0)), stored(element, &random(&mut r, n, 2.0)));
    // Dropped items (0) and kept ones rescaled by 1 / keep-probability.
    let scale: Vec<f64> = (0..batch).map(|b| if b % 3 == 1 { 0.0 } else { 1.25 }).collect();
    let shape = [batch, per_item];
    let (xt, bt, st) = (upload_as(element, &x, &shape), upload_as(element, &branch, &shape), upload(&scale, &[batch]));
    let (out, dbranch) = (empty_as(element, &shape), empty_as(element, &shape));
    run(|rec| {
        ops::add_scaled_rows(rec, &xt, &bt, &st, &out)?;
        ops::scale_rows(rec, &xt, &st, &dbranch)
    });
    let tol = Tolerance::FORWARD.after_rounding_to(element);
    tol.assert("add_scaled_rows", &read(&out), &cpu::ops::add_scaled_rows(&x, &branch, &scale));
    tol.assert("scale_rows", &read(&dbranch), &cpu::ops::scale_rows(&x, &scale));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn drop_path_ops_match_cpu(batch in 1usize..7, per_item in 1usize..700, seed in any::<u64>()) {
        check_drop_path(Element::F32, batch, per_item, seed);
    }

    #[test]
    fn elementwise_ops_match_cpu(n in 1usize..3000, seed in any::<u64>()) {
        check_elementwise(Element::F32, n, seed);
    }

    #[test]
    fn column_sum_matches_cpu(rows in 1usize..80, cols in 1usize..100, blocks in 1usize..12, seed in any::<u64>()) {
        check_column_sum(Element::F32, rows, cols, blocks, seed);
    }

    #[test]
    fn token_ops_match_cpu(batch in 1usize..4, patch_tokens in 0usize..20, cols in 1usize..70,
                           kept_frac in 0.0f64..1.0, seed in any::<u64>()) {
        let kept = ((patch_tokens + 1) as f64 * kept_frac) as usize;
        check_tokens(Element::F32, batch, patch_tokens, cols, kept, seed);
    }
}

#[test]
fn ops_f16_match_cpu() {
    require_f16();
    for (n, seed) in [(1, 1), (2999, 2)] {
        check_elementwise(Element::F16, n, seed);
    }
    // Direct and two-pass column sums of f16 rows into f32.
    check_column_sum(Element::F16, 70, 33, 4, 3);
    check_column_sum(Element::F16, 1500, 37, 5, 4);
    check_tokens(Element::F16, 3, 16, 24, 9, 5);
    check_drop_path(Element::F16, 5, 301, 6);
}

#[test]
fn convert_f16_round_trip() {
    require_f16();
    let mut r = rng(21);
    // Magnitudes across f16's normal and subnormal range, and one that overflows it.
    let mut x: Vec<f64> =
        random(&mut r, 999, 1.0).iter().enumerate().map(|(i, v)| v * 2f64.powi(i as i32 % 40 - 25)).collect();
    x.push(1e6);
    let n = x.len();
    let xt = upload(&x, &[n]);
    let (half, back) = (empty_as(Element::F16, &[n]), empty(&[n]));
    run(|rec| {
        ops::convert(rec, &xt, &half)?;
        ops::convert(rec, &half, &back)
    });
    let (half, back) = (read(&half), read(&back));
    // f32 to f16 rounds to a neighbour: within one f16 ulp (2^-10 relative; 2^-24 absolute
    // among subnormals); f16 to f32 is exact.
    let one_ulp = Tolerance { rel: 0.0, abs: 2f64.powi(-24) }.after_rounding_to(Element::F16);
    one_ulp.assert("convert f32 -> f16", &half[..n - 1], &rounded(&x[..n - 1]));
    assert_eq!(half[n - 1], f32::INFINITY, "1e6 overflows f16");
    assert_eq!(half, back, "f16 -> f32 is exact");
}

#[test]
fn column_sum_two_pass() {
    // More rows than the direct path takes: partial sums of ~sqrt(R) rows, then their sum.
    check_column_sum(Element::F32, 1500, 37, 5, 2);
}

#[test]
fn position_gradient_over_a_large_batch() {
    // dpos over B = 1100 sequences takes column_sum's two-pass path.
    check_tokens(Element::F32, 1100, 2, 3, 2, 4);
}

#[test]
fn gather_and_scatter_skip_out_of_range_indices() {
    let (batch, tokens, kept, cols) = (2, 3, 2, 4);
    let x: Vec<f64> = (0..batch * tokens * cols).map(|i| i as f64).collect();
    let dout: Vec<f64> = (0..batch * kept * cols).map(|i| 1.0 + i as f64).collect();
    let index = [2u32, 7, 0, 1];
    let (xt, dt, it) =
        (upload(&x, &[batch, tokens, cols]), upload(&dout, &[batch, kept, cols]), upload_index(&index, &[batch, kept]));
    let (out, dx) = (empty(&[batch, kept, cols]), empty(&[batch, tokens, cols]));
    run(|rec| {
        ops::gather_rows(rec, &xt, &it, &out)?;
        ops::scatter_rows(rec, &dt, &it, &dx)
    });
    Tolerance::FORWARD.assert(
        "gather_rows",
        &read(&out),
        &cpu::ops::gather_rows(&x, &index, batch, tokens, kept, cols),
    );
    Tolerance::FORWARD.assert(
        "scatter_rows",
        &read(&dx),
        &cpu::ops::scatter_rows(&dout, &index, batch, tokens, kept, cols),
    );
    assert!(read(&out)[cols..2 * cols].iter().all(|&v| v == 0.0));
}

#[test]
fn token_backwards_match_finite_differences() {
    // Every op here is linear, so each backward twin must equal the gradient of
    // dot(w, forward(x)) exactly up to finite-difference rounding.
    let (batch, patch_tokens, cols, kept) = (2, 3, 4, 2);
    let tokens = patch_tokens + 1;
    let mut r = rng(13);
    let patches = random(&mut r, batch * patch_tokens * cols, 1.0);
    let cls = random(&mut r, cols, 1.0);
    let seq = random(&mut r, batch * tokens * cols, 1.0);
    let pos = random(&mut r, tokens * cols, 1.0);
    let w_seq = random(&mut r, batch * tokens * cols, 1.0);
    let w_head = random(&mut r, batch * cols, 1.0);
    let w_kept = random(&mut r, batch * kept * cols, 1.0);
    let index = keep_lists(&mut r, batch, tokens, kept);
    let h = 1e-6;
    let check = |what: &str, analytic: &[f64], f: &dyn Fn(&[f64]) -> f64, at: &[f64]| {
        Tolerance::FINITE_DIFF.assert(what, analytic, &numeric_grad(f, at, h));
    };

    let (dpatches, dcls) = cpu::ops::cls_concat_backward(&w_seq, batch, tokens, cols, None);
    check(
        "cls_concat_backward dpatches",
        &dpatches,
        &|p| dot(&w_seq, &cpu::ops::cls_concat(p, &cls, batch, patch_tokens, cols)),
        &patches,
    );
    check(
        "cls_concat_backward dcls",
        &dcls,
        &|c| dot(&w_seq, &cpu::ops::cls_concat(&patches, c, batch, patch_tokens, cols)),
        &cls,
    );
    let dpos = cpu::ops::add_broadcast_backward(&w_seq, batch, tokens * cols, None);
    check("add_broadcast_backward", &dpos, &|p| dot(&w_seq, &cpu::ops::add_broadcast(&seq, p)), &pos);
    let dx = cpu::ops::cls_slice_backward(&w_head, batch, tokens, cols);
    check("cls_slice_backward", &dx, &|x| dot(&w_head, &cpu::ops::cls_slice(x, batch, tokens, cols)), &seq);
    let dx = cpu::ops::scatter_rows(&w_kept, &index, batch, tokens, kept, cols);
    check("scatter_rows", &dx, &|x| dot(&w_kept, &cpu::ops::gather_rows(x, &index, batch, tokens, kept, cols)), &seq);
}

#[test]
fn drop_path_backward_matches_finite_differences() {
    let mut r = rng(11);
    let (batch, per_item) = (3, 7);
    let (x, branch, w) = (random(&mut r, 21, 1.0), random(&mut r, 21, 1.0), random(&mut r, 21, 1.0));
    let scale = [0.0, 1.25, 2.0];
    let analytic = cpu::ops::scale_rows(&w, &scale);
    let numeric = numeric_grad(|b| dot(&w, &cpu::ops::add_scaled_rows(&x, b, &scale)), &branch, 1e-6);
    Tolerance::FINITE_DIFF.assert("scale_rows as d(add_scaled_rows)/dbranch", &analytic, &numeric);
    assert_eq!(batch * per_item, x.len());
}

#[test]
fn ops_reject_mismatched_shapes() {
    let c = ctx();
    let x = c.zeros(&[2, 3, 4], "x").unwrap();
    let y = c.zeros(&[2, 4, 3], "y").unwrap();
    let mut rec = c.recorder("bad");
    let err = ops::add_forward(&mut rec, &x, &y, &x).unwrap_err().to_string();
    assert!(err.contains("add_forward") && err.contains("[2, 4, 3]") && err.contains("[2, 3, 4]"), "{err}");
    let index = c.upload_u32(&[0; 3], &[3, 1], "index").unwrap();
    let out = c.zeros(&[3, 1, 4], "out").unwrap();
    let err = ops::gather_rows(&mut rec, &x, &index, &out).unwrap_err().to_string();
    assert!(err.contains("gather_rows") && err.contains("[3, 1]") && err.contains("[2, 3, 4]"), "{err}");
    let pos = c.zeros(&[4, 4], "pos").unwrap();
    let err = ops::add_broadcast(&mut rec, &x, &pos).unwrap_err().to_string();
    assert!(err.contains("add_broadcast") && err.contains("[4, 4]") && err.contains("[3, 4]"), "{err}");
    let bias = c.zeros(&[3], "bias").unwrap();
    let err = ops::column_sum(&mut rec, &x, &bias, false).unwrap_err().to_string();
    assert!(err.contains("column_sum") && err.contains("[3]") && err.contains("[4]"), "{err}");
}
