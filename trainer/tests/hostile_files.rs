//! Hostile files through the command line: each crafted model or dataset file must end
//! `autoprog` with a clear error and exit code 1 (never 101, a panic, or an abort), quickly
//! and in little memory. Memory is the child's peak resident set, from `wait4`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use autoprog::checkpoint::{Checkpoint, NamedTensor};
use autoprog::model::{ParamLayout, VitConfig};

/// Peak memory a refused file may cost the whole process, GPU driver included.
const MAX_RSS_BYTES: u64 = 200 << 20;
/// The bar is one second; the assertion leaves room for a loaded CI machine, and the
/// measured times are printed.
const MAX_SECONDS: f64 = 10.0;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("autoprog-hostile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Measured {
    code: Option<i32>,
    stderr: String,
    seconds: f64,
    peak_rss: u64,
}

/// Runs `autoprog args` and measures its wall time and peak resident memory.
#[allow(clippy::zombie_processes, reason = "reaped by wait4, which returns the child's rusage as Child::wait cannot")]
#[allow(unsafe_code, reason = "wait4 is the one call that reports a child's peak memory")]
fn run_measured(args: &[&str], stderr_file: &Path) -> Measured {
    let child = Command::new(env!("CARGO_BIN_EXE_autoprog"))
        .args(args)
        .env("AUTOPROG_CACHE_DIR", std::env::temp_dir().join("autoprog-hostile-test-cache"))
        .stdout(Stdio::null())
        .stderr(File::create(stderr_file).unwrap())
        .spawn()
        .expect("autoprog runs");
    let start = Instant::now();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills; the pid is our own child, reaped here
    // once (`Child` does not wait on drop).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4 failed");
    let seconds = start.elapsed().as_secs_f64();
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let stderr = std::fs::read_to_string(stderr_file).unwrap();
    // ru_maxrss is in KiB on Linux.
    Measured { code, stderr, seconds, peak_rss: usage.ru_maxrss as u64 * 1024 }
}

/// A timm-style state dict (no header) of a small ViT: width 16, 2 blocks, 10 classes.
fn timm_model() -> Checkpoint {
    let config = VitConfig {
        image_size: 16,
        patch_size: 4,
        in_chans: 3,
        dim: 16,
        depth: 2,
        heads: 4,
        mlp_hidden: 32,
        classes: 10,
        layernorm_eps: 1e-6,
    };
    let layout = ParamLayout::new(&config, config.depth, 1);
    Checkpoint { tensors: layout.to_tensors(&layout.init(&config, 0), ""), ..Default::default() }
}

fn with_shape(mut ckpt: Checkpoint, name: &str, shape: Vec<usize>) -> Checkpoint {
    let t = ckpt.tensors.iter_mut().find(|t| t.name == name).unwrap();
    *t = NamedTensor::new(name, shape.clone(), vec![0.0; shape.iter().product()]);
    ckpt
}

fn with_vit(field: &str, value: u64) -> Checkpoint {
    let mut ckpt = timm_model();
    let config = serde_json::json!({
        "image_size": 16, "patch_size": 4, "dim": 16, "depth": 2, "heads": 4, "mlp_hidden": 32, "classes": 10
    });
    let mut config = config.as_object().unwrap().clone();
    config.insert(field.into(), value.into());
    ckpt.metadata.insert("vit".into(), serde_json::Value::Object(config).to_string());
    ckpt
}

fn idx(magic: u32, sizes: &[u32]) -> Vec<u8> {
    std::iter::once(magic).chain(sizes.iter().copied()).flat_map(u32::to_be_bytes).collect()
}

/// An MNIST folder with the given train images file (and a labels file that fits MNIST).
fn mnist_folder(dir: &Path, images_name: &str, images: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(images_name), images).unwrap();
    let mut labels = idx(2049, &[60_000]);
    labels.resize(8 + 60_000, 3);
    std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).unwrap();
    dir.to_path_buf()
}

#[test]
fn hostile_files_end_with_a_clear_error_quickly_and_in_little_memory() {
    let scratch = Scratch::new("files");
    let dir = &scratch.0;
    let image = dir.join("x.png");
    image::RgbImage::from_pixel(16, 16, image::Rgb([9, 99, 199])).save(&image).unwrap();
    let image = image.display().to_string();

    let mut model_cases: Vec<(&str, Checkpoint, &str)> = vec![
        ("scalar head.weight", with_shape(timm_model(), "head.weight", vec![]), "head.weight is []"),
        ("pos_embed [1, 0, C]", with_shape(timm_model(), "pos_embed", vec![1, 0, 16]), "pos_embed is [1, 0, 16]"),
        (
            "zero-element tensor of 2^31 columns",
            with_shape(timm_model(), "head.weight", vec![0, 1 << 31]),
            "head.weight is [0, 2147483648]",
        ),
        ("metadata depth 10^9", with_vit("depth", 1_000_000_000), "depth 1000000000 is above"),
        ("metadata dim 10^9", with_vit("dim", 1_000_000_000), "dim 1000000000 is above"),
    ];
    let mut depth_key = timm_model();
    depth_key.metadata.insert("depth".into(), "1000000000".into());
    depth_key.metadata.insert("vit".into(), with_vit("depth", 2).metadata["vit"].clone());
    model_cases.push(("metadata depth key 10^9", depth_key, "1000000000 blocks"));

    let mut report = Vec::new();
    for (i, (case, ckpt, expected)) in model_cases.into_iter().enumerate() {
        let file = dir.join(format!("model{i}.safetensors"));
        ckpt.save(&file).unwrap();
        let file = file.display().to_string();
        let m = run_measured(&["predict", "--heads", "4", "--checkpoint", &file, &image], &dir.join("stderr.txt"));
        check(case, &m, expected);
        report.push(format!("{case}: {:.2} s, {} MB", m.seconds, m.peak_rss >> 20));
    }

    // MNIST: sizes whose product overflows, and a gzip bomb with a header that fits it.
    let overflow = mnist_folder(&dir.join("overflow"), "train-images-idx3-ubyte", &idx(2051, &[u32::MAX; 3]));
    // 256 MiB of images behind a header that fits them, compressed to about 250 KiB.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&idx(2051, &[1 << 18, 32, 32])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        encoder.write_all(&zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    let bomb_dir = mnist_folder(&dir.join("bomb"), "train-images-idx3-ubyte.gz", &bomb);
    for (case, folder, expected) in
        [("MNIST sizes that overflow", overflow, "needs more than 2^64 bytes"), ("gzip bomb", bomb_dir, "gzip bomb")]
    {
        let out = dir.join("run").display().to_string();
        let folder = folder.display().to_string();
        let args = ["train", "--data", &folder, "--val-split", "0.1", "--epochs", "1", "--out", &out, "--quiet"];
        let m = run_measured(&args, &dir.join("stderr.txt"));
        check(case, &m, expected);
        report.push(format!("{case}: {:.2} s, {} MB", m.seconds, m.peak_rss >> 20));
    }
    eprintln!("{}", report.join("\n"));
}

fn check(case: &str, m: &Measured, expected: &str) {
    assert_eq!(m.code, Some(1), "{case}: exit code (a panic is 101, an abort a signal): {}", m.stderr);
    assert!(m.stderr.contains(expected), "{case}: {}", m.stderr);
    assert!(m.stderr.contains("error: ") && !m.stderr.contains("panicked"), "{case}: {}", m.stderr);
    assert!(m.peak_rss < MAX_RSS_BYTES, "{case}: peak memory {} MB", m.peak_rss >> 20);
    assert!(m.seconds < MAX_SECONDS, "{case}: {:.2} s", m.seconds);
}
