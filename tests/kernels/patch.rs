use autoprog::cpu;
use autoprog::gpu::Element;
use autoprog::kernels::patch;
use autoprog::tolerance::Tolerance;
use proptest::prelude::*;

use crate::common::*;

/// Patchify on the GPU; a pure gather, so the result must equal the twin exactly.
fn gpu_patchify(images: &[f64], shape: [usize; 4], p: usize) -> Vec<f64> {
    let [b, ch, h, w] = shape;
    let it = upload(images, &shape);
    let out = empty(&[b * (h / p) * (w / p), ch * p * p]);
    run(|rec| patch::patchify(rec, &it, &out, p));
    read(&out).into_iter().map(f64::from).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn patchify_matches_cpu(b in 1usize..3, ch in 1usize..4, p in 1usize..6, grid_h in 1usize..5,
                            grid_w in 1usize..5, seed in any::<u64>()) {
        let shape = [b, ch, grid_h * p, grid_w * p];
        let images = rounded(&random(&mut rng(seed), shape.iter().product(), 1.0));
        prop_assert_eq!(gpu_patchify(&images, shape, p), cpu::patch::patchify(&images, shape, p));
    }
}

#[test]
fn patchify_f16_matches_cpu() {
    require_f16();
    let shape = [2, 3, 12, 8];
    let images = rounded(&random(&mut rng(4), shape.iter().product(), 1.0));
    let want = cpu::patch::patchify(&images, shape, 4);
    // f32 images into f16 patches: one rounding (within one f16 ulp); f16 into f16: a copy.
    let f16_images = stored(Element::F16, &images);
    for (src, values) in [(Element::F32, &images), (Element::F16, &f16_images)] {
        let it = upload_as(src, values, &shape);
        let out = empty_as(Element::F16, &[2 * 3 * 2, 3 * 16]);
        run(|rec| patch::patchify(rec, &it, &out, 4));
        let exact = Tolerance { rel: 0.0, abs: 0.0 };
        let tol = if src == Element::F32 { exact.after_rounding_to(Element::F16) } else { exact };
        let want = if src == Element::F32 { want.clone() } else { cpu::patch::patchify(values, shape, 4) };
        tol.assert(&format!("patchify {src} -> f16"), &read(&out), &want);
    }
}

#[test]
fn patchify_large() {
    // A 64 px batch at patch 4: many workgroups.
    let shape = [4, 3, 64, 64];
    let images = rounded(&random(&mut rng(3), shape.iter().product(), 1.0));
    assert_eq!(gpu_patchify(&images, shape, 4), cpu::patch::patchify(&images, shape, 4));
}

#[test]
fn patchify_times_weight_is_strided_conv() {
    // patches . W^T + b with W a Conv2d weight [C, Ch, P, P] viewed as [C, Ch·P·P] must equal the
    // convolution with kernel P and stride P, output (b, gy, gx) in row-major patch order.
    let (b, ch, h, w, p, c) = (2, 3, 6, 9, 3, 5);
    let mut r = rng(5);
    let images = rounded(&random(&mut r, b * ch * h * w, 1.0));
    let weight = random(&mut r, c * ch * p * p, 1.0);
    let bias = random(&mut r, c, 1.0);
    let patches = gpu_patchify(&images, [b, ch, h, w], p);
    let k = ch * p * p;
    for bi in 0..b {
        for gy in 0..h / p {
            for gx in 0..w / p {
                let row = (bi * (h / p) + gy) * (w / p) + gx;
                for o in 0..c {
                    let embed = bias[o] + dot(&patches[row * k..(row + 1) * k], &weight[o * k..(o + 1) * k]);
                    let mut conv = bias[o];
                    for ci in 0..ch {
                        for py in 0..p {
                            for px in 0..p {
                                conv += weight[((o * ch + ci) * p + py) * p + px]
                                    * images[((bi * ch + ci) * h + gy * p + py) * w + gx * p + px];
                            }
                        }
                    }
                    assert!((embed - conv).abs() < 1e-12, "patch {row} channel {o}: {embed} vs {conv}");
                }
            }
        }
    }
}

