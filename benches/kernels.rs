//! Criterion benchmarks of the kernels for development (`cargo bench -p autoprog`).
//! `autoprog bench` is the reported benchmark; these help compare variants locally.

use std::time::{Duration, Instant};

use autoprog::kernels::attention::{self, AttentionOptions};
use autoprog::kernels::matmul::{self, Epilogue, Layout};
use autoprog::{ContextOptions, GpuContext, Recorder};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn run_timed(ctx: &GpuContext, iters: u64, record: impl Fn(&mut Recorder<'_>)) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let mut rec = ctx.recorder("bench");
        record(&mut rec);
        ctx.submit(rec).expect("submit");
        ctx.wait_idle();
    }
    start.elapsed()
}

fn matmul_benches(c: &mut Criterion) {
    let ctx = GpuContext::new_blocking(&ContextOptions::default()).expect("a GPU adapter");
    let n = 256;
    let data: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let a = ctx.upload(&data, &[n, n], "a").unwrap();
    let b = ctx.upload(&data, &[n, n], "b").unwrap();
    let out = ctx.empty(&[n, n], "c").unwrap();
    let mut group = c.benchmark_group("matmul_256");
    group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    for config in matmul::candidates(&ctx, autoprog::gpu::Element::F32) {
        for layout in Layout::ALL {
            group.bench_function(format!("{}/{}", layout.name(), config.label()), |bencher| {
                bencher.iter_custom(|iters| {
                    run_timed(&ctx, iters, |rec| {
                        matmul::matmul_with(rec, layout, config, &a, &b, &out, &Epilogue::default()).unwrap()
                    })
                })
            });
        }
    }
    group.finish();
}

fn attention_benches(c: &mut Criterion) {
    let ctx = GpuContext::new_blocking(&ContextOptions::default()).expect("a GPU adapter");
    let (batch, heads, tokens, head_size) = (2, 3, 65, 64);
    let width = heads * head_size;
    let qkv_data: Vec<f32> = (0..batch * tokens * 3 * width).map(|i| (i % 17) as f32 * 0.02 - 0.16).collect();
    let qkv = ctx.upload(&qkv_data, &[batch, tokens, 3 * width], "qkv").unwrap();
    let out = ctx.empty(&[batch, tokens, width], "out").unwrap();
    let lse = ctx.empty(&[batch, heads, tokens], "lse").unwrap();
    let dqkv = ctx.empty(&[batch, tokens, 3 * width], "dqkv").unwrap();
    let opts = AttentionOptions::new(0.125);
    c.bench_function("attention_forward_backward/B2_NH3_N65_HS64", |bencher| {
        bencher.iter_custom(|iters| {
            run_timed(&ctx, iters, |rec| {
                attention::attention_forward(rec, &qkv, &opts, &out, &lse).unwrap();
                attention::attention_backward(rec, &qkv, &out, &out, &lse, &opts, &dqkv).unwrap();
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    targets = matmul_benches, attention_benches
}
criterion_main!(benches);
