use autoprog::cpu;
use autoprog::gpu::Element;
use autoprog::kernels::{cross_entropy, ops, RowSplit};
use autoprog::tolerance::Tolerance;
use proptest::prelude::*;
use rand::Rng;

use crate::common::*;

fn upload_labels(labels: &[u32]) -> autoprog::Tensor {
    ctx().upload_u32(labels, &[labels.len()], "test.labels").expect("upload labels")
}

/// Logits around `offset` (a large offset checks the max subtraction).
fn logits(element: Element, r: &mut rand_chacha::ChaCha8Rng, n: usize, offset: f64) -> Vec<f64> {
    stored(element, &random(r, n, 6.0).iter().map(|v| v + offset).collect::<Vec<_>>())
}

fn check_hard(batch: usize, classes: usize, smoothing: f64, offset: f64, seed: u64) {
    check_hard_as(Element::F32, batch, classes, smoothing, offset, seed);
}

/// [`check_hard`] with logits and dlogits stored as `element`.
fn check_hard_as(element: Element, batch: usize, classes: usize, smoothing: f64, offset: f64, seed: u64) {
    let mut r = rng(seed);
    let z = logits(element, &mut r, batch * classes, offset);
    let labels: Vec<u32> = (0..batch).map(|_| r.random_range(0..classes as u32)).collect();
    let smoothing = smoothing as f32 as f64;
    let grad_scale = 1.0 / batch as f64;
    let (zt, lt) = (upload_as(element, &z, &[batch, classes]), upload_labels(&labels));
    let (want_loss, want_dz) =
        cpu::cross_entropy::cross_entropy_hard(&z, &labels, batch, classes, smoothing, grad_scale);
    for split in [RowSplit::Invocation, RowSplit::Workgroup] {
        let (loss, dz, mean) = (empty(&[batch]), empty_as(element, &[batch, classes]), empty(&[1]));
        run(|rec| {
            cross_entropy::cross_entropy_hard_with_split(
                rec,
                split,
                &zt,
                &lt,
                &loss,
                &dz,
                smoothing as f32,
                grad_scale as f32,
            )?;
            ops::reduce_sum(rec, &loss, &mean, grad_scale as f32)
        });
        Tolerance::FORWARD.assert(&format!("cross_entropy_hard loss ({split:?})"), &read(&loss), &want_loss);
        let dz_tol = Tolerance::BACKWARD.after_rounding_to(element);
        dz_tol.assert(&format!("cross_entropy_hard dlogits ({split:?}, {element})"), &read(&dz), &want_dz);
        let want_mean = cpu::ops::reduce_sum(&want_loss, grad_scale);
        Tolerance::FORWARD.assert(&format!("cross_entropy_hard mean loss ({split:?})"), &read(&mean), &[want_mean]);
    }
}

