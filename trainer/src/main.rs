//! `autoprog`: the command-line tool. Results go to stdout, progress and logs to stderr.

mod cli_bench;
mod cli_compare;
mod cli_infer;
mod cli_serve;
mod cli_train;
mod data;
#[cfg(test)]
mod hostile_tests;
mod ranks;
mod train;

use std::process::ExitCode;

use autoprog::bench::BenchOptions;
use autoprog::gpu::AdapterSummary;
use autoprog::{ContextOptions, GpuContext};
use clap::{Args, Parser, Subcommand};

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("AUTOPROG_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "autoprog", version = VERSION, about = "Vision Transformer training with AutoProg on WGSL kernels \
    (wgpu)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct GpuArgs {
    /// Backend to use: vulkan, metal, dx12 or gl (default: all; or WGPU_BACKEND).
    #[arg(long)]
    backend: Option<String>,
    /// Use the adapter whose name contains this text (see `autoprog info`).
    #[arg(long)]
    adapter: Option<String>,
}

impl GpuArgs {
    fn options(&self) -> ContextOptions {
        ContextOptions { backend: self.backend.clone(), adapter: self.adapter.clone(), local_rank: None }
    }

    /// The adapter of `rank` in a data-parallel run: its entry of a comma-separated
    /// `--adapter` list (rank modulo the list's length), or else the adapters of the best
    /// type shared out by the rank on this machine.
    fn options_for_rank(&self, rank: usize) -> ContextOptions {
        let adapter = self.adapter.as_ref().map(|list| ranks::adapter_of_rank(list, rank));
        ContextOptions { backend: self.backend.clone(), adapter, local_rank: ranks::local_rank() }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train a ViT (on the built-in data unless --data is given) into a run directory.
    #[command(
        after_help = "Examples:\n  autoprog train\n  autoprog train --preset quick --epochs 3\n  autoprog train --data \
            ~/mnist --model nano --image-size 28 --val-split 0.1\n  autoprog train --resume runs/20261127-0930-nano"
    )]
    Train(Box<cli_train::TrainArgs>),
    /// Train several schedules with the same data, epochs and seeds and compare time, FLOPs and accuracy.
    #[command(
        after_help = "Example:\n  autoprog compare --schedules none,prog --seeds 2 --epochs 8 --out runs/compare"
    )]
    Compare(Box<cli_compare::CompareArgs>),
    /// Accuracy of a checkpoint on the validation part of a dataset.
    #[command(
        after_help = "Example:\n  autoprog eval --checkpoint runs/x/checkpoints/best.safetensors\n  autoprog eval \
            --checkpoint vit.safetensors --heads 3 --data ~/digits"
    )]
    Eval(cli_infer::EvalArgs),
    /// Classify image files with a checkpoint.
    #[command(
        after_help = "Example:\n  autoprog predict --checkpoint runs/x/checkpoints/best.safetensors cat.png dog.jpg \
            --top-k 3\n  autoprog predict --checkpoint vit.safetensors --heads 3 digit.png --json"
    )]
    Predict(cli_infer::PredictArgs),
    /// Write one set of weights with its architecture, classes and normalisation as a model file
    /// (for predict, eval and the web viewer).
    #[command(
        after_help = "Example:\n  autoprog export --checkpoint runs/x/checkpoints/best.safetensors --ema 0.995 --out \
            model.safetensors\n  autoprog export --checkpoint vit.safetensors --heads 3 --out vit16.safetensors --f16"
    )]
    Export(cli_infer::ExportArgs),
    /// One forward and backward pass on a given batch; writes loss, logits and gradients (for comparison with PyTorch).
    #[command(
        after_help = "Example:\n  autoprog debug-step --checkpoint vit.safetensors --heads 3 --batch batch.safetensors \
            --out grads.safetensors"
    )]
    DebugStep(cli_infer::DebugStepArgs),
    /// Serve the web viewer (www/) and training run directories to a browser, on 127.0.0.1 only.
    #[command(
        after_help = "Examples:\n  autoprog serve runs/20261127-0930-nano\n  autoprog serve runs/compare/none-seed0 \
            runs/compare/prog-seed0 --port 8080\n  autoprog serve --www ~/autoprog/www --port 0 runs/latest"
    )]
    Serve(cli_serve::ServeArgs),
    /// List the GPU adapters with backend, type, features and key limits, and the one that would be used.
    #[command(after_help = "Example:\n  autoprog info\n  autoprog info --backend gl --json")]
    Info {
        #[command(flatten)]
        gpu: GpuArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time the kernels on the chosen adapter (matmul at 1024³ and ViT shapes).
    #[command(
        after_help = "Example:\n  autoprog bench\n  autoprog bench --json > bench.json\n  autoprog bench --size 512 \
            --reps 3"
    )]
    Bench {
        #[command(flatten)]
        gpu: GpuArgs,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Square matmul size(s), repeatable.
        #[arg(long = "size", default_values_t = [1024usize])]
        sizes: Vec<usize>,
        /// Rows of the ViT-shape matmuls (batch x tokens).
        #[arg(long, default_value_t = 32 * 197)]
        vit_rows: usize,
        /// Batch of the attention cases (3 heads of size 64).
        #[arg(long, default_value_t = 32)]
        attention_batch: usize,
        /// Timed runs per case (the median is reported).
        #[arg(long, default_value_t = 9)]
        reps: usize,
        /// Only log lines, no per-case progress on stderr.
        #[arg(long)]
        quiet: bool,
        /// Only the training-step cases (nano and tiny at 32 px), with the GPU time of each
        /// kernel in one step on stderr.
        #[arg(long)]
        train: bool,
        /// Only the attention cases, in both variants (rows per invocation, workgroup tiles).
        #[arg(long, conflicts_with = "train")]
        attention: bool,
        /// Images per step of the training-step cases.
        #[arg(long, default_value_t = 64)]
        train_batch: usize,
        /// Model presets of the training-step cases (nano, tiny, ...), repeatable.
        #[arg(long = "train-model", default_values_t = ["nano".to_string(), "tiny".to_string()])]
        train_models: Vec<String>,
        /// Time every matmul variant this adapter's tuner chooses from at the --size
        /// sizes, not only the chosen one.
        #[arg(long)]
        all_variants: bool,
    },
}

