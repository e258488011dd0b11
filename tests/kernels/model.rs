//! The whole ViT: the GPU model against its f64 CPU twin (logits, loss, every gradient,
//! a 10-step training trajectory), and the CPU model's gradients against finite differences.

use autoprog::gpu::Element;
use autoprog::kernels::optimizer::AdamW;
use autoprog::model::cpu::{cross_entropy, CpuVit, DropPath};
use autoprog::model::step::{Optimizer, StepOptions};
use autoprog::model::{GpuVit, Loss, ParamLayout, VitConfig};
use autoprog::tolerance::Tolerance;

use crate::common::*;

/// The whole model in f32 against f64: errors of every kernel compound through the
/// blocks, so the bar is the rel 1e-3; the abs floor covers gradients that
/// cancel to ~0 (their f32 rounding is ~1e-7 of the summed terms).
const MODEL: Tolerance = Tolerance { rel: 1e-3, abs: 2e-5 };

/// A small ViT whose sizes are multiples of no tile: 12 px, patch 4 (N = 10), dim 48,
/// 3 heads of 16, MLP 72, 5 classes.
pub(crate) fn small_config() -> VitConfig {
    VitConfig {
        image_size: 12,
        patch_size: 4,
        in_chans: 3,
        dim: 48,
        depth: 2,
        heads: 3,
        mlp_hidden: 72,
        classes: 5,
        layernorm_eps: 1e-6,
    }
}

/// timm's initialisation with every tensor nudged, so that no gradient is trivially zero
/// (norm weights off 1, biases and the class token off 0).
pub(crate) fn params(config: &VitConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut p = layout.init(config, seed);
    let mut r = rng(seed + 1);
    let noise = random(&mut r, p.len(), 0.05);
    for spec in &layout.specs {
        for i in spec.range() {
            p[i] += noise[i] as f32;
        }
    }
    p
}

pub(crate) struct Case {
    pub(crate) config: VitConfig,
    pub(crate) layout: ParamLayout,
    pub(crate) params: Vec<f32>,
    pub(crate) images: Vec<f64>,
    pub(crate) labels: Vec<u32>,
    pub(crate) batch: usize,
    pub(crate) resolution: usize,
}

pub(crate) fn case(batch: usize, resolution: usize, seed: u64) -> Case {
    let config = small_config();
    let layout = ParamLayout::new(&config, config.depth, ctx().arena_align());
    let params = params(&config, &layout, seed);
    let mut r = rng(seed + 2);
    let images = rounded(&random(&mut r, batch * 3 * resolution * resolution, 2.0));
    let labels = (0..batch).map(|b| ((b * 7 + seed as usize) % config.classes) as u32).collect();
    Case { config, layout, params, images, labels, batch, resolution }
}

pub(crate) fn as_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// GPU forward + loss + backward of one batch: (logits, loss, gradient arena).
fn gpu_gradients(c: &Case, loss: Loss, drop: Option<&[f64]>) -> (Vec<f32>, f32, Vec<f32>) {
    gpu_gradients_as(c, Element::F32, loss, drop, 1.0)
}

/// [`gpu_gradients`] with activations stored as `activations` and the loss scaled by
/// `scale` (the gradients returned are unscaled).
pub(crate) fn gpu_gradients_as(
    c: &Case,
    activations: Element,
    loss: Loss,
    drop: Option<&[f64]>,
    scale: f32,
) -> (Vec<f32>, f32, Vec<f32>) {
    let ctx = ctx();
    let mut model = GpuVit::new(ctx, c.config.clone(), c.layout.clone(), &c.params).unwrap();
    model.set_activations(ctx, activations).unwrap();
    let acts = model.plan(ctx, c.batch, c.resolution).unwrap();
    assert_eq!(acts.logits.element(), activations, "the plan stores activations as asked");
    ctx.write(&acts.images, &to_f32(&c.images)).unwrap();
    ctx.write_u32(&acts.labels, &c.labels).unwrap();
    if let Some(scales) = drop {
        acts.write_drop_path(ctx, &to_f32(scales)).unwrap();
    }
    run(|rec| {
        model.forward(rec, &model.params, &acts, drop.is_some())?;
        model.scaled_loss(rec, &acts, loss, scale)?;
        model.backward(rec, &acts, drop.is_some())
    });
    let grads = read(&model.grads).iter().map(|g| g / scale).collect();
    (read(&acts.logits), read(&acts.loss)[0], grads)
}

