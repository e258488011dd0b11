//! Optimizer kernels (gradient norm and clipping, AdamW, EMA) against their CPU twins.
//! These kernels have no backward, so there is no finite-difference check for them: the
//! twins are the update rules themselves, written directly from PyTorch's definitions.

use autoprog::cpu;
use autoprog::kernels::optimizer::{self, AdamW, GRAD_STATS_LEN};
use autoprog::tolerance::Tolerance;
use autoprog::Tensor;
use proptest::prelude::*;
use rand::Rng;

use crate::common::*;

/// `n` values uniform in [0, scale): second moments must be non-negative.
fn random_nonneg(r: &mut rand_chacha::ChaCha8Rng, n: usize, scale: f64) -> Vec<f64> {
    random(r, n, scale).iter().map(|x| x.abs()).collect()
}

/// The tensor's elements (`read` returns one element for an empty tensor, whose binding is 4 bytes).
fn read_n(t: &Tensor) -> Vec<f32> {
    read(t)[..t.numel()].to_vec()
}

fn partials_for(n: usize) -> Tensor {
    empty(&[optimizer::grad_norm_partials_len(n)])
}

/// Every entry point once on an arena of `n` elements: norm and clip, one AdamW step
/// with a random decay split and step number, then two EMAs of the updated parameters.
fn check_step(n: usize, seed: u64) {
    let mut r = rng(seed);
    let params = rounded(&random(&mut r, n, 1.0));
    let grads = rounded(&random(&mut r, n, 1.0));
    let m = rounded(&random(&mut r, n, 0.1));
    let v = rounded(&random_nonneg(&mut r, n, 0.01));
    let ema_slow = rounded(&random(&mut r, n, 1.0));
    let ema_fast = rounded(&random(&mut r, n, 1.0));
    let decay_end = r.random_range(0..=n);
    let step = r.random_range(1..2000u32);
    // Expected norm of U(-1, 1) grads is sqrt(n / 3): half of it clips, twice it does not, 0 disables.
    let typical = (n as f64 / 3.0).sqrt();
    let max_norm = [0.0, 0.5 * typical, 2.0 * typical][r.random_range(0..3usize)] as f32;
    let hp = AdamW { lr: 3e-3, weight_decay: 0.05, ..AdamW::default() };

    let (pt, gt, mt, vt) = (upload(&params, &[n]), upload(&grads, &[n]), upload(&m, &[n]), upload(&v, &[n]));
    let (slow_t, fast_t) = (upload(&ema_slow, &[n]), upload(&ema_fast, &[n]));
    let (partials, stats) = (partials_for(n), empty(&[GRAD_STATS_LEN]));
    run(|rec| {
        optimizer::grad_norm(rec, &gt, &partials, &stats, max_norm, 1.0)?;
        optimizer::adamw_update(rec, &gt, &stats, &pt, &mt, &vt, &hp, step, decay_end)?;
        optimizer::ema_update(rec, &pt, &stats, &[(&slow_t, 0.999), (&fast_t, 0.9)])
    });

    let want_partials = cpu::optimizer::grad_norm_partial(&grads);
    let want_stats = cpu::optimizer::grad_norm_finish(&want_partials, max_norm as f64, 1.0);
    Tolerance::FORWARD.assert("grad_norm_partial", &read(&partials), &want_partials);
    Tolerance::FORWARD.assert("grad_norm_finish", &read(&stats), &want_stats);
    let (want_p, want_m, want_v) =
        cpu::optimizer::adamw_update(&params, &grads, &m, &v, &want_stats, &hp, step, decay_end);
    Tolerance::FORWARD.assert("adamw_update params", &read_n(&pt), &want_p);
    Tolerance::FORWARD.assert("adamw_update m", &read_n(&mt), &want_m);
    Tolerance::FORWARD.assert("adamw_update v", &read_n(&vt), &want_v);
    let want_emas = cpu::optimizer::ema_update(&want_p, &[(&ema_slow, 0.999), (&ema_fast, 0.9)]);
    Tolerance::FORWARD.assert("ema_update decay 0.999", &read_n(&slow_t), &want_emas[0]);
    Tolerance::FORWARD.assert("ema_update decay 0.9", &read_n(&fast_t), &want_emas[1]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]
    #[test]
    fn optimizer_matches_cpu(
        // Small odd sizes (partial chunks, a single workgroup) and arenas of many chunks.
        n in prop_oneof![1usize..5_000, 5_000usize..300_000],
        seed in any::<u64>(),
    ) {
        check_step(n, seed);
    }
}