fn main() -> ExitCode {
    quiet_egl();
    let cli = Cli::parse();
    if let Err(e) = ranks::only_data_parallel_commands(matches!(cli.command, Command::Train(_) | Command::Bench { .. }))
    {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Train(args) => return cli_train::run(*args),
        Command::Compare(args) => return report(cli_compare::compare(&args)),
        Command::Eval(args) => return report(cli_infer::eval(&args)),
        Command::Predict(args) => return report(cli_infer::predict(&args)),
        Command::Export(args) => return report(cli_infer::export(&args)),
        Command::DebugStep(args) => return report(cli_infer::debug_step(&args)),
        Command::Serve(args) => return report(cli_serve::serve(&args)),
        Command::Info { gpu, json } => info(&gpu, json),
        Command::Bench {
            gpu,
            json,
            sizes,
            vit_rows,
            attention_batch,
            reps,
            quiet,
            train,
            attention,
            train_batch,
            train_models,
            all_variants,
        } => {
            let opts = BenchOptions {
                square: sizes,
                vit_rows,
                reps: reps.max(1),
                attention_batch,
                train_only: train,
                attention_only: attention,
                train_batch: train_batch.max(1),
                train_models,
                all_variants,
            };
            return cli_bench::run(&gpu, &opts, json, quiet);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The exit code of a command, with its error (and causes) on stderr.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The shell's code for Ctrl-C; the message says how to go on.
        Err(e) if e.is::<train::Interrupted>() => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Mesa's EGL (used when wgpu probes the GL backend) prints a harmless but alarming
/// "XDG_RUNTIME_DIR is invalid" line when the variable is unset, as on servers and CI.
fn quiet_egl() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join("autoprog-runtime");
        if std::fs::create_dir_all(&dir).is_ok() {
            // Still single-threaded here: nothing else reads the environment concurrently.
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
}

fn info(gpu: &GpuArgs, json: bool) -> autoprog::Result<()> {
    let opts = gpu.options();
    let adapters = pollster::block_on(GpuContext::adapters(&opts))?;
    if adapters.is_empty() {
        return Err(autoprog::Error::NoAdapter { backends: String::new() });
    }
    let summaries: Vec<AdapterSummary> = adapters.iter().map(AdapterSummary::from_adapter).collect();
    let chosen = GpuContext::new_blocking(&opts)?;
    if json {
        let out = serde_json::json!({ "adapters": summaries, "chosen": chosen.summary });
        println!("{}", serde_json::to_string_pretty(&out).expect("serialisable"));
        return Ok(());
    }
    for (i, s) in summaries.iter().enumerate() {
        let mark = if s.name == chosen.summary.name && s.backend == chosen.summary.backend { "*" } else { " " };
        println!("{mark} [{i}] {} ({}, {}, driver {} {})", s.name, s.backend, s.device_type, s.driver, s.driver_info);
        println!("      features: {}", s.features.join(", "));
        println!(
            "      limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB, {} invocations/workgroup, \
                {} storage buffers/stage, immediates {} B",
            s.max_storage_buffer_binding_size >> 20,
            s.max_buffer_size >> 20,
            s.max_compute_workgroup_storage_size / 1024,
            s.max_compute_invocations_per_workgroup,
            s.max_storage_buffers_per_shader_stage,
            s.max_immediate_size,
        );
        println!("      subgroup size {}..{}", s.subgroup_min_size, s.subgroup_max_size);
        let coop = if s.cooperative_matrix.is_empty() { "none".to_string() } else { s.cooperative_matrix.join(", ") };
        println!(
            "      f16 shaders: {} (mixed precision{}); cooperative matrices: {coop}",
            if s.shader_f16 { "yes" } else { "no" },
            if s.shader_f16 { "" } else { " unavailable: --precision auto trains in f32" },
        );
    }
    println!("* would be used: {} ({})", chosen.summary.name, chosen.summary.backend);
    println!("  optional features it would use: {}", chosen.summary.enabled_features.join(", "));
    Ok(())
}
