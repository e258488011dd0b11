//! The whole ViT with f16 activations: against the f64 CPU model (logits, loss, every
//! gradient), and training in f16 against training in f32.

use autoprog::gpu::Element;
use autoprog::model::cpu::{cross_entropy, CpuVit, DropPath};
use autoprog::model::{GpuVit, Loss};
use autoprog::tolerance::{relative_l2, F16_MODEL_REL_L2};

use crate::common::*;
use crate::model::{as_f64, case, Case};

fn f16_model(c: &Case) -> GpuVit {
    let ctx = ctx();
    let mut model = GpuVit::new(ctx, c.config.clone(), c.layout.clone(), &c.params).unwrap();
    model.set_activations(ctx, Element::F16).unwrap();
    model
}

/// f16 forward, scaled loss and backward: (logits, loss, unscaled gradient arena).
fn f16_gradients(c: &Case, smoothing: f32, drop: Option<&[f64]>, scale: f32) -> (Vec<f32>, f32, Vec<f32>) {
    let ctx = ctx();
    let model = f16_model(c);
    let acts = model.plan(ctx, c.batch, c.resolution).unwrap();
    assert_eq!(acts.logits.element(), Element::F16, "the plan stores activations in f16");
    ctx.write(&acts.images, &to_f32(&c.images)).unwrap();
    ctx.write_u32(&acts.labels, &c.labels).unwrap();
    if let Some(scales) = drop {
        acts.write_drop_path(ctx, &to_f32(scales)).unwrap();
    }
    run(|rec| {
        model.forward(rec, &model.params, &acts, drop.is_some())?;
        model.scaled_loss(rec, &acts, Loss::Hard { smoothing }, scale)?;
        model.backward(rec, &acts, drop.is_some())
    });
    let grads = read(&model.grads).iter().map(|g| g / scale).collect();
    (read(&acts.logits), read(&acts.loss)[0], grads)
}

fn compare_f16(c: &Case, smoothing: f64, drop: Option<&[f64]>) {
    let (logits, loss, grads) = f16_gradients(c, smoothing as f32, drop, 1024.0);
    let params = as_f64(&c.params);
    let cpu = CpuVit { config: &c.config, layout: &c.layout, params: &params };
    let drop_path = drop.map(|scales| DropPath { scales });
    let fwd = cpu.forward(&c.images, c.batch, c.resolution, drop_path).unwrap();
    let (cpu_loss, dlogits) = cross_entropy(&fwd.logits, &c.labels, c.config.classes, smoothing);
    let cpu_grads = cpu.backward(&fwd, &dlogits, drop_path);
    let check = |what: &str, actual: &[f32], expected: &[f64]| {
        let error = relative_l2(actual, expected);
        assert!(error <= F16_MODEL_REL_L2, "{what}: relative L2 error {error:.3e} > {F16_MODEL_REL_L2:.3e}");
    };
    check("logits", &logits, &fwd.logits);
    check("loss", &[loss], &[cpu_loss]);
    for spec in &c.layout.specs {
        check(&spec.name, &grads[spec.range()], &cpu_grads[spec.range()]);
    }
}

#[test]
fn gpu_model_f16_matches_cpu_model() {
    require_f16();
    compare_f16(&case(3, 12, 1), 0.1, None);
    // The position grid resized (3x3 to 5x5 and back), and drop-path.
    let c = case(2, 20, 3);
    let mut scales = vec![1.25; c.config.depth * 2 * c.batch];
    scales[1] = 0.0;
    compare_f16(&c, 0.1, Some(&scales));
}

#[test]
fn f16_loss_scaling_is_exact_and_rescues_small_gradients() {
    // Scaling dlogits by a power of two scales every f16 gradient exactly, as long as none
    // underflows or overflows: the unscaled gradients of scale 1 and 1024 agree closely.
    // Scaled by 2^-20 instead, the activation gradients drop below f16's smallest
    // subnormal (6e-8) and most weight gradients vanish: what loss scaling prevents.
    require_f16();
    let c = case(3, 12, 4);
    let (_, _, plain) = f16_gradients(&c, 0.0, None, 1.0);
    let (_, _, scaled) = f16_gradients(&c, 0.0, None, 1024.0);
    let (_, _, tiny) = f16_gradients(&c, 0.0, None, 2f32.powi(-20));
    let plain64: Vec<f64> = plain.iter().map(|&g| g as f64).collect();
    let error = relative_l2(&scaled, &plain64);
    assert!(error < F16_MODEL_REL_L2, "scale 1024 vs 1: {error:.3e}");
    let lost = relative_l2(&tiny, &plain64);
    assert!(lost > 0.5, "gradients scaled by 2^-20 should mostly underflow in f16 (error {lost:.3e})");
}
