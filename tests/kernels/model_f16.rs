//! The whole ViT with f16 activations: against the f64 CPU model (logits, loss, every
//! gradient), and training in f16 against training in f32.

use autoprog::gpu::Element;
use autoprog::kernels::optimizer::AdamW;
use autoprog::model::step::{LossScaler, Optimizer, ScaleChange, StepOptions};
use autoprog::model::{GpuVit, Loss};
use autoprog::tolerance::{relative_l2, F16_MODEL_REL_L2};

use crate::common::*;
use crate::model::{case, cpu_reference, gpu_gradients_as, Case};

fn f16_model(c: &Case) -> GpuVit {
    let ctx = ctx();
    let mut model = GpuVit::new(ctx, c.config.clone(), c.layout.clone(), &c.params).unwrap();
    model.set_activations(ctx, Element::F16).unwrap();
    model
}

/// f16 forward, scaled loss and backward: (logits, loss, unscaled gradient arena).
fn f16_gradients(c: &Case, smoothing: f32, drop: Option<&[f64]>, scale: f32) -> (Vec<f32>, f32, Vec<f32>) {
    gpu_gradients_as(c, Element::F16, Loss::Hard { smoothing }, drop, scale)
}

fn compare_f16(c: &Case, smoothing: f64, drop: Option<&[f64]>) {
    let (logits, loss, grads) = f16_gradients(c, smoothing as f32, drop, 1024.0);
    let (cpu_logits, cpu_loss, cpu_grads) = cpu_reference(c, smoothing, drop);
    let check = |what: &str, actual: &[f32], expected: &[f64]| {
        let error = relative_l2(actual, expected);
        assert!(error <= F16_MODEL_REL_L2, "{what}: relative L2 error {error:.3e} > {F16_MODEL_REL_L2:.3e}");
    };
    check("logits", &logits, &cpu_logits);
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

/// `steps` training steps of a small ViT on fixed random batches, in `element`: the loss of
/// every step and the final weights.
fn trajectory(element: Element, steps: usize) -> (Vec<f32>, Vec<f32>) {
    let c = case(8, 12, 9);
    let ctx = ctx();
    let mut model = GpuVit::new(ctx, c.config.clone(), c.layout.clone(), &c.params).unwrap();
    model.set_activations(ctx, element).unwrap();
    let acts = model.plan(ctx, c.batch, c.resolution).unwrap();
    let mut opt = Optimizer::new(ctx, &model, &[0.9]).unwrap();
    let mut scaler = LossScaler::new();
    let options = |scale: f32| StepOptions {
        adamw: AdamW { lr: 2e-3, weight_decay: 0.05, ..AdamW::default() },
        max_grad_norm: 1.0,
        loss: Loss::Hard { smoothing: 0.1 },
        drop_path: false,
        loss_scale: scale,
    };
    let mut r = rng(90);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let images = random(&mut r, c.images.len(), 2.0);
        ctx.write(&acts.images, &to_f32(&images)).unwrap();
        ctx.write_u32(&acts.labels, &c.labels).unwrap();
        let scale = if element == Element::F16 { scaler.scale } else { 1.0 };
        let mut rec = ctx.recorder("step");
        opt.record_step(&mut rec, &model, &acts, &options(scale)).unwrap();
        ctx.submit(rec).unwrap();
        let report = read(&opt.report);
        assert_eq!(report[1], 1.0, "no step of this trajectory overflows");
        scaler.update(scale, true);
        losses.push(report[0]);
    }
    (losses, read(&model.params))
}

#[test]
fn f16_training_follows_the_f32_trajectory() {
    // 50 AdamW steps at lr 2e-3 from the same weights on the same batches. Each f16
    // gradient is within about 1e-3 of the f32 one (relative L2, see F16_MODEL_REL_L2);
    // AdamW normalises the updates, so the weights part by at most lr per step where a
    // gradient is noise-sized. Bounds: every loss within 1 % of f32's, and the weights
    // within 1 % in relative L2 after 50 steps, while training moves them by about 15 %
    // (measured on lavapipe: losses within 1.1e-4, weights 1.1e-3 apart).
    require_f16();
    let steps = 50;
    let (f32_losses, f32_params) = trajectory(Element::F32, steps);
    let (f16_losses, f16_params) = trajectory(Element::F16, steps);
    for (step, (a, b)) in f16_losses.iter().zip(&f32_losses).enumerate() {
        assert!((a - b).abs() <= 0.01 * b.abs(), "step {step}: f16 loss {a} vs f32 {b}");
    }
    // The key biases are left out, as in the f32 trajectory test: their exact gradient is 0
    // (softmax ignores a shift shared by every key), so both runs hold rounding noise that
    // AdamW turns into steps of size lr with arbitrary signs.
    let c = case(8, 12, 9);
    let dim = c.config.dim;
    let kept: Vec<usize> = (0..c.layout.len)
        .filter(|&i| {
            !c.layout
                .specs
                .iter()
                .any(|s| s.name.ends_with("attn.qkv.bias") && (s.offset + dim..s.offset + 2 * dim).contains(&i))
        })
        .collect();
    let pick = |v: &[f32]| kept.iter().map(|&i| v[i]).collect::<Vec<f32>>();
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let (f16_kept, f32_kept, start_kept) = (pick(&f16_params), pick(&f32_params), pick(&c.params));
    let drift = relative_l2(&f16_kept, &wide(&f32_kept));
    let moved = relative_l2(&f32_kept, &wide(&start_kept));
    assert!(drift <= 0.01, "f16 weights {drift:.3e} from f32 after {steps} steps (training moved them {moved:.3e})");
    assert!(moved > 10.0 * drift, "training moved the weights {moved:.3e}: too little for the comparison to mean much");
    assert!(f32_losses[steps - 1] < f32_losses[0], "the trajectory learns: {f32_losses:?}");
}

