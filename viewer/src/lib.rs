//! The web viewer: the core library compiled to wasm32 and bound to JavaScript.
//!
//! Two halves: [`run`] turns a training run's files into the page's panels (plain Rust,
//! tested natively), and [`Model`] runs a trained ViT on an image with the same WGSL kernels
//! as the trainer through the browser's WebGPU, or with the f64 CPU twin where the browser
//! has no WebGPU. The page (`www/main.js`) only fetches files and places what these return.

pub mod chart;
pub mod folder;
pub mod run;
mod search_panels;
pub mod train;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use autoprog::data::{preprocess, Procedural, RgbImage, Split, CLASSES};
use autoprog::gpu::Plan;
use autoprog::model::cpu::CpuVit;
use autoprog::model::inference::{class_token_attention, top_classes, InferenceModel, LoadOptions, TopClass};
use autoprog::model::{Activations, GpuVit, ParamLayout};
use autoprog::{ContextOptions, GpuContext};
use serde::Serialize;
use wasm_bindgen::prelude::*;

fn js_error(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
}

/// The panels of a run as JSON ([`run::RunReport`]) from the text of its `log.jsonl` and,
/// when present, `summary.json` and `compare.json`.
#[wasm_bindgen]
pub fn open_run(log: &str, summary: Option<String>, compare: Option<String>) -> Result<String, JsValue> {
    let run = run::Run::parse(log, summary.as_deref(), compare.as_deref()).map_err(js_error)?;
    Ok(serde_json::to_string(&run.report()).expect("a report serialises"))
}

/// Image `index` of the built-in dataset's validation split at 32 px, as RGBA bytes
/// (the same image the trainer would draw).
#[wasm_bindgen]
pub fn sample_image(index: u32) -> Vec<u8> {
    let (rgb, _) = Procedural::default().image_rgb8(Split::Val, index as u64);
    rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect()
}

/// The built-in dataset's class name of sample `index`.
#[wasm_bindgen]
pub fn sample_label(index: u32) -> String {
    let (_, label) = Procedural::default().image(Split::Val, index as u64);
    CLASSES[label as usize].to_string()
}

/// Side of [`sample_image`]s in pixels.
#[wasm_bindgen]
pub fn sample_size() -> u32 {
    Procedural::default().image_size as u32
}

/// Where the forward pass runs.
enum Engine {
    Gpu {
        ctx: Box<GpuContext>,
        vit: Box<GpuVit>,
        /// The one-image forward pass, recorded at the first prediction and replayed by the
        /// next ones; out of the cell while a prediction uses it.
        forward: RefCell<Option<Box<Forward>>>,
    },
    Cpu {
        layout: ParamLayout,
        params: Vec<f64>,
    },
}

/// Activations for one image and the forward pass over them, recorded once.
struct Forward {
    acts: Activations,
    plan: Arc<Plan>,
}

impl Forward {
    fn record(ctx: &GpuContext, vit: &GpuVit, resolution: usize) -> autoprog::Result<Forward> {
        let acts = vit.plan(ctx, 1, resolution)?;
        let mut capture = ctx.capture("predict");
        vit.forward(&mut capture, &vit.params, &acts, false)?;
        Ok(Forward { plan: capture.into_plan()?, acts })
    }
}

struct Loaded {
    model: InferenceModel,
    engine: Engine,
    /// Why the CPU twin runs instead of WebGPU, when it does.
    fallback: Option<String>,
}

/// A trained model ready to classify images in the page.
#[wasm_bindgen]
pub struct Model {
    inner: Rc<Loaded>,
}

#[derive(Serialize)]
struct ModelInfo<'a> {
    backend: &'static str,
    adapter: String,
    /// What the forward pass stores activations in: "f16" where the adapter has
    /// `shader-f16`, else "f32"; "f64" on the CPU twin.
    precision: &'static str,
    fallback: Option<&'a str>,
    image_size: usize,
    patch_size: usize,
    dim: usize,
    depth: usize,
    heads: usize,
    classes: &'a [String],
    parameters: usize,
}

#[derive(Serialize)]
struct Prediction {
    logits: Vec<f32>,
    top: Vec<TopClass>,
    /// The last block's class-token attention over the patch grid (row-major), summing
    /// to at most 1 (the rest goes to the class token itself).
    attention: Vec<f64>,
    grid: usize,
}

#[wasm_bindgen]
impl Model {
    /// Reads a model file (`autoprog export`, a training checkpoint, or a timm file with its
    /// heads in the header) and prepares it on WebGPU when `use_gpu` and the browser has it,
    /// else on the CPU twin.
    pub async fn load(bytes: Vec<u8>, name: String, use_gpu: bool) -> Result<Model, JsValue> {
        let model = InferenceModel::from_bytes(&bytes, &name, &LoadOptions::default()).map_err(js_error)?;
        let (engine, fallback) = if use_gpu {
            match gpu_engine(&model).await {
                Ok(engine) => (engine, None),
                Err(why) => (cpu_engine(&model)?, Some(why)),
            }
        } else {
            (cpu_engine(&model)?, Some("WebGPU is not available in this browser".to_string()))
        };
        Ok(Model { inner: Rc::new(Loaded { model, engine, fallback }) })
    }

