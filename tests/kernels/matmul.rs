use autoprog::cpu;
use autoprog::gpu::Element;
use autoprog::kernels::matmul::{self, Config, Epilogue, Layout};
use autoprog::tolerance::Tolerance;
use proptest::prelude::*;

use crate::common::*;

/// Variants the tuner chooses from on CPU adapters and GPUs, plus odd tile shapes.
fn configs() -> Vec<Config> {
    vec![
        Config::register(16, 16, 8),
        Config::register(16, 32, 8),
        Config::register(32, 16, 8),
        Config::register(8, 4, 8),
        Config::register(3, 5, 4),
        Config::tiled(4, 4, 16, 16, 16),
        Config::tiled(8, 8, 16, 16, 8),
        Config::tiled(2, 3, 8, 4, 5),
        Config::blocked(8, 8, 16, 16, 8),
        Config::blocked(4, 4, 4, 4, 4),
        Config::blocked(8, 4, 4, 8, 8),
    ]
}

struct Case {
    layout: Layout,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    b_shared: bool,
    bias: bool,
    gelu: bool,
    /// Multiply by GELU'(x) of a tensor the shape of C (a GELU's backward).
    gelu_grad: bool,
    residual: bool,
    /// Multiply by a factor per group of rows before the residual (drop-path).
    row_scale: bool,
    accumulate: bool,
}

impl Case {
    /// A weight gradient's shape: TN, 2-D, no epilogue but accumulation.
    fn weight_gradient(m: usize, n: usize, k: usize, accumulate: bool) -> Case {
        let (b_shared, bias, gelu, residual) = (false, false, false, false);
        Case {
            layout: Layout::TN,
            batch: 1,
            m,
            n,
            k,
            b_shared,
            bias,
            gelu,
            gelu_grad: false,
            residual,
            row_scale: false,
            accumulate,
        }
    }
}

/// How a checked matmul is run.
#[derive(Clone, Copy, Debug)]
enum Route {
    /// `matmul_with` the config.
    Direct,
    /// Split-K with this many slices (TN, plain or accumulating epilogue, 2-D operands).
    SplitK(usize),
    /// A cooperative config with its tiles written out as loops (no tensor cores needed).
    EmulatedTiles,
}

fn check(case: &Case, config: Config, seed: u64) {
    check_split(case, config, None, seed);
}

/// [`check`], through split-K with this many slices when `split` is given (TN, plain or
/// accumulating epilogue, 2-D operands).
fn check_split(case: &Case, config: Config, split: Option<usize>, seed: u64) {
    check_typed(case, config, split.map_or(Route::Direct, Route::SplitK), [Element::F32; 2], seed);
}

