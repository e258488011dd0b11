//! `autoprog bench`: kernel and training-step timings on the chosen adapter; under
//! `mpirun`, data-parallel training steps with their all-reduce and scaling efficiency.

use std::process::ExitCode;

use autoprog::bench::{self, BenchOptions, BenchResult};
use autoprog::train::Collective;
use autoprog::GpuContext;

use crate::ranks::{self, Peers};
use crate::GpuArgs;

/// Runs the benchmarks and prints them (rank 0 alone, under `mpirun`).
pub fn run(gpu: &GpuArgs, opts: &BenchOptions, json: bool, quiet: bool) -> ExitCode {
    let outcome = ranks::join().and_then(|mut peers| {
        let result = run_inner(gpu, opts, json, quiet, peers.as_mut());
        ranks::or_abort(peers.as_ref(), result)
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(
    gpu: &GpuArgs,
    opts: &BenchOptions,
    json: bool,
    quiet: bool,
    mut peers: Option<&mut Peers>,
) -> anyhow::Result<()> {
    let rank = peers.as_ref().map_or(0, |p| p.rank());
    let ctx = GpuContext::new_blocking(&match peers {
        Some(_) => gpu.options_for_rank(rank),
        None => gpu.options(),
    })?;
    if let Some(peers) = peers.as_deref_mut() {
        peers.share_adapter(&ctx.summary.display_name());
    }
    let reports = rank == 0;
    if reports {
        eprintln!("adapter: {} ({}, {})", ctx.summary.name, ctx.summary.backend, ctx.summary.device_type);
        eprintln!("optional features in use: {}", ctx.summary.enabled_features.join(", "));
        eprintln!("tuning matmul variants for this adapter (cached after the first run)...");
    }
    let show = |r: &BenchResult| {
        if reports && !quiet && !json {
            eprintln!("  {} done", describe(r));
            if opts.train_only && !r.kernels.is_empty() {
                eprintln!("    GPU time per kernel in one step:");
                for (kernel, ms, count) in r.kernels.iter().take(15) {
                    eprintln!("    {kernel:<44} {ms:>8.2} ms  ({count} dispatches)");
                }
            }
        }
    };
    let results = match peers {
        Some(peers) => {
            if reports {
                let adapters = peers.adapters().join(", ");
                eprintln!("data-parallel training steps over {} ranks ({adapters})", peers.ranks());
            }
            pollster::block_on(bench::run_data_parallel(&ctx, &*peers, opts, show))?
        }
        None => pollster::block_on(bench::run(&ctx, opts, show))?,
    };
    if !reports {
        return Ok(());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results).expect("serialisable"));
        return Ok(());
    }
    println!("adapter: {} ({})", ctx.summary.name, ctx.summary.backend);
    println!(
        "{:<20} {:<20} {:>10} {:>10} {:>10}  {:<18} timer",
        "kernel", "shape", "median ms", "GFLOP/s", "best ms", "variant"
    );
    for r in &results {
        let shape = match (r.m, r.n, r.k) {
            (Some(m), Some(n), Some(k)) => format!("m{m} n{n} k{k}"),
            _ => r.shape.clone().unwrap_or_default(),
        };
        println!(
            "{:<20} {:<20} {:>10.3} {:>10.1} {:>10.3}  {:<18} {}",
            r.name, shape, r.ms, r.gflops, r.min_ms, r.variant, r.timer
        );
    }
    Ok(())
}

fn describe(r: &BenchResult) -> String {
    if let (Some(ips), Some(dp)) = (r.images_per_second, &r.data_parallel) {
        return format!(
            "{} {}: {ips:.1} images/s ({:.1} ms per step: forward and backward until the last gradients are on the \
             host {:.1} ms, their all-reduces {:.1} ms with waiting for slower ranks, {:.1} ms of it after the \
             backward; one all-reduce of all {:.2} MiB alone {:.1} ms); one process alone {:.1} ms: scaling \
             efficiency {:.2}",
            r.name,
            r.shape.as_deref().unwrap_or(""),
            r.ms,
            dp.backward_ms,
            dp.exchange_ms,
            dp.exposed_ms,
            dp.gradient_bytes as f64 / f64::from(1 << 20),
            dp.all_reduce_ms,
            dp.alone_ms,
            dp.scaling_efficiency,
        );
    }
    if let Some(ips) = r.images_per_second {
        return format!(
            "{} {}: {:.1} images/s ({:.1} ms per step, {:.1} ms of it recording and submitting, {} on the GPU; \
             {:.0} MiB of tensors)",
            r.name,
            r.shape.as_deref().unwrap_or(""),
            ips,
            r.ms,
            r.host_ms.unwrap_or(f64::NAN),
            r.gpu_ms.map_or("no timestamps".into(), |ms| format!("{ms:.1} ms")),
            r.device_bytes.unwrap_or(0) as f64 / f64::from(1 << 20),
        );
    }
    match (r.m, r.n, r.k) {
        (Some(m), Some(n), Some(k)) => format!("{} {m}x{n}x{k}: {:.1} GFLOP/s", r.name, r.gflops),
        _ => format!("{} {}: {:.3} ms", r.name, r.shape.as_deref().unwrap_or(""), r.ms),
    }
}