fn check_soft(element: Element, batch: usize, classes: usize, normalised: bool, seed: u64) {
    let mut r = rng(seed);
    let z = logits(element, &mut r, batch * classes, 0.0);
    let mut t: Vec<f64> = (0..batch * classes).map(|_| r.random_range(0.0..1.0)).collect();
    if normalised {
        for row in t.chunks_mut(classes) {
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        }
    }
    let t = rounded(&t);
    let grad_scale = 0.25;
    let (zt, tt) = (upload_as(element, &z, &[batch, classes]), upload(&t, &[batch, classes]));
    let (want_loss, want_dz) = cpu::cross_entropy::cross_entropy_soft(&z, &t, batch, classes, grad_scale);
    for split in [RowSplit::Invocation, RowSplit::Workgroup] {
        let (loss, dz) = (empty(&[batch]), empty_as(element, &[batch, classes]));
        run(|rec| cross_entropy::cross_entropy_soft_with_split(rec, split, &zt, &tt, &loss, &dz, grad_scale as f32));
        Tolerance::FORWARD.assert(&format!("cross_entropy_soft loss ({split:?})"), &read(&loss), &want_loss);
        let dz_tol = Tolerance::BACKWARD.after_rounding_to(element);
        dz_tol.assert(&format!("cross_entropy_soft dlogits ({split:?}, {element})"), &read(&dz), &want_dz);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn cross_entropy_hard_matches_cpu(batch in 1usize..20, classes in 1usize..300, smoothing in 0.0f64..0.3,
                                      large in any::<bool>(), seed in any::<u64>()) {
        check_hard(batch, classes, smoothing, if large { 80.0 } else { 0.0 }, seed);
    }

    #[test]
    fn cross_entropy_soft_matches_cpu(batch in 1usize..20, classes in 1usize..300, normalised in any::<bool>(),
                                      seed in any::<u64>()) {
        check_soft(Element::F32, batch, classes, normalised, seed);
    }
}

#[test]
fn cross_entropy_f16_matches_cpu() {
    require_f16();
    check_hard_as(Element::F16, 7, 10, 0.1, 0.0, 31);
    check_hard_as(Element::F16, 3, 1000, 0.0, 80.0, 32);
    check_soft(Element::F16, 5, 100, true, 33);
}

#[test]
fn cross_entropy_imagenet_classes() {
    // 1000 classes: many columns per invocation.
    check_hard(5, 1000, 0.1, 0.0, 21);
}

#[test]
fn cross_entropy_bad_label_gives_nan() {
    let (batch, classes) = (3, 5);
    let z = vec![0.5; batch * classes];
    let (zt, lt) = (upload(&z, &[batch, classes]), upload_labels(&[1, 5, 0]));
    for split in [RowSplit::Invocation, RowSplit::Workgroup] {
        let (loss, dz) = (empty(&[batch]), empty(&[batch, classes]));
        run(|rec| cross_entropy::cross_entropy_hard_with_split(rec, split, &zt, &lt, &loss, &dz, 0.0, 1.0));
        let (loss, dz) = (read(&loss), read(&dz));
        assert!(loss[1].is_nan() && dz[5..10].iter().all(|v| v.is_nan()), "{split:?}: {loss:?} {dz:?}");
        assert!(loss[0].is_finite() && loss[2].is_finite() && dz[..5].iter().all(|v| v.is_finite()), "{split:?}");
    }
}

#[test]
fn cross_entropy_backward_matches_finite_differences() {
    let (batch, classes, smoothing, grad_scale) = (3, 6, 0.1, 1.0 / 3.0);
    let mut r = rng(9);
    let z = random(&mut r, batch * classes, 3.0);
    let labels = [2u32, 0, 5];
    let (_, dz) = cpu::cross_entropy::cross_entropy_hard(&z, &labels, batch, classes, smoothing, grad_scale);
    let total = |z: &[f64]| {
        grad_scale
            * cpu::cross_entropy::cross_entropy_hard(z, &labels, batch, classes, smoothing, grad_scale)
                .0
                .iter()
                .sum::<f64>()
    };
    Tolerance::FINITE_DIFF.assert("cross_entropy_hard vs finite differences", &dz, &numeric_grad(total, &z, 1e-6));

    // Targets that do not sum to 1 exercise the softmax * sum(t) term.
    let t: Vec<f64> = (0..batch * classes).map(|_| r.random_range(0.0..0.5)).collect();
    let (_, dz) = cpu::cross_entropy::cross_entropy_soft(&z, &t, batch, classes, grad_scale);
    let total = |z: &[f64]| {
        grad_scale * cpu::cross_entropy::cross_entropy_soft(z, &t, batch, classes, grad_scale).0.iter().sum::<f64>()
    };
    Tolerance::FINITE_DIFF.assert("cross_entropy_soft vs finite differences", &dz, &numeric_grad(total, &z, 1e-6));
}

#[test]
fn cross_entropy_rejects_bad_input() {
    let c = ctx();
    let z = c.zeros(&[4, 10], "logits").unwrap();
    let labels = c.upload_u32(&[0; 3], &[3], "labels").unwrap();
    let loss = c.zeros(&[4], "loss").unwrap();
    let dz = c.zeros(&[4, 10], "dz").unwrap();
    let mut rec = c.recorder("bad");
    let err = cross_entropy::cross_entropy_hard(&mut rec, &z, &labels, &loss, &dz, 0.1, 0.25).unwrap_err().to_string();
    assert!(
        err.contains("cross_entropy_hard") && err.contains("labels") && err.contains("[3]") && err.contains("[4]"),
        "{err}"
    );
    let labels = c.upload_u32(&[0; 4], &[4], "labels").unwrap();
    let err = cross_entropy::cross_entropy_hard(&mut rec, &z, &labels, &loss, &dz, 1.5, 0.25).unwrap_err().to_string();
    assert!(err.contains("cross_entropy_hard") && err.contains("1.5"), "{err}");
    let t = c.zeros(&[4, 9], "targets").unwrap();
    let err = cross_entropy::cross_entropy_soft(&mut rec, &z, &t, &loss, &dz, 0.25).unwrap_err().to_string();
    assert!(err.contains("cross_entropy_soft") && err.contains("[4, 9]") && err.contains("[4, 10]"), "{err}");
}

#[test]
fn cross_entropy_many_classes_use_a_workgroup_per_row() {
    // ImageNet-21k: one invocation per row would exceed the software-GPU loop budget, so the
    // adapter-chosen split falls back to a workgroup per row, even on CPU adapters.
    let (batch, classes) = (3, 21_843);
    assert_eq!(RowSplit::for_rows(ctx(), classes), RowSplit::Workgroup);
    assert_eq!(
        RowSplit::for_rows(ctx(), 1000),
        if ctx().summary.is_cpu() { RowSplit::Invocation } else { RowSplit::Workgroup }
    );
    let mut r = rng(17);
    let z = logits(Element::F32, &mut r, batch * classes, 0.0);
    let labels = [0u32, 21_842, 777];
    let (zt, lt) = (upload(&z, &[batch, classes]), upload_labels(&labels));
    let (loss, dz) = (empty(&[batch]), empty(&[batch, classes]));
    run(|rec| cross_entropy::cross_entropy_hard(rec, &zt, &lt, &loss, &dz, 0.1, 1.0));
    let (want_loss, want_dz) = cpu::cross_entropy::cross_entropy_hard(&z, &labels, batch, classes, 0.1, 1.0);
    Tolerance::FORWARD.assert("cross_entropy_hard loss, 21843 classes", &read(&loss), &want_loss);
    Tolerance::BACKWARD.assert("cross_entropy_hard dlogits, 21843 classes", &read(&dz), &want_dz);
    let mut rec = ctx().recorder("bad");
    let err =
        cross_entropy::cross_entropy_hard_with_split(&mut rec, RowSplit::Invocation, &zt, &lt, &loss, &dz, 0.1, 1.0)
            .unwrap_err()
            .to_string();
    assert!(err.contains("cross_entropy_hard") && err.contains("21843 classes"), "{err}");
}
