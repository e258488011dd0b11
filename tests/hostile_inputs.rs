//! Files we read from anywhere (a download, a link to the web viewer) must give a clear error
//! however they are damaged: never a panic, an abort or an allocation the file does not pay
//! for. The crafted cases below are the known attacks; the fuzz cases damage valid files
//! thousands of times from a fixed seed.

use std::time::Instant;

use autoprog::checkpoint::{Checkpoint, NamedTensor, Storage};
use autoprog::data::{preprocess, RgbImage};
use autoprog::model::cpu::CpuVit;
use autoprog::model::inference::{InferenceModel, LoadOptions};
use autoprog::model::{ParamLayout, VitConfig};
use autoprog::runlog::{parse_log, Compare, Summary};

#[path = "support/mutate.rs"]
mod mutate;
use mutate::Mutator;

/// 8 px, patches of 4, width 8, two blocks of two heads, three classes: a real model
/// small enough to run thousands of times.
fn tiny() -> VitConfig {
    VitConfig {
        image_size: 8,
        patch_size: 4,
        in_chans: 3,
        dim: 8,
        depth: 2,
        heads: 2,
        mlp_hidden: 16,
        classes: 3,
        layernorm_eps: 1e-6,
    }
}

/// A training checkpoint of the tiny model: weights, an EMA and the header the trainer writes.
fn training_checkpoint() -> Checkpoint {
    let config = tiny();
    let layout = ParamLayout::new(&config, config.depth, 1);
    let arena = layout.init(&config, 3);
    let mut ckpt = Checkpoint { tensors: layout.to_tensors(&arena, ""), ..Default::default() };
    ckpt.tensors.extend(layout.to_tensors(&arena, "ema_0.99."));
    ckpt.set_json("vit", &config).unwrap();
    ckpt.set_json("depth", &config.depth).unwrap();
    ckpt.set_json("classes", &["a", "b", "c"]).unwrap();
    ckpt.set_json("mean", &[0.5f32; 3]).unwrap();
    ckpt.set_json("std", &[0.25f32; 3]).unwrap();
    ckpt
}

/// The same weights as a timm state dict: no header, so the heads come from the caller.
fn timm_file() -> Vec<u8> {
    let mut ckpt = training_checkpoint();
    ckpt.metadata.clear();
    ckpt.tensors.retain(|t| !t.name.starts_with("ema_"));
    ckpt.to_bytes().unwrap()
}

/// Reads `bytes` as every reader of model files does and, where that succeeds, runs the
/// model on an image: the CLI and the viewer do no more with a file.
fn read_model(bytes: &[u8], options: &LoadOptions) -> Result<(), String> {
    let model = InferenceModel::from_bytes(bytes, "case.safetensors", options).map_err(|e| e.to_string())?;
    let layout = model.layout(1);
    let params: Vec<f64> = model.arena(&layout).map_err(|e| e.to_string())?.into_iter().map(f64::from).collect();
    let r = model.config.image_size;
    let image = preprocess(&RgbImage::filled(13, 11, [128, 64, 0]), r, model.mean, model.std);
    let images: Vec<f64> = image.iter().map(|&v| v as f64).collect();
    let cpu = CpuVit { config: &model.config, layout: &layout, params: &params };
    cpu.forward(&images, 1, r, None).map_err(|e| e.to_string())?;
    Ok(())
}

fn assert_clear(error: &str, case: &str) {
    assert!(
        !error.trim().is_empty() && error.len() < 2000 && !error.contains("panicked"),
        "{case}: not a readable error: {error:?}"
    );
}

/// `ckpt` with tensor `name` given `shape` (and as many values as the shape holds).
fn with_shape(mut ckpt: Checkpoint, name: &str, shape: Vec<usize>) -> Checkpoint {
    let t = ckpt.tensors.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name}"));
    *t = NamedTensor::new(name, shape.clone(), vec![0.5; shape.iter().product()]);
    ckpt
}

