//! Agreement with the reference implementation: a timm VisionTransformer saved by
//! `scripts/timm_reference.py` (28 px, patch 4, width 48, 3 heads: sizes that fit no tile)
//! loads directly, and `debug-step` and `predict` give PyTorch's loss, logits and
//! gradients on the same inputs.

use std::path::PathBuf;
use std::process::Command;

use autoprog::checkpoint::Checkpoint;
use autoprog::tolerance::Tolerance;

/// Logits: the rel 1e-4; the abs floor covers logits near 0, where f32 sums of
/// 48–192 products round at ~1e-7 of their terms.
const LOGITS: Tolerance = Tolerance { rel: 1e-4, abs: 1e-5 };
/// Gradients: the rel 2e-3; the abs floor covers gradients that are 0 in exact
/// arithmetic (the key biases: softmax ignores a shift shared by all keys), which both
/// sides hold as rounding noise of ~1e-9.
const GRADIENTS: Tolerance = Tolerance { rel: 2e-3, abs: 1e-6 };

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/timm").join(name)
}

fn autoprog(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_autoprog"))
        .args(args)
        .env("AUTOPROG_CACHE_DIR", std::env::temp_dir().join("autoprog-cli-test-cache"))
        .output()
        .expect("autoprog runs");
    assert!(
        out.status.success(),
        "autoprog {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn debug_step_matches_pytorch() {
    let out = std::env::temp_dir().join(format!("autoprog-timm-step-{}.safetensors", std::process::id()));
    let (vit, batch) = (fixture("vit.safetensors"), fixture("batch.safetensors"));
    autoprog(&[
        "debug-step",
        "--checkpoint",
        vit.to_str().unwrap(),
        "--heads",
        "3",
        "--batch",
        batch.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let ours = Checkpoint::load(&out).unwrap();
    std::fs::remove_file(&out).ok();
    let reference = Checkpoint::load(&fixture("step_reference.safetensors")).unwrap();
    LOGITS.assert("loss", &ours.get("loss").unwrap().data, &reference.get("loss").unwrap().data);
    LOGITS.assert("logits", &ours.get("logits").unwrap().data, &reference.get("logits").unwrap().data);
    let mut compared = 0;
    for r in reference.tensors.iter().filter(|t| t.name != "loss" && t.name != "logits") {
        let t = ours.get(&r.name).unwrap_or_else(|| panic!("no gradient for {}", r.name));
        assert_eq!(t.shape, r.shape, "{}", r.name);
        GRADIENTS.assert(&r.name, &t.data, &r.data);
        compared += 1;
    }
    // timm's state dict: 4 embedding tensors, 12 per block, 4 for norm and head.
    assert_eq!(compared, 4 + 2 * 12 + 4);
}

#[test]
fn predict_matches_pytorch() {
    let vit = fixture("vit.safetensors");
    let image = fixture("image.png");
    let out = autoprog(&[
        "predict",
        "--checkpoint",
        vit.to_str().unwrap(),
        "--heads",
        "3",
        "--json",
        image.to_str().unwrap(),
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logits: Vec<f64> = json[0]["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let reference = Checkpoint::load(&fixture("predict_reference.safetensors")).unwrap();
    LOGITS.assert("predict logits", &logits, &reference.get("logits").unwrap().data);
    // The labels of a timm file are the class indices.
    let top = &json[0]["top"][0];
    let best = reference.get("logits").unwrap().data.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert_eq!(top["class"].as_u64().unwrap() as usize, best);
    assert_eq!(top["label"].as_str().unwrap(), best.to_string());
}