/// The f64 CPU model's (logits, loss, gradient arena) for the case's batch.
pub(crate) fn cpu_reference(c: &Case, smoothing: f64, drop: Option<&[f64]>) -> (Vec<f64>, f64, Vec<f64>) {
    let params = as_f64(&c.params);
    let cpu = CpuVit { config: &c.config, layout: &c.layout, params: &params };
    let drop_path = drop.map(|scales| DropPath { scales });
    let fwd = cpu.forward(&c.images, c.batch, c.resolution, drop_path).unwrap();
    let (loss, dlogits) = cross_entropy(&fwd.logits, &c.labels, c.config.classes, smoothing);
    let grads = cpu.backward(&fwd, &dlogits, drop_path);
    (fwd.logits, loss, grads)
}

fn compare(c: &Case, smoothing: f64, drop: Option<&[f64]>) {
    let (logits, loss, grads) = gpu_gradients(c, Loss::Hard { smoothing: smoothing as f32 }, drop);
    let (cpu_logits, cpu_loss, cpu_grads) = cpu_reference(c, smoothing, drop);
    MODEL.assert("logits", &logits, &cpu_logits);
    MODEL.assert("loss", &[loss], &[cpu_loss]);
    for spec in &c.layout.specs {
        MODEL.assert(&spec.name, &grads[spec.range()], &cpu_grads[spec.range()]);
    }
}

#[test]
fn gpu_model_matches_cpu_model() {
    compare(&case(3, 12, 1), 0.1, None);
}

#[test]
fn gpu_model_matches_cpu_model_with_drop_path() {
    let c = case(3, 12, 2);
    // Image 1 loses the attention branch of block 0 and the MLP of block 1; the others
    // are kept and rescaled by 1 / keep-probability.
    let mut scales = vec![1.25; c.config.depth * 2 * c.batch];
    scales[1] = 0.0;
    scales[3 * c.batch + 1] = 0.0;
    compare(&c, 0.0, Some(&scales));
}

#[test]
fn gpu_model_matches_cpu_model_at_another_resolution() {
    // 20 px on a model made for 12: the 3x3 position grid is resized to 5x5 (and back in
    // the backward pass).
    compare(&case(2, 20, 3), 0.1, None);
}

#[test]
fn soft_targets_match_hard_labels() {
    // One-hot soft targets give the same loss and gradients as hard labels.
    let c = case(3, 12, 4);
    let ctx = ctx();
    let model = GpuVit::new(ctx, c.config.clone(), c.layout.clone(), &c.params).unwrap();
    let acts = model.plan(ctx, c.batch, c.resolution).unwrap();
    ctx.write(&acts.images, &to_f32(&c.images)).unwrap();
    let k = c.config.classes;
    let onehot: Vec<f32> = (0..c.batch * k).map(|i| (c.labels[i / k] as usize == i % k) as u32 as f32).collect();
    ctx.write(&acts.targets, &onehot).unwrap();
    run(|rec| {
        model.forward(rec, &model.params, &acts, false)?;
        model.loss(rec, &acts, Loss::Soft)?;
        model.backward(rec, &acts, false)
    });
    let (soft_loss, soft_grads) = (read(&acts.loss)[0], read(&model.grads));
    let (_, hard_loss, hard_grads) = gpu_gradients(&c, Loss::Hard { smoothing: 0.0 }, None);
    Tolerance::FORWARD.assert("loss", &[soft_loss], &[hard_loss]);
    Tolerance::BACKWARD.assert("grads", &soft_grads, &hard_grads);
}

#[test]
fn a_partial_batch_trains_as_the_images_it_holds() {
    // A batch of 4 planned images holding 3 (one file failed to load), padded with a zero
    // image and a zero target row: the loss and every gradient are those of the 3 images
    // alone, with the mean over 3. Same kernels at a different batch size, so the tolerance
    // is the one for two GPU reductions of the same sums in another order.
    let full = case(3, 12, 7);
    let (_, loss, grads) = gpu_gradients(&full, Loss::Hard { smoothing: 0.0 }, None);
    let ctx = ctx();
    let model = GpuVit::new(ctx, full.config.clone(), full.layout.clone(), &full.params).unwrap();
    let acts = model.plan(ctx, 4, full.resolution).unwrap();
    let mut images = to_f32(&full.images);
    images.resize(acts.images.numel(), 0.0);
    ctx.write(&acts.images, &images).unwrap();
    let k = full.config.classes;
    let mut targets: Vec<f32> = (0..3 * k).map(|i| (full.labels[i / k] as usize == i % k) as u32 as f32).collect();
    targets.resize(4 * k, 0.0);
    ctx.write(&acts.targets, &targets).unwrap();
    run(|rec| {
        model.forward(rec, &model.params, &acts, false)?;
        model.loss(rec, &acts, Loss::Partial { rows: 3 })?;
        model.backward(rec, &acts, false)
    });
    Tolerance::FORWARD.assert("loss", &read(&acts.loss), &[loss]);
    Tolerance::BACKWARD.assert("grads", &read(&model.grads), &grads);
    // Rows beyond the plan, or none, are a programmer's error, not a silent mean.
    let mut rec = ctx.recorder("bad rows");
    assert!(model.loss(&mut rec, &acts, Loss::Partial { rows: 5 }).is_err());
    assert!(model.loss(&mut rec, &acts, Loss::Partial { rows: 0 }).is_err());
}