#[test]
fn optimizer_empty_arena() {
    check_step(0, 3);
}

#[test]
fn adamw_five_step_trajectory_matches_cpu() {
    let n = 50_003;
    let decay_end = 30_011;
    let max_norm = 20.0f32;
    // Gradient scales chosen so that some steps clip (norm ~ scale * 129 > 20) and some do not.
    let scales = [0.01, 1.0, 0.05, 2.0, 0.5];
    let mut r = rng(11);
    let mut params = rounded(&random(&mut r, n, 1.0));
    let grads: Vec<Vec<f64>> = scales.iter().map(|&s| rounded(&random(&mut r, n, s))).collect();
    let ema0 = params.clone();
    let (pt, mt, vt, ema_t) =
        (upload(&params, &[n]), ctx().zeros(&[n], "m").unwrap(), ctx().zeros(&[n], "v").unwrap(), upload(&ema0, &[n]));
    let grad_ts: Vec<Tensor> = grads.iter().map(|g| upload(g, &[n])).collect();
    let (partials, stats) = (partials_for(n), empty(&[GRAD_STATS_LEN]));
    // A warmup-like schedule: the learning rate changes every step.
    let hp_at = |step: u32| AdamW { lr: 1e-2 * step as f64 / 5.0, weight_decay: 0.1, ..AdamW::default() };

    // All five steps in ONE submission: the clip factor never visits the CPU.
    run(|rec| {
        for (k, g) in grad_ts.iter().enumerate() {
            let step = k as u32 + 1;
            optimizer::grad_norm(rec, g, &partials, &stats, max_norm, 1.0)?;
            optimizer::adamw_update(rec, g, &stats, &pt, &mt, &vt, &hp_at(step), step, decay_end)?;
            optimizer::ema_update(rec, &pt, &stats, &[(&ema_t, 0.99)])?;
        }
        Ok(())
    });

    let (mut m, mut v, mut ema) = (vec![0.0; n], vec![0.0; n], ema0);
    let mut clips = Vec::new();
    let mut stats_cpu = Vec::new();
    for (k, g) in grads.iter().enumerate() {
        let step = k as u32 + 1;
        stats_cpu = cpu::optimizer::grad_norm(g, max_norm as f64);
        clips.push(stats_cpu[1]);
        (params, m, v) = cpu::optimizer::adamw_update(&params, g, &m, &v, &stats_cpu, &hp_at(step), step, decay_end);
        ema = cpu::optimizer::ema_update(&params, &[(&ema, 0.99)]).remove(0);
    }
    assert!(clips.iter().any(|&c| c < 0.5) && clips.contains(&1.0), "clip factors {clips:?}");
    Tolerance::FORWARD.assert("last step's grad_norm", &read(&stats), &stats_cpu);
    Tolerance::FORWARD.assert("params after 5 steps", &read(&pt), &params);
    Tolerance::FORWARD.assert("m after 5 steps", &read(&mt), &m);
    Tolerance::FORWARD.assert("v after 5 steps", &read(&vt), &v);
    Tolerance::FORWARD.assert("ema after 5 steps", &read(&ema_t), &ema);
}

#[test]
fn grad_norm_clips_like_clip_grad_norm() {
    // 40_000 elements of 0.5: the sum of squares is exact in f32 and the norm is 100.
    let n = 40_000;
    let grads = vec![0.5; n];
    let gt = upload(&grads, &[n]);
    let partials = partials_for(n);
    for (max_norm, want_clip) in [(1.0f32, 1.0 / (100.0 + 1e-6)), (1000.0, 1.0), (0.0, 1.0), (-1.0, 1.0)] {
        let stats = empty(&[GRAD_STATS_LEN]);
        run(|rec| optimizer::grad_norm(rec, &gt, &partials, &stats, max_norm, 1.0));
        let got = read(&stats);
        let want = [100.0, want_clip, 1.0, 0.0];
        Tolerance::FORWARD.assert(&format!("grad_norm with max_norm {max_norm}"), &got, &want);
        Tolerance::FORWARD.assert("twin", &got, &cpu::optimizer::grad_norm(&grads, max_norm as f64));
    }
}

