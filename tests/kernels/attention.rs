//! Fused attention: GPU vs the f64 twins, the twins vs finite differences, masks, bad input,
//! and that the backward allocates nothing of size N x N.

use autoprog::cpu::attention::{self as twin, AttentionMasks, AttentionShape};
use autoprog::gpu::Element;
use autoprog::kernels::attention::{self, AttentionOptions, AttentionVariant};
use autoprog::tolerance::Tolerance;
use autoprog::{ContextOptions, GpuContext, Tensor};
use proptest::prelude::*;
use rand::Rng;

use crate::common::*;

/// Both mappings of the kernels, whatever the adapter would choose: each is checked here.
const VARIANTS: [AttentionVariant; 2] = [AttentionVariant::Rows, AttentionVariant::Tiled];

/// Twin against twin in f64: only summation order differs.
const F64_EXACT: Tolerance = Tolerance { rel: 1e-9, abs: 1e-12 };

struct Case {
    s: AttentionShape,
    key_mask: Option<Vec<u32>>,
    head_mask: Option<Vec<u32>>,
}

/// GPU results of one case.
struct Gpu {
    out: Vec<f32>,
    lse: Vec<f32>,
    d: Vec<f32>,
    dqkv: Vec<f32>,
    /// The inputs it ran on.
    qkv: Vec<f64>,
}

fn qkv_len(s: &AttentionShape) -> usize {
    s.b * s.n * 3 * s.nh * s.hs
}

fn scale_of(s: &AttentionShape) -> f64 {
    (s.hs as f64).powf(-0.5) as f32 as f64
}

fn upload_u32(v: &[u32], shape: &[usize]) -> Tensor {
    ctx().upload_u32(v, shape, "test.mask").expect("upload")
}

/// Forward, preprocess (into its own d, for checking) and the full backward on the GPU.
fn run_gpu(variant: AttentionVariant, case: &Case, qkv: &[f64], dout: &[f64]) -> Gpu {
    run_gpu_as(Element::F32, variant, case, qkv, dout)
}

/// [`run_gpu`] with qkv, out, dout and dqkv stored as `element`.
fn run_gpu_as(element: Element, variant: AttentionVariant, case: &Case, qkv: &[f64], dout: &[f64]) -> Gpu {
    let s = case.s;
    let c = s.nh * s.hs;
    let qkv_t = upload_as(element, qkv, &[s.b, s.n, 3 * c]); // [B, N, 3C]
    let dout_t = upload_as(element, dout, &[s.b, s.n, c]); // [B, N, C]
    let key_t = case.key_mask.as_ref().map(|m| upload_u32(m, &[s.b, s.n])); // [B, N]
    let head_t = case.head_mask.as_ref().map(|m| upload_u32(m, &[s.nh])); // [NH]
    let out = empty_as(element, &[s.b, s.n, c]); // [B, N, C]
    let lse = empty(&[s.b, s.nh, s.n]); // [B, NH, N]
    let d = empty(&[s.b, s.nh, s.n]); // [B, NH, N]
    let dqkv = empty_as(element, &[s.b, s.n, 3 * c]); // [B, N, 3C]
    let opts = AttentionOptions {
        scale: scale_of(&s) as f32,
        key_mask: key_t.as_ref(),
        head_mask: head_t.as_ref(),
        variant: Some(variant),
    };
    run(|rec| {
        attention::attention_forward(rec, &qkv_t, &opts, &out, &lse)?;
        attention::attention_backward_preprocess(rec, &out, &dout_t, &d)?;
        attention::attention_backward(rec, &qkv_t, &out, &dout_t, &lse, &opts, &dqkv)
    });
    Gpu { out: read(&out), lse: read(&lse), d: read(&d), dqkv: read(&dqkv), qkv: qkv.to_vec() }
}

fn masks(case: &Case) -> AttentionMasks<'_> {
    AttentionMasks { key: case.key_mask.as_deref(), head: case.head_mask.as_deref() }
}