#[test]
fn cpu_model_gradients_match_finite_differences() {
    // Depth 1 and 2 images keep it quick; a few coordinates of every tensor.
    let mut c = case(2, 12, 5);
    c.config.depth = 1;
    c.layout = ParamLayout::new(&c.config, 1, 1);
    c.params = params(&c.config, &c.layout, 5);
    let params = as_f64(&c.params);
    let scales = [1.0, 2.0, 0.0, 1.5];
    let drop = Some(DropPath { scales: &scales });
    // At 20 px, so the position-embedding resize is inside the check too.
    let mut images = c.images.clone();
    images.resize(c.batch * 3 * 20 * 20, 0.25);
    c.images = images;
    let loss_of = |p: &[f64]| {
        let cpu = CpuVit { config: &c.config, layout: &c.layout, params: p };
        let fwd = cpu.forward(&c.images, c.batch, 20, drop).unwrap();
        cross_entropy(&fwd.logits, &c.labels, c.config.classes, 0.1).0
    };
    let cpu = CpuVit { config: &c.config, layout: &c.layout, params: &params };
    let fwd = cpu.forward(&c.images, c.batch, 20, drop).unwrap();
    let (_, dlogits) = cross_entropy(&fwd.logits, &c.labels, c.config.classes, 0.1);
    let grads = cpu.backward(&fwd, &dlogits, drop);
    let h = 1e-6;
    for spec in &c.layout.specs {
        for i in spec.range().step_by(spec.numel().div_ceil(3).max(1)) {
            let mut p = params.clone();
            p[i] += h;
            let plus = loss_of(&p);
            p[i] -= 2.0 * h;
            let minus = loss_of(&p);
            let numeric = (plus - minus) / (2.0 * h);
            // Looser than FINITE_DIFF: the loss sums thousands of terms, so its rounding
            // error divided by h is ~1e-9 absolute.
            Tolerance { rel: 1e-5, abs: 1e-8 }.assert(&format!("{}[{i}]", spec.name), &[grads[i]], &[numeric]);
        }
    }
}

#[test]
fn ten_training_steps_follow_the_cpu_trajectory() {
    let c = case(4, 12, 6);
    let ctx = ctx();
    let model = GpuVit::new(ctx, c.config.clone(), c.layout.clone(), &c.params).unwrap();
    let acts = model.plan(ctx, c.batch, c.resolution).unwrap();
    let mut opt = Optimizer::new(ctx, &model, &[0.9]).unwrap();
    let hp = AdamW { lr: 3e-3, weight_decay: 0.05, ..AdamW::default() };
    let options = StepOptions {
        adamw: hp,
        max_grad_norm: 1.0,
        loss: Loss::Hard { smoothing: 0.1 },
        drop_path: false,
        loss_scale: 1.0,
    };
    let mut params = as_f64(&c.params);
    let (mut m, mut v) = (vec![0.0; params.len()], vec![0.0; params.len()]);
    let mut ema = params.clone();
    let mut r = rng(60);
    for step in 1..=10u32 {
        // A new batch every step.
        let images = rounded(&random(&mut r, c.images.len(), 2.0));
        ctx.write(&acts.images, &to_f32(&images)).unwrap();
        ctx.write_u32(&acts.labels, &c.labels).unwrap();
        let mut rec = ctx.recorder("step");
        opt.record_step(&mut rec, &model, &acts, &options).unwrap();
        ctx.submit(rec).unwrap();
        let gpu_loss = read(&acts.loss)[0];

        let cpu = CpuVit { config: &c.config, layout: &c.layout, params: &params };
        let fwd = cpu.forward(&images, c.batch, c.resolution, None).unwrap();
        let (cpu_loss, dlogits) = cross_entropy(&fwd.logits, &c.labels, c.config.classes, 0.1);
        let grads = cpu.backward(&fwd, &dlogits, None);
        let stats = autoprog::cpu::optimizer::grad_norm(&grads, 1.0);
        (params, m, v) =
            autoprog::cpu::optimizer::adamw_update(&params, &grads, &m, &v, &stats, &hp, step, c.layout.decay_end);
        ema = autoprog::cpu::optimizer::ema_update(&params, &[(&ema, 0.9)]).remove(0);
        MODEL.assert(&format!("loss at step {step}"), &[gpu_loss], &[cpu_loss]);
    }
    assert_eq!(opt.step, 10);
    // Ten AdamW steps of size ~lr move each weight by up to 3e-2; the GPU and CPU
    // trajectories agree to a small fraction of that. Except the key biases: their exact
    // gradient is 0 (a bias shared by every key shifts all scores of a query equally, and
    // softmax ignores that), so both sides hold rounding noise that AdamW normalises into
    // steps of size ~lr with arbitrary signs.
    let tol = Tolerance { rel: 1e-3, abs: 1e-4 };
    let (gpu_params, gpu_ema) = (read(&model.params), read(&opt.emas[0].0));
    let c_dim = c.config.dim;
    for spec in &c.layout.specs {
        let range = spec.range();
        let ranges = if spec.name.ends_with("attn.qkv.bias") {
            vec![range.start..range.start + c_dim, range.start + 2 * c_dim..range.end]
        } else {
            vec![range]
        };
        for r in ranges {
            tol.assert(&format!("{} after 10 steps", spec.name), &gpu_params[r.clone()], &params[r.clone()]);
            tol.assert(&format!("EMA of {} after 10 steps", spec.name), &gpu_ema[r.clone()], &ema[r]);
        }
    }
}

