//! The web viewer: the core library compiled to wasm32 and bound to JavaScript.
//!
//! For now it opens the browser's WebGPU adapter through the same [`GpuContext`] the
//! trainer uses and runs a kernel self-check; the run and inference views come later.

use autoprog::kernels::gelu;
use autoprog::tolerance::Tolerance;
use autoprog::{cpu, ContextOptions, GpuContext};
use wasm_bindgen::prelude::*;

fn js_error(e: autoprog::Error) -> JsValue {
    JsValue::from_str(&e.to_string())
}

/// The adapter the page would use, as JSON (name, backend, features, limits).
#[wasm_bindgen]
pub async fn adapter_summary() -> Result<String, JsValue> {
    let ctx = GpuContext::new(&ContextOptions::default()).await.map_err(js_error)?;
    Ok(serde_json::to_string(&ctx.summary).expect("serialisable"))
}

/// Runs the GELU kernel on the browser's GPU and compares it with its CPU twin.
/// Returns a one-line report; errors name what failed.
#[wasm_bindgen]
pub async fn kernel_selfcheck() -> Result<String, JsValue> {
    let ctx = GpuContext::new(&ContextOptions::default()).await.map_err(js_error)?;
    let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 80.0).collect();
    let x = ctx.upload(&xs, &[xs.len()], "selfcheck.x").map_err(js_error)?;
    let y = ctx.empty(&[xs.len()], "selfcheck.y").map_err(js_error)?;
    let mut rec = ctx.recorder("selfcheck");
    gelu::gelu_forward(&mut rec, &x, &y).map_err(js_error)?;
    ctx.submit(rec).map_err(js_error)?;
    let got = ctx.read(&y).await.map_err(js_error)?;
    let want = cpu::gelu::gelu_forward(&xs.iter().map(|&v| v as f64).collect::<Vec<_>>());
    Tolerance::FORWARD.check("gelu_forward", &got, &want).map_err(|e| JsValue::from_str(&e))?;
    Ok(format!("gelu_forward on {} matches its CPU twin ({} values)", ctx.summary.display_name(), got.len()))
}