#[test]
fn crafted_model_files_give_clear_errors_quickly() {
    let mut timm = Checkpoint::from_bytes(&timm_file(), "timm").unwrap();
    timm.metadata.clear();
    let header = |key: &str, json: &str| {
        let mut ckpt = training_checkpoint();
        ckpt.metadata.insert(key.into(), json.into());
        ckpt.to_bytes().unwrap()
    };
    let vit_with = |field: &str, value: &str| {
        let text = serde_json::to_string(&tiny()).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json[field] = serde_json::from_str(value).unwrap();
        header("vit", &json.to_string())
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "scalar head.weight",
            with_shape(timm.clone(), "head.weight", vec![]).to_bytes().unwrap(),
            "head.weight is []",
        ),
        (
            "empty pos_embed",
            with_shape(timm.clone(), "pos_embed", vec![1, 0, 8]).to_bytes().unwrap(),
            "pos_embed is [1, 0, 8]",
        ),
        (
            "zero-element head of 2^31 columns",
            with_shape(timm.clone(), "head.weight", vec![0, 1 << 31]).to_bytes().unwrap(),
            "head.weight is [0, 2147483648]",
        ),
        (
            "zero-element patch embedding of 2^31 channels",
            with_shape(timm.clone(), "patch_embed.proj.weight", vec![1 << 31, 3, 0, 0]).to_bytes().unwrap(),
            "patch_embed.proj.weight is [2147483648, 3, 0, 0]",
        ),
        ("header depth 10^9", vit_with("depth", "1000000000"), "depth 1000000000 is above"),
        ("header dim 10^9", vit_with("dim", "1000000000"), "dim 1000000000 is above"),
        ("header classes 2^40", vit_with("classes", "1099511627776"), "classes 1099511627776 is above"),
        ("header depth key 10^9", header("depth", "1000000000"), "1000000000 blocks"),
        ("header depth key negative", header("depth", "-1"), "`depth`"),
        ("header classes not a list", header("classes", "{\"a\":1}"), "`classes`"),
        ("header std zero", header("std", "[0, 0, 0]"), "must be positive"),
    ];
    for (case, bytes, expected) in cases {
        let start = Instant::now();
        let heads = LoadOptions { heads: Some(2), ..Default::default() };
        let error = read_model(&bytes, &heads).expect_err(case);
        assert_clear(&error, case);
        assert!(error.contains(expected), "{case}: {error}");
        assert!(
            error.starts_with("case.safetensors") || error.contains("checkpoint") || error.contains("model config"),
            "{case}: {error}"
        );
        // Generous for a loaded CI machine; each takes microseconds.
        assert!(start.elapsed().as_secs_f64() < 1.0, "{case}: {:?}", start.elapsed());
    }

    // A header that describes a model larger than the weights the file holds is refused
    // before the arena for it is allocated.
    let mut big = tiny();
    big.dim = 16;
    big.heads = 2;
    big.mlp_hidden = 64;
    let mut ckpt = training_checkpoint();
    ckpt.set_json("vit", &big).unwrap();
    let error = read_model(&ckpt.to_bytes().unwrap(), &LoadOptions::default()).unwrap_err();
    assert!(error.contains("does not fit the model it describes"), "{error}");
}

#[test]
fn fuzzed_model_files_never_panic() {
    let model_file = InferenceModel::from_checkpoint(&training_checkpoint(), "seed", &LoadOptions::default())
        .unwrap()
        .to_model_file(Storage::F16)
        .unwrap();
    let seeds = [training_checkpoint().to_bytes().unwrap(), timm_file(), model_file];
    let options = [
        LoadOptions::default(),
        LoadOptions { heads: Some(2), ..Default::default() },
        LoadOptions { ema: Some(0.99), ..Default::default() },
    ];
    let mut mutator = Mutator::new(17);
    let (mut cases, mut loaded) = (0, 0);
    for round in 0..3000 {
        let seed = &seeds[round % seeds.len()];
        // Half the cases damage the bytes anywhere; the other half edit the JSON header
        // (shapes, offsets, metadata) and keep the file well-formed around it, which is how
        // a crafted file gets past the parser to the code that trusts what it says.
        let bytes = if round % 2 == 0 { mutator.bytes(seed) } else { with_edited_header(seed, &mut mutator) };
        for opts in &options {
            cases += 1;
            match read_model(&bytes, opts) {
                Ok(()) => loaded += 1,
                Err(error) => assert_clear(&error, &format!("round {round}")),
            }
        }
    }
    eprintln!("{cases} fuzzed model reads, {loaded} of them loaded a model");
    assert!(loaded > 0 && loaded < cases, "the mutations should both break files and leave some readable");
}

/// Sizes that break shape arithmetic.
const SIZES: [u64; 9] = [0, 1, 2, 3, 1 << 16, (1 << 31) - 1, 1 << 31, 1 << 32, u64::MAX];