    /// The architecture, classes and where it runs, as JSON.
    pub fn info(&self) -> String {
        let l = &*self.inner;
        let (backend, adapter, precision) = match &l.engine {
            Engine::Gpu { ctx, vit, .. } => ("webgpu", ctx.summary.display_name(), vit.activations().wgsl()),
            Engine::Cpu { .. } => ("cpu", "the CPU twin in wasm (f64)".to_string(), "f64"),
        };
        let c = &l.model.config;
        serde_json::to_string(&ModelInfo {
            backend,
            adapter,
            precision,
            fallback: l.fallback.as_deref(),
            image_size: c.image_size,
            patch_size: c.patch_size,
            dim: c.dim,
            depth: l.model.depth,
            heads: c.heads,
            classes: &l.model.classes,
            parameters: l.model.parameter_count(),
        })
        .expect("serialisable")
    }

    /// Classifies an RGBA image (`width`·`height`·4 bytes, alpha ignored): a promise of JSON
    /// with the logits, the top 5 classes and the class-token attention map.
    pub fn predict(&self, rgba: Vec<u8>, width: u32, height: u32) -> js_sys::Promise {
        let inner = Rc::clone(&self.inner);
        wasm_bindgen_futures::future_to_promise(async move {
            let image = RgbImage::from_rgba(width as usize, height as usize, &rgba).map_err(js_error)?;
            let m = &inner.model;
            let r = m.config.image_size;
            // The same preprocessing as training's evaluation and `autoprog predict`.
            let input = preprocess(&image, r, m.mean, m.std);
            let (logits, qkv) = match &inner.engine {
                Engine::Gpu { ctx, vit, forward } => {
                    // A prediction that starts while another one awaits its results finds the
                    // cell empty and records its own pass over its own activations.
                    let cached = forward.borrow_mut().take();
                    let pass = match cached {
                        Some(pass) => pass,
                        None => Box::new(Forward::record(ctx, vit, r).map_err(js_error)?),
                    };
                    ctx.write(&pass.acts.images, &input).map_err(js_error)?;
                    let mut rec = ctx.recorder("predict");
                    rec.replay(&pass.plan).map_err(js_error)?;
                    ctx.submit(rec).map_err(js_error)?;
                    let logits = ctx.read(&pass.acts.logits).await.map_err(js_error)?;
                    let qkv = match pass.acts.last_block_qkv() {
                        Some(t) => ctx.read(t).await.map_err(js_error)?.into_iter().map(f64::from).collect(),
                        None => Vec::new(),
                    };
                    *forward.borrow_mut() = Some(pass);
                    (logits, qkv)
                }
                Engine::Cpu { layout, params } => {
                    let cpu = CpuVit { config: &m.config, layout, params };
                    let images: Vec<f64> = input.iter().map(|&v| v as f64).collect();
                    let fwd = cpu.forward(&images, 1, r, None).map_err(js_error)?;
                    let qkv = fwd.last_block_qkv().map(<[f64]>::to_vec).unwrap_or_default();
                    (fwd.logits.iter().map(|&v| v as f32).collect(), qkv)
                }
            };
            let top = top_classes(&logits, &m.classes, 5);
            let tokens = m.config.tokens_at(r);
            let attention = if qkv.is_empty() {
                Vec::new()
            } else {
                class_token_attention(&qkv, tokens, m.config.heads, m.config.head_size())
            };
            let prediction = Prediction { logits, top, attention, grid: m.config.grid() };
            Ok(JsValue::from_str(&serde_json::to_string(&prediction).map_err(js_error)?))
        })
    }
}

async fn gpu_engine(model: &InferenceModel) -> Result<Engine, String> {
    // The core's message suggests installing drivers, which is advice for the native tool.
    let ctx = GpuContext::new(&ContextOptions::default())
        .await
        .map_err(|_| "the browser has WebGPU but offers no adapter (GPU blocked or disabled)".to_string())?;
    let layout = model.layout(ctx.arena_align());
    let params = model.arena(&layout).map_err(|e| e.to_string())?;
    let mut vit = GpuVit::new(&ctx, model.config.clone(), layout, &params).map_err(|e| e.to_string())?;
    // f16 activations where the browser's adapter has `shader-f16`, as `--precision auto`.
    let (activations, _) = autoprog::train::Precision::Auto.resolve(&ctx).map_err(|e| e.to_string())?;
    vit.set_activations(&ctx, activations).map_err(|e| e.to_string())?;
    Ok(Engine::Gpu { ctx: Box::new(ctx), vit: Box::new(vit), forward: RefCell::new(None) })
}

fn cpu_engine(model: &InferenceModel) -> Result<Engine, JsValue> {
    let layout = model.layout(1);
    let params = model.arena(&layout).map_err(js_error)?.into_iter().map(f64::from).collect();
    Ok(Engine::Cpu { layout, params })
}