/// [`check_split`] with A, B and the bias stored as `operand` and C, the residual and the
/// pre-activation as `output`; the CPU twin sees the values as stored.
fn check_typed(case: &Case, config: Config, route: Route, [operand, output]: [Element; 2], seed: u64) {
    let Case { layout, batch, m, n, k, .. } = *case;
    let mut r = rng(seed);
    let a = stored(operand, &random(&mut r, batch * m * k, 1.0));
    let b_batches = if case.b_shared { 1 } else { batch };
    let b = stored(operand, &random(&mut r, b_batches * k * n, 1.0));
    let bias = stored(operand, &random(&mut r, n, 1.0));
    let res = stored(output, &random(&mut r, batch * m * n, 1.0));
    let x = stored(output, &random(&mut r, batch * m * n, 2.0));
    // Rows per factor: a divisor of the rows of C, so that several factors differ.
    let rows_per_scale = [7, 5, 3, 2, 1].into_iter().find(|d| (batch * m) % d == 0).unwrap_or(1);
    let scales: Vec<f64> = (0..batch * m / rows_per_scale).map(|i| [0.0, 2.0, 1.25][i % 3]).collect();
    let old = stored(output, &random(&mut r, batch * m * n, 1.0));
    let a_shape = match layout {
        Layout::TN => vec![batch, k, m],
        _ => vec![batch, m, k],
    };
    let mut b_shape = match layout {
        Layout::NT => vec![b_batches, n, k],
        _ => vec![b_batches, k, n],
    };
    if case.b_shared {
        b_shape.remove(0);
    }
    let c_shape = [batch, m, n];
    let (at, bt) = (upload_as(operand, &a, &a_shape), upload_as(operand, &b, &b_shape));
    let bias_t = upload_as(operand, &bias, &[n]);
    let res_t = upload_as(output, &res, &c_shape);
    let x_t = upload_as(output, &x, &c_shape);
    let scales_t = upload(&scales, &[scales.len()]);
    let c = upload_as(output, &old, &c_shape);
    let pre = ctx().empty_as(&c_shape, output, "test.pre").expect("alloc");
    let epi = Epilogue {
        bias: case.bias.then_some(&bias_t),
        gelu: case.gelu,
        pre: case.gelu.then_some(&pre),
        gelu_grad_of: case.gelu_grad.then_some(&x_t),
        residual: case.residual.then_some(&res_t),
        row_scale: case.row_scale.then_some((&scales_t, rows_per_scale)),
        accumulate: case.accumulate,
    };
    run(|rec| match route {
        Route::SplitK(splits) => {
            let (a2, b2, c2) = (at.reshape(&[k, m])?, bt.reshape(&[k, n])?, c.reshape(&[m, n])?);
            matmul::matmul_split_k(rec, config, &a2, &b2, &c2, case.accumulate, splits)
        }
        Route::Direct => matmul::matmul_with(rec, layout, config, &at, &bt, &c, &epi),
        Route::EmulatedTiles => matmul::matmul_cooperative_emulated(rec, layout, config, &at, &bt, &c, &epi),
    });
    let (want, want_pre) = cpu::matmul::matmul(
        layout,
        batch,
        m,
        n,
        k,
        &a,
        false,
        &b,
        case.b_shared,
        &cpu::matmul::Epilogue {
            bias: case.bias.then_some(&bias[..]),
            gelu: case.gelu,
            gelu_grad_of: case.gelu_grad.then_some(&x[..]),
            residual: case.residual.then_some(&res[..]),
            row_scale: case.row_scale.then_some((&scales[..], rows_per_scale)),
            accumulate: case.accumulate.then_some(&old[..]),
        },
    );
    // The bar (rel 1e-4, abs 1e-5) while K is short. For long K the f32 rounding
    // of a running sum dominates: adding the j-th product rounds with an error of about
    // u·|s_j| (u = 2⁻²⁴), where the partial sum s_j of products of values uniform in
    // [-1, 1] has E[s_j²] = j/9. Those errors add up to a standard deviation of
    // u·sqrt(Σ j/9) = u·k/sqrt(18): 1.4e-5 at k = 1000, 9e-4 at k = 66000 (a GPU sums all
    // of K in one invocation). The floor is 5 of those once that passes 1e-5 (k > 140),
    // far below what a dropped slice of K would cost (1000 missing products shift a sum
    // by about 10).
    let sequential_sigma = f64::from(f32::EPSILON) / 2.0 * k as f64 / 18f64.sqrt();
    let abs = (5.0 * sequential_sigma).max(Tolerance::FORWARD.abs);
    let tol = Tolerance { rel: Tolerance::FORWARD.rel, abs }.after_rounding_to(output);
    let what =
        format!("{} {} b{batch} m{m} n{n} k{k} route {route:?} {operand}->{output}", layout.name(), config.label());
    tol.assert(&what, &read(&c), &want);
    if case.gelu {
        tol.assert(&format!("{what} pre"), &read(&pre), &want_pre);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn matmul_matches_cpu(
        layout in prop::sample::select(Layout::ALL.to_vec()),
        config in prop::sample::select(configs()),
        batch in 1usize..3, m in 1usize..70, n in 1usize..70, k in 1usize..70,
        b_shared in any::<bool>(), bias in any::<bool>(), activation in 0u8..3,
        residual_mode in 0u8..4, accumulate in any::<bool>(), seed in any::<u64>(),
    ) {
        // Bit 0: a residual; bit 1: a row scale.
        let (residual, row_scale) = (residual_mode & 1 != 0, residual_mode & 2 != 0);
        // No activation, GELU, or the product with GELU' (they are exclusive).
        let (gelu, gelu_grad) = (activation == 1, activation == 2);
        let case = Case { layout, batch, m, n, k, b_shared, bias, gelu, gelu_grad, residual, row_scale, accumulate };
        check(&case, config, seed);
    }
}

proptest! {
    // Fewer cases than f32: every case compiles new pipelines, slow on lavapipe.
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// f16 storage: f16 operands into f16 (activations) or f32 (weight gradients), and
    /// f32 operands into f16.
    #[test]
    fn matmul_f16_matches_cpu(
        layout in prop::sample::select(Layout::ALL.to_vec()),
        config in prop::sample::select(configs()),
        types in prop::sample::select(vec![
            [Element::F16, Element::F16], [Element::F16, Element::F32], [Element::F32, Element::F16],
        ]),
        batch in 1usize..3, m in 1usize..70, n in 1usize..70, k in 1usize..70,
        b_shared in any::<bool>(), bias in any::<bool>(), activation in 0u8..3,
        residual_mode in 0u8..4, accumulate in any::<bool>(), seed in any::<u64>(),
    ) {
        // Bit 0: a residual; bit 1: a row scale.
        let (residual, row_scale) = (residual_mode & 1 != 0, residual_mode & 2 != 0);
        // No activation, GELU, or the product with GELU' (they are exclusive).
        let (gelu, gelu_grad) = (activation == 1, activation == 2);
        require_f16();
        let case = Case { layout, batch, m, n, k, b_shared, bias, gelu, gelu_grad, residual, row_scale, accumulate };
        check_typed(&case, config, Route::Direct, types, seed);
    }
}

#[test]
fn matmul_f16_every_variant_and_layout_at_a_vit_shape() {
    require_f16();
    let one_per_variant =
        [Config::register(16, 16, 8), Config::tiled(8, 8, 16, 16, 8), Config::blocked(8, 8, 16, 16, 8)];
    for config in one_per_variant {
        for layout in Layout::ALL {
            let case = Case {
                layout,
                batch: 2,
                m: 65,
                n: 192,
                k: 64,
                b_shared: true,
                bias: true,
                gelu: true,
                gelu_grad: false,
                residual: true,
                row_scale: true,
                accumulate: false,
            };
            check_typed(&case, config, Route::Direct, [Element::F16; 2], 12);
        }
    }
}

#[test]
fn matmul_f16_split_k_into_f32_matches_cpu() {
    // Weight gradients: f16 activations and gradients into an f32 gradient.
    require_f16();
    for (m, n, k, splits) in [(70, 33, 1000, 3), (64, 192, 768, 3)] {
        let case = Case::weight_gradient(m, n, k, true);
        check_typed(&case, Config::register(8, 4, 8), Route::SplitK(splits), [Element::F16, Element::F32], 18);
    }
}

#[test]
fn matmul_f16_refuses_mixed_operands() {
    require_f16();
    let c = ctx();
    let a = c.upload_as(&[0.0; 12], &[3, 4], Element::F16, "a").unwrap();
    let b = c.zeros(&[4, 6], "b").unwrap();
    let out = c.zeros(&[3, 6], "c").unwrap();
    let mut rec = c.recorder("mixed");
    let err = matmul::matmul(&mut rec, Layout::NN, &a, &b, &out, &Epilogue::default()).unwrap_err().to_string();
    assert!(err.contains("binding 1 takes f16") && err.contains("Tensor[4, 6]"), "{err}");
}

/// Cooperative configs of the tests: the smallest block, a deep one with a short K slice,
/// and a wide one.
const COOPERATIVE: [Config; 3] =
    [Config::cooperative(2, 2, 2, 2, 32), Config::cooperative(4, 4, 2, 2, 16), Config::cooperative(2, 2, 4, 2, 32)];

/// A cooperative config in `layout` against the CPU twin, routed as `route`, at a ViT shape
/// with the whole epilogue and an odd shape (partial tiles in M, N and K) accumulating.
fn check_cooperative(route: Route, config: Config, layout: Layout, outputs: &[Element]) {
    for (batch, m, n, k, fused) in [(2, 65, 192, 64, true), (1, 70, 33, 50, false)] {
        let case = Case {
            layout,
            batch,
            m,
            n,
            k,
            b_shared: fused,
            bias: fused,
            gelu: fused,
            gelu_grad: false,
            residual: fused,
            row_scale: fused,
            accumulate: !fused,
        };
        for &output in outputs {
            check_typed(&case, config, route, [Element::F16, output], (m * n * k) as u64);
        }
    }
}

/// The tensor-core variant against the CPU twin wherever the device has cooperative
/// matrices (16x16x16, f16 -> f32). Where it has none (lavapipe, GL, browsers), that the
/// variant is neither offered to the tuner nor run when asked for: a clear error instead.
/// `AUTOPROG_REQUIRE_COOPMAT=1` (set on the GPU machine) makes a device without them fail.
#[test]
fn matmul_cooperative_matches_cpu_where_the_adapter_has_it() {
    let c = ctx();
    let required = std::env::var("AUTOPROG_REQUIRE_COOPMAT").is_ok_and(|v| v == "1");
    if c.cooperative_matrix_subgroup().is_some() {
        for config in COOPERATIVE {
            for layout in Layout::ALL {
                check_cooperative(Route::Direct, config, layout, &[Element::F16, Element::F32]);
            }
        }
        // Split-K weight gradients run it too (f16 activations into an f32 gradient).
        let case = Case::weight_gradient(70, 33, 1000, true);
        check_typed(&case, COOPERATIVE[0], Route::SplitK(3), [Element::F16, Element::F32], 5);
        return;
    }
    assert!(
        !required,
        "AUTOPROG_REQUIRE_COOPMAT=1, but {} has no 16x16x16 f16 -> f32 cooperative matrices (it reports {:?})",
        c.summary.display_name(),
        c.summary.cooperative_matrix
    );
    for operand in [Element::F32, Element::F16] {
        let offered = matmul::candidates(c, operand);
        assert!(offered.iter().all(|k| k.variant != matmul::Variant::Cooperative), "{operand:?}: {offered:?}");
    }
    let operand = if c.has_f16() { Element::F16 } else { Element::F32 };
    let a = c.upload_as(&[0.5; 12], &[3, 4], operand, "a").unwrap();
    let b = c.upload_as(&[0.5; 24], &[4, 6], operand, "b").unwrap();
    let out = c.zeros(&[3, 6], "c").unwrap();
    let mut rec = c.recorder("cooperative");
    let err = matmul::matmul_with(&mut rec, Layout::NN, COOPERATIVE[0], &a, &b, &out, &Epilogue::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cooperative") && err.contains("autoprog info"), "{err}");
}

/// Everything around the tensor cores (staging with zero padding, where each subgroup's
/// tiles sit, the epilogue through the scratch tile, the barriers) on any adapter with f16:
/// the cooperative kernel with its tile operations written out as loops.
#[test]
fn matmul_f16_cooperative_with_emulated_tiles_matches_cpu() {
    require_f16();
    // Each layout once, and the other two tile shapes once: lavapipe compiles and runs the
    // written-out tiles slowly (the full product took 10 minutes on 2 cores).
    for layout in Layout::ALL {
        check_cooperative(Route::EmulatedTiles, COOPERATIVE[0], layout, &[Element::F16]);
    }
    check_cooperative(Route::EmulatedTiles, COOPERATIVE[1], Layout::NT, &[Element::F32]);
    check_cooperative(Route::EmulatedTiles, COOPERATIVE[2], Layout::TN, &[Element::F16]);
    // CPU adapters cut loops short: a long K is refused, not silently truncated.
    let c = ctx();
    let a = c.upload_as(&[0.5; 2 * 300], &[2, 300], Element::F16, "a").unwrap();
    let b = c.upload_as(&[0.5; 300 * 3], &[300, 3], Element::F16, "b").unwrap();
    let out = c.zeros(&[2, 3], "c").unwrap();
    let mut rec = c.recorder("emulated");
    let err =
        matmul::matmul_cooperative_emulated(&mut rec, Layout::NN, COOPERATIVE[0], &a, &b, &out, &Epilogue::default())
            .unwrap_err()
            .to_string();
    assert!(err.contains("K up to 256"), "{err}");
}

#[test]
fn matmul_every_variant_and_layout_at_a_vit_shape() {
    // M = batch * tokens (4 * 65), K = 64, N = 3K: the nano ViT's qkv projection.
    for config in configs() {
        for layout in Layout::ALL {
            let case = Case {
                layout,
                batch: 1,
                m: 260,
                n: 192,
                k: 64,
                b_shared: false,
                bias: true,
                gelu: false,
                gelu_grad: false,
                residual: false,
                row_scale: false,
                accumulate: false,
            };
            check(&case, config, 11);
        }
    }
}

#[test]
fn matmul_split_k_matches_cpu() {
    // Weight-gradient shapes: K exactly divisible into 64-multiples (768 = 3 x 256) and
    // not (1000: two slices of 384 and a tail of 232 that goes straight into C).
    for (m, n, k, splits) in [(70, 33, 1000, 3), (64, 192, 768, 3), (5, 8, 2000, 7), (10, 64, 300, 2)] {
        for accumulate in [false, true] {
            for config in [Config::register(8, 4, 8), Config::blocked(4, 4, 4, 4, 4)] {
                check_split(&Case::weight_gradient(m, n, k, accumulate), config, Some(splits), 17);
            }
        }
    }
}

#[test]
fn matmul_rejects_bad_shapes() {
    let c = ctx();
    let a = c.zeros(&[3, 4], "a").unwrap();
    let b = c.zeros(&[5, 6], "b").unwrap();
    let out = c.zeros(&[3, 6], "c").unwrap();
    let mut rec = c.recorder("bad");
    let err = matmul::matmul(&mut rec, Layout::NN, &a, &b, &out, &Epilogue::default()).unwrap_err().to_string();
    assert!(
        err.contains("matmul_nn") && err.contains("[3, 4]") && err.contains("[5, 6]") && err.contains("4 vs 5"),
        "{err}"
    );
    let bias = c.zeros(&[7], "bias").unwrap();
    let b = c.zeros(&[4, 6], "b").unwrap();
    let epi = Epilogue { bias: Some(&bias), ..Default::default() };
    let err = matmul::matmul(&mut rec, Layout::NN, &a, &b, &out, &epi).unwrap_err().to_string();
    assert!(err.contains("bias is [7]"), "{err}");
}

#[test]
fn matmul_binding_limit_is_a_clear_error() {
    let c = ctx();
    let limit = c.limits().max_storage_buffer_binding_size as usize;
    // One row more than the binding limit allows, never allocated.
    let rows = limit / 4 / 1024 + 1;
    let err = c.empty(&[rows, 1024], "activations").unwrap_err().to_string();
    assert!(err.contains("binds at most") && err.contains("smaller batch"), "{err}");
}

#[test]
fn autotune_picks_a_candidate_and_caches_it() {
    let dir = std::env::temp_dir().join(format!("autoprog-tune-{}", std::process::id()));
    let path = dir.join("matmul.json");
    let c = ctx();
    let tuning = pollster::block_on(matmul::autotune_with_cache(c, Some(path.clone()))).unwrap();
    let candidates = matmul::candidates(c, Element::F32);
    for layout in Layout::ALL {
        let chosen = tuning.configs[layout.name()];
        assert!(candidates.contains(&chosen), "{chosen:?}");
        assert_eq!(matmul::config_for(c, layout, Element::F32), chosen);
    }
    assert!(path.exists(), "{} not written", path.display());
    // A second tune from a cold context state loads the same choice from disk.
    matmul::reset_tuning(c);
    let again = pollster::block_on(matmul::autotune_with_cache(c, Some(path))).unwrap();
    assert_eq!(again.configs, tuning.configs);
    matmul::reset_tuning(c);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn matmul_long_k_is_split_on_cpu_adapters() {
    // Weight gradients reduce over batch x tokens, which can pass the 65535 loop
    // iterations a CPU adapter runs per invocation; the host splits K there.
    for config in [Config::register(8, 4, 8), Config::tiled(4, 4, 16, 16, 16)] {
        for (layout, k) in [(Layout::TN, 70_001), (Layout::NN, 70_000), (Layout::NT, 66_000)] {
            let case = Case {
                layout,
                batch: 1,
                m: 5,
                n: 8,
                k,
                b_shared: false,
                bias: false,
                gelu: false,
                gelu_grad: false,
                residual: false,
                row_scale: false,
                accumulate: true,
            };
            check(&case, config, 5);
        }
    }
}