/// A safetensors file with its JSON header edited and its length prefix rewritten to
/// match: a tensor's shape, dtype or offsets, or a number inside a metadata value (the
/// model's architecture, depth, classes), changed to a size that breaks arithmetic; or
/// the header text mutated as a whole.
fn with_edited_header(file: &[u8], mutator: &mut Mutator) -> Vec<u8> {
    let len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&file[8..8 + len]).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(header).unwrap();
    let object = json.as_object_mut().unwrap();
    let keys: Vec<String> = object.keys().cloned().collect();
    // Half the time one of the tensors whose shapes say what the architecture is.
    const TELLING: [&str; 6] =
        ["patch_embed.proj.weight", "pos_embed", "head.weight", "cls_token", "blocks.0.mlp.fc1.weight", "__metadata__"];
    let telling: Vec<&String> = keys.iter().filter(|k| TELLING.contains(&k.as_str())).collect();
    let key = match mutator.below(2) {
        0 if !telling.is_empty() => telling[mutator.below(telling.len())],
        _ => &keys[mutator.below(keys.len())],
    };
    let size = SIZES[mutator.below(SIZES.len())];
    let entry = object.get_mut(key).unwrap();
    if key == "__metadata__" {
        let metadata = entry.as_object_mut().unwrap();
        let names: Vec<String> = metadata.keys().cloned().collect();
        let value = metadata.get_mut(&names[mutator.below(names.len())]).unwrap();
        let text = value.as_str().unwrap().to_string();
        *value = serde_json::Value::String(if mutator.below(2) == 0 {
            mutator.text(&text)
        } else {
            // A number of the value's JSON (e.g. `"depth":2` in `vit`) set to `size`.
            let starts: Vec<usize> = text.match_indices(|c: char| c.is_ascii_digit()).map(|(i, _)| i).collect();
            match starts.get(mutator.below(starts.len().max(1))) {
                Some(&at) => format!("{}{size}{}", &text[..at], &text[at + 1..]),
                None => text,
            }
        });
    } else {
        match mutator.below(4) {
            0 => {
                let shape = entry["shape"].as_array_mut().unwrap();
                if shape.is_empty() || mutator.below(4) == 0 {
                    shape.push(size.into());
                } else {
                    let i = mutator.below(shape.len());
                    shape[i] = size.into();
                }
            }
            1 => entry["shape"] = serde_json::json!([]),
            2 => entry["data_offsets"][mutator.below(2)] = size.into(),
            _ => entry["dtype"] = ["U8", "I64", "F64", "BOOL", "F8_E4M3", "X"][mutator.below(6)].into(),
        }
    }
    let data = &file[8 + len..];
    // Usually the offsets are laid out anew for the edited shapes and dtypes (each tensor's
    // old bytes cut or zero-padded), so the file passes the parser and reaches the model code.
    let relaid = if mutator.below(4) == 0 { None } else { relay(&mut json, data) };
    let edited = if mutator.below(8) == 0 { mutator.text(header) } else { json.to_string() };
    let mut out = (edited.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(edited.as_bytes());
    out.extend_from_slice(relaid.as_deref().unwrap_or(data));
    out
}

/// New data offsets for every tensor of `header` from its shape and dtype, and the data
/// they tile; `None` when a size overflows or passes 1 MiB (then the file stays as edited).
fn relay(header: &mut serde_json::Value, data: &[u8]) -> Option<Vec<u8>> {
    let mut tensors: Vec<(&String, &mut serde_json::Value)> =
        header.as_object_mut()?.iter_mut().filter(|(k, _)| *k != "__metadata__").collect();
    tensors.sort_by_key(|(_, t)| t["data_offsets"][0].as_u64());
    let mut out = Vec::new();
    for (_, t) in tensors {
        let width = match t["dtype"].as_str()? {
            "U8" | "BOOL" | "I8" | "F8_E4M3" => 1,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "F32" | "I32" | "U32" => 4,
            _ => 8,
        };
        let numel = t["shape"].as_array()?.iter().try_fold(1u64, |n, d| n.checked_mul(d.as_u64()?))?;
        let bytes = numel.checked_mul(width).filter(|&b| b <= 1 << 20)? as usize;
        let old_start = t["data_offsets"][0].as_u64().unwrap_or(0) as usize;
        let old = data.get(old_start.min(data.len())..).unwrap_or_default();
        let start = out.len();
        out.extend(old.iter().copied().chain(std::iter::repeat(0)).take(bytes));
        t["data_offsets"] = serde_json::json!([start, out.len()]);
    }
    Some(out)
}

/// A log with one line of every event type, as docs/runlog.md gives them.
fn doc_log() -> String {
    include_str!("../docs/runlog.md").lines().filter(|l| l.starts_with("{\"event\"")).collect::<Vec<_>>().join("\n")
}

#[test]
fn fuzzed_run_files_never_panic() {
    let log = doc_log();
    assert!(log.lines().count() >= 9, "{log}");
    let summary = serde_json::to_string(&Summary::default()).unwrap();
    let compare = serde_json::to_string(&Compare::default()).unwrap();
    let mut mutator = Mutator::new(23);
    let mut cases = 0;
    for _ in 0..1500 {
        let text = mutator.text(&log);
        let parsed = parse_log(&text);
        assert!(parsed.events.len() + parsed.skipped.len() <= text.lines().count() + 1);
        cases += 1;
    }
    for _ in 0..500 {
        let _ = serde_json::from_str::<Summary>(&mutator.text(&summary));
        let _ = serde_json::from_str::<Compare>(&mutator.text(&compare));
        cases += 2;
    }
    eprintln!("{cases} fuzzed run files");
}
