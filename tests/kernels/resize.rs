use autoprog::cpu;
use autoprog::gpu::Element;
use autoprog::kernels::resize;
use autoprog::tolerance::Tolerance;
use proptest::prelude::*;

use crate::common::*;

fn check_bilinear(shape: [usize; 4], out_hw: [usize; 2], seed: u64) {
    check_bilinear_as([Element::F32; 2], shape, out_hw, seed);
}

/// Images stored as `src`, resized into `dst`.
fn check_bilinear_as([src, dst]: [Element; 2], shape: [usize; 4], out_hw: [usize; 2], seed: u64) {
    let [b, ch, _, _] = shape;
    let x = stored(src, &random(&mut rng(seed), shape.iter().product(), 2.0));
    let xt = upload_as(src, &x, &shape);
    let y = empty_as(dst, &[b, ch, out_hw[0], out_hw[1]]);
    run(|rec| resize::resize_bilinear(rec, &xt, &y));
    let what = format!("resize_bilinear {shape:?} -> {out_hw:?} {src}->{dst}");
    let tol = Tolerance::FORWARD.after_rounding_to(dst);
    tol.assert(&what, &read(&y), &cpu::resize::resize_bilinear(&x, shape, out_hw));
}

fn check_pos_embed(in_hw: [usize; 2], c: usize, out_hw: [usize; 2], seed: u64) {
    check_pos_embed_as(Element::F32, in_hw, c, out_hw, seed);
}