#[test]
fn training_steps_overfit_one_batch() {
    // A learning check of the whole step: 60 AdamW steps on one batch of 16 built-in
    // images drive the loss far below its start (chance level is ln 10 ≈ 2.3).
    let data = autoprog::data::Procedural { classes: 10, image_size: 16, seed: 3 };
    let (images, labels) = data.batch(autoprog::data::Split::Train, 0, 16);
    let mut config = small_config();
    config.image_size = 16;
    config.classes = 10;
    let ctx = ctx();
    let layout = ParamLayout::new(&config, config.depth, ctx.arena_align());
    let params = layout.init(&config, 9);
    let model = GpuVit::new(ctx, config.clone(), layout, &params).unwrap();
    let acts = model.plan(ctx, 16, 16).unwrap();
    let normalised: Vec<f32> = images.iter().map(|v| (v - 0.5) / 0.25).collect();
    ctx.write(&acts.images, &normalised).unwrap();
    ctx.write_u32(&acts.labels, &labels).unwrap();
    let mut opt = Optimizer::new(ctx, &model, &[]).unwrap();
    let options = StepOptions {
        adamw: AdamW { lr: 2e-3, weight_decay: 0.05, ..AdamW::default() },
        max_grad_norm: 1.0,
        loss: Loss::Hard { smoothing: 0.0 },
        drop_path: false,
        loss_scale: 1.0,
    };
    let mut losses = Vec::new();
    for _ in 0..60 {
        let mut rec = ctx.recorder("step");
        opt.record_step(&mut rec, &model, &acts, &options).unwrap();
        ctx.submit(rec).unwrap();
        losses.push(read(&acts.loss)[0]);
    }
    assert!(losses[59] < 0.3 * losses[0], "loss went from {} to {}", losses[0], losses[59]);
}