#[test]
fn an_f16_overflow_skips_exactly_one_step_and_halves_the_scale() {
    // Soft targets; at step 4 one image's target row is a million times too large (a bad
    // label, as a data spike would be): its dlogits pass f16's largest value (65504) at loss
    // scale 1024, every gradient becomes inf or NaN, the loss itself stays finite (it is f32).
    require_f16();
    let c = case(4, 12, 10);
    let ctx = ctx();
    let model = f16_model(&c);
    let acts = model.plan(ctx, c.batch, c.resolution).unwrap();
    ctx.write(&acts.images, &to_f32(&c.images)).unwrap();
    let mut opt = Optimizer::new(ctx, &model, &[0.5]).unwrap();
    let mut scaler = LossScaler { scale: 1024.0, ..LossScaler::new() };
    let k = c.config.classes;
    let onehot: Vec<f32> = (0..c.batch * k).map(|i| (c.labels[i / k] as usize == i % k) as u32 as f32).collect();
    let mut skipped = Vec::new();
    for step in 0..8 {
        let mut targets = onehot.clone();
        if step == 4 {
            targets[..k].iter_mut().for_each(|t| *t *= 1e6);
        }
        ctx.write(&acts.targets, &targets).unwrap();
        let before = (read(&model.params), read(&opt.m), read(&opt.emas[0].0));
        let used = scaler.scale;
        let options = StepOptions {
            adamw: AdamW { lr: 1e-3, ..AdamW::default() },
            max_grad_norm: 1.0,
            loss: Loss::Soft,
            drop_path: false,
            loss_scale: used,
        };
        let mut rec = ctx.recorder("step");
        opt.record_step(&mut rec, &model, &acts, &options).unwrap();
        ctx.submit(rec).unwrap();
        let report = read(&opt.report);
        assert!(report[0].is_finite(), "step {step}: the loss is f32 and stays finite");
        let applied = report[1] != 0.0;
        let change = scaler.update(used, applied);
        if !applied {
            skipped.push(step);
            opt.uncount_skipped_step(acts.active_blocks());
            assert_eq!(change, ScaleChange::Halved(1024.0, 512.0));
            let after = (read(&model.params), read(&opt.m), read(&opt.emas[0].0));
            assert!(after == before, "a skipped step changed the weights, moments or EMA");
        }
    }
    assert_eq!(skipped, [4], "exactly the overflowing step is skipped");
    assert_eq!(scaler.scale, 512.0);
    assert_eq!(opt.step, 7, "the skipped step does not count for AdamW's bias correction");
}

#[test]
fn an_f16_step_holds_at_most_0_6_of_the_f32_memory() {
    // The device memory of a training step's tensors (model, optimizer, activations and
    // scratch), as `autoprog bench --train` reports it, in a context of its own so that no
    // other test's tensors count. Activations dominate and halve in f16; the f32 master
    // weights, gradients, moments and EMA do not (and the f16 weight copy adds a little).
    require_f16();
    let ctx = autoprog::GpuContext::new_blocking(&Default::default()).unwrap();
    let bytes = |element| {
        let r = pollster::block_on(autoprog::bench::bench_train_step(&ctx, "nano", 32, 4, 64, 1, element)).unwrap();
        r.device_bytes.unwrap() as f64
    };
    let (f32_bytes, f16_bytes) = (bytes(Element::F32), bytes(Element::F16));
    let ratio = f16_bytes / f32_bytes;
    assert!(ratio <= 0.6, "f16 step {f16_bytes} bytes, f32 {f32_bytes}: ratio {ratio:.3}");
    assert!(ratio >= 0.4, "ratio {ratio:.3}: less than half would mean the f32 state was not counted");
}