#[test]
fn patchify_rejects_bad_input() {
    let c = ctx();
    let mut rec = c.recorder("bad");
    let images = c.zeros(&[1, 3, 10, 10], "images").unwrap();
    let patches = c.zeros(&[4, 48], "patches").unwrap();
    let err = patch::patchify(&mut rec, &images, &patches, 4).unwrap_err().to_string();
    assert!(err.contains("patchify") && err.contains("[1, 3, 10, 10]") && err.contains('4'), "{err}");

    let images = c.zeros(&[1, 3, 8, 8], "images").unwrap();
    let err = patch::patchify(&mut rec, &images, &patches, 2).unwrap_err().to_string();
    assert!(err.contains("patchify") && err.contains("[4, 48]") && err.contains("[16, 12]"), "{err}");
    assert!(patch::patchify(&mut rec, &images, &patches, 0).is_err());
}

#[test]
fn patch_embed_matches_the_convolution() {
    use autoprog::kernels::patch::{patch_embed_backward, patch_embed_forward};
    let mut r = rng(21);
    let (b, ch, res, p, c) = (2, 3, 12, 4, 10);
    let np = (res / p) * (res / p);
    let images = rounded(&random(&mut r, b * ch * res * res, 1.0));
    let weight = rounded(&random(&mut r, c * ch * p * p, 0.2));
    let bias = rounded(&random(&mut r, c, 0.5));
    let dout = rounded(&random(&mut r, b * np * c, 1.0));
    let (it, wt, bt, dt) = (
        upload(&images, &[b, ch, res, res]),
        upload(&weight, &[c, ch, p, p]),
        upload(&bias, &[c]),
        upload(&dout, &[b * np, c]),
    );
    let patches = empty(&[b * np, ch * p * p]);
    let out = empty(&[b * np, c]);
    let (dw, db) = (empty(&[c, ch, p, p]), empty(&[c]));
    run(|rec| {
        patch_embed_forward(rec, &it, &wt, &bt, &patches, &out)?;
        patch_embed_backward(rec, &patches, &dt, &dw, &db, false)
    });
    let shape = [b, ch, res, res];
    Tolerance::FORWARD.assert(
        "patch_embed_forward",
        &read(&out),
        &cpu::patch::patch_embed_forward(&images, shape, &weight, &bias, p),
    );
    let (want_dw, want_db) = cpu::patch::patch_embed_backward(&images, shape, &dout, c, p);
    Tolerance::BACKWARD.assert("patch_embed_backward dweight", &read(&dw), &want_dw);
    Tolerance::BACKWARD.assert("patch_embed_backward dbias", &read(&db), &want_db);
}

#[test]
fn patch_embed_backward_matches_finite_differences() {
    let mut r = rng(22);
    let (b, ch, res, p, c) = (1, 2, 4, 2, 3);
    let images = random(&mut r, b * ch * res * res, 1.0);
    let weight = random(&mut r, c * ch * p * p, 0.5);
    let bias = random(&mut r, c, 0.5);
    let np = (res / p) * (res / p);
    let upstream = random(&mut r, b * np * c, 1.0);
    let shape = [b, ch, res, res];
    let (dw, db) = cpu::patch::patch_embed_backward(&images, shape, &upstream, c, p);
    let numeric_w =
        numeric_grad(|w| dot(&upstream, &cpu::patch::patch_embed_forward(&images, shape, w, &bias, p)), &weight, 1e-6);
    let numeric_b = numeric_grad(
        |bb| dot(&upstream, &cpu::patch::patch_embed_forward(&images, shape, &weight, bb, p)),
        &bias,
        1e-6,
    );
    Tolerance::FINITE_DIFF.assert("dweight vs finite differences", &dw, &numeric_w);
    Tolerance::FINITE_DIFF.assert("dbias vs finite differences", &db, &numeric_b);
}