#[test]
fn grad_norm_is_deterministic() {
    let n = 300_001;
    let gt = upload(&random(&mut rng(5), n, 1.0), &[n]);
    let runs: Vec<(Vec<u32>, Vec<u32>)> = (0..2)
        .map(|_| {
            let (partials, stats) = (partials_for(n), empty(&[GRAD_STATS_LEN]));
            run(|rec| optimizer::grad_norm(rec, &gt, &partials, &stats, 1.0, 1.0));
            let bits = |t: &Tensor| read(t).iter().map(|x| x.to_bits()).collect();
            (bits(&partials), bits(&stats))
        })
        .collect();
    assert_eq!(runs[0], runs[1], "two runs of grad_norm differ in their bits");
}

#[test]
fn an_overflowed_gradient_skips_the_whole_step() {
    // A loss-scaled gradient (scale 1024) with one inf: the norm's sum is inf, `finite` is
    // 0, and AdamW and the EMA leave parameters, moments and EMA bit-identical. Without the
    // inf the same scaled gradient gives the unscaled norm and folds 1 / 1024 into the factor.
    let n = 5_000;
    let mut r = rng(17);
    let params = rounded(&random(&mut r, n, 1.0));
    let mut grads: Vec<f64> = rounded(&random(&mut r, n, 1.0)).iter().map(|g| g * 1024.0).collect();
    let hp = AdamW { lr: 1e-2, weight_decay: 0.1, ..AdamW::default() };
    let (pt, mt, vt, ema) =
        (upload(&params, &[n]), upload(&params, &[n]), upload(&params, &[n]), upload(&params, &[n]));
    let (partials, stats) = (partials_for(n), empty(&[GRAD_STATS_LEN]));
    let scaled = upload(&grads, &[n]);
    run(|rec| optimizer::grad_norm(rec, &scaled, &partials, &stats, 0.0, 1.0 / 1024.0));
    let unscaled: Vec<f64> = grads.iter().map(|g| g / 1024.0).collect();
    let want = cpu::optimizer::grad_norm_finish(&cpu::optimizer::grad_norm_partial(&grads), 0.0, 1.0 / 1024.0);
    Tolerance::FORWARD.assert("scaled grad_norm", &read(&stats), &want);
    Tolerance::FORWARD.assert(
        "its norm is the unscaled one",
        &read(&stats)[..1],
        &cpu::optimizer::grad_norm(&unscaled, 0.0)[..1],
    );
    grads[1234] = f64::INFINITY;
    let overflowed = upload(&grads, &[n]);
    run(|rec| {
        optimizer::grad_norm(rec, &overflowed, &partials, &stats, 1.0, 1.0 / 1024.0)?;
        optimizer::adamw_update(rec, &overflowed, &stats, &pt, &mt, &vt, &hp, 3, n / 2)?;
        optimizer::ema_update(rec, &pt, &stats, &[(&ema, 0.5)])
    });
    assert_eq!(read(&stats)[2], 0.0, "an inf gradient clears `finite`");
    let untouched = to_f32(&params);
    for (name, t) in [("params", &pt), ("m", &mt), ("v", &vt), ("ema", &ema)] {
        assert_eq!(read(t), untouched, "{name} changed on a skipped step");
    }
}