/// Random inputs, GPU vs twins for every entry point; returns the GPU results.
/// Both variants against the twins; their results, in [`VARIANTS`] order.
fn check_case(case: &Case, seed: u64) -> Vec<Gpu> {
    let s = case.s;
    let mut r = rng(seed);
    let qkv = rounded(&random(&mut r, qkv_len(&s), 2.0));
    let dout = rounded(&random(&mut r, s.b * s.n * s.nh * s.hs, 1.0));
    let scale = scale_of(&s);
    let (out, lse) = twin::attention_forward(&qkv, s, masks(case), scale);
    let d = twin::attention_backward_preprocess(&out, &dout, s);
    let dqkv = twin::attention_backward(&qkv, &dout, s, masks(case), scale);
    let check = |variant: AttentionVariant| {
        let gpu = run_gpu(variant, case, &qkv, &dout);
        let what = |name: &str| format!("{name} ({variant:?}) {s:?} masks {:?} {:?}", case.key_mask, case.head_mask);
        Tolerance::FORWARD.assert(&what("attention_forward out"), &gpu.out, &out);
        Tolerance::FORWARD.assert(&what("attention_forward lse"), &gpu.lse, &lse);
        Tolerance::BACKWARD.assert(&what("attention_backward_preprocess"), &gpu.d, &d);
        Tolerance::BACKWARD.assert(&what("attention_backward dqkv"), &gpu.dqkv, &dqkv);
        gpu
    };
    VARIANTS.map(check).into()
}

/// f16 storage: each output against the twin run on what the GPU stored before it (as the
/// GPU's backward reads the stored out, lse and d), so every comparison covers one rounding.
fn check_case_f16(variant: AttentionVariant, case: &Case, seed: u64) {
    let s = case.s;
    let mut r = rng(seed);
    let qkv = stored(Element::F16, &random(&mut r, qkv_len(&s), 2.0));
    let dout = stored(Element::F16, &random(&mut r, s.b * s.n * s.nh * s.hs, 1.0));
    let gpu = run_gpu_as(Element::F16, variant, case, &qkv, &dout);
    let scale = scale_of(&s);
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let (out, lse) = twin::attention_forward(&qkv, s, masks(case), scale);
    let d = twin::attention_backward_preprocess(&wide(&gpu.out), &dout, s);
    let (gpu_lse, gpu_d) = (wide(&gpu.lse), wide(&gpu.d));
    let dkdv = twin::attention_backward_dkdv(&qkv, &dout, &gpu_lse, &gpu_d, s, masks(case), scale);
    let dq = twin::attention_backward_dq(&qkv, &dout, &gpu_lse, &gpu_d, s, masks(case), scale);
    let dqkv: Vec<f64> = dkdv.iter().zip(&dq).map(|(a, b)| a + b).collect();
    let what = |name: &str| format!("{name} f16 ({variant:?}) {s:?} masks {:?} {:?}", case.key_mask, case.head_mask);
    Tolerance::FORWARD.after_rounding_to(Element::F16).assert(&what("attention_forward out"), &gpu.out, &out);
    Tolerance::FORWARD.assert(&what("attention_forward lse"), &gpu.lse, &lse);
    Tolerance::BACKWARD.assert(&what("attention_backward_preprocess"), &gpu.d, &d);
    Tolerance::BACKWARD.after_rounding_to(Element::F16).assert(&what("attention_backward dqkv"), &gpu.dqkv, &dqkv);
}

#[test]
fn attention_f16_matches_cpu() {
    require_f16();
    let mut r = rng(41);
    for (b, n, nh, hs, masked, seed) in [(1, 65, 2, 64, false, 1), (2, 17, 3, 3, true, 2), (1, 9, 1, 32, true, 3)] {
        let case = Case {
            s: AttentionShape { b, n, nh, hs },
            key_mask: masked.then(|| random_mask(&mut r, b * n, 0.7)),
            head_mask: masked.then(|| random_mask(&mut r, nh, 0.7)),
        };
        for variant in VARIANTS {
            check_case_f16(variant, &case, seed);
        }
    }
}

fn random_mask(r: &mut impl Rng, len: usize, keep: f64) -> Vec<u32> {
    (0..len).map(|_| r.random_bool(keep) as u32).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn attention_matches_cpu(
        b in 1usize..3,
        n in prop_oneof![Just(1usize), Just(5), Just(17), Just(65), 1usize..70],
        nh in 1usize..4,
        hs in prop_oneof![Just(3usize), Just(8), Just(16), Just(32), Just(64)],
        key_masked in any::<bool>(),
        head_masked in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut r = rng(seed ^ 0x5eed);
        let case = Case {
            s: AttentionShape { b, n, nh, hs },
            key_mask: key_masked.then(|| random_mask(&mut r, b * n, 0.7)),
            head_mask: head_masked.then(|| random_mask(&mut r, nh, 0.7)),
        };
        check_case(&case, seed);
    }
}

#[test]
fn attention_vit_sizes_match_cpu() {
    for (n, seed) in [(65, 1), (197, 2), (257, 3)] {
        check_case(&Case { s: AttentionShape { b: 1, n, nh: 2, hs: 64 }, key_mask: None, head_mask: None }, seed);
    }
}

