//! Shared fixtures: one GPU context per test process, seeded random data, and the
//! finite-difference gradient check.

use std::sync::OnceLock;

use autoprog::gpu::Element;
use autoprog::{ContextOptions, GpuContext, Recorder, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The context every test uses: the default adapter, or `WGPU_BACKEND` / `AUTOPROG_ADAPTER`.
/// A missing adapter fails loudly; nothing is skipped.
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let opts =
            ContextOptions { backend: None, adapter: std::env::var("AUTOPROG_ADAPTER").ok(), ..Default::default() };
        match GpuContext::new_blocking(&opts) {
            Ok(ctx) => {
                eprintln!("kernel tests on {} ({})", ctx.summary.name, ctx.summary.backend);
                ctx
            }
            Err(e) => panic!("kernel tests need a GPU adapter: {e}"),
        }
    })
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` values uniform in [-scale, scale).
pub fn random(rng: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// f32-rounded copy in f64, so CPU twins see exactly the values the GPU sees.
pub fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| x as f32 as f64).collect()
}

/// `v` as a tensor of `element` stores it, in f64 (the CPU twin's input).
pub fn stored(element: Element, v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| element.round(x as f32) as f64).collect()
}

pub fn upload_as(element: Element, v: &[f64], shape: &[usize]) -> Tensor {
    ctx().upload_as(&to_f32(v), shape, element, "test.input").expect("upload")
}

/// f16 tests run on adapters with f16 shaders (lavapipe has them); test.sh leaves them
/// out of the GL run (wgpu's GL backend has none). Elsewhere they fail rather than skip.
pub fn require_f16() {
    assert!(
        ctx().has_f16(),
        "{} has no SHADER_F16; run the f16 tests on an adapter with it (lavapipe has it)",
        ctx().summary.name
    );
}

pub fn upload(v: &[f64], shape: &[usize]) -> Tensor {
    ctx().upload(&to_f32(v), shape, "test.input").expect("upload")
}

pub fn empty_as(element: Element, shape: &[usize]) -> Tensor {
    ctx().empty_as(shape, element, "test.output").expect("alloc")
}

pub fn empty(shape: &[usize]) -> Tensor {
    ctx().empty(shape, "test.output").expect("alloc")
}

pub fn read(t: &Tensor) -> Vec<f32> {
    ctx().read_blocking(t).expect("readback")
}

/// Records with `f`, submits, and panics with the error if anything failed.
pub fn run(f: impl FnOnce(&mut Recorder<'_>) -> autoprog::Result<()>) {
    let c = ctx();
    let mut rec = c.recorder("test");
    f(&mut rec).expect("record");
    c.submit(rec).expect("submit");
}

/// Central finite differences of a scalar function, step `h`.
pub fn numeric_grad(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + h;
            let plus = f(&x);
            x[i] = orig - h;
            let minus = f(&x);
            x[i] = orig;
            (plus - minus) / (2.0 * h)
        })
        .collect()
}

/// sum(w * y): turns a vector output into a scalar loss whose upstream gradient is `w`.
pub fn dot(w: &[f64], y: &[f64]) -> f64 {
    w.iter().zip(y).map(|(a, b)| a * b).sum()
}