#[test]
fn elastic_sub_network_matches_cpu_model() {
    // A 3-block model running blocks 0 and 2 only (block 1 is the identity), with drop-path.
    let mut c = case(2, 12, 7);
    c.config.depth = 3;
    c.layout = ParamLayout::new(&c.config, 3, ctx().arena_align());
    c.params = params(&c.config, &c.layout, 7);
    let active = [0, 2];
    let scales: Vec<f64> = (0..3 * 2 * c.batch).map(|i| if i == 1 { 0.0 } else { 1.25 }).collect();
    let ctx = ctx();
    let model = GpuVit::new(ctx, c.config.clone(), c.layout.clone(), &c.params).unwrap();
    let mut acts = model.plan(ctx, c.batch, c.resolution).unwrap();
    acts.set_active_blocks(&active).unwrap();
    assert!(acts.set_active_blocks(&[2, 1]).is_err() && acts.set_active_blocks(&[0, 3]).is_err());
    ctx.write(&acts.images, &to_f32(&c.images)).unwrap();
    ctx.write_u32(&acts.labels, &c.labels).unwrap();
    acts.write_drop_path(ctx, &to_f32(&scales)).unwrap();
    // Gradients of a previous full pass must not survive in the skipped block.
    ctx.write(&model.grads, &vec![1.0; c.layout.len]).unwrap();
    run(|rec| {
        model.forward(rec, &model.params, &acts, true)?;
        model.loss(rec, &acts, Loss::Hard { smoothing: 0.1 })?;
        model.backward(rec, &acts, true)
    });
    let (logits, loss, grads) = (read(&acts.logits), read(&acts.loss)[0], read(&model.grads));
    let params = as_f64(&c.params);
    let cpu = CpuVit { config: &c.config, layout: &c.layout, params: &params };
    let drop = Some(DropPath { scales: &scales });
    let fwd = cpu.forward_blocks(&c.images, c.batch, c.resolution, drop, &active).unwrap();
    let (cpu_loss, dlogits) = cross_entropy(&fwd.logits, &c.labels, c.config.classes, 0.1);
    let cpu_grads = cpu.backward(&fwd, &dlogits, drop);
    MODEL.assert("logits", &logits, &fwd.logits);
    MODEL.assert("loss", &[loss], &[cpu_loss]);
    for spec in &c.layout.specs {
        MODEL.assert(&spec.name, &grads[spec.range()], &cpu_grads[spec.range()]);
        if spec.name.starts_with("blocks.1.") {
            assert!(grads[spec.range()].iter().all(|&g| g == 0.0), "{} has a gradient", spec.name);
        }
    }
}

#[test]
fn elastic_steps_update_only_the_blocks_that_ran() {
    let mut c = case(2, 12, 8);
    c.config.depth = 3;
    c.layout = ParamLayout::new(&c.config, 3, ctx().arena_align());
    c.params = params(&c.config, &c.layout, 8);
    let ctx = ctx();
    let model = GpuVit::new(ctx, c.config.clone(), c.layout.clone(), &c.params).unwrap();
    let mut acts = model.plan(ctx, c.batch, c.resolution).unwrap();
    ctx.write(&acts.images, &to_f32(&c.images)).unwrap();
    ctx.write_u32(&acts.labels, &c.labels).unwrap();
    let mut opt = Optimizer::new(ctx, &model, &[0.5]).unwrap();
    let options = StepOptions {
        adamw: AdamW { lr: 1e-2, weight_decay: 0.1, ..AdamW::default() },
        max_grad_norm: 0.0,
        loss: Loss::Hard { smoothing: 0.0 },
        drop_path: false,
        loss_scale: 1.0,
    };
    acts.set_active_blocks(&[0, 2]).unwrap();
    let mut rec = ctx.recorder("elastic step");
    opt.record_step(&mut rec, &model, &acts, &options).unwrap();
    ctx.submit(rec).unwrap();
    let (after, m) = (read(&model.params), read(&opt.m));
    for spec in &c.layout.specs {
        let r = spec.range();
        let moved = after[r.clone()].iter().zip(&c.params[r.clone()]).any(|(a, b)| a != b);
        if spec.name.starts_with("blocks.1.") {
            assert!(!moved, "{} moved although block 1 was skipped", spec.name);
            assert!(m[r].iter().all(|&v| v == 0.0), "{} has AdamW moments", spec.name);
        } else {
            assert!(moved, "{} did not move", spec.name);
        }
    }
    // The full network updates block 1 too: its first update, bias-corrected as step 1
    // (PyTorch counts a parameter's steps only when it has a gradient), so the moments'
    // ratio is g / (|g| + eps) and every weight moves by about lr, not by 0.74 lr as
    // AdamW's step 2 would move it.
    acts.set_active_blocks(&[0, 1, 2]).unwrap();
    let mut rec = ctx.recorder("full step");
    opt.record_step(&mut rec, &model, &acts, &options).unwrap();
    ctx.submit(rec).unwrap();
    assert_eq!((opt.step, opt.block_steps.clone()), (2, vec![2, 1, 2]));
    let spec = c.layout.spec("blocks.1.mlp.fc1.weight");
    assert!(spec.offset < c.layout.decay_end, "a decayed tensor");
    let (full, grads) = (read(&model.params), read(&model.grads));
    let AdamW { lr, weight_decay: wd, eps, .. } = options.adamw;
    for i in spec.range() {
        let (p, g) = (c.params[i] as f64, grads[i] as f64);
        let expected = p * (1.0 - lr * wd) - lr * g / (g.abs() + eps);
        // f32 arithmetic on values of about 1: a few ulps.
        assert!((full[i] as f64 - expected).abs() < 1e-6, "{i}: {} vs {expected} (g {g})", full[i]);
    }
}
