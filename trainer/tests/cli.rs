//! The `autoprog` binary end to end: `info`, `bench --json`, `--version`, and clear errors.

use std::process::Command;

fn autoprog(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autoprog"))
        .args(args)
        .env("AUTOPROG_CACHE_DIR", std::env::temp_dir().join("autoprog-cli-test-cache"))
        .output()
        .expect("autoprog runs")
}

#[test]
fn version_names_the_commit() {
    let out = autoprog(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("autoprog ") && text.contains("commit "), "{text}");
}

#[test]
fn info_lists_adapters_and_the_chosen_one() {
    let out = autoprog(&["info", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let adapters = json["adapters"].as_array().expect("adapters");
    assert!(!adapters.is_empty());
    for key in ["name", "backend", "device_type", "features", "max_storage_buffer_binding_size"] {
        assert!(adapters[0].get(key).is_some(), "adapter entry lacks {key}");
    }
    assert!(json["chosen"]["name"].is_string());
    let text = autoprog(&["info"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("would be used"));
}

#[test]
fn bench_json_has_the_documented_fields() {
    let out = autoprog(&[
        "bench",
        "--json",
        "--size",
        "64",
        "--vit-rows",
        "32",
        "--attention-batch",
        "1",
        "--reps",
        "1",
        "--train-batch",
        "2",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON array on stdout");
    let entries = json.as_array().expect("array");
    let names: Vec<&str> = entries.iter().filter_map(|e| e["name"].as_str()).collect();
    for name in ["matmul_nn", "matmul_nt", "matmul_tn", "attention_forward", "attention_backward", "train_step"] {
        assert!(names.contains(&name), "no {name} entry in {names:?}");
    }
    for e in entries.iter().filter(|e| e["name"].as_str().unwrap().starts_with("matmul")) {
        for key in ["m", "n", "k"] {
            assert!(e[key].as_u64().is_some(), "{key} missing in {e}");
        }
        assert!(e["ms"].as_f64().unwrap() > 0.0 && e["gflops"].as_f64().unwrap() > 0.0, "{e}");
        assert!(e["variant"].as_str().is_some_and(|v| !v.is_empty()), "{e}");
    }
    // Training steps report their tensors' device memory, in f32 and (lavapipe has f16
    // shaders) in f16, which holds less.
    let steps: Vec<&serde_json::Value> = entries.iter().filter(|e| e["name"] == "train_step").collect();
    let memory = |suffix: &str| {
        let step =
            steps.iter().find(|e| e["shape"].as_str().is_some_and(|s| s.starts_with("nano") && s.ends_with(suffix)));
        step.and_then(|e| e["device_bytes"].as_u64()).unwrap_or_else(|| panic!("no nano {suffix} step in {steps:?}"))
    };
    assert!(memory("f16") < memory("f32"), "f16 {} bytes, f32 {}", memory("f16"), memory("f32"));
}

#[test]
fn unknown_backend_and_adapter_are_clear_errors() {
    let out = autoprog(&["info", "--backend", "glide"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown backend \"glide\"") && err.contains("vulkan"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = autoprog(&["bench", "--adapter", "no-such-gpu"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-gpu") && err.contains("autoprog info"), "{err}");
}

#[test]
fn missing_adapter_says_how_to_get_one() {
    // Linux has no DX12 or Metal: the same path as a machine without any driver.
    let backend = if cfg!(target_os = "linux") { "dx12" } else { "gl" };
    let out = autoprog(&["bench", "--backend", backend]);
    if cfg!(target_os = "linux") {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no GPU adapter") && err.contains("mesa-vulkan-drivers"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