/// The grid, its resized copy and the copy's gradient stored as `act`; the grid's
/// gradient is f32 (a weight gradient).
fn check_pos_embed_as(act: Element, in_hw: [usize; 2], c: usize, out_hw: [usize; 2], seed: u64) {
    let mut r = rng(seed);
    let grid = stored(act, &random(&mut r, in_hw[0] * in_hw[1] * c, 1.0));
    let dout = stored(act, &random(&mut r, out_hw[0] * out_hw[1] * c, 1.0));
    let (gt, dt) = (upload_as(act, &grid, &[in_hw[0], in_hw[1], c]), upload_as(act, &dout, &[out_hw[0], out_hw[1], c]));
    let (out, dgrid) = (empty_as(act, &[out_hw[0], out_hw[1], c]), empty(&[in_hw[0], in_hw[1], c]));
    run(|rec| {
        resize::pos_embed_resize_forward(rec, &gt, &out)?;
        resize::pos_embed_resize_backward(rec, &dt, &dgrid)
    });
    let what = format!("{in_hw:?} -> {out_hw:?}, C {c}, {act}");
    Tolerance::FORWARD.after_rounding_to(act).assert(
        &format!("pos_embed_resize_forward {what}"),
        &read(&out),
        &cpu::resize::pos_embed_resize_forward(&grid, in_hw, c, out_hw),
    );
    Tolerance::BACKWARD.assert(
        &format!("pos_embed_resize_backward {what}"),
        &read(&dgrid),
        &cpu::resize::pos_embed_resize_backward(&dout, in_hw, c, out_hw),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn resize_bilinear_matches_cpu(b in 1usize..3, ch in 1usize..4, h in 1usize..10, w in 1usize..10,
                                   h2 in 1usize..14, w2 in 1usize..14, seed in any::<u64>()) {
        check_bilinear([b, ch, h, w], [h2, w2], seed);
    }

    #[test]
    fn pos_embed_resize_matches_cpu(gh in 1usize..9, gw in 1usize..9, gh2 in 1usize..13, gw2 in 1usize..13,
                                    c in 1usize..40, seed in any::<u64>()) {
        check_pos_embed([gh, gw], c, [gh2, gw2], seed);
    }
}

#[test]
fn resize_f16_matches_cpu() {
    require_f16();
    check_bilinear_as([Element::F32, Element::F16], [2, 3, 32, 32], [40, 40], 6);
    check_bilinear_as([Element::F16, Element::F16], [1, 3, 40, 40], [24, 24], 7);
    check_pos_embed_as(Element::F16, [14, 14], 64, [16, 16], 8);
    check_pos_embed_as(Element::F16, [4, 4], 8, [21, 15], 9);
}

#[test]
fn resize_bilinear_image_sizes() {
    // Progressive resolution steps of a small ViT run, up and down, more than one workgroup.
    check_bilinear([2, 3, 32, 32], [40, 40], 1);
    check_bilinear([2, 3, 40, 40], [24, 24], 2);
}

#[test]
fn pos_embed_resize_vit_grids() {
    // 14x14 -> 16x16 (224 -> 256 px at patch 16) and back, and a large upsampling factor.
    check_pos_embed([14, 14], 64, [16, 16], 3);
    check_pos_embed([16, 16], 48, [14, 14], 4);
    check_pos_embed([4, 4], 8, [21, 15], 5);
}

#[test]
fn pos_embed_resize_backward_matches_finite_differences() {
    for (in_hw, out_hw) in [([3, 5], [7, 4]), ([6, 5], [2, 3]), ([1, 2], [3, 1])] {
        let c = 2;
        let mut r = rng(11);
        let grid = random(&mut r, in_hw[0] * in_hw[1] * c, 1.0);
        let w = random(&mut r, out_hw[0] * out_hw[1] * c, 1.0);
        let analytic = cpu::resize::pos_embed_resize_backward(&w, in_hw, c, out_hw);
        let loss = |g: &[f64]| dot(&w, &cpu::resize::pos_embed_resize_forward(g, in_hw, c, out_hw));
        let numeric = numeric_grad(loss, &grid, 1e-6);
        let what = format!("pos_embed_resize_backward {in_hw:?} -> {out_hw:?} vs finite differences");
        Tolerance::FINITE_DIFF.assert(&what, &analytic, &numeric);
    }
}

/// Runs bilinear on one [H, W] plane on the GPU.
fn gpu_bilinear(x: &[f64], hw: [usize; 2], out_hw: [usize; 2]) -> Vec<f32> {
    let xt = upload(x, &[1, 1, hw[0], hw[1]]);
    let y = empty(&[1, 1, out_hw[0], out_hw[1]]);
    run(|rec| resize::resize_bilinear(rec, &xt, &y));
    read(&y)
}

/// Runs bicubic on one [H, W] single-channel grid on the GPU.
fn gpu_bicubic(x: &[f64], hw: [usize; 2], out_hw: [usize; 2]) -> Vec<f32> {
    let xt = upload(x, &[hw[0], hw[1], 1]);
    let y = empty(&[out_hw[0], out_hw[1], 1]);
    run(|rec| resize::pos_embed_resize_forward(rec, &xt, &y));
    read(&y)
}

#[test]
fn resize_bilinear_known_values() {
    // [[1, 2], [3, 4]] = 1 + x + 2y is linear, so each output is 1 + ex + 2 ey at the effective
    // source coordinate. Upscaling 2 -> 4: (d + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, and
    // clamping (below at 0, the second tap at the last cell) makes that 0, 0.25, 0.75, 1.
    let x = [1.0, 2.0, 3.0, 4.0];
    let want = [
        1.0, 1.25, 1.75, 2.0, //
        1.5, 1.75, 2.25, 2.5, //
        2.5, 2.75, 3.25, 3.5, //
        3.0, 3.25, 3.75, 4.0,
    ];
    assert_eq!(cpu::resize::resize_bilinear(&x, [1, 1, 2, 2], [4, 4]), want);
    Tolerance::FORWARD.assert("resize_bilinear 2x2 -> 4x4", &gpu_bilinear(&x, [2, 2], [4, 4]), &want);
    // Downscaling 4 -> 2 samples at (d + 0.5) * 2 - 0.5 = 0.5, 2.5: the mean of each 2x2 block.
    let x: Vec<f64> = (0..16).map(f64::from).collect();
    let want = [2.5, 4.5, 10.5, 12.5];
    assert_eq!(cpu::resize::resize_bilinear(&x, [1, 1, 4, 4], [2, 2]), want);
    Tolerance::FORWARD.assert("resize_bilinear 4x4 -> 2x2", &gpu_bilinear(&x, [4, 4], [2, 2]), &want);
}

#[test]
fn pos_embed_resize_known_values() {
    // Bicubic 2 -> 4 on [[1, 2], [3, 4]] = 1 + x + 2y. The weights of Keys' kernel (A = -0.75)
    // at t = 0.75 are (-0.03515625, 0.26171875, 0.87890625, -0.10546875) and at t = 0.25 the
    // reverse. With taps clamped to {0, 1}, the effective source coordinates of the four
    // destinations are -0.10546875, 0.2265625, 0.7734375, 1.10546875 (overshoot at the border,
    // unlike bilinear), so row 0 is 1 + ex + 2 (-0.10546875).
    let x = [1.0, 2.0, 3.0, 4.0];
    let e = [-0.10546875, 0.2265625, 0.7734375, 1.10546875];
    let want: Vec<f64> = (0..16).map(|i| 1.0 + e[i % 4] + 2.0 * e[i / 4]).collect();
    assert_eq!(want[..4], [0.68359375, 1.015625, 1.5625, 1.89453125]);
    Tolerance { rel: 1e-12, abs: 1e-12 }.assert(
        "pos_embed_resize_forward twin 2x2 -> 4x4",
        &cpu::resize::pos_embed_resize_forward(&x, [2, 2], 1, [4, 4]),
        &want,
    );
    Tolerance::FORWARD.assert("pos_embed_resize_forward 2x2 -> 4x4", &gpu_bicubic(&x, [2, 2], [4, 4]), &want);
}

#[test]
fn identity_resize_returns_input_exactly() {
    let x = rounded(&random(&mut rng(21), 5 * 7, 3.0));
    let exact = |v: Vec<f32>| v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>();
    assert_eq!(exact(gpu_bilinear(&x, [5, 7], [5, 7])), x, "resize_bilinear");
    assert_eq!(exact(gpu_bicubic(&x, [5, 7], [5, 7])), x, "pos_embed_resize_forward");
    assert_eq!(cpu::resize::resize_bilinear(&x, [1, 1, 5, 7], [5, 7]), x);
    assert_eq!(cpu::resize::pos_embed_resize_forward(&x, [5, 7], 1, [5, 7]), x);
    // Its gradient is the identity too.
    let dt = upload(&x, &[5, 7, 1]);
    let dgrid = empty(&[5, 7, 1]);
    run(|rec| resize::pos_embed_resize_backward(rec, &dt, &dgrid));
    assert_eq!(exact(read(&dgrid)), x, "pos_embed_resize_backward");
}

#[test]
fn resize_rejects_bad_shapes() {
    let c = ctx();
    let mut rec = c.recorder("bad");
    let x = c.zeros(&[2, 3, 8, 8], "x").unwrap();
    let y = c.zeros(&[2, 4, 6, 6], "y").unwrap();
    let err = resize::resize_bilinear(&mut rec, &x, &y).unwrap_err().to_string();
    assert!(err.contains("resize_bilinear") && err.contains("[2, 3, 8, 8]") && err.contains("[2, 4, 6, 6]"), "{err}");

    let grid = c.zeros(&[4, 4, 8], "grid").unwrap();
    let out = c.zeros(&[6, 6, 16], "out").unwrap();
    let err = resize::pos_embed_resize_forward(&mut rec, &grid, &out).unwrap_err().to_string();
    assert!(
        err.contains("pos_embed_resize_forward") && err.contains("[4, 4, 8]") && err.contains("[6, 6, 16]"),
        "{err}"
    );
    let err = resize::pos_embed_resize_backward(&mut rec, &out, &grid).unwrap_err().to_string();
    assert!(
        err.contains("pos_embed_resize_backward") && err.contains("[4, 4, 8]") && err.contains("[6, 6, 16]"),
        "{err}"
    );

    let flat = c.zeros(&[16, 8], "flat").unwrap();
    let err = resize::pos_embed_resize_forward(&mut rec, &flat, &out).unwrap_err().to_string();
    assert!(err.contains("pos_embed_resize_forward") && err.contains("[16, 8]"), "{err}");
}