#[test]
fn attention_largest_head_size_matches_cpu() {
    let mut r = rng(11);
    let s = AttentionShape { b: 2, n: 9, nh: 1, hs: 128 };
    check_case(&Case { s, key_mask: Some(random_mask(&mut r, 18, 0.6)), head_mask: None }, 12);
}

#[test]
fn attention_masked_keys_do_not_influence_anything() {
    let s = AttentionShape { b: 2, n: 17, nh: 2, hs: 8 };
    let c = s.nh * s.hs;
    let mut r = rng(21);
    let key_mask = random_mask(&mut r, s.b * s.n, 0.5);
    let case = Case { s, key_mask: Some(key_mask.clone()), head_mask: None };
    let qkv = rounded(&random(&mut r, qkv_len(&s), 2.0));
    let dout = rounded(&random(&mut r, s.b * s.n * c, 1.0));
    // Garbage (large) k and v for every masked key: nothing may change.
    let mut garbage = qkv.clone();
    for (token, _) in key_mask.iter().enumerate().filter(|(_, &m)| m == 0) {
        for x in &mut garbage[token * 3 * c + c..(token + 1) * 3 * c] {
            *x = 1e3 * (*x + 0.5);
        }
    }
    for variant in VARIANTS {
        let clean = run_gpu(variant, &case, &qkv, &dout);
        let dirty = run_gpu(variant, &case, &garbage, &dout);
        assert_eq!(clean.out, dirty.out, "{variant:?}: out depends on masked keys");
        assert_eq!(clean.lse, dirty.lse, "{variant:?}: lse depends on masked keys");
        assert_eq!(clean.dqkv, dirty.dqkv, "{variant:?}: dqkv depends on masked keys");
        for (token, _) in key_mask.iter().enumerate().filter(|(_, &m)| m == 0) {
            let dkv = &clean.dqkv[token * 3 * c + c..(token + 1) * 3 * c];
            assert!(dkv.iter().all(|&g| g == 0.0), "{variant:?}: masked key {token} has a nonzero dk/dv: {dkv:?}");
        }
    }
    check_case(&case, 22);
}

#[test]
fn attention_masked_head_gives_zero_output_and_gradients() {
    let s = AttentionShape { b: 2, n: 5, nh: 3, hs: 16 };
    let (c, hs) = (s.nh * s.hs, s.hs);
    let case = Case { s, key_mask: None, head_mask: Some(vec![1, 0, 1]) };
    for (gpu, variant) in check_case(&case, 31).iter().zip(VARIANTS) {
        for token in 0..s.b * s.n {
            assert!(gpu.out[token * c + hs..][..hs].iter().all(|&x| x == 0.0), "{variant:?}: out of masked head");
            for part in 0..3 {
                let g = &gpu.dqkv[(token * 3 + part) * c + hs..][..hs];
                assert!(g.iter().all(|&x| x == 0.0), "{variant:?}: dqkv part {part} of masked head: {g:?}");
            }
            // The heads around it are not affected.
            assert!(gpu.out[token * c..][..hs].iter().any(|&x| x != 0.0));
        }
    }

    // An f32 head mask (1.0 / 0.0) means the same: a zero bit pattern masks the head.
    let mut r = rng(32);
    let qkv = rounded(&random(&mut r, qkv_len(&s), 2.0));
    let qkv_t = upload(&qkv, &[s.b, s.n, 3 * c]);
    let (out_u, out_f) = (empty(&[s.b, s.n, c]), empty(&[s.b, s.n, c]));
    let (lse_u, lse_f) = (empty(&[s.b, s.nh, s.n]), empty(&[s.b, s.nh, s.n]));
    let head_u = upload_u32(&[1, 0, 1], &[3]);
    let head_f = upload(&[1.0, 0.0, 1.0], &[3]);
    let scale = scale_of(&s) as f32;
    run(|rec| {
        attention::attention_forward(
            rec,
            &qkv_t,
            &AttentionOptions::new(scale).with_head_mask(&head_u),
            &out_u,
            &lse_u,
        )?;
        attention::attention_forward(rec, &qkv_t, &AttentionOptions::new(scale).with_head_mask(&head_f), &out_f, &lse_f)
    });
    assert_eq!(read(&out_u), read(&out_f));
}