#[test]
fn adamw_decays_only_before_decay_end() {
    // Zero gradients and moments leave only the decoupled weight decay: p *= 1 - lr wd
    // before decay_end, and bit-identical parameters after it.
    let n = 2_500;
    let params = rounded(&random(&mut rng(9), n, 1.0));
    let hp = AdamW { lr: 1e-2, weight_decay: 0.1, ..AdamW::default() };
    let stats = upload(&[0.0, 1.0, 1.0, 0.0], &[GRAD_STATS_LEN]);
    let grads = ctx().zeros(&[n], "grads").unwrap();
    for decay_end in [0, 1_000, n] {
        let (pt, mt, vt) = (upload(&params, &[n]), ctx().zeros(&[n], "m").unwrap(), ctx().zeros(&[n], "v").unwrap());
        run(|rec| optimizer::adamw_update(rec, &grads, &stats, &pt, &mt, &vt, &hp, 1, decay_end));
        let got = read(&pt);
        let decayed: Vec<f64> = params[..decay_end].iter().map(|p| p * (1.0 - 1e-3)).collect();
        Tolerance::FORWARD.assert("decayed region", &got[..decay_end], &decayed);
        let untouched: Vec<f32> = params[decay_end..].iter().map(|&p| p as f32).collect();
        assert_eq!(&got[decay_end..], &untouched[..], "non-decayed region changed (decay_end {decay_end})");
        assert!(read(&mt).iter().chain(&read(&vt)).all(|&x| x == 0.0), "moments moved without gradients");
    }
}

#[test]
fn ema_update_tracks_two_decays() {
    let n = 3_001;
    let mut r = rng(13);
    let snapshots: Vec<Vec<f64>> = (0..3).map(|_| rounded(&random(&mut r, n, 1.0))).collect();
    let start = rounded(&random(&mut r, n, 1.0));
    let (slow_t, fast_t) = (upload(&start, &[n]), upload(&start, &[n]));
    let snapshot_ts: Vec<Tensor> = snapshots.iter().map(|p| upload(p, &[n])).collect();
    let applied = upload(&[0.0, 1.0, 1.0, 0.0], &[GRAD_STATS_LEN]);
    run(|rec| {
        for p in &snapshot_ts {
            optimizer::ema_update(rec, p, &applied, &[(&slow_t, 0.999), (&fast_t, 0.5)])?;
        }
        Ok(())
    });
    let (mut slow, mut fast) = (start.clone(), start);
    for p in &snapshots {
        let mut next = cpu::optimizer::ema_update(p, &[(&slow, 0.999), (&fast, 0.5)]);
        fast = next.pop().unwrap();
        slow = next.pop().unwrap();
    }
    Tolerance::FORWARD.assert("ema decay 0.999", &read(&slow_t), &slow);
    Tolerance::FORWARD.assert("ema decay 0.5", &read(&fast_t), &fast);
}

#[test]
fn optimizer_rejects_bad_input() {
    let c = ctx();
    let n = 100;
    let (p, g, v) = (c.zeros(&[n], "p").unwrap(), c.zeros(&[n], "g").unwrap(), c.zeros(&[n], "v").unwrap());
    let m_short = c.zeros(&[n - 1], "m").unwrap();
    let m = c.zeros(&[n], "m").unwrap();
    let stats = c.zeros(&[GRAD_STATS_LEN], "stats").unwrap();
    let hp = AdamW::default();
    let mut rec = c.recorder("bad");

    let err = optimizer::adamw_update(&mut rec, &g, &stats, &p, &m_short, &v, &hp, 1, 0).unwrap_err().to_string();
    assert!(err.contains("adamw_update") && err.contains("[99]") && err.contains("[100]"), "{err}");
    let err = optimizer::adamw_update(&mut rec, &g, &stats, &p, &m, &v, &hp, 1, n + 1).unwrap_err().to_string();
    assert!(err.contains("adamw_update") && err.contains("decay_end 101"), "{err}");
    let err = optimizer::adamw_update(&mut rec, &g, &stats, &p, &m, &v, &hp, 0, 0).unwrap_err().to_string();
    assert!(err.contains("adamw_update") && err.contains("step"), "{err}");
    let wrong_stats = c.zeros(&[3], "stats").unwrap();
    let err = optimizer::adamw_update(&mut rec, &g, &wrong_stats, &p, &m, &v, &hp, 1, 0).unwrap_err().to_string();
    assert!(err.contains("adamw_update") && err.contains("stats is [3]"), "{err}");

    let wrong_partials = c.zeros(&[7], "partials").unwrap();
    let err = optimizer::grad_norm(&mut rec, &g, &wrong_partials, &stats, 1.0, 1.0).unwrap_err().to_string();
    assert!(err.contains("grad_norm_partial") && err.contains("[7]") && err.contains("[1]"), "{err}");

    let err = optimizer::ema_update(&mut rec, &p, &stats, &[(&m, 0.9), (&m_short, 0.9)]).unwrap_err().to_string();
    assert!(err.contains("ema_update") && err.contains("[99]") && err.contains("[100]"), "{err}");
    let err = optimizer::ema_update(&mut rec, &p, &stats, &[(&m, 1.5)]).unwrap_err().to_string();
    assert!(err.contains("ema_update") && err.contains("1.5"), "{err}");
}

