//! Step plans: a replayed step equals the same step recorded afresh, bit for bit, across
//! sub-network switches, and the cache holds one plan per sub-network.

use autoprog::kernels::optimizer::AdamW;
use autoprog::model::step::{Optimizer, StepOptions};
use autoprog::model::{Activations, GpuVit, Loss};

use crate::common::*;
use crate::model::{case, Case};

/// One training run: a model, its optimizer, and activations at each resolution.
struct Arm {
    model: GpuVit,
    opt: Optimizer,
    acts: Vec<Activations>,
}

impl Arm {
    fn new(c: &Case, resolutions: &[usize], replay: bool) -> Arm {
        let ctx = ctx();
        let model = GpuVit::new(ctx, c.config.clone(), c.layout.clone(), &c.params).unwrap();
        let acts = resolutions.iter().map(|&r| model.plan(ctx, c.batch, r).unwrap()).collect();
        let mut opt = Optimizer::new(ctx, &model, &[0.9, 0.5]).unwrap();
        opt.plans.enabled = replay;
        Arm { model, opt, acts }
    }

    /// One step of the sub-network (activations `res`, `blocks`) on `batch`; returns the loss.
    fn step(&mut self, res: usize, blocks: &[usize], batch: &Batch, options: &StepOptions) -> f32 {
        let ctx = ctx();
        let acts = &mut self.acts[res];
        acts.set_active_blocks(blocks).unwrap();
        ctx.write(&acts.images, &batch.images).unwrap();
        ctx.write_u32(&acts.labels, &batch.labels).unwrap();
        ctx.write(&acts.targets, &batch.targets).unwrap();
        acts.write_drop_path(ctx, &batch.drop).unwrap();
        let mut rec = ctx.recorder("step");
        self.opt.record_step(&mut rec, &self.model, acts, options).unwrap();
        ctx.submit(rec).unwrap();
        read(&acts.loss)[0]
    }
}

struct Batch {
    images: Vec<f32>,
    labels: Vec<u32>,
    targets: Vec<f32>,
    drop: Vec<f32>,
}

fn batch(c: &Case, resolution: usize, seed: u64) -> Batch {
    let mut r = rng(seed);
    let (b, k) = (c.batch, c.config.classes);
    let targets = random(&mut r, b * k, 1.0).iter().map(|x| x.abs() / k as f64).collect::<Vec<_>>();
    let drop: Vec<f64> =
        random(&mut r, 2 * c.config.depth * b, 1.0).iter().map(|x| if *x > 0.0 { 2.0 } else { 0.0 }).collect();
    Batch {
        images: to_f32(&random(&mut r, b * 3 * resolution * resolution, 2.0)),
        labels: (0..b).map(|i| ((i as u64 * 3 + seed) % k as u64) as u32).collect(),
        targets: to_f32(&targets),
        drop: to_f32(&drop),
    }
}

fn options(step: usize, drop_path: bool, loss: Loss) -> StepOptions {
    StepOptions {
        // A learning rate that changes every step, as a schedule's does.
        adamw: AdamW { lr: 1e-3 * (1.0 + step as f64), weight_decay: 0.05, ..AdamW::default() },
        max_grad_norm: 1.0,
        loss,
        drop_path,
        loss_scale: 1.0,
    }
}

#[test]
fn replayed_steps_equal_steps_recorded_afresh_bit_for_bit() {
    let c = case(4, 12, 31);
    let resolutions = [12, 8];
    let (mut replayed, mut afresh) = (Arm::new(&c, &resolutions, true), Arm::new(&c, &resolutions, false));
    let hard = Loss::Hard { smoothing: 0.1 };
    // (activations, blocks, drop-path, loss): sub-networks switch as in a search, and come back.
    let schedule: [(usize, &[usize], bool, Loss); 7] = [
        (0, &[0, 1], false, hard),
        (0, &[0, 1], false, hard),
        (0, &[1], true, hard),
        (1, &[0, 1], true, Loss::Soft),
        (0, &[0, 1], false, hard),
        (1, &[0], true, Loss::Soft),
        (0, &[1], true, hard),
    ];
    for (step, &(res, blocks, drop_path, loss)) in schedule.iter().enumerate() {
        let data = batch(&c, resolutions[res], 100 + step as u64);
        let options = options(step, drop_path, loss);
        let (a, b) = (replayed.step(res, blocks, &data, &options), afresh.step(res, blocks, &data, &options));
        assert_eq!(a.to_bits(), b.to_bits(), "loss at step {step}: {a} replayed, {b} recorded afresh");
    }
    let same = |name: &str, x: &autoprog::Tensor, y: &autoprog::Tensor| {
        let (x, y) = (read(x), read(y));
        assert!(x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} differs");
    };
    same("parameters", &replayed.model.params, &afresh.model.params);
    same("AdamW m", &replayed.opt.m, &afresh.opt.m);
    same("AdamW v", &replayed.opt.v, &afresh.opt.v);
    for (i, ((x, _), (y, _))) in replayed.opt.emas.iter().zip(&afresh.opt.emas).enumerate() {
        same(&format!("EMA {i}"), x, y);
    }
    assert_eq!(replayed.opt.block_steps, afresh.opt.block_steps);
    // Four sub-networks (activations, blocks, drop-path, loss) ran; one plan each.
    assert_eq!(replayed.opt.plans.len(), 4);
    assert!(afresh.opt.plans.is_empty());
}

#[test]
fn the_plan_cache_holds_one_plan_per_sub_network_and_drops_the_plans_of_what_is_gone() {
    let c = case(2, 12, 32);
    let mut arm = Arm::new(&c, &[12, 8], true);
    let sub_networks: [(usize, &[usize]); 4] = [(0, &[0, 1]), (0, &[1]), (1, &[0, 1]), (1, &[0])];
    let hard = Loss::Hard { smoothing: 0.0 };
    // Three rounds of a search over four sub-networks.
    for round in 0..3 {
        for (i, &(res, blocks)) in sub_networks.iter().enumerate() {
            let data = batch(&c, [12, 8][res], (round * 4 + i) as u64);
            arm.step(res, blocks, &data, &options(i, false, hard));
        }
        assert_eq!(arm.opt.plans.len(), 4, "round {round}");
    }
    // A new stage plans new activations at 8 px: the old ones' two plans go.
    arm.acts[1] = arm.model.plan(ctx(), c.batch, 8).unwrap();
    arm.step(1, &[0, 1], &batch(&c, 8, 50), &options(0, false, hard));
    assert_eq!(arm.opt.plans.len(), 3);
    // Another loss scale changes the constants in the plans' parameters: only the new plan stays.
    let scaled = StepOptions { loss_scale: 8.0, ..options(0, false, hard) };
    arm.step(0, &[0, 1], &batch(&c, 12, 51), &scaled);
    assert_eq!(arm.opt.plans.len(), 1);
}