#[test]
fn attention_all_keys_masked_gives_zeros_without_nan() {
    let s = AttentionShape { b: 2, n: 7, nh: 2, hs: 8 };
    let c = s.nh * s.hs;
    // Image 0 has no unmasked key at all; image 1 has one.
    let mut key_mask = vec![0; 14];
    key_mask[10] = 1;
    for gpu in check_case(&Case { s, key_mask: Some(key_mask), head_mask: None }, 41) {
        for v in [&gpu.out, &gpu.lse, &gpu.d, &gpu.dqkv] {
            assert!(v.iter().all(|x| x.is_finite()), "non-finite value");
        }
        assert!(gpu.out[..s.n * c].iter().all(|&x| x == 0.0), "image 0 output");
        assert!(gpu.lse[..s.nh * s.n].iter().all(|&x| x == 0.0), "image 0 lse");
        assert!(gpu.dqkv[..s.n * 3 * c].iter().all(|&x| x == 0.0), "image 0 gradients");
        // With one key left every query of image 1 copies that key's v (token 10, part 2).
        let v = &gpu.qkv[(10 * 3 + 2) * c..][..c];
        for i in s.n..2 * s.n {
            Tolerance::FORWARD.assert("single-key row", &gpu.out[i * c..][..c], v);
        }
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    let s = AttentionShape { b: 2, n: 4, nh: 2, hs: 3 };
    let mut r = rng(51);
    let qkv = random(&mut r, qkv_len(&s), 1.5);
    let w = random(&mut r, s.b * s.n * s.nh * s.hs, 1.0);
    let key_mask = vec![1, 0, 1, 1, 1, 1, 1, 0];
    let m = AttentionMasks { key: Some(&key_mask), head: Some(&[1, 1]) };
    let scale = 0.7;
    let analytic = twin::attention_backward(&qkv, &w, s, m, scale);
    let numeric = numeric_grad(|x| dot(&w, &twin::attention_forward(x, s, m, scale).0), &qkv, 1e-6);
    Tolerance::FINITE_DIFF.assert("attention_backward vs finite differences", &analytic, &numeric);

    // The recomputing twins of the GPU entry points add up to the plain reference.
    let (out, lse) = twin::attention_forward(&qkv, s, m, scale);
    let d = twin::attention_backward_preprocess(&out, &w, s);
    let dkdv = twin::attention_backward_dkdv(&qkv, &w, &lse, &d, s, m, scale);
    let dq = twin::attention_backward_dq(&qkv, &w, &lse, &d, s, m, scale);
    let split: Vec<f64> = dkdv.iter().zip(&dq).map(|(a, b)| a + b).collect();
    F64_EXACT.assert("attention_backward_dkdv + attention_backward_dq vs attention_backward", &split, &analytic);
}

#[test]
fn attention_lse_is_log_sum_exp() {
    // The twin's max-subtracted lse against a direct evaluation of log Σ_j exp(q_i·k_j).
    let s = AttentionShape { b: 1, n: 3, nh: 1, hs: 2 };
    let qkv = vec![0.1, 0.2, 1.0, -1.0, 0.5, 0.5, 0.3, -0.4, 2.0, 0.0, -0.5, 0.25, -0.2, 0.9, 0.0, 1.0, 1.5, -1.5];
    let (_, lse) = twin::attention_forward(&qkv, s, AttentionMasks::default(), 1.0);
    for i in 0..3 {
        let q = &qkv[i * 6..][..2];
        let sum: f64 = (0..3).map(|j| (q[0] * qkv[j * 6 + 2] + q[1] * qkv[j * 6 + 3]).exp()).sum();
        assert!((lse[i] - sum.ln()).abs() < 1e-12);
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    let c = ctx();
    let mut rec = c.recorder("bad");
    let lse = c.zeros(&[2, 4, 5], "lse").unwrap();
    let out = c.zeros(&[2, 5, 16], "out").unwrap();
    let err = |e: autoprog::Error| e.to_string();

    // 3C = 50 is not 3·NH·HS with NH = 4.
    let qkv = c.zeros(&[2, 5, 50], "qkv").unwrap();
    let e = err(attention::attention_forward(&mut rec, &qkv, &AttentionOptions::new(1.0), &out, &lse).unwrap_err());
    assert!(e.contains("attention_forward") && e.contains("[2, 5, 50]") && e.contains("[2, 4, 5]"), "{e}");

    // Split layout with the wrong head count.
    let qkv5 = c.zeros(&[2, 5, 3, 2, 8], "qkv").unwrap();
    let e = err(attention::attention_forward(&mut rec, &qkv5, &AttentionOptions::new(1.0), &out, &lse).unwrap_err());
    assert!(e.contains("attention_forward") && e.contains("[2, 5, 3, 2, 8]"), "{e}");

    let qkv = c.zeros(&[2, 5, 48], "qkv").unwrap();
    let bad_out = c.zeros(&[2, 5, 12], "out").unwrap();
    let e = err(attention::attention_forward(&mut rec, &qkv, &AttentionOptions::new(1.0), &bad_out, &lse).unwrap_err());
    assert!(e.contains("attention_forward") && e.contains("out") && e.contains("[2, 5, 12]"), "{e}");

    let key = c.upload_u32(&[1; 8], &[2, 4], "key").unwrap();
    let opts = AttentionOptions::new(1.0).with_key_mask(&key);
    let e = err(attention::attention_forward(&mut rec, &qkv, &opts, &out, &lse).unwrap_err());
    assert!(
        e.contains("attention_forward") && e.contains("key_mask") && e.contains("[2, 4]") && e.contains("[2, 5]"),
        "{e}"
    );

    let head = c.upload_u32(&[1; 3], &[3], "head").unwrap();
    let opts = AttentionOptions::new(1.0).with_head_mask(&head);
    let dqkv = c.zeros(&[2, 5, 48], "dqkv").unwrap();
    let e = err(attention::attention_backward(&mut rec, &qkv, &out, &out, &lse, &opts, &dqkv).unwrap_err());
    assert!(
        e.contains("attention_backward") && e.contains("head_mask") && e.contains("[3]") && e.contains("[4]"),
        "{e}"
    );

    // Head size beyond the private-array limit is an error, not a panic.
    let wide = c.zeros(&[1, 2, 3 * 129], "qkv").unwrap();
    let (lse1, out1) = (c.zeros(&[1, 1, 2], "lse").unwrap(), c.zeros(&[1, 2, 129], "out").unwrap());
    let e = err(attention::attention_forward(&mut rec, &wide, &AttentionOptions::new(1.0), &out1, &lse1).unwrap_err());
    assert!(e.contains("attention_forward") && e.contains("129") && e.contains("128"), "{e}");
}

#[test]
fn attention_backward_allocates_nothing_n_by_n() {
    // A context of its own, so other tests' buffers do not move its pool statistics.
    let opts = ContextOptions { backend: None, adapter: std::env::var("AUTOPROG_ADAPTER").ok(), ..Default::default() };
    let c = GpuContext::new_blocking(&opts).expect("context");
    let (b, n, nh, hs) = (1, 300, 2, 8);
    let qkv = c.zeros(&[b, n, 3 * nh * hs], "qkv").unwrap();
    let out = c.zeros(&[b, n, nh * hs], "out").unwrap();
    let lse = c.zeros(&[b, nh, n], "lse").unwrap();
    let dqkv = c.zeros(&[b, n, 3 * nh * hs], "dqkv").unwrap();
    assert_eq!(attention::backward_scratch_shape(&lse), vec![b, nh, n]);
    c.trim_pool();
    let mut rec = c.recorder("attention.backward");
    attention::attention_backward(&mut rec, &qkv, &out, &out, &lse, &AttentionOptions::new(0.5), &dqkv).unwrap();
    // The scratch is held by the recorder until submission, then returns to the pool.
    assert_eq!(c.pool_stats(), (0, 0), "scratch returned to the pool before submission");
    c.submit(rec).unwrap();
    let (count, bytes) = c.pool_stats();
    assert_eq!(count, 1, "attention_backward allocated {count} tensors; only d [B, NH, N] is expected");
    assert!(bytes <= 2 * (b * nh * n * 4) as u64 && bytes < (n * n * 4) as u64, "scratch of {bytes} bytes");
}

#[test]
fn attention_too_long_for_a_cpu_adapter_is_an_error_not_a_wrong_answer() {
    // CPU adapters end a shader's loops after 65535 iterations per invocation.
    let c = ctx();
    let (n, hs) = (400, 64);
    let qkv = c.zeros(&[1, n, 3 * hs], "qkv").unwrap();
    let out = c.empty(&[1, n, hs], "out").unwrap();
    let lse = c.empty(&[1, 1, n], "lse").unwrap();
    let mut rec = c.recorder("long");
    let result = autoprog::kernels::attention::attention_forward(
        &mut rec,
        &qkv,
        &autoprog::kernels::attention::AttentionOptions::new(0.1),
        &out,
        &lse,
    );
    if c.summary.is_cpu() {
        let err = result.unwrap_err().to_string();
        assert!(err.contains("N = 400") && err.contains("65535"), "{err}");
    } else {
        result.expect("GPUs have no loop cap");
    }
}