#[test]
fn grouped_adamw_takes_each_groups_step_and_skips_groups_that_take_none() {
    let chunk = optimizer::ADAMW_GROUP_CHUNK;
    let n = 5 * chunk + 37;
    let mut r = rng(41);
    let params = rounded(&random(&mut r, n, 1.0));
    let grads = rounded(&random(&mut r, n, 1.0));
    let m = rounded(&random(&mut r, n, 0.1));
    let v = rounded(&random_nonneg(&mut r, n, 0.01));
    let decay_end = 2 * chunk + 50;
    let hp = AdamW { lr: 2e-3, weight_decay: 0.05, ..AdamW::default() };
    // Chunk groups, and each group's step: group 2 takes none (a skipped block).
    let chunk_groups = [0u32, 1, 1, 2, 0, 1];
    let group_steps = [Some(7u32), Some(1), None];
    let table: Vec<f32> = group_steps.iter().flat_map(|&s| hp.group_step(s)).collect();

    let (pt, gt, mt, vt) = (upload(&params, &[n]), upload(&grads, &[n]), upload(&m, &[n]), upload(&v, &[n]));
    let groups = ctx().upload_u32(&chunk_groups, &[chunk_groups.len()], "groups").unwrap();
    let steps = ctx().upload(&table, &[table.len()], "steps").unwrap();
    let (partials, stats) = (partials_for(n), empty(&[GRAD_STATS_LEN]));
    run(|rec| {
        optimizer::grad_norm(rec, &gt, &partials, &stats, 0.0, 1.0)?;
        optimizer::adamw_update_grouped(rec, &gt, &stats, &groups, &steps, &pt, &mt, &vt, &hp, decay_end)
    });

    let stats = cpu::optimizer::grad_norm(&grads, 0.0);
    let (mut want_p, mut want_m, mut want_v) = (params.clone(), m.clone(), v.clone());
    for (c, &group) in chunk_groups.iter().enumerate() {
        let Some(step) = group_steps[group as usize] else { continue };
        let range = c * chunk..((c + 1) * chunk).min(n);
        let local_decay_end = decay_end.clamp(range.start, range.end) - range.start;
        let (p, mm, vv) = cpu::optimizer::adamw_update(
            &params[range.clone()],
            &grads[range.clone()],
            &m[range.clone()],
            &v[range.clone()],
            &stats,
            &hp,
            step,
            local_decay_end,
        );
        want_p[range.clone()].copy_from_slice(&p);
        want_m[range.clone()].copy_from_slice(&mm);
        want_v[range].copy_from_slice(&vv);
    }
    Tolerance::FORWARD.assert("grouped adamw params", &read_n(&pt), &want_p);
    Tolerance::FORWARD.assert("grouped adamw m", &read_n(&mt), &want_m);
    Tolerance::FORWARD.assert("grouped adamw v", &read_n(&vt), &want_v);
    // The skipped group is untouched, bit for bit.
    let skipped = 3 * chunk..4 * chunk;
    assert_eq!(read_n(&pt)[skipped.clone()], to_f32(&params[skipped.clone()])[..]);
    assert_eq!(read_n(&mt)[skipped.clone()], to_f32(&m[skipped])[..]);
}
